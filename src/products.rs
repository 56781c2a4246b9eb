//! Products with the Jacobian without forming it: [`vjp`], [`jvp`] and many of each at once,
//! [`vjp_batched`], [`jvp_batched`] — PyTorch's `torch.autograd.functional` names, for tensors
//! already in a graph. (Hessian products: [`crate::hessian`](mod@crate::hessian).)
//!
//! | function | formula | shape | cost |
//! |---|---|---|---|
//! | [`vjp`] | `vᵀ J` | `x` | 1 backward pass |
//! | [`jvp`] | `J u` | `y` | 2 backward passes (double-backward trick) |
//! | [`vjp_batched`] | `v[r]ᵀ J` for a stack `v = [k, *y.shape]` | `[k, *x.shape]` | 1 batched backward pass with the native engine; `k` without it |
//! | [`jvp_batched`] | `J u[r]` for a stack `u = [k, *x.shape]` | `[k, *y.shape]` | 1 + 1 batched backward pass with the engine; 1 + `k` without it |

use tch::{Kind, Tensor};

use crate::autograd::{
    check_pair, check_stack, check_vector, input_names, stack_or_empty, vjp_into, vjp_stack,
    y_names, Linearized,
};
use crate::error::Result;
use crate::jacobian::jacobian_with;
use crate::second_order;
use crate::strategy::{JacobianOptions, Strategy};

/// Vector-Jacobian product `vᵀJ = ∂(Σ_i v_i y_i)/∂x`, shape of `x` — one backward pass
/// (PyTorch's `torch.autograd.functional.vjp` / `torch.autograd.grad(y, x, v)`).
///
/// `v` has `y`'s shape. Honors `create_graph` and `strict` (the strategy is not used).
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::{vjp, JacobianOptions};
/// let x = Tensor::from_slice(&[1.0f64, 2.0, 3.0]).set_requires_grad(true);
/// let y = &x * &x; // J = diag(2x)
/// let v = Tensor::from_slice(&[1.0f64, 0.5, 0.0]);
/// let g = vjp(&y, &x, &v, &JacobianOptions::default())?;
/// assert_eq!(Vec::<f64>::try_from(g).unwrap(), [2.0, 2.0, 0.0]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn vjp(y: &Tensor, x: &Tensor, v: &Tensor, opts: &JacobianOptions) -> Result<Tensor> {
    opts.refuse_per_sample_options("vjp")?;
    crate::autograd::grad_mode_on(|| {
        check_pair(y, x)?;
        check_vector(v, "v", y, "y")?;
        let names_v = input_names(1);
        let root = y.f_mul(v)?.f_sum(None::<Kind>)?;
        Ok(vjp_into(&root, &[x], opts.pass(y_names(&names_v)))?.remove(0))
    })
}

/// Jacobian-vector product `J u`, shape of `y` (PyTorch's `torch.autograd.functional.jvp`).
///
/// Computed with the double-backward trick: `g(w) = Jᵀw` is built with create_graph for a dummy
/// `w`, then `J u = ∂(g(w)·u)/∂w`. Needs twice-differentiable ops. With `create_graph` through a
/// node whose double backward is wrong one order higher (layer, batch or instance norm; see
/// [`crate::second_order`]) the trick would give wrong second derivatives, so the full `J` is
/// formed instead ([`jacobian_with`], `Auto`) and `J u` taken from it: right, at the cost of a
/// Jacobian, and recorded as a [`Reroute`](crate::second_order::Reroute).
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::{jvp, JacobianOptions};
/// let x = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
/// let y = Tensor::stack(&[x.sum(None), x.prod(None)], 0); // J = [[1, 1], [x1, x0]]
/// let u = Tensor::from_slice(&[1.0f64, -1.0]);
/// let ju = jvp(&y, &x, &u, &JacobianOptions::default())?;
/// assert_eq!(Vec::<f64>::try_from(ju).unwrap(), [0.0, 1.0]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn jvp(y: &Tensor, x: &Tensor, u: &Tensor, opts: &JacobianOptions) -> Result<Tensor> {
    opts.refuse_per_sample_options("jvp")?;
    crate::autograd::grad_mode_on(|| {
        check_pair(y, x)?;
        check_vector(u, "u", x, "x")?;
        if let Some(j) = jacobian_instead(y, x, opts, "jvp")? {
            let ju = j.f_matmul(&u.f_reshape([-1])?)?;
            return Ok(ju.f_reshape(y.size().as_slice())?);
        }
        let names_v = input_names(1);
        Linearized::new(y, &[x], opts.pass(y_names(&names_v)))?.jvp(&[u])
    })
}

/// Under `create_graph` through a node whose double backward is wrong one order higher (see
/// [`crate::second_order`]), `J` as `[m, n]` by [`jacobian_with`] (a batched pass with the
/// engine), for the forward-mode products to use instead of the double-backward trick; the
/// reroute is recorded. `None` otherwise.
fn jacobian_instead(
    y: &Tensor,
    x: &Tensor,
    opts: &JacobianOptions,
    call: &str,
) -> Result<Option<Tensor>> {
    let Some(node) = second_order::double_backward_fault(y, opts.create_graph)? else {
        return Ok(None);
    };
    let j = jacobian_with(y, &[x], &opts.strategy(Strategy::Auto))?.remove(0);
    second_order::record(second_order::Reroute {
        from: Strategy::Forward,
        to: Strategy::Auto,
        reason: format!(
            "{call} with create_graph through {node}: the double-backward trick is wrong one order higher there, so J u comes from J"
        ),
    });
    Ok(Some(j.f_reshape([y.numel() as i64, x.numel() as i64])?))
}

/// Many vector-Jacobian products at once: for a stack of cotangents `v = [k, *y.shape]`,
/// `out[r] = v[r]ᵀ J = ∂(Σ_i v[r]_i y_i)/∂x`, shape `[k, *x.shape]` — PyTorch's
/// `torch.autograd.grad(y, x, v, is_grads_batched=True)` / `vmap(vjp_fn)(v)`.
///
/// One native batched backward pass for all `k` (a loop of [`vjp`]s without the engine).
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::{vjp_batched, JacobianOptions};
/// let x = Tensor::from_slice(&[1.0f64, 2.0, 3.0]).set_requires_grad(true);
/// let y = &x * &x; // J = diag(2x)
/// let v = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 0.0, 1.0, 1.0]).view([2, 3]);
/// let g = vjp_batched(&y, &x, &v, &JacobianOptions::default())?;
/// assert_eq!(Vec::<f64>::try_from(g.flatten(0, -1)).unwrap(), [2.0, 0.0, 0.0, 0.0, 4.0, 6.0]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn vjp_batched(y: &Tensor, x: &Tensor, v: &Tensor, opts: &JacobianOptions) -> Result<Tensor> {
    opts.refuse_per_sample_options("vjp_batched")?;
    crate::autograd::grad_mode_on(|| {
        check_pair(y, x)?;
        check_stack(v, "v", y, "y", 0, "vjp_batched")?;
        let names_v = input_names(1);
        vjp_stack(y, x, v, opts.pass(y_names(&names_v)))
    })
}

/// Many Jacobian-vector products at once: for a stack of tangents `u = [k, *x.shape]`,
/// `out[r] = J u[r]`, shape `[k, *y.shape]` — `vmap(lambda u: torch.func.jvp(f, (x,), (u,))[1])(u)`,
/// JAX's `vmap(linearize(f, x)[1])`.
///
/// `Jᵀw` is built once (the double-backward trick), then one native batched backward pass gives
/// all `k` products (a loop without the engine).
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::{jvp_batched, JacobianOptions};
/// let x = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
/// let y = Tensor::stack(&[x.sum(None), x.prod(None)], 0); // J = [[1, 1], [x1, x0]]
/// let u = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0]).view([2, 2]); // e_0, e_1
/// let ju = jvp_batched(&y, &x, &u, &JacobianOptions::default())?; // the columns of J
/// assert_eq!(Vec::<f64>::try_from(ju.flatten(0, -1)).unwrap(), [1.0, 2.0, 1.0, 1.0]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn jvp_batched(y: &Tensor, x: &Tensor, u: &Tensor, opts: &JacobianOptions) -> Result<Tensor> {
    opts.refuse_per_sample_options("jvp_batched")?;
    crate::autograd::grad_mode_on(|| {
        check_pair(y, x)?;
        check_stack(u, "u", x, "x", 0, "jvp_batched")?;
        if let Some(j) = jacobian_instead(y, x, opts, "jvp_batched")? {
            let k = u.size()[0];
            let ju = u.f_reshape([k, -1])?.f_matmul(&j.f_tr()?)?; // [k, m]
            let mut shape = vec![k];
            shape.extend(y.size());
            return Ok(ju.f_reshape(shape.as_slice())?);
        }
        let names_v = input_names(1);
        let lin = Linearized::new(y, &[x], opts.pass(y_names(&names_v)))?;
        if crate::native::available() {
            return lin.jvp_batched(u);
        }
        let rows = (0..u.size()[0])
            .map(|r| lin.jvp(&[&u.f_select(0, r)?]))
            .collect::<Result<Vec<_>>>()?;
        stack_or_empty(&rows, y, u.size()[0])
    })
}
