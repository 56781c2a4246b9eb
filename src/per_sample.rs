//! Per-sample Jacobians over a batch: [`per_sample_jacobian`], [`per_sample_jacobian_of`] and
//! [`check_sample_independence`].
//!
//! For `y` of shape `[B, *out]` computed from `x` of shape `[B, *in]` sample by sample,
//!
//! ```text
//! J[b, i..., j...] = ∂y[b, i...] / ∂x[b, j...]        shape [B, *out, *in]
//! ```
//!
//! — PyTorch's `torch.func.vmap(torch.func.jacrev(f))(x)`. Because sample `b`'s outputs depend
//! only on sample `b`'s inputs, one backward pass of `Σ_b y[b, i]` yields row `i` of every
//! sample's Jacobian at once: the cost is that of one Jacobian, not `B` of them.
//!
//! **Assumption: samples do not interact.** Batch norm in training mode, a softmax over the batch
//! or any reduction across dimension 0 breaks it, and the result is then silently wrong (it
//! sums cross-sample terms). [`check_sample_independence`] detects such models in one backward
//! pass.

use tch::Tensor;

use crate::autograd::{check_float, check_input, check_same_device, input_names, Names};
use crate::closure::FnOutput;
use crate::engine;
use crate::error::{Error, Result};
use crate::jacobian::{closure_jacobian, with_aux, JacobianOutput};
#[cfg(doc)]
use crate::strategy::Strategy;
use crate::strategy::{JacobianOptions, Work};

fn check_batch(y: &Tensor, x: &Tensor, y_name: &str) -> Result<i64> {
    let (ys, xs) = (y.size(), x.size());
    if ys.is_empty() || xs.is_empty() {
        return Err(Error::Shape(format!(
            "batch Jacobians need a leading batch dimension: {y_name} has shape {ys:?} and x has shape {xs:?}"
        )));
    }
    if ys[0] != xs[0] {
        return Err(Error::Shape(format!(
            "batch sizes differ: {y_name} has shape {ys:?} (batch {}) but x has shape {xs:?} (batch {})",
            ys[0], xs[0]
        )));
    }
    Ok(ys[0])
}

/// `[B, *out, *in]` from a `[B, m, n]` block.
fn unflatten(block: &Tensor, y: &[i64], x: &[i64]) -> Result<Tensor> {
    let shape: Vec<i64> = y.iter().chain(&x[1..]).copied().collect();
    Ok(block.f_reshape(shape.as_slice())?)
}

fn empty(y: &[i64], x: &Tensor) -> Result<Tensor> {
    let shape: Vec<i64> = y.iter().chain(&x.size()[1..]).copied().collect();
    Ok(Tensor::f_zeros(shape.as_slice(), (x.kind(), x.device()))?)
}

/// Per-sample Jacobians of `y: [B, *out]` with respect to `x: [B, *in]`, shape
/// `[B, *out, *in]`: `J[b] = ∂y[b]/∂x[b]`.
///
/// Strategies: [`Strategy::Batched`] (one batched backward pass over all rows of every sample;
/// needs the native engine), [`Strategy::RowLoop`] (one backward pass per output element of a
/// sample, over the whole batch), [`Strategy::Forward`] (column by column, one per input element
/// of a sample without the engine) or [`Strategy::Auto`], which picks `Batched` when the engine
/// is built (`Forward` for tall Jacobians on the CPU) and `RowLoop` or `Forward` without it — the
/// rules are in [`Strategy::resolve`]. [`Strategy::Vectorized`] and
/// [`Strategy::VectorizedForward`] need the function ([`per_sample_jacobian_of`]).
/// See the module docs for the no-interaction assumption.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{per_sample_jacobian, JacobianOptions};
///
/// let w = Tensor::randn([5, 3], (Kind::Double, tch::Device::Cpu));
/// let x = Tensor::randn([8, 3], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
/// let y = x.matmul(&w.tr()).sigmoid(); // [8, 5]
/// let j = per_sample_jacobian(&y, &x, &JacobianOptions::default())?; // [8, 5, 3]
/// let expected = (&y * (1f64 - &y)).unsqueeze(2) * w.unsqueeze(0);
/// assert!(j.allclose(&expected, 1e-12, 1e-12, false));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn per_sample_jacobian(y: &Tensor, x: &Tensor, opts: &JacobianOptions) -> Result<Tensor> {
    opts.refuse_randomness("per_sample_jacobian")?;
    crate::autograd::grad_mode_on(|| {
        check_float(y, "y")?;
        check_input(x, "x")?;
        check_same_device(y, "y", x, "x")?;
        let b = check_batch(y, x, "y")?;
        if b == 0 || y.numel() == 0 {
            return empty(&y.size(), x);
        }
        let (m, n) = (y.numel() / b as usize, x.numel() / b as usize);
        let names_v = input_names(1);
        let names = Names {
            output: "y",
            inputs: &names_v,
        };
        let y2 = engine::rows_view(y, Some(b))?;
        let work = Work::of(y, m, n, b as usize, false);
        let strategy = opts.strategy.validate()?.resolve_for(&work);
        let instead = "per_sample_jacobian_of(f, x, opts)";
        let block = engine::run(strategy, &work, &y2, &[x], None, opts, names, instead)?.remove(0);
        if opts.check_independence {
            crate::independence::check_jacobian("per_sample_jacobian", &y2, x, &block)?;
        }
        unflatten(&block, &y.size(), &x.size())
    })
}

/// Per-sample Jacobians of a closure over a batch, `J[b] = ∂f(x)[b]/∂x[b]`, shape
/// `[B, *out, *in]` — PyTorch's `torch.func.vmap(torch.func.jacrev(f))(x)`.
///
/// `f` maps `[B, *in]` to `[B, *out]` sample by sample. With [`Strategy::Vectorized`] (or
/// [`Strategy::VectorizedForward`]) it is also called on `[B·c, *in]` (each sample repeated
/// `c` times) and must return `[B·c, *out]`; a different leading size is an
/// [`Error::Contract`].
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{per_sample_jacobian_of, JacobianOptions, Strategy};
///
/// let w = Tensor::randn([5, 3], (Kind::Double, tch::Device::Cpu));
/// let f = |x: &Tensor| x.matmul(&w.tr()).tanh();
/// let x = Tensor::randn([8, 3], (Kind::Double, tch::Device::Cpu));
/// let opts = JacobianOptions::default().strategy(Strategy::Vectorized { chunk_size: None });
/// let j = per_sample_jacobian_of(f, &x, &opts)?;
/// let y = f(&x);
/// let expected = (1f64 - y.square()).unsqueeze(2) * w.unsqueeze(0);
/// assert!(j.allclose(&expected, 1e-12, 1e-12, false));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn per_sample_jacobian_of<F, O>(f: F, x: &Tensor, opts: &JacobianOptions) -> Result<Tensor>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    opts.refuse_randomness("per_sample_jacobian_of")?;
    crate::autograd::grad_mode_on(|| {
        let call = |xr: &Tensor| crate::closure::call_guarded(|| f(xr).into_output());
        let samples = |y: &Tensor| Ok(Some(check_batch(y, x, "f(x)")?));
        let (_, y, block) = closure_jacobian(&call, x, opts, samples)?;
        unflatten(&block, &y.size(), &x.size())
    })
}

/// Per-sample Jacobians of a closure with its value and auxiliary output — [`per_sample_jacobian_of`]
/// as [`jacobian_of_aux`](crate::jacobian_of_aux) is to [`jacobian_of`](crate::jacobian_of):
/// `vmap(jacrev(f, has_aux=True))(x)` plus the value.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{per_sample_jacobian_of_aux, JacobianOptions};
/// let x = Tensor::from_slice(&[1.0f64, 2.0, 3.0]).view([3, 1]);
/// let out = per_sample_jacobian_of_aux(|x: &Tensor| (x.sin(), "aux"), &x, &JacobianOptions::default())?;
/// assert_eq!(out.jacobian.size(), [3, 1, 1]); // J[b] = cos(x_b)
/// assert!((out.jacobian.double_value(&[1, 0, 0]) - 2f64.cos()).abs() < 1e-15);
/// assert_eq!((out.value.size(), out.aux), (vec![3, 1], "aux"));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn per_sample_jacobian_of_aux<F, O, A>(
    f: F,
    x: &Tensor,
    opts: &JacobianOptions,
) -> Result<JacobianOutput<A>>
where
    F: Fn(&Tensor) -> (O, A),
    O: FnOutput,
{
    opts.refuse_randomness("per_sample_jacobian_of_aux")?;
    crate::autograd::grad_mode_on(|| {
        with_aux(f, opts, |call| {
            let samples = |y: &Tensor| Ok(Some(check_batch(y, x, "f(x)")?));
            let (_, y, block) = closure_jacobian(call, x, opts, samples)?;
            let j = unflatten(&block, &y.size(), &x.size())?;
            Ok((j, y))
        })
    })
}

/// Checks the no-interaction assumption of [`per_sample_jacobian`] on a graph you built: returns
/// [`Error::Contract`] when any sample's outputs depend on another sample's inputs.
///
/// Two backward passes, with cotangents `v` (random) and `c ⊙ v` (`c_b` a random scale per
/// sample): independence gives `∂(c⊙v·y)/∂x[b] = c_b ∂(v·y)/∂x[b]` for every sample
/// ([`crate::independence`](mod@crate::independence)). Batch norm in training mode fails it.
/// The per-sample functions run the same check themselves (one pass, against their result)
/// unless [`JacobianOptions::check_independence`] is off.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::check_sample_independence;
///
/// let x = Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
/// assert!(check_sample_independence(&x.sin(), &x).is_ok());
/// let mixed = &x - x.mean_dim(0, true, Kind::Float); // centres over the batch
/// assert!(check_sample_independence(&mixed, &x).is_err());
/// // samples ≥ 1 mixed among themselves only: found too
/// let tail = Tensor::cat(&[x.narrow(0, 0, 1), x.narrow(0, 1, 3).cumsum(0, Kind::Float)], 0);
/// assert!(check_sample_independence(&tail, &x).is_err());
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn check_sample_independence(y: &Tensor, x: &Tensor) -> Result<()> {
    crate::autograd::grad_mode_on(|| {
        check_float(y, "y")?;
        check_input(x, "x")?;
        check_same_device(y, "y", x, "x")?;
        check_batch(y, x, "y")?;
        crate::independence::check_scaled("check_sample_independence", y, x, None, None)
    })
}
