//! The full third-order sweep: every route of the crate on every case that
//! bench/third_order_sweep.py wrote (PyTorch's OpInfo samples and the normalizations;
//! scripts/third-order-sweep runs both), in the eager, cold and warm modes of the traced module
//! and, for the normalizations, as Rust closures; see tests/common/third_sweep.rs for what a
//! case, a quantity and a route are.
//!
//!     cargo run --release -p tch-jacobian-bench --bin third_order_sweep -- DIR \
//!         [--modes eager,cold,warm,rust] [--ops OP,OP] [--report FILE.md] [--device cpu|cuda] \
//!         [--expect FILE.tsv [--bless]]
//!
//! With `--expect`, every `(case, mode, quantity, route)`'s outcome (`ok`, `wrong`, `err:<the
//! Error variant>`, `panic`, `crash`, …), its reroutes and its vmap fallbacks are compared with
//! the committed FILE (bench/expected/third_order.tsv for scripts/third-order-sweep's cases),
//! every difference printed, and the exit status is 1 on any; `--bless` rewrites FILE instead
//! (the rows of the cases and modes run).
//!
//! Cases run in worker processes (this binary with `--worker-from I`), so a crash is counted
//! against its case and the sweep goes on. Prints the markdown report (and writes `--report`).
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use tch::Device;

#[path = "../../../tests/common/expect.rs"]
mod expect;
#[path = "../../../tests/common/sweep.rs"]
mod sweep;
#[path = "../../../tests/common/third_sweep.rs"]
mod third_sweep;

use third_sweep::{Case, Mode};

struct Args {
    dir: PathBuf,
    modes: Vec<Mode>,
    ops: Option<Vec<String>>,
    report: Option<PathBuf>,
    device: Device,
    worker_from: Option<usize>,
    passthrough: Vec<String>,
    expect: Option<PathBuf>,
    bless: bool,
}

fn parse_args() -> Result<Args> {
    let usage = "usage: third_order_sweep DIR [--modes eager,cold,warm,rust] [--ops OP,OP] [--report FILE.md] [--device cpu|cuda] [--expect FILE.tsv [--bless]]";
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        dir: PathBuf::new(),
        modes: Mode::ALL.to_vec(),
        ops: None,
        report: None,
        device: Device::Cpu,
        worker_from: None,
        passthrough: Vec::new(),
        expect: None,
        bless: false,
    };
    let mut dir = None;
    while let Some(a) = it.next() {
        let mut value = |what: &str| {
            it.next()
                .with_context(|| format!("{what} needs a value; {usage}"))
        };
        match a.as_str() {
            "--modes" => {
                let v = value("--modes")?;
                args.passthrough.extend(["--modes".into(), v.clone()]);
                args.modes = v
                    .split(',')
                    .map(|m| {
                        Mode::parse(m).with_context(|| {
                            format!("unknown mode {m:?}; eager, cold, warm or rust")
                        })
                    })
                    .collect::<Result<_>>()?;
            }
            "--ops" => {
                let v = value("--ops")?;
                args.passthrough.extend(["--ops".into(), v.clone()]);
                args.ops = Some(v.split(',').map(str::to_string).collect());
            }
            "--report" => args.report = Some(value("--report")?.into()),
            "--expect" => args.expect = Some(value("--expect")?.into()),
            "--bless" => args.bless = true,
            "--device" => {
                let v = value("--device")?;
                args.passthrough.extend(["--device".into(), v.clone()]);
                args.device = tch_jacobian::device::parse_device(&v)?;
            }
            "--worker-from" => args.worker_from = Some(value("--worker-from")?.parse()?),
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            d if dir.is_none() && !d.starts_with('-') => dir = Some(PathBuf::from(d)),
            other => bail!("unexpected argument {other:?}; {usage}"),
        }
    }
    args.dir = dir.context(usage)?;
    if args.bless && args.expect.is_none() {
        bail!("--bless needs --expect FILE; {usage}");
    }
    Ok(args)
}

fn cases(args: &Args) -> Vec<Case> {
    let all = third_sweep::read_manifest(&args.dir);
    match &args.ops {
        None => all,
        Some(ops) => all.into_iter().filter(|c| ops.contains(&c.op)).collect(),
    }
}

/// Worker: runs cases from `from` on, one `BEGIN`, its `ROW`s and one `END` line each.
fn worker(args: &Args, from: usize) -> Result<()> {
    let cases = cases(args);
    let mut out = std::io::stdout().lock();
    for (i, case) in cases.iter().enumerate().skip(from) {
        writeln!(out, "BEGIN\t{i}")?;
        out.flush()?;
        for row in third_sweep::run_case(&args.dir, case, &args.modes, args.device) {
            let fields: Vec<String> = row
                .fields()
                .into_iter()
                .map(|f| f.replace(['\t', '\n'], " "))
                .collect();
            writeln!(
                out,
                "ROW\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                row.case,
                row.op,
                row.mode.name(),
                row.set.name(),
                row.k,
                row.route,
                row.outcome.label(),
                row.outcome.detail().replace(['\t', '\n'], " "),
                fields.join("\t")
            )?;
        }
        writeln!(out, "END\t{i}")?;
        out.flush()?;
    }
    Ok(())
}

/// One parsed result line (or a crash).
struct Line {
    case: String,
    op: String,
    mode: String,
    set: String,
    k: usize,
    route: String,
    /// `ok`, `wrong`, `err:<variant>`, `panic`, `n/a` or `crash`.
    label: String,
    detail: String,
    /// The expected-outcome table's fields (`third_sweep::table`).
    fields: Vec<String>,
}

impl Line {
    /// The report's bucket: `ok`, `wrong`, `refused` (the crate said no on purpose:
    /// `WrongDerivative`; or a closure that is not row-wise for the replicated strategies:
    /// `Contract`, or the op itself rejecting the stacked copies), `error`, `panic`, `n/a`,
    /// `crash`.
    fn bucket(&self) -> &'static str {
        let replicated = self
            .route
            .split(' ')
            .nth(1)
            .is_some_and(|s| s.starts_with("vectorized"));
        match self.label.as_str() {
            "ok" => "ok",
            "wrong" | "wrong-shape" | "wrong-kind" => "wrong",
            "err:WrongDerivative" => "refused",
            l if l.starts_with("err:") && replicated => "refused",
            l if l.starts_with("err:") => "error",
            "panic" => "panic",
            "n/a" => "n/a",
            _ => "crash",
        }
    }
}

fn drive(args: &Args) -> Result<Vec<Line>> {
    let cases = cases(args);
    let exe = std::env::current_exe()?;
    let mut lines = Vec::new();
    let mut from = 0;
    let started = std::time::Instant::now();
    while from < cases.len() {
        let mut child = Command::new(&exe)
            .arg(&args.dir)
            .args(&args.passthrough)
            .args(["--worker-from", &from.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut current: Option<usize> = None;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let f: Vec<&str> = line.split('\t').collect();
            match f.first().copied() {
                Some("BEGIN") => current = Some(f[1].parse()?),
                Some("END") => {
                    let done: usize = f[1].parse()?;
                    current = None;
                    from = done + 1;
                    if done.is_multiple_of(50) {
                        eprintln!(
                            "third_order_sweep: {}/{} cases, {:.0} s",
                            done + 1,
                            cases.len(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
                Some("ROW") if f.len() >= 17 => lines.push(Line {
                    case: f[1].into(),
                    op: f[2].into(),
                    mode: f[3].into(),
                    set: f[4].into(),
                    k: f[5].parse()?,
                    route: f[6].into(),
                    label: f[7].into(),
                    detail: f[8].into(),
                    fields: f[9..17].iter().map(|x| x.to_string()).collect(),
                }),
                _ => {}
            }
        }
        let status = child.wait()?;
        if let Some(i) = current {
            let case = &cases[i];
            let detail = format!("the worker died ({status})");
            lines.push(Line {
                case: case.id.clone(),
                op: case.op.clone(),
                mode: "-".into(),
                set: "-".into(),
                k: 0,
                route: "-".into(),
                label: "crash".into(),
                fields: [&case.id, "-", "-", "-", "crash", "-", "-", &detail]
                    .map(String::from)
                    .to_vec(),
                detail,
            });
            from = i + 1;
        } else if !status.success() {
            bail!("worker failed outside a case ({status})");
        }
    }
    eprintln!(
        "third_order_sweep: {} cases, {:.0} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(lines)
}

fn report(args: &Args, lines: &[Line]) -> String {
    let cases = cases(args);
    let mut s = String::new();
    let n_ops = cases.iter().map(|c| c.op.as_str()).collect::<BTreeSet<_>>();
    let n_opinfo = n_ops
        .iter()
        .filter(|o| third_sweep::rust_closure(o).is_none())
        .count();
    let n_q: usize = cases.iter().map(|c| c.quantities.len()).sum();
    let mut per_set: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &cases {
        for q in &c.quantities {
            *per_set.entry(q.set.name()).or_default() += 1;
        }
    }
    s += &format!(
        "{} cases ({} OpInfo ops and {} normalizations), {n_q} (case, quantity) pairs ({}); modes {}; device {:?}.\n\n",
        cases.len(),
        n_opinfo,
        n_ops.len() - n_opinfo,
        per_set
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        args.modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
        args.device
    );

    // Where libtorch is wrong, from the manifest.
    s += "### Where libtorch is wrong (against central differences)\n\n";
    let mut ag_bad: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut tf_bad: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut counts = BTreeMap::<(&str, &str), usize>::new();
    for c in &cases {
        for q in &c.quantities {
            *counts.entry(("autograd", q.autograd.as_str())).or_default() += 1;
            *counts.entry(("torch.func", q.tf.as_str())).or_default() += 1;
            let what = format!("{} k={}", q.set.name(), q.k);
            if q.autograd != "ok" {
                ag_bad
                    .entry(c.op.clone())
                    .or_default()
                    .push(format!("{what} ({})", q.autograd));
            }
            if q.tf != "ok" {
                tf_bad
                    .entry(c.op.clone())
                    .or_default()
                    .push(format!("{what} ({})", q.tf));
            }
        }
    }
    for tool in ["autograd", "torch.func"] {
        let c: Vec<String> = counts
            .iter()
            .filter(|((t, _), _)| *t == tool)
            .map(|((_, st), n)| format!("{st} {n}"))
            .collect();
        s += &format!("- {tool}: {}\n", c.join(", "));
    }
    s += "\n| op | PyTorch autograd (backward of the row loop's Φ) | torch.func |\n|---|---|---|\n";
    let ops: BTreeSet<&String> = ag_bad.keys().chain(tf_bad.keys()).collect();
    for op in ops {
        let cell = |m: &BTreeMap<String, Vec<String>>| {
            let mut v = m.get(op).cloned().unwrap_or_default();
            v.dedup();
            if v.is_empty() {
                "ok".to_string()
            } else {
                v.join(", ")
            }
        };
        s += &format!("| {op} | {} | {} |\n", cell(&ag_bad), cell(&tf_bad));
    }

    // The crate, per route and mode.
    s += "\n### The crate, per route and mode\n\nEach cell: wrong / error+panic of ok+wrong+error+panic (refused: the crate said no on purpose; n/a: libtorch fails to warm the module up; neither counted).\n\n| route |";
    let modes: Vec<String> = args.modes.iter().map(|m| m.name().to_string()).collect();
    let mut table: BTreeMap<(String, String), BTreeMap<String, usize>> = BTreeMap::new();
    let mut route_order: Vec<String> = Vec::new();
    for l in lines.iter().filter(|l| l.bucket() != "crash") {
        if !route_order.contains(&l.route) {
            route_order.push(l.route.clone());
        }
        *table
            .entry((l.route.clone(), l.mode.clone()))
            .or_default()
            .entry(l.bucket().to_string())
            .or_default() += 1;
    }
    for m in &modes {
        s += &format!(" {m} |");
    }
    s += "\n|---|";
    for _ in &modes {
        s += "---|";
    }
    s += "\n";
    for route in &route_order {
        s += &format!("| {route} |");
        for m in &modes {
            let c = table.get(&(route.clone(), m.clone()));
            let get = |k: &str| c.and_then(|c| c.get(k)).copied().unwrap_or(0);
            let total = get("ok") + get("wrong") + get("error") + get("panic");
            let notes: Vec<String> = [("refused", get("refused")), ("n/a", get("n/a"))]
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(what, n)| format!("{n} {what}"))
                .collect();
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            };
            if total + get("refused") + get("n/a") == 0 {
                s += " – |";
            } else {
                s += &format!(
                    " {} / {} of {total}{notes} |",
                    get("wrong"),
                    get("error") + get("panic")
                );
            }
        }
        s += "\n";
    }
    let crashes = lines.iter().filter(|l| l.bucket() == "crash").count();
    s += &format!("\nCrashes (a worker process died): {crashes}.\n");

    // The crate wrong: (op, route) pairs, one line per op.
    let mut wrong: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.bucket() == "wrong") {
        let e = wrong.entry(l.op.clone()).or_default();
        e.0.insert(l.route.clone());
        e.1.insert(format!("{} {}{}", l.mode, l.set, l.k));
    }
    let pairs: usize = wrong.values().map(|(r, _)| r.len()).sum();
    s += &format!(
        "\nThe crate wrong on {pairs} (op, route) pairs, {} ops{}\n",
        wrong.len(),
        if wrong.is_empty() { "." } else { ":" }
    );
    for (op, (routes, what)) in &wrong {
        s += &format!(
            "- {op}: {} ({})\n",
            routes.iter().cloned().collect::<Vec<_>>().join(", "),
            what.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }

    // Every bad line.
    let bad: Vec<&Line> = lines
        .iter()
        .filter(|l| !matches!(l.bucket(), "ok" | "refused" | "n/a"))
        .collect();
    if !bad.is_empty() {
        s += "\n| op | case | mode | quantity | route | outcome | detail |\n|---|---|---|---|---|---|---|\n";
        for l in bad {
            s += &format!(
                "| {} | {} | {} | {} k={} | {} | {} | {} |\n",
                l.op,
                l.case,
                l.mode,
                l.set,
                l.k,
                l.route,
                l.label,
                l.detail.replace('|', "\\|")
            );
        }
    }
    s
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !Path::new(&args.dir).join("manifest.tsv").exists() {
        bail!(
            "{} has no manifest.tsv; write the cases with bench/third_order_sweep.py --out {}",
            args.dir.display(),
            args.dir.display()
        );
    }
    if let Some(from) = args.worker_from {
        return worker(&args, from);
    }
    let lines = drive(&args)?;
    let text = report(&args, &lines);
    println!("{text}");
    if let Some(path) = &args.report {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.expect {
        let mut table = third_sweep::table();
        for l in &lines {
            table.push(l.fields.clone());
        }
        let ids: std::collections::HashSet<String> =
            cases(&args).into_iter().map(|c| c.id).collect();
        let modes: Vec<&str> = args.modes.iter().map(|m| m.name()).collect();
        let comment = "The full third-order sweep's expected outcomes (scripts/third-order-sweep with its default\n\
generator options, on the CPU): every (case, mode, quantity, route)'s outcome (ok, or\n\
err:<the Error variant>), the reroutes the crate recorded (from->to) and the ops that took\n\
libtorch's vmap fallback. Written by scripts/third-order-sweep --bless; review the diff before\n\
committing. detail (an error's first line) is not compared.";
        if let Err(e) = expect::check_or_bless(
            path,
            comment,
            &table,
            |k| ids.contains(&k[0]) && (k[1] == "-" || modes.contains(&k[1].as_str())),
            "third_order_sweep",
            args.bless,
        ) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        if !args.bless {
            eprintln!(
                "third_order_sweep: all {} rows as expected ({})",
                table.rows.len(),
                path.display()
            );
        }
    }
    Ok(())
}
