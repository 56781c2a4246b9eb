//! TorchScript models (tests/gen-torchscript.py, tests/data/ts/) against PyTorch's Jacobians:
//! `module_jacobian` (`torch.autograd.functional.jacobian`) and `module_per_sample_jacobian`
//! (`torch.func.vmap(torch.func.jacrev(model))`) with every strategy, tuple outputs, and the
//! errors: no tensor output, output index out of range, inputs the model rejects, integer
//! inputs, files that are missing or not TorchScript. f64 at rtol 1e-10 (`common::f64_tol`).
mod common;

use common::*;
use tch::{CModule, Device, Kind, Tensor};
use tch_jacobian::{
    jacobian_of, load_module, module_jacobian, module_output, module_per_sample_jacobian, Error,
    JacobianOptions, Result, Strategy,
};

fn path(name: &str) -> String {
    format!("{}/tests/data/ts/{name}", root())
}

fn model(name: &str, device: Device) -> CModule {
    load_module(path(&format!("{name}.pt")), device)
        .unwrap_or_else(|e| panic!("cannot load {name}.pt ({e}); run scripts/gen-fixtures"))
}

/// `tests/data/ts/<name>.npy` on `device`.
fn ts(name: &str, device: Device) -> Tensor {
    let p = path(&format!("{name}.npy"));
    Tensor::read_npy(&p)
        .unwrap_or_else(|e| panic!("cannot read fixture {p} ({e}); run scripts/gen-fixtures"))
        .to_device(device)
}

fn opts(s: Strategy) -> JacobianOptions<'static> {
    fast_opts(s)
}

/// Checks `module_jacobian` and `module_per_sample_jacobian` with every strategy against
/// `<case>_j` / `<case>_bj`.
fn check_case(m: &CModule, case: &str, index: Option<usize>, device: Device) -> Result<()> {
    let (x, bx) = (
        ts(&format!("{case}_x"), device),
        ts(&format!("{case}_bx"), device),
    );
    let (j, bj) = (
        ts(&format!("{case}_j"), device),
        ts(&format!("{case}_bj"), device),
    );
    for s in strategies() {
        let got = module_jacobian(m, &x, index, &opts(s))?;
        assert_eq!(got.device(), device);
        f64_tol()
            .check(&got, &j)
            .unwrap_or_else(|e| panic!("{case} module_jacobian {s:?}: {e}"));
        let got = module_per_sample_jacobian(m, &bx, index, &opts(s))?;
        f64_tol()
            .check(&got, &bj)
            .unwrap_or_else(|e| panic!("{case} module_per_sample_jacobian {s:?}: {e}"));
    }
    Ok(())
}

fn mlp_matches_pytorch(device: Device) -> Result<()> {
    let m = model("mlp_tanh", device);
    check_case(&m, "mlp_tanh", None, device)?;
    // Some(0) on a single-tensor output is the tensor itself.
    check_case(&m, "mlp_tanh", Some(0), device)
}

fn conv_matches_pytorch(device: Device) -> Result<()> {
    let m = model("conv", device);
    check_case(&m, "conv", None, device)?;
    // conv.pt was saved in training mode (dropout on): load_module's eval() is what makes it
    // match; loaded as is, the Jacobian is that of a random dropout mask.
    let raw = CModule::load_on_device(path("conv.pt"), device)?;
    let j = module_jacobian(&raw, &ts("conv_x", device), None, &opts(Strategy::RowLoop))?;
    match f64_tol().check(&j, &ts("conv_j", device)) {
        Err(Error::Mismatch(msg)) => assert!(msg.contains("elements differ"), "{msg}"),
        other => panic!("a dropout mask's Jacobian must differ from PyTorch's eval one: {other:?}"),
    }
    let j = module_jacobian(&m, &ts("conv_x", device), None, &JacobianOptions::default())?;
    assert_eq!(j.size(), [4, 1, 8, 8]);
    Ok(())
}

/// More outputs than inputs, and a matrix output: J [3, 4, 2], batch J [5, 3, 4, 2].
fn tall_matrix_output(device: Device) -> Result<()> {
    let m = model("tall", device);
    check_case(&m, "tall", None, device)?;
    let j = module_jacobian(&m, &ts("tall_x", device), None, &JacobianOptions::default())?;
    assert_eq!(j.size(), [3, 4, 2]);
    Ok(())
}

fn tuple_outputs_by_index(device: Device) -> Result<()> {
    let m = model("tuple_out", device);
    check_case(&m, "tuple_out0", Some(0), device)?;
    check_case(&m, "tuple_out1", Some(1), device)?;
    let x = ts("tuple_out0_x", device);
    assert_eq!(module_output(&m, &x, Some(1))?.size(), [5]);
    Ok(())
}

/// Three create_graph training steps with the executor's optimization on (as training with a
/// Jacobian penalty does), after which the profiling executor runs its optimized graph.
fn warm_up(m: &CModule, x: &Tensor) {
    for _ in 0..3 {
        let xs = x.detach().set_requires_grad(true);
        let y = m.forward_ts(&[&xs]).unwrap().sum(Kind::Double);
        let g = Tensor::run_backward(&[&y], &[&xs], true, true);
        g[0].sum(Kind::Double).backward();
    }
}

/// `(J, ∂‖J‖²/∂x, ∂‖J‖²/∂θ)` for J by `jac` at `x`, θ the model's parameters.
fn penalty_grads(
    m: &CModule,
    x: &Tensor,
    jac: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Vec<Tensor>)> {
    let x = x.detach().set_requires_grad(true);
    let params: Vec<Tensor> = m.named_parameters()?.into_iter().map(|(_, p)| p).collect();
    assert!(!params.is_empty());
    let j = jac(&x)?;
    let mut wrt = vec![&x];
    wrt.extend(params.iter());
    let g = Tensor::f_run_backward(&[j.square().sum(Kind::Double)], &wrt, false, false)?;
    // A weight that J does not depend on (the last bias): zeros, however autograd says it.
    let g = g
        .into_iter()
        .zip(&wrt)
        .map(|(g, w)| if g.defined() { g } else { w.zeros_like() })
        .collect();
    Ok((j.detach(), g))
}

/// create_graph: `module_jacobian`'s Jacobian is PyTorch's, and the gradient of the penalty
/// `‖J‖²` with respect to the input and the model's weights equals the row loop's on a closure
/// of the same model with the executor's optimization off (eager autograd, which `RowLoop` runs
/// as PyTorch's loop does), every strategy, on a fresh module (the crate turns the executor's
/// optimization off: the batched pass stays, nothing is rerouted) and on a module warmed up by
/// three create_graph training steps with the optimization on.
///
/// On the warm module libtorch keeps the optimized plan it made (its profiling executor returns
/// a plan once made before reading the switch), so the graph holds `DifferentiableGraphBackward`
/// and the guard reroutes the batched strategies to the row loop: right values, slower
/// ([`CREATE_GRAPH_NATIVE`]; an explicit forward-mode strategy is refused there,
/// `WrongDerivative`).
fn create_graph_through_model(device: Device) -> Result<()> {
    let m = model("mlp_tanh", device);
    let x = ts("mlp_tanh_x", device);
    let expected = ts("mlp_tanh_j", device);
    tch::jit::set_graph_executor_optimize(false);
    let reference = penalty_grads(&m, &x, |x| {
        jacobian_of(
            |x: &Tensor| m.forward_ts(&[x]),
            x,
            &opts(Strategy::RowLoop).create_graph(true),
        )
    });
    tch::jit::set_graph_executor_optimize(true);
    let (_, want) = reference?;
    let m = model("mlp_tanh", device);
    let mut outcomes = Vec::new();
    for warm in [false, true] {
        if warm {
            warm_up(&m, &x);
        }
        let _ = tch_jacobian::second_order::take_reroutes();
        for s in strategies() {
            let phase = if warm { "warm" } else { "fresh" };
            let what = format!("{s:?} ({phase})");
            let result = penalty_grads(&m, &x, |x| {
                module_jacobian(&m, x, None, &opts(s).create_graph(true))
            });
            let reroutes: Vec<String> = tch_jacobian::second_order::take_reroutes()
                .iter()
                .map(|r| format!(" {}->{}", r.from, r.to))
                .collect();
            let (j, got) = match result {
                Ok(v) => v,
                Err(e) => {
                    outcomes.push(format!("{phase} {s}: {}", common::sweep::variant(&e)));
                    continue;
                }
            };
            assert_eq!(j.kind(), Kind::Double, "{what}");
            f64_tol()
                .check(&j, &expected)
                .unwrap_or_else(|e| panic!("create_graph J {what}: {e}"));
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                f64_tol()
                    .check(g, w)
                    .unwrap_or_else(|e| panic!("create_graph ∂‖J‖²/∂(x, θ)[{k}] {what}: {e}"));
            }
            outcomes.push(format!("{phase} {s}: ok{}", reroutes.join("")));
        }
    }
    let expected_outcomes: &[&str] = if tch_jacobian::native::available() {
        CREATE_GRAPH_NATIVE
    } else {
        CREATE_GRAPH_NO_ENGINE
    };
    assert_eq!(
        outcomes,
        expected_outcomes,
        "module_jacobian with create_graph ({} build)",
        common::build()
    );
    Ok(())
}

/// `create_graph_through_model`, per module (fresh, warm) and strategy: `ok` (the values
/// checked) and the reroutes (`from->to`), or the error's variant. With the engine a fresh module
/// keeps the batched pass (the executor's optimization is off under `create_graph`).
const CREATE_GRAPH_NATIVE: &[&str] = &[
    "fresh auto: ok",
    "fresh row-loop: ok",
    "fresh forward: ok",
    "fresh vectorized: ok",
    "fresh vectorized:3: ok",
    "fresh vectorized-forward: ok",
    "fresh vectorized-forward:2: ok",
    "fresh batched: ok",
    "fresh batched:2: ok",
    "warm auto: ok batched->row-loop",
    "warm row-loop: ok",
    "warm forward: WrongDerivative",
    "warm vectorized: ok",
    "warm vectorized:3: ok",
    "warm vectorized-forward: WrongDerivative",
    "warm vectorized-forward:2: WrongDerivative",
    "warm batched: ok batched->row-loop",
    "warm batched:2: ok batched:2->row-loop",
];

/// Without the engine the executor's switch is not there: the module's own calls warm it up,
/// and an explicit forward-mode strategy is refused on the fresh module too.
const CREATE_GRAPH_NO_ENGINE: &[&str] = &[
    "fresh auto: ok",
    "fresh row-loop: ok",
    "fresh forward: WrongDerivative",
    "fresh vectorized: ok",
    "fresh vectorized:3: ok",
    "fresh vectorized-forward: WrongDerivative",
    "fresh vectorized-forward:2: WrongDerivative",
    "warm auto: ok",
    "warm row-loop: ok",
    "warm forward: WrongDerivative",
    "warm vectorized: ok",
    "warm vectorized:3: ok",
    "warm vectorized-forward: WrongDerivative",
    "warm vectorized-forward:2: WrongDerivative",
];

fn errors_are_errors(device: Device) -> Result<()> {
    let o = JacobianOptions::default();
    let mlp = model("mlp_tanh", device);
    let x = ts("mlp_tanh_x", device);
    // A model with no tensor output.
    for name in ["returns_str", "returns_int"] {
        let m = model(name, device);
        for s in strategies() {
            let e = module_jacobian(&m, &x, None, &opts(s)).unwrap_err();
            assert!(matches!(e, Error::Contract(_)), "{name} {s:?}: {e}");
            assert!(e.to_string().contains("not a tensor"), "{e}");
        }
        assert_err(
            module_per_sample_jacobian(&m, &ts("mlp_tanh_bx", device), None, &o),
            &["not a tensor"],
        );
    }
    assert_err(
        module_output(&model("returns_str", device), &x, None),
        &["the model returns str \"no tensor here\", not a tensor"],
    );
    // Output index out of range, or no index on a tuple, or an index on a non-tensor element.
    let tup = model("tuple_out", device);
    assert_err(
        module_jacobian(&tup, &x, Some(3), &o),
        &["output index 3 is out of range", "3 values"],
    );
    assert_err(
        module_jacobian(&tup, &x, None, &o),
        &["returns 3 values", "output index (0 to 2)"],
    );
    assert_err(
        module_jacobian(&tup, &x, Some(2), &o),
        &["output 2 of the model is int 1, not a tensor"],
    );
    assert_err(
        module_jacobian(&mlp, &x, Some(1), &o),
        &["output index 1 is out of range", "single tensor"],
    );
    // The model rejects the input: its own message is passed on.
    for s in strategies() {
        let e = module_jacobian(&mlp, &ts("bad_shape_x", device), None, &opts(s)).unwrap_err();
        assert!(matches!(e, Error::Torch(_)), "{s:?}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("the model rejected an input of shape [3]"),
            "{msg}"
        );
        assert!(msg.contains("shapes cannot be multiplied"), "{msg}");
    }
    assert_err(
        module_jacobian(&mlp, &ts("f32_x", device), None, &o),
        &["the model rejected an input of shape [5] (Float"],
    );
    assert_err(
        module_per_sample_jacobian(&mlp, &ts("bad_shape_x", device).view([1, 3]), None, &o),
        &["shapes cannot be multiplied"],
    );
    // Integer inputs.
    for s in strategies() {
        let e = module_jacobian(&mlp, &ts("int_x", device), None, &opts(s)).unwrap_err();
        assert!(matches!(e, Error::Kind(_)), "{s:?}: {e}");
        assert!(e.to_string().contains("Int64"), "{e}");
    }
    assert_err(
        module_per_sample_jacobian(&mlp, &ts("int_x", device).view([1, 5]), None, &o),
        &["Int64", "floating-point"],
    );
    Ok(())
}

/// A model that is not row-wise: Auto falls back to RowLoop, explicit Vectorized reports it.
fn auto_falls_back_for_fixed_shape_models(device: Device) -> Result<()> {
    // A traced model with the input's shape baked in: x.view(1, 5) @ Wᵀ.
    let w = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0, 5.0, -1.0, 0.5, 0.0, 2.0, 1.0])
        .view([2, 5])
        .to_device(device);
    let w2 = w.shallow_clone();
    let traced = CModule::create_by_tracing(
        "fixed",
        "forward",
        &[Tensor::zeros([5], (Kind::Double, device))],
        &mut move |xs| vec![xs[0].view([1, 5]).matmul(&w2.tr()).tanh().view([2])],
    )?;
    let x = ts("mlp_tanh_x", device);
    let expected = (1f64 - x.matmul(&w.tr()).tanh().square()).unsqueeze(1) * &w;
    let j = module_jacobian(&traced, &x, None, &JacobianOptions::default())?;
    f64_tol().check(&j, &expected).unwrap();
    let e = module_jacobian(
        &traced,
        &x,
        None,
        &opts(Strategy::Vectorized { chunk_size: None }),
    )
    .unwrap_err();
    // The model itself rejects the stacked copies; its message is passed on.
    assert!(matches!(e, Error::Torch(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "the model rejected an input of shape [2, 5] (Double, {device:?})"
        )) && msg.contains("shape '[1, 5]' is invalid for input of size 10"),
        "{msg}"
    );
    Ok(())
}

device_tests!(
    mlp_matches_pytorch,
    conv_matches_pytorch,
    tall_matrix_output,
    tuple_outputs_by_index,
    create_graph_through_model,
    errors_are_errors,
    auto_falls_back_for_fixed_shape_models,
);

#[test]
fn loading_errors() {
    let e = load_module("no/such/model.pt", Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("cannot read TorchScript model no/such/model.pt"),
        "{e}"
    );
    let e = load_module(path(""), Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("directory"), "{e}");
    let e = load_module(path("mlp_tanh_x.npy"), Device::Cpu).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("is not a TorchScript model"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    if !tch::Cuda::is_available() {
        let e = load_module(path("mlp_tanh.pt"), Device::Cuda(0)).unwrap_err();
        assert!(matches!(e, Error::Device(_)), "{e}");
        assert!(e.to_string().contains("CUDA is not available"), "{e}");
    }
}

/// A loaded model is `Send + Sync`: Jacobians from several threads at once.
#[test]
fn shared_between_threads() {
    let m = std::sync::Arc::new(model("mlp_tanh", Device::Cpu));
    let handles: Vec<_> = [Strategy::RowLoop, Strategy::Auto]
        .into_iter()
        .map(|s| {
            let m = m.clone();
            std::thread::spawn(move || {
                let x = ts("mlp_tanh_x", Device::Cpu);
                module_jacobian(&m, &x, None, &opts(s)).unwrap()
            })
        })
        .collect();
    for h in handles {
        f64_tol()
            .check(&h.join().unwrap(), &ts("mlp_tanh_j", Device::Cpu))
            .unwrap();
    }
}

/// A real op without a batching rule: the CPU attention backward of a TorchScript
/// `nn.TransformerEncoderLayer`. With the vmap fallback off, the batched engine names it; on
/// (the default), J equals PyTorch's and the row loop's, and the op is reported.
#[test]
#[cfg_attr(not(feature = "native"), ignore = "needs the native engine")]
fn transformer_takes_the_vmap_fallback() -> Result<()> {
    common::needs_engine();
    let device = Device::Cpu;
    let m = model("transformer", device);
    let x = ts("transformer_x", device);
    let expected = ts("transformer_j", device);
    const OP: &str = "aten::_scaled_dot_product_flash_attention_for_cpu_backward";
    let batched = Strategy::Batched { chunk_size: None };
    match module_jacobian(&m, &x, None, &fast_opts(batched)) {
        Err(Error::NoBatchingRule { op }) => assert_eq!(op, OP),
        other => panic!("expected NoBatchingRule for {OP}, got {other:?}"),
    }
    let _ = tch_jacobian::native::take_vmap_fallbacks();
    for s in [
        batched,
        Strategy::Batched {
            chunk_size: Some(25),
        },
        Strategy::Auto,
    ] {
        let j = module_jacobian(&m, &x, None, &JacobianOptions::default().strategy(s))?;
        assert_eq!(j.size(), [6, 16, 6, 16]);
        f64_tol()
            .check(&j, &expected)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert_eq!(tch_jacobian::native::take_vmap_fallbacks(), [OP], "{s:?}");
    }
    let rows = module_jacobian(&m, &x, None, &opts(Strategy::RowLoop))?;
    f64_tol().check(&rows, &expected).unwrap();
    assert!(tch_jacobian::native::take_vmap_fallbacks().is_empty());
    Ok(())
}
