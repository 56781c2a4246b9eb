//! The native batched backward pass: one backward pass over a *batch* of cotangents.
//!
//! tch seeds `run_backward` with ones, so without help every Jacobian costs either one backward
//! pass per output row or a forward pass over replicated inputs. libtorch itself can do better:
//! functorch's vmap level (what `torch.func.jacrev` and `vmap(jacrev)` use) runs one backward pass
//! whose cotangent is a batch `V = [c, *y.shape]`, giving `G_k[r] = V[r]ᵀ ∂y/∂x_k` for all `c` rows
//! at once. `csrc/batched_vjp.cpp` reaches it. With `V` = rows of the identity this gives rows of
//! `J` — [`Strategy::Batched`](crate::Strategy::Batched).
//!
//! The crate's C++ files, in `csrc/`, are compiled by `build.rs` against the libtorch that
//! torch-sys links (see build-notes.md):
//!
//! * the core, part of every build with libtorch: `csrc/graph_scan.cpp` (the autograd graph
//!   scan of [`crate::second_order`]) and `csrc/norm_autograd.cpp` (autograd kernels for the
//!   normalizations whose derivatives are right at every order);
//! * the engine, the default feature `native`: `csrc/batched_vjp.cpp` (the batched backward
//!   pass), `csrc/vmap_grad.cpp` (per-sample gradients by vmap(grad) of a Rust closure),
//!   `csrc/forward_ad.cpp` (forward-mode Jacobian columns), `csrc/norm_rules.cpp` and
//!   `csrc/loss_rules.cpp` (batching rules for the normalizations and the losses) and
//!   `csrc/jit_executor.cpp` (the TorchScript executor switch), with the header
//!   `csrc/functorch_guards.h`.
//!
//! Ops without a batching rule go through libtorch's *vmap fallback*, which loops over that one
//! op (still far cheaper than a loop over whole backward passes). The crate keeps it on and
//! records which ops used it: [`take_vmap_fallbacks`]. `JacobianOptions::vmap_fallback(false)`
//! turns it off for a call, so such an op is an [`Error::NoBatchingRule`] instead. Each such op
//! is also reported once per process through the `log` facade at warn level, and so is a build
//! without the engine, the first time `Strategy::Auto` would have used it (install `env_logger`
//! or `tracing-log` to see them).
//!
//! With the default feature `native`, a build that cannot compile the engine fails, naming the
//! fix. Built without it (`default-features = false`, or the `doc-only` documentation build),
//! [`available`] is false, [`Strategy::Auto`](crate::Strategy::Auto) never picks `Batched`, and
//! asking for it is an error naming the fix ([`build_status`]).
//!
//! ```
//! use tch_jacobian::native;
//! // "built", or why not (e.g. "not built: nlohmann/json.hpp not found (…)").
//! let status = native::build_status();
//! assert_eq!(native::available(), status == "built");
//! assert!(native::take_vmap_fallbacks().is_empty()); // nothing ran yet on this thread
//! # Ok::<(), tch_jacobian::Error>(())
//! ```
use std::cell::RefCell;

use tch::Tensor;

use crate::error::{Error, Result};

/// Whether the native batched engine was compiled into this build.
///
/// ```
/// # use tch_jacobian::{native, Strategy};
/// if native::available() {
///     assert!(matches!(Strategy::Auto.resolve(64, 64, false), Strategy::Batched { .. }));
/// }
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn available() -> bool {
    cfg!(tch_jacobian_native)
}

/// What build.rs did with the C++ engine: `"built"`, or `"not built: <reason and fix>"`.
///
/// ```
/// assert!(tch_jacobian::native::build_status().starts_with("built")
///     || tch_jacobian::native::build_status().starts_with("not built"));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn build_status() -> &'static str {
    env!("TCH_JACOBIAN_NATIVE_STATUS")
}

thread_local! {
    static FALLBACKS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The ops (e.g. `aten::_scaled_dot_product_flash_attention_for_cpu_backward`) that went
/// through libtorch's per-op vmap fallback in batched passes on this thread since the last call,
/// each once; clears the record.
///
/// An op listed here has no batching rule: its backward ran as a loop over the chunk's rows for
/// that op only. The result is still exact; only that op is slower.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// use tch_jacobian::{jacobian_with, native, JacobianOptions, Strategy};
/// let x = Tensor::randn([8], (Kind::Double, Device::Cpu)).set_requires_grad(true);
/// let y = x.tanh();
/// if native::available() {
///     let opts = JacobianOptions::default().strategy(Strategy::Batched { chunk_size: None });
///     jacobian_with(&y, &[&x], &opts)?;
///     assert!(native::take_vmap_fallbacks().is_empty()); // tanh's backward has a rule
/// }
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn take_vmap_fallbacks() -> Vec<String> {
    FALLBACKS.with(|f| std::mem::take(&mut *f.borrow_mut()))
}

#[cfg_attr(not(tch_jacobian_native), allow(dead_code))]
#[track_caller]
fn record_fallbacks(ops: &str) {
    FALLBACKS.with(|f| {
        let mut f = f.borrow_mut();
        for op in ops.lines() {
            warn_once(&format!(
                "{op} has no vmap batching rule: libtorch looped over this op (exact, slower)"
            ));
            if !f.iter().any(|o| o == op) {
                f.push(op.to_string());
            }
        }
    });
}

/// Logs `message` at warn level (the `log` facade) the first time this process sees it from
/// this call site (the caller of a `#[track_caller]` chain); later calls log nothing.
#[track_caller]
pub(crate) fn warn_once(message: &str) {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let at = std::panic::Location::caller();
    let key = format!("{}:{}: {message}", at.file(), at.line());
    let first = SEEN.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
    if first {
        log::warn!("{message}");
    }
}

/// Logs, once per process, that the engine is not built, the first time `Strategy::Auto` would
/// have used it.
#[cfg_attr(tch_jacobian_native, allow(dead_code))]
pub(crate) fn warn_missing_engine() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::warn!(
            "the native engine is not in this build ({}): Strategy::Auto runs the row loop or the \
             replicated strategies instead of one batched pass (slower); build with the default \
             feature `native` for it",
            build_status()
        )
    });
}

#[cfg(tch_jacobian_core)]
extern "C" {
    fn tchj_free_string(s: *mut std::ffi::c_char);
}

/// Takes ownership of a malloc'd C string from the C++ side (`None` for a null pointer).
///
/// # Safety
/// `s` is null or a NUL-terminated string from `malloc` that nobody else frees.
#[cfg(tch_jacobian_core)]
unsafe fn take_string(s: *mut std::ffi::c_char) -> Option<String> {
    if s.is_null() {
        return None;
    }
    let text = std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned();
    tchj_free_string(s);
    Some(text)
}

/// `G_k = [c, *x_k.shape]` with `G_k[r] = V[r]ᵀ ∂y/∂x_k` for the cotangents `v = [c, *y.shape]`,
/// in one backward pass with the graph kept; `None` for an input that `y` does not reach.
#[cfg(tch_jacobian_native)]
pub(crate) fn batched_vjp(
    y: &Tensor,
    xs: &[&Tensor],
    v: &Tensor,
    create_graph: bool,
    vmap_fallback: bool,
) -> Result<Vec<Option<Tensor>>> {
    use std::ffi::{c_char, c_int};
    use torch_sys::C_tensor;

    extern "C" {
        fn tchj_batched_vjp(
            y: *const C_tensor,
            xs: *const *const C_tensor,
            n_inputs: i64,
            cotangent: *const C_tensor,
            create_graph: c_int,
            vmap_fallback: c_int,
            out: *mut *mut C_tensor,
            fallback_ops: *mut *mut c_char,
        ) -> *mut c_char;
    }

    let ptrs: Vec<*const C_tensor> = xs.iter().map(|x| x.as_ptr()).collect();
    let mut out: Vec<*mut C_tensor> = vec![std::ptr::null_mut(); xs.len()];
    let mut ops: *mut c_char = std::ptr::null_mut();
    // SAFETY: every pointer is a live at::Tensor owned by a tch Tensor borrowed for the call;
    // `out` has one slot per input; the engine catches every C++ exception and hands back
    // heap-allocated tensors (owned by the `Tensor`s made below) and malloc'd strings.
    let err = unsafe {
        tchj_batched_vjp(
            y.as_ptr(),
            ptrs.as_ptr(),
            xs.len() as i64,
            v.as_ptr(),
            create_graph as c_int,
            vmap_fallback as c_int,
            out.as_mut_ptr(),
            &mut ops,
        )
    };
    if let Some(msg) = unsafe { take_string(err) } {
        return Err(engine_error(msg));
    }
    if let Some(ops) = unsafe { take_string(ops) } {
        record_fallbacks(&ops);
    }
    Ok(out
        .into_iter()
        // SAFETY: a non-null slot is a `new at::Tensor` that nobody else owns.
        .map(|p| (!p.is_null()).then(|| unsafe { Tensor::from_ptr(p) }))
        .collect())
}

/// The loss closure of [`vmap_grad`]: wrapped parameters and one sample's inputs to a scalar.
pub(crate) type LossFn<'a> = dyn Fn(&[Tensor], &[Tensor]) -> Result<Tensor> + 'a;

/// The Rust side of a closure run by the C++ side under functorch's transforms
/// (`csrc/vmap_grad.cpp`, `csrc/forward_ad.cpp`): the closure, and the error it returned.
#[cfg(tch_jacobian_native)]
struct Callback<'a, 'b> {
    f: &'a LossFn<'b>,
    error: RefCell<Option<Error>>,
}

/// The C callback type of `csrc/vmap_grad.cpp` and `csrc/forward_ad.cpp`: `ctx` is a
/// [`Callback`].
#[cfg(tch_jacobian_native)]
type CallbackFn = unsafe extern "C" fn(
    *mut std::ffi::c_void,
    *mut *mut torch_sys::C_tensor,
    i64,
    *mut *mut torch_sys::C_tensor,
    i64,
    *mut *mut torch_sys::C_tensor,
) -> std::ffi::c_int;

/// Called by the C++ side, inside the transforms. Owns the tensors it receives; never unwinds
/// into C++: an error is kept in the [`Callback`], a panic becomes [`Error::Contract`], and
/// either returns non-zero.
///
/// # Safety
/// `ctx` is a live [`Callback`]; the arrays hold `n_*` heap tensors handed over to us.
#[cfg(tch_jacobian_native)]
unsafe extern "C" fn callback(
    ctx: *mut std::ffi::c_void,
    params: *mut *mut torch_sys::C_tensor,
    n_params: i64,
    inputs: *mut *mut torch_sys::C_tensor,
    n_inputs: i64,
    out: *mut *mut torch_sys::C_tensor,
) -> std::ffi::c_int {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let ctx = &*(ctx as *const Callback<'_, '_>);
    let take = |ptrs: *mut *mut torch_sys::C_tensor, n: i64| -> Vec<Tensor> {
        (0..n as usize)
            .map(|i| Tensor::from_ptr(*ptrs.add(i)))
            .collect()
    };
    let (ps, xs) = (take(params, n_params), take(inputs, n_inputs));
    match catch_unwind(AssertUnwindSafe(|| (ctx.f)(&ps, &xs))) {
        Ok(Ok(mut t)) => {
            *out = t.as_mut_ptr();
            std::mem::forget(t); // owned by the C++ side now
            0
        }
        Ok(Err(e)) => {
            *ctx.error.borrow_mut() = Some(e);
            1
        }
        Err(panic) => {
            let message = crate::error::panic_message(panic.as_ref());
            // tch's panicking methods unwrap libtorch's error: an op without a batching rule
            // (fallback off) is the same NoBatchingRule as anywhere else.
            *ctx.error.borrow_mut() = Some(match message.find(FALLBACK_DISABLED) {
                Some(_) => engine_error(message),
                None => Error::Contract(format!("the closure panicked: {message}")),
            });
            1
        }
    }
}

/// After a C++ call that ran a [`Callback`]: its error (the closure's own, else the C++ message)
/// or `Ok`, and the ops that took the vmap fallback recorded.
///
/// # Safety
/// `err` and `ops` are null or malloc'd strings from the C++ side, each taken once.
#[cfg(tch_jacobian_native)]
unsafe fn finish_call(
    ctx: Callback<'_, '_>,
    err: *mut std::ffi::c_char,
    ops: *mut std::ffi::c_char,
) -> Result<()> {
    let ops = take_string(ops);
    if let Some(msg) = take_string(err) {
        return Err(match ctx.error.into_inner() {
            // An op of the closure without a batching rule, the fallback off: the closure's
            // own error says so in libtorch's words; it is the same NoBatchingRule as anywhere.
            Some(Error::Torch(t)) if t.to_string().contains(FALLBACK_DISABLED) => {
                engine_error(t.to_string())
            }
            Some(e) => e,
            None => engine_error(msg),
        });
    }
    if let Some(ops) = ops {
        record_fallbacks(&ops);
    }
    Ok(())
}

/// Per-sample gradients by `vmap(grad(f))` through `csrc/vmap_grad.cpp`: for `inputs[k] =
/// [B, *sample_k]`, `G_p[b] = ∂f(θ, x_b)/∂θ_p` (`[B, *θ_p]`, `None` where the loss does not reach
/// `θ_p`) and the losses `[B]`. `f` runs once, on one logical sample, at the transforms' levels;
/// its errors and panics come back as an [`Error`]. `randomness`: vmap's rule for random ops
/// inside `f` ([`crate::Randomness`]).
#[cfg(tch_jacobian_native)]
pub(crate) fn vmap_grad(
    f: &LossFn<'_>,
    params: &[&Tensor],
    inputs: &[&Tensor],
    batch: i64,
    vmap_fallback: bool,
    randomness: crate::Randomness,
) -> Result<(Vec<Option<Tensor>>, Tensor)> {
    ensure_norm_autograd()?;
    use std::ffi::{c_char, c_int, c_void};
    use torch_sys::C_tensor;
    extern "C" {
        fn tchj_vmap_grad(
            f: CallbackFn,
            ctx: *mut c_void,
            params: *const *const C_tensor,
            n_params: i64,
            inputs: *const *const C_tensor,
            n_inputs: i64,
            batch: i64,
            vmap_fallback: c_int,
            randomness: c_int,
            grads: *mut *mut C_tensor,
            losses: *mut *mut C_tensor,
            fallback_ops: *mut *mut c_char,
        ) -> *mut c_char;
    }
    let ctx = Callback {
        f,
        error: RefCell::new(None),
    };
    let p_ptrs: Vec<*const C_tensor> = params.iter().map(|t| t.as_ptr()).collect();
    let x_ptrs: Vec<*const C_tensor> = inputs.iter().map(|t| t.as_ptr()).collect();
    let mut grads: Vec<*mut C_tensor> = vec![std::ptr::null_mut(); params.len()];
    let mut losses: *mut C_tensor = std::ptr::null_mut();
    let mut ops: *mut c_char = std::ptr::null_mut();
    // SAFETY: every pointer is live for the call; the C++ side catches every exception and the
    // callback every panic.
    let err = unsafe {
        tchj_vmap_grad(
            callback,
            &ctx as *const Callback<'_, '_> as *mut c_void,
            p_ptrs.as_ptr(),
            params.len() as i64,
            x_ptrs.as_ptr(),
            inputs.len() as i64,
            batch,
            vmap_fallback as c_int,
            match randomness {
                crate::Randomness::Error => 0,
                crate::Randomness::Same => 1,
                crate::Randomness::Different => 2,
            },
            grads.as_mut_ptr(),
            &mut losses,
            &mut ops,
        )
    };
    // SAFETY: the strings come from the call above.
    unsafe { finish_call(ctx, err, ops) }?;
    // SAFETY: non-null slots are `new at::Tensor`s that nobody else owns.
    let grads = grads
        .into_iter()
        .map(|p| (!p.is_null()).then(|| unsafe { Tensor::from_ptr(p) }))
        .collect();
    Ok((grads, unsafe { Tensor::from_ptr(losses) }))
}

/// Forward-mode Jacobian columns of a closure through `csrc/forward_ad.cpp` (torch.func's jacfwd):
/// for tangents `u = [k, *x.shape]`, `(J u, f(x))` with `J u = [k, *y.shape]` — dual tensors
/// whose tangents are batched at one vmap level, one evaluation of `f`. `f` must not need `x` to
/// require grad (it gets a dual tensor); its errors and panics come back as an [`Error`].
#[cfg(tch_jacobian_native)]
pub(crate) fn jacfwd(
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    u: &Tensor,
    vmap_fallback: bool,
) -> Result<(Tensor, Tensor)> {
    ensure_norm_autograd()?;
    use std::ffi::{c_char, c_int, c_void};
    use torch_sys::C_tensor;
    extern "C" {
        fn tchj_jacfwd(
            f: CallbackFn,
            ctx: *mut c_void,
            x: *const C_tensor,
            tangents: *const C_tensor,
            vmap_fallback: c_int,
            columns: *mut *mut C_tensor,
            value: *mut *mut C_tensor,
            fallback_ops: *mut *mut c_char,
        ) -> *mut c_char;
    }
    let of_input = |_: &[Tensor], xs: &[Tensor]| f(&xs[0]);
    let ctx = Callback {
        f: &of_input,
        error: RefCell::new(None),
    };
    let mut columns: *mut C_tensor = std::ptr::null_mut();
    let mut value: *mut C_tensor = std::ptr::null_mut();
    let mut ops: *mut c_char = std::ptr::null_mut();
    // SAFETY: as in `vmap_grad`.
    let err = unsafe {
        tchj_jacfwd(
            callback,
            &ctx as *const Callback<'_, '_> as *mut c_void,
            x.as_ptr(),
            u.as_ptr(),
            vmap_fallback as c_int,
            &mut columns,
            &mut value,
            &mut ops,
        )
    };
    // SAFETY: the strings come from the call above.
    unsafe { finish_call(ctx, err, ops) }?;
    // SAFETY: on success both are `new at::Tensor`s that nobody else owns.
    Ok(unsafe { (Tensor::from_ptr(columns), Tensor::from_ptr(value)) })
}

/// Free bytes on CUDA device `device` (`cudaMemGetInfo`, through `csrc/batched_vjp.cpp`), or `None` on the
/// CPU, without CUDA, or without the engine. Memory cached by libtorch's allocator counts as used.
///
/// ```
/// use tch::Device;
/// assert_eq!(tch_jacobian::native::cuda_free_memory(Device::Cpu), None);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn cuda_free_memory(device: tch::Device) -> Option<u64> {
    let tch::Device::Cuda(index) = device else {
        return None;
    };
    if !tch::Cuda::is_available() {
        return None;
    }
    cuda_mem_get_info(index)
}

#[cfg(tch_jacobian_native)]
fn cuda_mem_get_info(index: usize) -> Option<u64> {
    extern "C" {
        fn tchj_cuda_mem_get_info(device: i32, free: *mut u64, total: *mut u64) -> i32;
    }
    let (mut free, mut total) = (0u64, 0u64);
    // SAFETY: plain out-parameters; the C++ side only calls the CUDA runtime.
    let rc = unsafe { tchj_cuda_mem_get_info(index as i32, &mut free, &mut total) };
    (rc == 0).then_some(free)
}

#[cfg(not(tch_jacobian_native))]
fn cuda_mem_get_info(_index: usize) -> Option<u64> {
    None
}

/// Without the C++ part: always an error naming the fix.
#[cfg(not(tch_jacobian_native))]
pub(crate) fn batched_vjp(
    _y: &Tensor,
    _xs: &[&Tensor],
    _v: &Tensor,
    _create_graph: bool,
    _vmap_fallback: bool,
) -> Result<Vec<Option<Tensor>>> {
    Err(unavailable())
}

/// Without the C++ part: always an error naming the fix (callers loop over samples instead).
#[cfg(not(tch_jacobian_native))]
pub(crate) fn vmap_grad(
    _f: &LossFn<'_>,
    _params: &[&Tensor],
    _inputs: &[&Tensor],
    _batch: i64,
    _vmap_fallback: bool,
    _randomness: crate::Randomness,
) -> Result<(Vec<Option<Tensor>>, Tensor)> {
    Err(unavailable())
}

/// Without the C++ part: always an error (callers use the double-backward columns instead).
#[cfg(not(tch_jacobian_native))]
pub(crate) fn jacfwd(
    _f: &dyn Fn(&Tensor) -> Result<Tensor>,
    _x: &Tensor,
    _u: &Tensor,
    _vmap_fallback: bool,
) -> Result<(Tensor, Tensor)> {
    Err(unavailable())
}

/// The error for `Strategy::Batched` in a build without the engine.
pub(crate) fn unavailable() -> Error {
    Error::InvalidArgument(format!(
        "Strategy::Batched needs the native batched engine, which this build lacks ({}); use Strategy::Auto or another strategy",
        build_status()
    ))
}

/// libtorch's message, with the disabled-fallback case turned into [`Error::NoBatchingRule`].
#[cfg_attr(not(tch_jacobian_native), allow(dead_code))]
/// libtorch's words for an op without a batching rule when the vmap fallback is off.
const FALLBACK_DISABLED: &str = " hit the vmap fallback which is currently disabled";

#[cfg_attr(not(tch_jacobian_native), allow(dead_code))]
fn engine_error(msg: String) -> Error {
    match msg.find(FALLBACK_DISABLED) {
        Some(end) => Error::NoBatchingRule {
            op: msg[..end]
                .rsplit(|c: char| c.is_whitespace() || c == '"' || c == '(')
                .next()
                .unwrap_or("")
                .to_string(),
        },
        None => Error::from(tch::TchError::Torch(msg)),
    }
}

/// The distinct names of the autograd nodes reachable from `y`'s `grad_fn` (e.g.
/// `NativeLayerNormBackward0`), and how many nodes were visited; empty for a tensor without a
/// graph. Through csrc/graph_scan.cpp (tch does not expose `grad_fn`), part of every build with
/// libtorch; `None` only in a documentation build (`doc-only`).
#[cfg(tch_jacobian_core)]
pub(crate) fn graph_node_names(y: &Tensor) -> Result<Option<(Vec<String>, usize)>> {
    use std::ffi::c_char;
    use torch_sys::C_tensor;
    extern "C" {
        fn tchj_graph_node_names(
            y: *const C_tensor,
            names: *mut *mut c_char,
            visited: *mut i64,
        ) -> *mut c_char;
    }
    // SAFETY: malloc'd strings from the C++ side, each taken once.
    let take = |s: *mut c_char| unsafe { take_string(s) };
    let mut names: *mut c_char = std::ptr::null_mut();
    let mut visited = 0i64;
    // SAFETY: `y` is a live tensor; the C++ side catches every exception.
    let err = unsafe { tchj_graph_node_names(y.as_ptr(), &mut names, &mut visited) };
    if let Some(msg) = take(err) {
        return Err(Error::from(tch::TchError::Torch(msg)));
    }
    let names = take(names)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default();
    Ok(Some((names, visited as usize)))
}

#[cfg(not(tch_jacobian_core))]
pub(crate) fn graph_node_names(_y: &Tensor) -> Result<Option<(Vec<String>, usize)>> {
    Ok(None)
}

/// Installs the normalizations' autograd kernels that are right at every order
/// (csrc/norm_autograd.cpp: libtorch's double-backward formulas for `layer_norm`, `batch_norm`
/// and `instance_norm` record a graph that is wrong one order higher, pytorch#175754 and
/// #186256), once per process. Called before every backward pass the crate runs, so that a
/// `create_graph` pass records the right graph whichever strategy, build or thread runs it.
pub(crate) fn ensure_norm_autograd() -> Result<()> {
    #[cfg(tch_jacobian_core)]
    {
        static INSTALLED: std::sync::OnceLock<std::result::Result<(), String>> =
            std::sync::OnceLock::new();
        extern "C" {
            fn tchj_install_norm_autograd() -> *mut std::ffi::c_char;
        }
        let outcome = INSTALLED.get_or_init(|| {
            // SAFETY: the C++ side catches every exception; a message is malloc'd, taken once.
            match unsafe { take_string(tchj_install_norm_autograd()) } {
                None => Ok(()),
                Some(msg) => Err(msg),
            }
        });
        if let Err(msg) = outcome {
            return Err(Error::from(tch::TchError::Torch(format!(
                "installing the normalizations' autograd kernels failed: {msg}"
            ))));
        }
    }
    Ok(())
}

/// While it lives, random ops at the innermost vmap level draw once for the batch
/// (`randomness="same"`); the level's own setting comes back when it is dropped. Outside vmap, or
/// without the engine, it does nothing. For the module door: building the model draws its
/// initial values on unbatched tensors, which `Randomness::Different` refuses.
pub(crate) struct SameRandomness {
    #[cfg_attr(not(tch_jacobian_native), allow(dead_code))]
    previous: std::ffi::c_int,
}

#[cfg(tch_jacobian_native)]
extern "C" {
    fn tchj_set_vmap_randomness(randomness: std::ffi::c_int) -> std::ffi::c_int;
}

impl SameRandomness {
    pub(crate) fn new() -> Self {
        #[cfg(tch_jacobian_native)]
        // SAFETY: writes this thread's innermost vmap level's setting; no exception.
        let previous = unsafe { tchj_set_vmap_randomness(1) };
        #[cfg(not(tch_jacobian_native))]
        let previous = -1;
        SameRandomness { previous }
    }
}

impl Drop for SameRandomness {
    fn drop(&mut self) {
        #[cfg(tch_jacobian_native)]
        if self.previous >= 0 {
            // SAFETY: as in `new`.
            unsafe {
                tchj_set_vmap_randomness(self.previous);
            }
        }
    }
}

/// Whether a functorch transform is active on this thread (inside the closure of
/// [`crate::per_sample_gradients_of`]); always `false` without the engine.
pub(crate) fn in_transform() -> bool {
    #[cfg(tch_jacobian_native)]
    {
        extern "C" {
            fn tchj_in_transform() -> std::ffi::c_int;
        }
        // SAFETY: reads functorch's thread-local layer stack.
        unsafe { tchj_in_transform() != 0 }
    }
    #[cfg(not(tch_jacobian_native))]
    false
}

/// Turns the TorchScript executor's graph optimization off on this thread while it lives, and
/// restores the previous setting when dropped (libtorch's `GraphOptimizerEnabledGuard`). Without
/// the engine it does nothing.
pub(crate) struct PlainTorchScript {
    #[cfg_attr(not(tch_jacobian_native), allow(dead_code))]
    previous: bool,
}

#[cfg(tch_jacobian_native)]
extern "C" {
    fn tchj_set_graph_executor_optimize(on: std::ffi::c_int) -> std::ffi::c_int;
}

impl PlainTorchScript {
    pub(crate) fn new() -> Self {
        #[cfg(tch_jacobian_native)]
        // SAFETY: sets a thread-local flag of libtorch.
        let previous = unsafe { tchj_set_graph_executor_optimize(0) } != 0;
        #[cfg(not(tch_jacobian_native))]
        let previous = true;
        PlainTorchScript { previous }
    }
}

impl Drop for PlainTorchScript {
    fn drop(&mut self) {
        #[cfg(tch_jacobian_native)]
        // SAFETY: as in `new`.
        unsafe {
            tchj_set_graph_executor_optimize(self.previous as std::ffi::c_int);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_fallback_names_the_op() {
        let e = engine_error(
            "aten::_foo_backward hit the vmap fallback which is currently disabled".into(),
        );
        assert!(matches!(e, Error::NoBatchingRule { ref op } if op == "aten::_foo_backward"));
        let other = engine_error("shape mismatch".into());
        assert!(matches!(other, Error::Torch(_)));
    }

    #[test]
    fn fallbacks_are_recorded_once_and_taken() {
        record_fallbacks("aten::a\naten::b");
        record_fallbacks("aten::a");
        assert_eq!(take_vmap_fallbacks(), ["aten::a", "aten::b"]);
        assert!(take_vmap_fallbacks().is_empty());
    }

    /// The `csrc/…` file names in `text`, sorted, each once.
    fn csrc_names(text: &str) -> Vec<String> {
        let mut names: Vec<String> = text
            .match_indices("csrc/")
            .map(|(i, _)| {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "_./".contains(c)))
                    .unwrap_or(rest.len());
                rest[..end].trim_end_matches('.').to_string()
            })
            .filter(|n| n.ends_with(".cpp") || n.ends_with(".h"))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The module docs list every C++ file of csrc/ (no more, no fewer), and build.rs compiles
    /// every `.cpp` of it.
    #[test]
    fn module_docs_list_the_cpp_files() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut on_disk: Vec<String> = std::fs::read_dir(root.join("csrc"))
            .unwrap()
            .map(|e| format!("csrc/{}", e.unwrap().file_name().to_string_lossy()))
            .filter(|n| n.ends_with(".cpp") || n.ends_with(".h"))
            .collect();
        on_disk.sort();
        let source = std::fs::read_to_string(root.join("src/native.rs")).unwrap();
        let docs: String = source
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(csrc_names(&docs), on_disk, "src/native.rs's module docs");
        let build = std::fs::read_to_string(root.join("build.rs")).unwrap();
        for cpp in on_disk.iter().filter(|n| n.ends_with(".cpp")) {
            assert!(
                build.contains(&format!("\"{cpp}\"")),
                "build.rs does not compile {cpp}"
            );
        }
    }
}
