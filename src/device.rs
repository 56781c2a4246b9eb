//! Device names on the command line: [`parse_device`], shared by the CLI, the examples and the
//! measuring tools.

use tch::Device;

use crate::error::{Error, Result};

/// `cpu`, `cuda` (`Cuda(0)`), `cuda:N` or `auto` (CUDA when available, else the CPU) as a
/// [`Device`]; a CUDA device that is not there is an [`Error::Device`] saying why.
///
/// A command-line helper, not part of the Jacobian API: the crate's CLI, its examples and its
/// measuring tools parse `--device` with it, and it is public so that a user's own tools accept
/// the same spellings.
///
/// ```
/// use tch::Device;
/// use tch_jacobian::device::parse_device;
/// assert_eq!(parse_device("cpu")?, Device::Cpu);
/// assert_eq!(parse_device("auto")?, Device::cuda_if_available());
/// if !tch::Cuda::is_available() {
///     let err = parse_device("cuda").unwrap_err().to_string();
///     assert!(err.contains("CUDA is not available"), "{err}");
/// }
/// assert!(parse_device("tpu").is_err());
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn parse_device(s: &str) -> Result<Device> {
    let cuda = |i: usize| -> Result<Device> {
        if !tch::Cuda::is_available() {
            return Err(Error::Device(
                "CUDA is not available (no GPU, no driver, or a CPU-only libtorch); use cpu or auto"
                    .into(),
            ));
        }
        let count = tch::Cuda::device_count();
        if i as i64 >= count {
            return Err(Error::Device(format!(
                "cuda:{i}: only {count} CUDA device(s)"
            )));
        }
        Ok(Device::Cuda(i))
    };
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(Error::InvalidArgument(format!(
                "unknown device {s:?}; expected cpu, cuda, cuda:N or auto"
            ))),
        },
    }
}
