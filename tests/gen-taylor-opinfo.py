#!/usr/bin/env python3
"""Every collapsed Taylor rule against PyTorch's Hessian trace in f64 (tests/taylor_opinfo.rs):
tests/data/taylor_opinfo.

Run in the setup venv (scripts/gen-fixtures runs every tests/gen-*.py):
    $(scripts/setup-libtorch --quiet)/../../../../bin/python tests/gen-taylor-opinfo.py

Sweeps PyTorch's OpInfo database: every `UnaryUfuncInfo` and `BinaryUfuncInfo` with forward-mode
AD, autograd and gradgrad support in float64 on the CPU, a few other elementwise OpInfos
(EXTRA_UNARY), and hand-written reductions and shape ops (MANUAL). Each case is a closure
u: x [B=3, n=4] -> [B], u(x)[b] = Σ_j g(x)[b, j], with g per sample:

* unary    g = op(x, *args, **kwargs), x drawn inside the op's domain (away from 0, where the
           kinks are); args/kwargs: the non-tensor ones of the OpInfo's samples (up to 3
           distinct sets per op);
* binary   g = op(x, c), op(c, x), op(x, x) with a fixed constant c [4] (positive, like x, so
           that pow, xlogy, div and fmod stay smooth), and op(x, s) for a sample's number s; the
           samples' alpha / rounding_mode kwargs;
* manual   (MANUAL) reductions along the sample dim (prod, logsumexp, var, norm, ...), shape
           ops applied to h = sin(x)·c (a non-uniform second-order coefficient) and weighted by
           a non-uniform w so that a misplaced coefficient shows, ops whose OpInfo samples carry
           tensor arguments or dims across samples (clamp, prelu, glu, softmin, normalize), and
           the rules' less common paths (a nonzero input S, broadcasting, both operands with a
           jet, alpha/beta, keepdim, in-place ops, scalars).

Only per-sample closures: a case whose Hessian couples two samples is skipped.

A complex g is reduced to its real part. All cases are traced (torch.jit.trace_module) into ONE
module, cases.pt, one method per case (named by the index); the traced method is checked against
the eager closure. Files:

* cases.pt      the TorchScript module (float64)
* arrays.npz    x_<id> [3, 4] and ref_<id> [3]: Σ_i ∂²u[b]/∂x[b,i]², the diagonal of
                torch.autograd.functional.hessian (nested reverse mode) of Σ_b u[b]
* index.json    {"cases": [{id, op, variant, kind, form, kwargs, fwd_over_rev, fd}], "skipped":
                [{op, variant, form, reason}]}; fwd_over_rev is the trace by torch.func
                jacfwd(jacrev) (null when it fails), fd a central difference of the gradient
                (diagnostics: where they disagree with ref, PyTorch's double backward is the
                suspect, not the rule)

Cases whose reference is non-finite, and closures that do not trace, are skipped with the reason.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "taylor_opinfo")
B, N = 3, 4
rng = np.random.default_rng(2025)
C = torch.tensor([0.7, 1.3, 0.45, 1.1], dtype=torch.float64)  # the constant operand
W = torch.linspace(0.5, 1.5, 64, dtype=torch.float64)  # weights of the manual cases' outputs

EXTRA_UNARY = [
    "nn.functional.gelu", "nn.functional.leaky_relu", "nn.functional.hardswish",
    "nn.functional.hardsigmoid",
]


def uniform(lo, hi):
    return torch.from_numpy(rng.uniform(lo, hi, size=(B, N)))


def input_for(op):
    """x [B, N] inside the op's domain, |x| >= 0.15 (kinks and poles at 0)."""
    lo, hi = getattr(op, "domain", (None, None)) or (None, None)
    name = op.name
    if name in ("lgamma", "digamma", "polygamma", "special.polygamma", "mvlgamma", "special.entr"):
        lo = max(lo if lo is not None else 0.0, 0.0)  # poles at the non-positive integers
    if lo is not None and hi is not None:
        span = hi - lo
        return uniform(lo + 0.1 * span, hi - 0.1 * span)
    if lo is not None:
        return uniform(lo + 0.2, lo + 2.0)
    if hi is not None:
        return uniform(hi - 2.0, hi - 0.2)
    x = uniform(0.15, 1.5)
    sign = torch.from_numpy(rng.choice([-1.0, 1.0], size=(B, N)))
    return x * sign


def simple(v):
    return isinstance(v, (bool, int, float, str)) or v is None


def kw_repr(args, kwargs):
    return ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in sorted(kwargs.items())])


def sample_sets(op, want_tensor_other, limit=3):
    """Distinct (args, kwargs) of the op's samples with only simple values (binary ops: the
    first positional argument, `other`, is a tensor or a number and is reported separately)."""
    seen, out = set(), []
    try:
        samples = list(op.sample_inputs("cpu", torch.float64, requires_grad=False))
    except Exception as e:  # noqa: BLE001
        return [], f"sample_inputs failed: {e}"
    for s in samples:
        args = list(s.args)
        other = None
        if want_tensor_other:
            if not args:
                continue
            other = args.pop(0)
            other = "tensor" if isinstance(other, torch.Tensor) else other
            if other != "tensor" and not isinstance(other, (int, float)):
                continue
        if not all(simple(a) for a in args) or not all(simple(v) for v in s.kwargs.values()):
            continue
        if s.kwargs.get("training") is True:  # rrelu's random slopes
            continue
        key = (repr(other), kw_repr(args, s.kwargs))
        if key in seen:
            continue
        seen.add(key)
        out.append((other, tuple(args), dict(s.kwargs)))
        if len(out) >= limit:
            break
    return out, None


def real(t):
    if isinstance(t, (tuple, list)):  # frexp: the mantissa
        t = t[0]
    return t.real if t.is_complex() else t


def make_unary(fn, args, kwargs):
    def g(x):
        return real(fn(x, *args, **kwargs)).to(torch.float64).sum(-1)
    return g


def make_binary(fn, form, other, kwargs):
    def g(x):
        if form == "x_c":
            y = fn(x, C, **kwargs)
        elif form == "c_x":
            y = fn(C, x, **kwargs)
        elif form == "x_x":
            y = fn(x, x, **kwargs)
        else:
            y = fn(x, other, **kwargs)
        return real(y).to(torch.float64).sum(-1)
    return g


def weighted(g):
    """Σ_j w_j sin(g_j) over the flattened sample dims."""
    g2 = g.flatten(1)
    return (torch.sin(g2) * W[: g2.shape[1]]).sum(-1)


def h_of(x):
    return torch.sin(x) * C


MANUAL = {
    # reductions of x along the sample dim
    "sum_sq": lambda x: torch.sum(x * x * C, -1),
    "mean_cubed": lambda x: torch.mean(x, -1) * torch.mean(x, -1) * torch.mean(x, -1),
    "prod": lambda x: torch.prod(x, -1),
    "logsumexp": lambda x: torch.logsumexp(x, -1),
    "softmax": lambda x: (torch.softmax(x, -1) * C).sum(-1),
    "log_softmax": lambda x: (torch.log_softmax(x, -1) * C).sum(-1),
    "var": lambda x: torch.var(x, -1),
    "std": lambda x: torch.std(x, -1),
    "vector_norm": lambda x: torch.linalg.vector_norm(x, dim=-1),
    "norm_p3": lambda x: torch.norm(x, p=3, dim=-1),
    "amax": lambda x: torch.amax(x * x, -1),
    "cumsum": lambda x: weighted(torch.cumsum(h_of(x), -1)),
    "cumprod": lambda x: torch.cumprod(x, -1).sum(-1),
    "layer_norm": lambda x: weighted(torch.nn.functional.layer_norm(x, (N,), C, C, 1e-5)),
    "matmul_quad": lambda x: ((x @ torch.outer(C, C.flip(0))) * x).sum(-1),
    "linear_tanh": lambda x: weighted(torch.tanh(torch.nn.functional.linear(x, torch.outer(C, C) - 0.5, C))),
    "where": lambda x: torch.where(x > 0, x * x * x, torch.sin(x)).sum(-1),
    "clamp": lambda x: torch.clamp(x * x, 0.2, 0.9).sum(-1) + torch.clamp(x, min=-0.3).sum(-1),
    "prelu": lambda x: torch.nn.functional.prelu(x, torch.tensor([0.3], dtype=torch.float64)).sum(-1),
    "glu": lambda x: torch.nn.functional.glu(x, -1).sum(-1),
    "softmin": lambda x: (torch.nn.functional.softmin(x, -1) * C).sum(-1),
    "normalize": lambda x: (torch.nn.functional.normalize(x, dim=-1) * C).sum(-1),
    "pow_3": lambda x: torch.pow(x, 3).sum(-1),
    "pow_2": lambda x: torch.pow(x, 2).sum(-1),
    "pow_half": lambda x: torch.pow(x * x + 1, 0.5).sum(-1),
    "pow_neg_1_5": lambda x: torch.pow(x * x + 1, -1.5).sum(-1),
    # shape ops applied to h = sin(x)·c
    "flip": lambda x: weighted(torch.flip(h_of(x), [-1])),
    "roll": lambda x: weighted(torch.roll(h_of(x), 1, -1)),
    "transpose": lambda x: weighted(h_of(x).reshape(B, 2, 2).transpose(1, 2)),
    "permute": lambda x: weighted(h_of(x).reshape(B, 2, 2).permute(0, 2, 1)),
    "narrow": lambda x: weighted(h_of(x).narrow(1, 1, 2)),
    "select_unsqueeze": lambda x: weighted(h_of(x).select(1, 2).unsqueeze(1)),
    "index_select": lambda x: weighted(h_of(x).index_select(1, torch.tensor([3, 0, 0, 2]))),
    "gather": lambda x: weighted(h_of(x).gather(1, torch.tensor([[3, 0], [1, 1], [2, 0]]))),
    "index": lambda x: weighted(h_of(x)[:, torch.tensor([2, 3, 1])]),
    "cat": lambda x: weighted(torch.cat([h_of(x), x * x], -1)),
    "stack": lambda x: weighted(torch.stack([h_of(x), x * x], -1)),
    "repeat": lambda x: weighted(h_of(x).repeat(1, 2)),
    "expand": lambda x: weighted(h_of(x).unsqueeze(1).expand(B, 2, N)),
    "diag_embed": lambda x: weighted(torch.diag_embed(h_of(x))),
    "tril": lambda x: weighted(torch.tril(h_of(x).reshape(B, 2, 2))),
    "unfold": lambda x: weighted(h_of(x).unfold(1, 2, 1)),
    "constant_pad": lambda x: weighted(torch.nn.functional.pad(h_of(x), (1, 2), value=0.3)),
    "masked_fill": lambda x: weighted(h_of(x).masked_fill(torch.tensor([True, False, False, True]), 0.5)),
    "split": lambda x: weighted(torch.split(h_of(x), [1, 3], -1)[1] * torch.split(h_of(x), [1, 3], -1)[0]),
    "chunk_mul": lambda x: weighted(torch.chunk(h_of(x), 2, -1)[0] * torch.chunk(h_of(x), 2, -1)[1]),
    "diagonal": lambda x: weighted(torch.diagonal(torch.diag_embed(h_of(x)) + 1, 0, 1, 2)),
    "clone_contiguous": lambda x: weighted(h_of(x).t().clone().contiguous().t()),
    # the rules' less common paths: a nonzero input S, broadcasting, both operands with a jet,
    # alpha/beta, keepdim, a non-last dim, in-place ops, scalars
    "softmax_h_dim1": lambda x: weighted(torch.softmax(h_of(x).reshape(B, 2, 2), 1)),
    "log_softmax_h": lambda x: weighted(torch.log_softmax(h_of(x), -1)),
    "logsumexp_h_keepdim": lambda x: weighted(torch.logsumexp(h_of(x).reshape(B, 2, 2), 1, keepdim=True) * x.reshape(B, 2, 2)),
    "layer_norm_h_2d": lambda x: weighted(torch.nn.functional.layer_norm(h_of(x).reshape(B, 2, 2), (2, 2))),
    "layer_norm_noaffine": lambda x: weighted(torch.nn.functional.layer_norm(x * x, (N,))),
    "bmm_hh": lambda x: weighted(torch.bmm(h_of(x).reshape(B, 2, 2), x.reshape(B, 2, 2))),
    "matmul_3d_const": lambda x: weighted(h_of(x).reshape(B, 2, 2) @ torch.tensor([[0.3, -1.2], [0.8, 0.5]], dtype=torch.float64)),
    "matmul_const_3d": lambda x: weighted(torch.tensor([[0.3, -1.2], [0.8, 0.5]], dtype=torch.float64) @ h_of(x).reshape(B, 2, 2)),
    "matmul_vec": lambda x: weighted((h_of(x) @ C).unsqueeze(1) * x),
    "matmul_batched_vec": lambda x: weighted(h_of(x).reshape(B, 2, 2) @ x[:, :2].unsqueeze(-1)),
    "addmm_tracked_bias": lambda x: weighted(torch.addmm(x * x, h_of(x), torch.outer(C, C) - 0.5, beta=0.5, alpha=2.0)),
    "addmm_const_bias": lambda x: weighted(torch.addmm(C, h_of(x), torch.outer(C, C.flip(0)), beta=1.5, alpha=-0.5)),
    "linear_h_nobias": lambda x: weighted(torch.nn.functional.linear(h_of(x), torch.outer(C, C.flip(0))[:3])),
    "mul_broadcast": lambda x: weighted(x[:, :1] * h_of(x)),
    "add_broadcast_alpha": lambda x: weighted(torch.add(h_of(x).sum(-1, keepdim=True), x * x, alpha=-2.5)),
    "sub_alpha_tracked": lambda x: weighted(torch.sub(h_of(x), x * x, alpha=0.75)),
    "rsub_tensor": lambda x: weighted(torch.rsub(h_of(x), x * x, alpha=1.5)),
    "scalar_arith": lambda x: weighted((2.0 - h_of(x) * 2.5 + 1.0) / 3.0),
    "div_tracked": lambda x: weighted(h_of(x) / (x * x + 1)),
    "div_const_tensor": lambda x: weighted(h_of(x) / C),
    "rdiv_scalar": lambda x: weighted(1.5 / (x * x + 1)),
    "where_const_branch": lambda x: weighted(torch.where(x > 0, h_of(x), C)),
    "where_const_first": lambda x: weighted(torch.where(x > 0, C, h_of(x) * x)),
    "mean_keepdim_h": lambda x: weighted(h_of(x).mean(-1, keepdim=True) * h_of(x)),
    "sum_all_dims": lambda x: torch.stack([h_of(x)[b].sum() ** 2 for b in range(B)]),
    "squeeze_all": lambda x: weighted(h_of(x).unsqueeze(1).unsqueeze(-1).squeeze() * x),
    "unbind": lambda x: weighted(torch.unbind(h_of(x), 1)[0].unsqueeze(1) * torch.unbind(h_of(x), 1)[3].unsqueeze(1)),
    "expand_column": lambda x: weighted(h_of(x)[:, 1:2].expand(B, N) * x),
    "copy_into_zeros": lambda x: weighted(torch.zeros(B, N, dtype=torch.float64).copy_(h_of(x)) * x),
    "inplace_chain": lambda x: weighted(h_of(x).clone().mul_(x).add_(x * x, alpha=0.5).div_(1.5).tanh_()),
    "inplace_unary": lambda x: weighted(((((x * x + 0.5).sqrt_() + 0.0).exp_() * 0.2).log_() + 0.0).sigmoid_()),
    "cat_const_piece": lambda x: weighted(torch.cat([C.expand(B, N), h_of(x)], -1) * torch.cat([x, x * x], -1)),
    "stack_dim1": lambda x: weighted(torch.stack([h_of(x), C.expand(B, N)], 1)),
    "masked_fill_tensor_value": lambda x: weighted(h_of(x).masked_fill(torch.tensor([False, True, False, True]), torch.tensor(0.25, dtype=torch.float64)) * x),
    "triu_h": lambda x: weighted(torch.triu(h_of(x).reshape(B, 2, 2)) * x.reshape(B, 2, 2)),
    "tanh_of_h": lambda x: weighted(torch.tanh(h_of(x) * x)),
    "sqrt_rsqrt_h": lambda x: weighted(torch.sqrt(h_of(x) * h_of(x) + 1) + torch.rsqrt(x * x + 0.5)),
    "softplus_default": lambda x: weighted(torch.nn.functional.softplus(h_of(x) * 3)),
    "leaky_relu_slope": lambda x: weighted(torch.nn.functional.leaky_relu(h_of(x) * x, 0.2)),
    "hardtanh_h": lambda x: weighted(torch.nn.functional.hardtanh(h_of(x) * 2, -0.6, 0.4) * x),
    "clamp_max_only": lambda x: weighted(torch.clamp(h_of(x), max=0.2) * x),
    "abs_relu_h": lambda x: weighted(torch.abs(h_of(x)) * x + torch.relu(h_of(x)) * x * x),
    "pow_1_0": lambda x: weighted(torch.pow(h_of(x), 1) * torch.pow(x, 0) * x),
    "gelu_h": lambda x: weighted(torch.nn.functional.gelu(h_of(x) * 2) + torch.nn.functional.gelu(x * x, approximate="tanh")),
    "silu_logsigmoid_h": lambda x: weighted(torch.nn.functional.silu(h_of(x) * 2) + torch.nn.functional.logsigmoid(x * h_of(x))),
    "neg_positive_h": lambda x: weighted(-(+h_of(x)) * x),
}


def reference(u, x):
    """(Σ_i ∂²u[b]/∂x[b,i]² by nested reverse mode, by forward-over-reverse or None, by a
    central difference of the gradient)."""
    def total(x):
        return u(x).sum()
    H = torch.autograd.functional.hessian(total, x).reshape(B, N, B, N)
    for b in range(B):
        H[b, :, b, :] = 0
    if torch.nan_to_num(H, nan=0.0).abs().max() != 0:
        raise ValueError("u couples the samples (an off-diagonal block of the Hessian)")
    H = torch.autograd.functional.hessian(total, x).reshape(B * N, B * N)
    ref = H.diagonal().reshape(B, N).sum(-1)
    try:
        H2 = torch.func.jacfwd(torch.func.jacrev(total))(x).reshape(B * N, B * N)
        fwd = H2.diagonal().reshape(B, N).sum(-1)
    except Exception:  # noqa: BLE001
        fwd = None

    def grad(x):
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(total(x), x)
        return g
    eps = 1e-5
    fd = torch.zeros(B, dtype=torch.float64)
    for i in range(N):
        e = torch.zeros_like(x)
        e[:, i] = eps
        fd += ((grad(x + e) - grad(x - e))[:, i]) / (2 * eps)
    return ref, fwd, fd


def main():
    try:
        import expecttest  # noqa: F401 - PyTorch's OpInfo database imports it
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check", "expecttest"])
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.opinfo.core import BinaryUfuncInfo, UnaryUfuncInfo

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    candidates = []  # (op name, variant, kind, form, kwargs text, closure, x)
    skipped = []
    swept = []

    def eligible(op):
        return (op.supports_autograd and op.supports_forward_ad and op.supports_gradgrad
                and op.supports_dtype(torch.float64, "cpu"))

    for op in op_db:
        is_unary = isinstance(op, UnaryUfuncInfo) or op.name in EXTRA_UNARY
        is_binary = isinstance(op, BinaryUfuncInfo)
        if not (is_unary or is_binary):
            continue
        label = (op.name, op.variant_test_name)
        if not eligible(op):
            continue
        swept.append(label)
        sets, err = sample_sets(op, want_tensor_other=is_binary)
        if err or not sets:
            skipped.append({"op": op.name, "variant": op.variant_test_name, "form": "",
                            "reason": err or "no sample with only simple (non-tensor) arguments"})
            continue
        if is_unary:
            x = input_for(op)
            for _, args, kwargs in sets:
                candidates.append((op.name, op.variant_test_name, "unary", "x",
                                   kw_repr(args, kwargs), make_unary(op.op, args, kwargs), x))
        else:
            x = uniform(0.3, 1.5)
            done = set()
            for other, args, kwargs in sets:
                if args:
                    continue
                forms = ["x_c", "c_x", "x_x"] if other == "tensor" else ["x_s"]
                for form in forms:
                    key = (form, kw_repr((), kwargs), repr(other) if form == "x_s" else "")
                    if key in done:
                        continue
                    done.add(key)
                    text = kw_repr((), kwargs)
                    if form == "x_s":
                        text = kw_repr((other,), kwargs)
                    candidates.append((op.name, op.variant_test_name, "binary", form, text,
                                       make_binary(op.op, form, other, kwargs), x))
    for name, fn in MANUAL.items():
        swept.append((name, "manual"))
        candidates.append((name, "", "manual", "x", "", fn, uniform(-1.5, 1.5)))

    class Cases(torch.nn.Module):
        pass

    good = []
    for i, (op, variant, kind, form, text, fn, x) in enumerate(candidates):
        entry = {"op": op, "variant": variant, "form": form}
        ident = f"c{i:03d}_" + re.sub(r"[^A-Za-z0-9]+", "_", f"{op}_{variant}_{form}").strip("_")
        try:
            y = fn(x)
            assert y.shape == (B,) and y.dtype == torch.float64, f"u(x) is {y.dtype} {tuple(y.shape)}"
            ref, fwd, fd = reference(fn, x)
        except Exception as e:  # noqa: BLE001
            skipped.append({**entry, "reason": f"eager/reference failed: {str(e).splitlines()[0][:160]}"})
            continue
        if not (torch.isfinite(ref).all() and torch.isfinite(y).all()):
            skipped.append({**entry, "reason": "non-finite reference or value"})
            continue
        try:
            traced = torch.jit.trace(fn, (x,), check_trace=False)
            ok = torch.equal(traced(x), y) or torch.allclose(traced(x), y, rtol=1e-14, atol=0)
            assert ok, "traced closure differs from the eager one"
        except Exception as e:  # noqa: BLE001
            skipped.append({**entry, "reason": f"not traceable: {str(e).splitlines()[0][:160]}"})
            continue
        setattr(Cases, ident, (lambda f: lambda self, x: f(x))(fn))
        good.append({"id": ident, "op": op, "variant": variant, "kind": kind, "form": form,
                     "args": text, "x": x, "ref": ref,
                     "fwd_over_rev": None if fwd is None else fwd.tolist(),
                     "fd": fd.tolist()})

    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    module = torch.jit.trace_module(Cases(), {c["id"]: (c["x"],) for c in good}, check_trace=False)
    path = os.path.join(OUT, "cases.pt")
    torch.jit.save(module, path)
    loaded = torch.jit.load(path)
    for c in good:
        y = getattr(loaded, c["id"])(c["x"])
        assert torch.allclose(y, candidates[int(c["id"][1:4])][5](c["x"]), rtol=1e-14, atol=0), c["id"]
    arrays = {}
    for c in good:
        arrays[f"x_{c['id']}"] = c.pop("x").numpy()
        arrays[f"ref_{c['id']}"] = c.pop("ref").numpy()
    np.savez(os.path.join(OUT, "arrays.npz"), **arrays)
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump({"swept": [f"{n}{'.' + v if v else ''}" for n, v in swept],
                   "cases": good, "skipped": skipped}, f, indent=1)
        f.write("\n")
    suspect = [c["id"] for c in good
               if not np.allclose(c["fd"], np.load(os.path.join(OUT, "arrays.npz"))[f"ref_{c['id']}"],
                                  rtol=1e-5, atol=1e-6)]
    print(f"{len(swept)} ops swept, {len(good)} cases, {len(skipped)} skipped; "
          f"reference differs from a central difference in {suspect}")


if __name__ == "__main__":
    main()
