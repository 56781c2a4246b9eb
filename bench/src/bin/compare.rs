//! The Rust side of `scripts/compare-pytorch`: times our Jacobian strategies on the inputs that
//! `bench/compare_pytorch.py` wrote (`W`, `x` and PyTorch's `J` as `.npy`), checks every `J`
//! against PyTorch's, and prints one JSON object per line on stdout.
//!
//!     cargo run --release -p tch-jacobian-bench --bin compare -- --dir target/compare-pytorch [--case 64]
//!
//! The model is the notebook's `F(x) = σ(Wx)`, written row-wise as `f(x) = σ(x Wᵀ)` on both sides.
//! Every timing is: one call (skipped when it takes longer than `skip_over_s`), a warm-up of up to
//! three calls, then repetitions until `budget_s` has passed and at least `min_reps` ran (at most
//! `max_reps`); the median is reported — the same rule as the Python side.
//!
//! `--peak METHOD` (with `--case`): one cold call of that method (a label as in the JSON lines)
//! instead of the timings, with the process's peak resident memory around it (`VmHWM` reset
//! through `/proc/self/clear_refs` just before the call): the Laplacian rows' memory column.
//!
//! `--least-squares DIR` instead times `least_squares` on the batched curve fits that
//! `bench/compare_pytorch.py --only least-squares` wrote into `DIR/lsq.json` (its `least-squares`
//! group: B fits of y = a·e^(−bt) + c·sin(dt), 2000 points each, f64), one JSON line per
//! (B, variant) with the median time, the fraction of problems at SciPy's reference cost and the
//! evaluations.
//!
//! `--loop STRATEGY N SECONDS` (a strategy name as `Strategy`'s `Display` writes it) runs one strategy in a loop for a profiler (`perf record`).
//! `--breakdown N` instead times the pieces of the Vectorized and RowLoop strategies at
//! `n = m = N` (the analysis in the benchmark notes), e.g. `--breakdown 1024`.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    hessian_of, jacobian, jacobian_of, jacobian_penalty, jacobian_with, jvp_batched, laplacian_of,
    per_sample_gradients, per_sample_gradients_of, per_sample_gradients_of_module,
    per_sample_hessian_of, per_sample_jacobian, per_sample_jacobian_of, sigmoid_linear_jacobian,
    vjp_batched, JacobianOptions, PenaltyEstimator, PenaltyOptions, Progress, Strategy,
};
use tch_jacobian_bench::{measure, reset_peak_rss, status_kib, tanh_mlp, Rule, Timing};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.size() != b.size() {
        bail!("shape {:?} vs reference {:?}", a.size(), b.size());
    }
    tch::no_grad(|| -> Result<f64> {
        Ok(a.f_to_kind(Kind::Double)?
            .f_sub(&b.f_to_kind(Kind::Double)?)?
            .f_abs()?
            .f_max()?
            .f_double_value(&[])?)
    })
}

/// One JSON line; `strategy` is the concrete strategy that ran (what `Auto` resolved to).
fn emit(case: &str, method: &str, strategy: &str, timing: &Timing, diff: f64) {
    let v = match timing {
        Timing::Done { median_ms, reps } => json!({
            "side": "rust", "case": case, "method": method, "strategy": strategy,
            "median_ms": median_ms, "reps": reps, "max_abs_diff": diff,
        }),
        Timing::Skipped { first_s } => json!({
            "side": "rust", "case": case, "method": method, "strategy": strategy,
            "skipped_s": first_s, "max_abs_diff": diff,
        }),
    };
    println!("{v}");
}

fn opts(strategy: Strategy) -> JacobianOptions<'static> {
    JacobianOptions::default().strategy(strategy)
}

fn load(dir: &Path, name: &str, device: Device) -> Result<Tensor> {
    let p = dir.join(name);
    Ok(Tensor::read_npy(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .to_device(device))
}

/// The strategies timed with a closure; their labels are `Strategy`'s names, as in
/// compare_pytorch.py's tables.
const CLOSURE_STRATEGIES: [Strategy; 6] = [
    Strategy::Batched { chunk_size: None },
    Strategy::RowLoop,
    Strategy::Vectorized { chunk_size: None },
    Strategy::Forward,
    Strategy::VectorizedForward { chunk_size: None },
    Strategy::Auto,
];

/// `--peak METHOD`: instead of timing, one cold call of that method with the process's peak resident
/// memory around it (VmHWM reset through /proc/self/clear_refs just before the call).
fn peak_call(name: &str, method: &str, g: &mut dyn FnMut() -> Result<Tensor>) -> Result<()> {
    let process_before = status_kib("VmHWM:");
    let rss_before = status_kib("VmRSS:");
    let reset = reset_peak_rss();
    let t = Instant::now();
    let out = g()?;
    let secs = t.elapsed().as_secs_f64();
    let hwm = status_kib("VmHWM:");
    let call = match (reset, rss_before, hwm) {
        (true, Some(a), Some(b)) => json!(b.saturating_sub(a)),
        _ => Value::Null,
    };
    let process = match (process_before, hwm) {
        (Some(a), Some(b)) => json!(a.max(b)),
        _ => Value::Null,
    };
    println!(
        "{}",
        json!({"side": "rust", "case": name, "method": method, "peak": true, "seconds": secs,
               "call_peak_kib": call, "process_peak_kib": process, "rss_before_kib": rss_before})
    );
    drop(out);
    Ok(())
}

fn run_case(dir: &Path, case: &Value, rule: Rule, peak: Option<&str>) -> Result<()> {
    let name = case["name"].as_str().context("case name")?;
    let kind = case["kind"].as_str().context("case kind")?;
    let dev = rule.device;
    let w = load(dir, case["w"].as_str().context("w")?, dev)?;
    let x = load(dir, case["x"].as_str().context("x")?, dev)?;
    let j_ref = load(dir, case["j_ref"].as_str().context("j_ref")?, dev)?;
    // A case's extra inputs (`w2`, `t`, `v`, …), by name.
    let extra =
        |k: &str| -> Result<Tensor> { load(dir, case["extra"][k].as_str().context("extra")?, dev) };
    // Row-wise on a leading batch dimension: [n] -> [m], [c, n] -> [c, m].
    let f = |x: &Tensor| x.matmul(&w.tr()).sigmoid();
    let (m, n) = (
        case["m"].as_u64().context("m")? as usize,
        case["n"].as_u64().context("n")? as usize,
    );
    let b = case["b"].as_u64().unwrap_or(1) as usize;
    // What a strategy runs as, e.g. `Auto` → `Vectorized { chunk_size: None }`.
    let work = |have_closure: bool| tch_jacobian::strategy::Work {
        m,
        n,
        batch: b,
        have_closure,
        device: dev,
        kind: Kind::Float,
    };
    let resolved = |s: Strategy| -> String { s.resolve_for(&work(true)).to_string() };
    // The same without a closure (jacobian_with, per_sample_jacobian, the penalty).
    let resolved_graph = |s: Strategy| -> String { s.resolve_for(&work(false)).to_string() };
    let run =
        |method: &str, strategy: String, g: &mut dyn FnMut() -> Result<Tensor>| -> Result<()> {
            if let Some(p) = peak {
                return if p == method {
                    peak_call(name, method, g)
                } else {
                    Ok(())
                };
            }
            eprintln!("  rust {name:>8} {method}");
            let (timing, j) = measure(rule, g)?;
            let diff = max_abs_diff(&j, &j_ref).with_context(|| format!("{name} {method}"))?;
            emit(name, method, &strategy, &timing, diff);
            Ok(())
        };
    match kind {
        "single" => {
            let xg = x.detach().set_requires_grad(true);
            run(
                "row-loop (jacobian)",
                resolved(Strategy::RowLoop),
                &mut || {
                    let y = f(&xg);
                    Ok(jacobian(&y, &xg)?)
                },
            )?;
            // From a graph the caller built: forward, then the Jacobian of that output.
            run(
                "auto (jacobian_with)",
                resolved_graph(Strategy::Auto),
                &mut || {
                    let y = f(&xg);
                    Ok(jacobian_with(&y, &[&xg], &opts(Strategy::Auto))?.remove(0))
                },
            )?;
            for s in CLOSURE_STRATEGIES
                .into_iter()
                .filter(|s| *s != Strategy::RowLoop)
            {
                run(&format!("{s} (jacobian_of)"), resolved(s), &mut || {
                    Ok(jacobian_of(f, &x, &opts(s))?)
                })?;
            }
            run("closed form", "closed form".into(), &mut || {
                Ok(sigmoid_linear_jacobian(&w, &f(&x))?)
            })?;
        }
        "batch" => {
            let xg = x.detach().set_requires_grad(true);
            run(
                "auto (per_sample_jacobian)",
                resolved_graph(Strategy::Auto),
                &mut || {
                    let y = f(&xg);
                    Ok(per_sample_jacobian(&y, &xg, &opts(Strategy::Auto))?)
                },
            )?;
            for s in CLOSURE_STRATEGIES {
                run(
                    &format!("{s} (per_sample_jacobian_of)"),
                    resolved(s),
                    &mut || Ok(per_sample_jacobian_of(f, &x, &opts(s))?),
                )?;
            }
            run("closed form", "closed form".into(), &mut || {
                Ok(sigmoid_linear_jacobian(&w, &f(&x))?)
            })?;
        }
        "penalty" => {
            // Exact CAE penalty, forward + penalty + backward to the weight: J_ref is PyTorch's dW.
            let wg = w.detach().set_requires_grad(true);
            run(
                "Exact (contractive_penalty)",
                resolved_graph(Strategy::Auto),
                &mut || {
                    let xg = x.detach().set_requires_grad(true);
                    let h = xg.matmul(&wg.tr()).sigmoid();
                    let p = jacobian_penalty(
                        &h,
                        &xg,
                        &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
                    )?;
                    Ok(Tensor::f_run_backward(&[p], &[&wg], false, false)?.remove(0))
                },
            )?;
        }
        "psg" => {
            // Per-sample gradients of a tanh MLP's cross-entropy with respect to W1 (= w):
            // J_ref is PyTorch's vmap(grad(...)).
            let (w2, t) = (extra("w2")?, extra("t")?);
            let w1 = w.detach().set_requires_grad(true);
            let params = vec![("w1".to_string(), w1.shallow_clone())];
            let logits = || x.matmul(&w1.tr()).tanh().matmul(&w2.tr());
            run(
                "per_sample_gradients (cross_entropy)",
                resolved_graph(Strategy::Auto),
                &mut || {
                    let losses = logits().f_cross_entropy_loss::<Tensor>(
                        &t,
                        None,
                        tch::Reduction::None,
                        -100,
                        0.0,
                    )?;
                    let opts = JacobianOptions::default();
                    Ok(per_sample_gradients(&losses, &params, &opts)?.remove(0).1)
                },
            )?;
            // The loss of one sample under vmap(grad): O(B), like PyTorch's vmap(grad).
            let params_of = vec![("w1".to_string(), w.shallow_clone())];
            run(
                "per_sample_gradients_of (cross_entropy, one sample)",
                resolved_graph(Strategy::Auto),
                &mut || {
                    let loss = |p: &[Tensor], s: &[Tensor]| -> tch_jacobian::Result<Tensor> {
                        let logits = s[0].f_matmul(&p[0].tr())?.f_tanh()?.f_matmul(&w2.tr())?;
                        Ok(logits.f_unsqueeze(0)?.f_cross_entropy_loss::<Tensor>(
                            &s[1].f_unsqueeze(0)?,
                            None,
                            tch::Reduction::Mean,
                            -100,
                            0.0,
                        )?)
                    };
                    let opts = JacobianOptions::default();
                    let out = per_sample_gradients_of(loss, &params_of, &[&x, &t], &opts)?;
                    Ok(out.gradients.into_iter().next().context("w1")?.1)
                },
            )?;
            run(
                "per_sample_gradients (log_softmax + gather)",
                resolved_graph(Strategy::Auto),
                &mut || {
                    let losses = logits()
                        .f_log_softmax(-1, Kind::Float)?
                        .f_gather(1, &t.f_unsqueeze(1)?, false)?
                        .f_squeeze_dim(1)?
                        .f_neg()?;
                    let opts = JacobianOptions::default();
                    Ok(per_sample_gradients(&losses, &params, &opts)?.remove(0).1)
                },
            )?;
        }
        "products" => {
            // k VJPs and k JVPs of sigmoid(W x) in one call each; J_ref is both stacks.
            let (vs, us) = (extra("v")?, extra("u")?);
            run(
                "vjp_batched + jvp_batched",
                resolved_graph(Strategy::Auto),
                &mut || {
                    let xg = x.detach().set_requires_grad(true);
                    let y = w.matmul(&xg).sigmoid();
                    let o = JacobianOptions::default();
                    let vj = vjp_batched(&y, &xg, &vs, &o)?;
                    let ju = jvp_batched(&y, &xg, &us, &o)?;
                    Ok(Tensor::f_cat(&[vj, ju], 0)?)
                },
            )?;
        }
        "norm2" => {
            // Second order through layer_norm's weight: d/dW of ‖∂h/∂γ‖² at γ = 1 for
            // h = layer_norm(x Wᵀ; γ, 0); J_ref is PyTorch's row loop (the truth).
            let wg = w.detach().set_requires_grad(true);
            let grad_w = |s: Strategy| -> Result<Tensor> {
                let gamma = Tensor::f_ones([m as i64], (Kind::Float, dev))?.set_requires_grad(true);
                let beta = gamma.f_zeros_like()?;
                let h = x.f_matmul(&wg.tr())?.f_layer_norm(
                    [m as i64],
                    Some(&gamma),
                    Some(&beta),
                    1e-5,
                    false,
                )?;
                let o = opts(s).create_graph(true);
                let j = jacobian_with(&h, &[&gamma], &o)?.remove(0);
                let p = j.f_square()?.f_sum(Kind::Float)?;
                Ok(Tensor::f_run_backward(&[p], &[&wg], false, false)?.remove(0))
            };
            run(
                "auto (jacobian_with, create_graph)",
                resolved_graph(Strategy::Auto),
                &mut || grad_w(Strategy::Auto),
            )?;
            run(
                "row-loop (jacobian_with, create_graph)",
                "row-loop".into(),
                &mut || grad_w(Strategy::RowLoop),
            )?;
        }
        "psg_mse" | "psg_conv" => {
            // Per-sample gradients of one sample's loss under vmap(grad): the MLP with MSE against
            // one-hot targets (w = W1), or the conv net with cross-entropy (w = the conv weight).
            let (w2, t) = (extra("w2")?, extra("t")?);
            let params = vec![("w".to_string(), w.shallow_clone())];
            let conv = kind == "psg_conv";
            let loss = |p: &[Tensor], s: &[Tensor]| -> tch_jacobian::Result<Tensor> {
                if conv {
                    let h = s[0]
                        .f_unsqueeze(0)?
                        .f_conv2d(&p[0], None::<Tensor>, [2, 2], [0, 0], [1, 1], 1)?
                        .f_tanh()?;
                    let logits = h.f_flatten(1, -1)?.f_matmul(&w2.tr())?;
                    Ok(logits.f_cross_entropy_loss::<Tensor>(
                        &s[1].f_unsqueeze(0)?,
                        None,
                        tch::Reduction::Mean,
                        -100,
                        0.0,
                    )?)
                } else {
                    let out = s[0].f_matmul(&p[0].tr())?.f_tanh()?.f_matmul(&w2.tr())?;
                    // s[1]: the one-hot target row.
                    Ok(out.f_mse_loss(&s[1], tch::Reduction::Mean)?)
                }
            };
            run(
                "per_sample_gradients_of (one sample)",
                resolved_graph(Strategy::Auto),
                &mut || {
                    let opts = JacobianOptions::default();
                    let out = per_sample_gradients_of(loss, &params, &[&x, &t], &opts)?;
                    Ok(out.gradients.into_iter().next().context("w")?.1)
                },
            )?;
            if conv {
                // The same conv net as tch::nn layers built by a function (the module door): what
                // a tch user writes, at the cost of one construction per call.
                use tch::nn::{self, Module};
                let net = |p: &nn::Path| {
                    let cfg = nn::ConvConfig {
                        stride: 2,
                        bias: false,
                        ..Default::default()
                    };
                    let lin = nn::LinearConfig {
                        bias: false,
                        ..Default::default()
                    };
                    nn::seq()
                        .add(nn::conv2d(p / "conv", 1, 8, 5, cfg))
                        .add_fn(|h| h.tanh().flatten(1, -1))
                        .add(nn::linear(p / "fc", 1152, 10, lin))
                };
                let vs = nn::VarStore::new(dev);
                let _model = net(&vs.root());
                tch::no_grad(|| {
                    let vars = vs.variables();
                    vars["conv.weight"].shallow_clone().copy_(&w);
                    vars["fc.weight"].shallow_clone().copy_(&w2);
                });
                let mloss = |m: &nn::Sequential, s: &[Tensor]| -> tch_jacobian::Result<Tensor> {
                    Ok(m.forward(&s[0].f_unsqueeze(0)?)
                        .f_cross_entropy_loss::<Tensor>(
                            &s[1].f_unsqueeze(0)?,
                            None,
                            tch::Reduction::Mean,
                            -100,
                            0.0,
                        )?)
                };
                run(
                    "per_sample_gradients_of_module (one sample, all weights)",
                    resolved_graph(Strategy::Auto),
                    &mut || {
                        let opts = JacobianOptions::default();
                        let out =
                            per_sample_gradients_of_module(&vs, net, mloss, &[&x, &t], &opts)?;
                        Ok(out
                            .gradients
                            .into_iter()
                            .find(|(n, _)| n == "conv.weight")
                            .context("conv.weight")?
                            .1)
                    },
                )?;
            }
        }
        "pinn" => {
            // PINN: u = tanh(tanh(x W1ᵀ) W2ᵀ) W3ᵀ; the Laplacian loss mean((Δu)²) or the Hessian
            // loss Σ‖H_b‖²/B, and its gradient to W1 (= w); J_ref is PyTorch's autograd loop.
            let (w2, w3) = (extra("w2")?, extra("w3")?);
            let lap = case["op"].as_str() == Some("lap");
            let grad_w1 = |s: Strategy| -> Result<Tensor> {
                let w1 = w.detach().set_requires_grad(true);
                let u = |v: &Tensor| {
                    v.matmul(&w1.tr())
                        .tanh()
                        .matmul(&w2.tr())
                        .tanh()
                        .matmul(&w3.tr())
                        .squeeze_dim(-1)
                };
                let o = JacobianOptions::default().strategy(s).create_graph(true);
                let loss = if lap {
                    laplacian_of(u, &x, &o)?.f_square()?.f_mean(Kind::Float)?
                } else {
                    per_sample_hessian_of(u, &x, &o)?
                        .f_square()?
                        .f_sum(Kind::Float)?
                        .f_div_scalar(b as f64)?
                };
                Ok(Tensor::f_run_backward(&[loss], &[&w1], false, false)?.remove(0))
            };
            let auto = if tch_jacobian::native::available() && dev.is_cuda() {
                "batched"
            } else {
                "row-loop"
            };
            run("auto", auto.into(), &mut || grad_w1(Strategy::Auto))?;
            if tch_jacobian::native::available() {
                run("batched", "batched".into(), &mut || {
                    grad_w1(Strategy::Batched { chunk_size: None })
                })?;
            }
            run("row-loop", "row-loop".into(), &mut || {
                grad_w1(Strategy::RowLoop)
            })?;
            run("forward", "forward".into(), &mut || {
                grad_w1(Strategy::Forward)
            })?;
        }
        "lapmlp" => {
            // The Laplacian of a PINN MLP, u = … tanh(x W1ᵀ + b1) … W_Lᵀ + b_L (Linear layers with
            // bias, tanh between them), from the same .npy weights as PyTorch's: Δu alone (J_ref:
            // the float64 truth of Δu), or the loss mean(Δu²) + backward to all weights (J_ref:
            // the truth of W1's gradient). With `"net": "cnn"`, the CNN PINN of compare_pytorch.py's
            // LAPCNN instead: x [B, 64] as a 1×8×8 field, conv2d(1 → 8, 3×3, padding 1) → tanh →
            // conv2d(8 → 8, 3×3, stride 2, padding 1) → tanh → flatten → Linear(128 → 1), the
            // params [conv1 W, b, conv2 W, b, linear W, b].
            let layers = case["layers"].as_u64().context("layers")? as usize;
            let loss = case["work"].as_str() == Some("loss");
            let cnn = match case["net"].as_str().unwrap_or("mlp") {
                "mlp" => false,
                "cnn" => true,
                other => bail!("{name}: unknown Laplacian net {other:?}"),
            };
            let field: Vec<i64> = if cnn {
                case["field"]
                    .as_array()
                    .context("field")?
                    .iter()
                    .map(|v| v.as_i64().context("field"))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            };
            if cnn && (layers != 3 || field.iter().product::<i64>() as usize != n) {
                bail!("{name}: the CNN row needs 3 layers and a field of n = {n} values");
            }
            let mut params = Vec::with_capacity(2 * layers);
            for i in 1..=layers {
                for k in ["w", "b"] {
                    params.push(extra(&format!("{k}{i}"))?.set_requires_grad(loss));
                }
            }
            let mlp = tanh_mlp(&params);
            // Row-wise as compare_pytorch.py's cnn_u: [..., 64] -> [...].
            let conv = |v: &Tensor| {
                let mut shape = v.size();
                shape.pop();
                shape.extend_from_slice(&field);
                let h = v
                    .reshape(shape.as_slice())
                    .conv2d(&params[0], Some(&params[1]), [1, 1], [1, 1], [1, 1], 1)
                    .tanh()
                    .conv2d(&params[2], Some(&params[3]), [2, 2], [1, 1], [1, 1], 1)
                    .tanh()
                    .flatten(-3, -1);
                (h.matmul(&params[4].tr()) + &params[5]).squeeze_dim(-1)
            };
            let u = |v: &Tensor| if cnn { conv(v) } else { mlp(v) };
            let variants = [
                ("laplacian_of (Auto)", JacobianOptions::default()),
                (
                    "laplacian_of (RowLoop)",
                    JacobianOptions::default().strategy(Strategy::RowLoop),
                ),
            ];
            if peak.is_some() {
                // libtorch's lazy set-up before the peak's reference point, as the Python side.
                drop(tch::no_grad(|| u(&x)));
            }
            // Before timing: Δu of both variants against PyTorch's float32 Δu (its nested loop),
            // rtol 1e-4 of max |Δu|; and which strategy ran (from the progress reports).
            let mut ran = Vec::new();
            for (label, o) in &variants {
                if peak.is_some() {
                    ran.push(String::new());
                    continue;
                }
                let lap_torch = extra("lap_f32")?;
                let seen = std::cell::RefCell::new(None::<Strategy>);
                let note = |p: Progress| {
                    seen.replace(Some(p.strategy));
                };
                drop(tch_jacobian::second_order::take_reroutes());
                let lap = laplacian_of(u, &x, &o.create_graph(loss).progress(&note))?;
                // Auto's fallback from collapsed Taylor mode to nested reverse mode (an op without
                // a rule), on stderr; the strategy that ran goes to the JSON line either way.
                for r in tch_jacobian::second_order::take_reroutes() {
                    eprintln!("  rust {name:>8} {label}: rerouted: {r}");
                }
                let scale = tch::no_grad(|| lap_torch.abs().max().double_value(&[]));
                let rel = max_abs_diff(&lap, &lap_torch)? / scale;
                if rel.is_nan() || rel > 1e-4 {
                    bail!("{name} {label}: Δu differs from PyTorch's by {rel:.2e} of max |Δu| (> 1e-4)");
                }
                eprintln!("  rust {name:>8} {label}: Δu agrees with PyTorch's float32 Δu to {rel:.1e} of max |Δu|");
                ran.push(match *seen.borrow() {
                    Some(s) => s.to_string(),
                    None => "no progress reported (not the row loop)".to_string(),
                });
            }
            // The timed calls: after the first, checked call above, without the independence
            // check — the documented hot-loop setting (jet and PyTorch check nothing).
            for ((label, o), strategy) in variants.iter().zip(ran) {
                let o = &o.check_independence(false);
                if !loss {
                    run(label, strategy, &mut || Ok(laplacian_of(u, &x, o)?))?;
                    continue;
                }
                let o = o.create_graph(true);
                let mut grads: Vec<Tensor> = params.iter().map(|p| p.shallow_clone()).collect();
                run(label, strategy, &mut || {
                    for p in grads.iter_mut() {
                        p.zero_grad();
                    }
                    let lap = laplacian_of(u, &x, &o)?;
                    lap.f_square()?.f_mean(Kind::Float)?.f_backward()?;
                    Ok(params[0].grad().f_detach_copy()?)
                })?;
            }
        }
        "hessian" => {
            let f = |v: &Tensor| w.matmul(v).tanh().square().sum(Kind::Float);
            run("hessian_of", resolved_graph(Strategy::Auto), &mut || {
                Ok(hessian_of(f, &x, &opts(Strategy::Auto))?)
            })?;
        }
        other => bail!("unknown case kind {other}"),
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// --breakdown N: where the time of Vectorized and RowLoop goes (re-implements src/strategy.rs's
// steps one by one, with the crate's own calls as the reference).
// ------------------------------------------------------------------------------------------

fn time_ms(rule: Rule, f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    match measure(rule, f)?.0 {
        Timing::Done { median_ms, .. } => Ok(median_ms),
        Timing::Skipped { first_s } => Ok(first_s * 1e3),
    }
}

fn breakdown(n: i64, rule: Rule) -> Result<()> {
    tch::manual_seed(0);
    let m = n;
    let opt = (Kind::Float, Device::Cpu);
    let w = Tensor::randn([m, n], opt) / (n as f64).sqrt();
    let x = Tensor::randn([n], opt);
    let f = |x: &Tensor| x.matmul(&w.tr()).sigmoid();
    let mut rows: Vec<(String, f64)> = Vec::new();
    let mut add = |label: &str, ms: f64| -> Result<()> {
        eprintln!("  {label}: {ms:.4} ms");
        rows.push((label.to_string(), ms));
        Ok(())
    };

    // --- Vectorized (chunk_size = None), as src/strategy.rs::vectorized does it.
    add(
        "Vectorized: jacobian_of (crate, total)",
        time_ms(rule, || {
            Ok(jacobian_of(
                f,
                &x,
                &opts(Strategy::Vectorized { chunk_size: None }),
            )?)
        })?,
    )?;
    let xg = x.detach().set_requires_grad(true);
    add(
        "  1 prepare x + forward f(x) (one copy)",
        time_ms(rule, || Ok(f(&x.detach().set_requires_grad(true))))?,
    )?;
    let y = f(&xg);
    let y2 = y.reshape([1, m]);
    let x2 = xg.unsqueeze(0);
    let xr = x2.unsqueeze(1).expand([1, m, n], false).reshape([m, n]);
    add(
        "  2 expand x to m copies + forward f(X) (m x n x m matmul)",
        time_ms(rule, || {
            let xr = x2.unsqueeze(1).expand([1, m, n], false).reshape([m, n]);
            Ok(f(&xr))
        })?,
    )?;
    let yr = f(&xr).reshape([1, m, m]);
    add(
        "  3 allclose(f(X)[0], f(x)) check",
        time_ms(rule, || {
            let same = tch::no_grad(|| yr.select(1, 0).allclose(&y2, 1e-3, 1e-5, true));
            Ok(Tensor::from(same as i64))
        })?,
    )?;
    let idx = Tensor::arange(m, (Kind::Int64, Device::Cpu))
        .view([1, m, 1])
        .expand([1, m, 1], false);
    add(
        "  4 gather + sum + run_backward (m x m x n matmul)",
        time_ms(rule, || {
            let root = yr.gather(2, &idx, false).sum(None::<Kind>);
            Ok(Tensor::run_backward(&[root], &[&xr], true, false).remove(0))
        })?,
    )?;
    add(
        "  4' gather + sum only (no backward)",
        time_ms(rule, || Ok(yr.gather(2, &idx, false).sum(None::<Kind>)))?,
    )?;
    add(
        "  5 check_first_row (extra backward of y[0] + max|diff|)",
        time_ms(rule, || {
            let r = Tensor::run_backward(&[y2.select(1, 0)], &[&xg], true, false).remove(0);
            let g = Tensor::zeros([1, m, n], (Kind::Float, Device::Cpu));
            let d = tch::no_grad(|| {
                let r = r.reshape([1, -1]);
                let got = g.select(1, 0);
                let diff = (&got - &r).abs().max().double_value(&[]);
                let scale = r.abs().max().double_value(&[]);
                diff + scale
            });
            Ok(Tensor::from(d))
        })?,
    )?;
    // Whole pass without the two checks (what a `checked = false` option would cost).
    add(
        "  (1+2+4) vectorized without the checks",
        time_ms(rule, || {
            let xg = x.detach().set_requires_grad(true);
            let _y = f(&xg);
            let xr = xg.unsqueeze(0).expand([m, n], false);
            let yr = f(&xr);
            let root = yr
                .gather(
                    1,
                    &Tensor::arange(m, (Kind::Int64, Device::Cpu)).view([m, 1]),
                    false,
                )
                .sum(None::<Kind>);
            Ok(Tensor::run_backward(&[root], &[&xr], true, false).remove(0))
        })?,
    )?;
    // Same, but seeding with the identity (y ⊙ I).sum() instead of gather.
    add(
        "  (1+2+4) with (f(X) * I).sum() instead of gather",
        time_ms(rule, || {
            let xg = x.detach().set_requires_grad(true);
            let _y = f(&xg);
            let xr = xg.unsqueeze(0).expand([m, n], false);
            let yr = f(&xr);
            let eye = Tensor::eye(m, (Kind::Float, Device::Cpu));
            let root = (yr * eye).sum(None::<Kind>);
            Ok(Tensor::run_backward(&[root], &[&xr], true, false).remove(0))
        })?,
    )?;
    let a = Tensor::randn([m, m], opt);
    add(
        "  floor: one m x m x n matmul (what jacrev's backward costs)",
        time_ms(rule, || Ok(a.matmul(&w)))?,
    )?;
    add(
        "  floor: closed form diag(y(1-y)) W (broadcast)",
        time_ms(rule, || Ok(sigmoid_linear_jacobian(&w, &f(&x))?))?,
    )?;

    // --- RowLoop, as src/strategy.rs::rows does it.
    add(
        "RowLoop: forward + jacobian(&y, &x) (crate, total)",
        time_ms(rule, || {
            let y = f(&xg);
            Ok(jacobian(&y, &xg)?)
        })?,
    )?;
    add(
        "  bare loop: forward + m x run_backward(y.select(0, i)) + stack",
        time_ms(rule, || {
            let y = f(&xg);
            let rows: Vec<Tensor> = (0..m)
                .map(|i| Tensor::run_backward(&[y.select(0, i)], &[&xg], true, false).remove(0))
                .collect();
            Ok(Tensor::stack(&rows, 0))
        })?,
    )?;
    add(
        "  bare loop without stack (rows copied into a preallocated J)",
        time_ms(rule, || {
            let y = f(&xg);
            let j = Tensor::empty([m, n], opt);
            for i in 0..m {
                let g = Tensor::run_backward(&[y.select(0, i)], &[&xg], true, false).remove(0);
                j.select(0, i).copy_(&g);
            }
            Ok(j)
        })?,
    )?;
    add(
        "  one run_backward of a scalar output (per-row cost)",
        time_ms(rule, || {
            Ok(Tensor::run_backward(&[y.select(0, 0)], &[&xg], true, false).remove(0))
        })?,
    )?;
    add(
        "  one forward f(x) (m x n matvec)",
        time_ms(rule, || Ok(f(&xg)))?,
    )?;
    let out: Vec<Value> = rows
        .iter()
        .map(|(l, ms)| json!({"n": n, "step": l, "median_ms": ms}))
        .collect();
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// `--loop STRATEGY N SECONDS`: one strategy in a loop, for an outside profiler (`perf record`).
fn hot_loop(which: &str, n: i64, seconds: f64) -> Result<()> {
    tch::manual_seed(0);
    let opt = (Kind::Float, Device::Cpu);
    let w = Tensor::randn([n, n], opt) / (n as f64).sqrt();
    let x = Tensor::randn([n], opt);
    let f = |x: &Tensor| x.matmul(&w.tr()).sigmoid();
    let s: Strategy = which.parse()?;
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        drop(jacobian_of(f, &x, &opts(s))?);
        calls += 1;
    }
    eprintln!(
        "{which} n={n}: {calls} calls, {:.3} ms/call",
        start.elapsed().as_secs_f64() * 1e3 / calls as f64
    );
    Ok(())
}

/// `--least-squares DIR`: `least_squares` on the curve fits of `DIR/lsq.json` (written by
/// `bench/compare_pytorch.py --only least-squares`): B fits of `y = a e^(−bt) + c sin(dt)`, f64,
/// from the same starts as the peers, each variant warmed up once and then timed `repeats`
/// times (the median); accuracy against SciPy lm's tight cost per problem (`ref`).
fn least_squares_bench(dir: &Path) -> Result<()> {
    use tch_jacobian::least_squares::Method;
    use tch_jacobian::{least_squares, LeastSquaresOptions};
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("lsq.json")).context("reading lsq.json")?,
    )?;
    println!(
        "{}",
        json!({"side": "rust", "threads": tch::get_num_threads(), "dtype": "float64"})
    );
    for case in manifest["cases"].as_array().context("cases")? {
        let b = case["b"].as_i64().context("b")?;
        let repeats = case["repeats"].as_u64().unwrap_or(3) as usize;
        let get = |k: &str| -> Result<Tensor> {
            let t = load(dir, case[k].as_str().context("file")?, Device::Cpu)?;
            Ok(t.to_kind(Kind::Double))
        };
        let (t, y, start, reference) = (get("t")?, get("y")?, get("start")?, get("ref")?);
        let model = |p: &Tensor| {
            let (a, bb, c, d) = (
                p.narrow(1, 0, 1),
                p.narrow(1, 1, 1),
                p.narrow(1, 2, 1),
                p.narrow(1, 3, 1),
            );
            a * (-bb * &t).exp() + c * (d * &t).sin()
        };
        let residual = |p: &Tensor| model(p) - &y;
        // The analytic Jacobian, as every peer gets it: [B, T, 4].
        let jac = |p: &Tensor| -> tch_jacobian::Result<Tensor> {
            let (a, bb, c, d) = (
                p.narrow(1, 0, 1),
                p.narrow(1, 1, 1),
                p.narrow(1, 2, 1),
                p.narrow(1, 3, 1),
            );
            let e = (-bb * &t).exp();
            let dt = d * &t;
            Ok(Tensor::stack(
                &[e.shallow_clone(), -a * &t * &e, dt.sin(), c * &t * dt.cos()],
                2,
            ))
        };
        let defaults = LeastSquaresOptions::default();
        let variants: Vec<(&str, LeastSquaresOptions)> = vec![
            ("LM, Jacobian by collapsed Taylor mode (defaults)", defaults),
            ("LM, collapsed Taylor mode, check_independence(false)", defaults.check_independence(false)),
            ("LM, analytic Jacobian", defaults.jacobian(&jac)),
            ("LM, analytic Jacobian, check_independence(false)", defaults.jacobian(&jac).check_independence(false)),
            (
                "LM, analytic Jacobian, check_independence(false), SciPy's default tolerances (1e-8)",
                defaults.jacobian(&jac).check_independence(false).ftol(1e-8).xtol(1e-8).gtol(1e-8),
            ),
            ("LM + geodesic acceleration, collapsed Taylor mode", defaults.geodesic(true)),
            ("dogleg, analytic Jacobian", defaults.method(Method::Dogleg).jacobian(&jac)),
        ];
        for (label, opts) in variants {
            let run = || least_squares(residual, &start, &opts);
            let out = run()?; // warm-up
            let mut times = Vec::new();
            for _ in 0..repeats {
                let t0 = Instant::now();
                let o = run()?;
                times.push(t0.elapsed().as_secs_f64() * 1e3);
                drop(o);
            }
            let cost = out.cost.to_kind(Kind::Double);
            let at_ref = cost
                .le_tensor(&(&reference * (1.0 + 1e-6)))
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[]);
            let worst = ((&cost - &reference) / &reference).max().double_value(&[]);
            let nfev = out.evaluations.iter().sum::<usize>() as f64 / b as f64;
            let njev = out.jacobian_evaluations.iter().sum::<usize>() as f64 / b as f64;
            let max_it = out.iterations.iter().copied().max().unwrap_or(0);
            let failed = out.status.iter().filter(|s| !s.is_success()).count();
            println!(
                "{}",
                json!({"side": "rust", "case": format!("lsq{b}"), "b": b, "method": label,
                       "median_ms": tch_jacobian_bench::median(times.clone()), "ms_all": times,
                       "frac_at_ref": at_ref, "worst_rel_excess": worst, "mean_nfev": nfev,
                       "mean_njev": njev, "max_iterations": max_it, "failed": failed})
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut dir: Option<PathBuf> = None;
    let mut threads: Option<i32> = None;
    let mut breakdown_n: Option<i64> = None;
    let mut only: Option<String> = None;
    let mut hot: Option<(String, i64, f64)> = None;
    let mut peak: Option<String> = None;
    let mut lsq: Option<PathBuf> = None;
    let mut rule = Rule {
        budget_s: 1.0,
        min_reps: 5,
        max_reps: 2000,
        skip_over_s: 2.0,
        device: Device::Cpu,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(val()?)),
            "--threads" => threads = Some(val()?.parse()?),
            "--device" => rule.device = tch_jacobian::device::parse_device(&val()?)?,
            "--budget" => rule.budget_s = val()?.parse()?,
            "--breakdown" => breakdown_n = Some(val()?.parse()?),
            "--case" => only = Some(val()?),
            "--least-squares" => lsq = Some(PathBuf::from(val()?)),
            "--peak" => peak = Some(val()?),
            "--loop" => {
                let (w, n, t) = (val()?, val()?, val()?);
                hot = Some((w, n.parse()?, t.parse()?));
            }
            "-h" | "--help" => {
                println!(
                    "compare --dir DIR [--case NAME [--peak METHOD]] [--threads N] [--device cpu|cuda] | --breakdown N [--budget S] | --loop STRATEGY N SECONDS (a strategy name: row-loop, batched, …) | --least-squares DIR [--threads N]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if let Some(t) = threads {
        tch::set_num_threads(t);
    }
    eprintln!("rust: tch::get_num_threads() = {}", tch::get_num_threads());
    if let Some((w, n, t)) = hot {
        return hot_loop(&w, n, t);
    }
    if let Some(d) = lsq {
        return least_squares_bench(&d);
    }
    if let Some(n) = breakdown_n {
        return breakdown(n, rule);
    }
    let dir = dir.context("--dir DIR (written by bench/compare_pytorch.py) is required")?;
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).context("reading manifest.json")?,
    )?;
    if let Some(r) = manifest.get("rule") {
        rule.budget_s = r["budget_s"].as_f64().unwrap_or(rule.budget_s);
        rule.min_reps = r["min_reps"].as_u64().map_or(rule.min_reps, |v| v as usize);
        rule.max_reps = r["max_reps"].as_u64().map_or(rule.max_reps, |v| v as usize);
        rule.skip_over_s = r["skip_over_s"].as_f64().unwrap_or(rule.skip_over_s);
    }
    println!(
        "{}",
        json!({"side": "rust", "threads": tch::get_num_threads(), "dtype": "float32", "device": format!("{:?}", rule.device)})
    );
    let cases = manifest["cases"].as_array().context("cases")?;
    let mut ran = 0;
    for case in cases {
        if only
            .as_deref()
            .is_none_or(|o| case["name"].as_str() == Some(o))
        {
            run_case(&dir, case, rule, peak.as_deref())?;
            ran += 1;
        }
    }
    if ran == 0 {
        bail!(
            "no case named {:?} in the manifest",
            only.unwrap_or_default()
        );
    }
    Ok(())
}
