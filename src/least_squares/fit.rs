//! Fitting a tch model by Levenberg–Marquardt or Gauss–Newton: [`ModelFit`], a training-loop
//! object whose unknowns are the trainable parameters `θ` (`n` numbers, every leaf of an
//! `nn::VarStore` or a list of tensors) and whose residuals `r(θ)` (`[m]`) come from a closure
//! that runs the model on a data batch — pypose's `pp.optim.LM`, with the crate's derivatives.
//!
//! Each [`ModelFit::step`] minimizes the linearization of `L(θ) = ½‖r(θ)‖²`:
//!
//! ```text
//! (JᵀJ + μ D) δ = −Jᵀr,      J = ∂r/∂θ  [m, n],   D = diag(JᵀJ) (Marquardt's scaling)
//! ρ = (L(θ) − L(θ + δ)) / (−δᵀJᵀr − ½‖Jδ‖²)              (actual / predicted reduction)
//! ρ > 0: θ ← θ + δ,  μ ← μ · max(1/3, 1 − (2ρ − 1)³),  ν ← 2          (Nielsen 1999)
//! else:  θ unchanged (restored bit for bit),  μ ← μ ν,  ν ← 2ν,  solve again with the same J
//! ```
//!
//! up to [`FitOptions::max_trials`] solves per step. [`Method::GaussNewton`] solves with `μ = 0`
//! (a tiny jitter only where `JᵀJ` is singular) and backtracks `θ + αδ`, `α = 1, ½, ¼, …`, to
//! Armijo's condition `L(θ + αδ) ≤ L(θ) + 10⁻⁴ α δᵀJᵀr`. Trial points are evaluated under
//! `no_grad`; the parameters change in place (under `no_grad`), so the model sees them at once.
//!
//! # Linear solvers ([`LinearSolver`], Ceres's vocabulary)
//!
//! * **Dense** (Ceres's `DENSE_NORMAL_CHOLESKY`): `J` by [`jacobian_with`](crate::jacobian_with)
//!   over the parameter leaves (one batched backward pass with the native engine; the blocks
//!   concatenated to `[m, n]`; on the CPU with `n ≤ m`, `n` forward-mode columns instead), `JᵀJ`
//!   formed and the damped system solved by Cholesky, in f64 also for f32 parameters (`JᵀJ`
//!   squares `J`'s condition number, past f32's `1/ε` for a network) — `m·n` numbers of memory
//!   (`m·n` f64 for the solve).
//! * **MatrixFree** (Ceres's `CGNR`): preconditioned conjugate gradients on the damped normal
//!   equations using only `J v` (the double-backward trick: `Jᵀw` built once per step with
//!   `create_graph`, then one backward pass per product) and `Jᵀu` (one backward pass), never
//!   forming `J`: `O(m + n)` memory beyond the model's graph. `D` is Hutchinson's estimate
//!   `D ≈ (1/k) Σ_p (Jᵀz_p)²` with `k` = [`FitOptions::probes`] Rademacher vectors `z_p ∈ {±1}ᵐ`
//!   (unbiased: `E[(Jᵀz)ⱼ²] = Σᵢ Jᵢⱼ²`; a fixed hash of the probe's count and the entry, not
//!   torch's generator, so that a fit does not depend on its random state), kept as the running
//!   maximum over the steps (MINPACK's rule for its scaling: the estimate's noise then only
//!   damps more, and `μ` settles — with a fresh noisy `D` each step it does not), floored at
//!   `10⁻¹⁰ max D`; the preconditioner is `(1 + μ) D` (Jacobi). CG stops when `‖res‖ ≤ tol ‖Jᵀr‖`
//!   ([`FitOptions::cg_tolerance`], fixed) or after [`FitOptions::cg_max_iterations`]; the
//!   predicted reduction is computed at the `δ` CG returned (one more `J v`), so an inexact
//!   solve is still judged honestly.
//! * **Auto**: Dense when `m · n · dtype size ≤ min(`[`FitOptions::memory_budget`]` (256 MiB),
//!   free memory / 4)`, else MatrixFree ([`LinearSolver::resolve`]). Each step reports the
//!   solver that ran ([`FitStepOutput::linear_solver`]).
//!
//! ```
//! use tch::{nn, nn::Module, Device, Kind, Tensor};
//! use tch_jacobian::{FitOptions, ModelFit};
//!
//! // y = tanh(2x − 1) + 0.5 fitted by a 1 → 1 layer and a tanh (exactly representable).
//! // (A fixed seed for the layer's initial weights: from 2 of 300 random ones the fit ends in
//! // another minimum.)
//! tch::manual_seed(0);
//! let vs = nn::VarStore::new(Device::Cpu);
//! let fc = nn::linear(vs.root() / "fc", 1, 1, Default::default());
//! let x = Tensor::linspace(-2.0, 2.0, 50, (Kind::Float, Device::Cpu)).view([50, 1]);
//! let y = (&x * 2.0 - 1.0).tanh().view([50]) + 0.5;
//! let b = vs.root().var("b", &[1], nn::Init::Const(0.0));
//! let mut lm = ModelFit::new(&vs, &FitOptions::default())?;
//! let mut loss = f64::INFINITY;
//! for _ in 0..30 {
//!     let step = lm.step(|| fc.forward(&x).tanh().view([50]) + &b - &y)?;
//!     loss = step.loss;
//! }
//! assert!(loss < 1e-8, "loss {loss}");
//! # Ok::<(), tch_jacobian::Error>(())
//! ```

use tch::{nn, Kind, Tensor};

pub use super::options::LinearSolver;
use super::options::{Method, SolverSettings};
use crate::autograd::{vjp_into, Linearized, Names, Pass};
use crate::closure::FnOutput;
use crate::error::{Error, Result};
use crate::strategy::{JacobianOptions, Strategy};

/// Options of [`ModelFit`]: `default()` and chainable setters. An option that the chosen method
/// or linear solver would not read is refused by [`ModelFit::new`] (an
/// [`Error::InvalidArgument`] naming it).
///
/// | option | default | read by |
/// |---|---|---|
/// | `method` | `Auto` (Levenberg–Marquardt) | all (`Dogleg` is refused) |
/// | `linear_solver` | `Auto` | all |
/// | `memory_budget` | 256 MiB | `linear_solver = Auto` |
/// | `damping` (initial `μ`) | `1e-3` | Levenberg–Marquardt |
/// | `max_trials` | 10 | all: LM solves, or GN halvings, per step |
/// | `strategy` (for `J`) | `Auto` | Dense (and `Auto`) |
/// | `cg_tolerance` | `1e-3` | MatrixFree (and `Auto`) |
/// | `cg_max_iterations` | 100 | MatrixFree (and `Auto`) |
/// | `probes` | 8 | MatrixFree (and `Auto`) |
///
/// ```
/// use tch_jacobian::least_squares::{FitOptions, LinearSolver, Method};
/// let opts = FitOptions::default().method(Method::GaussNewton).linear_solver(LinearSolver::Dense);
/// assert_eq!(opts.linear_solver, LinearSolver::Dense);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct FitOptions {
    /// Levenberg–Marquardt (`Auto`) or Gauss–Newton.
    pub method: Method,
    /// Dense Cholesky, matrix-free CG, or `Auto` by [`FitOptions::memory_budget`].
    pub linear_solver: LinearSolver,
    /// Bytes `J` may take for `Auto` to choose Dense.
    pub memory_budget: usize,
    /// The initial damping `μ` (relative to `D = diag(JᵀJ)`).
    pub damping: f64,
    /// Solves per step (LM) or step halvings (GN) before the step is given up.
    pub max_trials: usize,
    /// How the dense `J` is computed ([`jacobian_with`](crate::jacobian_with)'s strategy).
    pub strategy: Strategy,
    /// CG stops at `‖res‖ ≤ cg_tolerance · ‖Jᵀr‖`.
    pub cg_tolerance: f64,
    /// CG iterations per solve at most.
    pub cg_max_iterations: usize,
    /// Rademacher probes for Hutchinson's `diag(JᵀJ)`.
    pub probes: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            method: Method::Auto,
            linear_solver: LinearSolver::Auto,
            memory_budget: 256 << 20,
            damping: 1e-3,
            max_trials: 10,
            strategy: Strategy::Auto,
            cg_tolerance: 1e-3,
            cg_max_iterations: 100,
            probes: 8,
        }
    }
}

impl FitOptions {
    /// Sets the method (`Auto`/`LevenbergMarquardt` or `GaussNewton`).
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }
    /// Sets the linear solver.
    pub fn linear_solver(mut self, linear_solver: LinearSolver) -> Self {
        self.linear_solver = linear_solver;
        self
    }
    /// Sets the memory budget (bytes) under which `Auto` forms `J`.
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }
    /// Sets the initial damping `μ > 0` (Levenberg–Marquardt).
    pub fn damping(mut self, damping: f64) -> Self {
        self.damping = damping;
        self
    }
    /// Sets the solves (LM) or halvings (GN) per step, at least 1.
    pub fn max_trials(mut self, max_trials: usize) -> Self {
        self.max_trials = max_trials;
        self
    }
    /// Sets the strategy of the dense Jacobian.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }
    /// Sets CG's relative tolerance, in `(0, 1)`.
    pub fn cg_tolerance(mut self, cg_tolerance: f64) -> Self {
        self.cg_tolerance = cg_tolerance;
        self
    }
    /// Sets CG's iteration cap, at least 1.
    pub fn cg_max_iterations(mut self, cg_max_iterations: usize) -> Self {
        self.cg_max_iterations = cg_max_iterations;
        self
    }
    /// Sets the number of Hutchinson probes for `D`, at least 1.
    pub fn probes(mut self, probes: usize) -> Self {
        self.probes = probes;
        self
    }

    /// The numbers, and the options the chosen path would not read.
    fn validate(&self) -> Result<()> {
        let d = FitOptions::default();
        let method = self.method.resolve();
        if !matches!(method, Method::LevenbergMarquardt | Method::GaussNewton) {
            return Err(Error::InvalidArgument(format!(
                "method {method}: ModelFit runs Levenberg–Marquardt (Auto, lm) or Gauss–Newton"
            )));
        }
        SolverSettings {
            linear_solver: self.linear_solver,
            memory_budget: (self.memory_budget, d.memory_budget),
            damping: self.damping,
            cg_tolerance: self.cg_tolerance,
            counts: &[
                ("max_trials", self.max_trials),
                ("cg_max_iterations", self.cg_max_iterations),
                ("probes", self.probes),
            ],
            // damping is read by both solvers (Levenberg–Marquardt's μ)
            matrix_free_only: &[
                ("cg_tolerance", self.cg_tolerance != d.cg_tolerance),
                (
                    "cg_max_iterations",
                    self.cg_max_iterations != d.cg_max_iterations,
                ),
                ("probes", self.probes != d.probes),
            ],
        }
        .validate()?;
        // Every option is read or refused.
        if method == Method::GaussNewton && self.damping != d.damping {
            return Err(Error::InvalidArgument(format!(
                "damping ({}) is Levenberg–Marquardt's; method is gauss-newton (μ = 0): leave damping at its default or use Method::LevenbergMarquardt",
                self.damping
            )));
        }
        if self.linear_solver == LinearSolver::MatrixFree && self.strategy != d.strategy {
            return Err(Error::InvalidArgument(format!(
                "strategy ({}) chooses how the dense J is computed; linear_solver is matrix-free (J is never formed): leave strategy at Auto",
                self.strategy
            )));
        }
        self.strategy.validate()?;
        Ok(())
    }
}

/// What one [`ModelFit::step`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct FitStepOutput {
    /// `½‖r‖²` after the step (before it when no trial was accepted).
    pub loss: f64,
    /// `½‖r‖²` before the step.
    pub initial_loss: f64,
    /// `‖Jᵀr‖` before the step.
    pub gradient_norm: f64,
    /// The damping `μ` after the step (0 for Gauss–Newton).
    pub damping: f64,
    /// Whether the parameters moved (a trial was accepted).
    pub accepted: bool,
    /// Trial points evaluated (solves for LM, halvings + 1 for GN).
    pub trials: usize,
    /// The step length `α` taken (1 for LM; 0 when rejected).
    pub step_length: f64,
    /// The solver that ran: `Dense` or `MatrixFree`.
    pub linear_solver: LinearSolver,
    /// CG iterations over the step's solves (0 for Dense).
    pub cg_iterations: usize,
    /// `m`, the residuals.
    pub residuals: usize,
}

/// Levenberg–Marquardt / Gauss–Newton over a model's parameters: see the
/// [module docs](self).
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// use tch_jacobian::least_squares::{FitOptions, LinearSolver, Method, ModelFit};
///
/// // A line through three points, its two parameters as plain leaves: one Gauss–Newton step.
/// let a = Tensor::zeros([2], (Kind::Double, Device::Cpu)).set_requires_grad(true);
/// let t = Tensor::from_slice(&[0.0f64, 1.0, 2.0]);
/// let y = Tensor::from_slice(&[1.0f64, 3.0, 5.0]);
/// let opts = FitOptions::default().method(Method::GaussNewton);
/// let mut gn = ModelFit::from_tensors(&[a.shallow_clone()], &opts)?;
/// let step = gn.step(|| a.get(0) + a.get(1) * &t - &y)?;
/// assert_eq!(step.linear_solver, LinearSolver::Dense);
/// assert!(step.loss < 1e-20);
/// assert!(a.allclose(&Tensor::from_slice(&[1.0f64, 2.0]), 1e-12, 1e-12, false));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub struct ModelFit {
    names: Vec<String>,
    params: Vec<Tensor>,
    opts: FitOptions,
    method: Method,
    mu: f64,
    nu: f64,
    kind: Kind,
    n: usize,
    /// The matrix-free `D`, a running maximum over the steps.
    diag: Option<Tensor>,
    /// Hutchinson probes drawn so far (the matrix-free probes' hash counter).
    draws: i64,
}

impl std::fmt::Debug for ModelFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFit")
            .field("parameters", &self.names)
            .field("n", &self.n)
            .field("method", &self.method)
            .field("damping", &self.mu)
            .field("opts", &self.opts)
            .finish()
    }
}

impl ModelFit {
    /// The trainable variables of `vs` ([`trainable_parameters`](crate::trainable_parameters))
    /// as the unknowns.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a `VarStore` without trainable variables or an option the
    /// chosen path would not read; [`Error::Kind`] for parameters that are not all `f32` or all
    /// `f64`.
    pub fn new(vs: &nn::VarStore, opts: &FitOptions) -> Result<ModelFit> {
        let params = crate::params::trainable_parameters(vs);
        if params.is_empty() {
            return Err(Error::InvalidArgument(
                "no trainable parameters: the VarStore has no variable that requires grad".into(),
            ));
        }
        let (names, tensors) = params.into_iter().unzip();
        ModelFit::build(names, tensors, opts)
    }

    /// Leaf tensors that require grad (shallow clones share storage: the originals change) as
    /// the unknowns.
    ///
    /// # Errors
    /// As [`ModelFit::new`]; also [`Error::InvalidArgument`] for a tensor that is not a leaf
    /// requiring grad.
    pub fn from_tensors(params: &[Tensor], opts: &FitOptions) -> Result<ModelFit> {
        if params.is_empty() {
            return Err(Error::InvalidArgument(
                "no trainable parameters: params is empty".into(),
            ));
        }
        let names = (0..params.len())
            .map(|i| format!("parameter {i}"))
            .collect();
        ModelFit::build(
            names,
            params.iter().map(|p| p.shallow_clone()).collect(),
            opts,
        )
    }

    fn build(names: Vec<String>, params: Vec<Tensor>, opts: &FitOptions) -> Result<ModelFit> {
        opts.validate()?;
        let kind = params[0].f_kind()?;
        for (name, p) in names.iter().zip(&params) {
            if !p.requires_grad() || !p.is_leaf() {
                return Err(Error::InvalidArgument(format!(
                    "{name} (shape {:?}) must be a leaf tensor that requires grad",
                    p.size()
                )));
            }
            let k = p.f_kind()?;
            if k != kind || !matches!(k, Kind::Float | Kind::Double) {
                return Err(Error::Kind(format!(
                    "{name} has dtype {k:?}; ModelFit needs all parameters Float or all Double (the first is {kind:?})"
                )));
            }
        }
        let n = params.iter().map(|p| p.numel()).sum();
        Ok(ModelFit {
            names,
            params,
            opts: *opts,
            method: opts.method.resolve(),
            mu: opts.damping,
            nu: 2.0,
            kind,
            n,
            diag: None,
            draws: 0,
        })
    }

    /// The current damping `μ`.
    pub fn damping(&self) -> f64 {
        self.mu
    }

    /// `n`, the number of unknowns.
    pub fn parameter_count(&self) -> usize {
        self.n
    }

    /// The solver `linear_solver` stands for with `m` residuals ([`LinearSolver::resolve`]).
    pub fn resolve_linear_solver(&self, m: usize) -> LinearSolver {
        let bytes = (m as u128) * (self.n as u128) * (self.kind.elt_size_in_bytes() as u128);
        self.opts
            .linear_solver
            .resolve(bytes, self.opts.memory_budget, self.params[0].device())
    }

    /// One step: `residual()` (run with grad on) gives `r = [m]` at the current parameters; the
    /// damped (or Gauss–Newton) step is solved, trial points evaluated (under `no_grad`) and the
    /// parameters updated in place when one is accepted, else left exactly as they were.
    ///
    /// # Errors
    /// [`Error::Shape`] for a residual that is not 1-d (flatten it: `.view([-1])`) or empty;
    /// [`Error::Kind`] for a residual of another dtype than the parameters;
    /// [`Error::InvalidArgument`] for NaN or infinite residuals at the current parameters (a
    /// non-finite residual at a trial point is a rejected trial); [`Error::Contract`] when the
    /// closure panics; the closure's own errors.
    pub fn step<F, O>(&mut self, mut residual: F) -> Result<FitStepOutput>
    where
        F: FnMut() -> O,
        O: FnOutput,
    {
        let r = crate::autograd::grad_mode_on(|| {
            crate::closure::call_guarded(|| residual().into_output())
        })?;
        self.check_residual(&r)?;
        let m = r.numel();
        let solver = self.resolve_linear_solver(m);
        let rd = r.f_detach()?;
        let loss0 = 0.5 * rd.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        let params = self.params.clone_shallow();
        let kind = self.kind;
        let mut trial = |delta: &Tensor, alpha: f64| -> Result<f64> {
            crate::autograd::with_grad_mode(false, || -> Result<()> {
                for (p, d) in params.iter().zip(split(delta, &params)?) {
                    // Through `.data()`: the matrix-free solve reuses r's graph after a rejected
                    // trial, and the values are restored before it does (the version counter is
                    // bumped once at the end of the step instead).
                    let _ = p
                        .f_data()?
                        .f_add_(&d.f_mul_scalar(alpha)?.f_to_kind(kind)?)?;
                }
                Ok(())
            })?;
            let rt = crate::autograd::with_grad_mode(false, || {
                crate::closure::call_guarded(|| residual().into_output())
            })?;
            if rt.size() != rd.size() {
                return Err(Error::Shape(format!(
                    "the residual changed shape from {:?} to {:?} at a trial point",
                    rd.size(),
                    rt.size()
                )));
            }
            let l = 0.5 * rt.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
            Ok(if l.is_finite() { l } else { f64::INFINITY })
        };
        let saved: Vec<Tensor> = crate::autograd::with_grad_mode(false, || {
            params
                .iter()
                .map(|p| {
                    let mut c = p.f_detach()?.f_zeros_like()?;
                    c.f_copy_(p)?;
                    Ok(c)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let restore = || -> Result<()> {
            crate::autograd::with_grad_mode(false, || {
                for (p, s) in params.iter().zip(&saved) {
                    p.f_data()?.f_copy_(s)?;
                }
                Ok(())
            })
        };

        // The linear system: dense (A, g, D) or matrix-free (products).
        let sys = match solver {
            LinearSolver::Dense => System::dense(&r, &params, &self.opts)?,
            _ => {
                let sys = System::matrix_free(
                    &r,
                    &params,
                    self.opts.probes,
                    self.draws,
                    self.diag.as_ref(),
                )?;
                self.draws += self.opts.probes as i64;
                if let System::MatrixFree { d, .. } = &sys {
                    self.diag = Some(d.shallow_clone());
                }
                sys
            }
        };
        let g = sys.gradient();
        let gnorm = g.f_norm()?.f_double_value(&[])?;
        let mut out = FitStepOutput {
            loss: loss0,
            initial_loss: loss0,
            gradient_norm: gnorm,
            damping: 0.0,
            accepted: false,
            trials: 0,
            step_length: 0.0,
            linear_solver: solver,
            cg_iterations: 0,
            residuals: m,
        };
        if gnorm == 0.0 {
            out.damping = if self.method == Method::GaussNewton {
                0.0
            } else {
                self.mu
            };
            return Ok(out);
        }
        match self.method {
            Method::GaussNewton => {
                let (delta, _pred, iters) = sys.solve(0.0, &self.opts)?;
                out.cg_iterations += iters;
                let slope = g.f_dot(&delta)?.f_double_value(&[])?; // < 0 for a descent step
                let mut alpha = 1.0;
                for _ in 0..self.opts.max_trials {
                    out.trials += 1;
                    let l = trial(&delta, alpha)?;
                    if slope < 0.0 && l <= loss0 + 1e-4 * alpha * slope {
                        out.accepted = true;
                        out.loss = l;
                        out.step_length = alpha;
                        break;
                    }
                    restore()?;
                    alpha *= 0.5;
                }
            }
            _ => {
                for _ in 0..self.opts.max_trials {
                    out.trials += 1;
                    let Some((delta, pred, iters)) = sys.solve_damped(self.mu, &self.opts)? else {
                        self.reject();
                        continue;
                    };
                    out.cg_iterations += iters;
                    let l = trial(&delta, 1.0)?;
                    let rho = (loss0 - l) / pred;
                    if pred > 0.0 && rho.is_finite() && rho > 0.0 {
                        self.mu *= (1.0 / 3.0f64).max(1.0 - (2.0 * rho - 1.0).powi(3));
                        self.mu = self.mu.max(1e-15);
                        self.nu = 2.0;
                        out.accepted = true;
                        out.loss = l;
                        out.step_length = 1.0;
                        break;
                    }
                    restore()?;
                    self.reject();
                }
                out.damping = self.mu;
            }
        }
        drop(sys);
        if out.accepted {
            // The parameters changed: a graph recorded before the step must not backpropagate
            // through the new values silently (what an in-place update under no_grad does).
            crate::autograd::with_grad_mode(false, || -> Result<()> {
                for p in &self.params {
                    let _ = p.shallow_clone().f_add_scalar_(0.0)?;
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    fn reject(&mut self) {
        self.mu = (self.mu * self.nu).min(1e16);
        self.nu *= 2.0;
    }

    fn check_residual(&self, r: &Tensor) -> Result<()> {
        if r.dim() != 1 {
            return Err(Error::Shape(format!(
                "the residual must be 1-d [m]; got shape {:?} (flatten it: .view([-1]))",
                r.size()
            )));
        }
        if r.numel() == 0 {
            return Err(Error::Shape("the residual is empty (m = 0)".into()));
        }
        let k = r.f_kind()?;
        if k != self.kind {
            return Err(Error::Kind(format!(
                "the residual has dtype {k:?}; the parameters are {:?}",
                self.kind
            )));
        }
        if !bool::try_from(r.f_isfinite()?.f_all()?)? {
            let bad = r
                .f_isfinite()?
                .f_logical_not()?
                .f_nonzero()?
                .f_int64_value(&[0, 0])?;
            return Err(Error::InvalidArgument(format!(
                "the residual has NaN or infinite entries at the current parameters (first: entry {bad} of {})",
                r.numel()
            )));
        }
        if !r.requires_grad() {
            return Err(Error::InvalidArgument(
                "the residual does not depend on the parameters (it does not require grad)".into(),
            ));
        }
        Ok(())
    }
}

trait CloneShallow {
    fn clone_shallow(&self) -> Vec<Tensor>;
}

impl CloneShallow for Vec<Tensor> {
    fn clone_shallow(&self) -> Vec<Tensor> {
        self.iter().map(|t| t.shallow_clone()).collect()
    }
}

/// The step's linear system `(JᵀJ + μD) δ = −g`.
enum System<'a> {
    Dense {
        a: Tensor,
        g: Tensor,
        d: Tensor,
    },
    MatrixFree {
        r: Tensor,
        params: &'a [Tensor],
        /// `Jᵀw` built once with create_graph: `J v = ∂(Jᵀw · v)/∂w` (the crate's one
        /// Jacobian-vector product).
        lin: Linearized<'static>,
        g: Tensor,
        d: Tensor,
    },
}

impl<'a> System<'a> {
    fn dense(r: &Tensor, params: &[Tensor], opts: &FitOptions) -> Result<System<'a>> {
        let xs: Vec<&Tensor> = params.iter().collect();
        let strategy = dense_strategy(opts.strategy, r, params);
        let blocks =
            crate::jacobian::jacobian_with(r, &xs, &JacobianOptions::default().strategy(strategy))?;
        let m = r.numel() as i64;
        let cols = blocks
            .iter()
            .map(|b| Ok(b.f_reshape([m, -1])?))
            .collect::<Result<Vec<_>>>()?;
        // The normal equations in f64 whatever the parameters' dtype: JᵀJ squares J's condition
        // number, past f32's 1/ε for a network's J (the solve is m n² + n³/3 flops; J itself
        // costs more).
        let j = Tensor::f_cat(&cols, 1)?.f_to_kind(Kind::Double)?;
        let a = j.f_tr()?.f_matmul(&j)?;
        let g = j.f_tr()?.f_mv(&r.f_detach()?.f_to_kind(Kind::Double)?)?;
        let d = floor(a.f_diagonal(0, 0, 1)?)?;
        Ok(System::Dense { a, g, d })
    }

    fn matrix_free(
        r: &Tensor,
        params: &'a [Tensor],
        probes: usize,
        draws: i64,
        previous: Option<&Tensor>,
    ) -> Result<System<'a>> {
        let xs: Vec<&Tensor> = params.iter().collect();
        let lin = Linearized::new(r, &xs, pass())?;
        let g = jt_u(r, params, &r.f_detach()?)?;
        let mut d = g.f_zeros_like()?;
        let m = r.numel() as i64;
        for k in 0..probes {
            // a fixed hash of (draw, entry): the fit does not depend on torch's random state
            let draw = Tensor::f_from_slice(&[draws + k as i64])?.f_to_device(r.device())?;
            let z = super::matrix_free::rademacher(m, &draw, r)?.f_view_as(r)?;
            d = d.f_add(&jt_u(r, params, &z)?.f_square()?)?;
        }
        let mut d = d.f_div_scalar(probes as f64)?;
        if let Some(prev) = previous {
            d = d.f_maximum(prev)?; // the running maximum: the estimate's noise only damps more
        }
        let d = floor(d)?;
        Ok(System::MatrixFree {
            r: r.shallow_clone(),
            params,
            lin,
            g,
            d,
        })
    }

    fn gradient(&self) -> Tensor {
        match self {
            System::Dense { g, .. } | System::MatrixFree { g, .. } => g.shallow_clone(),
        }
    }

    /// `(JᵀJ + μ D) δ = −g`: `(δ, predicted reduction, CG iterations)`, or `None` when the
    /// dense factorization fails.
    fn solve_damped(&self, mu: f64, opts: &FitOptions) -> Result<Option<(Tensor, f64, usize)>> {
        match self {
            System::Dense { a, g, d } => {
                let mat = a.f_add(&d.f_mul_scalar(mu)?.f_diag_embed(0, -2, -1)?)?;
                let Some(delta) = cholesky_solve(&mat, &g.f_neg()?)? else {
                    return Ok(None);
                };
                let pred = 0.5
                    * (delta.f_mul(d)?.f_dot(&delta)?.f_mul_scalar(mu)? - g.f_dot(&delta)?)
                        .f_double_value(&[])?;
                Ok(Some((delta, pred, 0)))
            }
            System::MatrixFree { .. } => self.cg(mu, opts).map(Some),
        }
    }

    /// The Gauss–Newton step (`μ = 0`; a jitter where `JᵀJ` is singular).
    fn solve(&self, _mu: f64, opts: &FitOptions) -> Result<(Tensor, f64, usize)> {
        match self {
            System::Dense { a, g, d } => {
                let mut jitter = 0.0;
                for _ in 0..12 {
                    let mat = if jitter == 0.0 {
                        a.shallow_clone()
                    } else {
                        a.f_add(&d.f_mul_scalar(jitter)?.f_diag_embed(0, -2, -1)?)?
                    };
                    if let Some(delta) = cholesky_solve(&mat, &g.f_neg()?)? {
                        return Ok((delta, 0.0, 0));
                    }
                    jitter = if jitter == 0.0 { 1e-12 } else { jitter * 100.0 };
                }
                Err(Error::InvalidArgument(
                    "Gauss–Newton: JᵀJ could not be factored even with a jitter of 1e10·diag; use Levenberg–Marquardt".into(),
                ))
            }
            System::MatrixFree { .. } => self.cg(0.0, opts),
        }
    }

    /// Preconditioned CG on `(JᵀJ + μD) δ = −g` from `δ = 0`.
    fn cg(&self, mu: f64, opts: &FitOptions) -> Result<(Tensor, f64, usize)> {
        let System::MatrixFree {
            r,
            params,
            lin,
            g,
            d,
        } = self
        else {
            unreachable!("cg on the dense system")
        };
        let apply = |v: &Tensor| -> Result<Tensor> {
            let jv = jv(lin, &split(v, params)?)?;
            let jtjv = jt_u(r, params, &jv)?;
            Ok(jtjv.f_add(&d.f_mul(v)?.f_mul_scalar(mu)?)?)
        };
        let precond = d.f_mul_scalar(1.0 + mu)?;
        let b = g.f_neg()?;
        let bnorm = b.f_norm()?.f_double_value(&[])?;
        let mut x = b.f_zeros_like()?;
        let mut res = b.shallow_clone();
        let mut z = res.f_div(&precond)?;
        let mut p = z.shallow_clone();
        let mut rz = res.f_dot(&z)?.f_double_value(&[])?;
        let mut iters = 0;
        while iters < opts.cg_max_iterations {
            let ap = apply(&p)?;
            let pap = p.f_dot(&ap)?.f_double_value(&[])?;
            iters += 1;
            if pap.is_nan() || pap <= 0.0 {
                break;
            }
            let alpha = rz / pap;
            x = x.f_add(&p.f_mul_scalar(alpha)?)?;
            res = res.f_sub(&ap.f_mul_scalar(alpha)?)?;
            if res.f_norm()?.f_double_value(&[])? <= opts.cg_tolerance * bnorm {
                break;
            }
            z = res.f_div(&precond)?;
            let rz_new = res.f_dot(&z)?.f_double_value(&[])?;
            p = z.f_add(&p.f_mul_scalar(rz_new / rz)?)?;
            rz = rz_new;
        }
        // The predicted reduction of the model at the δ CG returned, from one more J v (CG's
        // recurred residual drifts from the true one on ill-conditioned systems):
        // pred = −gᵀδ − ½ ‖Jδ‖².
        let jx = jv(lin, &split(&x, params)?)?;
        let gd = g.f_dot(&x)?.f_double_value(&[])?;
        let jx2 = jx.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        let pred = -gd - 0.5 * jx2;
        Ok((x, pred, iters))
    }
}

/// The dense `J`'s strategy: `Auto` on the CPU with `n ≤ m` is [`Strategy::Forward`] (`n`
/// Jacobian–vector products, each a pass over the batch: `∝ n·m`), not what `jacobian_with`'s
/// `Auto` picks there (`m` cotangents through the whole batch's graph, `∝ m²`, unless
/// `m ≥ 4n`): 2.6× faster for the 1153-parameter MLP on 2000 points of examples/fit_mlp.rs.
fn dense_strategy(strategy: Strategy, r: &Tensor, params: &[Tensor]) -> Strategy {
    let n: usize = params.iter().map(|p| p.numel()).sum();
    if strategy == Strategy::Auto && r.device() == tch::Device::Cpu && n <= r.numel() {
        Strategy::Forward
    } else {
        strategy
    }
}

/// `J v = ∂(Σ_k Jᵀw_k · v_k)/∂w`, `[m]` (one backward pass through `Jᵀw`'s graph).
fn jv(lin: &Linearized<'_>, vs: &[Tensor]) -> Result<Tensor> {
    let vs: Vec<&Tensor> = vs.iter().collect();
    crate::autograd::materialize(lin.jvp(&vs)?.f_detach()?)
}

/// The passes of the matrix-free products: graphs kept, no `create_graph` beyond `Jᵀw`'s, and
/// parameters the residual does not reach contribute zeros.
fn pass() -> Pass<'static> {
    Pass::new(
        false,
        false,
        Names {
            output: "r",
            inputs: &[],
        },
    )
}

/// `Jᵀu` as one flat vector `[n]` (one backward pass, graph kept).
fn jt_u(r: &Tensor, params: &[Tensor], u: &Tensor) -> Result<Tensor> {
    let root = r.f_mul(u)?.f_sum(Kind::Double)?.f_to_kind(r.kind())?;
    let xs: Vec<&Tensor> = params.iter().collect();
    let flat = vjp_into(&root, &xs, pass())?
        .into_iter()
        .map(|g| Ok(crate::autograd::materialize(g)?.f_reshape([-1])?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::f_cat(&flat, 0)?)
}

/// A flat `[n]` vector as one tensor per parameter.
fn split(v: &Tensor, params: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut offset = 0;
    params
        .iter()
        .map(|p| {
            let k = p.numel() as i64;
            let t = v.f_narrow(0, offset, k)?.f_view_as(p)?;
            offset += k;
            Ok(t)
        })
        .collect()
}

/// `D` floored at `10⁻¹⁰ max D` (and at the smallest normal number): a column of zeros still
/// gets damped.
fn floor(d: Tensor) -> Result<Tensor> {
    let max = d.f_max()?.f_double_value(&[])?;
    let tiny = if d.kind() == Kind::Float {
        f32::MIN_POSITIVE as f64
    } else {
        f64::MIN_POSITIVE
    };
    Ok(d.f_clamp_min((1e-10 * max).max(tiny))?)
}

/// Solves `mat · x = b` by Cholesky; `None` when `mat` is not numerically positive definite.
fn cholesky_solve(mat: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    let (l, info) = mat.f_linalg_cholesky_ex(false, false)?;
    if info.f_int64_value(&[])? != 0 {
        return Ok(None);
    }
    let x = b
        .f_unsqueeze(1)?
        .f_cholesky_solve(&l, false)?
        .f_squeeze_dim(1)?;
    if !bool::try_from(x.f_isfinite()?.f_all()?)? {
        return Ok(None);
    }
    Ok(Some(x))
}
