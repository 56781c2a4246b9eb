//! `csrc/vmap_grad.cpp` (the engine): per-sample gradients by `vmap(grad(f))` of a Rust closure
//! (run through the trampoline of the `callback` room), the innermost vmap level's randomness,
//! and whether a functorch transform is active on this thread.
#[cfg(tch_jacobian_native)]
use std::cell::RefCell;

use tch::Tensor;

use super::callback::LossFn;
#[cfg(tch_jacobian_native)]
use super::callback::{callback, finish_call, Callback, CallbackFn};
use crate::error::Result;

/// Per-sample gradients by `vmap(grad(f))` through `csrc/vmap_grad.cpp`: for `inputs[k] =
/// [B, *sample_k]`, `G_p[b] = ∂f(θ, x_b)/∂θ_p` (`[B, *θ_p]`, `None` where the loss does not reach
/// `θ_p`) and the losses `[B]`. `f` runs once, on one logical sample, at the transforms' levels;
/// its errors and panics come back as an [`Error`](crate::Error). `randomness`: vmap's rule for
/// random ops inside `f` ([`crate::Randomness`]).
#[cfg(tch_jacobian_native)]
pub(crate) fn vmap_grad(
    f: &LossFn<'_>,
    params: &[&Tensor],
    inputs: &[&Tensor],
    batch: i64,
    vmap_fallback: bool,
    randomness: crate::Randomness,
) -> Result<(Vec<Option<Tensor>>, Tensor)> {
    super::norm_autograd::ensure_norm_autograd()?;
    let all: Vec<&Tensor> = params.iter().chain(inputs).copied().collect();
    super::taylor::refuse_transform(&all, "per-sample gradients by vmap(grad)")?;
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
    let grads = grads
        .into_iter()
        // SAFETY: non-null slots are `new at::Tensor`s that nobody else owns.
        .map(|p| (!p.is_null()).then(|| unsafe { Tensor::from_ptr(p) }))
        .collect();
    if losses.is_null() {
        return Err(crate::error::Error::from(tch::TchError::Torch(
            "vmap(grad): the engine returned no losses".into(),
        )));
    }
    // SAFETY: a non-null `new at::Tensor` (checked above) that nobody else owns.
    Ok((grads, unsafe { Tensor::from_ptr(losses) }))
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
    Err(super::shared::unavailable())
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
