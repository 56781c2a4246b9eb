//! One options vocabulary (0.2): every option a function accepts is read or refused — never
//! silently ignored; `Strategy::Taylor` computes Jacobians of closures; 0.1's names still work
//! (deprecated) and give the same values.
#![allow(deprecated)]

mod common;

use common::assert_err;
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    hessian_of, jacobian_of, jacobian_with, laplacian, laplacian_of, per_sample_gradients_of,
    per_sample_hessian_of, per_sample_jacobian_of, vjp, JacobianOptions, LaplacianOptions,
    Randomness, Result, Strategy,
};

const O: (Kind, Device) = (Kind::Double, Device::Cpu);

fn x() -> Tensor {
    Tensor::from_slice(&[0.3f64, -0.7, 1.1, 0.2, 0.5, -0.4]).view([2, 3])
}

#[test]
fn unread_options_are_refused() {
    let x = x();
    let f = |x: &Tensor| x.sin();
    let u = |x: &Tensor| x.sin().sum_dim_intlist(1, false, Kind::Double);
    let o = JacobianOptions::default();
    // randomness is read by the per-sample gradients only
    let same = o.randomness(Randomness::Same);
    assert_err(jacobian_of(f, &x, &same), &["jacobian_of", "randomness"]);
    assert_err(
        per_sample_jacobian_of(f, &x, &same),
        &["per_sample_jacobian_of", "randomness"],
    );
    assert_err(
        hessian_of(|x: &Tensor| x.sin().sum(Kind::Double), &x, &same),
        &["hessian_of", "randomness"],
    );
    assert_err(laplacian_of(u, &x, &same), &["laplacian_of", "randomness"]);
    // check_independence is read by the per-sample functions only
    let unchecked = o.check_independence(false);
    assert_err(
        jacobian_of(f, &x, &unchecked),
        &["jacobian_of", "check_independence(false)"],
    );
    let xg = x.detach().set_requires_grad(true);
    assert_err(
        vjp(&xg.sin(), &xg, &xg.ones_like(), &unchecked),
        &["vjp", "check_independence"],
    );
    assert!(per_sample_jacobian_of(f, &x, &unchecked).is_ok());
    assert!(laplacian_of(u, &x, &unchecked).is_ok());
    // strict does not apply to a Laplacian
    assert_err(
        laplacian_of(u, &x, &o.strict(true)),
        &["laplacian_of", "strict"],
    );
    // strategies that need a closure that does not exist
    let v = o.strategy(Strategy::Vectorized { chunk_size: None });
    assert_err(
        per_sample_hessian_of(u, &x, &v),
        &["per_sample_hessian_of", "closure of the gradient"],
    );
    assert_err(
        laplacian(
            u,
            &x,
            &LaplacianOptions::default().strategy(Strategy::Vectorized { chunk_size: None }),
        ),
        &["makes no Laplacian"],
    );
    assert_err(
        jacobian_with(&xg.sin(), &[&xg], &o.strategy(Strategy::Taylor)),
        &["Strategy::Taylor needs the function itself"],
    );
    // per-sample gradients read randomness, not check_independence (each sample runs alone)
    let params = vec![("w".to_string(), Tensor::ones([3], O))];
    let loss =
        |p: &[Tensor], s: &[Tensor]| -> Result<Tensor> { Ok((&p[0] * &s[0]).sum(Kind::Double)) };
    assert!(per_sample_gradients_of(loss, &params, &[&x], &same).is_ok());
    assert_err(
        per_sample_gradients_of(loss, &params, &[&x], &unchecked),
        &["per_sample_gradients_of", "check_independence"],
    );
}

/// `Strategy::Taylor` gives the closure's Jacobian (one collapsed pass along the identity
/// directions), plain and per sample, with and without create_graph, equal to the row loop's.
#[test]
fn taylor_strategy_gives_jacobians() -> Result<()> {
    let x = x();
    let w = Tensor::from_slice(&[0.5f64, -1.0, 0.25, 2.0, 0.1, -0.3]).view([3, 2]);
    let f = |x: &Tensor| x.matmul(&w).tanh();
    for cg in [false, true] {
        let t = JacobianOptions::default()
            .strategy(Strategy::Taylor)
            .create_graph(cg);
        let r = JacobianOptions::default()
            .strategy(Strategy::RowLoop)
            .create_graph(cg);
        let a = per_sample_jacobian_of(f, &x, &t)?;
        let b = per_sample_jacobian_of(f, &x, &r)?;
        assert!(
            a.allclose(&b, 1e-12, 1e-14, false),
            "per sample, create_graph {cg}"
        );
        assert_eq!(a.requires_grad(), cg);
        let a = jacobian_of(f, &x.get(0), &t)?;
        let b = jacobian_of(f, &x.get(0), &r)?;
        assert!(
            a.allclose(&b, 1e-12, 1e-14, false),
            "plain, create_graph {cg}"
        );
    }
    Ok(())
}

/// 0.1's names forward to 0.2's: the same values.
#[test]
fn deprecated_names_still_work() -> Result<()> {
    let x = x();
    let f = |x: &Tensor| x.sin();
    let o = JacobianOptions::default();
    let new = per_sample_jacobian_of(f, &x, &o)?;
    let old = tch_jacobian::batch_jacobian_of(f, &x, &o)?;
    assert!(new.equal(&old));
    let u = |x: &Tensor| x.sin().sum_dim_intlist(1, false, Kind::Double);
    let lap_new = laplacian(u, &x, &LaplacianOptions::default())?.laplacian;
    let lap_old = tch_jacobian::Laplacian::new().compute(u, &x)?.laplacian;
    assert!(lap_new.equal(&lap_old));
    let nested = tch_jacobian::Laplacian::new()
        .method(tch_jacobian::LaplacianMethod::Nested)
        .compute(u, &x)?;
    assert_eq!(nested.strategy, Strategy::RowLoop);
    let w = Tensor::ones([3], O).set_requires_grad(true);
    let uw = |x: &Tensor| (x.sin() * &w).sum_dim_intlist(1, false, Kind::Double);
    let cg = tch_jacobian::Laplacian::new()
        .create_graph(true)
        .compute(uw, &x)?;
    assert!(cg.laplacian.requires_grad());
    assert!(!tch_jacobian::Laplacian::new()
        .compute(uw, &x)?
        .laplacian
        .requires_grad());
    // every setter of the 0.1 builder reaches the computation
    let rad = tch_jacobian::LaplacianEstimator::Rademacher {
        directions: 2,
        seed: Some(1),
    };
    // (a Hessian with off-diagonal terms: Rademacher's estimate of a diagonal one is exact)
    let uc = |x: &Tensor| x.sum_dim_intlist(1, false, Kind::Double).sin();
    let est_old = tch_jacobian::Laplacian::new()
        .estimator(rad)
        .compute(uc, &x)?;
    let est_new = laplacian(uc, &x, &LaplacianOptions::default().estimator(rad))?;
    assert!(est_old.laplacian.equal(&est_new.laplacian));
    let exact = laplacian(uc, &x, &LaplacianOptions::default())?.laplacian;
    assert!(!est_old.laplacian.allclose(&exact, 1e-9, 1e-12, false));
    let sigma = Tensor::from_slice(&[1.0f64, 0.0, 0.0]).view([3, 1]); // ∂²u/∂x₀² only
    let w_old = tch_jacobian::Laplacian::new()
        .weights(&sigma)
        .compute(u, &x)?;
    let w_new = laplacian(u, &x, &LaplacianOptions::default().weights(&sigma))?;
    assert!(w_old.laplacian.equal(&w_new.laplacian));
    assert!(w_old
        .laplacian
        .allclose(&(-x.select(1, 0).sin()), 1e-12, 1e-14, false));
    let forward = Strategy::Forward; // not the default RowLoop, and in both builds
    let nb = tch_jacobian::Laplacian::new()
        .method(tch_jacobian::LaplacianMethod::Nested)
        .nested_strategy(forward)
        .compute(u, &x)?;
    assert_eq!(nb.strategy, forward);
    let mixing = |x: &Tensor| {
        (x - x.mean_dim(0, true, Kind::Double))
            .sin()
            .sum_dim_intlist(1, false, Kind::Double)
    };
    assert!(tch_jacobian::Laplacian::new().compute(mixing, &x).is_err());
    tch_jacobian::Laplacian::new()
        .check_independence(false)
        .compute(mixing, &x)?;
    assert!(nested.laplacian.allclose(&lap_new, 1e-12, 1e-14, false));
    let xg = x.detach().set_requires_grad(true);
    let h = xg.sin();
    let est = tch_jacobian::Estimator::Projections {
        directions: 2,
        seed: Some(3),
    };
    let old = tch_jacobian::contractive_penalty(&h, &xg, &est)?;
    let new = tch_jacobian::jacobian_penalty(
        &h,
        &xg,
        &tch_jacobian::PenaltyOptions::default().estimator(&est),
    )?;
    assert!(old.equal(&new));
    let old = tch_jacobian::contractive_penalty_per_sample(&h, &xg, &est)?;
    let new = tch_jacobian::jacobian_penalty_per_sample(
        &h,
        &xg,
        &tch_jacobian::PenaltyOptions::default().estimator(&est),
    )?;
    assert_eq!(old.size(), [x.size()[0]]);
    assert!(old.equal(&new));
    tch_jacobian::assert_allclose(&old, &new, tch_jacobian::Tolerance::new(0.0, 0.0));
    assert_eq!(tch_jacobian::parse_device("cpu")?, Device::Cpu);
    Ok(())
}
