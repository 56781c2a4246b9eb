//! What a closure given to the crate may return ([`FnOutput`]), and how the crate calls it: the
//! input prepared like PyTorch's `_grad_preprocess` (a leaf that requires grad, connected to the
//! caller's graph with `create_graph`), and a panic of the closure turned into an
//! [`Error::Contract`] — the same way for every closure-taking function and strategy.

use tch::Tensor;

use crate::error::{Error, Result};

/// What a closure given to [`jacobian_of`](crate::jacobian_of) (and friends) may return: a `Tensor`, or a
/// `Result<Tensor, E>` whose error converts into [`Error`] (e.g. `tch::TchError`).
pub trait FnOutput {
    /// The output tensor, or the closure's error.
    fn into_output(self) -> Result<Tensor>;
}

impl FnOutput for Tensor {
    fn into_output(self) -> Result<Tensor> {
        Ok(self)
    }
}

impl<E: Into<Error>> FnOutput for std::result::Result<Tensor, E> {
    fn into_output(self) -> Result<Tensor> {
        self.map_err(Into::into)
    }
}

/// Runs a call of the user's closure, its panic turned into an [`Error::Contract`] ("the closure
/// panicked: …"): every closure-taking function catches panics this one way, whatever its
/// method. (Under `panic = "abort"` nothing can be caught: the process ends, as with any panic.)
pub(crate) fn call_guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => Err(Error::Contract(format!(
            "{PANICKED}{}",
            crate::error::panic_message(panic.as_ref())
        ))),
    }
}

/// The start of [`call_guarded`]'s message.
pub(crate) const PANICKED: &str = "the closure panicked: ";

/// Prepares a closure's input like PyTorch's `_grad_preprocess`: with `create_graph` and an
/// input that already requires grad, a view that stays connected to the caller's graph;
/// otherwise a detached copy that requires grad.
pub(crate) fn prepare_input(x: &Tensor, create_graph: bool) -> Result<Tensor> {
    // Inside a Laplacian's closure (collapsed Taylor mode), the leaf keeps x's coefficients, so
    // that the Laplacian follows this derivative rather than seeing a constant.
    if let Some(leaf) = crate::native::taylor::prepare_leaf(x, create_graph)? {
        return Ok(leaf);
    }
    if create_graph && x.requires_grad() {
        Ok(x.f_view_as(x)?)
    } else {
        Ok(x.f_detach()?.set_requires_grad(true))
    }
}
