//! What the crate changes for the whole process, and how to control it.
//!
//! Most of the crate touches only its inputs and the current thread. Six effects reach further;
//! each is listed here with what triggers it and how to see or steer it.
//!
//! | effect | when | scope | control |
//! |---|---|---|---|
//! | libtorch's Autograd kernels of `native_layer_norm_backward`, `native_batch_norm_backward`, `batch_norm_backward` and `cudnn_batch_norm_backward` are replaced by ones whose derivatives are right at every order (`csrc/norm_autograd.cpp`; libtorch's are wrong one order higher, pytorch#175754, #186256) | automatically before the crate's first backward pass — correctness needs it there — or when you call [`install_norm_kernels`] | the process: your own `backward` through these norms then records the corrected graph too (same first derivatives; right second and third ones) | [`install_norm_kernels`] to install them up front (so that your own code does not change behaviour when the crate first runs); [`norm_kernels_installed`] |
//! | a boxed fallback on the dispatch key `TESTING_ONLY_GenericMode` (collapsed Taylor mode, [`crate::laplacian`](mod@crate::laplacian)) | the first Laplacian by Taylor mode; before installing it the crate checks that no other library has a fallback on that key, and refuses Taylor mode (Auto falls back) if one has | the process (the key is active only on a thread while a Laplacian's closure runs on it) | none needed; a libtorch upgrade must rerun `tests/laplacian.rs` and `tests/taylor_opinfo.rs` (build-notes.md) |
//! | the batching rules of the norms and losses (`csrc/norm_rules.cpp`, `csrc/loss_rules.cpp`) | the first batched pass (engine) | the process: `torch.func`-style vmap of these ops anywhere in it uses them | — |
//! | libtorch's vmap fallback switch | during a call with `JacobianOptions::vmap_fallback(false)`, restored after it, under a lock that other batched calls respect | the process, for the call's duration | `vmap_fallback` |
//! | torch's default random generator | `Randomness::Same` in a per-sample loop draws one seed from it, reseeds it before every sample, and restores the state after the seed's draw when the loop ends; random Laplacian estimators and penalty projections with `seed: None` draw from it; the crate's own checks (independence probes) never touch it | the process | `seed: Some(s)` for the crate's own draws; `tch::manual_seed` |
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
//! # Ok::<(), tch_jacobian::Error>(())
//! ```

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
