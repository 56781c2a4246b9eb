//! The Laplacian of a tanh MLP against its GEMMs, in one process: `laplacian_of` (Auto, collapsed
//! Taylor mode, `check_independence(false)` after a first checked call), optionally with the PINN
//! loss mean(Δu²) and its backward, then `matmul` alone on the stacked shapes collapsed Taylor
//! mode multiplies (per layer, `(D + 2)·B` rows: value, D first-order, one second-order; `2·B` at
//! the first layer, whose first-order rows are the batch-broadcast directions). The ratio of the
//! two is docs/benchmarks.md's "against its GEMMs" check, free of the GEMM rate's drift between
//! runs on a shared machine. Weights are random (PyTorch's `nn.Linear` scale), x ~ N(0, 1), f32.
//!
//!     cargo run --release -p tch-jacobian-bench --bin lap_gemm -- [WIDTHS [B [SECONDS [loss]]]]
//!
//! WIDTHS defaults to the collapsed-Taylor-mode paper's MLP 50,768,768,512,512,1 and B to 64;
//! the two are timed call by call, alternating, for SECONDS (default 3). Threads:
//! `TCH_JACOBIAN_THREADS` (default 2). Prints each one's median and minimum and the median of the
//! per-pair ratios. With `loss` the GEMMs are the forward products and the backward's two per
//! layer, as autograd runs them: the input's gradient `G·W` (not at the first layer, whose input
//! needs none) and the weight's `Gᵀ·A`, with G of the output's stacked shape.
//! `LAP_GEMM_ONLY=ours` (or `gemms`) runs one side alone, for a `perf record` of it; only that
//! side's times are printed.
use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};
use tch_jacobian::{laplacian_of, JacobianOptions};
use tch_jacobian_bench::tanh_mlp;

/// Times `a` and `b` alternately, call by call, for `secs` seconds (at least 5 pairs) after one
/// warm-up call each: their medians and minima in ms, and the median of the per-pair ratios a/b.
fn alternate(
    secs: f64,
    mut a: impl FnMut() -> Result<()>,
    mut b: impl FnMut() -> Result<()>,
) -> Result<([f64; 2], [f64; 2], f64)> {
    a()?;
    b()?;
    let (mut ta, mut tb, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let start = std::time::Instant::now();
    while start.elapsed().as_secs_f64() < secs || ta.len() < 5 {
        let t = std::time::Instant::now();
        a()?;
        let ms_a = t.elapsed().as_secs_f64() * 1e3;
        let t = std::time::Instant::now();
        b()?;
        let ms_b = t.elapsed().as_secs_f64() * 1e3;
        ta.push(ms_a);
        tb.push(ms_b);
        ratio.push(ms_a / ms_b);
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        [v[v.len() / 2], v[0]]
    };
    let r = stats(&mut ratio)[0];
    Ok((stats(&mut ta), stats(&mut tb), r))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let widths: Vec<i64> = args
        .first()
        .map_or("50,768,768,512,512,1", String::as_str)
        .split(',')
        .map(|w| w.parse().context("WIDTHS: comma-separated integers"))
        .collect::<Result<_>>()?;
    let b: i64 = args.get(1).map_or(Ok(64), |s| s.parse())?;
    let secs: f64 = args.get(2).map_or(Ok(3.0), |s| s.parse())?;
    let loss = args.get(3).is_some_and(|s| s == "loss");
    let threads = std::env::var("TCH_JACOBIAN_THREADS").map_or(Ok(2), |s| s.parse())?;
    let only = std::env::var("LAP_GEMM_ONLY").unwrap_or_default();
    anyhow::ensure!(
        ["", "ours", "gemms"].contains(&only.as_str()),
        "LAP_GEMM_ONLY: ours or gemms, not {only:?}"
    );
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let f32 = (Kind::Float, Device::Cpu);
    let mut params = Vec::new();
    for w in widths.windows(2) {
        let scale = 1.0 / (w[0] as f64).sqrt();
        params.push((Tensor::f_rand([w[1], w[0]], f32)? * 2.0 - 1.0) * scale);
        params.push((Tensor::f_rand([w[1]], f32)? * 2.0 - 1.0) * scale);
    }
    for p in params.iter_mut() {
        *p = p.set_requires_grad(loss);
    }
    let x = Tensor::f_randn([b, widths[0]], f32)?;
    let u = tanh_mlp(&params);
    let opts = JacobianOptions::default().create_graph(loss);
    let _ = laplacian_of(u, &x, &opts)?; // the first call, checked
    let opts = opts.check_independence(false);
    let d = widths[0];
    // per layer: the stacked input A [rows, in], the weights W [out, in], and (loss) the output's
    // gradient G [rows, out]
    let mut products = Vec::new();
    for (i, w) in widths.windows(2).enumerate() {
        let rows = if i == 0 { 2 * b } else { (d + 2) * b };
        let g = Tensor::f_randn([rows, w[1]], f32)?;
        products.push((
            Tensor::f_randn([rows, w[0]], f32)?,
            params[2 * i].detach(),
            g,
        ));
    }
    let (ours, gemms, ratio) = alternate(
        secs,
        || {
            if only == "gemms" {
                return Ok(());
            }
            let lap = laplacian_of(u, &x, &opts)?;
            if loss {
                lap.f_square()?.f_mean(Kind::Float)?.f_backward()?;
                for p in &params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.f_zero_()?;
                    }
                }
            }
            Ok(())
        },
        || {
            if only == "ours" {
                return Ok(());
            }
            for (i, (a, w, g)) in products.iter().enumerate() {
                let _ = a.f_matmul(&w.tr())?;
                if loss {
                    if i > 0 {
                        let _ = g.f_matmul(w)?;
                    }
                    let _ = g.tr().f_matmul(a)?;
                }
            }
            Ok(())
        },
    )?;
    let work = if loss { "loss + backward" } else { "Δu" };
    let how = if only.is_empty() {
        "calls alternating"
    } else {
        "one side alone"
    };
    println!("widths {widths:?}, B = {b}, {threads} threads, f32, {how}");
    if only != "gemms" {
        println!(
            "ours ({work}): median {:.3} ms, min {:.3} ms",
            ours[0], ours[1]
        );
    }
    let which = if loss {
        "the forward and backward products"
    } else {
        "the forward products"
    };
    if only != "ours" {
        println!(
            "GEMMs ({which}): median {:.3} ms, min {:.3} ms",
            gemms[0], gemms[1]
        );
    }
    if !only.is_empty() {
        return Ok(());
    }
    println!(
        "ours / GEMMs: {ratio:.3} (median of the per-pair ratios), {:.3} (minima)",
        ours[1] / gemms[1]
    );
    Ok(())
}
