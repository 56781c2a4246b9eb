//! `csrc/batched_vjp.cpp` (the engine): one backward pass over a batch of cotangents at a vmap
//! level ([`Strategy::Batched`](crate::Strategy::Batched)), and the free memory of a CUDA device
//! for the automatic chunk size.
use tch::Tensor;

use crate::error::Result;

/// `G_k = [c, *x_k.shape]` with `G_k[r] = V[r]ᵀ ∂y/∂x_k` for the cotangents `v = [c, *y.shape]`,
/// in one backward pass with the graph kept; `None` for an input that `y` does not reach.
#[cfg(tch_jacobian_native)]
pub(crate) fn batched_vjp(
    y: &Tensor,
    xs: &[&Tensor],
    v: &Tensor,
    create_graph: bool,
    vmap_fallback: bool,
) -> Result<Vec<Option<Tensor>>> {
    let mut all: Vec<&Tensor> = vec![y, v];
    all.extend_from_slice(xs);
    super::taylor::refuse_transform(&all, "a batched backward pass (functorch's vmap)")?;
    use super::shared::{engine_error, record_fallbacks};
    use super::take_string;
    use std::ffi::{c_char, c_int};
    use torch_sys::C_tensor;

    extern "C" {
        fn tchj_batched_vjp(
            y: *const C_tensor,
            xs: *const *const C_tensor,
            n_inputs: i64,
            cotangent: *const C_tensor,
            create_graph: c_int,
            vmap_fallback: c_int,
            out: *mut *mut C_tensor,
            fallback_ops: *mut *mut c_char,
        ) -> *mut c_char;
    }

    let ptrs: Vec<*const C_tensor> = xs.iter().map(|x| x.as_ptr()).collect();
    let mut out: Vec<*mut C_tensor> = vec![std::ptr::null_mut(); xs.len()];
    let mut ops: *mut c_char = std::ptr::null_mut();
    // SAFETY: every pointer is a live at::Tensor owned by a tch Tensor borrowed for the call;
    // `out` has one slot per input; the engine catches every C++ exception and hands back
    // heap-allocated tensors (owned by the `Tensor`s made below) and malloc'd strings.
    let err = unsafe {
        tchj_batched_vjp(
            y.as_ptr(),
            ptrs.as_ptr(),
            xs.len() as i64,
            v.as_ptr(),
            create_graph as c_int,
            vmap_fallback as c_int,
            out.as_mut_ptr(),
            &mut ops,
        )
    };
    // SAFETY: null or a malloc'd message from the call above, taken once.
    if let Some(msg) = unsafe { take_string(err) } {
        return Err(engine_error(msg));
    }
    // SAFETY: null or a malloc'd list of ops from the call above, taken once.
    if let Some(ops) = unsafe { take_string(ops) } {
        record_fallbacks(&ops);
    }
    Ok(out
        .into_iter()
        // SAFETY: a non-null slot is a `new at::Tensor` that nobody else owns.
        .map(|p| (!p.is_null()).then(|| unsafe { Tensor::from_ptr(p) }))
        .collect())
}

/// Without the C++ part: always an error naming the fix.
#[cfg(not(tch_jacobian_native))]
pub(crate) fn batched_vjp(
    _y: &Tensor,
    _xs: &[&Tensor],
    _v: &Tensor,
    _create_graph: bool,
    _vmap_fallback: bool,
) -> Result<Vec<Option<Tensor>>> {
    Err(super::shared::unavailable())
}

/// Free bytes on CUDA device `device` (`cudaMemGetInfo`, through `csrc/batched_vjp.cpp`), or `None` on the
/// CPU, without CUDA, or without the engine. Memory cached by libtorch's allocator counts as used.
///
/// ```
/// use tch::Device;
/// assert_eq!(tch_jacobian::native::cuda_free_memory(Device::Cpu), None);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn cuda_free_memory(device: tch::Device) -> Option<u64> {
    let tch::Device::Cuda(index) = device else {
        return None;
    };
    if !tch::Cuda::is_available() {
        return None;
    }
    cuda_mem_get_info(index)
}

#[cfg(tch_jacobian_native)]
fn cuda_mem_get_info(index: usize) -> Option<u64> {
    extern "C" {
        fn tchj_cuda_mem_get_info(device: i32, free: *mut u64, total: *mut u64) -> i32;
    }
    let (mut free, mut total) = (0u64, 0u64);
    // SAFETY: plain out-parameters; the C++ side only calls the CUDA runtime.
    let rc = unsafe { tchj_cuda_mem_get_info(index as i32, &mut free, &mut total) };
    (rc == 0).then_some(free)
}

#[cfg(not(tch_jacobian_native))]
fn cuda_mem_get_info(_index: usize) -> Option<u64> {
    None
}
