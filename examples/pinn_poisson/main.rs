//! A physics-informed network (PINN) for the Poisson problem in d dimensions (default d = 10),
//! trained with the Laplacian in one forward pass by collapsed Taylor mode
//! ([`tch_jacobian::Laplacian`]), beside the same training with nested reverse mode (PyTorch's
//! autograd loop: ∇u with create_graph, then one backward pass per dimension).
//!
//! ```text
//! −Δu = f on [0,1]^d,   u = u* on the boundary,   u*(x) = (1/d) Σ_i sin(π x_i),   f = π² u*
//! loss = mean((Δu + f)²) over interior points + 10·mean((u − u*)²) over boundary points
//! ```
//!
//! Network: d → 64 → 64 → 1, tanh; Adam (lr 3e-3), fresh random points every step (B interior,
//! B/2 boundary: one coordinate rounded to 0 or 1). Prints the loss, the relative L2 error
//! ‖u − u*‖/‖u*‖ on 4096 random test points, and the time per step of each method.
//!
//! `cargo run --release --example pinn_poisson -- --dim 10 --steps 2000`
use std::f64::consts::PI;
use std::time::Instant;

use clap::Parser;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_jacobian::{laplacian, LaplacianOptions, Result, Strategy};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

#[derive(Parser, Debug)]
#[command(about = "PINN for −Δu = f in d dimensions: collapsed Taylor mode vs nested reverse mode")]
struct Args {
    /// Dimension d of the domain [0,1]^d.
    #[arg(long, default_value_t = 10)]
    dim: i64,
    /// Adam steps with collapsed Taylor mode.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Interior points per step.
    #[arg(long, default_value_t = 256)]
    batch: i64,
    /// Steps timed with nested reverse mode (the same training, from the same start).
    #[arg(long, default_value_t = 100)]
    nested_steps: usize,
}

/// u*(x) = (1/d) Σ_i sin(π x_i) for x: [B, d].
fn exact(x: &Tensor) -> Tensor {
    let d = x.size()[1] as f64;
    (x * PI).sin().sum_dim_intlist(1, false, Kind::Float) / d
}

/// The outcome of [`train`].
struct Run {
    first_loss: f64,
    last_loss: f64,
    /// ‖u − u*‖/‖u*‖ on 4096 random points.
    error: f64,
    /// Seconds per Adam step.
    step_secs: f64,
}

/// `steps` Adam steps with the given method, from a fixed seed.
fn train(dim: i64, steps: usize, batch: i64, method: Strategy) -> Result<Run> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let (p, c) = (vs.root(), Default::default());
    let net = nn::seq()
        .add(nn::linear(&p / "l1", dim, 64, c))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&p / "l2", 64, 64, c))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&p / "l3", 64, 1, c));
    let mut opt = nn::Adam::default().build(&vs, 3e-3)?;
    // create_graph: Δu stays in the graph, so the residual trains the weights.
    let opts = LaplacianOptions::default()
        .create_graph(true)
        .strategy(method);
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let start = Instant::now();
    for step in 0..steps {
        let x = Tensor::rand([batch, dim], CPU);
        let lap = laplacian(|x: &Tensor| net.forward(x), &x, &opts)?.laplacian;
        let residual = (lap + exact(&x) * (PI * PI)).square().mean(Kind::Float);
        let xb = Tensor::rand([batch / 2, dim], CPU);
        let side = Tensor::randint(dim, [batch / 2], (Kind::Int64, Device::Cpu)).one_hot(dim);
        let xb = xb.round().where_self(&side.to_kind(Kind::Bool), &xb);
        let boundary = (net.forward(&xb).squeeze_dim(1) - exact(&xb))
            .square()
            .mean(Kind::Float);
        let loss = residual + boundary * 10.0;
        opt.backward_step(&loss);
        let l = loss.double_value(&[]);
        if step == 0 {
            first_loss = l;
        }
        last_loss = l;
    }
    let step_secs = start.elapsed().as_secs_f64() / steps.max(1) as f64;
    let test = Tensor::rand([4096, dim], CPU);
    let want = exact(&test);
    let error = tch::no_grad(|| (net.forward(&test).squeeze_dim(1) - &want).norm() / want.norm())
        .double_value(&[]);
    Ok(Run {
        first_loss,
        last_loss,
        error,
        step_secs,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!(
        "PINN −Δu = f on [0,1]^{}, u* = (1/d) Σ sin(π x_i); d → 64 → 64 → 1 tanh, B = {}, f32, {} threads",
        args.dim,
        args.batch,
        tch::get_num_threads()
    );
    let taylor = train(args.dim, args.steps, args.batch, Strategy::Taylor)?;
    println!(
        "collapsed Taylor mode: {} steps, loss {:.3e} → {:.3e}, relative L2 error {:.2e}, {:.2} ms/step",
        args.steps,
        taylor.first_loss,
        taylor.last_loss,
        taylor.error,
        taylor.step_secs * 1e3
    );
    if args.nested_steps > 0 {
        let nested = train(args.dim, args.nested_steps, args.batch, Strategy::RowLoop)?;
        println!(
            "nested reverse mode:   {} steps, {:.2} ms/step ({:.2}× the collapsed step)",
            args.nested_steps,
            nested.step_secs * 1e3,
            nested.step_secs / taylor.step_secs
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests reseed torch's global generator: one at a time.
    static SEED: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn the_pinn_learns_in_ten_dimensions() {
        let _one = SEED.lock().unwrap_or_else(|e| e.into_inner());
        let run = train(10, 400, 128, Strategy::Taylor).unwrap();
        println!(
            "loss {:.3e} → {:.3e}, error {:.2e}",
            run.first_loss, run.last_loss, run.error
        );
        assert!(
            run.last_loss < 0.1 * run.first_loss,
            "loss {} → {}",
            run.first_loss,
            run.last_loss
        );
        assert!(run.error < 0.2, "relative L2 error {}", run.error);
    }

    #[test]
    fn both_methods_take_the_same_first_steps() {
        // Same seed, same points: the two methods' losses agree to float32 rounding.
        let _one = SEED.lock().unwrap_or_else(|e| e.into_inner());
        let a = train(10, 3, 64, Strategy::Taylor).unwrap();
        let b = train(10, 3, 64, Strategy::RowLoop).unwrap();
        assert!((a.first_loss - b.first_loss).abs() <= 1e-4 * b.first_loss.abs());
        assert!((a.last_loss - b.last_loss).abs() <= 1e-3 * b.last_loss.abs());
    }
}
