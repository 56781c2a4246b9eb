//! The notebook reproduced: its numbers, the closed-form check, bad inputs, the caller's graph.
mod common;

use approx::assert_abs_diff_eq;
use common::*;
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    frobenius_norm_sq, jacobian, sigmoid_linear_frobenius_sq, sigmoid_linear_jacobian,
    testing::assert_allclose, testing::Tolerance, Error, Result,
};

fn notebook_w_x(kind: Kind, device: Device) -> (Tensor, Tensor) {
    let w = Tensor::from_slice(&[0.1f64, 0.3, 0.6, 1.5, 0.3, 4.1, 0.2, -0.3, -0.7])
        .view([3, 3])
        .to_kind(kind)
        .to_device(device);
    let x = Tensor::from_slice(&[2.0f64, 1.0, 1.0])
        .to_kind(kind)
        .to_device(device)
        .set_requires_grad(true);
    (w, x)
}

fn notebook_f32(device: Device) -> Result<()> {
    let (w, x) = notebook_w_x(Kind::Float, device);
    let y = w.matmul(&x).sigmoid();
    let j = jacobian(&y, &x)?;
    assert_eq!(j.size(), [3, 3]);
    assert_eq!((j.kind(), j.device()), (Kind::Float, device));
    // PyTorch 2.11, float32, as 9 printed digits: rounded to float32 on purpose, compared at 1e-6.
    let row0 = Tensor::from_slice(&[0.018736986f64, 0.056210961, 0.112421922]).to_kind(Kind::Float);
    let row2 =
        Tensor::from_slice(&[0.045756850f64, -0.068635277, -0.160148978]).to_kind(Kind::Float);
    let tol = Tolerance::new(1e-6, 1e-9);
    assert_allclose(&j.get(0), &row0, tol);
    assert_allclose(&j.get(2), &row2, tol);
    let f = frobenius_norm_sq(&j)?.double_value(&[]);
    // PyTorch 2.11's value on this device (CPU 0.04860875755548477, CUDA 0.04860876500606537).
    assert_abs_diff_eq!(f, notebook_f(device, Kind::Float), epsilon = 1e-9);
    let f_calc = frobenius_norm_sq(&sigmoid_linear_jacobian(&w, &y)?)?.double_value(&[]);
    assert!(
        (f - f_calc).abs() <= 1e-7,
        "|F - F_calc| = {}",
        (f - f_calc).abs()
    );
    if device == Device::Cpu {
        // On the CPU the notebook's F and F_calc agree to the last bit, as in PyTorch.
        assert_eq!(f, f_calc);
    }
    // The notebook's printed values (4 decimals).
    let printed = [
        [0.0187, 0.0562, 0.1124],
        [0.0009, 0.0002, 0.0025],
        [0.0458, -0.0686, -0.1601],
    ];
    for (i, row) in printed.iter().enumerate() {
        for (k, v) in row.iter().enumerate() {
            assert_abs_diff_eq!(j.double_value(&[i as i64, k as i64]), *v, epsilon = 5e-5);
        }
    }
    Ok(())
}

fn notebook_f64(device: Device) -> Result<()> {
    let (w, x) = notebook_w_x(Kind::Double, device);
    let y = w.matmul(&x).sigmoid();
    let j = jacobian(&y, &x)?;
    let f = frobenius_norm_sq(&j)?.double_value(&[]);
    assert_abs_diff_eq!(f, notebook_f(device, Kind::Double), epsilon = 1e-15);
    assert_abs_diff_eq!(
        sigmoid_linear_frobenius_sq(&w, &y)?.double_value(&[]),
        f,
        epsilon = 1e-15
    );
    Ok(())
}

/// Autograd and closed form agree on random sigmoid layers, square and not.
fn autograd_matches_closed_form(device: Device) -> Result<()> {
    tch::manual_seed(42);
    for (kind, tol) in [
        (Kind::Float, Tolerance::new(0.0, 1e-6)),
        (Kind::Double, Tolerance::new(0.0, 1e-12)),
    ] {
        for (m, n) in [
            (1, 1),
            (3, 3),
            (64, 64),
            (257, 257),
            (3, 64),
            (64, 3),
            (257, 1),
            (1, 257),
        ] {
            let w = randn(&[m, n], kind, device);
            let x = randn(&[n], kind, device).set_requires_grad(true);
            let y = w.matmul(&x).sigmoid();
            let j = jacobian(&y, &x)?;
            tol.check(&j, &sigmoid_linear_jacobian(&w, &y)?)
                .unwrap_or_else(|e| panic!("{kind:?} m={m} n={n}: {e}"));
        }
    }
    Ok(())
}

fn matches_pytorch(device: Device) -> Result<()> {
    for (case, tol) in [
        ("sigmoid_notebook_f32", f32_tol()),
        ("sigmoid_5x7_f64", f64_tol()),
        ("sigmoid_64x32_f32", f32_tol()),
        ("sigmoid_1x1_f64", f64_tol()),
    ] {
        let w = fx(case, "w", device);
        let x = fx_var(case, "x", device);
        let j = jacobian(&w.matmul(&x).sigmoid(), &x)?;
        tol.check(&j, &fx(case, "j", device))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
    }
    Ok(())
}

fn bad_inputs(device: Device) -> Result<()> {
    let (w, x) = notebook_w_x(Kind::Float, device);
    // x without requires_grad.
    let x_plain = x.detach();
    let err = jacobian(&w.matmul(&x_plain).sigmoid(), &x_plain).unwrap_err();
    assert!(matches!(err, Error::NoGrad { .. }));
    assert!(
        err.to_string()
            .contains("x (shape [3], Float) does not require grad"),
        "{err}"
    );
    // y not connected to x at all (computed from a detached copy).
    assert_err(
        jacobian(&w.matmul(&x.detach()).sigmoid(), &x),
        &["y is not connected to x", "does not require grad"],
    );
    // y in a graph that does not contain x.
    let other = x.detach().set_requires_grad(true);
    assert_err(
        jacobian(&w.matmul(&other).sigmoid(), &x),
        &["y is not connected to x", "no gradient reaches x"],
    );
    // Integer dtypes.
    let xi = Tensor::from_slice(&[1i64, 2, 3]).to_device(device);
    assert_err(jacobian(&xi, &xi), &["dtype", "Int64", "[3]"]);
    // Shapes that do not fit the closed form.
    assert_err(
        sigmoid_linear_jacobian(&w, &Tensor::zeros([4], (Kind::Float, device))),
        &["[3, 3]", "[4]"],
    );
    Ok(())
}

/// After `jacobian`, the caller can still back-propagate a loss built from `y`, and `x.grad()`
/// holds only that loss's gradient.
fn caller_graph_usable(device: Device) -> Result<()> {
    let (w, x) = notebook_w_x(Kind::Double, device);
    let w = w.set_requires_grad(true);
    let y = w.matmul(&x).sigmoid();
    let _j = jacobian(&y, &x)?;
    let loss = y.sum(Kind::Double);
    loss.backward();
    let expected_x = (&y * (1f64 - &y)).detach().matmul(&w.detach()); // 1ᵀ J
    assert_allclose(&x.grad(), &expected_x, f64_tol());
    assert!(w.grad().defined());
    Ok(())
}

device_tests!(
    notebook_f32,
    notebook_f64,
    autograd_matches_closed_form,
    matches_pytorch,
    bad_inputs,
    caller_graph_usable
);
