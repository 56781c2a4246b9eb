//! The third-order sweep, shared by the CI subset (tests/third_order.rs, on the committed cases
//! in tests/data/third_order) and the full sweep (bench's `third_order_sweep`, on the cases
//! bench/third_order_sweep.py writes; scripts/third-order-sweep runs both).
//!
//! A case is a function `f(t_0, …, t_{n−1})` — a TorchScript module traced from an OpInfo sample
//! or a normalization, and for the normalizations also a Rust closure — with, per quantity, the
//! random arrays that make a scalar `Φ` out of second derivatives and the truth `T_m = ∂Φ/∂t_m`
//! (a third derivative; see bench/third_order_sweep.py):
//!
//! * `jac` / `batch` (Jacobian input `k`): `J_k = ∂f/∂t_k`, `g_j = ∂⟨R1, J_k⟩/∂t_j`,
//!   `Φ = Σ_j ⟨R2_j, g_j⟩` (`batch`: `R1` zero off the per-sample blocks);
//! * `hess` / `lap`: `s = ⟨c, f⟩`, `H = ∂²s/∂t_k²`, `Φ = ⟨Q, H⟩` (`lap`: `Q = blockdiag(w_b I)`,
//!   `Φ = Σ_b w_b Δu_b`).
//!
//! Every route computes its first- or second-order object with `create_graph` (`J` by
//! `jacobian_with` / `jacobian_of` / `per_sample_jacobian_of`, `H` by `hessian_of` /
//! `per_sample_hessian_of`, `Δu` by `laplacian_of`), the rest of `Φ` by plain backward passes with
//! create_graph, and `T` by one more backward pass.
#![allow(dead_code)]

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use tch::{CModule, Device, IValue, Kind, Tensor};
use tch_jacobian::{
    hessian_of, jacobian_of, jacobian_with, laplacian_of, per_sample_hessian_of,
    per_sample_jacobian_of, Error, JacobianOptions, Strategy,
};

use crate::sweep::{self, first, Outcome, Side};

/// The kind of `Φ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Set {
    Jac,
    Batch,
    Hess,
    Lap,
}

impl Set {
    pub fn name(self) -> &'static str {
        match self {
            Set::Jac => "jac",
            Set::Batch => "batch",
            Set::Hess => "hess",
            Set::Lap => "lap",
        }
    }
    fn parse(s: &str) -> Set {
        match s {
            "jac" => Set::Jac,
            "batch" => Set::Batch,
            "hess" => Set::Hess,
            "lap" => Set::Lap,
            other => panic!("unknown set {other:?}"),
        }
    }
}

/// One line of `manifest.tsv`: a (case, quantity).
#[derive(Debug, Clone)]
pub struct Quantity {
    pub set: Set,
    pub k: usize,
    /// PyTorch's own third derivative: `ok`, `wrong` or `error` against central differences.
    pub autograd: String,
    /// torch.func's.
    pub tf: String,
    /// Where the truth comes from: `autograd`, `torch.func` or `fd`.
    pub truth: String,
}

impl Quantity {
    pub fn prefix(&self) -> String {
        format!("{}{}", self.set.name(), self.k)
    }
}

/// A case and its quantities.
#[derive(Debug, Clone)]
pub struct Case {
    pub id: String,
    pub op: String,
    pub n_inputs: usize,
    pub batch: bool,
    pub quantities: Vec<Quantity>,
}

/// Reads `dir/manifest.tsv`, one [`Case`] per id in file order.
pub fn read_manifest(dir: &Path) -> Vec<Case> {
    let path = dir.join("manifest.tsv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {} ({e})", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("{} has no column {name}", path.display()))
    };
    let c = [
        "id", "op", "variant", "n_inputs", "set", "k", "autograd", "tf", "truth", "batch",
    ]
    .map(col);
    let mut cases: Vec<Case> = Vec::new();
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split('\t').collect();
        let q = Quantity {
            set: Set::parse(f[c[4]]),
            k: f[c[5]].parse().expect("k"),
            autograd: f[c[6]].into(),
            tf: f[c[7]].into(),
            truth: f[c[8]].into(),
        };
        match cases.last_mut() {
            Some(last) if last.id == f[c[0]] => last.quantities.push(q),
            _ => cases.push(Case {
                id: f[c[0]].into(),
                op: if f[c[2]].is_empty() {
                    f[c[1]].into()
                } else {
                    format!("{}.{}", f[c[1]], f[c[2]])
                },
                n_inputs: f[c[3]].parse().expect("n_inputs"),
                batch: f[c[9]] == "1",
                quantities: vec![q],
            }),
        }
    }
    cases
}

/// How `f` is run: the TorchScript module in the second-order sweep's modes (`eager`: the
/// executor's optimization off; `cold`: freshly loaded; `warm`: after three create_graph steps),
/// or, for the normalizations, as a Rust closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Eager,
    Cold,
    Warm,
    Rust,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Eager, Mode::Cold, Mode::Warm, Mode::Rust];
    pub fn name(self) -> &'static str {
        match self {
            Mode::Eager => "eager",
            Mode::Cold => "cold",
            Mode::Warm => "warm",
            Mode::Rust => "rust",
        }
    }
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// How the second-order object is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `jacobian_with(f(ts), [t_k])`.
    Graph(Strategy),
    /// `jacobian_of(t_k ↦ f(ts))`.
    Closure(Strategy),
    /// `per_sample_jacobian_of(t_0 ↦ f(ts))` (`batch` quantities).
    Batch(Strategy),
    /// `hessian_of(t_k ↦ ⟨c, f(ts)⟩)` (`hess`, `lap`).
    Hessian(Strategy),
    /// `per_sample_hessian_of(t_0 ↦ u)`, `u_b = ⟨c_b, f_b⟩` (`lap`).
    BatchHessian(Strategy),
    /// `laplacian_of(t_0 ↦ u)` (`lap`).
    Laplacian(Strategy),
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Graph(s) => write!(f, "jacobian_with {s}"),
            Route::Closure(s) => write!(f, "jacobian_of {s}"),
            Route::Batch(s) => write!(f, "per_sample_jacobian_of {s}"),
            Route::Hessian(s) => write!(f, "hessian_of {s}"),
            Route::BatchHessian(s) => write!(f, "per_sample_hessian_of {s}"),
            Route::Laplacian(s) => write!(f, "laplacian_of {s}"),
        }
    }
}

impl Route {
    pub fn strategy(self) -> Strategy {
        match self {
            Route::Graph(s)
            | Route::Closure(s)
            | Route::Batch(s)
            | Route::Hessian(s)
            | Route::BatchHessian(s)
            | Route::Laplacian(s) => s,
        }
    }
}

fn graph_strategies() -> Vec<Strategy> {
    let mut v = vec![Strategy::Auto, Strategy::RowLoop, Strategy::Forward];
    if tch_jacobian::native::available() {
        v.push(Strategy::Batched { chunk_size: None });
        v.push(Strategy::Batched {
            chunk_size: Some(2),
        });
    }
    v
}

const REPLICATED: [Strategy; 2] = [
    Strategy::Vectorized { chunk_size: None },
    Strategy::VectorizedForward { chunk_size: None },
];

/// Every route that applies to a quantity of `set`.
pub fn routes(set: Set) -> Vec<Route> {
    let graph = graph_strategies();
    let closure: Vec<Strategy> = std::iter::once(Strategy::Auto).chain(REPLICATED).collect();
    let mut out = Vec::new();
    match set {
        Set::Jac | Set::Batch => {
            out.extend(graph.iter().copied().map(Route::Graph));
            out.extend(closure.iter().copied().map(Route::Closure));
            if set == Set::Batch {
                out.extend(graph.iter().chain(&REPLICATED).copied().map(Route::Batch));
            }
        }
        Set::Hess | Set::Lap => {
            out.extend(graph.iter().copied().map(Route::Hessian));
            if set == Set::Lap {
                out.extend(graph.iter().copied().map(Route::BatchHessian));
                out.extend(graph.iter().copied().map(Route::Laplacian));
            }
        }
    }
    out
}

/// The normalizations of bench/third_order_sweep.py's `NORMS`, as Rust closures.
/// A case's function written as a Rust closure over its tensors.
pub type RustFn = fn(&[Tensor]) -> tch_jacobian::Result<Tensor>;

pub fn rust_closure(op: &str) -> Option<RustFn> {
    fn layer_norm(t: &[Tensor]) -> tch_jacobian::Result<Tensor> {
        Ok(t[0].f_layer_norm([4], Some(&t[1]), Some(&t[2]), 1e-5, false)?)
    }
    fn batch_norm(t: &[Tensor]) -> tch_jacobian::Result<Tensor> {
        Ok(t[0].f_batch_norm(
            Some(&t[1]),
            Some(&t[2]),
            None::<&Tensor>,
            None::<&Tensor>,
            true,
            0.1,
            1e-5,
            false,
        )?)
    }
    fn instance_norm(t: &[Tensor]) -> tch_jacobian::Result<Tensor> {
        Ok(t[0].f_instance_norm(
            Some(&t[1]),
            Some(&t[2]),
            None::<&Tensor>,
            None::<&Tensor>,
            true,
            0.1,
            1e-5,
            false,
        )?)
    }
    fn group_norm(t: &[Tensor]) -> tch_jacobian::Result<Tensor> {
        Ok(t[0].f_group_norm(2, Some(&t[1]), Some(&t[2]), 1e-5, false)?)
    }
    fn rms_norm(t: &[Tensor]) -> tch_jacobian::Result<Tensor> {
        Ok(t[0].f_rms_norm([4], Some(&t[1]), 1e-5)?)
    }
    Some(match op {
        "norm.layer_norm" => layer_norm,
        "norm.batch_norm" => batch_norm,
        "norm.instance_norm" => instance_norm,
        "norm.group_norm" => group_norm,
        "norm.rms_norm" => rms_norm,
        _ => return None,
    })
}

/// The function of a case in one mode.
pub enum Func<'a> {
    Module(&'a CModule),
    Rust(fn(&[Tensor]) -> tch_jacobian::Result<Tensor>),
}

impl Func<'_> {
    pub fn call(&self, ts: &[Tensor]) -> tch_jacobian::Result<Tensor> {
        match self {
            Func::Rust(f) => f(ts),
            Func::Module(m) => {
                let args: Vec<IValue> = ts
                    .iter()
                    .map(|t| IValue::Tensor(t.shallow_clone()))
                    .collect();
                match m.forward_is(&args)? {
                    IValue::Tensor(t) => Ok(t),
                    other => Err(Error::Contract(format!("the module returned {other:?}"))),
                }
            }
        }
    }
    /// `f` with `x` in place of `ts[k]`.
    fn call_at(&self, ts: &[Tensor], k: usize, x: &Tensor) -> tch_jacobian::Result<Tensor> {
        let mut args: Vec<Tensor> = ts.iter().map(|t| t.shallow_clone()).collect();
        args[k] = x.shallow_clone();
        self.call(&args)
    }
}

fn leaves(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter()
        .map(|t| t.detach().set_requires_grad(true))
        .collect()
}

/// `∂root/∂xs`, zeros where it does not reach, ZeroTensors made real.
fn grads(root: &Tensor, xs: &[Tensor], create_graph: bool) -> tch_jacobian::Result<Vec<Tensor>> {
    if !root.requires_grad() {
        return Ok(xs.iter().map(|x| x.zeros_like()).collect());
    }
    let gs = Tensor::f_run_backward(&[root], xs, true, create_graph)?;
    Ok(gs
        .into_iter()
        .zip(xs)
        .map(|(g, x)| {
            if !g.defined() || g.internal_is_zerotensor() {
                x.zeros_like()
            } else {
                g
            }
        })
        .collect())
}

fn dot(a: &Tensor, b: &Tensor) -> tch_jacobian::Result<Tensor> {
    Ok(a.f_mul(b)?.f_sum(Kind::Double)?)
}

/// The arrays of one quantity.
pub struct Arrays<'a> {
    pub map: &'a HashMap<String, Tensor>,
    pub prefix: String,
}

impl Arrays<'_> {
    pub fn get(&self, name: &str) -> Tensor {
        let key = format!("{}_{name}", self.prefix);
        self.map
            .get(&key)
            .unwrap_or_else(|| panic!("no array {key}"))
            .shallow_clone()
    }
}

/// `Φ = Σ_j ⟨R2_j, ∂⟨R1, J⟩/∂x_j⟩` with `R1` given (already in `J`'s layout).
fn jac_phi(j: &Tensor, r1: &Tensor, a: &Arrays, xs: &[Tensor]) -> tch_jacobian::Result<Tensor> {
    let l1 = dot(r1, j)?;
    let gs = grads(&l1, xs, true)?;
    let mut phi = Tensor::zeros([], (Kind::Double, xs[0].device()));
    for (m, g) in gs.iter().enumerate() {
        phi = phi.f_add(&dot(&a.get(&format!("r2_{m}")), g)?)?;
    }
    Ok(phi)
}

/// `u(x)_b = ⟨c_b, f(x)_b⟩`, shape `[B]`.
fn per_sample(c: &Tensor, y: &Tensor) -> tch_jacobian::Result<Tensor> {
    let b = y.size()[0];
    Ok(c.f_mul(y)?
        .f_reshape([b, -1])?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?)
}

/// `T` by one route.
pub fn evaluate(
    func: &Func,
    ts: &[Tensor],
    q: &Quantity,
    a: &Arrays,
    route: Route,
) -> tch_jacobian::Result<Vec<Tensor>> {
    let xs = leaves(ts);
    let k = q.k;
    let opts = JacobianOptions::default()
        .create_graph(true)
        .strategy(route.strategy());
    let at = |x: &Tensor| func.call_at(&xs, k, x);
    let phi = match route {
        Route::Graph(_) => {
            let y = func.call(&xs)?;
            let j = jacobian_with(&y, &[&xs[k]], &opts)?.remove(0);
            jac_phi(&j, &a.get("r1"), a, &xs)?
        }
        Route::Closure(_) => {
            let j = jacobian_of(at, &xs[k], &opts)?;
            jac_phi(&j, &a.get("r1"), a, &xs)?
        }
        Route::Batch(_) => {
            let j = per_sample_jacobian_of(at, &xs[k], &opts)?; // [B, *out, *in]
            let b = xs[k].size()[0];
            let (o, i) = (j.numel() as i64 / b, xs[k].numel() as i64 / b);
            let o = o / i;
            // R1's per-sample blocks, R1[b, :, b, :], in J's layout.
            let r1 = a
                .get("r1")
                .f_reshape([b, o, b, i])?
                .f_diagonal(0, 0, 2)?
                .f_permute([2, 0, 1])?
                .f_reshape(j.size().as_slice())?;
            jac_phi(&j, &r1, a, &xs)?
        }
        Route::Hessian(_) => {
            let c = a.get("c");
            let h = hessian_of(|x: &Tensor| dot(&c, &at(x)?), &xs[k], &opts)?;
            dot(&a.get("q"), &h)?
        }
        Route::BatchHessian(_) => {
            let c = a.get("c");
            let h = per_sample_hessian_of(|x: &Tensor| per_sample(&c, &at(x)?), &xs[k], &opts)?;
            let b = xs[k].size()[0];
            let n = xs[k].numel() as i64 / b;
            let traces = h
                .f_reshape([b, n, n])?
                .f_diagonal(0, 1, 2)?
                .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?;
            dot(&a.get("w"), &traces)?
        }
        Route::Laplacian(_) => {
            let c = a.get("c");
            let lap = laplacian_of(|x: &Tensor| per_sample(&c, &at(x)?), &xs[k], &opts)?;
            dot(&a.get("w"), &lap)?
        }
    };
    grads(&phi, &xs, false)
}

/// The tolerance for a truth from `source`: PyTorch's exact value (`autograd`, `torch.func`),
/// `|T − truth| ≤ 1e-6·|truth| + 1e-8·max(1, max|truth|)`; central differences (`fd`),
/// `|T − truth| ≤ 1e-5·|truth| + 1e-6·max(1, max|truth|)` (bench/third_order_sweep.py's test of
/// agreement with the differences).
pub fn tolerance(source: &str) -> (f64, f64) {
    if source == "fd" {
        (1e-5, 1e-6)
    } else {
        (1e-6, 1e-8)
    }
}

pub fn compare(got: &[Tensor], truth: &[Tensor], source: &str) -> Outcome {
    let (rtol, atol) = tolerance(source);
    let scale = truth
        .iter()
        .filter(|t| t.numel() > 0)
        .map(|t| t.abs().max().double_value(&[]))
        .fold(1.0f64, f64::max);
    let mut worst = 0.0f64;
    let mut wrong = false;
    for (g, t) in got.iter().zip(truth) {
        if g.size() != t.size() {
            return Outcome::WrongShape(format!("shape {:?}, expected {:?}", g.size(), t.size()));
        }
        if t.numel() == 0 {
            continue;
        }
        if g.kind() != t.kind() {
            return Outcome::WrongKind(format!("{:?}, expected {:?}", g.kind(), t.kind()));
        }
        let diff = (g - t).abs();
        let bound = t.abs() * rtol + atol * scale;
        let bad = diff.gt_tensor(&bound).any().int64_value(&[]) != 0
            || g.isnan().any().int64_value(&[]) != 0;
        let max_diff = diff.max().double_value(&[]);
        if bad {
            wrong = true;
            if max_diff.is_nan() || max_diff >= worst {
                worst = max_diff;
            }
        }
    }
    if wrong {
        Outcome::Wrong {
            max_diff: worst,
            scale,
        }
    } else {
        Outcome::Ok
    }
}

/// One result line.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub op: String,
    pub mode: Mode,
    pub set: Set,
    pub k: usize,
    /// The quantity's libtorch status (autograd, torch.func) and truth source, from the manifest.
    pub autograd: String,
    pub truth: String,
    pub route: Route,
    pub outcome: Outcome,
    pub side: Side,
}

/// The expected-outcome table of the third-order sweep: key `case mode quantity route`
/// (`quantity` = set and k, e.g. `jac1`), compared `outcome reroutes fallbacks`, note `detail`.
pub fn table() -> crate::expect::Table {
    crate::expect::Table::new(
        &[
            "case",
            "mode",
            "quantity",
            "route",
            "outcome",
            "reroutes",
            "fallbacks",
            "detail",
        ],
        4,
        7,
    )
}

impl Row {
    /// The row's fields in [`table`]'s columns.
    pub fn fields(&self) -> Vec<String> {
        vec![
            self.case.clone(),
            self.mode.name().into(),
            format!("{}{}", self.set.name(), self.k),
            self.route.to_string(),
            self.outcome.label(),
            self.side.reroutes.clone(),
            self.side.fallbacks.clone(),
            sweep::note(&self.outcome),
        ]
    }
}

/// Runs every route on every quantity of one case in each of `modes` (`rust` only for the
/// normalizations).
pub fn run_case(dir: &Path, case: &Case, modes: &[Mode], device: Device) -> Vec<Row> {
    let arrays = sweep::read_arrays(dir, &case.id, device);
    let ts: Vec<Tensor> = (0..case.n_inputs)
        .map(|i| {
            arrays
                .get(&format!("t{i}"))
                .unwrap_or_else(|| panic!("{}: no t{i}", case.id))
                .shallow_clone()
        })
        .collect();
    let path = sweep::module_path(dir, &case.id);
    let load = || -> tch_jacobian::Result<CModule> {
        let mut m = CModule::load_on_device(&path, device)?;
        m.f_set_eval()?;
        Ok(m)
    };
    let rust = rust_closure(&case.op);
    let mut rows = Vec::new();
    for &mode in modes {
        if mode == Mode::Rust && rust.is_none() {
            continue;
        }
        tch::jit::set_graph_executor_optimize(mode != Mode::Eager);
        let warm = match mode {
            Mode::Warm => load()
                .and_then(|m| sweep::warm_up(&m, &ts).map(|_| m))
                .map(Some),
            _ => Ok(None),
        };
        for q in &case.quantities {
            let a = Arrays {
                map: &arrays,
                prefix: q.prefix(),
            };
            let truth: Vec<Tensor> = (0..case.n_inputs)
                .map(|m| a.get(&format!("T{m}")))
                .collect();
            for route in routes(q.set) {
                let _ = Side::take();
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    let fresh;
                    let func = match (&warm, mode) {
                        (_, Mode::Rust) => Func::Rust(rust.expect("a Rust closure")),
                        (Ok(Some(m)), _) => Func::Module(m),
                        (Err(e), _) => {
                            return Outcome::NotApplicable(format!(
                                "libtorch fails to warm the module up: {}",
                                first(&e.to_string())
                            ))
                        }
                        (Ok(None), _) => {
                            fresh = match load() {
                                Ok(m) => m,
                                Err(e) => return Outcome::error(&e),
                            };
                            Func::Module(&fresh)
                        }
                    };
                    match evaluate(&func, &ts, q, &a, route) {
                        Ok(g) => compare(&g, &truth, &q.truth),
                        Err(e) => Outcome::error(&e),
                    }
                }))
                .unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Outcome::Panic(first(&msg))
                });
                rows.push(Row {
                    case: case.id.clone(),
                    op: case.op.clone(),
                    mode,
                    set: q.set,
                    k: q.k,
                    autograd: q.autograd.clone(),
                    truth: q.truth.clone(),
                    route,
                    outcome,
                    side: Side::take(),
                });
            }
        }
    }
    tch::jit::set_graph_executor_optimize(true);
    let _ = Side::take();
    rows
}
