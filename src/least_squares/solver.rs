//! The iteration shared by the methods — linearize, scale, step, evaluate, accept, test — for B
//! problems at once, each with its own trust region (or step length), acceptance and status: a
//! tensor each, one small host read per iteration for the stop test. The model is
//! [`super::model`]'s; the steps and their updates are the methods' ([`super::lm`],
//! [`super::dogleg`], [`super::gauss_newton`]).

use tch::{Kind, Tensor};

use super::bounds::Bounds;
use super::linalg::{col, eps, norm};
use super::loss;
use super::model::{Linear, Scaled};
use super::options::{LeastSquaresOptions, Method, Progress};
use super::residual::Residual;
use super::{dogleg, gauss_newton, lm};
use crate::error::{Error, Result};

/// Steps are accepted when the actual reduction is at least this fraction of the predicted one
/// (MINPACK's 1e-4); for Gauss–Newton, of the first-order decrease (Armijo).
pub(crate) const ACCEPT: f64 = 1e-4;
/// MINPACK's `factor`: the first trust region is `factor · ‖D x0‖`.
const FACTOR: f64 = 100.0;

/// Status codes while running (see [`super::Status::from_code`]).
pub(crate) const RUNNING: i64 = 0;
pub(crate) const GTOL: i64 = 1;
pub(crate) const FTOL: i64 = 2;
pub(crate) const XTOL: i64 = 3;
pub(crate) const MAXITER: i64 = 4;
pub(crate) const NONFINITE: i64 = 5;

/// What a method's step sees besides the model.
pub(crate) struct Context<'a> {
    pub x: &'a Tensor,
    pub bounds: Option<&'a Bounds>,
    pub res: &'a Residual<'a>,
    pub lin: &'a Linear,
    pub opts: &'a LeastSquaresOptions<'a>,
}

/// The methods' per-problem state, `[B]` each.
pub(crate) struct State {
    /// The trust region (LM, dogleg).
    pub delta: Tensor,
    /// Moré's `λ` (LM).
    pub lam: Tensor,
    /// No step taken yet (LM's first-iteration rule).
    pub first: Tensor,
    /// The line search's step length (Gauss–Newton).
    pub alpha: Tensor,
}

/// A trial step in scaled variables with its model's predictions.
pub(crate) struct Step {
    /// `p_h` (`x_new = x + d ∘ p_h`), `[B, n]`.
    pub h: Tensor,
    /// The model's predicted reduction of the cost, `[B]`.
    pub pred: Tensor,
    /// MINPACK's directional derivative, times the cost (LM's update).
    pub dirder: Tensor,
    /// Gauss–Newton: the first-order decrease `−g_hᵀp_h` (Armijo's test).
    pub armijo: Option<Tensor>,
    /// Geodesic acceleration: whether it passed `2‖a‖/‖v‖ ≤ α`.
    pub geodesic_ok: Option<Tensor>,
    /// Dogleg: whether the step is the Gauss–Newton step (inside the region).
    pub gauss_newton: Option<Tensor>,
}

/// A trial's outcome, for the methods' updates.
pub(crate) struct Trial {
    pub active: Tensor,
    pub accept: Tensor,
    /// Actual over predicted reduction (0 where the model predicted none).
    pub ratio: Tensor,
    /// `1 − cost_new/cost` (−1 for a blowup or a non-finite cost).
    pub actred: Tensor,
    /// MINPACK's `dirder`, relative to `‖r‖²`.
    pub dirder: Tensor,
    /// A finite cost at least 100 times the old one.
    pub blowup: Tensor,
    /// `‖p_h‖`.
    pub pnorm: Tensor,
}

/// The solve's end state, per problem.
pub(crate) struct Solved {
    pub x: Tensor,
    pub r: Tensor,
    /// `J` of the raw residuals, `[B, m, n]` (`None`: matrix-free, never formed).
    pub jm: Option<Tensor>,
    /// `J̃` after the loss's correction (`jm` for the linear loss).
    pub jms: Option<Tensor>,
    pub cost: Tensor,
    pub optimality: Tensor,
    pub iterations: Vec<usize>,
    pub evaluations: Vec<usize>,
    pub jacobian_evaluations: Vec<usize>,
    pub status: Vec<i64>,
}

/// `where(mask, a, b)` with a `[B]` mask broadcast over the trailing dimensions of `a`.
fn pick(mask: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let m = col(mask, a.dim() - 1)?;
    Ok(a.f_where_self(&m, b)?)
}

/// `status` with `code` where `mask` and still running.
pub(crate) fn set(status: &Tensor, mask: &Tensor, code: i64) -> Result<Tensor> {
    let go = status.f_eq(RUNNING)?.f_logical_and(mask)?;
    Ok(status.f_where_self(&go.f_logical_not()?, &status.f_full_like(code)?)?)
}

pub(crate) fn to_usize(t: &Tensor) -> Result<Vec<usize>> {
    Ok(
        Vec::<i64>::try_from(t.f_to_kind(Kind::Int64)?.f_to_device(tch::Device::Cpu)?)?
            .into_iter()
            .map(|v| v.max(0) as usize)
            .collect(),
    )
}

/// Runs the solve from `x0` (`[B, n]`, inside the bounds).
pub(crate) fn run(
    res: &Residual,
    x0: &Tensor,
    bounds: Option<&Bounds>,
    opts: &LeastSquaresOptions,
) -> Result<Solved> {
    let method = opts.method.resolve();
    let (b, n) = (res.b, res.n);
    let kind = x0.kind();
    let dev = x0.device();
    let (ftol, xtol, gtol) = tolerances(opts, kind);
    let fopt = (kind, dev);

    let mut x = match bounds {
        Some(bd) => bd.strictly_feasible(x0, 1e-10)?,
        None => x0.shallow_clone(),
    };
    let (mut r, mut jm, _) = res.value_and_jacobian(&x)?;
    let m = r.size()[1];
    if method == Method::GaussNewton && m < n {
        return Err(Error::InvalidArgument(format!(
            "Gauss–Newton needs at least as many residuals as parameters, but r has m = {m} per problem for n = {n} parameters; use Method::LevenbergMarquardt (or Dogleg), which damp the step"
        )));
    }
    if opts.covariance && m <= n {
        return Err(Error::InvalidArgument(format!(
            "the covariance needs more residuals than parameters (σ² = 2·cost/(m − n)), but m = {m} and n = {n}"
        )));
    }
    super::residual::check_finite_start(&r)?;
    let mut lin = Linear::new(&r, &jm, opts)?;
    let bad_cost = lin.cost.f_isfinite()?.f_logical_not()?;
    if bool::try_from(bad_cost.f_any()?)? {
        let i = bad_cost.f_nonzero()?.f_int64_value(&[0, 0])?;
        return Err(Error::InvalidArgument(format!(
            "the cost at x0 is not finite: problem {i} has cost {} (its residuals are finite, their squares overflow); start closer to a solution",
            lin.cost.f_double_value(&[i])?
        )));
    }
    let mut dscale = lin
        .cn
        .f_ones_like()?
        .f_where_self(&lin.cn.f_eq(0.0)?, &lin.cn)?;

    let zeros_i = Tensor::f_zeros([b], (Kind::Int64, dev))?;
    let mut status = zeros_i.shallow_clone();
    let mut iters = zeros_i.shallow_clone();
    let mut nfev = zeros_i.f_add_scalar(1)?;
    let mut njev = zeros_i.f_add_scalar(1)?;
    let mut st = State {
        delta: {
            let dx = norm(&x.f_mul(&dscale)?)?.f_mul_scalar(FACTOR)?;
            dx.f_full_like(FACTOR)?.f_where_self(&dx.f_eq(0.0)?, &dx)?
        },
        lam: Tensor::f_zeros([b], fopt)?,
        first: Tensor::f_ones([b], (Kind::Bool, dev))?,
        alpha: Tensor::f_ones([b], fopt)?,
    };
    let mut eager = true;
    let mut it = 0usize;
    let mut optimality = gradient_test(&lin, bounds, &x, gtol, &mut status)?;
    let mut sc = Scaled::new(&lin, &dscale, bounds, &x)?;

    loop {
        let active = status.f_eq(RUNNING)?;
        if !bool::try_from(active.f_any()?)? {
            break;
        }
        // The step, in scaled variables, and the model's predicted reduction.
        let ctx = Context {
            x: &x,
            bounds,
            res,
            lin: &lin,
            opts,
        };
        let step = match method {
            Method::LevenbergMarquardt | Method::Auto => lm::step(&sc, &mut st, &active, &ctx)?,
            Method::Dogleg => dogleg::step(&sc, &st, &ctx)?,
            Method::GaussNewton => gauss_newton::step(&sc, &st, &ctx)?,
        };
        st.first = st.first.f_logical_and(&active.f_logical_not()?)?;

        // A step that is not finite stops its problem (NonFinite) where it is.
        let step_ok = step.h.f_isfinite()?.f_all_dim(-1, false)?;
        status = set(
            &status,
            &active.f_logical_and(&step_ok.f_logical_not()?)?,
            NONFINITE,
        )?;
        let active = status.f_eq(RUNNING)?;
        let h = pick(&active, &step.h, &step.h.f_zeros_like()?)?;
        let dx = sc.d.f_mul(&h)?;
        let mut x_new = x.f_add(&dx)?;
        if let Some(bd) = bounds {
            x_new = bd.strictly_feasible(&x_new, 0.0)?;
        }
        // Evaluate the trial points (with their Jacobian when most steps are accepted).
        let (r_new, jm_new) = if eager {
            let (r, j, owned) = res.value_and_jacobian(&x_new)?;
            (r, Some((j, owned)))
        } else {
            (res.value(&x_new)?, None)
        };
        let active_i = active.f_to_kind(Kind::Int64)?;
        nfev = nfev.f_add(&active_i)?;
        if jm_new.is_some() {
            njev = njev.f_add(&active_i)?;
        }
        iters = iters.f_add(&active_i)?;
        let (cost_new, finite_new) = trial_cost(opts, &r_new)?;
        // (A non-finite cost is not a "blowup" for LM's update: MINPACK's enorm gives NaN there
        // and its tests take the gentler branch — SciPy lm's path on overflow.)
        let cost = &lin.cost;
        let cost_safe = safe_cost(cost)?;
        let blowup = cost_new
            .f_ge_tensor(&cost.f_mul_scalar(100.0)?)?
            .f_logical_and(&finite_new)?;
        let worse = blowup.f_logical_or(&finite_new.f_logical_not()?)?;
        let (actred, prered, mut ratio) = reductions(cost, &cost_new, &step.pred, &worse)?;
        if let Some(ok) = &step.geodesic_ok {
            // An acceleration too large for its velocity is a failed step (Transtrum & Sethna).
            ratio = ratio.f_where_self(ok, &ratio.f_zeros_like()?)?;
        }
        let ared = cost.f_sub(&cost_new)?;
        let mut accept = match &step.armijo {
            Some(dec) => dec
                .f_gt(0.0)?
                .f_logical_and(&ared.f_ge_tensor(&dec.f_mul_scalar(ACCEPT)?)?)?
                .f_logical_and(&ared.f_gt(0.0)?)?,
            None => ratio.f_ge(ACCEPT)?,
        };
        if let Some(ok) = &step.geodesic_ok {
            accept = accept.f_logical_and(ok)?;
        }
        accept = accept.f_logical_and(&active)?.f_logical_and(&finite_new)?;
        let trial = Trial {
            active: active.shallow_clone(),
            accept: accept.shallow_clone(),
            ratio: ratio.shallow_clone(),
            actred: actred.shallow_clone(),
            dirder: step.dirder.f_div(&cost_safe)?,
            blowup,
            pnorm: norm(&h)?,
        };
        match method {
            Method::LevenbergMarquardt | Method::Auto => {
                lm::update(&mut st, &trial, bounds.is_some())?
            }
            Method::Dogleg => {
                let gn = step.gauss_newton.as_ref().expect("set by the dogleg step");
                dogleg::update(&mut st, &trial, gn)?
            }
            Method::GaussNewton => gauss_newton::update(&mut st, &trial)?,
        }

        // ftol (MINPACK: |actred| ≤ ftol, prered ≤ ftol, ratio ≤ 2, relative to the cost) and
        // xtol (the trust region — MINPACK's test, it follows the steps down — or, for
        // Gauss–Newton, the step: ≤ xtol (xtol + ‖D x‖)).
        status = ftol_test(&status, &active, &actred, &prered, &ratio, ftol)?;
        if xtol > 0.0 {
            let xn = norm(&x.f_mul(&dscale)?)?;
            let lim = xn.f_add_scalar(xtol)?.f_mul_scalar(xtol)?;
            let x_done = match method {
                Method::GaussNewton => norm(&dx.f_mul(&dscale)?)?.f_le_tensor(&lim)?,
                _ => st.delta.f_le_tensor(&lim)?,
            };
            status = set(&status, &active.f_logical_and(&x_done)?, XTOL)?;
        }
        // Accept: the point, its residuals, its Jacobian, the new model.
        let n_acc = i64::try_from(accept.f_sum(Kind::Int64)?)?;
        let n_act = i64::try_from(active.f_sum(Kind::Int64)?)?;
        if n_acc > 0 {
            // Where every running problem moved, the new points replace all rows (the others
            // stood still: the same point, the same values) — no copy of J.
            let all = n_acc == n_act;
            let take = |new: Tensor, old: &Tensor| -> Result<Tensor> {
                if all {
                    Ok(new)
                } else {
                    pick(&accept, &new, old)
                }
            };
            x = take(x_new, &x)?;
            r = take(r_new, &r)?;
            let (jm_acc, owned) = match jm_new {
                Some(j) => j,
                None => {
                    let (_, j, owned) = res.value_and_jacobian(&x)?;
                    njev = njev.f_add(&accept.f_to_kind(Kind::Int64)?)?;
                    (j, owned)
                }
            };
            jm = if all {
                jm_acc
            } else if owned {
                // Our own tensor: the few rejected rows written back in place, no copy of J.
                let back = active.f_logical_and(&accept.f_logical_not()?)?;
                let idx = back.f_nonzero()?.f_squeeze_dim(1)?;
                let mut j = jm_acc;
                if idx.numel() > 0 {
                    let _ = j.f_index_copy_(0, &idx, &jm.f_index_select(0, &idx)?)?;
                }
                j
            } else {
                pick(&accept, &jm_acc, &jm)?
            };
            lin = Linear::new(&r, &jm, opts)?;
            // A non-finite Jacobian shows in JᵀJ (∞·0 = NaN): that problem stops (NonFinite).
            let a_ok = lin
                .a
                .f_isfinite()?
                .f_all_dims([1i64, 2].as_slice(), false)?;
            status = set(
                &status,
                &accept.f_logical_and(&a_ok.f_logical_not()?)?,
                NONFINITE,
            )?;
            dscale = dscale.f_maximum(&lin.cn.f_nan_to_num(0.0, 0.0, 0.0)?)?;
            optimality = gradient_test(&lin, bounds, &x, gtol, &mut status)?;
            sc = Scaled::new(&lin, &dscale, bounds, &x)?;
        }
        status = set(&status, &iters.f_ge(opts.max_iterations as i64)?, MAXITER)?;
        eager = n_act > 0 && 2 * n_acc >= n_act;
        it += 1;
        report_progress(opts, it, &status, &lin.cost)?;
    }
    Ok(Solved {
        x,
        r,
        jm: Some(jm),
        jms: Some(lin.jms),
        cost: lin.cost,
        optimality,
        iterations: to_usize(&iters)?,
        evaluations: to_usize(&nfev)?,
        jacobian_evaluations: to_usize(&njev)?,
        status: Vec::<i64>::try_from(status.f_to_device(tch::Device::Cpu)?)?,
    })
}

/// The `gtol` test at the current points: MINPACK's cosine `max_j |g_j| / (‖J_j‖ ‖r‖)` — with a
/// robust loss `‖J̃_j‖ ‖√ρ′ r‖` (Triggs' `J̃`, whose rows are at most `√ρ′` times `J`'s: the test
/// is no looser than with the IRLS weights; not `‖r̃‖`, which clamped rows blow up) — and under
/// bounds the gradient weighted by `min(v_j, 1)`, Coleman–Li's `v` (no weight at an active bound
/// the gradient pushes against). Running problems that pass it, or whose gradient is exactly
/// zero, get the status `GTOL`. Returns the measure, `[B]`.
fn gradient_test(
    lin: &Linear,
    bounds: Option<&Bounds>,
    x: &Tensor,
    gtol: f64,
    status: &mut Tensor,
) -> Result<Tensor> {
    let gw = match bounds {
        Some(bd) => {
            let (v, _) = bd.cl_scaling(x, &lin.g)?;
            lin.g.f_mul(&v.f_clamp_max(1.0)?)?
        }
        None => lin.g.shallow_clone(),
    };
    let (optimality, done) = cosine_test(&gw, &lin.cn, &lin.grn, gtol)?;
    *status = set(status, &done, GTOL)?;
    Ok(optimality)
}

/// `(ftol, xtol, gtol)`: 0 turns a test off, a positive tolerance below the dtype's machine
/// epsilon is raised to it.
pub(crate) fn tolerances(opts: &LeastSquaresOptions, kind: Kind) -> (f64, f64, f64) {
    let e = eps(kind);
    let tol = |t: f64| if t == 0.0 { 0.0 } else { t.max(e) };
    (tol(opts.ftol), tol(opts.xtol), tol(opts.gtol))
}

/// MINPACK's `gtol` cosine `max_j |g_j| / (c_j ‖r‖)` per problem (`c` the column norms, `[B, n]`;
/// `rnorm` `[B]`; 0 where a denominator is 0), and where it passes `gtol` or `g` is exactly 0.
pub(crate) fn cosine_test(
    g: &Tensor,
    cn: &Tensor,
    rnorm: &Tensor,
    gtol: f64,
) -> Result<(Tensor, Tensor)> {
    let denom = cn.f_mul(&col(rnorm, 1)?)?;
    let pos = denom.f_gt(0.0)?;
    let cos = g
        .f_abs()?
        .f_div(&denom.f_where_self(&pos, &denom.f_ones_like()?)?)?
        .f_where_self(&pos, &denom.f_zeros_like()?)?;
    let optimality = cos.f_amax([-1i64].as_slice(), false)?;
    let mut done = g.f_eq(0.0)?.f_all_dim(-1, false)?;
    if gtol > 0.0 {
        done = done.f_logical_or(&optimality.f_le(gtol)?)?;
    }
    Ok((optimality, done))
}

/// The cost of trial residuals (`[B]`, a non-finite one as `+∞`) and where it is finite.
pub(crate) fn trial_cost(opts: &LeastSquaresOptions, r_new: &Tensor) -> Result<(Tensor, Tensor)> {
    let cost_new = loss::cost(opts.loss, opts.loss_scale, r_new)?;
    let finite = cost_new.f_isfinite()?;
    let cost_new = cost_new.f_where_self(&finite, &cost_new.f_full_like(f64::INFINITY)?)?;
    Ok((cost_new, finite))
}

/// The cost, with 1 where it is 0 (the denominator of the relative reductions).
pub(crate) fn safe_cost(cost: &Tensor) -> Result<Tensor> {
    Ok(cost.f_where_self(&cost.f_gt(0.0)?, &cost.f_ones_like()?)?)
}

/// MINPACK's reductions relative to the cost: `actred = 1 − cost_new/cost` (−1 where `worse`),
/// `prered = pred/cost`, and their ratio (0 where the model predicted no reduction).
pub(crate) fn reductions(
    cost: &Tensor,
    cost_new: &Tensor,
    pred: &Tensor,
    worse: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let cost_safe = safe_cost(cost)?;
    let actred = cost_new
        .f_div(&cost_safe)?
        .f_neg()?
        .f_add_scalar(1.0)?
        .f_where_self(&worse.f_logical_not()?, &cost_new.f_full_like(-1.0)?)?;
    let prered = pred.f_div(&cost_safe)?;
    let pos = prered.f_gt(0.0)?;
    let ratio = actred
        .f_div(&prered.f_where_self(&pos, &prered.f_ones_like()?)?)?
        .f_where_self(&pos, &prered.f_zeros_like()?)?;
    Ok((actred, prered, ratio))
}

/// `ftol` (MINPACK: `|actred| ≤ ftol`, `prered ≤ ftol`, `ratio ≤ 2`, relative to the cost) for
/// the running problems in `active`; `status` with `FTOL` where it passes.
pub(crate) fn ftol_test(
    status: &Tensor,
    active: &Tensor,
    actred: &Tensor,
    prered: &Tensor,
    ratio: &Tensor,
    ftol: f64,
) -> Result<Tensor> {
    if ftol == 0.0 {
        return Ok(status.shallow_clone());
    }
    let done = actred
        .f_abs()?
        .f_le(ftol)?
        .f_logical_and(&prered.f_le(ftol)?)?
        .f_logical_and(&ratio.f_le(2.0)?)?;
    set(status, &active.f_logical_and(&done)?, FTOL)
}

/// Calls `opts.progress` (if any) after iteration `it`: the problems still running and the
/// largest cost among them (the largest overall when none is).
pub(crate) fn report_progress(
    opts: &LeastSquaresOptions,
    it: usize,
    status: &Tensor,
    cost: &Tensor,
) -> Result<()> {
    let Some(report) = opts.progress else {
        return Ok(());
    };
    let still = status.f_eq(RUNNING)?;
    let running = i64::try_from(still.f_sum(Kind::Int64)?)? as usize;
    let costs = if running > 0 {
        cost.f_where_self(&still, &cost.f_full_like(f64::NEG_INFINITY)?)?
    } else {
        cost.shallow_clone()
    };
    report(Progress {
        iteration: it,
        running,
        problems: status.size()[0] as usize,
        max_cost: costs.f_max()?.f_double_value(&[])?,
    });
    Ok(())
}
