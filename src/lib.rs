//! # tch-jacobian
//!
//! Jacobian matrices — by reverse mode, forward mode and collapsed Taylor mode — on
//! [tch](https://docs.rs/tch) (libtorch), and the Hessians, Laplacians and penalties built on
//! them, with numbers checked against PyTorch. CUDA tensors go through the same calls; the
//! current engine has not yet run or been tested on a GPU (docs/limitations.md).
//!
//! It starts from a PyTorch notebook: for `F(x) = σ(Wx)` it computes `J_ij = ∂F_i/∂x_j` with one
//! backward pass per output element (`retain_graph`), the squared Frobenius norm (the
//! contractive auto-encoder penalty), and checks `J` against `diag(y(1−y))·W`:
//!
//! ```
//! use tch::Tensor;
//! use tch_jacobian::{frobenius_norm_sq, jacobian, sigmoid_linear_jacobian};
//!
//! let w = Tensor::from_slice(&[0.1f32, 0.3, 0.6, 1.5, 0.3, 4.1, 0.2, -0.3, -0.7]).view([3, 3]);
//! let x = Tensor::from_slice(&[2.0f32, 1.0, 1.0]).set_requires_grad(true);
//! let y = w.matmul(&x).sigmoid();
//! let j = jacobian(&y, &x)?; // one run_backward per y_i, graph kept
//! let f = frobenius_norm_sq(&j)?;
//! let f_calc = frobenius_norm_sq(&sigmoid_linear_jacobian(&w, &y)?)?;
//! assert!((f.double_value(&[]) - 0.0486).abs() < 1e-4);
//! assert!((f.double_value(&[]) - f_calc.double_value(&[])).abs() <= 1e-7);
//! # Ok::<(), tch_jacobian::Error>(())
//! ```
//!
//! ## PyTorch → tch-jacobian
//!
//! | PyTorch | tch-jacobian |
//! |---|---|
//! | `for i: J[i] = grad(y[i], x, retain_graph=True)[0]` | [`jacobian(&y, &x)`](jacobian()) |
//! | `torch.autograd.functional.jacobian(f, (a, b), create_graph=…, strict=…)` | [`jacobian_with(&y, &[&a, &b], &opts)`](jacobian_with) or [`jacobian_of(f, &x, &opts)`](jacobian_of) |
//! | `torch.func.jacrev(f, chunk_size=c)(x)` | [`jacobian_of`] or [`jacobian_with`] with [`Strategy::Batched { chunk_size: Some(c) }`](Strategy::Batched) (the native batched engine, [`native`]; what `Auto` picks when it is built, except for tall Jacobians on the CPU) |
//! | `torch.autograd.functional.jacobian(f, x, vectorize=True)` | [`jacobian_of`] or [`jacobian_with`] with [`Strategy::Batched`]: PyTorch's `vectorize=True` is also one vmapped backward pass (`is_grads_batched=True`), not a replicated forward |
//! | `torch.func.jacfwd(f)(x)` | [`jacobian_of`] with [`Strategy::Forward`] (forward-mode AD on dual tensors with the engine; what `Auto` picks for tall Jacobians on the CPU; also in [`jacobian_with`], by double-backward JVPs) |
//! | (no PyTorch twin; the closest is running `f` on stacked copies of `x` yourself) | [`jacobian_of`] with [`Strategy::Vectorized`] (replicated forward: `f` on stacked copies, one backward pass) or [`Strategy::VectorizedForward`] (double backward over stacked copies, column by column) — no native engine needed; what `Auto` picks for closures without it |
//! | `torch.func.vmap(torch.func.jacrev(f))(x)` | [`per_sample_jacobian_of(f, &x, &opts)`](per_sample_jacobian_of) or [`per_sample_jacobian(&y, &x, &opts)`](per_sample_jacobian) |
//! | `torch._C._functorch._set_vmap_fallback_enabled(False)` | [`JacobianOptions::vmap_fallback(false)`](JacobianOptions::vmap_fallback); ops that fell back: [`native::take_vmap_fallbacks`] |
//! | `torch.func.jacrev(f, has_aux=True)(x)` (+ the value, JAX's `value_and_jacrev`) | [`jacobian_of_aux(f, &x, &opts)`](jacobian_of_aux), [`per_sample_jacobian_of_aux`] |
//! | `torch.autograd.functional.jacobian(f, (a, b))` with tuple outputs | [`jacobians(&[&y0, &y1], &[&a, &b], &opts)`](jacobians) |
//! | `vmap(grad(lambda p, x: loss(functional_call(model, p, x))))` (per-sample gradients, O(B)) | [`per_sample_gradients_of(loss, &params, &[&x, &t], &opts)`](per_sample_gradients_of) |
//! | the same for a `tch::nn` model built by `fn(&nn::Path) -> M` | [`per_sample_gradients_of_module(&vs, build, loss, &[&x, &t], &opts)`](per_sample_gradients_of_module) |
//! | the same from losses already computed over the batch | [`per_sample_gradients(&losses, &trainable_parameters(&vs), &opts)`](per_sample_gradients) |
//! | `jacrev(lambda p: functional_call(model, p, x))(params)` | [`parameter_jacobian(&y, &params, &opts)`](parameter_jacobian) |
//! | `torch.autograd.functional.vjp` / `grad(y, x, v)` | [`vjp(&y, &x, &v, &opts)`](vjp) |
//! | `grad(y, x, V, is_grads_batched=True)` / `vmap(vjp_fn)(V)` | [`vjp_batched(&y, &x, &v, &opts)`](vjp_batched) |
//! | `vmap(lambda u: torch.func.jvp(f, (x,), (u,))[1])(U)` | [`jvp_batched(&y, &x, &u, &opts)`](jvp_batched) |
//! | `torch.func.hessian(f)(x)` | [`hessian_of(f, &x, &opts)`](hessian_of) |
//! | `vmap(hessian(u))(x)` and its trace, the Laplacian (PINNs) | [`per_sample_hessian_of(u, &x, &opts)`](per_sample_hessian_of), [`laplacian_of(u, &x, &opts)`](laplacian_of) (collapsed Taylor mode: one forward pass) |
//! | jet-for-pytorch's `laplacian(f, x)`, folx's forward Laplacian (JAX); `u`, `∇u`, weighted `tr(σσᵀ∇²u)`, Hutchinson estimates | [`laplacian(u, &x, &LaplacianOptions::default())`](laplacian()) with [`LaplacianOptions`] |
//! | `scipy.optimize.least_squares(fun, x0)` in a loop over problems, `curve_fit` | [`least_squares(r, &x0, &opts)`](least_squares()) — B problems at once, LM / dogleg / Gauss–Newton, robust losses, bounds, covariance ([`mod@least_squares`]) |
//! | pypose's `pp.optim.LM(model)` / `optimizer.step(input)`, Ceres's `DENSE_NORMAL_CHOLESKY` or `CGNR` over a network's weights | [`ModelFit::new(&vs, &FitOptions::default())`](ModelFit), then [`lm.step(\|\| model.forward(&x) - &y)`](ModelFit::step) — Levenberg–Marquardt or Gauss–Newton, dense or matrix-free ([`least_squares::fit`]) |
//! | `torch.autograd.functional.jvp` | [`jvp(&y, &x, &u, &opts)`](jvp) |
//! | `torch.autograd.functional.hvp` | [`hvp(&y, &x, &v, &opts)`](hvp) |
//! | `torch.autograd.functional.hessian` | [`hessian(&y, &x, &opts)`](fn@hessian) |
//! | `J.pow(2).sum()` | [`frobenius_norm_sq`] |
//! | `torch.diag(y*(1-y)).matmul(W)` | [`sigmoid_linear_jacobian`] |
//! | CAE penalty `λ‖J_f(x)‖_F²`, Jacobian regularization | [`jacobian_penalty`] with [`PenaltyOptions`] and a [`PenaltyEstimator`] |
//! | (none: Hutch++ for a trainable `‖J‖_F²`) | [`PenaltyEstimator::HutchPlusPlus`] |
//! | `torch.allclose` in tests | [`testing::Tolerance`], [`testing::assert_allclose`] |
//!
//! ## One vocabulary
//!
//! Every configurable computation is a free function named after it, with an options struct as
//! its last argument — [`JacobianOptions`], [`LaplacianOptions`], [`PenaltyOptions`] — built from
//! `default()` and chainable setters named after PyTorch's arguments (`create_graph`, `strict`,
//! `strategy`, `chunk_size` in the strategy, `check_independence`, …): the torch.func and SciPy
//! style (a function and its arguments), with Rust's options structs (reusable across calls of a
//! training loop, `Copy`). An option a function does not read is refused, never silently
//! ignored. One name per concept: the algorithm is always a [`Strategy`] (collapsed Taylor mode
//! too, [`Strategy::Taylor`]); "per-sample" functions compute one result per sample of a batch
//! and check that the samples do not interact ([`independence`](mod@independence)); "batched"
//! means a batch of cotangents or tangents in one pass ([`Strategy::Batched`], [`vjp_batched`]);
//! the count of random directions of every estimator is `directions`; results are `*Output`
//! structs. 0.1's names are deprecated aliases (CHANGELOG.md, "Migration from 0.1").
//!
//! The engines behind the strategies — the row loop, the replicated forward, the native batched
//! backward pass, the forward-mode columns and collapsed Taylor mode — and when `Auto` uses each
//! are described in [`strategy`]. Every function that differentiates, loads or compares returns
//! [`Result`]: bad input (no `requires_grad`, integer dtypes, mixed devices, mismatched shapes,
//! `chunk_size = 0`, …) is an [`Error`], not a panic. Helpers that cannot fail
//! ([`trainable_parameters`], [`Strategy::resolve`], [`PenaltyEstimator::sigmoid_closed_form`], …)
//! return plain values, and [`testing::assert_allclose`] panics by design: it is a test
//! assertion. Results live on the inputs' device: CUDA tensors give CUDA Jacobians. What the
//! crate changes for the whole process is listed in [`global`].

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod autograd;
pub mod closed_form;
pub mod closure;
mod deprecated;
pub mod device;
mod engine;
pub mod error;
pub mod global;
pub mod hessian;
pub mod independence;
pub mod jacobian;
pub mod laplacian;
pub mod least_squares;
pub mod module;
pub mod native;
pub mod params;
pub mod penalty;
pub mod per_sample;
pub mod products;
pub mod second_order;
pub mod strategy;
pub mod testing;

pub use closed_form::{sigmoid_linear_frobenius_sq, sigmoid_linear_jacobian};
pub use closure::FnOutput;
pub use error::{Error, Result};
pub use hessian::{hessian, hessian_of, hvp, per_sample_hessian_of};
pub use jacobian::{
    jacobian, jacobian_of, jacobian_of_aux, jacobian_with, jacobians, JacobianOutput,
};
pub use laplacian::{
    laplacian, laplacian_of, LaplacianEstimator, LaplacianOptions, LaplacianOutput,
};
pub use least_squares::{
    least_squares, FitOptions, LeastSquaresOptions, LeastSquaresOutput, ModelFit,
};
pub use module::{load_module, module_jacobian, module_output, module_per_sample_jacobian};
pub use params::{
    parameter_jacobian, per_sample_gradients, per_sample_gradients_of,
    per_sample_gradients_of_module, trainable_parameters, PerSampleOutput,
};
pub use penalty::{
    frobenius_norm_sq, jacobian_penalty, jacobian_penalty_per_sample, PenaltyEstimator,
    PenaltyOptions,
};
pub use per_sample::{
    check_sample_independence, per_sample_jacobian, per_sample_jacobian_of,
    per_sample_jacobian_of_aux,
};
pub use products::{jvp, jvp_batched, vjp, vjp_batched};
pub use strategy::{JacobianOptions, Progress, Randomness, Strategy};

// 0.1's names, deprecated (one release): src/deprecated.rs and the modules' aliases.
#[allow(deprecated)]
pub use deprecated::{
    assert_allclose, batch_hessian_of, batch_jacobian, batch_jacobian_of, batch_jacobian_of_aux,
    check_batch_independence, module_batch_jacobian, parse_device, Tolerance,
};
#[allow(deprecated)]
pub use jacobian::WithValue;
#[allow(deprecated)]
pub use laplacian::{Laplacian, LaplacianMethod};
#[allow(deprecated)]
pub use params::PerSample;
#[allow(deprecated)]
pub use penalty::{contractive_penalty, contractive_penalty_per_sample, Estimator};

/// The README's Rust snippets, compiled by `cargo test --doc`.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// docs/cli.md's Rust snippets.
#[doc = include_str!("../docs/cli.md")]
#[cfg(doctest)]
pub struct CliDocDoctests;

/// docs/cae.md's Rust snippets.
#[doc = include_str!("../docs/cae.md")]
#[cfg(doctest)]
pub struct CaeDocDoctests;

/// docs/laplacian.md's Rust snippets.
#[doc = include_str!("../docs/laplacian.md")]
#[cfg(doctest)]
pub struct LaplacianDocDoctests;

/// docs/least-squares.md's Rust snippets.
#[doc = include_str!("../docs/least-squares.md")]
#[cfg(doctest)]
pub struct LeastSquaresDocDoctests;
