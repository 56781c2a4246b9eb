//! Nonlinear least squares, batched: [`least_squares`] minimizes
//!
//! ```text
//! cost(x) = ½ C² Σᵢ ρ(rᵢ(x)² / C²)          (½ ‖r(x)‖² for the linear loss)
//! ```
//!
//! for a residual closure `r`: `x [B, n] → r [B, m]` is `B` independent problems solved together
//! (one row each; `x [n] → r [m]` is a single problem).
//!
//! DOCS-PLACEHOLDER

mod bounds;
mod covariance;
mod dogleg;
mod gauss_newton;
mod linalg;
mod lm;
mod loss;
mod model;
mod options;
mod output;
mod residual;
mod solver;

pub use options::{JacobianFn, LeastSquaresOptions, Loss, Method, Progress};
pub use output::{LeastSquaresOutput, Status};

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::jacobian::FnOutput;

/// Minimizes `½ C² Σᵢ ρ(rᵢ(x)²/C²)` (`½‖r(x)‖²` by default) from `x0`, for B problems at once —
/// SciPy's `least_squares`, batched, on the device of `x0`.
///
/// `x0` is `[B, n]` (B independent problems; `residual` maps `[B, n]` to `[B, m]` row by row,
/// as [`batch_jacobian_of`](crate::batch_jacobian_of)'s closures do) or `[n]` (one problem;
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
        crate::autograd::call_guarded(|| {
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
        crate::autograd::call_guarded(|| {
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
    let jac: Option<&dyn Fn(&Tensor) -> Result<Tensor>> = match opts.jacobian {
        Some(_) => Some(&jac_call),
        None => None,
    };
    let bounds = match opts.bounds {
        Some((lo, up)) => Some(bounds::Bounds::new(lo, up, &xb)?),
        None => None,
    };
    let res = residual::Residual::new(&call, jac, &xb, opts.strategy, opts.check_independence)?;
    let s = solver::run(&res, &xb, bounds.as_ref(), opts)?;

    let mut status: Vec<Status> = s.status.iter().map(|&c| Status::from_code(c)).collect();
    let (mut cov, mut se) = (None, None);
    if opts.covariance {
        let (c, e, full) = covariance::covariance(&s.jms, &s.cost)?;
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
    let jacobian = if opts.keep_jacobian || opts.covariance {
        Some(s.jm.f_contiguous()?)
    } else {
        None
    };
    let un = |t: Tensor| -> Result<Tensor> {
        if single {
            Ok(t.f_squeeze_dim(0)?)
        } else {
            Ok(t)
        }
    };
    let opt = |t: Option<Tensor>| -> Result<Option<Tensor>> { t.map(un).transpose() };
    Ok(LeastSquaresOutput {
        x: un(s.x)?,
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
    })
}
