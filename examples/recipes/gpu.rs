//! Recipe: the same Jacobian code on a GPU. Tensors on `Device::cuda_if_available()` give CUDA
//! Jacobians; nothing else changes. Prints what the build and the device can do, the strategies
//! that were rerouted and the ops that took libtorch's slow vmap fallback, and checks the
//! batched result against the plain row loop. Without CUDA it says so and runs on the CPU (then
//! it checks nothing about a GPU). `cargo run --release --example gpu`
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    native, per_sample_jacobian_of, second_order, JacobianOptions, Progress, Result, Strategy,
};

/// Per-sample Jacobians of a 2-layer tanh MLP (`[B, n] → [B, m]`) on `device` by `Strategy::Auto`;
/// returns the largest difference from the row loop, relative to the largest entry.
fn check(device: Device, b: i64, n: i64, m: i64) -> Result<f64> {
    tch::manual_seed(0);
    let opt = (Kind::Float, device);
    let (w1, w2) = (
        Tensor::randn([64, n], opt) / (n as f64).sqrt(),
        Tensor::randn([m, 64], opt),
    );
    let f = |x: &Tensor| x.matmul(&w1.tr()).tanh().matmul(&w2.tr());
    let x = Tensor::randn([b, n], opt);
    let ran = std::cell::Cell::new(None); // the strategy Auto resolved to, from its progress calls
    let progress = |p: Progress| ran.set(Some(p.strategy));
    let start = std::time::Instant::now();
    let j = per_sample_jacobian_of(f, &x, &JacobianOptions::default().progress(&progress))?;
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64); // kernels run asynchronously
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "J {:?} on {:?}: Auto ran {:?}, {ms:.1} ms",
        j.size(),
        j.device(),
        ran.get()
    );
    // Each a possible 10–100× slowdown; empty when nothing was rerouted or fell back.
    println!("reroutes: {:?}", second_order::take_reroutes());
    println!("vmap fallbacks: {:?}", native::take_vmap_fallbacks());
    let rows = per_sample_jacobian_of(
        f,
        &x,
        &JacobianOptions::default().strategy(Strategy::RowLoop),
    )?;
    let scale = rows.abs().max().double_value(&[]);
    Ok((j - rows).abs().max().double_value(&[]) / scale)
}

fn main() -> Result<()> {
    println!(
        "CUDA available: {} ({} devices)",
        tch::Cuda::is_available(),
        tch::Cuda::device_count()
    );
    println!(
        "native engine: {} ({})",
        native::available(),
        native::build_status()
    );
    let device = Device::cuda_if_available();
    if !device.is_cuda() {
        println!(
            "CUDA is not available: this run is on the CPU, not a GPU check (see build-notes.md, \
             the GPU check, for what CUDA needs)"
        );
    }
    let diff = check(device, 1024, 256, 64)?;
    println!("max |J_auto − J_rowloop| / max |J| = {diff:.1e} (on {device:?})");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// On CUDA when it is available, else on the CPU: without a GPU this is a CPU test (it says
    /// so on stderr), not a GPU check.
    #[test]
    fn auto_matches_the_row_loop_on_cuda_if_available() {
        let device = tch::Device::cuda_if_available();
        if !device.is_cuda() {
            eprintln!("CUDA is not available: the recipe's check runs on the CPU");
        }
        let diff = super::check(device, 16, 8, 4).unwrap();
        assert!(diff < 1e-5, "relative difference {diff} on {device:?}");
    }
}
