//! Per-sample second derivatives: [`batch_hessian_of`] and the Laplacian [`laplacian_of`] — the
//! physics-informed (PINN) losses' derivatives.
//!
//! For a closure `u` that maps `x = [B, *in]` to one scalar per sample (`[B]` or `[B, 1]`),
//!
//! ```text
//! H[b, i..., j...] = ∂²u(x)[b] / ∂x[b, i...] ∂x[b, j...]     shape [B, *in, *in]
//! Δu[b]            = Σ_i ∂²u(x)[b] / ∂x[b, i]²               shape [B]   (the trace of H[b])
//! ```
//!
//! — PyTorch's `vmap(hessian(u))(x)` and its trace. Like [`crate::batch_jacobian`] it assumes that
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
//! [`laplacian_of`] with `Strategy::Auto` does not run this reverse-over-reverse path but
//! collapsed Taylor mode, one forward pass ([`crate::laplacian`]); the rest of this paragraph is
//! the inner strategy of the nested path ([`batch_hessian_of`], an explicit strategy, and the
//! fallback). `Auto` picks from measurements of the PINN loss below (B = 1024, u: d → 64 → 64 → 1 tanh,
//! Laplacian or Hessian loss and its backward to the weights, 2-core CPU, f32; docs/benchmarks.md):
//! on the CPU the row loop (d = 2: 3.3–3.6 ms against 3.1–4.3 ms batched; d = 32: 35–36 ms
//! against 39–45 ms), on CUDA the batched pass (a loop of small passes is launch-bound there) —
//! when the native engine is built; without it, the row loop on every device.

use tch::{Kind, Tensor};

use crate::autograd::{check_float, input_names, vjp_into, Names, Pass};
use crate::batch::batch_jacobian;
use crate::error::{Error, Result};
use crate::jacobian::{prepare_input, FnOutput};
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
    let y = crate::autograd::call_guarded(|| u(&xg).into_output())?;
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

/// The strategy for the Jacobian of `g`: `Auto` is the row loop on the CPU and the batched pass
/// on CUDA (see the module docs); the replicated strategies need the closure of `g`, which does
/// not exist, so they fall back to `Auto` as in [`crate::hessian`].
fn strategy_for(opts: &JacobianOptions, device: tch::Device) -> Strategy {
    match opts.strategy {
        Strategy::Auto | Strategy::Vectorized { .. } | Strategy::VectorizedForward { .. } => {
            if crate::native::available()
                && device.is_cuda()
                && !crate::native::taylor::session_open()
            {
                Strategy::Batched { chunk_size: None }
            } else {
                Strategy::RowLoop
            }
        }
        s => s,
    }
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
/// use tch_jacobian::{batch_hessian_of, JacobianOptions};
/// // u(x) = Σ_i x_i³ per sample: H[b] = diag(6 x[b])
/// let x = Tensor::from_slice(&[1.0f64, 2.0, -1.0, 0.5]).view([2, 2]);
/// let h = batch_hessian_of(|x: &Tensor| x.pow_tensor_scalar(3).sum_dim_intlist(1, false, Kind::Double), &x, &JacobianOptions::default())?;
/// assert_eq!(h.size(), [2, 2, 2]);
/// assert_eq!(Vec::<f64>::try_from(h.flatten(0, -1)).unwrap(), [6.0, 0.0, 0.0, 12.0, -6.0, 0.0, 0.0, 3.0]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn batch_hessian_of<F, O>(u: F, x: &Tensor, opts: &JacobianOptions) -> Result<Tensor>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    Ok(nested_hessian("batch_hessian_of", u, x, opts)?.2)
}

/// `(u(x), ∇u, H)` by nested reverse mode: [`batch_hessian_of`] with the value and gradient;
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
            .strategy(strategy_for(opts, x.device()))
            .strict(false)
            .check_independence(false);
        let h = batch_jacobian(&g, &xg, &inner)?;
        if opts.check_independence {
            crate::independence::check_hessian(what, &y, &xg, &g, Some(&h))?;
        }
        Ok((y, g, h))
    })
}

/// The Laplacian of a closure per sample, shape `[B]`: `Δu[b] = Σ_i ∂²u(x)[b]/∂x[b, i]²`, the
/// trace of [`batch_hessian_of`] — `vmap(hessian(u))(x).diagonal(...).sum(-1)` in PyTorch.
///
/// With [`Strategy::Auto`] (the default) it is computed in **one forward pass by collapsed
/// Taylor mode** ([`crate::laplacian`]: `u` runs once, carrying `n` first-order coefficients and
/// one summed second-order coefficient through each op — faster than PyTorch's autograd loop,
/// `vmap(hessian)` and jet-for-pytorch, docs/benchmarks.md), falling back to nested reverse mode
/// for a closure with an op that has no collapsed rule. An explicit strategy
/// ([`Strategy::RowLoop`], [`Strategy::Batched`]) runs nested reverse mode, PyTorch's loop:
/// `∇u` with create_graph, then the per-sample Jacobian of `∇u` with that strategy (the row loop
/// never forms `H`: pass `i` keeps only its diagonal element). For `u` and `∇u` beside `Δu`,
/// weighted Laplacians `tr(σσᵀ∇²u)` and stochastic estimates, use [`crate::Laplacian`].
///
/// With `opts.create_graph` the result is differentiable: a PINN loss `‖Δu − f‖²` reaches the
/// weights of `u`.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{laplacian_of, JacobianOptions, Strategy};
/// // u(x) = ‖x‖⁴ per sample in ℝ²: Δu = 16 ‖x‖²
/// let x = Tensor::from_slice(&[1.0f64, 2.0, 0.5, 0.0]).view([2, 2]);
/// let u = |x: &Tensor| x.square().sum_dim_intlist(1, false, Kind::Double).square();
/// let lap = laplacian_of(u, &x, &JacobianOptions::default())?; // collapsed Taylor mode
/// assert_eq!(Vec::<f64>::try_from(lap).unwrap(), [80.0, 4.0]);
/// let nested = laplacian_of(u, &x, &JacobianOptions::default().strategy(Strategy::RowLoop))?;
/// assert_eq!(Vec::<f64>::try_from(nested).unwrap(), [80.0, 4.0]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn laplacian_of<F, O>(u: F, x: &Tensor, opts: &JacobianOptions) -> Result<Tensor>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    if opts.strategy == Strategy::Auto {
        return Ok(crate::laplacian::Laplacian::new()
            .create_graph(opts.create_graph)
            .check_independence(opts.check_independence)
            .compute(u, x)?
            .laplacian);
    }
    Ok(nested_laplacian("laplacian_of", u, x, opts)?.2)
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
        let strategy = strategy_for(opts, x.device());
        if strategy != Strategy::RowLoop {
            let inner = opts
                .strategy(strategy)
                .strict(false)
                .check_independence(false);
            let h = batch_jacobian(&g, &xg, &inner)?.f_reshape([b, n, n])?;
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
