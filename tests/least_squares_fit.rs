//! `ModelFit` (src/least_squares/fit.rs): Levenberg–Marquardt and Gauss–Newton over a model's
//! parameters. A linear model reaches `linalg_lstsq`'s solution in one (GN) or two (LM) steps,
//! dense and matrix-free; dense and matrix-free steps agree on a small MLP and reach the same
//! minimum; a rejected step leaves the parameters bit for bit; the errors name what is wrong.
//! f64 unless said; nothing engine-specific.

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tch_jacobian::least_squares::{FitOptions, LinearSolver, Method, ModelFit};
use tch_jacobian::Error;

const OPT: (Kind, Device) = (Kind::Double, Device::Cpu);

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// `y = X w + b + noise`, 40 rows, 3 features; the least-squares `(w, b)` from `linalg_lstsq`.
fn linear_data() -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(7);
    let x = Tensor::randn([40, 3], OPT);
    let y = x.mv(&Tensor::from_slice(&[1.5f64, -2.0, 0.5])) + 0.3 + Tensor::randn([40], OPT) * 0.1;
    let design = Tensor::cat(&[x.shallow_clone(), Tensor::ones([40, 1], OPT)], 1);
    let sol = design
        .linalg_lstsq(&y.unsqueeze(1), None::<f64>, "gelsd")
        .0
        .squeeze_dim(1);
    (x, y, sol)
}

/// Fits `nn::linear(3, 1)` (f64) to [`linear_data`] for `steps` steps: `(|θ − lstsq|∞, losses)`.
fn linear_fit(opts: &FitOptions, steps: usize) -> (f64, Vec<f64>) {
    linear_fit_seeded(opts, steps, 0)
}

/// [`linear_fit`] with torch's generator seeded with `seed` before the fit starts.
fn linear_fit_seeded(opts: &FitOptions, steps: usize, seed: i64) -> (f64, Vec<f64>) {
    let (x, y, sol) = linear_data();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let fc = nn::linear(vs.root() / "fc", 3, 1, Default::default());
    vs.double();
    // A fixed start: torch's generator is shared by the tests running in parallel threads.
    tch::no_grad(|| {
        fc.ws
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[0.2f64, -0.1, 0.3]).view([1, 3]));
        fc.bs
            .as_ref()
            .unwrap()
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[-0.05f64]));
    });
    tch::manual_seed(seed);
    let mut fit = ModelFit::new(&vs, opts).unwrap();
    let mut losses = vec![];
    for _ in 0..steps {
        let step = fit.step(|| fc.forward(&x).view([-1]) - &y).unwrap();
        assert!(
            step.accepted || !losses.is_empty(),
            "the first step is accepted"
        );
        losses.push(step.loss);
    }
    let theta = Tensor::cat(
        &[fc.ws.view([-1]), fc.bs.as_ref().unwrap().shallow_clone()],
        0,
    );
    (max_abs(&theta, &sol), losses)
}

#[test]
fn gauss_newton_reaches_lstsq_in_one_step_dense_and_matrix_free() {
    for solver in [LinearSolver::Dense, LinearSolver::MatrixFree] {
        let mut opts = FitOptions::default()
            .method(Method::GaussNewton)
            .linear_solver(solver);
        if solver == LinearSolver::MatrixFree {
            opts = opts.cg_tolerance(1e-14).cg_max_iterations(50);
        }
        let (err, _) = linear_fit(&opts, 1);
        assert!(err < 1e-10, "{solver}: |θ − lstsq| = {err:e}");
    }
}

#[test]
fn levenberg_marquardt_reaches_lstsq_in_two_steps() {
    // twice: the same result whatever torch's generator holds (the probes are a fixed hash)
    let again = |opts: &FitOptions| {
        let a = linear_fit_seeded(opts, 2, 11);
        let b = linear_fit_seeded(opts, 2, 12);
        assert_eq!(a.1, b.1, "the losses depend on torch's random state");
    };
    again(&FitOptions::default().linear_solver(LinearSolver::MatrixFree));
    for solver in [LinearSolver::Dense, LinearSolver::MatrixFree] {
        let mut opts = FitOptions::default().damping(1e-9).linear_solver(solver);
        if solver == LinearSolver::MatrixFree {
            opts = opts.cg_tolerance(1e-14).cg_max_iterations(50);
        }
        let (err, losses) = linear_fit(&opts, 2);
        assert!(
            err < 1e-10,
            "{solver}: |θ − lstsq| = {err:e}, losses {losses:?}"
        );
    }
}

/// A 1 → 8 → 1 tanh MLP (25 parameters) in f64 on 60 points of sin(2x), from a fixed init.
fn mlp(seed: i64) -> (nn::VarStore, nn::Sequential) {
    mlp_h(seed, 8)
}

/// A 1 → h → 1 tanh MLP in f64.
fn mlp_h(seed: i64, h: i64) -> (nn::VarStore, nn::Sequential) {
    tch::manual_seed(seed);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let net = nn::seq()
        .add(nn::linear(&root / "l1", 1, h, Default::default()))
        .add_fn(|t| t.tanh())
        .add(nn::linear(&root / "l2", h, 1, Default::default()));
    vs.double();
    (vs, net)
}

fn mlp_data() -> (Tensor, Tensor) {
    let x = Tensor::linspace(-2.0, 2.0, 60, OPT).view([60, 1]);
    let y = (&x * 2.0).sin().view([60]);
    (x, y)
}

fn flat(vs: &nn::VarStore) -> Tensor {
    let ps = tch_jacobian::trainable_parameters(vs);
    Tensor::cat(
        &ps.iter()
            .map(|(_, t)| t.detach().view([-1]))
            .collect::<Vec<_>>(),
        0,
    )
}

#[test]
fn dense_and_matrix_free_agree_on_an_mlp() {
    let (x, y) = mlp_data();
    // One Gauss–Newton step (D only preconditions CG): the same step both ways, on a 1 → 3 → 1
    // MLP (10 parameters, JᵀJ well enough conditioned for the step to be unique).
    let mut after = vec![];
    for solver in [LinearSolver::Dense, LinearSolver::MatrixFree] {
        let (vs, net) = mlp_h(3, 3);
        let mut opts = FitOptions::default()
            .method(Method::GaussNewton)
            .linear_solver(solver);
        if solver == LinearSolver::MatrixFree {
            opts = opts.cg_tolerance(1e-13).cg_max_iterations(500);
        }
        let mut fit = ModelFit::new(&vs, &opts).unwrap();
        let step = fit.step(|| net.forward(&x).view([-1]) - &y).unwrap();
        assert_eq!(step.linear_solver, solver);
        after.push(flat(&vs));
    }
    let d = max_abs(&after[0], &after[1]);
    println!("GN step: dense vs matrix-free differ by {d:e}");
    assert!(d < 1e-6, "GN step dense vs matrix-free differ by {d:e}");

    // Levenberg–Marquardt to the minimum both ways (its damping D differs: exact diag(JᵀJ) vs
    // Hutchinson's estimate), on a teacher's outputs from the teacher's weights + 0.2 noise:
    // the same minimum (the teacher, loss 0).
    let (tvs, teacher) = mlp_h(11, 3);
    let y = teacher.forward(&x).view([-1]).detach();
    let theta = flat(&tvs);
    tch::manual_seed(12);
    let start = &theta + Tensor::randn(theta.size(), OPT) * 0.2;
    let mut finals = vec![];
    for solver in [LinearSolver::Dense, LinearSolver::MatrixFree] {
        let (vs, net) = mlp_h(3, 3);
        tch::no_grad(|| {
            let mut off = 0;
            for (_, p) in tch_jacobian::trainable_parameters(&vs) {
                let k = p.numel() as i64;
                p.shallow_clone()
                    .copy_(&start.narrow(0, off, k).view_as(&p));
                off += k;
            }
        });
        let mut opts = FitOptions::default().linear_solver(solver);
        if solver == LinearSolver::MatrixFree {
            opts = opts.cg_tolerance(1e-10).cg_max_iterations(200);
        }
        let mut fit = ModelFit::new(&vs, &opts).unwrap();
        let (mut loss, mut gn) = (f64::INFINITY, f64::INFINITY);
        let mut steps = 0;
        while steps < 400 && loss > 1e-24 {
            let s = fit.step(|| net.forward(&x).view([-1]) - &y).unwrap();
            assert_eq!(s.linear_solver, solver);
            loss = s.loss;
            gn = s.gradient_norm;
            steps += 1;
        }
        println!("{solver}: {steps} steps");
        println!("{solver}: loss {loss:e}, gradient norm {gn:e}");
        finals.push((loss, flat(&vs)));
    }
    let (l0, l1) = (finals[0].0, finals[1].0);
    let dp = max_abs(&finals[0].1, &finals[1].1);
    let dt = max_abs(&finals[0].1, &theta);
    println!("minimum: dense {l0:e}, matrix-free {l1:e}, parameters differ by {dp:e}, from the teacher's by {dt:e}");
    assert!(
        l0 < 1e-20 && l1 < 1e-20,
        "dense {l0:e} vs matrix-free {l1:e}"
    );
    assert!(
        dp < 1e-8 && dt < 1e-8,
        "parameters differ by {dp:e}, from the teacher's by {dt:e}"
    );
}

#[test]
fn a_rejected_step_restores_the_parameters_exactly() {
    for solver in [LinearSolver::Dense, LinearSolver::MatrixFree] {
        for method in [Method::LevenbergMarquardt, Method::GaussNewton] {
            let (vs, net) = mlp(5);
            let (x, y) = mlp_data();
            let before = flat(&vs);
            let opts = FitOptions::default()
                .method(method)
                .linear_solver(solver)
                .max_trials(3);
            let mut fit = ModelFit::new(&vs, &opts).unwrap();
            let mu0 = fit.damping();
            // Every trial point is made worse than the start: all trials are rejected.
            let mut calls = 0;
            let step = fit
                .step(|| {
                    calls += 1;
                    let r = net.forward(&x).view([-1]) - &y;
                    if calls > 1 {
                        r + 1e3
                    } else {
                        r
                    }
                })
                .unwrap();
            assert!(!step.accepted, "{solver} {method}");
            assert_eq!(step.trials, 3);
            assert_eq!(calls, 4);
            assert_eq!(step.loss, step.initial_loss);
            assert!(
                flat(&vs).equal(&before),
                "{solver} {method}: parameters moved"
            );
            if method == Method::LevenbergMarquardt {
                assert_eq!(fit.damping(), mu0 * 2.0 * 4.0 * 8.0); // μν, ν doubling
            }
        }
    }
}

#[test]
fn auto_chooses_by_the_memory_budget() {
    let (x, y) = mlp_data();
    let (vs, net) = mlp(3);
    // m n 8 = 60 · 25 · 8 = 12000 bytes.
    for (budget, want) in [
        (12_000, LinearSolver::Dense),
        (11_999, LinearSolver::MatrixFree),
    ] {
        let opts = FitOptions::default().memory_budget(budget);
        let mut fit = ModelFit::new(&vs, &opts).unwrap();
        assert_eq!(fit.resolve_linear_solver(60), want);
        let s = fit.step(|| net.forward(&x).view([-1]) - &y).unwrap();
        assert_eq!(s.linear_solver, want);
        assert_eq!(s.residuals, 60);
        assert!(s.accepted && s.loss < s.initial_loss);
        assert_eq!(s.cg_iterations > 0, want == LinearSolver::MatrixFree);
    }
}

fn invalid(e: Error, words: &[&str]) {
    match &e {
        Error::InvalidArgument(msg) | Error::Shape(msg) | Error::Kind(msg) => {
            for w in words {
                assert!(msg.contains(w), "{msg:?} should name {w:?}");
            }
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn errors_name_what_is_wrong() {
    let empty = nn::VarStore::new(Device::Cpu);
    invalid(
        ModelFit::new(&empty, &FitOptions::default()).unwrap_err(),
        &["no trainable parameters"],
    );
    invalid(
        ModelFit::from_tensors(&[], &FitOptions::default()).unwrap_err(),
        &["no trainable parameters"],
    );
    let not_grad = Tensor::zeros([2], OPT);
    invalid(
        ModelFit::from_tensors(&[not_grad], &FitOptions::default()).unwrap_err(),
        &["parameter 0", "requires grad"],
    );

    // Options the chosen path would not read.
    let refused = [
        (
            FitOptions::default()
                .method(Method::GaussNewton)
                .damping(1.0),
            "damping",
        ),
        (
            FitOptions::default()
                .linear_solver(LinearSolver::Dense)
                .cg_tolerance(1e-6),
            "cg_tolerance",
        ),
        (
            FitOptions::default()
                .linear_solver(LinearSolver::Dense)
                .cg_max_iterations(5),
            "cg_max_iterations",
        ),
        (
            FitOptions::default()
                .linear_solver(LinearSolver::Dense)
                .probes(2),
            "probes",
        ),
        (
            FitOptions::default()
                .linear_solver(LinearSolver::MatrixFree)
                .strategy(tch_jacobian::Strategy::RowLoop),
            "strategy",
        ),
        (
            FitOptions::default()
                .linear_solver(LinearSolver::MatrixFree)
                .memory_budget(1),
            "memory_budget",
        ),
        (FitOptions::default().method(Method::Dogleg), "dogleg"),
        (FitOptions::default().damping(0.0), "damping"),
        (FitOptions::default().max_trials(0), "max_trials"),
        (FitOptions::default().cg_tolerance(1.0), "cg_tolerance"),
    ];
    let (vs, net) = mlp(1);
    for (opts, name) in refused {
        invalid(ModelFit::new(&vs, &opts).unwrap_err(), &[name]);
    }

    let (x, y) = mlp_data();
    let mut fit = ModelFit::new(&vs, &FitOptions::default()).unwrap();
    // Not 1-d.
    invalid(
        fit.step(|| net.forward(&x) - y.unsqueeze(1)).unwrap_err(),
        &["1-d", "[60, 1]"],
    );
    // Not finite at the current parameters.
    invalid(
        fit.step(|| (net.forward(&x).view([-1]) - &y).log())
            .unwrap_err(),
        &["NaN or infinite", "entry"],
    );
    // Another dtype.
    invalid(
        fit.step(|| (net.forward(&x).view([-1]) - &y).to_kind(Kind::Float))
            .unwrap_err(),
        &["Float", "Double"],
    );
    // Not depending on the parameters.
    invalid(
        fit.step(|| y.shallow_clone()).unwrap_err(),
        &["does not depend on the parameters"],
    );
    // A closure's panic is an error, not a crash.
    let e = fit.step(|| -> Tensor { panic!("boom") }).unwrap_err();
    assert!(
        matches!(e, Error::Contract(ref m) if m.contains("boom")),
        "{e:?}"
    );
}
