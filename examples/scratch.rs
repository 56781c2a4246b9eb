use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tch_jacobian::*;
fn main() -> Result<()> {
    tch::manual_seed(0);
    let w = (Tensor::randn([256, 784], (Kind::Float, Device::Cpu)) / 28.0).set_requires_grad(true);
    let x = Tensor::rand([128, 784], (Kind::Float, Device::Cpu));
    for chunk in [None, Some(128), Some(64)] {
        let mut ts = vec![];
        for _ in 0..6 {
            let t = Instant::now();
            let xg = x.detach().set_requires_grad(true);
            let h = xg.matmul(&w.tr()).sigmoid();
            let o = JacobianOptions::default()
                .create_graph(true)
                .strict(true)
                .strategy(Strategy::Batched { chunk_size: chunk });
            let j = batch_jacobian(&h, &xg, &o)?;
            let p = j.square().sum(Kind::Float) / 128.0;
            let _g = Tensor::run_backward(&[p], &[&w], false, false);
            ts.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{chunk:?} {:.1} ms", ts[3]);
    }
    Ok(())
}
