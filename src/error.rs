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

    /// Values differ beyond a tolerance ([`crate::testing::Tolerance::check`]): how many, the
    /// formula and the first differing elements.
    #[error("values differ: {0}")]
    Mismatch(String),

    /// An op in the graph has no vmap batching rule, and the batched engine was told not to use
    /// libtorch's per-op fallback (`JacobianOptions::vmap_fallback(false)`).
    #[error("{op} has no vmap batching rule and the vmap fallback is off (JacobianOptions::vmap_fallback(false)); turn the fallback on (the default: it loops over this op only) or use Strategy::RowLoop")]
    NoBatchingRule {
        /// The op, e.g. `aten::_scaled_dot_product_flash_attention_for_cpu_backward`.
        op: String,
    },

    /// Collapsed Taylor mode ([`crate::laplacian`](mod@crate::laplacian)) met an op of the closure it has no rule for:
    /// no collapsed rule, and no forward-mode derivative for the generic rule (or a build
    /// without the engine, which has no generic rule). With
    /// [`Strategy::Auto`](crate::Strategy::Auto) this never reaches the caller: nested reverse
    /// mode runs instead.
    #[error("collapsed Taylor mode has no rule for {op}{}; use Strategy::Auto or a nested strategy (Strategy::RowLoop: every op with a double backward)", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
    NoTaylorRule {
        /// The op, e.g. `aten::native_batch_norm`.
        op: String,
        /// Why, when there is more to say.
        detail: String,
    },

    /// Collapsed Taylor mode ([`crate::laplacian`](mod@crate::laplacian)) refused a closure it cannot follow — not for
    /// a missing rule ([`Error::NoTaylorRule`]) but for what the closure does: a collapsed
    /// Taylor pass inside a collapsed Taylor pass (one per thread), work on another thread that
    /// sees the pass's tensors, a backward pass of the closure's own over a tensor the pass did
    /// not record (without `create_graph`), an in-place write into a view, a functorch transform
    /// inside the closure. With [`Strategy::Auto`](crate::Strategy::Auto) this never reaches
    /// the caller: nested reverse mode runs instead.
    #[error("collapsed Taylor mode cannot follow this closure: {reason}; use Strategy::Auto or a nested strategy (Strategy::RowLoop)")]
    TaylorUnsupported {
        /// What the closure did.
        reason: String,
    },

    /// The asked strategy would give wrong derivatives under `create_graph` through an op of the
    /// graph: libtorch's own rule for that op is wrong one order higher (see
    /// [`crate::second_order`], which names the upstream issue). `Strategy::Auto` never picks
    /// such a strategy; `Batched` and `RowLoop` are right.
    #[error("Strategy::{strategy} with create_graph would give wrong second derivatives through {op}: {detail}; use Strategy::Auto or Strategy::RowLoop (or Strategy::Batched with the native engine), which are right at every order")]
    WrongDerivative {
        /// The strategy asked for, as its Display name (e.g. `forward`).
        strategy: String,
        /// The autograd node, e.g. `NativeLayerNormBackward0`.
        op: String,
        /// Why, with the upstream issue.
        detail: String,
    },

    /// An allocation failed: the device ran out of memory. `asked` is libtorch's own line (it
    /// names the size asked for); the fix is to compute `J` in smaller pieces. The call leaves
    /// nothing behind: the next, smaller call on the same device works.
    #[error("out of memory on the {device}: {asked}; compute J in smaller pieces: pass a chunk_size (e.g. Strategy::Batched {{ chunk_size: Some(64) }}), or use a smaller batch")]
    OutOfMemory {
        /// "CPU" or "GPU".
        device: String,
        /// libtorch's first line, e.g. "DefaultCPUAllocator: can't allocate memory: you tried to
        /// allocate 4398046511104 bytes. …" or "CUDA out of memory. Tried to allocate 256.00 GiB. …".
        asked: String,
    },

    /// A file could not be read or written (a model, a `.npy` input).
    #[error("cannot read {what} {}: {source}", path.display())]
    Io {
        /// What the file is, e.g. "TorchScript model".
        what: String,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// An error raised by libtorch (the message is libtorch's own).
    #[error("libtorch: {0}")]
    Torch(tch::TchError),
}

impl Error {
    /// The message on one line, without libtorch's C++ backtraces and TorchScript tracebacks
    /// (and without the `libtorch: ` prefix on messages a model raised) — for a command-line
    /// tool or a log line.
    ///
    /// ```
    /// use tch_jacobian::Error;
    /// let e = Error::from(tch::TchError::Torch(
    ///     "The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript (most recent call last):\n  File \"m.py\", line 3\n    return x @ w\n           ~~~~~ <--- HERE\nRuntimeError: mat1 and mat2 shapes cannot be multiplied (1x3 and 5x4)\nException raised from ...".into(),
    /// ));
    /// assert_eq!(e.one_line(), "mat1 and mat2 shapes cannot be multiplied (1x3 and 5x4)");
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn one_line(&self) -> String {
        match self {
            Error::Torch(tch::TchError::Torch(msg)) => one_line(msg),
            other => one_line(&other.to_string()),
        }
    }
}

/// The first line of a caught panic's message (`"(no message)"` when it carries none), for the
/// [`Error::Contract`] a user closure's panic becomes.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into());
    msg.lines().next().unwrap_or("").to_string()
}

/// Collapses a (libtorch) message to one line: drops C++ backtraces and TorchScript
/// tracebacks, keeping the error's own line(s). The crate's one trimming helper.
pub(crate) fn one_line(msg: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut in_traceback = false;
    for line in msg.lines() {
        let t = line.trim();
        if t.starts_with("Exception raised from") || t.starts_with("frame #") {
            break; // a C++ backtrace follows
        }
        if t.is_empty() {
            continue;
        }
        if t.starts_with("Traceback of TorchScript") {
            in_traceback = true;
            continue;
        }
        if in_traceback {
            // Code lines and `~~~ <--- HERE` markers up to the exception's own line.
            if let Some(pos) = error_prefix(t) {
                kept.push(&t[pos..]);
                in_traceback = false;
            }
            continue;
        }
        kept.push(t);
    }
    let joined = kept
        .iter()
        .map(|l| {
            l.trim_end_matches("The following operation failed in the TorchScript interpreter.")
        })
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let joined = joined.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        msg.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        joined
    }
}

/// Where a Python-style `RuntimeError: …` line's message starts, if `line` is one.
fn error_prefix(line: &str) -> Option<usize> {
    let (name, _) = line.split_once(": ")?;
    let is_name = !name.is_empty()
        && (name.ends_with("Error") || name.ends_with("Exception"))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
    is_name.then_some(name.len() + 2)
}

impl From<tch::TchError> for Error {
    /// libtorch's errors, with allocation failures turned into [`Error::OutOfMemory`].
    fn from(e: tch::TchError) -> Self {
        if let tch::TchError::Torch(msg) = &e {
            let line = one_line(msg);
            let cpu = line.contains("not enough memory") || line.contains("can't allocate memory");
            if cpu || line.contains("out of memory") {
                // Without c10's "[enforce fail at alloc_cpu.cpp:127] err == 0. " prefix.
                let start = line.find("DefaultCPUAllocator").unwrap_or(0);
                let asked: String = line[start..].chars().take(400).collect();
                return Error::OutOfMemory {
                    device: if cpu { "CPU" } else { "GPU" }.into(),
                    asked,
                };
            }
        }
        Error::Torch(e)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_failures_are_out_of_memory() {
        let cpu = Error::from(tch::TchError::Torch(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)\nframe #0: ...".into(),
        ));
        assert!(matches!(cpu, Error::OutOfMemory { ref device, .. } if device == "CPU"));
        let text = cpu.to_string();
        assert!(
            text.contains("1099511627776 bytes") && text.contains("chunk_size"),
            "{text}"
        );
        assert!(
            !text.contains("frame #0") && !text.contains("enforce"),
            "{text}"
        );
        let gpu = Error::from(tch::TchError::Torch(
            "CUDA out of memory. Tried to allocate 256.00 GiB. GPU 0 has a total capacity of 79.19 GiB".into(),
        ));
        assert!(matches!(gpu, Error::OutOfMemory { ref device, .. } if device == "GPU"));
        assert!(matches!(
            Error::from(tch::TchError::Torch("shape mismatch".into())),
            Error::Torch(_)
        ));
    }
}
