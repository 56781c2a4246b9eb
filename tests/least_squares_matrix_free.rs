//! `LinearSolver::MatrixFree` for `least_squares` closures: the same minima as the dense solver
//! (the MGH problems from their standard starts, a batch, a robust loss, a 300-parameter
//! problem, f32), `Auto`'s choice by `J`'s size, the options it refuses, the independence check,
//! and differentiable solutions. f64 unless named; nothing engine-specific.

#[path = "lsq/mgh.rs"]
mod mgh;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use tch::{Device, Kind, Tensor};
use tch_jacobian::least_squares::{LinearSolver, Loss, Method};
use tch_jacobian::{least_squares, Error, LeastSquaresOptions};

const OPT: (Kind, Device) = (Kind::Double, Device::Cpu);

fn mf() -> LeastSquaresOptions<'static> {
    LeastSquaresOptions::default().linear_solver(LinearSolver::MatrixFree)
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// Two exponential decays `a e^(−k t)` fitted together, with noise (nonzero residuals).
fn decays() -> (Tensor, impl Fn(&Tensor) -> Tensor) {
    let t = Tensor::linspace(0.0, 4.0, 20, OPT);
    let truth = Tensor::from_slice(&[2.0f64, 0.7, 5.0, 1.3]).view([2, 2]);
    let model = |p: &Tensor, t: &Tensor| p.narrow(1, 0, 1) * (-p.narrow(1, 1, 1) * t).exp();
    let y = model(&truth, &t) + (&t * 5.0).sin() * 0.05;
    let x0 = Tensor::from_slice(&[1.0f64, 1.0, 1.0, 1.0]).view([2, 2]);
    (x0, move |p: &Tensor| model(p, &t) - &y)
}

/// The MGH problems from the standard start: matrix-free Levenberg–Marquardt converges on every
/// one, to the dense solver's cost (relative 1e-8, or both ≤ 1e-20 where the minimum is 0; 40 of
/// 41 today) or a lower one (another minimum). The one exception is Biggs EXP6, where its path
/// ends in the local minimum MGH (1981) list, F = 5.65565e-3, not at F = 0.
#[test]
fn mgh_minima_match_the_dense_solver() {
    for p in mgh::problems() {
        let x0 = Tensor::from_slice(&p.x0).view([1, -1]);
        let dense = least_squares(p.residual, &x0, &LeastSquaresOptions::default()).unwrap();
        let out =
            least_squares(p.residual, &x0, &mf()).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert_eq!(out.linear_solver, LinearSolver::MatrixFree);
        assert!(out.status[0].is_success(), "{}: {:?}", p.name, out.status);
        let (f, fd) = (out.cost.double_value(&[0]), dense.cost.double_value(&[0]));
        let ok = if p.name == "biggs_exp6" {
            (2.0 * f - 5.65565e-3).abs() <= 1e-5 * 5.65565e-3
        } else {
            f <= fd * (1.0 + 1e-8) || (f <= 1e-20 && fd <= 1e-20)
        };
        assert!(
            ok,
            "{}: matrix-free cost {f:e} vs dense {fd:e} ({:?}, {} iterations)",
            p.name, out.status, out.iterations[0]
        );
    }
}

/// A batch of two fits: the dense solution per problem, each its own status; a robust loss.
#[test]
fn batch_and_robust_loss_match_the_dense_solver() {
    let (x0, r) = decays();
    for loss in [Loss::Linear, Loss::Cauchy, Loss::SoftL1] {
        let scale = if loss == Loss::Linear { 1.0 } else { 0.1 };
        let base = LeastSquaresOptions::default().loss(loss).loss_scale(scale);
        let dense = least_squares(&r, &x0, &base).unwrap();
        let out = least_squares(&r, &x0, &base.linear_solver(LinearSolver::MatrixFree)).unwrap();
        assert!(out.success(), "{loss:?}: {:?}", out.status);
        assert_eq!(out.status.len(), 2);
        let dx = max_abs(&(&out.x - &dense.x));
        assert!(dx < 1e-8, "{loss:?}: x off by {dx:e}");
        let dc = max_abs(&(&out.cost - &dense.cost));
        assert!(dc < 1e-14, "{loss:?}: cost off by {dc:e}");
        assert!(out.jacobian.is_none());
        // the optimality is the gtol measure (estimated column norms): small at the minimum
        assert!(max_abs(&out.optimality) < 1e-6);
    }
}

/// 300 parameters, 600 residuals per problem, two problems: `r = tanh(A x) + 0.1 x³ − y`.
#[test]
fn a_larger_problem_matches_the_dense_solver() {
    // normal draws from the test's own generator (torch's is shared by the parallel tests)
    let mut rng = StdRng::seed_from_u64(3);
    let mut randn = |shape: [i64; 2]| {
        let v: Vec<f64> = (0..shape[0] * shape[1])
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        Tensor::from_slice(&v).view(shape)
    };
    let (m, n) = (600, 300);
    let a = randn([m, n]) / (n as f64).sqrt();
    let truth = randn([2, n]);
    let noise = randn([2, m]) * 0.01;
    let f = |x: &Tensor| (x.matmul(&a.tr())).tanh() + x.pow_tensor_scalar(3).matmul(&a.tr()) * 0.1;
    let y = f(&truth) + noise;
    let r = |x: &Tensor| f(x) - &y;
    let x0 = Tensor::zeros([2, n], OPT);
    let dense = least_squares(r, &x0, &LeastSquaresOptions::default()).unwrap();
    let out = least_squares(r, &x0, &mf()).unwrap();
    assert!(out.success(), "{:?}", out.status);
    let rel = max_abs(&(&out.cost - &dense.cost)) / max_abs(&dense.cost);
    assert!(rel < 1e-9, "cost off by {rel:e} (relative)");
    let dx = max_abs(&(&out.x - &dense.x));
    assert!(dx < 1e-5, "x off by {dx:e}");
}

/// f32: the same fit to f32's precision.
#[test]
fn float32_fits() {
    let (x0, r) = decays();
    let dense = least_squares(&r, &x0, &LeastSquaresOptions::default()).unwrap();
    let r32 = |p: &Tensor| r(&p.to_kind(Kind::Double)).to_kind(Kind::Float);
    let out = least_squares(r32, &x0.to_kind(Kind::Float), &mf()).unwrap();
    assert!(out.success(), "{:?}", out.status);
    let dx = max_abs(&(out.x.to_kind(Kind::Double) - &dense.x));
    assert!(dx < 1e-4, "x off by {dx:e}");
}

/// `Auto` forms `J` when it fits the budget (and says so), goes matrix-free when it does not,
/// and stays dense whenever an option needs `J`.
#[test]
fn auto_chooses_by_the_size_of_j() {
    let (x0, r) = decays();
    let out = least_squares(&r, &x0, &LeastSquaresOptions::default()).unwrap();
    assert_eq!(out.linear_solver, LinearSolver::Dense);
    // J is 2·20·2·8 = 640 bytes
    let small = LeastSquaresOptions::default().memory_budget(639);
    let out = least_squares(&r, &x0, &small).unwrap();
    assert_eq!(out.linear_solver, LinearSolver::MatrixFree);
    assert!(out.success());
    let out = least_squares(&r, &x0, &LeastSquaresOptions::default().memory_budget(640)).unwrap();
    assert_eq!(out.linear_solver, LinearSolver::Dense);
    // covariance needs J: dense whatever the budget
    let out = least_squares(&r, &x0, &small.covariance(true)).unwrap();
    assert_eq!(out.linear_solver, LinearSolver::Dense);
    assert!(out.covariance.is_some());
}

/// Options the matrix-free solver cannot honour, and matrix-free options with the dense solver,
/// are errors that name them.
#[test]
fn refused_options_are_named() {
    let (x0, r) = decays();
    let lo = Tensor::zeros([2], OPT);
    let hi = Tensor::ones([2], OPT) * 10.0;
    let jac = |_: &Tensor| -> tch_jacobian::Result<Tensor> { Ok(Tensor::zeros([2, 20, 2], OPT)) };
    let cases: Vec<(LeastSquaresOptions, &str)> = vec![
        (mf().bounds(&lo, &hi), "bounds"),
        (mf().jacobian(&jac), "Jacobian closure"),
        (mf().covariance(true), "covariance"),
        (mf().keep_jacobian(true), "keep_jacobian"),
        (mf().geodesic(true), "geodesic"),
        (mf().method(Method::Dogleg), "Dogleg"),
        (mf().method(Method::GaussNewton), "GaussNewton"),
        (mf().memory_budget(1), "memory_budget"),
        (
            LeastSquaresOptions::default()
                .linear_solver(LinearSolver::Dense)
                .cg_tolerance(1e-3),
            "cg_tolerance",
        ),
        (
            LeastSquaresOptions::default()
                .linear_solver(LinearSolver::Dense)
                .probes(4),
            "probes",
        ),
        (mf().cg_tolerance(1.5), "cg_tolerance"),
        (mf().probes(0), "probes"),
        (mf().damping(0.0), "damping"),
    ];
    for (opts, name) in cases {
        match least_squares(&r, &x0, &opts) {
            Err(Error::InvalidArgument(msg)) => assert!(msg.contains(name), "{name}: {msg}"),
            other => panic!(
                "{name}: expected InvalidArgument, got {:?}",
                other.map(|o| o.status)
            ),
        }
    }
}

/// Problems that interact (a mean over the batch) are an error, as with the dense solver.
#[test]
fn interacting_problems_are_an_error() {
    let (x0, r) = decays();
    let mixed = |p: &Tensor| {
        r(p) + p
            .mean_dim(0, true, Kind::Double)
            .sum_dim_intlist(1, true, Kind::Double)
    };
    match least_squares(mixed, &x0, &mf()) {
        Err(Error::Contract(msg)) => assert!(msg.contains("least_squares"), "{msg}"),
        other => panic!("expected Contract, got {:?}", other.map(|o| o.status)),
    }
}

/// `create_graph`: the matrix-free solution's derivative is the dense solution's.
#[test]
fn differentiable_solutions_match_the_dense_solver() {
    let t = Tensor::linspace(0.0, 4.0, 20, OPT);
    let y = ((-&t * 0.7).exp() * 2.0 + (&t * 5.0).sin() * 0.05).set_requires_grad(true);
    let r = |p: &Tensor| p.get(0) * (-p.get(1) * &t).exp() - &y;
    let x0 = Tensor::from_slice(&[1.0f64, 1.0]);
    let grad = |opts: &LeastSquaresOptions| {
        let out = least_squares(r, &x0, &opts.create_graph(true)).unwrap();
        let root = out.x.sum(Kind::Double);
        Tensor::run_backward(&[&root], &[&y], false, false).remove(0)
    };
    let d = grad(&LeastSquaresOptions::default());
    let m = grad(&mf());
    let err = max_abs(&(&m - &d)) / max_abs(&d);
    assert!(err < 1e-7, "dx*/dy off by {err:e} (relative)");
}

/// The solve does not depend on torch's random state (the probes are a fixed hash).
#[test]
fn deterministic() {
    let (x0, r) = decays();
    tch::manual_seed(1);
    let a = least_squares(&r, &x0, &mf()).unwrap();
    tch::manual_seed(2);
    let _ = Tensor::randn([100], OPT);
    let b = least_squares(&r, &x0, &mf()).unwrap();
    assert!(a.x.equal(&b.x));
    assert_eq!(a.iterations, b.iterations);
}

/// A problem takes the same path alone and in a batch, wherever it sits: its probes, damping and
/// linearizations are its own (only the problems that moved are linearized again).
#[test]
fn a_problem_does_not_depend_on_its_batch() {
    let (_, r) = decays();
    // problem 0 from far away: some of its steps are rejected while problem 1's are accepted
    // (22 iterations, 16 linearizations, against problem 1's 7)
    let x0 = Tensor::from_slice(&[0.1, 10.0, 1.0, 1.0]).view([2, 2]);
    let both = least_squares(&r, &x0, &mf()).unwrap();
    assert!(both.success(), "{:?}", both.status);
    // problem 0 alone: the residual of row 0 only
    let t = Tensor::linspace(0.0, 4.0, 20, OPT);
    let y0 = (Tensor::from_slice(&[2.0f64]) * (-&t * 0.7).exp()) + (&t * 5.0).sin() * 0.05;
    let r0 = |p: &Tensor| p.narrow(1, 0, 1) * (-p.narrow(1, 1, 1) * &t).exp() - &y0;
    let alone = least_squares(r0, &x0.narrow(0, 0, 1), &mf()).unwrap();
    assert_eq!(alone.iterations[0], both.iterations[0]);
    assert_eq!(alone.jacobian_evaluations[0], both.jacobian_evaluations[0]);
    assert_eq!(alone.status[0], both.status[0]);
    let dx = max_abs(&(alone.x.get(0) - both.x.get(0)));
    assert!(dx <= 1e-14, "x differs by {dx:e}");
}
