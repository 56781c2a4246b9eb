#!/usr/bin/env python3
"""Gradients through a least-squares solution: Theseus's backward modes and PyTorch's unrolled
differentiation on the bilevel problem of examples/bilevel.rs (issue 32).

The problem (the example's, to the last bit: torch.manual_seed(7), f64, CPU):
  inner  x*(λ) = argmin ½‖a e^(−b t) + c − y‖² + ½ λ ‖x − x_prior‖²,  x = [a, b, c], 6 points of t ∈ [0, 1]
  outer  V(λ)  = ½‖a* e^(−b* t) + c* − y‖² on 30 validation points of t ∈ [0, 3]
and the hypergradient dV/d log λ at λ = 1 (equal to dV/dλ there), which the example prints.

Rows, each one hypergradient = inner solve + V + backward to s = log λ:
- theseus IMPLICIT / TRUNCATED / UNROLLED (BackwardMode.FULL) / DLM: theseus-ai 0.1.0
  LevenbergMarquardt (its fixed damping 1e-3, CholeskyDenseSolver, step 1) on a TheseusLayer built
  once; two CostFunctions with analytic Jacobians (the data fit; the ridge term √λ (x − x_prior),
  λ an auxiliary variable that requires grad). Stopping: max_iterations 40, rel_err_tolerance 1e-12,
  abs_err_tolerance 1e-15. IMPLICIT is Theseus's one Gauss–Newton step with grad at the solution
  (the implicit-function theorem with JᵀJ for the Hessian). TRUNCATED asks for
  backward_num_iterations = 5, but Theseus's grad loop tests convergence after each step and stops
  after one at a converged solution, so the script records the iterations each loop really ran;
  "TRUNCATED, tolerances 0" runs all 40 iterations (35 without grad, then 5 with).
- pytorch unrolled K = 5 / 40: the example's own unrolled Gauss–Newton iteration (closed-form
  Jacobian, torch.linalg.solve) differentiated by autograd.
- with --ours FILE (the output of `cargo run --release --example bilevel`): the example's rows at λ = 1.

Truth: V(λ) with the inner problem re-solved to convergence (100 Gauss–Newton steps, no grad) at
s ± h, central differences with Richardson extrapolation (h = 5e-4, 2.5e-4; its change from
(1e-3, 5e-4) is printed as the truth's error estimate), in f64 with torch ops.

Per row: the hypergradient, its relative error against the truth, the median ms per hypergradient
(25 rounds after 3 of warm-up, the rows interleaved, torch.set_num_threads(2) or --threads N), and
the peak resident memory above the resident memory just before the call (VmHWM reset by writing
"5" to /proc/self/clear_refs, minus VmRSS; Linux only, else n/a): the row's first call (after one
unrelated autograd backward; it pays one-time costs such as library code paged in) / the most of 5
later calls — as the example measures it.

Install Theseus (its own venv, outside the repository; torch 2.11 linked from the setup venv):
    bench/install-theseus /work/venv-theseus        (default DIR: ~/.cache/tch-jacobian/venv-theseus)
Run (the same thread count on both sides; libtorch's default is the core count):
    OMP_NUM_THREADS=2 cargo run --release --example bilevel > /tmp/bilevel.txt
    /work/venv-theseus/bin/python bench/theseus_backward.py --ours /tmp/bilevel.txt [--threads 2] [--json out.jsonl]
On a loaded machine the Python rows' two-thread timings swung by several times between runs (the
example's did not): measure with OMP_NUM_THREADS=1 and --threads 1 as well.
Without Theseus (plain PyTorch venv) the theseus rows are skipped. Output: a Markdown table on stdout.
"""
import argparse
import gc
import json
import os
import platform
import re
import statistics
import sys
import time

# --threads N (default 2) before torch loads: OMP/MKL/OpenBLAS and torch.set_num_threads.
THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), None) or (
    sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "2")
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = THREADS

import torch  # noqa: E402

D = torch.float64
K_SHORT, K_LONG = 5, 40
REPS, WARMUP = 25, 3


# ----------------------------------------------------------------------------- the problem
def model(p, t):
    """a e^(−b t) + c for p = [a, b, c] (or [B, 3] against t [1, T])."""
    if p.dim() == 1:
        return p[0] * torch.exp(-p[1] * t) + p[2]
    return p[:, 0:1] * torch.exp(-p[:, 1:2] * t) + p[:, 2:3]


class Problem:
    def __init__(self):
        torch.manual_seed(7)  # tch::manual_seed(7) then the same randn calls: the same data
        truth = torch.tensor([2.0, 1.3, 0.5], dtype=D)
        self.t_train = torch.linspace(0.0, 1.0, 6, dtype=D)
        self.t_val = torch.linspace(0.0, 3.0, 30, dtype=D)
        self.y_train = model(truth, self.t_train) + torch.randn(6, dtype=D) * 0.1
        self.y_val = model(truth, self.t_val) + torch.randn(30, dtype=D) * 0.1
        self.prior = torch.tensor([1.5, 1.0, 0.3], dtype=D)
        self.x0 = torch.tensor([1.0, 1.0, 0.0], dtype=D)

    def validation(self, x):
        return 0.5 * (model(x, self.t_val) - self.y_val).square().sum()

    def gn_step(self, x, lam):
        """One Gauss–Newton step of the regularized fit, as examples/bilevel.rs writes it."""
        t = self.t_train
        e = torch.exp(-x[1] * t)
        jac = torch.stack([e, -(x[0] * t * e), torch.ones_like(e)], 1)
        r = model(x, t) - self.y_train
        a = jac.T @ jac + torch.eye(3, dtype=D) * lam
        g = jac.T @ r.unsqueeze(1) + ((x - self.prior) * lam).unsqueeze(1)
        return x - torch.linalg.solve(a, g).squeeze(1)

    def unrolled(self, s0, k):
        s = torch.tensor(s0, dtype=D, requires_grad=True)
        lam = s.exp()
        x = self.x0
        for _ in range(k):
            x = self.gn_step(x, lam)
        v = self.validation(x)
        (g,) = torch.autograd.grad(v, s)
        return v.item(), g.item()

    @torch.no_grad()
    def solved_v(self, s):
        lam = torch.tensor(s, dtype=D).exp()
        x = self.x0
        for _ in range(100):
            x = self.gn_step(x, lam)
        step = (self.gn_step(x, lam) - x).abs().max().item()
        assert step < 1e-13, f"the inner fit did not converge at s = {s}: last step {step}"
        return self.validation(x).item()

    def truth(self, s=0.0, h=1e-3):
        """Central differences, Richardson-extrapolated at h and h/2; the error estimate is the
        change from (h, h/2) to (h/2, h/4)."""
        d = [(self.solved_v(s + h / 2**i) - self.solved_v(s - h / 2**i)) / (2 * h / 2**i) for i in range(3)]
        r1, r2 = (4 * d[1] - d[0]) / 3, (4 * d[2] - d[1]) / 3
        return r2, abs(r2 - r1)


# ----------------------------------------------------------------------------- Theseus
def theseus_rows(p):
    try:
        import theseus as th
    except ImportError as e:
        print(f"theseus_backward: theseus does not import ({e}); its rows are skipped", file=sys.stderr)
        return None, []

    class Fit(th.CostFunction):
        def __init__(self, x, t, y, name=None):
            super().__init__(th.ScaleCostWeight(torch.ones(1, dtype=D)), name=name)
            self.x, self.t, self.y = x, t, y
            self.register_optim_vars(["x"])
            self.register_aux_vars(["t", "y"])

        def error(self):
            return model(self.x.tensor, self.t.tensor) - self.y.tensor

        def jacobians(self):
            x, t = self.x.tensor, self.t.tensor
            e = torch.exp(-x[:, 1:2] * t)
            return [torch.stack([e, -x[:, 0:1] * t * e, torch.ones_like(e)], -1)], self.error()

        def dim(self):
            return 6

        def _copy_impl(self, new_name=None):
            return Fit(self.x.copy(), self.t.copy(), self.y.copy(), name=new_name)

    class Ridge(th.CostFunction):
        """√λ (x − x_prior), λ = e^s."""

        def __init__(self, x, prior, s, name=None):
            super().__init__(th.ScaleCostWeight(torch.ones(1, dtype=D)), name=name)
            self.x, self.prior, self.s = x, prior, s
            self.register_optim_vars(["x"])
            self.register_aux_vars(["prior", "s"])

        def error(self):
            return (self.x.tensor - self.prior.tensor) * torch.exp(0.5 * self.s.tensor)

        def jacobians(self):
            b = self.x.tensor.shape[0]
            eye = torch.eye(3, dtype=D).expand(b, 3, 3)
            return [eye * torch.exp(0.5 * self.s.tensor).view(-1, 1, 1)], self.error()

        def dim(self):
            return 3

        def _copy_impl(self, new_name=None):
            return Ridge(self.x.copy(), self.prior.copy(), self.s.copy(), name=new_name)

    def layer(rel_tol, abs_tol):
        x = th.Vector(tensor=p.x0[None].clone(), name="x")
        t = th.Variable(p.t_train[None].clone(), name="t")
        y = th.Variable(p.y_train[None].clone(), name="y")
        prior = th.Variable(p.prior[None].clone(), name="prior")
        s = th.Variable(torch.zeros(1, 1, dtype=D), name="s")
        obj = th.Objective(dtype=D)
        obj.add(Fit(x, t, y, name="fit"))
        obj.add(Ridge(x, prior, s, name="ridge"))
        opt = th.LevenbergMarquardt(obj, linear_solver_cls=th.CholeskyDenseSolver, max_iterations=K_LONG,
                                    abs_err_tolerance=abs_tol, rel_err_tolerance=rel_tol, step_size=1.0)
        lay = th.TheseusLayer(opt)
        iters = []  # (grad loop?, iterations done) per _optimize_loop call
        inner = opt._optimize_loop

        def counted(*a, **k):
            n = inner(*a, **k)
            iters.append((bool(k.get("truncated_grad_loop")), n))
            return n

        opt._optimize_loop = counted
        return lay, iters

    def make(mode, rel_tol=1e-12, abs_tol=1e-15, **extra):
        lay, iters = layer(rel_tol, abs_tol)
        kwargs = dict(backward_mode=mode, damping=1e-3, track_best_solution=False, verbose=False, **extra)

        def run(s0):
            s = torch.full((1, 1), s0, dtype=D, requires_grad=True)
            iters.clear()
            sol, _ = lay.forward({"x": p.x0[None].clone(), "t": p.t_train[None], "y": p.y_train[None],
                                  "prior": p.prior[None], "s": s}, optimizer_kwargs=kwargs)
            v = p.validation(sol["x"][0])
            (g,) = torch.autograd.grad(v, s)
            return v.item(), g.item()

        def described():
            nograd = sum(n for gl, n in iters if not gl)
            grad = sum(n for gl, n in iters if gl)
            if mode == th.BackwardMode.FULL or mode == th.BackwardMode.DLM:
                return f"{nograd} iterations" + (" unrolled" if mode == th.BackwardMode.FULL else "")
            return f"{nograd} iterations without grad, {grad} with"

        return run, described

    B = th.BackwardMode
    rows = [
        ("theseus LM, IMPLICIT", *make(B.IMPLICIT)),
        (f"theseus LM, TRUNCATED (backward_num_iterations={K_SHORT})", *make(B.TRUNCATED, backward_num_iterations=K_SHORT)),
        (f"theseus LM, TRUNCATED ({K_SHORT}), tolerances 0", *make(B.TRUNCATED, 0.0, 0.0, backward_num_iterations=K_SHORT)),
        ("theseus LM, UNROLLED (FULL)", *make(B.FULL)),
        ("theseus LM, DLM (dlm_epsilon=1e-2)", *make(B.DLM, dlm_epsilon=1e-2)),
    ]
    return th.__version__, rows


# ----------------------------------------------------------------------------- measuring
def status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line[len(field):].split()[0])
    except OSError:
        pass
    return None


def peak_kib(f):
    """KiB that f() raised the resident memory above that just before it (None where not Linux)."""
    gc.collect()
    before = status_kib("VmRSS:")
    try:
        with open("/proc/self/clear_refs", "w") as c:
            c.write("5")
        reset = True
    except OSError:
        reset = False
    f()
    hwm = status_kib("VmHWM:")
    return max(hwm - before, 0) if reset and before is not None and hwm is not None else None


def parse_ours(path):
    """The example's summary lines: `name  g  ms ms  first / warm KiB`."""
    rows = []
    pat = re.compile(r"^\s*(implicit|unrolled K=\d+)\s+(\S+)\s+(\S+) ms\s+(\S+) / (\S+) KiB\s*(.*)$")
    with open(path) as f:
        for line in f:
            m = pat.match(line)
            if m:
                kib = lambda s: None if s == "n/a" else int(s)  # noqa: E731
                rows.append(dict(row=f"ours (tch-jacobian), {m[1]}", grad=float(m[2]), ms=float(m[3]),
                                 first_kib=kib(m[4]), warm_kib=kib(m[5]),
                                 what=m[6].strip() or f"{m[1].split('=')[1]} Gauss–Newton steps"))
    if not rows:
        sys.exit(f"theseus_backward: no summary rows in {path} (the output of `cargo run --release --example bilevel`)")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ours", help="the output of `cargo run --release --example bilevel`, for our rows")
    ap.add_argument("--json", help="also write one JSON line per row here")
    ap.add_argument("--reps", type=int, default=REPS)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2; the example: OMP_NUM_THREADS)")
    args = ap.parse_args()
    torch.set_num_threads(int(THREADS))

    p = Problem()
    truth, fd_err = p.truth()
    v_ref = p.solved_v(0.0)
    th_version, rows = theseus_rows(p)
    rows = rows + [
        (f"pytorch unrolled K={K_SHORT}", lambda s0: p.unrolled(s0, K_SHORT), lambda: f"{K_SHORT} Gauss–Newton steps"),
        (f"pytorch unrolled K={K_LONG}", lambda s0: p.unrolled(s0, K_LONG), lambda: f"{K_LONG} Gauss–Newton steps"),
    ]

    # Memory first, as the example: one unrelated backward, then each row's first call, then 5 more.
    w = torch.ones((), dtype=D, requires_grad=True)
    torch.autograd.grad(w * w, w)
    first = [peak_kib(lambda: run(0.0)) for _, run, _ in rows]
    warm = [max((peak_kib(lambda: run(0.0)) or 0) for _ in range(5)) if first[i] is not None else None
            for i, (_, run, _) in enumerate(rows)]

    ms = [[] for _ in rows]
    for rnd in range(WARMUP + args.reps):
        for i, (_, run, _) in enumerate(rows):
            t0 = time.perf_counter()
            run(0.0)
            if rnd >= WARMUP:
                ms[i].append((time.perf_counter() - t0) * 1e3)

    out = []
    for i, (name, run, described) in enumerate(rows):
        v, g = run(0.0)
        out.append(dict(row=name, grad=g, V=v, ms=statistics.median(ms[i]), first_kib=first[i], warm_kib=warm[i],
                        what=described()))
    if args.ours:
        out = parse_ours(args.ours) + out
    for r in out:
        r["rel_err"] = abs(r["grad"] - truth) / abs(truth)

    ours_implicit = next((r["ms"] for r in out if r["row"] == "ours (tch-jacobian), implicit"), None)
    kib = lambda k: "n/a" if k is None else str(k)  # noqa: E731
    print(f"dV/dlog λ at λ = 1 (V = {v_ref:.8f}); truth {truth:.12e} (central differences of the re-solved "
          f"inner fit, Richardson, ± {fd_err:.0e}); torch {torch.__version__}, theseus "
          f"{th_version or 'not installed'}, {torch.get_num_threads()} threads, f64, CPU, {platform.machine()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print()
    print("| method | dV/dlog λ | rel. error | ms (median) | " + ("/ ours implicit | " if ours_implicit else "")
          + "peak KiB, first / later | iterations |")
    print("|---|---:|---:|---:|" + ("---:|" if ours_implicit else "") + "---:|---|")
    for r in out:
        ratio = f" {r['ms'] / ours_implicit:.2f} |" if ours_implicit else ""
        print(f"| {r['row']} | {r['grad']:.10e} | {r['rel_err']:.1e} | {r['ms']:.3g} |{ratio} "
              f"{kib(r['first_kib'])} / {kib(r['warm_kib'])} | {r['what']} |")
    if args.json:
        with open(args.json, "w") as f:
            for r in out:
                f.write(json.dumps(dict(r, truth=truth, threads=torch.get_num_threads(), dtype="f64",
                                        torch=torch.__version__, theseus=th_version,
                                        load=os.getloadavg()[0])) + "\n")


if __name__ == "__main__":
    main()
