//! The Moré–Garbow–Hillstrom least-squares test problems, as batched tch residuals.
//!
//! J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization software",
//! ACM Trans. Math. Software 7(1):17–41, 1981 ("MGH"), problems 1–35. The same set as
//! `tests/lsq/mgh.py`, op for op (same order, same constants built the same way), so that the two
//! agree to the last bit on the CPU; `tests/lsq_problems.rs` checks it against the values the
//! Python module wrote (`tests/gen-least-squares.py`).
//!
//! Every residual takes `x` of shape `[B, n]` and returns `[B, m]`: B independent problems, one
//! per row, every op row-wise (no matmul, whose blocking depends on B: a row's result is the same
//! bits for every B), in `x`'s kind and on its device.
//!
//! MGH report `F = Σ f_i²`; least-squares solvers minimize `cost = ½ Σ f_i²`: [`Problem::f_star`]
//! is F, [`Problem::cost_star`] is F / 2. Use it with `#[path = "lsq/mgh.rs"] mod mgh;`.
#![allow(dead_code)]
// `a = a + b` stays out of place: an in-place `+=` on a tensor would be the same bits, but the
// residuals should stay free of in-place ops for the solver's autograd and vmap passes.
#![allow(clippy::assign_op_pattern)]

use std::f64::consts::PI;
use tch::{Kind, Tensor};

/// One test problem.
pub struct Problem {
    /// Unique name (`watson9`, `penalty2_10`, …; the same as in `mgh.py`).
    pub name: &'static str,
    /// MGH 1981 problem number.
    pub mgh: u32,
    pub n: i64,
    pub m: i64,
    /// The standard start.
    pub x0: Vec<f64>,
    /// `x [B, n] -> r [B, m]`.
    pub residual: fn(&Tensor) -> Tensor,
    /// F = Σ f_i² at the minimum the standard start reaches, to full f64 precision (exactly 0 for
    /// the zero-residual problems).
    pub f_star: f64,
    /// MGH's printed F for that minimum (6 significant digits); `None` where MGH print none for it
    /// (Trigonometric's local minimum).
    pub f_published: Option<f64>,
    /// The minimizer: closed form when `x_star_exact`, else computed (SciPy lm/trf, tight
    /// tolerances, from the standard start; see `mgh.py`'s `COMPUTED_X_STAR`).
    pub x_star: Option<Vec<f64>>,
    pub x_star_exact: bool,
    /// Other published minima: (F, where).
    pub other_minima: Vec<(f64, &'static str)>,
    pub note: &'static str,
}

impl Problem {
    /// The least-squares cost at the minimum, `½ Σ f_i² = F / 2`.
    pub fn cost_star(&self) -> f64 {
        0.5 * self.f_star
    }

    /// The k× start as MGH/MINPACK (`initpt`) make it: `factor * x0`, or `factor` in every
    /// component when x0 is all zeros (Watson).
    pub fn start(&self, factor: f64) -> Vec<f64> {
        if factor == 1.0 {
            return self.x0.clone();
        }
        if self.x0.iter().all(|&v| v == 0.0) {
            return vec![factor; self.n as usize];
        }
        self.x0.iter().map(|&v| factor * v).collect()
    }
}

// ------------------------------------------------------------------ helpers (as mgh.py's)

/// A constant vector in x's kind and device.
fn c(values: &[f64], x: &Tensor) -> Tensor {
    Tensor::from_slice(values)
        .to_kind(x.kind())
        .to_device(x.device())
}

fn col(x: &Tensor, j: i64) -> Tensor {
    x.select(1, j)
}

/// Column j kept as `[B, 1]`.
fn colk(x: &Tensor, j: i64) -> Tensor {
    x.narrow(1, j, 1)
}

/// `arange(start, end)` in x's kind and device.
fn ar(start: i64, end: i64, x: &Tensor) -> Tensor {
    Tensor::arange_start(start, end, (x.kind(), x.device()))
}

/// Sum over dim 1, keepdim.
fn sum1(t: &Tensor) -> Tensor {
    t.sum_dim_intlist(1, true, None::<Kind>)
}

fn zeros_col(x: &Tensor) -> Tensor {
    Tensor::zeros([x.size()[0], 1], (x.kind(), x.device()))
}

fn ncols(x: &Tensor) -> i64 {
    x.size()[1]
}

// ------------------------------------------------------------------ the functions

/// MGH 1: Rosenbrock (n = 2, m = 2).
pub fn rosenbrock(x: &Tensor) -> Tensor {
    let (x1, x2) = (col(x, 0), col(x, 1));
    Tensor::stack(&[(&x2 - &x1 * &x1) * 10.0, 1.0 - &x1], 1)
}

/// MGH 2: Freudenstein and Roth (2, 2).
pub fn freudenstein_roth(x: &Tensor) -> Tensor {
    let (x1, x2) = (col(x, 0), col(x, 1));
    let f1 = &x1 - 13.0 + ((5.0 - &x2) * &x2 - 2.0) * &x2;
    let f2 = &x1 - 29.0 + ((&x2 + 1.0) * &x2 - 14.0) * &x2;
    Tensor::stack(&[f1, f2], 1)
}

/// MGH 3: Powell badly scaled (2, 2).
pub fn powell_badly_scaled(x: &Tensor) -> Tensor {
    let (x1, x2) = (col(x, 0), col(x, 1));
    let f1 = &x1 * &x2 * 10000.0 - 1.0;
    let f2 = (-&x1).exp() + (-&x2).exp() - 1.0001;
    Tensor::stack(&[f1, f2], 1)
}

/// MGH 4: Brown badly scaled (2, 3).
pub fn brown_badly_scaled(x: &Tensor) -> Tensor {
    let (x1, x2) = (col(x, 0), col(x, 1));
    Tensor::stack(&[&x1 - 1e6, &x2 - 2e-6, &x1 * &x2 - 2.0], 1)
}

/// MGH 5: Beale (2, 3).
pub fn beale(x: &Tensor) -> Tensor {
    let (x1, x2) = (colk(x, 0), colk(x, 1));
    let y = c(&[1.5, 2.25, 2.625], x);
    let i = ar(1, 4, x);
    y - x1 * (1.0 - x2.pow(&i))
}

/// MGH 6: Jennrich and Sampson (2, m = 10).
pub fn jennrich_sampson(x: &Tensor) -> Tensor {
    let (x1, x2) = (colk(x, 0), colk(x, 1));
    let i = ar(1, 11, x);
    (&i * 2.0 + 2.0) - ((&x1 * &i).exp() + (&x2 * &i).exp())
}

/// MGH 7: Helical valley (3, 3). θ = atan(x2/x1)/(2π) (+ ½ if x1 < 0); ±¼ (sign of x2, as
/// MINPACK) when x1 = 0.
pub fn helical_valley(x: &Tensor) -> Tensor {
    let (x1, x2, x3) = (col(x, 0), col(x, 1), col(x, 2));
    let zero = x1.eq(0.0);
    let safe_x1 = x1.ones_like().where_self(&zero, &x1);
    let th = (&x2 / &safe_x1).atan() / (2.0 * PI);
    let th = (&th + 0.5).where_self(&x1.lt(0.0), &th);
    let quarter = x2
        .full_like(-0.25)
        .where_self(&x2.lt(0.0), &x2.full_like(0.25));
    let th = quarter.where_self(&zero, &th);
    let f1 = (&x3 - th * 10.0) * 10.0;
    let f2 = ((&x1 * &x1 + &x2 * &x2).sqrt() - 1.0) * 10.0;
    Tensor::stack(&[f1, f2, x3], 1)
}

const BARD_Y: [f64; 15] = [
    0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39,
];

/// MGH 8: Bard (3, 15).
pub fn bard(x: &Tensor) -> Tensor {
    let (x1, x2, x3) = (colk(x, 0), colk(x, 1), colk(x, 2));
    let u = ar(1, 16, x);
    let v = 16.0 - &u;
    let w = u.minimum(&v);
    c(&BARD_Y, x) - (x1 + &u / (x2 * &v + x3 * &w))
}

const GAUSSIAN_Y: [f64; 15] = [
    0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989, 0.3521, 0.2420, 0.1295, 0.0540,
    0.0175, 0.0044, 0.0009,
];

/// MGH 9: Gaussian (3, 15).
pub fn gaussian(x: &Tensor) -> Tensor {
    let (x1, x2, x3) = (colk(x, 0), colk(x, 1), colk(x, 2));
    let t = (8.0 - ar(1, 16, x)) / 2.0;
    let d = &t - &x3;
    x1 * (x2 * (&d * &d) * -0.5).exp() - c(&GAUSSIAN_Y, x)
}

const MEYER_Y: [f64; 16] = [
    34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0, 9744.0, 8261.0, 7030.0, 6005.0,
    5147.0, 4427.0, 3820.0, 3307.0, 2872.0,
];

/// MGH 10: Meyer (3, 16).
pub fn meyer(x: &Tensor) -> Tensor {
    let (x1, x2, x3) = (colk(x, 0), colk(x, 1), colk(x, 2));
    let t = ar(1, 17, x) * 5.0 + 45.0;
    x1 * (x2 / (&t + x3)).exp() - c(&MEYER_Y, x)
}

/// MGH 11: Gulf research and development (3, m = 99):
/// `exp(-|y_i - x2|^x3 / x1) - t_i`, `t_i = i/100`, `y_i = 25 + (-50 ln t_i)^(2/3)`.
pub fn gulf(x: &Tensor) -> Tensor {
    let (x1, x2, x3) = (colk(x, 0), colk(x, 1), colk(x, 2));
    let t = ar(1, 100, x) / 100.0;
    let y = (t.log() * -50.0).pow_tensor_scalar(2.0 / 3.0) + 25.0;
    (-((&y - x2).abs().pow(&x3) / x1)).exp() - t
}

/// MGH 12: Box three-dimensional (3, m = 10).
pub fn box3d(x: &Tensor) -> Tensor {
    let (x1, x2, x3) = (colk(x, 0), colk(x, 1), colk(x, 2));
    let t = ar(1, 11, x) * 0.1;
    (-(x1 * &t)).exp() - (-(x2 * &t)).exp() - x3 * ((-&t).exp() - (&t * -10.0).exp())
}

/// The four Powell singular terms of one group.
fn powell4(x1: &Tensor, x2: &Tensor, x3: &Tensor, x4: &Tensor, dim: i64) -> Tensor {
    let a = x2 - x3 * 2.0;
    let b = x1 - x4;
    Tensor::stack(
        &[
            x1 + x2 * 10.0,
            (x3 - x4) * 5f64.sqrt(),
            &a * &a,
            &b * &b * 10f64.sqrt(),
        ],
        dim,
    )
}

/// MGH 13: Powell singular (4, 4).
pub fn powell_singular(x: &Tensor) -> Tensor {
    powell4(&col(x, 0), &col(x, 1), &col(x, 2), &col(x, 3), 1)
}

/// MGH 14: Wood (4, 6).
pub fn wood(x: &Tensor) -> Tensor {
    let (x1, x2, x3, x4) = (col(x, 0), col(x, 1), col(x, 2), col(x, 3));
    Tensor::stack(
        &[
            (&x2 - &x1 * &x1) * 10.0,
            1.0 - &x1,
            (&x4 - &x3 * &x3) * 90f64.sqrt(),
            1.0 - &x3,
            (&x2 + &x4 - 2.0) * 10f64.sqrt(),
            (&x2 - &x4) * (1.0 / 10f64.sqrt()),
        ],
        1,
    )
}

const KO_Y: [f64; 11] = [
    0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246,
];
const KO_U: [f64; 11] = [
    4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625,
];

/// MGH 15: Kowalik and Osborne (4, 11).
pub fn kowalik_osborne(x: &Tensor) -> Tensor {
    let (x1, x2, x3, x4) = (colk(x, 0), colk(x, 1), colk(x, 2), colk(x, 3));
    let u = c(&KO_U, x);
    c(&KO_Y, x) - x1 * (&u * &u + &u * x2) / (&u * &u + &u * x3 + x4)
}

/// MGH 16: Brown and Dennis (4, m = 20).
pub fn brown_dennis(x: &Tensor) -> Tensor {
    let (x1, x2, x3, x4) = (colk(x, 0), colk(x, 1), colk(x, 2), colk(x, 3));
    let t = ar(1, 21, x) / 5.0;
    let a = x1 + x2 * &t - t.exp();
    let b = x3 + x4 * t.sin() - t.cos();
    &a * &a + &b * &b
}

const OSBORNE1_Y: [f64; 33] = [
    0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751, 0.718, 0.685,
    0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490, 0.478, 0.467, 0.457, 0.448,
    0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406,
];

/// MGH 17: Osborne 1 (5, 33).
pub fn osborne1(x: &Tensor) -> Tensor {
    let xs: Vec<Tensor> = (0..5).map(|j| colk(x, j)).collect();
    let t = ar(0, 33, x) * 10.0;
    c(&OSBORNE1_Y, x) - (&xs[0] + &xs[1] * (-(&t * &xs[3])).exp() + &xs[2] * (-(&t * &xs[4])).exp())
}

/// MGH 18: Biggs EXP6 (6, m = 13).
pub fn biggs_exp6(x: &Tensor) -> Tensor {
    let xs: Vec<Tensor> = (0..6).map(|j| colk(x, j)).collect();
    let t = ar(1, 14, x) * 0.1;
    let y = (-&t).exp() - (&t * -10.0).exp() * 5.0 + (&t * -4.0).exp() * 3.0;
    &xs[2] * (-(&t * &xs[0])).exp() - &xs[3] * (-(&t * &xs[1])).exp()
        + &xs[5] * (-(&t * &xs[4])).exp()
        - y
}

const OSBORNE2_Y: [f64; 65] = [
    1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746, 0.679, 0.608,
    0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724, 0.649, 0.649, 0.694, 0.644, 0.624, 0.661,
    0.612, 0.558, 0.533, 0.495, 0.500, 0.423, 0.395, 0.375, 0.372, 0.391, 0.396, 0.405, 0.428,
    0.429, 0.523, 0.562, 0.607, 0.653, 0.672, 0.708, 0.633, 0.668, 0.645, 0.632, 0.591, 0.559,
    0.597, 0.625, 0.739, 0.710, 0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162, 0.098, 0.054,
];

/// MGH 19: Osborne 2 (11, 65).
pub fn osborne2(x: &Tensor) -> Tensor {
    let xs: Vec<Tensor> = (0..11).map(|j| colk(x, j)).collect();
    let t = ar(0, 65, x) / 10.0;
    let mut model = &xs[0] * (-(&t * &xs[4])).exp();
    for k in 0..3 {
        let d = &t - &xs[8 + k];
        model = model + &xs[1 + k] * (-(&d * &d * &xs[5 + k])).exp();
    }
    c(&OSBORNE2_Y, x) - model
}

/// MGH 20: Watson (any n ≥ 2, m = 31).
pub fn watson(x: &Tensor) -> Tensor {
    let n = ncols(x);
    let t = ar(1, 30, x) / 29.0;
    let p = Tensor::arange(n, (x.kind(), x.device()));
    let tp = t.unsqueeze(1).pow(&p.unsqueeze(0)); // [29, n]: t_i^(j-1)
    let dp = Tensor::cat(
        &[
            Tensor::zeros([29, 1], (x.kind(), x.device())),
            tp.narrow(1, 0, n - 1) * p.narrow(0, 1, n - 1),
        ],
        1,
    );
    let xb = x.unsqueeze(1); // [B, 1, n]
    let s1 = (&xb * &dp).sum_dim_intlist(2, false, None::<Kind>);
    let s2 = (&xb * &tp).sum_dim_intlist(2, false, None::<Kind>);
    let f = s1 - &s2 * &s2 - 1.0;
    let (x1, x2) = (colk(x, 0), colk(x, 1));
    let last = x2 - &x1 * &x1 - 1.0;
    Tensor::cat(&[f, x1, last], 1)
}

/// MGH 21: Extended Rosenbrock (n even, m = n).
pub fn extended_rosenbrock(x: &Tensor) -> Tensor {
    let (b, n) = (x.size()[0], ncols(x));
    let g = x.narrow(1, 0, n).unfold(1, 2, 2);
    let (a, bb) = (g.select(2, 0), g.select(2, 1));
    Tensor::stack(&[(&bb - &a * &a) * 10.0, 1.0 - &a], 2).reshape([b, n])
}

/// MGH 22: Extended Powell singular (n a multiple of 4, m = n).
pub fn extended_powell_singular(x: &Tensor) -> Tensor {
    let (b, n) = (x.size()[0], ncols(x));
    let g = x.unfold(1, 4, 4);
    powell4(
        &g.select(2, 0),
        &g.select(2, 1),
        &g.select(2, 2),
        &g.select(2, 3),
        2,
    )
    .reshape([b, n])
}

/// MGH 23: Penalty I (m = n + 1).
pub fn penalty1(x: &Tensor) -> Tensor {
    let f = (x - 1.0) * 1e-5f64.sqrt();
    let s = sum1(&(x * x)) - 0.25;
    Tensor::cat(&[f, s], 1)
}

/// MGH 24: Penalty II (m = 2n).
pub fn penalty2(x: &Tensor) -> Tensor {
    let n = ncols(x);
    let sa = 1e-5f64.sqrt();
    let i = ar(2, n + 1, x);
    let y = (&i / 10.0).exp() + ((&i - 1.0) / 10.0).exp();
    let e = (x / 10.0).exp();
    let f1 = colk(x, 0) - 0.2;
    let f2 = (e.narrow(1, 1, n - 1) + e.narrow(1, 0, n - 1) - y) * sa;
    let f3 = (e.narrow(1, 1, n - 1) - (-0.1f64).exp()) * sa;
    let w = ar(1, n + 1, x).flip([0]);
    let f4 = sum1(&(x * x * w)) - 1.0;
    Tensor::cat(&[f1, f2, f3, f4], 1)
}

/// MGH 25: Variably dimensioned (m = n + 2).
pub fn variably_dimensioned(x: &Tensor) -> Tensor {
    let n = ncols(x);
    let j = ar(1, n + 1, x);
    let s = sum1(&((x - 1.0) * j));
    Tensor::cat(&[x - 1.0, s.shallow_clone(), &s * &s], 1)
}

/// MGH 26: Trigonometric (m = n).
pub fn trigonometric(x: &Tensor) -> Tensor {
    let n = ncols(x);
    let i = ar(1, n + 1, x);
    let cs = x.cos();
    (n as f64 - sum1(&cs)) + i * (1.0 - &cs) - x.sin()
}

/// MGH 27: Brown almost-linear (m = n).
pub fn brown_almost_linear(x: &Tensor) -> Tensor {
    let n = ncols(x);
    let s = sum1(x);
    let f = x.narrow(1, 0, n - 1) + s - (n + 1) as f64;
    Tensor::cat(&[f, x.prod_dim_int(1, true, None::<Kind>) - 1.0], 1)
}

fn dbv_t(x: &Tensor) -> (f64, Tensor) {
    let n = ncols(x);
    let h = 1.0 / (n + 1) as f64;
    (h, ar(1, n + 1, x) * h)
}

/// MGH 28: Discrete boundary value (m = n).
pub fn discrete_boundary_value(x: &Tensor) -> Tensor {
    let n = ncols(x);
    let (h, t) = dbv_t(x);
    let z = zeros_col(x);
    let xp = Tensor::cat(&[&z, x, &z], 1);
    let u = x + t + 1.0;
    x * 2.0 - xp.narrow(1, 0, n) - xp.narrow(1, 2, n) + &u * &u * &u * (h * h / 2.0)
}

/// MGH 29: Discrete integral equation (m = n).
pub fn discrete_integral_equation(x: &Tensor) -> Tensor {
    let (h, t) = dbv_t(x);
    let u = x + &t + 1.0;
    let cu = &u * &u * &u;
    let lower = (&cu * &t).cumsum(1, None::<Kind>);
    let b = &cu * (1.0 - &t);
    let upper = sum1(&b) - b.cumsum(1, None::<Kind>);
    x + ((1.0 - &t) * lower + &t * upper) * (h / 2.0)
}

/// MGH 30: Broyden tridiagonal (m = n).
pub fn broyden_tridiagonal(x: &Tensor) -> Tensor {
    let n = ncols(x);
    let z = zeros_col(x);
    let xp = Tensor::cat(&[&z, x, &z], 1);
    (3.0 - x * 2.0) * x - xp.narrow(1, 0, n) - xp.narrow(1, 2, n) * 2.0 + 1.0
}

/// MGH 31: Broyden banded (m = n; ml = 5, mu = 1).
pub fn broyden_banded(x: &Tensor) -> Tensor {
    let n = ncols(x);
    let i = Tensor::arange(n, (Kind::Int64, x.device()));
    let d = i.unsqueeze(0) - i.unsqueeze(1); // j - i
    let band = d
        .ge(-5)
        .logical_and(&d.le(1))
        .logical_and(&d.ne(0))
        .to_kind(x.kind());
    let g = (x * (x + 1.0)).unsqueeze(1);
    x * (x * x * 5.0 + 2.0) + 1.0 - (g * band).sum_dim_intlist(2, false, None::<Kind>)
}

fn linear_full_rank(x: &Tensor, m: i64) -> Tensor {
    let (b, n) = (x.size()[0], ncols(x));
    let s = sum1(x) * (2.0 / m as f64);
    let top = x - &s - 1.0;
    let rest = (-&s - 1.0).expand([b, m - n], false);
    Tensor::cat(&[top, rest], 1)
}

/// MGH 32: Linear function, full rank, m = 10.
pub fn linear_full_rank_m10(x: &Tensor) -> Tensor {
    linear_full_rank(x, 10)
}

/// MGH 32: Linear function, full rank, m = 50.
pub fn linear_full_rank_m50(x: &Tensor) -> Tensor {
    linear_full_rank(x, 50)
}

/// MGH 33: Linear function, rank 1, m = 10.
pub fn linear_rank1_m10(x: &Tensor) -> Tensor {
    let (n, m) = (ncols(x), 10);
    let s = sum1(&(x * ar(1, n + 1, x)));
    s * ar(1, m + 1, x) - 1.0
}

/// MGH 34: Linear function, rank 1 with zero columns and rows, m = 10.
pub fn linear_rank1_zero_m10(x: &Tensor) -> Tensor {
    let (b, n, m) = (x.size()[0], ncols(x), 10);
    let s = sum1(&(x.narrow(1, 1, n - 2) * ar(2, n, x)));
    let mid = s * ar(1, m - 1, x) - 1.0;
    let one = Tensor::full([b, 1], -1.0, (x.kind(), x.device()));
    Tensor::cat(&[&one, &mid, &one], 1)
}

/// MGH 35: Chebyquad (m = n).
pub fn chebyquad(x: &Tensor) -> Tensor {
    let n = ncols(x);
    let y = x * 2.0 - 1.0;
    let mut t_prev = y.ones_like();
    let mut t_cur = y.shallow_clone();
    let mut fs = Vec::new();
    for i in 1..=n {
        if i > 1 {
            let next = &y * &t_cur * 2.0 - &t_prev;
            t_prev = t_cur;
            t_cur = next;
        }
        let mut mean = sum1(&t_cur) / n as f64;
        if i % 2 == 0 {
            mean = mean + 1.0 / ((i * i) as f64 - 1.0);
        }
        fs.push(mean);
    }
    Tensor::cat(&fs, 1)
}

// ------------------------------------------------------------------ the table

#[allow(clippy::too_many_arguments)]
fn p(
    name: &'static str,
    mgh: u32,
    n: i64,
    m: i64,
    x0: Vec<f64>,
    residual: fn(&Tensor) -> Tensor,
    f_published: Option<f64>,
    f_star: f64,
    x_star: Option<Vec<f64>>,
    x_star_exact: bool,
    other_minima: Vec<(f64, &'static str)>,
    note: &'static str,
) -> Problem {
    Problem {
        name,
        mgh,
        n,
        m,
        x0,
        residual,
        f_star,
        f_published,
        x_star,
        x_star_exact,
        other_minima,
        note,
    }
}

fn dbv_x0(n: usize) -> Vec<f64> {
    let h = 1.0 / (n + 1) as f64;
    (1..=n)
        .map(|j| (j as f64 * h) * (j as f64 * h - 1.0))
        .collect()
}

fn rep(v: &[f64], k: usize) -> Vec<f64> {
    v.iter().copied().cycle().take(v.len() * k).collect()
}

/// The problem set, in MGH order (the same entries, names and values as `mgh.py`'s `problems()`).
pub fn problems() -> Vec<Problem> {
    let s1 = 3.0 / 21.0; // 3/(2m+1), m = 10
    let s2 = 3.0 / 17.0; // 3/(2m-3), m = 10
    vec![
        p("rosenbrock", 1, 2, 2, vec![-1.2, 1.0], rosenbrock, Some(0.0), 0.0,
          Some(vec![1.0, 1.0]), true, vec![], ""),
        p("freudenstein_roth", 2, 2, 2, vec![0.5, -2.0], freudenstein_roth, Some(48.9842),
          48.98425367924, Some(vec![11.412779013085439, -0.8968052512181562]), false,
          vec![(0.0, "(5, 4), global")],
          "the standard start reaches the local minimum 48.9842 at (11.41, -0.8968)"),
        p("powell_badly_scaled", 3, 2, 2, vec![0.0, 1.0], powell_badly_scaled, Some(0.0), 0.0,
          Some(vec![1.0981593296997958e-05, 9.106146739866704]), false, vec![],
          "MGH: F = 0 at (1.098...e-5, 9.106...)"),
        p("brown_badly_scaled", 4, 2, 3, vec![1.0, 1.0], brown_badly_scaled, Some(0.0), 0.0,
          Some(vec![1e6, 2e-6]), true, vec![], ""),
        p("beale", 5, 2, 3, vec![1.0, 1.0], beale, Some(0.0), 0.0, Some(vec![3.0, 0.5]), true,
          vec![], ""),
        p("jennrich_sampson", 6, 2, 10, vec![0.3, 0.4], jennrich_sampson, Some(124.362),
          124.36218235561486, Some(vec![0.2578252119911955, 0.25782521522274315]), false, vec![],
          "m = 10"),
        p("helical_valley", 7, 3, 3, vec![-1.0, 0.0, 0.0], helical_valley, Some(0.0), 0.0,
          Some(vec![1.0, 0.0, 0.0]), true, vec![], ""),
        p("bard", 8, 3, 15, vec![1.0, 1.0, 1.0], bard, Some(8.21487e-3), 0.008214877306578966,
          Some(vec![0.08241055975246424, 1.1330360921191027, 2.3436951785566125]), false,
          vec![(17.4286, "(0.8406, -inf, -inf)")], ""),
        p("gaussian", 9, 3, 15, vec![0.4, 1.0, 0.0], gaussian, Some(1.12793e-8),
          1.1279327696187528e-08,
          Some(vec![0.3989561378387565, 1.000019084487804, 6.375732958122898e-20]), false, vec![],
          ""),
        p("meyer", 10, 3, 16, vec![0.02, 4000.0, 250.0], meyer, Some(87.9458), 87.94585517066783,
          Some(vec![0.005609636471027746, 6181.346346286418, 345.22363462413807]), false, vec![],
          ""),
        p("gulf", 11, 3, 99, vec![5.0, 2.5, 0.15], gulf, Some(0.0), 0.0,
          Some(vec![50.0, 25.0, 1.5]), true, vec![], "m = 99"),
        p("box3d", 12, 3, 10, vec![0.0, 10.0, 20.0], box3d, Some(0.0), 0.0,
          Some(vec![1.0, 10.0, 1.0]), true,
          vec![(0.0, "(10, 1, -1)"), (0.0, "x1 = x2, x3 = 0")], "m = 10"),
        p("powell_singular", 13, 4, 4, vec![3.0, -1.0, 0.0, 1.0], powell_singular, Some(0.0),
          0.0, Some(vec![0.0; 4]), true, vec![], "J singular at x*"),
        p("wood", 14, 4, 6, vec![-3.0, -1.0, -3.0, -1.0], wood, Some(0.0), 0.0,
          Some(vec![1.0; 4]), true, vec![], ""),
        p("kowalik_osborne", 15, 4, 11, vec![0.25, 0.39, 0.415, 0.39], kowalik_osborne,
          Some(3.07505e-4), 0.00030750560384923745,
          Some(vec![0.19280693481089878, 0.19128232363782136, 0.12305650594037947,
                    0.13606232835562632]), false,
          vec![(1.02734e-3, "(+inf, -14.07..., -inf, -inf)")], ""),
        p("brown_dennis", 16, 4, 20, vec![25.0, 5.0, -5.0, -1.0], brown_dennis, Some(85822.2),
          85822.20162635637,
          Some(vec![-11.594439846973057, 13.203630027729385, -0.40343932319492193,
                    0.23677881713908494]), false, vec![], "m = 20"),
        p("osborne1", 17, 5, 33, vec![0.5, 1.5, -1.0, 0.01, 0.02], osborne1, Some(5.46489e-5),
          5.4648946974826e-05,
          Some(vec![0.3754100521054597, 1.9358469125383413, -1.464687136438267,
                    0.012867534639704381, 0.02212269966237673]), false, vec![], ""),
        p("biggs_exp6", 18, 6, 13, vec![1.0, 2.0, 1.0, 1.0, 1.0, 1.0], biggs_exp6, Some(0.0), 0.0,
          Some(vec![1.0, 10.0, 1.0, 5.0, 4.0, 3.0]), true,
          vec![(5.65565e-3, "local minimum (MGH, m = 13)"),
               (0.0, "(4, 10, 3, 5, 1, 1), the same by symmetry")],
          "m = 13; x0 lies on a symmetry subspace (x1 = x5, x3 = x6): which minimum a code reaches depends on rounding"),
        p("osborne2", 19, 11, 65, vec![1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5],
          osborne2, Some(4.01377e-2), 0.04013773629354771,
          Some(vec![1.3099771545704453, 0.4315537944684031, 0.6336616989115137,
                    0.5994305346907575, 0.75418322595603, 0.9042885809749838, 1.365811834738746,
                    4.823698817596891, 2.39868486620393, 4.568874597633732, 5.675341470596446]),
          false, vec![], ""),
        p("watson6", 20, 6, 31, vec![0.0; 6], watson, Some(2.28767e-3), WATSON6.0,
          Some(WATSON6.1.to_vec()), false, vec![], "n = 6"),
        p("watson9", 20, 9, 31, vec![0.0; 9], watson, Some(1.39976e-6), WATSON9.0,
          Some(WATSON9.1.to_vec()), false, vec![], "n = 9"),
        p("watson12", 20, 12, 31, vec![0.0; 12], watson, Some(4.72238e-10), WATSON12.0,
          Some(WATSON12.1.to_vec()), false, vec![],
          "n = 12; F in f64 at the minimizer is good to about 1e-9 relative"),
        p("extended_rosenbrock", 21, 10, 10, rep(&[-1.2, 1.0], 5), extended_rosenbrock,
          Some(0.0), 0.0, Some(vec![1.0; 10]), true, vec![], "n = 10"),
        p("extended_powell_singular", 22, 8, 8, rep(&[3.0, -1.0, 0.0, 1.0], 2),
          extended_powell_singular, Some(0.0), 0.0, Some(vec![0.0; 8]), true, vec![],
          "n = 8; J singular at x*"),
        p("penalty1_4", 23, 4, 5, vec![1.0, 2.0, 3.0, 4.0], penalty1, Some(2.24997e-5),
          2.249977500899937e-05,
          Some(vec![0.25000750627713597, 0.2500074958289958, 0.2500074986403284,
                    0.25000749760363283]), false, vec![], "n = 4"),
        p("penalty1_10", 23, 10, 11, (1..=10).map(|j| j as f64).collect(), penalty1,
          Some(7.08765e-5), PENALTY1_10.0, Some(PENALTY1_10.1.to_vec()), false, vec![], "n = 10"),
        p("penalty2_4", 24, 4, 8, vec![0.5; 4], penalty2, Some(9.37629e-6), 9.376293007355444e-06,
          Some(vec![0.1999993333503779, 0.19131670433619183, 0.4801014874970465,
                    0.5188453966860986]), false, vec![], "n = 4"),
        p("penalty2_10", 24, 10, 20, vec![0.5; 10], penalty2, Some(2.93660e-4), PENALTY2_10.0,
          Some(PENALTY2_10.1.to_vec()), false, vec![], "n = 10"),
        p("variably_dimensioned", 25, 10, 12, (1..=10).map(|j| 1.0 - j as f64 / 10.0).collect(),
          variably_dimensioned, Some(0.0), 0.0, Some(vec![1.0; 10]), true, vec![], "n = 10"),
        p("trigonometric", 26, 10, 10, vec![0.1; 10], trigonometric, None, TRIGONOMETRIC.0,
          Some(TRIGONOMETRIC.1.to_vec()), false, vec![(0.0, "global (MGH)")],
          "n = 10; the standard start reaches the local minimum 2.79506e-5 (not printed in MGH)"),
        p("brown_almost_linear", 27, 10, 10, vec![0.5; 10], brown_almost_linear, Some(0.0), 0.0,
          Some(vec![1.0; 10]), true,
          vec![(0.0, "(a, ..., a, a^(1-n)) with n a^n - (n+1) a^(n-1) + 1 = 0"),
               (1.0, "(0, ..., 0, n+1)")], "n = 10"),
        p("discrete_boundary_value", 28, 10, 10, dbv_x0(10), discrete_boundary_value, Some(0.0),
          0.0, Some(DBV.to_vec()), false, vec![], "n = 10"),
        p("discrete_integral_equation", 29, 10, 10, dbv_x0(10), discrete_integral_equation,
          Some(0.0), 0.0, Some(DIE.to_vec()), false, vec![], "n = 10"),
        p("broyden_tridiagonal", 30, 10, 10, vec![-1.0; 10], broyden_tridiagonal, Some(0.0), 0.0,
          Some(BROYDEN_TRI.to_vec()), false, vec![], "n = 10"),
        p("broyden_banded", 31, 10, 10, vec![-1.0; 10], broyden_banded, Some(0.0), 0.0,
          Some(BROYDEN_BANDED.to_vec()), false, vec![], "n = 10; ml = 5, mu = 1"),
        p("linear_full_rank", 32, 5, 10, vec![1.0; 5], linear_full_rank_m10, Some(5.0), 5.0,
          Some(vec![-1.0; 5]), true, vec![], "n = 5, m = 10; F* = m - n at x = -1"),
        p("linear_full_rank_m50", 32, 5, 50, vec![1.0; 5], linear_full_rank_m50, Some(45.0),
          45.0, Some(vec![-1.0; 5]), true, vec![], "n = 5, m = 50; F* = m - n at x = -1"),
        p("linear_rank1", 33, 5, 10, vec![1.0; 5], linear_rank1_m10, Some(90.0 / 42.0),
          90.0 / 42.0, Some((1..=5).map(|j| s1 * j as f64 / 55.0).collect()), true, vec![],
          "n = 5, m = 10; F* = m(m-1)/(2(2m+1)); x_star is the minimum-norm minimizer"),
        p("linear_rank1_zero", 34, 5, 10, vec![1.0; 5], linear_rank1_zero_m10,
          Some(124.0 / 34.0), 124.0 / 34.0,
          Some([0.0].into_iter().chain((2..=4).map(|j| s2 * j as f64 / 29.0)).chain([0.0]).collect()),
          true, vec![],
          "n = 5, m = 10; F* = (m^2 + 3m - 6)/(2(2m-3)); x_star is the minimum-norm minimizer"),
        p("chebyquad8", 35, 8, 8, (1..=8).map(|j| j as f64 / 9.0).collect(), chebyquad,
          Some(3.51687e-3), CHEBYQUAD8.0, Some(CHEBYQUAD8.1.to_vec()), false, vec![], "n = m = 8"),
        p("chebyquad10", 35, 10, 10, (1..=10).map(|j| j as f64 / 11.0).collect(), chebyquad,
          Some(6.50395e-3), CHEBYQUAD10.0, Some(CHEBYQUAD10.1.to_vec()), false, vec![],
          "n = m = 10"),
    ]
}

/// Finds a problem by name.
pub fn by_name(name: &str) -> Problem {
    problems()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no MGH problem {name}"))
}

// Computed minimizers (mgh.py's COMPUTED_X_STAR): (F at x, x).
const WATSON6: (f64, [f64; 6]) = (
    0.002287670053552355,
    [
        -0.015725085086620145,
        1.0124348694038539,
        -0.2329916277816088,
        1.2604301027499036,
        -1.5137289454077254,
        0.9929964449925701,
    ],
);
const WATSON9: (f64, [f64; 9]) = (
    1.3997601380931067e-06,
    [
        -1.530707517342585e-05,
        0.9997897039357849,
        0.014763963403015737,
        0.14634233096796065,
        1.000821090774693,
        -2.617731111845048,
        4.1044031282222955,
        -3.143612255109331,
        1.0526264018971987,
    ],
);
const WATSON12: (f64, [f64; 12]) = (
    4.722381104453202e-10,
    [
        -6.638060470372722e-09,
        1.0000016441178616,
        -0.0005639322103038106,
        0.3478205405032743,
        -0.15673150408941197,
        1.0528151771740557,
        -3.2472711533590313,
        7.288434897739936,
        -10.271848241067778,
        9.074113646870698,
        -4.541375466598521,
        1.0120118885340796,
    ],
);
const PENALTY1_10: (f64, [f64; 10]) = (
    7.087651467090369e-05,
    [
        0.1581223023084818,
        0.15812230204284386,
        0.15812230177720663,
        0.15812230151157403,
        0.15812230124593685,
        0.1581223009802993,
        0.15812230071466202,
        0.15812230044902695,
        0.15812230018338963,
        0.15812229991775223,
    ],
);
const PENALTY2_10: (f64, [f64; 10]) = (
    0.00029366053745674594,
    [
        0.1999836051975856,
        0.010350669189291227,
        0.019604935061754463,
        0.032089067090937944,
        0.04993267724963114,
        0.07651399520922948,
        0.11862407430180327,
        0.19214488189534407,
        0.34732057547399503,
        0.3691643736397631,
    ],
);
const TRIGONOMETRIC: (f64, [f64; 10]) = (
    2.7950561218787136e-05,
    [
        0.0551509038440836,
        0.056840616648556254,
        0.058764001604685395,
        0.06099060848365662,
        0.06362621350261773,
        0.06684317923094572,
        0.20816151887561013,
        0.16436309597005114,
        0.0850068947303197,
        0.09143145025418711,
    ],
);
const CHEBYQUAD8: (f64, [f64; 8]) = (
    0.0035168737256779225,
    [
        0.04315276032864233,
        0.19309084054396564,
        0.266328706866166,
        0.49999999992778177,
        0.5000000000722181,
        0.733671293133834,
        0.8069091594560344,
        0.9568472396713577,
    ],
);
const CHEBYQUAD10: (f64, [f64; 10]) = (
    0.006503954800882305,
    [
        0.059619900761915486,
        0.16670828216633812,
        0.2391706591837861,
        0.3988842921583737,
        0.3988842926983696,
        0.6011157073016301,
        0.6011157078416264,
        0.7608293408162138,
        0.8332917178336617,
        0.9403800992380844,
    ],
);
const DBV: [f64; 10] = [
    -0.04316498251876487,
    -0.08157715653538687,
    -0.11448571438052928,
    -0.14097357686259668,
    -0.1599086961819831,
    -0.16987720231277492,
    -0.16908998378120835,
    -0.15524953522183182,
    -0.125355891678935,
    -0.07541653368589209,
];
const DIE: [f64; 10] = [
    -0.04316498251876486,
    -0.08157715653538689,
    -0.11448571438052928,
    -0.14097357686259665,
    -0.1599086961819831,
    -0.16987720231277487,
    -0.16908998378120832,
    -0.1552495352218318,
    -0.12535589167893496,
    -0.07541653368589202,
];
const BROYDEN_TRI: [f64; 10] = [
    -0.5707221320112248,
    -0.6818069499842752,
    -0.7022100760176601,
    -0.7055106298950804,
    -0.7049061557287437,
    -0.7014966070298512,
    -0.6918893223547983,
    -0.6657965144058536,
    -0.5960351090263657,
    -0.4164122575286934,
];
const BROYDEN_BANDED: [f64; 10] = [
    -0.4283028635872503,
    -0.47659642435629024,
    -0.5196524636468617,
    -0.5580993248321808,
    -0.5925061568294574,
    -0.624503682199468,
    -0.6232394714405911,
    -0.6213938417965735,
    -0.6204535966590874,
    -0.5864692707204351,
];
