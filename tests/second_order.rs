//! Second derivatives where libtorch's own rules are wrong (see `tch_jacobian::second_order`).
use tch::{Device, Kind, Tensor};
use tch_jacobian::{jacobian_with, JacobianOptions, Strategy};

fn opts(s: Strategy) -> JacobianOptions<'static> {
    JacobianOptions::default().create_graph(true).strategy(s)
}

#[test]
fn layer_norm_weights_probe() {
    let o = (Kind::Double, Device::Cpu);
    let _ = tch::manual_seed(0);
    let x = Tensor::randn([1, 5], o);
    let w = Tensor::randn([5], o).set_requires_grad(true);
    let b = Tensor::randn([5], o).set_requires_grad(true);
    for s in [
        Strategy::RowLoop,
        Strategy::Auto,
        Strategy::Batched { chunk_size: None },
        Strategy::Batched {
            chunk_size: Some(2),
        },
    ] {
        let a = Tensor::from_slice(&[1.3f64]).set_requires_grad(true);
        let y = (&x * &a).layer_norm([5], Some(&w), Some(&b), 1e-5, false);
        let j = jacobian_with(&y, &[&w], &opts(s)).unwrap().remove(0);
        let l = j.square().sum(Kind::Double);
        let g = Tensor::run_backward(&[&l], &[&a], false, false).remove(0);
        println!("{s}: {:.10e}", g.double_value(&[0]));
    }
}
