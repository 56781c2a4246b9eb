//! Third derivatives through the normalizations, where libtorch 2.11's own autograd is wrong
//! (pytorch#175754 for layer norm, #186256 for batch norm: the double-backward formula takes the
//! saved mean and 1/σ as constants one order up), against central differences (f64) of the
//! crate's second-order values, for every strategy.
//!
//! * the PINN loss `mean((Δu)²)` through a LayerNorm MLP, differentiated to the first weight;
//! * `Σ R∘hessian_of(u, x)` through the same network;
//! * `‖J‖²`-penalties' gradients one order up: `⟨R₂, ∂⟨R₁, J⟩/∂x⟩` differentiated to `x` for
//!   layer norm, batch norm (training) and instance norm closures.
mod common;

use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    hessian_of, jacobian_of, laplacian_of, per_sample_hessian_of, JacobianOptions, Result, Strategy,
};

/// `|a − b| ≤ atol + rtol·|b|` elementwise, with central differences' accuracy in f64
/// (h = 1e-5: truncation ~h², rounding ~ε/h).
fn assert_close_fd(what: &str, got: f64, fd: f64) {
    let (rtol, atol) = (1e-5, 1e-7);
    assert!(
        (got - fd).abs() <= atol + rtol * fd.abs(),
        "{what}: crate {got:.12e}, central differences {fd:.12e} (rel. error {:.3e})",
        (got - fd).abs() / fd.abs().max(1e-300)
    );
}

fn randn(shape: &[i64], device: Device) -> Tensor {
    Tensor::randn(shape, (Kind::Double, device))
}

/// `u(x) = W2·tanh(LN(W1 x + b1))` per sample, `x: [B, d]` → `[B]`.
struct Pinn {
    w1: Tensor,
    b1: Tensor,
    g: Tensor,
    w2: Tensor,
}

impl Pinn {
    fn new(d: i64, h: i64, device: Device) -> Self {
        Pinn {
            w1: randn(&[h, d], device) * 0.7,
            b1: randn(&[h], device) * 0.3,
            g: randn(&[h], device) * 0.5 + 1.0,
            w2: randn(&[1, h], device) * 0.5,
        }
    }
    fn u(&self, w1: &Tensor, x: &Tensor) -> Tensor {
        let h = x.matmul(&w1.tr()) + &self.b1;
        let h = h.layer_norm(
            [self.b1.size()[0]],
            Some(&self.g),
            None::<&Tensor>,
            1e-5,
            false,
        );
        h.tanh().matmul(&self.w2.tr()).squeeze_dim(-1)
    }
}

/// `⟨∂L/∂W1, D⟩` by the crate (create_graph then one backward pass) against
/// `(L(W1 + hD) − L(W1 − hD)) / 2h`, for a loss `L(W1)` built on the crate's second-order values.
fn check_third_order(
    what: &str,
    w1: &Tensor,
    loss: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    let w = w1.detach().set_requires_grad(true);
    let l = loss(&w)?;
    let g = Tensor::run_backward(&[&l], &[&w], false, false).remove(0);
    let d = Tensor::randn(w1.size(), (Kind::Double, w1.device()));
    let got = (&g * &d).sum(Kind::Double).double_value(&[]);
    let h = 1e-5;
    let at = |s: f64| -> Result<f64> {
        let wp = (w1 + &d * s).detach();
        Ok(loss(&wp)?.double_value(&[]))
    };
    let fd = (at(h)? - at(-h)?) / (2.0 * h);
    assert_close_fd(what, got, fd);
    Ok(())
}

fn strategies_for_hessians() -> Vec<Strategy> {
    let mut all = vec![Strategy::Auto, Strategy::RowLoop];
    if tch_jacobian::native::available() {
        all.push(Strategy::Batched { chunk_size: None });
        all.push(Strategy::Batched {
            chunk_size: Some(2),
        });
    }
    all
}

/// The PINN row of issue 22: `mean((Δu)²)` through LayerNorm, d = 3, B = 5, to W1.
fn pinn_laplacian_through_layer_norm(device: Device) -> Result<()> {
    tch::manual_seed(7);
    let net = Pinn::new(3, 8, device);
    let x = randn(&[5, 3], device);
    for s in strategies_for_hessians() {
        let opts = JacobianOptions::default().create_graph(true).strategy(s);
        check_third_order(&format!("laplacian_of {s}"), &net.w1, &|w1| {
            let lap = laplacian_of(|x: &Tensor| net.u(w1, x), &x, &opts)?;
            Ok(lap.square().mean(Kind::Double))
        })?;
    }
    Ok(())
}

/// `Σ R∘hessian_of(u, x)` to W1 (one sample), and the per-sample Hessians' `Σ R∘H`.
fn hessian_penalty_through_layer_norm(device: Device) -> Result<()> {
    tch::manual_seed(8);
    let net = Pinn::new(3, 8, device);
    let x = randn(&[5, 3], device);
    let r = randn(&[3, 3], device);
    let rb = randn(&[5, 3, 3], device);
    for s in strategies_for_hessians() {
        let opts = JacobianOptions::default().create_graph(true).strategy(s);
        check_third_order(&format!("hessian_of {s}"), &net.w1, &|w1| {
            let hess = hessian_of(
                |x0: &Tensor| net.u(w1, &x0.unsqueeze(0)).sum(Kind::Double),
                &x.get(0),
                &opts,
            )?;
            Ok((hess * &r).sum(Kind::Double))
        })?;
        check_third_order(&format!("per_sample_hessian_of {s}"), &net.w1, &|w1| {
            let hess = per_sample_hessian_of(|x: &Tensor| net.u(w1, x), &x, &opts)?;
            Ok((hess * &rb).sum(Kind::Double))
        })?;
    }
    Ok(())
}

/// `L(a) = ⟨R₂, ∂⟨R₁, J_f(x)⟩/∂x⟩` for `f = norm(a·x)`, differentiated to the scale `a` (third
/// order in the input), for layer norm, batch norm (training) and instance norm.
fn norm_closures_third_order(device: Device) -> Result<()> {
    tch::manual_seed(9);
    let x = randn(&[4, 3, 5], device);
    let weight = randn(&[3], device) * 0.5 + 1.0;
    let lweight = randn(&[5], device) * 0.5 + 1.0;
    type Norm<'a> = (&'a str, Box<dyn Fn(&Tensor) -> Tensor + 'a>);
    let norms: Vec<Norm> = vec![
        (
            "layer_norm",
            Box::new(|z: &Tensor| {
                z.layer_norm([5], Some(&lweight), None::<&Tensor>, 1e-5, false)
                    .tanh()
            }),
        ),
        (
            "batch_norm",
            Box::new(|z: &Tensor| {
                z.batch_norm(
                    Some(&weight),
                    None::<&Tensor>,
                    None::<&Tensor>,
                    None::<&Tensor>,
                    true,
                    0.1,
                    1e-5,
                    false,
                )
                .sin()
            }),
        ),
        (
            "instance_norm",
            Box::new(|z: &Tensor| {
                z.instance_norm(
                    Some(&weight),
                    None::<&Tensor>,
                    None::<&Tensor>,
                    None::<&Tensor>,
                    true,
                    0.1,
                    1e-5,
                    false,
                )
                .sin()
            }),
        ),
    ];
    let r1 = randn(&[4, 3, 5, 4, 3, 5], device);
    let r2 = randn(&[4, 3, 5], device);
    let a0 = Tensor::from_slice(&[1.3f64]).to_device(device);
    let mut strategies = vec![Strategy::Auto, Strategy::RowLoop];
    if tch_jacobian::native::available() {
        strategies.push(Strategy::Batched {
            chunk_size: Some(16),
        });
    }
    for (name, f) in &norms {
        for s in &strategies {
            let opts = JacobianOptions::default().create_graph(true).strategy(*s);
            check_third_order(&format!("{name} {s}"), &a0, &|a| {
                let xa = &x * a;
                let xa = if xa.requires_grad() {
                    xa
                } else {
                    xa.set_requires_grad(true)
                };
                let j = jacobian_of(|z: &Tensor| f(z), &xa, &opts)?;
                let inner = (j * &r1).sum(Kind::Double);
                let g = Tensor::f_run_backward(&[&inner], &[&xa], true, true)?.remove(0);
                Ok((g * &r2).sum(Kind::Double))
            })?;
        }
    }
    Ok(())
}

device_tests!(
    pinn_laplacian_through_layer_norm,
    hessian_penalty_through_layer_norm,
    norm_closures_third_order
);
