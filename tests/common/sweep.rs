//! The second-order sweep over PyTorch's OpInfo samples, shared by the CI subset
//! (tests/second_order.rs, on the committed cases in tests/data/second_order) and the full sweep
//! (bench's `second-order-sweep`, on the cases bench/second_order_sweep.py writes).
//!
//! A case is a TorchScript module `f(t_0, …, t_{n−1})` traced from one OpInfo sample, its inputs,
//! and per Jacobian input `k` a cotangent `R_k` and the truth `g_{k,j} = ∂⟨R_k, J_k⟩/∂t_j` with
//! `J_k = ∂f/∂t_k` (PyTorch's row loop; central differences decide where it and torch.func
//! disagree). Every route computes `J_k` with `create_graph`, then `g` by one backward pass, in
//! three modes of the module: `eager` (the TorchScript executor's optimization off: op by op, as
//! eager code records it), `cold` (a freshly loaded module's first call) and `warm` (after three
//! create_graph training steps, when the profiling executor runs its optimized graph).
#![allow(dead_code)]

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use tch::{CModule, Device, IValue, Kind, Tensor};
use tch_jacobian::{jacobian_of, jacobian_with, Error, JacobianOptions, Strategy};

/// One line of `manifest.tsv`.
#[derive(Debug, Clone)]
pub struct Case {
    pub id: String,
    pub op: String,
    pub n_inputs: usize,
    /// The Jacobian inputs `k` that have a truth.
    pub wrt: Vec<usize>,
    /// torch.func's status per `k` (eager), and on the warm module.
    pub tf: Vec<String>,
    pub tf_warm: Vec<String>,
}

/// Reads `dir/manifest.tsv`.
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
    let (id, op, variant, n, wrt, tf, tf_warm) = (
        col("id"),
        col("op"),
        col("variant"),
        col("n_inputs"),
        col("wrt"),
        col("tf"),
        col("tf_warm"),
    );
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    };
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let op = if f[variant].is_empty() {
                f[op].to_string()
            } else {
                format!("{}.{}", f[op], f[variant])
            };
            Case {
                id: f[id].to_string(),
                op,
                n_inputs: f[n].parse().expect("n_inputs"),
                wrt: list(f[wrt])
                    .iter()
                    .map(|k| k.parse().expect("wrt"))
                    .collect(),
                tf: list(f[tf]),
                tf_warm: list(f[tf_warm]),
            }
        })
        .collect()
}

/// How the module is run; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Eager,
    Cold,
    Warm,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Eager, Mode::Cold, Mode::Warm];
    pub fn name(self) -> &'static str {
        match self {
            Mode::Eager => "eager",
            Mode::Cold => "cold",
            Mode::Warm => "warm",
        }
    }
}

/// How `J_k` is computed: from the built graph (`jacobian_with(y, [t_k])`) or from a closure of
/// `t_k` (`jacobian_of`), with a strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Graph(Strategy),
    Closure(Strategy),
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Graph(s) => write!(f, "graph {s}"),
            Route::Closure(s) => write!(f, "closure {s}"),
        }
    }
}

/// Every route: the built graph with each strategy that needs no closure, the closure with
/// Auto and the replicated strategies. Batched only when the native engine is built.
pub fn routes() -> Vec<Route> {
    let mut graph = vec![Strategy::Auto, Strategy::RowLoop, Strategy::Forward];
    if tch_jacobian::native::available() {
        graph.push(Strategy::Batched { chunk_size: None });
        graph.push(Strategy::Batched {
            chunk_size: Some(2),
        });
    }
    let closure = [
        Strategy::Auto,
        Strategy::Vectorized { chunk_size: None },
        Strategy::VectorizedForward { chunk_size: None },
    ];
    graph
        .into_iter()
        .map(Route::Graph)
        .chain(closure.into_iter().map(Route::Closure))
        .collect()
}

/// The result of one route on one `(case, mode, k)`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Equal to the truth.
    Ok,
    /// A value, not the truth: the largest difference and the truth's scale.
    Wrong { max_diff: f64, scale: f64 },
    /// A result of another shape than the truth's.
    WrongShape(String),
    /// A result of another kind (dtype) than the truth's.
    WrongKind(String),
    /// An error of the crate: its [`Error`] variant (`WrongDerivative`, `Contract`, `Torch`, …,
    /// see [`variant`]) and its first line.
    Error {
        variant: &'static str,
        message: String,
    },
    /// A Rust panic (caught).
    Panic(String),
    /// The case cannot run in this mode: libtorch itself fails to warm the module up (its
    /// optimized graph's backward raises), before the crate is called.
    NotApplicable(String),
}

/// The name of `e`'s variant: `WrongDerivative`, `Contract`, `Torch`, `NoBatchingRule`, …
pub fn variant(e: &Error) -> &'static str {
    match e {
        Error::NoGrad { .. } => "NoGrad",
        Error::NotConnected { .. } => "NotConnected",
        Error::Shape(_) => "Shape",
        Error::Kind(_) => "Kind",
        Error::Device(_) => "Device",
        Error::InvalidArgument(_) => "InvalidArgument",
        Error::Contract(_) => "Contract",
        Error::NoBatchingRule { .. } => "NoBatchingRule",
        Error::NoTaylorRule { .. } => "NoTaylorRule",
        Error::WrongDerivative { .. } => "WrongDerivative",
        Error::OutOfMemory { .. } => "OutOfMemory",
        Error::Io { .. } => "Io",
        Error::Torch(_) => "Torch",
        _ => "Other",
    }
}

impl Outcome {
    /// The error `e` as an outcome.
    pub fn error(e: &Error) -> Outcome {
        Outcome::Error {
            variant: variant(e),
            message: first(&e.to_string()),
        }
    }
    /// `ok`, `wrong`, `wrong-shape`, `err:<Variant>`, `panic` or `n/a`: the expected-outcome
    /// files' column.
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Wrong { .. } => "wrong".into(),
            Outcome::WrongShape(_) => "wrong-shape".into(),
            Outcome::WrongKind(_) => "wrong-kind".into(),
            Outcome::Error { variant, .. } => format!("err:{variant}"),
            Outcome::Panic(_) => "panic".into(),
            Outcome::NotApplicable(_) => "n/a".into(),
        }
    }
    /// A refusal on purpose: the crate's `WrongDerivative`, or a `Contract` error (a closure that
    /// is not row-wise for the replicated strategies).
    pub fn refused(&self) -> bool {
        matches!(
            self,
            Outcome::Error {
                variant: "WrongDerivative" | "Contract",
                ..
            }
        )
    }
    pub fn detail(&self) -> String {
        match self {
            Outcome::Ok => String::new(),
            Outcome::Wrong { max_diff, scale } => {
                format!("max |Δ| {max_diff:.3e} (scale {scale:.3e})")
            }
            Outcome::Error { message, .. } => message.clone(),
            Outcome::WrongShape(s)
            | Outcome::WrongKind(s)
            | Outcome::Panic(s)
            | Outcome::NotApplicable(s) => s.clone(),
        }
    }
}

/// What a route did besides its value: the reroutes the crate recorded
/// (`second_order::take_reroutes`, as `from->to`) and the ops that took libtorch's vmap fallback
/// (`native::take_vmap_fallbacks`), each list `,`-joined, `-` when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Side {
    pub reroutes: String,
    pub fallbacks: String,
}

impl Side {
    /// Takes (and clears) this thread's records.
    pub fn take() -> Side {
        let join = |v: Vec<String>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        Side {
            reroutes: join(
                tch_jacobian::second_order::take_reroutes()
                    .iter()
                    .map(|r| format!("{}->{}", r.from, r.to))
                    .collect(),
            ),
            fallbacks: join(tch_jacobian::native::take_vmap_fallbacks()),
        }
    }
}

/// One result line.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub op: String,
    pub mode: Mode,
    pub k: usize,
    pub route: Route,
    pub outcome: Outcome,
    pub side: Side,
}

/// The expected-outcome table of the second-order sweep: key `case mode k route`, compared
/// `outcome reroutes fallbacks`, note `detail` (an error's first line).
pub fn table() -> super::expect::Table {
    super::expect::Table::new(
        &[
            "case",
            "mode",
            "k",
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
            self.k.to_string(),
            self.route.to_string(),
            self.outcome.label(),
            self.side.reroutes.clone(),
            self.side.fallbacks.clone(),
            note(&self.outcome),
        ]
    }
}

/// The note column: an error's or a panic's first line (80 characters), else `-`.
pub fn note(o: &Outcome) -> String {
    match o {
        Outcome::Error { message, .. } | Outcome::Panic(message) => {
            message.chars().take(80).collect()
        }
        _ => "-".into(),
    }
}

/// The case's arrays: `t*`, `r*`, `g*_*`.
pub fn read_arrays(dir: &Path, id: &str, device: Device) -> HashMap<String, Tensor> {
    let path = dir.join("cases").join(format!("{id}.npz"));
    Tensor::read_npz(&path)
        .unwrap_or_else(|e| panic!("cannot read {} ({e})", path.display()))
        .into_iter()
        .map(|(name, t)| {
            (
                name.trim_end_matches(".npy").to_string(),
                t.to_device(device),
            )
        })
        .collect()
}

pub fn module_path(dir: &Path, id: &str) -> PathBuf {
    dir.join("cases").join(format!("{id}.pt"))
}

fn forward(module: &CModule, ts: &[Tensor]) -> tch_jacobian::Result<Tensor> {
    let args: Vec<IValue> = ts
        .iter()
        .map(|t| IValue::Tensor(t.shallow_clone()))
        .collect();
    match module.forward_is(&args)? {
        IValue::Tensor(t) => Ok(t),
        other => Err(Error::Contract(format!("the module returned {other:?}"))),
    }
}

fn leaves(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter()
        .map(|t| t.detach().set_requires_grad(true))
        .collect()
}

/// The gradients of `root` with respect to `xs`, zeros where it does not reach, ZeroTensors
/// made real.
fn grads(root: &Tensor, xs: &[Tensor]) -> tch_jacobian::Result<Vec<Tensor>> {
    if !root.requires_grad() {
        return Ok(xs.iter().map(|x| x.zeros_like()).collect());
    }
    let gs = Tensor::f_run_backward(&[root], xs, true, false)?;
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

/// Three create_graph steps, as training with a Jacobian penalty does: forward, gradient with
/// create_graph, backward of its sum.
pub fn warm_up(module: &CModule, ts: &[Tensor]) -> tch_jacobian::Result<()> {
    for _ in 0..3 {
        let xs = leaves(ts);
        let y = forward(module, &xs)?;
        let root = y.f_sum(Kind::Double)?;
        if !root.requires_grad() {
            continue;
        }
        let gs = Tensor::f_run_backward(&[&root], &xs, true, true)?;
        let mut total: Option<Tensor> = None;
        for g in gs.iter().filter(|g| g.defined() && g.requires_grad()) {
            let s = g.f_sum(Kind::Double)?;
            total = Some(match total {
                None => s,
                Some(t) => t.f_add(&s)?,
            });
        }
        if let Some(t) = total {
            Tensor::f_run_backward(&[&t], &xs, false, false)?;
        }
    }
    Ok(())
}

/// `g_j = ∂⟨R_k, J_k⟩/∂t_j` by one route.
pub fn evaluate(
    module: &CModule,
    ts: &[Tensor],
    k: usize,
    r: &Tensor,
    route: Route,
) -> tch_jacobian::Result<Vec<Tensor>> {
    let xs = leaves(ts);
    let opts = |s: Strategy| JacobianOptions::default().create_graph(true).strategy(s);
    let j = match route {
        Route::Graph(s) => {
            let y = forward(module, &xs)?;
            jacobian_with(&y, &[&xs[k]], &opts(s))?.remove(0)
        }
        Route::Closure(s) => {
            let f = |x: &Tensor| -> tch_jacobian::Result<Tensor> {
                let mut args: Vec<Tensor> = xs.iter().map(|t| t.shallow_clone()).collect();
                args[k] = x.shallow_clone();
                forward(module, &args)
            };
            jacobian_of(f, &xs[k], &opts(s))?
        }
    };
    let root = r.f_mul(&j)?.f_sum(Kind::Double)?;
    grads(&root, &xs)
}

fn compare(got: &[Tensor], truth: &[Tensor]) -> Outcome {
    let mut worst = (0.0f64, 0.0f64);
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
        let scale = t.abs().max().double_value(&[]).max(1.0);
        let diff = (g - t).abs();
        let bound = t.abs() * 1e-6 + 1e-8 * scale;
        let bad = diff.gt_tensor(&bound).any().int64_value(&[]) != 0
            || g.isnan().any().int64_value(&[]) != t.isnan().any().int64_value(&[]);
        let max_diff = diff.max().double_value(&[]);
        if bad {
            wrong = true;
            if max_diff.is_nan() || max_diff >= worst.0 {
                worst = (max_diff, scale);
            }
        }
    }
    if wrong {
        Outcome::Wrong {
            max_diff: worst.0,
            scale: worst.1,
        }
    } else {
        Outcome::Ok
    }
}

pub fn first(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(160).collect()
}

/// Runs `routes` on every `(mode, k)` of one case.
pub fn run_case(
    dir: &Path,
    case: &Case,
    modes: &[Mode],
    routes: &[Route],
    device: Device,
) -> Vec<Row> {
    let arrays = read_arrays(dir, &case.id, device);
    let get = |name: &str| -> Tensor {
        arrays
            .get(name)
            .unwrap_or_else(|| panic!("{}: no array {name}", case.id))
            .shallow_clone()
    };
    let ts: Vec<Tensor> = (0..case.n_inputs).map(|i| get(&format!("t{i}"))).collect();
    let path = module_path(dir, &case.id);
    let load = || -> tch_jacobian::Result<CModule> {
        let mut m = CModule::load_on_device(&path, device)?;
        m.f_set_eval()?;
        Ok(m)
    };
    let mut rows = Vec::new();
    for &mode in modes {
        // Eager: the executor's optimization off on this thread for the whole mode.
        tch::jit::set_graph_executor_optimize(mode != Mode::Eager);
        let warm = match mode {
            Mode::Warm => load().and_then(|m| warm_up(&m, &ts).map(|_| m)).map(Some),
            _ => Ok(None),
        };
        for &k in &case.wrt {
            let r = get(&format!("r{k}"));
            let truth: Vec<Tensor> = (0..case.n_inputs)
                .map(|j| get(&format!("g{k}_{j}")))
                .collect();
            for &route in routes {
                let _ = Side::take();
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    let fresh;
                    let module = match (&warm, mode) {
                        (Ok(Some(m)), _) => m,
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
                            &fresh
                        }
                    };
                    match evaluate(module, &ts, k, &r, route) {
                        Ok(g) => compare(&g, &truth),
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
                    k,
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
