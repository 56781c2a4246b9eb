#!/usr/bin/env python3
"""Writes the cases of the third-order sweep: PyTorch's OpInfo samples and the normalizations.

The Rust side (bench/src/bin/third_order_sweep.rs, tests/common/third_sweep.rs) reads them,
computes a second-order quantity by every route of the crate with create_graph, and its
gradient ``T`` (a third derivative) by one more backward pass, and compares ``T`` with the
truth written here.

Usage (with the setup venv's python, torch 2.11.0; scripts/third-order-sweep runs it)::

    third_order_sweep.py --out DIR [--ops NAME,NAME,...] [--samples-per-op K] \\
        [--max-numel N] [--seed S] [--jobs J] [--no-opinfo] [--no-norms]

Cases. An OpInfo case is a sample of an op that supports gradgrad in float64 on the CPU, made
into ``f(t_0, …, t_{n-1})`` and traced exactly as bench/second_order_sweep.py does (same
filters, same ids). A norm case (op ``norm.layer_norm``, ``norm.batch_norm`` (training),
``norm.instance_norm``, ``norm.group_norm``, ``norm.rms_norm``) is ``f(x, w[, b])`` with fixed
small shapes; the Rust side also runs it as a Rust closure.

Quantities (``Φ``, a scalar built from second derivatives; ``T_m = ∂Φ/∂t_m`` for every ``m``):

* ``jac`` (per Jacobian input k): ``J_k = ∂f/∂t_k``, ``g_j = ∂⟨R1, J_k⟩/∂t_j``,
  ``Φ = Σ_j ⟨R2_j, g_j⟩``; ``R1`` standard normal like ``J_k``, ``R2_j`` like ``t_j``.
* ``batch`` (norm cases batchable over dim 0, k = 0): ``jac`` with ``R1`` zero off the
  per-sample blocks, so that ``⟨R1, J⟩ = Σ_b ⟨R1_b, J_b⟩`` (the routes through
  ``per_sample_jacobian_of`` give the same ``Φ``).
* ``hess`` (k = 0 for OpInfo cases, k = 0 and 1 for norm cases): ``s = ⟨c, f⟩``,
  ``H = ∂²s/∂t_k²``, ``Φ = ⟨Q, H⟩``; ``c`` like ``f``'s output, ``Q`` like ``H``.
* ``lap`` (batchable norm cases, k = 0): ``hess`` with ``Q = blockdiag(w_b I)``, so that
  ``Φ = Σ_b w_b Δu_b`` with ``u_b = ⟨c_b, f_b⟩`` (``laplacian_of``, ``per_sample_hessian_of``).

Truth. ``Φ`` by PyTorch's autograd row loop (one ``autograd.grad`` per output element with
create_graph; for ``hess`` one per element of ``∇s``), then:

* ``fd``: central differences of that ``Φ`` (float64) at steps ``h = 1e-4`` and ``2h`` for every
  element of every ``t_m``, combined by Richardson extrapolation, ``(4 D(h) − D(2h)) / 3``;
* ``autograd``: PyTorch's own third derivative, one backward pass of ``Φ``;
* ``torch.func``: ``grad`` of ``Φ`` built by ``grad``/``jacrev`` (``jac``, ``batch``) or
  ``torch.func.hessian`` (``hess``, ``lap``).

A value ``a`` agrees with central differences when ``|a − fd| ≤ 1e-6·max(1, max|fd|) +
1e-5·|fd|`` elementwise (the differences are good to about 1e-9 of the scale on smooth
samples; the largest deviation of an agreeing value is printed). The truth is the autograd
value where it agrees, else torch.func's where it agrees, else the central differences
themselves where ``D(h)`` and ``D(2h)`` agree to ``1e-6·max(1, max|fd|)``; otherwise the
(case, quantity) is dropped as undecided (non-smooth at the sample), as it is where autograd's
value is not finite and torch.func's does not agree (a norm at zero). ``autograd`` and
``torch.func`` are recorded as ``ok``, ``wrong`` or ``error``: libtorch's status.

Written into DIR:

* ``cases/<id>.pt``   the traced module, ``forward(t_0, …, t_{n-1}) -> Tensor``
* ``cases/<id>.npz``  float64 arrays ``t{j}``; per quantity ``p = <set><k>``: ``p_r1``,
  ``p_r2_{j}`` (jac, batch) or ``p_c``, ``p_q`` (hess, lap; ``p_w`` the lap weights), and the
  truth ``p_T{m}`` (shape of ``t_m``)
* ``manifest.tsv``    one line per (case, quantity): ``id op variant sample n_inputs set k
  autograd tf truth fd_dev out_index batch``: ``truth`` is ``autograd``, ``torch.func`` or
  ``fd``; ``fd_dev`` the autograd value's largest deviation from the differences in units of
  ``max(1, max|fd|)`` (``-`` on error); ``batch`` 1 when ``f`` is batchable over dim 0
* ``skipped.tsv``     ``op variant sample reason``
* ``errors.tsv``      ``id set k tool message``
"""

import argparse
import multiprocessing
import os
import re
import sys
import time
import warnings
from collections import Counter, defaultdict

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import second_order_sweep as so  # noqa: E402

MANIFEST_COLUMNS = (
    "id op variant sample n_inputs set k autograd tf truth fd_dev out_index batch".split()
)
STEP = 1e-4
FD_RTOL = 1e-5
FD_ATOL = 1e-6
SELF_TOL = 1e-6


# ----------------------------------------------------------------------------------------------
# Quantities


class Quantity:
    """One ``Φ``: its kind, Jacobian input ``k`` and random arrays."""

    def __init__(self, kind, k, **arrays):
        self.kind = kind
        self.k = k
        self.arrays = arrays  # r1, r2 (list) | c, q [, w]

    @property
    def prefix(self):
        return f"{self.kind}{self.k}"


def zeros_or(g, like):
    return so.materialize(g, like)


def jac_phi(jacs, ts, q):
    l1 = (q.arrays["r1"] * jacs[q.k]).sum()
    if not l1.requires_grad:
        return l1
    gs = torch.autograd.grad(l1, ts, create_graph=True, allow_unused=True)
    return sum((r2 * zeros_or(g, t)).sum() for r2, g, t in zip(q.arrays["r2"], gs, ts))


def row_hessian(f, ts, k, c):
    """``∂²⟨c, f⟩/∂t_k²`` by a row loop over ``∇s`` (create_graph), shape ``[*t_k, *t_k]``."""
    s = (c * f(*ts)).sum()
    x = ts[k]
    if not s.requires_grad:
        return torch.zeros((*x.shape, *x.shape), dtype=x.dtype)
    (gs,) = torch.autograd.grad(s, [x], create_graph=True, allow_unused=True)
    gs = zeros_or(gs, x).reshape(-1)
    rows = []
    for a in range(gs.numel()):
        if gs.requires_grad:
            (h,) = torch.autograd.grad(gs[a], [x], create_graph=True, allow_unused=True)
        else:
            h = None
        rows.append(zeros_or(h, x))
    return torch.stack(rows).reshape((*x.shape, *x.shape))


def phis(f, ts, quantities):
    """Every ``Φ`` at ``ts`` (leaves that require grad), by PyTorch's row loops."""
    jacs = None
    out = []
    for q in quantities:
        if q.kind in ("jac", "batch"):
            if jacs is None:
                jacs = so.row_loop_jacobians(f, ts, create_graph=True)
            out.append(jac_phi(jacs, ts, q))
        else:
            out.append((q.arrays["q"] * row_hessian(f, ts, q.k, q.arrays["c"])).sum())
    return out


def autograd_third(f, ts, quantities):
    """PyTorch's third derivatives: one backward pass of each ``Φ``."""
    xs = so.leaves(ts)
    out = []
    for phi in phis(f, xs, quantities):
        try:
            out.append(so.grads(phi, xs))
        except Exception as e:  # noqa: BLE001 - libtorch's errors are a result
            out.append(so.first_line(e))
    return out


def torch_func_third(f, ts, q):
    """``T`` by torch.func, or the error's first line."""
    n = len(ts)
    everything = tuple(range(n))
    k = q.k
    try:
        if q.kind in ("jac", "batch"):
            r1, r2 = q.arrays["r1"], q.arrays["r2"]

            def l1(*xs):
                return (r1 * torch.func.jacrev(f, argnums=k)(*xs)).sum()

            def phi(*xs):
                gs = torch.func.grad(l1, argnums=everything)(*xs)
                return sum((r * g).sum() for r, g in zip(r2, gs))

        else:
            c, qq = q.arrays["c"], q.arrays["q"]

            def phi(*xs):
                def s(x):
                    return (c * f(*xs[:k], x, *xs[k + 1 :])).sum()

                return (qq * torch.func.hessian(s)(xs[k])).sum()

        xs = [t.detach().clone() for t in ts]
        return [g.detach() for g in torch.func.grad(phi, argnums=everything)(*xs)]
    except Exception as e:  # noqa: BLE001
        return so.first_line(e)


def finite_differences(f, ts, quantities):
    """Per quantity: the Richardson value of central differences of ``Φ`` and ``|D(h) − D(2h)|``."""
    base = [t.detach() for t in ts]
    fd = [[torch.zeros_like(t) for t in base] for _ in quantities]
    spread = [[torch.zeros_like(t) for t in base] for _ in quantities]
    for m, t in enumerate(base):
        for e in range(t.numel()):
            values = {}
            for step in (STEP, -STEP, 2 * STEP, -2 * STEP):
                with torch.no_grad():
                    moved = t.clone()
                    moved.view(-1)[e] += step
                point = [moved if i == m else b for i, b in enumerate(base)]
                values[step] = [p.item() for p in phis(f, so.leaves(point), quantities)]
            for i in range(len(quantities)):
                d1 = (values[STEP][i] - values[-STEP][i]) / (2 * STEP)
                d2 = (values[2 * STEP][i] - values[-2 * STEP][i]) / (4 * STEP)
                fd[i][m].view(-1)[e] = (4 * d1 - d2) / 3
                spread[i][m].view(-1)[e] = abs(d1 - d2)
    return fd, spread


def scale_of(ts):
    return max([1.0] + [t.abs().max().item() for t in ts if t.numel()])


def deviation(a, fd):
    """``max |a − fd| / max(1, max|fd|)`` over all tensors, or None on a string (error)."""
    if isinstance(a, str):
        return None
    s = scale_of(fd)
    return max([0.0] + [((x - y).abs().max().item() / s) for x, y in zip(a, fd) if y.numel()])


def agrees(a, fd):
    """``|a − fd| ≤ FD_ATOL·max(1, max|fd|) + FD_RTOL·|fd|`` elementwise, for every tensor."""
    if isinstance(a, str):
        return False
    s = scale_of(fd)
    return all(
        x.shape == y.shape
        and bool(torch.isfinite(x).all())
        and bool(((x - y).abs() <= FD_ATOL * s + FD_RTOL * y.abs()).all())
        for x, y in zip(a, fd)
    )


# ----------------------------------------------------------------------------------------------
# Cases


class Case:
    def __init__(self, cid, op, variant, sample, ts, out_index, module_bytes, batch):
        self.id = cid
        self.op = op
        self.variant = variant
        self.sample = sample
        self.ts = ts
        self.out_index = out_index
        self.module_bytes = module_bytes
        self.batch = batch
        self.rows = []  # (quantity, autograd status, tf status, truth source, fd_dev, truth)
        self.errors = []  # (set, k, tool, message)
        self.dropped = []


def quantities_for(case, f, gen, norm):
    """The random arrays of every quantity of a case."""
    ts = case.ts
    with torch.no_grad():
        y = f(*ts)
    rn = lambda shape: torch.randn(tuple(shape), generator=gen, dtype=torch.float64)  # noqa: E731
    out = []
    jac_ks = range(len(ts))
    hess_ks = [k for k in (0, 1) if k < len(ts)] if norm else [0]
    for k in jac_ks:
        r1 = rn((*y.shape, *ts[k].shape))
        out.append(Quantity("jac", k, r1=r1, r2=[rn(t.shape) for t in ts]))
    if case.batch:
        b = ts[0].shape[0]
        r1 = rn((*y.shape, *ts[0].shape)).reshape(b, y[0].numel(), b, ts[0][0].numel())
        mask = torch.eye(b, dtype=torch.float64).reshape(b, 1, b, 1)
        r1 = (r1 * mask).reshape((*y.shape, *ts[0].shape))
        out.append(Quantity("batch", 0, r1=r1, r2=[rn(t.shape) for t in ts]))
    for k in hess_ks:
        n = ts[k].numel()
        q = rn((n, n)).reshape((*ts[k].shape, *ts[k].shape))
        out.append(Quantity("hess", k, c=rn(y.shape), q=q))
    if case.batch:
        x = ts[0]
        b, per = x.shape[0], x[0].numel()
        w = rn((b,))
        q = torch.kron(torch.diag(w), torch.eye(per, dtype=torch.float64))
        out.append(Quantity("lap", 0, c=rn(y.shape), q=q.reshape((*x.shape, *x.shape)), w=w))
    return out


def decide(case, f, seed, norm):
    gen = torch.Generator().manual_seed(so.seed_of(seed, "third", case.id))
    quantities = quantities_for(case, f, gen, norm)
    ag = autograd_third(f, case.ts, quantities)
    fd, spread = finite_differences(f, case.ts, quantities)
    for q, a, d, sp in zip(quantities, ag, fd, spread):
        tf = torch_func_third(f, case.ts, q)
        for tool, value in (("autograd", a), ("torch.func", tf)):
            if isinstance(value, str):
                case.errors.append((q.kind, q.k, tool, value))
        if not all(bool(torch.isfinite(x).all()) for x in d):
            case.dropped.append(f"{q.prefix}: non-finite differences")
            continue
        s = scale_of(d)
        if (
            not isinstance(a, str)
            and not all(bool(torch.isfinite(x).all()) for x in a)
            and not agrees(tf, d)
        ):
            # NaN or ∞ from autograd at a point where f is not smooth (a norm at zero).
            case.dropped.append(f"{q.prefix}: non-finite autograd value (non-smooth?)")
            continue
        if agrees(a, d):
            truth, source = a, "autograd"
        elif agrees(tf, d):
            truth, source = tf, "torch.func"
        elif all(bool((x <= SELF_TOL * s).all()) for x in sp):
            truth, source = d, "fd"
        else:
            case.dropped.append(f"{q.prefix}: undecided (non-smooth?)")
            continue

        def status(v):
            return "error" if isinstance(v, str) else ("ok" if agrees(v, d) else "wrong")

        dev = deviation(a, d)
        case.rows.append(
            (q, status(a), status(tf), source, "-" if dev is None else f"{dev:.2e}", truth)
        )


# The norm cases: (name, function, shapes of x, w[, b], batchable over dim 0).
NORMS = [
    ("layer_norm", lambda x, w, b: F.layer_norm(x, (4,), w, b, eps=1e-5), [(3, 4), (4,), (4,)], True),
    (
        "batch_norm",
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, momentum=0.1, eps=1e-5),
        [(4, 3), (3,), (3,)],
        False,
    ),
    (
        "instance_norm",
        lambda x, w, b: F.instance_norm(x, weight=w, bias=b, use_input_stats=True, eps=1e-5),
        [(2, 2, 3), (2,), (2,)],
        True,
    ),
    ("group_norm", lambda x, w, b: F.group_norm(x, 2, w, b, eps=1e-5), [(2, 4, 2), (4,), (4,)], True),
    ("rms_norm", lambda x, w: F.rms_norm(x, (4,), w, eps=1e-5), [(3, 4), (4,)], True),
]


def norm_case(name, fn, shapes, batch, seed):
    gen = torch.Generator().manual_seed(so.seed_of(seed, "norm", name))
    ts = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_(True) for s in shapes]
    with torch.no_grad():  # weights away from zero, biases small
        ts[1].mul_(0.5).add_(1.0)
    y = fn(*ts)
    module_bytes = so.trace(fn, ts, y)
    return Case(f"norm_{name}__0", f"norm.{name}", "", 0, ts, -1, module_bytes, batch)


# ----------------------------------------------------------------------------------------------
# Work units (one op, or one norm case), run in worker processes


def init_worker():
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


def run_op(args_tuple):
    """One OpInfo op: ``(key, cases, skips, seconds)``."""
    key, args = args_tuple
    from torch.testing._internal.common_methods_invocations import op_db

    op = next(o for o in op_db if so.op_key(o) == key)
    t0 = time.time()
    cases, skips = [], []
    reason = so.ineligibility(op)
    if reason:
        return key, [], [(op.name, op.variant_test_name, "-", f"not eligible: {reason}")], 0.0
    so.seed_everything(so.seed_of(args.seed, so.op_key(op)))
    try:
        samples = op.sample_inputs("cpu", torch.float64, requires_grad=True, small_inputs_only=True)
        for index, sample in enumerate(samples):
            if len(cases) >= args.samples_per_op:
                break
            with torch.random.fork_rng(devices=[]):
                try:
                    f, c2 = so.prepare(op, index, sample, args.max_numel)
                    case = Case(c2.id, c2.op, c2.variant, index, c2.ts, c2.out_index,
                                c2.module_bytes, False)
                    decide(case, f, args.seed, norm=False)
                except so.Skip as e:
                    skips.append((op.name, op.variant_test_name, index, str(e)))
                    continue
                except Exception as e:  # noqa: BLE001
                    msg = f"exception: {type(e).__name__}: {so.first_line(e)}"
                    skips.append((op.name, op.variant_test_name, index, msg))
                    continue
                skips.extend((op.name, op.variant_test_name, index, r) for r in case.dropped)
                if case.rows:
                    cases.append(case)
    except Exception as e:  # noqa: BLE001
        skips.append((op.name, op.variant_test_name, "-",
                      f"exception: sample_inputs: {type(e).__name__}: {so.first_line(e)}"))
    return key, cases, skips, time.time() - t0


def run_norm(args_tuple):
    name, args = args_tuple
    t0 = time.time()
    spec = next(n for n in NORMS if n[0] == name)
    case = norm_case(*spec, args.seed)
    fn = spec[1]
    decide(case, fn, args.seed, norm=True)
    skips = [(case.op, "", 0, r) for r in case.dropped]
    return case.op, [case] if case.rows else [], skips, time.time() - t0


def as_array(t):
    return so.as_array(t)


def write_case(out_dir, case):
    base = os.path.join(out_dir, "cases", case.id)
    with open(base + ".pt", "wb") as fh:
        fh.write(case.module_bytes)
    arrays = {f"t{j}": as_array(t) for j, t in enumerate(case.ts)}
    for q, *_rest, truth in case.rows:
        p = q.prefix
        for name, value in q.arrays.items():
            if isinstance(value, list):
                arrays.update({f"{p}_{name}_{j}": as_array(v) for j, v in enumerate(value)})
            else:
                arrays[f"{p}_{name}"] = as_array(value)
        arrays.update({f"{p}_T{m}": as_array(t) for m, t in enumerate(truth)})
    np.savez(base + ".npz", **arrays)


class Sweep:
    def __init__(self, args):
        self.args = args
        os.makedirs(os.path.join(args.out, "cases"), exist_ok=True)
        self.manifest = so.Tsv(os.path.join(args.out, "manifest.tsv"), MANIFEST_COLUMNS)
        self.skipped = so.Tsv(os.path.join(args.out, "skipped.tsv"), so.SKIPPED_COLUMNS)
        self.errors = so.Tsv(os.path.join(args.out, "errors.tsv"), "id set k tool message".split())
        self.cases = 0
        self.quantities = 0
        self.status = {"autograd": Counter(), "tf": Counter(), "truth": Counter()}
        self.bad_ops = {"autograd": defaultdict(set), "tf": defaultdict(set)}
        self.reasons = Counter()
        self.devs = []
        self.times = []

    def take(self, result):
        key, cases, skips, took = result
        for op, variant, sample, reason in skips:
            self.skipped.write([op, variant, sample, reason])
            self.reasons[so.reason_category(re.sub(r"^\w+\d+: ", "", reason))] += 1
        for case in cases:
            write_case(self.args.out, case)
            self.cases += 1
            for k_set, k, tool, message in case.errors:
                self.errors.write([case.id, k_set, k, tool, message])
            for q, ag, tf, source, dev, _truth in case.rows:
                self.quantities += 1
                self.manifest.write([case.id, case.op, case.variant, case.sample, len(case.ts),
                                     q.kind, q.k, ag, tf, source, dev, case.out_index,
                                     int(case.batch)])
                label = f"{key} ({q.kind}, k={q.k})"
                self.status["autograd"][ag] += 1
                self.status["tf"][tf] += 1
                self.status["truth"][source] += 1
                if ag != "ok":
                    self.bad_ops["autograd"][ag].add(label)
                if tf != "ok":
                    self.bad_ops["tf"][tf].add(label)
                if ag == "ok" and dev != "-":
                    self.devs.append((float(dev), label))
        self.times.append((took, key))

    def close(self):
        for tsv in (self.manifest, self.skipped, self.errors):
            tsv.close()

    def summary(self, elapsed, n_units):
        print()
        print(f"work units:       {n_units}")
        print(f"cases written:    {self.cases} ({self.quantities} quantities)")
        for column, label in (("autograd", "libtorch autograd"), ("tf", "torch.func")):
            counts = ", ".join(f"{s} {n}" for s, n in sorted(self.status[column].items()))
            print(f"{label + ':':18}{counts}")
            for s in ("wrong", "error"):
                ops = sorted(self.bad_ops[column].get(s, ()))
                if ops:
                    print(f"  {s} ({len(ops)}): {', '.join(ops)}")
        print("truth from:       " + ", ".join(f"{s} {n}" for s, n in sorted(self.status["truth"].items())))
        if self.devs:
            worst = sorted(self.devs, reverse=True)[:3]
            print("largest deviation of an agreeing autograd value from FD (units of max(1, max|fd|)): "
                  + ", ".join(f"{d:.1e} {label}" for d, label in worst))
        print("skipped:")
        for reason, n in self.reasons.most_common(15):
            print(f"  {n:6}  {reason}")
        slowest = sorted(self.times, reverse=True)[:5]
        print("slowest:          " + ", ".join(f"{key} {t:.1f} s" for t, key in slowest))
        print(f"elapsed:          {elapsed:.1f} s", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Writes the third-order sweep's cases.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ops", help="comma-separated OpInfo names (name or name.variant)")
    p.add_argument("--samples-per-op", type=int, default=1, metavar="K")
    p.add_argument("--max-numel", type=int, default=25, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="J")
    p.add_argument("--no-opinfo", action="store_true", help="only the norm cases")
    p.add_argument("--no-norms", action="store_true", help="only the OpInfo cases")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    units = []
    if not args.no_norms:
        units += [(run_norm, (name, args)) for name, *_ in NORMS]
    if not args.no_opinfo:
        from torch.testing._internal.common_methods_invocations import op_db

        names = [n.strip() for n in args.ops.split(",") if n.strip()] if args.ops else None
        ops = so.select_ops(op_db, names)
        units += [(run_op, (so.op_key(op), args)) for op in ops]
    sweep = Sweep(args)
    started = time.time()
    # Spawned workers (a fork of a process that has run torch can deadlock in the child).
    with multiprocessing.get_context("spawn").Pool(max(1, args.jobs), initializer=init_worker) as pool:
        pending = [pool.apply_async(fn, (a,)) for fn, a in units]
        for i, res in enumerate(pending, 1):
            result = res.get()
            sweep.take(result)
            print(f"[{i}/{len(units)}] {result[0]}: {len(result[1])} cases, {result[3]:.1f} s",
                  flush=True)
    sweep.close()
    sweep.summary(time.time() - started, len(units))


if __name__ == "__main__":
    sys.exit(main())
