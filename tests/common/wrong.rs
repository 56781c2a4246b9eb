//! The cases of tests/gen-pytorch-wrong.py computed with the crate's defaults, shared by
//! tests/second_order.rs and bench's second_order_report (docs/second-order.md's table).
#![allow(dead_code)]

use tch::{Device, Kind, Tensor};
use tch_jacobian::{jacobian_with, jvp, JacobianOptions, Result, Strategy};

/// The cases: name, what L(a) is, PyTorch's fast tool, upstream issue.
pub const CASES: [(&str, &str, &str, &str); 3] = [
    (
        "layer_norm_weight",
        "‖∂ layer_norm(a·x; w, b)/∂w‖², d/da",
        "torch.func.jacrev",
        "pytorch/functorch#534",
    ),
    (
        "batch_norm_weight",
        "‖∂ batch_norm(a·x; w, b)/∂w‖² (training), d/da",
        "torch.func.jacrev",
        "pytorch/functorch#534",
    ),
    (
        "layer_norm_jvp",
        "‖J u‖² of layer_norm(a·x; w, b), d/da",
        "torch.autograd.functional.jvp(create_graph=True)",
        "pytorch#196700",
    ),
];

/// The value a = 1.3 that the fixtures differentiate at.
pub const A: f64 = 1.3;

/// `tests/data/wrong_<case>_<name>.npy` under `root` on `device`.
pub fn fixture(root: &str, case: &str, name: &str, device: Device) -> Tensor {
    let path = format!("{root}/tests/data/wrong_{case}_{name}.npy");
    Tensor::read_npy(&path)
        .unwrap_or_else(|e| panic!("cannot read {path} ({e}); run scripts/gen-fixtures"))
        .to_device(device)
}

/// `[PyTorch's fast tool, row loop, finite differences]` of a case.
pub fn pytorch_values(root: &str, case: &str) -> Vec<f64> {
    Vec::<f64>::try_from(fixture(root, case, "value", Device::Cpu)).expect("f64 values")
}

/// dL/da by the crate's defaults (`Strategy::Auto`, `create_graph`).
pub fn ours(root: &str, case: &str, device: Device) -> Result<f64> {
    let get = |name: &str| fixture(root, case, name, device);
    let opts = JacobianOptions::default()
        .create_graph(true)
        .strategy(Strategy::Auto);
    let a = Tensor::from_slice(&[A])
        .to_device(device)
        .set_requires_grad(true);
    let (x, w, b) = (get("x"), get("w"), get("b"));
    let l = match case {
        "layer_norm_weight" | "batch_norm_weight" => {
            let wg = w.set_requires_grad(true);
            let xa = x.f_mul(&a)?;
            let y = if case == "layer_norm_weight" {
                xa.f_layer_norm([x.size()[1]], Some(&wg), Some(&b), 1e-5, false)?
            } else {
                let none = None::<&Tensor>;
                xa.f_batch_norm(Some(&wg), Some(&b), none, none, true, 0.1, 1e-5, true)?
            };
            jacobian_with(&y, &[&wg], &opts)?.remove(0)
        }
        _ => {
            let xg = x.set_requires_grad(true);
            let y = xg
                .f_mul(&a)?
                .f_layer_norm([x.size()[1]], Some(&w), Some(&b), 1e-5, false)?;
            jvp(&y, &xg, &get("u"), &opts)?
        }
    };
    let root = l.f_square()?.f_sum(Kind::Double)?;
    Ok(Tensor::f_run_backward(&[root], &[&a], false, false)?[0].f_double_value(&[0])?)
}
