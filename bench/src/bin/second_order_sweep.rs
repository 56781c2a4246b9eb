//! The full second-order sweep: every route of the crate on every case that
//! bench/second_order_sweep.py wrote from PyTorch's OpInfo samples (scripts/second-order-sweep
//! runs both), in the eager, cold and warm modes; see tests/common/sweep.rs for what a case,
//! a route and a mode are.
//!
//!     cargo run --release -p tch-jacobian-bench --bin second_order_sweep -- DIR \
//!         [--modes eager,cold,warm] [--ops OP,OP] [--report FILE.md] [--device cpu|cuda] \
//!         [--expect FILE.tsv [--bless]]
//!
//! With `--expect`, every `(case, mode, k, route)`'s outcome (`ok`, `wrong`, `err:<the Error
//! variant>`, `panic`, `crash`, …), its reroutes and its vmap fallbacks are compared with the
//! committed FILE (bench/expected/second_order.tsv for scripts/second-order-sweep's cases), every
//! difference printed, and the exit status is 1 on any; `--bless` rewrites FILE instead (the
//! rows of the cases and modes run).
//!
//! Cases run in worker processes (this binary with `--worker-from I`), so a crash (a segfault in
//! libtorch, an abort) is counted against its case and the sweep goes on with the next one.
//! Prints the markdown report (and writes it to `--report`).
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use tch::Device;

#[path = "../../../tests/common/expect.rs"]
mod expect;
#[path = "../../../tests/common/sweep.rs"]
mod sweep;

use sweep::{Case, Mode};

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
    let usage = "usage: second_order_sweep DIR [--modes eager,cold,warm] [--ops OP,OP] [--report FILE.md] [--device cpu|cuda] [--expect FILE.tsv [--bless]]";
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
                    .map(|m| match m {
                        "eager" => Ok(Mode::Eager),
                        "cold" => Ok(Mode::Cold),
                        "warm" => Ok(Mode::Warm),
                        other => bail!("unknown mode {other:?}; eager, cold or warm"),
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
    let all = sweep::read_manifest(&args.dir);
    match &args.ops {
        None => all,
        Some(ops) => all.into_iter().filter(|c| ops.contains(&c.op)).collect(),
    }
}

/// Worker: runs cases from `from` on, one `BEGIN`, its `ROW`s and one `END` line each.
fn worker(args: &Args, from: usize) -> Result<()> {
    let cases = cases(args);
    let routes = sweep::routes();
    let mut out = std::io::stdout().lock();
    for (i, case) in cases.iter().enumerate().skip(from) {
        writeln!(out, "BEGIN\t{i}")?;
        out.flush()?;
        for row in sweep::run_case(&args.dir, case, &args.modes, &routes, args.device) {
            let fields: Vec<String> = row
                .fields()
                .into_iter()
                .map(|f| f.replace(['\t', '\n'], " "))
                .collect();
            writeln!(
                out,
                "ROW\t{}\t{}\t{}",
                row.op,
                fields.join("\t"),
                row.outcome.detail().replace(['\t', '\n'], " ")
            )?;
        }
        writeln!(out, "END\t{i}")?;
        out.flush()?;
    }
    Ok(())
}

/// One parsed result line (or a crash): the expected-outcome table's fields
/// (`sweep::table`), the op and the whole detail.
struct Line {
    op: String,
    fields: Vec<String>,
    mode: String,
    k: usize,
    route: String,
    /// `ok`, `wrong`, `err:<variant>`, `panic`, `n/a` or `crash`.
    label: String,
    detail: String,
}

impl Line {
    /// The report's bucket: `ok`, `wrong`, `refused` (the crate said no on purpose:
    /// `WrongDerivative`; or a closure that is not row-wise for the replicated strategies:
    /// `Contract`, or the op itself rejecting the stacked copies), `error`, `panic`, `n/a`,
    /// `crash`.
    fn bucket(&self) -> &'static str {
        let replicated = self.route.starts_with("closure vectorized");
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
                            "second_order_sweep: {}/{} cases, {:.0} s",
                            done + 1,
                            cases.len(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
                Some("ROW") if f.len() >= 11 => lines.push(Line {
                    op: f[1].into(),
                    fields: f[2..10].iter().map(|x| x.to_string()).collect(),
                    mode: f[3].into(),
                    k: f[4].parse()?,
                    route: f[5].into(),
                    label: f[6].into(),
                    detail: f[10].into(),
                }),
                _ => {}
            }
        }
        let status = child.wait()?;
        if let Some(i) = current {
            let case = &cases[i];
            let detail = format!("the worker died ({status})");
            lines.push(Line {
                op: case.op.clone(),
                fields: [&case.id, "-", "-", "-", "crash", "-", "-", &detail]
                    .map(String::from)
                    .to_vec(),
                mode: "-".into(),
                k: 0,
                route: "-".into(),
                label: "crash".into(),
                detail,
            });
            from = i + 1;
        } else if !status.success() {
            bail!("worker failed outside a case ({status})");
        }
    }
    Ok(lines)
}

fn report(args: &Args, lines: &[Line]) -> String {
    let cases = cases(args);
    let mut s = String::new();
    let n_ops = cases
        .iter()
        .map(|c| c.op.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let n_k: usize = cases.iter().map(|c| c.wrt.len()).sum();
    s += &format!(
        "{} cases from {n_ops} OpInfo ops, {n_k} (case, Jacobian input) pairs; modes {}; device {:?}.\n\n",
        cases.len(),
        args.modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
        args.device
    );
    // Counts per route, mode and whether J is taken w.r.t. the first tensor (the input) or a
    // later one (weights, targets, …).
    let mut counts: BTreeMap<(String, String, &str), BTreeMap<String, usize>> = BTreeMap::new();
    let mut route_order: Vec<String> = Vec::new();
    for l in lines.iter().filter(|l| l.bucket() != "crash") {
        if !route_order.contains(&l.route) {
            route_order.push(l.route.clone());
        }
        let wrt = if l.k == 0 { "input" } else { "others" };
        *counts
            .entry((l.route.clone(), l.mode.clone(), wrt))
            .or_default()
            .entry(l.bucket().to_string())
            .or_default() += 1;
    }
    let columns: Vec<(String, &str)> = args
        .modes
        .iter()
        .flat_map(|m| {
            [
                (m.name().to_string(), "input"),
                (m.name().to_string(), "others"),
            ]
        })
        .collect();
    s += "Each cell: wrong / error+panic of ok+wrong+error+panic (refused: the crate said no on purpose; n/a: libtorch itself fails to warm the module up; neither counted). `input`: J with respect to the op's first tensor; `others`: with respect to its other tensors (weights, targets).\n\n| route |";
    for (m, w) in &columns {
        s += &format!(" {m} {w} |");
    }
    s += "\n|---|";
    for _ in &columns {
        s += "---|";
    }
    s += "\n";
    for route in &route_order {
        s += &format!("| {route} |");
        for (m, w) in &columns {
            let c = counts.get(&(route.clone(), m.clone(), *w));
            let get = |k: &str| c.and_then(|c| c.get(k)).copied().unwrap_or(0);
            let total = get("ok") + get("wrong") + get("error") + get("panic");
            let notes: Vec<String> = [("refused", get("refused")), ("n/a", get("n/a"))]
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(what, n)| format!("{n} {what}"))
                .collect();
            let refused = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            };
            s += &format!(
                " {} / {} of {total}{refused} |",
                get("wrong"),
                get("error") + get("panic")
            );
        }
        s += "\n";
    }
    let crashes = lines.iter().filter(|l| l.bucket() == "crash").count();
    s += &format!("\nCrashes (a worker process died): {crashes}.\n");
    // torch.func, from the manifest.
    let tf_wrong = |warm: bool| -> Vec<String> {
        let mut ops: Vec<String> = cases
            .iter()
            .filter(|c| {
                let v = if warm { &c.tf_warm } else { &c.tf };
                v.iter().any(|t| t != "ok" && t != "-")
            })
            .map(|c| c.op.clone())
            .collect();
        ops.dedup();
        ops
    };
    let (e, w) = (tf_wrong(false), tf_wrong(true));
    s += &format!(
        "\ntorch.func (jacrev, then autograd.grad) differs from the truth or fails on {} ops eager: {}; on {} ops after warm-up: {}.\n",
        e.len(),
        e.join(", "),
        w.len(),
        w.join(", ")
    );
    // Every bad line.
    let bad: Vec<&Line> = lines
        .iter()
        .filter(|l| !matches!(l.bucket(), "ok" | "refused" | "n/a"))
        .collect();
    if !bad.is_empty() {
        s += "\n| op | case | mode | k | route | outcome | detail |\n|---|---|---|---|---|---|---|\n";
        for l in bad {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                l.op,
                l.fields[0],
                l.mode,
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
            "{} has no manifest.tsv; write the cases with bench/second_order_sweep.py --out {}",
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
        let mut table = sweep::table();
        for l in &lines {
            table.push(l.fields.clone());
        }
        let ids: std::collections::HashSet<String> =
            cases(&args).into_iter().map(|c| c.id).collect();
        let modes: Vec<&str> = args.modes.iter().map(|m| m.name()).collect();
        let comment = "The full second-order sweep's expected outcomes (scripts/second-order-sweep with its default\n\
generator options, on the CPU): every (case, mode, k, route)'s outcome (ok, or err:<the Error\n\
variant>), the reroutes the crate recorded (from->to) and the ops that took libtorch's vmap\n\
fallback. Written by scripts/second-order-sweep --bless; review the diff before committing.\n\
detail (an error's first line) is not compared.";
        if let Err(e) = expect::check_or_bless(
            path,
            comment,
            &table,
            |k| ids.contains(&k[0]) && (k[1] == "-" || modes.contains(&k[1].as_str())),
            "second_order_sweep",
            args.bless,
        ) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        if !args.bless {
            eprintln!(
                "second_order_sweep: all {} rows as expected ({})",
                table.rows.len(),
                path.display()
            );
        }
    }
    Ok(())
}
