//! One Jacobian of the notebook's `F(x) = σ(Wx)` (f32, CPU, `n = m`), for measuring a
//! strategy's peak resident memory from outside (`scripts/peak-memory` runs it under
//! `/usr/bin/time -v`).
//!
//!     cargo run --release -p tch-jacobian-bench --bin peak_memory -- STRATEGY N [CHUNK]
//!
//! `STRATEGY`: `baseline` (only `W`, `x` and `y = f(x)`: the floor every other row is compared
//! with), `closed` (`diag(y(1−y))W`), `rowloop`, `vectorized` (`CHUNK` = `none` or a number of
//! rows per pass), `forward`, `vforward` (VectorizedForward, `CHUNK` columns per pass) or `auto`,
//! all through `jacobian_of`. Prints one JSON line:
//! the strategy, `n`, the chunk, the resolved strategy for `auto`, the seconds the Jacobian took,
//! `Σ J` (so the work cannot be skipped) and, on Linux, `call_peak_kib`: the peak resident memory
//! of the call itself above the resident memory just before it (`VmHWM` after resetting it through
//! `/proc/self/clear_refs`, minus `VmRSS`) — the process peak that `/usr/bin/time` reports is
//! dominated by libtorch's start-up for small `n`.
use std::time::Instant;

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};
use tch_jacobian::{jacobian_of, sigmoid_linear_jacobian, JacobianOptions, Strategy};
use tch_jacobian_bench::{reset_peak_rss, status_kib};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: peak_memory baseline|closed|STRATEGY N [CHUNK|none]  (STRATEGY: row-loop, batched, vectorized, forward, vectorized-forward, auto)";
    let which = args.first().context(usage)?.as_str();
    let n: i64 = args.get(1).context(usage)?.parse().context("N")?;
    let chunk: Option<usize> = match args.get(2).map(String::as_str) {
        None | Some("none") | Some("None") => None,
        Some(c) => Some(c.parse().context("CHUNK")?),
    };
    let m = n;
    tch::manual_seed(0);
    let opt = (Kind::Float, Device::Cpu);
    let w = Tensor::f_randn([m, n], opt)? / (n as f64).sqrt();
    let x = Tensor::f_randn([n], opt)?;
    let f = |x: &Tensor| x.matmul(&w.tr()).sigmoid();
    let strategy = match which {
        "baseline" | "closed" => None,
        name => Some(
            name.parse::<Strategy>()
                .and_then(|s| s.with_chunk_size(chunk))
                .with_context(|| usage.to_string())?,
        ),
    };
    let _ = f(&x); // warm libtorch up before the reference point
    let rss_before = status_kib("VmRSS:");
    // "5" resets the peak resident set size (VmHWM) to the current RSS (Linux ≥ 4.0).
    let reset = reset_peak_rss();
    let t = Instant::now();
    let j = match (which, strategy) {
        ("baseline", _) => f(&x),
        ("closed", _) => sigmoid_linear_jacobian(&w, &f(&x))?,
        (_, Some(s)) => jacobian_of(f, &x, &JacobianOptions::default().strategy(s))?,
        _ => unreachable!(),
    };
    let secs = t.elapsed().as_secs_f64();
    let call_peak = match (reset, rss_before, status_kib("VmHWM:")) {
        (true, Some(a), Some(b)) => (b.saturating_sub(a)).to_string(),
        _ => "null".to_string(),
    };
    let resolved = strategy.map(|s| s.resolve(m as usize, n as usize, true).to_string());
    println!(
        "{{\"strategy\": \"{which}\", \"n\": {n}, \"chunk\": {}, \"resolved\": {}, \"seconds\": {secs:.3}, \"call_peak_kib\": {call_peak}, \"sum\": {}}}",
        chunk.map_or("null".to_string(), |c| c.to_string()),
        resolved.map_or("null".to_string(), |r| format!("\"{r}\"")),
        j.f_sum(Kind::Double)?.f_double_value(&[])?
    );
    Ok(())
}
