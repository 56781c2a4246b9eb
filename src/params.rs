//! Jacobians with respect to a model's parameters, and per-sample gradients.
//!
//! For an output `y` (`[*out]`) of a model with parameters `θ = (θ_1, …, θ_P)`,
//!
//! ```text
//! J_p[i..., j...] = ∂y[i...]/∂θ_p[j...]          one block [*out, *θ_p] per parameter
//! ```
//!
//! and, for a vector of per-sample losses `ℓ = [B]`, the per-sample gradients are the rows of that
//! Jacobian: `G_p[b] = ∂ℓ_b/∂θ_p`, `[B, *θ_p]` — PyTorch's
//! `torch.func.vmap(torch.func.grad(loss_of_params))` over `functional_call`, the differential
//! privacy and influence-function use case. With the native engine both are one batched
//! backward pass over the caller's own graph (no functional rewrite of the model): the `B` rows
//! of the identity as cotangents.
//!
//! Per-sample gradients assume the samples do not interact in the forward pass (no batch norm in
//! training mode), as `vmap` does.

use tch::{nn, Tensor};

use crate::error::{Error, Result};
use crate::jacobian::jacobian_with;
use crate::strategy::JacobianOptions;

/// The trainable variables of a `VarStore` as `(name, tensor)` pairs, sorted by name (the
/// tensors are shallow clones: gradients reach the variables).
///
/// ```
/// use tch::{nn, Device};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let _layer = nn::linear(vs.root() / "fc", 3, 2, Default::default());
/// let names: Vec<String> = tch_jacobian::trainable_parameters(&vs).into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["fc.bias", "fc.weight"]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn trainable_parameters(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// `J_p = ∂y/∂θ_p` for every named parameter, `[*y.shape, *θ_p.shape]` each, in `params`'
/// order — [`jacobian_with`] with the parameters as the inputs (any strategy that needs no
/// closure; `Auto` is one batched pass). Errors name the parameter.
///
/// ```
/// use tch::{nn, nn::Module, Device, Kind, Tensor};
/// use tch_jacobian::{parameter_jacobian, trainable_parameters, JacobianOptions};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let layer = nn::linear(vs.root() / "fc", 3, 2, Default::default());
/// let y = layer.forward(&Tensor::ones([3], (Kind::Float, Device::Cpu))); // [2]
/// let js = parameter_jacobian(&y, &trainable_parameters(&vs), &JacobianOptions::default())?;
/// assert_eq!(js[0].0, "fc.bias");
/// assert_eq!(js[0].1.size(), [2, 2]); // ∂y/∂b = I
/// assert_eq!(js[1].1.size(), [2, 2, 3]); // ∂y_i/∂W_jk = δ_ij x_k
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn parameter_jacobian(
    y: &Tensor,
    params: &[(String, Tensor)],
    opts: &JacobianOptions,
) -> Result<Vec<(String, Tensor)>> {
    if params.is_empty() {
        return Err(Error::InvalidArgument(
            "no parameters: params is empty (a VarStore without trainable variables?)".into(),
        ));
    }
    let xs: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
    let blocks = jacobian_with(y, &xs, opts).map_err(|e| name_inputs(e, params))?;
    Ok(params.iter().map(|(n, _)| n.clone()).zip(blocks).collect())
}

/// Per-sample gradients: for per-sample losses `ℓ = [B]` (e.g. a loss with `reduction = none`),
/// `G_p[b] = ∂ℓ_b/∂θ_p`, `[B, *θ_p.shape]` for every named parameter — one batched backward pass
/// with the native engine. Equal to `torch.func.vmap(grad(...))` over `functional_call` when the
/// samples do not interact.
///
/// Cost: the pass runs the caller's batched graph once per sample row (`B` cotangents), so a
/// weight's gradient is formed over the whole batch for every row — `B` times the arithmetic of
/// `vmap(grad)`, which re-runs the model per sample. Measured (2-core CPU, f32, B = 64, a
/// 784 → 64 → 10 MLP): 1.75 ms against 1.32 ms for `vmap(grad)` (1.33×); with
/// `cross_entropy` 2.15 ms, since its `nll_loss_backward` has no batching rule (write the loss as
/// `-log_softmax(logits).gather(t)` for the fast path).
///
/// ```
/// use tch::{nn, nn::Module, Device, Kind, Tensor};
/// use tch_jacobian::{per_sample_gradients, trainable_parameters, JacobianOptions};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let layer = nn::linear(vs.root() / "fc", 3, 1, Default::default());
/// let x = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
/// let losses = layer.forward(&x).squeeze_dim(1).square(); // [5]
/// let params = trainable_parameters(&vs);
/// let gs = per_sample_gradients(&losses, &params, &JacobianOptions::default())?;
/// assert_eq!(gs[1].1.size(), [5, 1, 3]); // fc.weight, one gradient per sample
/// // Their sum is the gradient of the summed loss.
/// let total = Tensor::run_backward(&[losses.sum(Kind::Float)], &[&params[1].1], true, false);
/// assert!(gs[1].1.sum_dim_intlist(0, false, Kind::Float).allclose(&total[0], 1e-5, 1e-6, false));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn per_sample_gradients(
    losses: &Tensor,
    params: &[(String, Tensor)],
    opts: &JacobianOptions,
) -> Result<Vec<(String, Tensor)>> {
    if losses.dim() != 1 {
        return Err(Error::Shape(format!(
            "per-sample gradients need one loss per sample, a vector [B]; got losses of shape {:?} (use reduction = none)",
            losses.size()
        )));
    }
    parameter_jacobian(losses, params, opts)
}

/// `input k` in an error message becomes the parameter's name.
fn name_inputs(e: Error, params: &[(String, Tensor)]) -> Error {
    match e {
        Error::NoGrad { what, shape, kind } => Error::NoGrad {
            what: rename(&what, params),
            shape,
            kind,
        },
        Error::NotConnected {
            output,
            input,
            detail,
        } => Error::NotConnected {
            output,
            detail: detail.replace(&input, &rename(&input, params)),
            input: rename(&input, params),
        },
        other => other,
    }
}

/// `input 3` (or `x` for a single input) → `parameter fc.weight`.
fn rename(what: &str, params: &[(String, Tensor)]) -> String {
    let index = match what.strip_prefix("input ") {
        Some(k) => k.parse::<usize>().ok(),
        None if what == "x" && params.len() == 1 => Some(0),
        None => None,
    };
    match index.and_then(|k| params.get(k)) {
        Some((name, _)) => format!("parameter {name}"),
        None => what.to_string(),
    }
}
