//! Contractive penalties: closed form = exact, the projection estimator is unbiased with a
//! spread that shrinks with k, and the gradients to W and b equal PyTorch's.
mod common;

use common::*;
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    jacobian_penalty, jacobian_penalty_per_sample, testing::Tolerance, PenaltyEstimator,
    PenaltyOptions, Result,
};

/// The fixture's encoder h = σ(x Wᵀ + b) with W, b as leaves that require grad.
fn encoder(device: Device) -> (Tensor, Tensor, Tensor, Tensor) {
    let w = fx_var("penalty", "w", device);
    let b = fx_var("penalty", "b", device);
    let x = fx_var("penalty", "x", device);
    let h = (x.matmul(&w.tr()) + &b).sigmoid();
    (w, b, x, h)
}

fn grads(p: &Tensor, w: &Tensor, b: &Tensor) -> (Tensor, Tensor) {
    let mut g = Tensor::run_backward(&[p], &[w, b], false, false);
    let gb = g.pop().unwrap();
    (g.pop().unwrap(), gb)
}

fn matches_pytorch(device: Device) -> Result<()> {
    let tol = f64_tol();
    // Exact.
    let (w, b, x, h) = encoder(device);
    tol.check(
        &jacobian_penalty_per_sample(
            &h,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
        )?,
        &fx("penalty", "per_sample", device),
    )
    .unwrap();
    let p = jacobian_penalty(
        &h,
        &x,
        &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
    )?;
    tol.check(&p, &fx("penalty", "exact", device)).unwrap();
    let (gw, gb) = grads(&p, &w, &b);
    tol.check(&gw, &fx("penalty", "grad_w", device)).unwrap();
    tol.check(&gb, &fx("penalty", "grad_b", device)).unwrap();
    // Closed form: same value, and gradients through both factors (h and W²).
    let (w, b, x, h) = encoder(device);
    let p = jacobian_penalty(
        &h,
        &x,
        &PenaltyOptions::default().estimator(&PenaltyEstimator::sigmoid_closed_form(&w)),
    )?;
    tol.check(&p, &fx("penalty", "closed", device)).unwrap();
    tol.check(&p, &fx("penalty", "exact", device)).unwrap();
    let (gw, gb) = grads(&p, &w, &b);
    tol.check(&gw, &fx("penalty", "closed_grad_w", device))
        .unwrap();
    tol.check(&gw, &fx("penalty", "grad_w", device)).unwrap();
    tol.check(&gb, &fx("penalty", "closed_grad_b", device))
        .unwrap();
    // Projections with PyTorch's directions.
    let (w, b, x, h) = encoder(device);
    let p = jacobian_penalty(
        &h,
        &x,
        &PenaltyOptions::default().estimator(&PenaltyEstimator::FixedProjections {
            v: fx("penalty", "v", device),
        }),
    )?;
    tol.check(&p, &fx("penalty", "proj", device)).unwrap();
    let (gw, gb) = grads(&p, &w, &b);
    tol.check(&gw, &fx("penalty", "proj_grad_w", device))
        .unwrap();
    tol.check(&gb, &fx("penalty", "proj_grad_b", device))
        .unwrap();
    Ok(())
}

/// Closed form equals exact (relative 1e-5 in f32, 1e-10 in f64) on random sigmoid encoders.
fn closed_form_equals_exact(device: Device) -> Result<()> {
    tch::manual_seed(3);
    for kind in [Kind::Float, Kind::Double] {
        for (batch, n, m) in [(1, 1, 1), (4, 10, 3), (16, 64, 32), (8, 5, 40)] {
            let w = Tensor::randn([m, n], (kind, device)) * 0.3;
            let b = Tensor::randn([m], (kind, device));
            let x = Tensor::randn([batch, n], (kind, device)).set_requires_grad(true);
            let h = (x.matmul(&w.tr()) + &b).sigmoid();
            let exact = jacobian_penalty_per_sample(
                &h,
                &x,
                &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
            )?;
            let closed = jacobian_penalty_per_sample(
                &h,
                &x,
                &PenaltyOptions::default().estimator(&PenaltyEstimator::sigmoid_closed_form(&w)),
            )?;
            let rtol = if kind == Kind::Double { 1e-10 } else { 1e-5 };
            Tolerance::new(rtol, 0.0)
                .check(&closed, &exact)
                .unwrap_or_else(|e| panic!("{kind:?} {batch}x{n}->{m}: {e}"));
        }
    }
    Ok(())
}

/// Mean over 200 seeds within 3% of exact; the spread shrinks as k grows.
fn projections_unbiased(device: Device) -> Result<()> {
    // Data drawn on the CPU and moved, so every device sees the same numbers (the CUDA generator
    // draws others); the directions come from StdRng seeds, the same on every device.
    tch::manual_seed(5);
    let (batch, n, m) = (4, 12, 10);
    let cpu = (Kind::Double, Device::Cpu);
    let w = Tensor::randn([m, n], cpu).to_device(device);
    let x = Tensor::randn([batch, n], cpu)
        .to_device(device)
        .set_requires_grad(true);
    let h = x.matmul(&w.tr()).sigmoid();
    let exact = jacobian_penalty(
        &h,
        &x,
        &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
    )?
    .double_value(&[]);
    let mut spreads = Vec::new();
    for k in [1usize, 4, 16] {
        let draws: Vec<f64> = (0..200u64)
            .map(|seed| {
                jacobian_penalty(
                    &h,
                    &x,
                    &PenaltyOptions::default().estimator(&PenaltyEstimator::Projections {
                        directions: k,
                        seed: Some(seed),
                    }),
                )
                .map(|p| p.double_value(&[]))
            })
            .collect::<Result<_>>()?;
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let sd = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (draws.len() - 1) as f64)
            .sqrt();
        // Unbiased: the mean of 200 draws is within 4 standard errors of the exact value (a
        // bound that holds for any data, unlike a fixed percentage; fails with probability
        // ~6e-5 per k for a normal mean).
        let se = sd / (draws.len() as f64).sqrt();
        assert!(
            (mean - exact).abs() <= 4.0 * se,
            "k={k}: mean {mean} vs exact {exact}, |Δ| = {:.3e} > 4 SE = {:.3e}",
            (mean - exact).abs(),
            4.0 * se
        );
        spreads.push(sd);
    }
    assert!(
        spreads[0] > spreads[1] && spreads[1] > spreads[2],
        "spread must shrink with k: {spreads:?}"
    );
    // Same seed, same value; torch's generator when no seed.
    let seeded = || {
        let est = PenaltyEstimator::Projections {
            directions: 2,
            seed: Some(9),
        };
        jacobian_penalty(&h, &x, &PenaltyOptions::default().estimator(&est))
    };
    let (a, b) = (seeded()?, seeded()?);
    assert_eq!(a.double_value(&[]), b.double_value(&[]));
    assert!(
        jacobian_penalty(
            &h,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Projections {
                directions: 2,
                seed: None
            })
        )?
        .double_value(&[])
            > 0.0
    );
    Ok(())
}

fn bad_inputs(device: Device) -> Result<()> {
    let k = (Kind::Float, device);
    let w = Tensor::randn([4, 3], k);
    let x = Tensor::randn([5, 3], k).set_requires_grad(true);
    let h = x.matmul(&w.tr()).sigmoid();
    // Closed form with shapes that are not a sigmoid layer's.
    assert_err(
        jacobian_penalty(
            &h,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::sigmoid_closed_form(
                &Tensor::randn([3, 4], k),
            )),
        ),
        &["w: [m, n]", "[3, 4]"],
    );
    assert_err(
        jacobian_penalty(
            &h,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::sigmoid_closed_form(
                &Tensor::randn([4], k),
            )),
        ),
        &["w [4]"],
    );
    // The closed form is for a sigmoid layer [B, m] of x [B, n] only.
    assert_err(
        jacobian_penalty(
            &h.reshape([5, 2, 2]),
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::sigmoid_closed_form(&w)),
        ),
        &["sigmoid closed form needs h: [B, m]", "[5, 2, 2]"],
    );
    // k = 0.
    assert_err(
        jacobian_penalty(
            &h,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Projections {
                directions: 0,
                seed: None,
            }),
        ),
        &["directions ≥ 1"],
    );
    // h not connected to x.
    let detached = x.detach().matmul(&w.tr()).sigmoid();
    assert_err(
        jacobian_penalty(
            &detached,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
        ),
        &["not connected to x"],
    );
    assert_err(
        jacobian_penalty(
            &detached,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Projections {
                directions: 1,
                seed: Some(1),
            }),
        ),
        &["not connected"],
    );
    // x without requires_grad, batch mismatch, empty batch, wrong fixed directions.
    assert_err(
        jacobian_penalty(
            &h,
            &x.detach(),
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
        ),
        &["does not require grad"],
    );
    assert_err(
        jacobian_penalty(
            &h.narrow(0, 0, 2),
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
        ),
        &["same batch size", "[2, 4]", "[5, 3]"],
    );
    // h or x without a batch dimension
    assert_err(
        jacobian_penalty(
            &h.sum_dim_intlist(1, false, Kind::Float),
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
        ),
        &["h: [B, *out]", "[5]"],
    );
    assert_err(
        jacobian_penalty(
            &h,
            &x.select(0, 0),
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
        ),
        &["x: [B, *in]", "[3]"],
    );
    // … while outputs of any rank after the batch dimension are fine: [5, 2, 2] as [5, 4]
    let exact = PenaltyOptions::default().estimator(&PenaltyEstimator::Exact);
    let flat = jacobian_penalty(&h, &x, &exact)?;
    let square = jacobian_penalty(&h.reshape([5, 2, 2]), &x, &exact)?;
    assert!(
        square.allclose(&flat, 1e-5, 1e-6, false),
        "{square:?} {flat:?}"
    );
    // and inputs of any rank: x [5, 3, 1]
    let x3 = x.detach().reshape([5, 3, 1]).set_requires_grad(true);
    let h3 = x3.reshape([5, 3]).matmul(&w.tr()).sigmoid();
    let deep = jacobian_penalty(&h3, &x3, &exact)?;
    assert!(deep.allclose(&flat, 1e-5, 1e-6, false), "{deep:?} {flat:?}");
    let e = Tensor::zeros([0, 3], k).set_requires_grad(true);
    assert_err(
        jacobian_penalty(
            &e.sigmoid(),
            &e,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
        ),
        &["empty batch"],
    );
    assert_err(
        jacobian_penalty(
            &h,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::FixedProjections {
                v: Tensor::ones([2, 5, 3], k),
            }),
        ),
        &[
            "FixedProjections needs v: [k ≥ 1, *h.shape] = [k, 5, 4]",
            "[2, 5, 3]",
        ],
    );
    Ok(())
}

/// Hutch++ with PyTorch's draws: the per-sample estimates and the gradients to W and b equal
/// the same formula written in PyTorch (tests/gen-fixtures.py).
fn hutch_plus_plus_matches_pytorch(device: Device) -> Result<()> {
    let c = "hutchpp";
    let (w, b, x) = (
        fx_var(c, "w", device),
        fx_var(c, "b", device),
        fx_var(c, "x", device),
    );
    let h = (x.matmul(&w.tr()) + &b).sigmoid();
    let est = PenaltyEstimator::FixedHutchPlusPlus {
        sketch: fx(c, "s", device),
        v: fx(c, "v", device),
    };
    let per_sample =
        jacobian_penalty_per_sample(&h, &x, &PenaltyOptions::default().estimator(&est))?;
    f64_tol()
        .check(&per_sample, &fx(c, "per_sample", device))
        .unwrap();
    let (gw, gb) = grads(&per_sample.mean(Kind::Double), &w, &b);
    f64_tol().check(&gw, &fx(c, "grad_w", device)).unwrap();
    f64_tol().check(&gb, &fx(c, "grad_b", device)).unwrap();
    Ok(())
}

/// Hutch++ is unbiased (the mean of 200 seeds within 4 standard errors of the exact value) and,
/// on an encoder whose Jacobian has two dominant directions, far less spread than projections
/// at the same number of products.
fn hutch_plus_plus_unbiased_and_tighter(device: Device) -> Result<()> {
    tch::manual_seed(11);
    let (batch, n, m) = (4, 12, 10);
    let cpu = (Kind::Double, Device::Cpu);
    // W = 3·(two rank-one directions) + a little of everything else.
    let w = (Tensor::randn([m, 2], cpu).matmul(&Tensor::randn([2, n], cpu)) * 3.0
        + Tensor::randn([m, n], cpu) * 0.1)
        .to_device(device);
    let x = (Tensor::randn([batch, n], cpu) * 0.1)
        .to_device(device)
        .set_requires_grad(true);
    let h = x.matmul(&w.tr()).sigmoid();
    let exact = jacobian_penalty(
        &h,
        &x,
        &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
    )?
    .double_value(&[]);
    let stats = |est: &dyn Fn(u64) -> PenaltyEstimator| -> Result<(f64, f64)> {
        let draws: Vec<f64> = (0..200u64)
            .map(|seed| {
                jacobian_penalty(&h, &x, &PenaltyOptions::default().estimator(&est(seed)))
                    .map(|p| p.double_value(&[]))
            })
            .collect::<Result<_>>()?;
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let sd = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (draws.len() - 1) as f64)
            .sqrt();
        Ok((mean, sd))
    };
    for k in [4usize, 8] {
        let (mean, sd) = stats(&|seed| PenaltyEstimator::HutchPlusPlus {
            directions: k,
            seed: Some(seed),
        })?;
        let se = sd / 200f64.sqrt();
        assert!(
            (mean - exact).abs() <= 4.0 * se + 1e-12 * exact,
            "k={k}: mean {mean} vs exact {exact}, 4 SE = {:.3e}",
            4.0 * se
        );
        let (_, sd_proj) = stats(&|seed| PenaltyEstimator::Projections {
            directions: k,
            seed: Some(seed),
        })?;
        eprintln!("k={k}: Hutch++ sd {sd:.3e}, projections sd {sd_proj:.3e}, exact {exact:.3e}");
        // k = 4 sketches one direction of the two, k = 8 both.
        let factor = if k == 4 { 0.8 } else { 0.2 };
        assert!(
            sd < factor * sd_proj,
            "k={k}: Hutch++ spread {sd:.3e} not below {factor} × the projections' {sd_proj:.3e}"
        );
    }
    Ok(())
}

/// Hutch++ through layer norm under create_graph, where the double-backward JVPs are wrong one
/// order higher: `J q` comes from each sample's `J` (not the whole batch's). With a sketch as wide
/// as the input, `Q` spans it and the estimate is exact: value and gradient equal `Exact`'s, and
/// the reroute is reported.
fn hutch_plus_plus_through_layer_norm(device: Device) -> Result<()> {
    let k = (Kind::Double, device);
    let (batch, n, m) = (5, 3, 8);
    let w = Tensor::randn([m, n], k).set_requires_grad(true);
    let x = Tensor::randn([batch, n], k).set_requires_grad(true);
    let h = x
        .matmul(&w.tr())
        .layer_norm([m], None::<Tensor>, None::<Tensor>, 1e-5, false);
    let exact = jacobian_penalty(
        &h,
        &x,
        &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
    )?;
    let _ = tch_jacobian::second_order::take_reroutes();
    let est = PenaltyEstimator::FixedHutchPlusPlus {
        sketch: Tensor::randn([n, batch, m], k),
        v: Tensor::randn([1, batch, m], k),
    };
    let hpp = jacobian_penalty(&h, &x, &PenaltyOptions::default().estimator(&est))?;
    if tch_jacobian::native::available() {
        let reroutes = tch_jacobian::second_order::take_reroutes();
        assert!(
            reroutes
                .iter()
                .any(|r| r.reason.contains("each sample's J")),
            "{reroutes:?}"
        );
    }
    f64_tol().check(&hpp, &exact).unwrap();
    let g_exact = Tensor::run_backward(&[&exact], &[&w], true, false).remove(0);
    let g_hpp = Tensor::run_backward(&[&hpp], &[&w], false, false).remove(0);
    f64_tol().check(&g_hpp, &g_exact).unwrap();
    Ok(())
}

/// Hutch++ with fewer than 3 directions has no sketch (`s = ⌊k/3⌋ = 0`): it is the plain
/// projection estimator with the same directions, to the bit.
fn hutch_plus_plus_without_a_sketch_is_projections(device: Device) -> Result<()> {
    let (_, _, x, h) = encoder(device);
    for k in [1, 2] {
        let hpp = jacobian_penalty(
            &h,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::HutchPlusPlus {
                directions: k,
                seed: Some(11),
            }),
        )?;
        let proj = jacobian_penalty(
            &h,
            &x,
            &PenaltyOptions::default().estimator(&PenaltyEstimator::Projections {
                directions: k,
                seed: Some(11),
            }),
        )?;
        assert!(hpp.equal(&proj), "k = {k}: {hpp:?} vs {proj:?}");
    }
    Ok(())
}

device_tests!(
    hutch_plus_plus_without_a_sketch_is_projections,
    matches_pytorch,
    closed_form_equals_exact,
    projections_unbiased,
    bad_inputs,
    hutch_plus_plus_matches_pytorch,
    hutch_plus_plus_unbiased_and_tighter,
    hutch_plus_plus_through_layer_norm
);
