//! Robust losses (SciPy's formulas, Ceres's Tukey) and Triggs' correction, on `[B, m]` residuals.

use tch::{Kind, Tensor};

use super::options::Loss;
use crate::error::Result;

/// The residuals as the methods see them after the loss.
pub(crate) struct Corrected {
    /// `½ C² Σ ρ(r²/C²)`, `[B]`.
    pub cost: Tensor,
    /// `r̃ = ρ′ r / s`, `[B, m]` (the residuals themselves for the linear loss).
    pub r: Tensor,
    /// `s = √max(ρ′ + 2zρ″, ε)`, `[B, m]`, by which the Jacobian's rows are scaled; `None` for the
    /// linear loss.
    pub scale: Option<Tensor>,
    /// `ρ′`, `[B, m]` (the IRLS weights); `None` for the linear loss.
    pub weight: Option<Tensor>,
}

/// `ρ(z)`, `ρ′(z)`, `ρ″(z)` elementwise (`z = r²/C² ≥ 0`); the derivatives only when asked.
fn rho(loss: Loss, z: &Tensor, derivatives: bool) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let one = |t: &Tensor| t.f_ones_like();
    Ok(match loss {
        Loss::Linear => {
            let d = if derivatives {
                Some((one(z)?, z.f_zeros_like()?))
            } else {
                None
            };
            (z.shallow_clone(), d)
        }
        Loss::SoftL1 => {
            let t = z.f_add_scalar(1.0)?; // 1 + z
            let s = t.f_sqrt()?;
            let r0 = s.f_sub_scalar(1.0)?.f_mul_scalar(2.0)?;
            let d = if derivatives {
                let r1 = s.f_reciprocal()?;
                let r2 = r1.f_div(&t)?.f_mul_scalar(-0.5)?;
                Some((r1, r2))
            } else {
                None
            };
            (r0, d)
        }
        Loss::Huber => {
            let inlier = z.f_le(1.0)?;
            // sqrt of a value ≥ 1 on the outlier side, so that the unused branch is finite.
            let sz = z.f_clamp_min(1.0)?.f_sqrt()?;
            let r0 = z.f_where_self(&inlier, &sz.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?)?;
            let d = if derivatives {
                let r1 = one(z)?.f_where_self(&inlier, &sz.f_reciprocal()?)?;
                let outer = sz.f_pow_tensor_scalar(-3.0)?.f_mul_scalar(-0.5)?;
                let r2 = z.f_zeros_like()?.f_where_self(&inlier, &outer)?;
                Some((r1, r2))
            } else {
                None
            };
            (r0, d)
        }
        Loss::Cauchy => {
            let r0 = z.f_log1p()?;
            let d = if derivatives {
                let r1 = z.f_add_scalar(1.0)?.f_reciprocal()?;
                let r2 = r1.f_square()?.f_neg()?;
                Some((r1, r2))
            } else {
                None
            };
            (r0, d)
        }
        Loss::Arctan => {
            let r0 = z.f_atan()?;
            let d = if derivatives {
                let t = z.f_square()?.f_add_scalar(1.0)?; // 1 + z²
                let r1 = t.f_reciprocal()?;
                let r2 = z.f_mul_scalar(-2.0)?.f_mul(&r1)?.f_mul(&r1)?;
                Some((r1, r2))
            } else {
                None
            };
            (r0, d)
        }
        Loss::Tukey => {
            let inlier = z.f_le(1.0)?;
            let w = z.f_neg()?.f_add_scalar(1.0)?.f_clamp_min(0.0)?; // 1 − z, 0 beyond
            let r0 = w
                .f_pow_tensor_scalar(3.0)?
                .f_neg()?
                .f_add_scalar(1.0)?
                .f_div_scalar(3.0)?;
            let r0 = r0.f_where_self(&inlier, &z.f_full_like(1.0 / 3.0)?)?;
            let d = if derivatives {
                Some((w.f_square()?, w.f_mul_scalar(-2.0)?))
            } else {
                None
            };
            (r0, d)
        }
    })
}

fn eps(kind: Kind) -> f64 {
    match kind {
        Kind::Float => f32::EPSILON as f64,
        _ => f64::EPSILON,
    }
}

/// The cost `½ C² Σ ρ(r²/C²)` per problem, `[B]` (no derivatives: for trial points).
pub(crate) fn cost(loss: Loss, c: f64, r: &Tensor) -> Result<Tensor> {
    if loss == Loss::Linear {
        return Ok(r
            .f_square()?
            .f_sum_dim_intlist(1, false, None::<Kind>)?
            .f_mul_scalar(0.5)?);
    }
    let z = r.f_square()?.f_div_scalar(c * c)?;
    let (r0, _) = rho(loss, &z, false)?;
    Ok(r0
        .f_sum_dim_intlist(1, false, None::<Kind>)?
        .f_mul_scalar(0.5 * c * c)?)
}

/// The cost and Triggs' correction of the residuals (see [`Loss`]).
pub(crate) fn correct(loss: Loss, c: f64, r: &Tensor) -> Result<Corrected> {
    if loss == Loss::Linear {
        return Ok(Corrected {
            cost: cost(loss, c, r)?,
            r: r.shallow_clone(),
            scale: None,
            weight: None,
        });
    }
    let z = r.f_square()?.f_div_scalar(c * c)?;
    let (r0, d) = rho(loss, &z, true)?;
    let (r1, r2) = d.expect("derivatives asked for");
    let cost = r0
        .f_sum_dim_intlist(1, false, None::<Kind>)?
        .f_mul_scalar(0.5 * c * c)?;
    let scale = r1
        .f_add(&z.f_mul(&r2)?.f_mul_scalar(2.0)?)?
        .f_clamp_min(eps(r.kind()))?
        .f_sqrt()?;
    let rc = r.f_mul(&r1)?.f_div(&scale)?;
    Ok(Corrected {
        cost,
        r: rc,
        scale: Some(scale),
        weight: Some(r1),
    })
}
