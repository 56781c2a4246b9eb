//! The crate's one error type.
//!
//! Every fallible function returns [`Result<T>`](Result). Messages name the offending shape,
//! dtype, device or flag so that a failing call in a training loop can be fixed from the message
//! alone.
//!
//! ```
//! use tch::{Kind, Tensor};
//! use tch_jacobian::{jacobian, Error};
//!
//! let x = Tensor::from_slice(&[1.0f32, 2.0]); // requires_grad is false
//! let y = x.sin();
//! let err = jacobian(&y, &x).unwrap_err();
//! assert!(matches!(err, Error::NoGrad { .. }));
//! assert!(err.to_string().contains("[2]"));
//! # Ok::<(), Error>(())
//! ```

/// Errors returned by tch-jacobian.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input that must be differentiated against does not require grad.
    #[error("{what} (shape {shape:?}, {kind:?}) does not require grad: call `.set_requires_grad(true)` on it before building the graph")]
    NoGrad {
        /// Which argument, e.g. "x" or "input 1".
        what: String,
        /// Its shape.
        shape: Vec<i64>,
        /// Its dtype.
        kind: tch::Kind,
    },

    /// The output is not connected to an input by the autograd graph.
    #[error("{output} is not connected to {input} by the autograd graph: {detail}")]
    NotConnected {
        /// Which output, e.g. "y" or "output 0".
        output: String,
        /// Which input, e.g. "x" or "input 1".
        input: String,
        /// Why: e.g. "y does not require grad", or "all of its derivatives are undefined (strict mode)".
        detail: String,
    },

    /// Shapes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),

    /// A dtype that cannot be differentiated (integer or bool) or that does not match.
    #[error("dtype error: {0}")]
    Kind(String),

    /// Tensors on different devices, or a device that is not available.
    #[error("device error: {0}")]
    Device(String),

    /// An option or argument out of its range (e.g. `chunk_size = 0`, `k = 0`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A user closure or model broke a documented contract (e.g. wrong batch size).
    #[error("function contract violated: {0}")]
    Contract(String),

    /// An op in the graph has no vmap batching rule, and the batched engine was told not to use
    /// libtorch's per-op fallback (`JacobianOptions::vmap_fallback(false)`).
    #[error("{op} has no vmap batching rule and the vmap fallback is off (JacobianOptions::vmap_fallback(false)); turn the fallback on (the default: it loops over this op only) or use Strategy::RowLoop")]
    NoBatchingRule {
        /// The op, e.g. `aten::_scaled_dot_product_flash_attention_for_cpu_backward`.
        op: String,
    },

    /// An error raised by libtorch (the message is libtorch's own).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
