//! Third derivatives: the CI subset of the third-order sweep (tests/data/third_order, written by
//! bench/third_order_sweep.py through scripts/gen-fixtures; the full sweep is
//! scripts/third-order-sweep).
//!
//! Each case has scalars `Φ` built from second derivatives — `Σ_j ⟨R2_j, ∂⟨R1, J_k⟩/∂t_j⟩`,
//! `⟨Q, H⟩`, `Σ_b w_b Δu_b` — and the truth `∂Φ/∂t_m` for every input: PyTorch's autograd value
//! where it agrees with central differences of `Φ` by the row loop, else torch.func's, else the
//! differences themselves. Every route of the crate computes its Jacobian, Hessian or Laplacian
//! with `create_graph`, then `Φ`, then `∂Φ/∂t_m` by backward passes, and must give the truth.
//!
//! * `norms`: layer_norm, batch_norm (training), instance_norm, group_norm and rms_norm, with
//!   respect to the input and the weight, as Rust closures and traced modules. libtorch 2.11's
//!   own third derivative is wrong through the first three (its double-backward formula treats
//!   the saved mean and 1/σ as constants: pytorch#175754, #186256).
//! * `ordinary`: a few OpInfo ops where libtorch is right, in every mode of the module;
//!   `logcumsumexp_0d` the one OpInfo case where the sweep found a route of the crate wrong.
mod common;

#[path = "common/third_sweep.rs"]
mod third_sweep;

use std::path::{Path, PathBuf};

use common::expect;
use common::sweep::{self, Outcome};
use tch::Device;
use tch_jacobian::{Result, Strategy};
use third_sweep::{Mode, Route, Row};

fn dir() -> PathBuf {
    Path::new(&common::root()).join("tests/data/third_order")
}

/// Whether a result is acceptable in itself: the truth, or — for strategies other than `Auto`
/// and the row loop — an error (which one is the expected-outcome file's business). Never a
/// wrong value, a wrong shape or a panic, in either build.
fn fine(row: &Row) -> bool {
    let must_be_ok = matches!(row.route.strategy(), Strategy::Auto | Strategy::RowLoop);
    match &row.outcome {
        Outcome::Ok | Outcome::NotApplicable(_) => true,
        Outcome::Wrong { .. }
        | Outcome::WrongShape(_)
        | Outcome::WrongKind(_)
        | Outcome::Panic(_) => false,
        Outcome::Error { .. } => !must_be_ok,
    }
}

const EXPECTED_COMMENT: &str =
    "The CI subset of the third-order sweep (tests/third_order.rs): every (case, mode,\n\
quantity, route)'s outcome (ok, or err:<the Error variant>), the reroutes the crate recorded\n\
(from->to) and the ops that took libtorch's vmap fallback. Written by\n\
TCH_JACOBIAN_BLESS=1 cargo test --test third_order (add --no-default-features for the no-engine\n\
file); review the diff before committing. detail (an error's first line) is not compared.";

/// Runs the cases whose op satisfies `pick` in `modes`; panics with the first bad rows, then
/// compares every row with tests/expected/third_order-<build>.tsv (the rows of these cases and
/// modes; `TCH_JACOBIAN_BLESS=1` rewrites them).
fn check(device: Device, modes: &[Mode], pick: impl Fn(&str) -> bool) -> Result<()> {
    let dir = dir();
    let cases: Vec<_> = third_sweep::read_manifest(&dir)
        .into_iter()
        .filter(|c| pick(&c.op))
        .collect();
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    let mut bad = Vec::new();
    let mut table = third_sweep::table();
    let mut n = 0;
    for case in &cases {
        for row in third_sweep::run_case(&dir, case, modes, device) {
            n += 1;
            table.push(row.fields());
            if !fine(&row) {
                bad.push(row);
            }
        }
    }
    if !bad.is_empty() {
        let first: Vec<String> = bad
            .iter()
            .take(16)
            .map(|r| {
                format!(
                    "  {} {} {}{} {} (libtorch: {}, truth from {}): {} {}",
                    r.op,
                    r.mode.name(),
                    r.set.name(),
                    r.k,
                    r.route,
                    r.autograd,
                    r.truth,
                    r.outcome.label(),
                    r.outcome.detail()
                )
            })
            .collect();
        panic!(
            "{} of {n} third-order results are wrong or failed ({} build, {device:?}); first ones:\n{}",
            bad.len(),
            common::build(),
            first.join("\n")
        );
    }
    let ids: std::collections::HashSet<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    let names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
    expect::check(
        &common::expected_path("third_order", device),
        EXPECTED_COMMENT,
        &table,
        |k| ids.contains(k[0].as_str()) && names.contains(&k[1].as_str()),
        &format!("third_order ({} build, {device:?})", common::build()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Ok(())
}

fn is_norm(op: &str) -> bool {
    op.starts_with("norm.")
}

/// The norms through which libtorch's own third derivative is wrong, as Rust closures.
fn norms_wrong_in_libtorch_closures(device: Device) -> Result<()> {
    check(device, &[Mode::Rust], |op| {
        matches!(
            op,
            "norm.layer_norm" | "norm.batch_norm" | "norm.instance_norm"
        )
    })
}

/// The same as traced modules, eager (the executor's optimization off) and warm.
fn norms_wrong_in_libtorch_modules(device: Device) -> Result<()> {
    check(device, &[Mode::Eager, Mode::Warm], |op| {
        matches!(
            op,
            "norm.layer_norm" | "norm.batch_norm" | "norm.instance_norm"
        )
    })
}

/// group_norm and rms_norm, where libtorch is right: closures and modules.
fn norms_right_in_libtorch(device: Device) -> Result<()> {
    check(device, &[Mode::Rust, Mode::Eager], |op| {
        matches!(op, "norm.group_norm" | "norm.rms_norm")
    })
}

/// A few OpInfo ops in every mode of the module.
fn ordinary(device: Device) -> Result<()> {
    check(device, &[Mode::Eager, Mode::Cold, Mode::Warm], |op| {
        !is_norm(op) && op != "logcumsumexp"
    })
}

/// `logcumsumexp` of a 0-d input (the identity; third derivative 0). libtorch's third
/// derivative of `logcumsumexp` is NaN on any 1-d input (`[1]`, `[3]`, f64), and the replicated
/// strategies run the closure on a stacked `[1]`-shaped copy: `jacobian_of` with `Vectorized`
/// gave NaN in the sweep.
fn logcumsumexp_0d(device: Device) -> Result<()> {
    check(device, &[Mode::Eager, Mode::Cold, Mode::Warm], |op| {
        op == "logcumsumexp"
    })
}

/// The fixtures say what the sweep says about libtorch: its own third derivative is wrong
/// through layer_norm, batch_norm and instance_norm (the `jac` quantities with respect to the
/// input and the weight) and right through group_norm and rms_norm.
#[test]
fn libtorch_is_wrong_through_the_norms() {
    let cases = third_sweep::read_manifest(&dir());
    for case in cases.iter().filter(|c| is_norm(&c.op)) {
        let wrong = matches!(
            case.op.as_str(),
            "norm.layer_norm" | "norm.batch_norm" | "norm.instance_norm"
        );
        for q in case
            .quantities
            .iter()
            .filter(|q| q.set == third_sweep::Set::Jac && q.k < 2)
        {
            assert_eq!(
                q.autograd == "wrong",
                wrong,
                "{} {}{}: libtorch {}",
                case.op,
                q.set.name(),
                q.k,
                q.autograd
            );
        }
    }
    // Every route runs in the CI subset.
    let routes: std::collections::HashSet<String> = cases
        .iter()
        .flat_map(|c| c.quantities.iter())
        .flat_map(|q| third_sweep::routes(q.set))
        .map(|r: Route| r.to_string().split(' ').next().unwrap_or("").to_string())
        .collect();
    for r in [
        "jacobian_with",
        "jacobian_of",
        "per_sample_jacobian_of",
        "hessian_of",
        "per_sample_hessian_of",
        "laplacian_of",
    ] {
        assert!(routes.contains(r), "no {r} route in the CI subset");
    }
    let _ = sweep::Mode::ALL; // the second-order sweep's helpers are shared
}

device_tests!(
    norms_wrong_in_libtorch_closures,
    norms_wrong_in_libtorch_modules,
    norms_right_in_libtorch,
    ordinary,
    logcumsumexp_0d
);
