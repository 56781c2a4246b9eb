//! Levenberg–Marquardt as Moré's trust-region method (Moré 1978; MINPACK's `lmder`): the step
//! `p_h = −(A_h + λ I)⁻¹ g_h` with `λ` chosen so that `‖p_h‖ ≈ Δ` (or `λ = 0` when the
//! Gauss–Newton step fits), MINPACK's update of `Δ` and `λ`, and optionally geodesic acceleration
//! (Transtrum & Sethna 2012): `p_h = v + ½ a`, `a = −(A_h + λ I)⁻¹ d J̃ᵀ r″(x)[d v, d v]`,
//! rejected when `2‖a‖/‖v‖ > 0.75`.

use tch::Tensor;

use super::linalg::{col, dot, matvec, norm, sq_norm};
use super::model::Scaled;
use super::solver::{Context, State, Step, Trial};
use crate::error::Result;

/// Geodesic acceleration: the largest `2‖a‖/‖v‖` accepted (Transtrum & Sethna's α).
const GEODESIC_RATIO: f64 = 0.75;

/// The trial step of every problem (`active` the running ones).
pub(crate) fn step(sc: &Scaled, st: &mut State, active: &Tensor, ctx: &Context) -> Result<Step> {
    let (z, lam) = sc.trust_region(&st.delta, &st.lam)?;
    st.lam = lam.f_where_self(active, &st.lam)?;
    let v = sc.step(&z)?;
    // ½‖J̃p‖² + λ‖p‖² and −(‖J̃p‖² + λ‖p‖²)/2: MINPACK's prered and dirder, times the cost
    let jp2 = dot(&z.f_square()?, &sc.s)?;
    let lp2 = st.lam.f_mul(&sq_norm(&z)?)?;
    let pred = jp2.f_mul_scalar(0.5)?.f_add(&lp2)?;
    let dirder = jp2.f_add(&lp2)?.f_mul_scalar(-0.5)?;
    // MINPACK, first iteration: Δ = min(Δ, ‖p‖)
    let pn = norm(&v)?;
    let first = st.first.f_logical_and(active)?;
    st.delta = st.delta.f_minimum(&pn)?.f_where_self(&first, &st.delta)?;
    let mut h = v.shallow_clone();
    let mut geodesic_ok = None;
    if ctx.opts.geodesic {
        let w = sc.d.f_mul(&v)?;
        let rvv = ctx.res.second(ctx.x, &w)?;
        let rvv = match &ctx.lin.scale {
            Some(s) => rvv.f_mul(s)?, // Triggs' row scale, as for J
            None => rvv,
        };
        let ga = matvec(&ctx.lin.jms.f_transpose(1, 2)?, &rvv)?.f_mul(&sc.d)?;
        let acc = sc.damped_solve(&ga, &st.lam)?;
        let ratio = norm(&acc)?.f_mul_scalar(2.0)?.f_div(&pn)?;
        let ok = ratio.f_le(GEODESIC_RATIO)?;
        let half = acc.f_mul_scalar(0.5)?;
        h = v.f_add(&half.f_where_self(&col(&ok, 1)?, &half.f_zeros_like()?)?)?;
        // a NaN ratio (v = 0) is no acceleration, not a rejection
        geodesic_ok = Some(ok.f_logical_or(&ratio.f_isnan()?)?);
    }
    let (h, pred) = match (ctx.bounds, &sc.theta) {
        (Some(bd), Some(th)) => bd.select_step(ctx.x, &sc.ah, &sc.gh, &h, &sc.d, &st.delta, th)?,
        // with acceleration: the velocity's reduction (the geodesic model's)
        _ => (h, pred),
    };
    Ok(Step {
        h,
        pred,
        dirder,
        armijo: None,
        geodesic_ok,
        gauss_newton: None,
    })
}

/// MINPACK's update after a trial (without bounds): on a poor step (ratio ≤ ¼) the region
/// shrinks by `temp ∈ [0.1, 0.5]` (from the directional derivative) and `λ` grows by `1/temp`;
/// on a good one (ratio ≥ ¾) or a Gauss–Newton step, `Δ = 2‖p‖` and `λ` halves. Under bounds,
/// SciPy's `update_tr_radius` (¼‖p‖ on a poor step, doubled at the edge on a good one).
pub(crate) fn update(st: &mut State, t: &Trial, bounded: bool) -> Result<()> {
    let (delta, lam) = (&st.delta, &st.lam);
    let (new_delta, new_lam) = if bounded {
        let at_edge = t.pnorm.f_gt_tensor(&delta.f_mul_scalar(0.95)?)?;
        let grow = t.ratio.f_gt(0.75)?.f_logical_and(&at_edge)?;
        let new = delta
            .f_where_self(&grow.f_logical_not()?, &delta.f_mul_scalar(2.0)?)?
            .f_where_self(&t.ratio.f_ge(0.25)?, &t.pnorm.f_mul_scalar(0.25)?)?;
        (new, lam.shallow_clone())
    } else {
        let low = t.ratio.f_le(0.25)?;
        let denom = t.dirder.f_add(&t.actred.f_mul_scalar(0.5)?)?;
        let safe = denom.f_where_self(&denom.f_ne(0.0)?, &denom.f_ones_like()?)?;
        let temp = t.actred.f_full_like(0.5)?.f_where_self(
            &t.actred.f_ge(0.0)?,
            &t.dirder.f_mul_scalar(0.5)?.f_div(&safe)?,
        )?;
        let temp = temp
            .f_full_like(0.1)?
            .f_where_self(&t.blowup.f_logical_or(&temp.f_lt(0.1)?)?, &temp)?;
        let shrunk = delta
            .f_minimum(&t.pnorm.f_mul_scalar(10.0)?)?
            .f_mul(&temp)?;
        let grow = lam.f_eq(0.0)?.f_logical_or(&t.ratio.f_ge(0.75)?)?;
        let new_delta = delta
            .f_where_self(&grow.f_logical_not()?, &t.pnorm.f_mul_scalar(2.0)?)?
            .f_where_self(&low.f_logical_not()?, &shrunk)?;
        let new_lam = lam
            .f_where_self(&grow.f_logical_not()?, &lam.f_mul_scalar(0.5)?)?
            .f_where_self(&low.f_logical_not()?, &lam.f_div(&temp)?)?;
        (new_delta, new_lam)
    };
    st.delta = new_delta.f_where_self(&t.active, &st.delta)?;
    st.lam = new_lam.f_where_self(&t.active, &st.lam)?;
    Ok(())
}
