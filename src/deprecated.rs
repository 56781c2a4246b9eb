//! 0.1's names, kept for one release as deprecated aliases of their 0.2 names (CHANGELOG.md,
//! "Migration from 0.1"). Each forwards to the new function unchanged.
#![allow(deprecated)]

use tch::{Device, Tensor};

use crate::closure::FnOutput;
use crate::error::Result;
use crate::jacobian::JacobianOutput;
use crate::strategy::JacobianOptions;

/// Renamed [`per_sample_jacobian`](crate::per_sample_jacobian).
#[deprecated(since = "0.2.0", note = "renamed per_sample_jacobian")]
pub fn batch_jacobian(y: &Tensor, x: &Tensor, opts: &JacobianOptions) -> Result<Tensor> {
    crate::per_sample::per_sample_jacobian(y, x, opts)
}

/// Renamed [`per_sample_jacobian_of`](crate::per_sample_jacobian_of).
#[deprecated(since = "0.2.0", note = "renamed per_sample_jacobian_of")]
pub fn batch_jacobian_of<F, O>(f: F, x: &Tensor, opts: &JacobianOptions) -> Result<Tensor>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    crate::per_sample::per_sample_jacobian_of(f, x, opts)
}

/// Renamed [`per_sample_jacobian_of_aux`](crate::per_sample_jacobian_of_aux).
#[deprecated(since = "0.2.0", note = "renamed per_sample_jacobian_of_aux")]
pub fn batch_jacobian_of_aux<F, O, A>(
    f: F,
    x: &Tensor,
    opts: &JacobianOptions,
) -> Result<JacobianOutput<A>>
where
    F: Fn(&Tensor) -> (O, A),
    O: FnOutput,
{
    crate::per_sample::per_sample_jacobian_of_aux(f, x, opts)
}

/// Renamed [`check_sample_independence`](crate::check_sample_independence).
#[deprecated(since = "0.2.0", note = "renamed check_sample_independence")]
pub fn check_batch_independence(y: &Tensor, x: &Tensor) -> Result<()> {
    crate::per_sample::check_sample_independence(y, x)
}

/// Renamed [`per_sample_hessian_of`](crate::per_sample_hessian_of).
#[deprecated(since = "0.2.0", note = "renamed per_sample_hessian_of")]
pub fn batch_hessian_of<F, O>(u: F, x: &Tensor, opts: &JacobianOptions) -> Result<Tensor>
where
    F: Fn(&Tensor) -> O,
    O: FnOutput,
{
    crate::hessian::per_sample_hessian_of(u, x, opts)
}

/// Renamed [`module_per_sample_jacobian`](crate::module_per_sample_jacobian).
#[deprecated(since = "0.2.0", note = "renamed module_per_sample_jacobian")]
pub fn module_batch_jacobian(
    module: &tch::CModule,
    x: &Tensor,
    output_index: Option<usize>,
    opts: &JacobianOptions,
) -> Result<Tensor> {
    crate::module::module_per_sample_jacobian(module, x, output_index, opts)
}

/// Moved to [`testing::Tolerance`](crate::testing::Tolerance) (test helpers are out of the root).
#[deprecated(since = "0.2.0", note = "use tch_jacobian::testing::Tolerance")]
pub type Tolerance = crate::testing::Tolerance;

/// Moved to [`testing::assert_allclose`](crate::testing::assert_allclose).
#[deprecated(since = "0.2.0", note = "use tch_jacobian::testing::assert_allclose")]
#[track_caller]
pub fn assert_allclose(actual: &Tensor, expected: &Tensor, tol: crate::testing::Tolerance) {
    crate::testing::assert_allclose(actual, expected, tol)
}

/// Moved to [`device::parse_device`](crate::device::parse_device) (a command-line helper, out
/// of the root).
#[deprecated(since = "0.2.0", note = "use tch_jacobian::device::parse_device")]
pub fn parse_device(s: &str) -> Result<Device> {
    crate::device::parse_device(s)
}
