//! `csrc/taylor.cpp` (core): collapsed Taylor mode, one forward pass that carries, beside
//! every tensor `t` that depends on the input, its first-order coefficients `T = [D, *t.shape]`
//! and one summed second-order coefficient `S`:
//!
//! ```text
//! T_t[d] = ∂t/∂x · v_d          S_t = Σ_d v_dᵀ ∇²t v_d          (seeded T_x = v, S_x = 0)
//! ```
//!
//! so that at the output `S_u = Σ_d v_dᵀ∇²u v_d` — the Laplacian for `v_d = e_d` — without a
//! reverse pass (Dangel et al., "Collapsing Taylor Mode Automatic Differentiation", NeurIPS
//! 2025). The C++ side sees each aten op the closure calls through a dispatcher fallback and
//! applies that op's collapsed rule; see the file's header for the rules and their limits.
//! This room only opens and closes the session around the closure: the policy (which
//! directions, when to use this engine) is [`crate::laplacian`]'s.

use tch::Tensor;

use crate::error::{Error, Result};
use crate::jacobian::FnOutput;

/// `u(x)` and its collapsed Taylor coefficients.
pub(crate) struct Taylor {
    /// `u(x)`, as the closure returned it.
    pub value: Tensor,
    /// `[D, *u.shape]`: `first[d] = ∂u/∂x · v_d`.
    pub first: Tensor,
    /// `u.shape`: `Σ_d v_dᵀ ∇²u v_d`.
    pub second: Tensor,
}

/// The prefix of the C++ side's message for an op without a collapsed rule.
const NO_RULE: &str = "tch-jacobian: collapsed Taylor mode has no rule for ";

/// Runs `u` on `x` in one collapsed Taylor pass along `directions = [D, *x.shape]`.
///
/// The closure sees `x` itself; every op it runs is also pushed through its Taylor rule. With
/// grad mode on, the coefficients are recorded by autograd like the value (differentiable with
/// respect to whatever `u` captures that requires grad, and to `x`). An op without a rule is an
/// [`Error::NoTaylorRule`]; an error or panic of the closure comes back as an [`Error`].
#[cfg(tch_jacobian_core)]
pub(crate) fn collapsed<F, O>(u: F, x: &Tensor, directions: &Tensor) -> Result<Taylor>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    use std::ffi::c_char;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use torch_sys::C_tensor;

    extern "C" {
        fn tchj_taylor_begin(x: *const C_tensor, directions: *const C_tensor) -> *mut c_char;
        fn tchj_taylor_end(
            y: *const C_tensor,
            first: *mut *mut C_tensor,
            second: *mut *mut C_tensor,
        ) -> *mut c_char;
    }

    // SAFETY: both pointers are live at::Tensors borrowed for the call; the C++ side catches
    // every exception and returns null or a malloc'd message.
    let err = unsafe { tchj_taylor_begin(x.as_ptr(), directions.as_ptr()) };
    if let Some(msg) = unsafe { super::take_string(err) } {
        return Err(taylor_error(msg));
    }
    // The session is open on this thread until tchj_taylor_end, whatever the closure does.
    let ran = catch_unwind(AssertUnwindSafe(|| u(x).into_output()));
    let (mut first, mut second): (*mut C_tensor, *mut C_tensor) =
        (std::ptr::null_mut(), std::ptr::null_mut());
    let y = match &ran {
        Ok(Ok(y)) => y.as_ptr(),
        _ => std::ptr::null(),
    };
    // SAFETY: `y` is null or a live tensor; on success the C++ side hands back two heap
    // tensors that the `Tensor`s below own.
    let err = unsafe { tchj_taylor_end(y, &mut first, &mut second) };
    let session_error = unsafe { super::take_string(err) };
    match ran {
        Ok(Ok(value)) => match session_error {
            Some(msg) => Err(taylor_error(msg)),
            // SAFETY: non-null on success (see above).
            None => Ok(Taylor {
                value,
                first: unsafe { Tensor::from_ptr(first) },
                second: unsafe { Tensor::from_ptr(second) },
            }),
        },
        // A rule's failure is why the closure failed: say that rather than libtorch's echo.
        Ok(Err(e)) => Err(session_error.map(taylor_error).unwrap_or(e)),
        Err(panic) => Err(match session_error {
            Some(msg) => taylor_error(msg),
            None => Error::Contract(format!(
                "the closure panicked: {}",
                crate::error::panic_message(panic.as_ref())
            )),
        }),
    }
}

/// Without libtorch's headers (documentation builds) there is no engine.
#[cfg(not(tch_jacobian_core))]
pub(crate) fn collapsed<F, O>(_u: F, _x: &Tensor, _directions: &Tensor) -> Result<Taylor>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    Err(Error::NoTaylorRule {
        op: "(any)".into(),
        detail: "this build has no C++ core (documentation build)".into(),
    })
}

/// The C++ side's message as an [`Error`]: a missing rule names the op.
#[cfg_attr(not(tch_jacobian_core), allow(dead_code))]
fn taylor_error(msg: String) -> Error {
    match msg.find(NO_RULE) {
        Some(at) => {
            let rest = &msg[at + NO_RULE.len()..];
            let line = rest.lines().next().unwrap_or(rest);
            let (op, detail) = match line.find(" (") {
                Some(p) => (
                    line[..p].to_string(),
                    line[p + 2..].trim_end_matches(')').to_string(),
                ),
                None => (line.trim().to_string(), String::new()),
            };
            Error::NoTaylorRule { op, detail }
        }
        None => Error::NoTaylorRule {
            op: "(session)".into(),
            detail: msg.lines().next().unwrap_or(&msg).to_string(),
        },
    }
}
