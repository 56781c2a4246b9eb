//! Jacobian regularization of a classifier (Hoffman, Roberts & Yaida, 2019, "Robust learning
//! with Jacobian regularization") on the 8x8 digits.
//!
//! An MLP and a small CNN (with LayerNorm) are trained with cross-entropy alone and with
//! `CE + λ·mean_b ‖J_b‖_F²`, `J_b = ∂ logits_b / ∂ x_b`, the penalty by [`contractive_penalty`]
//! with each estimator: `exact` (all 10 rows), `projections` (one random direction per sample,
//! Hoffman's estimator) and `hutchpp` (Hutch++ with 3 products). Then, on the test images: clean
//! accuracy, the mean exact `‖J‖_F` ([`per_sample_jacobian`]), and accuracy under Gaussian noise, FGSM
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
//! Runs on CUDA when available (`--device cpu|cuda|cuda:N|auto` to choose).
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
mod attack;
mod data;
mod digits;
mod flags;
mod model;
mod plot;
mod report;
#[cfg(test)]
mod tests;

use attack::*;
use data::*;
use digits::*;
use flags::*;
use model::*;
use plot::*;
use report::*;
use tch_jacobian::{
    jacobian_penalty, per_sample_jacobian, vjp, JacobianOptions, PenaltyEstimator, PenaltyOptions,
};

/// MNIST test images evaluated (the first ones).
const MNIST_TEST: i64 = 1000;

const ABOUT: &str = "\
Jacobian regularization (Hoffman, Roberts & Yaida, 2019) of an MLP and a CNN on the 8x8 digits:
cross-entropy alone, and cross-entropy + λ·mean_b |d logits_b / d x_b|_F^2 with the penalty by
each estimator. Prints the training time per epoch and, on the test images, the clean accuracy,
the mean exact |J|_F and the accuracy under Gaussian noise, FGSM and PGD.";

/// Which networks to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModelArg {
    Mlp,
    Cnn,
    Both,
}

#[derive(Debug, Parser)]
#[command(
    name = "jacobian_reg",
    about = ABOUT,
    override_usage = "cargo run --release --example jacobian_reg -- [OPTIONS]"
)]
struct Args {
    /// Which networks: mlp, cnn or both
    #[arg(long, value_enum, value_name = "M", default_value = "both")]
    model: ModelArg,
    /// Comma list of: none (cross-entropy alone), exact (all 10 rows of J), projections (one
    /// random direction per sample and step, k = 1), hutchpp (Hutch++, k = 3 products)
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = estimator,
        default_value = "none,exact,projections,hutchpp"
    )]
    estimators: Vec<EstimatorArg>,
    /// Comma list of seeds; a seed drives the initialization, the shuffling, the estimators'
    /// draws and the test noise
    #[arg(long, value_name = "LIST", value_delimiter = ',', allow_hyphen_values = true,
        value_parser = number::<i64>, default_value = "0")]
    seeds: Vec<i64>,
    /// Training epochs
    #[arg(long, value_name = "N", allow_negative_numbers = true,
        value_parser = at_least_one::<usize>, default_value = "30")]
    epochs: usize,
    /// Mini-batch size, the last partial batch kept
    #[arg(long, value_name = "B", allow_negative_numbers = true,
        value_parser = at_least_one::<i64>, default_value = "64")]
    batch_size: i64,
    /// Adam learning rate
    #[arg(long, value_name = "R", allow_negative_numbers = true,
        value_parser = positive, default_value = "0.001")]
    lr: f64,
    /// Penalty weight λ
    #[arg(long, value_name = "L", allow_negative_numbers = true,
        value_parser = non_negative, default_value = "0.01")]
    lambda: f64,
    /// libtorch CPU threads
    #[arg(long, value_name = "T", allow_negative_numbers = true,
        value_parser = at_least_one::<i32>, default_value = "2")]
    threads: i32,
    /// Comma list of Gaussian noise s.d. on the test images, clipped to [0, 1]
    #[arg(long, value_name = "LIST", value_delimiter = ',', allow_hyphen_values = true,
        value_parser = non_negative, default_value = "0,0.1,0.2,0.3,0.4,0.5")]
    sigmas: Vec<f64>,
    /// Comma list of L-inf budgets of FGSM and PGD
    #[arg(long, value_name = "LIST", value_delimiter = ',', allow_hyphen_values = true,
        value_parser = non_negative, default_value = "0,0.02,0.05,0.1,0.15,0.2")]
    eps: Vec<f64>,
    /// PGD steps of size 2.5 eps / N, no random start
    #[arg(long, value_name = "N", allow_negative_numbers = true,
        value_parser = at_least_one::<usize>, default_value = "10")]
    pgd_steps: usize,
    /// Write PATH (replaced if there): one JSON object per line per (model, estimator, seed)
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// SVG of accuracy vs eps under FGSM and PGD per model, means over the seeds
    #[arg(long, value_name = "PATH", default_value = "target/jacobian-reg.svg")]
    plot: PathBuf,
    /// The digits' train-images.npy, train-labels.npy, test-images.npy, test-labels.npy
    /// [default: data/digits of this checkout]
    #[arg(long, value_name = "DIR")]
    digits: Option<PathBuf>,
    /// MNIST instead of the digits: DIR holds train-images-idx3-ubyte, train-labels-idx1-ubyte,
    /// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (uncompressed); all 60000 training images,
    /// the first 1000 test images; the CNN's LayerNorm and linear sizes follow the 28x28 input
    #[arg(long, value_name = "DIR", conflicts_with = "digits")]
    mnist: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto [default: auto, CUDA when available]
    #[arg(long, value_name = "D", value_parser = device)]
    device: Option<Device>,
}

impl Args {
    /// The networks `--model` names.
    fn models(&self) -> Vec<ModelKind> {
        match self.model {
            ModelArg::Mlp => vec![ModelKind::Mlp],
            ModelArg::Cnn => vec![ModelKind::Cnn],
            ModelArg::Both => vec![ModelKind::Mlp, ModelKind::Cnn],
        }
    }
}

/// One of `--estimators`.
fn estimator(s: &str) -> Result<EstimatorArg, String> {
    EstimatorArg::parse(s.trim()).ok_or_else(|| {
        format!(
            "expected none, exact, projections or hutchpp, got {:?}",
            s.trim()
        )
    })
}

/// The flags after the program's name; an error (or `--help`) is clap's, to print or `exit()`.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, clap::Error> {
    let a = Args::try_parse_from(std::iter::once("jacobian_reg".to_string()).chain(args))?;
    for (i, e) in a.estimators.iter().enumerate() {
        if a.estimators[..i].contains(e) {
            return Err(Args::command().error(
                clap::error::ErrorKind::ValueValidation,
                format!("--estimators: {} given twice", e.name()),
            ));
        }
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
    for model in args.models() {
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
    for m in args.models() {
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

    for m in args.models() {
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
        .models()
        .into_iter()
        .map(|m| {
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
    let args = parse_args(std::env::args().skip(1)).unwrap_or_else(|e| e.exit());
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
