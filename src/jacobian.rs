//! Jacobians of tensors already in an autograd graph ([`jacobian`], [`jacobian_with`]) and of
//! closures ([`jacobian_of`]).
//!
//! For an output `y` of shape `[*out]` (m elements) and an input `x` of shape `[*in]`
//! (n elements), the Jacobian is
//!
//! ```text
//! J[i..., j...] = ∂y[i...] / ∂x[j...]        shape [*out, *in]   (PyTorch's convention)
//! ```
//!
//! Every call keeps the caller's graph (`keep_graph`), so a loss built from `y` can still be
//! back-propagated afterwards, and never touches `x.grad()`.

use tch::Tensor;

use crate::autograd::{check_float, check_input, check_same_device, input_names, Names};
use crate::closure::{prepare_input, FnOutput};
use crate::engine::{self, Closure};
use crate::error::{Error, Result};
use crate::strategy::{JacobianOptions, Strategy, Work};

/// The notebook's Jacobian: `J[i, j] = ∂y_i/∂x_j`, one `run_backward(y_i)` per output element
/// with the graph kept — exactly
///
/// ```python
/// for i in range(m): J[i] = grad(y[i], x, retain_graph=True)[0]
/// ```
///
/// Returns `J` of shape `[*y.size(), *x.size()]`, on `x`'s device with `x`'s dtype. The
/// caller's graph stays usable. This two-argument form is *strict*: an output that is not
/// connected to `x` is an error (use [`jacobian_with`] for PyTorch's non-strict zeros, several
/// inputs, `create_graph` or another strategy).
///
/// # Errors
/// [`Error::NoGrad`] when `x` does not require grad, [`Error::NotConnected`] when `y` does not
/// depend on `x`, [`Error::Kind`] for integer/bool dtypes, [`Error::Device`] when `y` and `x`
/// are on different devices.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::jacobian;
///
/// let w = Tensor::from_slice(&[0.1f32, 0.3, 0.6, 1.5, 0.3, 4.1, 0.2, -0.3, -0.7]).view([3, 3]);
/// let x = Tensor::from_slice(&[2.0f32, 1.0, 1.0]).set_requires_grad(true);
/// let y = w.matmul(&x).sigmoid();
/// let j = jacobian(&y, &x)?;
/// assert_eq!(j.size(), [3, 3]);
/// assert!((j.double_value(&[0, 0]) - 0.018736986).abs() < 1e-7);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn jacobian(y: &Tensor, x: &Tensor) -> Result<Tensor> {
    crate::autograd::grad_mode_on(|| {
        let opts = JacobianOptions::default()
            .strict(true)
            .strategy(Strategy::RowLoop);
        Ok(jacobian_with(y, &[x], &opts)?.remove(0))
    })
}

/// Jacobians of `y` with respect to several inputs, one block `[*out, *in_k]` per input, in
/// order, with [`JacobianOptions`] (`create_graph`, `strict`, strategy).
///
/// `J_k[i..., j...] = ∂y[i...]/∂xs[k][j...]`. Strategies: [`Strategy::Batched`] (one batched
/// backward pass through `y`'s graph; needs the native engine), [`Strategy::RowLoop`],
/// [`Strategy::Forward`] or [`Strategy::Auto`], which picks `Batched` when the engine is built
/// (`Forward` for tall Jacobians on the CPU) and `RowLoop` or `Forward` without it — the rules
/// are in [`Strategy::resolve`]. [`Strategy::Vectorized`] and [`Strategy::VectorizedForward`]
/// need the function and are only offered by [`jacobian_of`].
///
/// Non-strict (PyTorch's default): an input that `y` does not reach gets a zero block; strict:
/// an [`Error::NotConnected`] naming the input.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{jacobian_with, JacobianOptions};
///
/// let a = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
/// let b = Tensor::from_slice(&[3.0f64]).set_requires_grad(true);
/// let unused = Tensor::zeros([2, 2], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
/// let y = &a * &b; // [2]
/// let js = jacobian_with(&y, &[&a, &b, &unused], &JacobianOptions::default())?;
/// assert_eq!(js[0].size(), [2, 2]); // diag(b)
/// assert_eq!(js[1].size(), [2, 1]); // a
/// assert_eq!(js[2].size(), [2, 2, 2]); // zeros
/// assert_eq!(js[1].double_value(&[1, 0]), 2.0);
/// assert!(jacobian_with(&y, &[&unused], &JacobianOptions::default().strict(true)).is_err());
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn jacobian_with(y: &Tensor, xs: &[&Tensor], opts: &JacobianOptions) -> Result<Vec<Tensor>> {
    opts.refuse_per_sample_options("jacobian_with")?;
    crate::autograd::grad_mode_on(|| {
        let names_v = input_names(xs.len());
        let names = Names {
            output: "y",
            inputs: &names_v,
        };
        check_float(y, "y")?;
        if xs.is_empty() {
            return Err(Error::InvalidArgument(
                "jacobian_with needs at least one input; xs is empty".into(),
            ));
        }
        for (x, name) in xs.iter().zip(&names_v) {
            check_input(x, name)?;
            check_same_device(y, "y", x, name)?;
        }
        let m = y.numel();
        let n: usize = xs.iter().map(|x| x.numel()).sum();
        let y2 = engine::rows_view(y, None)?;
        let work = Work::of(y, m, n, 1, false);
        let strategy = opts.strategy.validate()?.resolve_for(&work);
        let instead = "jacobian_of(f, x, opts) instead of jacobian_with(y, xs, opts)";
        let blocks = engine::run(strategy, &work, &y2, xs, None, opts, names, instead)?;
        blocks
            .iter()
            .zip(xs)
            .map(|(blk, x)| unflatten(blk, &y.size(), &x.size()))
            .collect()
    })
}

/// Reshapes a `[B = 1, m, n]` block to `[*out, *in]`.
fn unflatten(block: &Tensor, out: &[i64], inp: &[i64]) -> Result<Tensor> {
    let shape: Vec<i64> = out.iter().chain(inp).copied().collect();
    Ok(block.f_reshape(shape.as_slice())?)
}

/// Jacobian of a closure, `J = ∂f(x)/∂x` of shape `[*out, *in]`, with any [`Strategy`]
/// (PyTorch's `torch.autograd.functional.jacobian(f, x)` / `torch.func.jacrev(f)(x)`).
///
/// `x` need not require grad (it is prepared like PyTorch does). With
/// [`Strategy::Vectorized`] (and with [`Strategy::Auto`] when it picks it) `f` is also called on
/// `x` stacked `c` times along a new leading dimension and must act row-wise on it
/// (`f(X)[r] = f(X[r])`, as `tch::nn` layers do); a mismatch of the first row with `f(x)` is an
/// [`Error::Contract`]. Use [`Strategy::RowLoop`] or [`Strategy::Forward`] for other closures.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{jacobian_of, JacobianOptions, Strategy};
///
/// let w = Tensor::randn([4, 3], (Kind::Double, tch::Device::Cpu));
/// let f = |x: &Tensor| x.matmul(&w.tr()).tanh(); // works on [3] and on [c, 3]
/// let x = Tensor::randn([3], (Kind::Double, tch::Device::Cpu));
/// let opts = JacobianOptions::default().strategy(Strategy::Vectorized { chunk_size: Some(2) });
/// let j = jacobian_of(f, &x, &opts)?;
/// let expected = (1f64 - f(&x).square()).unsqueeze(1) * &w; // diag(1f64 - tanh²) W
/// assert!(j.allclose(&expected, 1e-12, 1e-12, false));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn jacobian_of<F, O>(f: F, x: &Tensor, opts: &JacobianOptions) -> Result<Tensor>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    opts.refuse_per_sample_options("jacobian_of")?;
    crate::autograd::grad_mode_on(|| {
        let call = |xr: &Tensor| crate::closure::call_guarded(|| f(xr).into_output());
        let (_, y, block) = closure_jacobian(&call, x, opts, |_| Ok(None))?;
        unflatten(&block, &y.size(), &x.size())
    })
}

/// What `jacobian_of` and `per_sample_jacobian_of` share: prepares `x`, evaluates `f` once, checks
/// its output, and runs the resolved strategy with the closure. `samples(y)` says how many
/// samples a batched call has (`None` for a plain Jacobian, and an error for bad shapes); an
/// empty batch or output gives an empty block.
/// Returns `x` prepared, `f(x)` and the `[B, m, n]` block (B = 1 for a plain Jacobian).
pub(crate) fn closure_jacobian(
    call: &dyn Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    opts: &JacobianOptions,
    samples: impl Fn(&Tensor) -> Result<Option<i64>>,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_float(x, "x")?;
    let strat = opts.strategy.validate()?;
    let xg = prepare_input(x, opts.create_graph)?;
    let y = call(&xg)?;
    check_float(&y, "f(x)")?;
    check_same_device(&y, "f(x)", x, "x")?;
    let batch = samples(&y)?;
    let b = batch.unwrap_or(1);
    let per_sample = |t: &Tensor| -> i64 {
        let dims = t.size();
        dims[batch.map_or(0, |_| 1)..].iter().product()
    };
    let (m, n) = (per_sample(&y), per_sample(x));
    if b == 0 || m == 0 {
        // An empty batch or output: an empty Jacobian, as in PyTorch.
        let zeros = Tensor::f_zeros([b, m, n], (x.kind(), x.device()))?;
        return Ok((xg, y, zeros));
    }
    let (m, n) = (m as usize, n as usize);
    let names_v = input_names(1);
    let names = Names {
        output: "f(x)",
        inputs: &names_v,
    };
    let y2 = engine::rows_view(&y, batch)?;
    let closure = Some(Closure {
        call,
        batched: batch.is_some(),
    });
    let work = Work::of(&y, m, n, b as usize, true);
    let strategy = strat.resolve_for(&work);
    let block = engine::run(strategy, &work, &y2, &[&xg], closure, opts, names, "")?.remove(0);
    if batch.is_some() && opts.check_independence {
        crate::independence::check_jacobian("per_sample_jacobian_of", &y2, &xg, &block)?;
    }
    Ok((xg, y, block))
}

/// Jacobians of several outputs with respect to several inputs, one block per pair:
/// `J[i][k] = ∂ys[i]/∂xs[k]`, shape `[*out_i, *in_k]` — `torch.autograd.functional.jacobian`
/// with a tuple of outputs and a tuple of inputs. Each output is one [`jacobian_with`] call
/// (one batched pass with the native engine), with `opts`' `strict` applied per pair.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{jacobians, JacobianOptions};
/// let a = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
/// let b = Tensor::from_slice(&[3.0f64]).set_requires_grad(true);
/// let (sum, prod) = (&a + &b, (&a * &b).sum(Kind::Double)); // [2], []
/// let js = jacobians(&[&sum, &prod], &[&a, &b], &JacobianOptions::default())?;
/// assert_eq!((js[0][0].size(), js[0][1].size()), (vec![2, 2], vec![2, 1]));
/// assert_eq!((js[1][0].size(), js[1][1].size()), (vec![2], vec![1]));
/// assert_eq!(Vec::<f64>::try_from(&js[1][0]).unwrap(), [3.0, 3.0]); // ∂(Σ a·b)/∂a = b
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn jacobians(
    ys: &[&Tensor],
    xs: &[&Tensor],
    opts: &JacobianOptions,
) -> Result<Vec<Vec<Tensor>>> {
    if ys.is_empty() {
        return Err(Error::InvalidArgument(
            "jacobians needs at least one output; ys is empty".into(),
        ));
    }
    ys.iter().map(|y| jacobian_with(y, xs, opts)).collect()
}

/// A closure's Jacobian together with its value and an auxiliary output: `f` returns
/// `(y, aux)`; the result is `J = ∂y/∂x` (`[*out, *in]`), `y` (computed once, by the same
/// forward pass; detached unless `create_graph`) and `aux` untouched — PyTorch's
/// `torch.func.jacrev(f, has_aux=True)` plus the value, JAX's `value_and_jacrev`.
///
/// With the replicated strategies `f` also runs on stacked copies; `aux` is the one from `f(x)`.
/// Without an auxiliary output, return `(y, ())`.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{jacobian_of_aux, JacobianOptions};
/// let x = Tensor::from_slice(&[1.0f64, 2.0]);
/// let f = |x: &Tensor| (x * x, x.sum(Kind::Double).double_value(&[]));
/// let out = jacobian_of_aux(f, &x, &JacobianOptions::default())?;
/// assert_eq!(Vec::<f64>::try_from(out.value).unwrap(), [1.0, 4.0]);
/// assert_eq!(out.aux, 3.0);
/// assert_eq!(Vec::<f64>::try_from(out.jacobian.flatten(0, -1)).unwrap(), [2.0, 0.0, 0.0, 4.0]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn jacobian_of_aux<F, O, A>(
    f: F,
    x: &Tensor,
    opts: &JacobianOptions,
) -> Result<JacobianOutput<A>>
where
    F: Fn(&Tensor) -> (O, A),
    O: FnOutput,
{
    opts.refuse_per_sample_options("jacobian_of_aux")?;
    crate::autograd::grad_mode_on(|| {
        with_aux(f, opts, |call| {
            let (_, y, block) = closure_jacobian(call, x, opts, |_| Ok(None))?;
            let j = unflatten(&block, &y.size(), &x.size())?;
            Ok((j, y))
        })
    })
}

/// What [`jacobian_of_aux`] and [`crate::per_sample_jacobian_of_aux`] return.
#[derive(Debug)]
#[non_exhaustive]
pub struct JacobianOutput<A> {
    /// The Jacobian.
    pub jacobian: Tensor,
    /// `f(x)`, from the same forward pass.
    pub value: Tensor,
    /// The closure's auxiliary output for `x`.
    pub aux: A,
}

/// 0.1's name for [`JacobianOutput`].
#[deprecated(since = "0.2.0", note = "renamed JacobianOutput")]
pub type WithValue<A> = JacobianOutput<A>;

/// Runs `jacobian(call)` with a closure that keeps `f`'s first auxiliary output (the one for `x`
/// itself; the replicated strategies call `f` again on stacked copies) and returns it with `J`
/// and the value.
pub(crate) fn with_aux<F, O, A>(
    f: F,
    opts: &JacobianOptions,
    jacobian: impl FnOnce(&dyn Fn(&Tensor) -> Result<Tensor>) -> Result<(Tensor, Tensor)>,
) -> Result<JacobianOutput<A>>
where
    F: Fn(&Tensor) -> (O, A),
    O: FnOutput,
{
    let aux: std::cell::RefCell<Option<A>> = std::cell::RefCell::new(None);
    let call = |xr: &Tensor| -> Result<Tensor> {
        let (y, a) = crate::closure::call_guarded(|| Ok(f(xr)))?;
        let mut slot = aux.borrow_mut();
        if slot.is_none() {
            *slot = Some(a);
        }
        y.into_output()
    };
    let (jacobian, y) = jacobian(&call)?;
    let value = if opts.create_graph { y } else { y.f_detach()? };
    let aux = aux
        .into_inner()
        .ok_or_else(|| Error::Contract("f was never called".into()))?;
    Ok(JacobianOutput {
        jacobian,
        value,
        aux,
    })
}
