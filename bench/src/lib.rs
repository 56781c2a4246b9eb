//! Shared by the measuring tools (`src/bin/*`) and the Criterion benches (`benches/*`): the one
//! timer, the device from the command line or the environment, and the clock-stopping sync.
use std::time::Instant;

use tch::{Device, Tensor};

/// u of the Laplacian benchmarks' MLPs, row-wise (`[..., d] -> [...]`), as compare_pytorch.py's
/// `mlp_u`: `h = h·W_iᵀ + b_i` per layer, tanh between layers, a linear output; `params` is
/// `[W1, b1, W2, b2, …]`. Each pre-activation is dropped as its tanh is taken (a layer loop), so
/// collapsed Taylor mode may write the tanh's coefficients over it.
pub fn tanh_mlp(params: &[Tensor]) -> impl Fn(&Tensor) -> Tensor + Copy + '_ {
    let layers = params.len() / 2;
    move |v: &Tensor| {
        let mut h = v.shallow_clone();
        for i in 0..layers {
            h = h.matmul(&params[2 * i].tr()) + &params[2 * i + 1];
            if i + 1 < layers {
                h = h.tanh();
            }
        }
        h.squeeze_dim(-1)
    }
}

/// Waits for the device's queued work, so that a timer stopped afterwards measures it.
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// `TCH_JACOBIAN_BENCH_DEVICE` (`cpu`, `cuda`, `cuda:N`, `auto`; default `cpu`), for the
/// Criterion benches, which take no arguments of their own; panics with the reason when that
/// device is not there.
pub fn env_device() -> Device {
    let name = std::env::var("TCH_JACOBIAN_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    tch_jacobian::device::parse_device(&name.to_ascii_lowercase())
        .unwrap_or_else(|e| panic!("TCH_JACOBIAN_BENCH_DEVICE={name}: {e}"))
}

/// The timing rule shared with `compare_pytorch.py`: one call (a case whose first call takes
/// longer than `skip_over_s` is not repeated), a warm-up of up to three calls (at most a tenth of
/// the budget), then repetitions until `budget_s` has passed and at least `min_reps` ran (at most
/// `max_reps`); the median. A CUDA `device` is synchronized before each clock read.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub budget_s: f64,
    pub min_reps: usize,
    pub max_reps: usize,
    pub skip_over_s: f64,
    pub device: Device,
}

/// What [`measure`] found.
#[derive(Clone, Copy, Debug)]
pub enum Timing {
    /// The median of `reps` calls, in milliseconds.
    Done { median_ms: f64, reps: usize },
    /// The first call took `first_s` seconds, over the rule's `skip_over_s`.
    Skipped { first_s: f64 },
}

impl Timing {
    /// The median, or the one call's time, in milliseconds.
    pub fn ms(&self) -> f64 {
        match *self {
            Timing::Done { median_ms, .. } => median_ms,
            Timing::Skipped { first_s } => first_s * 1e3,
        }
    }
    /// Calls timed (1 when skipped).
    pub fn reps(&self) -> usize {
        match *self {
            Timing::Done { reps, .. } => reps,
            Timing::Skipped { .. } => 1,
        }
    }
}

/// Median of `v` (not empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let k = v.len();
    if k % 2 == 1 {
        v[k / 2]
    } else {
        0.5 * (v[k / 2 - 1] + v[k / 2])
    }
}

/// Times `f` by `rule`; returns the timing and the result of the first call.
pub fn measure<T, E>(rule: Rule, mut f: impl FnMut() -> Result<T, E>) -> Result<(Timing, T), E> {
    sync(rule.device);
    let t0 = Instant::now();
    let first = f()?;
    sync(rule.device);
    let first_s = t0.elapsed().as_secs_f64();
    if first_s > rule.skip_over_s {
        return Ok((Timing::Skipped { first_s }, first));
    }
    let warm = Instant::now();
    for _ in 0..3 {
        if warm.elapsed().as_secs_f64() > 0.1 * rule.budget_s {
            break;
        }
        drop(f()?);
    }
    sync(rule.device);
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < rule.max_reps
        && (times.len() < rule.min_reps || start.elapsed().as_secs_f64() < rule.budget_s)
    {
        let t = Instant::now();
        let r = f()?;
        sync(rule.device);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        drop(r);
    }
    let reps = times.len();
    Ok((
        Timing::Done {
            median_ms: median(times),
            reps,
        },
        first,
    ))
}

/// A `kB` field of `/proc/self/status` (`VmRSS:`, `VmHWM:`), in KiB; None where unavailable.
pub fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the process's peak resident set size (`VmHWM`) to the current one, by writing "5" to
/// `/proc/self/clear_refs` (Linux ≥ 4.0); false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
