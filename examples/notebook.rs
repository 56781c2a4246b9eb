//! The notebook "Calculating Jacobi matrix in Pytorch", cell by cell, in Rust.
//!
//! F(x) = sigmoid(W x); J_ij = dF_i/dx_j by one backward pass per output element with the graph
//! kept; |J|_F^2; the manual check J_calc = diag(y(1-y)) W; and |F - F_calc| <= 1e-7.
//!
//! Runs on CUDA when available; `--cpu` forces the CPU. Exits non-zero when the check fails.
//!
//!     cargo run --release --example notebook [-- --cpu]
use std::process::ExitCode;

use tch::{Device, Kind, Tensor};
use tch_jacobian::{frobenius_norm_sq, jacobian, sigmoid_linear_jacobian};

/// Prints a 0-D or 2-D tensor the way PyTorch does (4 decimals).
fn show(t: &Tensor) -> anyhow::Result<String> {
    let t = t
        .f_detach()?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Double)?;
    Ok(match t.dim() {
        0 => format!("tensor({:.4})", t.f_double_value(&[])?),
        2 => {
            let rows: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(&t)?;
            let body: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "[{}]",
                        r.iter()
                            .map(|v| format!("{v:7.4}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
                .collect();
            format!("tensor([{}])", body.join(",\n        "))
        }
        _ => format!("{t:?}"),
    })
}

fn main() -> anyhow::Result<ExitCode> {
    let force_cpu = std::env::args().any(|a| a == "--cpu");
    let device = if force_cpu {
        Device::Cpu
    } else {
        Device::cuda_if_available()
    };
    println!(
        "device: {device:?}{}",
        if force_cpu {
            " (--cpu)"
        } else if device == Device::Cpu {
            " (no CUDA found)"
        } else {
            ""
        }
    );

    // In [2]
    let w = Tensor::f_from_slice(&[0.1f32, 0.3, 0.6, 1.5, 0.3, 4.1, 0.2, -0.3, -0.7])?
        .f_view([3, 3])?
        .f_to_device(device)?;
    let x = Tensor::f_from_slice(&[2.0f32, 1.0, 1.0])?
        .f_to_device(device)?
        .set_requires_grad(true);
    let z = w.f_matmul(&x)?;
    let y = z.f_sigmoid()?;

    // In [3], In [4]: J[i] = grad(y[i], x, retain_graph=True)[0]
    let j = jacobian(&y, &x)?;
    println!("\nJ (one run_backward per y_i, graph kept):\n{}", show(&j)?);

    // In [5]
    let f = frobenius_norm_sq(&j)?;
    println!("\nF = |J|_F^2:\n{}", show(&f)?);

    // In [6]
    let j_calc = sigmoid_linear_jacobian(&w, &y)?;
    println!("\nJ_calc = diag(y(1-y)) W:\n{}", show(&j_calc)?);

    // In [7]
    let f_calc = frobenius_norm_sq(&j_calc)?;
    println!("\nF_calc:\n{}", show(&f_calc)?);

    // In [8]
    let diff = (f.f_double_value(&[])? - f_calc.f_double_value(&[])?).abs();
    let ok = diff <= 1e-7;
    println!("\n|F - F_calc| = {diff:e} <= 1e-7: {ok}");
    let dev = if device.is_cuda() { "cuda" } else { "cpu" };
    println!(
        "F = {:.17} (PyTorch 2.11, f32 on {dev}: {})",
        f.f_double_value(&[])?,
        pytorch_f32(dev)
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// PyTorch's float32 `F` on `dev` ("cpu" or "cuda"), from tests/data/notebook_f.txt (written by
/// tests/gen-fixtures.py; the CUDA value comes from an H100).
fn pytorch_f32(dev: &str) -> &'static str {
    include_str!("../tests/data/notebook_f.txt")
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            (p.next() == Some(dev) && p.next() == Some("float32")).then(|| p.next())
        })
        .flatten()
        .next()
        .unwrap_or("?")
}
