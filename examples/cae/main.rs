//! A contractive auto-encoder (Rifai et al., 2011) against a plain auto-encoder.
//!
//! Both have a one-layer sigmoid encoder `h = σ(W x + b)` and a linear decoder; the CAE adds
//! `λ·‖J_h(x)‖_F²` ([`contractive_penalty`]) to the reconstruction loss `‖x − x̂‖²`. The data are,
//! by default, points on a 2-D manifold (a curved sheet) embedded in 64-D by a fixed smooth random
//! map, plus a little noise, generated from `--seed`; `--digits` trains on the 8x8 digits of
//! `data/digits/` (64-D, in `[0, 1]`) and `--mnist DIR` on MNIST instead.
//!
//! At the end it compares both on held-out points: reconstruction error, mean `‖J‖_F` (exact,
//! by [`per_sample_jacobian`]) and the singular values of `J` averaged over the points — the CAE
//! keeps the few large ones (the manifold's tangent directions) and shrinks the rest. It prints a
//! table and writes an SVG plot of both spectra.
//!
//!     cargo run --release --example cae [-- --help]
//!
//! The parts: [`data`] (the points), [`model`] (the auto-encoder and its training), [`eval`]
//! (held-out statistics) and [`plot`] (the SVG).
//!
//! Runs on CUDA when available (`--device cpu|cuda|cuda:N|auto` to choose).
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
mod data;
#[path = "../jacobian_reg/digits.rs"]
mod digits;
mod eval;
#[path = "../jacobian_reg/flags.rs"]
mod flags;
mod model;
mod plot;

use data::*;
use eval::*;
use flags::*;
use model::*;
use plot::*;
use tch_jacobian::{
    jacobian_penalty, per_sample_jacobian, sigmoid_linear_frobenius_sq, JacobianOptions,
    PenaltyEstimator, PenaltyOptions,
};

/// Draws per cell of the estimator-noise table.
const NOISE_DRAWS: u64 = 100;

const ABOUT: &str = "\
cae: a plain and a contractive auto-encoder (sigmoid encoder, linear decoder), compared on
held-out points: reconstruction error, mean |J|_F and the singular values of J.";

/// Which [`PenaltyEstimator`] the CAE trains with.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum EstimatorArg {
    /// Exact, in closed form from the sigmoid layer's weights (no backward pass)
    ClosedForm,
    /// One batched backward pass over J's rows
    Exact,
    /// Unbiased, noisy: k random projections
    Projections,
    /// Hutch++: unbiased, a sketch of J's top directions exact, projections for the rest
    #[value(name = "hutchpp")]
    HutchPlusPlus,
}

#[derive(Debug, Parser)]
#[command(
    name = "cae",
    about = ABOUT,
    override_usage = "cargo run --release --example cae -- [OPTIONS]"
)]
struct Args {
    /// Penalty estimator while training
    #[arg(long, value_enum, value_name = "E", default_value = "closed-form")]
    estimator: EstimatorArg,
    /// Products per step for --estimator projections or hutchpp
    #[arg(long, value_name = "K", allow_negative_numbers = true,
        value_parser = at_least_one::<usize>, default_value = "1")]
    k: usize,
    /// Penalty weight of the CAE [default: 4; digits: 0.1; MNIST: 0.1]
    #[arg(long, value_name = "L", allow_negative_numbers = true,
        value_parser = non_negative)]
    lambda: Option<f64>,
    /// Hidden units [default: 32; MNIST: 256]
    #[arg(long, value_name = "M", allow_negative_numbers = true,
        value_parser = at_least_one::<i64>)]
    hidden: Option<i64>,
    /// Training epochs [default: 300; MNIST: 5]
    #[arg(long, value_name = "N", allow_negative_numbers = true,
        value_parser = at_least_one::<usize>)]
    epochs: Option<usize>,
    /// Mini-batch size
    #[arg(long, value_name = "B", allow_negative_numbers = true,
        value_parser = at_least_one::<i64>, default_value = "128")]
    batch_size: i64,
    /// Adam learning rate [default: 0.003; MNIST: 0.001]
    #[arg(long, value_name = "R", allow_negative_numbers = true,
        value_parser = positive)]
    lr: Option<f64>,
    /// Seed of the data and of torch's generator
    #[arg(long, value_name = "S", allow_negative_numbers = true,
        value_parser = number::<i64>, default_value = "0")]
    seed: i64,
    /// Train on the 8x8 digits of data/digits (1437 training, 360 held-out images, 64 pixels in
    /// [0, 1]) instead of the curved sheet
    #[arg(long)]
    digits: bool,
    /// Train on MNIST: DIR holds train-images-idx3-ubyte, train-labels-idx1-ubyte,
    /// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (uncompressed)
    #[arg(long, value_name = "DIR", conflicts_with = "digits")]
    mnist: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto [default: auto, CUDA when available]
    #[arg(long, value_name = "D", value_parser = device)]
    device: Option<Device>,
    /// libtorch CPU threads [default: libtorch's choice]
    #[arg(long, value_name = "T", allow_negative_numbers = true,
        value_parser = at_least_one::<i32>)]
    threads: Option<i32>,
    /// SVG plot of both spectra
    #[arg(long, value_name = "PATH", default_value = "target/cae-spectrum.svg")]
    plot: PathBuf,
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
        None if args.digits => digits(Path::new(digits::DIGITS_DIR), device)?,
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
    let lambda = args
        .lambda
        .unwrap_or(if is_mnist || args.digits { 0.1 } else { 4.0 });
    let (n_train, n) = (data.train.size()[0], data.train.size()[1]);
    let estimator = match cfg.estimator {
        EstimatorArg::ClosedForm => "closed form".to_string(),
        EstimatorArg::Exact => "exact".to_string(),
        EstimatorArg::Projections => format!("projections (k = {})", cfg.k),
        EstimatorArg::HutchPlusPlus => format!("Hutch++ (k = {})", cfg.k),
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

    // The noise of the trainable estimators: the penalty of one batch of held-out points, drawn
    // NOISE_DRAWS times, as a standard deviation relative to the exact value.
    let batch = data.test.f_narrow(0, 0, cfg.batch_size.min(n_test))?;
    println!(
        "\nestimator noise: s.d. / exact penalty of a batch of {} held-out points, {NOISE_DRAWS} draws",
        batch.size()[0]
    );
    println!("   k   AE projections   AE Hutch++   CAE projections   CAE Hutch++");
    for k in [2usize, 4, 8, 16] {
        let noise = |model: &AutoEncoder, hutch: bool| -> Result<f64> {
            relative_noise(model, &batch, NOISE_DRAWS, |seed| {
                if hutch {
                    PenaltyEstimator::HutchPlusPlus {
                        directions: k,
                        seed: Some(seed),
                    }
                } else {
                    PenaltyEstimator::Projections {
                        directions: k,
                        seed: Some(seed),
                    }
                }
            })
        };
        println!(
            "{k:>4} {:>16.3} {:>12.3} {:>17.3} {:>13.3}",
            noise(&ae, false)?,
            noise(&ae, true)?,
            noise(&cae, false)?,
            noise(&cae, true)?
        );
    }

    let caption = if is_mnist {
        "Encoder Jacobian J = ∂h/∂x on held-out MNIST images, averaged over the points".to_string()
    } else if args.digits {
        "Encoder Jacobian J = ∂h/∂x on held-out 8x8 digits, averaged over the points".to_string()
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
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
