//! Held-out evaluation: reconstruction, exact ‖J‖_F by per_sample_jacobian, the mean spectrum of J.
use super::*;

/// Held-out statistics of one model.
pub(crate) struct Eval {
    pub(crate) recon: f64,
    pub(crate) jac_fro: f64,
    pub(crate) jac_fro_sq: f64,
    /// Mean over the points of the singular values of `J(x)`, descending.
    pub(crate) spectrum: Vec<f64>,
    /// max |closed form − exact| / exact of `‖J‖_F²` over the points.
    pub(crate) closed_form_gap: f64,
}

/// Exact per-point Jacobians by [`per_sample_jacobian`] (chunks of `chunk` points).
pub(crate) fn evaluate(model: &AutoEncoder, test: &Tensor, chunk: i64) -> Result<Eval> {
    let n_test = test.size()[0];
    let (mut recon, mut fro, mut fro_sq, mut gap) = (0.0, 0.0, 0.0, 0.0f64);
    let mut sv_sum: Option<Tensor> = None;
    let mut lo = 0;
    while lo < n_test {
        let len = chunk.min(n_test - lo);
        let x = test
            .f_narrow(0, lo, len)?
            .f_contiguous()?
            .f_detach_copy()?
            .set_requires_grad(true);
        lo += len;
        let h = model.encode(&x)?;
        let j = per_sample_jacobian(&h, &x, &JacobianOptions::default())?; // [len, m, n]
        let h = h.f_detach()?;
        let j_sq = j
            .f_square()?
            .f_sum_dim_intlist([1i64, 2].as_slice(), false, None::<Kind>)?; // [len]
        let closed = tch::no_grad(|| sigmoid_linear_frobenius_sq(&model.enc.ws, &h))?;
        let rel = closed.f_sub(&j_sq)?.f_abs()?.f_div(&j_sq)?;
        gap = gap.max(rel.f_max()?.f_double_value(&[])?);
        recon += sq_error(&x, &model.decode(&h))?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?;
        fro += j_sq.f_sqrt()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        fro_sq += j_sq.f_sum(Kind::Double)?.f_double_value(&[])?;
        // Singular values per point, [len, min(m, n)], descending.
        // (`Tensor::linalg_svdvals(&j, "")` passes the driver as `Some("")`, which libtorch
        // rejects on CPU; `svd` without U, V calls the same LAPACK routine with no driver.)
        let (_, sv, _) = j.f_to_kind(Kind::Double)?.f_svd(true, false)?;
        let sv = sv.f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)?;
        sv_sum = Some(match sv_sum {
            None => sv,
            Some(s) => s.f_add(&sv)?,
        });
    }
    let spectrum = Vec::<f64>::try_from(
        sv_sum
            .ok_or_else(|| anyhow!("no held-out points"))?
            .f_div_scalar(n_test as f64)?
            .f_to_device(Device::Cpu)?,
    )?;
    let nf = n_test as f64;
    Ok(Eval {
        recon: recon / nf,
        jac_fro: fro / nf,
        jac_fro_sq: fro_sq / nf,
        spectrum,
        closed_form_gap: gap,
    })
}

/// Mean `‖x − x̄‖²` of the held-out points (for the relative reconstruction error).
pub(crate) fn spread(x: &Tensor) -> Result<f64> {
    let mean = x.f_mean_dim([0i64].as_slice(), true, None::<Kind>)?;
    Ok(sq_error(x, &mean)?
        .f_mean(Kind::Double)?
        .f_double_value(&[])?)
}

/// Indices (0-based) of the spectrum rows to print: the first 10, then powers of two, the last.
pub(crate) fn rows_to_print(r: usize) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..r.min(10)).collect();
    let mut p = 16;
    while p < r {
        rows.push(p - 1);
        p *= 2;
    }
    if r > 10 {
        rows.push(r - 1);
    }
    rows
}

/// The standard deviation over `draws` seeds of `contractive_penalty` on `x` with
/// `estimator(seed)`, relative to the exact penalty.
pub(crate) fn relative_noise(
    model: &AutoEncoder,
    x: &Tensor,
    draws: u64,
    estimator: impl Fn(u64) -> PenaltyEstimator,
) -> Result<f64> {
    let xg = x.f_detach()?.set_requires_grad(true);
    let h = model.encode(&xg)?;
    let exact = jacobian_penalty(
        &h,
        &xg,
        &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
    )?
    .f_double_value(&[])?;
    let values = (0..draws)
        .map(|seed| {
            Ok(jacobian_penalty(
                &h,
                &xg,
                &PenaltyOptions::default().estimator(&estimator(seed)),
            )?
            .f_double_value(&[])?)
        })
        .collect::<Result<Vec<f64>>>()?;
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
    Ok(var.sqrt() / exact)
}
