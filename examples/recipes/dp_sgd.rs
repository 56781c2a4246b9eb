//! Recipe: DP-SGD (Abadi et al., 2016) on a `tch::nn` model: per-sample gradients, each clipped
//! to norm C, summed, noise N(0, σ²C²) added, divided by B. Privacy accounting (the ε spent) is
//! out of scope: see Opacus' RDP accountant. `cargo run --release --example dp_sgd`
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tch_jacobian::{per_sample_gradients_of_module, trainable_parameters, JacobianOptions, Result};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);
type Step = (Vec<Tensor>, Tensor); // the update per variable, the per-sample norms after clipping

/// The model, by a path so that the per-sample door can rebuild it. Dropout would work too: each
/// sample draws its own mask (`Randomness::Different`, the default).
fn net(p: &nn::Path) -> impl Module {
    nn::seq()
        .add(nn::linear(p / "fc1", 20, 32, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "fc2", 32, 3, Default::default()))
}

/// One sample's loss; `s = [x_b, t_b]`, without the batch dimension.
fn loss<M: Module>(m: &M, s: &[Tensor]) -> Result<Tensor> {
    let logits = m.forward(&s[0].unsqueeze(0));
    Ok(logits.cross_entropy_for_logits(&s[1].unsqueeze(0)))
}

/// One DP-SGD step on `vs` with clip norm `c`, noise multiplier `sigma` and step size `lr`.
fn step(vs: &nn::VarStore, x: &Tensor, t: &Tensor, c: f64, sigma: f64, lr: f64) -> Result<Step> {
    let per = per_sample_gradients_of_module(vs, net, loss, &[x, t], &JacobianOptions::default())?;
    let flat: Vec<_> = per.gradients.iter().map(|g| g.1.flatten(1, -1)).collect();
    let norms = Tensor::cat(&flat, 1).norm_scalaropt_dim(2, [1i64].as_slice(), false); // [B]
    let scale = (c / (&norms + 1e-12)).clamp_max(1.0); // min(1, C/‖g_b‖)
    let mut update = vec![];
    for ((_, mut p), g) in trainable_parameters(vs).into_iter().zip(&flat) {
        let u = (scale.matmul(g).view_as(&p) + p.randn_like() * (sigma * c)) / x.size()[0] as f64;
        let _ = tch::no_grad(|| p.f_sub_(&(&u * lr)))?;
        update.push(u);
    }
    Ok((update, norms * scale))
}

fn main() -> Result<()> {
    tch::manual_seed(0);
    let x = Tensor::randn([2048, 20], CPU);
    let t = x.narrow(1, 0, 3).argmax(1, false); // the class: the largest of the first 3 features
    let vs = nn::VarStore::new(Device::Cpu);
    let model = net(&vs.root());
    for s in 0..=200 {
        if s % 50 == 0 {
            let right = model.forward(&x).argmax(1, false).eq_tensor(&t);
            let acc = right.mean(Kind::Float).double_value(&[]);
            println!("step {s}: accuracy {acc:.3}");
        }
        let idx = Tensor::randint(2048, [256], (Kind::Int64, Device::Cpu)); // Opacus: Poisson
        let (xb, tb) = (x.index_select(0, &idx), t.index_select(0, &idx));
        let _ = step(&vs, &xb, &tb, 1.0, 1.0, 0.5)?; // C = 1, σ = 1, lr = 0.5
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn clipped_norms_and_the_noiseless_unclipped_step() {
        tch::manual_seed(1);
        let x = Tensor::randn([16, 20], CPU);
        let t = Tensor::randint(3, [16], (Kind::Int64, Device::Cpu));
        let vs = nn::VarStore::new(Device::Cpu);
        let model = net(&vs.root());
        let ps: Vec<_> = trainable_parameters(&vs).into_iter().map(|p| p.1).collect();
        let mean_loss = model.forward(&x).cross_entropy_for_logits(&t);
        let want = Tensor::run_backward(&[mean_loss], &ps, false, false);
        let (update, _) = step(&vs, &x, &t, 1e6, 0.0, 0.0).unwrap(); // σ = 0, no clipping
        for (u, w) in update.iter().zip(&want) {
            assert!(u.allclose(w, 1e-4, 1e-6, false), "{u} vs {w}");
        }
        let (_, norms) = step(&vs, &x, &t, 0.1, 1.0, 0.1).unwrap();
        let (min, max) = (norms.min().double_value(&[]), norms.max().double_value(&[]));
        assert!(max <= 0.1 + 1e-6 && min > 0.099, "{norms}"); // all clipped at this C
    }
}
