//! Samples that interact are an error in every per-sample function (issue 29 item 2): the mean
//! over the batch, batch norm in training mode, a softmax over dimension 0, attention across the
//! batch, and a closure that mixes only samples ≥ 1 — each gives `Error::Contract` naming the
//! function, by every method; `check_independence(false)` turns the check off; independent
//! closures (f32 and f64, small and large batches) never trip it.
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    check_sample_independence, jacobian_penalty, laplacian, laplacian_of, per_sample_hessian_of,
    per_sample_jacobian, per_sample_jacobian_of, Error, JacobianOptions, LaplacianEstimator,
    LaplacianOptions, PenaltyEstimator, PenaltyOptions, Result, Strategy,
};

type Map = Box<dyn Fn(&Tensor) -> Tensor>;

/// `[B, 3] → [B, 3]` maps whose samples interact.
fn mixing() -> Vec<(&'static str, Map)> {
    vec![
        (
            "mean over the batch",
            Box::new(|x: &Tensor| (x - x.mean_dim(0, true, x.kind())).tanh()),
        ),
        (
            "batch norm in training mode",
            Box::new(|x: &Tensor| {
                x.batch_norm(
                    None::<&Tensor>,
                    None::<&Tensor>,
                    None::<&Tensor>,
                    None::<&Tensor>,
                    true,
                    0.1,
                    1e-5,
                    false,
                )
                .tanh()
            }),
        ),
        (
            "softmax over dimension 0",
            Box::new(|x: &Tensor| x.softmax(0, x.kind())),
        ),
        (
            "attention across the batch",
            Box::new(|x: &Tensor| x.matmul(&x.tr()).softmax(1, x.kind()).matmul(x).sin()),
        ),
        (
            "samples ≥ 1 mixed among themselves",
            Box::new(|x: &Tensor| {
                let b = x.size()[0];
                Tensor::cat(
                    &[x.narrow(0, 0, 1), x.narrow(0, 1, b - 1).cumsum(0, x.kind())],
                    0,
                )
                .sin()
            }),
        ),
    ]
}

fn x64(b: i64) -> Tensor {
    tch::manual_seed(3);
    Tensor::randn([b, 3], (Kind::Double, Device::Cpu))
}

#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T>, who: &str, what: &str) {
    match r {
        Err(Error::Contract(m)) => {
            assert!(m.contains("samples interact"), "{what}: {m}");
            assert!(
                m.starts_with(who),
                "{what}: the message should name {who}: {m}"
            );
        }
        other => panic!("{what}: expected Error::Contract, got {other:?}"),
    }
}

fn strategies() -> Vec<Strategy> {
    let mut all = vec![
        Strategy::Auto,
        Strategy::RowLoop,
        Strategy::Forward,
        Strategy::Vectorized { chunk_size: None },
    ];
    if tch_jacobian::native::available() {
        all.push(Strategy::Batched { chunk_size: None });
    }
    all
}

#[test]
fn batch_jacobians_refuse_mixing_closures() {
    let x = x64(5);
    for (name, f) in mixing() {
        for s in strategies() {
            let opts = JacobianOptions::default().strategy(s);
            if matches!(s, Strategy::Vectorized { .. }) {
                // The replicated strategy's own row-wise check refuses first, checked or not.
                for o in [opts, opts.check_independence(false)] {
                    match per_sample_jacobian_of(&f, &x, &o) {
                        Err(Error::Contract(m)) => assert!(m.contains("mixes rows"), "{m}"),
                        other => panic!("{name}, {s}: {other:?}"),
                    }
                }
                continue;
            }
            refused(
                per_sample_jacobian_of(&f, &x, &opts),
                "per_sample_jacobian_of",
                &format!("{name}, {s}"),
            );
            assert!(
                per_sample_jacobian_of(&f, &x, &opts.check_independence(false)).is_ok(),
                "{name}, {s}: unchecked"
            );
            {
                let xg = x.detach().set_requires_grad(true);
                refused(
                    per_sample_jacobian(&f(&xg), &xg, &opts),
                    "per_sample_jacobian",
                    &format!("{name}, {s}"),
                );
            }
        }
        let xg = x.detach().set_requires_grad(true);
        refused(
            check_sample_independence(&f(&xg), &xg),
            "check_sample_independence",
            name,
        );
        for est in [
            PenaltyEstimator::Exact,
            PenaltyEstimator::Projections {
                directions: 2,
                seed: Some(1),
            },
            PenaltyEstimator::HutchPlusPlus {
                directions: 6,
                seed: Some(1),
            },
        ] {
            refused(
                jacobian_penalty(&f(&xg), &xg, &PenaltyOptions::default().estimator(&est)),
                "jacobian_penalty",
                &format!("{name}, {est:?}"),
            );
            // check_independence(false) turns the check off (for hot loops after a checked call)
            let _ = jacobian_penalty(
                &f(&xg),
                &xg,
                &PenaltyOptions::default()
                    .estimator(&est)
                    .check_independence(false),
            )
            .unwrap_or_else(|e| panic!("{name}, {est:?}, unchecked: {e}"));
        }
    }
}

#[test]
fn hessians_and_laplacians_refuse_mixing_closures() {
    let x = x64(5);
    for (name, f) in mixing() {
        let u = |x: &Tensor| f(x).sum_dim_intlist(1, false, Kind::Double);
        for s in [Strategy::Auto, Strategy::RowLoop] {
            let opts = JacobianOptions::default().strategy(s);
            refused(
                per_sample_hessian_of(u, &x, &opts),
                "per_sample_hessian_of",
                &format!("{name}, {s}"),
            );
            let lap = laplacian_of(u, &x, &opts);
            refused(lap, "laplacian_of", &format!("laplacian_of {name}, {s}"));
            assert!(laplacian_of(u, &x, &opts.check_independence(false)).is_ok());
        }
        for m in [Strategy::Auto, Strategy::Taylor, Strategy::RowLoop] {
            for cg in [false, true] {
                let l = LaplacianOptions::default().strategy(m).create_graph(cg);
                let what = format!("{name}, {m:?}, create_graph {cg}");
                refused(laplacian(u, &x, &l), "laplacian", &what);
                let sigma = Tensor::randn([3, 2], (Kind::Double, Device::Cpu));
                refused(laplacian(u, &x, &l.weights(&sigma)), "laplacian", &what);
                let est = LaplacianEstimator::Rademacher {
                    directions: 3,
                    seed: Some(2),
                };
                refused(laplacian(u, &x, &l.estimator(est)), "laplacian", &what);
                assert!(
                    laplacian(u, &x, &l.check_independence(false)).is_ok(),
                    "{what}: unchecked"
                );
            }
        }
    }
}

/// Independent models never trip the check: MLPs in f32 and f64, batches of 2 to 1024, every
/// function and method, through batch norm in eval mode and layer norm.
#[test]
fn independent_models_pass() {
    for (kind, b) in [(Kind::Double, 2), (Kind::Float, 64), (Kind::Float, 1024)] {
        tch::manual_seed(11);
        let o = (kind, Device::Cpu);
        let w1 = Tensor::randn([3, 16], o) * 0.5;
        let w2 = Tensor::randn([16, 3], o) * 0.5;
        let rm = Tensor::randn([16], o) * 0.1;
        let rv = Tensor::rand([16], o) + 0.5;
        let f = |x: &Tensor| {
            x.matmul(&w1)
                .batch_norm(
                    None::<&Tensor>,
                    None::<&Tensor>,
                    Some(&rm),
                    Some(&rv),
                    false,
                    0.1,
                    1e-5,
                    false,
                )
                .tanh()
                .layer_norm([16], None::<&Tensor>, None::<&Tensor>, 1e-5, false)
                .matmul(&w2)
                .sin()
        };
        let u = |x: &Tensor| f(x).sum_dim_intlist(1, false, kind);
        let x = Tensor::randn([b, 3], o);
        let what = format!("{kind:?}, B = {b}");
        for s in strategies() {
            let opts = JacobianOptions::default().strategy(s);
            let _ =
                per_sample_jacobian_of(f, &x, &opts).unwrap_or_else(|e| panic!("{what} {s}: {e}"));
        }
        let xg = x.detach().set_requires_grad(true);
        let _ = per_sample_jacobian(&f(&xg), &xg, &JacobianOptions::default()).unwrap();
        check_sample_independence(&f(&xg), &xg).unwrap();
        for est in [
            PenaltyEstimator::Exact,
            PenaltyEstimator::Projections {
                directions: 2,
                seed: Some(1),
            },
            PenaltyEstimator::HutchPlusPlus {
                directions: 6,
                seed: Some(1),
            },
        ] {
            let _ = jacobian_penalty(&f(&xg), &xg, &PenaltyOptions::default().estimator(&est))
                .unwrap_or_else(|e| panic!("{what} {est:?}: {e}"));
        }
        let _ = per_sample_hessian_of(u, &x, &JacobianOptions::default())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        for m in [Strategy::Taylor, Strategy::RowLoop] {
            for cg in [false, true] {
                let _ = laplacian(
                    u,
                    &x,
                    &LaplacianOptions::default().strategy(m).create_graph(cg),
                )
                .unwrap_or_else(|e| panic!("{what} {m:?} {cg}: {e}"));
            }
        }
    }
}
