//! docs/second-order.md's tables: where PyTorch's fast tools are wrong (the cases of
//! tests/gen-pytorch-wrong.py: PyTorch's value, the row loop's, finite differences', ours), and
//! what keeping second derivatives right costs:
//!
//! * the graph scan that `create_graph` calls run before a batched or forward-mode pass
//!   (`second_order::scan`), on chains of 10 … 10 000 autograd nodes;
//! * the TorchScript executor's optimization off, which the crate's module functions use under
//!   `create_graph`: a module's create_graph Jacobian + backward on its first call (fresh load)
//!   and in steady state, against the same step on the optimized graph (whose batched pass the
//!   crate reroutes to the row loop);
//! * first- and second-order Jacobians through layer_norm and batch_norm with the crate's batching
//!   rules (`Auto` = one batched pass) against the row loop.
//!
//!     cargo run --release -p tch-jacobian-bench --bin second_order_report [-- --budget-s 0.5]
//!
//! Prints a Markdown report (median ms per call, 1 … 2 threads as tch's default).
use std::time::Instant;

use anyhow::{Context, Result};
use tch::{CModule, Device, IValue, Kind, Tensor};
use tch_jacobian::{jacobian_with, module_jacobian, second_order, JacobianOptions, Strategy};
use tch_jacobian_bench::{measure, Rule};

#[path = "../../../tests/common/wrong.rs"]
mod wrong;

#[path = "../../../tests/common/expect.rs"]
mod expect;
#[path = "../../../tests/common/sweep.rs"]
mod sweep;

fn rule(budget_s: f64) -> Rule {
    Rule {
        budget_s,
        min_reps: 5,
        max_reps: 100_000,
        skip_over_s: 5.0,
        device: Device::Cpu,
    }
}

fn ms(rule: Rule, f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    Ok(measure(rule, f)?.0.ms())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let budget_s: f64 = match args.iter().position(|a| a == "--budget-s") {
        Some(i) => args
            .get(i + 1)
            .context("--budget-s needs a value")?
            .parse()?,
        None => 0.5,
    };
    let r = rule(budget_s);
    let o = (Kind::Double, Device::Cpu);
    println!(
        "second_order_report: CPU, {} threads, f64 unless stated",
        tch::get_num_threads()
    );
    let root = format!("{}/..", env!("CARGO_MANIFEST_DIR"));

    // ---- 0. where PyTorch is wrong
    println!(
        "\n### dL/da where PyTorch's fast tool is wrong (a = {}, f64, tests/gen-pytorch-wrong.py)\n\n\
         | L(a) | PyTorch's tool | its value | row loop | finite differences | ours (defaults) | upstream |\n\
         |---|---|---:|---:|---:|---:|---|",
        wrong::A
    );
    for (case, what, tool, issue) in wrong::CASES {
        let v = wrong::pytorch_values(&root, case);
        let ours = wrong::ours(&root, case, Device::Cpu)?;
        println!(
            "| {what} | {tool} | {:.6e} | {:.10e} | {:.6e} | {ours:.10e} | {issue} |",
            v[0], v[1], v[2]
        );
    }
    let _ = second_order::take_reroutes();

    // ---- 0b. a warm TorchScript module (a case of the CI subset)
    let dir = std::path::Path::new(&root).join("tests/data/second_order");
    let id = "nn_functional_tanhshrink__0";
    let arrays = sweep::read_arrays(&dir, id, Device::Cpu);
    let ts = vec![arrays["t0"].shallow_clone()];
    let warm = CModule::load(sweep::module_path(&dir, id))?;
    sweep::warm_up(&warm, &ts)?;
    let route = sweep::Route::Graph(Strategy::Auto);
    let g = sweep::evaluate(&warm, &ts, 0, &arrays["r0"], route)?.remove(0);
    let truth = &arrays["g0_0"];
    let reroutes = second_order::take_reroutes();
    println!(
        "\n### tanhshrink (x − tanh x, {} elements) as TorchScript after three create_graph steps\n\n\
         g = ∂⟨R, J⟩/∂x by the caller's forward + `jacobian_with` (Auto): max |g| {:.4}, max |g − truth| {:.1e}; \
         the crate ran: {}.",
        ts[0].numel(),
        truth.abs().max().double_value(&[]),
        (&g - truth).abs().max().double_value(&[]),
        reroutes.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ")
    );

    // ---- 1. the scan
    println!(
        "\n### Graph scan (`second_order::scan`)\n\n| autograd nodes | median µs |\n|---:|---:|"
    );
    for depth in [10usize, 100, 1000, 10_000] {
        let x = Tensor::randn([8], o).set_requires_grad(true);
        let mut y = x.shallow_clone();
        for _ in 0..depth {
            y = y.tanh();
        }
        let nodes = second_order::scan(&y)?.nodes;
        let t = measure(r, || -> Result<usize> { Ok(second_order::scan(&y)?.nodes) })?.0;
        println!("| {nodes} | {:.1} |", t.ms() * 1e3);
    }

    // ---- 2. TorchScript: the executor's optimization off under create_graph
    let path = format!("{root}/tests/data/ts/mlp_tanh.pt");
    let x = Tensor::randn([5], o);
    let load = || -> Result<CModule> {
        let mut m = CModule::load(&path)?;
        m.f_set_eval()?;
        Ok(m)
    };
    // One create_graph step through the crate's module function (optimization off).
    let step_plain = |m: &CModule| -> Result<Tensor> {
        let xg = x.detach().set_requires_grad(true);
        let opts = JacobianOptions::default().create_graph(true);
        let j = module_jacobian(m, &xg, None, &opts)?;
        let l = j.f_square()?.f_sum(Kind::Double)?;
        Ok(Tensor::f_run_backward(&[l], &[&xg], false, false)?.remove(0))
    };
    // The same step on the optimized graph: the caller runs the module, then jacobian_with
    // (Auto, which reroutes the batched pass of a DifferentiableGraphBackward to the row loop).
    let step_optimized = |m: &CModule| -> Result<Tensor> {
        let xg = x.detach().set_requires_grad(true);
        let y = match m.forward_is(&[IValue::Tensor(xg.shallow_clone())])? {
            IValue::Tensor(t) => t,
            _ => anyhow::bail!("not a tensor"),
        };
        let opts = JacobianOptions::default().create_graph(true);
        let j = jacobian_with(&y, &[&xg], &opts)?.remove(0);
        let l = j.f_square()?.f_sum(Kind::Double)?;
        Ok(Tensor::f_run_backward(&[l], &[&xg], false, false)?.remove(0))
    };
    let first = |step: &dyn Fn(&CModule) -> Result<Tensor>| -> Result<f64> {
        let mut v = Vec::new();
        for _ in 0..5 {
            let m = load()?;
            let t0 = Instant::now();
            let _ = step(&m)?;
            v.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok(tch_jacobian_bench::median(v))
    };
    let steady = |step: &dyn Fn(&CModule) -> Result<Tensor>| -> Result<f64> {
        let m = load()?;
        for _ in 0..5 {
            let _ = step(&m)?;
        }
        ms(r, || step(&m))
    };
    let (pf, ps) = (first(&step_plain)?, steady(&step_plain)?);
    let (of, os) = (first(&step_optimized)?, steady(&step_optimized)?);
    let _ = second_order::take_reroutes();
    println!(
        "\n### TorchScript create_graph step (tests/data/ts/mlp_tanh.pt, 5 → 8 → 4: J, ‖J‖², backward)\n\n\
         | path | first call (fresh load) ms | steady state ms |\n|---|---:|---:|\n\
         | `module_jacobian` (executor optimization off; batched pass) | {pf:.3} | {ps:.3} |\n\
         | caller's forward on the optimized graph + `jacobian_with` (rerouted to the row loop) | {of:.3} | {os:.3} |"
    );

    // ---- 3. norms, first and second order
    println!(
        "\n### Through the normalizations: J of the output with respect to the input, x = [32, 64] \
         (f32); second order adds ‖J‖² and its backward\n\n| op | order | Auto (batched, the crate's rule) ms | row loop ms |\n|---|---|---:|---:|"
    );
    let of32 = (Kind::Float, Device::Cpu);
    let xs = Tensor::randn([32, 64], of32);
    let w = Tensor::randn([64], of32);
    type Norm<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;
    let norms: Vec<(&str, Norm)> = vec![
        (
            "layer_norm",
            Box::new(|x: &Tensor| {
                Ok(x.f_layer_norm([64], Some(&w), None::<&Tensor>, 1e-5, false)?)
            }),
        ),
        (
            "batch_norm (train)",
            Box::new(|x: &Tensor| {
                Ok(x.f_batch_norm(
                    Some(&w),
                    None::<&Tensor>,
                    None::<&Tensor>,
                    None::<&Tensor>,
                    true,
                    0.1,
                    1e-5,
                    false,
                )?)
            }),
        ),
    ];
    for (name, f) in &norms {
        for second in [false, true] {
            let time = |s: Strategy| -> Result<f64> {
                ms(r, || {
                    let xg = xs.detach().set_requires_grad(true);
                    let y = f(&xg)?;
                    let opts = JacobianOptions::default().create_graph(second).strategy(s);
                    let j = jacobian_with(&y, &[&xg], &opts)?.remove(0);
                    if !second {
                        return Ok(j);
                    }
                    let l = j.f_square()?.f_sum(Kind::Float)?;
                    Ok(Tensor::f_run_backward(&[l], &[&xg], false, false)?.remove(0))
                })
            };
            println!(
                "| {name} | {} | {:.2} | {:.2} |",
                if second { "second" } else { "first" },
                time(Strategy::Auto)?,
                time(Strategy::RowLoop)?
            );
        }
    }
    Ok(())
}
