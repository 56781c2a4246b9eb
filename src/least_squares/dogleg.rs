//! Powell's dogleg in a trust region `‖p_h‖ ≤ Δ`: the Gauss–Newton step (minimum norm) when it
//! fits, else the Cauchy point `−(‖g‖²/gᵀAg) g` and the segment to the Gauss–Newton step, cut
//! at the boundary — all in the eigenbasis of `A_h`, where the model `q` is free of
//! cancellation.

use tch::Tensor;

use super::linalg::{col, dot, norm, sq_norm};
use super::model::Scaled;
use super::solver::{Context, State, Step, Trial};
use crate::error::Result;

/// The trial step of every problem.
pub(crate) fn step(sc: &Scaled, st: &State, ctx: &Context) -> Result<Step> {
    let delta = &st.delta;
    let z_gn = sc.gauss_newton()?;
    let gg = sq_norm(&sc.c)?; // ‖g_h‖²
    let gag = dot(&sc.c.f_square()?, &sc.s)?; // g_hᵀ A_h g_h
    let safe_gag = gag.f_where_self(&gag.f_gt(0.0)?, &gag.f_ones_like()?)?;
    let z_c = sc.c.f_mul(&col(&gg.f_div(&safe_gag)?.f_neg()?, 1)?)?;
    let gnorm = gg.f_sqrt()?;
    let safe_gn = gnorm.f_where_self(&gnorm.f_gt(0.0)?, &gnorm.f_ones_like()?)?;
    let z_edge = sc.c.f_mul(&col(&delta.f_div(&safe_gn)?.f_neg()?, 1)?)?;
    let n_gn = norm(&z_gn)?;
    let n_c = norm(&z_c)?;
    // ‖z_c + t (z_gn − z_c)‖ = Δ, t ∈ [0, 1]
    let s = z_gn.f_sub(&z_c)?;
    let qa = sq_norm(&s)?;
    let qb = dot(&z_c, &s)?.f_mul_scalar(2.0)?;
    let qc = sq_norm(&z_c)?.f_sub(&delta.f_square()?)?;
    let disc = qb
        .f_square()?
        .f_sub(&qa.f_mul(&qc)?.f_mul_scalar(4.0)?)?
        .f_clamp_min(0.0)?
        .f_sqrt()?;
    let safe_qa = qa.f_where_self(&qa.f_gt(0.0)?, &qa.f_ones_like()?)?;
    let t = disc
        .f_sub(&qb)?
        .f_div(&safe_qa.f_mul_scalar(2.0)?)?
        .f_clamp(0.0, 1.0)?;
    let z_mix = z_c.f_add(&s.f_mul(&col(&t, 1)?)?)?;
    let beyond_c = n_c.f_ge_tensor(delta)?.f_logical_or(&gag.f_le(0.0)?)?;
    let z = z_edge.f_where_self(&col(&beyond_c, 1)?, &z_mix)?;
    let inside = n_gn.f_le_tensor(delta)?;
    let z = z_gn.f_where_self(&col(&inside, 1)?, &z)?;
    let (h, pred) = match (ctx.bounds, &sc.theta) {
        (Some(bd), Some(th)) => {
            bd.select_step(ctx.x, &sc.ah, &sc.gh, &sc.step(&z)?, &sc.d, delta, th)?
        }
        _ => (sc.step(&z)?, sc.model(&z)?.f_neg()?),
    };
    let dirder = pred.f_neg()?;
    Ok(Step {
        h,
        pred,
        dirder,
        armijo: None,
        geodesic_ok: None,
        gauss_newton: Some(inside),
    })
}

/// The update of `Δ`: `¼‖p‖` on a poor step (ratio < ¼); `2‖p‖` on a good one (ratio ≥ ¾:
/// twice the region, the step being at its edge) and after a Gauss–Newton step — MINPACK's rule
/// for λ = 0, so that the region follows the steps down (the `xtol` test is on it).
pub(crate) fn update(st: &mut State, t: &Trial, gauss_newton: &Tensor) -> Result<()> {
    let follow = t.ratio.f_ge(0.75)?.f_logical_or(gauss_newton)?;
    let new = st
        .delta
        .f_where_self(&follow.f_logical_not()?, &t.pnorm.f_mul_scalar(2.0)?)?
        .f_where_self(&t.ratio.f_ge(0.25)?, &t.pnorm.f_mul_scalar(0.25)?)?;
    st.delta = new.f_where_self(&t.active, &st.delta)?;
    Ok(())
}
