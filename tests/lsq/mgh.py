"""The Moré–Garbow–Hillstrom least-squares test problems, as batched torch residuals.

J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization software",
ACM Trans. Math. Software 7(1):17–41, 1981 (here "MGH"), problems 1–35; the same functions are
MINPACK-1's test set (``ssqfcn``/``ssqjac``/``initpt`` of the lmder driver) where they overlap.

Every residual takes ``x`` of shape ``[B, n]`` and returns ``[B, m]``: B independent problems, one
per row, every op row-wise, in ``x``'s dtype and on its device. ``tests/lsq/mgh.rs`` is the same set in
Rust; it repeats the ops below one for one (same order, same constants built the same way), so the
two agree to the last bit on the CPU; ``tests/lsq_problems.rs`` checks them against the values
this module writes (tests/gen-least-squares.py).

Conventions
- MGH (and MINPACK) report ``F = Σ f_i²``; least-squares solvers (SciPy, ours) minimize
  ``cost = ½ Σ f_i²``. ``Problem.f_published`` is MGH's printed F (6 significant digits) and
  ``Problem.f_star`` the same minimum to full f64 precision; ``cost_star = f_star / 2``.
- The k× starts are ``k * x0``, except when x0 is all zeros (Watson): MINPACK's ``initpt``
  then uses ``x = k`` in every component. ``Problem.start(k)``.
- ``f_star`` and ``x_star`` are the minimum that the standard start reaches in the literature
  (MGH's and MINPACK's reported runs), which is not always the global one: Freudenstein–Roth
  (48.9842…, global 0), Trigonometric n = 10 (2.79506e-5 is reached from the standard start
  by MINPACK-type codes; global 0), Biggs EXP6 (5.65565e-3, global 0). ``note`` says so.
- ``x_star`` exact where MGH gives it in closed form; otherwise computed here (SciPy lm, tight
  tolerances, from the standard start; tests/gen-least-squares.py writes how it was found) and
  written into both files with 17 significant digits.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch


def _c(values, x):
    """A constant vector in x's dtype and device (Rust: Tensor::from_slice(..).to_kind().to_device())."""
    return torch.tensor(values, dtype=torch.float64).to(dtype=x.dtype, device=x.device)


def _col(x, j):
    return x.select(1, j)


def _ar(start, end, x):
    """float64 arange start..end (exclusive) in x's dtype/device (Rust: Tensor::arange_start)."""
    return torch.arange(start, end, dtype=x.dtype, device=x.device)


# ---------------------------------------------------------------- 1 Rosenbrock (n = 2, m = 2)
def rosenbrock(x):
    x1, x2 = _col(x, 0), _col(x, 1)
    return torch.stack([(x2 - x1 * x1) * 10.0, 1.0 - x1], 1)


# ---------------------------------------------------------------- 2 Freudenstein and Roth
def freudenstein_roth(x):
    x1, x2 = _col(x, 0), _col(x, 1)
    f1 = x1 - 13.0 + ((5.0 - x2) * x2 - 2.0) * x2
    f2 = x1 - 29.0 + ((x2 + 1.0) * x2 - 14.0) * x2
    return torch.stack([f1, f2], 1)


# ---------------------------------------------------------------- 3 Powell badly scaled
def powell_badly_scaled(x):
    x1, x2 = _col(x, 0), _col(x, 1)
    f1 = x1 * x2 * 10000.0 - 1.0
    f2 = torch.exp(-x1) + torch.exp(-x2) - 1.0001
    return torch.stack([f1, f2], 1)


# ---------------------------------------------------------------- 4 Brown badly scaled (m = 3)
def brown_badly_scaled(x):
    x1, x2 = _col(x, 0), _col(x, 1)
    return torch.stack([x1 - 1e6, x2 - 2e-6, x1 * x2 - 2.0], 1)


# ---------------------------------------------------------------- 5 Beale (m = 3)
def beale(x):
    x1, x2 = x.narrow(1, 0, 1), x.narrow(1, 1, 1)  # [B, 1]
    y = _c([1.5, 2.25, 2.625], x)
    i = _ar(1, 4, x)
    return y - x1 * (1.0 - torch.pow(x2, i))


# ---------------------------------------------------------------- 6 Jennrich and Sampson (m = 10)
def jennrich_sampson(x):
    x1, x2 = x.narrow(1, 0, 1), x.narrow(1, 1, 1)
    i = _ar(1, 11, x)
    return (i * 2.0 + 2.0) - (torch.exp(x1 * i) + torch.exp(x2 * i))


# ---------------------------------------------------------------- 7 Helical valley
def helical_valley(x):
    x1, x2, x3 = _col(x, 0), _col(x, 1), _col(x, 2)
    # theta = atan(x2/x1)/(2 pi) (+ 1/2 if x1 < 0); MINPACK's sign(1/4, x2) when x1 = 0.
    zero = x1 == 0.0
    safe_x1 = torch.where(zero, torch.ones_like(x1), x1)
    th = torch.atan(x2 / safe_x1) / (2.0 * math.pi)
    th = torch.where(x1 < 0.0, th + 0.5, th)
    quarter = torch.where(x2 < 0.0, torch.full_like(x2, -0.25), torch.full_like(x2, 0.25))
    th = torch.where(zero, quarter, th)
    f1 = (x3 - th * 10.0) * 10.0
    f2 = (torch.sqrt(x1 * x1 + x2 * x2) - 1.0) * 10.0
    return torch.stack([f1, f2, x3], 1)


# ---------------------------------------------------------------- 8 Bard (m = 15)
BARD_Y = [0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39]


def bard(x):
    x1, x2, x3 = x.narrow(1, 0, 1), x.narrow(1, 1, 1), x.narrow(1, 2, 1)
    u = _ar(1, 16, x)
    v = 16.0 - u
    w = torch.minimum(u, v)
    return _c(BARD_Y, x) - (x1 + u / (x2 * v + x3 * w))


# ---------------------------------------------------------------- 9 Gaussian (m = 15)
GAUSSIAN_Y = [0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989,
              0.3521, 0.2420, 0.1295, 0.0540, 0.0175, 0.0044, 0.0009]


def gaussian(x):
    x1, x2, x3 = x.narrow(1, 0, 1), x.narrow(1, 1, 1), x.narrow(1, 2, 1)
    t = (8.0 - _ar(1, 16, x)) / 2.0
    d = t - x3
    return x1 * torch.exp(x2 * (d * d) * -0.5) - _c(GAUSSIAN_Y, x)


# ---------------------------------------------------------------- 10 Meyer (m = 16)
MEYER_Y = [34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0, 9744.0,
           8261.0, 7030.0, 6005.0, 5147.0, 4427.0, 3820.0, 3307.0, 2872.0]


def meyer(x):
    x1, x2, x3 = x.narrow(1, 0, 1), x.narrow(1, 1, 1), x.narrow(1, 2, 1)
    t = _ar(1, 17, x) * 5.0 + 45.0
    return x1 * torch.exp(x2 / (t + x3)) - _c(MEYER_Y, x)


# ---------------------------------------------------------------- 11 Gulf research and development (m = 99)
def gulf(x):
    """MGH 11 with m = 99: f_i = exp(-|y_i - x2|^x3 / x1) - t_i, t_i = i/100,
    y_i = 25 + (-50 ln t_i)^(2/3) (MGH prints ``|y_i m i x2|``; the minus is meant; MINPACK-2 and
    every later transcription read it so, and F = 0 at (50, 25, 1.5) only with it)."""
    x1, x2, x3 = x.narrow(1, 0, 1), x.narrow(1, 1, 1), x.narrow(1, 2, 1)
    t = _ar(1, 100, x) / 100.0
    y = torch.pow(torch.log(t) * -50.0, 2.0 / 3.0) + 25.0
    return torch.exp(-(torch.pow(torch.abs(y - x2), x3) / x1)) - t


# ---------------------------------------------------------------- 12 Box three-dimensional (m = 10)
def box3d(x):
    x1, x2, x3 = x.narrow(1, 0, 1), x.narrow(1, 1, 1), x.narrow(1, 2, 1)
    t = _ar(1, 11, x) * 0.1
    return torch.exp(-(x1 * t)) - torch.exp(-(x2 * t)) - x3 * (torch.exp(-t) - torch.exp(t * -10.0))


# ---------------------------------------------------------------- 13 Powell singular
def powell_singular(x):
    x1, x2, x3, x4 = _col(x, 0), _col(x, 1), _col(x, 2), _col(x, 3)
    a = x2 - x3 * 2.0
    b = x1 - x4
    return torch.stack([x1 + x2 * 10.0, (x3 - x4) * math.sqrt(5.0), a * a, b * b * math.sqrt(10.0)], 1)


# ---------------------------------------------------------------- 14 Wood (m = 6)
def wood(x):
    x1, x2, x3, x4 = _col(x, 0), _col(x, 1), _col(x, 2), _col(x, 3)
    return torch.stack([
        (x2 - x1 * x1) * 10.0,
        1.0 - x1,
        (x4 - x3 * x3) * math.sqrt(90.0),
        1.0 - x3,
        (x2 + x4 - 2.0) * math.sqrt(10.0),
        (x2 - x4) * (1.0 / math.sqrt(10.0)),
    ], 1)


# ---------------------------------------------------------------- 15 Kowalik and Osborne (m = 11)
KO_Y = [0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246]
KO_U = [4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625]


def kowalik_osborne(x):
    x1, x2, x3, x4 = (x.narrow(1, j, 1) for j in range(4))
    u = _c(KO_U, x)
    return _c(KO_Y, x) - x1 * (u * u + u * x2) / (u * u + u * x3 + x4)


# ---------------------------------------------------------------- 16 Brown and Dennis (m = 20)
def brown_dennis(x):
    x1, x2, x3, x4 = (x.narrow(1, j, 1) for j in range(4))
    t = _ar(1, 21, x) / 5.0
    a = x1 + x2 * t - torch.exp(t)
    b = x3 + x4 * torch.sin(t) - torch.cos(t)
    return a * a + b * b


# ---------------------------------------------------------------- 17 Osborne 1 (m = 33)
OSBORNE1_Y = [0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751,
              0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490,
              0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406]


def osborne1(x):
    x1, x2, x3, x4, x5 = (x.narrow(1, j, 1) for j in range(5))
    t = _ar(0, 33, x) * 10.0
    return _c(OSBORNE1_Y, x) - (x1 + x2 * torch.exp(-(t * x4)) + x3 * torch.exp(-(t * x5)))


# ---------------------------------------------------------------- 18 Biggs EXP6 (m = 13)
def biggs_exp6(x):
    x1, x2, x3, x4, x5, x6 = (x.narrow(1, j, 1) for j in range(6))
    t = _ar(1, 14, x) * 0.1
    y = torch.exp(-t) - torch.exp(t * -10.0) * 5.0 + torch.exp(t * -4.0) * 3.0
    return x3 * torch.exp(-(t * x1)) - x4 * torch.exp(-(t * x2)) + x6 * torch.exp(-(t * x5)) - y


# ---------------------------------------------------------------- 19 Osborne 2 (m = 65)
OSBORNE2_Y = [1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746,
              0.679, 0.608, 0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724, 0.649, 0.649,
              0.694, 0.644, 0.624, 0.661, 0.612, 0.558, 0.533, 0.495, 0.500, 0.423, 0.395,
              0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429, 0.523, 0.562, 0.607, 0.653,
              0.672, 0.708, 0.633, 0.668, 0.645, 0.632, 0.591, 0.559, 0.597, 0.625, 0.739,
              0.710, 0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162, 0.098, 0.054]


def osborne2(x):
    xs = [x.narrow(1, j, 1) for j in range(11)]
    t = _ar(0, 65, x) / 10.0
    model = xs[0] * torch.exp(-(t * xs[4]))
    for k in range(3):
        d = t - xs[8 + k]
        model = model + xs[1 + k] * torch.exp(-(d * d * xs[5 + k]))
    return _c(OSBORNE2_Y, x) - model


# ---------------------------------------------------------------- 20 Watson (m = 31), any n
def watson(x):
    n = x.shape[1]
    t = _ar(1, 30, x) / 29.0  # [29]
    p = torch.arange(0, n, dtype=x.dtype, device=x.device)  # powers 0..n-1
    tp = torch.pow(t.unsqueeze(1), p.unsqueeze(0))  # [29, n]: t_i^(j-1)
    # d/dt of sum x_j t^(j-1): coefficient (j-1) t^(j-2), j >= 2
    dp = torch.cat([torch.zeros(29, 1, dtype=x.dtype, device=x.device), tp.narrow(1, 0, n - 1) * p.narrow(0, 1, n - 1)], 1)
    # row-wise products summed over the last dim (not matmul, whose blocking depends on B)
    xb = x.unsqueeze(1)  # [B, 1, n]
    s1 = (xb * dp).sum(2)  # [B, 29]
    s2 = (xb * tp).sum(2)
    f = s1 - s2 * s2 - 1.0
    x1, x2 = x.narrow(1, 0, 1), x.narrow(1, 1, 1)
    return torch.cat([f, x1, x2 - x1 * x1 - 1.0], 1)


# ---------------------------------------------------------------- 21 Extended Rosenbrock (m = n, n even)
def extended_rosenbrock(x):
    n = x.shape[1]
    odd = x.narrow(1, 0, n).unfold(1, 2, 2)  # [B, n/2, 2]
    a, b = odd.select(2, 0), odd.select(2, 1)
    return torch.stack([(b - a * a) * 10.0, 1.0 - a], 2).reshape(x.shape[0], n)


# ---------------------------------------------------------------- 22 Extended Powell singular (n multiple of 4)
def extended_powell_singular(x):
    n = x.shape[1]
    g = x.unfold(1, 4, 4)  # [B, n/4, 4]
    x1, x2, x3, x4 = (g.select(2, j) for j in range(4))
    a = x2 - x3 * 2.0
    b = x1 - x4
    return torch.stack([x1 + x2 * 10.0, (x3 - x4) * math.sqrt(5.0), a * a, b * b * math.sqrt(10.0)], 2).reshape(x.shape[0], n)


# ---------------------------------------------------------------- 23 Penalty I (m = n + 1)
def penalty1(x):
    f = (x - 1.0) * math.sqrt(1e-5)
    s = (x * x).sum(1, keepdim=True) - 0.25
    return torch.cat([f, s], 1)


# ---------------------------------------------------------------- 24 Penalty II (m = 2n)
def penalty2(x):
    n = x.shape[1]
    sa = math.sqrt(1e-5)
    i = _ar(2, n + 1, x)  # 2..n
    y = torch.exp(i / 10.0) + torch.exp((i - 1.0) / 10.0)
    e = torch.exp(x / 10.0)
    f1 = x.narrow(1, 0, 1) - 0.2
    f2 = (e.narrow(1, 1, n - 1) + e.narrow(1, 0, n - 1) - y) * sa
    f3 = (e.narrow(1, 1, n - 1) - math.exp(-0.1)) * sa
    w = _ar(1, n + 1, x).flip(0)  # n - j + 1
    f4 = (x * x * w).sum(1, keepdim=True) - 1.0
    return torch.cat([f1, f2, f3, f4], 1)


# ---------------------------------------------------------------- 25 Variably dimensioned (m = n + 2)
def variably_dimensioned(x):
    n = x.shape[1]
    j = _ar(1, n + 1, x)
    s = ((x - 1.0) * j).sum(1, keepdim=True)
    return torch.cat([x - 1.0, s, s * s], 1)


# ---------------------------------------------------------------- 26 Trigonometric (m = n)
def trigonometric(x):
    n = x.shape[1]
    i = _ar(1, n + 1, x)
    c = torch.cos(x)
    return (float(n) - c.sum(1, keepdim=True)) + i * (1.0 - c) - torch.sin(x)


# ---------------------------------------------------------------- 27 Brown almost-linear (m = n)
def brown_almost_linear(x):
    n = x.shape[1]
    s = x.sum(1, keepdim=True)
    f = x.narrow(1, 0, n - 1) + s - float(n + 1)
    return torch.cat([f, x.prod(1, keepdim=True) - 1.0], 1)


# ---------------------------------------------------------------- 28 Discrete boundary value (m = n)
def discrete_boundary_value(x):
    n = x.shape[1]
    h = 1.0 / (n + 1)
    t = _ar(1, n + 1, x) * h
    z = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
    xp = torch.cat([z, x, z], 1)
    u = x + t + 1.0
    return x * 2.0 - xp.narrow(1, 0, n) - xp.narrow(1, 2, n) + u * u * u * (h * h / 2.0)


# ---------------------------------------------------------------- 29 Discrete integral equation (m = n)
def discrete_integral_equation(x):
    n = x.shape[1]
    h = 1.0 / (n + 1)
    t = _ar(1, n + 1, x) * h
    u = x + t + 1.0
    c = u * u * u
    lower = torch.cumsum(c * t, 1)  # sum_{j <= i} t_j c_j
    b = c * (1.0 - t)
    upper = b.sum(1, keepdim=True) - torch.cumsum(b, 1)  # sum_{j > i} (1 - t_j) c_j
    return x + ((1.0 - t) * lower + t * upper) * (h / 2.0)


# ---------------------------------------------------------------- 30 Broyden tridiagonal (m = n)
def broyden_tridiagonal(x):
    n = x.shape[1]
    z = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
    xp = torch.cat([z, x, z], 1)
    return (3.0 - x * 2.0) * x - xp.narrow(1, 0, n) - xp.narrow(1, 2, n) * 2.0 + 1.0


# ---------------------------------------------------------------- 31 Broyden banded (m = n, ml = 5, mu = 1)
def broyden_banded(x):
    n = x.shape[1]
    i = torch.arange(0, n, device=x.device)
    d = i.unsqueeze(0) - i.unsqueeze(1)  # j - i
    band = ((d >= -5) & (d <= 1) & (d != 0)).to(x.dtype)  # [n, n], row i: J_i
    g = (x * (x + 1.0)).unsqueeze(1)  # [B, 1, n]
    return x * (x * x * 5.0 + 2.0) + 1.0 - (g * band).sum(2)


# ---------------------------------------------------------------- 32 Linear function, full rank (m >= n)
def _linear_full_rank(x, m):
    n = x.shape[1]
    s = x.sum(1, keepdim=True) * (2.0 / m)
    top = x - s - 1.0
    rest = (-s - 1.0).expand(x.shape[0], m - n)
    return torch.cat([top, rest], 1)


def linear_full_rank_m10(x):
    return _linear_full_rank(x, 10)


def linear_full_rank_m50(x):
    return _linear_full_rank(x, 50)


# ---------------------------------------------------------------- 33 Linear function, rank 1
def _linear_rank1(x, m):
    n = x.shape[1]
    s = (x * _ar(1, n + 1, x)).sum(1, keepdim=True)
    return s * _ar(1, m + 1, x) - 1.0


def linear_rank1_m10(x):
    return _linear_rank1(x, 10)


# ---------------------------------------------------------------- 34 Linear function, rank 1 with zero columns and rows
def _linear_rank1_zero(x, m):
    n = x.shape[1]
    s = (x.narrow(1, 1, n - 2) * _ar(2, n, x)).sum(1, keepdim=True)
    mid = s * _ar(1, m - 1, x) - 1.0  # i = 2..m-1: (i-1) s - 1
    one = torch.full((x.shape[0], 1), -1.0, dtype=x.dtype, device=x.device)
    return torch.cat([one, mid, one], 1)


def linear_rank1_zero_m10(x):
    return _linear_rank1_zero(x, 10)


# ---------------------------------------------------------------- 35 Chebyquad (m = n here)
def chebyquad(x):
    n = x.shape[1]
    m = n
    y = x * 2.0 - 1.0
    t_prev = torch.ones_like(y)
    t_cur = y
    fs = []
    for i in range(1, m + 1):
        if i > 1:
            t_prev, t_cur = t_cur, y * t_cur * 2.0 - t_prev
        mean = t_cur.sum(1, keepdim=True) / float(n)
        if i % 2 == 0:
            mean = mean + 1.0 / (i * i - 1.0)
        fs.append(mean)
    return torch.cat(fs, 1)


# ================================================================= the table
@dataclass
class Problem:
    name: str
    mgh: int  # MGH 1981 problem number
    n: int
    m: int
    x0: List[float]  # the standard start
    residual: Callable  # x [B, n] -> r [B, m]
    f_star: float  # F = sum f_i^2 at the minimum the standard start reaches, full f64 precision (exactly 0 for zero-residual problems)
    f_published: Optional[float]  # MGH 1981's printed F for that minimum (6 significant digits); None if MGH print none for it
    x_star: Optional[List[float]] = None  # that minimizer: closed form (x_star_exact) or computed (COMPUTED_X_STAR)
    x_star_exact: bool = False
    other_minima: List[Tuple[float, str]] = field(default_factory=list)  # other published minima (F, where)
    note: str = ""

    @property
    def cost_star(self):
        """The least-squares cost at the minimum: cost = ½ Σ f_i² = F / 2."""
        return 0.5 * self.f_star

    def start(self, factor=1.0):
        """x0 scaled as MGH/MINPACK do: factor * x0, or factor in every component when x0 = 0."""
        if factor == 1.0:
            return list(self.x0)
        if all(v == 0.0 for v in self.x0):
            return [float(factor)] * self.n
        return [factor * v for v in self.x0]


# x* (and F at it, evaluated in f64 by the functions above) where MGH give no closed form: the
# better of SciPy least_squares lm and trf (exact Jacobian, ftol = xtol = gtol = 1e-15) from the
# standard start; every F here agrees with MGH's printed 6 digits (tests/gen-least-squares.py
# re-checks it). Printed with repr (17 significant digits); tests/lsq/mgh.rs holds the same
# numbers. For F* = 0 problems the minimum is exactly 0 and only x is used.
COMPUTED_X_STAR = {
    "freudenstein_roth": (48.98425367924, [11.412779013085439, -0.8968052512181562]),
    "powell_badly_scaled": (0.0, [1.0981593296997958e-05, 9.106146739866704]),
    "jennrich_sampson": (124.36218235561486, [0.2578252119911955, 0.25782521522274315]),
    "bard": (0.008214877306578966, [0.08241055975246424, 1.1330360921191027, 2.3436951785566125]),
    "gaussian": (1.1279327696187528e-08, [0.3989561378387565, 1.000019084487804, 6.375732958122898e-20]),
    "meyer": (87.94585517066783, [0.005609636471027746, 6181.346346286418, 345.22363462413807]),
    "kowalik_osborne": (0.00030750560384923745, [0.19280693481089878, 0.19128232363782136, 0.12305650594037947, 0.13606232835562632]),
    "brown_dennis": (85822.20162635637, [-11.594439846973057, 13.203630027729385, -0.40343932319492193, 0.23677881713908494]),
    "osborne1": (5.4648946974826e-05, [0.3754100521054597, 1.9358469125383413, -1.464687136438267, 0.012867534639704381, 0.02212269966237673]),
    "osborne2": (0.04013773629354771, [1.3099771545704453, 0.4315537944684031, 0.6336616989115137, 0.5994305346907575, 0.75418322595603, 0.9042885809749838, 1.365811834738746, 4.823698817596891, 2.39868486620393, 4.568874597633732, 5.675341470596446]),
    "watson6": (0.002287670053552355, [-0.015725085086620145, 1.0124348694038539, -0.2329916277816088, 1.2604301027499036, -1.5137289454077254, 0.9929964449925701]),
    "watson9": (1.3997601380931067e-06, [-1.530707517342585e-05, 0.9997897039357849, 0.014763963403015737, 0.14634233096796065, 1.000821090774693, -2.617731111845048, 4.1044031282222955, -3.143612255109331, 1.0526264018971987]),
    "watson12": (4.722381104453202e-10, [-6.638060470372722e-09, 1.0000016441178616, -0.0005639322103038106, 0.3478205405032743, -0.15673150408941197, 1.0528151771740557, -3.2472711533590313, 7.288434897739936, -10.271848241067778, 9.074113646870698, -4.541375466598521, 1.0120118885340796]),
    "penalty1_4": (2.249977500899937e-05, [0.25000750627713597, 0.2500074958289958, 0.2500074986403284, 0.25000749760363283]),
    "penalty1_10": (7.087651467090369e-05, [0.1581223023084818, 0.15812230204284386, 0.15812230177720663, 0.15812230151157403, 0.15812230124593685, 0.1581223009802993, 0.15812230071466202, 0.15812230044902695, 0.15812230018338963, 0.15812229991775223]),
    "penalty2_4": (9.376293007355444e-06, [0.1999993333503779, 0.19131670433619183, 0.4801014874970465, 0.5188453966860986]),
    "penalty2_10": (0.00029366053745674594, [0.1999836051975856, 0.010350669189291227, 0.019604935061754463, 0.032089067090937944, 0.04993267724963114, 0.07651399520922948, 0.11862407430180327, 0.19214488189534407, 0.34732057547399503, 0.3691643736397631]),
    "trigonometric": (2.7950561218787136e-05, [0.0551509038440836, 0.056840616648556254, 0.058764001604685395, 0.06099060848365662, 0.06362621350261773, 0.06684317923094572, 0.20816151887561013, 0.16436309597005114, 0.0850068947303197, 0.09143145025418711]),
    "discrete_boundary_value": (1.940223955693235e-33, [-0.04316498251876487, -0.08157715653538687, -0.11448571438052928, -0.14097357686259668, -0.1599086961819831, -0.16987720231277492, -0.16908998378120835, -0.15524953522183182, -0.125355891678935, -0.07541653368589209]),
    "discrete_integral_equation": (7.51112678311022e-33, [-0.04316498251876486, -0.08157715653538689, -0.11448571438052928, -0.14097357686259665, -0.1599086961819831, -0.16987720231277487, -0.16908998378120832, -0.1552495352218318, -0.12535589167893496, -0.07541653368589202]),
    "broyden_tridiagonal": (4.437342591868191e-31, [-0.5707221320112248, -0.6818069499842752, -0.7022100760176601, -0.7055106298950804, -0.7049061557287437, -0.7014966070298512, -0.6918893223547983, -0.6657965144058536, -0.5960351090263657, -0.4164122575286934]),
    "broyden_banded": (3.3357106636786925e-31, [-0.4283028635872503, -0.47659642435629024, -0.5196524636468617, -0.5580993248321808, -0.5925061568294574, -0.624503682199468, -0.6232394714405911, -0.6213938417965735, -0.6204535966590874, -0.5864692707204351]),
    "chebyquad8": (0.0035168737256779225, [0.04315276032864233, 0.19309084054396564, 0.266328706866166, 0.49999999992778177, 0.5000000000722181, 0.733671293133834, 0.8069091594560344, 0.9568472396713577]),
    "chebyquad10": (0.006503954800882305, [0.059619900761915486, 0.16670828216633812, 0.2391706591837861, 0.3988842921583737, 0.3988842926983696, 0.6011157073016301, 0.6011157078416264, 0.7608293408162138, 0.8332917178336617, 0.9403800992380844]),
}




def _dbv_x0(n):
    h = 1.0 / (n + 1)
    return [(j * h) * (j * h - 1.0) for j in range(1, n + 1)]


def problems():
    """The problem set, in MGH order. Names are unique; several sizes of one MGH function
    (Watson n = 6, 9, 12; Penalty I/II n = 4, 10; Chebyquad n = 8, 10; linear full rank m = 10, 50)
    are separate entries."""
    P = []

    def add(name, mgh, n, m, x0, fn, f_published, f_star=None, x_star=None, exact=False, other=(), note=""):
        if x_star is None and name in COMPUTED_X_STAR:
            f_c, x_star = COMPUTED_X_STAR[name]
            if f_star is None:
                f_star = f_c
        assert f_star is not None, name
        P.append(Problem(name, mgh, n, m, [float(v) for v in x0], fn, float(f_star),
                         None if f_published is None else float(f_published),
                         None if x_star is None else [float(v) for v in x_star], exact, list(other), note))

    add("rosenbrock", 1, 2, 2, [-1.2, 1.0], rosenbrock, 0.0, 0.0, [1.0, 1.0], True)
    add("freudenstein_roth", 2, 2, 2, [0.5, -2.0], freudenstein_roth, 48.9842, None,
        other=[(0.0, "(5, 4), global")],
        note="the standard start reaches the local minimum 48.9842 at (11.41, -0.8968) (MGH; MINPACK's "
             "lmder test gives final norm 6.99883, F = 48.9842)")
    add("powell_badly_scaled", 3, 2, 2, [0.0, 1.0], powell_badly_scaled, 0.0, 0.0,
        note="MGH: F = 0 at (1.098...e-5, 9.106...)")
    add("brown_badly_scaled", 4, 2, 3, [1.0, 1.0], brown_badly_scaled, 0.0, 0.0, [1e6, 2e-6], True)
    add("beale", 5, 2, 3, [1.0, 1.0], beale, 0.0, 0.0, [3.0, 0.5], True)
    add("jennrich_sampson", 6, 2, 10, [0.3, 0.4], jennrich_sampson, 124.362, None,
        note="m = 10; MGH: x1 = x2 = 0.2578")
    add("helical_valley", 7, 3, 3, [-1.0, 0.0, 0.0], helical_valley, 0.0, 0.0, [1.0, 0.0, 0.0], True)
    add("bard", 8, 3, 15, [1.0, 1.0, 1.0], bard, 8.21487e-3, None, other=[(17.4286, "(0.8406, -inf, -inf)")])
    add("gaussian", 9, 3, 15, [0.4, 1.0, 0.0], gaussian, 1.12793e-8, None)
    add("meyer", 10, 3, 16, [0.02, 4000.0, 250.0], meyer, 87.9458, None)
    add("gulf", 11, 3, 99, [5.0, 2.5, 0.15], gulf, 0.0, 0.0, [50.0, 25.0, 1.5], True,
        note="m = 99 (MGH: n <= m <= 100); MGH's '|y_i m i x2|' read as |y_i - x2|")
    add("box3d", 12, 3, 10, [0.0, 10.0, 20.0], box3d, 0.0, 0.0, [1.0, 10.0, 1.0], True,
        other=[(0.0, "(10, 1, -1)"), (0.0, "x1 = x2, x3 = 0")], note="m = 10")
    add("powell_singular", 13, 4, 4, [3.0, -1.0, 0.0, 1.0], powell_singular, 0.0, 0.0, [0.0] * 4, True,
        note="J singular at x*: Newton-type methods converge only linearly")
    add("wood", 14, 4, 6, [-3.0, -1.0, -3.0, -1.0], wood, 0.0, 0.0, [1.0] * 4, True)
    add("kowalik_osborne", 15, 4, 11, [0.25, 0.39, 0.415, 0.39], kowalik_osborne, 3.07505e-4, None,
        other=[(1.02734e-3, "(+inf, -14.07..., -inf, -inf)")])
    add("brown_dennis", 16, 4, 20, [25.0, 5.0, -5.0, -1.0], brown_dennis, 85822.2, None, note="m = 20")
    add("osborne1", 17, 5, 33, [0.5, 1.5, -1.0, 0.01, 0.02], osborne1, 5.46489e-5, None)
    add("biggs_exp6", 18, 6, 13, [1.0, 2.0, 1.0, 1.0, 1.0, 1.0], biggs_exp6, 0.0, 0.0,
        [1.0, 10.0, 1.0, 5.0, 4.0, 3.0], True,
        other=[(5.65565e-3, "local minimum (MGH, m = 13)"), (0.0, "(4, 10, 3, 5, 1, 1), the same by symmetry")],
        note="m = 13. At x0, x1 = x5 and x3 = x6: J has two pairs of equal columns and the problem is "
             "symmetric under swapping (x1, x3) with (x5, x6); an exact-arithmetic LM path stays on that "
             "subspace, where SciPy lm can stop at a stationary point F = 0.647401 (status 4). Which of "
             "0, 5.65565e-3 or that point a code reaches depends on rounding; see the SciPy fixtures")
    add("osborne2", 19, 11, 65, [1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5], osborne2,
        4.01377e-2, None)
    add("watson6", 20, 6, 31, [0.0] * 6, watson, 2.28767e-3, None, note="n = 6")
    add("watson9", 20, 9, 31, [0.0] * 9, watson, 1.39976e-6, None,
        note="n = 9; F evaluated in f64 is good to about 1e-11 relative")
    add("watson12", 20, 12, 31, [0.0] * 12, watson, 4.72238e-10, None,
        note="n = 12; ill-conditioned; F evaluated in f64 at the minimizer is good to about 1e-9 relative "
             "(residuals ~4e-6 from terms ~10)")
    add("extended_rosenbrock", 21, 10, 10, [-1.2, 1.0] * 5, extended_rosenbrock, 0.0, 0.0, [1.0] * 10, True,
        note="n = 10")
    add("extended_powell_singular", 22, 8, 8, [3.0, -1.0, 0.0, 1.0] * 2, extended_powell_singular, 0.0, 0.0,
        [0.0] * 8, True, note="n = 8; J singular at x*")
    add("penalty1_4", 23, 4, 5, [1.0, 2.0, 3.0, 4.0], penalty1, 2.24997e-5, None, note="n = 4")
    add("penalty1_10", 23, 10, 11, [float(j) for j in range(1, 11)], penalty1, 7.08765e-5, None, note="n = 10")
    add("penalty2_4", 24, 4, 8, [0.5] * 4, penalty2, 9.37629e-6, None, note="n = 4")
    add("penalty2_10", 24, 10, 20, [0.5] * 10, penalty2, 2.93660e-4, None, note="n = 10")
    add("variably_dimensioned", 25, 10, 12, [1.0 - j / 10.0 for j in range(1, 11)], variably_dimensioned,
        0.0, 0.0, [1.0] * 10, True, note="n = 10")
    add("trigonometric", 26, 10, 10, [0.1] * 10, trigonometric, None, None,
        other=[(0.0, "global (MGH)")],
        note="n = 10; MGH print only the global F = 0; the standard start leads LM codes (SciPy lm and "
             "trf, MINPACK) to the local minimum F = 2.79506e-5 (f_star; not printed in MGH)")
    add("brown_almost_linear", 27, 10, 10, [0.5] * 10, brown_almost_linear, 0.0, 0.0, [1.0] * 10, True,
        other=[(0.0, "(a, ..., a, a^(1-n)) with n a^n - (n+1) a^(n-1) + 1 = 0"), (1.0, "(0, ..., 0, n+1)")],
        note="n = 10")
    add("discrete_boundary_value", 28, 10, 10, _dbv_x0(10), discrete_boundary_value, 0.0, 0.0, note="n = 10")
    add("discrete_integral_equation", 29, 10, 10, _dbv_x0(10), discrete_integral_equation, 0.0, 0.0, note="n = 10")
    add("broyden_tridiagonal", 30, 10, 10, [-1.0] * 10, broyden_tridiagonal, 0.0, 0.0, note="n = 10")
    add("broyden_banded", 31, 10, 10, [-1.0] * 10, broyden_banded, 0.0, 0.0, note="n = 10; ml = 5, mu = 1")
    add("linear_full_rank", 32, 5, 10, [1.0] * 5, linear_full_rank_m10, 5.0, 5.0, [-1.0] * 5, True,
        note="n = 5, m = 10; F* = m - n at x = -1")
    add("linear_full_rank_m50", 32, 5, 50, [1.0] * 5, linear_full_rank_m50, 45.0, 45.0, [-1.0] * 5, True,
        note="n = 5, m = 50; F* = m - n at x = -1")
    s1 = 3.0 / 21.0  # 3/(2m+1), m = 10
    add("linear_rank1", 33, 5, 10, [1.0] * 5, linear_rank1_m10, 90.0 / 42.0, 90.0 / 42.0,
        [s1 * j / 55.0 for j in range(1, 6)], True,
        note="n = 5, m = 10; F* = m(m-1)/(2(2m+1)) on the hyperplane sum_j j x_j = 3/(2m+1); x_star is its "
             "minimum-norm point")
    s2 = 3.0 / 17.0  # 3/(2m-3), m = 10
    add("linear_rank1_zero", 34, 5, 10, [1.0] * 5, linear_rank1_zero_m10, 124.0 / 34.0, 124.0 / 34.0,
        [0.0] + [s2 * j / 29.0 for j in range(2, 5)] + [0.0], True,
        note="n = 5, m = 10; F* = (m^2 + 3m - 6)/(2(2m-3)) on sum_{j=2}^{n-1} j x_j = 3/(2m-3); x_star is "
             "its minimum-norm point")
    add("chebyquad8", 35, 8, 8, [j / 9.0 for j in range(1, 9)], chebyquad, 3.51687e-3, None, note="n = m = 8")
    add("chebyquad10", 35, 10, 10, [j / 11.0 for j in range(1, 11)], chebyquad, 6.50395e-3, None,
        note="n = m = 10")
    return P


def by_name(name):
    for p in problems():
        if p.name == name:
            return p
    raise KeyError(name)
