"""The batched curve-fit benchmark's problems (issue 31): y = a·exp(−b t) + c·sin(d t) + noise.

Problem i of any batch is drawn from its own generator, ``numpy.random.default_rng([SEED, i])``,
so the first 16 problems of B = 4096 are the B = 16 problems, problem 0 is the B = 1 problem,
whatever B is asked for. Per problem, in this order from that generator:

    true  = (a, b, c, d) ~ U[1, 3], U[0.2, 1], U[0.5, 1.5], U[1, 3]     (rng.uniform, one call each)
    noise = rng.normal(0, 0.05, T)                                     (T = 2000)
    start = true * rng.uniform(0.8, 1.2, 4)                            (within ±20 %)

t = linspace(0, 5, 2000). The data are recorded to 1e-3 (an instrument's resolution):
``y_milli = round(1000 * (model(true, t) + noise))`` as int16 and ``y = y_milli / 1000`` in f64
(exactly what Rust's ``f64::from(q) / 1000.0`` gives), which keeps 256 problems' y at 1 MB.

Used by tests/gen-least-squares.py (writes B = 256 into tests/data/least_squares/) and by
bench/least_squares.py (any B).
"""
import numpy as np

SEED = 31  # the issue number
T = 2000
T_MAX = 5.0
NOISE = 0.05


def t_grid():
    return np.linspace(0.0, T_MAX, T)


def model(p, t):
    """p [..., 4] -> [..., T]."""
    p = np.asarray(p, dtype=np.float64)
    a, b, c, d = (p[..., k : k + 1] for k in range(4))
    return a * np.exp(-b * t) + c * np.sin(d * t)


def jacobian(p, t):
    """d model / d p: [..., T, 4]."""
    p = np.asarray(p, dtype=np.float64)
    a, b, c, d = (p[..., k : k + 1] for k in range(4))
    e = np.exp(-b * t)
    s, co = np.sin(d * t), np.cos(d * t)
    return np.stack([e, -a * t * e, s, c * t * co], axis=-1)


def problems(B):
    """(t [T], true [B, 4], start [B, 4], y_milli int16 [B, T], y f64 [B, T])."""
    t = t_grid()
    true = np.empty((B, 4))
    start = np.empty((B, 4))
    y_milli = np.empty((B, T), dtype=np.int16)
    for i in range(B):
        rng = np.random.default_rng([SEED, i])
        p = np.array([rng.uniform(1.0, 3.0), rng.uniform(0.2, 1.0), rng.uniform(0.5, 1.5), rng.uniform(1.0, 3.0)])
        noise = rng.normal(0.0, NOISE, T)
        s = p * rng.uniform(0.8, 1.2, 4)
        y = model(p, t) + noise
        q = np.round(y * 1000.0)
        assert np.all(np.abs(q) < 32767)
        true[i], start[i], y_milli[i] = p, s, q.astype(np.int16)
    y = y_milli.astype(np.float64) / 1000.0
    return t, true, start, y_milli, y
