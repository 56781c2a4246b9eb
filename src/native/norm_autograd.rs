//! `csrc/norm_autograd.cpp` (the core): the normalizations' autograd kernels that are right at
//! every order, installed once per process before the crate's first backward pass.
use crate::error::Result;

/// The outcome of the one installation.
#[cfg(tch_jacobian_core)]
static INSTALLED: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();

/// Whether [`ensure_norm_autograd`] has installed the kernels.
pub(crate) fn norm_autograd_installed() -> bool {
    #[cfg(tch_jacobian_core)]
    {
        matches!(INSTALLED.get(), Some(Ok(())))
    }
    #[cfg(not(tch_jacobian_core))]
    {
        false
    }
}

/// Installs the normalizations' autograd kernels that are right at every order
/// (csrc/norm_autograd.cpp: libtorch's double-backward formulas for `layer_norm`, `batch_norm`
/// and `instance_norm` record a graph that is wrong one order higher, pytorch#175754 and
/// #186256), once per process. Called before every backward pass the crate runs, so that a
/// `create_graph` pass records the right graph whichever strategy, build or thread runs it.
pub(crate) fn ensure_norm_autograd() -> Result<()> {
    #[cfg(tch_jacobian_core)]
    {
        use super::take_string;
        use crate::error::Error;
        extern "C" {
            fn tchj_install_norm_autograd() -> *mut std::ffi::c_char;
        }
        let outcome = INSTALLED.get_or_init(|| {
            // SAFETY: the C++ side catches every exception; a message is malloc'd, taken once.
            match unsafe { take_string(tchj_install_norm_autograd()) } {
                None => Ok(()),
                Some(msg) => Err(msg),
            }
        });
        if let Err(msg) = outcome {
            return Err(Error::from(tch::TchError::Torch(format!(
                "installing the normalizations' autograd kernels failed: {msg}"
            ))));
        }
    }
    Ok(())
}
