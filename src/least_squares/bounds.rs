//! Box bounds: Coleman–Li scaling and the reflective step selection of SciPy's `trf`
//! (Branch, Coleman & Li 1999), batched. Every function works on `[B, n]` rows, each problem on
//! its own; infinite bounds are free sides.

use tch::{Kind, Tensor};

use super::linalg::{col, dot, matvec, norm, quadratic};
use crate::error::{Error, Result};

/// The bounds of a solve, expanded to `[B, n]` in the solver's dtype and device.
pub(crate) struct Bounds {
    pub lower: Tensor,
    pub upper: Tensor,
}

impl Bounds {
    /// Checks and expands `(lower, upper)` (`[n]` or `[B, n]`): finite or ±∞ (no NaN),
    /// `lower < upper`, on `x0`'s device; `x0` inside (`lower ≤ x0 ≤ upper`).
    pub(crate) fn new(lower: &Tensor, upper: &Tensor, x0: &Tensor) -> Result<Bounds> {
        let (b, n) = (x0.size()[0], x0.size()[1]);
        let expand = |t: &Tensor, name: &str| -> Result<Tensor> {
            if t.device() != x0.device() {
                return Err(Error::Device(format!(
                    "the {name} bound (shape {:?}) is on {:?} but x0 is on {:?}; move them to one device",
                    t.size(),
                    t.device(),
                    x0.device()
                )));
            }
            crate::autograd::check_float(t, &format!("the {name} bound"))?;
            let s = t.size();
            let ok = s == [n] || s == [b, n] || (s == [1, n]);
            if !ok {
                return Err(Error::Shape(format!(
                    "the {name} bound has shape {s:?}; it must be [n] = [{n}] or [B, n] = [{b}, {n}] (x0 is {:?} as a batch)",
                    [b, n]
                )));
            }
            Ok(t.f_detach()?
                .f_to_kind(x0.kind())?
                .f_expand([b, n], false)?
                .f_contiguous()?)
        };
        let lower = expand(lower, "lower")?;
        let upper = expand(upper, "upper")?;
        if bool::try_from(lower.f_isnan()?.f_any()?)? || bool::try_from(upper.f_isnan()?.f_any()?)?
        {
            return Err(Error::InvalidArgument(
                "the bounds contain NaN; use ±inf for a free side".into(),
            ));
        }
        if let Some((i, j)) = first_true(&lower.f_ge_tensor(&upper)?)? {
            return Err(Error::InvalidArgument(format!(
                "each lower bound must be strictly below its upper bound: problem {i}, parameter {j} has lower {} and upper {}",
                lower.f_double_value(&[i, j])?,
                upper.f_double_value(&[i, j])?
            )));
        }
        let outside = x0
            .f_lt_tensor(&lower)?
            .f_logical_or(&x0.f_gt_tensor(&upper)?)?;
        if let Some((i, j)) = first_true(&outside)? {
            return Err(Error::InvalidArgument(format!(
                "x0 is outside the bounds: problem {i}, parameter {j} is {} but must lie in [{}, {}]",
                x0.f_double_value(&[i, j])?,
                lower.f_double_value(&[i, j])?,
                upper.f_double_value(&[i, j])?
            )));
        }
        Ok(Bounds { lower, upper })
    }

    /// Coleman–Li's scaling vector (SciPy's `CL_scaling_vector`): `v_j` the distance to the bound
    /// the anti-gradient points to (1 when that side is free), `dv_j` its derivative (−1, 1, 0).
    pub(crate) fn cl_scaling(&self, x: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let up = g.f_lt(0.0)?.f_logical_and(&self.upper.f_isfinite()?)?;
        let down = g.f_gt(0.0)?.f_logical_and(&self.lower.f_isfinite()?)?;
        let ones = x.f_ones_like()?;
        let zeros = x.f_zeros_like()?;
        let v = self.upper.f_sub(x)?.f_where_self(&up, &ones)?;
        let v = x.f_sub(&self.lower)?.f_where_self(&down, &v)?;
        let dv = zeros.f_sub_scalar(1.0)?.f_where_self(&up, &zeros)?;
        let dv = ones.f_where_self(&down, &dv)?;
        Ok((v, dv))
    }

    /// The largest `t` with `x + t s` inside, per problem (`∞` when `s` never leaves), and the
    /// parameters that hit a bound there (the sign of `s`, 0 elsewhere): SciPy's
    /// `step_size_to_bound`.
    pub(crate) fn step_to_bound(&self, x: &Tensor, s: &Tensor) -> Result<(Tensor, Tensor)> {
        let nz = s.f_ne(0.0)?;
        let safe = s.f_where_self(&nz, &s.f_ones_like()?)?;
        let t = self
            .lower
            .f_sub(x)?
            .f_div(&safe)?
            .f_maximum(&self.upper.f_sub(x)?.f_div(&safe)?)?;
        let t = t.f_where_self(&nz, &s.f_full_like(f64::INFINITY)?)?;
        let min = t.f_amin([-1i64].as_slice(), true)?;
        let hits = t
            .f_eq_tensor(&min)?
            .f_to_kind(s.kind())?
            .f_mul(&s.f_sign()?)?;
        Ok((min.f_squeeze_dim(-1)?, hits))
    }

    /// Whether `x` is inside, per problem.
    pub(crate) fn contains(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_ge_tensor(&self.lower)?
            .f_logical_and(&x.f_le_tensor(&self.upper)?)?
            .f_all_dim(-1, false)?)
    }

    /// SciPy's `find_active_constraints`: `-1` at the lower bound, `1` at the upper, within
    /// `rtol · max(1, |bound|)` (exactly on it for `rtol = 0`).
    pub(crate) fn active(&self, x: &Tensor, rtol: f64) -> Result<Tensor> {
        let lo_d = x.f_sub(&self.lower)?;
        let up_d = self.upper.f_sub(x)?;
        let (lo_t, up_t) = if rtol == 0.0 {
            (lo_d.f_zeros_like()?, up_d.f_zeros_like()?)
        } else {
            (
                self.lower.f_abs()?.f_clamp_min(1.0)?.f_mul_scalar(rtol)?,
                self.upper.f_abs()?.f_clamp_min(1.0)?.f_mul_scalar(rtol)?,
            )
        };
        let lo = self
            .lower
            .f_isfinite()?
            .f_logical_and(&lo_d.f_le_tensor(&up_d.f_minimum(&lo_t)?)?)?;
        let up = self
            .upper
            .f_isfinite()?
            .f_logical_and(&up_d.f_le_tensor(&lo_d.f_minimum(&up_t)?)?)?;
        let zeros = x.f_zeros_like()?.f_to_kind(Kind::Int64)?;
        let a = zeros.f_sub_scalar(1)?.f_where_self(&lo, &zeros)?;
        Ok(zeros.f_add_scalar(1)?.f_where_self(&up, &a)?)
    }

    /// SciPy's `make_strictly_feasible`: a parameter on (or within `rstep · max(1, |bound|)` of)
    /// a bound moves that far inside (`rstep = 0`: to the next float inside); where the box is
    /// too tight for that, to its middle.
    pub(crate) fn strictly_feasible(&self, x: &Tensor, rstep: f64) -> Result<Tensor> {
        let active = self.active(x, rstep)?;
        let lo = active.f_eq(-1)?;
        let up = active.f_eq(1)?;
        let (new_lo, new_up) = if rstep == 0.0 {
            (
                self.lower.f_nextafter(&self.upper)?,
                self.upper.f_nextafter(&self.lower)?,
            )
        } else {
            (
                self.lower
                    .f_add(&self.lower.f_abs()?.f_clamp_min(1.0)?.f_mul_scalar(rstep)?)?,
                self.upper
                    .f_sub(&self.upper.f_abs()?.f_clamp_min(1.0)?.f_mul_scalar(rstep)?)?,
            )
        };
        let x = new_lo.f_where_self(&lo, x)?;
        let x = new_up.f_where_self(&up, &x)?;
        let tight = x
            .f_lt_tensor(&self.lower)?
            .f_logical_or(&x.f_gt_tensor(&self.upper)?)?;
        let mid = self.lower.f_add(&self.upper)?.f_mul_scalar(0.5)?;
        Ok(mid.f_where_self(&tight, &x)?)
    }

    /// SciPy's `select_step`: the trust-region step `p_h` (scaled by `d`: `p = d p_h`) if it
    /// stays inside; otherwise the best, by the quadratic model `q(s) = ghᵀs + ½ sᵀ A s`, of the
    /// step truncated at the boundary and pulled back by `θ`, its reflection off the boundary,
    /// and the (bounded) anti-gradient step. Returns the step in scaled variables and the
    /// predicted reduction `−q`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn select_step(
        &self,
        x: &Tensor,
        a: &Tensor,
        gh: &Tensor,
        p_h: &Tensor,
        d: &Tensor,
        delta: &Tensor,
        theta: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let inf = f64::INFINITY;
        let p = d.f_mul(p_h)?;
        let inside = self.contains(&x.f_add(&p)?)?;
        let q_full = quadratic(a, gh, p_h)?;

        // Truncated at the boundary.
        let (p_stride, hits) = self.step_to_bound(x, &p)?;
        let p_stride = p_stride.f_where_self(&p_stride.f_isfinite()?, &p_stride.f_ones_like()?)?;
        let flip = hits.f_ne(0.0)?;
        let r_h = p_h.f_neg()?.f_where_self(&flip, p_h)?;
        let r = d.f_mul(&r_h)?;
        let ps = col(&p_stride, 1)?;
        let p_h1 = p_h.f_mul(&ps)?;
        let x_on = x.f_add(&p.f_mul(&ps)?)?;

        // Reflection: to the trust region's or the box's boundary, whichever comes first.
        let to_tr = intersect_trust_region(&p_h1, &r_h, delta)?;
        let (to_bound, _) = self.step_to_bound(&x_on, &r)?;
        let r_stride = to_bound.f_minimum(&to_tr)?;
        let pos = r_stride.f_gt(0.0)?;
        let safe_rs = r_stride.f_where_self(&pos, &r_stride.f_ones_like()?)?;
        let one_minus = theta.f_neg()?.f_add_scalar(1.0)?;
        let r_lo = one_minus
            .f_mul(&p_stride)?
            .f_div(&safe_rs)?
            .f_where_self(&pos, &r_stride.f_zeros_like()?)?;
        let r_up = theta
            .f_mul(&to_bound)?
            .f_where_self(&r_stride.f_eq_tensor(&to_bound)?, &to_tr)?
            .f_where_self(&pos, &r_stride.f_full_like(-1.0)?)?;
        let refl_ok = r_lo.f_le_tensor(&r_up)?;
        let ar = matvec(a, &r_h)?;
        let qa = dot(&r_h, &ar)?.f_mul_scalar(0.5)?;
        let qb = dot(gh, &r_h)?.f_add(&dot(&p_h1, &ar)?)?;
        let qc = quadratic(a, gh, &p_h1)?;
        let (t_r, v_r) = minimize_1d(&qa, &qb, &qc, &r_lo, &r_up)?;
        let r_sel = p_h1.f_add(&r_h.f_mul(&col(&t_r, 1)?)?)?;
        let v_r = v_r.f_where_self(&refl_ok, &v_r.f_full_like(inf)?)?;

        // Truncated, pulled back by θ.
        let p_h2 = p_h1.f_mul(&col(theta, 1)?)?;
        let v_p = quadratic(a, gh, &p_h2)?;

        // The anti-gradient, bounded by the trust region and the box.
        let ag_h = gh.f_neg()?;
        let ag = d.f_mul(&ag_h)?;
        let gn = norm(&ag_h)?;
        let to_tr_g = delta.f_div(&gn)?;
        let (to_b_g, _) = self.step_to_bound(x, &ag)?;
        let stride = theta
            .f_mul(&to_b_g)?
            .f_where_self(&to_b_g.f_lt_tensor(&to_tr_g)?, &to_tr_g)?;
        let stride = stride.f_where_self(&stride.f_isfinite()?, &stride.f_zeros_like()?)?;
        let aag = matvec(a, &ag_h)?;
        let ga = dot(&ag_h, &aag)?.f_mul_scalar(0.5)?;
        let gb = dot(gh, &ag_h)?;
        let (t_g, v_g) = minimize_1d(
            &ga,
            &gb,
            &gb.f_zeros_like()?,
            &stride.f_zeros_like()?,
            &stride,
        )?;
        let g_sel = ag_h.f_mul(&col(&t_g, 1)?)?;

        // SciPy's order: p if strictly best, else r if strictly best, else the anti-gradient.
        let take_p = v_p
            .f_lt_tensor(&v_r)?
            .f_logical_and(&v_p.f_lt_tensor(&v_g)?)?;
        let take_r = v_r
            .f_lt_tensor(&v_p)?
            .f_logical_and(&v_r.f_lt_tensor(&v_g)?)?
            .f_logical_and(&take_p.f_logical_not()?)?;
        let step = g_sel.f_where_self(&col(&take_r, 1)?.f_logical_not()?, &r_sel)?;
        let step = p_h2.f_where_self(&col(&take_p, 1)?, &step)?;
        let val = v_g.f_where_self(&take_r.f_logical_not()?, &v_r)?;
        let val = v_p.f_where_self(&take_p, &val)?;
        let inside1 = col(&inside, 1)?;
        let step = p_h.f_where_self(&inside1, &step)?;
        let val = q_full.f_where_self(&inside, &val)?;
        Ok((step, val.f_neg()?))
    }
}

/// The positive `t` with `‖x + t s‖ = Δ` (SciPy's `intersect_trust_region`, its larger root);
/// `∞` when `s = 0`.
fn intersect_trust_region(x: &Tensor, s: &Tensor, delta: &Tensor) -> Result<Tensor> {
    let a = dot(s, s)?;
    let b = dot(x, s)?;
    let c = dot(x, x)?.f_sub(&delta.f_square()?)?;
    let disc = b
        .f_square()?
        .f_sub(&a.f_mul(&c)?)?
        .f_clamp_min(0.0)?
        .f_sqrt()?;
    let q = b.f_add(&disc.f_copysign(&b)?)?.f_neg()?;
    let nz_a = a.f_gt(0.0)?;
    let safe_a = a.f_where_self(&nz_a, &a.f_ones_like()?)?;
    let nz_q = q.f_ne(0.0)?;
    let safe_q = q.f_where_self(&nz_q, &q.f_ones_like()?)?;
    let t1 = q.f_div(&safe_a)?;
    let t2 = c.f_div(&safe_q)?.f_where_self(&nz_q, &t1)?;
    let t = t1.f_maximum(&t2)?;
    Ok(t.f_where_self(&nz_a, &a.f_full_like(f64::INFINITY)?)?)
}

/// Minimizes `a t² + b t + c` over `[lo, hi]` per problem (SciPy's `minimize_quadratic_1d`):
/// the ends and the interior extremum; returns `(t, value)`.
fn minimize_1d(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    lo: &Tensor,
    hi: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let nz = a.f_ne(0.0)?;
    let safe_a = a.f_where_self(&nz, &a.f_ones_like()?)?;
    let ext = b.f_mul_scalar(-0.5)?.f_div(&safe_a)?;
    let interior = nz
        .f_logical_and(&ext.f_gt_tensor(lo)?)?
        .f_logical_and(&ext.f_lt_tensor(hi)?)?;
    let ext = ext.f_where_self(&interior, lo)?;
    let ts = Tensor::f_stack(&[lo, hi, &ext], -1)?;
    let ys = ts
        .f_mul(&a.f_unsqueeze(-1)?.f_mul(&ts)?.f_add(&b.f_unsqueeze(-1)?)?)?
        .f_add(&c.f_unsqueeze(-1)?)?;
    // A NaN value (from ∞ · 0) never wins.
    let ys = ys.f_nan_to_num(f64::INFINITY, None, None)?;
    let (v, i) = ys.f_min_dim(-1, true)?;
    let t = ts.f_gather(-1, &i, false)?;
    Ok((t.f_squeeze_dim(-1)?, v.f_squeeze_dim(-1)?))
}

/// The first `(problem, parameter)` where `mask` (`[B, n]`) is true.
fn first_true(mask: &Tensor) -> Result<Option<(i64, i64)>> {
    if !bool::try_from(mask.f_any()?)? {
        return Ok(None);
    }
    let idx = mask.f_nonzero()?;
    Ok(Some((
        idx.f_int64_value(&[0, 0])?,
        idx.f_int64_value(&[0, 1])?,
    )))
}
