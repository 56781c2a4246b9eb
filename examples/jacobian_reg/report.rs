//! The results: one record per (model, estimator, seed), its JSON line, and the stdout tables
//! (means over the seeds).
use super::*;

/// One trained and evaluated network.
pub(crate) struct Record {
    pub(crate) model: ModelKind,
    pub(crate) estimator: EstimatorArg,
    pub(crate) seed: i64,
    pub(crate) ms_per_epoch_mean: f64,
    pub(crate) ms_per_epoch_min: f64,
    pub(crate) eval: Eval,
}

/// The run-wide fields of the JSON lines.
pub(crate) struct RunInfo {
    pub(crate) epochs: usize,
    pub(crate) threads: i32,
    pub(crate) device: String,
}

/// `"cpu"` or `"cuda:N"`.
pub(crate) fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    }
}

/// `{"0.1": acc, ...}`: keys the grid values formatted with `{}`, in grid order.
struct Grid<'a>(&'a [(f64, f64)]);

impl serde::Serialize for Grid<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k.to_string(), v)))
    }
}

/// One JSON line (the spec's schema, keys in this order); NaN and ±∞, which JSON has no
/// spelling for, are written as `null` by serde_json.
#[derive(serde::Serialize)]
struct Line<'a> {
    #[serde(rename = "impl")]
    implementation: &'a str,
    model: &'a str,
    estimator: &'a str,
    seed: i64,
    epochs: usize,
    threads: i32,
    device: &'a str,
    ms_per_epoch_mean: f64,
    ms_per_epoch_min: f64,
    clean_acc: f64,
    mean_jf: f64,
    noise: Grid<'a>,
    fgsm: Grid<'a>,
    pgd: Grid<'a>,
}

/// The record as one line of JSON (the spec's schema).
pub(crate) fn json_line(r: &Record, info: &RunInfo) -> String {
    let line = Line {
        implementation: "tch-jacobian",
        model: r.model.name(),
        estimator: r.estimator.name(),
        seed: r.seed,
        epochs: info.epochs,
        threads: info.threads,
        device: &info.device,
        ms_per_epoch_mean: r.ms_per_epoch_mean,
        ms_per_epoch_min: r.ms_per_epoch_min,
        clean_acc: r.eval.clean_acc,
        mean_jf: r.eval.mean_jf,
        noise: Grid(&r.eval.noise),
        fgsm: Grid(&r.eval.fgsm),
        pgd: Grid(&r.eval.pgd),
    };
    serde_json::to_string(&line).expect("a struct of strings and numbers serializes")
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n as f64
}

/// Picks one grid (noise, FGSM or PGD) of an evaluation.
pub(crate) type Pick = fn(&Eval) -> &Vec<(f64, f64)>;

/// Element-wise mean over the records of one grid (`pick`), as `(key, mean accuracy)`.
pub(crate) fn mean_grid(rs: &[&Record], pick: Pick) -> Vec<(f64, f64)> {
    let Some(first) = rs.first() else {
        return Vec::new();
    };
    pick(&first.eval)
        .iter()
        .enumerate()
        .map(|(i, &(k, _))| (k, mean(rs.iter().map(|r| pick(&r.eval)[i].1))))
        .collect()
}

/// The records of one model and estimator.
pub(crate) fn select(records: &[Record], model: ModelKind, est: EstimatorArg) -> Vec<&Record> {
    records
        .iter()
        .filter(|r| r.model == model && r.estimator == est)
        .collect()
}

/// The tables of one model: training time, clean accuracy and ‖J‖_F; then accuracy under noise,
/// FGSM and PGD per grid value. Means over the seeds.
pub(crate) fn print_tables(
    records: &[Record],
    model: ModelKind,
    estimators: &[EstimatorArg],
    n_seeds: usize,
    pgd_steps: usize,
) {
    let rows: Vec<(EstimatorArg, Vec<&Record>)> = estimators
        .iter()
        .map(|&e| (e, select(records, model, e)))
        .filter(|(_, rs)| !rs.is_empty())
        .collect();
    if rows.is_empty() {
        return;
    }
    let seeds = if n_seeds == 1 {
        "1 seed".to_string()
    } else {
        format!("means over {n_seeds} seeds")
    };
    println!("\n{} ({seeds})", model.name());
    println!(
        "{:<12} {:>14} {:>12} {:>10} {:>12}",
        "estimator", "ms/epoch mean", "ms/epoch min", "clean acc", "mean ‖J‖_F"
    );
    for (e, rs) in &rows {
        println!(
            "{:<12} {:>14.1} {:>12.1} {:>10.4} {:>12.3}",
            e.name(),
            mean(rs.iter().map(|r| r.ms_per_epoch_mean)),
            mean(rs.iter().map(|r| r.ms_per_epoch_min)),
            mean(rs.iter().map(|r| r.eval.clean_acc)),
            mean(rs.iter().map(|r| r.eval.mean_jf)),
        );
    }
    let grids: [(String, Pick); 3] = [
        ("Gaussian noise σ".to_string(), |e| &e.noise),
        ("FGSM ε".to_string(), |e| &e.fgsm),
        (format!("PGD-{pgd_steps} ε"), |e| &e.pgd),
    ];
    for (title, pick) in grids {
        let keys = mean_grid(&rows[0].1, pick);
        if keys.is_empty() {
            continue;
        }
        let head: String = keys.iter().map(|(k, _)| format!("{:>7}", k)).collect();
        println!("{:<12}{head}   ← accuracy under {title}", "");
        for (e, rs) in &rows {
            let cells: String = mean_grid(rs, pick)
                .iter()
                .map(|(_, a)| format!("{a:>7.3}"))
                .collect();
            println!("{:<12}{cells}", e.name());
        }
    }
}
