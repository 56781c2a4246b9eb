//! Nonlinear least squares, batched: [`least_squares`] minimizes
//!
//! ```text
//! cost(x) = ½ C² Σᵢ ρ(rᵢ(x)² / C²)          (½ ‖r(x)‖² for the linear loss)
//! ```
//!
//! for a residual closure `r`: `x [B, n] → r [B, m]` is `B` independent problems solved together
//! (one row each; `x [n] → r [m]` is a single problem) — SciPy's `least_squares` and MINPACK's
//! `lmder`, batched, on the device of `x0`, with the Jacobian from the crate.
//!
//! ```
//! use tch::{Kind, Tensor};
//! use tch_jacobian::{least_squares, LeastSquaresOptions};
//!
//! // Rosenbrock from the standard start: r(x) = (10 (x₂ − x₁²), 1 − x₁)
//! let r = |x: &Tensor| Tensor::stack(&[(x.get(1) - x.get(0).square()) * 10.0, 1.0 - x.get(0)], 0);
//! let out = least_squares(r, &Tensor::from_slice(&[-1.2f64, 1.0]), &LeastSquaresOptions::default())?;
//! assert!(out.success());
//! assert!(out.x.allclose(&Tensor::from_slice(&[1.0f64, 1.0]), 1e-12, 1e-12, false));
//! # Ok::<(), tch_jacobian::Error>(())
//! ```
//!
//! # The iteration
//!
//! Every problem `b` has its own trust region, step acceptance, convergence tests and [`Status`];
//! a problem that has stopped stops changing (and its evaluations stop counting), and the call
//! returns when all have stopped. Each iteration:
//!
//! 1. **Model.** At the current point, the loss-corrected residuals `r̃` and Jacobian `J̃`
//!    (Triggs' correction, [`Loss`]), `A = J̃ᵀJ̃`, `g = J̃ᵀr̃`, in Moré's scaled variables
//!    `p = D δ`, `D` the running maximum of `J̃`'s column norms (MINPACK's `mode = 1`), and under
//!    bounds Coleman–Li's affine scaling on top (SciPy's `trf`). The scaled `A` is
//!    eigendecomposed once per accepted point (`n × n`, batched); where it is too ill-conditioned
//!    to resolve `J`'s small singular values (condition beyond `1/√ε`), the same model comes from
//!    the QR factorization of `[J̃ | r̃]` instead — `J`'s own accuracy, as MINPACK's.
//! 2. **Step** ([`Method`]):
//!    * Levenberg–Marquardt (`Auto`): Moré's trust region, `p = −(A + λI)⁻¹g` with `λ = 0` when
//!      the Gauss–Newton step fits (`‖p‖ ≤ 1.1 Δ`), else `λ` by Moré's safeguarded Newton
//!      iteration to `‖p‖ ∈ [0.9 Δ, 1.1 Δ]`, and MINPACK's update of `Δ` and `λ` from the ratio
//!      of actual to predicted reduction (the first region `100 ‖D x0‖`). The minimum-norm
//!      solution where `J` is rank deficient. Optionally **geodesic acceleration** (Transtrum &
//!      Sethna 2012): `p = v + ½a`, `a = −(A + λI)⁻¹ J̃ᵀ r″(x)[v, v]` from the second
//!      directional derivative, one more forward pass (collapsed Taylor mode, `D = 1`),
//!      rejected when `2‖a‖/‖v‖ > 0.75`.
//!    * Dogleg: Powell's dogleg between the Cauchy point and the Gauss–Newton step in a trust
//!      region.
//!    * Gauss–Newton: the minimum-norm Gauss–Newton step with a backtracking (Armijo) line
//!      search.
//!
//!    Under bounds, the step is then SciPy's `select_step`: kept if it stays inside, else the
//!    best (by the model) of the step cut at the boundary and pulled back by `θ`, its
//!    reflection, and the bounded anti-gradient step; points stay strictly inside.
//! 3. **Evaluate** the B trial points in one call of the residual (with their Jacobian in the
//!    same forward pass when most steps were accepted last time), accept where the actual
//!    reduction is at least `10⁻⁴` of the predicted one.
//! 4. **Test** (MINPACK's, per problem): `gtol` — the cosine `max_j |gⱼ|/(‖J̃ⱼ‖ ‖√ρ′ r‖) ≤ gtol`
//!    ([`Status::GradientConverged`]); `ftol` — actual and predicted relative reductions both
//!    `≤ ftol` ([`Status::CostConverged`]); `xtol` — the trust region (the step, for
//!    Gauss–Newton) `≤ xtol (xtol + ‖D x‖)` ([`Status::StepConverged`]); the iteration cap
//!    ([`Status::MaxIterations`]).
//!
//! # Matrix-free steps
//!
//! With [`LinearSolver::MatrixFree`] (or `Auto` when `J`, `B·m·n` numbers, would exceed
//! [`memory_budget`](LeastSquaresOptions::memory_budget) or a quarter of the free memory) `J` is
//! never formed: Levenberg–Marquardt with Nielsen's damping, each step `(J̃ᵀJ̃ + μD)δ = −J̃ᵀr̃`
//! solved per problem by preconditioned conjugate gradients from `J v` (a backward pass through
//! `Jᵀw`'s graph) and `Jᵀu` (one backward pass), `D` Hutchinson's estimate of `diag(J̃ᵀJ̃)` —
//! `O(B(m + n))` memory beyond the residual's graph (formulas in `matrix_free.rs`). It reaches the
//! dense solver's minima on the MGH problems (`tests/least_squares_matrix_free.rs`); it runs without
//! bounds, covariance, a kept Jacobian, geodesic acceleration or a Jacobian closure (options that
//! need `J`: `Auto` then stays dense, an explicit `MatrixFree` refuses them). The `optimality`
//! it reports uses the estimated column norms `√D`. [`LeastSquaresOutput::linear_solver`] says
//! which solver ran.
//!
//! ```
//! use tch::{Kind, Tensor};
//! use tch_jacobian::least_squares::LinearSolver;
//! use tch_jacobian::{least_squares, LeastSquaresOptions};
//!
//! // r(x) = tanh(A x) − y with 50 parameters and 100 residuals, without forming J.
//! tch::manual_seed(0);
//! let a = Tensor::randn([100, 50], (Kind::Double, tch::Device::Cpu)) / 50f64.sqrt();
//! let y = Tensor::randn([50], (Kind::Double, tch::Device::Cpu)).matmul(&a.tr()).tanh();
//! let r = |x: &Tensor| x.matmul(&a.tr()).tanh() - &y;
//! let opts = LeastSquaresOptions::default().linear_solver(LinearSolver::MatrixFree);
//! let out = least_squares(r, &Tensor::zeros([50], (Kind::Double, tch::Device::Cpu)), &opts)?;
//! assert!(out.success() && out.cost.double_value(&[]) < 1e-20);
//! assert_eq!(out.linear_solver, LinearSolver::MatrixFree);
//! # Ok::<(), tch_jacobian::Error>(())
//! ```
//!
//! # Defaults
//!
//! `ftol = xtol = gtol = 1e-12` and 1000 iterations reach full precision in f64 on the
//! Moré–Garbow–Hillstrom problems: from every standard start the published minimum to 9–16
//! digits, `F ≤ 1e-20` where it is 0 (`tests/least_squares_mgh.rs`; the table with the 10× and
//! 100× starts is in `docs/least-squares.md`). SciPy's defaults (1e-8) stop a few digits short
//! on several of them. Geodesic acceleration is off by default: it costs a forward pass per
//! iteration and helps on long curved valleys (Meyer: 128 → 28 iterations), not in general.
//!
//! # The Jacobian
//!
//! With [`Strategy::Auto`](crate::Strategy::Auto) and `m ≥ n`, collapsed Taylor mode
//! ([`laplacian`](crate::laplacian())'s engine) along the `n` identity directions: `r(x)` and every column of
//! `J` in **one** forward pass of the residual. An op it has no rule for (or a closure it
//! refuses), another explicit strategy, or `m < n` (found on the first pass): the crate's
//! [`per_sample_jacobian_of`](crate::per_sample_jacobian_of); an explicit
//! [`Strategy::Taylor`](crate::Strategy::Taylor) returns the mode's error instead. Or your own closure
//! ([`LeastSquaresOptions::jacobian`]). Once per solve, on the first Jacobian, the B problems are
//! checked not to interact ([`crate::independence`](mod@crate::independence)): a residual that
//! mixes rows (a mean over the batch) is an [`Error::Contract`], not a wrong fit.
//!
//! # Results
//!
//! [`LeastSquaresOutput`]: per problem the solution, cost, residuals, optimality, iterations,
//! evaluations, status — and on request the Jacobian and the covariance `σ²(JᵀJ)⁻¹`,
//! `σ² = 2·cost/(m − n)`, with the standard errors (statsmodels' and SciPy's `curve_fit`'s
//! formula; a rank-deficient `J` is [`Status::RankDeficient`] with NaN rows, never silent). With
//! [`create_graph`](LeastSquaresOptions::create_graph), a differentiable solution (below).
//!
//! # Differentiable solutions
//!
//! With [`LeastSquaresOptions::create_graph`] the solution `x*` is differentiable with respect
//! to every tensor the residual closure captures that requires grad — the data, a weight, a
//! hyperparameter, a network's parameters — by the implicit function theorem: `g(x*, φ) = 0`
//! for the cost's gradient `g = ∂L/∂x` gives
//!
//! ```text
//! dx*/dφ = −H⁻¹ ∂g/∂φ,      H = ∂g/∂x  (the exact Hessian of L = ½ C² Σ ρ(rᵢ²/C²), per problem)
//! ```
//!
//! tch has no custom autograd function, so `x` is built as one Newton step at `x*` whose value
//! is `x*` exactly and whose backward is that formula: `xs = x*.detach()` (requiring grad),
//! `g = ∂ΣL/∂xs` with `create_graph`, `H` detached (the crate's per-sample Jacobian of `g`), `δ =
//! H⁻¹g` (a solve per problem), `x = x* + (δ.detach() − δ)`. The second-order residual terms
//! that Gauss–Newton drops are in `H`: the derivative is right for residuals that are not zero
//! at the optimum. Parameters at an active bound (gradient pushing outward) keep a zero
//! derivative, the others get the free block's. Cost: one more residual evaluation and
//! gradient with `create_graph`, one `n × n` Hessian and one solve per problem; a backward is
//! one vector–Jacobian product through `g`. `x` does not depend on `x0`; a singular Hessian (a
//! parameter the residual ignores) is an [`Error::InvalidArgument`], never NaN.
//!
//! ```
//! use tch::{Kind, Tensor};
//! use tch_jacobian::{least_squares, LeastSquaresOptions};
//!
//! // y ≈ a e^(−k t) with noise: the fit's derivative with respect to the data y.
//! let t = Tensor::linspace(0.0, 3.0, 10, (Kind::Double, tch::Device::Cpu));
//! let y = ((-&t * 1.3).exp() * 2.0 + (&t * 7.0).sin() * 0.05).set_requires_grad(true);
//! let r = |p: &Tensor| p.get(0) * (-p.get(1) * &t).exp() - &y;
//! let opts = LeastSquaresOptions::default().create_graph(true);
//! let out = least_squares(r, &Tensor::from_slice(&[1.0f64, 1.0]), &opts)?;
//! let (a, k) = (out.x.get(0), out.x.get(1));
//! let da = Tensor::run_backward(&[&a], &[&y], true, false).remove(0);
//! let dk = Tensor::run_backward(&[&k], &[&y], false, false).remove(0);
//! // Scaling y scales a* and leaves k* alone: Σ yᵢ ∂a*/∂yᵢ = a*, Σ yᵢ ∂k*/∂yᵢ = 0.
//! let y = y.detach();
//! assert!(((&da * &y).sum(Kind::Double) - a.detach()).abs().double_value(&[]) < 1e-10);
//! assert!((&dk * &y).sum(Kind::Double).abs().double_value(&[]) < 1e-10);
//! # Ok::<(), tch_jacobian::Error>(())
//! ```
//!
//! `f32` and `f64`; CPU and CUDA (every step a tensor op on `x0`'s device; one small host read per
//! iteration for the stop test); values inside `tch::no_grad` are the same.

mod bounds;
mod covariance;
mod dogleg;
pub mod fit;
mod gauss_newton;
mod implicit;
mod linalg;
mod lm;
mod loss;
mod matrix_free;
mod model;
mod options;
mod output;
mod residual;
mod solver;

pub use fit::{FitOptions, FitStepOutput, ModelFit};
pub use options::{JacobianFn, LeastSquaresOptions, LinearSolver, Loss, Method, Progress};
pub use output::{LeastSquaresOutput, Status};

use tch::{Kind, Tensor};

use crate::closure::FnOutput;
use crate::error::{Error, Result};

/// Minimizes `½ C² Σᵢ ρ(rᵢ(x)²/C²)` (`½‖r(x)‖²` by default) from `x0`, for B problems at once —
/// SciPy's `least_squares`, batched, on the device of `x0`.
///
/// `x0` is `[B, n]` (B independent problems; `residual` maps `[B, n]` to `[B, m]` row by row,
/// as [`per_sample_jacobian_of`](crate::per_sample_jacobian_of)'s closures do) or `[n]` (one problem;
/// `residual` maps `[n]` to `[m]`). `f32` or `f64`. The Jacobian comes from the crate (collapsed
/// Taylor mode: value and `J` in one forward pass; see [`LeastSquaresOptions::strategy`]) or from
/// [`LeastSquaresOptions::jacobian`]. Each problem has its own damping, step acceptance,
/// convergence test and [`Status`]; a converged problem stops changing and the call returns
/// when every problem has stopped. See the [module docs](self) for the methods and the
/// defaults.
///
/// # Errors
/// [`Error::Kind`] for an `x0` that is not `f32`/`f64`; [`Error::Shape`] for an `x0` that is not
/// `[n]` or `[B, n]`, a residual of another shape (or changing length), a Jacobian closure's
/// wrong shape; [`Error::InvalidArgument`] for a non-finite `x0` or residual at `x0` (naming the
/// problem and the entry), a start outside the bounds, crossed bounds, Gauss–Newton with `m < n`,
/// the covariance with `m ≤ n`, bad tolerances; [`Error::Contract`] when the problems interact
/// (checked on the first Jacobian unless `check_independence(false)`) or the closure panics.
/// A problem that does not converge is not an error: its status says why (and a `log` warning
/// names it).
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{least_squares, LeastSquaresOptions};
///
/// // Two exponential decays y = a e^(−k t), fitted together: x = [a, k] per row.
/// let t = Tensor::linspace(0.0, 4.0, 20, (Kind::Double, tch::Device::Cpu));
/// let truth = Tensor::from_slice(&[2.0f64, 0.7, 5.0, 1.3]).view([2, 2]);
/// let model = |p: &Tensor| p.narrow(1, 0, 1) * (-p.narrow(1, 1, 1) * &t).exp();
/// let y = model(&truth); // [2, 20]
/// let residual = |p: &Tensor| model(p) - &y;
/// let x0 = Tensor::from_slice(&[1.0f64, 1.0, 1.0, 1.0]).view([2, 2]);
/// let out = least_squares(residual, &x0, &LeastSquaresOptions::default())?;
/// assert!(out.success());
/// assert!(out.x.allclose(&truth, 1e-10, 1e-10, false));
/// assert!(out.cost.max().double_value(&[]) < 1e-20);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn least_squares<F, O>(
    residual: F,
    x0: &Tensor,
    opts: &LeastSquaresOptions,
) -> Result<LeastSquaresOutput>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    crate::autograd::grad_mode_on(|| solve(&residual, x0, opts))
}

fn solve<F, O>(residual: &F, x0: &Tensor, opts: &LeastSquaresOptions) -> Result<LeastSquaresOutput>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    opts.validate()?;
    let kind = x0.f_kind()?;
    if !matches!(kind, Kind::Float | Kind::Double) {
        return Err(Error::Kind(format!(
            "x0 has dtype {kind:?} (shape {:?}); least_squares works in Float or Double",
            x0.size()
        )));
    }
    let single = match x0.dim() {
        1 => true,
        2 => false,
        _ => {
            return Err(Error::Shape(format!(
                "x0 has shape {:?}; it must be [n] (one problem) or [B, n] (B problems)",
                x0.size()
            )))
        }
    };
    let xb = if single {
        x0.f_unsqueeze(0)?
    } else {
        x0.shallow_clone()
    };
    let xb = xb.f_detach()?.f_contiguous()?;
    let (b, n) = (xb.size()[0], xb.size()[1]);
    if b == 0 || n == 0 {
        return Err(Error::Shape(format!(
            "x0 has shape {:?}: no problems or no parameters",
            x0.size()
        )));
    }
    if !bool::try_from(xb.f_isfinite()?.f_all()?)? {
        return Err(Error::InvalidArgument(format!(
            "x0 (shape {:?}) has NaN or infinite entries",
            x0.size()
        )));
    }
    let call = |x: &Tensor| -> Result<Tensor> {
        crate::closure::call_guarded(|| {
            if !single {
                return residual(x).into_output();
            }
            let r = residual(&x.f_squeeze_dim(0)?).into_output()?;
            if r.dim() != 1 {
                return Err(Error::Shape(format!(
                    "for x0 of shape [n] = [{n}] the residual must have shape [m]; got {:?}",
                    r.size()
                )));
            }
            Ok(r.f_unsqueeze(0)?)
        })
    };
    let jac_call = |x: &Tensor| -> Result<Tensor> {
        let jac = opts.jacobian.expect("only called with a Jacobian closure");
        crate::closure::call_guarded(|| {
            if !single {
                return jac(x);
            }
            let j = jac(&x.f_squeeze_dim(0)?)?;
            if j.dim() != 2 {
                return Err(Error::Shape(format!(
                    "for x0 of shape [n] = [{n}] the Jacobian closure must return [m, n]; got {:?}",
                    j.size()
                )));
            }
            Ok(j.f_unsqueeze(0)?)
        })
    };
    let jac: Option<JacobianFn> = match opts.jacobian {
        Some(_) => Some(&jac_call),
        None => None,
    };
    let bounds = match opts.bounds {
        Some((lo, up)) => Some(bounds::Bounds::new(lo, up, &xb)?),
        None => None,
    };
    let res = residual::Residual::new(&call, jac, &xb, opts.strategy, opts.check_independence)?;
    let linear_solver = match opts.linear_solver {
        LinearSolver::Auto if opts.needs_dense().is_none() => {
            // one evaluation at x0 gives m, and J's size
            let m = res.value(&xb)?.size()[1];
            let bytes =
                (b as u128) * (m as u128) * (n as u128) * (kind.elt_size_in_bytes() as u128);
            let chosen = LinearSolver::Auto.resolve(bytes, opts.memory_budget, xb.device());
            if chosen == LinearSolver::MatrixFree {
                log::info!(
                    "least_squares: J would take {bytes} bytes (B = {b}, m = {m}, n = {n}), over min(memory_budget = {}, free memory / 4): the matrix-free solver runs",
                    opts.memory_budget
                );
            }
            chosen
        }
        LinearSolver::Auto => LinearSolver::Dense,
        s => s,
    };
    let s = match linear_solver {
        LinearSolver::MatrixFree => matrix_free::run(&res, &xb, opts)?,
        _ => solver::run(&res, &xb, bounds.as_ref(), opts)?,
    };

    let mut status: Vec<Status> = s.status.iter().map(|&c| Status::from_code(c)).collect();
    let (mut cov, mut se) = (None, None);
    if opts.covariance {
        let jms = s.jms.as_ref().expect("covariance runs the dense solver");
        let (c, e, full) = covariance::covariance(jms, &s.cost)?;
        for (st, ok) in status.iter_mut().zip(full) {
            if !ok && st.is_success() {
                *st = Status::RankDeficient;
            }
        }
        cov = Some(c);
        se = Some(e);
    }
    let failed: Vec<(usize, Status)> = status
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.is_success())
        .map(|(i, s)| (i, *s))
        .collect();
    if let Some(&(i, st)) = failed.first() {
        log::warn!(
            "least_squares: {} of {b} problems did not converge; problem {i}: {st} (after {} iterations, cost {:e})",
            failed.len(),
            s.iterations[i],
            s.cost.f_double_value(&[i as i64])?
        );
    }
    let active_mask = match &bounds {
        Some(bd) => Some(bd.active(&s.x, opts.xtol.max(1e-10))?),
        None => None,
    };
    let jacobian = match &s.jm {
        Some(j) if opts.keep_jacobian || opts.covariance => Some(j.f_contiguous()?),
        _ => None,
    };
    let un = |t: Tensor| -> Result<Tensor> {
        if single {
            Ok(t.f_squeeze_dim(0)?)
        } else {
            Ok(t)
        }
    };
    let opt = |t: Option<Tensor>| -> Result<Option<Tensor>> { t.map(un).transpose() };
    let x = if opts.create_graph {
        implicit::attach(&call, &s.x, bounds.as_ref(), opts)?
    } else {
        s.x
    };
    Ok(LeastSquaresOutput {
        x: un(x)?,
        cost: un(s.cost)?,
        residuals: un(s.r)?,
        jacobian: opt(jacobian)?,
        optimality: un(s.optimality)?,
        iterations: s.iterations,
        evaluations: s.evaluations,
        jacobian_evaluations: s.jacobian_evaluations,
        status,
        covariance: opt(cov)?,
        standard_errors: opt(se)?,
        active_mask: opt(active_mask)?,
        linear_solver,
    })
}
