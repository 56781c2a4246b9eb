//! Collapsed Taylor mode against nested reverse mode (f64), the estimators' unbiasedness, and
//! the PINN loss's gradient against central differences.
mod common;

use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    laplacian, laplacian_of, Error, JacobianOptions, LaplacianEstimator, LaplacianOptions, Strategy,
};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

fn rand(shape: &[i64], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn(shape, F64)
}

/// The first mismatches of `a` against `b` (`|a − b| ≤ atol + rtol·|b|`), or nothing.
fn assert_close(a: &Tensor, b: &Tensor, rtol: f64, atol: f64, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes");
    assert_eq!(a.kind(), b.kind(), "{what}: kinds (shape {:?})", a.size());
    let av = Vec::<f64>::try_from(a.flatten(0, -1)).unwrap();
    let bv = Vec::<f64>::try_from(b.flatten(0, -1)).unwrap();
    let bad: Vec<String> = av
        .iter()
        .zip(&bv)
        .enumerate()
        .filter(|(_, (x, y))| (*x - *y).abs() > atol + rtol * y.abs() || x.is_nan() != y.is_nan())
        .take(5)
        .map(|(i, (x, y))| format!("[{i}] {x} vs {y}"))
        .collect();
    assert!(bad.is_empty(), "{what}: first mismatches {bad:?}");
}

/// A closure by name, each a different set of collapsed rules; `x: [B, 3]`.
fn closure(name: &str) -> Box<dyn Fn(&Tensor) -> Tensor> {
    let w1 = rand(&[5, 3], 1);
    let b1 = rand(&[5], 2);
    let w2 = rand(&[4, 5], 3);
    let w3 = rand(&[1, 4], 4);
    let g = rand(&[5], 5);
    match name {
        "mlp-tanh" => Box::new(move |x: &Tensor| {
            x.linear(&w1, Some(&b1))
                .tanh()
                .linear(&w2, None::<&Tensor>)
                .tanh()
                .linear(&w3, None::<&Tensor>)
        }),
        "matmul-sigmoid-softplus" => Box::new(move |x: &Tensor| {
            let h = x.matmul(&w1.tr()).sigmoid();
            (h.matmul(&w2.tr()).softplus() * 0.5).sum_dim_intlist(1, false, Kind::Double)
        }),
        "elementwise-zoo" => Box::new(move |x: &Tensor| {
            let h = x.linear(&w1, Some(&b1));
            let a = h.sin() * h.cos()
                + h.exp() * 0.1
                + (h.square() + 1.0).log()
                + (h.square() + 2.0).sqrt();
            let b = h.gelu("none")
                + h.gelu("tanh")
                + h.silu()
                + h.atan()
                + h.erf()
                + h.pow_tensor_scalar(3) * 0.01;
            let c = (h.sigmoid() + 1.0).reciprocal()
                + (h.square() + 1.0).rsqrt()
                + h.sinh() * 0.1
                + h.cosh() * 0.1
                + h.asinh();
            (a + b / (c + 3.0)).sum_dim_intlist(1, false, Kind::Double)
        }),
        "products-views" => Box::new(move |x: &Tensor| {
            let h = x.linear(&w1, Some(&b1)).tanh(); // [B, 5]
            let p = h.narrow(1, 0, 3) * x; // [B, 3]
            let q = h.unsqueeze(2).transpose(1, 2).squeeze_dim(1); // [B, 5]
            let r = Tensor::cat(&[&p, &q.select(1, 4).unsqueeze(1)], 1); // [B, 4]
            let s = Tensor::stack(&[&r, &r.flip([1])], 2).reshape([-1, 8]); // [B, 8]
            let t = s
                .view([-1, 2, 4])
                .permute([0, 2, 1])
                .contiguous()
                .flatten(1, 2);
            (t.mean_dim(1, true, Kind::Double) * h.sum_dim_intlist(1, true, Kind::Double)
                - t.select(1, 3).unsqueeze(1) / (h.select(1, 1).unsqueeze(1).square() + 1.0))
                .squeeze()
        }),
        "layer-norm-softmax" => Box::new(move |x: &Tensor| {
            let h = x.linear(&w1, Some(&b1));
            let n = h.layer_norm([5], Some(&g), Some(&b1), 1e-5, false).tanh();
            let s = n.softmax(1, Kind::Double);
            let l = n.log_softmax(1, Kind::Double);
            let e = n.logsumexp([1], false);
            (s * l).sum_dim_intlist(1, false, Kind::Double)
                + e
                + n.relu().sum_dim_intlist(1, false, Kind::Double)
        }),
        "where-clamp-inplace" => Box::new(move |x: &Tensor| {
            let h = x.linear(&w1, Some(&b1));
            let mut k = h.tanh() * 2.0;
            let _ = k.g_add_(&h.square());
            let _ = k.g_mul_scalar_(0.5);
            let m = h.gt(0.0);
            let w = h.where_self(&m, &h.square());
            (k + w + h.clamp(-0.5, 0.5) + h.leaky_relu() * h.abs()).sum_dim_intlist(
                1,
                false,
                Kind::Double,
            )
        }),
        other => panic!("no closure {other}"),
    }
}

const CLOSURES: [&str; 6] = [
    "mlp-tanh",
    "matmul-sigmoid-softplus",
    "elementwise-zoo",
    "products-views",
    "layer-norm-softmax",
    "where-clamp-inplace",
];

#[test]
fn taylor_equals_nested_reverse_mode_f64() {
    let x = rand(&[6, 3], 10) * 0.7;
    for name in CLOSURES {
        let u = closure(name);
        let t = laplacian(
            &u,
            &x,
            &LaplacianOptions::default().strategy(Strategy::Taylor),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let n = laplacian(
            &u,
            &x,
            &LaplacianOptions::default().strategy(Strategy::RowLoop),
        )
        .unwrap();
        assert_eq!(t.strategy, Strategy::Taylor);
        assert_eq!(n.strategy, Strategy::RowLoop);
        assert_close(
            &t.laplacian,
            &n.laplacian,
            1e-9,
            1e-9,
            &format!("{name}: Δu"),
        );
        assert_close(&t.value, &n.value, 1e-12, 1e-12, &format!("{name}: u"));
        assert_close(
            t.gradient.as_ref().unwrap(),
            n.gradient.as_ref().unwrap(),
            1e-10,
            1e-10,
            &format!("{name}: ∇u"),
        );
        // the plain door takes the same path
        let lap = laplacian_of(&u, &x, &JacobianOptions::default()).unwrap();
        assert_close(
            &lap,
            &t.laplacian,
            0.0,
            0.0,
            &format!("{name}: laplacian_of"),
        );
    }
}

/// The per-sample Hessians `[B, n, n]` of `u` (flattened per sample) by `per_sample_hessian_of` and
/// the row loop, which tests/pytorch_parity.rs's `batch_hessian_matches` anchors to PyTorch:
/// the reference the weighted and estimated Laplacians are contracted from here, independent of
/// `Laplacian`'s directions (`[D, B, *in]`, the σ permutation, the 1/k scale).
fn hessians(u: &dyn Fn(&Tensor) -> Tensor, x: &Tensor) -> Tensor {
    let b = x.size()[0];
    let n = x.numel() as i64 / b;
    let opts = JacobianOptions::default().strategy(Strategy::RowLoop);
    let h = tch_jacobian::per_sample_hessian_of(|x: &Tensor| u(x).reshape([b]), x, &opts).unwrap();
    assert_eq!(h.kind(), Kind::Double);
    h.reshape([b, n, n])
}

/// `tr(σσᵀH_b) = Σ_d σ_dᵀ H_b σ_d` by einsum, `σ: [n, m]` or `[B, n, m]`.
fn weighted_reference(h: &Tensor, sigma: &Tensor) -> Tensor {
    if sigma.dim() == 2 {
        Tensor::einsum("nd,bnp,pd->b", &[sigma, h, sigma], None::<i64>)
    } else {
        Tensor::einsum("bnd,bnp,bpd->b", &[sigma, h, sigma], None::<i64>)
    }
}

#[test]
fn weighted_laplacian_matches_the_hessian_contraction() {
    let x = rand(&[4, 3], 11);
    let shared = rand(&[3, 2], 12);
    let per_sample = rand(&[4, 3, 5], 13);
    for name in ["mlp-tanh", "layer-norm-softmax"] {
        let u = closure(name);
        let h = hessians(&u, &x);
        for sigma in [&shared, &per_sample] {
            let reference = weighted_reference(&h, sigma);
            for method in [Strategy::Taylor, Strategy::RowLoop] {
                let out = laplacian(
                    &u,
                    &x,
                    &LaplacianOptions::default().weights(sigma).strategy(method),
                )
                .unwrap();
                assert!(out.gradient.is_none());
                assert_eq!(out.laplacian.kind(), Kind::Double);
                assert_close(
                    &out.laplacian,
                    &reference,
                    1e-10,
                    1e-10,
                    &format!("{name}: tr(σσᵀH), σ {:?}, {method:?}", sigma.size()),
                );
            }
        }
    }
}

/// The directions `z: [k, B, m]` that `LaplacianEstimator::{Rademacher, Gaussian} { seed:
/// Some(seed) }` draws: a `StdRng` seeded with `seed`, `k·B·m` values in row-major order (±1 with
/// probability ½, or standard normal). This reproduces the crate's draws (src/laplacian.rs,
/// `draw`) so that the estimate can be checked value for value; the estimators' distribution is
/// `estimators_are_unbiased`'s business.
fn draws(k: i64, b: i64, m: i64, seed: u64, rademacher: bool) -> Tensor {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let vals: Vec<f64> = (0..k * b * m)
        .map(|_| {
            if rademacher {
                if rng.random_bool(0.5) {
                    1.0
                } else {
                    -1.0
                }
            } else {
                rng.sample(rand_distr::StandardNormal)
            }
        })
        .collect();
    Tensor::from_slice(&vals).reshape([k, b, m])
}

/// Hutchinson's estimates `(1/k) Σ_r v_rᵀ H_b v_r` (`v = z`, or `σ z` with weights) against the
/// einsum of the same directions with `per_sample_hessian_of`, both methods, with and without
/// (shared and per-sample) weights.
#[test]
fn estimates_match_the_hessian_contraction() {
    let x = rand(&[4, 3], 21) * 0.5;
    let shared = rand(&[3, 2], 22);
    let per_sample = rand(&[4, 3, 5], 23);
    let u = closure("mlp-tanh");
    let h = hessians(&u, &x);
    let (k, b, n) = (3i64, 4i64, 3i64);
    for rademacher in [true, false] {
        for sigma in [None, Some(&shared), Some(&per_sample)] {
            let m = sigma.map_or(n, |s| s.size()[s.dim() - 1]);
            let seed = 7 + m as u64;
            let z = draws(k, b, m, seed, rademacher);
            let v = match sigma {
                None => z,
                Some(s) if s.dim() == 2 => Tensor::einsum("nm,kbm->kbn", &[s, &z], None::<i64>),
                Some(s) => Tensor::einsum("bnm,kbm->kbn", &[s, &z], None::<i64>),
            };
            let reference = Tensor::einsum("kbn,bnp,kbp->b", &[&v, &h, &v], None::<i64>) / k as f64;
            let e = if rademacher {
                LaplacianEstimator::Rademacher {
                    directions: k as usize,
                    seed: Some(seed),
                }
            } else {
                LaplacianEstimator::Gaussian {
                    directions: k as usize,
                    seed: Some(seed),
                }
            };
            for method in [Strategy::Taylor, Strategy::RowLoop] {
                let mut l = LaplacianOptions::default().estimator(e).strategy(method);
                if let Some(s) = sigma {
                    l = l.weights(s);
                }
                let out = laplacian(&u, &x, &l).unwrap();
                assert_close(
                    &out.laplacian,
                    &reference,
                    1e-10,
                    1e-10,
                    &format!("{e:?}, σ {:?}, {method:?}", sigma.map(|s| s.size())),
                );
            }
        }
    }
}

/// `nested_strategy`: every inner strategy of the nested path gives the trace of the per-sample
/// Hessian, exact and weighted.
#[test]
fn nested_strategies_match_the_hessian_contraction() {
    let x = rand(&[4, 3], 41);
    let sigma = rand(&[4, 3, 2], 42);
    let u = closure("matmul-sigmoid-softplus");
    let h = hessians(&u, &x);
    let exact = h.diagonal(0, 1, 2).sum_dim_intlist(1, false, Kind::Double);
    let weighted = weighted_reference(&h, &sigma);
    let mut all = vec![Strategy::Auto, Strategy::RowLoop];
    if tch_jacobian::native::available() {
        all.push(Strategy::Batched { chunk_size: None });
        all.push(Strategy::Batched {
            chunk_size: Some(2),
        });
    }
    for s in all {
        // (Auto: Taylor mode, not nested; an explicit strategy is the nested inner pass.)
        let nested = LaplacianOptions::default().strategy(s);
        let out = laplacian(&u, &x, &nested).unwrap();
        let expected = if s == Strategy::Auto {
            Strategy::Taylor
        } else {
            s
        };
        assert_eq!(out.strategy, expected);
        assert_close(&out.laplacian, &exact, 1e-10, 1e-10, &format!("Δu, {s}"));
        let out = laplacian(&u, &x, &nested.weights(&sigma)).unwrap();
        assert_close(
            &out.laplacian,
            &weighted,
            1e-10,
            1e-10,
            &format!("tr(σσᵀH), {s}"),
        );
    }
}

#[test]
fn inputs_of_any_shape() {
    // x: [B, 2, 3]; u flattens each sample. Both methods, exact and weighted, give the
    // contraction of the per-sample Hessian.
    let x = rand(&[3, 2, 3], 15) * 0.5;
    let w = rand(&[4, 6], 16);
    let u = |x: &Tensor| {
        x.flatten(1, 2)
            .linear(&w, None::<&Tensor>)
            .tanh()
            .square()
            .sum_dim_intlist(1, false, Kind::Double)
    };
    let sigma = rand(&[6, 2], 17);
    for weights in [None, Some(&sigma)] {
        let mut t = LaplacianOptions::default().strategy(Strategy::Taylor);
        let mut n = LaplacianOptions::default().strategy(Strategy::RowLoop);
        if let Some(s) = weights {
            t = t.weights(s);
            n = n.weights(s);
        }
        let (t, n) = (laplacian(u, &x, &t).unwrap(), laplacian(u, &x, &n).unwrap());
        // The reference: the Hessian [B, 6, 6] of the flattened sample, contracted.
        let h = hessians(&u, &x);
        let reference = match weights {
            None => h.diagonal(0, 1, 2).sum_dim_intlist(1, false, Kind::Double),
            Some(s) => weighted_reference(&h, s),
        };
        assert_close(
            &t.laplacian,
            &reference,
            1e-10,
            1e-10,
            "[B, 2, 3]: Δu, Taylor",
        );
        assert_close(
            &n.laplacian,
            &reference,
            1e-10,
            1e-10,
            "[B, 2, 3]: Δu, nested",
        );
        if weights.is_none() {
            assert_eq!(t.gradient.as_ref().unwrap().size(), [3, 2, 3]);
            assert_close(
                t.gradient.as_ref().unwrap(),
                n.gradient.as_ref().unwrap(),
                1e-10,
                1e-10,
                "[B, 2, 3]: ∇u",
            );
        }
    }
}

#[test]
fn estimators_are_unbiased() {
    // Mean over 400 seeds within 4 standard errors of the exact value, per sample.
    let x = rand(&[3, 3], 20) * 0.5;
    let u = closure("mlp-tanh");
    let exact = laplacian(&u, &x, &LaplacianOptions::default())
        .unwrap()
        .laplacian;
    for gaussian in [false, true] {
        let draws: Vec<Tensor> = (0..400u64)
            .map(|seed| {
                let e = if gaussian {
                    LaplacianEstimator::Gaussian {
                        directions: 2,
                        seed: Some(seed),
                    }
                } else {
                    LaplacianEstimator::Rademacher {
                        directions: 2,
                        seed: Some(seed),
                    }
                };
                laplacian(&u, &x, &LaplacianOptions::default().estimator(e))
                    .unwrap()
                    .laplacian
            })
            .collect();
        let d = Tensor::stack(&draws, 0);
        let mean = d.mean_dim(0, false, Kind::Double);
        let se = d.std_dim(0, true, false) / 20.0;
        let z = ((mean - &exact).abs() / se).max().double_value(&[]);
        assert!(
            z < 4.0,
            "gaussian={gaussian}: |mean − exact| = {z} standard errors"
        );
    }
}

/// The PINN loss mean((Δu − f)²) and its gradient to W1: Taylor mode with create_graph against
/// central differences in f64 (third derivatives of u).
#[test]
fn pinn_loss_gradient_equals_central_differences() {
    let x = rand(&[5, 3], 30);
    let f = rand(&[5], 31);
    let w1 = rand(&[6, 3], 32);
    let b1 = rand(&[6], 33);
    let w2 = rand(&[1, 6], 34);
    let g = rand(&[6], 35);
    let loss = |w1: &Tensor, create_graph: bool| -> Tensor {
        let u = |x: &Tensor| {
            x.linear(w1, Some(&b1))
                .layer_norm([6], Some(&g), None::<&Tensor>, 1e-5, false)
                .tanh()
                .linear(&w2, None::<&Tensor>)
        };
        let lap = laplacian(
            u,
            &x,
            &LaplacianOptions::default()
                .create_graph(create_graph)
                .strategy(Strategy::Taylor),
        )
        .unwrap();
        (lap.laplacian - &f).square().mean(Kind::Double)
    };
    let w = w1.set_requires_grad(true);
    let l = loss(&w, true);
    let grad = Tensor::run_backward(&[&l], &[&w], true, false).remove(0);
    // The same gradient from a recorded backward (create_graph: the composite backward of the
    // fused elementwise rule instead of its fused kernel).
    let recorded = Tensor::run_backward(&[&l], &[&w], false, true).remove(0);
    assert!(recorded.requires_grad());
    assert_close(&recorded, &grad, 1e-12, 1e-12, "recorded vs fused backward");
    let h = 1e-5;
    let mut fd = vec![0.0; 18];
    for (i, slot) in fd.iter_mut().enumerate() {
        let e = Tensor::zeros([18], F64)
            .index_fill(0, &Tensor::from_slice(&[i as i64]), h)
            .view([6, 3]);
        let plus = loss(&(w1.detach() + &e), false).double_value(&[]);
        let minus = loss(&(w1.detach() - &e), false).double_value(&[]);
        *slot = (plus - minus) / (2.0 * h);
    }
    assert_close(
        &grad,
        &Tensor::from_slice(&fd).view([6, 3]),
        1e-6,
        1e-8,
        "∂loss/∂W1",
    );
}

#[test]
fn values_do_not_depend_on_grad_mode_and_no_graph_without_create_graph() {
    let x = rand(&[4, 3], 40);
    let w = rand(&[5, 3], 41).set_requires_grad(true);
    let u = |x: &Tensor| {
        x.linear(&w, None::<&Tensor>)
            .tanh()
            .sum_dim_intlist(1, false, Kind::Double)
    };
    let plain = laplacian(u, &x, &LaplacianOptions::default()).unwrap();
    assert!(!plain.laplacian.requires_grad());
    let under =
        tch::no_grad(|| laplacian(u, &x, &LaplacianOptions::default().create_graph(true)).unwrap());
    assert!(under.laplacian.requires_grad());
    assert_close(&plain.laplacian, &under.laplacian, 0.0, 0.0, "no_grad");
}

#[test]
fn auto_falls_back_to_nested_for_ops_without_a_rule() {
    let x = rand(&[4, 3], 50);
    // cholesky (the deprecated torch.cholesky) has no collapsed rule, no forward-mode
    // derivative (so no generic rule either) and is not a composite of ops that have one; its
    // double backward exists, so nested reverse mode works.
    let u = |x: &Tensor| {
        let a = x.unsqueeze(2).matmul(&x.unsqueeze(1))
            + Tensor::eye(3, (Kind::Double, tch::Device::Cpu));
        a.cholesky(false)
            .sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Double)
    };
    match laplacian(
        u,
        &x,
        &LaplacianOptions::default().strategy(Strategy::Taylor),
    ) {
        Err(Error::NoTaylorRule { op, .. }) => assert!(op.contains("cholesky"), "{op}"),
        other => panic!("expected NoTaylorRule, got {other:?}"),
    }
    let _ = tch_jacobian::second_order::take_reroutes();
    let auto = laplacian(u, &x, &LaplacianOptions::default()).unwrap();
    assert_eq!(auto.strategy, Strategy::RowLoop);
    // The fallback is recorded, with its memory cost.
    let reroutes = tch_jacobian::second_order::take_reroutes();
    assert!(
        reroutes.len() == 1
            && reroutes[0].from == Strategy::Taylor
            && reroutes[0].to == Strategy::RowLoop
            && reroutes[0].reason.contains("cholesky")
            && reroutes[0].reason.contains("[4, 3, 3] Hessian"),
        "{reroutes:?}"
    );
    let rows = laplacian_of(
        u,
        &x,
        &JacobianOptions::default().strategy(Strategy::RowLoop),
    )
    .unwrap();
    assert_close(&auto.laplacian, &rows, 1e-12, 1e-12, "fallback");
    // The session is closed after the failure: the next call runs Taylor mode again.
    let v = |x: &Tensor| x.square().sum_dim_intlist(1, false, Kind::Double);
    let ok = laplacian(v, &x, &LaplacianOptions::default()).unwrap();
    assert_eq!(ok.strategy, Strategy::Taylor);
    assert_close(
        &ok.laplacian,
        &Tensor::full([4], 6.0, F64),
        0.0,
        0.0,
        "after a failure",
    );
}

#[test]
fn errors_name_shapes() {
    let x = rand(&[4, 3], 60);
    let u = |x: &Tensor| x.tanh(); // [B, 3]: not one scalar per sample
    assert!(matches!(
        laplacian(u, &x, &LaplacianOptions::default()),
        Err(Error::Shape(_))
    ));
    let v = |x: &Tensor| x.sum_dim_intlist(1, false, Kind::Double);
    let bad = rand(&[2, 2], 61);
    assert!(matches!(
        laplacian(v, &x, &LaplacianOptions::default().weights(&bad)),
        Err(Error::Shape(_))
    ));
    let e = LaplacianEstimator::Gaussian {
        directions: 0,
        seed: None,
    };
    assert!(matches!(
        laplacian(v, &x, &LaplacianOptions::default().estimator(e)),
        Err(Error::InvalidArgument(_))
    ));
    // A closure that panics is an error, and leaves no session open.
    let p = |_: &Tensor| -> Tensor { panic!("boom") };
    assert!(matches!(
        laplacian(
            p,
            &x,
            &LaplacianOptions::default().strategy(Strategy::Taylor)
        ),
        Err(Error::Contract(_))
    ));
    assert_eq!(
        laplacian(v, &x, &LaplacianOptions::default())
            .unwrap()
            .strategy,
        Strategy::Taylor
    );
}

/// The first Laplacian by Taylor mode tunes glibc's malloc to keep freed memory (src/global.rs:
/// the coefficient buffers would come back as fresh pages on every call), unless the environment
/// sets malloc's thresholds. No test of this file calls `set_malloc_tuning`.
#[test]
fn taylor_mode_tunes_malloc() {
    let x = rand(&[4, 3], 7);
    let u = closure(CLOSURES[0]);
    let out = laplacian(
        &u,
        &x,
        &LaplacianOptions::default().strategy(Strategy::Taylor),
    )
    .unwrap();
    assert_eq!(out.strategy, Strategy::Taylor);
    assert_eq!(
        tch_jacobian::global::malloc_tuned(),
        common::malloc_tuning_possible()
    );
}

/// u(x) = sigmoid(tanh(x W1ᵀ) W2ᵀ) W3ᵀ, row-wise, in one chained expression: the fused kernels'
/// tests below (W1 may require grad for the PINN loss's gradient).
fn tanh_sigmoid_mlp<'a>(
    w1: &'a Tensor,
    w2: &'a Tensor,
    w3: &'a Tensor,
) -> impl Fn(&Tensor) -> Tensor + Copy + 'a {
    move |x: &Tensor| {
        x.linear(w1, None::<&Tensor>)
            .tanh()
            .linear(w2, None::<&Tensor>)
            .sigmoid()
            .linear(w3, None::<&Tensor>)
            .squeeze_dim(-1)
    }
}

/// Δu and the PINN loss's gradient by Taylor mode are the same under 1 and 2 intra-op threads:
/// the fused elementwise kernels (forward, and the backward of an unrecorded backward pass) split
/// B·R = 8192 values over the threads when built with OpenMP (`native::openmp_status`), each value
/// computed by one thread. In CI (`CI` set, Linux) the build must have them on.
#[test]
fn values_do_not_depend_on_threads() {
    let status = tch_jacobian::native::openmp_status();
    if cfg!(target_os = "linux") && std::env::var_os("CI").is_some() {
        assert!(
            status.starts_with("on: "),
            "CI builds parallel kernels: {status}"
        );
    }
    let x = rand(&[256, 8], 50);
    let w1 = rand(&[32, 8], 51);
    let w2 = rand(&[32, 32], 52);
    let w3 = rand(&[1, 32], 53);
    let run = |threads: i32| -> (Tensor, Tensor) {
        let before = tch::get_num_threads();
        tch::set_num_threads(threads);
        let w = w1.detach().set_requires_grad(true);
        let u = tanh_sigmoid_mlp(&w, &w2, &w3);
        let opts = LaplacianOptions::default().strategy(Strategy::Taylor);
        let lap = laplacian(u, &x, &opts).unwrap().laplacian;
        let l = laplacian(u, &x, &opts.create_graph(true))
            .unwrap()
            .laplacian;
        let loss = l.square().mean(Kind::Double);
        let g = Tensor::run_backward(&[&loss], &[&w], false, false).remove(0);
        tch::set_num_threads(before);
        (lap, g)
    };
    let (lap1, g1) = run(1);
    let (lap2, g2) = run(2);
    assert_close(&lap2, &lap1, 1e-13, 0.0, "Δu, 2 threads vs 1");
    assert_close(&g2, &g1, 1e-13, 0.0, "∂loss/∂W1, 2 threads vs 1");
}

/// The fused elementwise kernels walk B·R values in blocks of 1024 whose runs split at batch
/// boundaries (R = 100 does not divide 1024; B·R = 3700 is not a multiple of it; the first layer's
/// T is batch-broadcast, and its fused backward sums its gradient over the batch in groups of 16
/// samples, 37 = 2·16 + 5): Δu against the nested row loop, and the PINN loss's gradient through
/// the fused backward kernels (an unrecorded backward) against the composite backward (recorded)
/// and the row loop.
#[test]
fn fused_kernels_match_across_blocks_and_batch_boundaries() {
    let x = rand(&[37, 5], 60);
    let w1 = rand(&[100, 5], 61);
    let w2 = rand(&[100, 100], 62) / 10.0;
    let w3 = rand(&[1, 100], 63);
    let w = w1.set_requires_grad(true);
    let u = tanh_sigmoid_mlp(&w, &w2, &w3);
    let taylor = LaplacianOptions::default().strategy(Strategy::Taylor);
    let t = laplacian(u, &x, &taylor).unwrap().laplacian;
    let n = laplacian(u, &x, &taylor.strategy(Strategy::RowLoop))
        .unwrap()
        .laplacian;
    assert_close(&t, &n, 1e-10, 1e-12, "Δu, Taylor vs row loop");
    let l = laplacian(u, &x, &taylor.create_graph(true))
        .unwrap()
        .laplacian
        .square()
        .mean(Kind::Double);
    let fused = Tensor::run_backward(&[&l], &[&w], true, false).remove(0);
    let recorded = Tensor::run_backward(&[&l], &[&w], false, true).remove(0);
    assert_close(
        &fused,
        &recorded,
        1e-12,
        1e-14,
        "∂loss/∂W1, fused vs composite backward",
    );
    let l = laplacian(
        u,
        &x,
        &taylor.strategy(Strategy::RowLoop).create_graph(true),
    )
    .unwrap()
    .laplacian
    .square()
    .mean(Kind::Double);
    let nested = Tensor::run_backward(&[&l], &[&w], false, false).remove(0);
    assert_close(
        &fused,
        &nested,
        1e-10,
        1e-12,
        "∂loss/∂W1, fused backward vs the row loop",
    );
}

/// tanh's and sigmoid's jets are computed at their first lookup, over the input's coefficients
/// when nothing else holds them (csrc/taylor.h, `Pending`). Against the nested row loop (f64):
/// a layer loop that drops each pre-activation (the in-place case), a pre-activation used again
/// after its tanh was consumed (must not be overwritten), two activations of one pre-activation,
/// and an activation never used.
#[test]
fn deferred_activation_jets_match_the_row_loop() {
    let x = rand(&[6, 4], 70);
    let w1 = rand(&[16, 4], 71);
    let w2 = rand(&[16, 16], 72) / 4.0;
    let w3 = rand(&[1, 16], 73);
    let layers = |x: &Tensor| {
        let mut h = x.linear(&w1, None::<&Tensor>);
        h = h.tanh();
        h = h.linear(&w2, None::<&Tensor>);
        h = h.sigmoid();
        h.linear(&w3, None::<&Tensor>).squeeze_dim(-1)
    };
    let reused = |x: &Tensor| {
        let pre = x.linear(&w1, None::<&Tensor>);
        let y = pre.tanh().linear(&w2, None::<&Tensor>);
        let out = y.linear(&w3, None::<&Tensor>).squeeze_dim(-1);
        out + pre.square().sum_dim_intlist(1, false, Kind::Double)
    };
    let two = |x: &Tensor| {
        let pre = x.linear(&w1, None::<&Tensor>);
        let (a, b) = (pre.tanh(), pre.sigmoid());
        drop(pre);
        (a * b).linear(&w3, None::<&Tensor>).squeeze_dim(-1)
    };
    let unused = |x: &Tensor| {
        let pre = x.linear(&w1, None::<&Tensor>);
        let _ = pre.tanh();
        pre.sin().linear(&w3, None::<&Tensor>).squeeze_dim(-1)
    };
    type Closure<'a> = &'a dyn Fn(&Tensor) -> Tensor;
    let closures: [(&str, Closure); 4] = [
        ("layer loop", &layers),
        ("pre-activation reused", &reused),
        ("two activations", &two),
        ("unused activation", &unused),
    ];
    for (name, u) in closures {
        let taylor = LaplacianOptions::default().strategy(Strategy::Taylor);
        let t = laplacian(u, &x, &taylor).unwrap();
        let n = laplacian(u, &x, &taylor.strategy(Strategy::RowLoop)).unwrap();
        assert_eq!(t.strategy, Strategy::Taylor, "{name}");
        assert_close(
            &t.laplacian,
            &n.laplacian,
            1e-10,
            1e-12,
            &format!("{name}: Δu"),
        );
        assert_close(
            t.gradient.as_ref().unwrap(),
            n.gradient.as_ref().unwrap(),
            1e-10,
            1e-12,
            &format!("{name}: ∇u"),
        );
    }
}
