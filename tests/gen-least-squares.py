#!/usr/bin/env python3
"""Writes the least-squares fixtures (tests/data/least_squares/) that the Rust solver is tested against.

Run in the setup venv with SciPy and statsmodels (scripts/gen-fixtures installs them when missing):
    ~/.cache/tch-jacobian/torch-2.11.0/bin/python tests/gen-least-squares.py
    ~/.cache/tch-jacobian/torch-2.11.0/bin/python tests/gen-least-squares.py --bench-data 4096 /tmp/b4096.npz

What it writes (manifest.json describes every array and field):
- mgh_points.npz   r(x) of every MGH problem (tests/lsq/mgh.py) at x0, 10·x0, 100·x0 and x*: the Rust
                   residuals (tests/lsq/mgh.rs) must give the same values (tests/lsq_problems.rs).
- mgh.json         every problem's n, m, x0, F*, cost*, x*, and SciPy least_squares from 1×/10×/100× x0
                   with lm, trf, dogbox at default and at tight tolerances (x, cost, nfev, status, digits).
- robust.json      SciPy's robust losses (soft_l1, huber, cauchy, arctan, and linear) on four problems, three
                   with corrupted residuals; Tukey's biweight by an independent Newton trust-region minimization.
- bounds.json      trf and dogbox with box bounds that are active at the solution.
- covariance.npz/.json   an OLS fit (statsmodels) and a nonlinear fit (scipy curve_fit): data + covariances.
- bench.npz        the batched benchmark's 256 problems (tests/lsq/bench_data.py) and SciPy's reference cost.
- co2_fit.json     the Mauna Loa CO2 fit (data/co2/co2.csv) of examples/curve_fit.

Everything is deterministic (seeded, one thread), except that SciPy's path on an exactly rank-deficient
Jacobian (Biggs EXP6's start, the rank-1 problems) can depend on rounding noise, which mgh.json says where it
happens ("rank_deficient_start").
"""
import argparse
import json
import math
import os
import sys
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lsq"))
import bench_data  # noqa: E402
import mgh  # noqa: E402

import scipy  # noqa: E402
import statsmodels  # noqa: E402
import statsmodels.api as sm  # noqa: E402
from scipy.optimize import curve_fit, least_squares, minimize  # noqa: E402
from torch.func import jacrev  # noqa: E402

warnings.filterwarnings("ignore", message=".*batching rule.*")
np.seterr(over="ignore", invalid="ignore")
torch.set_num_threads(1)
OUT = os.path.join(HERE, "data", "least_squares")
ROOT = os.path.dirname(HERE)

TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=20000)
FACTORS = (1.0, 10.0, 100.0)
METHODS = ("lm", "trf", "dogbox")
ZERO_F_REACHED = 1e-20  # F = sum f^2 below this counts as reaching F* = 0
REACHED_DIGITS = 8.0  # for F* > 0: |F - F*| / F* <= 1e-8


def jnum(v):
    """A JSON-safe float: NaN/inf become null (serde_json cannot read them)."""
    v = float(v)
    return v if math.isfinite(v) else None


def jlist(a):
    return [jnum(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def wjson(name, obj):
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(obj, f, indent=1, allow_nan=False)
        f.write("\n")


def np_fun_jac(residual, extra=None):
    """numpy residual and exact Jacobian (torch.func.jacrev, f64) of one row of a batched residual."""

    def r(z):
        out = residual(z.unsqueeze(0))[0]
        return out if extra is None else out + extra

    def fun(x):
        return r(torch.from_numpy(np.array(x, dtype=np.float64))).numpy().copy()

    def jac(x):
        return jacrev(r)(torch.from_numpy(np.array(x, dtype=np.float64))).numpy().copy()

    return fun, jac, r


def digits(F, ref):
    """-log10(|F - ref| / ref) capped at 16 (ref > 0)."""
    if not math.isfinite(F):
        return None
    d = abs(F - ref) / ref
    return 16.0 if d == 0 else float(min(16.0, -math.log10(d)))


def at_ref(F, ref):
    if F is None or not math.isfinite(F):
        return False
    if ref == 0.0:
        return F <= ZERO_F_REACHED
    return abs(F - ref) <= 10 ** (-REACHED_DIGITS) * ref


# ============================================================================ MGH
def gen_mgh():
    points = {}
    out = []
    for p in mgh.problems():
        assert len(p.x0) == p.n and p.x_star is not None, p.name
        X = torch.tensor([p.start(k) for k in FACTORS] + [p.x_star], dtype=torch.float64)
        R = p.residual(X)
        assert R.shape == (4, p.m), (p.name, R.shape)
        # every row alone gives the same bits (the batch invariance the Rust side relies on too)
        for i in range(4):
            assert torch.equal(torch.nan_to_num(p.residual(X[i : i + 1])[0]), torch.nan_to_num(R[i])), p.name
        F_at_xstar = float((R[3] ** 2).sum())
        if p.f_star > 0:
            assert abs(F_at_xstar - p.f_star) <= 1e-9 * p.f_star, (p.name, F_at_xstar, p.f_star)
        else:
            assert F_at_xstar <= 1e-28, (p.name, F_at_xstar)
        published_check = None
        if p.f_published is not None and p.f_star > 0:
            if float(f"{p.f_published:.5e}") == p.f_published:
                # MGH print 6 significant digits, truncated (not rounded: 48.98425... is printed 48.9842)
                unit = 10.0 ** (math.floor(math.log10(p.f_published)) - 5)
                assert p.f_published <= p.f_star * (1 + 1e-15) and p.f_star < p.f_published + unit, (p.name, p.f_star)
                published_check = "f_star truncated to 6 significant digits equals f_published"
            else:  # a closed form (the linear problems)
                assert abs(p.f_star - p.f_published) <= 1e-15 * p.f_published, (p.name, p.f_star)
                published_check = "f_star equals the closed form f_published"
        points[f"{p.name}_x"] = X.numpy()
        points[f"{p.name}_r"] = R.numpy()

        fun, jac, _ = np_fun_jac(p.residual)
        entry = dict(
            name=p.name, mgh=p.mgh, n=p.n, m=p.m, x0=p.x0, f_star=p.f_star, cost_star=p.cost_star,
            f_published=p.f_published, x_star=p.x_star, x_star_exact=p.x_star_exact,
            F_at_x_star=F_at_xstar, published_check=published_check, other_minima=[dict(F=f, where=w) for f, w in p.other_minima], note=p.note,
            starts=[],
        )
        for k in FACTORS:
            x0 = np.array(p.start(k))
            r0 = fun(x0)
            J0 = jac(x0)
            st = dict(factor=k, x0=jlist(x0), F0=jnum(np.sum(r0 ** 2)), r0_finite=bool(np.all(np.isfinite(r0))),
                      rank_deficient_start=bool(np.all(np.isfinite(J0)) and np.linalg.matrix_rank(J0) < p.n),
                      runs={})
            for meth in METHODS:
                for tol_name, kw in (("default", {}), ("tight", TIGHT)):
                    rec = dict(method=meth, tol=tol_name)
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            res = least_squares(fun, x0, jac=jac, method=meth, **kw)
                        F = float(np.sum(fun(res.x) ** 2))
                        rec.update(x=jlist(res.x), cost=jnum(res.cost), F=jnum(F), nfev=int(res.nfev),
                                   njev=None if res.njev is None else int(res.njev), status=int(res.status),
                                   message=res.message)
                    except Exception as e:  # noqa: BLE001 (SciPy refuses non-finite starts etc.)
                        rec.update(x=None, cost=None, F=None, nfev=None, njev=None, status=None,
                                   message=f"{type(e).__name__}: {e}")
                    st["runs"][f"{meth}_{tol_name}"] = rec
            Fs = [r["F"] for r in st["runs"].values() if r["F"] is not None and r["tol"] == "tight"]
            ref = min(Fs) if Fs else None
            if ref is None:
                kind = "none"
            elif at_ref(ref, p.f_star):
                kind, ref = "f_star", p.f_star
            elif ref < p.f_star:
                kind = "below_f_star"
            else:
                kind = "best_seen"
            st["ref_F"] = jnum(ref) if ref is not None else None
            st["ref_cost"] = jnum(0.5 * ref) if ref is not None else None
            st["ref_kind"] = kind
            for rec in st["runs"].values():
                F = rec["F"]
                if F is None:
                    rec.update(at_f_star=False, digits_f_star=None, at_ref=False, digits_ref=None)
                    continue
                rec["at_f_star"] = at_ref(F, p.f_star)
                rec["digits_f_star"] = digits(F, p.f_star) if p.f_star > 0 else None
                rec["at_ref"] = ref is not None and at_ref(F, ref)
                rec["digits_ref"] = digits(F, ref) if ref is not None and ref > 0 else None
            entry["starts"].append(st)
        out.append(entry)
        print(f"mgh {p.name:28s} " + " ".join(
            f"{int(s['factor']):>3}x:{''.join('+' if s['runs'][f'{mm}_{t}']['at_f_star'] else '.' for mm in METHODS for t in ('default', 'tight'))}"
            for s in entry["starts"]), flush=True)
    np.savez(os.path.join(OUT, "mgh_points.npz"), **points)
    wjson("mgh.json", dict(
        doc="MGH problems (tests/lsq/mgh.py) and SciPy least_squares from 1x/10x/100x starts; see manifest.json",
        scipy=scipy.__version__, torch=torch.__version__, tight=TIGHT, zero_f_reached=ZERO_F_REACHED,
        reached_digits=REACHED_DIGITS, problems=out))
    return out


# ============================================================================ robust losses
def rho(loss, z):
    """SciPy's rho(z), z = f^2 / C^2 (numpy)."""
    if loss == "linear":
        return z
    if loss == "soft_l1":
        return 2.0 * (np.sqrt(1.0 + z) - 1.0)
    if loss == "huber":
        return np.where(z <= 1.0, z, 2.0 * np.sqrt(z) - 1.0)
    if loss == "cauchy":
        return np.log1p(z)
    if loss == "arctan":
        return np.arctan(z)
    if loss == "tukey":
        return np.where(z <= 1.0, (1.0 - (1.0 - z) ** 3) / 3.0, 1.0 / 3.0)
    raise ValueError(loss)


def robust_cost(loss, f, C):
    """SciPy's cost with f_scale C: 0.5 * C^2 * sum rho(f^2 / C^2)."""
    return 0.5 * C * C * float(np.sum(rho(loss, (f / C) ** 2)))


ROBUST = [
    # (problem, corrupted residual indices and offsets added to r, f_scale of SciPy's losses, Tukey's scale:
    # about 4.685 x the residuals' rms at the linear fit without the corrupted points, the usual choice)
    # (chosen so that every loss has a proper minimum that trf and dogbox both reach: with
    # {5: 0.2, 20: -0.15}, Osborne 1's linear fit runs off to x2 -> +inf, x3 -> -inf; with
    # {3: 0.5, 10: -0.4}, trf stalls on Bard's arctan fit)
    ("osborne1", {12: 0.1, 30: -0.1}, 0.01, 0.01),
    ("kowalik_osborne", {4: 0.05, 8: -0.04}, 0.01, 0.025),
    ("bard", {5: 0.4, 11: -0.4}, 0.05, 0.1),
    ("jennrich_sampson", {}, 2.0, 10.0),
]
LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")


def tukey_minimize(r_torch, x_start, C):
    """½ C² Σ ρ(f²/C²) with Tukey's ρ, minimized by scipy.optimize.minimize(trust-exact) with the exact
    gradient and Hessian from torch autograd (f64)."""

    def obj(x):
        z = (r_torch(x) / C) ** 2
        rz = torch.where(z <= 1.0, (1.0 - (1.0 - z.clamp(max=1.0)) ** 3) / 3.0, torch.full_like(z, 1.0 / 3.0))
        return 0.5 * C * C * rz.sum()

    def f(x):
        return float(obj(torch.from_numpy(x)))

    def g(x):
        return torch.func.grad(obj)(torch.from_numpy(x)).numpy().copy()

    def h(x):
        return torch.func.hessian(obj)(torch.from_numpy(x)).numpy().copy()

    res = minimize(f, x_start, jac=g, hess=h, method="trust-exact", options=dict(gtol=1e-14, maxiter=2000))
    return res, g(res.x), h(res.x)


def gen_robust():
    out = []
    for name, corrupt, C, C_tukey in ROBUST:
        p = mgh.by_name(name)
        d = np.zeros(p.m)
        for i, v in corrupt.items():
            d[i] = v
        dt = torch.from_numpy(d)
        fun, jac, rt = np_fun_jac(p.residual, extra=dt)
        x0 = np.array(p.x0)
        entry = dict(problem=name, n=p.n, m=p.m, x0=p.x0, offsets=d.tolist(), f_scale=C,
                     corrupted=sorted(corrupt), runs={})
        for loss in LOSSES:
            for meth in ("trf", "dogbox"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = least_squares(fun, x0, jac=jac, method=meth, loss=loss, f_scale=C, **TIGHT)
                f = fun(res.x)
                own = robust_cost(loss, f, C)
                assert abs(own - res.cost) <= 1e-12 * max(1.0, abs(res.cost)), (name, loss, own, res.cost)
                entry["runs"][f"{loss}_{meth}"] = dict(
                    loss=loss, method=meth, x=jlist(res.x), cost=jnum(res.cost), nfev=int(res.nfev),
                    status=int(res.status), optimality=jnum(res.optimality), F=jnum(np.sum(f ** 2)))
            a, b = entry["runs"][f"{loss}_trf"], entry["runs"][f"{loss}_dogbox"]
            best = min(a["cost"], b["cost"])
            entry[f"{loss}_ref_cost"] = best
            entry[f"{loss}_ref_x"] = a["x"] if a["cost"] <= b["cost"] else b["x"]
            entry[f"{loss}_trf_dogbox_rel_diff"] = abs(a["cost"] - b["cost"]) / max(best, 1e-300)
            assert entry[f"{loss}_trf_dogbox_rel_diff"] <= 1e-8 and max(a["nfev"], b["nfev"]) < 2000, (name, loss, a, b)
        # Tukey: not in SciPy. From each of SciPy's cauchy and arctan solutions; keep the lower.
        tk = []
        starts = [(f"scipy {l} solution", entry[f"{l}_ref_x"]) for l in ("cauchy", "arctan", "soft_l1")]
        starts.append(("the uncorrupted problem's x*", p.x_star))
        for start_name, xs in starts:
            res, g, H = tukey_minimize(lambda x: rt(x), np.array(xs), C_tukey)
            f = fun(res.x)
            z = (f / C_tukey) ** 2
            tk.append(dict(start=start_name, x=jlist(res.x),
                           cost=jnum(robust_cost("tukey", f, C_tukey)),
                           grad_inf=jnum(np.abs(g).max()), hess_min_eig=jnum(np.linalg.eigvalsh(H).min()),
                           nit=int(res.nit), success=bool(res.success), outliers=[int(i) for i in np.nonzero(z > 1.0)[0]]))
        best = min(tk, key=lambda r: r["cost"])
        assert best["grad_inf"] < 1e-8 and best["hess_min_eig"] > 0, (name, best)
        entry["tukey"] = dict(
            f_scale=C_tukey,
            method="scipy.optimize.minimize(method='trust-exact', gtol=1e-14) on cost(x) = 0.5 C^2 sum rho(f^2/C^2) "
                   "with the exact gradient and Hessian (torch autograd, f64), from SciPy's cauchy, arctan and soft_l1 "
                   "solutions and from the uncorrupted problem's x*; the lowest cost is the reference (a local "
                   "minimum: Tukey's loss is not convex)",
            tries=tk, ref_cost=best["cost"], ref_x=best["x"])
        out.append(entry)
        print(f"robust {name}: " + ", ".join(f"{l} {entry[l + '_ref_cost']:.6g}" for l in LOSSES)
              + f", tukey {best['cost']:.6g} (grad {best['grad_inf']:.1e}, outliers {best['outliers']})", flush=True)
    wjson("robust.json", dict(
        doc="robust losses; residual = mgh residual + offsets; cost = 0.5 * f_scale^2 * sum rho(f_i^2 / f_scale^2)",
        rho=dict(linear="z", soft_l1="2 (sqrt(1 + z) - 1)", huber="z if z <= 1 else 2 sqrt(z) - 1",
                 cauchy="ln(1 + z)", arctan="arctan(z)",
                 tukey="(1 - (1 - z)^3) / 3 if z <= 1 else 1/3 (Ceres' TukeyLoss(a) with a = f_scale)"),
        scipy=scipy.__version__, tight=TIGHT, problems=out))


# ============================================================================ bounds
BOUNDS = [
    # (problem, lb, ub) with None = unbounded; the start is x0 clipped into the box
    ("rosenbrock", [None, None], [0.5, None]),
    ("osborne1", [None] * 5, [None, None, None, 0.012, None]),
    ("kowalik_osborne", [None] * 4, [0.19, None, None, None]),
    ("watson6", [None, None, None, None, -1.0, None], [None] * 6),
]


def gen_bounds():
    out = []
    for name, lb, ub in BOUNDS:
        p = mgh.by_name(name)
        lo = np.array([-np.inf if v is None else v for v in lb])
        hi = np.array([np.inf if v is None else v for v in ub])
        fun, jac, _ = np_fun_jac(p.residual)
        x0 = np.clip(np.array(p.x0), lo, hi)
        entry = dict(problem=name, n=p.n, m=p.m, lb=[jnum(v) for v in lo], ub=[jnum(v) for v in hi],
                     x0=x0.tolist(), note="null = unbounded", runs={})
        for meth in ("trf", "dogbox"):
            for tol_name, kw in (("default", {}), ("tight", TIGHT)):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = least_squares(fun, x0, jac=jac, method=meth, bounds=(lo, hi), **kw)
                g = jac(res.x).T @ fun(res.x)
                # projected gradient: zero a component pushing against its active bound
                pg = g.copy()
                pg[(res.x <= lo) & (g > 0)] = 0.0
                pg[(res.x >= hi) & (g < 0)] = 0.0
                entry["runs"][f"{meth}_{tol_name}"] = dict(
                    x=jlist(res.x), cost=jnum(res.cost), nfev=int(res.nfev), status=int(res.status),
                    active_mask=[int(v) for v in res.active_mask], projected_grad_inf=jnum(np.abs(pg).max()))
        best = min((r for k, r in entry["runs"].items() if k.endswith("tight")), key=lambda r: r["cost"])
        entry["ref_cost"], entry["ref_x"], entry["ref_active_mask"] = best["cost"], best["x"], best["active_mask"]
        entry["unconstrained_cost_star"] = p.cost_star
        if name == "rosenbrock":
            entry["exact"] = dict(x=[0.5, 0.25], cost=0.125)
            assert abs(best["cost"] - 0.125) < 1e-15 and abs(best["x"][1] - 0.25) < 1e-12
        assert best["cost"] > p.cost_star * (1 + 1e-6), name  # the bound cuts the unconstrained minimum off
        out.append(entry)
        print(f"bounds {name}: cost {best['cost']:.12g} active {best['active_mask']} "
              f"(unconstrained {p.cost_star:.6g})", flush=True)
    wjson("bounds.json", dict(doc="trf/dogbox with box bounds; active_mask: -1 lower, 1 upper, 0 free (SciPy's)",
                              scipy=scipy.__version__, tight=TIGHT, problems=out))


# ============================================================================ covariance
def gen_covariance():
    rng = np.random.default_rng(20240531)
    # linear: y = 1.5 - 0.8 t + 0.3 t^2 + N(0, 0.1^2), 60 points
    t = np.linspace(0.0, 2.0, 60)
    X = np.stack([np.ones_like(t), t, t * t], 1)
    y = X @ np.array([1.5, -0.8, 0.3]) + rng.normal(0.0, 0.1, t.size)
    ols = sm.OLS(y, X).fit()
    beta = ols.params
    ssr = float(np.sum((y - X @ beta) ** 2))
    own = ssr / (t.size - 3) * np.linalg.inv(X.T @ X)
    assert np.allclose(own, ols.cov_params(), rtol=1e-12, atol=0)
    # nonlinear: y = a exp(-b t) + c, 50 points
    tn = np.linspace(0.0, 4.0, 50)
    yn = 2.5 * np.exp(-1.3 * tn) + 0.5 + rng.normal(0.0, 0.05, tn.size)

    def f(t, a, b, c):
        return a * np.exp(-b * t) + c

    def jf(t, a, b, c):
        e = np.exp(-b * t)
        return np.stack([e, -a * t * e, np.ones_like(t)], 1)

    popt, pcov = curve_fit(f, tn, yn, p0=[1.0, 1.0, 0.0], jac=jf, absolute_sigma=False, method="lm",
                           ftol=1e-15, xtol=1e-15, gtol=1e-15)
    r = f(tn, *popt) - yn
    J = jf(tn, *popt)
    s2 = float(np.sum(r ** 2)) / (tn.size - 3)
    own_n = s2 * np.linalg.inv(J.T @ J)
    assert np.allclose(own_n, pcov, rtol=1e-9, atol=0), (own_n, pcov)
    np.savez(os.path.join(OUT, "covariance.npz"),
             linear_x=X, linear_y=y, linear_params=beta, linear_cov=ols.cov_params(), linear_bse=ols.bse,
             nonlinear_t=tn, nonlinear_y=yn, nonlinear_p0=np.array([1.0, 1.0, 0.0]), nonlinear_params=popt,
             nonlinear_cov=pcov, nonlinear_perr=np.sqrt(np.diag(pcov)))
    wjson("covariance.json", dict(
        formula="sigma^2 = 2 cost / (m - n) = SSR / (m - n); cov = sigma^2 (J^T J)^-1 at the solution; se = sqrt(diag(cov))",
        linear=dict(model="y = b0 + b1 t + b2 t^2 (residual X b - y)", m=60, n=3, reference="statsmodels OLS(y, X).fit(): "
                    "params, cov_params(), bse", statsmodels=statsmodels.__version__, scale=float(ols.scale), ssr=ssr,
                    params=beta.tolist(), bse=ols.bse.tolist(), cov=ols.cov_params().tolist()),
        nonlinear=dict(model="y = a exp(-b t) + c (residual f(t; p) - y)", m=50, n=3, p0=[1.0, 1.0, 0.0],
                       reference="scipy.optimize.curve_fit(method='lm', jac=analytic, absolute_sigma=False, "
                       "ftol=xtol=gtol=1e-15): popt, pcov; pcov equals sigma^2 (J^T J)^-1 to 1e-9 here", scipy=scipy.__version__,
                       sigma2=s2, params=popt.tolist(), perr=np.sqrt(np.diag(pcov)).tolist(), cov=pcov.tolist())))
    print(f"covariance: OLS params {beta}, bse {ols.bse}; curve_fit {popt} +- {np.sqrt(np.diag(pcov))}", flush=True)


# ============================================================================ batched benchmark data
def scipy_reference(t, start, y, tight=True):
    """SciPy lm (exact Jacobian, tight) per problem: (x [B,4], cost [B], nfev [B])."""
    B = start.shape[0]
    X, cost, nfev = np.empty((B, 4)), np.empty(B), np.empty(B, dtype=np.int64)
    kw = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15) if tight else {}
    for i in range(B):
        res = least_squares(lambda p: bench_data.model(p, t) - y[i], start[i], jac=lambda p: bench_data.jacobian(p, t),
                            method="lm", **kw)
        X[i], cost[i], nfev[i] = res.x, res.cost, res.nfev
    return X, cost, nfev


def gen_bench(B=256, path=None):
    t, true, start, y_milli, y = bench_data.problems(B)
    x_ref, cost_ref, nfev = scipy_reference(t, start, y)
    _, cost_true, _ = scipy_reference(t, true, y)
    arrays = dict(t=t, true_params=true, start=start, y_milli=y_milli, ref_x=x_ref, ref_cost=cost_ref,
                  ref_nfev=nfev, ref_cost_from_true=cost_true)
    np.savez(path or os.path.join(OUT, "bench.npz"), **arrays)
    same = np.mean(cost_ref <= cost_true * (1 + 1e-9))
    print(f"bench B={B}: median nfev {np.median(nfev)}, fraction reaching the fit from the true parameters {same:.3f}",
          flush=True)


# ============================================================================ CO2
def co2_model(p, t):
    a, b, c, s1, c1, s2, c2 = p
    w = 2.0 * np.pi * t
    return a + b * np.exp(c * (t - 1980.0)) + s1 * np.sin(w) + c1 * np.cos(w) + s2 * np.sin(2 * w) + c2 * np.cos(2 * w)


def co2_jac(p, t):
    a, b, c, *_ = p
    w = 2.0 * np.pi * t
    e = np.exp(c * (t - 1980.0))
    return np.stack([np.ones_like(t), e, b * (t - 1980.0) * e, np.sin(w), np.cos(w), np.sin(2 * w), np.cos(2 * w)], 1)


def gen_co2():
    import csv

    rows = list(csv.DictReader(open(os.path.join(ROOT, "data", "co2", "co2.csv"))))
    t = np.array([float(r["decimal_year"]) for r in rows])
    y = np.array([float(r["co2_ppm"]) for r in rows])
    p0 = np.array([250.0, 90.0, 0.015, 0.0, 0.0, 0.0, 0.0])
    res = least_squares(lambda p: co2_model(p, t) - y, p0, jac=lambda p: co2_jac(p, t), method="lm",
                        ftol=1e-15, xtol=1e-15, gtol=1e-15)
    m, n = t.size, p0.size
    J = co2_jac(res.x, t)
    s2 = 2.0 * res.cost / (m - n)
    cov = s2 * np.linalg.inv(J.T @ J)
    se = np.sqrt(np.diag(cov))
    # the same through curve_fit (its pcov), as a check of the formula
    popt, pcov = curve_fit(lambda t, *p: co2_model(p, t), t, y, p0=res.x, jac=lambda t, *p: co2_jac(p, t),
                           absolute_sigma=False, method="lm", ftol=1e-15, xtol=1e-15, gtol=1e-15)
    assert np.allclose(popt, res.x, rtol=1e-9, atol=1e-9) and np.allclose(pcov, cov, rtol=1e-6, atol=0)
    names = ["a", "b", "c", "s1", "c1", "s2", "c2"]
    wjson("co2_fit.json", dict(
        data="data/co2/co2.csv (decimal_year, co2_ppm; the 59 missing weeks dropped)", m=m, n=n,
        model="co2(t) = a + b exp(c (t - 1980)) + s1 sin(2 pi t) + c1 cos(2 pi t) + s2 sin(4 pi t) + c2 cos(4 pi t)",
        residual="model(t; p) - co2", p0=p0.tolist(), method="scipy least_squares lm, analytic Jacobian, ftol=xtol=gtol=1e-15",
        names=names, params=res.x.tolist(), cost=float(res.cost), sigma2=s2, cov=cov.tolist(), se=se.tolist(),
        nfev=int(res.nfev), status=int(res.status), scipy=scipy.__version__,
        formula="sigma^2 = 2 cost / (m - n); cov = sigma^2 (J^T J)^-1; se = sqrt(diag(cov)); curve_fit's pcov agrees to 1e-6",
        caveat="weekly residuals are autocorrelated; these are the formal (iid) standard errors"))
    print("co2: " + ", ".join(f"{k} = {v:.6g} ± {s:.2g}" for k, v, s in zip(names, res.x, se))
          + f"; rms {math.sqrt(2 * res.cost / m):.3f} ppm", flush=True)


# ============================================================================ manifest
def gen_manifest():
    pts = np.load(os.path.join(OUT, "mgh_points.npz"))
    bench = np.load(os.path.join(OUT, "bench.npz"))
    cov = np.load(os.path.join(OUT, "covariance.npz"))

    def shapes(z):
        return {k: dict(shape=list(z[k].shape), dtype=str(z[k].dtype)) for k in z.files}

    files = {}
    for f in sorted(os.listdir(OUT)):
        files[f] = os.path.getsize(os.path.join(OUT, f))
    wjson("manifest.json", dict(
        generator="tests/gen-least-squares.py", torch=torch.__version__, numpy=np.__version__, scipy=scipy.__version__,
        statsmodels=statsmodels.__version__,
        conventions=dict(
            F="sum f_i^2 (what MGH 1981 print)", cost="0.5 sum f_i^2 (what SciPy and our solver minimize); cost = F / 2",
            starts="factor * x0 for factor 1, 10, 100; factor in every component when x0 = 0 (MINPACK initpt)",
            json_nonfinite="NaN/inf are written as null",
            reached=f"F* > 0: |F - F*| <= 1e-{int(REACHED_DIGITS)} F*; F* = 0: F <= {ZERO_F_REACHED}",
            digits="-log10(|F - F*| / F*) capped at 16 (F* > 0 only; for F* = 0 read F itself)",
            tight=TIGHT, default="SciPy's defaults (ftol = xtol = gtol = 1e-8, max_nfev = 100 n)", jacobian="exact, torch.func.jacrev of tests/lsq/mgh.py's residual (f64)"),
        files=files,
        arrays={
            "mgh_points.npz": dict(
                keys="<name>_x [4, n] f64: rows x0, 10x0, 100x0, x* (Problem.start(k), x_star); <name>_r [4, m] f64: "
                     "the residual at those rows (B = 4; every row alone gives the same bits)",
                entries=len(pts.files)),
            "mgh.json": "problems[]: name, mgh (number), n, m, x0, f_star (F), cost_star (F/2), f_published (MGH's 6 "
                        "digits; null if not printed), x_star, x_star_exact, F_at_x_star, other_minima[{F, where}], note, "
                        "starts[3]{factor, x0, F0, r0_finite, rank_deficient_start, ref_F, ref_cost, ref_kind "
                        "(f_star | below_f_star | best_seen | none: the lowest tight F over lm/trf/dogbox), "
                        "runs{<method>_<default|tight>: x, cost, F, nfev, njev, status, message, at_f_star, "
                        "digits_f_star, at_ref, digits_ref}}",
            "robust.json": "problems[]: problem (an MGH name), offsets [m] added to its residual, f_scale, corrupted "
                           "(indices), runs{<loss>_<trf|dogbox>: x, cost, nfev, status, optimality, F}, "
                           "<loss>_ref_cost, <loss>_ref_x, tukey{method, tries[], ref_cost, ref_x}; rho{loss: formula}",
            "bounds.json": "problems[]: problem, lb, ub (null = unbounded), x0 (clipped), runs{<trf|dogbox>_<default|tight>: "
                           "x, cost, nfev, status, active_mask, projected_grad_inf}, ref_cost, ref_x, ref_active_mask, "
                           "unconstrained_cost_star",
            "covariance.npz": shapes(cov),
            "covariance.json": "formula, and the same references with sizes and versions",
            "bench.npz": dict(shapes(bench), meaning=dict(
                t="[2000] linspace(0, 5, 2000)", true_params="[256, 4] (a, b, c, d)",
                start="[256, 4] true * U[0.8, 1.2]", y_milli="[256, 2000] int16: y = y_milli / 1000 (f64)",
                ref_x="[256, 4] SciPy lm (exact Jacobian, ftol=xtol=gtol=1e-15) from start",
                ref_cost="[256] its cost = 0.5 sum (model - y)^2", ref_nfev="[256]",
                ref_cost_from_true="[256] the same fit started from the true parameters"),
                model="y = a exp(-b t) + c sin(d t); residual model - y; tests/lsq/bench_data.py generates any B "
                      "(problem i from numpy default_rng([31, i]))"),
            "co2_fit.json": "the CO2 fit: model, p0, params, se, cov, cost, sigma2 (data/co2/co2.csv)",
        }))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-data", nargs=2, metavar=("B", "OUT"), help="write only the benchmark's data for B problems")
    ap.add_argument("--only", default="mgh,robust,bounds,covariance,bench,co2")
    a = ap.parse_args()
    if a.bench_data:
        gen_bench(int(a.bench_data[0]), a.bench_data[1])
        return
    os.makedirs(OUT, exist_ok=True)
    parts = a.only.split(",")
    if "mgh" in parts:
        gen_mgh()
    if "robust" in parts:
        gen_robust()
    if "bounds" in parts:
        gen_bounds()
    if "covariance" in parts:
        gen_covariance()
    if "bench" in parts:
        gen_bench()
    if "co2" in parts:
        gen_co2()
    gen_manifest()


if __name__ == "__main__":
    main()
