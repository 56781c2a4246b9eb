//! Hessians: of a scalar in a graph ([`hessian`], [`hvp`]) or of a closure ([`hessian_of`]), and
//! per sample of a batch ([`per_sample_hessian_of`]), with the nested reverse-mode path of the
//! Laplacian ([`crate::laplacian_of`]) — the physics-informed (PINN) losses' derivatives.
//!
//! | function | formula | shape | cost |
//! |---|---|---|---|
//! | [`hvp`] | `H v = ∂(∇y · v)/∂x` | `x` | 2 backward passes |
//! | [`hessian`], [`hessian_of`] | `H[i, j] = ∂²y/∂x_i∂x_j` | `[*in, *in]` | 1 + one batched backward pass with the native engine (`Auto` → `Batched`); 1 + n without it |
//! | [`per_sample_hessian_of`] | `H[b] = ∂²u(x)[b]/∂x[b]²` | `[B, *in, *in]` | as below |
//!
//! For a closure `u` that maps `x = [B, *in]` to one scalar per sample (`[B]` or `[B, 1]`),
//!
//! ```text
//! H[b, i..., j...] = ∂²u(x)[b] / ∂x[b, i...] ∂x[b, j...]     shape [B, *in, *in]
//! Δu[b]            = Σ_i ∂²u(x)[b] / ∂x[b, i]²               shape [B]   (the trace of H[b])
//! ```
//!
//! — PyTorch's `vmap(hessian(u))(x)` and its trace. Like [`crate::per_sample_jacobian`] it assumes that
//! samples do not interact. Both are reverse over reverse: `g = ∇ₓ Σ_b u[b]` is built once with
//! create_graph (because samples do not interact, `g[b] = ∇u[b]`), then the per-sample Jacobian of
//! `g` — one batched backward pass over the `n` input directions ([`Strategy::Batched`]) or a
//! loop of `n` backward passes over the whole batch ([`Strategy::RowLoop`]). With `create_graph`
//! the result is differentiable, e.g. a PINN residual `(Δu − f)²` trained by its gradient to the
//! weights (third derivatives).
//!
//! The Laplacian never forms `H` under [`Strategy::RowLoop`]: pass `i` keeps only
//! `∂g[:, i]/∂x[:, i]` (memory `B·n` instead of `B·n²`).
//!
//! [`crate::laplacian_of`] with `Strategy::Auto` does not run this reverse-over-reverse path but
//! collapsed Taylor mode, one forward pass ([`crate::laplacian`](mod@crate::laplacian)); the rest of this paragraph is
//! the inner strategy of the nested path ([`per_sample_hessian_of`], an explicit strategy, and the
//! fallback). `Auto` picks from measurements of the PINN loss below (B = 1024, u: d → 64 → 64 → 1 tanh,
//! Laplacian or Hessian loss and its backward to the weights, 2-core CPU, f32; docs/benchmarks.md):
//! on the CPU the row loop (d = 2: 3.3–3.6 ms against 3.1–4.3 ms batched; d = 32: 35–36 ms
//! against 39–45 ms), on CUDA the batched pass (a loop of small passes is launch-bound there) —
//! when the native engine is built; without it, the row loop on every device.

use tch::{Kind, Tensor};

use crate::autograd::{
    check_float, check_pair, check_scalar, check_vector, input_names, vjp_into, y_names, Names,
    Pass,
};
use crate::closure::{prepare_input, FnOutput};
use crate::error::{Error, Result};
use crate::jacobian::jacobian_with;
use crate::per_sample::per_sample_jacobian;
use crate::strategy::{JacobianOptions, Strategy};

/// `B` for a floating `x = [B, *in]` with at least one sample; `what` (e.g. "Laplacians") names
/// the computation in the error.
pub(crate) fn check_batch(x: &Tensor, what: &str) -> Result<i64> {
    check_float(x, "x")?;
    let xs = x.size();
    if xs.is_empty() {
        return Err(Error::Shape(format!(
            "{what} need x: [B, *in] with a leading batch dimension; got a scalar x"
        )));
    }
    if xs[0] == 0 {
        return Err(Error::Shape(format!(
            "empty batch: x has shape {xs:?}; {what} of no samples are undefined"
        )));
    }
    Ok(xs[0])
}

/// `u(x)` is one floating scalar per sample: `[B]` or `[B, 1]`.
pub(crate) fn check_per_sample(y: &Tensor, b: i64, x: &Tensor) -> Result<()> {
    check_float(y, "u(x)")?;
    let ys = y.size();
    if ys.first() != Some(&b) || y.numel() as i64 != b {
        return Err(Error::Shape(format!(
            "u must return one scalar per sample, [B] or [B, 1] with B = {b}; it returned shape {ys:?} for x {:?}",
            x.size()
        )));
    }
    Ok(())
}

/// `u(x)` prepared (`x` requiring grad), `u(x)` itself, its gradient `g = ∇ₓ Σ_b u[b]` (with
/// create_graph) and `B`, after the shape checks.
fn gradient_of<F, O>(
    u: F,
    x: &Tensor,
    opts: &JacobianOptions,
) -> Result<(Tensor, Tensor, Tensor, i64)>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    let b = check_batch(x, "per-sample Hessians")?;
    let xg = prepare_input(x, opts.create_graph)?;
    let y = crate::closure::call_guarded(|| u(&xg).into_output())?;
    check_per_sample(&y, b, x)?;
    let names_v = input_names(1);
    let names = Names {
        output: "u(x)",
        inputs: &names_v,
    };
    let pass = Pass::new(true, false, names);
    let root = y.f_sum(None::<Kind>)?;
    let g = vjp_into(&root, &[&xg], pass)?.remove(0);
    Ok((xg, y, g, b))
}

/// The inner pass of nested reverse mode — the Jacobian of `g = ∇u` — for `strategy` on
/// `device`: `Auto` is the row loop on the CPU and the batched pass on CUDA (see the module
/// docs; inside a Laplacian's collapsed Taylor pass the row loop, which that pass follows); the
/// strategies that need `g`'s closure, which does not exist (the replicated ones, `Taylor`), are
/// refused: `who` names the caller.
pub(crate) fn nested_inner(strategy: Strategy, device: tch::Device, who: &str) -> Result<Strategy> {
    Ok(match strategy.validate()? {
        Strategy::Auto => {
            if crate::native::available()
                && device.is_cuda()
                && !crate::native::taylor::session_open()
            {
                Strategy::Batched { chunk_size: None }
            } else {
                Strategy::RowLoop
            }
        }
        s @ (Strategy::Vectorized { .. } | Strategy::VectorizedForward { .. } | Strategy::Taylor) => {
            return Err(Error::InvalidArgument(format!(
                "{who}: Strategy::{s} needs the closure of the gradient ∇u, which does not exist (it is built by a backward pass); use auto, row-loop, batched or forward"
            )))
        }
        s => s,
    })
}

/// Per-sample Hessians of a closure with one scalar per sample, shape `[B, *in, *in]`:
/// `H[b] = ∂²u(x)[b]/∂x[b]²` — PyTorch's `vmap(hessian(u))(x)`.
///
/// `u` maps `x: [B, *in]` to `[B]` or `[B, 1]`, sample by sample (see the module docs).
/// `x` need not require grad. With `opts.create_graph` the result is differentiable (also with
/// respect to `x` when `x` requires grad). A closure of another shape or an empty batch is an
/// [`Error::Shape`].
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{per_sample_hessian_of, JacobianOptions};
/// // u(x) = Σ_i x_i³ per sample: H[b] = diag(6 x[b])
/// let x = Tensor::from_slice(&[1.0f64, 2.0, -1.0, 0.5]).view([2, 2]);
/// let h = per_sample_hessian_of(|x: &Tensor| x.pow_tensor_scalar(3).sum_dim_intlist(1, false, Kind::Double), &x, &JacobianOptions::default())?;
/// assert_eq!(h.size(), [2, 2, 2]);
/// assert_eq!(Vec::<f64>::try_from(h.flatten(0, -1)).unwrap(), [6.0, 0.0, 0.0, 12.0, -6.0, 0.0, 0.0, 3.0]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn per_sample_hessian_of<F, O>(u: F, x: &Tensor, opts: &JacobianOptions) -> Result<Tensor>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    opts.refuse_randomness("per_sample_hessian_of")?;
    Ok(nested_hessian("per_sample_hessian_of", u, x, opts)?.2)
}

/// `(u(x), ∇u, H)` by nested reverse mode: [`per_sample_hessian_of`] with the value and gradient;
/// `what` names the caller in the independence check's error.
pub(crate) fn nested_hessian<F, O>(
    what: &str,
    u: F,
    x: &Tensor,
    opts: &JacobianOptions,
) -> Result<(Tensor, Tensor, Tensor)>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    crate::autograd::grad_mode_on(|| {
        let (xg, y, g, _) = gradient_of(u, x, opts)?;
        let inner = opts
            .strategy(nested_inner(opts.strategy, x.device(), what)?)
            .strict(false)
            .check_independence(false);
        let h = per_sample_jacobian(&g, &xg, &inner)?;
        if opts.check_independence {
            crate::independence::check_hessian(what, &y, &xg, &g, Some(&h))?;
        }
        Ok((y, g, h))
    })
}

/// `(u(x), ∇u, Δu)` by nested reverse mode (see [`laplacian_of`]); `what` names the caller in
/// the independence check's error.
pub(crate) fn nested_laplacian<F, O>(
    what: &str,
    u: F,
    x: &Tensor,
    opts: &JacobianOptions,
) -> Result<(Tensor, Tensor, Tensor)>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    crate::autograd::grad_mode_on(|| {
        let (xg, y, g, b) = gradient_of(u, x, opts)?;
        let n = x.numel() as i64 / b;
        let strategy = nested_inner(opts.strategy, x.device(), what)?;
        if strategy != Strategy::RowLoop {
            let inner = opts
                .strategy(strategy)
                .strict(false)
                .check_independence(false);
            let h = per_sample_jacobian(&g, &xg, &inner)?.f_reshape([b, n, n])?;
            if opts.check_independence {
                crate::independence::check_hessian(what, &y, &xg, &g, Some(&h))?;
            }
            let lap =
                h.f_diagonal(0, 1, 2)?
                    .f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?;
            return Ok((y, g, lap));
        }
        // Diagonal only: pass i differentiates Σ_b g[b, i] and keeps column i.
        let g2 = g.f_reshape([b, n])?;
        let names_v = input_names(1);
        let names = Names {
            output: "∇u",
            inputs: &names_v,
        };
        let pass = Pass::new(opts.create_graph, false, names);
        let mut lap = Tensor::f_zeros([b], (g.kind(), g.device()))?;
        for i in 0..n {
            if let Some(progress) = opts.progress {
                progress(crate::strategy::Progress {
                    strategy: Strategy::RowLoop,
                    done: i as usize,
                    total: n as usize,
                });
            }
            let root = g2.f_select(1, i)?.f_sum(None::<Kind>)?;
            let gi = vjp_into(&root, &[&xg], pass)?.remove(0);
            lap = lap.f_add(&gi.f_reshape([b, n])?.f_select(1, i)?)?;
        }
        // The diagonal only: the check is first order (u's gradient), one more backward pass.
        if opts.check_independence {
            crate::independence::check_hessian(what, &y, &xg, &g, None)?;
        }
        Ok((y, g, lap))
    })
}

/// Hessian-vector product `H v = ∂(∇ₓy · v)/∂x` of a scalar `y`, shape of `x`
/// (PyTorch's `torch.autograd.functional.hvp`) — two backward passes.
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::{hvp, JacobianOptions};
/// let x = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
/// let y = (&x * &x * &x).sum(None); // H = diag(6x)
/// let hv = hvp(&y, &x, &Tensor::from_slice(&[1.0f64, 1.0]), &JacobianOptions::default())?;
/// assert_eq!(Vec::<f64>::try_from(hv).unwrap(), [6.0, 12.0]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn hvp(y: &Tensor, x: &Tensor, v: &Tensor, opts: &JacobianOptions) -> Result<Tensor> {
    opts.refuse_per_sample_options("hvp")?;
    crate::autograd::grad_mode_on(|| {
        check_pair(y, x)?;
        check_scalar(y)?;
        check_vector(v, "v", x, "x")?;
        let names_v = input_names(1);
        let pass = opts.pass(y_names(&names_v));
        let g = vjp_into(y, &[x], pass.create_graph(true))?.remove(0);
        let root = g.f_mul(v)?.f_sum(None::<Kind>)?;
        let grad_names = Names {
            output: "∇y",
            inputs: &names_v,
        };
        Ok(vjp_into(&root, &[x], pass.names(grad_names))?.remove(0))
    })
}

/// Hessian of a scalar `y`: `H[i..., j...] = ∂²y/∂x[i...]∂x[j...]`, shape `[*in, *in]`
/// (PyTorch's `torch.autograd.functional.hessian`) — the Jacobian of `∇ₓy` (built with
/// create_graph) with `opts.strategy` ([`Strategy::Batched`], [`Strategy::RowLoop`],
/// [`Strategy::Forward`] or [`Strategy::Auto`]; the strategies that need a closure of `∇ₓy` —
/// the replicated ones and `Taylor` — are refused). With `Auto` that is one backward pass for
/// `∇ₓy` and one batched pass
/// over its `n` rows when the native engine is built, `1 + n` backward passes without it.
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::{hessian, JacobianOptions};
/// let x = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
/// let y = (&x.select(0, 0) * &x.select(0, 1)).square(); // (x0 x1)²
/// let h = hessian(&y, &x, &JacobianOptions::default())?;
/// // [[2 x1², 4 x0 x1], [4 x0 x1, 2 x0²]]
/// assert_eq!(Vec::<f64>::try_from(h.flatten(0, -1)).unwrap(), [8.0, 8.0, 8.0, 2.0]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn hessian(y: &Tensor, x: &Tensor, opts: &JacobianOptions) -> Result<Tensor> {
    opts.refuse_per_sample_options("hessian")?;
    crate::autograd::grad_mode_on(|| {
        check_pair(y, x)?;
        check_scalar(y)?;
        let names_v = input_names(1);
        let pass = opts.pass(y_names(&names_v)).create_graph(true);
        let g = vjp_into(&y.f_reshape([])?, &[x], pass)?.remove(0);
        let strategy = match opts.strategy.validate()? {
            s @ (Strategy::Vectorized { .. } | Strategy::VectorizedForward { .. } | Strategy::Taylor) => {
                return Err(Error::InvalidArgument(format!(
                    "hessian: Strategy::{s} needs the closure of the gradient ∇y, which does not exist (it is built by a backward pass); use auto, row-loop, batched or forward"
                )))
            }
            s => s,
        };
        let inner = opts.strategy(strategy).strict(false);
        Ok(jacobian_with(&g, &[x], &inner)?.remove(0))
    })
}

/// Hessian of a closure, `H[i..., j...] = ∂²f(x)/∂x[i...]∂x[j...]`, shape `[*in, *in]` —
/// `torch.func.hessian(f)(x)`. `f` returns a scalar; `x` need not require grad.
///
/// Reverse over reverse: `∇f(x)` is built with create_graph, then its Jacobian through the
/// batched engine (one batched double-backward pass; `n` passes without the native engine), with
/// `opts.strategy` as in [`hessian`].
/// Measured against `torch.func.hessian` (forward over reverse) on `Σ tanh(Wx)²`, n = 128, 2-core
/// CPU, f32: 0.24 ms against 2.0 ms.
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::{hessian_of, JacobianOptions};
/// let x = Tensor::from_slice(&[1.0f64, 2.0]);
/// let h = hessian_of(|x: &Tensor| (x * x * x).sum(None), &x, &JacobianOptions::default())?;
/// assert_eq!(Vec::<f64>::try_from(h.flatten(0, -1)).unwrap(), [6.0, 0.0, 0.0, 12.0]); // diag(6x)
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn hessian_of<F, O>(f: F, x: &Tensor, opts: &JacobianOptions) -> Result<Tensor>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    opts.refuse_per_sample_options("hessian_of")?;
    crate::autograd::grad_mode_on(|| {
        check_float(x, "x")?;
        let xg = crate::closure::prepare_input(x, opts.create_graph)?;
        let y = crate::closure::call_guarded(|| f(&xg).into_output())?;
        hessian(&y, &xg, opts)
    })
}
