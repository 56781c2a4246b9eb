//! Collapsed Taylor mode's rules through everything a PINN trains: for closures built on each
//! rule family (the collapsed rules of convolutions, mv, prod, var/std, the vector norm, glu,
//! batch norm, the binary elementwise ops and the new elementwise ones, and ops only the generic
//! rule covers), Taylor mode equals nested reverse mode (itself anchored to PyTorch by
//! tests/pytorch_parity.rs and tests/laplacian.rs) on `u`, `∇u` and `Δu`, and — with
//! create_graph — on the gradient of the PINN-style loss `Σ_b Δu_b²` with respect to a weight
//! the closure captures (third derivatives through the rules' recorded ops). f64, rtol 1e-9.
use tch::{Device, Kind, Tensor};
use tch_jacobian::{laplacian, LaplacianOptions, LaplacianOutput, Result, Strategy};

const O: (Kind, Device) = (Kind::Double, Device::Cpu);
const B: i64 = 4;

type Body = Box<dyn Fn(&Tensor) -> Tensor>;

/// `u(x) = body(x·W + c)` with a trainable W.
struct Case {
    name: &'static str,
    body: Body,
    /// libtorch's own third derivative is wrong here: central differences are the truth.
    fd: bool,
}

/// Whether the case needs the generic rule (the engine): its ops have no collapsed rule.
fn generic(case: &Case) -> bool {
    case.name.starts_with("generic")
}

fn rowsum(t: Tensor) -> Tensor {
    t.flatten(1, -1).sum_dim_intlist(1, false, Kind::Double)
}

fn cases() -> Vec<Case> {
    let k1 = Tensor::randn([2, 1, 2], O) * 0.5;
    let k2 = Tensor::randn([2, 1, 2, 2], O) * 0.5;
    let kb = Tensor::randn([2], O) * 0.1;
    let m = Tensor::randn([2, 4], O) * 0.5;
    let rm = Tensor::randn([4], O) * 0.1;
    let rv = Tensor::rand([4], O) + 0.5;
    vec![
        Case {
            name: "conv1d",
            body: Box::new(move |h| {
                rowsum(
                    h.view([B, 1, 4])
                        .conv1d(&k1, Some(&kb), [1], [1], [1], 1)
                        .tanh(),
                )
            }),
            fd: false,
        },
        Case {
            name: "conv2d",
            body: Box::new({
                let k2 = k2.shallow_clone();
                let kb = Tensor::randn([2], O) * 0.1;
                move |h| {
                    rowsum(
                        h.view([B, 1, 2, 2])
                            .conv2d(&k2, Some(&kb), [1, 1], [1, 1], [1, 1], 1)
                            .sin(),
                    )
                }
            }),
            fd: false,
        },
        Case {
            name: "mv",
            body: Box::new(move |h| {
                let rows: Vec<Tensor> = (0..B)
                    .map(|b| m.mv(&h.get(b)).tanh().sum(Kind::Double))
                    .collect();
                Tensor::stack(&rows, 0)
            }),
            fd: false,
        },
        Case {
            name: "dot",
            body: Box::new(|h| {
                let rows: Vec<Tensor> = (0..B).map(|b| h.get(b).dot(&h.get(b).sin())).collect();
                Tensor::stack(&rows, 0)
            }),
            fd: false,
        },
        Case {
            name: "prod",
            body: Box::new(|h| (h.sigmoid() + 0.5).prod_dim_int(1, false, Kind::Double)),
            fd: false,
        },
        Case {
            name: "var, std",
            body: Box::new(|h| {
                h.var_correction(Some([1i64].as_slice()), 1, false)
                    + h.tanh().std_correction(Some([1i64].as_slice()), 0, false)
            }),
            fd: false,
        },
        Case {
            name: "vector norm (2, 3)",
            body: Box::new(|h| {
                h.norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
                    + (h + 3.0).norm_scalaropt_dim(3.0, [1i64].as_slice(), false)
            }),
            fd: false,
        },
        Case {
            name: "glu",
            body: Box::new(|h| rowsum(h.glu(1))),
            fd: false,
        },
        Case {
            name: "batch norm (eval)",
            body: Box::new(move |h| {
                rowsum(
                    h.batch_norm(
                        None::<&Tensor>,
                        None::<&Tensor>,
                        Some(&rm),
                        Some(&rv),
                        false,
                        0.1,
                        1e-5,
                        false,
                    )
                    .tanh(),
                )
            }),
            fd: false,
        },
        Case {
            name: "atan2, hypot, logaddexp",
            body: Box::new(|h| {
                let (a, b) = (h.narrow(1, 0, 2), h.narrow(1, 2, 2));
                rowsum(a.atan2(&b) + a.hypot(&b) + a.logaddexp(&b) + a.logaddexp2(&b))
            }),
            fd: false,
        },
        Case {
            name: "maximum, minimum, pow, xlogy",
            body: Box::new(|h| {
                let (a, b) = (h.narrow(1, 0, 2), h.narrow(1, 2, 2));
                let p = a.sigmoid() + 0.5;
                rowsum(a.maximum(&(&b * 0.3)) + a.minimum(&b) + p.pow(&b.tanh()) + b.xlogy(&p))
            }),
            fd: false,
        },
        Case {
            name: "lgamma, digamma, erfinv, logit",
            body: Box::new(|h| {
                let p = h.sigmoid() * 0.8 + 0.1;
                rowsum(
                    (&p * 3.0).lgamma()
                        + (&p + 1.0).digamma()
                        + (&p - 0.5).erfinv()
                        + p.logit(None),
                )
            }),
            fd: false,
        },
        Case {
            name: "mish, celu, elu",
            body: Box::new(|h| rowsum(h.mish() + h.celu() + h.elu())),
            fd: false,
        },
        Case {
            name: "generic: cumprod",
            body: Box::new(|h| rowsum(h.tanh().cumprod(1, Kind::Double))),
            fd: false,
        },
        Case {
            name: "generic: logcumsumexp",
            body: Box::new(|h| rowsum(h.logcumsumexp(1))),
            fd: true,
        },
        Case {
            name: "generic: addcmul, lerp",
            body: Box::new(|h| {
                let a = h.tanh();
                rowsum(a.addcmul(h, &h.sin()) + a.lerp(&h.cos(), 0.3))
            }),
            fd: false,
        },
        Case {
            name: "generic: amax, sort, cummax",
            body: Box::new(|h| {
                let s = h.sin();
                s.amax([1i64].as_slice(), false)
                    + rowsum(s.sort(1, false).0 * h)
                    + rowsum(h.cummax(1).0.square())
            }),
            fd: false,
        },
    ]
}

fn lap(
    m: Strategy,
    cg: bool,
    u: &dyn Fn(&Tensor) -> Tensor,
    x: &Tensor,
) -> Result<LaplacianOutput> {
    laplacian(
        u,
        x,
        &LaplacianOptions::default().strategy(m).create_graph(cg),
    )
}

fn close(a: &Tensor, b: &Tensor, what: &str) {
    close_tol(a, b, 1e-9, what)
}

fn close_tol(a: &Tensor, b: &Tensor, rtol: f64, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes");
    assert_eq!(a.kind(), b.kind(), "{what}: dtypes");
    let d = (a - b).abs().max().double_value(&[]);
    let s = b.abs().max().double_value(&[]).max(1e-6);
    assert!(
        d <= rtol * s,
        "{what}: max |Δ| {d:e} of {s:e}\n{a:?}\n{b:?}"
    );
}

/// ∂f/∂w by central differences (h = 1e-5), f64.
fn central_differences(w: &Tensor, f: impl Fn(&Tensor) -> f64) -> Tensor {
    let base = w.detach();
    let n = base.numel() as i64;
    let flat = base.reshape([-1]);
    let g: Vec<f64> = (0..n)
        .map(|i| {
            let h = 1e-5;
            let plus = flat.copy();
            let _ = plus.get(i).fill_(flat.double_value(&[i]) + h);
            let minus = flat.copy();
            let _ = minus.get(i).fill_(flat.double_value(&[i]) - h);
            (f(&plus.view_as(&base)) - f(&minus.view_as(&base))) / (2.0 * h)
        })
        .collect();
    Tensor::from_slice(&g).view_as(&base)
}

#[test]
fn every_rule_family_equals_nested_reverse_mode_with_its_third_derivatives() {
    tch::manual_seed(24);
    let x = Tensor::randn([B, 3], O);
    for case in cases() {
        let w = (Tensor::randn([3, 4], O) * 0.6).set_requires_grad(true);
        let c = Tensor::randn([4], O) * 0.2;
        let u = |x: &Tensor| (case.body)(&(x.matmul(&w) + &c));
        for cg in [false, true] {
            let what = format!("{} (create_graph {cg})", case.name);
            if generic(&case) && !tch_jacobian::native::available() {
                // No generic rule without the engine: an error naming the op, and Auto nested.
                assert!(matches!(
                    lap(Strategy::Taylor, cg, &u, &x),
                    Err(tch_jacobian::Error::NoTaylorRule { .. })
                ));
                let a = lap(Strategy::Auto, cg, &u, &x).unwrap();
                let n = lap(Strategy::RowLoop, cg, &u, &x).unwrap();
                close(
                    &a.laplacian,
                    &n.laplacian,
                    &format!("{what}: Auto without the engine"),
                );
                continue;
            }
            let t =
                lap(Strategy::Taylor, cg, &u, &x).unwrap_or_else(|e| panic!("{what}: Taylor: {e}"));
            let n = lap(Strategy::RowLoop, cg, &u, &x).unwrap();
            close(&t.value, &n.value, &format!("{what}: u"));
            close(
                t.gradient.as_ref().unwrap(),
                n.gradient.as_ref().unwrap(),
                &format!("{what}: ∇u"),
            );
            close(&t.laplacian, &n.laplacian, &format!("{what}: Δu"));
            if cg {
                let gw = |o: &LaplacianOutput| {
                    let loss = o.laplacian.square().sum(Kind::Double);
                    Tensor::run_backward(&[&loss], &[&w], true, false).remove(0)
                };
                let gt = gw(&t);
                let truth = if case.fd {
                    // PyTorch's third derivative of logcumsumexp is NaN (also in Python:
                    // autograd.grad thrice over x.logcumsumexp(1)); central differences of Σ(Δu)²
                    // by the nested path (second order, which is right) decide.
                    central_differences(&w, |w2: &Tensor| {
                        let u2 = |x: &Tensor| (case.body)(&(x.matmul(w2) + &c));
                        let lap = lap(Strategy::RowLoop, false, &u2, &x).unwrap();
                        lap.laplacian.square().sum(Kind::Double).double_value(&[])
                    })
                } else {
                    gw(&n)
                };
                let tol = if case.fd { 1e-6 } else { 1e-9 };
                close_tol(&gt, &truth, tol, &format!("{what}: ∂Σ(Δu)²/∂W"));
            } else {
                assert!(
                    !t.laplacian.requires_grad(),
                    "{what}: a graph without create_graph"
                );
            }
        }
    }
}
