//! [`LeastSquaresOutput`] and [`Status`].

use tch::Tensor;

use super::options::LinearSolver;

/// Why one problem of a solve stopped (SciPy's `status`, MINPACK's `info`, Ceres's
/// `TerminationType`).
///
/// ```
/// use tch_jacobian::least_squares::Status;
/// assert!(Status::CostConverged.is_success());
/// assert!(!Status::MaxIterations.is_success());
/// assert_eq!(Status::GradientConverged.to_string(), "gtol: the scaled gradient is below gtol");
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// `gtol`: `max_j |gⱼ| / (‖Jⱼ‖ ‖r‖) ≤ gtol` (or the gradient is exactly zero) — SciPy's
    /// status 1, MINPACK's info 4.
    GradientConverged,
    /// `ftol`: an accepted step reduced the cost by at most `ftol · cost`, and the model
    /// predicted no more — SciPy's 2, MINPACK's 1.
    CostConverged,
    /// `xtol`: the step is at most `xtol · (xtol + ‖D x‖)` — SciPy's 3, MINPACK's 2. Also where
    /// no step can reduce the cost any more (the damping grew until the step vanished).
    StepConverged,
    /// The solve converged (one of the three tests above), but `J` is rank deficient at the
    /// solution: the covariance is not defined, and that problem's rows of
    /// [`LeastSquaresOutput::covariance`] and [`LeastSquaresOutput::standard_errors`] are NaN.
    /// Reported only when the covariance was asked for.
    RankDeficient,
    /// The iteration cap was reached — SciPy's 0, MINPACK's 5.
    MaxIterations,
    /// The Jacobian (or the step computed from it) became NaN or infinite at an accepted point;
    /// the problem stopped at its last finite point.
    NonFinite,
}

impl Status {
    /// Converged: [`GradientConverged`](Status::GradientConverged),
    /// [`CostConverged`](Status::CostConverged), [`StepConverged`](Status::StepConverged) or
    /// [`RankDeficient`](Status::RankDeficient).
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Status::GradientConverged
                | Status::CostConverged
                | Status::StepConverged
                | Status::RankDeficient
        )
    }

    /// The solver's internal code: 0 = running.
    pub(crate) fn from_code(code: i64) -> Status {
        match code {
            1 => Status::GradientConverged,
            2 => Status::CostConverged,
            3 => Status::StepConverged,
            4 => Status::MaxIterations,
            _ => Status::NonFinite,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::GradientConverged => "gtol: the scaled gradient is below gtol",
            Status::CostConverged => "ftol: the cost no longer decreases by more than ftol·cost",
            Status::StepConverged => "xtol: the step is below xtol·(xtol + ‖D x‖)",
            Status::RankDeficient => {
                "converged, but the Jacobian is rank deficient at the solution (no covariance)"
            }
            Status::MaxIterations => "the iteration cap (max_iterations) was reached",
            Status::NonFinite => "the Jacobian or the step became NaN or infinite",
        })
    }
}

/// What [`least_squares`](super::least_squares) returns, per problem. For a single problem
/// (`x0` of shape `[n]`) every tensor drops the leading batch dimension and every `Vec` has one
/// entry.
///
/// `#[non_exhaustive]`: fields may be added.
#[derive(Debug)]
#[non_exhaustive]
pub struct LeastSquaresOutput {
    /// The solution, `[B, n]` (or `[n]`).
    pub x: Tensor,
    /// The cost `½ C² Σ ρ(rᵢ²/C²)` at `x` (`½‖r‖²` for the linear loss), `[B]` (or `[]`).
    pub cost: Tensor,
    /// The residuals `r(x)`, `[B, m]` (or `[m]`), without the loss.
    pub residuals: Tensor,
    /// The Jacobian of the residuals at `x`, `[B, m, n]` (or `[m, n]`), without the loss; with
    /// [`keep_jacobian`](super::LeastSquaresOptions::keep_jacobian) or
    /// [`covariance`](super::LeastSquaresOptions::covariance).
    pub jacobian: Option<Tensor>,
    /// First-order optimality, the value the `gtol` test compares: `max_j |gⱼ| / (‖Jⱼ‖ ‖r‖)`,
    /// `[B]` (or `[]`).
    pub optimality: Tensor,
    /// Iterations per problem (each one step tried and one residual evaluation).
    pub iterations: Vec<usize>,
    /// Residual evaluations per problem, the first one included (SciPy's `nfev`).
    pub evaluations: Vec<usize>,
    /// Jacobian evaluations per problem (SciPy's `njev`).
    pub jacobian_evaluations: Vec<usize>,
    /// Why each problem stopped.
    pub status: Vec<Status>,
    /// `σ² (JᵀJ)⁻¹` with `σ² = 2·cost/(m − n)`, `[B, n, n]` (or `[n, n]`), with
    /// [`covariance`](super::LeastSquaresOptions::covariance); NaN for the problems whose status
    /// is [`Status::RankDeficient`].
    pub covariance: Option<Tensor>,
    /// `√diag(covariance)`, `[B, n]` (or `[n]`).
    pub standard_errors: Option<Tensor>,
    /// With bounds: per parameter `-1` (at its lower bound), `1` (at its upper bound) or `0`
    /// (SciPy's `active_mask`), `[B, n]` (or `[n]`), int64.
    pub active_mask: Option<Tensor>,
    /// The linear solver that ran: [`LinearSolver::Dense`] or [`LinearSolver::MatrixFree`]
    /// (what [`LinearSolver::Auto`] chose).
    pub linear_solver: LinearSolver,
}

impl LeastSquaresOutput {
    /// Whether every problem converged ([`Status::is_success`]).
    ///
    /// ```
    /// use tch::Tensor;
    /// use tch_jacobian::{least_squares, LeastSquaresOptions};
    /// let out = least_squares(|x: &Tensor| x * x - 2.0, &Tensor::from_slice(&[1.0f64]), &LeastSquaresOptions::default())?;
    /// assert!(out.success());
    /// assert!((out.x.double_value(&[0]) - 2f64.sqrt()).abs() < 1e-12);
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn success(&self) -> bool {
        self.status.iter().all(|s| s.is_success())
    }
}
