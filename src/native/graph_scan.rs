//! `csrc/graph_scan.cpp` (the core): the names of the autograd nodes reachable from a tensor, for
//! the reroutes of [`crate::second_order`]. tch does not expose `grad_fn`.
use tch::Tensor;

use crate::error::Result;

/// The distinct names of the autograd nodes reachable from `y`'s `grad_fn` (e.g.
/// `NativeLayerNormBackward0`), and how many nodes were visited; empty for a tensor without a
/// graph. Through csrc/graph_scan.cpp (tch does not expose `grad_fn`), part of every build with
/// libtorch; `None` only in a documentation build (`doc-only`).
#[cfg(tch_jacobian_core)]
pub(crate) fn graph_node_names(y: &Tensor) -> Result<Option<(Vec<String>, usize)>> {
    use super::take_string;
    use crate::error::Error;
    use std::ffi::c_char;
    use torch_sys::C_tensor;
    extern "C" {
        fn tchj_graph_node_names(
            y: *const C_tensor,
            names: *mut *mut c_char,
            visited: *mut i64,
        ) -> *mut c_char;
    }
    // SAFETY: malloc'd strings from the C++ side, each taken once.
    let take = |s: *mut c_char| unsafe { take_string(s) };
    let mut names: *mut c_char = std::ptr::null_mut();
    let mut visited = 0i64;
    // SAFETY: `y` is a live tensor; the C++ side catches every exception.
    let err = unsafe { tchj_graph_node_names(y.as_ptr(), &mut names, &mut visited) };
    if let Some(msg) = take(err) {
        return Err(Error::from(tch::TchError::Torch(msg)));
    }
    let names = take(names)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default();
    Ok(Some((names, visited as usize)))
}

#[cfg(not(tch_jacobian_core))]
pub(crate) fn graph_node_names(_y: &Tensor) -> Result<Option<(Vec<String>, usize)>> {
    Ok(None)
}
