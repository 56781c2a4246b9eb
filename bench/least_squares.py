#!/usr/bin/env python3
"""The peers of the batched least-squares benchmark (issue 31): B independent 4-parameter fits,
2000 points each, y = a·exp(−b t) + c·sin(d t) + noise, starts within ±20 % (tests/lsq/bench_data.py).

Times, in one process, with the same threads (2 by default: torch.set_num_threads, OMP/MKL/OpenBLAS):
- scipy_lm, scipy_trf: a Python loop of scipy.optimize.least_squares, one call per problem, the
  analytic Jacobian (bench_data.jacobian), SciPy's default tolerances (1e-8) and tight ones (1e-12);
- torchimize: lsq_lma_parallel (all B at once; analytic Jacobian [B, 1, T, 4]);
- pypose_joint: pypose.optim.LM on one model whose parameter is [B, 4]: pypose sees one problem of 4B
  unknowns and B·T residuals (one damping for all B, a dense [B·T, 4B] Jacobian: 4 GB at B = 256),
  so only B <= 16;
- pypose_loop: pypose.optim.LM, one optimizer per problem, in a Python loop (B <= 16; --slow for more,
  one repeat);
- theseus: theseus-ai 0.1.0 LevenbergMarquardt, batched natively (Vector(4) with batch B), a custom
  CostFunction with the analytic Jacobian; runs only where theseus imports (its own venv, see
  bench/least_squares-peers.md: run this script with that venv's python and --peers theseus).

Accuracy: SciPy lm from the same start, exact Jacobian, ftol = xtol = gtol = 1e-15, is the reference
cost per problem (tests/gen-least-squares.py stores it for B = 256); a peer's problem counts as at the
reference when cost <= ref·(1 + 1e-6). Every peer's timing covers its whole solve (not the reference).

    python bench/least_squares.py --B 1 16 256 --out /tmp/lsq.jsonl      # all peers that import
    python bench/least_squares.py --table /tmp/lsq.jsonl /tmp/theseus.jsonl  # the markdown table
Output: one JSON line per (peer, settings, B) on stdout or --out, then the markdown table.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

THREADS = "2"
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, THREADS)

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "lsq"))
import bench_data  # noqa: E402

REL = 1e-6  # "at the reference": cost <= ref * (1 + REL)


# ----------------------------------------------------------------------------- the problems
def reference(t, start, y):
    from scipy.optimize import least_squares

    cost = np.empty(start.shape[0])
    for i in range(start.shape[0]):
        r = least_squares(lambda p: bench_data.model(p, t) - y[i], start[i], jac=lambda p: bench_data.jacobian(p, t),
                          method="lm", ftol=1e-15, xtol=1e-15, gtol=1e-15)
        cost[i] = r.cost
    return cost


def costs_np(x, t, y):
    r = bench_data.model(x, t) - y
    return 0.5 * np.sum(r * r, axis=-1)


# ----------------------------------------------------------------------------- peers
def run_scipy(method, tol):
    from scipy.optimize import least_squares

    kw = {} if tol == "default" else dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)

    def solve(t, start, y):
        x = np.empty_like(start)
        nfev = 0
        for i in range(start.shape[0]):
            r = least_squares(lambda p: bench_data.model(p, t) - y[i], start[i],
                              jac=lambda p: bench_data.jacobian(p, t), method=method, **kw)
            x[i] = r.x
            nfev += r.nfev
        return x, dict(mean_nfev=nfev / start.shape[0])

    return solve, dict(peer=f"scipy_{method}", settings=f"exact Jacobian, {tol} tolerances"
                       + ("" if tol == "default" else " (ftol=xtol=gtol=1e-12)"))


def torch_model(p, t):
    a, b, c, d = (p[:, k : k + 1] for k in range(4))
    return a * torch.exp(-b * t) + c * torch.sin(d * t)


def torch_jac(p, t):
    a, b, c, d = (p[:, k : k + 1] for k in range(4))
    e = torch.exp(-b * t)
    return torch.stack([e.expand(p.shape[0], -1), -a * t * e, torch.sin(d * t), c * t * torch.cos(d * t)], -1)


def run_torchimize(tol, max_iter, tau=1e-3, meth="lev"):
    from torchimize.functions import lsq_lma_parallel

    def fun(p, t, y):
        return (torch_model(p, t) - y).unsqueeze(1)  # [B, 1, T]

    def jac(p, t, y):
        return torch_jac(p, t).unsqueeze(1)  # [B, 1, T, 4]

    def solve(t, start, y):
        tt, yy = torch.from_numpy(t), torch.from_numpy(y)
        p = torch.from_numpy(start.copy())
        ps = lsq_lma_parallel(p, function=fun, jac_function=jac, args=(tt, yy), ftol=tol, ptol=tol, gtol=tol,
                              max_iter=max_iter, tau=tau, meth=meth)
        return ps[-1].numpy().copy(), dict(iterations=len(ps))

    return solve, dict(peer="torchimize", settings=f"lsq_lma_parallel meth={meth!r}, tau={tau:g}, ftol=ptol=gtol={tol:g}, "
                       f"max_iter={max_iter}, analytic Jacobian")


class _Fits(torch.nn.Module):
    def __init__(self, start):
        super().__init__()
        self.p = torch.nn.Parameter(torch.from_numpy(start.copy()))

    def forward(self, t):
        return torch_model(self.p, t)


def _pypose_solve(start, t, y, max_steps, damping):
    import pypose as pp

    model = _Fits(start)
    strategy = pp.optim.strategy.TrustRegion() if damping is None else pp.optim.strategy.Adaptive(damping=damping)
    opt = pp.optim.LM(model, strategy=strategy, vectorize=True)
    opt.jackwargs["strategy"] = "forward-mode"  # 4B tangents instead of B·T cotangents
    last = float("inf")
    steps = 0
    for steps in range(1, max_steps + 1):
        loss = float(opt.step(input=t, target=y))
        if not loss < last * (1 - 1e-15):  # no decrease left
            break
        last = loss
    return model.p.detach().numpy().copy(), steps


def run_pypose(mode, max_steps=100, damping=None):
    def solve(t, start, y):
        tt, yy = torch.from_numpy(t), torch.from_numpy(y)
        if mode == "joint":
            x, steps = _pypose_solve(start, tt, yy, max_steps, damping)
            return x, dict(steps=steps)
        xs, total = [], 0
        for i in range(start.shape[0]):
            x, steps = _pypose_solve(start[i : i + 1], tt, yy[i : i + 1], max_steps, damping)
            xs.append(x)
            total += steps
        return np.concatenate(xs), dict(mean_steps=total / start.shape[0])

    strat = "TrustRegion()" if damping is None else f"Adaptive(damping={damping:g})"
    return solve, dict(peer=f"pypose_{mode}", settings=f"LM({strat}, Cholesky, vectorize=True, forward-mode "
                       f"Jacobian), steps until the loss stops decreasing (max {max_steps})"
                       + ("; one problem of 4B unknowns" if mode == "joint" else "; a loop of B problems"))


def run_theseus(damping, max_iterations, ellipsoidal, rel_tol=1e-12):
    import theseus as th

    class Fit(th.CostFunction):
        def __init__(self, p, t, y, name=None):
            super().__init__(th.ScaleCostWeight(torch.ones(1, dtype=torch.float64)), name=name)
            self.p, self.t, self.y = p, t, y
            self.register_optim_vars(["p"])
            self.register_aux_vars(["t", "y"])

        def error(self):
            return torch_model(self.p.tensor, self.t.tensor[0]) - self.y.tensor

        def jacobians(self):
            return [torch_jac(self.p.tensor, self.t.tensor[0])], self.error()

        def dim(self):
            return self.y.tensor.shape[1]

        def _copy_impl(self, new_name=None):
            return Fit(self.p.copy(), self.t.copy(), self.y.copy(), name=new_name)

    def solve(t, start, y):
        B = start.shape[0]
        p = th.Vector(tensor=torch.from_numpy(start.copy()), name="p")
        tv = th.Variable(torch.from_numpy(t)[None], name="t")
        yv = th.Variable(torch.from_numpy(y), name="y")
        obj = th.Objective(dtype=torch.float64)
        obj.add(Fit(p, tv, yv, name="fit"))
        opt = th.LevenbergMarquardt(obj, linear_solver_cls=th.CholeskyDenseSolver, max_iterations=max_iterations,
                                    abs_err_tolerance=0.0, rel_err_tolerance=rel_tol, step_size=1.0)
        layer = th.TheseusLayer(opt)
        with torch.no_grad():
            sol, info = layer.forward(
                {"p": torch.from_numpy(start.copy()), "t": torch.from_numpy(t)[None], "y": torch.from_numpy(y)},
                optimizer_kwargs=dict(damping=damping, ellipsoidal_damping=ellipsoidal, track_best_solution=True,
                                      verbose=False))
        x = info.best_solution["p"].numpy().copy()
        conv = np.array([st == th.NonlinearOptimizerStatus.CONVERGED for st in info.status])
        return x, dict(converged=int(conv.sum()), max_iters=int(info.converged_iter.max()))

    return solve, dict(peer="theseus", settings=f"LevenbergMarquardt(CholeskyDenseSolver, damping={damping:g}, "
                       f"ellipsoidal={ellipsoidal}, max_iterations={max_iterations}, rel_err_tolerance={rel_tol:g}), "
                       "analytic Jacobian, best solution tracked")


# ----------------------------------------------------------------------------- driver
def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return model


def versions():
    v = dict(python=platform.python_version(), numpy=np.__version__, torch=torch.__version__)
    for name in ("scipy", "torchimize", "pypose", "theseus"):
        try:
            mod = __import__(name)
            v[name] = getattr(mod, "__version__", None)
            if v[name] is None:
                from importlib.metadata import version

                v[name] = version({"theseus": "theseus-ai"}.get(name, name))
        except Exception:  # noqa: BLE001
            pass
    return v


def peers(names, B, slow=False):
    out = []
    for n in names:
        if n == "scipy_lm":
            out += [run_scipy("lm", "default"), run_scipy("lm", "tight")]
        elif n == "scipy_trf":
            out += [run_scipy("trf", "default"), run_scipy("trf", "tight")]
        elif n == "torchimize":
            # the defaults, and the best settings found (tau = 1 starts nearer Nielsen's tau·max diag(JᵀJ);
            # tighter tolerances; meth="marq" reached 0 % and is left out)
            out += [run_torchimize(1e-8, 100), run_torchimize(1e-12, 500, tau=1.0)]
        elif n == "pypose_joint":
            if B <= 16:
                out += [run_pypose("joint")]
        elif n == "pypose_loop":
            if B <= 16 or slow:
                out += [run_pypose("loop")]
        elif n == "theseus":
            try:
                import theseus  # noqa: F401
            except Exception as e:  # noqa: BLE001 (reported as a row)
                out.append((None, dict(peer="theseus", settings="-", error=f"import theseus: {type(e).__name__}: {e}")))
                continue
            out += [run_theseus(1e-3, 100, False), run_theseus(1e-6, 100, False), run_theseus(1e-3, 100, True)]
        else:
            raise SystemExit(f"unknown peer {n}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--peers", default="scipy_lm,scipy_trf,torchimize,pypose_joint,pypose_loop,theseus")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(THREADS))
    ap.add_argument("--out", help="append JSON lines here (else stdout)")
    ap.add_argument("--slow", action="store_true", help="also pypose_loop beyond B = 16 (one repeat)")
    ap.add_argument("--table", nargs="+", metavar="JSONL", help="only print the markdown table of these files")
    a = ap.parse_args()
    if a.table:
        rows = [json.loads(line) for f in a.table for line in open(f) if line.strip()]
        print(table(rows))
        return
    torch.set_num_threads(a.threads)
    torch.set_default_dtype(torch.float64)
    info = dict(machine=machine(), threads=a.threads, dtype="float64", versions=versions())
    rows = []
    names = [n for n in a.peers.split(",") if n]
    for B in a.B:
        t, true, start, _, y = bench_data.problems(B)
        ref = reference(t, start, y)
        for solve, meta in peers(names, B, a.slow):
            if solve is None:
                row = dict(meta, B=B, **info)
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            try:
                times, x, extra = [], None, {}
                load_before = os.getloadavg()[0]
                one = B >= 4096 or (meta["peer"] == "pypose_loop" and B > 16)
                reps = 1 if one else a.repeats
                for _ in range(reps):
                    t0 = time.perf_counter()
                    x, extra = solve(t, start, y)
                    times.append((time.perf_counter() - t0) * 1e3)
                cost = costs_np(x, t, y)
                ok = cost <= ref * (1 + REL)
                row = dict(meta, B=B, ms_median=statistics.median(times), ms_all=times, frac_at_ref=float(np.mean(ok)),
                           cost_median=float(np.median(cost)), ref_cost_median=float(np.median(ref)),
                           worst_rel_excess=float(np.max((cost - ref) / ref)), extra=extra,
                           loadavg_1min=[load_before, os.getloadavg()[0]], **info)
            except Exception as e:  # noqa: BLE001
                row = dict(meta, B=B, error=f"{type(e).__name__}: {e}"[:500], **info)
            rows.append(row)
            line = json.dumps(row)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(line + "\n")
            print(line, flush=True)
    print(table(rows))


def table(rows):
    lines = ["| peer | settings | B | median ms | at SciPy's cost (≤ ref·(1+1e-6)) | worst (cost−ref)/ref | notes |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["B"], r["peer"], r["settings"])):
        if "error" in r:
            lines.append(f"| {r['peer']} | {r['settings']} | {r['B']} | – | – | – | failed: {r['error'][:120]} |")
            continue
        extra = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r["extra"].items())
        lines.append(f"| {r['peer']} | {r['settings']} | {r['B']} | {r['ms_median']:.1f} | {100 * r['frac_at_ref']:.1f} % | "
                     f"{r['worst_rel_excess']:.2e} | {extra} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
