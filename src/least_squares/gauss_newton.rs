//! Gauss–Newton with a backtracking line search: the minimum-norm step
//! `p_h = −A_h⁺ g_h` (rank-deficient `J` included), scaled by `α` (1, ½, ¼, …) until the
//! decrease is at least `10⁻⁴ α |g_hᵀp_h|` (Armijo); `α` back to 1 after every accepted step.

use super::linalg::{col, dot, norm};
use super::model::Scaled;
use super::solver::{Context, State, Step, Trial};
use crate::error::Result;

/// The trial step of every problem.
pub(crate) fn step(sc: &Scaled, st: &State, ctx: &Context) -> Result<Step> {
    let z = sc.gauss_newton()?.f_mul(&col(&st.alpha, 1)?)?;
    let (h, pred, decrease) = match (ctx.bounds, &sc.theta) {
        (Some(bd), Some(th)) => {
            let p = sc.step(&z)?;
            let radius = norm(&p)?;
            let (h, pred) = bd.select_step(ctx.x, &sc.ah, &sc.gh, &p, &sc.d, &radius, th)?;
            let decrease = dot(&sc.gh, &h)?.f_neg()?;
            (h, pred, decrease)
        }
        // −g_hᵀp = −cᵀz in the eigenbasis, without cancellation
        _ => (
            sc.step(&z)?,
            sc.model(&z)?.f_neg()?,
            dot(&sc.c, &z)?.f_neg()?,
        ),
    };
    let dirder = pred.f_neg()?;
    Ok(Step {
        h,
        pred,
        dirder,
        armijo: Some(decrease),
        geodesic_ok: None,
        gauss_newton: None,
    })
}

/// `α = 1` after an accepted step, halved after a rejected one.
pub(crate) fn update(st: &mut State, t: &Trial) -> Result<()> {
    let new = st
        .alpha
        .f_ones_like()?
        .f_where_self(&t.accept, &st.alpha.f_mul_scalar(0.5)?)?;
    st.alpha = new.f_where_self(&t.active, &st.alpha)?;
    Ok(())
}
