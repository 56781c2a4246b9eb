//! Derivatives inside a Laplacian's closure, and closures that must give one answer whatever the
//! method: the biharmonic Δ²v (a Laplacian of a Laplacian), Δ‖∇v‖² (a Laplacian of a gradient
//! taken inside the closure by every crate route), a plain autograd backward pass inside the
//! closure, and a `no_grad` region inside it.
//!
//! The truth is analytic, independent of the crate: for the one-hidden-layer network
//! `v(x) = Σ_k c_k tanh(w_k·x + b_k)` every derivative is a closed form in the derivatives of
//! tanh. Every (inner, outer) pair of methods must give it (f64, rtol 1e-9), or — only where the
//! outer method is explicitly `Taylor` and the inner one is explicitly collapsed Taylor mode too
//! (one session per thread) — an `Error::TaylorUnsupported`; without the engine (no generic rule
//! for the inner backward ops) an explicit `Taylor` outer pass may also be an
//! `Error::NoTaylorRule`, and `Auto` gives the truth.
use tch::{Device, Kind, Tensor};
use tch_jacobian::{
    laplacian, laplacian_of, per_sample_jacobian_of, Error, JacobianOptions, LaplacianOptions,
    Result, Strategy,
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
    net_unseeded_from(&mut rand_source())
}

/// The same network without touching torch's global generator (for threads): fixed draws.
fn net_unseeded() -> Net {
    net_unseeded_from(&mut rand_source())
}

fn rand_source() -> impl FnMut(&[i64]) -> Tensor {
    let mut state: u64 = 0x2929_2929;
    move |shape: &[i64]| {
        let n: i64 = shape.iter().product();
        let vals: Vec<f64> = (0..n)
            .map(|_| {
                // xorshift, mapped to [-1.5, 1.5)
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64 * 3.0 - 1.5
            })
            .collect();
        Tensor::from_slice(&vals).view(shape)
    }
}

fn net_unseeded_from(draw: &mut impl FnMut(&[i64]) -> Tensor) -> Net {
    Net {
        w: draw(&[K, N]) * 0.7,
        b: draw(&[K]) * 0.3,
        c: draw(&[K]),
        x: draw(&[B, N]) * 0.8,
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
    let lap = |m: Strategy| {
        move |n: &Net, x: &Tensor| -> Result<Tensor> {
            Ok(laplacian(
                |x: &Tensor| n.v(x),
                x,
                &LaplacianOptions::default().create_graph(true).strategy(m),
            )?
            .laplacian)
        }
    };
    let lap_of = |s: Strategy| {
        move |n: &Net, x: &Tensor| laplacian_of(|x: &Tensor| n.v(x), x, &opts().strategy(s))
    };
    let mut all: Vec<(&'static str, Inner)> = vec![
        ("Laplacian Auto", Box::new(lap(Strategy::Auto))),
        ("Laplacian Taylor", Box::new(lap(Strategy::Taylor))),
        ("Laplacian Nested", Box::new(lap(Strategy::RowLoop))),
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

const OUTER: [Strategy; 3] = [Strategy::Auto, Strategy::Taylor, Strategy::RowLoop];

/// Δ²v: the outer Laplacian of a closure that computes Δv, for every pair of methods.
#[test]
fn biharmonic_by_every_pair_of_methods() {
    let n = net();
    let truth = n.biharmonic();
    for (inner_name, inner) in inner_laplacians() {
        for outer in OUTER {
            let what = format!("Δ²v: outer {outer:?}, inner {inner_name}");
            let got = laplacian(
                |x: &Tensor| inner(&n, x),
                &n.x,
                &LaplacianOptions::default().strategy(outer),
            )
            .map(|o| o.laplacian);
            // Collapsed Taylor mode cannot follow a collapsed Taylor pass inside its closure (one
            // session per thread); a batched pass inside it runs as a loop it follows.
            let unfollowable = inner_name == "Laplacian Taylor";
            if outer == Strategy::Taylor && unfollowable {
                match got {
                    Err(Error::TaylorUnsupported { .. }) => continue,
                    other => panic!("{what}: expected TaylorUnsupported, got {other:?}"),
                }
            }
            // Without the engine there is no generic rule: the inner derivative's backward ops
            // (tanh_backward, …) have no rule, and an explicit Taylor outer pass says so.
            if outer == Strategy::Taylor && !tch_jacobian::native::available() {
                match got {
                    Ok(_) | Err(Error::NoTaylorRule { .. }) => {}
                    other => panic!("{what}: expected a value or NoTaylorRule, got {other:?}"),
                }
                if got.is_err() {
                    continue;
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
            let j =
                per_sample_jacobian_of(|x: &Tensor| n.v(x).unsqueeze(1), x, &opts().strategy(s))?;
            Ok(j.squeeze_dim(1)) // [B, N]
        })
    };
    let by_laplacian = |m: Strategy| -> Grad {
        Box::new(move |n: &Net, x: &Tensor| {
            let out = laplacian(
                |x: &Tensor| n.v(x),
                x,
                &LaplacianOptions::default().create_graph(true).strategy(m),
            )?;
            Ok(out.gradient.expect("the exact Laplacian has the gradient"))
        })
    };
    let by_backward: Grad = Box::new(|n: &Net, x: &Tensor| {
        // plain autograd inside the closure, with respect to the closure's input
        let y = n.v(x).sum(Kind::Double);
        Ok(Tensor::f_run_backward(&[&y], &[x], true, true)?.remove(0))
    });
    let mut routes: Vec<(&str, Grad)> = vec![
        ("per_sample_jacobian_of Auto", by_jacobian(Strategy::Auto)),
        (
            "per_sample_jacobian_of RowLoop",
            by_jacobian(Strategy::RowLoop),
        ),
        (
            "per_sample_jacobian_of Forward",
            by_jacobian(Strategy::Forward),
        ),
        (
            "per_sample_jacobian_of Vectorized",
            by_jacobian(Strategy::Vectorized { chunk_size: None }),
        ),
        ("Laplacian Auto gradient", by_laplacian(Strategy::Auto)),
        ("Laplacian Taylor gradient", by_laplacian(Strategy::Taylor)),
        ("Laplacian Nested gradient", by_laplacian(Strategy::RowLoop)),
    ];
    if tch_jacobian::native::available() {
        routes.push((
            "per_sample_jacobian_of Batched",
            by_jacobian(Strategy::Batched { chunk_size: None }),
        ));
    }
    for (name, grad) in &routes {
        for outer in OUTER {
            let what = format!("Δ‖∇v‖²: outer {outer:?}, ∇v by {name}");
            let got = laplacian(
                |x: &Tensor| -> Result<Tensor> {
                    let g = grad(&n, x)?;
                    Ok(g.square().sum_dim_intlist(1, false, Kind::Double))
                },
                &n.x,
                &LaplacianOptions::default().strategy(outer),
            )
            .map(|o| o.laplacian);
            let unfollowable = *name == "Laplacian Taylor gradient";
            if outer == Strategy::Taylor && unfollowable {
                match got {
                    Err(Error::TaylorUnsupported { .. }) => continue,
                    other => panic!("{what}: expected TaylorUnsupported, got {other:?}"),
                }
            }
            // Without the engine there is no generic rule: the inner derivative's backward ops
            // (tanh_backward, …) have no rule, and an explicit Taylor outer pass says so.
            if outer == Strategy::Taylor && !tch_jacobian::native::available() {
                match got {
                    Ok(_) | Err(Error::NoTaylorRule { .. }) => {}
                    other => panic!("{what}: expected a value or NoTaylorRule, got {other:?}"),
                }
                if got.is_err() {
                    continue;
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
        for outer in [Strategy::Auto, Strategy::RowLoop] {
            let what =
                format!("Δ‖∇v‖²: outer {outer:?}, plain backward, create_graph {create_graph}");
            let got = laplacian(
                |x: &Tensor| -> Result<Tensor> {
                    let g = by_backward(&n, x)?;
                    Ok(g.square().sum_dim_intlist(1, false, Kind::Double))
                },
                &n.x,
                &LaplacianOptions::default()
                    .strategy(outer)
                    .create_graph(create_graph),
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
            let got = laplacian(
                u,
                &n.x,
                &LaplacianOptions::default()
                    .strategy(m)
                    .create_graph(create_graph),
            )
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

/// A panicking closure is an `Error::Contract` for every closure-taking function and method
/// (never an unwind through the caller).
#[test]
fn panics_are_errors_for_every_closure_taking_function() {
    let n = net();
    let boom = |_: &Tensor| -> Tensor { panic!("boom") };
    let msg = |r: Result<Tensor>, what: &str| match r {
        Err(Error::Contract(m)) => {
            assert!(m.contains("panicked") && m.contains("boom"), "{what}: {m}")
        }
        other => panic!("{what}: expected Error::Contract, got {other:?}"),
    };
    for m in OUTER {
        msg(
            laplacian(boom, &n.x, &LaplacianOptions::default().strategy(m)).map(|o| o.laplacian),
            &format!("Laplacian {m:?}"),
        );
    }
    let o = JacobianOptions::default();
    msg(
        laplacian_of(boom, &n.x, &o.strategy(Strategy::RowLoop)),
        "laplacian_of RowLoop",
    );
    msg(
        tch_jacobian::per_sample_hessian_of(boom, &n.x, &o),
        "per_sample_hessian_of",
    );
    msg(
        tch_jacobian::hessian_of(|x: &Tensor| boom(x).sum(Kind::Double), &n.x.get(0), &o),
        "hessian_of",
    );
    for s in [Strategy::Auto, Strategy::RowLoop, Strategy::Forward] {
        msg(
            tch_jacobian::jacobian_of(boom, &n.x.get(0), &o.strategy(s)),
            &format!("jacobian_of {s}"),
        );
        msg(
            per_sample_jacobian_of(boom, &n.x, &o.strategy(s)),
            &format!("per_sample_jacobian_of {s}"),
        );
    }
}

/// A batched backward pass (functorch's vmap) over a closure that computes a collapsed Taylor
/// Laplacian with create_graph: the fused elementwise kernel's backward takes its composite form
/// on batched tensors, and the result equals the row loop's.
#[test]
#[cfg_attr(not(feature = "native"), ignore = "needs the native engine")]
fn batched_jacobian_over_a_taylor_laplacian() {
    let n = net();
    let f = |w: &Tensor| -> Result<Tensor> {
        let u = |x: &Tensor| (x.matmul(&w.tr()) + &n.b).tanh().matmul(&n.c);
        Ok(laplacian(
            u,
            &n.x,
            &LaplacianOptions::default()
                .strategy(Strategy::Taylor)
                .create_graph(true),
        )?
        .laplacian)
    };
    let batched = tch_jacobian::jacobian_of(
        f,
        &n.w,
        &opts()
            .create_graph(false)
            .strategy(Strategy::Batched { chunk_size: None }),
    );
    let rows = tch_jacobian::jacobian_of(
        f,
        &n.w,
        &opts().create_graph(false).strategy(Strategy::RowLoop),
    )
    .unwrap();
    check(batched, &rows, "∂Δu/∂W, batched against the row loop");
    assert!(
        tch_jacobian::second_order::take_reroutes().is_empty(),
        "ran batched"
    );
}

/// In-place shape ops on intermediates (unsqueeze_, transpose_, squeeze_) are followed.
#[test]
fn inplace_shape_ops_on_intermediates() {
    let n = net();
    let u = |x: &Tensor| {
        // (on an intermediate no op saved for its backward pass: reverse mode allows it)
        let mut h = x.matmul(&n.w.tr()) + &n.b; // [B, K]
        let _ = h.unsqueeze_(1); // [B, 1, K]
        let _ = h.transpose_(1, 2); // [B, K, 1]
        let _ = h.squeeze_dim_(2); // [B, K]
        h.tanh().matmul(&n.c)
    };
    let t = laplacian(
        u,
        &n.x,
        &LaplacianOptions::default().strategy(Strategy::Taylor),
    )
    .unwrap();
    assert_eq!(t.strategy, Strategy::Taylor);
    let nested = laplacian(
        u,
        &n.x,
        &LaplacianOptions::default().strategy(Strategy::RowLoop),
    )
    .unwrap();
    check(Ok(t.laplacian), &nested.laplacian, "in-place shape ops");
}

/// Work on another thread that inherits the dispatch key (a TorchScript fork on libtorch's
/// inter-op pool) is never a silent constant: it fails the session (Auto falls back) or, run
/// inline, is followed.
#[test]
fn torchscript_fork_is_never_a_constant() {
    let path = format!(
        "{}/tests/data/taylor_threads/fork.pt",
        env!("CARGO_MANIFEST_DIR")
    );
    let m = tch::CModule::load(&path).unwrap();
    let n = net();
    let u = |x: &Tensor| m.forward_ts(&[x]).unwrap();
    let want = (n.x.cos() * 2.0 - &n.x * n.x.sin()).sum_dim_intlist(1, false, Kind::Double);
    let auto = laplacian(u, &n.x, &LaplacianOptions::default()).unwrap();
    check(Ok(auto.laplacian), &want, "Auto through a fork");
    match laplacian(
        u,
        &n.x,
        &LaplacianOptions::default().strategy(Strategy::Taylor),
    ) {
        Ok(t) => check(Ok(t.laplacian), &want, "Taylor through a fork (run inline)"),
        Err(Error::TaylorUnsupported { reason: detail }) => {
            assert!(detail.contains("another thread"), "{detail}")
        }
        Err(e) => panic!("{e}"),
    }
}

/// Laplacians on two threads at once: one session per thread, right values on both.
#[test]
fn concurrent_laplacians_on_two_threads() {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let n = net_unseeded();
                    let truth = n.biharmonic();
                    for _ in 0..5 {
                        let inner = |x: &Tensor| -> Result<Tensor> {
                            Ok(laplacian(
                                |x: &Tensor| n.v(x),
                                x,
                                &LaplacianOptions::default().create_graph(true),
                            )?
                            .laplacian)
                        };
                        let got = laplacian(inner, &n.x, &LaplacianOptions::default())
                            .map(|o| o.laplacian);
                        check(got, &truth, "Δ²v on a thread");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

/// Per-sample gradients (vmap(grad)) of a loss that computes a collapsed Taylor Laplacian: equal
/// to each sample's own gradient by nested reverse mode.
#[test]
fn per_sample_gradients_through_a_taylor_laplacian() {
    let n = net();
    let params = vec![
        ("w".to_string(), n.w.shallow_clone()),
        ("c".to_string(), n.c.shallow_clone()),
    ];
    // One sample: x [N]; the loss (Δv(x))² with v(x) = c·tanh(Wx + b).
    let loss = |m: Strategy| {
        let b = n.b.shallow_clone();
        move |p: &[Tensor], s: &[Tensor]| -> Result<Tensor> {
            let v = |x: &Tensor| (x.matmul(&p[0].tr()) + &b).tanh().matmul(&p[1]);
            let lap = laplacian(
                v,
                &s[0].unsqueeze(0),
                &LaplacianOptions::default().strategy(m).create_graph(true),
            )?
            .laplacian;
            Ok(lap.square().sum(Kind::Double))
        }
    };
    let out = tch_jacobian::per_sample_gradients_of(
        loss(Strategy::Taylor),
        &params,
        &[&n.x],
        &JacobianOptions::default(),
    )
    .unwrap();
    for s in 0..B {
        let w = n.w.detach().set_requires_grad(true);
        let c = n.c.detach().set_requires_grad(true);
        let l = loss(Strategy::RowLoop)(&[w.shallow_clone(), c.shallow_clone()], &[n.x.get(s)])
            .unwrap();
        let g = Tensor::run_backward(&[&l], &[&w, &c], false, false);
        check(
            Ok(out.gradients[0].1.get(s)),
            &g[0],
            &format!("∂/∂W, sample {s}"),
        );
        check(
            Ok(out.gradients[1].1.get(s)),
            &g[1],
            &format!("∂/∂c, sample {s}"),
        );
    }
}
