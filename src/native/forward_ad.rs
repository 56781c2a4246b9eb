//! `csrc/forward_ad.cpp` (the engine): forward-mode Jacobian columns of a Rust closure
//! (torch.func's jacfwd), run through the trampoline of the `callback` room.
#[cfg(tch_jacobian_native)]
use std::cell::RefCell;

use tch::Tensor;

#[cfg(tch_jacobian_native)]
use super::callback::{callback, finish_call, Callback, CallbackFn};
use crate::error::Result;

/// Forward-mode Jacobian columns of a closure through `csrc/forward_ad.cpp` (torch.func's jacfwd):
/// for tangents `u = [k, *x.shape]`, `(J u, f(x))` with `J u = [k, *y.shape]` — dual tensors
/// whose tangents are batched at one vmap level, one evaluation of `f`. `f` must not need `x` to
/// require grad (it gets a dual tensor); its errors and panics come back as an
/// [`Error`](crate::Error).
#[cfg(tch_jacobian_native)]
pub(crate) fn jacfwd(
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    u: &Tensor,
    vmap_fallback: bool,
) -> Result<(Tensor, Tensor)> {
    super::norm_autograd::ensure_norm_autograd()?;
    super::taylor::refuse_transform(&[x, u], "forward-mode AD on dual tensors (functorch's jvp)")?;
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
    if columns.is_null() || value.is_null() {
        return Err(crate::error::Error::from(tch::TchError::Torch(
            "forward-mode AD: the engine returned no columns".into(),
        )));
    }
    // SAFETY: both are non-null (checked above) `new at::Tensor`s that nobody else owns.
    Ok(unsafe { (Tensor::from_ptr(columns), Tensor::from_ptr(value)) })
}

/// Without the C++ part: always an error (callers use the double-backward columns instead).
#[cfg(not(tch_jacobian_native))]
pub(crate) fn jacfwd(
    _f: &dyn Fn(&Tensor) -> Result<Tensor>,
    _x: &Tensor,
    _u: &Tensor,
    _vmap_fallback: bool,
) -> Result<(Tensor, Tensor)> {
    Err(super::shared::unavailable())
}
