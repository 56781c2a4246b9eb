//! Second derivatives where libtorch's own rules (and torch.func) are wrong; see
//! `tch_jacobian::second_order`.
//!
//! * `opinfo_subset`: the CI subset of the OpInfo sweep (tests/data/second_order, written by
//!   bench/second_order_sweep.py; the full sweep is scripts/second-order-sweep): every route, in
//!   the eager, cold and warm TorchScript modes, against PyTorch's row loop (finite differences
//!   decide where it and torch.func disagree).
//! * eager Rust closures through the normalizations, every strategy against the row loop.
//! * ZeroTensors: results read and written through tch.
mod common;

use std::path::Path;

use common::expect;
use common::sweep::{self, Mode, Outcome, Route};
use common::wrong;
use tch::{Device, Kind, Tensor};
use tch_jacobian::{hessian_of, jacobian_of, jacobian_with, JacobianOptions, Result, Strategy};

/// Every route in every mode on the committed cases, in both builds:
///
/// * no wrong value, no result of a wrong shape and no panic anywhere; `Auto` (graph and
///   closure) and the row loop always right;
/// * every `(case, mode, k, route)`'s outcome (`ok`, or the error's variant: `WrongDerivative`,
///   `Contract`, `Torch`, …), its reroutes (`second_order::take_reroutes`) and its vmap fallbacks
///   equal to the committed tests/expected/second_order-<build>.tsv: a new refusal, error or
///   reroute (Auto's row-loop recovery hiding a batching-rule regression) fails until the file
///   is blessed on purpose (`TCH_JACOBIAN_BLESS=1`).
fn opinfo_subset(device: Device) -> Result<()> {
    let dir = Path::new(&common::root()).join("tests/data/second_order");
    let cases = sweep::read_manifest(&dir);
    assert!(
        cases.len() >= 10,
        "only {} cases in {}",
        cases.len(),
        dir.display()
    );
    let routes = sweep::routes();
    let mut bad = Vec::new();
    let mut table = sweep::table();
    let mut n = 0;
    for case in &cases {
        for row in sweep::run_case(&dir, case, &Mode::ALL, &routes, device) {
            n += 1;
            let must_be_ok = matches!(
                row.route,
                Route::Graph(Strategy::Auto | Strategy::RowLoop) | Route::Closure(Strategy::Auto)
            );
            let fine = match &row.outcome {
                Outcome::Ok | Outcome::NotApplicable(_) => true,
                Outcome::Wrong { .. }
                | Outcome::WrongShape(_)
                | Outcome::WrongKind(_)
                | Outcome::Panic(_) => false,
                Outcome::Error { .. } => !must_be_ok,
            };
            table.push(row.fields());
            if !fine {
                bad.push(row);
            }
        }
    }
    if !bad.is_empty() {
        let first: Vec<String> = bad
            .iter()
            .take(12)
            .map(|r| {
                format!(
                    "  {} ({}) {} k={} {}: {} {}",
                    r.op,
                    r.case,
                    r.mode.name(),
                    r.k,
                    r.route,
                    r.outcome.label(),
                    r.outcome.detail()
                )
            })
            .collect();
        panic!(
            "{} of {n} sweep results are wrong or failed ({} build, {device:?}); first ones:\n{}",
            bad.len(),
            common::build(),
            first.join("\n")
        );
    }
    let path = common::expected_path("second_order", device);
    expect::check(
        &path,
        EXPECTED_COMMENT,
        &table,
        |_| true,
        &format!("opinfo_subset ({} build, {device:?})", common::build()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Ok(())
}

const EXPECTED_COMMENT: &str =
    "The CI subset of the second-order sweep (tests/second_order.rs, opinfo_subset): every\n\
(case, mode, k, route)'s outcome (ok, or err:<the Error variant>), the reroutes the crate\n\
recorded (from->to) and the ops that took libtorch's vmap fallback. Written by\n\
TCH_JACOBIAN_BLESS=1 cargo test --test second_order (add --no-default-features for the\n\
no-engine file); review the diff before committing. detail (an error's first line) is not\n\
compared.";

fn cg(s: Strategy) -> JacobianOptions<'static> {
    JacobianOptions::default().create_graph(true).strategy(s)
}

/// `g = ∂⟨R, ∂y/∂w⟩/∂(a, w, b)` for `y = norm(a·x; w, b)` by strategy `s`.
fn norm_grads(
    norm: &Norm,
    x: &Tensor,
    wb: (&Tensor, &Tensor),
    r: &Tensor,
    wrt_input: bool,
    s: Strategy,
) -> Result<Vec<Tensor>> {
    let a = Tensor::from_slice(&[1.3f64])
        .to_device(x.device())
        .set_requires_grad(true);
    let (w, b) = (
        wb.0.detach().set_requires_grad(true),
        wb.1.detach().set_requires_grad(true),
    );
    let xa = x * &a;
    let j = if wrt_input {
        // A closure of the input (the replicated strategies need one).
        let f = |z: &Tensor| norm(z, &w, &b);
        jacobian_of(f, &xa, &cg(s))?
    } else {
        let y = norm(&xa, &w, &b)?;
        jacobian_with(&y, &[&w], &cg(s))?.remove(0)
    };
    let root = (r * &j).sum(Kind::Double);
    let xs = [&a, &w, &b];
    let gs = Tensor::f_run_backward(&[&root], &xs, true, false)?;
    Ok(gs
        .into_iter()
        .zip(xs)
        .map(|(g, x)| if g.defined() { g } else { x.zeros_like() })
        .collect())
}

/// A normalization `(x, w, b) ↦ y`.
type Norm = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>;

/// The `norm | J with respect to | strategy | error variant` that `norms_eager` expects to
/// refuse, in its order. `WrongDerivative`: the forward-mode strategies through layer, batch and
/// instance norm. `Torch`: the replicated strategies call the closure on stacked copies
/// `[k, *x]`, which batch, instance and group norm read as another channel count (libtorch
/// rejects the shape); layer_norm over the last dimension is row-wise and must succeed.
const NORM_REFUSALS: &[&str] = &[
    "layer_norm | input | forward | WrongDerivative",
    "layer_norm | input | vectorized-forward | WrongDerivative",
    "layer_norm | input | vectorized-forward:2 | WrongDerivative",
    "layer_norm | weight | forward | WrongDerivative",
    "batch_norm train | input | forward | WrongDerivative",
    "batch_norm train | input | vectorized | Torch",
    "batch_norm train | input | vectorized:3 | Torch",
    "batch_norm train | input | vectorized-forward | WrongDerivative",
    "batch_norm train | input | vectorized-forward:2 | WrongDerivative",
    "batch_norm train | weight | forward | WrongDerivative",
    "batch_norm eval | input | forward | WrongDerivative",
    "batch_norm eval | input | vectorized | Torch",
    "batch_norm eval | input | vectorized:3 | Torch",
    "batch_norm eval | input | vectorized-forward | WrongDerivative",
    "batch_norm eval | input | vectorized-forward:2 | WrongDerivative",
    "batch_norm eval | weight | forward | WrongDerivative",
    "instance_norm | input | forward | WrongDerivative",
    "instance_norm | input | vectorized | Torch",
    "instance_norm | input | vectorized:3 | Torch",
    "instance_norm | input | vectorized-forward | WrongDerivative",
    "instance_norm | input | vectorized-forward:2 | WrongDerivative",
    "instance_norm | weight | forward | WrongDerivative",
    "group_norm | input | vectorized | Torch",
    "group_norm | input | vectorized:3 | Torch",
    "group_norm | input | vectorized-forward | Torch",
    "group_norm | input | vectorized-forward:2 | Torch",
];

/// Eager closures through layer_norm, batch_norm (train and eval), instance_norm and
/// group_norm: every strategy gives the row loop's second-order value (within 1e-10 in f64), or
/// refuses as [`NORM_REFUSALS`] lists, in both builds (the graph scan and the `WrongDerivative`
/// guard are in every build).
fn norms_eager(device: Device) -> Result<()> {
    let o = (Kind::Double, device);
    tch::manual_seed(7);
    let rm = Tensor::randn([3], o);
    let rv = Tensor::rand([3], o) + 0.5;
    let cases: Vec<(&str, Vec<i64>, Box<Norm>)> = vec![
        (
            "layer_norm",
            vec![2, 3, 4],
            Box::new(|x: &Tensor, w: &Tensor, b: &Tensor| {
                Ok(x.f_layer_norm(
                    [4],
                    Some(&w.narrow(0, 0, 4)),
                    Some(&b.narrow(0, 0, 4)),
                    1e-5,
                    false,
                )?)
            }),
        ),
        (
            "batch_norm train",
            vec![4, 3, 2],
            Box::new(|x: &Tensor, w: &Tensor, b: &Tensor| {
                Ok(x.f_batch_norm(
                    Some(&w.narrow(0, 0, 3)),
                    Some(&b.narrow(0, 0, 3)),
                    None::<&Tensor>,
                    None::<&Tensor>,
                    true,
                    0.1,
                    1e-5,
                    true,
                )?)
            }),
        ),
        (
            "batch_norm eval",
            vec![4, 3, 2],
            Box::new(move |x: &Tensor, w: &Tensor, b: &Tensor| {
                Ok(x.f_batch_norm(
                    Some(&w.narrow(0, 0, 3)),
                    Some(&b.narrow(0, 0, 3)),
                    Some(&rm),
                    Some(&rv),
                    false,
                    0.1,
                    1e-5,
                    true,
                )?)
            }),
        ),
        (
            "instance_norm",
            vec![2, 3, 4],
            Box::new(|x: &Tensor, w: &Tensor, b: &Tensor| {
                Ok(x.f_instance_norm(
                    Some(&w.narrow(0, 0, 3)),
                    Some(&b.narrow(0, 0, 3)),
                    None::<&Tensor>,
                    None::<&Tensor>,
                    true,
                    0.1,
                    1e-5,
                    true,
                )?)
            }),
        ),
        (
            "group_norm",
            vec![2, 4, 3],
            Box::new(|x: &Tensor, w: &Tensor, b: &Tensor| {
                Ok(x.f_group_norm(
                    2,
                    Some(&w.narrow(0, 0, 4)),
                    Some(&b.narrow(0, 0, 4)),
                    1e-5,
                    false,
                )?)
            }),
        ),
    ];
    let mut refusals = Vec::new();
    for (name, shape, norm) in &cases {
        let x = Tensor::randn(shape.as_slice(), o);
        let (w, b) = (Tensor::randn([4], o), Tensor::randn([4], o));
        for wrt_input in [true, false] {
            let y = norm(&x, &w, &b)?;
            let jshape: Vec<i64> = if wrt_input {
                y.size().iter().chain(shape.iter()).copied().collect()
            } else {
                y.size().into_iter().chain([4]).collect()
            };
            let r = Tensor::randn(jshape.as_slice(), o);
            let truth = norm_grads(
                norm.as_ref(),
                &x,
                (&w, &b),
                &r,
                wrt_input,
                Strategy::RowLoop,
            )?;
            for s in common::strategies() {
                if !wrt_input && common::needs_closure(s) {
                    continue;
                }
                let wrt = if wrt_input { "input" } else { "weight" };
                match norm_grads(norm.as_ref(), &x, (&w, &b), &r, wrt_input, s) {
                    Ok(g) => {
                        for (got, want) in g.iter().zip(&truth) {
                            assert_eq!(got.kind(), Kind::Double, "{name} {wrt} {s}");
                            let d = (got - want).abs().max().double_value(&[]);
                            let scale = want.abs().max().double_value(&[]).max(1.0);
                            assert!(
                                d <= 1e-10 * scale,
                                "{name} (J w.r.t. the {wrt}) {s}: max |Δ| {d:e} from the row loop",
                            );
                        }
                    }
                    Err(e) => refusals.push(format!(
                        "{name} | {wrt} | {s} | {}",
                        common::sweep::variant(&e)
                    )),
                }
            }
        }
    }
    // Exactly these (norm, J w.r.t., strategy) pairs refuse, in both builds: the forward-mode
    // strategies through layer, batch and instance norm (`WrongDerivative`: libtorch's double
    // backward is wrong one order higher), and the replicated strategies where the norm does not
    // treat stacked copies row-wise (the crate's row-wise check: `Contract`; or the norm itself
    // rejects the stacked shape: `Torch`). Everything else gives the row loop's value.
    let expected: Vec<String> = NORM_REFUSALS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        refusals,
        expected,
        "the (norm, J w.r.t., strategy) pairs that refuse ({} build, {device:?}); now:\n{}",
        common::build(),
        refusals.join("\n")
    );
    Ok(())
}

/// A tall Jacobian through layer_norm under create_graph: `Auto` would pick `Forward` (tall),
/// which is wrong there, and takes one batched pass instead — not the row loop.
fn tall_through_norm_stays_batched(device: Device) -> Result<()> {
    common::needs_engine();
    let o = (Kind::Double, device);
    let x = Tensor::randn([8, 32], o);
    let gamma = Tensor::ones([32], o).set_requires_grad(true);
    let y = x.f_layer_norm([32], Some(&gamma), None::<&Tensor>, 1e-5, false)?; // m = 256, n = 32
    let seen = std::cell::Cell::new(None);
    let report = |p: tch_jacobian::Progress| seen.set(Some(p.strategy));
    let opts = cg(Strategy::Auto).progress(&report);
    jacobian_with(&y, &[&gamma], &opts)?;
    assert!(
        matches!(seen.get(), Some(Strategy::Batched { .. })),
        "{:?}",
        seen.get()
    );
    let first_order = JacobianOptions::default().progress(&report);
    jacobian_with(&y, &[&gamma], &first_order)?;
    if device == Device::Cpu {
        assert_eq!(seen.get(), Some(Strategy::Forward)); // right to first order
    }
    Ok(())
}

/// Results that libtorch makes ZeroTensors (the derivative of `sgn`, the second derivative of
/// `abs`) are ordinary tensors: readable, writable and printable through tch.
fn zero_tensors_are_materialized(device: Device) -> Result<()> {
    let x = Tensor::from_slice(&[1.0f64, -2.0, 3.0]).to_device(device);
    let j = jacobian_of(|x: &Tensor| x.sgn(), &x, &JacobianOptions::default())?;
    let h = hessian_of(
        |x: &Tensor| x.abs().sum(Kind::Double),
        &x,
        &JacobianOptions::default(),
    )?;
    let xg = x.detach().set_requires_grad(true);
    let j_abs = jacobian_with(&xg.abs(), &[&xg], &cg(Strategy::Auto))?.remove(0);
    for t in [&j, &h, &j_abs] {
        assert!(!t.internal_is_zerotensor());
        let v = Vec::<f64>::try_from(&t.to_device(Device::Cpu).flatten(0, -1)).unwrap();
        assert_eq!(v.len(), 9);
        let path = std::env::temp_dir().join(format!("tchj-zero-{}.npy", std::process::id()));
        t.to_device(Device::Cpu).write_npy(&path)?;
        assert_eq!(Tensor::read_npy(&path)?.size(), [3, 3]);
        let _ = std::fs::remove_file(path);
    }
    assert_eq!(
        Vec::<f64>::try_from(&j.flatten(0, -1).to_device(Device::Cpu)).unwrap(),
        [0.0; 9]
    );
    assert_eq!(
        Vec::<f64>::try_from(&h.flatten(0, -1).to_device(Device::Cpu)).unwrap(),
        [0.0; 9]
    );
    Ok(())
}

/// The cases where PyTorch's fast tools are wrong (docs/second-order.md): the crate's defaults
/// give the row loop's value (which finite differences confirm); PyTorch's differs by orders of
/// magnitude.
fn pytorch_is_wrong_here(device: Device) -> Result<()> {
    let root = common::root();
    for (case, ..) in wrong::CASES {
        let v = wrong::pytorch_values(&root, case);
        let (fast, rows, fd) = (v[0], v[1], v[2]);
        assert!(
            (rows - fd).abs() <= 1e-5 * fd.abs(),
            "{case}: row loop {rows} vs FD {fd}"
        );
        assert!(
            (fast - rows).abs() > 1e3 * rows.abs(),
            "{case}: PyTorch's {fast} is right now?"
        );
        let ours = wrong::ours(&root, case, device)?;
        assert!(
            (ours - rows).abs() <= 1e-9 * rows.abs(),
            "{case}: ours {ours}, row loop {rows}"
        );
    }
    let _ = tch_jacobian::second_order::take_reroutes();
    Ok(())
}

device_tests!(
    opinfo_subset,
    norms_eager,
    #[cfg_attr(not(feature = "native"), ignore = "needs the native engine")]
    tall_through_norm_stays_batched,
    zero_tensors_are_materialized,
    pytorch_is_wrong_here
);
