//! Closed forms for the notebook's model `F(x) = σ(Wx)`, the references the autograd results
//! are checked against.
//!
//! With `y = σ(Wx)` and `σ' = σ(1 − σ)`:
//!
//! ```text
//! J = diag(y ⊙ (1 − y)) · W          J[i, j] = y_i (1 − y_i) W[i, j]
//! ‖J‖_F² = Σ_i (y_i (1 − y_i))² Σ_j W[i, j]²
//! ```

use tch::{Kind, Tensor};

use crate::autograd::{check_float, check_same_device};
use crate::error::{Error, Result};

/// `J = diag(y ⊙ (1 − y)) · W`, the notebook's manual check, for `y = σ(Wx)`.
///
/// `w: [m, n]`, `y: [m]` → `[m, n]`; a batch `y: [B, m]` → `[B, m, n]`. Differentiable in both
/// `w` and `y`.
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::{jacobian, sigmoid_linear_jacobian};
/// let w = Tensor::from_slice(&[0.1f32, 0.3, 0.6, 1.5, 0.3, 4.1, 0.2, -0.3, -0.7]).view([3, 3]);
/// let x = Tensor::from_slice(&[2.0f32, 1.0, 1.0]).set_requires_grad(true);
/// let y = w.matmul(&x).sigmoid();
/// let j_calc = sigmoid_linear_jacobian(&w, &y)?;
/// assert!(j_calc.allclose(&jacobian(&y, &x)?, 1e-6, 1e-7, false));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn sigmoid_linear_jacobian(w: &Tensor, y: &Tensor) -> Result<Tensor> {
    let d = sigmoid_derivative(w, y, "y")?;
    Ok(d.f_unsqueeze(-1)?.f_mul(w)?)
}

/// `σ'(Wx) = y ⊙ (1 − y)` after checking that `y`'s last dimension matches `w`'s rows.
fn sigmoid_derivative(w: &Tensor, y: &Tensor, y_name: &str) -> Result<Tensor> {
    check_float(w, "w")?;
    check_float(y, y_name)?;
    check_same_device(y, y_name, w, "w")?;
    let (ws, ys) = (w.size(), y.size());
    if ws.len() != 2 || ys.is_empty() || ys.len() > 2 || ys[ys.len() - 1] != ws[0] {
        return Err(Error::Shape(format!(
            "sigmoid closed form needs w: [m, n] and {y_name}: [m] or [B, m] with the same m; got w {ws:?} and {y_name} {ys:?}"
        )));
    }
    if w.kind() != y.kind() {
        return Err(Error::Kind(format!(
            "w is {:?} but {y_name} is {:?}; use one dtype",
            w.kind(),
            y.kind()
        )));
    }
    Ok(y.f_mul(&y.f_neg()?.f_add_scalar(1.0)?)?)
}

/// `‖J‖_F² = Σ_i (y_i(1 − y_i))² Σ_j W[i, j]²` for `y = σ(Wx)` without forming `J`:
/// `O(m·n)` for `y: [m]` (a scalar), `O(B·m·n)` for `y: [B, m]` (shape `[B]`, one per sample).
///
/// Its gradient reaches `w` through both factors (through `y`, which must not be detached, and
/// through `W²`).
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::{frobenius_norm_sq, jacobian, sigmoid_linear_frobenius_sq};
/// let w = Tensor::from_slice(&[0.1f64, 0.3, 0.6, 1.5, 0.3, 4.1, 0.2, -0.3, -0.7]).view([3, 3]);
/// let x = Tensor::from_slice(&[2.0f64, 1.0, 1.0]).set_requires_grad(true);
/// let y = w.matmul(&x).sigmoid();
/// let f = sigmoid_linear_frobenius_sq(&w, &y)?;
/// assert!((f.double_value(&[]) - 0.04860875633871096).abs() < 1e-15);
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
pub fn sigmoid_linear_frobenius_sq(w: &Tensor, y: &Tensor) -> Result<Tensor> {
    frobenius_sq(w, y, "y")
}

/// [`sigmoid_linear_frobenius_sq`] with `y` called `y_name` in errors (the penalty's `h`).
pub(crate) fn frobenius_sq(w: &Tensor, y: &Tensor, y_name: &str) -> Result<Tensor> {
    let d = sigmoid_derivative(w, y, y_name)?;
    let row_norms = w
        .f_square()?
        .f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?; // [m]
    Ok(d.f_square()?.f_matmul(&row_norms)?)
}
