//! The per-sample contract: sample `b`'s outputs depend only on sample `b`'s inputs.
//!
//! Every per-sample function (batch Jacobians, per-sample Hessians and Laplacians, the
//! contractive penalty) computes what it computes for a whole batch at once, and is right only
//! when the samples do not interact. A model that mixes them — batch norm in training mode, a
//! softmax or mean over dimension 0, attention across the batch — would get cross-sample terms
//! summed in, silently. PyTorch cannot make this mistake (under `vmap` the function sees one
//! sample); a crate whose closures see the whole batch checks instead, by default, with **one**
//! extra backward (or forward) pass per call, against the result it already has:
//!
//! ```text
//! per-sample Jacobians J[b] (computed assuming independence), cotangents v = [B, m]:
//!     g = ∂(Σ_b v_bᵀ y_b)/∂x                        one backward pass, the true Σ_b v_bᵀ ∂y_b/∂x
//!     independence  ⇔  g[b] = v_bᵀ J[b]  for every b     (up to rounding)
//! ```
//!
//! With interactions `g[b'] = Σ_b v_bᵀ ∂y_b/∂x_b'` differs from `v_b'ᵀ J[b']` for random `v`
//! (cancellation has probability zero). The check compares elementwise with the bound
//! `|g − ĝ| ≤ rtol·(|v|ᵀ|J|) + tiny`, `rtol` the replicated strategies' row-wise tolerance
//! (1e-7 in f64, 1e-3 in f32 on the CPU, 1e-2 in f32 on CUDA), so that rounding never trips it and
//! an interaction of relative size ≥ 1e-3 always does. `v` comes from a fixed-seed generator of
//! the crate's own (torch's generator is not touched). It is first-order: a function whose
//! samples interact only through terms whose first derivatives vanish at this point (a measure-zero
//! set) is not caught.
//!
//! The check is off with `check_independence(false)` — for hot loops after a first checked call.
//! The error is [`Error::Contract`] naming the function, the sample and the size of the leak.

use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use tch::{Kind, Tensor};

use crate::autograd::{input_names, vjp_into, Names, Pass};
use crate::error::{Error, Result};
use crate::testing::contract_rtol;

/// Fixed-seed standard normal draws shaped like `like` (its dtype and device), from the crate's
/// own generator; `salt` varies the stream between the probes of one call.
pub(crate) fn probe_like(like: &Tensor, salt: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(0x5EED_CAFE ^ salt);
    let vals: Vec<f64> = (0..like.numel())
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    Ok(Tensor::f_from_slice(&vals)?
        .f_reshape(like.size().as_slice())?
        .f_to_kind(like.kind())?
        .f_to_device(like.device())?)
}

/// Compares `actual` with `predicted` (both `[B, r]`) within `rtol·scale`, `scale ≥ 0` the
/// elementwise bound of the prediction's terms, plus a floor of `64·ε·reference` (`ε` the
/// dtype's machine epsilon, `reference` the magnitude of the values the derivatives came from:
/// derivatives that are pure rounding noise, such as those of `x/x`, never trip it); names
/// `what` and the worst sample in the error.
pub(crate) fn compare(
    what: &str,
    actual: &Tensor,
    predicted: &Tensor,
    scale: &Tensor,
    reference: f64,
) -> Result<()> {
    let b = actual.size()[0];
    let kind = actual.kind();
    let rtol = contract_rtol(kind, actual.device());
    let eps = match kind {
        Kind::Double | Kind::ComplexDouble => f64::EPSILON,
        Kind::Float | Kind::ComplexFloat => f32::EPSILON as f64,
        _ => 1e-2,
    };
    let actual = actual
        .f_detach()?
        .f_to_kind(Kind::Double)?
        .f_reshape([b, -1])?;
    let predicted = predicted
        .f_detach()?
        .f_to_kind(Kind::Double)?
        .f_reshape([b, -1])?;
    let scale = scale
        .f_detach()?
        .f_to_kind(Kind::Double)?
        .f_reshape([b, -1])?;
    let top = scale.f_max()?.double_value(&[]);
    let tiny = (top * rtol * 1e-3).max(64.0 * eps * reference.abs()) + f64::MIN_POSITIVE;
    let excess = actual
        .f_sub(&predicted)?
        .f_abs()?
        .f_sub(&scale.f_mul_scalar(rtol)?)?
        .f_amax([1i64].as_slice(), false)?;
    let worst = excess.f_argmax(None::<i64>, false)?.int64_value(&[]);
    let over = excess.double_value(&[worst]);
    if over <= tiny && !over.is_nan() {
        return Ok(());
    }
    let leak = actual
        .f_sub(&predicted)?
        .f_abs()?
        .f_select(0, worst)?
        .f_max()?
        .double_value(&[]);
    let size = scale.f_select(0, worst)?.f_max()?.double_value(&[]);
    Err(Error::Contract(format!(
        "{what}: samples interact — sample {worst}'s derivatives are mixed with other samples' (|leak| up to {leak:.3e} against terms of size {size:.3e}); per-sample results assume that each sample's outputs depend only on its own inputs, as under torch.func's vmap (batch norm in training mode — use eval mode —, a softmax, mean or normalization over dimension 0, or attention across the batch break it). `check_independence(false)` turns this check off (for hot loops after a first checked call)"
    )))
}

/// The largest magnitude of `t` (the values a check's derivatives came from).
pub(crate) fn magnitude(t: &Tensor) -> Result<f64> {
    if t.numel() == 0 {
        return Ok(0.0);
    }
    Ok(t.f_detach()?
        .f_abs()?
        .f_max()?
        .f_to_kind(Kind::Double)?
        .double_value(&[]))
}

/// One backward pass of `Σ v·y2` with respect to `x`, as `[B, n]`; zeros when `y2` does not
/// reach `x`.
fn probe_backward(y2: &Tensor, x: &Tensor, v: &Tensor, b: i64) -> Result<Tensor> {
    let names_v = input_names(1);
    let names = Names {
        output: "the independence check's probe",
        inputs: &names_v,
    };
    let root = y2.f_mul(v)?.f_sum(None::<Kind>)?;
    let g = vjp_into(&root, &[x], Pass::new(false, false, names))?.remove(0);
    Ok(g.f_reshape([b, -1])?)
}

/// Per-sample Jacobians: `block = [B, m, n]` computed for `y2 = [B, m]` of `x = [B, *in]`
/// assuming independence; one backward pass (see the module docs).
pub(crate) fn check_jacobian(what: &str, y2: &Tensor, x: &Tensor, block: &Tensor) -> Result<()> {
    let b = y2.size()[0];
    if b < 2 || !y2.requires_grad() || block.numel() == 0 {
        return Ok(());
    }
    let v = probe_like(y2, 1)?;
    let g = probe_backward(y2, x, &v, b)?;
    let j = block.f_detach()?;
    let predicted = Tensor::f_einsum("bm,bmn->bn", &[&v, &j], None::<i64>)?;
    let scale = Tensor::f_einsum("bm,bmn->bn", &[&v.f_abs()?, &j.f_abs()?], None::<i64>)?;
    compare(what, &g, &predicted, &scale, magnitude(y2)?)
}

/// Per-sample Hessians: `u = [B]` (or `[B, 1]`), its gradient `g = ∇ₓ Σ_b u_b` (with its graph)
/// and `h = [B, n, n]` computed from it assuming independence. One backward pass of
/// `Σ_b w_b u_b + Σ_b v_bᵀ g_b` checks both orders: independence gives
/// `w_b g_b + v_bᵀ H_b` per sample.
pub(crate) fn check_hessian(
    what: &str,
    u: &Tensor,
    x: &Tensor,
    g: &Tensor,
    h: Option<&Tensor>,
) -> Result<()> {
    let b = x.size()[0];
    if b < 2 || !u.requires_grad() {
        return Ok(());
    }
    let u1 = u.f_reshape([b])?;
    let g2 = g.f_reshape([b, -1])?;
    let w = probe_like(&u1, 2)?;
    let mut root = u1.f_mul(&w)?.f_sum(None::<Kind>)?;
    let mut predicted = g2.f_detach()?.f_mul(&w.f_unsqueeze(1)?)?;
    let mut scale = g2.f_detach()?.f_abs()?.f_mul(&w.f_abs()?.f_unsqueeze(1)?)?;
    if let Some(h) = h.filter(|_| g.requires_grad()) {
        let h = h.f_detach()?.f_reshape([b, g2.size()[1], -1])?;
        let v = probe_like(&g2, 3)?;
        root = root.f_add(&g2.f_mul(&v)?.f_sum(None::<Kind>)?)?;
        predicted = predicted.f_add(&Tensor::f_einsum("bm,bmn->bn", &[&v, &h], None::<i64>)?)?;
        scale = scale.f_add(&Tensor::f_einsum(
            "bm,bmn->bn",
            &[&v.f_abs()?, &h.f_abs()?],
            None::<i64>,
        )?)?;
    }
    let names_v = input_names(1);
    let names = Names {
        output: "the independence check's probe",
        inputs: &names_v,
    };
    let actual = vjp_into(&root, &[x], Pass::new(false, false, names))?
        .remove(0)
        .f_reshape([b, -1])?;
    compare(what, &actual, &predicted, &scale, magnitude(&u1)?)
}

/// No per-sample result at hand, only a graph `y` of `x` (`[B, …]`): backward passes with the
/// cotangents `v` and `c ⊙ v` (`c_b` a random scale per sample) — independence gives
/// `g_{c⊙v}[b] = c_b g_v[b]`. `g_v`, when the caller already has it (a batched pass with the
/// cotangents `v = [B, m]`), saves one pass.
pub(crate) fn check_scaled(
    what: &str,
    y: &Tensor,
    x: &Tensor,
    v: Option<&Tensor>,
    g_v: Option<&Tensor>,
) -> Result<()> {
    let b = y.size()[0];
    if b < 2 || !y.requires_grad() {
        return Ok(());
    }
    let y2 = y.f_reshape([b, -1])?;
    let v = match v {
        Some(v) => v.f_reshape([b, -1])?,
        None => probe_like(&y2, 4)?,
    };
    let g = match g_v {
        Some(g) => g.f_detach()?.f_reshape([b, -1])?,
        None => probe_backward(&y2, x, &v, b)?,
    };
    let c = probe_like(&y2.f_select(1, 0)?, 5)?.f_unsqueeze(1)?;
    let gc = probe_backward(&y2, x, &v.f_mul(&c)?, b)?;
    let predicted = g.f_mul(&c)?;
    let scale = predicted.f_abs()?.f_add(&gc.f_abs()?)?;
    compare(what, &gc, &predicted, &scale, magnitude(&y2)?)
}
