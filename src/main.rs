//! `tch-jacobian`: the Jacobian of a TorchScript model at an input read from a `.npy` file,
//! written as `.npy`.
//!
//! ```text
//! tch-jacobian --model m.pt --input x.npy [--batch]
//!              [--strategy auto|row-loop|batched|vectorized|forward|vectorized-forward] [--chunk-size N] [--device cpu|cuda|auto] [--dtype f32|f64] [--output j.npy]
//!              [--output-index K]
//! ```
//!
//! `J[i..., j...] = ∂f(x)[i...]/∂x[j...]` (shape `[*out, *in]`), or with `--batch` the
//! per-sample `J[b, i..., j...] = ∂f(x)[b, i...]/∂x[b, j...]` (shape `[B, *out, *in]`). Every
//! failure is one line on stderr, `tch-jacobian: error: …`, and exit status 1.
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{CModule, Device, Kind, Tensor};
use tch_jacobian::{
    batch_jacobian_of, check_batch_independence, jacobian_of, load_module, module_batch_jacobian,
    module_jacobian, module_output, JacobianOptions, Strategy,
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
        shape [B, *out, *in] — torch.func.vmap(torch.func.jacrev(model))(x).",
    after_help = AFTER_HELP
)]
struct Args {
    /// TorchScript model (torch.jit.save) whose forward takes one tensor
    #[arg(short, long, value_name = "MODEL.pt")]
    model: PathBuf,
    /// Input tensor x, a .npy file (np.save)
    #[arg(short, long, value_name = "X.npy")]
    input: PathBuf,
    /// Per-sample Jacobians: the first dimension of x is a batch of independent samples
    #[arg(short, long)]
    batch: bool,
    /// How J is computed (auto: by shape; batched: one backward pass over a batch of rows, the
    /// native engine; the vectorized ones need a model that accepts stacked inputs, [c, *in])
    #[arg(short, long, value_enum, default_value_t = StrategyArg::Auto)]
    strategy: StrategyArg,
    /// Rows (batched, vectorized) or columns (vectorized-forward) per pass; with auto, implies
    /// batched (vectorized in a build without the native engine)
    #[arg(long, value_name = "N")]
    chunk_size: Option<usize>,
    /// Device to run on (auto: CUDA when available)
    #[arg(short, long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
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
enum StrategyArg {
    Auto,
    RowLoop,
    Batched,
    Vectorized,
    Forward,
    VectorizedForward,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DtypeArg {
    F32,
    F64,
}

/// Most blocks a row-by-row computation is split into (one progress step each).
const MAX_BLOCKS: usize = 50;

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
            one_line(msg)
        );
    }));
    let args = Args::parse();
    match std::panic::catch_unwind(|| run(&args)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(msg)) => {
            eprintln!("tch-jacobian: error: {}", one_line(&msg));
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

/// Collapses a (libtorch) message to one line: drops C++ backtraces and TorchScript
/// tracebacks, keeping the error's own line.
fn one_line(msg: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut in_traceback = false;
    for line in msg.lines() {
        let t = line.trim();
        if t.starts_with("Exception raised from") || t.starts_with("frame #") {
            break; // a C++ backtrace follows
        }
        if t.is_empty() {
            continue;
        }
        if t.starts_with("Traceback of TorchScript") {
            in_traceback = true;
            continue;
        }
        if in_traceback {
            // Code lines and `~~~ <--- HERE` markers up to the exception's own line.
            if let Some(pos) = error_prefix(t) {
                kept.push(&t[pos..]);
                in_traceback = false;
            }
            continue;
        }
        kept.push(t);
    }
    let joined = kept
        .iter()
        .map(|l| {
            l.trim_end_matches("The following operation failed in the TorchScript interpreter.")
        })
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let joined = joined.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        msg.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        joined
    }
}

/// Where a Python-style `RuntimeError: …` line's message starts, if `line` is one.
fn error_prefix(line: &str) -> Option<usize> {
    let (name, _) = line.split_once(": ")?;
    let is_name = !name.is_empty()
        && (name.ends_with("Error") || name.ends_with("Exception"))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
    is_name.then_some(name.len() + 2)
}

fn run(args: &Args) -> Result<(), String> {
    let device = match args.device {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Auto => Device::cuda_if_available(),
        DeviceArg::Cuda => {
            if !tch::Cuda::is_available() {
                return Err("--device cuda: CUDA is not available (no GPU, no driver, or a CPU-only libtorch); use --device cpu or auto".into());
            }
            Device::Cuda(0)
        }
    };
    let kind = args.dtype.map(|d| match d {
        DtypeArg::F32 => Kind::Float,
        DtypeArg::F64 => Kind::Double,
    });
    let strategy = match (args.strategy, args.chunk_size) {
        (StrategyArg::Auto, None) => Strategy::Auto,
        (StrategyArg::RowLoop, None) => Strategy::RowLoop,
        (StrategyArg::Forward, None) => Strategy::Forward,
        (StrategyArg::Auto, c) if tch_jacobian::native::available() => {
            Strategy::Batched { chunk_size: c }
        }
        (StrategyArg::Batched, c) => Strategy::Batched { chunk_size: c },
        (StrategyArg::Auto | StrategyArg::Vectorized, c) => Strategy::Vectorized { chunk_size: c },
        (StrategyArg::VectorizedForward, c) => Strategy::VectorizedForward { chunk_size: c },
        (s, Some(_)) => {
            return Err(format!(
            "--chunk-size applies to --strategy batched, vectorized or vectorized-forward, not {}",
            s.to_possible_value().expect("no skipped values").get_name()
        ))
        }
    };

    if args.chunk_size == Some(0) {
        return Err("--chunk-size must be at least 1".into());
    }

    let x = read_input(&args.input)?;
    let in_kind = x.kind();
    if !x.is_floating_point() && kind.is_none() {
        return Err(format!(
            "input {} has dtype {in_kind:?}: Jacobians need floating-point inputs (save it as float32/float64, or pass --dtype f64 to convert it)",
            args.input.display()
        ));
    }
    let t0 = Instant::now();
    let mut model = load_module(&args.model, device).map_err(message)?;
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

    let t1 = Instant::now();
    // One evaluation first: the output's shape, and the model's complaints before any work.
    let y = tch::no_grad(|| module_output(&model, &x, args.output_index)).map_err(message)?;
    if args.batch && y.size().first() != Some(&x.size()[0]) {
        return Err(format!(
            "--batch: the first dimension of the input {:?} is the batch, but the model's output has shape {:?}; per-sample Jacobians need an output with the same leading dimension (drop --batch for the Jacobian of the whole output)",
            x.size(),
            y.size()
        ));
    }
    let job = Job {
        model: &model,
        x: &x,
        index: args.output_index,
        batch: args.batch,
        out_shape: y.size(),
    };
    let (j, used) = job.compute(strategy)?;
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let time = t1.elapsed();

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
    println!(
        "time      {} (loading the model {})",
        fmt_duration(time),
        fmt_duration(load_time)
    );
    Ok(())
}

/// An error of the library as one line, without the `libtorch: Internal torch error:` prefix
/// on messages the model raised.
fn message(e: tch_jacobian::Error) -> String {
    match e {
        tch_jacobian::Error::Torch(tch::TchError::Torch(msg)) => one_line(&msg),
        other => one_line(&other.to_string()),
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

/// Reads a `.npy` file, checking first that its data is as long as its header says (tch reads
/// the data without checking).
fn read_input(path: &Path) -> Result<Tensor, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read input {shown}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("cannot read input {shown}: it is a directory"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read input {shown}: {e}"))?;
    let not_npy = |why: &str| format!("input {shown} is not a .npy file (np.save): {why}");
    if !bytes.starts_with(b"\x93NUMPY") {
        return Err(not_npy("no NumPy magic string"));
    }
    let (header_len, start) = match bytes.get(6) {
        Some(1) if bytes.len() >= 10 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        Some(2 | 3) if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(not_npy("unsupported or truncated header")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| not_npy("truncated header"))?;
    let header = String::from_utf8_lossy(header);
    if let Some((numel, elt)) = npy_numel_and_size(&header) {
        let have = bytes.len() - start - header_len;
        let need = numel.saturating_mul(elt);
        if have < need {
            return Err(not_npy(&format!(
                "truncated data ({have} bytes, the header announces {need})"
            )));
        }
    }
    Tensor::read_npy(path).map_err(|e| match e {
        tch::TchError::FileFormat(why) => not_npy(&why),
        other => format!("cannot read input {shown}: {other}"),
    })
}

/// Element count and element size from a `.npy` header, when both can be read.
fn npy_numel_and_size(header: &str) -> Option<(usize, usize)> {
    let after = |key: &str| header.split_once(key).map(|(_, rest)| rest);
    let descr = after("'descr'")?
        .trim_start_matches([':', ' '])
        .trim_start_matches('\'')
        .split('\'')
        .next()?
        .trim_start_matches(['<', '=', '|', '>']);
    let elt = match descr {
        "e" | "f2" | "h" | "i2" => 2,
        "f" | "f4" | "i" | "i4" => 4,
        "d" | "f8" | "q" | "i8" | "F" | "F4" | "c8" => 8,
        "D" | "F8" | "c16" => 16,
        "b" | "i1" | "B" | "u1" | "?" | "b1" => 1,
        _ => return None,
    };
    let shape = after("'shape'")?.split_once('(')?.1.split_once(')')?.0;
    let mut numel = 1usize;
    for d in shape.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        numel = numel.checked_mul(d.parse().ok()?)?;
    }
    Some((numel, elt))
}

/// One Jacobian computation: the model, its input and which output.
struct Job<'a> {
    model: &'a CModule,
    x: &'a Tensor,
    index: Option<usize>,
    batch: bool,
    out_shape: Vec<i64>,
}

impl Job<'_> {
    /// (samples, output elements per sample, input elements per sample).
    fn sizes(&self) -> (usize, usize, usize) {
        let numel = |s: &[i64]| s.iter().product::<i64>() as usize;
        let xs = self.x.size();
        if self.batch {
            (
                xs[0] as usize,
                numel(self.out_shape.get(1..).unwrap_or(&[])),
                numel(&xs[1..]),
            )
        } else {
            (1, numel(&self.out_shape), numel(&xs))
        }
    }

    /// J and a description of the strategy that computed it.
    fn compute(&self, strategy: Strategy) -> Result<(Tensor, String), String> {
        let (b, m, n) = self.sizes();
        // The library's own rule for this device and dtype (b = 1 without --batch).
        let resolved = strategy.resolve_for(&tch_jacobian::strategy::Work {
            m,
            n,
            batch: b,
            have_closure: true,
            device: self.x.device(),
            kind: self.x.kind(),
        });
        let result = self.compute_with(resolved, m);
        match result {
            Err(e) if strategy == Strategy::Auto && resolved != Strategy::RowLoop => {
                // Like module_jacobian's fallback: the model rejects stacked inputs (or a
                // double backward); go row by row, after checking the samples are independent.
                if self.batch {
                    let xg = self.x.detach().set_requires_grad(true);
                    let y = module_output(self.model, &xg, self.index).map_err(message)?;
                    check_batch_independence(&y, &xg).map_err(message)?;
                }
                let (j, used) = self.compute_with(Strategy::RowLoop, m).map_err(|e2| {
                    if e2 == e {
                        e2
                    } else {
                        format!("{e2} (and with {}: {e})", describe(resolved))
                    }
                })?;
                Ok((
                    j,
                    format!(
                        "auto: {used} (the model failed with {})",
                        describe(resolved)
                    ),
                ))
            }
            Ok((j, used)) if strategy == Strategy::Auto => Ok((j, format!("auto: {used}"))),
            r => r,
        }
    }

    /// With a resolved strategy: row blocks with a progress bar for RowLoop and chunked
    /// Vectorized, one library call with a spinner otherwise (the column strategies would
    /// redo every column for each row block).
    fn compute_with(&self, s: Strategy, m: usize) -> Result<(Tensor, String), String> {
        let rows_per_block = match s {
            Strategy::RowLoop if m > 1 => Some(m.div_ceil(MAX_BLOCKS)),
            Strategy::Vectorized {
                chunk_size: Some(c),
            } if c < m => Some(c * m.div_ceil(c).div_ceil(MAX_BLOCKS)),
            _ => None,
        };
        let opts = JacobianOptions::default().strategy(s);
        let j = match rows_per_block {
            Some(rows) if !(self.batch && self.x.size()[0] == 0) => {
                let bar = progress_bar(m as u64, &describe(s));
                let j = self.blocks(&opts, m, rows, &bar);
                bar.finish_and_clear();
                j?
            }
            _ => {
                let bar = spinner(&describe(s));
                let j = if self.batch {
                    module_batch_jacobian(self.model, self.x, self.index, &opts)
                } else {
                    module_jacobian(self.model, self.x, self.index, &opts)
                };
                bar.finish_and_clear();
                j.map_err(message)?
            }
        };
        Ok((j, describe(s)))
    }

    /// J in blocks of `rows` output rows: the Jacobian of `f(x)` flattened per sample and
    /// narrowed to the block, concatenated and reshaped to `[(B,) *out, *in]`.
    fn blocks(
        &self,
        opts: &JacobianOptions,
        m: usize,
        rows: usize,
        bar: &ProgressBar,
    ) -> Result<Tensor, String> {
        let in_dims = self.x.dim();
        let mut parts = Vec::with_capacity(m.div_ceil(rows));
        let mut start = 0;
        while start < m {
            let len = rows.min(m - start);
            let f = |xr: &Tensor| -> tch_jacobian::Result<Tensor> {
                let y = module_output(self.model, xr, self.index)?;
                // Per sample flat: [m] for x itself, [lead, m] for a batch or stacked copies.
                Ok(if self.batch || xr.dim() > in_dims {
                    y.f_reshape([xr.size()[0], -1])?
                        .f_narrow(1, start as i64, len as i64)?
                } else {
                    y.f_reshape([-1])?.f_narrow(0, start as i64, len as i64)?
                })
            };
            let part = if self.batch {
                batch_jacobian_of(f, self.x, opts)
            } else {
                jacobian_of(f, self.x, opts)
            };
            parts.push(part.map_err(message)?);
            start += len;
            bar.inc(len as u64);
        }
        let dim = if self.batch { 1 } else { 0 };
        let xs = self.x.size();
        let in_shape = if self.batch { &xs[1..] } else { &xs[..] };
        let shape: Vec<i64> = self.out_shape.iter().chain(in_shape).copied().collect();
        Tensor::f_cat(&parts, dim)
            .and_then(|j| j.f_reshape(shape.as_slice()))
            .map_err(|e| e.to_string())
    }
}

fn describe(s: Strategy) -> String {
    match s {
        Strategy::Auto => "auto".into(),
        Strategy::RowLoop => "row-loop".into(),
        Strategy::Batched { chunk_size: None } => "batched".into(),
        Strategy::Batched {
            chunk_size: Some(c),
        } => format!("batched (chunks of {c} rows)"),
        Strategy::Forward => "forward".into(),
        Strategy::Vectorized { chunk_size: None } => "vectorized".into(),
        Strategy::Vectorized {
            chunk_size: Some(c),
        } => format!("vectorized (chunks of {c} rows)"),
        Strategy::VectorizedForward { chunk_size: None } => "vectorized-forward".into(),
        Strategy::VectorizedForward {
            chunk_size: Some(c),
        } => format!("vectorized-forward (chunks of {c} columns)"),
    }
}

/// A bar over the Jacobian's rows on stderr, only when stderr is a terminal.
fn progress_bar(rows: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(rows).with_message(format!("J by {what}"));
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {pos}/{len} rows, {elapsed} elapsed, ~{eta} left",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A spinner for a computation in one piece, only when stderr is a terminal.
fn spinner(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(format!("J by {what}"));
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}, {elapsed} elapsed") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
