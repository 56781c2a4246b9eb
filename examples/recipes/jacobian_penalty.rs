//! Recipe: Jacobian regularization of a classifier (Hoffman, Roberts & Yaida, 2019).
//!
//! loss = cross-entropy + λ · mean_b ‖∂logits_b/∂x_b‖²_F on mini-batches of a `tch::nn` MLP.
//! The penalty is [`contractive_penalty`] (the same function as the contractive auto-encoder's).
//!
//! `cargo run --release --example jacobian_penalty`
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_jacobian::{jacobian_penalty, PenaltyEstimator, PenaltyOptions};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// Synthetic 4-class data in ℝ¹⁶: the class is the argmax of a fixed random linear map.
fn data(n: i64, teacher: &Tensor) -> (Tensor, Tensor) {
    let x = Tensor::randn([n, 16], CPU);
    let t = x.matmul(teacher).argmax(1, false);
    (x, t)
}

/// Trains with penalty weight `lambda`; returns (test accuracy, mean exact ‖J‖²_F on the test set).
fn train(lambda: f64, n: i64, epochs: usize) -> tch_jacobian::Result<(f64, f64)> {
    tch::manual_seed(0);
    let teacher = Tensor::randn([16, 4], CPU);
    let ((x, t), (x_test, t_test)) = (data(n, &teacher), data(1000, &teacher));
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root();
    let net = nn::seq()
        .add(nn::linear(&p / "fc1", 16, 64, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&p / "fc2", 64, 4, Default::default()));
    let mut opt = nn::Adam::default().build(&vs, 3e-3)?;
    for _ in 0..epochs {
        for idx in Tensor::randperm(n, (Kind::Int64, Device::Cpu)).split(64, 0) {
            // x must require grad BEFORE the forward pass: the penalty differentiates against it.
            let xb = x.index_select(0, &idx).set_requires_grad(true);
            let logits = net.forward(&xb);
            let ce = logits.cross_entropy_for_logits(&t.index_select(0, &idx));
            // One random projection per sample and step (unbiased; one create_graph backward
            // pass). `PenaltyEstimator::Exact` is one batched pass over the classes with the
            // engine (one pass per class without it); `HutchPlusPlus` is less noisy.
            let est = PenaltyEstimator::Projections {
                directions: 1,
                seed: None,
            };
            let loss = if lambda > 0.0 {
                ce + lambda
                    * jacobian_penalty(&logits, &xb, &PenaltyOptions::default().estimator(&est))?
            } else {
                ce
            };
            opt.backward_step(&loss);
        }
    }
    let xe = x_test.set_requires_grad(true);
    let logits = net.forward(&xe);
    let acc = logits
        .argmax(1, false)
        .eq_tensor(&t_test)
        .to_kind(Kind::Float);
    let j2 = jacobian_penalty(
        &logits,
        &xe,
        &PenaltyOptions::default().estimator(&PenaltyEstimator::Exact),
    )?; // mean_b ‖J_b‖²_F
    Ok((
        acc.mean(Kind::Float).double_value(&[]),
        j2.double_value(&[]),
    ))
}

fn main() -> tch_jacobian::Result<()> {
    for lambda in [0.0, 0.01, 0.1] {
        let (acc, j2) = train(lambda, 4000, 30)?;
        println!("λ = {lambda:<5} test accuracy {acc:.3}  mean ‖J‖²_F {j2:.2}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_penalty_shrinks_the_jacobian() {
        let (acc0, j0) = super::train(0.0, 1000, 20).unwrap();
        let (acc1, j1) = super::train(0.1, 1000, 20).unwrap();
        println!("λ = 0: acc {acc0:.3} ‖J‖² {j0:.3}; λ = 0.1: acc {acc1:.3} ‖J‖² {j1:.3}");
        assert!(j1 < 0.2 * j0, "‖J‖² {j1} with λ = 0.1, {j0} without");
        assert!(acc1 > 0.7, "accuracy {acc1}");
    }
}
