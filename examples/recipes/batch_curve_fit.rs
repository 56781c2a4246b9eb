//! Recipe: fit many curves at once — one `least_squares` call for a batch of B independent
//! nonlinear fits (x `[B, n]`, residuals `[B, m]`), each with its own damping and stopping test,
//! on the GPU when there is one. Here B decays `y = a e^(−k t) + c` with noise and a few outliers,
//! fitted with a robust loss (soft ℓ1) and with the standard errors of every fit.
//!
//! `cargo run --release --example batch_curve_fit`
use tch::{Device, Kind, Tensor};
use tch_jacobian::least_squares::Loss;
use tch_jacobian::{least_squares, LeastSquaresOptions, Result};

/// `a e^(−k t) + c` for parameters `[B, 3]` and times `[m]`: `[B, m]`.
fn model(p: &Tensor, t: &Tensor) -> Tensor {
    p.narrow(1, 0, 1) * (-p.narrow(1, 1, 1) * t).exp() + p.narrow(1, 2, 1)
}

/// Fits `b` noisy curves of 200 points; returns (problems converged, median |k − k_true|/k_true,
/// median standard error of k, milliseconds).
fn run(b: i64, device: Device) -> Result<(usize, f64, f64, f64)> {
    tch::manual_seed(0);
    let opt = (Kind::Double, device);
    let t = Tensor::linspace(0.0, 4.0, 200, opt);
    let truth = Tensor::rand([b, 3], opt) * Tensor::from_slice(&[2.0, 1.5, 1.0]).to_device(device)
        + Tensor::from_slice(&[1.0, 0.5, -0.5]).to_device(device);
    // noise, and every 25th point of every curve an outlier (+1)
    let every_25th = Tensor::arange_start_step(0, 200, 25, (Kind::Int64, device));
    let spikes = Tensor::zeros([200], opt).index_fill(0, &every_25th, 1.0);
    let y = model(&truth, &t) + Tensor::randn([b, 200], opt) * 0.02 + spikes;
    let residual = |p: &Tensor| model(p, &t) - &y;
    let x0 = Tensor::ones([b, 3], opt); // one start for all
    let opts = LeastSquaresOptions::default()
        .loss(Loss::SoftL1)
        .loss_scale(0.05)
        .covariance(true);
    let start = std::time::Instant::now();
    let out = least_squares(residual, &x0, &opts)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let converged = out.status.iter().filter(|s| s.is_success()).count();
    let k_err = ((out.x.select(1, 1) - truth.select(1, 1)).abs() / truth.select(1, 1)).median();
    let k_se = out
        .standard_errors
        .as_ref()
        .expect("asked for")
        .select(1, 1)
        .median();
    Ok((
        converged,
        k_err.double_value(&[]),
        k_se.double_value(&[]),
        ms,
    ))
}

fn main() -> Result<()> {
    let device = Device::cuda_if_available();
    for b in [16, 1024] {
        let (ok, err, se, ms) = run(b, device)?;
        println!(
            "B = {b} on {device:?}: {ok}/{b} converged in {ms:.0} ms; median |k − k_true|/k_true = {err:.1e}, median standard error of k = {se:.1e}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_batch_fits() {
        let (ok, err, se, _) = super::run(8, tch::Device::Cpu).unwrap();
        assert_eq!(ok, 8);
        assert!(
            err < 0.05 && se < 0.05,
            "median relative error of k {err}, standard error {se}"
        );
    }
}
