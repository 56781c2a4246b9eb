//! `tch-jacobian`: the Jacobian of a TorchScript model at an input read from a `.npy` file,
//! written as `.npy`.
//!
//! ```text
//! tch-jacobian --model m.pt --input x.npy [--batch]
//!              [--strategy auto|row-loop|batched|vectorized|forward|vectorized-forward] [--chunk-size N]
//!              [--device cpu|cuda|cuda:N|auto] [--dtype f32|f64] [--output j.npy] [--output-index K]
//! ```
//!
//! `J[i..., j...] = ∂f(x)[i...]/∂x[j...]` (shape `[*out, *in]`), or with `--batch` the
//! per-sample `J[b, i..., j...] = ∂f(x)[b, i...]/∂x[b, j...]` (shape `[B, *out, *in]`). Every
//! failure is one line on stderr, `tch-jacobian: error: …`, and exit status 1.
//!
//! A TorchScript file is a program: loading an untrusted model is running untrusted code
//! (PyTorch's security policy), so only give `--model` files from sources you trust.
//!
//! Install: `cargo install --path cli` (from a checkout where `scripts/setup-libtorch` ran).
mod npy;

use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::builder::PossibleValuesParser;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Kind};
use tch_jacobian::{
    device::parse_device, load_module, module_jacobian, module_output, module_per_sample_jacobian,
    Error, JacobianOptions, Progress, Strategy,
};

const AFTER_HELP: &str = "\
Examples:
  # J = ∂model(x)/∂x of a model saved with torch.jit.save(torch.jit.script(model), \"m.pt\")
  tch-jacobian --model m.pt --input x.npy --output j.npy

  # per-sample Jacobians of a batch x: [B, *in] -> J: [B, *out, *in] (vmap(jacrev(model)))
  tch-jacobian --model m.pt --input xs.npy --batch --output js.npy

  # the second output of a model returning a tuple, row by row, in float64 on the CPU
  tch-jacobian -m m.pt -i x.npy --output-index 1 --strategy row-loop --dtype f64 --device cpu

The input must be a floating-point .npy array (np.save); --dtype converts the model and the
input (integer inputs too). J has the input's dtype (after --dtype); the summary goes to stdout,
errors to stderr as one line, with exit status 1.";

#[derive(Parser, Debug)]
#[command(
    name = "tch-jacobian",
    version,
    about = "Jacobian of a TorchScript model by reverse-mode autograd (libtorch), written as .npy",
    long_about = "Jacobian of a TorchScript model by reverse-mode autograd (libtorch), written as .npy.\n\n\
        J[i..., j...] = ∂f(x)[i...]/∂x[j...] has shape [*out, *in] — PyTorch's \
        torch.autograd.functional.jacobian(model, x); with --batch, J[b] = ∂f(x)[b]/∂x[b] has \
        shape [B, *out, *in] — torch.func.vmap(torch.func.jacrev(model))(x).\n\n\
        A TorchScript file is a program: loading an untrusted model is running untrusted code \
        (PyTorch's security policy). Only load models from sources you trust.",
    after_help = AFTER_HELP
)]
struct Args {
    /// TorchScript model (torch.jit.save) whose forward takes one tensor. It is a program that
    /// runs when loaded: only load models from sources you trust
    #[arg(short, long, value_name = "MODEL.pt")]
    model: PathBuf,
    /// Input tensor x, a .npy file (np.save; C or Fortran order, any shape)
    #[arg(short, long, value_name = "X.npy")]
    input: PathBuf,
    /// Per-sample Jacobians: the first dimension of x is a batch of independent samples
    #[arg(short, long)]
    batch: bool,
    /// How J is computed (auto: by shape; batched: one backward pass over a batch of rows, the
    /// native engine; the vectorized ones need a model that accepts stacked inputs, [c, *in])
    #[arg(short, long, default_value = "auto", value_parser = PossibleValuesParser::new(Strategy::NAMES))]
    strategy: String,
    /// Rows (batched, vectorized) or columns (vectorized-forward) per pass; with auto, implies
    /// batched (vectorized in a build without the native engine)
    #[arg(long, value_name = "N")]
    chunk_size: Option<usize>,
    /// Device to run on: cpu, cuda, cuda:N or auto (CUDA when available)
    #[arg(short, long, default_value = "auto")]
    device: String,
    /// Convert the model's parameters and the input to this dtype first
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Where to write J (.npy)
    #[arg(short, long, value_name = "J.npy", default_value = "jacobian.npy")]
    output: PathBuf,
    /// Which element of a tuple (or list) output to differentiate
    #[arg(short = 'k', long, value_name = "K")]
    output_index: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DtypeArg {
    F32,
    F64,
}

fn main() -> ExitCode {
    // A safety net: libtorch calls that cannot return errors panic; keep even those to one line.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "tch-jacobian: error: internal error{at} (please report it): {}",
            Error::InvalidArgument(msg.into()).one_line()
        );
    }));
    let args = Args::parse();
    match std::panic::catch_unwind(|| run(&args)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(msg)) => {
            eprintln!("tch-jacobian: error: {msg}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

/// The strategy from `--strategy` and `--chunk-size`.
fn strategy(args: &Args) -> Result<Strategy, String> {
    let named: Strategy = args.strategy.parse().map_err(|e: Error| e.one_line())?;
    if args.chunk_size == Some(0) {
        return Err("--chunk-size must be at least 1".into());
    }
    let named = match (named, args.chunk_size) {
        // A chunk with auto: the chunked strategy Auto would pick.
        (Strategy::Auto, Some(_)) if tch_jacobian::native::available() => {
            Strategy::Batched { chunk_size: None }
        }
        (Strategy::Auto, Some(_)) => Strategy::Vectorized { chunk_size: None },
        (s, _) => s,
    };
    named.with_chunk_size(args.chunk_size).map_err(|_| {
        format!(
            "--chunk-size applies to --strategy batched, vectorized or vectorized-forward, not {}",
            args.strategy
        )
    })
}

fn run(args: &Args) -> Result<(), String> {
    let device = parse_device(&args.device).map_err(|e| match e {
        Error::Device(why) => format!("--device {}: {why}", args.device),
        other => format!("--device: {}", other.one_line()),
    })?;
    let kind = args.dtype.map(|d| match d {
        DtypeArg::F32 => Kind::Float,
        DtypeArg::F64 => Kind::Double,
    });
    let strategy = strategy(args)?;

    let x = npy::read(&args.input)?;
    let in_kind = x.kind();
    if !x.is_floating_point() && kind.is_none() {
        return Err(format!(
            "input {} has dtype {in_kind:?}: Jacobians need floating-point inputs (save it as float32/float64, or pass --dtype f64 to convert it)",
            args.input.display()
        ));
    }
    let t0 = Instant::now();
    let mut model = load_module(&args.model, device).map_err(|e| e.one_line())?;
    if let Some(k) = kind {
        model.to(device, k, false);
    }
    let load_time = t0.elapsed();
    let x = x
        .f_to_device(device)
        .and_then(|x| match kind {
            Some(k) => x.f_to_kind(k),
            None => Ok(x),
        })
        .map_err(|e| e.to_string())?;
    if args.batch && x.dim() == 0 {
        return Err(format!(
            "--batch needs an input with a leading batch dimension, but {} is a scalar",
            args.input.display()
        ));
    }
    // The model's own complaint, with the dtype hint when it is about dtypes.
    let model_error = |e: Error| {
        let msg = e.one_line();
        if msg.contains("dtype") && kind.is_none() {
            format!("{msg} (the model and the input have different dtypes: pass --dtype f32 or --dtype f64 to convert both)")
        } else {
            msg
        }
    };

    let t1 = Instant::now();
    // One evaluation first: the output's shape, and the model's complaints before any work.
    let y = tch::no_grad(|| module_output(&model, &x, args.output_index)).map_err(model_error)?;
    if args.batch && y.size().first() != Some(&x.size()[0]) {
        return Err(format!(
            "--batch: the first dimension of the input {:?} is the batch, but the model's output has shape {:?}; per-sample Jacobians need an output with the same leading dimension (drop --batch for the Jacobian of the whole output)",
            x.size(),
            y.size()
        ));
    }
    // The library reports every pass: the bar follows, and the strategies seen say what ran
    // (Auto's choice, and RowLoop after it when the model rejected stacked inputs).
    let bar = progress_bar();
    let ran: RefCell<Vec<Strategy>> = RefCell::new(Vec::new());
    let report = |p: Progress| {
        let mut ran = ran.borrow_mut();
        if ran.last() != Some(&p.strategy) {
            ran.push(p.strategy);
            bar.set_length(p.total as u64);
            bar.set_message(format!("J by {}", p.strategy));
        }
        bar.set_position(p.done as u64);
    };
    let opts = JacobianOptions::default()
        .strategy(strategy)
        .progress(&report);
    let j = if args.batch {
        module_per_sample_jacobian(&model, &x, args.output_index, &opts)
    } else {
        module_jacobian(&model, &x, args.output_index, &opts)
    };
    bar.finish_and_clear();
    let j = j.map_err(model_error)?;
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let time = t1.elapsed();
    let used = describe(strategy, &ran.borrow());

    let j_cpu = j
        .f_to_device(Device::Cpu)
        .and_then(|j| j.f_contiguous())
        .map_err(|e| e.to_string())?;
    let fro = j_cpu
        .f_to_kind(Kind::Double)
        .and_then(|j| j.f_square())
        .and_then(|j| j.f_sum(Kind::Double))
        .and_then(|s| s.f_double_value(&[]))
        .map_err(|e| e.to_string())?
        .sqrt();
    // tch's writer: its header, `(4,5,)`, is one that both NumPy and tch's `Tensor::read_npy`
    // read (npyz writes `(4, 5, )`, which tch's reader rejects).
    j_cpu.write_npy(&args.output).map_err(|e| {
        format!(
            "cannot write J to {}: {}",
            args.output.display(),
            match e {
                tch::TchError::Io(io) => io.to_string(),
                other => other.to_string(),
            }
        )
    })?;

    let converted = match kind {
        Some(k) if k != in_kind => format!(" (converted from {in_kind:?})"),
        _ => String::new(),
    };
    let index = args
        .output_index
        .map(|k| format!(" (output {k})"))
        .unwrap_or_default();
    println!("model     {}", args.model.display());
    println!(
        "input     {} {:?} {:?}{converted}",
        args.input.display(),
        x.size(),
        x.kind()
    );
    println!("output    {:?} {:?}{index}", y.size(), y.kind());
    println!(
        "jacobian  {:?} {:?} -> {}",
        j.size(),
        j.kind(),
        args.output.display()
    );
    println!("‖J‖_F     {fro:.9e}");
    println!("device    {device:?}");
    println!("strategy  {used}");
    for op in tch_jacobian::native::take_vmap_fallbacks() {
        println!("fallback  {op} has no vmap batching rule: libtorch looped over this op (exact, slower)");
    }
    for reroute in tch_jacobian::second_order::take_reroutes() {
        println!("fallback  {reroute}");
    }
    println!(
        "time      {} (loading the model {})",
        fmt_duration(time),
        fmt_duration(load_time)
    );
    Ok(())
}

/// What ran: `auto: batched`, `auto: row-loop (the model failed with batched)`, `forward`.
fn describe(asked: Strategy, ran: &[Strategy]) -> String {
    let Some(&last) = ran.last() else {
        return asked.to_string(); // no pass ran (an empty J)
    };
    let fell_back = match ran {
        [.., before, _] => format!(" (the model failed with {before})"),
        _ => String::new(),
    };
    if asked == Strategy::Auto {
        format!("auto: {last}{fell_back}")
    } else {
        format!("{last}{fell_back}")
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// A bar over the Jacobian's rows (or columns) on stderr, only when stderr is a terminal.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {pos}/{len}, {elapsed} elapsed, ~{eta} left",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
