//! [`LeastSquaresOptions`] and the enums it holds: [`Method`], [`Loss`], [`LinearSolver`],
//! [`Progress`].

use tch::Tensor;

use crate::error::{Error, Result};
use crate::strategy::Strategy;

/// The iteration that computes each step; see the [module docs](super) for the formulas.
///
/// | method | step | with bounds | SciPy / Ceres |
/// |---|---|---|---|
/// | [`LevenbergMarquardt`](Method::LevenbergMarquardt) (`Auto`) | `(JᵀJ + μ D²) δ = −Jᵀr`, Moré's scaling `D`, Nielsen's update of `μ`, optional geodesic acceleration | Coleman–Li scaling and reflection (SciPy's `trf`) | `lm`, `trf`; Ceres `LEVENBERG_MARQUARDT` |
/// | [`Dogleg`](Method::Dogleg) | Powell's dogleg between the Cauchy and Gauss–Newton points in a trust region `‖D δ‖ ≤ Δ` | the same | `dogbox`'s dogleg; Ceres `DOGLEG` |
/// | [`GaussNewton`](Method::GaussNewton) | `JᵀJ δ = −Jᵀr` (minimum norm when rank deficient), backtracking line search (Armijo) | the same, step truncated at the box | Ceres `LINE_SEARCH` with Gauss–Newton |
///
/// ```
/// use tch_jacobian::least_squares::Method;
/// assert_eq!(Method::default(), Method::Auto);
/// assert_eq!(Method::Auto.resolve(), Method::LevenbergMarquardt);
/// assert_eq!("dogleg".parse::<Method>()?, Method::Dogleg);
/// assert_eq!(Method::GaussNewton.to_string(), "gauss-newton");
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Method {
    /// Levenberg–Marquardt (the default, with or without bounds).
    #[default]
    Auto,
    /// Levenberg–Marquardt with Moré's scaling and Nielsen's damping update.
    LevenbergMarquardt,
    /// Powell's dogleg trust region.
    Dogleg,
    /// Gauss–Newton with a backtracking line search. Needs `m ≥ n` residuals.
    GaussNewton,
}

impl Method {
    /// Every method's name, as [`Display`](std::fmt::Display) writes it.
    pub const NAMES: &[&str] = &["auto", "lm", "dogleg", "gauss-newton"];

    /// The method `Auto` stands for ([`Method::LevenbergMarquardt`]); others unchanged.
    ///
    /// ```
    /// use tch_jacobian::least_squares::Method;
    /// assert_eq!(Method::Dogleg.resolve(), Method::Dogleg);
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn resolve(self) -> Method {
        match self {
            Method::Auto => Method::LevenbergMarquardt,
            m => m,
        }
    }
}

impl std::fmt::Display for Method {
    /// `auto`, `lm`, `dogleg`, `gauss-newton` (as [`Method::NAMES`]).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Auto => "auto",
            Method::LevenbergMarquardt => "lm",
            Method::Dogleg => "dogleg",
            Method::GaussNewton => "gauss-newton",
        })
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    /// Reads what [`Display`](std::fmt::Display) writes (and `levenberg-marquardt`).
    fn from_str(s: &str) -> Result<Method> {
        Ok(match s {
            "auto" => Method::Auto,
            "lm" | "levenberg-marquardt" => Method::LevenbergMarquardt,
            "dogleg" => Method::Dogleg,
            "gauss-newton" | "gn" => Method::GaussNewton,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown least-squares method {other:?}; one of {}",
                    Method::NAMES.join(", ")
                )))
            }
        })
    }
}

/// A robust loss `ρ`: the solver minimizes `½ C² Σᵢ ρ(rᵢ² / C²)`, `C` =
/// [`LeastSquaresOptions::loss_scale`] (SciPy's `f_scale`; Ceres's loss parameter `a`).
///
/// With `z = r²/C²` (SciPy's formulas; Tukey's is Ceres's `TukeyLoss(a)` with `a = C`):
///
/// | loss | `ρ(z)` | `ρ′(z)` | `ρ″(z)` |
/// |---|---|---|---|
/// | `Linear` | `z` | `1` | `0` |
/// | `SoftL1` | `2(√(1+z) − 1)` | `(1+z)^(−½)` | `−½(1+z)^(−3/2)` |
/// | `Huber` | `z` if `z ≤ 1`, else `2√z − 1` | `1`, else `z^(−½)` | `0`, else `−½ z^(−3/2)` |
/// | `Cauchy` | `ln(1+z)` | `1/(1+z)` | `−1/(1+z)²` |
/// | `Arctan` | `arctan z` | `1/(1+z²)` | `−2z/(1+z²)²` |
/// | `Tukey` | `(1 − (1−z)³)/3` if `z ≤ 1`, else `1/3` | `(1−z)²`, else `0` | `−2(1−z)`, else `0` |
///
/// The losses enter every method through Triggs' correction (Triggs et al. 2000, Ceres's
/// `Corrector`): each residual and its Jacobian row are rescaled so that the Gauss–Newton model
/// of the rescaled problem has the loss's exact gradient `Σ ρ′ rᵢ ∇rᵢ` and the curvature
/// `Σ (ρ′ + 2zρ″) ∇rᵢ∇rᵢᵀ`, clamped at `ε` where it would be negative, as SciPy clamps it:
///
/// ```text
/// s_i = √max(ρ′ + 2 z ρ″, ε)      J̃_i = s_i ∇r_i      r̃_i = ρ′ r_i / s_i
/// ```
///
/// ```
/// use tch_jacobian::least_squares::Loss;
/// assert_eq!("soft_l1".parse::<Loss>()?, Loss::SoftL1);
/// assert_eq!(Loss::Tukey.to_string(), "tukey");
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Loss {
    /// Ordinary least squares, `ρ(z) = z`.
    #[default]
    Linear,
    /// Smooth ℓ1, `ρ(z) = 2(√(1+z) − 1)`.
    SoftL1,
    /// Huber, quadratic up to `|r| = C`, linear beyond.
    Huber,
    /// Cauchy (Lorentzian), `ρ(z) = ln(1+z)`.
    Cauchy,
    /// `ρ(z) = arctan(z)`: bounded, like Tukey's.
    Arctan,
    /// Tukey's biweight: residuals beyond `|r| = C` have no weight at all (not convex).
    Tukey,
}

impl Loss {
    /// Every loss's name, SciPy's spelling (`tukey` is Ceres's loss), as
    /// [`Display`](std::fmt::Display) writes it.
    pub const NAMES: &[&str] = &["linear", "soft_l1", "huber", "cauchy", "arctan", "tukey"];
}

impl std::fmt::Display for Loss {
    /// SciPy's names: `linear`, `soft_l1`, `huber`, `cauchy`, `arctan`, and `tukey`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loss::Linear => "linear",
            Loss::SoftL1 => "soft_l1",
            Loss::Huber => "huber",
            Loss::Cauchy => "cauchy",
            Loss::Arctan => "arctan",
            Loss::Tukey => "tukey",
        })
    }
}

impl std::str::FromStr for Loss {
    type Err = Error;
    /// Reads what [`Display`](std::fmt::Display) writes.
    fn from_str(s: &str) -> Result<Loss> {
        Ok(match s {
            "linear" => Loss::Linear,
            "soft_l1" => Loss::SoftL1,
            "huber" => Loss::Huber,
            "cauchy" => Loss::Cauchy,
            "arctan" => Loss::Arctan,
            "tukey" => Loss::Tukey,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown loss {other:?}; one of {}",
                    Loss::NAMES.join(", ")
                )))
            }
        })
    }
}

/// How far a solve is, handed to [`LeastSquaresOptions::progress`] after every iteration.
/// `#[non_exhaustive]`: fields may be added.
///
/// ```
/// use std::cell::Cell;
/// use tch::Tensor;
/// use tch_jacobian::{least_squares, LeastSquaresOptions};
/// use tch_jacobian::least_squares::Progress;
///
/// let last = Cell::new(None);
/// let report = |p: Progress| last.set(Some(p));
/// let x0 = Tensor::from_slice(&[0.0f64]);
/// let out = least_squares(|x: &Tensor| (x - 3.0).exp() - 1.0, &x0, &LeastSquaresOptions::default().progress(&report))?;
/// let p = last.get().unwrap();
/// assert_eq!((p.problems, p.running), (1, 0)); // one problem, finished
/// assert_eq!(p.iteration, out.iterations[0]);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Iterations done (by the problems still running before it).
    pub iteration: usize,
    /// Problems still running after it.
    pub running: usize,
    /// Problems in all (B).
    pub problems: usize,
    /// The largest cost among the problems still running (the largest overall when none is).
    pub max_cost: f64,
}

/// How the damped normal equations of a step are solved (Ceres's `linear_solver_type`), by
/// [`least_squares`](super::least_squares) and [`ModelFit`](super::ModelFit) alike.
///
/// `Auto` forms `J` when it fits: **Dense** when `J`'s bytes (`B · m · n ·` dtype size; `m · n`
/// for a model fit) are at most `min(memory_budget, free / 4)`, `free` the device's free memory
/// (`MemAvailable` of `/proc/meminfo` on the CPU, the CUDA allocator's free memory on a GPU;
/// the budget alone where it cannot be read), else **MatrixFree**. Which one ran is in the
/// output ([`LeastSquaresOutput::linear_solver`](super::LeastSquaresOutput::linear_solver),
/// [`FitStepOutput::linear_solver`](super::FitStepOutput::linear_solver)) and in a `log::info!`
/// line when `Auto` chose matrix-free.
/// To learn `m`, [`least_squares`](super::least_squares)' `Auto` evaluates the residual once at
/// `x0` before either solver starts (not counted in
/// [`evaluations`](super::LeastSquaresOutput::evaluations)); an explicit solver does not.
///
/// ```
/// use tch::Device;
/// use tch_jacobian::least_squares::LinearSolver;
/// assert_eq!(LinearSolver::MatrixFree.to_string(), "matrix-free");
/// // 1 GiB of J against a 256 MiB budget: matrix-free; 1 MiB: dense.
/// assert_eq!(LinearSolver::Auto.resolve(1 << 30, 256 << 20, Device::Cpu), LinearSolver::MatrixFree);
/// assert_eq!(LinearSolver::Auto.resolve(1 << 20, 256 << 20, Device::Cpu), LinearSolver::Dense);
/// assert_eq!(LinearSolver::Dense.resolve(1 << 40, 0, Device::Cpu), LinearSolver::Dense);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LinearSolver {
    /// Dense when `J` fits `min(memory_budget, free memory / 4)`, else matrix-free.
    #[default]
    Auto,
    /// `J` formed and the damped system factored (Cholesky, or the eigen/QR model of
    /// [`least_squares`](super::least_squares)).
    Dense,
    /// Preconditioned conjugate gradients with `J v` and `Jᵀu` only; `J` never formed.
    MatrixFree,
}

impl LinearSolver {
    /// The solver this choice stands for when `J` takes `j_bytes` on `device`: itself, or for
    /// `Auto` Dense when `j_bytes ≤ min(budget, free / 4)` (see [`LinearSolver`]).
    pub fn resolve(self, j_bytes: u128, budget: usize, device: tch::Device) -> LinearSolver {
        match self {
            LinearSolver::Auto => {
                let limit = match free_memory(device) {
                    Some(free) => (budget as u128).min(free as u128 / 4),
                    None => budget as u128,
                };
                if j_bytes <= limit {
                    LinearSolver::Dense
                } else {
                    LinearSolver::MatrixFree
                }
            }
            s => s,
        }
    }
}

/// The linear-solver options [`LeastSquaresOptions`] and [`FitOptions`](super::FitOptions) share,
/// checked one way for both: `damping` finite and `> 0`, `cg_tolerance` in `(0, 1)`, every count
/// at least 1, `memory_budget` only with `LinearSolver::Auto`, and the options only the
/// matrix-free solver reads refused with `LinearSolver::Dense`.
pub(crate) struct SolverSettings<'a> {
    pub linear_solver: LinearSolver,
    /// `(memory_budget, its default)`.
    pub memory_budget: (usize, usize),
    pub damping: f64,
    pub cg_tolerance: f64,
    /// Counts that must be at least 1, by name.
    pub counts: &'a [(&'a str, usize)],
    /// The options only the matrix-free solver reads, and whether each differs from its default.
    pub matrix_free_only: &'a [(&'a str, bool)],
}

impl SolverSettings<'_> {
    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.damping > 0.0 && self.damping.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "damping must be finite and > 0, got {}",
                self.damping
            )));
        }
        if !(self.cg_tolerance > 0.0 && self.cg_tolerance < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "cg_tolerance must be in (0, 1), got {}",
                self.cg_tolerance
            )));
        }
        if let Some((name, _)) = self.counts.iter().find(|(_, v)| *v == 0) {
            return Err(Error::InvalidArgument(format!(
                "{name} must be at least 1, got 0"
            )));
        }
        let (budget, default_budget) = self.memory_budget;
        if self.linear_solver != LinearSolver::Auto && budget != default_budget {
            return Err(Error::InvalidArgument(format!(
                "memory_budget ({budget} bytes) is read by linear_solver Auto only; linear_solver is {}",
                self.linear_solver
            )));
        }
        if self.linear_solver == LinearSolver::Dense {
            if let Some((name, _)) = self.matrix_free_only.iter().find(|(_, changed)| *changed) {
                return Err(Error::InvalidArgument(format!(
                    "{name} is read by the matrix-free solver; linear_solver is dense: leave it at its default or use LinearSolver::MatrixFree or Auto"
                )));
            }
        }
        Ok(())
    }
}

/// Free memory on `device` in bytes: `MemAvailable` on a Linux CPU, the CUDA allocator's view
/// on a GPU; `None` where it cannot be read.
fn free_memory(device: tch::Device) -> Option<u64> {
    if device.is_cuda() {
        return crate::native::cuda_free_memory(device);
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl std::fmt::Display for LinearSolver {
    /// `auto`, `dense`, `matrix-free`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinearSolver::Auto => "auto",
            LinearSolver::Dense => "dense",
            LinearSolver::MatrixFree => "matrix-free",
        })
    }
}

/// A Jacobian supplied by the user: `x [B, n] → J [B, m, n]` (`J[b, i, j] = ∂r[b, i]/∂x[b, j]`),
/// or `x [n] → J [m, n]` for a single problem.
pub type JacobianFn<'a> = &'a dyn Fn(&Tensor) -> Result<Tensor>;

/// Options of [`least_squares`](super::least_squares): the crate's options style (chainable
/// by-value setters named after the fields; SciPy's names and meanings where SciPy has them).
///
/// | field | default | meaning |
/// |---|---|---|
/// | `method` | [`Method::Auto`] (Levenberg–Marquardt) | the step, see [`Method`] |
/// | `geodesic` | `false` | geodesic acceleration of LM steps (Transtrum & Sethna 2012), from `r″(x)[v, v]` in one forward pass |
/// | `loss`, `loss_scale` | [`Loss::Linear`], `1.0` | a robust loss and its scale `C` (SciPy's `loss`, `f_scale`) |
/// | `bounds` | none | `(lower, upper)`, each `[n]` or `[B, n]` (±∞ for a free side): `lower ≤ x ≤ upper` |
/// | `ftol` | `1e-12` | stop when an accepted step's actual and predicted reductions are both `≤ ftol · cost` |
/// | `xtol` | `1e-12` | stop when `‖D δ‖ ≤ xtol · (xtol + ‖D x‖)` (`D`: Moré's scaling) |
/// | `gtol` | `1e-12` | stop when `max_j |gⱼ| / (‖Jⱼ‖ ‖r‖) ≤ gtol` (MINPACK's cosine; `g = Jᵀr`) |
/// | `max_iterations` | `1000` | the cap on iterations (each one residual evaluation) per problem |
/// | `jacobian` | none | your Jacobian closure, instead of the crate's |
/// | `strategy` | [`Strategy::Auto`] | the crate's Jacobian strategy; `Auto`: collapsed Taylor mode (value and `J` in one forward pass) for `m ≥ n`, the crate's `Auto` otherwise; `Taylor`: collapsed Taylor mode or its error |
/// | `covariance` | `false` | compute `σ²(JᵀJ)⁻¹` and the standard errors at the solution |
/// | `keep_jacobian` | `false` | return the Jacobian at the solution |
/// | `progress` | none | called after every iteration with a [`Progress`] |
/// | `check_independence` | `true` | check once, on the first Jacobian, that the B problems do not interact |
/// | `create_graph` | `false` | return a solution `x` differentiable with respect to the tensors the residual captures (implicit function theorem) |
/// | `linear_solver` | [`LinearSolver::Auto`] | dense `J`, or matrix-free conjugate gradients (`J` never formed; Levenberg–Marquardt with Nielsen's damping, see [`LinearSolver`]) |
/// | `memory_budget` | 256 MiB | the most bytes of `J` (`B·m·n·` dtype size) for which `Auto` forms it (also capped at a quarter of the free memory) |
/// | `damping` | `1e-3` | matrix-free: the initial `μ` of `(J̃ᵀJ̃ + μD)δ = −g` |
/// | `cg_tolerance` | `1e-6` | matrix-free: CG stops at `‖res‖ ≤ cg_tolerance · ‖g‖` |
/// | `cg_max_iterations` | `100` | matrix-free: CG iterations per step at most |
/// | `probes` | `8` | matrix-free: Rademacher probes per linearization for Hutchinson's `D ≈ diag(J̃ᵀJ̃)` |
///
/// `Auto` can choose matrix-free only where nothing asks for `J` or for the dense methods:
/// with bounds, a Jacobian closure, `covariance`, `keep_jacobian`, `geodesic`, Dogleg or
/// Gauss–Newton it is Dense; an explicit [`LinearSolver::MatrixFree`] with one of them is an
/// [`Error::InvalidArgument`] naming it. The matrix-free options are refused with
/// [`LinearSolver::Dense`], `memory_budget` with an explicit solver.
///
/// A tolerance of `0` turns its test off; positive tolerances below the dtype's machine epsilon
/// are raised to it.
///
/// ```
/// use tch::{Kind, Tensor};
/// use tch_jacobian::{least_squares::{Loss, Method}, LeastSquaresOptions};
/// let lower = Tensor::from_slice(&[0.0f64, f64::NEG_INFINITY]);
/// let upper = Tensor::from_slice(&[1.0f64, f64::INFINITY]);
/// let opts = LeastSquaresOptions::default()
///     .method(Method::Dogleg)
///     .loss(Loss::Huber)
///     .loss_scale(0.1)
///     .bounds(&lower, &upper)
///     .covariance(true);
/// assert_eq!((opts.method, opts.loss, opts.loss_scale), (Method::Dogleg, Loss::Huber, 0.1));
/// assert!(opts.covariance && opts.check_independence && opts.bounds.is_some());
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
///
/// `#[non_exhaustive]`: options may be added, so outside this crate it is built from
/// [`LeastSquaresOptions::default`] and the setters; its fields stay readable.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct LeastSquaresOptions<'a> {
    /// The step ([`Method`]).
    pub method: Method,
    /// Geodesic acceleration of Levenberg–Marquardt steps.
    pub geodesic: bool,
    /// The robust loss ([`Loss`]).
    pub loss: Loss,
    /// The loss's scale `C` (SciPy's `f_scale`): residuals up to about `C` are inliers.
    pub loss_scale: f64,
    /// Box bounds `(lower, upper)`, each `[n]` (shared) or `[B, n]` (per problem).
    pub bounds: Option<(&'a Tensor, &'a Tensor)>,
    /// Relative tolerance on the cost reduction.
    pub ftol: f64,
    /// Relative tolerance on the step.
    pub xtol: f64,
    /// Tolerance on the scaled gradient (a cosine).
    pub gtol: f64,
    /// Iterations (residual evaluations) per problem at most.
    pub max_iterations: usize,
    /// Your Jacobian (`[B, m, n]`, or `[m, n]` for a single problem) instead of the crate's.
    pub jacobian: Option<JacobianFn<'a>>,
    /// How the crate computes the Jacobian.
    pub strategy: Strategy,
    /// Compute the covariance and the standard errors at the solution.
    pub covariance: bool,
    /// Return the Jacobian at the solution.
    pub keep_jacobian: bool,
    /// Called after every iteration.
    pub progress: Option<&'a dyn Fn(Progress)>,
    /// Check, once, that the problems of a batch do not interact.
    pub check_independence: bool,
    /// Return a solution differentiable with respect to every tensor the residual closure
    /// captures that requires grad (data, hyperparameters, network weights), by the implicit
    /// function theorem; see [`LeastSquaresOptions::create_graph`].
    pub create_graph: bool,
    /// Dense, matrix-free, or `Auto` by `J`'s size ([`LinearSolver`]).
    pub linear_solver: LinearSolver,
    /// Bytes `J` may take for `Auto` to form it.
    pub memory_budget: usize,
    /// Matrix-free: the initial damping `μ` (relative to `D`).
    pub damping: f64,
    /// Matrix-free: CG's relative tolerance.
    pub cg_tolerance: f64,
    /// Matrix-free: CG iterations per step at most.
    pub cg_max_iterations: usize,
    /// Matrix-free: Hutchinson probes per linearization.
    pub probes: usize,
}

impl Default for LeastSquaresOptions<'_> {
    fn default() -> Self {
        LeastSquaresOptions {
            method: Method::Auto,
            geodesic: false,
            loss: Loss::Linear,
            loss_scale: 1.0,
            bounds: None,
            ftol: 1e-12,
            xtol: 1e-12,
            gtol: 1e-12,
            max_iterations: 1000,
            jacobian: None,
            strategy: Strategy::Auto,
            covariance: false,
            keep_jacobian: false,
            progress: None,
            check_independence: true,
            create_graph: false,
            linear_solver: LinearSolver::Auto,
            memory_budget: 256 << 20,
            damping: 1e-3,
            cg_tolerance: 1e-6,
            cg_max_iterations: 100,
            probes: 8,
        }
    }
}

impl std::fmt::Debug for LeastSquaresOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeastSquaresOptions")
            .field("method", &self.method)
            .field("geodesic", &self.geodesic)
            .field("loss", &self.loss)
            .field("loss_scale", &self.loss_scale)
            .field("bounds", &self.bounds.map(|(l, u)| (l.size(), u.size())))
            .field("ftol", &self.ftol)
            .field("xtol", &self.xtol)
            .field("gtol", &self.gtol)
            .field("max_iterations", &self.max_iterations)
            .field(
                "jacobian",
                &self.jacobian.map(|_| "Fn(&Tensor) -> Result<Tensor>"),
            )
            .field("strategy", &self.strategy)
            .field("covariance", &self.covariance)
            .field("keep_jacobian", &self.keep_jacobian)
            .field("progress", &self.progress.map(|_| "Fn(Progress)"))
            .field("check_independence", &self.check_independence)
            .field("create_graph", &self.create_graph)
            .field("linear_solver", &self.linear_solver)
            .field("memory_budget", &self.memory_budget)
            .field("damping", &self.damping)
            .field("cg_tolerance", &self.cg_tolerance)
            .field("cg_max_iterations", &self.cg_max_iterations)
            .field("probes", &self.probes)
            .finish()
    }
}

impl<'a> LeastSquaresOptions<'a> {
    /// Sets the method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }
    /// Turns geodesic acceleration on or off.
    pub fn geodesic(mut self, geodesic: bool) -> Self {
        self.geodesic = geodesic;
        self
    }
    /// Sets the robust loss.
    pub fn loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self
    }
    /// Sets the loss's scale `C` (SciPy's `f_scale`).
    pub fn loss_scale(mut self, loss_scale: f64) -> Self {
        self.loss_scale = loss_scale;
        self
    }
    /// Sets box bounds `lower ≤ x ≤ upper` (each `[n]` or `[B, n]`; ±∞ for a free side).
    pub fn bounds(mut self, lower: &'a Tensor, upper: &'a Tensor) -> Self {
        self.bounds = Some((lower, upper));
        self
    }
    /// Sets `ftol`.
    pub fn ftol(mut self, ftol: f64) -> Self {
        self.ftol = ftol;
        self
    }
    /// Sets `xtol`.
    pub fn xtol(mut self, xtol: f64) -> Self {
        self.xtol = xtol;
        self
    }
    /// Sets `gtol`.
    pub fn gtol(mut self, gtol: f64) -> Self {
        self.gtol = gtol;
        self
    }
    /// Sets the iteration cap.
    pub fn max_iterations(mut self, max_iterations: usize) -> Self {
        self.max_iterations = max_iterations;
        self
    }
    /// Uses your Jacobian closure (`[B, n] → [B, m, n]`, or `[n] → [m, n]`).
    pub fn jacobian(mut self, jacobian: JacobianFn<'a>) -> Self {
        self.jacobian = Some(jacobian);
        self
    }
    /// Sets the crate's Jacobian strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }
    /// Asks for the covariance and the standard errors.
    pub fn covariance(mut self, covariance: bool) -> Self {
        self.covariance = covariance;
        self
    }
    /// Asks for the Jacobian at the solution.
    pub fn keep_jacobian(mut self, keep_jacobian: bool) -> Self {
        self.keep_jacobian = keep_jacobian;
        self
    }
    /// Sets the progress callback.
    pub fn progress(mut self, progress: &'a dyn Fn(Progress)) -> Self {
        self.progress = Some(progress);
        self
    }
    /// Sets `check_independence`.
    pub fn check_independence(mut self, check: bool) -> Self {
        self.check_independence = check;
        self
    }
    /// Makes the solution differentiable (the crate's `create_graph`): the returned
    /// [`x`](super::LeastSquaresOutput::x) carries a graph to every tensor the residual closure
    /// captures that requires grad, by the implicit function theorem; everything else in the
    /// output stays detached, and `x` does not depend on `x0` (its gradient there is `None`).
    ///
    /// At the solution the cost's gradient vanishes, `g(x*, φ) = ∂L/∂x = 0` with
    /// `L = ½ C² Σᵢ ρ(rᵢ²/C²)` (the solver's loss and scale; `½‖r‖²` for the linear loss), so
    /// `dx*/dφ = −H⁻¹ ∂g/∂φ`, `H = ∂g/∂x` the **exact** Hessian of the cost (the second-order
    /// residual terms `Σ ρ′ rᵢ ∇²rᵢ` that Gauss–Newton drops included, and the loss's curvature
    /// unclamped). It is computed as one Newton step at `x*`:
    ///
    /// ```text
    /// xs = x*.detach() (requires grad)     g = ∂ΣL/∂xs (create_graph)     H = ∂g/∂xs (detached)
    /// δ = H⁻¹ g (a solve per problem)      x = x* + (δ.detach() − δ)
    /// ```
    ///
    /// whose value is exactly `x*` and whose backward is `−H⁻¹ ∂g/∂φ`. Under bounds a parameter
    /// at an active bound (within `max(xtol, 1e-10)·max(1, |bound|)` of it, as
    /// [`active_mask`](super::LeastSquaresOutput::active_mask), with the gradient pushing outward)
    /// is held fixed: zero derivative, its row and column dropped from `H`.
    ///
    /// Cost: one more residual evaluation and gradient with `create_graph`, one `n × n` Hessian
    /// per problem (the crate's per-sample Jacobian of `g`: `n` backward passes through the
    /// gradient's graph on the CPU, one batched pass with the engine on CUDA) and one `n × n`
    /// solve per problem; a backward through `x` is one vector–Jacobian product through `g`.
    /// The residual must be twice differentiable by autograd (a [`jacobian`](Self::jacobian)
    /// closure is not used for it). A Hessian that is singular or ill-conditioned (reciprocal
    /// condition below `ε·n`, or non-finite) — a parameter the residual does not depend on, a
    /// flat direction — is an [`Error::InvalidArgument`] naming the problem and the condition
    /// number. Grad mode is turned on inside, so the graph is built under `tch::no_grad` too.
    /// The derivative is that of a stationary point: for a problem that did not converge
    /// ([`Status`](super::Status)) it is the Newton step's, not meaningful.
    pub fn create_graph(mut self, create_graph: bool) -> Self {
        self.create_graph = create_graph;
        self
    }

    /// Sets the linear solver ([`LinearSolver`]).
    pub fn linear_solver(mut self, linear_solver: LinearSolver) -> Self {
        self.linear_solver = linear_solver;
        self
    }
    /// Sets the memory budget (bytes of `J`) under which `Auto` forms `J`.
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }
    /// Sets the matrix-free solver's initial damping `μ > 0`.
    pub fn damping(mut self, damping: f64) -> Self {
        self.damping = damping;
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

    /// What keeps the matrix-free solver out (it never forms `J` and runs Levenberg–Marquardt
    /// without bounds): the first such option's name, or `None`.
    pub(crate) fn needs_dense(&self) -> Option<&'static str> {
        let method = self.method.resolve();
        [
            (self.bounds.is_some(), "bounds"),
            (self.jacobian.is_some(), "a Jacobian closure"),
            (self.covariance, "covariance"),
            (self.keep_jacobian, "keep_jacobian"),
            (self.geodesic, "geodesic"),
            (method == Method::Dogleg, "Method::Dogleg"),
            (method == Method::GaussNewton, "Method::GaussNewton"),
            (self.strategy != Strategy::Auto, "strategy"),
        ]
        .into_iter()
        .find(|(set, _)| *set)
        .map(|(_, name)| name)
    }

    /// Checks the numbers: tolerances `≥ 0` and finite, a finite `loss_scale > 0`, at least one
    /// iteration; and refuses options the solve would not read: `geodesic` with a method other
    /// than Levenberg–Marquardt, `loss_scale` with the linear loss, `strategy` with a Jacobian
    /// closure.
    pub(crate) fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("ftol", self.ftol),
            ("xtol", self.xtol),
            ("gtol", self.gtol),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be finite and ≥ 0 (0 turns its test off), got {v}"
                )));
            }
        }
        if !(self.loss_scale > 0.0 && self.loss_scale.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "loss_scale must be finite and > 0, got {}",
                self.loss_scale
            )));
        }
        if self.max_iterations == 0 {
            return Err(Error::InvalidArgument(
                "max_iterations must be at least 1, got 0".into(),
            ));
        }
        // Every option is read or refused, never silently ignored.
        let method = self.method.resolve();
        if self.geodesic && method != Method::LevenbergMarquardt {
            return Err(Error::InvalidArgument(format!(
                "geodesic(true) accelerates Levenberg–Marquardt steps; method is {method}: leave geodesic off or use Method::LevenbergMarquardt"
            )));
        }
        if self.loss == Loss::Linear && self.loss_scale != 1.0 {
            return Err(Error::InvalidArgument(format!(
                "loss_scale ({}) scales a robust loss; loss is linear: leave loss_scale at 1 or choose a robust Loss",
                self.loss_scale
            )));
        }
        let d = LeastSquaresOptions::default();
        SolverSettings {
            linear_solver: self.linear_solver,
            memory_budget: (self.memory_budget, d.memory_budget),
            damping: self.damping,
            cg_tolerance: self.cg_tolerance,
            counts: &[
                ("cg_max_iterations", self.cg_max_iterations),
                ("probes", self.probes),
            ],
            matrix_free_only: &[
                ("damping", self.damping != d.damping),
                ("cg_tolerance", self.cg_tolerance != d.cg_tolerance),
                (
                    "cg_max_iterations",
                    self.cg_max_iterations != d.cg_max_iterations,
                ),
                ("probes", self.probes != d.probes),
            ],
        }
        .validate()?;
        if self.linear_solver == LinearSolver::MatrixFree {
            if let Some(what) = self.needs_dense() {
                return Err(Error::InvalidArgument(format!(
                    "linear_solver is matrix-free (J is never formed; Levenberg–Marquardt without bounds), but {what} needs the dense solver: drop {what} or use LinearSolver::Dense or Auto"
                )));
            }
        }
        if self.jacobian.is_some() && self.strategy != Strategy::Auto {
            return Err(Error::InvalidArgument(format!(
                "strategy ({}) chooses how the crate computes J, but a Jacobian closure was given: leave strategy at Auto or drop the closure",
                self.strategy
            )));
        }
        Ok(())
    }
}
