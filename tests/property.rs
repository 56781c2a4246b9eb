//! Property test: random shapes, batch sizes, chunk sizes, several inputs, create_graph on and
//! off, f32 and f64 — every strategy against the notebook's row loop.
//!
//! `y = tanh(Σ_k x_k·A_k)` reshaped to a random output shape, with `x_k` of random shapes. Each
//! strategy's Jacobian blocks must equal `RowLoop`'s (f64: |Δ| ≤ 1e-12 + 1e-12·|J|; f32: 1e-5
//! relative), and with create_graph so must the gradient of `Σ‖J_k‖²` with respect to every
//! `A_k` (second-order values). Batched passes run with the vmap fallback off.
mod common;

use common::*;
use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    jacobian_of, jacobian_with, laplacian_of, per_sample_hessian_of, per_sample_jacobian,
    per_sample_jacobian_of, testing::Tolerance, Strategy,
};

/// A strategy with its chunk size set to `chunk` where it has one.
fn with_chunk(s: Strategy, chunk: Option<usize>) -> Strategy {
    match s {
        Strategy::Batched { .. } => Strategy::Batched { chunk_size: chunk },
        Strategy::Vectorized { .. } => Strategy::Vectorized { chunk_size: chunk },
        Strategy::VectorizedForward { .. } => Strategy::VectorizedForward { chunk_size: chunk },
        s => s,
    }
}

fn tol(kind: Kind) -> Tolerance {
    if kind == Kind::Double {
        Tolerance::new(1e-12, 1e-12)
    } else {
        Tolerance::new(1e-5, 1e-6)
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// Per-input shapes (without a batch dimension).
    inputs: Vec<Vec<i64>>,
    /// Output shape (without a batch dimension); its product is m.
    out: Vec<i64>,
    batch: Option<i64>,
    chunk: Option<usize>,
    create_graph: bool,
    double: bool,
    seed: i64,
}

fn shape() -> impl proptest::strategy::Strategy<Value = Vec<i64>> {
    prop::collection::vec(1i64..4, 0..3)
}

fn case() -> impl proptest::strategy::Strategy<Value = Case> {
    (
        prop::collection::vec(shape(), 1..4),
        shape(),
        prop::option::of(1i64..4),
        prop::option::of(1usize..8),
        any::<bool>(),
        any::<bool>(),
        0i64..1000,
    )
        .prop_map(
            |(inputs, out, batch, chunk, create_graph, double, seed)| Case {
                inputs,
                out,
                batch,
                chunk,
                create_graph,
                double,
                seed,
            },
        )
}

fn numel(s: &[i64]) -> i64 {
    s.iter().product()
}

fn check(case: &Case) -> tch_jacobian::Result<()> {
    tch::manual_seed(case.seed);
    let kind = if case.double {
        Kind::Double
    } else {
        Kind::Float
    };
    let opt = (kind, Device::Cpu);
    let m = numel(&case.out);
    // A single input when batched (per-sample Jacobians have one input).
    let inputs: Vec<Vec<i64>> = if case.batch.is_some() {
        case.inputs[..1].to_vec()
    } else {
        case.inputs.clone()
    };
    let a: Vec<Tensor> = inputs
        .iter()
        .map(|s| Tensor::randn([numel(s), m], opt).set_requires_grad(true))
        .collect();
    let lead: Vec<i64> = case.batch.into_iter().collect();
    let xs: Vec<Tensor> = inputs
        .iter()
        .map(|s| {
            let full: Vec<i64> = lead.iter().chain(s).copied().collect();
            Tensor::randn(full.as_slice(), opt).set_requires_grad(true)
        })
        .collect();
    // y = tanh(Σ_k flat(x_k) A_k), shaped [(B,) *out]; row-wise on any leading dimensions.
    let f = |xs: &[&Tensor]| -> Tensor {
        let lead_dims = xs[0].dim() - inputs[0].len();
        let lead = xs[0].size()[..lead_dims].to_vec();
        let mut flat_shape = lead.clone();
        flat_shape.push(-1);
        let z = xs
            .iter()
            .zip(&a)
            .map(|(x, ak)| x.reshape(flat_shape.as_slice()).matmul(ak))
            .reduce(|p, q| p + q)
            .expect("one input");
        let out: Vec<i64> = lead.iter().chain(&case.out).copied().collect();
        z.tanh().reshape(out.as_slice())
    };
    let xr: Vec<&Tensor> = xs.iter().collect();
    let y = f(&xr);
    let base = fast_opts(Strategy::RowLoop).create_graph(case.create_graph);
    let second = |js: &[Tensor]| -> tch_jacobian::Result<Vec<Tensor>> {
        let total = js
            .iter()
            .map(|j| j.square().sum(kind))
            .reduce(|p, q| p + q)
            .expect("one block");
        let refs: Vec<&Tensor> = a.iter().collect();
        Ok(Tensor::f_run_backward(&[total], &refs, true, false)?)
    };
    let compare = |what: &str, got: &[Tensor], want: &[Tensor]| {
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            tol(kind)
                .check(g, w)
                .unwrap_or_else(|e| panic!("{what} block {k}, {case:?}: {e}"));
        }
    };
    let check_second = |what: &str, got: &[Tensor], want: &[Tensor]| -> tch_jacobian::Result<()> {
        if case.create_graph && m > 0 {
            // A strategy that dropped create_graph must fail here, not skip the check.
            for (k, j) in got.iter().enumerate() {
                assert!(
                    j.requires_grad(),
                    "{what} block {k} (shape {:?}, {:?}) does not require grad under create_graph, {case:?}",
                    j.size(),
                    j.kind()
                );
            }
            compare(&format!("{what} d‖J‖²/dA"), &second(got)?, &second(want)?);
        }
        Ok(())
    };
    let strategies: Vec<Strategy> = strategies()
        .into_iter()
        .map(|s| with_chunk(s, case.chunk))
        .collect();
    match case.batch {
        None => {
            let reference = jacobian_with(&y, &xr, &base)?;
            for s in strategies.iter().filter(|s| !needs_closure(**s)) {
                let got = jacobian_with(&y, &xr, &base.strategy(*s))?;
                compare(&format!("jacobian_with {s:?}"), &got, &reference);
                check_second(&format!("jacobian_with {s:?}"), &got, &reference)?;
            }
            if xr.len() == 1 {
                let g = |x: &Tensor| f(&[x]);
                let reference = vec![jacobian_of(g, &xs[0], &base)?];
                for s in &strategies {
                    let got = vec![jacobian_of(g, &xs[0], &base.strategy(*s))?];
                    compare(&format!("jacobian_of {s:?}"), &got, &reference);
                }
            }
        }
        Some(_) => {
            let reference = vec![per_sample_jacobian(&y, &xs[0], &base)?];
            let g = |x: &Tensor| f(&[x]);
            for s in &strategies {
                if !needs_closure(*s) {
                    let got = vec![per_sample_jacobian(&y, &xs[0], &base.strategy(*s))?];
                    compare(&format!("per_sample_jacobian {s:?}"), &got, &reference);
                    check_second(&format!("per_sample_jacobian {s:?}"), &got, &reference)?;
                }
                let got = vec![per_sample_jacobian_of(g, &xs[0], &base.strategy(*s))?];
                compare(&format!("per_sample_jacobian_of {s:?}"), &got, &reference);
            }
            // Per-sample Hessians and Laplacians of u(x) = ‖f(x)_b‖² against the row loop.
            let b = xs[0].size()[0];
            if b > 0 {
                let u = |x: &Tensor| {
                    f(&[x])
                        .reshape([b, -1])
                        .square()
                        .sum_dim_intlist(1, false, kind)
                };
                let h_ref = vec![per_sample_hessian_of(u, &xs[0], &base)?];
                let l_ref = vec![laplacian_of(u, &xs[0], &base)?];
                for s in strategies.iter().filter(|s| !needs_closure(**s)) {
                    let o = base.strategy(*s);
                    compare(
                        &format!("per_sample_hessian_of {s:?}"),
                        &[per_sample_hessian_of(u, &xs[0], &o)?],
                        &h_ref,
                    );
                    compare(
                        &format!("laplacian_of {s:?}"),
                        &[laplacian_of(u, &xs[0], &o)?],
                        &l_ref,
                    );
                }
            }
        }
    }
    Ok(())
}

/// The generator's seed: fixed, so that every run (CI included) checks the same 48 cases and a
/// failure reproduces; `PROPTEST_RNG_SEED=<u64>` picks other cases on purpose. The failing case
/// is printed in full by the panic message (failure files are not kept: `failure_persistence`
/// off, the seed reproduces it).
fn rng_seed() -> proptest::test_runner::RngSeed {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_251_126);
    proptest::test_runner::RngSeed::Fixed(seed)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        rng_seed: rng_seed(),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_strategy_equals_the_row_loop(case in case()) {
        check(&case).unwrap_or_else(|e| panic!("{case:?}: {e}"));
    }
}
