//! `csrc/taylor.h` and its parts `csrc/taylor_*.cpp` (core; the generic rule
//! `csrc/taylor_generic.cpp` with the engine): collapsed Taylor mode, one forward pass that
//! carries, beside every tensor `t` that depends on the input, its first-order coefficients
//! `T = [D, *t.shape]` and one summed second-order coefficient `S`:
//!
//! ```text
//! T_t[d] = ∂t/∂x · v_d          S_t = Σ_d v_dᵀ ∇²t v_d          (seeded T_x = v, S_x = 0)
//! ```
//!
//! so that at the output `S_u = Σ_d v_dᵀ∇²u v_d` — the Laplacian for `v_d = e_d` — without a
//! reverse pass (Dangel et al., "Collapsing Taylor Mode Automatic Differentiation", NeurIPS
//! 2025). The C++ side sees each aten op the closure calls through a dispatcher fallback and
//! applies that op's collapsed rule (or the generic one); see `csrc/taylor.h` for its parts.
//! This room opens and closes the session around the closure, and lets the crate's own
//! derivatives inside a closure keep their jets ([`prepare_leaf`]) or refuse the session
//! ([`refuse_unrecorded`]): the policy (which directions, when to use this engine) is
//! [`crate::laplacian`](mod@crate::laplacian)'s.

use tch::Tensor;

use crate::error::{Error, Result};

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
/// The prefix of a refusal (a closure the mode does not follow: a nested session, another
/// thread, a derivative of a tensor it did not record, …).
const REFUSED: &str = "tch-jacobian: collapsed Taylor mode cannot follow ";

#[cfg(tch_jacobian_core)]
mod ffi {
    use std::ffi::{c_char, c_int};
    use torch_sys::C_tensor;

    extern "C" {
        pub fn tchj_taylor_begin(
            x: *const C_tensor,
            directions: *const C_tensor,
            create_graph: c_int,
        ) -> *mut c_char;
        pub fn tchj_taylor_end(
            y: *const C_tensor,
            first: *mut *mut C_tensor,
            second: *mut *mut C_tensor,
        ) -> *mut c_char;
        pub fn tchj_taylor_state(t: *const C_tensor) -> c_int;
        pub fn tchj_taylor_relay(from: *const C_tensor, to: *const C_tensor) -> *mut c_char;
        pub fn tchj_taylor_refuse(msg: *const c_char);
    }
    #[cfg(tch_jacobian_native)]
    extern "C" {
        pub fn tchj_taylor_install_generic();
    }
}

/// Runs `u` on `x` in one collapsed Taylor pass along `directions = [D, *x.shape]`.
///
/// The closure sees `x` itself, with grad mode on (as nested reverse mode runs it); every op it
/// runs is also pushed through its Taylor rule. With `create_graph`, the value and the
/// coefficients are recorded by autograd (differentiable with respect to whatever `u` captures
/// that requires grad, and to `x`); without it, only the ops a derivative inside the closure
/// needs are. An op without a rule, or a closure the mode refuses to follow, is an
/// [`Error::NoTaylorRule`]; an error or panic of the closure comes back as an [`Error`].
#[cfg(tch_jacobian_core)]
pub(crate) fn collapsed<F>(
    u: F,
    x: &Tensor,
    directions: &Tensor,
    create_graph: bool,
) -> Result<Taylor>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use torch_sys::C_tensor;

    install_generic();
    // The coefficient buffers are large and short-lived: reused heap memory instead of fresh
    // pages on every call (src/global.rs).
    crate::global::tune_malloc_once();
    // SAFETY: both pointers are live at::Tensors borrowed for the call; the C++ side catches
    // every exception and returns null or a malloc'd message.
    let err = unsafe { ffi::tchj_taylor_begin(x.as_ptr(), directions.as_ptr(), create_graph as _) };
    // SAFETY: `err` is null or a malloc'd string from the C++ side, owned here.
    if let Some(msg) = unsafe { super::take_string(err) } {
        return Err(taylor_error(msg));
    }
    // The session is open on this thread until tchj_taylor_end, whatever the closure does.
    let ran = catch_unwind(AssertUnwindSafe(|| u(x)));
    let (mut first, mut second): (*mut C_tensor, *mut C_tensor) =
        (std::ptr::null_mut(), std::ptr::null_mut());
    let y = match &ran {
        Ok(Ok(y)) => y.as_ptr(),
        _ => std::ptr::null(),
    };
    // SAFETY: `y` is null or a live tensor; on success the C++ side hands back two heap
    // tensors that the `Tensor`s below own.
    let err = unsafe { ffi::tchj_taylor_end(y, &mut first, &mut second) };
    // SAFETY: as above, a malloc'd message or null.
    let session_error = unsafe { super::take_string(err) };
    match ran {
        Ok(Ok(value)) => match session_error {
            Some(msg) => Err(taylor_error(msg)),
            None if first.is_null() || second.is_null() => Err(Error::from(tch::TchError::Torch(
                "collapsed Taylor mode: the session returned no coefficients".into(),
            ))),
            None => Ok(Taylor {
                value,
                // SAFETY: non-null heap tensors handed over by tchj_taylor_end (checked above),
                // each owned by the `Tensor` made here.
                first: unsafe { Tensor::from_ptr(first) },
                // SAFETY: as above.
                second: unsafe { Tensor::from_ptr(second) },
            }),
        },
        // A rule's failure is why the closure failed: say that rather than libtorch's echo.
        // Without create_graph the closure's main path is not recorded: a backward pass of its
        // own over it fails with libtorch's "does not require grad", which is this mode's
        // refusal (nested reverse mode records it).
        Ok(Err(e)) => Err(match session_error {
            Some(msg) => taylor_error(msg),
            None if !create_graph && unrecorded(&e) => Error::TaylorUnsupported {
                reason: format!(
                    "the closure differentiates a tensor that collapsed Taylor mode computed \
                     without create_graph ({})",
                    e.one_line()
                ),
            },
            None => e,
        }),
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
pub(crate) fn collapsed<F>(
    _u: F,
    _x: &Tensor,
    _directions: &Tensor,
    _create_graph: bool,
) -> Result<Taylor>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    Err(Error::NoTaylorRule {
        op: "(any)".into(),
        detail: "this build has no C++ core (documentation build)".into(),
    })
}

/// libtorch's (and tch's) words for a backward pass over a tensor without a graph, or with
/// respect to one that does not require grad.
#[cfg_attr(not(tch_jacobian_core), allow(dead_code))]
fn unrecorded(e: &Error) -> bool {
    matches!(e, Error::Torch(tch::TchError::Torch(m))
        if m.contains("does not require grad") || m.contains("does not use set_requires_grad"))
}

/// The generic rule (the engine's `csrc/taylor_generic.cpp`), installed once per process.
#[cfg(tch_jacobian_core)]
fn install_generic() {
    #[cfg(tch_jacobian_native)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: no arguments; sets a function pointer on the C++ side.
        ONCE.call_once(|| unsafe { ffi::tchj_taylor_install_generic() });
    }
}

/// What this thread's collapsed Taylor session (if any) knows of `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// No session is open on this thread.
    NoSession,
    /// A session is open; `t` has no coefficients.
    Constant {
        /// Whether the session records (create_graph).
        records: bool,
    },
    /// A session is open and `t` has coefficients.
    Tracked {
        /// Whether the session records (create_graph).
        records: bool,
        /// Whether `t` is on the path of a derivative taken inside the closure (its graph is
        /// recorded even when the session does not record).
        inner: bool,
    },
}

/// See [`State`].
pub(crate) fn state(t: &Tensor) -> State {
    #[cfg(tch_jacobian_core)]
    {
        // SAFETY: `t` is a live tensor borrowed for the call; the C++ side catches everything.
        let s = unsafe { ffi::tchj_taylor_state(t.as_ptr()) };
        let records = s & 4 != 0;
        match s & 3 {
            0 => State::NoSession,
            1 => State::Constant { records },
            k => State::Tracked {
                records,
                inner: k == 3,
            },
        }
    }
    #[cfg(not(tch_jacobian_core))]
    {
        let _ = t;
        State::NoSession
    }
}

/// The leaf a crate derivative differentiates with respect to, for an input `x` of a closure:
/// `Some` inside a collapsed Taylor session when `x` has coefficients. Then the derivative's own
/// ops are followed by the session: the leaf is `x` itself (a view) when the session records
/// and `x` requires grad, else a fresh leaf that takes `x`'s coefficients. `None` outside a
/// session (the caller prepares its leaf as usual).
pub(crate) fn prepare_leaf(x: &Tensor, create_graph: bool) -> Result<Option<Tensor>> {
    match state(x) {
        State::Tracked { records, inner } => {
            if create_graph && x.requires_grad() && (records || inner) {
                return Ok(Some(x.f_view_as(x)?));
            }
            let leaf = x.f_detach()?.set_requires_grad(true);
            relay(x, &leaf)?;
            Ok(Some(leaf))
        }
        _ => Ok(None),
    }
}

/// `to` takes `from`'s coefficients, on an inner derivative's path.
fn relay(from: &Tensor, to: &Tensor) -> Result<()> {
    #[cfg(tch_jacobian_core)]
    {
        // SAFETY: live tensors borrowed for the call; null or a malloc'd message back.
        let err = unsafe { ffi::tchj_taylor_relay(from.as_ptr(), to.as_ptr()) };
        // SAFETY: as above.
        if let Some(msg) = unsafe { super::take_string(err) } {
            return Err(taylor_error(msg));
        }
    }
    #[cfg(not(tch_jacobian_core))]
    let _ = (from, to);
    Ok(())
}

/// Before a backward pass over `root`: inside a session that did not record `root` (it has
/// coefficients, but no graph), the pass would treat it as a constant — the session is refused
/// instead (an [`Error::NoTaylorRule`]), so that `Auto` reruns by nested reverse mode.
pub(crate) fn refuse_unrecorded(root: &Tensor, what: &str) -> Result<()> {
    if let State::Tracked { .. } = state(root) {
        if !root.requires_grad() {
            let detail = format!(
                "{what} of a tensor computed without create_graph (its graph was not recorded)"
            );
            #[cfg(tch_jacobian_core)]
            {
                let msg = std::ffi::CString::new(detail.clone()).unwrap_or_default();
                // SAFETY: a NUL-terminated string borrowed for the call.
                unsafe { ffi::tchj_taylor_refuse(msg.as_ptr()) };
            }
            return Err(Error::TaylorUnsupported { reason: detail });
        }
    }
    Ok(())
}

/// Whether a collapsed Taylor session is open on this thread (the crate's `Auto` then avoids
/// functorch's transforms inside the closure, which the session cannot follow).
pub(crate) fn session_open() -> bool {
    #[cfg(tch_jacobian_core)]
    {
        // SAFETY: a null tensor pointer is allowed (the C++ side only reads the session).
        unsafe { ffi::tchj_taylor_state(std::ptr::null()) != 0 }
    }
    #[cfg(not(tch_jacobian_core))]
    {
        false
    }
}

/// Before one of functorch's transforms over `ts` (the engine's batched pass, vmap(grad), dual
/// numbers): inside a session, a tensor with coefficients among them would be seen by the
/// session only through wrappers it cannot follow — the session is refused (an
/// [`Error::NoTaylorRule`]), so that `Auto` reruns by nested reverse mode.
#[cfg_attr(not(tch_jacobian_native), allow(dead_code))]
pub(crate) fn refuse_transform(ts: &[&Tensor], what: &str) -> Result<()> {
    if !session_open() || !ts.iter().any(|t| matches!(state(t), State::Tracked { .. })) {
        return Ok(());
    }
    let detail = format!("{what} over a tensor with Taylor coefficients");
    #[cfg(tch_jacobian_core)]
    {
        let msg = std::ffi::CString::new(detail.clone()).unwrap_or_default();
        // SAFETY: a NUL-terminated string borrowed for the call.
        unsafe { ffi::tchj_taylor_refuse(msg.as_ptr()) };
    }
    Err(Error::TaylorUnsupported { reason: detail })
}

/// The C++ side's message as an [`Error`]: a missing rule names the op; a refusal says why.
#[cfg_attr(not(tch_jacobian_core), allow(dead_code))]
fn taylor_error(msg: String) -> Error {
    if let Some(at) = msg.find(NO_RULE) {
        let rest = &msg[at + NO_RULE.len()..];
        let line = rest.lines().next().unwrap_or(rest);
        let (op, detail) = match line.find(" (") {
            Some(p) => (
                line[..p].to_string(),
                line[p + 2..].trim_end_matches(')').to_string(),
            ),
            None => (line.trim().to_string(), String::new()),
        };
        return Error::NoTaylorRule { op, detail };
    }
    let detail = match msg.find(REFUSED) {
        Some(at) => &msg[at + REFUSED.len()..],
        None => &msg,
    };
    Error::TaylorUnsupported {
        reason: detail.lines().next().unwrap_or(detail).to_string(),
    }
}
