//! Context the caller set must not change values: every public function that runs a closure or
//! a backward pass gives inside `tch::no_grad` what it gives outside, for every strategy (the
//! no-engine build runs the strategies it has), and `create_graph` keeps its meaning there.
//! Also: the per-sample doors' randomness (`Randomness`), `Auto`'s one recovery rule, and a
//! disabled vmap fallback reported as `Error::NoBatchingRule`; and the entry's process-wide
//! preparation (oneMKL's kernels resolved before a closure runs).
mod common;

use common::{f64_tol, strategies};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    hessian_of, jacobian, jacobian_of, jacobian_penalty, jacobian_with, laplacian_of,
    per_sample_gradients, per_sample_gradients_of, per_sample_gradients_of_module,
    per_sample_hessian_of, per_sample_jacobian, per_sample_jacobian_of, vjp, Error,
    JacobianOptions, PenaltyEstimator, PenaltyOptions, Randomness, Result, Strategy,
};

/// The tests of this file one at a time: `Randomness::Same` in the loop over samples reseeds
/// torch's one global generator, which the other tests' draws on other threads would disturb.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Double, Device::Cpu))
}

/// `f()` outside and inside `tch::no_grad`: equal values (f64, rtol = atol = 1e-12).
fn same_inside_no_grad(what: &str, f: impl Fn() -> Result<Tensor>) -> Result<()> {
    let outside = f()?;
    let inside = tch::no_grad(&f)?;
    assert!(
        outside.abs().sum(Kind::Double).double_value(&[]) > 0.0,
        "{what}: zero outside"
    );
    f64_tol()
        .check(&inside, &outside)
        .unwrap_or_else(|e| panic!("{what} inside no_grad: {e}"));
    Ok(())
}

#[test]
fn closures_inside_no_grad() -> Result<()> {
    let _serial = serial();
    tch::manual_seed(1);
    let w = randn(&[4, 3]);
    let f = |x: &Tensor| x.matmul(&w.tr()).tanh();
    let x = randn(&[3]);
    let xb = randn(&[5, 3]);
    for s in strategies() {
        let opts = JacobianOptions::default().strategy(s);
        same_inside_no_grad(&format!("jacobian_of {s}"), || jacobian_of(f, &x, &opts))?;
        same_inside_no_grad(&format!("per_sample_jacobian_of {s}"), || {
            per_sample_jacobian_of(f, &xb, &opts)
        })?;
    }
    let u = |x: &Tensor| {
        x.matmul(&w.tr())
            .tanh()
            .sum_dim_intlist(-1, false, Kind::Double)
    };
    for s in [Strategy::Auto, Strategy::RowLoop] {
        let opts = JacobianOptions::default().strategy(s);
        same_inside_no_grad(&format!("hessian_of {s}"), || {
            hessian_of(|x: &Tensor| u(x), &x, &opts)
        })?;
        same_inside_no_grad(&format!("per_sample_hessian_of {s}"), || {
            per_sample_hessian_of(u, &xb, &opts)
        })?;
        same_inside_no_grad(&format!("laplacian_of {s}"), || laplacian_of(u, &xb, &opts))?;
    }
    Ok(())
}

/// With `create_graph` under an outer `no_grad` the result is still differentiable (as
/// `torch.autograd.functional.jacobian(create_graph=True)`, which enables grad itself).
#[test]
fn create_graph_inside_no_grad() -> Result<()> {
    let _serial = serial();
    let x = randn(&[3]).set_requires_grad(true);
    let opts = JacobianOptions::default().create_graph(true);
    let j = tch::no_grad(|| jacobian_of(|x: &Tensor| x.sin() * 2.0, &x, &opts))?;
    assert!(j.requires_grad());
    let g = Tensor::run_backward(&[j.sum(Kind::Double)], &[&x], false, false).remove(0);
    f64_tol().check(&g, &(x.sin() * -2.0)).unwrap();
    let lap = tch::no_grad(|| {
        laplacian_of(
            |x: &Tensor| x.sin().sum_dim_intlist(-1, false, Kind::Double),
            &x.view([1, 3]),
            &opts,
        )
    })?;
    assert!(lap.requires_grad());
    Ok(())
}

/// Built graphs: the crate's own ops around the backward passes (row selection, stacking) are
/// recorded under create_graph even when the caller turned grad mode off.
#[test]
fn built_graphs_inside_no_grad() -> Result<()> {
    let _serial = serial();
    let x = randn(&[2, 3]).set_requires_grad(true);
    let y = x.tanh() * 3.0;
    let v = randn(&[2, 3]);
    same_inside_no_grad("jacobian", || jacobian(&y, &x))?;
    for s in common::graph_strategies() {
        let opts = JacobianOptions::default().strategy(s);
        same_inside_no_grad(&format!("jacobian_with {s}"), || {
            Ok(jacobian_with(&y, &[&x], &opts)?.remove(0))
        })?;
        same_inside_no_grad(&format!("per_sample_jacobian {s}"), || {
            per_sample_jacobian(&y, &x, &opts)
        })?;
        let cg = opts.create_graph(true);
        let j = tch::no_grad(|| jacobian_with(&y, &[&x], &cg))?.remove(0);
        assert!(
            j.requires_grad(),
            "jacobian_with {s} create_graph inside no_grad"
        );
    }
    same_inside_no_grad("vjp", || vjp(&y, &x, &v, &JacobianOptions::default()))?;
    let h = (&x * 2.0).sin();
    same_inside_no_grad("contractive_penalty", || {
        jacobian_penalty(
            &h,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
        )
    })?;
    Ok(())
}

fn mlp(p: &nn::Path) -> impl Module {
    nn::seq()
        .add(nn::linear(p / "fc1", 3, 4, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(p / "fc2", 4, 2, Default::default()))
}

#[test]
fn per_sample_inside_no_grad() -> Result<()> {
    let _serial = serial();
    tch::manual_seed(2);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = mlp(&vs.root());
    vs.double();
    let x = randn(&[6, 3]);
    let params = tch_jacobian::trainable_parameters(&vs);
    for s in [Strategy::Auto, Strategy::RowLoop] {
        let opts = JacobianOptions::default().strategy(s);
        same_inside_no_grad(&format!("per_sample_gradients_of {s}"), || {
            let out = per_sample_gradients_of(
                |p: &[Tensor], s: &[Tensor]| {
                    let h = s[0].matmul(&p[1].tr()) + &p[0];
                    Ok(h.tanh().square().sum(Kind::Double))
                },
                &params[..2],
                &[&x],
                &opts,
            )?;
            Ok(out.gradients[1].1.shallow_clone())
        })?;
        same_inside_no_grad(&format!("per_sample_gradients_of_module {s}"), || {
            let out = per_sample_gradients_of_module(
                &vs,
                mlp,
                |m, s| Ok(m.forward(&s[0].unsqueeze(0)).square().sum(Kind::Double)),
                &[&x],
                &opts,
            )?;
            Ok(out.gradients[3].1.shallow_clone())
        })?;
    }
    // (The losses are the caller's graph, built with grad mode on.)
    let losses = model
        .forward(&x)
        .square()
        .sum_dim_intlist(-1, false, Kind::Double);
    same_inside_no_grad("per_sample_gradients", || {
        let out = per_sample_gradients(&losses, &params, &JacobianOptions::default())?;
        Ok(out[3].1.shallow_clone())
    })?;
    Ok(())
}

/// `loss_b = Σ dropout(w)·x_b`: the per-sample gradient is `mask_b·x_b/(1 − p)`, so each
/// sample's mask can be read back from it.
fn dropout_masks(opts: &JacobianOptions) -> Result<Tensor> {
    let w = Tensor::ones([64], (Kind::Double, Device::Cpu));
    let x = Tensor::rand([8, 64], (Kind::Double, Device::Cpu)) + 1.0;
    let out = per_sample_gradients_of(
        |p: &[Tensor], s: &[Tensor]| Ok((p[0].dropout(0.5, true) * &s[0]).sum(Kind::Double)),
        &[("w".to_string(), w)],
        &[&x],
        opts,
    )?;
    Ok(&out.gradients[0].1 / &x * 0.5)
}

#[test]
fn randomness_per_sample() -> Result<()> {
    let _serial = serial();
    for s in [Strategy::Auto, Strategy::RowLoop] {
        let opts = JacobianOptions::default().strategy(s);
        // Different (the default): each sample its own 0/1 mask, as a loop over samples draws.
        let masks = dropout_masks(&opts)?;
        let binary = masks.round().eq_tensor(&masks).all().int64_value(&[]);
        assert_eq!(binary, 1, "{s}: not masks: {masks}");
        let distinct = (0..8)
            .filter(|&b| !masks.get(b).equal(&masks.get(0)))
            .count();
        assert!(
            distinct >= 6,
            "{s}: only {distinct} of 7 masks differ from sample 0's"
        );
        // Same: one mask for the call.
        let same = dropout_masks(&opts.randomness(Randomness::Same))?;
        for b in 1..8 {
            assert!(
                same.get(b).equal(&same.get(0)),
                "{s}: Same gave different masks"
            );
        }
    }
    if tch_jacobian::native::available() {
        let err = dropout_masks(&JacobianOptions::default().randomness(Randomness::Error));
        common::assert_err(err, &["random"]);
    }
    Ok(())
}

/// A loss that does not reach the parameters: zero gradients from every strategy (Auto
/// recovers from vmap(grad)'s refusal by the loop over samples, its one recovery rule).
#[test]
fn auto_never_errors_where_the_loop_works() -> Result<()> {
    let _serial = serial();
    let w = randn(&[3]);
    let x = randn(&[4, 3]);
    for s in [Strategy::Auto, Strategy::RowLoop] {
        let out = per_sample_gradients_of(
            |_p: &[Tensor], s: &[Tensor]| Ok(s[0].sum(Kind::Double)),
            &[("w".to_string(), w.shallow_clone())],
            &[&x],
            &JacobianOptions::default().strategy(s),
        )?;
        assert_eq!(out.gradients[0].1.size(), [4, 3]);
        assert_eq!(
            out.gradients[0].1.abs().sum(Kind::Double).double_value(&[]),
            0.0
        );
    }
    let _ = tch_jacobian::second_order::take_reroutes();
    Ok(())
}

/// An op without a batching rule in a per-sample loss, with the fallback off, is
/// `Error::NoBatchingRule` (as in a batched pass).
#[test]
#[cfg_attr(not(feature = "native"), ignore = "needs the native engine")]
fn no_batching_rule_in_the_loss() -> Result<()> {
    let _serial = serial();
    common::needs_engine();
    let w = randn(&[5]);
    let x = randn(&[3, 5]);
    let r = per_sample_gradients_of(
        |p: &[Tensor], s: &[Tensor]| {
            // renorm has no batching rule in libtorch 2.11.
            Ok((&p[0] * &s[0])
                .view([1, 5])
                .f_renorm(2.0, 0, 1.0)?
                .sum(Kind::Double))
        },
        &[("w".to_string(), w)],
        &[&x],
        &JacobianOptions::default().vmap_fallback(false),
    );
    match r {
        Err(Error::NoBatchingRule { op }) => assert_eq!(op, "aten::renorm"),
        other => panic!("expected NoBatchingRule, got {other:?}"),
    }
    Ok(())
}

/// The crate's entry (the one that sets grad mode) also resolves oneMKL's vector-math kernels
/// before a closure's first `tanh` runs on several threads (pytorch#188792; src/global.rs): no
/// test here calls `resolve_vml_kernels` itself, so only that entry can have done it.
#[test]
fn first_call_resolves_vml_kernels() -> Result<()> {
    let x = Tensor::from_slice(&[0.3f64, -0.2]);
    let j = jacobian_of(|v: &Tensor| v.tanh(), &x, &JacobianOptions::default())?;
    assert_eq!(j.size(), [2, 2]);
    assert!(tch_jacobian::global::vml_kernels_resolved());
    Ok(())
}

/// glibc's malloc tuning changes time and resident memory, never values: a Laplacian with the
/// crate's tuning refused, then with it on, bit for bit; and a refusal holds through the crate's
/// first Laplacian (which would otherwise tune it).
#[test]
fn malloc_tuning_changes_no_value() -> Result<()> {
    let _serial = serial();
    use tch_jacobian::global::{malloc_tuned, set_malloc_tuning};
    let x = randn(&[8, 3]);
    let u = |v: &Tensor| (v.tanh() * v.sin()).sum_dim_intlist(1, false, Kind::Double);
    set_malloc_tuning(false);
    let off = laplacian_of(u, &x, &JacobianOptions::default())?;
    assert!(
        !malloc_tuned(),
        "the crate tuned malloc after set_malloc_tuning(false)"
    );
    set_malloc_tuning(true);
    assert_eq!(malloc_tuned(), common::malloc_tuning_possible());
    let on = laplacian_of(u, &x, &JacobianOptions::default())?;
    assert!(off.equal(&on), "Δu changed with malloc's tuning");
    Ok(())
}
