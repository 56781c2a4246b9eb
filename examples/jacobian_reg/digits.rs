//! The 8x8 digits of `data/digits/` (scikit-learn's copy of the UCI optical digits, written by
//! `data/digits/gen-digits.py`): four `.npy` files, read by `npyz`; and MNIST's IDX files. Shared
//! by the `jacobian_reg` and `cae` examples (`#[path]`).
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::{Kind, Tensor};

/// The digits' four files, as `gen-digits.py` writes them.
pub(crate) const DIGITS_FILES: [&str; 4] = [
    "train-images.npy",
    "train-labels.npy",
    "test-images.npy",
    "test-labels.npy",
];

/// `data/digits/` of this checkout.
pub(crate) const DIGITS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits");

/// `dir` for messages: `data/digits` when it is [`DIGITS_DIR`].
pub(crate) fn shown(dir: &Path) -> String {
    if dir == Path::new(DIGITS_DIR) {
        "data/digits".to_string()
    } else {
        dir.display().to_string()
    }
}

/// `[(train images, train labels), (test images, test labels)]` from `dir`, on the CPU: the
/// images `[N, 8, 8]` f32, `pixels / 16` in `[0, 1]` (the files hold u8 pixels 0..=16), the labels
/// `[N]` i64 in `0..=9`. Errors name the file.
pub(crate) fn load_digits(dir: &Path) -> Result<[(Tensor, Tensor); 2]> {
    let missing = missing_files(dir, &DIGITS_FILES);
    if !missing.is_empty() {
        bail!(
            "{}: missing {} (data/digits/gen-digits.py writes them)",
            dir.display(),
            missing.join(", ")
        );
    }
    let images = |name: &str| -> Result<Tensor> {
        let path = dir.join(name);
        let raw = read_npy(&path, Kind::Uint8, &[None, Some(8), Some(8)])?;
        if raw.numel() > 0 {
            let max = raw.f_max()?.f_int64_value(&[])?;
            if max > 16 {
                bail!(
                    "{}: pixels must be 0..=16 (the digits' range), found {max}",
                    path.display()
                );
            }
        }
        Ok(raw.f_to_kind(Kind::Float)?.f_div_scalar(16.0)?)
    };
    let labels = |name: &str, n: i64| -> Result<Tensor> {
        let path = dir.join(name);
        let y = read_npy(&path, Kind::Int64, &[Some(n)])?;
        if y.numel() > 0 {
            let (lo, hi) = (
                y.f_min()?.f_int64_value(&[])?,
                y.f_max()?.f_int64_value(&[])?,
            );
            if lo < 0 || hi > 9 {
                bail!(
                    "{}: labels must be 0..=9, found {lo}..={hi}",
                    path.display()
                );
            }
        }
        Ok(y)
    };
    let train_x = images(DIGITS_FILES[0])?;
    let test_x = images(DIGITS_FILES[2])?;
    let train_y = labels(DIGITS_FILES[1], train_x.size()[0])?;
    let test_y = labels(DIGITS_FILES[3], test_x.size()[0])?;
    Ok([(train_x, train_y), (test_x, test_y)])
}

/// MNIST's four uncompressed IDX files.
pub(crate) const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// MNIST from `dir` by tch's IDX reader (`[N, 784]` images in `[0, 1]`, labels), after checking
/// that the four files are there; errors name `--mnist DIR` and what is missing.
pub(crate) fn load_mnist(dir: &Path) -> Result<tch::vision::dataset::Dataset> {
    if !dir.is_dir() {
        bail!("--mnist {}: no such directory", dir.display());
    }
    let missing = missing_files(dir, &MNIST_FILES);
    if !missing.is_empty() {
        bail!(
            "--mnist {}: missing {} (the four uncompressed MNIST files are needed; gunzip the .gz downloads)",
            dir.display(),
            missing.join(", ")
        );
    }
    tch::vision::mnist::load_dir(dir)
        .with_context(|| format!("--mnist {}: cannot read the MNIST files", dir.display()))
}

/// Those of `files` that are not files in `dir`.
fn missing_files<'a>(dir: &Path, files: &[&'a str]) -> Vec<&'a str> {
    files
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect()
}

/// One `.npy` file of the expected element type (`u8` or `i64`) and shape (`None`: any size), read
/// and checked by `npyz` (header, dtype, C order, and enough data bytes) before it becomes a tensor.
fn read_npy(path: &Path, kind: Kind, shape: &[Option<i64>]) -> Result<Tensor> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a .npy file", path.display()))?;
    if npy.order() != npyz::Order::C {
        bail!("{}: Fortran order; expected C order", path.display());
    }
    let got: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
    let shape_ok = got.len() == shape.len()
        && got
            .iter()
            .zip(shape)
            .all(|(g, want)| want.is_none_or(|w| w == *g));
    if !shape_ok {
        let want: Vec<String> = shape
            .iter()
            .map(|d| d.map_or("N".to_string(), |d| d.to_string()))
            .collect();
        bail!(
            "{}: expected shape [{}], got {got:?}",
            path.display(),
            want.join(", ")
        );
    }
    let bad = |e: std::io::Error| anyhow!("{}: expected {kind:?} data: {e}", path.display());
    let t = match kind {
        Kind::Uint8 => Tensor::f_from_slice(&npy.into_vec::<u8>().map_err(bad)?)?,
        Kind::Int64 => Tensor::f_from_slice(&npy.into_vec::<i64>().map_err(bad)?)?,
        _ => unreachable!("only u8 and i64 files are read"),
    };
    Ok(t.f_reshape(got.as_slice())?)
}
