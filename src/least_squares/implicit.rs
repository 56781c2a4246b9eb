//! Differentiable solutions ([`LeastSquaresOptions::create_graph`]): the implicit function
//! theorem through one Newton step at the solution.
//!
//! At a solution `x*` the gradient of the cost vanishes, `g(x*, φ) = ∂L/∂x = 0` (`L` the cost,
//! `φ` whatever the residual closure captures), so `dx*/dφ = −H⁻¹ ∂g/∂φ` with `H = ∂g/∂x` the
//! exact Hessian of the cost. tch has no custom autograd function; the same backward comes from
//!
//! ```text
//! out = x* + (δ.detach() − δ),    δ = H⁻¹ g(xs, φ),    xs = x*.detach() (a new leaf)
//! ```
//!
//! with `H` detached: its value is exactly `x*` (`a − a = 0`), its derivative `−H⁻¹ ∂g/∂φ`.

use tch::{Kind, Tensor};

use super::bounds::Bounds;
use super::linalg::{col, eps};
use super::loss;
use super::options::LeastSquaresOptions;
use crate::autograd::{vjp_into, Names, Pass};
use crate::error::{Error, Result};
use crate::strategy::{JacobianOptions, Strategy};

/// The solution `x` (`[B, n]`, detached) with the implicit function theorem's graph attached.
/// `call` is the batched residual (`[B, n] → [B, m]`).
pub(crate) fn attach(
    call: &dyn Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    bounds: Option<&Bounds>,
    opts: &LeastSquaresOptions,
) -> Result<Tensor> {
    crate::autograd::grad_mode_on(|| attach_on(call, x, bounds, opts))
}

fn attach_on(
    call: &dyn Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    bounds: Option<&Bounds>,
    opts: &LeastSquaresOptions,
) -> Result<Tensor> {
    let x = x.f_detach()?;
    let (b, n) = (x.size()[0], x.size()[1]);
    let xs = x.f_detach()?.f_set_requires_grad(true)?;
    // The per-problem cost, with the solver's loss and scale; g = ∂ΣL/∂xs keeps its graph.
    let cost = loss::cost(opts.loss, opts.loss_scale, &call(&xs)?)?;
    if !cost.requires_grad() {
        return Err(Error::InvalidArgument(
            "create_graph: the cost at the solution does not depend on x through autograd (a residual built outside the graph, or from detached tensors); the solution has no derivative to give".into(),
        ));
    }
    let names = Names {
        output: "the cost",
        inputs: &[],
    };
    let pass = Pass::new(true, false, names);
    let g = vjp_into(&cost.f_sum(None::<Kind>)?, &[&xs], pass)?.remove(0);
    // H = ∂g/∂x at x*, per problem, by the crate's per-sample Jacobian of the gradient's graph
    // (nested reverse mode: the exact Hessian, second-order residual terms included).
    let hess = if g.requires_grad() {
        let inner = JacobianOptions::default()
            .strategy(crate::hessian::nested_inner(
                Strategy::Auto,
                x.device(),
                "least_squares (create_graph)",
            )?)
            .strict(false)
            .check_independence(false);
        crate::per_sample_jacobian(&g, &xs, &inner)?.f_detach()?
    } else {
        // g does not depend on x: H = 0, reported as singular below.
        Tensor::f_zeros([b, n, n], (x.kind(), x.device()))?
    };
    let hess = hess.f_add(&hess.f_transpose(1, 2)?)?.f_mul_scalar(0.5)?;

    // Active bounds: x at a bound with the gradient pushing outward stays there (dx/dφ = 0).
    let free = match bounds {
        Some(bd) => {
            let act = bd.active(&x, opts.xtol.max(1e-10))?;
            let gd = g.f_detach()?;
            let lo = act.f_eq(-1)?.f_logical_and(&gd.f_gt(0.0)?)?;
            let up = act.f_eq(1)?.f_logical_and(&gd.f_lt(0.0)?)?;
            lo.f_logical_or(&up)?.f_logical_not()?
        }
        None => Tensor::f_ones([b, n], (Kind::Bool, x.device()))?,
    };
    // The free block, the fixed rows and columns replaced by a multiple of the identity (of H's
    // size, so that they do not change its condition); g zero there, so δ is zero there.
    let both = free.f_unsqueeze(2)?.f_logical_and(&free.f_unsqueeze(1)?)?;
    let scale = hess.f_abs()?.f_amax([1i64, 2].as_slice(), false)?;
    let scale = scale.f_where_self(&scale.f_gt(0.0)?, &scale.f_ones_like()?)?;
    let eye = Tensor::f_eye(n, (x.kind(), x.device()))?
        .f_unsqueeze(0)?
        .f_mul(&col(&scale, 2)?)?;
    let hf = hess
        .f_where_self(&both, &eye.f_zeros_like()?)?
        .f_add(&eye.f_where_self(&free.f_logical_not()?.f_unsqueeze(2)?, &eye.f_zeros_like()?)?)?;
    let gf = g.f_where_self(&free, &g.f_zeros_like()?)?;

    // A singular or ill-conditioned H is an error, never NaN derivatives.
    let finite = hf.f_isfinite()?.f_all_dims([1i64, 2].as_slice(), false)?;
    let hf_safe = hf.f_where_self(&col(&finite, 2)?, &eye)?;
    let ev = hf_safe.f_linalg_eigvalsh("L")?.f_abs()?;
    let (lmax, lmin) = (
        ev.f_amax([-1i64].as_slice(), false)?,
        ev.f_amin([-1i64].as_slice(), false)?,
    );
    let rcond = lmin.f_div(&lmax)?;
    let limit = eps(x.kind()) * n as f64;
    let bad = rcond
        .f_lt(limit)?
        .f_logical_or(&rcond.f_isfinite()?.f_logical_not()?)?
        .f_logical_or(&finite.f_logical_not()?)?;
    if bool::try_from(bad.f_any()?)? {
        let i = bad.f_nonzero()?.f_int64_value(&[0, 0])?;
        let nfree = free.f_get(i)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        let what = if bool::try_from(finite.f_get(i)?)? {
            format!(
                "is singular or ill-conditioned (condition number {:e}, reciprocal {:e} < ε·n = {limit:e})",
                1.0 / rcond.f_double_value(&[i])?,
                rcond.f_double_value(&[i])?
            )
        } else {
            "has NaN or infinite entries".to_string()
        };
        return Err(Error::InvalidArgument(format!(
            "create_graph: the Hessian of the cost at the solution of problem {i} of {b} ({nfree} free of {n} parameters) {what}: the solution is not locally unique (a parameter the residual does not depend on, or a flat direction), so it has no derivative; fix or remove the redundant parameters, or add a regularizing residual"
        )));
    }
    let delta = Tensor::f_linalg_solve(&hf, &gf.f_unsqueeze(-1)?, true)?.f_squeeze_dim(-1)?;
    // Value exactly x* (δ.detach() − δ is exactly 0), derivative −H⁻¹ ∂g/∂φ.
    Ok(x.f_add(&delta.f_detach()?.f_sub(&delta)?)?)
}
