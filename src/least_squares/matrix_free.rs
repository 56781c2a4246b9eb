//! Matrix-free Levenberg–Marquardt ([`LinearSolver::MatrixFree`](super::LinearSolver)): the
//! B problems' damped normal equations solved by preconditioned conjugate gradients from
//! Jacobian–vector and vector–Jacobian products alone — Ceres's `CGNR`, batched — so that `J`
//! (`[B, m, n]`) is never formed: `O(B (m + n))` memory beyond the residual's graph.
//!
//! Per iteration, at the current points (the loss-corrected `J̃ = diag(s) J`, `r̃`, as the dense
//! path's [`super::loss`]):
//!
//! ```text
//! g = J̃ᵀr̃                         one backward pass (Jᵀu = ∂⟨r, u⟩/∂x)
//! D ≈ diag(J̃ᵀJ̃)                   Hutchinson: (1/k) Σ_p (J̃ᵀz_p)², z_p ∈ {±1}ᵐ, running maximum
//! (J̃ᵀJ̃ + μ D) δ = −g              PCG, preconditioner (1 + μ) D; J̃v = s ∘ ∂(Jᵀw · v)/∂w
//! pred = −gᵀδ − ½‖J̃δ‖²            the Gauss–Newton model's reduction at the δ CG returned
//! ρ = (cost − cost(x + δ)) / pred
//! ρ ≥ 10⁻⁴: x ← x + δ, μ ← μ max(⅓, 1 − (2ρ − 1)³), ν ← 2          (Nielsen 1999)
//! else:    μ ← μ ν, ν ← 2ν
//! ```
//!
//! with `μ`, `ν`, CG's scalars and every test per problem (`[B]` tensors; CG stops a problem
//! when `‖res‖ ≤ cg_tolerance ‖g‖` and the batch when all have). The tests are the dense path's
//! with the estimated column norms `√D` in place of `J`'s: `gtol` on `max_j |gⱼ|/(√Dⱼ ‖√ρ′ r‖)`,
//! `ftol` on the relative reductions, `xtol` on `‖√D δ‖ ≤ xtol (xtol + ‖√D x‖)` for every trial
//! (a step that vanished under growing damping stops its problem there, MINPACK's rule).
//! The probes are a fixed hash of (the problem's probe count, entry): the solve does not depend
//! on torch's random state, and a problem takes the same path alone or in a batch (only the
//! problems that moved are linearized again: their `g`, `D` and tests). The running maximum
//! biases `D` upward (a maximum of noisy estimates), which damps more and makes the `gtol`
//! cosine smaller than with `J`'s exact column norms.

use tch::{Kind, Tensor};

use super::linalg::{col, dot, eps, norm, sq_norm};
use super::loss;
use super::options::LeastSquaresOptions;
use super::residual::{check_finite_start, Residual};
use super::solver::{
    cosine_test, ftol_test, reductions, report_progress, set, to_usize, tolerances, trial_cost,
    Solved, ACCEPT, GTOL, MAXITER, NONFINITE, RUNNING, XTOL,
};
use crate::autograd::{vjp_into, Linearized, Names, Pass};
use crate::error::Result;

/// The damping's cap: above it the step has vanished (its floor is `ε²`, below which it no
/// longer changes a step: Gauss–Newton's, as far as the dtype resolves it).
const MU_MAX: f64 = 1e16;

/// Rademacher signs `[B, m]`: a fixed integer hash (Wang's 32-bit mix) of each entry's index
/// within its problem and of `draw[b]` (that problem's own probe count), on the tensor's device —
/// deterministic, independent of torch's generator and of the problem's place in the batch.
pub(crate) fn rademacher(m: i64, draw: &Tensor, like: &Tensor) -> Result<Tensor> {
    let mask = 0xFFFF_FFFFi64;
    let idx = Tensor::f_arange(m, (Kind::Int64, like.device()))?.f_unsqueeze(0)?;
    let keys = draw
        .f_unsqueeze(1)?
        .f_mul_scalar(m)?
        .f_add(&idx)?
        .f_bitwise_and(mask)?;
    let mut h = keys
        .f_mul_scalar(0x2545_F491i64)?
        .f_add_scalar(0x85EB_CA6Bi64)?
        .f_bitwise_and(mask)?;
    for mul in [0x045D_9F3Bi64, 0x045D_9F3B] {
        h = h.f_bitwise_xor_tensor(&h.f_bitwise_right_shift_tensor_scalar(16)?)?;
        h = h.f_mul_scalar(mul)?.f_bitwise_and(mask)?;
    }
    h = h.f_bitwise_xor_tensor(&h.f_bitwise_right_shift_tensor_scalar(16)?)?;
    Ok(h.f_bitwise_and(1)?
        .f_to_kind(like.kind())?
        .f_mul_scalar(2.0)?
        .f_sub_scalar(1.0)?)
}

/// The linearization at the current points: products with `J̃` through the residual's graph.
struct Products {
    xg: Tensor,
    y: Tensor,
    lin: Linearized<'static>,
    /// Triggs' row scale `s` (`[B, m]`), `None` for the linear loss.
    scale: Option<Tensor>,
}

fn pass() -> Pass<'static> {
    Pass::new(
        false,
        false,
        Names {
            output: "r",
            inputs: &[],
        },
    )
}

impl Products {
    /// `J̃ v`, `[B, m]`, for `v` `[B, n]` (each problem's `J_b v_b`: the rows do not interact).
    fn jv(&self, v: &Tensor) -> Result<Tensor> {
        let jv = crate::autograd::materialize(self.lin.jvp(&[v])?.f_detach()?)?;
        Ok(match &self.scale {
            Some(s) => jv.f_mul(s)?,
            None => jv,
        })
    }

    /// `J̃ᵀ u`, `[B, n]`, for `u` `[B, m]`.
    fn jtu(&self, u: &Tensor) -> Result<Tensor> {
        let u = match &self.scale {
            Some(s) => u.f_mul(s)?,
            None => u.shallow_clone(),
        };
        let root = self.y.f_mul(&u)?.f_sum(None::<Kind>)?;
        let g = vjp_into(&root, &[&self.xg], pass())?.remove(0);
        Ok(crate::autograd::materialize(g)?.f_detach()?)
    }
}

/// Runs the matrix-free solve from `x0` (`[B, n]`; no bounds, no Jacobian closure).
pub(crate) fn run(res: &Residual, x0: &Tensor, opts: &LeastSquaresOptions) -> Result<Solved> {
    let b = res.b;
    let kind = x0.kind();
    let dev = x0.device();
    let (ftol, xtol, gtol) = tolerances(opts, kind);
    let fopt = (kind, dev);

    let mut x = x0.f_detach()?;
    let zeros_i = Tensor::f_zeros([b], (Kind::Int64, dev))?;
    let mut status = zeros_i.shallow_clone();
    let mut iters = zeros_i.shallow_clone();
    let mut nfev = zeros_i.f_add_scalar(1)?;
    let mut njev = zeros_i.shallow_clone();
    let mut mu = Tensor::f_full([b], opts.damping, fopt)?;
    let mut nu = Tensor::f_full([b], 2.0, fopt)?;
    let mut dmax: Option<Tensor> = None;
    let mut linearize = true;
    let mut checked = !opts.check_independence || b < 2;
    let mut it = 0usize;
    // Linearizations per problem (the probes' draw counter), and which problems moved since
    // the last one: only theirs are redone, so that a problem's path does not depend on the
    // rest of the batch.
    let mut lins = zeros_i.shallow_clone();
    let mut moved = Tensor::f_ones([b], (Kind::Bool, dev))?;
    // Filled by the first linearization.
    let mut prod: Option<Products> = None;
    let (mut r, mut cost, mut g) = (x.shallow_clone(), x.shallow_clone(), x.shallow_clone());
    let (mut dsq, mut optimality) = (x.shallow_clone(), x.shallow_clone());

    loop {
        if linearize {
            let active = status.f_eq(RUNNING)?;
            let xg = x.f_detach()?.f_set_requires_grad(true)?;
            let y = res.with_graph(&xg)?;
            r = y.f_detach()?;
            if prod.is_none() {
                check_finite_start(&r)?;
            }
            if !checked {
                crate::independence::check_scaled("least_squares", &y, &xg, None, None)?;
                checked = true;
            }
            let c = loss::correct(opts.loss, opts.loss_scale, &r)?;
            cost = c.cost;
            // ‖√ρ′ r‖ for the gtol cosine, as the dense path's
            let rnorm = match &c.weight {
                Some(w) => norm(&r.f_mul(&w.f_sqrt()?)?)?,
                None => norm(&r)?,
            };
            let lin = Linearized::new(&y, &[&xg], pass())?;
            let p = Products {
                xg,
                y,
                lin,
                scale: c.scale,
            };
            let keep = |new: Tensor, old: &Tensor| -> Result<Tensor> {
                if prod.is_none() {
                    return Ok(new);
                }
                let mv = col(&moved, new.dim() - 1)?;
                Ok(new.f_where_self(&mv, old)?)
            };
            g = keep(p.jtu(&c.r)?, &g)?;
            // Hutchinson's diag(J̃ᵀJ̃), the running maximum per problem, floored
            let mut d = g.f_zeros_like()?;
            let m = r.size()[1];
            for k in 0..opts.probes {
                let draw = lins
                    .f_mul_scalar(opts.probes as i64)?
                    .f_add_scalar(k as i64)?;
                let z = rademacher(m, &draw, &r)?;
                d = d.f_add(&p.jtu(&z)?.f_square()?)?;
            }
            lins = lins.f_add(&moved.f_to_kind(Kind::Int64)?)?;
            let mut d = d.f_div_scalar(opts.probes as f64)?;
            if let Some(prev) = &dmax {
                d = d.f_maximum(prev)?.f_where_self(&col(&moved, 1)?, prev)?;
            }
            dmax = Some(d.shallow_clone());
            let tiny = if kind == Kind::Float {
                f32::MIN_POSITIVE as f64
            } else {
                f64::MIN_POSITIVE
            };
            let floor = d
                .f_amax([-1i64].as_slice(), true)?
                .f_mul_scalar(1e-10)?
                .f_clamp_min(tiny)?;
            dsq = d.f_maximum(&floor)?;
            let first = prod.is_none();
            prod = Some(p);
            let fresh = active.f_logical_and(&moved)?;
            njev = njev.f_add(&fresh.f_to_kind(Kind::Int64)?)?;
            // gtol, at the new points of running problems
            let (opt_new, done) = cosine_test(&g, &dsq.f_sqrt()?, &rnorm, gtol)?;
            optimality = if first {
                opt_new
            } else {
                opt_new.f_where_self(&moved, &optimality)?
            };
            let bad = g.f_isfinite()?.f_all_dim(-1, false)?.f_logical_not()?;
            status = set(&status, &fresh.f_logical_and(&bad)?, NONFINITE)?;
            status = set(&status, &fresh.f_logical_and(&done)?, GTOL)?;
        }
        let active = status.f_eq(RUNNING)?;
        if !bool::try_from(active.f_any()?)? {
            break;
        }
        let p = prod.as_ref().expect("linearized above");
        let (delta, pred) = pcg(p, &g, &dsq, &mu, &active, opts)?;

        // A step that is not finite stops its problem where it is.
        let step_ok = delta.f_isfinite()?.f_all_dim(-1, false)?;
        status = set(
            &status,
            &active.f_logical_and(&step_ok.f_logical_not()?)?,
            NONFINITE,
        )?;
        let active = status.f_eq(RUNNING)?;
        let delta = delta.f_where_self(&col(&active, 1)?, &delta.f_zeros_like()?)?;
        let x_new = x.f_add(&delta)?;
        let r_new = res.value(&x_new)?;
        let active_i = active.f_to_kind(Kind::Int64)?;
        nfev = nfev.f_add(&active_i)?;
        iters = iters.f_add(&active_i)?;
        let (cost_new, finite_new) = trial_cost(opts, &r_new)?;
        let (actred, prered, ratio) =
            reductions(&cost, &cost_new, &pred, &finite_new.f_logical_not()?)?;
        let accept = ratio
            .f_ge(ACCEPT)?
            .f_logical_and(&active)?
            .f_logical_and(&finite_new)?;
        // Nielsen's damping update, per problem
        let rho = ratio.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
        let shrink = rho
            .f_pow_tensor_scalar(3.0)?
            .f_neg()?
            .f_add_scalar(1.0)?
            .f_clamp_min(1.0 / 3.0)?;
        let mu_acc = mu.f_mul(&shrink)?.f_clamp_min(eps(kind).powi(2))?;
        let mu_rej = mu.f_mul(&nu)?.f_clamp_max(MU_MAX)?;
        let rejected = active.f_logical_and(&accept.f_logical_not()?)?;
        mu = mu_acc
            .f_where_self(&accept, &mu)?
            .f_where_self(&rejected.f_logical_not()?, &mu_rej)?;
        nu = nu
            .f_full_like(2.0)?
            .f_where_self(&accept, &nu)?
            .f_where_self(&rejected.f_logical_not()?, &nu.f_mul_scalar(2.0)?)?;

        // ftol and xtol, as the dense path's (xtol on the step: the damping shrinks it)
        status = ftol_test(&status, &active, &actred, &prered, &ratio, ftol)?;
        if xtol > 0.0 {
            let dn = dsq.f_sqrt()?;
            let lim = norm(&x.f_mul(&dn)?)?
                .f_add_scalar(xtol)?
                .f_mul_scalar(xtol)?;
            let x_done = norm(&delta.f_mul(&dn)?)?.f_le_tensor(&lim)?;
            let x_done = x_done.f_logical_or(&mu.f_ge(MU_MAX)?.f_logical_and(&rejected)?)?;
            status = set(&status, &active.f_logical_and(&x_done)?, XTOL)?;
        }
        let n_acc = i64::try_from(accept.f_sum(Kind::Int64)?)?;
        linearize = n_acc > 0;
        moved = accept.shallow_clone();
        if linearize {
            x = x_new.f_where_self(&col(&accept, 1)?, &x)?;
            r = r_new.f_where_self(&col(&accept, 1)?, &r)?;
            cost = cost_new.f_where_self(&accept, &cost)?;
        }
        status = set(&status, &iters.f_ge(opts.max_iterations as i64)?, MAXITER)?;
        it += 1;
        report_progress(opts, it, &status, &cost)?;
    }
    Ok(Solved {
        x,
        r,
        jm: None,
        jms: None,
        cost,
        optimality,
        iterations: to_usize(&iters)?,
        evaluations: to_usize(&nfev)?,
        jacobian_evaluations: to_usize(&njev)?,
        status: Vec::<i64>::try_from(status.f_to_device(tch::Device::Cpu)?)?,
    })
}

/// Preconditioned CG on `(J̃ᵀJ̃ + μ D) δ = −g` per problem (`active` the running ones, the
/// others get `δ = 0`), from `δ = 0`: `(δ, pred)` with `pred = −gᵀδ − ½‖J̃δ‖²` from one more
/// `J̃ v` (CG's recurred residual drifts on ill-conditioned systems; the model is judged at the
/// `δ` returned).
fn pcg(
    p: &Products,
    g: &Tensor,
    d: &Tensor,
    mu: &Tensor,
    active: &Tensor,
    opts: &LeastSquaresOptions,
) -> Result<(Tensor, Tensor)> {
    let muc = col(mu, 1)?;
    let apply = |v: &Tensor| -> Result<Tensor> {
        let jtjv = p.jtu(&p.jv(v)?)?;
        Ok(jtjv.f_add(&d.f_mul(v)?.f_mul(&muc)?)?)
    };
    let precond = d.f_mul(&muc.f_add_scalar(1.0)?)?;
    // stopped problems solve nothing (a NaN gradient of theirs stays out of the products)
    let rhs = g
        .f_neg()?
        .f_where_self(&col(active, 1)?, &g.f_zeros_like()?)?;
    let bnorm = norm(&rhs)?;
    let mut done = active.f_logical_not()?.f_logical_or(&bnorm.f_eq(0.0)?)?;
    let mut x = rhs.f_zeros_like()?;
    let mut res = rhs.shallow_clone();
    let mut z = res.f_div(&precond)?;
    let mut dir = z.shallow_clone();
    let mut rz = dot(&res, &z)?;
    for _ in 0..opts.cg_max_iterations {
        if bool::try_from(done.f_all()?)? {
            break;
        }
        let ap = apply(&dir)?;
        let pap = dot(&dir, &ap)?;
        // a non-positive or NaN curvature (J̃ᵀJ̃ + μD is SPD in exact arithmetic) stops that
        // problem's CG where it is
        let ok = pap.f_gt(0.0)?;
        done = done.f_logical_or(&ok.f_logical_not()?)?;
        let go = done.f_logical_not()?;
        let alpha = rz
            .f_div(&pap.f_where_self(&ok, &pap.f_ones_like()?)?)?
            .f_where_self(&go, &pap.f_zeros_like()?)?;
        let ac = col(&alpha, 1)?;
        x = x.f_add(&dir.f_mul(&ac)?)?;
        res = res.f_sub(&ap.f_mul(&ac)?)?;
        done =
            done.f_logical_or(&norm(&res)?.f_le_tensor(&bnorm.f_mul_scalar(opts.cg_tolerance)?)?)?;
        z = res.f_div(&precond)?;
        let rz_new = dot(&res, &z)?;
        let go = done.f_logical_not()?;
        let beta = rz_new
            .f_div(&rz.f_where_self(&rz.f_ne(0.0)?, &rz.f_ones_like()?)?)?
            .f_where_self(&go, &rz.f_zeros_like()?)?;
        dir = z.f_add(&dir.f_mul(&col(&beta, 1)?)?)?;
        rz = rz_new;
    }
    let jx = p.jv(&x)?;
    let pred = dot(g, &x)?
        .f_neg()?
        .f_sub(&sq_norm(&jx)?.f_mul_scalar(0.5)?)?;
    Ok((x, pred))
}
