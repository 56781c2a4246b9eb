//! The covariance of the estimates at the solution, as statistics packages report it.

use tch::{Kind, Tensor};

use super::linalg::{col, eps};
use crate::error::Result;

/// `σ² (JᵀJ)⁻¹` with `σ² = 2·cost/(m − n)`, from `J` (`[B, m, n]`, after the loss's correction)
/// and the cost (`[B]`): `J = QR`, `R = U S Vᵀ`, `(JᵀJ)⁻¹ = V S⁻² Vᵀ` — the singular values of `J`
/// without squaring its condition number. `J` is rank deficient where a singular value is at most
/// `max(m, n) · ε · s_max` (NumPy's `matrix_rank`); those problems get NaN. Returns the
/// covariance `[B, n, n]`, the standard errors `[B, n]` and whether each `J` has full rank.
pub(crate) fn covariance(j: &Tensor, cost: &Tensor) -> Result<(Tensor, Tensor, Vec<bool>)> {
    let s = j.size();
    let (m, n) = (s[1], s[2]);
    let (_, r) = Tensor::f_linalg_qr(j, "r")?;
    // (torch.svd: tch's linalg_svd always passes a driver, which the CPU refuses)
    let (_, sv, v) = r.f_svd(true, true)?;
    let vh = v.f_transpose(-2, -1)?;
    let top = sv.f_amax([-1i64].as_slice(), true)?;
    let tol = top.f_mul_scalar(m.max(n) as f64 * eps(j.kind()))?;
    let keep = sv.f_gt_tensor(&tol)?;
    let full = keep.f_all_dim(-1, false)?;
    let inv = sv
        .f_square()?
        .f_reciprocal()?
        .f_where_self(&keep, &sv.f_zeros_like()?)?;
    // Vᵀ diag(inv) V with Vh = Vᵀ's rows the right singular vectors
    let cov0 = vh
        .f_transpose(-2, -1)?
        .f_mul(&inv.f_unsqueeze(-2)?)?
        .f_matmul(&vh)?;
    let sigma2 = cost.f_mul_scalar(2.0 / (m - n) as f64)?;
    let cov = cov0.f_mul(&col(&sigma2, 2)?)?;
    let cov = cov.f_where_self(&col(&full, 2)?, &cov.f_full_like(f64::NAN)?)?;
    let se = cov.f_diagonal(0, -2, -1)?.f_sqrt()?;
    let full = Vec::<bool>::try_from(full.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Bool)?)?;
    Ok((cov, se, full))
}
