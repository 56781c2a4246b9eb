//! The API's contract: shapes (scalars, empty tensors, several inputs), strategies agreeing,
//! the caller's graph left usable, and every bad input answered by an error naming it.
mod common;

use common::*;
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    check_sample_independence, hessian, hvp, jacobian, jacobian_of, jacobian_with, jvp,
    per_sample_gradients_of, per_sample_jacobian, per_sample_jacobian_of, testing::Tolerance, vjp,
    Error, JacobianOptions, Result, Strategy,
};

fn opts(s: Strategy) -> JacobianOptions<'static> {
    fast_opts(s)
}

fn shapes_scalars_empty(device: Device) -> Result<()> {
    let k = (Kind::Double, device);
    let x = Tensor::randn([2, 3], k).set_requires_grad(true);
    // Scalar output: J has x's shape.
    let s = x.square().sum(Kind::Double);
    assert_eq!(jacobian(&s, &x)?.size(), [2, 3]);
    // Scalar input: J has y's shape.
    let t = Tensor::from_slice(&[0.5f64])
        .to_device(device)
        .reshape([])
        .set_requires_grad(true);
    let y = Tensor::stack(&[t.sin(), t.cos(), t.exp()], 0);
    let j = jacobian(&y, &t)?;
    assert_eq!(j.size(), [3]);
    assert!((j.double_value(&[1]) + 0.5f64.sin()).abs() < 1e-15);
    // Empty output and empty input: correctly shaped empty Jacobians, like PyTorch.
    for st in graph_strategies() {
        let e = x.narrow(1, 0, 0).sin(); // [2, 0]
        assert_eq!(jacobian_with(&e, &[&x], &opts(st))?[0].size(), [2, 0, 2, 3]);
        let xe = Tensor::zeros([0], k).set_requires_grad(true);
        let ye = xe.sum(Kind::Double) + x.sum(Kind::Double);
        assert_eq!(jacobian_with(&ye, &[&xe], &opts(st))?[0].size(), [0]);
    }
    // Per-sample Jacobians of built graphs: an empty batch or empty outputs give zeros of the
    // right shape; a 0-d y or x has no batch dimension.
    let xe = Tensor::zeros([0, 4], k).set_requires_grad(true);
    let je = per_sample_jacobian(&xe.sin(), &xe, &JacobianOptions::default())?;
    assert_eq!(je.size(), [0, 4, 4]);
    let jz = per_sample_jacobian(&x.narrow(1, 0, 0).sin(), &x, &JacobianOptions::default())?;
    assert_eq!((jz.size(), jz.kind()), (vec![2, 0, 3], Kind::Double));
    let err = per_sample_jacobian(&x.sum(Kind::Double), &x, &JacobianOptions::default());
    assert_err(err, &["leading batch dimension", "[]", "[2, 3]"]);
    let f = |x: &Tensor| x.sin();
    let mut with_closure = vec![Strategy::Vectorized { chunk_size: None }, Strategy::RowLoop];
    with_closure.extend(batched());
    for st in with_closure {
        assert_eq!(
            jacobian_of(f, &Tensor::zeros([0, 4], k), &opts(st))?.size(),
            [0, 4, 0, 4]
        );
        assert_eq!(
            per_sample_jacobian_of(f, &Tensor::zeros([0, 4], k), &opts(st))?.size(),
            [0, 4, 4]
        );
    }
    Ok(())
}

/// All strategies give one Jacobian on a random MLP with 2-D input and 2-D output.
fn strategies_agree(device: Device) -> Result<()> {
    tch::manual_seed(7);
    let k = (Kind::Double, device);
    let (w1, w2) = (Tensor::randn([6, 16], k), Tensor::randn([16, 10], k));
    // [*, 2, 3] -> [*, 5, 2]
    let f = |x: &Tensor| {
        let lead = &x.size()[..x.dim() - 2];
        let flat = x.reshape([-1, 6]).matmul(&w1).tanh().matmul(&w2).softplus();
        let mut out = lead.to_vec();
        out.extend([5, 2]);
        flat.reshape(out.as_slice())
    };
    let x = Tensor::randn([2, 3], k);
    let reference = jacobian_of(f, &x, &opts(Strategy::RowLoop))?;
    assert_eq!(reference.size(), [5, 2, 2, 3]);
    for s in [
        Strategy::Auto,
        Strategy::Forward,
        Strategy::Vectorized { chunk_size: None },
        Strategy::Vectorized {
            chunk_size: Some(1),
        },
        Strategy::Vectorized {
            chunk_size: Some(3),
        },
        Strategy::Vectorized {
            chunk_size: Some(1000),
        },
        Strategy::VectorizedForward { chunk_size: None },
        Strategy::VectorizedForward {
            chunk_size: Some(4),
        },
    ]
    .into_iter()
    .chain(batched())
    .chain(
        batched()
            .into_iter()
            .map(|_| Strategy::Batched {
                chunk_size: Some(1000),
            })
            .take(1),
    )
    .chain(batched().into_iter().map(|_| Strategy::Batched {
        chunk_size: Some(3),
    })) {
        f64_tol()
            .check(&jacobian_of(f, &x, &opts(s))?, &reference)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }
    Ok(())
}

/// After every call the caller's graph still back-propagates, and x.grad() is untouched.
fn caller_graph_usable_everywhere(device: Device) -> Result<()> {
    let k = (Kind::Double, device);
    let w = Tensor::randn([4, 3], k).set_requires_grad(true);
    let x = Tensor::randn([5, 3], k).set_requires_grad(true);
    let y = x.matmul(&w.tr()).tanh();
    let s = y.square().sum(Kind::Double);
    let o = JacobianOptions::default();
    let _ = jacobian_with(&y, &[&x, &w], &opts(Strategy::RowLoop))?;
    let _ = jacobian_with(&y, &[&x, &w], &opts(Strategy::Forward).create_graph(true))?;
    for b in batched() {
        let _ = jacobian_with(&y, &[&x, &w], &opts(b).create_graph(true))?;
        let _ = per_sample_jacobian(&y, &x, &opts(b))?;
    }
    let _ = per_sample_jacobian(&y, &x, &o)?;
    let _ = vjp(&y, &x, &y.ones_like(), &o)?;
    let _ = jvp(&y, &x, &x.ones_like(), &o)?;
    let _ = hvp(&s, &x, &x.ones_like(), &o)?;
    let _ = hessian(&s, &w, &o)?;
    check_sample_independence(&y, &x)?;
    assert!(
        !x.grad().defined() && !w.grad().defined(),
        "no call may accumulate into .grad"
    );
    s.backward();
    let expected = (&y * (1f64 - y.square()) * 2.0).matmul(&w).detach();
    f64_tol().check(&x.grad(), &expected).unwrap();
    Ok(())
}

fn bad_inputs(device: Device) -> Result<()> {
    let k = (Kind::Float, device);
    let x = Tensor::randn([2, 3], k).set_requires_grad(true);
    let y = x.sin();
    let o = JacobianOptions::default();
    // x without requires_grad.
    let plain = x.detach();
    assert_err(
        jacobian_with(&plain.sin(), &[&plain], &o),
        &["x (shape [2, 3], Float) does not require grad"],
    );
    assert_err(
        per_sample_jacobian(&plain.sin(), &plain, &o),
        &["does not require grad"],
    );
    // Integer and bool dtypes.
    let xi = Tensor::from_slice(&[1i64, 2]).to_device(device);
    assert_err(
        jacobian_of(|t: &Tensor| t * 2, &xi, &o),
        &["x has dtype Int64", "floating-point"],
    );
    let xb = Tensor::from_slice(&[true, false]).to_device(device);
    assert_err(jacobian_with(&xb, &[&x], &o), &["y has dtype Bool"]);
    // y not connected (strict) and zeros otherwise.
    let z = x.detach().cos();
    assert_err(
        jacobian_with(&z, &[&x], &o.strict(true)),
        &["y is not connected to x"],
    );
    assert_eq!(
        jacobian_with(&z, &[&x], &o)?[0]
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    // v / u of the wrong shape or dtype.
    assert_err(
        vjp(&y, &x, &Tensor::ones([3, 2], k), &o),
        &["v has shape [3, 2] but y has shape [2, 3]"],
    );
    assert_err(
        jvp(&y, &x, &Tensor::ones([6], k), &o),
        &["u has shape [6] but x has shape [2, 3]"],
    );
    assert_err(
        vjp(&y, &x, &Tensor::ones([2, 3], (Kind::Int, device)), &o),
        &["v has dtype Int"],
    );
    // Hessian of a non-scalar.
    assert_err(hessian(&y, &x, &o), &["y must be a scalar", "[2, 3]"]);
    assert_err(hvp(&y, &x, &x.ones_like(), &o), &["y must be a scalar"]);
    // chunk_size = 0.
    let zero = opts(Strategy::Vectorized {
        chunk_size: Some(0),
    });
    assert_err(
        jacobian_of(|t: &Tensor| t.sin(), &x, &zero),
        &["chunk_size must be at least 1, got 0"],
    );
    assert_err(
        jacobian_with(
            &y,
            &[&x],
            &opts(Strategy::Batched {
                chunk_size: Some(0),
            }),
        ),
        &["chunk_size must be at least 1, got 0"],
    );
    // No inputs.
    assert_err(
        jacobian_with(&y, &[], &o),
        &["needs at least one input", "xs is empty"],
    );
    // Vectorized without a closure.
    assert_err(
        jacobian_with(&y, &[&x], &opts(Strategy::Vectorized { chunk_size: None })),
        &["jacobian_of"],
    );
    // A closure that returns the wrong batch size.
    let bad = |t: &Tensor| {
        if t.dim() == 3 {
            t.narrow(0, 0, 1).sin()
        } else {
            t.sin()
        }
    };
    assert_err(
        jacobian_of(bad, &x, &opts(Strategy::Vectorized { chunk_size: None })),
        &["f was given", "returned shape [1, 2, 3]"],
    );
    assert_err(
        per_sample_jacobian_of(|t: &Tensor| t.narrow(0, 0, 1), &x, &o),
        &["batch sizes differ", "[1, 3]", "[2, 3]"],
    );
    // A closure that mixes rows of the leading dimension.
    assert_err(
        jacobian_of(
            |t: &Tensor| t * t.mean(Kind::Float),
            &x,
            &opts(Strategy::Vectorized { chunk_size: None }),
        ),
        &["f mixes rows"],
    );
    assert_err(
        // (t * mean(t) happens to give the right columns in forward mode.)
        jacobian_of(
            |t: &Tensor| t * t.select(0, 0),
            &x,
            &opts(Strategy::VectorizedForward { chunk_size: None }),
        ),
        &["f mixes rows"],
    );
    // Batch sizes that differ.
    let x4 = Tensor::randn([4, 3], k).set_requires_grad(true);
    assert_err(per_sample_jacobian(&y, &x4, &o), &["batch sizes differ"]);
    // A closure's own error is passed on.
    let failing = |t: &Tensor| t.f_matmul(&Tensor::ones([7, 7], k));
    let err = jacobian_of(failing, &x, &o).unwrap_err();
    assert!(matches!(err, Error::Torch(_)), "{err}");
    Ok(())
}

fn cross_sample_check(device: Device) -> Result<()> {
    let k = (Kind::Float, device);
    let x = Tensor::randn([6, 4], k).set_requires_grad(true);
    check_sample_independence(&x.tanh(), &x)?;
    // Batch norm in training mode mixes samples.
    let mixed = (&x - x.mean_dim(0, true, Kind::Float)) / (x.var_dim(0, false, true) + 1e-5).sqrt();
    assert_err(
        check_sample_independence(&mixed, &x),
        &["samples interact", "sample ", "batch norm"],
    );
    Ok(())
}

/// A ResNet-style block (conv, batch norm in eval mode, ReLU, conv, skip) in float32 on the
/// device: every strategy equals the row loop. On CUDA the stacked and the single evaluations may
/// take other cuDNN algorithms and TF32, so the comparison there is relative to max|J| at 1e-2
/// (the row-wise checks' own tolerance, `contract_rtol`); on the CPU at 1e-4.
fn resnet_block_f32(device: Device) -> Result<()> {
    use tch::nn::{self, ModuleT};
    tch::manual_seed(3);
    let vs = nn::VarStore::new(device);
    let root = vs.root();
    let conv = |name: &str, i: i64, o: i64| {
        let cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        nn::conv2d(&root / name, i, o, 3, cfg)
    };
    let (c1, c2) = (conv("c1", 3, 8), conv("c2", 8, 3));
    let bn = nn::batch_norm2d(&root / "bn", 8, Default::default());
    let f = |x: &Tensor| -> Tensor {
        let h = x.apply(&c1);
        let h = bn.forward_t(&h, false).relu().apply(&c2);
        (h + x).relu().flatten(1, -1)
    };
    let x = Tensor::randn([2, 3, 6, 6], (Kind::Float, device));
    let reference = per_sample_jacobian_of(f, &x, &opts(Strategy::RowLoop))?;
    assert_eq!(reference.size(), [2, 108, 3, 6, 6]);
    let scale = reference.abs().max().double_value(&[]);
    let rtol = if device.is_cuda() { 1e-2 } else { 1e-4 };
    let mut cases = vec![
        Strategy::Auto,
        Strategy::Vectorized { chunk_size: None },
        Strategy::Vectorized {
            chunk_size: Some(40),
        },
    ];
    cases.extend(batched());
    for s in cases {
        let j = per_sample_jacobian_of(f, &x, &opts(s))?;
        Tolerance::new(rtol, rtol * scale)
            .check(&j, &reference)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }
    Ok(())
}

/// A Jacobian far larger than memory (2²⁰ × 2²⁰ float32: 4 TiB) is an `Error::OutOfMemory` that
/// names the size asked for and suggests chunk_size — never an abort — and the next, smaller call
/// works.
fn out_of_memory_then_smaller_calls_work(device: Device) -> Result<()> {
    let k = (Kind::Float, device);
    let where_ = if device.is_cuda() {
        "out of memory on the GPU"
    } else {
        "out of memory on the CPU"
    };
    let n = 1i64 << 20;
    let x = Tensor::zeros([n], k);
    // (Not f_mul_scalar: tch 0.24 panics when a scalar op fails, dropping its Scalar before it
    // reads the error.)
    let two = Tensor::from(2.0f32);
    let f = |t: &Tensor| t.f_mul(&two);
    let mut cases = vec![Strategy::Vectorized { chunk_size: None }];
    if tch_jacobian::native::available() {
        cases.extend([
            Strategy::Auto,
            Strategy::Batched { chunk_size: None },
            Strategy::Batched {
                chunk_size: Some(128),
            },
        ]);
    }
    for s in cases {
        let err = jacobian_of(f, &x, &opts(s)).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{s:?}: {err}");
        let text = err.to_string();
        for needle in [where_, "allocate", "chunk_size"] {
            assert!(text.contains(needle), "{s:?}: {text}");
        }
        assert!(text.len() < 600, "one short line: {text}");
        let small = Tensor::randn([8], k);
        let j = jacobian_of(f, &small, &opts(s))?;
        f64_tol()
            .check(&j, &(Tensor::eye(8, k) * 2.0))
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }
    Ok(())
}

/// With the default feature `native` the engine is built (else the build fails); a build
/// without it (`--no-default-features`) answers `Strategy::Batched` with the fix.
#[test]
fn native_engine_build() -> Result<()> {
    let status = tch_jacobian::native::build_status();
    assert_eq!(tch_jacobian::native::available(), status == "built");
    assert_eq!(
        tch_jacobian::native::available(),
        cfg!(feature = "native"),
        "{status}"
    );
    let x = Tensor::randn([4], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let y = x.tanh();
    let batched = opts(Strategy::Batched { chunk_size: None });
    if tch_jacobian::native::available() {
        let j = jacobian_with(&y, &[&x], &batched)?.remove(0);
        f64_tol().check(&j, &jacobian(&y, &x)?).unwrap();
    } else {
        assert_err(
            jacobian_with(&y, &[&x], &batched),
            &["Strategy::Batched needs the native batched engine", status],
        );
        assert!(!matches!(
            Strategy::Auto.resolve(64, 64, false),
            Strategy::Batched { .. }
        ));
    }
    Ok(())
}

/// With the vmap fallback off, an op without a batching rule is an error naming it; with it on
/// (the default) the Jacobian is exact and the op is reported.
#[test]
#[cfg_attr(not(feature = "native"), ignore = "needs the native engine")]
fn vmap_fallback_reported_or_refused() -> Result<()> {
    common::needs_engine();
    // cummax's backward (aten::cummaxmin_backward) has no batching rule in libtorch 2.11.
    let k = (Kind::Double, Device::Cpu);
    let x = Tensor::randn([5, 3], k).set_requires_grad(true);
    let y = x.cummax(0).0;
    let s = Strategy::Batched { chunk_size: None };
    let _ = tch_jacobian::native::take_vmap_fallbacks();
    assert!(matches!(
        jacobian_with(&y, &[&x], &fast_opts(s)),
        Err(Error::NoBatchingRule { op }) if op == "aten::cummaxmin_backward"
    ));
    assert_err(
        jacobian_with(&y, &[&x], &fast_opts(s)),
        &[
            "aten::cummaxmin_backward has no vmap batching rule",
            "RowLoop",
        ],
    );
    let j = jacobian_with(&y, &[&x], &JacobianOptions::default().strategy(s))?.remove(0);
    assert_eq!(
        tch_jacobian::native::take_vmap_fallbacks(),
        ["aten::cummaxmin_backward"]
    );
    f64_tol().check(&j, &jacobian(&y, &x)?).unwrap();
    Ok(())
}

/// The losses whose backward ops libtorch batches only from Python (mse, smooth L1, Huber, NLL /
/// cross-entropy, mish): the crate's C++ rules take them, so they pass with the vmap fallback
/// off, equal to the row loop — for J of the per-sample losses and, with create_graph, for the
/// gradient of ‖J‖² (second order through the rules).
#[test]
#[cfg_attr(not(feature = "native"), ignore = "needs the native engine")]
fn loss_backward_rules_without_fallback() -> Result<()> {
    common::needs_engine();
    let k = (Kind::Double, Device::Cpu);
    tch::manual_seed(3);
    let target = Tensor::randn([4, 3], k);
    let classes = Tensor::from_slice(&[2i64, 0, 1, 2]);
    let weight = Tensor::from_slice(&[0.5f64, 1.0, 2.0]);
    let none = tch::Reduction::None;
    type Loss<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;
    let losses: Vec<(&str, Loss)> = vec![
        ("mse_loss", Box::new(|x: &Tensor| x.mse_loss(&target, none))),
        (
            "mse_loss mean",
            Box::new(|x: &Tensor| x.mse_loss(&target, tch::Reduction::Mean)),
        ),
        (
            "smooth_l1_loss",
            Box::new(|x: &Tensor| x.smooth_l1_loss(&target, none, 0.5)),
        ),
        (
            "smooth_l1_loss beta=0",
            Box::new(|x: &Tensor| x.smooth_l1_loss(&target, none, 0.0)),
        ),
        (
            "huber_loss",
            Box::new(|x: &Tensor| x.huber_loss(&target, none, 0.7)),
        ),
        ("mish", Box::new(|x: &Tensor| x.mish())),
        (
            "cross_entropy",
            Box::new(|x: &Tensor| x.cross_entropy_loss::<Tensor>(&classes, None, none, -100, 0.0)),
        ),
        (
            "nll_loss weighted, ignore_index, mean",
            Box::new(|x: &Tensor| {
                x.log_softmax(1, Kind::Double).g_nll_loss(
                    &classes,
                    Some(&weight),
                    tch::Reduction::Mean,
                    1,
                )
            }),
        ),
    ];
    let batched = fast_opts(Strategy::Batched { chunk_size: None });
    let _ = tch_jacobian::native::take_vmap_fallbacks();
    for (name, loss) in &losses {
        for create_graph in [false, true] {
            // One draw for both runs (tests on other threads share torch's generator).
            let x0 = Tensor::randn([4, 3], k);
            let grads = |opts: &JacobianOptions| -> Result<(Tensor, Tensor)> {
                let x = x0.detach().set_requires_grad(true);
                let j =
                    jacobian_with(&loss(&x), &[&x], &opts.create_graph(create_graph))?.remove(0);
                let g = if create_graph {
                    Tensor::f_run_backward(&[j.square().sum(Kind::Double)], &[&x], false, false)?
                        .remove(0)
                } else {
                    j.zeros_like()
                };
                Ok((j, g))
            };
            let (j, g) = grads(&batched).unwrap_or_else(|e| panic!("{name}: {e}"));
            let (j_rows, g_rows) = grads(&fast_opts(Strategy::RowLoop))?;
            f64_tol()
                .check(&j, &j_rows)
                .unwrap_or_else(|e| panic!("{name} J: {e}"));
            f64_tol()
                .check(&g, &g_rows)
                .unwrap_or_else(|e| panic!("{name} second order: {e}"));
        }
    }
    assert!(tch_jacobian::native::take_vmap_fallbacks().is_empty());
    Ok(())
}

/// Tensors on different devices (CPU and CUDA) give an error, not a crash.
#[cfg(feature = "cuda-tests")]
#[test]
fn cuda_mixed_devices() {
    let x = Tensor::randn([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let y = x.to_device(Device::Cuda(0)).sin();
    assert_err(jacobian(&y, &x), &["device", "Cuda(0)", "Cpu"]);
    let v = Tensor::ones([3], (Kind::Float, Device::Cuda(0)));
    assert_err(
        vjp(&x.sin(), &x, &v, &JacobianOptions::default()),
        &["v (shape [3]) is on Cuda(0)"],
    );
}

/// Nested use: a Jacobian (every strategy, create_graph) inside the one-sample loss of
/// `per_sample_gradients_of`, i.e. inside functorch's vmap and grad levels — per-sample gradients
/// of a Jacobian penalty `‖∂f(x_b)/∂x_b‖²`, against the closed form differentiated by autograd.
fn nested_jacobian_inside_per_sample_closure(device: Device) -> Result<()> {
    let k = (Kind::Double, device);
    let w = Tensor::randn([3, 4], k);
    let params = vec![("w".to_string(), w.shallow_clone())];
    let x = Tensor::randn([5, 4], k);
    // The truth per sample: J = diag(1 − tanh²(W x)) W, loss ‖J‖², its gradient to W.
    let truth: Vec<Tensor> = (0..5)
        .map(|b| {
            let wg = w.detach().set_requires_grad(true);
            let d: Tensor = 1.0 - x.get(b).matmul(&wg.tr()).tanh().square();
            let j = d.unsqueeze(1) * &wg;
            Tensor::run_backward(&[j.square().sum(Kind::Double)], &[&wg], false, false).remove(0)
        })
        .collect();
    let truth = Tensor::stack(&truth, 0);
    let mut inner = vec![Strategy::Auto, Strategy::RowLoop, Strategy::Forward];
    inner.extend(batched());
    for s in inner {
        let loss = |p: &[Tensor], smp: &[Tensor]| -> Result<Tensor> {
            let f = |v: &Tensor| v.matmul(&p[0].tr()).tanh();
            let j = jacobian_of(
                f,
                &smp[0],
                &JacobianOptions::default().strategy(s).create_graph(true),
            )?;
            Ok(j.square().sum(Kind::Double))
        };
        for outer in [Strategy::Auto, Strategy::RowLoop] {
            let out = per_sample_gradients_of(
                loss,
                &params,
                &[&x],
                &JacobianOptions::default().strategy(outer),
            )?;
            f64_tol()
                .check(&out.gradients[0].1, &truth)
                .unwrap_or_else(|e| {
                    panic!("jacobian_of {s} inside per_sample_gradients_of {outer}: {e}")
                });
        }
    }
    Ok(())
}

/// `Forward` on a closure runs forward-mode AD (dual tensors, one extra evaluation of the
/// closure) with the engine; no row-wise requirement; per-sample closures too; an op without
/// forward-mode derivatives is an error, and Auto's row loop. All equal to the row loop.
fn forward_mode_closures(device: Device) -> Result<()> {
    let k = (Kind::Double, device);
    let w = Tensor::randn([24, 3], k);
    let x = Tensor::randn([3], k);
    let row = JacobianOptions::default().strategy(Strategy::RowLoop);
    let fwd = JacobianOptions::default().strategy(Strategy::Forward);
    let calls = std::cell::Cell::new(0);
    let f = |v: &Tensor| {
        calls.set(calls.get() + 1);
        v.matmul(&w.tr()).tanh() * v.sum(Kind::Double) // not row-wise on stacked copies
    };
    let expected = jacobian_of(f, &x, &row)?;
    calls.set(0);
    let j = jacobian_of(f, &x, &fwd)?;
    let dual = tch_jacobian::native::available();
    assert_eq!(calls.get(), if dual { 2 } else { 1 }, "closure evaluations");
    f64_tol()
        .check(&j, &expected)
        .unwrap_or_else(|e| panic!("forward: {e}"));
    // Auto picks Forward for this tall Jacobian (24 → 3) and needs no row-wise closure.
    f64_tol()
        .check(&jacobian_of(f, &x, &JacobianOptions::default())?, &expected)
        .unwrap_or_else(|e| panic!("auto: {e}"));
    // cdist has neither a forward-mode formula nor a double backward: an explicit Forward is an
    // error (not a panic), and Auto, which picks Forward for this tall Jacobian (16 → 3), redoes
    // it with the row loop.
    let pts = Tensor::randn([16, 3], k);
    let g = |v: &Tensor| Tensor::cdist(&v.unsqueeze(-2), &pts, 2.0, None).squeeze_dim(-2);
    assert_err(jacobian_of(g, &x, &fwd), &["_cdist_backward"]);
    f64_tol()
        .check(
            &jacobian_of(g, &x, &JacobianOptions::default())?,
            &jacobian_of(g, &x, &row)?,
        )
        .unwrap_or_else(|e| panic!("cdist, auto: {e}"));
    // Per-sample: [B, 3] -> [B, 24].
    let xb = Tensor::randn([4, 3], k);
    let h = |v: &Tensor| v.matmul(&w.tr()).sin();
    f64_tol()
        .check(
            &per_sample_jacobian_of(h, &xb, &fwd)?,
            &per_sample_jacobian_of(h, &xb, &row)?,
        )
        .unwrap_or_else(|e| panic!("batch: {e}"));
    Ok(())
}

/// A closure that panics on the stacked copies of the replicated strategies (here `view([3])`)
/// is an error naming the contract, not a panic through the caller; `Auto` still answers.
fn closure_panicking_on_stacked_copies(device: Device) -> Result<()> {
    let x = Tensor::randn([3], (Kind::Double, device));
    let f = |v: &Tensor| v.view([3]).sin();
    let vectorized = JacobianOptions::default().strategy(Strategy::Vectorized { chunk_size: None });
    assert_err(jacobian_of(f, &x, &vectorized), &["panicked", "row-wise"]);
    let expected = jacobian_of(
        f,
        &x,
        &JacobianOptions::default().strategy(Strategy::RowLoop),
    )?;
    f64_tol()
        .check(&jacobian_of(f, &x, &JacobianOptions::default())?, &expected)
        .unwrap_or_else(|e| panic!("auto: {e}"));
    Ok(())
}

device_tests!(
    shapes_scalars_empty,
    strategies_agree,
    caller_graph_usable_everywhere,
    bad_inputs,
    cross_sample_check,
    resnet_block_f32,
    out_of_memory_then_smaller_calls_work,
    nested_jacobian_inside_per_sample_closure,
    forward_mode_closures,
    closure_panicking_on_stacked_copies
);

/// Parameter Jacobians name the parameter in their errors.
#[test]
fn parameter_errors_name_the_parameter() {
    let k = (Kind::Double, Device::Cpu);
    let w = Tensor::randn([2, 3], k).set_requires_grad(true);
    let frozen = Tensor::randn([2], k); // does not require grad
    let y = w.sum_dim_intlist(1, false, Kind::Double) + &frozen;
    let params = vec![
        ("layer.weight".to_string(), w.shallow_clone()),
        ("layer.bias".to_string(), frozen.shallow_clone()),
    ];
    assert_err(
        tch_jacobian::parameter_jacobian(&y, &params, &JacobianOptions::default()),
        &["parameter layer.bias", "does not require grad"],
    );
    assert_err(
        tch_jacobian::parameter_jacobian(&y, &[], &JacobianOptions::default()),
        &["no parameters"],
    );
}
