//! Training an MLP by Levenberg–Marquardt ([`ModelFit`]) against Adam at equal wall time.
//!
//! Data: `y = sin(3x)·exp(−x²/4)` on 2000 evenly spaced points of `x ∈ [−3, 3]`, f32, CPU.
//!
//! 1. A 1 → 32 → 32 → 1 tanh MLP (1153 parameters): LM (the dense solver: `J` is
//!    2000 × 1153 × 4 B ≈ 9 MB) to the target MSE `1e-4`, then `nn::Adam` from the same
//!    initial weights for the same wall time, at three learning rates.
//! 2. A 1 → 256 → 256 → 256 → 1 MLP (132 353 parameters): `J` would be 2000 × 132 353 × 4 B
//!    ≈ 1.06 GB, so `LinearSolver::Auto` runs the matrix-free solver; its loss against Adam's at
//!    equal wall time, and its peak memory (VmHWM reset through /proc/self/clear_refs).
//!
//! The data and the small model's initial weights are written to `target/fit_mlp/*.npy` for
//! `bench/fit_mlp.py` (pypose's LM, torch's Adam and LBFGS from the same start).
//!
//! `cargo run --release --example fit_mlp` (`FIT_MLP_WIDE_SECONDS`, default 60, sets part 2's
//! time; `FIT_MLP_THREADS`, default 2, torch's threads).

#[path = "common/peak_memory.rs"]
mod peak_memory;

use std::time::Instant;

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_jacobian::least_squares::{FitOptions, LinearSolver, ModelFit};

const TARGET_MSE: f64 = 1e-4;
const M: i64 = 2000;

fn data() -> (Tensor, Tensor) {
    let x = Tensor::linspace(-3.0, 3.0, M, (Kind::Float, Device::Cpu)).view([M, 1]);
    let y = ((&x * 3.0).sin() * (-x.square() / 4.0).exp()).view([M]);
    (x, y)
}

/// A tanh MLP `widths[0] → … → widths[last]`, layers named `l0`, `l1`, ….
fn mlp(vs: &nn::VarStore, widths: &[i64]) -> nn::Sequential {
    let mut seq = nn::seq();
    let layers = widths.len() - 1;
    for i in 0..layers {
        seq = seq.add(nn::linear(
            vs.root() / format!("l{i}"),
            widths[i],
            widths[i + 1],
            Default::default(),
        ));
        if i + 1 < layers {
            seq = seq.add_fn(|t| t.tanh());
        }
    }
    seq
}

fn mse(net: &nn::Sequential, x: &Tensor, y: &Tensor) -> f64 {
    tch::no_grad(|| {
        (net.forward(x).view([-1]) - y)
            .square()
            .mean(Kind::Double)
            .double_value(&[])
    })
}

struct Run {
    steps: usize,
    seconds: f64,
    mse: f64,
    to_target: Option<(usize, f64)>,
}

/// LM until the target MSE, `max_steps` or `max_seconds`.
#[allow(clippy::too_many_arguments)]
fn run_lm(
    vs: &nn::VarStore,
    net: &nn::Sequential,
    x: &Tensor,
    y: &Tensor,
    opts: &FitOptions,
    max_steps: usize,
    max_seconds: f64,
    verbose: bool,
) -> Result<(Run, ModelFit, Option<LinearSolver>), tch_jacobian::Error> {
    let mut lm = ModelFit::new(vs, opts)?;
    let t0 = Instant::now();
    let (mut steps, mut to_target, mut solver) = (0, None, None);
    let mut mse_now = mse(net, x, y);
    while steps < max_steps && t0.elapsed().as_secs_f64() < max_seconds {
        let s = lm.step(|| net.forward(x).view([-1]) - y)?;
        steps += 1;
        solver = Some(s.linear_solver);
        mse_now = 2.0 * s.loss / M as f64;
        if verbose && (steps <= 3 || steps % 10 == 0) {
            println!(
                "    step {steps:>4}: mse {mse_now:.3e}  μ {:.1e}  accepted {}  trials {}  {} (cg {})  {:.2} s",
                s.damping,
                s.accepted,
                s.trials,
                s.linear_solver,
                s.cg_iterations,
                t0.elapsed().as_secs_f64()
            );
        }
        if to_target.is_none() && mse_now <= TARGET_MSE {
            to_target = Some((steps, t0.elapsed().as_secs_f64()));
            break;
        }
    }
    let run = Run {
        steps,
        seconds: t0.elapsed().as_secs_f64(),
        mse: mse_now,
        to_target,
    };
    Ok((run, lm, solver))
}

/// Adam (full batch) for `seconds` of wall time.
fn run_adam(
    vs: &nn::VarStore,
    net: &nn::Sequential,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
    seconds: f64,
) -> Result<Run, tch::TchError> {
    let mut opt = nn::Adam::default().build(vs, lr)?;
    let t0 = Instant::now();
    let (mut steps, mut to_target, mut last) = (0, None, f64::INFINITY);
    while t0.elapsed().as_secs_f64() < seconds {
        let loss = (net.forward(x).view([-1]) - y).square().mean(Kind::Float);
        opt.backward_step(&loss);
        steps += 1;
        last = loss.double_value(&[]);
        if to_target.is_none() && last <= TARGET_MSE {
            to_target = Some((steps, t0.elapsed().as_secs_f64()));
        }
    }
    let _ = last;
    Ok(Run {
        steps,
        seconds: t0.elapsed().as_secs_f64(),
        mse: mse(net, x, y),
        to_target,
    })
}

fn fresh_copy(
    init: &nn::VarStore,
    widths: &[i64],
) -> Result<(nn::VarStore, nn::Sequential), tch::TchError> {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs, widths);
    vs.copy(init)?;
    Ok((vs, net))
}

fn target(r: &Run) -> String {
    match r.to_target {
        Some((s, t)) => format!("reached in {s} steps, {t:.2} s"),
        None => "not reached".into(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: i32 = std::env::var("FIT_MLP_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let wide_seconds: f64 = std::env::var("FIT_MLP_WIDE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0);
    let (x, y) = data();
    println!(
        "fit_mlp: y = sin(3x)·exp(−x²/4), {M} points on [−3, 3], f32, CPU, {threads} threads, target MSE {TARGET_MSE:e}"
    );

    // 1. The small MLP: LM (dense) vs Adam.
    let small = [1, 32, 32, 1];
    tch::manual_seed(0);
    let init = nn::VarStore::new(Device::Cpu);
    let _ = mlp(&init, &small);
    let out = std::path::Path::new("target/fit_mlp");
    std::fs::create_dir_all(out)?;
    x.write_npy(out.join("x.npy"))?;
    y.write_npy(out.join("y.npy"))?;
    for (name, t) in init.variables() {
        t.write_npy(out.join(format!("{name}.npy")))?;
    }
    let (vs, net) = fresh_copy(&init, &small)?;
    let n =
        tch_jacobian::least_squares::ModelFit::new(&vs, &FitOptions::default())?.parameter_count();
    println!(
        "\n1. MLP 1→32→32→1 (tanh), {n} parameters, initial MSE {:.3e}",
        mse(&net, &x, &y)
    );
    println!("  Levenberg–Marquardt (ModelFit, LinearSolver::Auto):");
    let (lm, _, solver) = run_lm(&vs, &net, &x, &y, &FitOptions::default(), 1000, 300.0, true)?;
    println!(
        "  LM: {} steps, {:.2} s, final MSE {:.3e} ({}; solver {})",
        lm.steps,
        lm.seconds,
        lm.mse,
        target(&lm),
        solver.map(|s| s.to_string()).unwrap_or_default()
    );
    for lr in [1e-3, 3e-3, 1e-2] {
        let (vs, net) = fresh_copy(&init, &small)?;
        let a = run_adam(&vs, &net, &x, &y, lr, lm.seconds)?;
        println!(
            "  Adam lr {lr:e}: {} steps in {:.2} s (LM's time), MSE {:.3e} ({}); ratio MSE Adam/LM {:.1}",
            a.steps,
            a.seconds,
            a.mse,
            target(&a),
            a.mse / lm.mse
        );
    }

    // 2. The wide MLP: matrix-free LM vs Adam at equal wall time, and peak memory.
    let wide = [1, 256, 256, 256, 1];
    tch::manual_seed(1);
    let init = nn::VarStore::new(Device::Cpu);
    let _ = mlp(&init, &wide);
    let (vs, net) = fresh_copy(&init, &wide)?;
    let fit = ModelFit::new(&vs, &FitOptions::default())?;
    let n = fit.parameter_count();
    let dense_bytes = (M as f64) * (n as f64) * 4.0;
    println!(
        "\n2. MLP 1→256→256→256→1 (tanh), {n} parameters, initial MSE {:.3e}; dense J would be {M} × {n} × 4 B = {:.0} MiB; Auto picks {}",
        mse(&net, &x, &y),
        dense_bytes / (1 << 20) as f64,
        fit.resolve_linear_solver(M as usize)
    );
    drop(fit);
    let (run, peak) = peak_memory::measure(|| {
        run_lm(
            &vs,
            &net,
            &x,
            &y,
            &FitOptions::default(),
            100_000,
            wide_seconds,
            true,
        )
    });
    let (lm, _, solver) = run?;
    println!(
        "  LM: {} steps, {:.2} s, final MSE {:.3e} ({}; solver {})",
        lm.steps,
        lm.seconds,
        lm.mse,
        target(&lm),
        solver.map(|s| s.to_string()).unwrap_or_default()
    );
    if let Some(p) = peak {
        let above = p.above() as f64 / 1024.0;
        println!(
            "  peak memory of the LM run above the resident memory before it: {above:.1} MiB (VmHWM {:.1} MiB, VmRSS before {:.1} MiB) = {:.3} × the dense J",
            p.hwm as f64 / 1024.0,
            p.rss_before as f64 / 1024.0,
            above * (1 << 20) as f64 / dense_bytes
        );
    } else {
        println!("  (VmHWM could not be reset: peak memory not measured)");
    }
    for lr in [1e-3, 3e-3] {
        let (vs, net) = fresh_copy(&init, &wide)?;
        let a = run_adam(&vs, &net, &x, &y, lr, lm.seconds)?;
        println!(
            "  Adam lr {lr:e}: {} steps in {:.2} s (LM's time), MSE {:.3e} ({}); ratio MSE Adam/LM {:.2}",
            a.steps,
            a.seconds,
            a.mse,
            target(&a),
            a.mse / lm.mse
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few LM steps on the small MLP, dense and matrix-free, cut the MSE by 10×.
    #[test]
    fn lm_steps_reduce_the_mse() {
        let (x, y) = data();
        for solver in [LinearSolver::Dense, LinearSolver::MatrixFree] {
            tch::manual_seed(0);
            let vs = nn::VarStore::new(Device::Cpu);
            let net = mlp(&vs, &[1, 8, 8, 1]);
            let before = mse(&net, &x, &y);
            let opts = FitOptions::default().linear_solver(solver);
            let (run, _, used) = run_lm(&vs, &net, &x, &y, &opts, 15, 60.0, false).unwrap();
            assert_eq!(used, Some(solver));
            assert!(
                run.mse < before / 10.0,
                "{solver}: {before:e} → {:e}",
                run.mse
            );
        }
    }
}
