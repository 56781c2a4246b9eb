//! The evaluation on the test images: clean accuracy, mean `‖J‖_F` (exact, by
//! [`per_sample_jacobian`]), accuracy under Gaussian noise, FGSM and PGD (L∞). The attacks' input
//! gradients are the crate's [`vjp`] of the per-sample cross-entropies.
use super::*;

/// Test points per chunk for the Jacobians and the attacks.
const CHUNK: i64 = 500;

/// One trained network's test results; accuracies are fractions in `[0, 1]`, the grids are
/// `(σ or ε, accuracy)` in the order given.
#[derive(Debug, Clone)]
pub(crate) struct Eval {
    pub(crate) clean_acc: f64,
    pub(crate) mean_jf: f64,
    pub(crate) noise: Vec<(f64, f64)>,
    pub(crate) fgsm: Vec<(f64, f64)>,
    pub(crate) pgd: Vec<(f64, f64)>,
}

/// The attack and noise grids.
pub(crate) struct Grids {
    pub(crate) sigmas: Vec<f64>,
    pub(crate) eps: Vec<f64>,
    pub(crate) pgd_steps: usize,
}

/// `(start, len)` of the chunks of `n` points.
fn chunks(n: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..n)
        .step_by(CHUNK as usize)
        .map(move |lo| (lo, CHUNK.min(n - lo)))
}

/// Number of correct predictions of `x` (model input shape).
fn correct(net: &Net, x: &Tensor, y: &Tensor) -> Result<i64> {
    tch::no_grad(|| -> Result<i64> {
        Ok(net
            .forward(x)
            .f_argmax(-1, false)?
            .f_eq_tensor(y)?
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])?)
    })
}

/// Accuracy of `x` (model input shape, all test points) against `y`.
pub(crate) fn accuracy(net: &Net, x: &Tensor, y: &Tensor) -> Result<f64> {
    let n = x.size()[0];
    let mut hits = 0;
    for (lo, len) in chunks(n) {
        hits += correct(net, &x.f_narrow(0, lo, len)?, &y.f_narrow(0, lo, len)?)?;
    }
    Ok(hits as f64 / n as f64)
}

/// `∇_x CE(f(x_b), y_b)` for every sample at once: the crate's [`vjp`] of the per-sample
/// losses with a vector of ones (the samples do not interact, so row `b` is sample `b`'s
/// gradient).
pub(crate) fn input_gradient(net: &Net, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let x = x.f_detach()?.set_requires_grad(true);
    let logits = net.forward(&x);
    let losses = logits.f_cross_entropy_loss::<Tensor>(y, None, tch::Reduction::None, -100, 0.0)?;
    Ok(vjp(
        &losses,
        &x,
        &losses.f_ones_like()?,
        &JacobianOptions::default(),
    )?)
}

/// FGSM: `clip(x + ε·sign(∇_x CE), 0, 1)`.
pub(crate) fn fgsm(net: &Net, x: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
    let g = input_gradient(net, x, y)?;
    Ok(x.f_add(&g.f_sign()?.f_mul_scalar(eps)?)?
        .f_clamp(0.0, 1.0)?)
}

/// PGD (L∞), no random start: `steps` times `x ← clip(proj_ε(x + α·sign(∇_x CE)), 0, 1)` with
/// `α = 2.5ε/steps`, `proj_ε` the clamp to `[x₀ − ε, x₀ + ε]`.
pub(crate) fn pgd(net: &Net, x0: &Tensor, y: &Tensor, eps: f64, steps: usize) -> Result<Tensor> {
    let alpha = 2.5 * eps / steps as f64;
    let (lo, hi) = (x0.f_sub_scalar(eps)?, x0.f_add_scalar(eps)?);
    let mut x = x0.shallow_clone();
    for _ in 0..steps {
        let g = input_gradient(net, &x, y)?;
        x = x
            .f_add(&g.f_sign()?.f_mul_scalar(alpha)?)?
            .f_clamp_tensor(Some(&lo), Some(&hi))?
            .f_clamp(0.0, 1.0)?;
    }
    Ok(x)
}

/// Accuracy on adversarial inputs made chunk by chunk by `attack`.
fn attacked_accuracy(
    net: &Net,
    x: &Tensor,
    y: &Tensor,
    attack: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<f64> {
    let n = x.size()[0];
    let mut hits = 0;
    for (lo, len) in chunks(n) {
        let (xc, yc) = (x.f_narrow(0, lo, len)?, y.f_narrow(0, lo, len)?);
        hits += correct(net, &attack(&xc, &yc)?, &yc)?;
    }
    Ok(hits as f64 / n as f64)
}

/// Mean over the points of the exact `‖J_b‖_F`, `J_b = ∂ logits_b / ∂ x_b`, by [`per_sample_jacobian`].
pub(crate) fn mean_jacobian_norm(net: &Net, x: &Tensor) -> Result<f64> {
    let n = x.size()[0];
    let mut sum = 0.0;
    for (lo, len) in chunks(n) {
        let xc = x.f_narrow(0, lo, len)?.f_detach()?.set_requires_grad(true);
        let logits = net.forward(&xc);
        let j = per_sample_jacobian(&logits, &xc, &JacobianOptions::default())?; // [len, 10, *in]
        let dims: Vec<i64> = (1..j.dim() as i64).collect();
        sum += j
            .f_square()?
            .f_sum_dim_intlist(dims.as_slice(), false, Kind::Double)?
            .f_sqrt()?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?;
    }
    Ok(sum / n as f64)
}

/// Everything on the test set. The noise `z ~ N(0, 1)`, one draw per test image (the images'
/// shape, torch's CPU generator after `manual_seed(seed)`), is shared by every σ:
/// `x_σ = clip(x + σ z, 0, 1)`.
pub(crate) fn evaluate(net: &Net, data: &Data, grids: &Grids, seed: i64) -> Result<Eval> {
    let x = net.input(&data.test_x)?;
    let y = &data.test_y;
    let clean_acc = accuracy(net, &x, y)?;
    let mean_jf = mean_jacobian_norm(net, &x)?;

    tch::manual_seed(seed);
    let z = Tensor::f_randn(data.test_x.size().as_slice(), (Kind::Float, Device::Cpu))?
        .f_to_device(x.device())?
        .f_reshape(x.size().as_slice())?;
    let noise = grids
        .sigmas
        .iter()
        .map(|&s| {
            let xs = x.f_add(&z.f_mul_scalar(s)?)?.f_clamp(0.0, 1.0)?;
            Ok((s, accuracy(net, &xs, y)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let fgsm = grids
        .eps
        .iter()
        .map(|&e| {
            Ok((
                e,
                attacked_accuracy(net, &x, y, |xc, yc| fgsm(net, xc, yc, e))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let pgd = grids
        .eps
        .iter()
        .map(|&e| {
            let acc = attacked_accuracy(net, &x, y, |xc, yc| pgd(net, xc, yc, e, grids.pgd_steps))?;
            Ok((e, acc))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Eval {
        clean_acc,
        mean_jf,
        noise,
        fgsm,
        pgd,
    })
}
