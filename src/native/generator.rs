//! `csrc/generator.cpp` (the core): the state of libtorch's default random generator of a
//! device, saved and restored around the per-sample loop of `Randomness::Same`
//! ([`GeneratorState`]).
use tch::{Device, Tensor};

use crate::error::Result;

/// The default generator of a device as it was when made; written back when dropped.
pub(crate) struct GeneratorState {
    #[cfg_attr(not(tch_jacobian_core), allow(dead_code))]
    device: Device,
    #[cfg_attr(not(tch_jacobian_core), allow(dead_code))]
    state: Option<Tensor>,
}

#[cfg(tch_jacobian_core)]
mod ffi {
    use std::ffi::{c_char, c_int};
    use torch_sys::C_tensor;
    extern "C" {
        pub fn tchj_generator_get_state(
            device_type: c_int,
            device_index: c_int,
            state: *mut *mut C_tensor,
        ) -> *mut c_char;
        pub fn tchj_generator_set_state(
            device_type: c_int,
            device_index: c_int,
            state: *const C_tensor,
        ) -> *mut c_char;
    }
}

#[cfg_attr(not(tch_jacobian_core), allow(dead_code))]
fn device_code(device: Device) -> (i32, i32) {
    match device {
        Device::Cuda(i) => (1, i as i32),
        _ => (0, 0),
    }
}

impl GeneratorState {
    /// Saves the state of `device`'s default generator.
    pub(crate) fn save(device: Device) -> Result<Self> {
        #[cfg(tch_jacobian_core)]
        {
            let (t, i) = device_code(device);
            let mut out: *mut torch_sys::C_tensor = std::ptr::null_mut();
            // SAFETY: `out` is a valid slot; the C++ side catches every exception and, on
            // success, writes a `new at::Tensor` into it.
            let err = unsafe { ffi::tchj_generator_get_state(t, i, &mut out) };
            // SAFETY: null or a malloc'd message, taken once.
            if let Some(msg) = unsafe { super::take_string(err) } {
                return Err(tch::TchError::Torch(msg).into());
            }
            let state = (!out.is_null())
                // SAFETY: a non-null `new at::Tensor` nobody else owns.
                .then(|| unsafe { Tensor::from_ptr(out) });
            Ok(GeneratorState { device, state })
        }
        #[cfg(not(tch_jacobian_core))]
        Ok(GeneratorState {
            device,
            state: None,
        })
    }
}

impl Drop for GeneratorState {
    fn drop(&mut self) {
        #[cfg(tch_jacobian_core)]
        if let Some(state) = &self.state {
            let (t, i) = device_code(self.device);
            // SAFETY: `state` is a live tensor from tchj_generator_get_state; the C++ side
            // catches every exception.
            let err = unsafe { ffi::tchj_generator_set_state(t, i, state.as_ptr()) };
            // SAFETY: null or a malloc'd message, taken once.
            if let Some(msg) = unsafe { super::take_string(err) } {
                crate::native::warn_once(&format!(
                    "could not restore the random generator's state: {msg}"
                ));
            }
        }
    }
}
