//! `csrc/jit_executor.cpp` (the engine): the TorchScript executor's graph-optimization switch,
//! turned off while a loaded module's derivatives are taken (its optimized graph gives wrong
//! batched second derivatives).

/// Turns the TorchScript executor's graph optimization off on this thread while it lives, and
/// restores the previous setting when dropped (libtorch's `GraphOptimizerEnabledGuard`). Without
/// the engine it does nothing.
pub(crate) struct PlainTorchScript {
    #[cfg_attr(not(tch_jacobian_native), allow(dead_code))]
    previous: bool,
}

#[cfg(tch_jacobian_native)]
extern "C" {
    fn tchj_set_graph_executor_optimize(on: std::ffi::c_int) -> std::ffi::c_int;
}

impl PlainTorchScript {
    pub(crate) fn new() -> Self {
        #[cfg(tch_jacobian_native)]
        // SAFETY: sets a thread-local flag of libtorch.
        let previous = unsafe { tchj_set_graph_executor_optimize(0) } != 0;
        #[cfg(not(tch_jacobian_native))]
        let previous = true;
        PlainTorchScript { previous }
    }
}

impl Drop for PlainTorchScript {
    fn drop(&mut self) {
        #[cfg(tch_jacobian_native)]
        // SAFETY: as in `new`.
        unsafe {
            tchj_set_graph_executor_optimize(self.previous as std::ffi::c_int);
        }
    }
}
