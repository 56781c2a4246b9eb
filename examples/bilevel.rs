//! Bilevel optimization: learn the ridge weight `λ` of a nonlinear least-squares fit by gradient
//! descent on a validation loss, the hypergradient `dV/d log λ` through the fit's solution.
//!
//! Inner: `x*(λ) = argmin ½‖a e^(−b t) + c − y‖² + ½ λ ‖x − x_prior‖²` on 6 noisy points of
//! `t ∈ [0, 1]` (`x = [a, b, c]`), solved by `least_squares` (Levenberg–Marquardt).
//! Outer: `V(λ) = ½‖a* e^(−b* t) + c* − y‖²` on 30 validation points of `t ∈ [0, 3]`.
//!
//! The hypergradient two ways: `LeastSquaresOptions::create_graph` (the implicit function
//! theorem at the solution) and unrolled differentiation of `K` Gauss–Newton steps written with
//! torch ops, for two `K`. `cargo run --release --example bilevel`.
//!
//! Last, one hypergradient at `λ = 1` per method: the median milliseconds (solve + backward)
//! and, on Linux, its peak resident memory above the resident memory just before it (`VmHWM`
//! reset by writing "5" to `/proc/self/clear_refs`, minus `VmRSS`; "n/a" elsewhere).
//! `bench/theseus_backward.py` solves the same problem with Theseus's backward modes and with
//! PyTorch (docs/benchmarks.md); libtorch's threads follow `OMP_NUM_THREADS`.

#[path = "common/peak_memory.rs"]
mod peak_memory;

use std::cell::Cell;
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use tch_jacobian::{least_squares, LeastSquaresOptions};

const OPT: (Kind, Device) = (Kind::Double, Device::Cpu);

/// `a e^(−b t) + c` for `p = [a, b, c]`.
fn model(p: &Tensor, t: &Tensor) -> Tensor {
    p.get(0) * (-p.get(1) * t).exp() + p.get(2)
}

struct Problem {
    t_train: Tensor,
    y_train: Tensor,
    t_val: Tensor,
    y_val: Tensor,
    prior: Tensor,
    x0: Tensor,
    /// The last implicit solve's (iterations, residual evaluations).
    counts: Cell<(usize, usize)>,
}

impl Problem {
    fn new() -> Problem {
        tch::manual_seed(7);
        let truth = Tensor::from_slice(&[2.0f64, 1.3, 0.5]);
        let t_train = Tensor::linspace(0.0, 1.0, 6, OPT);
        let t_val = Tensor::linspace(0.0, 3.0, 30, OPT);
        let y_train = model(&truth, &t_train) + Tensor::randn([6], OPT) * 0.1;
        let y_val = model(&truth, &t_val) + Tensor::randn([30], OPT) * 0.1;
        let prior = Tensor::from_slice(&[1.5f64, 1.0, 0.3]);
        let x0 = Tensor::from_slice(&[1.0f64, 1.0, 0.0]);
        Problem {
            t_train,
            y_train,
            t_val,
            y_val,
            prior,
            x0,
            counts: Cell::new((0, 0)),
        }
    }

    /// The fit's residuals: the data, then `√λ (x − x_prior)`; `s = log λ`.
    fn residual(&self, x: &Tensor, s: &Tensor) -> Tensor {
        let fit = model(x, &self.t_train) - &self.y_train;
        Tensor::cat(&[fit, (x - &self.prior) * (s * 0.5).exp()], 0)
    }

    fn validation(&self, x: &Tensor) -> Tensor {
        (model(x, &self.t_val) - &self.y_val)
            .square()
            .sum(Kind::Double)
            * 0.5
    }

    /// `(V, dV/ds)` through `least_squares` with `create_graph`.
    fn implicit(&self, s: f64) -> (f64, f64) {
        let s = Tensor::from(s).set_requires_grad(true);
        let opts = LeastSquaresOptions::default()
            .ftol(1e-15)
            .xtol(1e-15)
            .gtol(1e-15)
            .create_graph(true);
        let out = least_squares(|x: &Tensor| self.residual(x, &s), &self.x0, &opts)
            .expect("the inner fit");
        self.counts.set((out.iterations[0], out.evaluations[0]));
        let v = self.validation(&out.x);
        let g = Tensor::run_backward(&[&v], &[&s], false, false).remove(0);
        (v.double_value(&[]), g.double_value(&[]))
    }

    /// `(V, dV/ds)` by autograd through `k` Gauss–Newton steps (closed-form Jacobian) from `x0`.
    fn unrolled(&self, s: f64, k: usize) -> (f64, f64) {
        let s = Tensor::from(s).set_requires_grad(true);
        let lam = s.exp();
        let t = &self.t_train;
        let mut x = self.x0.shallow_clone();
        for _ in 0..k {
            let e = (-x.get(1) * t).exp();
            let jac = Tensor::stack(&[e.shallow_clone(), -(x.get(0) * t * &e), e.ones_like()], 1);
            let r = model(&x, t) - &self.y_train;
            let a = jac.tr().matmul(&jac) + Tensor::eye(3, OPT) * &lam;
            let g = jac.tr().matmul(&r.unsqueeze(1)) + ((&x - &self.prior) * &lam).unsqueeze(1);
            let step = Tensor::linalg_solve(&a, &g, true).squeeze_dim(1);
            let next = &x - step;
            x = next;
        }
        let v = self.validation(&x);
        let g = Tensor::run_backward(&[&v], &[&s], false, false).remove(0);
        (v.double_value(&[]), g.double_value(&[]))
    }
}

/// `log λ ↦ (V, dV/dlog λ)` by one method.
type Hypergradient<'a> = &'a dyn Fn(f64) -> (f64, f64);

/// KiB that `f` raised the resident memory above that just before it; `None` off Linux.
fn peak_kib<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
    let (out, peak) = peak_memory::measure(f);
    (out, peak.map(|p| p.above()))
}

/// Seconds per call of `f`, best of `reps`.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (T, f64) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..reps {
        let start = Instant::now();
        out = Some(f());
        best = best.min(start.elapsed().as_secs_f64());
    }
    (out.expect("reps ≥ 1"), best)
}

fn main() {
    let p = Problem::new();
    let (k_short, k_long) = (5, 40);
    let methods: [(String, Hypergradient); 3] = [
        ("implicit".to_string(), &|s| p.implicit(s)),
        (format!("unrolled K={k_short}"), &|s| p.unrolled(s, k_short)),
        (format!("unrolled K={k_long}"), &|s| p.unrolled(s, k_long)),
    ];
    // Memory first, before the methods have run (libtorch's autograd engine warmed up by one
    // unrelated backward): each method's first call, then the most of 5 later calls.
    let w = Tensor::from(1.0f64).set_requires_grad(true);
    let _ = Tensor::run_backward(&[&(&w * &w)], &[&w], false, false);
    let first: Vec<Option<u64>> = methods.iter().map(|(_, f)| peak_kib(|| f(0.0)).1).collect();
    let warm: Vec<Option<u64>> = methods
        .iter()
        .map(|(_, f)| (0..5).map(|_| peak_kib(|| f(0.0)).1).max().flatten())
        .collect();
    let mut s = 0.0f64; // log λ: λ = 1
    let lr = 8.0;
    println!("the ridge weight λ of an exponential fit (6 points), by gradient descent on log λ of a validation loss V (30 points)");
    println!("dV/dlog λ by create_graph (implicit) and by unrolling K Gauss–Newton steps; ms per hypergradient (solve + backward)");
    println!(
        "{:>4} {:>8} {:>11} | {:>17} {:>17} {:>17} | {:>8} {:>6} {:>6}",
        "step",
        "λ",
        "V",
        "implicit",
        format!("unrolled K={k_short}"),
        format!("unrolled K={k_long}"),
        "implicit",
        format!("K={k_short}"),
        format!("K={k_long}")
    );
    for step in 0..=8 {
        let ((v, gi), ti) = time(5, || p.implicit(s));
        let ((_, gs), ts) = time(5, || p.unrolled(s, k_short));
        let ((vl, gl), tl) = time(5, || p.unrolled(s, k_long));
        assert!(
            (v - vl).abs() <= 1e-7 * v,
            "the unrolled fit converged elsewhere: {v} vs {vl}"
        );
        println!(
            "{step:>4} {:>8.5} {v:>11.8} | {gi:>17.10e} {gs:>17.10e} {gl:>17.10e} | {:>8.2} {:>6.2} {:>6.2}",
            s.exp(),
            ti * 1e3,
            ts * 1e3,
            tl * 1e3
        );
        s -= lr * gi;
    }
    println!("the implicit hypergradient is that of the converged iteration (K = {k_long}) at the cost of one solve and one backward, not a short unrolling's (K = {k_short})");

    // One hypergradient at λ = 1: the methods interleaved, 25 rounds after 3 of warm-up.
    let reps = 25;
    let mut ms = vec![Vec::with_capacity(reps); methods.len()];
    for round in 0..reps + 3 {
        for (i, (_, f)) in methods.iter().enumerate() {
            let start = Instant::now();
            let _ = f(0.0);
            if round >= 3 {
                ms[i].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let kib = |k: Option<u64>| k.map_or("n/a".to_string(), |k| k.to_string());
    println!(
        "at λ = 1, one hypergradient, threads = {}: median ms of {reps}; peak KiB above the resident memory before it (VmHWM), first call / most of 5 later",
        tch::get_num_threads()
    );
    for (i, (name, f)) in methods.iter().enumerate() {
        let (_, g) = f(0.0);
        ms[i].sort_by(f64::total_cmp);
        let work = match i {
            0 => format!(
                "LM: {} iterations, {} evaluations",
                p.counts.get().0,
                p.counts.get().1
            ),
            _ => String::new(),
        };
        let line = format!(
            "{name:>13} {g:>17.10e} {:>8.3} ms {:>7} / {} KiB  {work}",
            ms[i][reps / 2],
            kib(first[i]),
            kib(warm[i])
        );
        println!("{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_equals_long_unrolling() {
        let p = Problem::new();
        for s0 in [-2.0f64, 0.0, 1.0] {
            let (v, gi) = p.implicit(s0);
            let (vl, gl) = p.unrolled(s0, 60);
            // The solver accepts steps by the cost, which resolves x* to about √(ε·cost): V and
            // the hypergradient to 1e-9 – 1e-7 (the unrolled 60 steps are exact here).
            println!("λ = e^{s0}: V {v} vs {vl}, dV/dlog λ {gi:e} vs {gl:e}");
            assert!((v - vl).abs() <= 1e-7 * v, "{v} vs {vl}");
            assert!(
                (gi - gl).abs() <= 1e-6 * gl.abs(),
                "λ = e^{s0}: {gi} vs {gl}"
            );
        }
    }
}
