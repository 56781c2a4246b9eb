//! Criterion benchmark of the contractive penalty's three estimators.
//!
//!     cargo bench -p tch-jacobian-bench --bench penalty                                   # CPU, f32, ~30 s
//!     TCH_JACOBIAN_BENCH_DEVICE=cuda cargo bench -p tch-jacobian-bench --bench penalty    # on GPU 0
//!     cargo bench -p tch-jacobian-bench --bench penalty -- closed_form                    # a filter
//!
//! Setting: a `784 → 256` sigmoid encoder `h = σ(x Wᵀ + b)`, a batch of 128, f32. One timed call
//! is what a training step spends on the penalty: the encoder's forward pass,
//! `jacobian_penalty(h, x, &PenaltyOptions::default().estimator(estimator))` and its backward pass to `W` and `b`
//! (`Tensor::run_backward` onto `[W, b]`, so no gradient is accumulated into `x`):
//!
//! * `exact`: [`PenaltyEstimator::Exact`], 256 create_graph backward passes;
//! * `closed_form`: [`PenaltyEstimator::SigmoidClosedForm`], no backward pass inside the penalty;
//! * `projections_k1`, `projections_k4`: [`PenaltyEstimator::Projections`] with `k` = 1, 4 (directions
//!   from torch's generator, as in training).
//!
//! The thread count is libtorch's default (printed at the start). On CUDA the clock stops after
//! `tch::Cuda::synchronize`. At the end it prints the medians and the ratios
//! exact / closed form and exact / projections, read back from Criterion's `estimates.json`.
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use tch::{Device, Kind, Tensor};
use tch_jacobian::{jacobian_penalty, PenaltyEstimator, PenaltyOptions};

use tch_jacobian_bench::{env_device as device, sync};

const GROUP: &str = "penalty_784x256_b128";
/// Batch, inputs, hidden units.
const B: i64 = 128;
const N: i64 = 784;
const M: i64 = 256;

/// The encoder's parameters and a batch.
struct Setup {
    w: Tensor,
    b: Tensor,
    x: Tensor,
}

impl Setup {
    fn new(dev: Device) -> Setup {
        let opt = (Kind::Float, dev);
        Setup {
            w: (Tensor::randn([M, N], opt) / (N as f64).sqrt()).set_requires_grad(true),
            b: (Tensor::randn([M], opt) * 0.1).set_requires_grad(true),
            x: Tensor::rand([B, N], opt),
        }
    }

    /// Forward, penalty, backward to `W` and `b`; returns the two gradients.
    fn step(&self, estimator: &PenaltyEstimator, x_needs_grad: bool) -> Vec<Tensor> {
        let x = if x_needs_grad {
            self.x.detach().set_requires_grad(true)
        } else {
            self.x.shallow_clone()
        };
        let h = (x.matmul(&self.w.tr()) + &self.b).sigmoid();
        let p = jacobian_penalty(&h, &x, &PenaltyOptions::default().estimator(estimator))
            .expect("contractive_penalty");
        Tensor::run_backward(&[p], &[&self.w, &self.b], false, false)
    }
}

/// Where Criterion writes: `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else this
/// package's `target/criterion` (set explicitly, so that the summary can read it back).
fn output_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        PathBuf::from(home)
    } else if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        Path::new(&target).join("criterion")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion")
    }
}

fn benches(c: &mut Criterion, setup: &Setup, dev: Device) {
    let mut group = c.benchmark_group(GROUP);
    group.sampling_mode(SamplingMode::Flat);
    let cases: [(&str, PenaltyEstimator, bool); 4] = [
        ("exact", PenaltyEstimator::Exact, true),
        (
            "closed_form",
            PenaltyEstimator::sigmoid_closed_form(&setup.w),
            false,
        ),
        (
            "projections_k1",
            PenaltyEstimator::Projections {
                directions: 1,
                seed: None,
            },
            true,
        ),
        (
            "projections_k4",
            PenaltyEstimator::Projections {
                directions: 4,
                seed: None,
            },
            true,
        ),
    ];
    for (id, estimator, x_needs_grad) in &cases {
        if *id == "exact" {
            // ~1 s per call on a 2-core CPU: the minimum of 10 samples, one call each.
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(12));
        } else {
            group
                .sample_size(50)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(3));
        }
        group.bench_function(*id, |bencher| {
            bencher.iter_custom(|iters| {
                sync(dev);
                let start = Instant::now();
                for _ in 0..iters {
                    drop(black_box(setup.step(estimator, *x_needs_grad)));
                }
                sync(dev);
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// Criterion's median (point estimate, ns) of `id` from this run, if it ran.
fn median_ns(dir: &Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(GROUP).join(id).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn format_time(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

fn summary(dir: &Path, started: std::time::SystemTime) {
    // Only results written by this run (a filter may have skipped some).
    let fresh = |id: &str| -> Option<f64> {
        let path = dir.join(GROUP).join(id).join("new/estimates.json");
        let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
        if modified < started {
            return None;
        }
        median_ns(dir, id)
    };
    let ids = ["exact", "closed_form", "projections_k1", "projections_k4"];
    let medians: Vec<(&str, Option<f64>)> = ids.iter().map(|id| (*id, fresh(id))).collect();
    if medians.iter().all(|(_, m)| m.is_none()) {
        return;
    }
    println!("\n{GROUP}: medians (forward + penalty + backward to W, b)");
    let exact = medians[0].1;
    for (id, m) in &medians {
        let Some(m) = m else { continue };
        match exact {
            Some(e) if *id != "exact" => println!(
                "  {id:<15} {:>12}   exact / {id} = {:.1}×",
                format_time(*m),
                e / m
            ),
            _ => println!("  {id:<15} {:>12}", format_time(*m)),
        }
    }
}

fn main() {
    let dev = device();
    tch::manual_seed(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    eprintln!(
        "penalty bench: {B}×{N} → {M} sigmoid encoder, f32, device {dev:?}; CPU {cpu}, tch::get_num_threads() = {} (libtorch default), {} CPUs",
        tch::get_num_threads(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    let dir = output_dir();
    let started = std::time::SystemTime::now();
    let setup = Setup::new(dev);
    let mut c = Criterion::default()
        .nresamples(10_000)
        .output_directory(&dir)
        .configure_from_args();
    benches(&mut c, &setup, dev);
    c.final_summary();
    summary(&dir, started);
}
