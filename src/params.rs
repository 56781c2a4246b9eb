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
//!
//! Three doors: [`per_sample_gradients`] takes losses the caller already computed over the batch
//! (any model, no rewrite; `O(B²)` arithmetic, fine for small batches);
//! [`per_sample_gradients_of`] takes the loss of **one** sample as a closure of the parameters and
//! runs it under vmap(grad) (`O(B)`, PyTorch's own speed; the model is written against the
//! parameter tensors it is given); [`per_sample_gradients_of_module`] does the same for a
//! `tch::nn` model as it is usually built, by a `fn(&nn::Path) -> impl Module` (no rewrite). For
//! DP-SGD batches use one of the last two.

use tch::{nn, Tensor};

use crate::autograd::{check_float, check_same_device, input_names, vjp_into, Names, Pass};
use crate::error::{Error, Result};
use crate::jacobian::jacobian_with;
use crate::strategy::{JacobianOptions, Strategy};

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
    opts.refuse_per_sample_options("parameter_jacobian")?;
    crate::autograd::grad_mode_on(|| {
        if params.is_empty() {
            return Err(Error::InvalidArgument(
                "no parameters: params is empty (a VarStore without trainable variables?)".into(),
            ));
        }
        let xs: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
        let blocks = jacobian_with(y, &xs, opts).map_err(|e| name_inputs(e, params))?;
        Ok(params.iter().map(|(n, _)| n.clone()).zip(blocks).collect())
    })
}

/// Per-sample gradients: for per-sample losses `ℓ = [B]` (e.g. a loss with `reduction = none`),
/// `G_p[b] = ∂ℓ_b/∂θ_p`, `[B, *θ_p.shape]` for every named parameter — one batched backward pass
/// with the native engine. Equal to `torch.func.vmap(grad(...))` over `functional_call` when the
/// samples do not interact.
///
/// Cost: the pass runs the caller's batched graph once per sample row (`B` cotangents), so a
/// weight's gradient is formed over the whole batch for every row — `B` times the arithmetic of
/// `vmap(grad)`, which re-runs the model per sample: 2× `vmap(grad)` at B = 64 and far more at
/// DP-SGD sizes (docs/benchmarks.md). [`per_sample_gradients_of`] is the `O(B)` door.
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
    opts.refuse_per_sample_options("per_sample_gradients")?;
    crate::autograd::grad_mode_on(|| {
        if losses.dim() != 1 {
            return Err(Error::Shape(format!(
            "per-sample gradients need one loss per sample, a vector [B]; got losses of shape {:?} (use reduction = none)",
            losses.size()
        )));
        }
        parameter_jacobian(losses, params, opts)
    })
}

/// What [`per_sample_gradients_of`] returns (`#[non_exhaustive]`: fields may be added, so
/// destructure it with `..`).
#[derive(Debug)]
#[non_exhaustive]
pub struct PerSampleOutput {
    /// `(name, G_p)` with `G_p = [B, *θ_p.shape]`, in `params`' order.
    pub gradients: Vec<(String, Tensor)>,
    /// The per-sample losses, `[B]`.
    pub losses: Tensor,
}

/// 0.1's name for [`PerSampleOutput`].
#[deprecated(since = "0.2.0", note = "renamed PerSampleOutput")]
pub type PerSample = PerSampleOutput;

/// Per-sample gradients of a loss written for **one sample**, in `O(B)` — PyTorch's
/// `vmap(grad(lambda p, x: loss(functional_call(model, p, x))))`:
///
/// ```text
/// G_p[b] = ∂ loss(θ, x_b) / ∂θ_p        [B, *θ_p.shape], x_b = (inputs[0][b], inputs[1][b], …)
/// ```
///
/// `loss(params, sample)` gets the parameters (in `params`' order) and one sample of every input
/// (without the batch dimension) and returns that sample's scalar loss; it must build the model
/// from the tensors it is given (a `tch::nn` layer keeps its tensors in public fields, e.g.
/// `nn::Linear { ws, bs }`, so a layer can be used as `x.matmul(&p[0].tr()) + &p[1]`). With the
/// native engine it runs **once**, under functorch's vmap and grad transforms (`csrc/vmap_grad.cpp`):
/// every weight gradient is formed per sample. [`per_sample_gradients`] instead takes losses that
/// already exist, through the caller's batch graph, and forms each weight gradient over the whole
/// batch per sample (`O(B²)`): it wins only for small batches where the model is cheap; this one
/// for larger batches (measured at B = 64, 256 and 1024 against `vmap(grad)`: 0.65–2.27× on a
/// 2-core VM whose runs move by ±20 %, docs/benchmarks.md). Without the engine, or with [`Strategy::RowLoop`], the
/// closure runs once per sample (a loop of `B` backward passes).
///
/// The results are plain tensors (`create_graph` is refused); the parameters need not require
/// grad. Ops without a batching rule take libtorch's per-op vmap fallback, recorded by
/// [`crate::native::take_vmap_fallbacks`] (an error with `vmap_fallback(false)`); the usual losses
/// (cross-entropy / NLL, MSE, Huber, smooth L1) and norms have the crate's rules. A closure's error comes back as it is, a panic inside it as [`Error::Contract`], a
/// non-scalar loss as [`Error::Shape`]. Inputs must share their first dimension `B` (`B = 0`
/// gives empty gradients).
///
/// A clipped DP-SGD step (per-sample gradients clipped to norm `C`, summed, Gaussian noise):
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// use tch_jacobian::{per_sample_gradients_of, JacobianOptions, Result};
/// let o = (Kind::Float, Device::Cpu);
/// let (w, b) = (Tensor::randn([10, 784], o) * 0.03, Tensor::zeros([10], o));
/// let params = vec![("fc.weight".to_string(), w.shallow_clone()), ("fc.bias".to_string(), b.shallow_clone())];
/// let (x, t) = (Tensor::randn([256, 784], o), Tensor::randint(10, [256], (Kind::Int64, Device::Cpu)));
/// // The loss of one sample: x [784], t [] (scalar class index).
/// let loss = |p: &[Tensor], s: &[Tensor]| -> Result<Tensor> {
///     let logits = s[0].matmul(&p[0].tr()) + &p[1];
///     Ok(logits.log_softmax(0, Kind::Float).gather(0, &s[1].unsqueeze(0), false).neg().squeeze())
/// };
/// let out = per_sample_gradients_of(loss, &params, &[&x, &t], &JacobianOptions::default())?;
/// assert_eq!(out.gradients[0].1.size(), [256, 10, 784]);
/// let clip = 1.0;
/// let norms = out.gradients.iter()
///     .map(|(_, g)| g.flatten(1, -1).square().sum_dim_intlist(1, false, Kind::Float))
///     .fold(Tensor::zeros([256], o), |a, n| a + n)
///     .sqrt(); // per-sample gradient norm over all parameters
/// let scale = ((norms + 1e-6).reciprocal() * clip).clamp_max(1.0); // [256]
/// let sigma = 1.0;
/// for ((_, g), (_, p)) in out.gradients.iter().zip(&params) {
///     let shape: Vec<i64> = std::iter::once(256).chain(vec![1; p.dim()]).collect();
///     let clipped = (g * scale.view(shape.as_slice())).sum_dim_intlist(0, false, Kind::Float);
///     let noisy = (clipped + Tensor::randn_like(p) * (sigma * clip)) / 256.0;
///     tch::no_grad(|| p.shallow_clone().f_sub_(&(noisy * 0.1)))?; // SGD step, lr 0.1
/// }
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn per_sample_gradients_of<F>(
    loss: F,
    params: &[(String, Tensor)],
    inputs: &[&Tensor],
    opts: &JacobianOptions,
) -> Result<PerSampleOutput>
where
    F: Fn(&[Tensor], &[Tensor]) -> Result<Tensor>,
{
    opts.refuse_unread(
        "per_sample_gradients_of",
        &[("check_independence(false)", !opts.check_independence)],
    )?;
    crate::autograd::grad_mode_on(|| per_sample(&loss, params, inputs, opts))
}

/// [`per_sample_gradients_of`] for a `tch::nn` model as it is built, by a
/// `build: fn(&nn::Path) -> M` (no functional rewrite): `G_p[b] = ∂ loss(model_θ, x_b)/∂θ_p` for
/// every trainable variable `θ_p` of `vs` (in [`trainable_parameters`]' order), where `model_θ`
/// is `build` on a fresh `VarStore` whose variables take `vs`' values.
///
/// `loss(&model, sample)` gets the model and one sample of every input (without the batch
/// dimension) and returns that sample's scalar loss. Inside, `build` runs once per call under
/// the vmap and grad transforms (once per sample without the native engine or with
/// [`Strategy::RowLoop`]) and each variable is overwritten by the transformed parameter, so the
/// gradients are formed per sample in `O(B)` like `vmap(grad(functional_call(model, ...)))`. The
/// cost over [`per_sample_gradients_of`] is one model construction per call (its random
/// initialization, then a copy per variable) and the gradients of every variable: on the conv net
/// of docs/benchmarks.md 1.8× `per_sample_gradients_of` at B = 64, 1.4× at 256, 2.8× at 1024
/// (0.92–3.06× PyTorch's `vmap(grad)` of the conv weight alone). Random ops inside follow
/// [`JacobianOptions::randomness`]: by default each sample draws its own dropout mask
/// ([`Randomness::Different`](crate::Randomness::Different)); `Same` shares one mask across
/// the call; `Error` makes a random op of the loss an error. The model's construction always
/// draws its (overwritten) initial values once for the batch.
///
/// `build` must create the same variables (names and shapes) as the model behind `vs`: a
/// mismatch is an [`Error::Contract`] naming the variable. The other rules (errors, vmap
/// fallback, `create_graph`) are those of [`per_sample_gradients_of`].
///
/// ```
/// use tch::nn::{self, Module};
/// use tch::{Device, Kind, Tensor};
/// use tch_jacobian::{per_sample_gradients_of_module, JacobianOptions};
/// fn net(p: &nn::Path) -> impl Module {
///     nn::seq()
///         .add(nn::linear(p / "fc1", 784, 64, Default::default()))
///         .add_fn(|x| x.relu())
///         .add(nn::linear(p / "fc2", 64, 10, Default::default()))
/// }
/// let vs = nn::VarStore::new(Device::Cpu);
/// let model = net(&vs.root()); // the model you train
/// let x = Tensor::randn([32, 784], (Kind::Float, Device::Cpu));
/// let t = Tensor::randint(10, [32], (Kind::Int64, Device::Cpu));
/// let out = per_sample_gradients_of_module(
///     &vs,
///     net,
///     |m, s| Ok(m.forward(&s[0].unsqueeze(0)).cross_entropy_for_logits(&s[1].unsqueeze(0))),
///     &[&x, &t],
///     &JacobianOptions::default(),
/// )?;
/// let names: Vec<&str> = out.gradients.iter().map(|(n, _)| n.as_str()).collect();
/// assert_eq!(names, ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]);
/// assert_eq!(out.gradients[1].1.size(), [32, 64, 784]);
/// # let _ = model;
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn per_sample_gradients_of_module<M, B, L>(
    vs: &nn::VarStore,
    build: B,
    loss: L,
    inputs: &[&Tensor],
    opts: &JacobianOptions,
) -> Result<PerSampleOutput>
where
    B: Fn(&nn::Path) -> M,
    L: Fn(&M, &[Tensor]) -> Result<Tensor>,
{
    opts.refuse_unread(
        "per_sample_gradients_of_module",
        &[("check_independence(false)", !opts.check_independence)],
    )?;
    crate::autograd::grad_mode_on(|| {
        let params = trainable_parameters(vs);
        let device = vs.device();
        let kind = params.first().map_or(vs.kind(), |(_, p)| p.kind());
        let of_params = |p: &[Tensor], sample: &[Tensor]| -> Result<Tensor> {
            let mut fresh = nn::VarStore::new(device);
            // (vs.kind() stays Float after vs.double(): take the dtype from the variables.)
            fresh.set_kind(kind);
            // The construction's initial draws once for the batch, whatever `randomness` says
            // for the loss (they are overwritten below).
            let model = {
                let _same = crate::native::SameRandomness::new();
                build(&fresh.root())
            };
            let mut vars = fresh.variables();
            for ((name, _), value) in params.iter().zip(p) {
                let var = vars.remove(name).ok_or_else(|| {
                Error::Contract(format!(
                    "build created no variable {name} (the VarStore has it, shape {:?}); build must make the model of vs",
                    value.size()
                ))
            })?;
                if var.size() != value.size() || var.kind() != value.kind() {
                    return Err(Error::Contract(format!(
                    "build's variable {name} is {:?} {:?} but the VarStore's is {:?} {:?}; build must make the model of vs",
                    var.size(),
                    var.kind(),
                    value.size(),
                    value.kind()
                )));
                }
                // The layers hold shallow clones of `var`: after the copy they read the transformed
                // parameter, and gradients flow back to it through the copy.
                let mut var = var.set_requires_grad(false);
                var.f_copy_(value)?;
            }
            // Variables that vs does not train (frozen) take vs' values as constants.
            if !vars.is_empty() {
                let all = vs.variables();
                for (name, var) in vars {
                    let value = all.get(&name).ok_or_else(|| {
                    Error::Contract(format!(
                        "build created a variable {name} (shape {:?}) that the VarStore does not have; build must make the model of vs",
                        var.size()
                    ))
                })?;
                    crate::autograd::with_grad_mode(false, || var.shallow_clone().f_copy_(value))?;
                }
            }
            loss(&model, sample)
        };
        per_sample(&of_params, &params, inputs, opts)
    })
}

/// What the closure doors share: checks, then vmap(grad) or the loop over samples.
fn per_sample(
    loss: &crate::native::LossFn<'_>,
    params: &[(String, Tensor)],
    inputs: &[&Tensor],
    opts: &JacobianOptions,
) -> Result<PerSampleOutput> {
    let randomness = opts.randomness;
    if params.is_empty() {
        return Err(Error::InvalidArgument(
            "no parameters: params is empty (a VarStore without trainable variables?)".into(),
        ));
    }
    if inputs.is_empty() {
        return Err(Error::InvalidArgument(
            "per_sample_gradients_of needs at least one input [B, …]; inputs is empty".into(),
        ));
    }
    if opts.create_graph {
        return Err(Error::InvalidArgument(
            "per_sample_gradients_of returns plain tensors; create_graph = true is not supported (use per_sample_gradients on losses you built)".into(),
        ));
    }
    let device = params[0].1.device();
    for (name, p) in params {
        check_float(p, &format!("parameter {name}"))?;
        check_same_device(
            p,
            &format!("parameter {name}"),
            &params[0].1,
            &format!("parameter {}", params[0].0),
        )?;
    }
    let batch = match inputs[0].size().first() {
        Some(&b) => b,
        None => {
            return Err(Error::Shape(format!(
                "inputs need a leading batch dimension; input 0 is a scalar (shape {:?})",
                inputs[0].size()
            )))
        }
    };
    for (k, x) in inputs.iter().enumerate() {
        if x.device() != device {
            return Err(Error::Device(format!(
                "input {k} (shape {:?}) is on {:?} but the parameters are on {device:?}; move them to one device",
                x.size(),
                x.device()
            )));
        }
        if x.size().first() != Some(&batch) {
            return Err(Error::Shape(format!(
                "every input needs the same leading batch dimension B = {batch} (input 0); input {k} has shape {:?}",
                x.size()
            )));
        }
    }
    let names = || params.iter().map(|(n, _)| n.clone());
    if batch == 0 {
        let gradients = params
            .iter()
            .map(|(n, p)| {
                let mut shape = vec![0];
                shape.extend(p.size());
                Ok((
                    n.clone(),
                    Tensor::f_zeros(shape.as_slice(), (p.kind(), device))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let losses = Tensor::f_zeros([0], (params[0].1.kind(), device))?;
        return Ok(PerSampleOutput { gradients, losses });
    }
    let loop_over_samples = match opts.strategy.validate()? {
        Strategy::Auto | Strategy::Batched { .. } => !crate::native::available(),
        Strategy::RowLoop => true,
        other => {
            return Err(Error::InvalidArgument(format!(
                "per_sample_gradients_of runs vmap(grad) (auto, batched) or a loop over samples (row-loop), not {other}"
            )))
        }
    };
    let ps: Vec<&Tensor> = params.iter().map(|(_, p)| p).collect();
    let (grads, losses) = if loop_over_samples {
        sample_loop(loss, &ps, inputs, batch, randomness)?
    } else {
        match crate::native::vmap_grad(loss, &ps, inputs, batch, opts.vmap_fallback, randomness) {
            // Auto never fails where the loop over samples works (the engine's one recovery
            // rule, as in `engine::run`): e.g. a loss that does not reach the parameters, which
            // autograd.grad refuses at the grad level. Reported by take_reroutes.
            Err(e @ Error::Torch(_)) if opts.strategy == Strategy::Auto => {
                crate::second_order::record(crate::second_order::Reroute {
                    from: Strategy::Batched { chunk_size: None },
                    to: Strategy::RowLoop,
                    reason: format!("vmap(grad) failed: {}", e.one_line()),
                });
                sample_loop(loss, &ps, inputs, batch, randomness)?
            }
            r => r?,
        }
    };
    let gradients = names()
        .zip(grads.into_iter().zip(&ps))
        .map(|(n, (g, p))| {
            let g = match g {
                Some(g) => crate::autograd::materialize(g)?,
                None => {
                    let mut shape = vec![batch];
                    shape.extend(p.size());
                    Tensor::f_zeros(shape.as_slice(), (p.kind(), device))?
                }
            };
            Ok((n, g))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PerSampleOutput { gradients, losses })
}

/// The loop over samples: one forward and one backward pass per sample.
fn sample_loop(
    loss: &crate::native::LossFn<'_>,
    ps: &[&Tensor],
    inputs: &[&Tensor],
    batch: i64,
    randomness: crate::Randomness,
) -> Result<(Vec<Option<Tensor>>, Tensor)> {
    // `Same`: every sample starts from one seed drawn here, so it sees the same numbers; the
    // generators' states after that draw are restored when the loop ends (the caller's stream
    // moves on by that one draw only).
    let seed = match randomness {
        crate::Randomness::Same => Some(
            Tensor::f_randint(i64::MAX, [1], (tch::Kind::Int64, tch::Device::Cpu))?
                .int64_value(&[0]),
        ),
        _ => None,
    };
    let mut _restore = Vec::new();
    if seed.is_some() {
        _restore.push(crate::native::GeneratorState::save(tch::Device::Cpu)?);
        for d in inputs.iter().map(|x| x.device()).filter(|d| d.is_cuda()) {
            _restore.push(crate::native::GeneratorState::save(d)?);
        }
    }
    let mut per_param: Vec<Vec<Tensor>> = ps.iter().map(|_| Vec::new()).collect();
    let mut losses = Vec::new();
    let param_names = input_names(ps.len());
    for b in 0..batch {
        let leaves: Vec<Tensor> = ps
            .iter()
            .map(|p| p.detach().set_requires_grad(true))
            .collect();
        let sample = inputs
            .iter()
            .map(|x| Ok(x.f_select(0, b)?))
            .collect::<Result<Vec<_>>>()?;
        if let Some(seed) = seed {
            tch::manual_seed(seed);
        }
        let l = loss(&leaves, &sample)?;
        if l.dim() != 0 {
            return Err(Error::Shape(format!(
                "the loss closure must return one scalar per sample; it returned shape {:?} for one sample",
                l.size()
            )));
        }
        // Through the one room for backward passes (zeros where the loss does not reach a
        // parameter, ZeroTensors settled).
        let leaf_refs: Vec<&Tensor> = leaves.iter().collect();
        let names = Names {
            output: "the loss",
            inputs: &param_names,
        };
        let grads = vjp_into(&l, &leaf_refs, Pass::new(false, false, names))?;
        for (acc, g) in per_param.iter_mut().zip(grads) {
            acc.push(g);
        }
        losses.push(l.f_detach()?);
    }
    let grads = per_param
        .iter()
        .map(|gs| Ok(Some(Tensor::f_stack(gs, 0)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok((grads, Tensor::f_stack(&losses, 0)?))
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
