//! The Moré–Garbow–Hillstrom problems (tests/lsq/mgh.rs) solved by `least_squares` with its
//! default options, f64.
//!
//! * `mgh_from_the_standard_starts` (every `cargo test`): from each problem's standard start
//!   x0, the published minimum to ≥ 6 digits (F* = 0: F ≤ 1e-20, the fixtures' rule), or a lower
//!   one (Trigonometric, where SciPy's dogbox also finds F = 0).
//! * `mgh_table` (ignored; `cargo test --release --test least_squares_mgh -- --ignored
//!   --nocapture`, about a minute): x0, 10·x0 and 100·x0 solved together (B = 3 per problem),
//!   with SciPy lm's tight result beside ours; prints the table of docs/least-squares.md. From
//!   10·x0 and 100·x0 a row passes when it reaches F*, or another minimum MGH or
//!   tests/lsq/README.md document; where SciPy lm's tight run (SciPy's counterpart of our
//!   method) does not reach F* either, nothing is required. The rows that miss are exactly
//!   [`KNOWN_MISSES`].
//! * `mgh_other_methods` (ignored): the same table for geodesic acceleration, dogleg and
//!   Gauss–Newton.

mod common;
#[path = "lsq/mgh.rs"]
mod mgh;

use tch::{Kind, Tensor};
use tch_jacobian::least_squares::{Method, Status};
use tch_jacobian::{least_squares, LeastSquaresOptions};

/// Rows of the default options that SciPy lm (tight) gets right and we do not: (problem,
/// factor, why).
const KNOWN_MISSES: &[(&str, f64, &str)] = &[
    (
        "gaussian",
        100.0,
        "our first steps match SciPy lm's to 10 digits, then rounding on the symmetric x3 = 0 sends the path elsewhere: F = 0.440 (a local minimum); dogleg reaches F*",
    ),
    (
        "meyer",
        10.0,
        "needs more than the default 1000 iterations (SciPy lm: 1821 evaluations); with geodesic acceleration 85 iterations",
    ),
];

fn table() -> serde_json::Value {
    let path = format!("{}/tests/data/least_squares/mgh.json", common::root());
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {path} ({e}); run tests/gen-least-squares.py"));
    serde_json::from_str(&text).expect("mgh.json")
}

/// Digits of F against a minimum `fo > 0`: `−log10(|F − fo| / fo)`, capped at 16.
fn digits(f: f64, fo: f64) -> f64 {
    let rel = (f - fo).abs() / fo;
    if rel == 0.0 {
        16.0
    } else {
        (-rel.log10()).min(16.0)
    }
}

/// Whether F reached the minimum `fo` (F* = 0: F ≤ 1e-20; else `need` digits, or lower).
fn reached(f: f64, fo: f64, need: f64) -> bool {
    if fo == 0.0 {
        f <= 1e-20
    } else {
        digits(f, fo) >= need || f < fo
    }
}

struct Row {
    problem: &'static str,
    factor: f64,
    f: f64,
    reached: String,
    digits: String,
    iterations: usize,
    evaluations: usize,
    status: Status,
    scipy_lm: String,
    ok: bool,
}

fn solve_all(factors: &[f64], method: Method, geodesic: bool) -> Vec<Row> {
    let json = table();
    let py = json["problems"].as_array().unwrap();
    let mut rows = Vec::new();
    for (p, q) in mgh::problems().iter().zip(py) {
        assert_eq!(p.name, q["name"].as_str().unwrap());
        // Starts whose cost overflows (F0 = inf, written as null) are an error, as in SciPy's trf.
        let starts: Vec<&serde_json::Value> = q["starts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| factors.contains(&s["factor"].as_f64().unwrap()))
            .filter(|s| s["r0_finite"].as_bool().unwrap() && s["F0"].as_f64().is_some())
            .collect();
        let flat: Vec<f64> = starts
            .iter()
            .flat_map(|s| p.start(s["factor"].as_f64().unwrap()))
            .collect();
        let x0 = Tensor::from_slice(&flat).view([starts.len() as i64, p.n]);
        let opts = LeastSquaresOptions::default()
            .method(method)
            .geodesic(geodesic);
        let out =
            least_squares(p.residual, &x0, &opts).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        let cost = Vec::<f64>::try_from(out.cost.to_kind(Kind::Double)).unwrap();
        for (k, s) in starts.iter().enumerate() {
            let factor = s["factor"].as_f64().unwrap();
            let f = 2.0 * cost[k];
            let lm = s["runs"]["lm_tight"]["F"].as_f64();
            let scipy_lm = lm.map_or("–".into(), |v| format!("{v:.6e}"));
            // F*, or lower (a lower minimum: Trigonometric's 0, Chebyquad 10's 4.77e-3)
            let (mut ok, mut what, mut d) = (reached(f, p.f_star, 6.0), "F*".to_string(), p.f_star);
            if !ok && factor > 1.0 {
                // another minimum documented for this problem (MGH print 6 digits of them: 5
                // reached is that minimum)
                for (fo, w) in &p.other_minima {
                    if reached(f, *fo, 5.0) {
                        (ok, what, d) = (true, format!("other minimum {w}"), *fo);
                        break;
                    }
                }
            }
            if !ok && factor > 1.0 {
                // SciPy lm's tight run does not reach F* either: not required of us
                if let Some(v) = lm.filter(|v| !reached(*v, p.f_star, 6.0)) {
                    (ok, what, d) = (true, "neither (nor SciPy lm)".into(), 0.0);
                    let _ = v;
                }
            }
            let digits = if d == 0.0 {
                format!("F = {f:.2e}")
            } else {
                format!("{:.1}", digits(f, d))
            };
            rows.push(Row {
                problem: p.name,
                factor,
                f,
                reached: if ok { what } else { "—".into() },
                digits,
                iterations: out.iterations[k],
                evaluations: out.evaluations[k],
                status: out.status[k],
                scipy_lm,
                ok,
            });
        }
    }
    rows
}

fn print(rows: &[Row], title: &str) {
    println!("\n{title}\n");
    println!("| problem | start | F | minimum reached | digits | iterations | evaluations | status | SciPy lm (tight) F |");
    println!("|---|---:|---|---|---:|---:|---:|---|---|");
    for r in rows {
        println!(
            "| {} | {}× | {:.10e} | {} | {} | {} | {} | {:?} | {} |",
            r.problem,
            r.factor,
            r.f,
            r.reached,
            r.digits,
            r.iterations,
            r.evaluations,
            r.status,
            r.scipy_lm
        );
    }
}

#[test]
fn mgh_from_the_standard_starts() {
    let rows = solve_all(&[1.0], Method::Auto, false);
    print(
        &rows,
        "MGH from x0, default options (Levenberg–Marquardt), f64",
    );
    for r in &rows {
        assert!(
            r.ok,
            "{}: F = {:e} ({:?}, {} iterations)",
            r.problem, r.f, r.status, r.iterations
        );
        assert!(r.status.is_success(), "{}: {:?}", r.problem, r.status);
    }
}

#[test]
#[ignore = "about a minute in a release build: cargo test --release --test least_squares_mgh -- --ignored --nocapture"]
fn mgh_table() {
    let rows = solve_all(&[1.0, 10.0, 100.0], Method::Auto, false);
    print(
        &rows,
        "MGH from x0, 10·x0, 100·x0, default options (Levenberg–Marquardt), f64",
    );
    let missed: Vec<(&str, f64)> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| (r.problem, r.factor))
        .collect();
    let known: Vec<(&str, f64)> = KNOWN_MISSES.iter().map(|(p, f, _)| (*p, *f)).collect();
    assert_eq!(missed, known, "the rows that miss changed");
}

#[test]
#[ignore = "exploration: the other methods on the MGH set (a few minutes)"]
fn mgh_other_methods() {
    for (m, g) in [
        (Method::Auto, true),
        (Method::Dogleg, false),
        (Method::GaussNewton, false),
    ] {
        let rows = solve_all(&[1.0, 10.0, 100.0], m, g);
        print(&rows, &format!("MGH, {m}, geodesic {g}"));
        let missed: Vec<String> = rows
            .iter()
            .filter(|r| !r.ok)
            .map(|r| format!("{} {}×", r.problem, r.factor))
            .collect();
        println!("missed ({}): {}", missed.len(), missed.join(", "));
    }
}
