//! Every collapsed Taylor rule against PyTorch's Hessian trace in f64, over PyTorch's OpInfo
//! database (issue 24 item 3): the unary and binary elementwise ops with forward-mode AD and
//! gradgrad support, a few other elementwise OpInfos, and hand-written reductions and shape ops,
//! each a TorchScript method `u: [3, 4] → [3]` of tests/data/taylor_opinfo/cases.pt
//! (tests/gen-taylor-opinfo.py writes it, the inputs and the references).
//!
//! `Strategy::Taylor` must give the reference (|a − b| ≤ 1e-9 + 1e-7·|b|) or an
//! `Error::NoTaylorRule`; never another value, never another error, and the ops without a rule
//! (with their case counts) must be exactly those of tests/expected/taylor_no_rule.tsv (the
//! build without the engine, which has no generic rule: taylor_no_rule-no-engine.tsv).
//! `Strategy::Auto` (nested reverse mode where Taylor has no rule) must give the reference
//! for every case.
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use tch::{CModule, Kind, Tensor};
use tch_jacobian::{laplacian, Error, LaplacianOptions, Strategy};

mod common;

/// Known failures, by case op and a needle of the error (Taylor and Auto alike): strict, so a
/// case listed here that passes fails the test until its entry is removed.
///
/// Empty: `index`, once listed (the TorchScript interpreter passes `aten::index`'s indices as a
/// generic list), is read as either form by the rule since; `index_from_tch_matches_nested`
/// covers the call from tch.
const KNOWN_ERRORS: &[(&str, &str)] = &[];

const RTOL: f64 = 1e-7;
const ATOL: f64 = 1e-9;

/// The values of a float64 tensor (every case and its reference are float64: a result of another
/// kind is a failure, not a rounding).
fn values(t: &Tensor) -> Vec<f64> {
    assert_eq!(t.kind(), Kind::Double, "shape {:?}", t.size());
    Vec::<f64>::try_from(t.flatten(0, -1)).unwrap()
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= ATOL + RTOL * y.abs())
}

fn known(case: &serde_json::Value, e: &Error) -> bool {
    let msg = e.to_string();
    KNOWN_ERRORS
        .iter()
        .any(|(op, needle)| field(case, "op") == *op && msg.contains(needle))
}

fn field<'a>(case: &'a serde_json::Value, key: &str) -> &'a str {
    case[key].as_str().unwrap_or("")
}

/// `op[.variant] form(args)`: what a report line names.
fn describe(case: &serde_json::Value) -> String {
    let variant = field(case, "variant");
    format!(
        "{}{} {}({})",
        field(case, "op"),
        if variant.is_empty() {
            String::new()
        } else {
            format!(".{variant}")
        },
        field(case, "form"),
        field(case, "args"),
    )
}

#[test]
fn taylor_rules_match_the_hessian_trace() {
    let dir = format!("{}/tests/data/taylor_opinfo", common::root());
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/index.json")).unwrap_or_else(|e| {
            panic!("cannot read {dir}/index.json ({e}); run scripts/gen-fixtures")
        }),
    )
    .unwrap();
    let module = CModule::load(format!("{dir}/cases.pt")).unwrap();
    let arrays: HashMap<String, Tensor> = Tensor::read_npz(format!("{dir}/arrays.npz"))
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name.trim_end_matches(".npy").to_string(), t))
        .collect();
    let cases = index["cases"].as_array().unwrap();
    assert!(cases.len() > 100, "{} cases", cases.len());

    let start = Instant::now();
    let mut right = 0usize;
    let mut no_rule: BTreeMap<String, Vec<String>> = BTreeMap::new(); // op without a rule → cases
    let mut wrong = Vec::new();
    let mut errors = Vec::new();
    let mut auto_wrong = Vec::new();
    let mut known_seen = Vec::new();
    for case in cases {
        let id = field(case, "id");
        let x = &arrays[&format!("x_{id}")];
        let reference = values(&arrays[&format!("ref_{id}")]);
        let u = |x: &Tensor| module.method_ts(id, &[x.shallow_clone()]);
        match laplacian(
            u,
            x,
            &LaplacianOptions::default().strategy(Strategy::Taylor),
        ) {
            Ok(out) => {
                let got = values(&out.laplacian);
                if close(&got, &reference) {
                    right += 1;
                } else {
                    wrong.push(format!(
                        "{id} {}: Taylor {got:?}, reference (nested reverse) {reference:?}, \
                         forward-over-reverse {}, central difference {}, x {:?}",
                        describe(case),
                        case["fwd_over_rev"],
                        case["fd"],
                        values(x),
                    ));
                }
            }
            Err(Error::NoTaylorRule { op, detail }) => {
                let key = if detail.is_empty() {
                    op
                } else {
                    format!("{op} ({detail})")
                };
                no_rule.entry(key).or_default().push(describe(case));
            }
            Err(e) if known(case, &e) => known_seen.push(format!("{id} {}", describe(case))),
            Err(e) => errors.push(format!("{id} {}: {e}", describe(case))),
        }
        match laplacian(u, x, &LaplacianOptions::default().strategy(Strategy::Auto)) {
            Ok(out) => {
                let got = values(&out.laplacian);
                if !close(&got, &reference) {
                    auto_wrong.push(format!(
                        "{id} {}: Auto ({:?}) {got:?}, reference {reference:?}",
                        describe(case),
                        out.strategy
                    ));
                }
            }
            Err(e) if known(case, &e) => {}
            Err(e) => auto_wrong.push(format!("{id} {}: Auto failed: {e}", describe(case))),
        }
    }
    let elapsed = start.elapsed();

    let skipped = index["skipped"].as_array().map_or(0, Vec::len);
    let swept = index["swept"].as_array().map_or(0, Vec::len);
    let no_rule_cases: usize = no_rule.values().map(Vec::len).sum();
    eprintln!(
        "taylor_opinfo: {swept} ops swept, {} cases: {right} right, {no_rule_cases} no rule, \
         {} wrong, {} other errors, {} known errors; {skipped} skipped by the generator \
         ({:.1} s)",
        cases.len(),
        wrong.len(),
        errors.len(),
        known_seen.len(),
        elapsed.as_secs_f64(),
    );
    for (op, which) in &no_rule {
        eprintln!("  no rule for {op}: {}", which.join("; "));
    }
    for s in index["skipped"].as_array().into_iter().flatten() {
        eprintln!(
            "  skipped {}{} {}: {}",
            field(s, "op"),
            if field(s, "variant").is_empty() {
                String::new()
            } else {
                format!(".{}", field(s, "variant"))
            },
            field(s, "form"),
            field(s, "reason"),
        );
    }
    for line in &known_seen {
        eprintln!("  known error (KNOWN_ERRORS): {line}");
    }
    for line in wrong.iter().chain(&errors).chain(&auto_wrong) {
        eprintln!("  {line}");
    }
    let stale: Vec<&str> = KNOWN_ERRORS
        .iter()
        .filter(|(op, _)| !known_seen.iter().any(|l| l.contains(&format!(" {op} "))))
        .map(|(op, _)| *op)
        .collect();
    assert!(
        stale.is_empty(),
        "KNOWN_ERRORS lists {stale:?}, which no longer fail that way: remove them"
    );
    assert!(
        wrong.is_empty(),
        "{} wrong Taylor values; first: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(
        errors.is_empty(),
        "{} errors other than NoTaylorRule; first: {:#?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        auto_wrong.is_empty(),
        "{} wrong Auto values; first: {:#?}",
        auto_wrong.len(),
        &auto_wrong[..auto_wrong.len().min(5)]
    );
    // The ops without a rule, and how many cases reach each, exactly as committed: a rule that
    // stops firing (or a new one) fails until tests/expected/taylor_no_rule.tsv is blessed
    // (TCH_JACOBIAN_BLESS=1 cargo test --test taylor_opinfo).
    let mut table = common::expect::Table::new(&["op", "cases", "examples"], 1, 2);
    for (op, which) in &no_rule {
        let mut examples = which[..which.len().min(3)].join("; ");
        if which.len() > 3 {
            examples += "; …";
        }
        table.push(vec![op.clone(), which.len().to_string(), examples]);
    }
    assert_eq!(right + no_rule_cases + known_seen.len(), cases.len());
    // The build without the engine has no generic rule (vmap(jvp∘jvp) needs functorch): its own
    // expectation.
    let file = if tch_jacobian::native::available() {
        "tests/expected/taylor_no_rule.tsv"
    } else {
        "tests/expected/taylor_no_rule-no-engine.tsv"
    };
    common::expect::check(
        &std::path::Path::new(&common::root()).join(file),
        "The ops without a collapsed Taylor rule in tests/taylor_opinfo.rs's OpInfo sweep (the cases\n\
that end in Error::NoTaylorRule { op }), with how many cases reach each; every other case\n\
must be right. Written by TCH_JACOBIAN_BLESS=1 cargo test --test taylor_opinfo; review the diff\n\
before committing (a rule added removes its op; an op added means a rule stopped firing).\n\
examples is not compared.",
        &table,
        |_| true,
        "taylor_opinfo",
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// `aten::index` from tch (a `c10::List<optional<Tensor>>`, where the TorchScript interpreter
/// passes a generic list): the collapsed rule against nested reverse mode.
#[test]
fn index_from_tch_matches_nested() {
    let x = Tensor::from_slice(&[
        0.3f64, -1.2, 0.8, 1.5, -0.4, 0.9, 1.1, -0.7, 0.25, 0.6, -1.3, 0.45,
    ])
    .view([3, 4]);
    let idx = Tensor::from_slice(&[2i64, 3, 1, 3]);
    let u = |x: &Tensor| {
        let h = x.sin() * x;
        h.f_index(&[None, Some(&idx)])
            .map(|g| (g.square() * h.narrow(1, 0, 4)).sum_dim_intlist(1, false, Kind::Double))
    };
    let taylor = laplacian(
        u,
        &x,
        &LaplacianOptions::default().strategy(Strategy::Taylor),
    )
    .unwrap();
    let nested = laplacian(
        u,
        &x,
        &LaplacianOptions::default().strategy(Strategy::RowLoop),
    )
    .unwrap();
    let (a, b) = (values(&taylor.laplacian), values(&nested.laplacian));
    assert!(close(&a, &b), "Taylor {a:?}, nested {b:?}");
}
