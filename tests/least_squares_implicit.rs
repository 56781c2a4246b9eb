//! `LeastSquaresOptions::create_graph`: the solution's derivative by the implicit function
//! theorem against central differences of re-solved problems (nonzero residuals at the optimum,
//! robust losses, an active bound), against unrolled Gauss–Newton differentiated by autograd, the
//! batch against single solves, no gradient to `x0`, a singular Hessian as an error, and the
//! same gradients under `tch::no_grad`. f64; nothing engine-specific (it runs in the build
//! without the native engine too).

use tch::{Device, Kind, Tensor};
use tch_jacobian::least_squares::Loss;
use tch_jacobian::{least_squares, Error, LeastSquaresOptions};

const OPT: (Kind, Device) = (Kind::Double, Device::Cpu);
/// Central differences' step.
const H: f64 = 1e-5;

fn times() -> Tensor {
    Tensor::linspace(0.0, 3.0, 12, OPT)
}

/// `a e^(−b t) + c` for `p = [a, b, c]` (`[3]` → `[m]`) or `[B, 3]` → `[B, m]`.
fn model(p: &Tensor, t: &Tensor) -> Tensor {
    if p.dim() == 1 {
        p.get(0) * (-p.get(1) * t).exp() + p.get(2)
    } else {
        p.narrow(1, 0, 1) * (-p.narrow(1, 1, 1) * t).exp() + p.narrow(1, 2, 1)
    }
}

/// Noisy data (deterministic): truth (2, 1.3, 0.5), noise of size 0.05 — residuals at the
/// optimum are far from zero.
fn data(phase: f64) -> Tensor {
    let t = times();
    let truth = Tensor::from_slice(&[2.0f64, 1.3, 0.5]);
    model(&truth, &t) + ((&t * 7.0 + phase).sin() * 0.05)
}

fn x0() -> Tensor {
    Tensor::from_slice(&[1.0f64, 1.0, 0.0])
}

/// The weights of `r = w ⊙ (model − y)`.
fn weights() -> Tensor {
    Tensor::linspace(0.8, 1.4, 12, OPT)
}

fn tight() -> LeastSquaresOptions<'static> {
    LeastSquaresOptions::default()
        .ftol(1e-15)
        .xtol(1e-15)
        .gtol(1e-15)
}

/// `½ C² Σ ρ(r²/C²)` (SciPy's formulas).
fn cost(loss: Loss, c: f64, r: &Tensor) -> Tensor {
    let z = r.square() / (c * c);
    let rho = match loss {
        Loss::Linear => z,
        Loss::Cauchy => z.log1p(),
        Loss::SoftL1 => ((z + 1.0).sqrt() - 1.0) * 2.0,
        Loss::Huber => {
            let inlier = z.le(1.0);
            z.where_self(&inlier, &(z.clamp_min(1.0).sqrt() * 2.0 - 1.0))
        }
        other => panic!("no test formula for {other}"),
    };
    rho.sum(Kind::Double) * (0.5 * c * c)
}

/// Newton steps `x ← x − H⁻¹ g` on the free entries of `x`.
fn newton(x: &Tensor, total: impl Fn(&Tensor) -> Tensor, free: &[i64]) -> Tensor {
    let idx = Tensor::from_slice(free);
    let mut x = x.detach();
    for _ in 0..3 {
        let xs = x.set_requires_grad(true);
        let g = Tensor::run_backward(&[total(&xs)], &[&xs], true, true).remove(0);
        let rows: Vec<Tensor> = (0..x.size()[0])
            .map(|j| Tensor::run_backward(&[g.get(j)], &[&xs], true, false).remove(0))
            .collect();
        let h = Tensor::stack(&rows, 0)
            .index_select(0, &idx)
            .index_select(1, &idx);
        let gf = g.detach().index_select(0, &idx);
        let step = Tensor::linalg_solve(&h, &gf.unsqueeze(1), true).squeeze_dim(1);
        x = x.index_add(0, &idx, &(-step));
    }
    x
}

/// For the re-solves of central differences: solves `min cost(loss, c, r(x))` with `opts`, then
/// three [`newton`] steps on `free`. The solver accepts steps by the cost, which resolves `x` to
/// about `√(ε·cost)` only (1e-10 here: noise of 1e-5 after dividing by `h`); the Newton steps on
/// the gradient (test-side autograd, the exact Hessian row by row) finish it to the last digits,
/// the parameters at an active bound held where they are.
fn resolve(
    r: impl Fn(&Tensor) -> Tensor,
    loss: Loss,
    c: f64,
    opts: &LeastSquaresOptions,
    free: &[i64],
) -> Tensor {
    let out = least_squares(&r, &x0(), &opts.loss(loss).loss_scale(c)).unwrap();
    newton(&out.x, |x| cost(loss, c, &r(x)), free)
}

/// The scalar of the solution whose gradient the tests take.
fn objective(x: &Tensor) -> Tensor {
    let c = Tensor::from_slice(&[0.3f64, -0.7, 1.1]);
    (x * c).sum(Kind::Double) + x.get(1).square() * 0.5
}

fn grad(f: &Tensor, wrt: &Tensor) -> Tensor {
    Tensor::run_backward(&[f], &[wrt], false, false).remove(0)
}

/// Central differences of `phi ↦ objective(solve(phi))`, entry by entry.
fn central(phi: &Tensor, solve: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let phi = phi.detach();
    let n = phi.numel() as i64;
    let flat = phi.flatten(0, -1);
    let d: Vec<f64> = (0..n)
        .map(|k| {
            let e = Tensor::zeros([n], OPT).index_fill(0, &Tensor::from_slice(&[k]), H);
            let p = objective(&solve(&(&flat + &e).view_as(&phi))).double_value(&[]);
            let m = objective(&solve(&(&flat - &e).view_as(&phi))).double_value(&[]);
            (p - m) / (2.0 * H)
        })
        .collect();
    Tensor::from_slice(&d).view_as(&phi)
}

/// `max |a − b| / max |b|`.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let num = (a - b).abs().max().double_value(&[]);
    num / b.abs().max().double_value(&[])
}

fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let e = rel(got, want);
    println!("{name}: max relative error {e:.2e}");
    assert!(
        e < tol,
        "{name}: max relative error {e:e} ≥ {tol:e}\n got {:?}\nwant {:?}",
        Vec::<f64>::try_from(got.flatten(0, -1)).unwrap(),
        Vec::<f64>::try_from(want.flatten(0, -1)).unwrap()
    );
}

#[test]
fn nonzero_residuals_against_central_differences() {
    let t = times();
    for with_w in [false, true] {
        let y = data(1.0).set_requires_grad(true);
        let w = weights().set_requires_grad(true);
        let r = |x: &Tensor| &w * (model(x, &t) - &y);
        let out = least_squares(r, &x0(), &tight().create_graph(true)).unwrap();
        assert!(out.success(), "{:?}", out.status);
        assert!(
            out.cost.double_value(&[]) > 1e-3,
            "the residuals are not zero at the optimum"
        );
        // The value is exactly the solve's.
        let plain = least_squares(r, &x0(), &tight()).unwrap();
        assert!(out.x.equal(&plain.x));
        assert!(out.x.requires_grad() && !plain.x.requires_grad());
        assert!(!out.cost.requires_grad() && !out.residuals.requires_grad());

        let f = objective(&out.x);
        let (phi, name) = if with_w {
            (&w, "weights w")
        } else {
            (&y, "data y")
        };
        let g = grad(&f, phi);
        let fd = central(phi, |p| {
            let r = |x: &Tensor| {
                if with_w {
                    p * (model(x, &t) - y.detach())
                } else {
                    w.detach() * (model(x, &t) - p)
                }
            };
            resolve(r, Loss::Linear, 1.0, &tight(), &[0, 1, 2])
        });
        assert_close(&format!("d f(x*)/d {name}"), &g, &fd, 1e-6);
    }
}

/// Gauss–Newton written with torch ops (the closed-form Jacobian of the model), `k` steps,
/// differentiated by autograd through every step.
fn unrolled_gauss_newton(y: &Tensor, t: &Tensor, k: usize) -> Tensor {
    let mut x = x0();
    for _ in 0..k {
        let e = (-x.get(1) * t).exp();
        let jac = Tensor::stack(&[e.shallow_clone(), -(x.get(0) * t * &e), e.ones_like()], 1);
        let r = model(&x, t) - y;
        let normal = jac.tr().matmul(&jac);
        let step =
            Tensor::linalg_solve(&normal, &jac.tr().matmul(&r.unsqueeze(1)), true).squeeze_dim(1);
        // Not `x -= step`: in place, it would overwrite what the backward needs.
        let next = x - step;
        x = next;
    }
    x
}

#[test]
fn zero_residuals_against_unrolled_gauss_newton() {
    let t = times();
    let y = model(&Tensor::from_slice(&[2.0f64, 1.3, 0.5]), &t).set_requires_grad(true);
    let out = least_squares(
        |x: &Tensor| model(x, &t) - &y,
        &x0(),
        &tight().create_graph(true),
    )
    .unwrap();
    let g = grad(&objective(&out.x), &y);
    let xu = unrolled_gauss_newton(&y, &t, 40);
    assert!(xu.allclose(&out.x.detach(), 1e-12, 1e-12, false));
    let gu = grad(&objective(&xu), &y);
    assert_close(
        "zero residuals: implicit vs 40 unrolled Gauss–Newton steps",
        &g,
        &gu,
        1e-10,
    );
}

#[test]
fn batch_equals_single_solves() {
    let t = times();
    let ys: Vec<Tensor> = [0.0, 1.0, 2.5].iter().map(|&p| data(p)).collect();
    let yb = Tensor::stack(&ys, 0).set_requires_grad(true);
    let x0b = Tensor::from_slice(&[1.0f64, 1.0, 0.0, 1.5, 0.8, 0.2, 3.0, 2.0, 0.0]).view([3, 3]);
    let out = least_squares(
        |x: &Tensor| model(x, &t) - &yb,
        &x0b,
        &tight().create_graph(true),
    )
    .unwrap();
    assert!(out.success());
    let f: Tensor = (0..3).map(|b| objective(&out.x.get(b))).sum();
    let gb = grad(&f, &yb);
    for (b, y) in ys.iter().enumerate() {
        let y = y.set_requires_grad(true);
        let one = least_squares(
            |x: &Tensor| model(x, &t) - &y,
            &x0b.get(b as i64),
            &tight().create_graph(true),
        )
        .unwrap();
        assert!(one
            .x
            .allclose(&out.x.get(b as i64).detach(), 1e-12, 1e-12, false));
        let g1 = grad(&objective(&one.x), &y);
        assert_close(
            &format!("batch row {b} vs its single solve"),
            &gb.get(b as i64),
            &g1,
            1e-10,
        );
    }
}

#[test]
fn robust_losses_against_central_differences() {
    let t = times();
    // One outlier, so that the loss matters.
    let y0 = data(1.0) + Tensor::zeros([12], OPT).index_fill(0, &Tensor::from_slice(&[4i64]), 0.8);
    for (loss, scale) in [(Loss::Cauchy, 0.1), (Loss::SoftL1, 0.2), (Loss::Huber, 0.1)] {
        let y = y0.set_requires_grad(true);
        let opts = tight().loss(loss).loss_scale(scale);
        let out = least_squares(
            |x: &Tensor| model(x, &t) - &y,
            &x0(),
            &opts.create_graph(true),
        )
        .unwrap();
        assert!(out.success(), "{loss}: {:?}", out.status);
        let r = out.residuals.abs();
        // Huber: no residual at its kink, where ρ″ jumps.
        assert!(((&r - scale).abs().min().double_value(&[])) > 1e-3);
        let g = grad(&objective(&out.x), &y);
        let fd = central(&y, |p| {
            resolve(
                |x: &Tensor| model(x, &t) - p,
                loss,
                scale,
                &tight(),
                &[0, 1, 2],
            )
        });
        assert_close(&format!("{loss} (C = {scale})"), &g, &fd, 1e-6);
    }
}

#[test]
fn active_bound_has_zero_derivative() {
    let t = times();
    let y = data(1.0).set_requires_grad(true);
    // The unconstrained c* is about 0.5: the upper bound 0.3 is active.
    let lo = Tensor::from_slice(&[0.0f64, 0.0, -1.0]);
    let up = Tensor::from_slice(&[10.0f64, 10.0, 0.3]);
    let opts = tight().bounds(&lo, &up);
    let out = least_squares(
        |x: &Tensor| model(x, &t) - &y,
        &x0(),
        &opts.create_graph(true),
    )
    .unwrap();
    assert!(out.success(), "{:?}", out.status);
    let mask = Vec::<i64>::try_from(out.active_mask.as_ref().unwrap()).unwrap();
    assert_eq!(mask, [0, 0, 1]);
    // d c*/dy = 0 exactly.
    let gc = Tensor::run_backward(&[out.x.get(2)], &[&y], true, false).remove(0);
    assert_eq!(gc.abs().max().double_value(&[]), 0.0, "{gc}");
    let g = grad(&objective(&out.x), &y);
    let fd = central(&y, |p| {
        resolve(
            |x: &Tensor| model(x, &t) - p,
            Loss::Linear,
            1.0,
            &tight().bounds(&lo, &up),
            &[0, 1],
        )
    });
    assert_close("free parameters under an active bound", &g, &fd, 1e-6);
}

#[test]
fn no_gradient_to_x0() {
    let t = times();
    let y = data(1.0).set_requires_grad(true);
    let x0 = x0().set_requires_grad(true);
    let out = least_squares(
        |x: &Tensor| model(x, &t) - &y,
        &x0,
        &tight().create_graph(true),
    )
    .unwrap();
    objective(&out.x).backward();
    assert!(!x0.grad().defined(), "x0 got a gradient: {}", x0.grad());
    assert!(y.grad().defined() && y.grad().abs().max().double_value(&[]) > 0.0);
}

#[test]
fn singular_hessian_is_an_error() {
    let t = times();
    let y = data(1.0).set_requires_grad(true);
    // Problem 1's fourth parameter enters nowhere (s = 0): its Hessian has a zero row.
    let s = Tensor::from_slice(&[1.0f64, 0.0]).view([2, 1]);
    let r = |x: &Tensor| {
        let fit = model(&x.narrow(1, 0, 3), &t) - &y;
        Tensor::cat(&[fit, (x.narrow(1, 3, 1) - 1.0) * &s], 1)
    };
    let x0 = Tensor::from_slice(&[1.0f64, 1.0, 0.0, 0.0]).repeat([2, 1]);
    let plain = least_squares(r, &x0, &tight()).unwrap();
    assert!(plain.success());
    let err = least_squares(r, &x0, &tight().create_graph(true)).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(
        msg.contains("problem 1 of 2") && msg.contains("condition number"),
        "{msg}"
    );

    // Nearly singular (the fourth parameter weighs 1e-9: condition ~1e18 > 1/(ε n)): an error
    // too, not huge derivatives (linalg.solve alone would return them without complaint).
    let r = |x: &Tensor| {
        let fit = model(&x.narrow(0, 0, 3), &t) - &y;
        Tensor::cat(&[fit, (x.narrow(0, 3, 1) - 1.0) * 1e-9], 0)
    };
    let x0 = Tensor::from_slice(&[1.0f64, 1.0, 0.0, 0.0]);
    assert!(least_squares(r, &x0, &tight()).unwrap().success());
    let err = least_squares(r, &x0, &tight().create_graph(true)).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(
        msg.contains("problem 0 of 1") && msg.contains("condition number"),
        "{msg}"
    );
}

#[test]
fn no_grad_caller_gets_the_same_gradients() {
    let t = times();
    let y = data(1.0).set_requires_grad(true);
    let opts = tight()
        .create_graph(true)
        .loss(Loss::Cauchy)
        .loss_scale(0.1);
    let solve = || least_squares(|x: &Tensor| model(x, &t) - &y, &x0(), &opts).unwrap();
    let inside = tch::no_grad(solve);
    let outside = solve();
    assert!(inside.x.requires_grad());
    assert!(inside.x.equal(&outside.x));
    let gi = grad(&objective(&inside.x), &y);
    let go = grad(&objective(&outside.x), &y);
    assert!(gi.equal(&go), "{gi}\n{go}");
}
