//! What the crate changes for the whole process, and how to control it.
//!
//! Most of the crate touches only its inputs and the current thread. Seven effects reach further;
//! each is listed here with what triggers it and how to see or steer it.
//!
//! | effect | when | scope | control |
//! |---|---|---|---|
//! | libtorch's Autograd kernels of `native_layer_norm_backward`, `native_batch_norm_backward`, `batch_norm_backward` and `cudnn_batch_norm_backward` are replaced by ones whose derivatives are right at every order (`csrc/norm_autograd.cpp`; libtorch's are wrong one order higher, pytorch#175754, #186256) | automatically before the crate's first backward pass — correctness needs it there — or when you call [`install_norm_kernels`] | the process: your own `backward` through these norms then records the corrected graph too (same first derivatives; right second and third ones) | [`install_norm_kernels`] to install them up front (so that your own code does not change behaviour when the crate first runs); [`norm_kernels_installed`] |
//! | a boxed fallback on the dispatch key `TESTING_ONLY_GenericMode` (collapsed Taylor mode, [`crate::laplacian`](mod@crate::laplacian)) | the first Laplacian by Taylor mode; before installing it the crate checks that no other library has a fallback on that key, and refuses Taylor mode (Auto falls back) if one has | the process (the key is active only on a thread while a Laplacian's closure runs on it) | none needed; a libtorch upgrade must rerun `tests/laplacian.rs` and `tests/taylor_opinfo.rs` (build-notes.md) |
//! | the batching rules of the norms and losses (`csrc/norm_rules.cpp`, `csrc/loss_rules.cpp`) | the first batched pass (engine) | the process: `torch.func`-style vmap of these ops anywhere in it uses them | — |
//! | libtorch's vmap fallback switch | during a call with `JacobianOptions::vmap_fallback(false)`, restored after it, under a lock that other batched calls respect | the process, for the call's duration | `vmap_fallback` |
//! | torch's default random generator | `Randomness::Same` in a per-sample loop draws one seed from it, reseeds it before every sample, and restores the state after the seed's draw when the loop ends; random Laplacian estimators and penalty projections with `seed: None` draw from it; the crate's own checks (independence probes) never touch it | the process | `seed: Some(s)` for the crate's own draws; `tch::manual_seed` |
//! | oneMKL's vector math (VML) kernels resolved up front: one call of each VML function that ATen uses for `float` and `double` (`tanh`, `exp`, `log`, `sin`, `cos`, `erf`, `sqrt`, …) on one element, on the calling thread. Without it, the first such call of a process that runs on several intra-op threads at once can give one thread's chunk a low-accuracy kernel: errors up to ~1e-4 relative in `float` for that one call (oneMKL 2024.2, the version in libtorch 2.11's wheels; pytorch#188792) | automatically at the crate's first call that runs a closure or a backward pass, or when you call [`resolve_vml_kernels`] | the process: your own code's first `tanh`, `exp`, … after it are right too | [`resolve_vml_kernels`] at the start of `main`, before your own first forward pass; [`vml_kernels_resolved`] |
//! | log lines (the `log` facade, warn level): reroutes, vmap fallbacks, a missing engine, Taylor-mode fallbacks | the first time each distinct message occurs | the process; at most 256 distinct messages are remembered, then one last line says that further ones are not logged | install a logger to see them; `second_order::take_reroutes`, `native::take_vmap_fallbacks` (per thread) |
//!
//! The crate sets grad mode itself inside its calls (a closure always runs with grad on) and
//! restores the caller's mode on every way out, panics included; it sets no other thread-local
//! state that outlives a call.
//!
//! ```
//! use tch_jacobian::global;
//! global::install_norm_kernels()?; // idempotent
//! assert!(global::norm_kernels_installed());
//! global::resolve_vml_kernels(); // idempotent
//! assert!(global::vml_kernels_resolved());
//! # Ok::<(), tch_jacobian::Error>(())
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// Installs the normalizations' autograd kernels that are right at every order, for the whole
/// process (see the [module docs](self)); idempotent. The crate calls it itself before its first
/// backward pass.
///
/// ```
/// tch_jacobian::global::install_norm_kernels()?;
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn install_norm_kernels() -> Result<()> {
    crate::native::ensure_norm_autograd()
}

/// Whether [`install_norm_kernels`] has run in this process (directly, or by the crate's first
/// backward pass).
///
/// ```
/// let _ = tch_jacobian::global::norm_kernels_installed();
/// ```
pub fn norm_kernels_installed() -> bool {
    crate::native::norm_autograd_installed()
}

/// An elementwise op of tch.
type Op = fn(&Tensor) -> std::result::Result<Tensor, tch::TchError>;

/// The elementwise ops whose ATen CPU kernels call oneMKL's VML for contiguous `float` and
/// `double` tensors (`IMPLEMENT_VML_MKL` in `ATen/cpu/vml.h`, libtorch 2.11).
const VML_OPS: [Op; 16] = [
    Tensor::f_acos,
    Tensor::f_asin,
    Tensor::f_atan,
    Tensor::f_cos,
    Tensor::f_erf,
    Tensor::f_erfc,
    Tensor::f_erfinv,
    Tensor::f_exp,
    Tensor::f_log,
    Tensor::f_log10,
    Tensor::f_log2,
    Tensor::f_sin,
    Tensor::f_sqrt,
    Tensor::f_tan,
    Tensor::f_tanh,
    Tensor::f_trunc,
];

static VML_ONCE: Once = Once::new();
static VML_RESOLVED: AtomicBool = AtomicBool::new(false);

/// Resolves oneMKL's vector-math kernels for the whole process before anything runs them on
/// several threads at once (see the [module docs](self)); idempotent, and cheap after the first
/// call (one atomic load).
///
/// oneMKL picks each VML function's kernel lazily, on its first call. ATen calls VML from every
/// intra-op thread on its chunk of a tensor, so the first sizable `tanh` (`exp`, `sin`, …) of a
/// process runs that first call concurrently, and one thread's chunk can get a low-accuracy
/// kernel for that one call (pytorch#188792: errors up to ~1e-4 relative in `float`, in 2–5 % of
/// fresh processes on 2 threads on this project's machine; docs/limitations.md). One call of
/// each function on one element, on one thread — this function, for `float` and `double` —
/// settles the choice. The crate calls it itself
/// before its first closure or backward pass; call it first thing in `main` so that your own
/// first forward pass is right too.
///
/// ```
/// tch_jacobian::global::resolve_vml_kernels();
/// assert!(tch_jacobian::global::vml_kernels_resolved());
/// ```
pub fn resolve_vml_kernels() {
    VML_ONCE.call_once(|| {
        crate::autograd::with_grad_mode(false, || {
            for kind in [Kind::Float, Kind::Double] {
                // 0.5 is in every op's domain (acos, asin, erfinv, log, …).
                let Ok(x) = Tensor::f_full([1], 0.5, (kind, Device::Cpu)) else {
                    continue;
                };
                for op in VML_OPS {
                    // A failure here costs only the protection, never a result.
                    drop(op(&x));
                }
            }
        });
        VML_RESOLVED.store(true, Ordering::Release);
    });
}

/// Whether [`resolve_vml_kernels`] has run in this process (directly, or by the crate's first
/// call that runs a closure or a backward pass).
///
/// ```
/// let _ = tch_jacobian::global::vml_kernels_resolved();
/// ```
pub fn vml_kernels_resolved() -> bool {
    VML_RESOLVED.load(Ordering::Acquire)
}
