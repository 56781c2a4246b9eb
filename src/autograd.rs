//! The one place that runs a backward pass.
//!
//! Every strategy, the batch Jacobian, `vjp`/`jvp`/`hvp`/`hessian` and the penalties compute
//! vector-Jacobian products through [`vjp_into`]: a single `Tensor::run_backward` with the
//! graph kept (so the caller's graph stays usable), optional `create_graph`, and PyTorch's
//! `strict` rules for inputs that the output does not reach. Argument checks shared by the
//! public functions live here too.
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Is `kind` a dtype autograd can differentiate?
pub(crate) fn is_differentiable_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half
            | Kind::Float
            | Kind::Double
            | Kind::BFloat16
            | Kind::ComplexHalf
            | Kind::ComplexFloat
            | Kind::ComplexDouble
    )
}

/// Checks that `t` has a floating dtype; names it in the error.
pub(crate) fn check_float(t: &Tensor, what: &str) -> Result<Kind> {
    let kind = t.f_kind()?;
    if !is_differentiable_kind(kind) {
        return Err(Error::Kind(format!(
            "{what} has dtype {kind:?} (shape {:?}); Jacobians need a floating-point dtype (Float, Double, Half, BFloat16)",
            t.size()
        )));
    }
    Ok(kind)
}

/// Checks that `t` is a floating tensor that requires grad.
pub(crate) fn check_input(t: &Tensor, what: &str) -> Result<()> {
    let kind = check_float(t, what)?;
    if !t.requires_grad() {
        return Err(Error::NoGrad {
            what: what.to_string(),
            shape: t.size(),
            kind,
        });
    }
    Ok(())
}

/// Checks that `a` and `b` live on the same device.
pub(crate) fn check_same_device(
    a: &Tensor,
    a_name: &str,
    b: &Tensor,
    b_name: &str,
) -> Result<Device> {
    let (da, db) = (a.device(), b.device());
    if da != db {
        return Err(Error::Device(format!(
            "{a_name} (shape {:?}) is on {da:?} but {b_name} (shape {:?}) is on {db:?}; move them to one device",
            a.size(),
            b.size()
        )));
    }
    Ok(da)
}

/// Checks that `v` has exactly `shape`.
pub(crate) fn check_shape(v: &Tensor, v_name: &str, shape: &[i64], of: &str) -> Result<()> {
    if v.size() != shape {
        return Err(Error::Shape(format!(
            "{v_name} has shape {:?} but {of} has shape {shape:?}; they must be equal",
            v.size()
        )));
    }
    Ok(())
}

/// Names used in error messages for one call.
#[derive(Clone, Copy)]
pub(crate) struct Names<'a> {
    pub output: &'a str,
    pub inputs: &'a [String],
}

impl Names<'_> {
    pub(crate) fn input(&self, i: usize) -> String {
        self.inputs
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("input {i}"))
    }
}

/// `x`, or `input 0`, `input 1`, … for several inputs.
pub(crate) fn input_names(n: usize) -> Vec<String> {
    if n == 1 {
        vec!["x".to_string()]
    } else {
        (0..n).map(|i| format!("input {i}")).collect()
    }
}

/// Vector-Jacobian products: `∂ root / ∂ inputs[k]` for every `k`, where `root` is seeded with
/// ones (so a non-scalar `root` yields the gradient of `root.sum()`).
///
/// The graph is always kept. An input that `root` does not reach gets zeros of its shape, or,
/// with `strict`, a [`Error::NotConnected`] — PyTorch's `strict=True` rule, including its
/// create_graph variant (a derivative that is constant in the inputs is refused).
pub(crate) fn vjp_into(
    root: &Tensor,
    inputs: &[&Tensor],
    create_graph: bool,
    strict: bool,
    names: Names<'_>,
) -> Result<Vec<Tensor>> {
    let grads: Vec<Option<Tensor>> = if root.requires_grad() {
        Tensor::f_run_backward(&[root], inputs, true, create_graph)?
            .into_iter()
            .map(|g| g.defined().then_some(g))
            .collect()
    } else {
        inputs.iter().map(|_| None).collect()
    };
    settle(grads, inputs, root, create_graph, strict, names, |x| {
        Ok(x.f_zeros_like()?)
    })
}

/// Batched vector-Jacobian products through the native engine: for cotangents
/// `v = [c, *root.shape]`, `G_k[r] = v[r]ᵀ ∂root/∂inputs[k]`, shape `[c, *inputs[k].shape]`, all
/// `c` rows in one backward pass (see [`crate::native`]). Same graph and `strict` rules as
/// [`vjp_into`].
pub(crate) fn batched_vjp_into(
    root: &Tensor,
    inputs: &[&Tensor],
    v: &Tensor,
    pass: Pass<'_>,
) -> Result<Vec<Tensor>> {
    let c = v.size().first().copied().unwrap_or(0);
    let grads: Vec<Option<Tensor>> = if root.requires_grad() {
        crate::native::batched_vjp(root, inputs, v, pass.create_graph, pass.vmap_fallback)?
    } else {
        inputs.iter().map(|_| None).collect()
    };
    settle(
        grads,
        inputs,
        root,
        pass.create_graph,
        pass.strict,
        pass.names,
        |x| {
            let mut shape = vec![c];
            shape.extend(x.size());
            Ok(Tensor::f_zeros(shape.as_slice(), (x.kind(), x.device()))?)
        },
    )
}

/// Settings of one Jacobian computation, shared by its passes.
#[derive(Clone, Copy)]
pub(crate) struct Pass<'a> {
    pub create_graph: bool,
    pub strict: bool,
    pub vmap_fallback: bool,
    pub names: Names<'a>,
}

/// PyTorch's `strict` rules applied to the gradients of `root`: an undefined gradient is zeros
/// (`zeros(x)`) or, with `strict`, an error; with `strict` and `create_graph`, a gradient that
/// does not require grad is refused too.
fn settle(
    grads: Vec<Option<Tensor>>,
    inputs: &[&Tensor],
    root: &Tensor,
    create_graph: bool,
    strict: bool,
    names: Names<'_>,
    zeros: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    grads
        .into_iter()
        .zip(inputs)
        .enumerate()
        .map(|(k, (g, x))| match g {
            Some(g) => {
                if strict && create_graph && !g.requires_grad() {
                    return Err(Error::NotConnected {
                        output: names.output.to_string(),
                        input: names.input(k),
                        detail: "its derivative does not depend on the inputs, which strict mode refuses with create_graph=true".into(),
                    });
                }
                Ok(g)
            }
            None if strict => Err(Error::NotConnected {
                output: names.output.to_string(),
                input: names.input(k),
                detail: if root.requires_grad() {
                    format!("no gradient reaches {} (strict mode)", names.input(k))
                } else {
                    format!("{} does not require grad (strict mode)", names.output)
                },
            }),
            None => zeros(x),
        })
        .collect()
}
