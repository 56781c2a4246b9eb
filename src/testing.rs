//! Comparing tensors the way `numpy.allclose` / `torch.allclose` do, with a report of the
//! first mismatches — for tests that check Rust results against PyTorch.
//!
//! An element passes when
//!
//! ```text
//! |actual − expected| ≤ atol + rtol · |expected|
//! ```
//!
//! (asymmetric, like NumPy: `expected` scales the tolerance). NaNs pass only where both are NaN.
//! Unlike NumPy, `actual` must have `expected`'s kind (dtype) and shape: a float32 result checked
//! against a float64 reference fails with [`Error::Kind`] instead of passing
//! at float32 precision.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Relative and absolute tolerance; see the module docs for the formula.
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::testing::Tolerance;
/// let a = Tensor::from_slice(&[1.0f64, 2.0]);
/// let b = Tensor::from_slice(&[1.0f64, 2.0 + 1e-9]);
/// assert!(Tolerance::default().check(&a, &b).is_ok());
/// assert!(Tolerance::new(0.0, 1e-12).check(&a, &b).is_err());
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
///
/// `#[non_exhaustive]` (options such as NumPy's `equal_nan` may be added): outside this crate it
/// is built by [`Tolerance::new`] or [`Tolerance::default`]; its fields stay readable.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Tolerance {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
}

impl Default for Tolerance {
    /// NumPy's and PyTorch's `allclose` defaults: `rtol = 1e-5`, `atol = 1e-8`.
    fn default() -> Self {
        Tolerance {
            rtol: 1e-5,
            atol: 1e-8,
        }
    }
}

impl Tolerance {
    /// A tolerance with the given `rtol` and `atol`.
    pub fn new(rtol: f64, atol: f64) -> Self {
        Tolerance { rtol, atol }
    }

    /// `Ok(())` when `actual` has `expected`'s kind and shape and every element passes
    /// `|actual − expected| ≤ atol + rtol·|expected|`; otherwise an error listing the count of
    /// mismatches and the first ten with their index, values, absolute and relative difference.
    ///
    /// The kinds must be equal ([`Error::Kind`] otherwise: a result computed in float32 where
    /// float64 was expected is a failure, not a rounding; convert the expected value on purpose
    /// to compare across kinds), and the shapes ([`Error::Shape`]). The values are then compared
    /// in f64 on the CPU; a difference beyond the tolerance is [`Error::Mismatch`].
    ///
    /// ```
    /// use tch::{Kind, Tensor};
    /// use tch_jacobian::{testing::Tolerance, Error};
    /// let a = Tensor::from_slice(&[1.0f32, 2.0]);
    /// let e = Tensor::from_slice(&[1.0f64, 2.0]);
    /// assert!(matches!(Tolerance::default().check(&a, &e), Err(Error::Kind(_))));
    /// Tolerance::default().check(&a, &e.to_kind(Kind::Float))?;
    /// let off = Tensor::from_slice(&[1.0f32, 2.1]);
    /// assert!(matches!(Tolerance::default().check(&off, &a), Err(Error::Mismatch(_))));
    /// # Ok::<(), tch_jacobian::Error>(())
    /// ```
    pub fn check(&self, actual: &Tensor, expected: &Tensor) -> Result<()> {
        if actual.kind() != expected.kind() {
            return Err(Error::Kind(format!(
                "actual is {:?} but expected is {:?} (shape {:?}); convert the expected value on \
                 purpose to compare across kinds",
                actual.kind(),
                expected.kind(),
                actual.size()
            )));
        }
        if actual.size() != expected.size() {
            return Err(Error::Shape(format!(
                "actual has shape {:?} but expected has shape {:?}",
                actual.size(),
                expected.size()
            )));
        }
        let to_vec = |t: &Tensor| -> Result<Vec<f64>> {
            let t = t
                .f_detach()?
                .f_to_device(tch::Device::Cpu)?
                .f_to_kind(Kind::Double)?
                .f_reshape([-1])?;
            Ok(Vec::<f64>::try_from(&t)?)
        };
        let (a, e) = (to_vec(actual)?, to_vec(expected)?);
        let shape = actual.size();
        let mut bad = Vec::new();
        for (i, (&x, &y)) in a.iter().zip(&e).enumerate() {
            let ok = if x.is_nan() || y.is_nan() {
                x.is_nan() && y.is_nan()
            } else {
                (x - y).abs() <= self.atol + self.rtol * y.abs()
            };
            if !ok {
                bad.push(i);
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        let mut msg = format!(
            "{} of {} elements differ (shape {shape:?}, |a − e| ≤ {:e} + {:e}·|e| fails); first ones:",
            bad.len(),
            a.len(),
            self.atol,
            self.rtol
        );
        for &i in bad.iter().take(10) {
            let (x, y) = (a[i], e[i]);
            let abs = (x - y).abs();
            msg.push_str(&format!(
                "\n  at {:?}: actual {x:.9e}, expected {y:.9e}, abs diff {abs:.3e}, rel diff {:.3e}",
                unravel(i, &shape),
                abs / y.abs()
            ));
        }
        Err(Error::Mismatch(msg))
    }
}

fn unravel(mut i: usize, shape: &[i64]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (d, &s) in shape.iter().enumerate().rev() {
        let s = s.max(1) as usize;
        idx[d] = i % s;
        i /= s;
    }
    idx
}

/// Asserts `|actual − expected| ≤ atol + rtol·|expected|` elementwise; on failure panics with
/// the first mismatches (index, values, absolute and relative difference), reported at the
/// caller's line. Meant for tests.
///
/// ```
/// use tch::Tensor;
/// use tch_jacobian::testing::{assert_allclose, Tolerance};
/// let j = Tensor::from_slice(&[0.018736986f32]);
/// assert_allclose(&j, &Tensor::from_slice(&[0.018736986f32]), Tolerance::new(1e-6, 0.0));
/// # Ok::<(), tch_jacobian::Error>(())
/// ```
///
/// # Panics
/// Panics if the kinds or the shapes differ or any element is outside the tolerance (see
/// [`Tolerance::check`]).
#[track_caller]
pub fn assert_allclose(actual: &Tensor, expected: &Tensor, tol: Tolerance) {
    if let Err(e) = tol.check(actual, expected) {
        panic!("assert_allclose failed: {e}");
    }
}

/// The relative tolerance (to the largest magnitude) of the replicated strategies' row-wise
/// checks: the same function on stacked copies and on `x` alone may differ by rounding —
/// another summation order (BLAS, cuDNN picking other algorithms for the stacked batch) and, on
/// CUDA in float32, TF32 convolutions and matmuls (10-bit mantissa; PyTorch's default for cuDNN).
/// A closure that really mixes rows differs by O(1) relative and still fails.
///
/// | dtype | CPU | CUDA |
/// |---|---|---|
/// | float64 | 1e-7 | 1e-7 |
/// | float32 | 1e-3 | 1e-2 (TF32; measured on a ResNet-18 in eval mode on an H100: 6e-4 relative against PyTorch) |
/// | float16, bfloat16 | 5e-2 | 5e-2 |
pub(crate) fn contract_rtol(kind: Kind, device: Device) -> f64 {
    match kind {
        Kind::Double | Kind::ComplexDouble => 1e-7,
        Kind::Float | Kind::ComplexFloat if device.is_cuda() => 1e-2,
        Kind::Float | Kind::ComplexFloat => 1e-3,
        _ => 5e-2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_rtol_follows_its_table() {
        assert_eq!(contract_rtol(Kind::Double, Device::Cuda(0)), 1e-7);
        assert_eq!(contract_rtol(Kind::Float, Device::Cpu), 1e-3);
        assert_eq!(contract_rtol(Kind::Float, Device::Cuda(0)), 1e-2);
        assert_eq!(contract_rtol(Kind::BFloat16, Device::Cpu), 5e-2);
    }
}
