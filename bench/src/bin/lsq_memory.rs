//! Peak memory and time of one `least_squares` solve, dense against matrix-free, on the
//! Broyden tridiagonal problem (MGH 30) at large `n`: `r_i = (3 − 2x_i) x_i − x_{i−1} − 2x_{i+1} + 1`
//! (`x_0 = x_{n+1} = 0`), `m = n`, from `x = −1`, f64, CPU, B problems. Its `J` is tridiagonal,
//! but the dense solver stores all `B·n²` entries; the matrix-free one never forms it.
//!
//!     cargo run --release -p tch-jacobian-bench --bin lsq_memory -- dense|matrix-free|auto N [B] [dense-a]
//!
//! With `dense-a` the problem is `r = tanh(A x) + 0.1 A x³ − y` instead, `A` random `[2n, n]`
//! (a dense `J`; `A` itself is as large as `J`, so that row is for the time).
//!
//! Prints one JSON line: the solver asked for and the one that ran, `n`, `B`, `J`'s bytes, the
//! seconds, the final cost, iterations, status, and `call_peak_kib` — the peak resident memory of
//! the solve above the resident memory just before it (`VmHWM` reset through
//! `/proc/self/clear_refs`, Linux).
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};
use tch_jacobian::least_squares::LinearSolver;
use tch_jacobian::{least_squares, LeastSquaresOptions};
use tch_jacobian_bench::{reset_peak_rss, status_kib};

fn broyden_tridiagonal(x: &Tensor) -> Tensor {
    let n = x.size()[1];
    let zero = x.zeros_like().narrow(1, 0, 1);
    let left = Tensor::cat(&[&zero, &x.narrow(1, 0, n - 1)], 1);
    let right = Tensor::cat(&[&x.narrow(1, 1, n - 1), &zero], 1);
    (3.0 - x * 2.0) * x - left - right * 2.0 + 1.0
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: lsq_memory dense|matrix-free|auto N [B] [dense-a]";
    let solver = match args.first().context(usage)?.as_str() {
        "dense" => LinearSolver::Dense,
        "matrix-free" => LinearSolver::MatrixFree,
        "auto" => LinearSolver::Auto,
        other => bail!("{other}: {usage}"),
    };
    let n: i64 = args.get(1).context(usage)?.parse().context("N")?;
    let b: i64 = args.get(2).map_or(Ok(1), |s| s.parse()).context("B")?;
    let dense_a = args.get(3).map(String::as_str) == Some("dense-a");
    let opt = (Kind::Double, Device::Cpu);
    // "dense-a": r = tanh(A x) + 0.1 A x³ − y with a random A [2n, n] (a dense, less well
    // conditioned J; A itself takes J's memory, so only its time is of interest)
    tch::manual_seed(3);
    let a = Tensor::f_randn([2 * n, n], opt)? / (n as f64).sqrt();
    let f = |x: &Tensor| x.matmul(&a.tr()).tanh() + x.pow_tensor_scalar(3).matmul(&a.tr()) * 0.1;
    let y = f(&Tensor::f_randn([b, n], opt)?) + Tensor::f_randn([b, 2 * n], opt)? * 0.01;
    let residual = |x: &Tensor| {
        if dense_a {
            f(x) - &y
        } else {
            broyden_tridiagonal(x)
        }
    };
    let x0 = if dense_a {
        Tensor::f_zeros([b, n], opt)?
    } else {
        Tensor::f_full([b, n], -1.0, opt)?
    };
    let _ = residual(&x0); // warm libtorch up before the reference point
    let opts = LeastSquaresOptions::default().linear_solver(solver);
    let rss_before = status_kib("VmRSS:");
    let reset = reset_peak_rss();
    let t = Instant::now();
    let out = least_squares(residual, &x0, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    let call_peak = match (reset, rss_before, status_kib("VmHWM:")) {
        (true, Some(a), Some(p)) => (p.saturating_sub(a)).to_string(),
        _ => "null".to_string(),
    };
    println!(
        "{{\"asked\": \"{solver}\", \"ran\": \"{}\", \"n\": {n}, \"B\": {b}, \"j_bytes\": {}, \"seconds\": {secs:.3}, \"max_cost\": {:e}, \"iterations\": {}, \"status\": \"{:?}\", \"call_peak_kib\": {call_peak}}}",
        out.linear_solver,
        b * if dense_a { 2 * n } else { n } * n * 8,
        out.cost.f_max()?.f_double_value(&[])?,
        out.iterations.iter().max().copied().unwrap_or(0),
        out.status[0],
    );
    Ok(())
}
