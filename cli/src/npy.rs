//! The input `.npy` file (NumPy's `np.save`), read by `npyz`: C or Fortran order, any shape
//! including 0-d, either byte order, the dtypes libtorch has. (J is written by tch's
//! `write_npy`, whose header tch's own `Tensor::read_npy` reads back; npyz's does not parse there.)
use std::cell::Cell;
use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Once;

use npyz::half::f16;
use npyz::num_complex::Complex;
use npyz::{DType, NpyFile, NpyHeader, Order, TypeChar};
use tch::kind::Element;
use tch::{Kind, Tensor};

/// Reads `path` as a tensor; every failure is one line naming the file.
pub fn read(path: &Path) -> Result<Tensor, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read input {shown}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("cannot read input {shown}: it is a directory"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read input {shown}: {e}"))?;
    parse(&bytes).map_err(|why| format!("input {shown} is not a .npy file (np.save): {why}"))
}

/// The tensor in a `.npy` file's bytes.
fn parse(bytes: &[u8]) -> Result<Tensor, String> {
    let mut cursor = Cursor::new(bytes);
    // npyz multiplies the dimensions unchecked, a panic in a debug build when they overflow: a
    // header that does so is an error here, and the panic message is not shown.
    let header = quietly(|| NpyHeader::from_reader(&mut cursor))
        .map_err(|_| "the shape's element count overflows".to_string())?
        .map_err(|e| e.to_string())?;
    let data = &bytes[cursor.position() as usize..];
    let DType::Plain(ty) = header.dtype() else {
        return Err(format!(
            "structured dtype {} is not supported",
            header.dtype().descr()
        ));
    };
    let kind = match (ty.type_char(), ty.size_field()) {
        (TypeChar::Float, 2) => Kind::Half,
        (TypeChar::Float, 4) => Kind::Float,
        (TypeChar::Float, 8) => Kind::Double,
        (TypeChar::Int, 1) => Kind::Int8,
        (TypeChar::Uint, 1) => Kind::Uint8,
        (TypeChar::Int, 2) => Kind::Int16,
        (TypeChar::Int, 4) => Kind::Int,
        (TypeChar::Int, 8) => Kind::Int64,
        (TypeChar::Bool, 1) => Kind::Bool,
        (TypeChar::Complex, 8) => Kind::ComplexFloat,
        (TypeChar::Complex, 16) => Kind::ComplexDouble,
        _ => return Err(format!("unsupported dtype '{ty}'")),
    };
    let shape = header
        .shape()
        .iter()
        .map(|&d| i64::try_from(d).map_err(|_| format!("dimension {d} is too large")))
        .collect::<Result<Vec<i64>, _>>()?;
    let need = header
        .shape()
        .iter()
        .try_fold(kind.elt_size_in_bytes() as u64, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= isize::MAX as u64)
        .ok_or("the shape's element count overflows")? as usize;
    if data.len() < need {
        return Err(format!(
            "truncated data ({} bytes, the header announces {need})",
            data.len()
        ));
    }
    // Fortran (column-major) order: the same elements are the C-order array of the reversed
    // shape, transposed.
    let fortran = header.order() == Order::Fortran && shape.len() > 1;
    let stored: Vec<i64> = if fortran {
        shape.iter().rev().copied().collect()
    } else {
        shape.clone()
    };
    let npy = NpyFile::with_header(header, &data[..need]);
    let tensor = match kind {
        Kind::Half => elements::<f16>(npy, &stored),
        Kind::Float => elements::<f32>(npy, &stored),
        Kind::Double => elements::<f64>(npy, &stored),
        Kind::Int8 => elements::<i8>(npy, &stored),
        Kind::Uint8 => elements::<u8>(npy, &stored),
        Kind::Int16 => elements::<i16>(npy, &stored),
        Kind::Int => elements::<i32>(npy, &stored),
        Kind::Int64 => elements::<i64>(npy, &stored),
        Kind::Bool => elements::<bool>(npy, &stored),
        Kind::ComplexFloat => complex::<f32>(npy, &stored),
        _ => complex::<f64>(npy, &stored),
    }?;
    if !fortran {
        return Ok(tensor);
    }
    let dims: Vec<i64> = (0..shape.len() as i64).rev().collect();
    tensor
        .f_permute(dims.as_slice())
        .and_then(|t| t.f_contiguous())
        .map_err(|e| e.to_string())
}

/// The file's elements, in the order they are stored, as a tensor of shape `shape`.
fn elements<T: npyz::Deserialize + Element>(
    npy: NpyFile<&[u8]>,
    shape: &[i64],
) -> Result<Tensor, String> {
    let values: Vec<T> = npy.into_vec().map_err(|e| e.to_string())?;
    Tensor::f_from_slice(&values)
        .and_then(|t| t.f_reshape(shape))
        .map_err(|e| e.to_string())
}

/// [`elements`] for complex numbers: (re, im) pairs viewed as complex.
fn complex<F>(npy: NpyFile<&[u8]>, shape: &[i64]) -> Result<Tensor, String>
where
    F: Element + Copy,
    Complex<F>: npyz::Deserialize,
{
    let values: Vec<Complex<F>> = npy.into_vec().map_err(|e| e.to_string())?;
    let pairs: Vec<F> = values.iter().flat_map(|c| [c.re, c.im]).collect();
    let paired: Vec<i64> = shape.iter().copied().chain([2]).collect();
    Tensor::f_from_slice(&pairs)
        .and_then(|t| t.f_reshape(paired.as_slice()))
        .and_then(|t| t.f_view_as_complex())
        .map_err(|e| e.to_string())
}

/// `f()`, a panic in it an `Err` without the panic hook's message (on this thread; the hook
/// still reports other threads' panics).
fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }
    static WRAP_HOOK: Once = Once::new();
    WRAP_HOOK.call_once(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                hook(info)
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.npy` file written by hand, so that the header can say anything.
    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let order = if fortran { "True" } else { "False" };
        npy_with(
            &format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}"),
            data,
        )
    }

    /// A `.npy` file of version 1.0 with the header `dict` (a Python literal).
    fn npy_with(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut header = dict.to_string();
        // Padded so that the data start at a multiple of 64 bytes, as NumPy writes it.
        let pad = (64 - (10 + header.len() + 1) % 64) % 64;
        header.push_str(&" ".repeat(pad));
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    fn f64s(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn fortran_order_is_transposed_back() {
        // np.asfortranarray([[1, 2, 3], [4, 5, 6]]) stores 1 4 2 5 3 6.
        let bytes = npy("<f8", true, "(2, 3)", &f64s(&[1., 4., 2., 5., 3., 6.]));
        let t = parse(&bytes).unwrap();
        assert_eq!(t.size(), [2, 3]);
        assert_eq!(values(&t), [1., 2., 3., 4., 5., 6.]);
        // Three dimensions: element [i, j, k] is stored at i + 2 j + 4 k.
        let stored: Vec<f64> = (0..8).map(f64::from).collect();
        let t = parse(&npy("<f8", true, "(2, 2, 2)", &f64s(&stored))).unwrap();
        assert_eq!(t.double_value(&[1, 0, 1]), 5.0);
        assert_eq!(t.double_value(&[0, 1, 1]), 6.0);
    }

    #[test]
    fn every_dtype() {
        let cases: [(&str, Vec<u8>, Kind); 11] = [
            ("<f2", f16::from_f32(1.5).to_le_bytes().to_vec(), Kind::Half),
            ("<f4", 1.5f32.to_le_bytes().to_vec(), Kind::Float),
            ("<f8", 1.5f64.to_le_bytes().to_vec(), Kind::Double),
            ("|i1", (-3i8).to_le_bytes().to_vec(), Kind::Int8),
            ("|u1", vec![200], Kind::Uint8),
            ("<i2", (-3i16).to_le_bytes().to_vec(), Kind::Int16),
            ("<i4", (-3i32).to_le_bytes().to_vec(), Kind::Int),
            ("<i8", (-3i64).to_le_bytes().to_vec(), Kind::Int64),
            ("|b1", vec![1], Kind::Bool),
            (
                "<c8",
                [1.5f32, -2.0].map(f32::to_le_bytes).concat(),
                Kind::ComplexFloat,
            ),
            ("<c16", f64s(&[1.5, -2.0]), Kind::ComplexDouble),
        ];
        for (descr, data, kind) in cases {
            let t = parse(&npy(descr, false, "(1,)", &data)).unwrap();
            assert_eq!((t.size(), t.kind()), (vec![1], kind), "{descr}");
            let expected = match kind {
                Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64 => -3.0,
                Kind::Uint8 => 200.0,
                Kind::Bool => 1.0,
                _ => 1.5,
            };
            let first = if t.is_complex() { t.real() } else { t };
            assert_eq!(first.double_value(&[0]), expected, "{descr}");
        }
        let c = parse(&npy("<c16", false, "(1,)", &f64s(&[1.5, -2.0]))).unwrap();
        assert_eq!(c.imag().double_value(&[0]), -2.0);
        // Big-endian data too.
        let t = parse(&npy(
            ">f8",
            false,
            "(2,)",
            &[1.5f64.to_be_bytes(), 2.5f64.to_be_bytes()].concat(),
        ))
        .unwrap();
        assert_eq!(values(&t), [1.5, 2.5]);
    }

    #[test]
    fn zero_dimensional_and_empty() {
        let t = parse(&npy("<f8", false, "()", &f64s(&[2.5]))).unwrap();
        assert_eq!((t.dim(), t.double_value(&[])), (0, 2.5));
        let t = parse(&npy("<f4", false, "(0, 3)", &[])).unwrap();
        assert_eq!(t.size(), [0, 3]);
    }

    #[test]
    fn bad_files_are_errors() {
        let err = |bytes: &[u8]| parse(bytes).unwrap_err();
        let short = npy("<f8", false, "(4,)", &f64s(&[1.0]));
        assert!(err(&short).contains("truncated data (8 bytes, the header announces 32)"));
        assert!(err(b"not numpy").contains("magic"));
        let full = npy("<f8", false, "(2,)", &f64s(&[1.0, 2.0]));
        assert!(!err(&full[..20]).is_empty()); // header cut short
        assert!(err(&npy("<u2", false, "(1,)", &[0, 0])).contains("unsupported dtype '<u2'"));
        assert!(err(&npy("<M8[s]", false, "(1,)", &f64s(&[0.0]))).contains("unsupported dtype"));
        assert!(err(&npy("bogus", false, "(1,)", &[])).contains("invalid type string"));
        assert!(err(&npy("<f8", false, "(-1,)", &[])).contains("negative"));
        // Element counts past u64 (npyz would overflow) or past memory are errors, not panics.
        let huge = "(4294967296, 4294967296, 2)";
        assert!(err(&npy("<f8", false, huge, &[])).contains("overflows"));
        assert!(err(&npy("<f8", false, "(2147483648, 2147483648)", &[])).contains("overflows"));
        let structured = "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }";
        assert!(err(&npy_with(structured, &f64s(&[1.0]))).contains("structured dtype"));
    }

    #[test]
    fn reads_what_tch_writes() {
        let dir = std::env::temp_dir().join(format!("tch-jacobian-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for kind in [
            Kind::Half,
            Kind::Float,
            Kind::Double,
            Kind::Int64,
            Kind::Uint8,
        ] {
            let t = Tensor::arange(24, (kind, tch::Device::Cpu)).reshape([2, 3, 4]);
            let path = dir.join(format!("{kind:?}.npy"));
            t.write_npy(&path).unwrap();
            let back = read(&path).unwrap();
            assert_eq!((back.size(), back.kind()), (vec![2, 3, 4], kind));
            assert!(back.equal(&t), "{kind:?}");
        }
        let msg = read(&dir).unwrap_err();
        assert!(msg.contains("it is a directory"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
