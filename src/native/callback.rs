//! The closure trampoline of `csrc/vmap_grad.cpp` and `csrc/forward_ad.cpp` (the C type
//! `tchj_loss_fn` of `csrc/functorch_guards.h`): the C++ side runs a Rust closure inside
//! functorch's transforms through `callback`, and `finish_call` turns the call's outcome into a
//! [`Result`].
#[cfg(tch_jacobian_native)]
use std::cell::RefCell;

use tch::Tensor;

#[cfg(tch_jacobian_native)]
use super::shared::{engine_error, record_fallbacks, FALLBACK_DISABLED};
#[cfg(tch_jacobian_native)]
use super::take_string;
#[cfg(tch_jacobian_native)]
use crate::error::Error;
use crate::error::Result;

/// The loss closure of [`vmap_grad`](fn@super::vmap_grad): wrapped parameters and one sample's
/// inputs to a scalar.
pub(crate) type LossFn<'a> = dyn Fn(&[Tensor], &[Tensor]) -> Result<Tensor> + 'a;

/// The Rust side of a closure run by the C++ side under functorch's transforms
/// (`csrc/vmap_grad.cpp`, `csrc/forward_ad.cpp`): the closure, and the error it returned.
#[cfg(tch_jacobian_native)]
pub(super) struct Callback<'a, 'b> {
    pub(super) f: &'a LossFn<'b>,
    pub(super) error: RefCell<Option<Error>>,
}

/// The C callback type of `csrc/vmap_grad.cpp` and `csrc/forward_ad.cpp`: `ctx` is a
/// [`Callback`].
#[cfg(tch_jacobian_native)]
pub(super) type CallbackFn = unsafe extern "C" fn(
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
pub(super) unsafe extern "C" fn callback(
    ctx: *mut std::ffi::c_void,
    params: *mut *mut torch_sys::C_tensor,
    n_params: i64,
    inputs: *mut *mut torch_sys::C_tensor,
    n_inputs: i64,
    out: *mut *mut torch_sys::C_tensor,
) -> std::ffi::c_int {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    // SAFETY: the caller (csrc/vmap_grad.cpp, csrc/forward_ad.cpp) passes the `Callback` it was
    // given, alive for the whole C++ call that runs this callback.
    let ctx = unsafe { &*(ctx as *const Callback<'_, '_>) };
    let take = |ptrs: *mut *mut torch_sys::C_tensor, n: i64| -> Vec<Tensor> {
        (0..n as usize)
            // SAFETY: `ptrs` holds `n` non-null heap tensors (`new at::Tensor`) handed over to
            // us; each is read once and owned by the `Tensor` made from it.
            .map(|i| unsafe { Tensor::from_ptr(*ptrs.add(i)) })
            .collect()
    };
    let (ps, xs) = (take(params, n_params), take(inputs, n_inputs));
    match catch_unwind(AssertUnwindSafe(|| (ctx.f)(&ps, &xs))) {
        Ok(Ok(mut t)) => {
            // SAFETY: `out` is the C++ side's slot for the result, valid for this call.
            unsafe { *out = t.as_mut_ptr() };
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
pub(super) unsafe fn finish_call(
    ctx: Callback<'_, '_>,
    err: *mut std::ffi::c_char,
    ops: *mut std::ffi::c_char,
) -> Result<()> {
    // SAFETY: the caller's contract (see above): each string is taken once.
    let ops = unsafe { take_string(ops) };
    // SAFETY: as above.
    if let Some(msg) = unsafe { take_string(err) } {
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
