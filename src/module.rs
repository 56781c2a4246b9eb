//! Jacobians of TorchScript models (`tch::CModule`): [`load_module`], [`module_output`],
//! [`module_jacobian`] and [`module_per_sample_jacobian`].
//!
//! A model saved from Python with `torch.jit.save(torch.jit.script(model), "m.pt")` (or
//! `torch.jit.trace`) is a function `f` of one tensor. Its Jacobian at `x` is
//!
//! ```text
//! J[i..., j...] = ∂f(x)[i...] / ∂x[j...]                 shape [*out, *in]
//! ```
//!
//! and, over a batch `x: [B, *in]` whose samples the model treats independently,
//!
//! ```text
//! J[b, i..., j...] = ∂f(x)[b, i...] / ∂x[b, j...]        shape [B, *out, *in]
//! ```
//!
//! — PyTorch's `torch.autograd.functional.jacobian(model, x)` and
//! `torch.func.vmap(torch.func.jacrev(model))(x)`. A model whose `forward` returns a tuple (or a
//! list) is differentiated through one of its tensor outputs, chosen by `output_index`.
//!
//! These functions are [`jacobian_of`] and [`per_sample_jacobian_of`] with the closure
//! `|x| module_output(module, x, output_index)`, so every [`Strategy`] and option applies. The
//! vectorized strategies ([`Strategy::Vectorized`], [`Strategy::VectorizedForward`], which
//! [`Strategy::Auto`] picks only when the native engine is not built) call the model on `c`
//! stacked copies of the
//! input (`[c, *in]`, or `[B·c, *in]` for a batch): models made of `nn.Linear`, `nn.Conv2d` on
//! `[C, H, W]` inputs and other batch-aware layers accept them. For a model that does not,
//! [`Strategy::Auto`] falls back to [`Strategy::RowLoop`] (the engine's one recovery rule, see [`module_jacobian`]).
//!
//! ```
//! use tch::{Device, Kind, Tensor};
//! use tch_jacobian::{load_module, module_per_sample_jacobian, module_jacobian, JacobianOptions};
//!
//! // torch.jit.save(torch.jit.script(mlp), "mlp_tanh.pt"): Linear(5, 8), tanh, Linear(8, 4).
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ts/mlp_tanh.pt");
//! let model = load_module(path, Device::Cpu)?;
//! let opts = JacobianOptions::default();
//! let x = Tensor::randn([5], (Kind::Double, Device::Cpu));
//! assert_eq!(module_jacobian(&model, &x, None, &opts)?.size(), [4, 5]);
//! let xs = Tensor::randn([32, 5], (Kind::Double, Device::Cpu));
//! assert_eq!(module_per_sample_jacobian(&model, &xs, None, &opts)?.size(), [32, 4, 5]);
//! # Ok::<(), tch_jacobian::Error>(())
//! ```
//!
//! Failures are [`Error`]s, never panics: an unreadable file or one that is not TorchScript, a
//! model that rejects the input (the model's own message is passed on in [`Error::Torch`]),
//! integer inputs ([`Error::Kind`]), a model with no tensor output ([`Error::Contract`]) and an
//! `output_index` out of range ([`Error::InvalidArgument`]).
//!
//! A TorchScript file is a program: loading a model runs its code, so loading an untrusted model
//! is running untrusted code (PyTorch's security policy). Only load models from sources you trust.

use std::path::Path;

use tch::{CModule, Device, IValue, TchError, Tensor};

use crate::engine::WithoutForwardAd;
use crate::error::{Error, Result};
use crate::jacobian::jacobian_of;
use crate::native::PlainTorchScript;
use crate::per_sample::per_sample_jacobian_of;
use crate::strategy::JacobianOptions;
#[cfg(doc)]
use crate::{per_sample::check_sample_independence, strategy::Strategy};

/// Loads a TorchScript model saved with `torch.jit.save` onto `device`, in evaluation mode
/// (`model.eval()`: dropout off, batch norm on its running statistics — what a Jacobian of a
/// trained model means).
///
/// The file is a program that runs when loaded and called: only load models from sources you
/// trust, as loading an untrusted model is running untrusted code (PyTorch's security policy).
///
/// `device` may be [`Device::Cpu`] or `Device::Cuda(i)`; a CUDA device when CUDA is not
/// available is an [`Error::Device`].
///
/// # Errors
/// [`Error::Io`] when the file is missing or unreadable, [`Error::InvalidArgument`] when it is
/// not a TorchScript
/// archive (the message names the path and gives libtorch's reason); [`Error::Device`] when
/// CUDA is asked for but not available.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// use tch_jacobian::{load_module, module_output, Error};
///
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ts/mlp_tanh.pt");
/// let model = load_module(path, Device::Cpu)?;
/// let x = Tensor::zeros([5], (Kind::Double, Device::Cpu));
/// assert_eq!(module_output(&model, &x, None)?.size(), [4]);
/// let err = load_module("no/such/model.pt", Device::Cpu).unwrap_err();
/// assert!(matches!(err, Error::Io { .. }));
/// assert!(err.to_string().contains("cannot read TorchScript model no/such/model.pt"));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn load_module(path: impl AsRef<Path>, device: Device) -> Result<CModule> {
    let path = path.as_ref();
    let shown = path.display();
    if let Device::Cuda(i) = device {
        if !tch::Cuda::is_available() {
            return Err(Error::Device(format!(
                "cannot load {shown} on Cuda({i}): CUDA is not available (no GPU, or a CPU-only libtorch)"
            )));
        }
        let count = tch::Cuda::device_count();
        if i as i64 >= count {
            return Err(Error::Device(format!(
                "cannot load {shown} on Cuda({i}): only {count} CUDA device(s)"
            )));
        }
    }
    // Check the file ourselves first: libtorch's messages for a missing file are long and
    // do not say which file.
    let io = |source: std::io::Error| Error::Io {
        what: "TorchScript model".into(),
        path: path.to_path_buf(),
        source,
    };
    if std::fs::metadata(path).map_err(io)?.is_dir() {
        return Err(io(std::io::Error::other("it is a directory")));
    }
    std::fs::File::open(path).map_err(io)?;
    let mut module = CModule::load_on_device(path, device).map_err(|e| {
        Error::InvalidArgument(format!(
            "{shown} is not a TorchScript model (save one with torch.jit.save(torch.jit.script(model), path)): {}",
            first_line(e)
        ))
    })?;
    module.f_set_eval()?;
    Ok(module)
}

/// The first sentence of a libtorch error on one line (long lines go on with advice: "This is
/// an internal miniz error. If you are seeing…").
fn first_line(e: TchError) -> String {
    let line = Error::Torch(e).one_line();
    match line.split_once(". ") {
        Some((first, _)) if line.len() > 120 => first.to_string(),
        _ => line,
    }
}

/// A short description of a TorchScript value for error messages: `Tensor [3, 5] Double`,
/// `int 2`, `str "…"`, `tuple (Tensor [3] Double, int 1)`.
fn describe(v: &IValue) -> String {
    match v {
        IValue::None => "None".into(),
        IValue::Tensor(t) if !t.defined() => "an undefined tensor".into(),
        IValue::Tensor(t) => format!("Tensor {:?} {:?}", t.size(), t.kind()),
        IValue::Double(d) => format!("float {d}"),
        IValue::Int(i) => format!("int {i}"),
        IValue::Bool(b) => format!("bool {b}"),
        IValue::Tuple(vs) => describe_seq("tuple", vs),
        IValue::GenericList(vs) => describe_seq("list", vs),
        IValue::IntList(v) => format!("list of {} ints", v.len()),
        IValue::DoubleList(v) => format!("list of {} floats", v.len()),
        IValue::BoolList(v) => format!("list of {} bools", v.len()),
        IValue::String(s) => format!("str {s:?}"),
        IValue::StringList(v) => format!("list of {} strs", v.len()),
        IValue::TensorList(v) => format!("list of {} tensors", v.len()),
        IValue::GenericDict(v) => format!("dict of {} entries", v.len()),
        IValue::Object(_) => "object".into(),
        IValue::Device(d) => format!("device {d:?}"),
        _ => "value".into(),
    }
}

fn describe_seq(name: &str, vs: &[IValue]) -> String {
    let items: Vec<String> = vs.iter().map(describe).collect();
    format!("{name} ({})", items.join(", "))
}

/// Picks the differentiated output: the tensor itself, or element `output_index` of a tuple
/// or list.
fn select_output(out: IValue, output_index: Option<usize>) -> Result<Tensor> {
    let elements = match out {
        IValue::Tensor(t) => {
            return match output_index {
                None | Some(0) => Ok(t),
                Some(k) => Err(Error::InvalidArgument(format!(
                    "output index {k} is out of range: the model returns a single tensor ({}), index 0",
                    describe(&IValue::Tensor(t))
                ))),
            }
        }
        IValue::Tuple(vs) | IValue::GenericList(vs) => vs,
        IValue::TensorList(ts) => ts.into_iter().map(IValue::Tensor).collect(),
        other => {
            return Err(Error::Contract(format!(
                "the model returns {}, not a tensor; Jacobians need a model whose forward returns a tensor (or a tuple of them)",
                describe(&other)
            )))
        }
    };
    let tensors = elements
        .iter()
        .filter(|v| matches!(v, IValue::Tensor(_)))
        .count();
    let whole = || describe_seq("tuple", &elements);
    if tensors == 0 {
        return Err(Error::Contract(format!(
            "the model returns {}, which holds no tensor; Jacobians need a tensor output",
            whole()
        )));
    }
    let Some(k) = output_index else {
        return Err(Error::InvalidArgument(format!(
            "the model returns {} values, {}; choose the tensor to differentiate with an output index (0 to {})",
            elements.len(),
            whole(),
            elements.len() - 1
        )));
    };
    let len = elements.len();
    let summary = whole();
    match elements.into_iter().nth(k) {
        None => Err(Error::InvalidArgument(format!(
            "output index {k} is out of range: the model returns {len} values, {summary} (indices 0 to {})",
            len - 1
        ))),
        Some(IValue::Tensor(t)) => Ok(t),
        Some(other) => Err(Error::Contract(format!(
            "output {k} of the model is {}, not a tensor; the model returns {summary}",
            describe(&other)
        ))),
    }
}

/// `f(x)`: runs the model's `forward` on the single tensor `x` and returns its output — the
/// tensor itself, or element `output_index` of a tuple (or list) output.
///
/// `output_index`: `None` for a model that returns one tensor (`Some(0)` is accepted too);
/// `Some(k)` picks element `k` of a tuple or list.
///
/// # Errors
/// [`Error::Torch`] with the model's own message when it rejects `x` (shape, dtype, device);
/// [`Error::InvalidArgument`] for an `output_index` out of range, or `None` on a tuple output;
/// [`Error::Contract`] when the selected output is not a tensor.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// use tch_jacobian::{load_module, module_output};
///
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ts");
/// let model = load_module(format!("{dir}/tuple_out.pt"), Device::Cpu)?;
/// let x = Tensor::ones([5], (Kind::Double, Device::Cpu));
/// // forward returns (tanh(Wx + b) [3], x * sum(x) [5], x.dim()).
/// assert_eq!(module_output(&model, &x, Some(0))?.size(), [3]);
/// assert_eq!(module_output(&model, &x, Some(1))?.double_value(&[0]), 5.0);
/// assert!(module_output(&model, &x, None).is_err()); // which of the three?
/// assert!(module_output(&model, &x, Some(2)).is_err()); // an int, not a tensor
/// assert!(module_output(&model, &x, Some(3)).is_err()); // out of range
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn module_output(module: &CModule, x: &Tensor, output_index: Option<usize>) -> Result<Tensor> {
    crate::autograd::grad_mode_on(|| {
        let out = module
            .forward_is(&[IValue::Tensor(x.shallow_clone())])
            .map_err(|e| match e {
                TchError::Torch(msg) => Error::Torch(TchError::Torch(format!(
                    "the model rejected an input of shape {:?} ({:?}, {:?}): {msg}",
                    x.size(),
                    x.kind(),
                    x.device()
                ))),
                other => Error::Torch(other),
            })?;
        select_output(out, output_index)
    })
}

/// Jacobian of a TorchScript model at `x`: `J[i..., j...] = ∂f(x)[i...]/∂x[j...]`, shape
/// `[*out, *in]`, where `f(x)` is [`module_output`]`(module, x, output_index)` — PyTorch's
/// `torch.autograd.functional.jacobian(model, x)`.
///
/// This is [`jacobian_of`] with the model as the closure, so `opts` ([`JacobianOptions`]:
/// strategy, `create_graph`, `strict`) means the same. Under `create_graph` the model runs with
/// the TorchScript executor's optimization off (on this thread, for the call): the profiling
/// executor's optimized graph, which a module uses from its third call on, gives wrong batched
/// second derivatives (see [`crate::second_order`]). With [`Strategy::Auto`], if the strategy
/// it picks fails — the model rejects stacked copies `[c, *in]` of `x`, or lacks a double
/// backward ([`Strategy::VectorizedForward`]) — the Jacobian is recomputed with
/// [`Strategy::RowLoop`], which only calls the model on `x` itself (one backward pass per output
/// element); if that fails too, its error is returned.
///
/// # Errors
/// Those of [`module_output`], of [`jacobian_of`] ([`Error::Kind`] for an integer `x`, …).
///
/// ```
/// use tch::Device;
/// use tch_jacobian::{load_module, module_jacobian, JacobianOptions, Strategy, testing::Tolerance};
///
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ts");
/// let model = load_module(format!("{dir}/mlp_tanh.pt"), Device::Cpu)?; // [5] -> [4]
/// let x = tch::Tensor::read_npy(format!("{dir}/mlp_tanh_x.npy"))?;
/// let expected = tch::Tensor::read_npy(format!("{dir}/mlp_tanh_j.npy"))?; // PyTorch's
/// for s in [Strategy::Auto, Strategy::RowLoop, Strategy::Forward] {
///     let j = module_jacobian(&model, &x, None, &JacobianOptions::default().strategy(s))?;
///     assert_eq!(j.size(), [4, 5]);
///     Tolerance::default().check(&j, &expected)?;
/// }
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn module_jacobian(
    module: &CModule,
    x: &Tensor,
    output_index: Option<usize>,
    opts: &JacobianOptions,
) -> Result<Tensor> {
    opts.refuse_per_sample_options("module_jacobian")?;
    crate::autograd::grad_mode_on(|| {
        let f = |x: &Tensor| module_output(module, x, output_index);
        let _plain = opts.create_graph.then(PlainTorchScript::new);
        let _reverse = WithoutForwardAd::new();
        jacobian_of(f, x, opts)
    })
}

/// Per-sample Jacobians of a TorchScript model over a batch `x: [B, *in]`:
/// `J[b, i..., j...] = ∂f(x)[b, i...]/∂x[b, j...]`, shape `[B, *out, *in]` — PyTorch's
/// `torch.func.vmap(torch.func.jacrev(model))(x)`.
///
/// This is [`per_sample_jacobian_of`] with the model as the closure; the model must treat samples
/// independently (see [`crate::per_sample`]). Under `create_graph` the model runs with the
/// TorchScript executor's optimization off, as in [`module_jacobian`]. With [`Strategy::Auto`], if the chosen strategy fails
/// (e.g. the model only accepts its own batch size, so it rejects `[B·c, *in]`), the samples
/// are first checked for independence ([`check_sample_independence`], one backward pass) and
/// the Jacobian is recomputed with [`Strategy::RowLoop`].
///
/// # Errors
/// Those of [`module_output`] and [`per_sample_jacobian_of`]; [`Error::Contract`] when the model
/// mixes samples and the vectorized pass or the independence check notices.
///
/// ```
/// use tch::Device;
/// use tch_jacobian::{load_module, module_per_sample_jacobian, JacobianOptions, testing::Tolerance};
///
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ts");
/// let model = load_module(format!("{dir}/conv.pt"), Device::Cpu)?; // [B, 1, 8, 8] -> [B, 4]
/// let x = tch::Tensor::read_npy(format!("{dir}/conv_bx.npy"))?; // B = 3
/// let j = module_per_sample_jacobian(&model, &x, None, &JacobianOptions::default())?;
/// assert_eq!(j.size(), [3, 4, 1, 8, 8]);
/// Tolerance::default().check(&j, &tch::Tensor::read_npy(format!("{dir}/conv_bj.npy"))?)?;
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn module_per_sample_jacobian(
    module: &CModule,
    x: &Tensor,
    output_index: Option<usize>,
    opts: &JacobianOptions,
) -> Result<Tensor> {
    opts.refuse_randomness("module_per_sample_jacobian")?;
    crate::autograd::grad_mode_on(|| {
        let f = |x: &Tensor| module_output(module, x, output_index);
        let _plain = opts.create_graph.then(PlainTorchScript::new);
        let _reverse = WithoutForwardAd::new();
        per_sample_jacobian_of(f, x, opts)
    })
}
