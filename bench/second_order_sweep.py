#!/usr/bin/env python3
"""Writes the cases of the second-order sweep over PyTorch's OpInfo samples.

The Rust side (bench/src/bin/second_order_sweep.rs, tests/common/sweep.rs) reads them, computes
``J_k = ∂y/∂t_k`` with create_graph by every route of the crate, ``L = Σ R_k ⊙ J_k`` and
``g_j = ∂L/∂t_j`` for every input ``t_j``, and compares with the truth written here.

Usage (with the setup venv's python, torch 2.11.0)::

    second_order_sweep.py --out DIR [--ops NAME,NAME,...] [--samples-per-op K] \\
        [--max-numel N] [--seed S] [--no-warm]

``--ops`` takes ``op.name`` (every variant) or ``op.name.variant_test_name`` (one variant);
without it, every op of ``op_db`` that supports autograd and gradgrad in float64 on the CPU.
Per op, the first ``K`` (default 3) samples of ``op.sample_inputs('cpu', float64,
requires_grad=True, small_inputs_only=True)`` (the small shapes of OpInfo's slow gradcheck:
5×5 instead of 20×20 for elementwise ops) that pass the filters below become cases.

A case is ``f(t_0, …, t_{n-1})``: the OpInfo call (``op.gradcheck_wrapper(op.op, …)`` and the
sample's ``output_process_fn_grad``, as OpInfo's gradcheck does) with its differentiable tensors
``t_j`` (floating, requires_grad; in ``sample.input``, ``sample.args`` and ``sample.kwargs``, in
that order, tensor lists flattened; contiguous copies) as arguments and everything else fixed.
Tuple outputs give their first floating tensor. Samples are skipped when their inputs or output
have more than ``--max-numel`` elements, the output is empty, not float64, not differentiable or
not finite, the op is random (two seeds give two results, eagerly or in the traced module: OpInfo
seeds its random ops inside the call, the trace does not), or the traced module does not
reproduce the eager output bitwise.

Truth, per Jacobian input ``k`` with a standard normal ``R_k`` of shape ``[*y.shape,
*t_k.shape]``: ``g_row``, PyTorch's row loop (one ``autograd.grad`` per element of ``y``, with
create_graph, for all k at once; then one backward of ``L``), and ``g_tf``, the same from
``torch.func.jacrev(f, argnums=k)``.
When they agree (``|a − b| ≤ 1e-7·max(1, max|b|) + 1e-6·|b|``), the truth is ``g_row``.
Otherwise central differences (h = 1e-6) of ``L`` (its ``J`` by the row loop without
create_graph) decide (``|a − fd| ≤ 1e-4·max(1, max|fd|)``); a ``k`` that neither matches is
dropped (non-smooth at the sample). Unless ``--no-warm``, torch.func also runs on the loaded
TorchScript module after three create_graph training steps (the profiling executor's optimized
graph), and is compared with the truth.

Written into DIR:

* ``cases/<id>.pt``   the traced module, ``forward(t_0, …, t_{n-1}) -> Tensor``
* ``cases/<id>.npz``  float64 C-contiguous arrays ``t{j}`` (inputs), ``r{k}`` (R_k, per accepted
  k) and ``g{k}_{j}`` (the truth ``∂L_k/∂t_j``, shape of ``t_j``, per accepted k and every j)
* ``manifest.tsv``    ``id op variant sample n_inputs wrt tf tf_warm fd out_index``: ``variant``
  empty for the default variant; ``wrt`` the accepted k's; ``tf`` and ``tf_warm`` torch.func's
  status per k (``ok``, ``wrong``, ``error`` or ``rowloop-wrong``, where the truth is torch.func's
  and PyTorch's row loop is the wrong one; ``tf_warm`` is ``-`` with ``--no-warm``); ``fd``
  1 where central differences decided; ``out_index`` the element taken from a tuple output, or -1
* ``skipped.tsv``     ``op variant sample reason`` (``sample`` is ``-`` for a whole op; a reason
  ``k=K: …`` drops one Jacobian input, the case is written when another k remains)
* ``errors.tsv``      ``id k mode message``: the first line of torch.func's errors

Lists are comma-separated; the files are rewritten line by line as the sweep goes (old files
in ``cases/`` are not removed). Everything is deterministic: sample generation is seeded per op
and ``R_k`` per case from ``--seed``, so a case has the same id and arrays with or without
``--ops``. A progress line per op and a summary are printed.
"""

import argparse
import difflib
import io
import os
import random
import re
import sys
import time
import warnings
import zlib
from collections import Counter, defaultdict

import numpy as np
import torch

MANIFEST_COLUMNS = "id op variant sample n_inputs wrt tf tf_warm fd out_index".split()
SKIPPED_COLUMNS = "op variant sample reason".split()
ERRORS_COLUMNS = "id k mode message".split()
FD_STEP = 1e-6
FD_TOL = 1e-4
WARM_STEPS = 3


class Skip(Exception):
    """A sample (or one Jacobian input) that does not become a case; the message is the reason."""


# ----------------------------------------------------------------------------------------------
# Ops and samples


def op_key(op):
    """``name`` or ``name.variant``, as ``--ops`` and the Rust side spell an OpInfo."""
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


def ineligibility(op):
    """Why ``op`` is not in the sweep, or None."""
    if not op.supports_autograd:
        return "no autograd"
    if not op.supports_gradgrad:
        return "no gradgrad"
    if torch.float64 not in op.supported_dtypes("cpu"):
        return "no float64"
    return None


def select_ops(op_db, names):
    """The OpInfos named in ``names`` (all of ``op_db``'s eligible ones when None)."""
    if names is None:
        return [op for op in op_db if ineligibility(op) is None]
    chosen = []
    for name in names:
        found = [op for op in op_db if name in (op.name, op_key(op))]
        if not found:
            close = similar_names(name, op_db)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SystemExit(f"second_order_sweep.py: unknown op {name!r}{hint}")
        chosen.extend(op for op in found if op not in chosen)
    return chosen


def similar_names(name, op_db, n=6):
    """The op keys closest to ``name``, whole or by their last dotted part (``layer_nrom``
    finds ``nn.functional.layer_norm``)."""

    def score(key):
        last = key.split(".")[-1]
        return max(difflib.SequenceMatcher(None, name, k).ratio() for k in (key, last))

    keys = {op.name for op in op_db} | {op_key(op) for op in op_db}
    ranked = sorted(keys, key=lambda k: (-score(k), k))
    return [k for k in ranked[:n] if score(k) >= 0.6]


def seed_of(*parts):
    """A 31-bit seed from strings/ints, stable across runs (unlike ``hash``)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def case_id(op, index):
    """A filesystem-safe id: ``nn_functional_layer_norm__2``, ``var_unbiased__0``."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", op.name)
    if op.variant_test_name:
        name += "_" + re.sub(r"[^A-Za-z0-9_]", "_", op.variant_test_name)
    return f"{name}__{index}"


def is_differentiable(x):
    return isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point()


def slots(sample):
    """The sample's call slots in order: input, args, kwargs values."""
    return [sample.input, *sample.args, *sample.kwargs.values()]


def differentiable_tensors(sample):
    """The differentiable tensors of a sample, tensor lists flattened, in call order."""
    found = []
    for value in slots(sample):
        if is_differentiable(value):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(x for x in value if is_differentiable(x))
    return found


def substitute(value, it):
    """``value`` with its differentiable tensors replaced by the next ones of ``it``."""
    if is_differentiable(value):
        return next(it)
    if isinstance(value, (list, tuple)) and any(is_differentiable(x) for x in value):
        return type(value)(next(it) if is_differentiable(x) else x for x in value)
    return value


def call_sample(op, sample, ts):
    """The OpInfo call of ``sample`` with ``ts`` in place of its differentiable tensors."""
    it = iter(ts)
    inp = substitute(sample.input, it)
    args = [substitute(a, it) for a in sample.args]
    kwargs = {name: substitute(v, it) for name, v in sample.kwargs.items()}
    out = op.gradcheck_wrapper(op.op, inp, *args, **kwargs)
    if sample.output_process_fn_grad is not None:
        out = sample.output_process_fn_grad(out)
    return out


def output_index(out):
    """-1 for a tensor, else the index of the first floating tensor of a tuple/list."""
    if isinstance(out, torch.Tensor):
        return -1
    if isinstance(out, (list, tuple)):
        for i, x in enumerate(out):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                return i
    raise Skip(f"output: no floating tensor ({type(out).__name__})")


def make_function(op, sample, ts):
    """``f(*ts)``, the sample's call returning one tensor, and the tuple index it takes."""
    index = output_index(call_sample(op, sample, ts))

    def f(*ts):
        out = call_sample(op, sample, ts)
        return out if index < 0 else out[index]

    return f, index


# ----------------------------------------------------------------------------------------------
# Checks of a sample


def check_output(y, max_numel):
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise Skip("output: not a floating tensor")
    if y.dtype != torch.float64:
        raise Skip(f"output: {y.dtype}")
    if y.numel() == 0:
        raise Skip("output: empty")
    if y.numel() > max_numel:
        raise Skip("output: too large")
    if not y.requires_grad:
        raise Skip("output: does not require grad")
    if not bool(torch.isfinite(y).all()):
        raise Skip("output: not finite")


def check_deterministic(f, ts):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        a = f(*ts)
        torch.manual_seed(2)
        b = f(*ts)
    if not torch.equal(a, b):
        raise Skip("random")


class Wrapper(torch.nn.Module):
    """``forward(*ts)``: traced, it takes exactly the case's tensors."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, *ts):
        return self.f(*ts)


def load(module_bytes):
    return torch.jit.load(io.BytesIO(module_bytes))


def trace(f, ts, y):
    """The saved TorchScript module of ``f`` (bytes), checked to reproduce ``y`` bitwise."""
    try:
        traced = torch.jit.trace(Wrapper(f), tuple(ts), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        module_bytes = buffer.getvalue()
        loaded = load(module_bytes)
        out = loaded(*ts)
    except Exception as e:  # noqa: BLE001 - any tracing failure skips the sample
        raise Skip(f"trace: {first_line(e)}") from None
    # OpInfo seeds its random ops inside the call (wrapper_set_seed); the trace does not.
    check_deterministic(loaded, ts)
    if not isinstance(out, torch.Tensor) or out.shape != y.shape or not torch.equal(out, y):
        raise Skip("trace: the loaded module differs from eager")
    return module_bytes


# ----------------------------------------------------------------------------------------------
# Derivatives


def materialize(g, like):
    """A gradient, zeros where autograd returned None or a ZeroTensor."""
    if g is None or g._is_zerotensor():
        return torch.zeros_like(like)
    return g


def grads(root, ts):
    """``∂root/∂t_j`` for every j, detached, zeros where ``root`` does not reach."""
    if not root.requires_grad:
        return [torch.zeros_like(t) for t in ts]
    gs = torch.autograd.grad(root, ts, retain_graph=True, allow_unused=True)
    return [materialize(g, t).detach() for g, t in zip(gs, ts)]


def row_loop_jacobians(f, ts, create_graph):
    """``[J_0, …, J_{n-1}]``, ``J_k = ∂f/∂t_k`` of shape ``[*y.shape, *t_k.shape]``, by
    PyTorch's row loop: one ``autograd.grad`` per element of ``y`` (all k at once)."""
    y = f(*ts)
    flat = y.reshape(-1)
    rows = [[] for _ in ts]
    for i in range(flat.numel()):
        if flat.requires_grad:
            gs = torch.autograd.grad(
                flat[i], ts, retain_graph=True, create_graph=create_graph, allow_unused=True
            )
        else:
            gs = [None] * len(ts)
        for row, g, t in zip(rows, gs, ts):
            row.append(materialize(g, t))
    return [torch.stack(row).reshape((*y.shape, *t.shape)) for row, t in zip(rows, ts)]


def penalty_grads(jac, r, ts):
    """``∂⟨R, J⟩/∂t_j`` for every j."""
    return grads((r * jac).sum(), ts)


def torch_func_grads(fn, ts, k, r):
    """``∂⟨R_k, jacrev(fn, argnums=k)⟩/∂t_j`` for every j, or the error's first line."""
    try:
        jac = torch.func.jacrev(fn, argnums=k)(*ts)
        return penalty_grads(jac, r, ts)
    except Exception as e:  # noqa: BLE001 - torch.func's errors are a result
        return first_line(e)


def leaves(ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


def warm_up(module, ts):
    """Three create_graph training steps, as the Rust side's warm mode does: forward, gradient
    of the output's sum with create_graph, backward of the sum of those gradients."""
    for _ in range(WARM_STEPS):
        xs = leaves(ts)
        root = module(*xs).sum()
        if not root.requires_grad:
            continue
        gs = torch.autograd.grad(root, xs, create_graph=True, allow_unused=True)
        live = [g.sum() for g in gs if g is not None and g.requires_grad]
        if live:
            torch.autograd.grad(sum(live), xs, allow_unused=True)


def warm_torch_func_grads(module_bytes, ts, k, r):
    """torch.func's gradients on a freshly loaded module after the warm-up, or the error."""
    try:
        module = load(module_bytes)
        warm_up(module, ts)
    except Exception as e:  # noqa: BLE001
        return f"warm-up: {first_line(e)}"
    return torch_func_grads(module, ts, k, r)


def finite_differences(f, ts, rs):
    """Central differences of ``L_k(ts) = Σ R_k ⊙ J_k(ts)`` w.r.t. every element of every t_j,
    for each ``k`` of ``rs`` (one row loop without create_graph per perturbed point)."""
    out = {k: [torch.zeros_like(t) for t in ts] for k in rs}

    def penalties(point):
        jacs = row_loop_jacobians(f, point, create_graph=False)
        return {k: (r * jacs[k]).sum().item() for k, r in rs.items()}

    base = [t.detach() for t in ts]
    for j, t in enumerate(base):
        for e in range(t.numel()):
            values = []
            for step in (FD_STEP, -FD_STEP):
                with torch.no_grad():
                    moved = t.clone()
                    moved.view(-1)[e] += step
                point = [moved if i == j else b for i, b in enumerate(base)]
                values.append(penalties([p.detach().requires_grad_(True) for p in point]))
            for k in rs:
                out[k][j].view(-1)[e] = (values[0][k] - values[1][k]) / (2 * FD_STEP)
    return out


# ----------------------------------------------------------------------------------------------
# Comparisons


def close(a, b):
    """``|a − b| ≤ 1e-7·max(1, max|b|) + 1e-6·|b|`` elementwise (False on NaN)."""
    if a.shape != b.shape:
        return False
    if b.numel() == 0:
        return True
    scale = max(1.0, b.abs().max().item())
    return bool(((a - b).abs() <= 1e-7 * scale + 1e-6 * b.abs()).all())


def fd_close(a, fd):
    """``|a − fd| ≤ 1e-4·max(1, max|fd|)`` elementwise: agreement with central differences."""
    if fd.numel() == 0:
        return True
    scale = max(1.0, fd.abs().max().item())
    return bool(((a - fd).abs() <= FD_TOL * scale).all())


def all_close(gs, truth, test=close):
    return not isinstance(gs, str) and all(test(g, t) for g, t in zip(gs, truth))


def status(gs, truth):
    if isinstance(gs, str):
        return "error"
    return "ok" if all_close(gs, truth) else "wrong"


def first_line(e):
    """An exception's message in one line; for TorchScript's, the error under its traceback."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    line = lines[-1] if lines[0].startswith("The following operation failed") else lines[0]
    return re.sub(r"\s+", " ", line)[:200]


# ----------------------------------------------------------------------------------------------
# One case


class Case:
    def __init__(self, op, index, ts, out_index, module_bytes):
        self.id = case_id(op, index)
        self.op = op.name
        self.variant = op.variant_test_name
        self.sample = index
        self.ts = ts
        self.out_index = out_index
        self.module_bytes = module_bytes
        self.r = {}  # k -> R_k
        self.truth = {}  # k -> [g_{k,j}]
        self.tf = {}  # k -> status
        self.tf_warm = {}
        self.fd = {}  # k -> central differences decided
        self.errors = []  # (k, mode, message)
        self.dropped = []  # reasons for dropped k's


def prepare(op, index, sample, max_numel):
    """Steps 1-4: the case's tensors, function and module, or Skip."""
    originals = differentiable_tensors(sample)
    if not originals:
        raise Skip("no differentiable tensors")
    if any(t.dtype != torch.float64 for t in originals):
        raise Skip("inputs: not all float64")
    if sum(t.numel() for t in originals) > max_numel:
        raise Skip("inputs: too large")
    ts = [
        t.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
        for t in originals
    ]
    f, out_index = make_function(op, sample, ts)
    y = f(*ts)
    check_output(y, max_numel)
    check_deterministic(f, ts)
    module_bytes = trace(f, ts, y)
    return f, Case(op, index, ts, out_index, module_bytes)


def judge(row, tf, fd):
    """The truth for one k and torch.func's status, from the row loop's gradients, torch.func's
    (or its error) and, where they disagree, the central differences (or why they failed)."""
    if not all(bool(torch.isfinite(g).all()) for g in row):
        raise Skip("non-finite truth")
    if fd is None:
        return row, "ok"
    if isinstance(fd, str):
        raise Skip(f"fd failed: {fd}")
    if all_close(row, fd, fd_close):
        return row, status(tf, row)
    if all_close(tf, fd, fd_close):
        return tf, "rowloop-wrong"
    raise Skip("undecided (non-smooth?)")


def decide(case, f, seed, warm):
    """Step 5: per k, R_k, the truth and torch.func's statuses (eager and warm)."""
    ts = case.ts
    gen = torch.Generator().manual_seed(seed_of(seed, case.id))
    jacs = row_loop_jacobians(f, ts, create_graph=True)
    rs = [torch.randn(jac.shape, generator=gen, dtype=torch.float64) for jac in jacs]
    row = [penalty_grads(jac, r, ts) for jac, r in zip(jacs, rs)]
    tf = [torch_func_grads(f, ts, k, r) for k, r in enumerate(rs)]
    doubtful = {k: rs[k] for k in range(len(ts)) if not all_close(tf[k], row[k])}
    fd = {}
    if doubtful:
        try:
            fd = finite_differences(f, ts, doubtful)
        except Exception as e:  # noqa: BLE001 - e.g. an output shape that depends on values
            fd = {k: first_line(e) for k in doubtful}
    for k, r in enumerate(rs):
        if isinstance(tf[k], str):
            case.errors.append((k, "eager", tf[k]))
        try:
            truth, tf_status = judge(row[k], tf[k], fd.get(k))
        except Skip as e:
            case.dropped.append(f"k={k}: {e}")
            continue
        case.r[k], case.truth[k], case.tf[k], case.fd[k] = r, truth, tf_status, k in doubtful
        if warm:
            gs = warm_torch_func_grads(case.module_bytes, ts, k, r)
            if isinstance(gs, str):
                case.errors.append((k, "warm", gs))
            case.tf_warm[k] = status(gs, truth)


# ----------------------------------------------------------------------------------------------
# Output


def as_array(t):
    # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
    return np.array(t.detach().cpu().numpy(), dtype=np.float64, order="C")


def write_case(out_dir, case):
    base = os.path.join(out_dir, "cases", case.id)
    with open(base + ".pt", "wb") as fh:
        fh.write(case.module_bytes)
    arrays = {f"t{j}": as_array(t) for j, t in enumerate(case.ts)}
    for k, gs in case.truth.items():
        arrays[f"r{k}"] = as_array(case.r[k])
        arrays.update({f"g{k}_{j}": as_array(g) for j, g in enumerate(gs)})
    np.savez(base + ".npz", **arrays)


def joined(values):
    return ",".join(str(v) for v in values)


def manifest_row(case, warm):
    ks = sorted(case.truth)
    return [
        case.id,
        case.op,
        case.variant,
        case.sample,
        len(case.ts),
        joined(ks),
        joined(case.tf[k] for k in ks),
        joined(case.tf_warm[k] for k in ks) if warm else "-",
        joined(int(case.fd[k]) for k in ks),
        case.out_index,
    ]


class Tsv:
    """A tab-separated file written line by line (flushed, so a running sweep can be read)."""

    def __init__(self, path, header):
        self.fh = open(path, "w")
        self.write(header)

    def write(self, fields):
        clean = [re.sub(r"[\t\n\r]+", " ", str(f)) for f in fields]
        self.fh.write("\t".join(clean) + "\n")
        self.fh.flush()

    def close(self):
        self.fh.close()


# ----------------------------------------------------------------------------------------------
# The sweep


def reason_category(reason):
    """A skip reason without its details: ``exception: TypeError``, ``trace``, ``output: empty``."""
    reason = re.sub(r"^k=\d+: ", "", reason)
    for prefix in ("exception", "trace", "fd failed"):
        if reason.startswith(prefix):
            parts = reason.split(": ")
            return ": ".join(parts[:2]) if prefix == "exception" else prefix
    return reason


class Sweep:
    """The output files and the counts of a run."""

    def __init__(self, args):
        self.args = args
        self.warm = not args.no_warm
        os.makedirs(os.path.join(args.out, "cases"), exist_ok=True)
        self.manifest = Tsv(os.path.join(args.out, "manifest.tsv"), MANIFEST_COLUMNS)
        self.skipped = Tsv(os.path.join(args.out, "skipped.tsv"), SKIPPED_COLUMNS)
        self.errors = Tsv(os.path.join(args.out, "errors.tsv"), ERRORS_COLUMNS)
        self.ops = 0
        self.cases = 0
        self.ks = 0
        self.fd = 0
        self.reasons = Counter()
        self.statuses = {"tf": Counter(), "tf_warm": Counter()}
        self.ops_by_status = {"tf": defaultdict(set), "tf_warm": defaultdict(set)}
        self.times = []

    def close(self):
        for tsv in (self.manifest, self.skipped, self.errors):
            tsv.close()

    def skip(self, op, index, reason):
        self.skipped.write([op.name, op.variant_test_name, index, reason])
        self.reasons[reason_category(reason)] += 1

    def run_op(self, op):
        """Up to ``--samples-per-op`` cases of one op; returns how many were written."""
        self.ops += 1
        written = 0
        seed_everything(seed_of(self.args.seed, op_key(op)))
        try:
            samples = op.sample_inputs(
                "cpu", torch.float64, requires_grad=True, small_inputs_only=True
            )
            for index, sample in enumerate(samples):
                if written >= self.args.samples_per_op:
                    break
                # The checks leave the samples' RNG stream alone: the same ids in every run.
                with torch.random.fork_rng(devices=[]):
                    written += self.run_sample(op, index, sample)
        except Exception as e:  # noqa: BLE001 - sample_inputs itself failing
            self.skip(op, "-", f"exception: sample_inputs: {type(e).__name__}: {first_line(e)}")
        return written

    def run_sample(self, op, index, sample):
        """One sample: writes its case (returns 1) or records why not (returns 0)."""
        try:
            f, case = prepare(op, index, sample, self.args.max_numel)
            decide(case, f, self.args.seed, self.warm)
        except Skip as e:
            self.skip(op, index, str(e))
            return 0
        except Exception as e:  # noqa: BLE001 - one failing op never stops the sweep
            self.skip(op, index, f"exception: {type(e).__name__}: {first_line(e)}")
            return 0
        for reason in case.dropped:
            self.skip(op, index, reason)
        for k, mode, message in case.errors:
            self.errors.write([case.id, k, mode, message])
        if not case.truth:
            return 0
        write_case(self.args.out, case)
        self.manifest.write(manifest_row(case, self.warm))
        self.count(case, op_key(op))
        return 1

    def count(self, case, key):
        self.cases += 1
        self.ks += len(case.truth)
        self.fd += sum(case.fd.values())
        for column in ("tf", "tf_warm"):
            for s in getattr(case, column).values():
                self.statuses[column][s] += 1
                self.ops_by_status[column][s].add(key)

    def run(self, ops):
        started = time.time()
        for i, op in enumerate(ops, 1):
            reason = ineligibility(op)
            if reason:
                self.skip(op, "-", f"not eligible: {reason}")
                continue
            t0 = time.time()
            written = self.run_op(op)
            took = time.time() - t0
            self.times.append((took, op_key(op)))
            print(f"[{i}/{len(ops)}] {op_key(op)}: {written} cases, {took:.1f} s", flush=True)
        self.close()
        self.print_summary(time.time() - started)

    def print_summary(self, elapsed):
        print()
        print(f"ops tried:        {self.ops}")
        print(f"cases written:    {self.cases} ({self.ks} k's, {self.fd} decided by FD)")
        columns = [("tf", "torch.func eager")] + [("tf_warm", "torch.func warm")] * self.warm
        for column, label in columns:
            counts = ", ".join(f"{s} {n}" for s, n in sorted(self.statuses[column].items()))
            print(f"{label + ':':18}{counts}")
            for s in ("wrong", "rowloop-wrong", "error"):
                ops = sorted(self.ops_by_status[column].get(s, ()))
                if ops:
                    print(f"  {s} ({len(ops)} ops): {', '.join(ops)}")
        print("skipped:")
        for reason, n in self.reasons.most_common():
            print(f"  {n:6}  {reason}")
        slowest = sorted(self.times, reverse=True)[:5]
        print("slowest ops:      " + ", ".join(f"{key} {t:.1f} s" for t, key in slowest))
        print(f"elapsed:          {elapsed:.1f} s", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Writes the second-order sweep's cases from PyTorch's OpInfo samples."
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ops", help="comma-separated op names (name or name.variant)")
    p.add_argument("--samples-per-op", type=int, default=3, metavar="K")
    p.add_argument("--max-numel", type=int, default=48, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warm", action="store_true", help="skip torch.func on the warm module")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    from torch.testing._internal.common_methods_invocations import op_db

    names = [n.strip() for n in args.ops.split(",") if n.strip()] if args.ops else None
    Sweep(args).run(select_ops(op_db, names))


if __name__ == "__main__":
    sys.exit(main())
