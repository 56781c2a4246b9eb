//! The normalizations' second-order cost, for A/B runs of two builds in one shell
//! (docs/benchmarks.md, "Normalizations at every order: cost"): per case, median ms of 20 calls
//! after 3 warm-up calls, 2 intra-op threads, f32, CPU.
//!
//! * `bn2`: `jacobian_of` of `tanh(BN_train(x Wᵀ + b))` over `x` [64, 32] with create_graph,
//!   then `‖J‖²` backward to `W` [32, 32];
//! * `ln2`: the same with layer_norm over the last dim.
//!
//!     cargo run --release -p tch-jacobian-bench --bin norm_ab
use std::time::Instant;

use anyhow::Result;
use tch::{Device, Kind, Tensor};
use tch_jacobian::{jacobian_of, JacobianOptions};

fn median_ms(mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    for _ in 0..3 {
        let _ = f()?;
    }
    let mut t: Vec<f64> = (0..20)
        .map(|_| {
            let s = Instant::now();
            let _ = f()?;
            Ok(s.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok((t[9] + t[10]) / 2.0)
}

fn main() -> Result<()> {
    tch::set_num_threads(2);
    tch::manual_seed(0);
    let o = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([64, 32], o);
    let w = (Tensor::randn([32, 32], o) / 32f64.sqrt()).set_requires_grad(true);
    let b = Tensor::randn([32], o);
    for (name, bn) in [("bn2", true), ("ln2", false)] {
        let ms = median_ms(|| {
            let f = |x: &Tensor| {
                let h = x.matmul(&w.tr()) + &b;
                let n = if bn {
                    h.batch_norm(
                        None::<&Tensor>,
                        None::<&Tensor>,
                        None::<&Tensor>,
                        None::<&Tensor>,
                        true,
                        0.1,
                        1e-5,
                        false,
                    )
                } else {
                    h.layer_norm([32], None::<&Tensor>, None::<&Tensor>, 1e-5, false)
                };
                n.tanh()
            };
            let j = jacobian_of(f, &x, &JacobianOptions::default().create_graph(true))?;
            let l = j.square().sum(Kind::Float);
            Ok(Tensor::f_run_backward(&[l], &[&w], false, false)?.remove(0))
        })?;
        println!("{name} {ms:.2}");
    }
    Ok(())
}
