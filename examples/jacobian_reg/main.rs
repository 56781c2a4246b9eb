//! Jacobian regularization of a classifier (Hoffman, Roberts & Yaida, 2019, "Robust learning
//! with Jacobian regularization") on the 8x8 digits.
//!
//! An MLP and a small CNN (with LayerNorm) are trained with cross-entropy alone and with
//! `CE + λ·mean_b ‖J_b‖_F²`, `J_b = ∂ logits_b / ∂ x_b`, the penalty by [`contractive_penalty`]
//! with each estimator: `exact` (all 10 rows), `projections` (one random direction per sample,
//! Hoffman's estimator) and `hutchpp` (Hutch++ with 3 products). Then, on the test images: clean
//! accuracy, the mean exact `‖J‖_F` ([`batch_jacobian`]), and accuracy under Gaussian noise, FGSM
//! and PGD, the attacks' input gradients by the crate's [`vjp`]. It prints the time per epoch of
//! each estimator and the accuracies, writes one JSON line per (model, estimator, seed) with
//! `--json` (the schema of the PyTorch twin `bench/jacobian_reg.py`; both follow the same spec),
//! and an SVG of accuracy against ε.
//!
//!     cargo run --release --example jacobian_reg [-- --help]
//!
//! The parts: [`data`] (the digits, or MNIST), [`digits`] (the digits' `.npy` files), [`model`] (the networks and the
//! training loop), [`attack`] (the evaluation), [`report`] (tables and JSON) and [`plot`] (the
//! SVG).
//!
//! Runs on CUDA when available (`--device cpu|cuda|cuda:N` to choose).
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
mod attack;
mod data;
mod digits;
mod model;
mod plot;
mod report;
#[cfg(test)]
mod tests;

use attack::*;
use data::*;
use digits::*;
use model::*;
use plot::*;
use report::*;
use tch_jacobian::{
    batch_jacobian, contractive_penalty, parse_device, vjp, Estimator, JacobianOptions,
};

/// MNIST test images evaluated (the first ones).
const MNIST_TEST: i64 = 1000;

const USAGE: &str = "\
jacobian_reg: Jacobian regularization (Hoffman, Roberts & Yaida, 2019) of an MLP and a CNN on
the 8x8 digits: cross-entropy alone, and cross-entropy + λ·mean_b |d logits_b / d x_b|_F^2 with
the penalty by each estimator. Prints the training time per epoch and, on the test images, the
clean accuracy, the mean exact |J|_F and the accuracy under Gaussian noise, FGSM and PGD.

usage: cargo run --release --example jacobian_reg -- [OPTIONS]

  --model M          mlp, cnn or both (default both)
  --estimators LIST  comma list of: none (cross-entropy alone), exact (all 10 rows of J),
                     projections (one random direction per sample and step, k = 1),
                     hutchpp (Hutch++, k = 3 products) (default none,exact,projections,hutchpp)
  --seeds LIST       comma list of seeds (default 0); a seed drives the initialization, the
                     shuffling, the estimators' draws and the test noise
  --epochs N         training epochs (default 30)
  --batch-size B     mini-batch size, the last partial batch kept (default 64)
  --lr R             Adam learning rate (default 0.001)
  --lambda L         penalty weight λ (default 0.01)
  --threads T        libtorch CPU threads (default 2)
  --sigmas LIST      Gaussian noise s.d. on the test images, clipped to [0, 1]
                     (default 0,0.1,0.2,0.3,0.4,0.5)
  --eps LIST         L-inf budgets of FGSM and PGD (default 0,0.02,0.05,0.1,0.15,0.2)
  --pgd-steps N      PGD steps of size 2.5 eps / N, no random start (default 10)
  --json PATH        write PATH (replaced if there): one JSON object per line per
                     (model, estimator, seed)
  --plot PATH        SVG of accuracy vs eps under FGSM and PGD per model, means over the seeds
                     (default target/jacobian-reg.svg)
  --digits DIR       the digits' train-images.npy, train-labels.npy, test-images.npy,
                     test-labels.npy (default: data/digits of this checkout)
  --mnist DIR        MNIST instead of the digits: DIR holds train-images-idx3-ubyte,
                     train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte
                     (uncompressed); all 60000 training images, the first 1000 test images;
                     the CNN's LayerNorm and linear sizes follow the 28x28 input
  --device D         cpu, cuda or cuda:N (default: CUDA when available)
  -h, --help         this help";

#[derive(Debug)]
struct Args {
    models: Vec<ModelKind>,
    estimators: Vec<EstimatorArg>,
    seeds: Vec<i64>,
    epochs: usize,
    batch_size: i64,
    lr: f64,
    lambda: f64,
    threads: i32,
    sigmas: Vec<f64>,
    eps: Vec<f64>,
    pgd_steps: usize,
    json: Option<PathBuf>,
    plot: PathBuf,
    digits: Option<PathBuf>,
    mnist: Option<PathBuf>,
    device: Option<Device>,
    help: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            models: vec![ModelKind::Mlp, ModelKind::Cnn],
            estimators: EstimatorArg::ALL.to_vec(),
            seeds: vec![0],
            epochs: 30,
            batch_size: 64,
            lr: 1e-3,
            lambda: 0.01,
            threads: 2,
            sigmas: vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
            eps: vec![0.0, 0.02, 0.05, 0.1, 0.15, 0.2],
            pgd_steps: 10,
            json: None,
            plot: PathBuf::from("target/jacobian-reg.svg"),
            digits: None,
            mnist: None,
            device: None,
            help: false,
        }
    }
}

fn number<T: FromStr>(flag: &str, s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.trim()
        .parse()
        .map_err(|e| anyhow!("{flag}: cannot read {s:?} as a number: {e}"))
}

/// A comma list of items, none empty, at least one.
fn list<T>(flag: &str, s: &str, item: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    let items = s
        .split(',')
        .map(|v| {
            if v.trim().is_empty() {
                bail!("{flag}: empty item in {s:?}");
            }
            item(v.trim())
        })
        .collect::<Result<Vec<T>>>()?;
    if items.is_empty() {
        bail!("{flag}: needs at least one value");
    }
    Ok(items)
}

/// A comma list of finite numbers ≥ 0.
fn grid(flag: &str, s: &str) -> Result<Vec<f64>> {
    list(flag, s, |v| {
        let x: f64 = number(flag, v)?;
        if !(x.is_finite() && x >= 0.0) {
            bail!("{flag}: needs finite values ≥ 0, got {v}");
        }
        Ok(x)
    })
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut a = Args::default();
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
            "--model" => {
                a.models = match value()?.as_str() {
                    "mlp" => vec![ModelKind::Mlp],
                    "cnn" => vec![ModelKind::Cnn],
                    "both" => vec![ModelKind::Mlp, ModelKind::Cnn],
                    other => bail!("--model: expected mlp, cnn or both, got {other:?}"),
                }
            }
            "--estimators" => {
                a.estimators = list(&flag, &value()?, |v| {
                    EstimatorArg::parse(v).ok_or_else(|| {
                        anyhow!(
                            "--estimators: expected none, exact, projections or hutchpp, got {v:?}"
                        )
                    })
                })?;
                for (i, e) in a.estimators.iter().enumerate() {
                    if a.estimators[..i].contains(e) {
                        bail!("--estimators: {} given twice", e.name());
                    }
                }
            }
            "--seeds" => a.seeds = list(&flag, &value()?, |v| number(&flag, v))?,
            "--epochs" => a.epochs = number(&flag, &value()?)?,
            "--batch-size" => a.batch_size = number(&flag, &value()?)?,
            "--lr" => a.lr = number(&flag, &value()?)?,
            "--lambda" => a.lambda = number(&flag, &value()?)?,
            "--threads" => a.threads = number(&flag, &value()?)?,
            "--sigmas" => a.sigmas = grid(&flag, &value()?)?,
            "--eps" => a.eps = grid(&flag, &value()?)?,
            "--pgd-steps" => a.pgd_steps = number(&flag, &value()?)?,
            "--json" => a.json = Some(PathBuf::from(value()?)),
            "--plot" => a.plot = PathBuf::from(value()?),
            "--digits" => a.digits = Some(PathBuf::from(value()?)),
            "--mnist" => a.mnist = Some(PathBuf::from(value()?)),
            "--device" => {
                a.device = Some(parse_device(&value()?).map_err(|e| anyhow!("--device: {e}"))?)
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.epochs == 0 {
        bail!("--epochs: needs at least 1 epoch");
    }
    if a.batch_size < 1 {
        bail!("--batch-size: needs at least 1");
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr: needs a finite value > 0, got {}", a.lr);
    }
    if !(a.lambda.is_finite() && a.lambda >= 0.0) {
        bail!("--lambda: needs a finite value ≥ 0, got {}", a.lambda);
    }
    if a.threads < 1 {
        bail!("--threads: needs at least 1");
    }
    if a.pgd_steps == 0 {
        bail!("--pgd-steps: needs at least 1 step");
    }
    if a.digits.is_some() && a.mnist.is_some() {
        bail!("--digits and --mnist: give one of them");
    }
    Ok(a)
}

/// Creates the folder that will hold `path` (named by `flag` in the error).
fn make_parent(flag: &str, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{flag}: cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// Trains and evaluates every (model, estimator, seed); `line` gets each record as it is done.
fn train_all(
    data: &Data,
    args: &Args,
    quiet: bool,
    mut line: impl FnMut(&Record) -> Result<()>,
) -> Result<Vec<Record>> {
    let cfg = Config {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        lambda: args.lambda,
    };
    let grids = Grids {
        sigmas: args.sigmas.clone(),
        eps: args.eps.clone(),
        pgd_steps: args.pgd_steps,
    };
    let mut records = Vec::new();
    for &model in &args.models {
        for &estimator in &args.estimators {
            for &seed in &args.seeds {
                let trained = train(data, model, estimator, seed, &cfg, quiet)?;
                let (ms_mean, ms_min) = trained.ms_per_epoch();
                let eval = evaluate(&trained.net, data, &grids, seed)?;
                if !quiet {
                    let penalty = if trained.last_penalty.is_nan() {
                        String::new()
                    } else {
                        format!(", ‖J‖²_F {:.3}", trained.last_penalty)
                    };
                    println!(
                        "{:<26} {ms_mean:7.1} ms/epoch (min {ms_min:.1}); last epoch CE {:.4}{penalty}; clean acc {:.4}, mean ‖J‖_F {:.3}",
                        format!("{} {} seed {seed}:", model.name(), estimator.name()),
                        trained.last_ce,
                        eval.clean_acc,
                        eval.mean_jf
                    );
                }
                let record = Record {
                    model,
                    estimator,
                    seed,
                    ms_per_epoch_mean: ms_mean,
                    ms_per_epoch_min: ms_min,
                    eval,
                };
                line(&record)?;
                records.push(record);
            }
        }
    }
    Ok(records)
}

fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let device = args.device.unwrap_or_else(Device::cuda_if_available);
    tch::set_num_threads(args.threads);
    let data = match (&args.mnist, &args.digits) {
        (Some(dir), _) => mnist(dir, MNIST_TEST, device)?,
        (None, Some(dir)) => digits(dir, device)?,
        (None, None) => digits(Path::new(DIGITS_DIR), device)?,
    };
    // Output paths first: a bad one fails now, not after the training.
    let mut json = match &args.json {
        Some(path) => {
            make_parent("--json", path)?;
            let file = File::create(path)
                .with_context(|| format!("--json: cannot create {}", path.display()))?;
            Some((file, path))
        }
        None => None,
    };
    make_parent("--plot", &args.plot)?;
    File::create(&args.plot)
        .with_context(|| format!("--plot: cannot create {}", args.plot.display()))?;

    println!(
        "data: {}; {} training / {} test images",
        data.name,
        data.train_x.size()[0],
        data.test_x.size()[0]
    );
    println!(
        "training: Adam lr {}, batch {}, {} epochs, loss CE + λ‖J‖²_F with λ = {}; device {device:?} ({} CPU threads); seeds {:?}",
        args.lr,
        args.batch_size,
        args.epochs,
        args.lambda,
        tch::get_num_threads(),
        args.seeds
    );
    for m in &args.models {
        println!("{}: {}", m.name(), m.describe(data.side));
    }
    println!(
        "estimators: {}\n",
        args.estimators
            .iter()
            .map(|e| e.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let info = RunInfo {
        epochs: args.epochs,
        threads: tch::get_num_threads(),
        device: device_name(device),
    };
    let records = train_all(&data, &args, false, |r| {
        if let Some((file, path)) = &mut json {
            writeln!(file, "{}", json_line(r, &info))
                .with_context(|| format!("--json: cannot write {}", path.display()))?;
        }
        Ok(())
    })?;

    for &m in &args.models {
        print_tables(
            &records,
            m,
            &args.estimators,
            args.seeds.len(),
            args.pgd_steps,
        );
    }
    println!();
    if let Some((_, path)) = &json {
        println!("json: {}", path.display());
    }
    let curves: Vec<ModelCurves> = args
        .models
        .iter()
        .map(|&m| {
            let per = |pick: Pick| -> Vec<Curve> {
                args.estimators
                    .iter()
                    .map(|&e| (e.name(), mean_grid(&select(&records, m, e), pick)))
                    .collect()
            };
            ModelCurves {
                model: m.name(),
                fgsm: per(|e| &e.fgsm),
                pgd: per(|e| &e.pgd),
            }
        })
        .collect();
    let title = format!(
        "Jacobian regularization (λ = {}), {}: test accuracy under L∞ attacks",
        args.lambda,
        if args.mnist.is_some() {
            "MNIST"
        } else {
            "8x8 digits"
        }
    );
    plot(&args.plot, &title, &curves, args.pgd_steps)?;
    println!("plot: {}", args.plot.display());
    println!("total: {:.1} s", started.elapsed().as_secs_f64());
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
