//! Derivatives inside a Laplacian's closure, and closures that must give one answer whatever the
//! method: the biharmonic Δ²v (a Laplacian of a Laplacian), Δ‖∇v‖² (a Laplacian of a gradient
//! taken inside the closure by every crate route), a plain autograd backward pass inside the
//! closure, and a `no_grad` region inside it.
//!
//! The truth is analytic, independent of the crate: for the one-hidden-layer network
//! `v(x) = Σ_k c_k tanh(w_k·x + b_k)` every derivative is a closed form in the derivatives of
//! tanh. Every (inner, outer) pair of methods must give it (f64, rtol 1e-9), or — only where the
//! outer method is explicitly `Taylor` and the inner one is explicitly collapsed Taylor mode too
//! (one session per thread) — an `Error::NoTaylorRule`.
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    batch_jacobian_of, laplacian_of, Error, JacobianOptions, Laplacian, LaplacianMethod, Result,
    Strategy,
};

const O: (Kind, Device) = (Kind::Double, Device::Cpu);
const K: i64 = 4; // hidden units
const N: i64 = 3; // input dimension
const B: i64 = 5; // samples

/// The network's parameters (seeded) and a batch of inputs.
struct Net {
    w: Tensor, // [K, N]
    b: Tensor, // [K]
    c: Tensor, // [K]
    x: Tensor, // [B, N]
}

fn net() -> Net {
    tch::manual_seed(29);
    Net {
        w: Tensor::randn([K, N], O) * 0.7,
        b: Tensor::randn([K], O) * 0.3,
        c: Tensor::randn([K], O),
        x: Tensor::randn([B, N], O) * 0.8,
    }
}

impl Net {
    /// v(x) = Σ_k c_k tanh(w_k·x + b_k), one scalar per sample.
    fn v(&self, x: &Tensor) -> Tensor {
        (x.matmul(&self.w.tr()) + &self.b).tanh().matmul(&self.c)
    }

    /// z = w·x + b [B, K] and tanh's derivatives t⁽ⁱ⁾(z), i = 1..4.
    fn tanh_derivatives(&self) -> [Tensor; 5] {
        let t = (self.x.matmul(&self.w.tr()) + &self.b).tanh();
        let t1: Tensor = 1.0 - t.square();
        let t2: Tensor = (&t * &t1) * -2.0;
        let t3: Tensor = (t1.square() + &t * &t2) * -2.0;
        let t4: Tensor = ((&t1 * &t2) * 3.0 + &t * &t3) * -2.0;
        [t, t1, t2, t3, t4]
    }

    /// |w_k|² [K].
    fn w2(&self) -> Tensor {
        self.w.square().sum_dim_intlist(1, false, Kind::Double)
    }

    /// Δ²v = Σ_k c_k |w_k|⁴ t⁗(z_k).
    fn biharmonic(&self) -> Tensor {
        let [_, _, _, _, t4] = self.tanh_derivatives();
        (t4 * self.w2().square()).matmul(&self.c)
    }

    /// Δ‖∇v‖² with ∇v = Σ_k c_k t′_k w_k:
    /// Σ_{k,l} c_k c_l (w_k·w_l) [t′_k t‴_l |w_l|² + t′_l t‴_k |w_k|² + 2 t″_k t″_l (w_k·w_l)].
    fn laplacian_of_grad_norm(&self) -> Tensor {
        let [_, t1, t2, t3, _] = self.tanh_derivatives();
        let g = self.w.matmul(&self.w.tr()); // [K, K] w_k·w_l
        let cc = self.c.unsqueeze(1) * self.c.unsqueeze(0) * &g; // [K, K]
                                                                 // t′_k c_k · t‴_l |w_l|² c_l (w_k·w_l)
        let a = (&t1 * &self.c).unsqueeze(2) * (&t3 * (self.w2() * &self.c)).unsqueeze(1) * &g;
        let first = a.sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Double) * 2.0; // k↔l symmetric
        let second = (t2.unsqueeze(2) * t2.unsqueeze(1) * &cc * &g).sum_dim_intlist(
            [1i64, 2].as_slice(),
            false,
            Kind::Double,
        ) * 2.0;
        first + second
    }
}

fn opts() -> JacobianOptions<'static> {
    JacobianOptions::default().create_graph(true)
}

fn check(got: Result<Tensor>, want: &Tensor, what: &str) {
    let got = got.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got.kind(), Kind::Double, "{what}: dtype");
    let diff = (&got - want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]).max(1e-3);
    assert!(
        diff <= 1e-9 * scale,
        "{what}: max |Δ| {diff:e} (scale {scale:e}); got {got:?}, want {want:?}"
    );
}

/// A derivative computed inside the closure, from the network and the closure's input.
type Inner = Box<dyn Fn(&Net, &Tensor) -> Result<Tensor>>;

/// The inner Laplacian's methods (as `Laplacian` and as `laplacian_of`).
fn inner_laplacians() -> Vec<(&'static str, Inner)> {
    let lap = |m: LaplacianMethod| {
        move |n: &Net, x: &Tensor| -> Result<Tensor> {
            Ok(Laplacian::new()
                .create_graph(true)
                .method(m)
                .compute(|x: &Tensor| n.v(x), x)?
                .laplacian)
        }
    };
    let lap_of = |s: Strategy| {
        move |n: &Net, x: &Tensor| laplacian_of(|x: &Tensor| n.v(x), x, &opts().strategy(s))
    };
    let mut all: Vec<(&'static str, Inner)> = vec![
        ("Laplacian Auto", Box::new(lap(LaplacianMethod::Auto))),
        ("Laplacian Taylor", Box::new(lap(LaplacianMethod::Taylor))),
        ("Laplacian Nested", Box::new(lap(LaplacianMethod::Nested))),
        ("laplacian_of Auto", Box::new(lap_of(Strategy::Auto))),
        ("laplacian_of RowLoop", Box::new(lap_of(Strategy::RowLoop))),
    ];
    if tch_jacobian::native::available() {
        all.push((
            "laplacian_of Batched",
            Box::new(lap_of(Strategy::Batched { chunk_size: None })),
        ));
    }
    all
}

const OUTER: [LaplacianMethod; 3] = [
    LaplacianMethod::Auto,
    LaplacianMethod::Taylor,
    LaplacianMethod::Nested,
];

/// Δ²v: the outer Laplacian of a closure that computes Δv, for every pair of methods.
#[test]
fn biharmonic_by_every_pair_of_methods() {
    let n = net();
    let truth = n.biharmonic();
    for (inner_name, inner) in inner_laplacians() {
        for outer in OUTER {
            let what = format!("Δ²v: outer {outer:?}, inner {inner_name}");
            let got = Laplacian::new()
                .method(outer)
                .compute(|x: &Tensor| inner(&n, x), &n.x)
                .map(|o| o.laplacian);
            // Collapsed Taylor mode cannot follow a collapsed Taylor pass inside its closure (one
            // session per thread); a batched pass inside it runs as a loop it follows.
            let unfollowable = inner_name == "Laplacian Taylor";
            if outer == LaplacianMethod::Taylor && unfollowable {
                match got {
                    Err(Error::NoTaylorRule { .. }) => continue,
                    other => panic!("{what}: expected NoTaylorRule, got {other:?}"),
                }
            }
            check(got, &truth, &what);
        }
    }
}

/// Δ‖∇v‖² with ∇v taken inside the closure by every crate route.
#[test]
fn laplacian_of_a_gradient_norm_by_every_route() {
    let n = net();
    let truth = n.laplacian_of_grad_norm();
    type Grad = Inner;
    let by_jacobian = |s: Strategy| -> Grad {
        Box::new(move |n: &Net, x: &Tensor| {
            let j = batch_jacobian_of(|x: &Tensor| n.v(x).unsqueeze(1), x, &opts().strategy(s))?;
            Ok(j.squeeze_dim(1)) // [B, N]
        })
    };
    let by_laplacian = |m: LaplacianMethod| -> Grad {
        Box::new(move |n: &Net, x: &Tensor| {
            let out = Laplacian::new()
                .create_graph(true)
                .method(m)
                .compute(|x: &Tensor| n.v(x), x)?;
            Ok(out.gradient.expect("the exact Laplacian has the gradient"))
        })
    };
    let by_backward: Grad = Box::new(|n: &Net, x: &Tensor| {
        // plain autograd inside the closure, with respect to the closure's input
        let y = n.v(x).sum(Kind::Double);
        Ok(Tensor::f_run_backward(&[&y], &[x], true, true)?.remove(0))
    });
    let mut routes: Vec<(&str, Grad)> = vec![
        ("batch_jacobian_of Auto", by_jacobian(Strategy::Auto)),
        ("batch_jacobian_of RowLoop", by_jacobian(Strategy::RowLoop)),
        ("batch_jacobian_of Forward", by_jacobian(Strategy::Forward)),
        (
            "batch_jacobian_of Vectorized",
            by_jacobian(Strategy::Vectorized { chunk_size: None }),
        ),
        (
            "Laplacian Auto gradient",
            by_laplacian(LaplacianMethod::Auto),
        ),
        (
            "Laplacian Taylor gradient",
            by_laplacian(LaplacianMethod::Taylor),
        ),
        (
            "Laplacian Nested gradient",
            by_laplacian(LaplacianMethod::Nested),
        ),
    ];
    if tch_jacobian::native::available() {
        routes.push((
            "batch_jacobian_of Batched",
            by_jacobian(Strategy::Batched { chunk_size: None }),
        ));
    }
    for (name, grad) in &routes {
        for outer in OUTER {
            let what = format!("Δ‖∇v‖²: outer {outer:?}, ∇v by {name}");
            let got = Laplacian::new()
                .method(outer)
                .compute(
                    |x: &Tensor| -> Result<Tensor> {
                        let g = grad(&n, x)?;
                        Ok(g.square().sum_dim_intlist(1, false, Kind::Double))
                    },
                    &n.x,
                )
                .map(|o| o.laplacian);
            let unfollowable = *name == "Laplacian Taylor gradient";
            if outer == LaplacianMethod::Taylor && unfollowable {
                match got {
                    Err(Error::NoTaylorRule { .. }) => continue,
                    other => panic!("{what}: expected NoTaylorRule, got {other:?}"),
                }
            }
            check(got, &truth, &what);
        }
    }
    // A plain backward pass inside the closure with respect to its input: followed with
    // create_graph (the input then requires grad, as nested reverse mode hands it over); without
    // it the input does not require grad, the pass is refused, and Auto reruns by nested
    // reverse mode.
    for create_graph in [false, true] {
        for outer in [LaplacianMethod::Auto, LaplacianMethod::Nested] {
            let what =
                format!("Δ‖∇v‖²: outer {outer:?}, plain backward, create_graph {create_graph}");
            let got = Laplacian::new()
                .method(outer)
                .create_graph(create_graph)
                .compute(
                    |x: &Tensor| -> Result<Tensor> {
                        let g = by_backward(&n, x)?;
                        Ok(g.square().sum_dim_intlist(1, false, Kind::Double))
                    },
                    &n.x,
                )
                .map(|o| o.laplacian);
            check(got, &truth, &what);
        }
    }
}

/// A `no_grad` region inside the closure is a constant for every method, as reverse mode makes
/// it: u = Σ_i x_i·c_i with c = sin(x) computed under no_grad has Δu = 0 (and 2·Σ(cos x_i − …)
/// if c were followed).
#[test]
fn no_grad_region_is_a_constant_for_every_method() {
    let n = net();
    let u = |x: &Tensor| {
        let c = tch::no_grad(|| x.sin());
        (x * c + x.square()).sum_dim_intlist(1, false, Kind::Double)
    };
    let want = Tensor::full([B], 2.0 * N as f64, O);
    for m in OUTER {
        for create_graph in [false, true] {
            let got = Laplacian::new()
                .method(m)
                .create_graph(create_graph)
                .compute(u, &n.x)
                .map(|o| o.laplacian);
            check(
                got,
                &want,
                &format!("no_grad region, {m:?}, create_graph {create_graph}"),
            );
        }
    }
    let rows = laplacian_of(
        u,
        &n.x,
        &JacobianOptions::default().strategy(Strategy::RowLoop),
    );
    check(rows, &want, "no_grad region, laplacian_of RowLoop");
}
