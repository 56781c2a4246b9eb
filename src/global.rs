//! What the crate changes for the whole process, and how to control it.
//!
//! Most of the crate touches only its inputs and the current thread. Eight effects reach further;
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
//! | glibc's `malloc` keeps freed memory for reuse: `mallopt(M_MMAP_THRESHOLD, 128 MiB)` (32 MiB where glibc refuses more) and `mallopt(M_TRIM_THRESHOLD, 512 MiB)`, so that blocks up to 128 MiB come from the heap and up to 512 MiB of free heap top is kept rather than handed back to the OS at each `free` (glibc's own thresholds move between 128 KiB and 32 MiB / 64 MiB). Collapsed Taylor mode's coefficient buffers (8 MiB each for d = 32, B = 1024; 34 MiB for the CNN PINN's first convolution) otherwise come back as fresh pages on every call, and the page faults took about 40 % of a PINN Laplacian (d = 32 Δu 5.4 → 3.2 ms, docs/benchmarks.md) | the first Laplacian by Taylor mode, or [`set_malloc_tuning`]`(true)`; never when `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES` is set (your settings win); Linux with glibc only | the process: its resident memory stays nearer its peak (at most 512 MiB of free heap top kept) | [`set_malloc_tuning`]`(false)` before the first Laplacian leaves glibc's defaults alone (after it, restores glibc's initial thresholds, 128 KiB each); [`malloc_tuned`] |
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
/// settles the choice. The crate calls it itself before its first closure or backward pass;
/// call it first thing in `main` so that your own first forward pass is right too.
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

/// `set_malloc_tuning(false)` was called: the crate leaves glibc's malloc alone.
static MALLOC_OFF: AtomicBool = AtomicBool::new(false);
static MALLOC_TUNED: AtomicBool = AtomicBool::new(false);
static MALLOC_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// glibc's `mallopt` parameters (`<malloc.h>`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    pub const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
    pub const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    extern "C" {
        pub fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    /// Sets both thresholds; whether glibc took them.
    pub fn set(mmap: i32, trim: i32) -> bool {
        // SAFETY: mallopt takes two ints and only changes malloc's parameters.
        unsafe { mallopt(M_MMAP_THRESHOLD, mmap) == 1 && mallopt(M_TRIM_THRESHOLD, trim) == 1 }
    }
}

/// Whether the user set malloc's thresholds through the environment (then the crate never
/// changes them).
fn malloc_env_set() -> bool {
    [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "GLIBC_TUNABLES",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// Tunes glibc's `malloc` to keep freed memory for reuse (`on = true`), or leaves it alone
/// (`false`): see the [module docs](self). The crate turns it on itself at the first Laplacian by
/// collapsed Taylor mode, unless `set_malloc_tuning(false)` came first or the environment sets
/// malloc's thresholds (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `GLIBC_TUNABLES`).
/// On other platforms it does nothing. Values never depend on it; only time and resident memory
/// do.
///
/// ```text
/// M_MMAP_THRESHOLD = 128 MiB   blocks below it come from the heap, not from a fresh mmap
///                              (32 MiB where glibc refuses more)
/// M_TRIM_THRESHOLD = 512 MiB   free heap top kept, not handed back to the OS at each free
/// ```
///
/// `false` after tuning restores glibc's initial thresholds (128 KiB each; glibc's dynamic
/// adjustment of them stays off, as after any `mallopt`).
///
/// ```
/// use tch_jacobian::global;
/// global::set_malloc_tuning(false); // keep glibc's defaults, whatever the crate runs later
/// assert!(!global::malloc_tuned());
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn set_malloc_tuning(on: bool) {
    let _lock = MALLOC_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    MALLOC_OFF.store(!on, Ordering::Release);
    if on {
        tune_malloc_locked();
    } else if MALLOC_TUNED.swap(false, Ordering::AcqRel) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        glibc::set(128 * 1024, 128 * 1024);
    }
}

/// Whether glibc's malloc is tuned by the crate now (see [`set_malloc_tuning`]).
///
/// ```
/// let _ = tch_jacobian::global::malloc_tuned();
/// ```
pub fn malloc_tuned() -> bool {
    MALLOC_TUNED.load(Ordering::Acquire)
}

/// The crate's automatic tuning (the first Laplacian by Taylor mode): unless turned off or set
/// by the environment.
pub(crate) fn tune_malloc_once() {
    if MALLOC_TUNED.load(Ordering::Acquire) || MALLOC_OFF.load(Ordering::Acquire) {
        return;
    }
    let _lock = MALLOC_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !MALLOC_OFF.load(Ordering::Acquire) {
        tune_malloc_locked();
    }
}

fn tune_malloc_locked() {
    if MALLOC_TUNED.load(Ordering::Acquire) || malloc_env_set() {
        return;
    }
    // 128 MiB, or 32 MiB where glibc refuses more (older versions capped it there).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if glibc::set(128 << 20, 512 << 20) || glibc::set(32 << 20, 512 << 20) {
        MALLOC_TUNED.store(true, Ordering::Release);
    }
}
