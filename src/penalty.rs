//! Jacobian penalties: the squared Frobenius norm and the contractive auto-encoder penalty
//! (Rifai et al., 2011), differentiable so they can be added to a training loss.
//!
//! For an encoder `h = f(x)` applied sample by sample to `x: [B, n]` (or `[B, *in]`) with
//! `h: [B, m]` (or `[B, *out]`),
//!
//! ```text
//! penalty_b = ‖J_f(x_b)‖_F² = Σ_{i,j} (∂h_{b,i}/∂x_{b,j})²        jacobian_penalty = mean_b penalty_b
//! ```
//!
//! these [`PenaltyEstimator`]s compute it (`k` below is the estimator's `directions`):
//!
//! | estimator | formula | cost (create_graph backward passes) with the native engine | without it |
//! |---|---|---|---|
//! | [`PenaltyEstimator::Exact`] | `Σ_i ‖∂h_{·,i}/∂x‖²` | one [`per_sample_jacobian`] with `Auto`: one batched pass over the `m` rows (chunked only above 2²⁸ elements; for `m ≥ 4·n` on the CPU, `Jᵀw` once and one batched pass over the `n` columns) | `m` (one per hidden unit, whole batch) |
//! | [`PenaltyEstimator::SigmoidClosedForm`] | `Σ_i (h_i(1−h_i))² Σ_j W_ij²` | 0 (only for `h = σ(Wx + b)`) | 0 |
//! | [`PenaltyEstimator::Projections`] | `(m/k) Σ_{r<k} ‖v_rᵀ J‖²`, `v_r` uniform on the unit sphere | one batched pass over the `k` directions (a plain pass for `k = 1`) | `k` |
//! | [`PenaltyEstimator::FixedProjections`] | the same with given directions | the same | `k` |
//! | [`PenaltyEstimator::HutchPlusPlus`] | `‖J Q‖_F² + (m/g) Σ_r ‖v_rᵀ J (I − QQᵀ)‖²`, `Q = orth(Jᵀ S)` | `k` products per sample in three batched passes (`s` sketch VJPs without create_graph, `s` JVPs after `Jᵀw` is built, `g` VJPs); through layer, batch or instance norm under create_graph as without the engine | each sample's `J` as for `Exact` (`m` passes), the products then by matrix products: as costly as `Exact` |
//! | [`PenaltyEstimator::FixedHutchPlusPlus`] | the same with given draws (`s + g` directions) | the same | the same |
//!
//! The projection estimator (Hoffman, Roberts & Yaida, 2019) is unbiased because
//! `E[v vᵀ] = I/m` for `v` uniform on the sphere in ℝᵐ.

use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use tch::{Kind, Tensor};

use crate::autograd::{
    check_float, check_input, check_same_device, check_stack, input_names, vjp_stack, Names, Pass,
};
use crate::closed_form;
use crate::error::{Error, Result};
use crate::per_sample::per_sample_jacobian;
use crate::products::jvp_batched;
use crate::strategy::{JacobianOptions, Strategy};

/// Squared Frobenius norm `‖J‖_F² = Σ J²` over all elements (the notebook's `J.pow(2).sum()`).
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::frobenius_norm_sq;
/// let j = Tensor::from_slice(&[3.0f64, 4.0]);
/// assert_eq!(frobenius_norm_sq(&j)?.double_value(&[]), 25.0);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn frobenius_norm_sq(j: &Tensor) -> Result<Tensor> {
    check_float(j, "J")?;
    Ok(j.f_square()?.f_sum(None::<Kind>)?)
}

/// How [`jacobian_penalty`] computes `‖J‖_F²` ([`PenaltyOptions::estimator`]).
///
/// `#[non_exhaustive]`: estimators may be added, so a `match` on it outside this crate needs a
/// `_` arm; its variants are built as usual (`PenaltyEstimator::Projections { directions: 4, seed: None }`).
#[derive(Debug)]
#[non_exhaustive]
pub enum PenaltyEstimator {
    /// Exact: the per-sample Jacobians by one [`per_sample_jacobian`] with
    /// `create_graph` and [`Strategy::Auto`] — one batched create_graph
    /// pass with the native engine (see the module docs for the tall case), one create_graph
    /// backward pass per hidden unit over the whole batch without it.
    Exact,
    /// Closed form for a sigmoid layer `h = σ(x Wᵀ + b)` with `W: [m, n]`, no backward pass:
    /// `Σ_i (h_i(1−h_i))² Σ_j W_ij²`. The gradient reaches `W` through `h` and through `W²`, so
    /// pass the layer's weight itself, not a detached copy (`vs` weights are fine).
    SigmoidClosedForm {
        /// The layer's weight, `[m, n]`.
        w: Tensor,
    },
    /// Random projections: `(m/k) Σ_r ‖v_rᵀ J‖²` with `v_r` drawn uniformly on the unit sphere
    /// independently per sample. Unbiased. Cost: one batched create_graph pass over the `k`
    /// directions with the native engine (a plain backward pass for `k = 1`), `k` create_graph
    /// backward passes without it.
    Projections {
        /// Number of random directions (projections), ≥ 1.
        directions: usize,
        /// `Some(seed)`: directions drawn from a `StdRng` seeded with it (reproducible, and
        /// independent of torch's generator) — the same directions on every call, so in a training
        /// loop vary it (e.g. the step number) or use `None`; `None`: fresh directions from
        /// torch's global generator on every call (`tch::manual_seed` controls it).
        seed: Option<u64>,
    },
    /// [`PenaltyEstimator::Projections`] with given directions `v: [k, B, *out]` (unit norm per sample
    /// and projection, not checked): `(m/k) Σ_r ‖v_{r,b}ᵀ J_b‖²`. For reproducing another
    /// implementation's draws, e.g. PyTorch's.
    FixedProjections {
        /// Directions, `[k, B, *out]`.
        v: Tensor,
    },
    /// Hutch++ for `‖J‖_F²` (Meyer, Musco, Musco & Woodruff, 2021), adapted to Jacobians, with a
    /// budget of `k` products per sample: `s = ⌊k/3⌋` of them sketch `J`'s top input directions,
    /// `Q = orth(Jᵀ S)` for Gaussian `S` (`s` VJPs, not differentiated); the part of `‖J‖_F²` in
    /// those directions is computed exactly, `‖J Q‖_F²` (`s` JVPs); the remainder is estimated
    /// by `g = k − 2s` projections, `(m/g) Σ_r ‖v_rᵀ J (I − QQᵀ)‖²` (`g` VJPs):
    ///
    /// ```text
    /// ‖J‖_F² ≈ ‖J Q‖_F² + (m/g) Σ_r ‖v_rᵀ J (I − Q Qᵀ)‖²
    /// ```
    ///
    /// Unbiased for any `Q` (the projections are drawn independently of the sketch), trainable
    /// (create_graph through the JVPs and the projections), and far less noisy than
    /// [`PenaltyEstimator::Projections`] at the same `k` when a few directions carry most of `‖J‖_F²`
    /// (a trained contractive encoder). For `k < 3` it is plain projections.
    ///
    /// Cost: with the native engine, three batched passes (the sketch's VJPs without
    /// create_graph, the JVPs after `Jᵀw` is built, the projections' VJPs) — cheaper than
    /// [`PenaltyEstimator::Exact`] when `k ≪ m`. But without the engine, and with it when `h`'s graph
    /// goes through layer, batch or instance norm (where the double-backward JVPs would be
    /// wrong, see [`crate::second_order`]; the reroute is reported by
    /// [`take_reroutes`](crate::second_order::take_reroutes)), every product comes from each
    /// sample's `J`, computed as for `Exact`: it then costs as much as `Exact` (a CNN with
    /// LayerNorm: 290.8 ms per epoch against 291.9 ms for `Exact`), for a noisier value.
    HutchPlusPlus {
        /// Random directions (products) per sample, ≥ 1 (a third sketch, a third exact, the rest
        /// projections).
        directions: usize,
        /// As in [`PenaltyEstimator::Projections`]: `Some(seed)` for reproducible draws (`StdRng`),
        /// `None` for torch's generator.
        seed: Option<u64>,
    },
    /// [`PenaltyEstimator::HutchPlusPlus`] with given draws: the sketch `s: [s, B, *out]` and the
    /// projection directions `v: [g, B, *out]` (unit norm per sample, not checked) — for
    /// reproducing another implementation's draws.
    FixedHutchPlusPlus {
        /// Sketch directions, `[s ≥ 1, B, *out]`.
        sketch: Tensor,
        /// Projection directions, `[g ≥ 1, B, *out]`.
        v: Tensor,
    },
}

impl PenaltyEstimator {
    /// The closed form for the sigmoid layer with weight `w` (a shallow clone: gradients still
    /// reach the variable).
    ///
    /// ```
    /// use tch::{Kind, Tensor};
    /// let w = Tensor::zeros([4, 3], (Kind::Float, tch::Device::Cpu));
    /// let est = tch_jacobian::PenaltyEstimator::sigmoid_closed_form(&w);
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn sigmoid_closed_form(w: &Tensor) -> Self {
        PenaltyEstimator::SigmoidClosedForm {
            w: w.shallow_clone(),
        }
    }
}

/// Per-sample penalty `‖J_f(x_b)‖_F²`, shape `[B]`, differentiable (see the module docs for the
/// estimators).
///
/// `x` must require grad *before* `h` is computed from it (it is differentiated against),
/// except for [`PenaltyEstimator::SigmoidClosedForm`], which only reads shapes from it.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{jacobian_penalty_per_sample, PenaltyEstimator, PenaltyOptions};
/// let w = Tensor::randn([4, 3], (Kind::Double, tch::Device::Cpu));
/// let x = Tensor::randn([2, 3], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
/// let h = x.matmul(&w.tr()).sigmoid();
/// let exact = jacobian_penalty_per_sample(&h, &x, &PenaltyOptions::default())?;
/// let closed_form = PenaltyEstimator::sigmoid_closed_form(&w);
/// let closed = jacobian_penalty_per_sample(&h, &x, &PenaltyOptions::default().estimator(&closed_form))?;
/// assert!(exact.allclose(&closed, 1e-10, 1e-12, false));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn jacobian_penalty_per_sample(
    h: &Tensor,
    x: &Tensor,
    opts: &PenaltyOptions,
) -> Result<Tensor> {
    match opts.estimator {
        Some(e) => per_sample(h, x, e, opts.check_independence),
        None => per_sample(h, x, &PenaltyEstimator::Exact, opts.check_independence),
    }
}

/// [`jacobian_penalty_per_sample`] for one estimator; `check`: the independence check.
fn per_sample(h: &Tensor, x: &Tensor, estimator: &PenaltyEstimator, check: bool) -> Result<Tensor> {
    crate::autograd::grad_mode_on(|| {
        check_float(h, "h")?;
        check_float(x, "x")?;
        check_same_device(h, "h", x, "x")?;
        let (hs, xs) = (h.size(), x.size());
        if hs.len() < 2 || xs.len() < 2 || hs[0] != xs[0] {
            return Err(Error::Shape(format!(
            "contractive penalty needs h: [B, *out] and x: [B, *in] with the same batch size B; got h {hs:?} and x {xs:?}"
        )));
        }
        let b = hs[0];
        if b == 0 {
            return Err(Error::Shape(format!(
                "empty batch: h has shape {hs:?}; the penalty of no samples is undefined"
            )));
        }
        match estimator {
            PenaltyEstimator::Exact => {
                check_input(x, "x")?;
                let opts = JacobianOptions::default()
                    .create_graph(true)
                    .strict(true)
                    .check_independence(false);
                let j = per_sample_jacobian(h, x, &opts)?;
                let (m, n) = (h.numel() as i64 / b, x.numel() as i64 / b);
                if check {
                    crate::independence::check_jacobian(
                        "jacobian_penalty",
                        &h.f_reshape([b, m])?,
                        x,
                        &j.f_reshape([b, m, n])?,
                    )?;
                }
                // Summed in place over every per-sample dimension: J may be a strided view
                // (Batched's [B, rows, n] block), which a reshape to [B, -1] would copy.
                let dims: Vec<i64> = (1..j.dim() as i64).collect();
                Ok(j.f_square()?
                    .f_sum_dim_intlist(dims.as_slice(), false, None::<Kind>)?)
            }
            PenaltyEstimator::SigmoidClosedForm { w } => {
                if hs.len() != 2 || xs.len() != 2 || w.dim() != 2 || w.size()[1] != xs[1] {
                    return Err(Error::Shape(format!(
                    "sigmoid closed form needs h: [B, m], x: [B, n] and w: [m, n]; got h {hs:?}, x {xs:?}, w {:?}",
                    w.size()
                )));
                }
                closed_form::frobenius_sq(w, h, "h")
            }
            PenaltyEstimator::Projections {
                directions: k,
                seed,
            } => {
                if *k == 0 {
                    return Err(Error::InvalidArgument(
                        "Projections needs directions ≥ 1, got 0".into(),
                    ));
                }
                check_input(x, "x")?;
                let dirs = sphere_directions(*k, &hs, *seed, h.kind(), h.device())?;
                projections(h, x, &dirs, check)
            }
            PenaltyEstimator::FixedProjections { v } => {
                check_input(x, "x")?;
                check_stack(v, "v", h, "h", 1, "FixedProjections")?;
                projections(h, x, v, check)
            }
            PenaltyEstimator::HutchPlusPlus {
                directions: k,
                seed,
            } => {
                if *k == 0 {
                    return Err(Error::InvalidArgument(
                        "HutchPlusPlus needs directions ≥ 1, got 0".into(),
                    ));
                }
                check_input(x, "x")?;
                let s = k / 3;
                let g = k - 2 * s;
                let v = sphere_directions(g, &hs, *seed, h.kind(), h.device())?;
                if s == 0 {
                    return projections(h, x, &v, check);
                }
                // The sketch's own stream: another seed, or torch's generator.
                let sketch_seed = seed.map(|s| s ^ 0x9E37_79B9_7F4A_7C15);
                let sketch = sphere_directions(s, &hs, sketch_seed, h.kind(), h.device())?;
                hutch_plus_plus(h, x, &sketch, &v, check)
            }
            PenaltyEstimator::FixedHutchPlusPlus { sketch, v } => {
                check_input(x, "x")?;
                check_stack(sketch, "sketch", h, "h", 1, "FixedHutchPlusPlus")?;
                check_stack(v, "v", h, "h", 1, "FixedHutchPlusPlus")?;
                hutch_plus_plus(h, x, sketch, v, check)
            }
        }
    })
}

/// Hutch++ per sample: `‖J Q‖_F² + (m/g) Σ_r ‖v_rᵀ J (I − QQᵀ)‖²` with `Q = orth(Jᵀ S)`
/// (detached), for the sketch `S = [s, B, *out]` and the directions `v = [g, B, *out]`.
fn hutch_plus_plus(
    h: &Tensor,
    x: &Tensor,
    sketch: &Tensor,
    v: &Tensor,
    check: bool,
) -> Result<Tensor> {
    let b = h.size()[0];
    let m = h.numel() as i64 / b;
    let (s, g) = (sketch.size()[0], v.size()[0]);
    let opts = JacobianOptions::default()
        .create_graph(true)
        .strict(true)
        .check_independence(false);
    let names_v = input_names(1);
    let pass = Pass::new(true, true, h_names(&names_v));
    // Where the double-backward JVPs are wrong one order higher (create_graph through layer or
    // batch norm, see crate::second_order), every product comes from each sample's J instead
    // (the m create_graph rows that `Exact` computes): per sample, never the whole batch's
    // [B·m, B·n] Jacobian, and no further backward pass.
    // Without the native engine there is no batched pass over the products: each sample's J
    // (`m` passes, as for `Exact`) is what they cost anyway, so they always come from J there.
    let from_j = if !crate::native::available() {
        true
    } else if let Some(node) = crate::second_order::double_backward_fault(h, true)? {
        crate::second_order::record(crate::second_order::Reroute {
            from: Strategy::Forward,
            to: Strategy::Auto,
            reason: format!(
                "Hutch++'s JVPs with create_graph through {node}: the double-backward trick is wrong one order higher there, so J q comes from each sample's J"
            ),
        });
        true
    } else {
        false
    };
    let per_sample_j = if from_j {
        let j = per_sample_jacobian(h, x, &opts)?.f_reshape([b, m, -1])?; // [B, m, n]
        if check {
            crate::independence::check_jacobian("jacobian_penalty", &h.f_reshape([b, m])?, x, &j)?;
        }
        Some(j)
    } else {
        None
    };
    // Q: [B, n, s], an orthonormal basis of the sketched row space of each sample's J.
    // (No tch::no_grad here: without the native engine the cotangent products are new graph
    // nodes; create_graph = false already leaves the sketch out of the penalty's graph.)
    let sketched = match &per_sample_j {
        // Jᵀ S per sample: [B, n, m] @ [B, m, s].
        Some(j) => j
            .f_detach()?
            .f_transpose(1, 2)?
            .f_matmul(&sketch.f_reshape([s, b, m])?.f_permute([1, 2, 0])?)?,
        None => vjp_stack(h, x, sketch, pass.create_graph(false))?
            .f_reshape([s, b, -1])?
            .f_permute([1, 2, 0])?,
    };
    let (q, _) = Tensor::f_linalg_qr(&sketched, "reduced")?;
    let q = q.f_detach()?;
    // (The sketch's rank: fewer than s directions when the input has fewer than s elements.)
    let (n, s) = (q.size()[1], q.size()[2]);
    // Exact part: ‖J q_j‖² for the s columns of Q, by batched JVPs (or J Q).
    let exact = match &per_sample_j {
        Some(j) => j.f_matmul(&q)?.f_square()?.f_sum_dim_intlist(
            [1i64, 2].as_slice(),
            false,
            None::<Kind>,
        )?,
        None => {
            let mut tangent_shape = vec![s];
            tangent_shape.extend(x.size());
            let tangents = q
                .f_permute([2, 0, 1])?
                .f_reshape(tangent_shape.as_slice())?;
            jvp_batched(h, x, &tangents, &opts.check_independence(true))?
                .f_reshape([s, b, -1])?
                .f_square()?
                .f_sum_dim_intlist([0i64, 2].as_slice(), false, None::<Kind>)?
        }
    };
    // Remainder: projections of J with Q's directions removed; vᵀJ: [B, g, n].
    let vj = match &per_sample_j {
        Some(j) => v.f_reshape([g, b, m])?.f_permute([1, 0, 2])?.f_matmul(j)?,
        None => {
            let vj = vjp_stack(h, x, v, pass)?.f_reshape([g, b, n])?;
            if check {
                crate::independence::check_scaled(
                    "jacobian_penalty",
                    h,
                    x,
                    Some(&v.f_select(0, 0)?),
                    Some(&vj.f_select(0, 0)?),
                )?;
            }
            vj.f_permute([1, 0, 2])?
        }
    };
    let inside = vj.f_matmul(&q)?.f_matmul(&q.f_transpose(1, 2)?)?;
    let rest = vj
        .f_sub(&inside)?
        .f_square()?
        .f_sum_dim_intlist([1i64, 2].as_slice(), false, None::<Kind>)?
        .f_mul_scalar(m as f64 / g as f64)?;
    Ok(exact.f_add(&rest)?)
}

/// The Jacobian penalty `mean_b ‖J_f(x_b)‖_F²` — the contractive auto-encoder penalty (Rifai et
/// al., 2011), Jacobian regularization (Hoffman et al., 2019) — the batch mean of
/// [`jacobian_penalty_per_sample`], a differentiable scalar: add `λ ·` it to the training loss.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{jacobian_penalty, PenaltyEstimator, PenaltyOptions};
/// let w = Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
/// let x = Tensor::randn([8, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
/// let h = x.matmul(&w.tr()).sigmoid();
/// let est = PenaltyEstimator::Projections { directions: 2, seed: Some(7) };
/// let penalty = jacobian_penalty(&h, &x, &PenaltyOptions::default().estimator(&est))?;
/// penalty.backward(); // reaches w
/// assert_eq!(w.grad().size(), [4, 3]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn jacobian_penalty(h: &Tensor, x: &Tensor, opts: &PenaltyOptions) -> Result<Tensor> {
    crate::autograd::grad_mode_on(|| {
        Ok(jacobian_penalty_per_sample(h, x, opts)?.f_mean(None::<Kind>)?)
    })
}

/// Options for [`jacobian_penalty`] and [`jacobian_penalty_per_sample`].
///
/// | field | default | meaning |
/// |---|---|---|
/// | `estimator` | `None`: [`PenaltyEstimator::Exact`] | how `‖J‖_F²` is computed (the module docs compare them) |
/// | `check_independence` | `true` | check that the samples do not interact (one more backward pass); `false` for hot loops after a first checked call |
///
/// ```
/// use tch_jacobian::{PenaltyEstimator, PenaltyOptions};
/// let est = PenaltyEstimator::HutchPlusPlus { directions: 6, seed: None };
/// let opts = PenaltyOptions::default().estimator(&est).check_independence(false);
/// assert!(!opts.check_independence);
/// ```
///
/// `#[non_exhaustive]`: built from [`PenaltyOptions::default`] and the setters.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PenaltyOptions<'a> {
    /// The estimator; `None` is [`PenaltyEstimator::Exact`].
    pub estimator: Option<&'a PenaltyEstimator>,
    /// Check that the samples do not interact.
    pub check_independence: bool,
}

impl Default for PenaltyOptions<'_> {
    fn default() -> Self {
        PenaltyOptions {
            estimator: None,
            check_independence: true,
        }
    }
}

impl<'a> PenaltyOptions<'a> {
    /// Sets the estimator.
    ///
    /// ```
    /// use tch_jacobian::{PenaltyEstimator, PenaltyOptions};
    /// let est = PenaltyEstimator::Projections { directions: 4, seed: Some(1) };
    /// let _ = PenaltyOptions::default().estimator(&est);
    /// ```
    pub fn estimator(mut self, estimator: &'a PenaltyEstimator) -> Self {
        self.estimator = Some(estimator);
        self
    }

    /// Sets `check_independence`.
    ///
    /// ```
    /// let _ = tch_jacobian::PenaltyOptions::default().check_independence(false);
    /// ```
    pub fn check_independence(mut self, check: bool) -> Self {
        self.check_independence = check;
        self
    }
}

/// 0.1's name for [`jacobian_penalty`] (the estimator passed directly).
#[deprecated(
    since = "0.2.0",
    note = "use jacobian_penalty(h, x, &PenaltyOptions::default().estimator(&estimator))"
)]
pub fn contractive_penalty(h: &Tensor, x: &Tensor, estimator: &PenaltyEstimator) -> Result<Tensor> {
    jacobian_penalty(h, x, &PenaltyOptions::default().estimator(estimator))
}

/// 0.1's name for [`jacobian_penalty_per_sample`].
#[deprecated(
    since = "0.2.0",
    note = "use jacobian_penalty_per_sample(h, x, &PenaltyOptions::default().estimator(&estimator))"
)]
pub fn contractive_penalty_per_sample(
    h: &Tensor,
    x: &Tensor,
    estimator: &PenaltyEstimator,
) -> Result<Tensor> {
    jacobian_penalty_per_sample(h, x, &PenaltyOptions::default().estimator(estimator))
}

/// 0.1's name for [`PenaltyEstimator`].
#[deprecated(
    since = "0.2.0",
    note = "renamed PenaltyEstimator (its counts k are now `directions`)"
)]
pub type Estimator = PenaltyEstimator;

/// `(m/k) Σ_r ‖v_rᵀ J‖²` per sample, one create_graph VJP per direction.
fn projections(h: &Tensor, x: &Tensor, dirs: &Tensor, check: bool) -> Result<Tensor> {
    let b = h.size()[0];
    let m = h.numel() as i64 / b;
    let k = dirs.size()[0];
    let names_v = input_names(1);
    // [k, B, *in]: v_{r,b}ᵀ J_b for every direction, in one batched pass.
    let g = vjp_stack(h, x, dirs, Pass::new(true, true, h_names(&names_v)))?;
    if check {
        crate::independence::check_scaled(
            "jacobian_penalty",
            h,
            x,
            Some(&dirs.f_select(0, 0)?),
            Some(&g.f_select(0, 0)?),
        )?;
    }
    Ok(g.f_reshape([k, b, -1])?
        .f_square()?
        .f_sum_dim_intlist([0i64, 2].as_slice(), false, None::<Kind>)?
        .f_mul_scalar(m as f64 / k as f64)?)
}

/// The names of a penalty's backward passes: output `h`, input `x`.
fn h_names(inputs: &[String]) -> Names<'_> {
    Names {
        output: "h",
        inputs,
    }
}

/// `k` independent directions per sample, uniform on the unit sphere of ℝᵐ (normalized
/// Gaussians), shape `[k, *shape]`.
fn sphere_directions(
    k: usize,
    shape: &[i64],
    seed: Option<u64>,
    kind: Kind,
    device: tch::Device,
) -> Result<Tensor> {
    let mut full = vec![k as i64];
    full.extend_from_slice(shape);
    let gauss = match seed {
        None => Tensor::f_randn(full.as_slice(), (kind, device))?,
        Some(seed) => {
            let count: i64 = full.iter().product();
            let mut rng = StdRng::seed_from_u64(seed);
            let vals: Vec<f64> = (0..count)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            Tensor::f_from_slice(&vals)?
                .f_reshape(full.as_slice())?
                .f_to_kind(kind)?
                .f_to_device(device)?
        }
    };
    let per_sample = gauss.f_reshape([k as i64, shape[0], -1])?;
    let norms = per_sample
        .f_square()?
        .f_sum_dim_intlist([2i64].as_slice(), true, None::<Kind>)?
        .f_sqrt()?;
    Ok(per_sample.f_div(&norms)?.f_reshape(full.as_slice())?)
}
