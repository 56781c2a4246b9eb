//! Shared by the Criterion benches: the device to run on and the clock-stopping sync.
use tch::Device;

/// `TCH_JACOBIAN_BENCH_DEVICE=cpu|cuda` (default cpu).
pub fn device() -> Device {
    match std::env::var("TCH_JACOBIAN_BENCH_DEVICE")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "cpu" => Device::Cpu,
        "cuda" | "gpu" => {
            assert!(
                tch::Cuda::is_available(),
                "TCH_JACOBIAN_BENCH_DEVICE=cuda but tch::Cuda::is_available() is false (CPU-only libtorch?)"
            );
            Device::Cuda(0)
        }
        other => panic!("TCH_JACOBIAN_BENCH_DEVICE must be cpu or cuda, got {other:?}"),
    }
}

/// Waits for the device's queued work, so that a timer stopped afterwards measures it.
pub fn sync(dev: Device) {
    if let Device::Cuda(i) = dev {
        tch::Cuda::synchronize(i as i64);
    }
}
