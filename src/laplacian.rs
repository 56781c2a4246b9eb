//! Laplacians of per-sample closures — the PINN and VMC operators — in one forward pass by
//! collapsed Taylor mode, or by nested reverse mode: [`laplacian`] with [`LaplacianOptions`], and
//! the plain [`laplacian_of`].
//!
//! For `u` mapping `x = [B, *in]` to one scalar per sample (`[B]` or `[B, 1]`), samples not
//! interacting, and `n = numel(in)`:
//!
//! ```text
//! Δu[b]              = Σ_i ∂²u(x)[b] / ∂x[b, i]²                        (the Laplacian)
//! tr(σσᵀ ∇²u)[b]     = Σ_d σ_dᵀ ∇²u(x)[b] σ_d    σ: [n, m] or [B, n, m]   (weighted: Kolmogorov,
//!                                                                           Fokker–Planck)
//! (1/k) Σ_r z_rᵀ ∇²u z_r,  z_r Rademacher or Gaussian, E[z zᵀ] = I          (stochastic, unbiased;
//!                                                                           z_r → σ z_r weighted)
//! ```
//!
//! and `u` and `∇u` beside them (boundary and Neumann terms need them).
//!
//! # Strategies
//!
//! * [`Strategy::Taylor`] — **collapsed Taylor mode** (Dangel, Siebert, Zeinhofer, Walther,
//!   NeurIPS 2025; the forward Laplacian of Li et al. 2023): `u` runs once, and every op it calls
//!   also pushes its input's `D` first-order coefficients and one summed second-order
//!   coefficient forward by the op's collapsed rule (`2 + D` vectors per tensor, no reverse
//!   pass). `D` = `n` for the exact Laplacian, `m` with weights, `k` for the estimators. Every op
//!   with a forward-mode derivative has a rule: collapsed rules for the ops of MLPs, PINN and
//!   CNN networks (docs/laplacian.md lists them), a generic one (`vmap(jvp∘jvp)` per op, with
//!   the engine) for the rest, backward ops included — so derivatives taken inside `u` (a
//!   biharmonic `Δ²v`, a loss on `‖∇v‖²`) are followed too. Nothing is traced: the closure's own
//!   control flow runs every call. With `create_graph`, the result is an ordinary tensor in the
//!   caller's graph (PINN training differentiates it to the weights `u` captures).
//! * [`Strategy::RowLoop`], [`Strategy::Batched`], [`Strategy::Forward`] — nested reverse mode,
//!   PyTorch's autograd loop: `∇u` with create_graph, then one backward pass per input dimension
//!   (the exact Laplacian by the row loop, which never forms `H`) or the per-sample Hessian by
//!   that strategy and its contraction (weights, estimators). Every op with a double backward
//!   works.
//! * [`Strategy::Auto`] (the default) — collapsed Taylor mode; if the closure has an op without
//!   any rule ([`Error::NoTaylorRule`]) or does something the mode cannot follow
//!   ([`Error::TaylorUnsupported`]), nested reverse mode once more from the start (the row loop
//!   on the CPU, the batched pass on CUDA; logged once at warn level).
//!
//! Every method gives the same answer for the same closure: a `tch::no_grad` region inside `u` is
//! a constant for all of them (as reverse mode makes it), a panic of `u` is an
//! [`Error::Contract`] for all of them, and samples that interact are an [`Error::Contract`]
//! ([`crate::independence`](mod@crate::independence)).
//!
//! Measured (docs/benchmarks.md, "Laplacians"): collapsed Taylor mode beats PyTorch's nested
//! loop and `vmap(hessian)` on every PINN row, and `Auto` has no crossover on the CPU. On CUDA it
//! is not measured yet; `Auto` takes it there too (its rules are ordinary aten ops; only the
//! fused elementwise kernel is CPU-only).
//!
//! ```
//! use tch::{Kind, Tensor};
//! use tch_jacobian::{laplacian, LaplacianOptions, Strategy};
//! // u(x) = ‖x‖⁴ per sample in ℝ²: ∇u = 4‖x‖² x, Δu = 16 ‖x‖²
//! let x = Tensor::from_slice(&[1.0f64, 2.0, 0.5, 0.0]).view([2, 2]);
//! let u = |x: &Tensor| x.square().sum_dim_intlist(1, false, Kind::Double).square();
//! let out = laplacian(u, &x, &LaplacianOptions::default())?;
//! assert_eq!(Vec::<f64>::try_from(&out.laplacian).unwrap(), [80.0, 4.0]);
//! assert_eq!(Vec::<f64>::try_from(&out.value).unwrap(), [25.0, 0.0625]);
//! let g = out.gradient.unwrap(); // [B, 2]
//! assert_eq!(Vec::<f64>::try_from(g.flatten(0, -1)).unwrap(), [20.0, 40.0, 0.5, 0.0]);
//! assert_eq!(out.strategy, Strategy::Taylor);
//! # Ok::<(), tch_jacobian::Error>(())
//! ```

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;
use tch::{Kind, Tensor};

use crate::autograd::check_float;
use crate::closure::FnOutput;
use crate::error::{Error, Result};
use crate::hessian::{check_batch, check_per_sample};
use crate::strategy::{JacobianOptions, Progress, Randomness, Strategy};

/// Options for [`laplacian`]; PyTorch's names and defaults where it has them.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `create_graph` | `false` | the results are differentiable (to the weights `u` captures, and to `x` when it requires grad) — PyTorch's `create_graph`; PINN training needs it |
/// | `strategy` | [`Strategy::Auto`] | collapsed Taylor mode, nested reverse mode with an inner strategy, or `Auto` (see the [module docs](self)); the replicated strategies are refused |
/// | `estimator` | [`LaplacianEstimator::Exact`] | exact, or Hutchinson's estimate from random directions |
/// | `weights` | none | the weighted Laplacian `tr(σσᵀ∇²u)` with `σ: [n, m]` shared by the batch or `[B, n, m]` per sample |
/// | `check_independence` | `true` | check that the samples do not interact, one more forward pass (Taylor) or backward pass (nested); `false` for hot loops after a first checked call |
///
/// ```text
/// LaplacianOptions::default()                      Δu, exact, Auto (collapsed Taylor mode)
///     .weights(&sigma)                             tr(σσᵀ∇²u), σ: [n, m] or [B, n, m]
///     .estimator(LaplacianEstimator::Rademacher { directions: 16, seed: None })
///     .create_graph(true)                          differentiable (PINN training)
///     .strategy(Strategy::RowLoop)                 nested reverse mode (PyTorch's autograd loop)
/// ```
///
/// A PINN step for `−Δu = f` (`u` captures the trainable weights):
///
/// ```
/// use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};
/// use tch_jacobian::{laplacian, LaplacianOptions};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let net = nn::seq()
///     .add(nn::linear(vs.root() / "l1", 3, 16, Default::default()))
///     .add_fn(|x| x.tanh())
///     .add(nn::linear(vs.root() / "l2", 16, 1, Default::default()));
/// let mut opt = nn::Adam::default().build(&vs, 1e-3)?;
/// let x = Tensor::rand([32, 3], (Kind::Float, Device::Cpu));
/// let f = Tensor::ones([32], (Kind::Float, Device::Cpu));
/// let pinn = LaplacianOptions::default().create_graph(true);
/// let out = laplacian(|x: &Tensor| net.forward(x), &x, &pinn)?;
/// let loss = (out.laplacian + f).square().mean(Kind::Float);
/// opt.backward_step(&loss);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// `#[non_exhaustive]`: built from [`LaplacianOptions::default`] and the setters.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LaplacianOptions<'a> {
    /// Keep the graph (PyTorch's `create_graph`).
    pub create_graph: bool,
    /// How to compute it.
    pub strategy: Strategy,
    /// Exact, or an unbiased estimate.
    pub estimator: LaplacianEstimator,
    /// σ for `tr(σσᵀ∇²u)`.
    pub weights: Option<&'a Tensor>,
    /// Check that the samples do not interact.
    pub check_independence: bool,
}

impl Default for LaplacianOptions<'_> {
    fn default() -> Self {
        LaplacianOptions {
            create_graph: false,
            strategy: Strategy::Auto,
            estimator: LaplacianEstimator::Exact,
            weights: None,
            check_independence: true,
        }
    }
}

impl<'a> LaplacianOptions<'a> {
    /// Sets `create_graph`.
    ///
    /// ```
    /// let o = tch_jacobian::LaplacianOptions::default().create_graph(true);
    /// assert!(o.create_graph);
    /// ```
    pub fn create_graph(mut self, create_graph: bool) -> Self {
        self.create_graph = create_graph;
        self
    }

    /// Sets the strategy (see the [module docs](self)).
    ///
    /// ```
    /// use tch_jacobian::{LaplacianOptions, Strategy};
    /// let o = LaplacianOptions::default().strategy(Strategy::RowLoop); // nested reverse mode
    /// assert_eq!(o.strategy, Strategy::RowLoop);
    /// ```
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the estimator.
    ///
    /// ```
    /// use tch_jacobian::{LaplacianEstimator, LaplacianOptions};
    /// let o = LaplacianOptions::default()
    ///     .estimator(LaplacianEstimator::Rademacher { directions: 8, seed: Some(0) });
    /// assert!(matches!(o.estimator, LaplacianEstimator::Rademacher { directions: 8, .. }));
    /// ```
    pub fn estimator(mut self, estimator: LaplacianEstimator) -> Self {
        self.estimator = estimator;
        self
    }

    /// The weighted Laplacian `tr(σσᵀ∇²u) = Σ_d σ_dᵀ∇²u σ_d` (a diffusion's generator) with
    /// `σ: [n, m]` shared by the batch or `[B, n, m]` per sample (`n = numel(in)`). A selection
    /// of columns of the identity gives the Laplacian over a subset of the inputs (`Δₓ` of
    /// `u(t, x)` without `t`).
    ///
    /// ```
    /// use tch::{Kind, Tensor};
    /// use tch_jacobian::{laplacian, LaplacianOptions};
    /// // u = x₀² + 3 x₁² : ∇²u = diag(2, 6); σ = [[1], [1]] gives 1ᵀ∇²u 1 = 8
    /// let x = Tensor::from_slice(&[0.5f64, -1.0]).view([1, 2]);
    /// let sigma = Tensor::from_slice(&[1.0f64, 1.0]).view([2, 1]);
    /// let u = |x: &Tensor| (x.square() * Tensor::from_slice(&[1.0f64, 3.0])).sum_dim_intlist(1, false, Kind::Double);
    /// let out = laplacian(u, &x, &LaplacianOptions::default().weights(&sigma))?;
    /// assert_eq!(out.laplacian.double_value(&[0]), 8.0);
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn weights(mut self, sigma: &'a Tensor) -> Self {
        self.weights = Some(sigma);
        self
    }

    /// Sets `check_independence` (default `true`): `false` skips the check that the samples do
    /// not interact — for hot loops after a first checked call.
    ///
    /// ```
    /// use tch::{Kind, Tensor};
    /// use tch_jacobian::{laplacian, Error, LaplacianOptions};
    /// let x = Tensor::from_slice(&[0.1f64, 0.4, -0.3, 0.8, 0.2, -0.6]).view([3, 2]);
    /// // a batch statistic: every sample's u depends on the others' x
    /// let u = |x: &Tensor| (x - x.mean_dim(0, true, Kind::Double)).tanh().sum_dim_intlist(1, false, Kind::Double);
    /// assert!(matches!(laplacian(u, &x, &LaplacianOptions::default()), Err(Error::Contract(_))));
    /// let unchecked = LaplacianOptions::default().check_independence(false);
    /// assert!(laplacian(u, &x, &unchecked).is_ok()); // (wrong values)
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn check_independence(mut self, check: bool) -> Self {
        self.check_independence = check;
        self
    }

    /// The plan for `self.strategy`, or an error for the strategies that make no Laplacian.
    fn plan(&self) -> Result<Plan> {
        Ok(match self.strategy.validate()? {
            Strategy::Auto => Plan::Auto(Strategy::Auto),
            Strategy::Taylor => Plan::Taylor,
            s @ (Strategy::RowLoop | Strategy::Batched { .. } | Strategy::Forward) => Plan::Nested(s),
            s => {
                return Err(Error::InvalidArgument(format!(
                    "laplacian: Strategy::{s} makes no Laplacian; use auto, taylor, or a nested inner pass (row-loop, batched, forward)"
                )))
            }
        })
    }
}

/// How one call computes: Taylor mode (falling back to nested with the inner strategy), Taylor
/// only, or nested with the inner strategy (`Auto`: the row loop on the CPU, batched on CUDA).
#[derive(Debug, Clone, Copy)]
enum Plan {
    Auto(Strategy),
    Taylor,
    Nested(Strategy),
}

/// `u(x)`, `∇u` and the Laplacian (exact, weighted or estimated) of a per-sample closure, per
/// the options (see the [module docs](self) and [`LaplacianOptions`]). `u` must return `[B]` or
/// `[B, 1]`; another shape, an empty batch, `directions = 0` or weights of another shape are an
/// [`Error::Shape`] / [`Error::InvalidArgument`]; samples that interact an [`Error::Contract`].
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{laplacian, LaplacianEstimator, LaplacianOptions};
/// // u(x) = Σ sin(x_i): Δu = −Σ sin(x_i); Rademacher directions are exact for a diagonal ∇²u
/// let x = Tensor::from_slice(&[0.3f64, -1.2, 2.0, 0.7]).view([2, 2]);
/// let u = |x: &Tensor| x.sin().sum_dim_intlist(1, false, Kind::Double);
/// let opts = LaplacianOptions::default()
///     .estimator(LaplacianEstimator::Rademacher { directions: 3, seed: Some(1) });
/// let est = laplacian(u, &x, &opts)?;
/// let exact = -x.sin().sum_dim_intlist(1, false, Kind::Double);
/// assert!(est.laplacian.allclose(&exact, 1e-12, 1e-12, false));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn laplacian<F, O>(u: F, x: &Tensor, opts: &LaplacianOptions) -> Result<LaplacianOutput>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    let plan = opts.plan()?;
    opts.compute(&u, x, plan, &JacobianOptions::default(), "laplacian")
}

/// The Laplacian of a closure per sample, shape `[B]`: `Δu[b] = Σ_i ∂²u(x)[b]/∂x[b, i]²`, the
/// trace of [`per_sample_hessian_of`](crate::per_sample_hessian_of) —
/// `vmap(hessian(u))(x).diagonal(...).sum(-1)` in PyTorch. [`laplacian`] with the options
/// `JacobianOptions` shares with it: `create_graph`, `strategy` (see the [module docs](self)),
/// `check_independence`, `vmap_fallback` (the nested path's batched passes) and `progress`
/// (reported by the nested path's passes; one report for the Taylor pass). `strict` and a
/// `randomness` other than the default do not apply to a Laplacian and are refused
/// ([`Error::InvalidArgument`]).
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
    opts.refuse_unread(
        "laplacian_of",
        &[
            ("strict", opts.strict),
            ("randomness", opts.randomness != Randomness::default()),
        ],
    )?;
    let lopts = LaplacianOptions::default()
        .create_graph(opts.create_graph)
        .strategy(opts.strategy)
        .check_independence(opts.check_independence);
    let plan = lopts.plan()?;
    Ok(lopts.compute(&u, x, plan, opts, "laplacian_of")?.laplacian)
}

/// Which of [`LaplacianEstimator`]'s estimates; see [`LaplacianOptions::estimator`].
///
/// The exact operator, or an unbiased estimate of it from `directions` random directions per
/// sample (Hutchinson's estimator, `E[z zᵀ] = I`): `(1/k) Σ_r z_rᵀ ∇²u z_r`, `k = directions`.
/// Each direction costs about one first-order coefficient of the Taylor pass (one row of `T`),
/// so an estimate pays off when `k` is well below `n` and the variance it adds is acceptable.
///
/// `seed`, as in [`crate::PenaltyEstimator::Projections`]: `Some(seed)` draws from a `StdRng`
/// seeded with it (reproducible, independent of torch's generator — the same directions every
/// call, so vary it in a training loop), `None` draws from torch's global generator
/// (`tch::manual_seed` controls it).
///
/// ```
/// use tch_jacobian::LaplacianEstimator;
/// let e = LaplacianEstimator::Gaussian { directions: 4, seed: None };
/// assert_ne!(e, LaplacianEstimator::Exact);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LaplacianEstimator {
    /// All `D` directions: `e_i` (or the columns of `σ` with weights).
    #[default]
    Exact,
    /// `z` with independent ±1 entries (the lowest-variance Hutchinson estimator).
    Rademacher {
        /// Random directions per sample, ≥ 1.
        directions: usize,
        /// Reproducible draws, or torch's generator.
        seed: Option<u64>,
    },
    /// `z` with independent standard normal entries.
    Gaussian {
        /// Random directions per sample, ≥ 1.
        directions: usize,
        /// Reproducible draws, or torch's generator.
        seed: Option<u64>,
    },
}

/// What [`laplacian`] returns; every tensor is differentiable when it was asked with
/// `create_graph`.
#[derive(Debug)]
#[non_exhaustive]
pub struct LaplacianOutput {
    /// `u(x)`, shape `[B]`.
    pub value: Tensor,
    /// `∇ₓu`, shape `[B, *in]` — for the exact, unweighted Laplacian (`None` otherwise: the
    /// directions then do not span the gradient).
    pub gradient: Option<Tensor>,
    /// `Δu`, `tr(σσᵀ∇²u)` or their estimate, shape `[B]`.
    pub laplacian: Tensor,
    /// The strategy that computed it: [`Strategy::Taylor`], or the nested path's inner pass
    /// ([`Strategy::RowLoop`], [`Strategy::Batched`], [`Strategy::Forward`]); never `Auto`.
    pub strategy: Strategy,
}

/// How the deprecated [`Laplacian`] builder computes (0.1's name; [`LaplacianOptions::strategy`]
/// now says it with the one [`Strategy`]).
#[deprecated(
    since = "0.2.0",
    note = "use LaplacianOptions::strategy: Auto, Strategy::Taylor, or a nested inner strategy (RowLoop, Batched)"
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
#[allow(deprecated)]
pub enum LaplacianMethod {
    /// Collapsed Taylor mode, and the nested path for closures it cannot follow.
    #[default]
    Auto,
    /// Collapsed Taylor mode only.
    Taylor,
    /// Nested reverse mode (PyTorch's autograd loop).
    Nested,
}

/// 0.1's builder for Laplacians; [`laplacian`] with [`LaplacianOptions`] replaces it.
#[deprecated(since = "0.2.0", note = "use laplacian(u, &x, &LaplacianOptions)")]
#[derive(Debug, Default)]
#[allow(deprecated)]
pub struct Laplacian<'a> {
    opts: LaplacianOptions<'a>,
    method: LaplacianMethod,
    nested: Strategy,
}

#[allow(deprecated)]
impl<'a> Laplacian<'a> {
    /// The exact Laplacian, `Auto`, not differentiable.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets `create_graph`.
    pub fn create_graph(mut self, create_graph: bool) -> Self {
        self.opts.create_graph = create_graph;
        self
    }
    /// Sets the method.
    pub fn method(mut self, method: LaplacianMethod) -> Self {
        self.method = method;
        self
    }
    /// Sets the estimator.
    pub fn estimator(mut self, estimator: LaplacianEstimator) -> Self {
        self.opts.estimator = estimator;
        self
    }
    /// Sets the weights σ.
    pub fn weights(mut self, sigma: &'a Tensor) -> Self {
        self.opts.weights = Some(sigma);
        self
    }
    /// Sets the nested path's inner strategy.
    pub fn nested_strategy(mut self, strategy: Strategy) -> Self {
        self.nested = strategy;
        self
    }
    /// Sets `check_independence`.
    pub fn check_independence(mut self, check: bool) -> Self {
        self.opts.check_independence = check;
        self
    }
    /// [`laplacian`] with these options.
    pub fn compute<F, O>(&self, u: F, x: &Tensor) -> Result<LaplacianOutput>
    where
        F: Fn(&Tensor) -> O,
        O: FnOutput,
    {
        let plan = match self.method {
            LaplacianMethod::Auto => Plan::Auto(self.nested),
            LaplacianMethod::Taylor => Plan::Taylor,
            LaplacianMethod::Nested => Plan::Nested(self.nested),
        };
        self.opts
            .compute(&u, x, plan, &JacobianOptions::default(), "Laplacian")
    }
}

impl LaplacianOptions<'_> {
    /// Runs `plan` for `u` at `x`; `base` carries the nested path's pass settings
    /// (`vmap_fallback`, `progress`: it gets the nested path's passes, one report for the Taylor
    /// pass); `who` names the caller in errors.
    fn compute<F, O>(
        &self,
        u: &F,
        x: &Tensor,
        plan: Plan,
        base: &JacobianOptions,
        who: &str,
    ) -> Result<LaplacianOutput>
    where
        F: Fn(&Tensor) -> O,
        O: FnOutput,
    {
        let (b, n) = check_input(x)?;
        let directions = self.directions(x, b, n)?;
        let taylor = || -> Result<LaplacianOutput> {
            let (out, first) = self.taylor(u, x, b, &directions)?;
            if self.check_independence {
                self.taylor_independence(u, x, b, &directions, &first, who)?;
            }
            if let Some(p) = base.progress {
                p(Progress {
                    strategy: Strategy::Taylor,
                    done: 1,
                    total: 1,
                });
            }
            Ok(out)
        };
        match plan {
            Plan::Taylor => taylor(),
            Plan::Nested(inner) => self.nested(u, x, b, n, &directions, inner, base, who),
            Plan::Auto(inner) => match taylor() {
                Err(e @ (Error::NoTaylorRule { .. } | Error::TaylorUnsupported { .. })) => {
                    let out = self.nested(u, x, b, n, &directions, inner, base, who)?;
                    // Recorded (take_reroutes) and logged: the nested pass is slower, and it
                    // forms each sample's Hessian [B, n, n] even for an estimator or weights.
                    crate::second_order::record(crate::second_order::Reroute {
                        from: Strategy::Taylor,
                        to: out.strategy,
                        reason: format!(
                            "{}: this Laplacian runs nested reverse mode (slower; it forms each \
                             sample's [{b}, {n}, {n}] Hessian, estimators and weights included)",
                            e.one_line()
                        ),
                    });
                    Ok(out)
                }
                other => other,
            },
        }
    }

    /// The directions `[D, B, *in]` and the scale of `S` (1, or 1/k for an estimator). The
    /// exact ones (the identity, or σ shared by the batch) are views broadcast over the batch.
    fn directions(&self, x: &Tensor, b: i64, n: i64) -> Result<Directions> {
        let (kind, device) = (x.kind(), x.device());
        let sizes = x.size();
        let sigma = match self.weights {
            None => None,
            Some(s) => Some(check_weights(s, x, b, n)?),
        };
        let m = sigma.as_ref().map_or(n, |s| s.size()[s.dim() - 1]);
        let mut full = vec![0i64, b];
        full.extend_from_slice(&sizes[1..]);
        let (z, scale) = match self.estimator {
            LaplacianEstimator::Exact => {
                let Some(s) = sigma else {
                    // e_i in every sample: a batch-broadcast view (the first linear layer then
                    // multiplies one row, not B).
                    full[0] = n;
                    let eye = Tensor::f_eye(n, (kind, device))?;
                    let mut one = vec![n, 1];
                    one.extend_from_slice(&sizes[1..]);
                    let v = eye
                        .f_reshape(one.as_slice())?
                        .f_expand(full.as_slice(), false)?;
                    return Ok(Directions {
                        v,
                        scale: 1.0,
                        spans_gradient: true,
                    });
                };
                full[0] = m;
                let v = if s.dim() == 2 {
                    // [n, m] → [m, 1, *in], broadcast over the batch
                    let mut one = vec![m, 1];
                    one.extend_from_slice(&sizes[1..]);
                    s.f_transpose(0, 1)?
                        .f_reshape(one.as_slice())?
                        .f_expand(full.as_slice(), false)?
                } else {
                    s.f_permute([2i64, 0, 1].as_slice())?
                        .f_reshape(full.as_slice())?
                };
                return Ok(Directions {
                    v,
                    scale: 1.0,
                    spans_gradient: false,
                });
            }
            LaplacianEstimator::Rademacher { directions, seed } => (
                draw(directions, b, m, seed, true, kind, device)?,
                directions,
            ),
            LaplacianEstimator::Gaussian { directions, seed } => (
                draw(directions, b, m, seed, false, kind, device)?,
                directions,
            ),
        };
        // z: [k, B, m] → v = σ z
        let v = match sigma {
            None => z,
            Some(s) if s.dim() == 2 => z.f_matmul(&s.f_transpose(0, 1)?)?,
            Some(s) => Tensor::f_einsum("bnm,kbm->kbn", &[&s, &z], None::<i64>)?,
        };
        full[0] = scale as i64;
        Ok(Directions {
            v: v.f_reshape(full.as_slice())?,
            scale: 1.0 / scale as f64,
            spans_gradient: false,
        })
    }

    /// The Taylor pass: the output, and the first-order coefficients `[D, B]` (detached) for the
    /// independence check.
    fn taylor<F, O>(
        &self,
        u: &F,
        x: &Tensor,
        b: i64,
        dirs: &Directions,
    ) -> Result<(LaplacianOutput, Tensor)>
    where
        F: Fn(&Tensor) -> O,
        O: FnOutput,
    {
        let run = || -> Result<(LaplacianOutput, Tensor)> {
            // The input as the closure sees it: with create_graph, requiring grad and connected
            // to the caller's graph (so Δu is differentiable in x too), as nested reverse mode
            // hands it over; otherwise detached, not requiring grad: the pass then records only
            // what the crate's derivatives inside the closure need (a backward pass of the
            // closure's own over x is refused, and Auto reruns by nested reverse mode).
            let xin = match (self.create_graph, x.requires_grad()) {
                (true, true) => x.shallow_clone(),
                (true, false) => x.f_detach()?.set_requires_grad(true),
                (false, _) => x.f_detach()?,
            };
            let call = |z: &Tensor| u(z).into_output();
            let t = crate::native::taylor::collapsed(call, &xin, &dirs.v, self.create_graph)?;
            let value = check_output(t.value, b, x)?;
            let mut lap = t.second.f_reshape([b])?;
            if dirs.scale != 1.0 {
                lap = lap.f_mul_scalar(dirs.scale)?;
            }
            let gradient = if dirs.spans_gradient {
                let d = dirs.v.size()[0];
                let mut shape = vec![b];
                shape.extend_from_slice(&x.size()[1..]);
                Some(
                    t.first
                        .f_reshape([d, b])?
                        .f_transpose(0, 1)?
                        .f_reshape(shape.as_slice())?,
                )
            } else {
                None
            };
            let detach = |t: Tensor| -> Result<Tensor> {
                Ok(if self.create_graph { t } else { t.f_detach()? })
            };
            let first = t.first.f_detach()?.f_reshape([dirs.v.size()[0], b])?;
            let out = LaplacianOutput {
                value: detach(value)?,
                gradient: gradient.map(detach).transpose()?,
                laplacian: detach(lap)?,
                strategy: Strategy::Taylor,
            };
            Ok((out, first))
        };
        // Grad mode on, whatever the caller set: the closure runs as nested reverse mode runs it
        // (a no_grad region inside it is then a constant for every method).
        crate::autograd::grad_mode_on(run)
    }

    /// The independence check of the Taylor path: one more collapsed pass along the direction
    /// `r_b = Σ_d c_{d,b} v_{d,b}` (random `c`), whose first-order coefficient must equal
    /// `Σ_d c_{d,b} T_u[d, b]` for every sample when the samples do not interact.
    fn taylor_independence<F, O>(
        &self,
        u: &F,
        x: &Tensor,
        b: i64,
        dirs: &Directions,
        first: &Tensor,
        who: &str,
    ) -> Result<()>
    where
        F: Fn(&Tensor) -> O,
        O: FnOutput,
    {
        if b < 2 {
            return Ok(());
        }
        crate::autograd::grad_mode_on(|| {
            let d = dirs.v.size()[0];
            let c = crate::independence::probe_like(first, 6)?; // [D, B]
            let r = if dirs.spans_gradient {
                // v_d = e_d in every sample: r_b = c[:, b], without forming [D, B, *in]
                let mut shape = vec![1, b];
                shape.extend_from_slice(&x.size()[1..]);
                c.f_transpose(0, 1)?
                    .f_contiguous()?
                    .f_reshape(shape.as_slice())?
            } else {
                let mut cshape = vec![d, b];
                cshape.extend(std::iter::repeat_n(1, x.dim() - 1));
                dirs.v
                    .f_mul(&c.f_reshape(cshape.as_slice())?)?
                    .f_sum_dim_intlist([0i64].as_slice(), true, None::<Kind>)?
            };
            let call = |z: &Tensor| u(z).into_output();
            let probe = crate::native::taylor::collapsed(call, &x.f_detach()?, &r, false)?;
            let actual = probe.first.f_detach()?.f_reshape([b, 1])?;
            let predicted = c
                .f_mul(first)?
                .f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)?
                .f_reshape([b, 1])?;
            let scale = c
                .f_abs()?
                .f_mul(&first.f_abs()?)?
                .f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)?
                .f_reshape([b, 1])?;
            let reference = crate::independence::magnitude(&probe.value)?;
            crate::independence::compare(who, &actual, &predicted, &scale, reference)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn nested<F, O>(
        &self,
        u: &F,
        x: &Tensor,
        b: i64,
        n: i64,
        dirs: &Directions,
        inner: Strategy,
        base: &JacobianOptions,
        who: &str,
    ) -> Result<LaplacianOutput>
    where
        F: Fn(&Tensor) -> O,
        O: FnOutput,
    {
        let inner = crate::hessian::nested_inner(inner, x.device(), who)?;
        let opts = base
            .create_graph(self.create_graph)
            .strategy(inner)
            .check_independence(self.check_independence);
        let (value, g, lap) = if dirs.spans_gradient {
            crate::hessian::nested_laplacian(who, u, x, &opts)?
        } else {
            // Σ_d v_dᵀ H v_d from the per-sample Hessians [B, n, n].
            let (value, g, h) = crate::hessian::nested_hessian(who, u, x, &opts)?;
            let d = dirs.v.size()[0];
            let v = dirs.v.f_reshape([d, b, n])?;
            let h = h.f_reshape([b, n, n])?; // [B, *in, *in] → [B, n, n]
            let q = Tensor::f_einsum("dbi,bij,dbj->b", &[&v, &h, &v], None::<i64>)?;
            (value, g, q.f_mul_scalar(dirs.scale)?)
        };
        let value = check_output(value, b, x)?;
        let gradient = dirs.spans_gradient.then_some(g);
        let (value, gradient, lap) = if self.create_graph {
            (value, gradient, lap)
        } else {
            (
                value.f_detach()?,
                gradient.map(|g| g.detach()),
                lap.f_detach()?,
            )
        };
        Ok(LaplacianOutput {
            value,
            gradient,
            laplacian: lap,
            strategy: inner,
        })
    }
}

/// The directions of one call.
struct Directions {
    /// `[D, B, *in]`.
    v: Tensor,
    /// 1, or `1/k` for an estimator.
    scale: f64,
    /// The exact, unweighted case: `v_d = e_d`, so the first-order coefficients are `∇u`.
    spans_gradient: bool,
}

/// `(B, n)` for `x = [B, *in]`.
fn check_input(x: &Tensor) -> Result<(i64, i64)> {
    let b = check_batch(x, "Laplacians")?;
    Ok((b, x.numel() as i64 / b))
}

/// `u(x)` as `[B]`, or an error naming the shape.
fn check_output(y: Tensor, b: i64, x: &Tensor) -> Result<Tensor> {
    check_per_sample(&y, b, x)?;
    Ok(y.f_reshape([b])?)
}

/// σ checked against `x`: `[n, m]` or `[B, n, m]`, on x's device, in x's dtype.
fn check_weights(s: &Tensor, x: &Tensor, b: i64, n: i64) -> Result<Tensor> {
    check_float(s, "σ")?;
    let ss = s.size();
    let ok = match ss.len() {
        2 => ss[0] == n,
        3 => ss[0] == b && ss[1] == n,
        _ => false,
    };
    if !ok || ss[ss.len() - 1] == 0 {
        return Err(Error::Shape(format!(
            "weights σ must be [n, m] or [B, n, m] with n = {n} (the elements of a sample) and B = {b}; got shape {ss:?} for x {:?}",
            x.size()
        )));
    }
    if s.device() != x.device() {
        return Err(Error::Device(format!(
            "σ is on {:?} but x is on {:?}",
            s.device(),
            x.device()
        )));
    }
    Ok(s.f_to_kind(x.kind())?)
}

/// `[k, B, m]` Rademacher (±1) or standard normal draws.
fn draw(
    k: usize,
    b: i64,
    m: i64,
    seed: Option<u64>,
    rademacher: bool,
    kind: Kind,
    device: tch::Device,
) -> Result<Tensor> {
    if k == 0 {
        return Err(Error::InvalidArgument(
            "a Laplacian estimator needs directions ≥ 1".into(),
        ));
    }
    let shape = [k as i64, b, m];
    match seed {
        None if rademacher => Ok(Tensor::f_randint(2, shape, (Kind::Int64, device))?
            .f_mul_scalar(2)?
            .f_sub_scalar(1)?
            .f_to_kind(kind)?),
        None => Ok(Tensor::f_randn(shape, (kind, device))?),
        Some(seed) => {
            let mut rng = StdRng::seed_from_u64(seed);
            let count = (k as i64 * b * m) as usize;
            let vals: Vec<f64> = (0..count)
                .map(|_| {
                    if rademacher {
                        if rng.random_bool(0.5) {
                            1.0
                        } else {
                            -1.0
                        }
                    } else {
                        rng.sample(StandardNormal)
                    }
                })
                .collect();
            Ok(Tensor::f_from_slice(&vals)?
                .f_reshape(shape)?
                .f_to_kind(kind)?
                .f_to_device(device)?)
        }
    }
}
