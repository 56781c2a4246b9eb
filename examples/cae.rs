//! A contractive auto-encoder (Rifai et al., 2011) against a plain auto-encoder.
//!
//! Both have a one-layer sigmoid encoder `h = σ(W x + b)` and a linear decoder; the CAE adds
//! `λ·‖J_h(x)‖_F²` ([`contractive_penalty`]) to the reconstruction loss `‖x − x̂‖²`. The data are,
//! by default, points on a 2-D manifold (a curved sheet) embedded in 64-D by a fixed smooth random
//! map, plus a little noise, generated from `--seed`; `--mnist DIR` trains on MNIST instead.
//!
//! At the end it compares both on held-out points: reconstruction error, mean `‖J‖_F` (exact,
//! by [`batch_jacobian`]) and the singular values of `J` averaged over the points — the CAE
//! keeps the few large ones (the manifold's tangent directions) and shrinks the rest. It prints a
//! table and writes an SVG plot of both spectra.
//!
//!     cargo run --release --example cae [-- --help]
//!
//! Runs on CUDA when available (`--device cpu|cuda|cuda:N` to choose).
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    batch_jacobian, contractive_penalty, sigmoid_linear_frobenius_sq, Estimator, JacobianOptions,
};

const USAGE: &str = "\
cae: a plain and a contractive auto-encoder (sigmoid encoder, linear decoder), compared on
held-out points: reconstruction error, mean |J|_F and the singular values of J.

usage: cargo run --release --example cae -- [OPTIONS]

  --estimator E     penalty estimator while training: closed-form (default), exact (one backward
                    pass per hidden unit: ~10x slower here), projections (unbiased, noisy)
  --k K             projections per step for --estimator projections (default 1)
  --lambda L        penalty weight of the CAE (default 4; MNIST: 0.1)
  --hidden M        hidden units (default 32; MNIST: 256)
  --epochs N        training epochs (default 300; MNIST: 5)
  --batch-size B    mini-batch size (default 128)
  --lr R            Adam learning rate (default 0.003; MNIST: 0.001)
  --seed S          seed of the data and of torch's generator (default 0)
  --mnist DIR       train on MNIST: DIR holds train-images-idx3-ubyte, train-labels-idx1-ubyte,
                    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (uncompressed)
  --device D        cpu, cuda or cuda:N (default: CUDA when available)
  --threads T       libtorch CPU threads (default: libtorch's choice)
  --plot PATH       SVG plot of both spectra (default target/cae-spectrum.svg)
  -h, --help        this help";

/// Which [`Estimator`] the CAE trains with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum EstimatorArg {
    ClosedForm,
    Exact,
    Projections,
}

#[derive(Debug)]
struct Args {
    estimator: EstimatorArg,
    k: usize,
    lambda: Option<f64>,
    hidden: Option<i64>,
    epochs: Option<usize>,
    batch_size: i64,
    lr: Option<f64>,
    seed: i64,
    mnist: Option<PathBuf>,
    device: Option<Device>,
    threads: Option<i32>,
    plot: PathBuf,
    help: bool,
}

fn number<T: FromStr>(flag: &str, s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| anyhow!("{flag}: cannot read {s:?} as a number: {e}"))
}

fn parse_device(s: &str) -> Result<Device> {
    let cuda_count = || {
        if tch::Cuda::is_available() {
            tch::Cuda::device_count()
        } else {
            0
        }
    };
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if cuda_count() == 0 {
                bail!("--device cuda: no CUDA device found (no GPU, or a CPU-only libtorch)");
            }
            Ok(Device::Cuda(0))
        }
        _ => match s.strip_prefix("cuda:") {
            Some(i) => {
                let i: usize = number("--device", i)?;
                let count = cuda_count();
                if i as i64 >= count {
                    bail!("--device {s}: only {count} CUDA device(s) found");
                }
                Ok(Device::Cuda(i))
            }
            None => bail!("--device: expected cpu, cuda or cuda:N, got {s:?}"),
        },
    }
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut a = Args {
        estimator: EstimatorArg::ClosedForm,
        k: 1,
        lambda: None,
        hidden: None,
        epochs: None,
        batch_size: 128,
        lr: None,
        seed: 0,
        mnist: None,
        device: None,
        threads: None,
        plot: PathBuf::from("target/cae-spectrum.svg"),
        help: false,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| anyhow!("{flag} needs a value (try --help)"))
        };
        match flag.as_str() {
            "-h" | "--help" => a.help = true,
            "--estimator" => {
                a.estimator = match value()?.as_str() {
                    "closed-form" => EstimatorArg::ClosedForm,
                    "exact" => EstimatorArg::Exact,
                    "projections" => EstimatorArg::Projections,
                    other => bail!(
                        "--estimator: expected exact, closed-form or projections, got {other:?}"
                    ),
                }
            }
            "--k" => a.k = number(&flag, &value()?)?,
            "--lambda" => a.lambda = Some(number(&flag, &value()?)?),
            "--hidden" => a.hidden = Some(number(&flag, &value()?)?),
            "--epochs" => a.epochs = Some(number(&flag, &value()?)?),
            "--batch-size" => a.batch_size = number(&flag, &value()?)?,
            "--lr" => a.lr = Some(number(&flag, &value()?)?),
            "--seed" => a.seed = number(&flag, &value()?)?,
            "--mnist" => a.mnist = Some(PathBuf::from(value()?)),
            "--device" => a.device = Some(parse_device(&value()?)?),
            "--threads" => a.threads = Some(number(&flag, &value()?)?),
            "--plot" => a.plot = PathBuf::from(value()?),
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.k == 0 {
        bail!("--k: needs at least 1 projection");
    }
    if let Some(l) = a.lambda {
        if !(l.is_finite() && l >= 0.0) {
            bail!("--lambda: needs a finite value ≥ 0, got {l}");
        }
    }
    if a.hidden.is_some_and(|m| m < 1) {
        bail!("--hidden: needs at least 1 unit");
    }
    if a.epochs == Some(0) {
        bail!("--epochs: needs at least 1 epoch");
    }
    if a.threads.is_some_and(|t| t < 1) {
        bail!("--threads: needs at least 1");
    }
    if a.batch_size < 1 {
        bail!("--batch-size: needs at least 1");
    }
    if let Some(lr) = a.lr {
        if !(lr.is_finite() && lr > 0.0) {
            bail!("--lr: needs a finite value > 0, got {lr}");
        }
    }
    Ok(a)
}

/// Training and held-out points, `[N, n]` f32 on the training device.
struct Data {
    name: String,
    train: Tensor,
    test: Tensor,
    /// The manifold's dimension, when known.
    intrinsic_dim: Option<usize>,
}

/// Points on a curved 2-D sheet in 64-D: latent coordinates `(u, v)` uniform in `[−1, 1]²`, mapped
/// by the fixed smooth random map `(u, v) ↦ tanh(u a + v b + c)` (`a`, `b`, `c` Gaussian in ℝ⁶⁴,
/// drawn once from the seed; injective, curved by the tanh), plus Gaussian noise of s.d. `noise`.
fn curved_sheet(n_train: i64, n_test: i64, noise: f64, device: Device) -> Result<Data> {
    const DIM: i64 = 64;
    let cpu = (Kind::Float, Device::Cpu);
    let n = n_train + n_test;
    let latent = Tensor::f_rand([n, 2], cpu)?
        .f_mul_scalar(2.0)?
        .f_sub_scalar(1.0)?; // [n, 2]
    let ab = Tensor::f_randn([2, DIM], cpu)?.f_mul_scalar(0.7)?;
    let c = Tensor::f_randn([DIM], cpu)?.f_mul_scalar(0.5)?;
    let x = latent
        .f_matmul(&ab)?
        .f_add(&c)?
        .f_tanh()?
        .f_add(&Tensor::f_randn([n, DIM], cpu)?.f_mul_scalar(noise)?)?
        .f_to_device(device)?;
    Ok(Data {
        name: format!("curved 2-D sheet in {DIM}-D, noise s.d. {noise}"),
        train: x.f_narrow(0, 0, n_train)?,
        test: x.f_narrow(0, n_train, n_test)?,
        intrinsic_dim: Some(2),
    })
}

const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// MNIST's 60 000 training images and the first `n_test` test images, `[N, 784]` in `[0, 1]`.
fn mnist(dir: &Path, n_test: i64, device: Device) -> Result<Data> {
    if !dir.is_dir() {
        bail!("--mnist {}: no such directory", dir.display());
    }
    let missing: Vec<&str> = MNIST_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "--mnist {}: missing {} (the four uncompressed MNIST files are needed; gunzip the .gz downloads)",
            dir.display(),
            missing.join(", ")
        );
    }
    let ds = tch::vision::mnist::load_dir(dir)
        .with_context(|| format!("--mnist {}: cannot read the MNIST files", dir.display()))?;
    let n_test = n_test.min(ds.test_images.size()[0]);
    Ok(Data {
        name: format!(
            "MNIST ({} pixels) from {}",
            ds.train_images.size()[1],
            dir.display()
        ),
        train: ds.train_images.f_to_device(device)?,
        test: ds.test_images.f_narrow(0, 0, n_test)?.f_to_device(device)?,
        intrinsic_dim: None,
    })
}

/// One sigmoid layer in, one linear layer out.
struct AutoEncoder {
    vs: nn::VarStore,
    enc: nn::Linear,
    dec: nn::Linear,
}

impl AutoEncoder {
    fn new(device: Device, n: i64, hidden: i64) -> Self {
        let vs = nn::VarStore::new(device);
        let enc = nn::linear(vs.root() / "enc", n, hidden, Default::default());
        let dec = nn::linear(vs.root() / "dec", hidden, n, Default::default());
        AutoEncoder { vs, enc, dec }
    }

    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.enc.forward(x).f_sigmoid()?)
    }

    fn decode(&self, h: &Tensor) -> Tensor {
        self.dec.forward(h)
    }
}

/// `‖x − x̂‖²` per sample, `[B]`.
fn sq_error(x: &Tensor, xr: &Tensor) -> Result<Tensor> {
    Ok(xr
        .f_sub(x)?
        .f_square()?
        .f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?)
}

struct Config {
    estimator: EstimatorArg,
    k: usize,
    hidden: i64,
    epochs: usize,
    batch_size: i64,
    lr: f64,
}

impl Config {
    fn estimator(&self, model: &AutoEncoder) -> Estimator {
        match self.estimator {
            EstimatorArg::ClosedForm => Estimator::sigmoid_closed_form(&model.enc.ws),
            EstimatorArg::Exact => Estimator::Exact,
            // Fresh directions at every step from torch's (seeded) generator.
            EstimatorArg::Projections => Estimator::Projections {
                k: self.k,
                seed: None,
            },
        }
    }
}

/// Trains one auto-encoder (`lambda = 0`: plain) with a progress bar over the epochs showing the
/// epoch's mean reconstruction error and `‖J‖_F²`.
fn train(data: &Data, cfg: &Config, lambda: f64, label: &'static str) -> Result<AutoEncoder> {
    let device = data.train.device();
    let (n_train, n) = (data.train.size()[0], data.train.size()[1]);
    let model = AutoEncoder::new(device, n, cfg.hidden);
    let mut opt = nn::Adam::default().build(&model.vs, cfg.lr)?;
    let penalized = lambda > 0.0;
    let x_needs_grad = penalized && cfg.estimator != EstimatorArg::ClosedForm;

    let pb = ProgressBar::new(cfg.epochs as u64).with_prefix(label);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>3} [{bar:20}] epoch {pos}/{len}  {msg}  {elapsed}")?
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let (mut recon, mut jac_sq) = (f64::NAN, f64::NAN);
    for _ in 0..cfg.epochs {
        let perm = Tensor::f_randperm(n_train, (Kind::Int64, device))?;
        let mut recon_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut jac_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut lo = 0;
        while lo < n_train {
            let len = cfg.batch_size.min(n_train - lo);
            let idx = perm.f_narrow(0, lo, len)?;
            lo += len;
            let mut x = data.train.f_index_select(0, &idx)?;
            if x_needs_grad {
                x = x.set_requires_grad(true);
            }
            let h = model.encode(&x)?;
            let per_sample = sq_error(&x, &model.decode(&h))?;
            let rec = per_sample.f_mean(None::<Kind>)?;
            let loss = if penalized {
                let penalty = contractive_penalty(&h, &x, &cfg.estimator(&model))?;
                rec.f_add(&penalty.f_mul_scalar(lambda)?)?
            } else {
                rec.shallow_clone()
            };
            // What the bar shows, before the step: the exact ‖J‖_F² of this batch (closed form).
            tch::no_grad(|| -> Result<()> {
                let js = sigmoid_linear_frobenius_sq(&model.enc.ws, &h.f_detach()?)?;
                jac_sum = jac_sum.f_add(&js.f_sum(Kind::Float)?)?;
                recon_sum = recon_sum.f_add(&per_sample.f_detach()?.f_sum(Kind::Float)?)?;
                Ok(())
            })?;
            opt.zero_grad();
            loss.f_backward()?;
            opt.step();
        }
        recon = recon_sum.f_double_value(&[])? / n_train as f64;
        jac_sq = jac_sum.f_double_value(&[])? / n_train as f64;
        if !(recon.is_finite() && jac_sq.is_finite()) {
            pb.abandon();
            bail!("{label}: training diverged (reconstruction {recon}, |J|_F^2 {jac_sq}); try a smaller --lr or --lambda");
        }
        pb.set_message(format!("recon {recon:.4}  ‖J‖²_F {jac_sq:.3}"));
        pb.inc(1);
    }
    pb.finish_and_clear();
    println!(
        "{label:>3}: {} epochs in {:.1} s; last epoch: recon ‖x−x̂‖² {recon:.4}, penalty ‖J‖²_F {jac_sq:.3}",
        cfg.epochs,
        start.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// Held-out statistics of one model.
struct Eval {
    recon: f64,
    jac_fro: f64,
    jac_fro_sq: f64,
    /// Mean over the points of the singular values of `J(x)`, descending.
    spectrum: Vec<f64>,
    /// max |closed form − exact| / exact of `‖J‖_F²` over the points.
    closed_form_gap: f64,
}

/// Exact per-point Jacobians by [`batch_jacobian`] (chunks of `chunk` points).
fn evaluate(model: &AutoEncoder, test: &Tensor, chunk: i64) -> Result<Eval> {
    let n_test = test.size()[0];
    let (mut recon, mut fro, mut fro_sq, mut gap) = (0.0, 0.0, 0.0, 0.0f64);
    let mut sv_sum: Option<Tensor> = None;
    let mut lo = 0;
    while lo < n_test {
        let len = chunk.min(n_test - lo);
        let x = test
            .f_narrow(0, lo, len)?
            .f_contiguous()?
            .f_detach_copy()?
            .set_requires_grad(true);
        lo += len;
        let h = model.encode(&x)?;
        let j = batch_jacobian(&h, &x, &JacobianOptions::default())?; // [len, m, n]
        let h = h.f_detach()?;
        let j_sq = j
            .f_square()?
            .f_sum_dim_intlist([1i64, 2].as_slice(), false, None::<Kind>)?; // [len]
        let closed = tch::no_grad(|| sigmoid_linear_frobenius_sq(&model.enc.ws, &h))?;
        let rel = closed.f_sub(&j_sq)?.f_abs()?.f_div(&j_sq)?;
        gap = gap.max(rel.f_max()?.f_double_value(&[])?);
        recon += sq_error(&x, &model.decode(&h))?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?;
        fro += j_sq.f_sqrt()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        fro_sq += j_sq.f_sum(Kind::Double)?.f_double_value(&[])?;
        // Singular values per point, [len, min(m, n)], descending.
        // (`Tensor::linalg_svdvals(&j, "")` passes the driver as `Some("")`, which libtorch
        // rejects on CPU; `svd` without U, V calls the same LAPACK routine with no driver.)
        let (_, sv, _) = j.f_to_kind(Kind::Double)?.f_svd(true, false)?;
        let sv = sv.f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)?;
        sv_sum = Some(match sv_sum {
            None => sv,
            Some(s) => s.f_add(&sv)?,
        });
    }
    let spectrum = Vec::<f64>::try_from(
        sv_sum
            .ok_or_else(|| anyhow!("no held-out points"))?
            .f_div_scalar(n_test as f64)?
            .f_to_device(Device::Cpu)?,
    )?;
    let nf = n_test as f64;
    Ok(Eval {
        recon: recon / nf,
        jac_fro: fro / nf,
        jac_fro_sq: fro_sq / nf,
        spectrum,
        closed_form_gap: gap,
    })
}

/// Mean `‖x − x̄‖²` of the held-out points (for the relative reconstruction error).
fn spread(x: &Tensor) -> Result<f64> {
    let mean = x.f_mean_dim([0i64].as_slice(), true, None::<Kind>)?;
    Ok(sq_error(x, &mean)?
        .f_mean(Kind::Double)?
        .f_double_value(&[])?)
}

/// Indices (0-based) of the spectrum rows to print: the first 10, then powers of two, the last.
fn rows_to_print(r: usize) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..r.min(10)).collect();
    let mut p = 16;
    while p < r {
        rows.push(p - 1);
        p *= 2;
    }
    if r > 10 {
        rows.push(r - 1);
    }
    rows
}

/// One panel: both spectra against `i`, log-scale y.
fn spectrum_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    ae: &[f64],
    cae: &[f64],
    intrinsic: Option<usize>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let positive = ae
        .iter()
        .chain(cae)
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0);
    let lo = positive.clone().fold(f64::INFINITY, f64::min) / 2.0;
    let hi = positive.fold(0.0, f64::max) * 2.0;
    if !(lo.is_finite() && hi > lo) {
        bail!("no positive singular values to plot");
    }
    let r = ae.len().max(cae.len());
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.5f64..r as f64 + 0.5, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("i (singular values in descending order)")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    if let Some(d) = intrinsic {
        let x = d as f64 + 0.5;
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_series(DashedLineSeries::new(
                [(x, lo), (x, hi)],
                6,
                4,
                grey.stroke_width(1),
            ))?
            .label(format!("manifold dimension ({d})"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 22, y)], grey.stroke_width(1)));
    }
    let series = [
        ("plain auto-encoder", ae, RGBColor(214, 96, 39)),
        ("contractive auto-encoder", cae, RGBColor(33, 102, 172)),
    ];
    for (name, values, color) in series {
        let points = values
            .iter()
            .enumerate()
            .map(|(i, v)| ((i + 1) as f64, v.max(lo)));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 22, y)], color.stroke_width(2)));
        chart.draw_series(points.map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// Writes the SVG: the mean spectra (left) and the same divided by `σ_1` (right).
fn plot(
    path: &Path,
    caption: &str,
    ae: &[f64],
    cae: &[f64],
    intrinsic: Option<usize>,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--plot: cannot create {}", dir.display()))?;
    }
    let normalized = |s: &[f64]| -> Vec<f64> {
        let first = s.first().copied().unwrap_or(1.0);
        s.iter().map(|v| v / first).collect()
    };
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(caption, ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(600);
    spectrum_panel(
        &left,
        "mean singular values σ_i(J)",
        "σ_i (log scale)",
        ae,
        cae,
        intrinsic,
    )?;
    spectrum_panel(
        &right,
        "relative to the largest: σ_i / σ_1",
        "σ_i / σ_1 (log scale)",
        &normalized(ae),
        &normalized(cae),
        intrinsic,
    )?;
    root.present()
        .with_context(|| format!("--plot: cannot write {}", path.display()))?;
    Ok(())
}

fn run(args: Args) -> Result<()> {
    let device = args.device.unwrap_or_else(Device::cuda_if_available);
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    tch::manual_seed(args.seed);
    let is_mnist = args.mnist.is_some();
    let data = match &args.mnist {
        Some(dir) => mnist(dir, 1000, device)?,
        None => curved_sheet(4000, 1000, 0.02, device)?,
    };
    let cfg = Config {
        estimator: args.estimator,
        k: args.k,
        hidden: args.hidden.unwrap_or(if is_mnist { 256 } else { 32 }),
        epochs: args.epochs.unwrap_or(if is_mnist { 5 } else { 300 }),
        batch_size: args.batch_size,
        lr: args.lr.unwrap_or(if is_mnist { 1e-3 } else { 3e-3 }),
    };
    let lambda = args.lambda.unwrap_or(if is_mnist { 0.1 } else { 4.0 });
    let (n_train, n) = (data.train.size()[0], data.train.size()[1]);
    let estimator = match cfg.estimator {
        EstimatorArg::ClosedForm => "closed form".to_string(),
        EstimatorArg::Exact => "exact".to_string(),
        EstimatorArg::Projections => format!("projections (k = {})", cfg.k),
    };
    println!(
        "data: {}; {n_train} training / {} held-out points",
        data.name,
        data.test.size()[0]
    );
    println!(
        "model: {n} → {} sigmoid → {n} linear; Adam lr {}, batch {}, {} epochs; device {device:?} ({} CPU threads), seed {}",
        cfg.hidden, cfg.lr, cfg.batch_size, cfg.epochs, tch::get_num_threads(), args.seed
    );
    println!("CAE: loss = ‖x−x̂‖² + λ‖J‖²_F, λ = {lambda}, estimator: {estimator}\n");

    let ae = train(&data, &cfg, 0.0, "AE")?;
    let cae = train(&data, &cfg, lambda, "CAE")?;

    let chunk = if is_mnist { 100 } else { 500 };
    let (e_ae, e_cae) = (
        evaluate(&ae, &data.test, chunk)?,
        evaluate(&cae, &data.test, chunk)?,
    );
    let var = spread(&data.test)?;
    let n_test = data.test.size()[0];
    let row_name = |name: &str| {
        // Pads to 36 columns; combining marks (the hat of x̂) take no column.
        let width = name
            .chars()
            .filter(|c| !('\u{300}'..='\u{36f}').contains(c))
            .count();
        format!("{name}{}", " ".repeat(36usize.saturating_sub(width)))
    };
    println!(
        "\n{} {:>10}   {:>10}",
        row_name(&format!("held-out ({n_test} points)")),
        "AE",
        "CAE"
    );
    let row = |name: &str, a: f64, c: f64| println!("{} {a:>10.4}   {c:>10.4}", row_name(name));
    row("reconstruction ‖x−x̂‖²", e_ae.recon, e_cae.recon);
    row(
        "  relative (÷ mean ‖x−x̄‖²)",
        e_ae.recon / var,
        e_cae.recon / var,
    );
    row("mean ‖J‖_F (exact)", e_ae.jac_fro, e_cae.jac_fro);
    row("mean ‖J‖²_F (exact)", e_ae.jac_fro_sq, e_cae.jac_fro_sq);
    if let Some(d) = data.intrinsic_dim {
        let share = |s: &[f64]| {
            let top: f64 = s.iter().take(d).map(|v| v * v).sum();
            top / s.iter().map(|v| v * v).sum::<f64>()
        };
        row(
            &format!("share of Σσ_i² in the top {d}"),
            share(&e_ae.spectrum),
            share(&e_cae.spectrum),
        );
    }
    println!("\nsingular values of J (mean over the held-out points)");
    println!("   i           AE          CAE      CAE/AE");
    let r = e_ae.spectrum.len().min(e_cae.spectrum.len());
    for i in rows_to_print(r) {
        let (a, c) = (e_ae.spectrum[i], e_cae.spectrum[i]);
        println!("{:>4} {a:>12.4e} {c:>12.4e} {:>11.4}", i + 1, c / a);
    }
    println!(
        "\ncheck: closed form vs exact ‖J‖²_F, max relative difference: AE {:.1e}, CAE {:.1e}",
        e_ae.closed_form_gap, e_cae.closed_form_gap
    );

    let caption = if is_mnist {
        "Encoder Jacobian J = ∂h/∂x on held-out MNIST images, averaged over the points".to_string()
    } else {
        "Encoder Jacobian J = ∂h/∂x on held-out points of a curved 2-D sheet in 64-D".to_string()
    };
    plot(
        &args.plot,
        &caption,
        &e_ae.spectrum,
        &e_cae.spectrum,
        data.intrinsic_dim,
    )?;
    println!("plot: {}", args.plot.display());
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(|args| {
        if args.help {
            println!("{USAGE}");
            Ok(())
        } else {
            run(args)
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
