#!/usr/bin/env python3
"""tch-jacobian vs PyTorch, side by side, on one machine and one thread count.

Run through ``scripts/compare-pytorch`` (which builds the Rust side first). This script

1. writes the inputs of every case (``W``, ``x`` and PyTorch's ``J`` from ``torch.func.jacrev``)
   as ``.npy`` files and a ``manifest.json`` into ``--work``;
2. for each case, times the PyTorch anchors here and then runs the Rust side
   (``bench/src/bin/compare.rs``) on the same files, which checks its ``J`` against PyTorch's;
3. prints a Markdown report (medians, ratios ours / theirs, agreement, targets met / missed)
   to stdout and to ``--out``.

Model: the notebook's ``F(x) = sigmoid(W x)``, written row-wise as ``f(x) = sigmoid(x @ W.T)`` on
both sides (so that it also maps ``[c, n] -> [c, m]``). Float32, CPU.

The Laplacian rows (``--only laplacian``; also part of the full run): Δu and the PINN loss
mean(Δu²) + backward of tanh MLPs with biases (2/32 → 64 → 64 → 1 at B = 1024, and the collapsed
Taylor mode paper's 50 → 768 → 768 → 512 → 512 → 1 at B = 64) against the nested autograd loop,
vmap(hessian) and jet-for-pytorch's collapsed and standard Taylor mode, plus the peak memory of the
paper's MLP (one process per method); and the same for a CNN PINN (a 1×8×8 field, d = 64: conv
8@3×3, tanh, conv 8@3×3 stride 2, tanh, Linear 128 → 1, B = 256; a jet that raises on a row shows
"n/a" there). jet is not a dependency: ``bench/install-jet`` puts it in a cache folder outside the
repository (``$TCH_JACOBIAN_JET_DIR``, default ``~/.cache/tch-jacobian/jet``); without it, its
columns are skipped with a note.

The batched least-squares rows (``--only least-squares``, not part of the full run): tch-jacobian's
``least_squares`` against SciPy's loop, torchimize, pypose and Theseus on issue 31's curve fits, f64
(bench/compare_least_squares.py; ``--lsq-b``, ``--lsq-repeats``, ``--lsq-slow``).

Timing rule (identical on both sides): one call (a case whose first call takes longer than
``--skip-over`` seconds is reported as skipped), a warm-up of up to three calls, then
repetitions until ``--budget`` seconds have passed and at least ``--min-reps`` ran; the median.
All cells are measured in ``--rounds`` rounds (PyTorch then ours, case by case) and the fastest
round's median is reported: on a shared machine this filters out other processes' bursts.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from torch.autograd.functional import jacobian as afj
from torch.func import grad, jacfwd, jacrev, vmap

# (name, m outputs, n inputs); batch: B samples of 784 -> 64.
SINGLE = [("3", 3, 3), ("64", 64, 64), ("256", 256, 256), ("1024", 1024, 1024), ("tall", 1024, 16)]
BATCH = ("batch", 128, 64, 784)
# The exact CAE penalty: B samples of 784 -> 256, forward + penalty + backward to W.
PENALTY = ("penalty", 128, 256, 784)
# Per-sample gradients of a 784 -> 64 -> 10 tanh MLP's cross-entropy, B = 64 (j_ref: those of W1).
PSG = ("psg", 64, 64, 784)
# The same per-sample gradients at DP-SGD batch sizes.
PSG_LARGE = [("psg256", 256, 64, 784), ("psg1024", 1024, 64, 784)]
# The Hessian of f(x) = sum(tanh(W x)^2), n = 128.
HESSIAN = ("hessian", 128)
# Many products at once: k = 64 VJPs and k = 64 JVPs of sigmoid(W x), n = m = 256.
PRODUCTS = ("products", 64, 256)
# Second order through layer_norm's weight: the sensitivity penalty ‖∂h/∂γ‖_F² of
# h = layer_norm(x Wᵀ; γ, β) (B samples, J of every output with respect to γ: [B·m, m]) and its
# gradient to W. torch.func's jacrev gives a wrong value here (pytorch/functorch#534: the batching
# rule of layer_norm's backward forms ∂h/∂γ from the saved statistics as constants); the truth
# (J_ref) is PyTorch's autograd row loop.
NORM2 = ("ln2", 8, 32, 32)
# Per-sample gradients beyond the MLP with cross-entropy: the same MLP with MSE against one-hot
# targets, and a small conv net (conv 1 -> 8, 5x5, stride 2, tanh, linear 1152 -> 10) with
# cross-entropy, at DP-SGD batch sizes (j_ref: the per-sample gradients of W1 / of the conv weight).
PSG_MORE = [(f"{k}{b}", k, b) for k in ("mse", "conv") for b in (64, 256, 1024)]
# PINN: u = tanh(tanh(x W1ᵀ) W2ᵀ) W3ᵀ, d -> 64 -> 64 -> 1, B = 1024; the Laplacian loss mean((Δu)²)
# or the Hessian loss Σ‖H_b‖²/B, and its gradient to W1 (j_ref).
PINN = [(f"{op}{d}", op, 1024, d) for op in ("lap", "hess") for d in (2, 32)]
# The Laplacian of PINN MLPs (tanh between Linear layers with bias, PyTorch's default init, linear
# output): Δu alone ("fwd") and the loss mean(Δu²) + backward to all weights ("loss"), against the
# nested autograd loop, vmap(hessian) and jet-for-pytorch's Taylor mode (bench/install-jet).
# (name, work, B, widths); "50" is the collapsed-Taylor-mode paper's MLP.
LAP_ARCH = {"2": (1024, [2, 64, 64, 1]), "32": (1024, [32, 64, 64, 1]), "50": (64, [50, 768, 768, 512, 512, 1])}
LAPMLP = [(f"lap{work}{a}", work, b, widths) for a, (b, widths) in LAP_ARCH.items() for work in ("fwd", "loss")]
# A CNN PINN in the same group (kind "lapmlp", net "cnn"): u(x) for x a 1×8×8 field flattened to
# d = 64 inputs per sample, conv2d(1 → 8, 3×3, padding 1) → tanh → conv2d(8 → 8, 3×3, stride 2,
# padding 1) → tanh → flatten → Linear(8·4·4 → 1), PyTorch's default init; B = 256 (one nested-loop
# call: 0.14 s for Δu, 0.32 s for the loss on 2 idle cores; a loaded machine makes the convolutions'
# double backward many times slower). (name, work, B); compare.rs builds the same net from the same
# .npy weights.
CNN_FIELD = (1, 8, 8)
LAPCNN = [(f"lap{work}cnn", work, 256) for work in ("fwd", "loss")]
# --only GROUP: named groups of cases.
GROUPS = {"laplacian": [c[0] for c in LAPMLP] + [c[0] for c in LAPCNN]}
LABEL = {
    "3": "n=m=3",
    "64": "n=m=64",
    "256": "n=m=256",
    "1024": "n=m=1024",
    "tall": "16→1024",
    "batch": "B=128, 784→64",
    "penalty": "exact CAE penalty, B=128, 784→256",
    "psg": "per-sample gradients, B=64, 784→64→10",
    "psg256": "per-sample gradients, B=256, 784→64→10",
    "psg1024": "per-sample gradients, B=1024, 784→64→10",
    "hessian": "Hessian, n=128",
    "products": "64 VJPs and 64 JVPs at once, n=m=256",
    **{f"mse{b}": f"per-sample gradients, MSE, B={b}, 784→64→10" for b in (64, 256, 1024)},
    **{f"conv{b}": f"per-sample gradients, conv net, B={b}, 28×28 → conv 8@5×5/2 → 10" for b in (64, 256, 1024)},
    **{f"lap{d}": f"PINN Laplacian loss + backward, B=1024, {d}→64→64→1" for d in (2, 32)},
    **{f"hess{d}": f"PINN per-sample Hessian loss + backward, B=1024, {d}→64→64→1" for d in (2, 32)},
    "ln2": "second order through layer_norm's weight: ‖∂h/∂γ‖² of h = layer_norm(x Wᵀ; γ, β), B=8, 32→32",
    **{name: f"PINN MLP {' → '.join(map(str, widths))}, B = {b}: "
       f"{'Δu only' if work == 'fwd' else 'loss mean(Δu²) + backward to the weights'}"
       for name, work, b, widths in LAPMLP},
    **{name: f"PINN CNN 1×8×8 (d = 64) → conv 8@3×3 → tanh → conv 8@3×3/2 → tanh → 128 → 1, B = {b}: "
       f"{'Δu only' if work == 'fwd' else 'loss mean(Δu²) + backward to the weights'}"
       for name, work, b in LAPCNN},
}

# Pairs (ours, theirs) for the ratio table.
SINGLE_PAIRS = [
    ("row-loop (jacobian)", "notebook loop (autograd.grad per row)"),
    ("row-loop (jacobian)", "autograd.functional.jacobian (vectorize=False)"),
    ("batched (jacobian_of)", "torch.func.jacrev"),
    ("auto (jacobian_with)", "best of PyTorch"),
    ("vectorized (jacobian_of)", "autograd.functional.jacobian (vectorize=True)"),
    ("vectorized (jacobian_of)", "torch.func.jacrev"),
    ("forward (jacobian_of)", "torch.func.jacfwd"),
    ("vectorized-forward (jacobian_of)", "torch.func.jacfwd"),
    ("auto (jacobian_of)", "torch.func.jacrev"),
    ("auto (jacobian_of)", "best of PyTorch"),
    ("best of ours", "best of PyTorch"),
    ("closed form", "closed form"),
]
BATCH_PAIRS = [
    ("row-loop (per_sample_jacobian_of)", "row loop (autograd.grad of y[:, i].sum())"),
    ("batched (per_sample_jacobian_of)", "vmap(jacrev)"),
    ("auto (per_sample_jacobian)", "vmap(jacrev)"),
    ("vectorized (per_sample_jacobian_of)", "vmap(jacrev)"),
    ("forward (per_sample_jacobian_of)", "vmap(jacfwd)"),
    ("vectorized-forward (per_sample_jacobian_of)", "vmap(jacfwd)"),
    ("auto (per_sample_jacobian_of)", "vmap(jacrev)"),
    ("best of ours", "best of PyTorch"),
    ("closed form", "closed form"),
]
OUR_STRATEGIES = ("row-loop", "batched", "vectorized", "forward", "vectorized-forward", "auto")


DEVICE = "cpu"
WORK = "target/compare-pytorch"


def sync():
    """Waits for the GPU before a clock read (a no-op on the CPU)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def measure(fn, rule):
    """Returns (timing dict, first result) by the shared rule."""
    sync()
    t0 = time.perf_counter()
    first = fn()
    sync()
    first_s = time.perf_counter() - t0
    if first_s > rule["skip_over_s"]:
        return {"skipped_s": first_s}, first
    warm = time.perf_counter()
    for _ in range(3):
        if time.perf_counter() - warm > 0.1 * rule["budget_s"]:
            break
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < rule["max_reps"] and (
        len(times) < rule["min_reps"] or time.perf_counter() - start < rule["budget_s"]
    ):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "reps": len(times)}, first


def make_inputs(work):
    """Writes W, x, J_ref (.npy, float32) per case and returns the manifest's cases."""
    torch.manual_seed(0)
    cases = []
    for name, m, n in SINGLE:
        if name == "3":  # the notebook's own numbers
            w = torch.tensor([[0.1, 0.3, 0.6], [1.5, 0.3, 4.1], [0.2, -0.3, -0.7]])
            x = torch.tensor([2.0, 1.0, 1.0])
        else:
            w = torch.randn(m, n) / math.sqrt(n)
            x = torch.randn(n)
        cases.append({"name": name, "kind": "single", "m": m, "n": n, "w": w, "x": x})
    name, b, m, n = BATCH
    w = torch.randn(m, n) / math.sqrt(n)
    x = torch.randn(b, n)
    cases.append({"name": name, "kind": "batch", "b": b, "m": m, "n": n, "w": w, "x": x})
    name, b, m, n = PENALTY
    w = torch.randn(m, n) / math.sqrt(n)
    x = torch.rand(b, n)
    cases.append({"name": name, "kind": "penalty", "b": b, "m": m, "n": n, "w": w, "x": x})
    for name, b, m, n in [PSG] + PSG_LARGE:
        w, x = torch.randn(m, n) / math.sqrt(n), torch.randn(b, n)
        w2, t = torch.randn(10, m) / math.sqrt(m), torch.arange(b) % 10
        cases.append({"name": name, "kind": "psg", "b": b, "m": m, "n": n, "w": w, "x": x,
                      "extra": {"w2": w2, "t": t}})
    name, n = HESSIAN
    w, x = torch.randn(n, n) / math.sqrt(n), torch.randn(n)
    cases.append({"name": name, "kind": "hessian", "m": n, "n": n, "w": w, "x": x})
    name, k, n = PRODUCTS
    w, x = torch.randn(n, n) / math.sqrt(n), torch.randn(n)
    vs, us = torch.randn(k, n), torch.randn(k, n)
    cases.append({"name": name, "kind": "products", "m": n, "n": n, "w": w, "x": x,
                  "extra": {"v": vs, "u": us}})
    name, b, m, n = NORM2
    w, x = torch.randn(m, n) / math.sqrt(n), torch.randn(b, n)
    cases.append({"name": name, "kind": "norm2", "b": b, "m": m, "n": n, "w": w, "x": x})
    for name, k, b in PSG_MORE:
        t = torch.arange(b) % 10
        if k == "mse":
            w, x, w2 = torch.randn(64, 784) / 28, torch.randn(b, 784), torch.randn(10, 64) / 8
            t = torch.nn.functional.one_hot(t, 10).float()  # (one_hot cannot run under vmap)
            cases.append({"name": name, "kind": "psg_mse", "b": b, "m": 64, "n": 784, "w": w, "x": x,
                          "extra": {"w2": w2, "t": t}})
        else:
            w, x, w2 = torch.randn(8, 1, 5, 5) / 5, torch.randn(b, 1, 28, 28), torch.randn(10, 1152) / 34
            cases.append({"name": name, "kind": "psg_conv", "b": b, "m": 8, "n": 25, "w": w, "x": x,
                          "extra": {"w2": w2, "t": t}})
    for name, op, b, d in PINN:
        w, x = torch.randn(64, d) / math.sqrt(d), torch.randn(b, d)
        w2, w3 = torch.randn(64, 64) / 8, torch.randn(1, 64) / 8
        cases.append({"name": name, "kind": "pinn", "op": op, "b": b, "m": 1, "n": d, "w": w, "x": x,
                      "extra": {"w2": w2, "w3": w3}})
    for name, op, b, widths in LAPMLP:
        # PyTorch's nn.Linear init (U(±1/√fan_in) for W and b), per architecture from its own seed
        # (the same weights for the Δu and the loss row).
        torch.manual_seed(1000 + widths[0])
        layers = [torch.nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:])]
        params = [t.detach().clone() for lin in layers for t in (lin.weight, lin.bias)]
        x = torch.randn(b, widths[0])
        extra = {f"{k}{i // 2 + 1}": t for i, (k, t) in enumerate(zip(("w", "b") * len(layers), params))}
        # PyTorch's float32 Δu (nested loop): the Rust side checks its own against it before timing.
        extra["lap_f32"] = lap_nested(mlp_u(params), x, False).detach()
        cases.append({"name": name, "kind": "lapmlp", "net": "mlp", "work": op, "b": b, "m": 1, "n": widths[0],
                      "widths": widths, "layers": len(layers), "w": params[0], "x": x, "extra": extra})
    for name, op, b in LAPCNN:
        # PyTorch's nn.Conv2d / nn.Linear init, from the net's own seed (the same weights for the Δu
        # and the loss row); params = [conv1 W, b, conv2 W, b, linear W, b] as w1, b1, …, b3.
        # (the seed: 1000 + d as for the MLP rows, + 1 so that an MLP row with d = 64 would differ)
        torch.manual_seed(1000 + math.prod(CNN_FIELD) + 1)
        mods = [torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
                torch.nn.Linear(8 * 4 * 4, 1)]
        params = [t.detach().clone() for mod in mods for t in (mod.weight, mod.bias)]
        n = math.prod(CNN_FIELD)
        x = torch.randn(b, n)
        extra = {f"{k}{i // 2 + 1}": t for i, (k, t) in enumerate(zip(("w", "b") * len(mods), params))}
        extra["lap_f32"] = lap_nested(cnn_u(params), x, False).detach()
        cases.append({"name": name, "kind": "lapmlp", "net": "cnn", "work": op, "b": b, "m": 1, "n": n,
                      "field": list(CNN_FIELD), "layers": len(mods), "w": params[0], "x": x, "extra": extra})
    manifest = []
    for c in cases:
        w, x = c.pop("w"), c.pop("x")
        f = lambda v, w=w: torch.sigmoid(v @ w.T)  # noqa: E731
        if c["kind"] == "single":
            j = jacrev(f)(x)
        elif c["kind"] == "batch":
            j = vmap(jacrev(f))(x)
        elif c["kind"] == "psg":
            j = per_sample_grads(w, x, c["extra"]["w2"], c["extra"]["t"])
        elif c["kind"] == "hessian":
            j = torch.func.hessian(hessian_f(w))(x)
        elif c["kind"] == "norm2":  # the truth: PyTorch's row loop
            j = norm2_grad_rows(w, x)
        elif c["kind"] in ("psg_mse", "psg_conv"):
            j = psg_more(c["kind"], w, x, c["extra"]["w2"], c["extra"]["t"])
        elif c["kind"] == "pinn":  # the autograd loop (agrees with vmap(hessian) to float32)
            j = pinn_grad_loop(c["op"], w, x, c["extra"]["w2"], c["extra"]["w3"])
        elif c["kind"] == "lapmlp":  # the truth: the nested loop in float64 (Δu, or the loss's dW1)
            p64 = [c["extra"][f"{k}{i}"].double() for i in range(1, c["layers"] + 1) for k in "wb"]
            j = lap_truth(c["work"], p64, x.double(), c["net"])
        elif c["kind"] == "products":  # both stacks of products, [2k, n]
            j = torch.cat(products(w, x, c["extra"]["v"], c["extra"]["u"]))
        else:  # the penalty's gradient with respect to W
            j = penalty_grad(w, x)
        for key, t in list(c.get("extra", {}).items()):
            fname = f"{c['name']}_{key}.npy"
            np.save(os.path.join(work, fname), t.numpy())
            c["extra"][key] = fname
        for key, t in (("w", w), ("x", x), ("j_ref", j)):
            fname = f"{c['name']}_{key}.npy"
            np.save(os.path.join(work, fname), np.ascontiguousarray(t.detach().numpy().astype(np.float32)))
            c[key] = fname
        manifest.append(c)
    return manifest


def penalty_grad(w, x):
    """d/dW of mean_b ‖J_b‖_F² for h = sigmoid(x Wᵀ), J by vmap(jacrev): the exact CAE penalty."""
    wg = w.detach().requires_grad_(True)
    j = vmap(jacrev(lambda v: torch.sigmoid(v @ wg.T)))(x)
    p = j.pow(2).sum((1, 2)).mean()
    return torch.autograd.grad(p, wg)[0]


def ln_h(v, w, gamma):
    """layer_norm(v Wᵀ; γ, β = 0) over the last dimension."""
    return torch.nn.functional.layer_norm(v @ w.T, (w.shape[0],), gamma, torch.zeros_like(gamma))


def norm2_grad_rows(w, x):
    """d/dW of ‖∂h/∂γ‖_F² at γ = 1, J by an autograd row loop with create_graph (the truth)."""
    wg = w.detach().requires_grad_(True)
    gamma = torch.ones(w.shape[0], device=w.device, requires_grad=True)
    h = ln_h(x, wg, gamma).reshape(-1)
    rows = [torch.autograd.grad(h[i], gamma, create_graph=True)[0] for i in range(h.numel())]
    return torch.autograd.grad(torch.stack(rows).pow(2).sum(), wg)[0]


def norm2_grad_jacrev(w, x):
    """The same by torch.func.jacrev: wrong (pytorch/functorch#534)."""
    wg = w.detach().requires_grad_(True)
    gamma = torch.ones(w.shape[0], device=w.device)
    j = jacrev(lambda g: ln_h(x, wg, g))(gamma)
    return torch.autograd.grad(j.pow(2).sum(), wg)[0]


def psg_loss(params, x, t, w2):
    """Cross-entropy of one sample through tanh(x W1ᵀ) W2ᵀ, as a function of W1."""
    logits = torch.tanh(x @ params["w1"].T) @ w2.T
    return torch.nn.functional.cross_entropy(logits.unsqueeze(0), t.unsqueeze(0))


def per_sample_grads(w1, x, w2, t):
    """vmap(grad(...)) over the samples: per-sample gradients with respect to W1, [B, 64, 784]."""
    return vmap(grad(psg_loss), in_dims=(None, 0, 0, None))({"w1": w1}, x, t, w2)["w1"]


def psg_more_loss(kind):
    """The loss of one sample as a function of W1 (MLP, MSE) or of the conv weight (conv net, CE)."""
    if kind == "psg_mse":
        def loss(params, x, t, w2):
            out = torch.tanh(x @ params["w"].T) @ w2.T
            return torch.nn.functional.mse_loss(out, t)  # t: the one-hot target row
    else:
        def loss(params, x, t, w2):
            h = torch.tanh(torch.nn.functional.conv2d(x.unsqueeze(0), params["w"], stride=2))
            return torch.nn.functional.cross_entropy(h.flatten(1) @ w2.T, t.unsqueeze(0))
    return loss


def psg_more(kind, w, x, w2, t):
    """vmap(grad(...)) per-sample gradients for the MSE MLP and the conv net."""
    return vmap(grad(psg_more_loss(kind)), in_dims=(None, 0, 0, None))({"w": w}, x, t, w2)["w"]


def pinn_u(w1, w2, w3):
    return lambda v: (torch.tanh(torch.tanh(v @ w1.T) @ w2.T) @ w3.T).squeeze(-1)


def pinn_loss(op, h_or_lap, b):
    return h_or_lap.pow(2).mean() if op == "lap" else h_or_lap.pow(2).sum() / b


def pinn_grad_func(op, w1, x, w2, w3):
    """vmap(hessian(u)) per sample, the loss, and its gradient to W1."""
    w1g = w1.detach().requires_grad_(True)
    h = vmap(torch.func.hessian(pinn_u(w1g, w2, w3)))(x)
    t = h.diagonal(dim1=1, dim2=2).sum(-1) if op == "lap" else h
    return torch.autograd.grad(pinn_loss(op, t, x.shape[0]), w1g)[0]


def pinn_grad_loop(op, w1, x, w2, w3):
    """The PINN codes' autograd loop: ∇u with create_graph, then one pass per input dimension."""
    w1g = w1.detach().requires_grad_(True)
    xg = x.detach().requires_grad_(True)
    g = torch.autograd.grad(pinn_u(w1g, w2, w3)(xg).sum(), xg, create_graph=True)[0]
    rows = [torch.autograd.grad(g[:, i].sum(), xg, create_graph=True)[0] for i in range(x.shape[1])]
    t = sum(r[:, i] for i, r in enumerate(rows)) if op == "lap" else torch.stack(rows, 1)
    return torch.autograd.grad(pinn_loss(op, t, x.shape[0]), w1g)[0]


def mlp_u(params):
    """u(x) of the Laplacian cases, row-wise ([..., d] -> [...]): tanh between Linear layers with
    bias, a linear output layer; params = [W1, b1, W2, b2, ...]."""
    pairs = list(zip(params[0::2], params[1::2]))

    def u(v):
        h = v
        for i, (w, b) in enumerate(pairs):
            h = torch.nn.functional.linear(h, w, b)
            if i < len(pairs) - 1:
                h = torch.tanh(h)
        return h.squeeze(-1)

    return u


def cnn_u(params):
    """u(x) of the CNN Laplacian rows, row-wise ([..., 64] -> [...]): x as a 1×8×8 field,
    conv2d(1 → 8, 3×3, padding 1), tanh, conv2d(8 → 8, 3×3, stride 2, padding 1), tanh, flatten,
    Linear(128 → 1); params = [conv1 W, b, conv2 W, b, linear W, b]. One datum [64] runs as an
    unbatched conv2d ([1, 8, 8]), so vmap(hessian) and jet's one-datum graph see the same u."""
    w1, b1, w2, b2, w3, b3 = params

    def u(v):
        h = v.reshape(v.shape[:-1] + CNN_FIELD)
        h = torch.tanh(torch.nn.functional.conv2d(h, w1, b1, padding=1))
        h = torch.tanh(torch.nn.functional.conv2d(h, w2, b2, stride=2, padding=1))
        return torch.nn.functional.linear(h.flatten(-3), w3, b3).squeeze(-1)

    return u


def lap_u(net, params):
    """u of a Laplacian row: the MLP or the CNN ("net" in the manifest)."""
    return cnn_u(params) if net == "cnn" else mlp_u(params)


def lap_nested(u, x, create_graph):
    """The PINN codes' nested autograd loop: ∇u with create_graph, then one backward pass per input
    dimension, Δu = Σ_i ∂g_i/∂x_i (create_graph on those passes too when a loss is to be
    differentiated)."""
    xg = x.detach().requires_grad_(True)
    g = torch.autograd.grad(u(xg).sum(), xg, create_graph=True)[0]
    lap = None
    for i in range(x.shape[1]):
        r = torch.autograd.grad(g[:, i].sum(), xg, retain_graph=True, create_graph=create_graph)[0][:, i]
        lap = r if lap is None else lap + r
    return lap


def lap_vmap_hessian(u, x):
    """vmap(hessian(u)) per sample, then its trace."""
    return vmap(torch.func.hessian(u))(x).diagonal(dim1=1, dim2=2).sum(-1)


def lap_truth(work, params, x, net):
    """The reference of a Laplacian case (float64 in): Δu, or the loss mean(Δu²)'s gradient to W1."""
    params = [p.detach().requires_grad_(work == "loss") for p in params]
    lap = lap_nested(lap_u(net, params), x, work == "loss")
    if work == "fwd":
        return lap.detach()
    return torch.autograd.grad(lap.pow(2).mean(), params[0])[0]


# jet-for-pytorch (bench/install-jet), imported on first use from this folder; None: not there.
JET_DIR = os.environ.get("TCH_JACOBIAN_JET_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tch-jacobian", "jet")
_JET = []


def jet_module():
    """The jet package, or None (with a note on stderr once) when bench/install-jet has not run."""
    if not _JET:
        mod = None
        if os.path.isdir(os.path.join(JET_DIR, "jet")):
            sys.path.insert(0, JET_DIR)
            import jet as mod  # noqa: PLC0415
        else:
            print(f"compare-pytorch: jet-for-pytorch not found in {JET_DIR}: its columns are skipped "
                  "(install it with bench/install-jet; it stays outside the repository)", file=sys.stderr)
        _JET.append(mod)
    return _JET[0]


def lap_jet(u, d, collapsed, dtype=torch.float32):
    """jet's Laplacian of u as the collapsed-Taylor-mode paper benchmarks it (jet's
    exp01_benchmark_laplacian): jet.laplacian on one datum, its graph captured (capture_graph) and
    simplified (common_subexpression_elimination), then vmap over the batch. collapsed=False is
    standard Taylor mode (d 2-jets through vmap, summed)."""
    jet = jet_module()
    mock = torch.zeros(d, dtype=dtype, device=DEVICE)
    lap, _ = jet.capture_graph(jet.laplacian(u, (mock,), collapsed=collapsed), (mock,))
    jet.common_subexpression_elimination(lap.graph)
    lap.recompile()
    return vmap(lap)


def products(w, x, vs, us):
    """vmap(vjp_fn)(vs) and vmap(jvp)(us) for f(x) = sigmoid(W x)."""
    f = lambda v: torch.sigmoid(w @ v)  # noqa: E731
    _, vjp_fn = torch.func.vjp(f, x)
    return vmap(vjp_fn)(vs)[0], vmap(lambda u: torch.func.jvp(f, (x,), (u,))[1])(us)


def hessian_f(w):
    return lambda v: torch.tanh(w @ v).pow(2).sum()


# A PyTorch method whose value is known to be wrong: timed and shown, not held to the agreement.
KNOWN_WRONG = "jacrev penalty (wrong: pytorch/functorch#534)"


def load(work, fname):
    return torch.from_numpy(np.load(os.path.join(work, fname))).to(DEVICE)


# The Laplacian cases' PyTorch methods (labels), in the report's column order.
LAP_NESTED, LAP_VMAP, LAP_JET, LAP_JET_STD = (
    "nested autograd loop", "vmap(hessian) trace", "jet collapsed Taylor", "jet standard Taylor")
LAP_TORCH = (LAP_NESTED, LAP_VMAP, LAP_JET, LAP_JET_STD)
# Ours (compare.rs's labels).
LAP_AUTO, LAP_ROWS = "laplacian_of (Auto)", "laplacian_of (RowLoop)"
_LAP_METHODS = {}
# (case, jet label) -> why jet could not run that row (its graph capture or a call raised): the
# cell shows "n/a" with the reason in a footnote, and the run goes on.
JET_NA = {}


def jet_failed(case_name, label, e):
    """Records that a jet method raised on a Laplacian row (once per row and method)."""
    reason = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    if (case_name, label) not in JET_NA:
        print(f"compare-pytorch: {label} raised on {case_name}, shown as n/a: {reason}", file=sys.stderr)
    JET_NA[(case_name, label)] = reason


def with_backward(lap_fn, params):
    """A loss call of a Laplacian method: zeroes the weights' .grad, computes mean(Δu²) from
    lap_fn(), runs .backward() and returns the first weight's gradient."""
    def call():
        for p in params:
            p.grad = None
        lap_fn().pow(2).mean().backward()
        return params[0].grad
    return call


def lap_methods(case, x, want=None):
    """(label, callable) for the PyTorch side of a Laplacian case; built once per process (jet's
    graph capture is not timed, as in the paper). A Δu call returns Δu [B]; a loss call zeroes the
    weights' .grad, computes mean(Δu²), runs .backward() and returns W1's gradient. want: build
    only that jet method (a peak-memory child)."""
    if case["name"] in _LAP_METHODS:
        return _LAP_METHODS[case["name"]]
    loss = case["work"] == "loss"
    params = [load(WORK, case["extra"][f"{k}{i}"]).requires_grad_(loss)
              for i in range(1, case["layers"] + 1) for k in "wb"]
    u = lap_u(case["net"], params)
    fwd = [(LAP_NESTED, lambda: lap_nested(u, x, loss)), (LAP_VMAP, lambda: lap_vmap_hessian(u, x))]
    if jet_module() is not None:
        for label, collapsed in ((LAP_JET, True), (LAP_JET_STD, False)):
            if want is not None and want != label:
                continue
            try:  # jet may lack a rule for an op of u (its capture raises): that cell is n/a
                fwd.append((label, (lambda f: lambda: f(x))(lap_jet(u, case["n"], collapsed))))
            except Exception as e:  # noqa: BLE001 (any failure of the third-party tool)
                jet_failed(case["name"], label, e)
    if not loss:
        _LAP_METHODS[case["name"]] = fwd
        return fwd

    out = [(label, with_backward(fn, params)) for label, fn in fwd]
    _LAP_METHODS[case["name"]] = out
    return out


def python_methods(case, w, x):
    """(label, callable) for the PyTorch anchors of one case."""
    if case["kind"] == "lapmlp":
        return lap_methods(case, x)
    f = lambda v: torch.sigmoid(v @ w.T)  # noqa: E731
    m, n = case["m"], case["n"]
    closed = lambda: (lambda y: (y * (1 - y)).unsqueeze(-1) * w)(f(x))  # noqa: E731
    if case["kind"] == "single":
        xg = x.detach().requires_grad_(True)

        def notebook():
            y = f(xg)
            j = torch.zeros(m, n, device=x.device)
            for i in range(m):
                j[i] = torch.autograd.grad(y[i], xg, retain_graph=True)[0]
            return j

        jr, jf = jacrev(f), jacfwd(f)
        return [
            ("notebook loop (autograd.grad per row)", notebook),
            ("autograd.functional.jacobian (vectorize=False)", lambda: afj(f, x)),
            ("autograd.functional.jacobian (vectorize=True)", lambda: afj(f, x, vectorize=True)),
            ("torch.func.jacrev", lambda: jr(x)),
            ("torch.func.jacfwd", lambda: jf(x)),
            ("closed form", closed),
        ]
    if case["kind"] == "penalty":
        return [("vmap(jacrev) penalty", lambda: penalty_grad(w, x))]
    if case["kind"] == "psg":
        w2, t = (load(WORK, case["extra"][k]) for k in ("w2", "t"))
        return [("vmap(grad) per-sample gradients", lambda: per_sample_grads(w, x, w2, t))]
    if case["kind"] in ("psg_mse", "psg_conv"):
        w2, t = (load(WORK, case["extra"][k]) for k in ("w2", "t"))
        return [("vmap(grad) per-sample gradients", lambda: psg_more(case["kind"], w, x, w2, t))]
    if case["kind"] == "pinn":
        w2, w3 = (load(WORK, case["extra"][k]) for k in ("w2", "w3"))
        return [
            ("vmap(hessian)", lambda: pinn_grad_func(case["op"], w, x, w2, w3)),
            ("autograd loop (create_graph)", lambda: pinn_grad_loop(case["op"], w, x, w2, w3)),
        ]
    if case["kind"] == "hessian":
        h = torch.func.hessian(hessian_f(w))
        return [("torch.func.hessian", lambda: h(x))]
    if case["kind"] == "norm2":
        return [
            ("row loop (autograd.grad, create_graph)", lambda: norm2_grad_rows(w, x)),
            (KNOWN_WRONG, lambda: norm2_grad_jacrev(w, x)),
        ]
    if case["kind"] == "products":
        vs, us = (load(WORK, case["extra"][k]) for k in ("v", "u"))
        return [("vmap(vjp) + vmap(jvp)", lambda: torch.cat(products(w, x, vs, us)))]
    xg = x.detach().requires_grad_(True)

    def row_loop():
        y = f(xg)
        rows = [torch.autograd.grad(y[:, i].sum(), xg, retain_graph=True)[0] for i in range(m)]
        return torch.stack(rows, 1)

    vjr, vjf = vmap(jacrev(f)), vmap(jacfwd(f))
    return [
        ("row loop (autograd.grad of y[:, i].sum())", row_loop),
        ("vmap(jacrev)", lambda: vjr(x)),
        ("vmap(jacfwd)", lambda: vjf(x)),
        ("closed form", closed),
    ]


def resolve_vml_kernels():
    """One call of each VML function ATen uses, on one element, float32 and float64: the first call
    of one that runs on several threads at once can give a thread's chunk oneMKL's low-accuracy
    kernel (pytorch#188792; ~1e-4 relative in float32), which would make PyTorch's side of a row
    disagree with ours. The Rust side does the same (tch_jacobian::global::resolve_vml_kernels)."""
    ops = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2",
           "sin", "sqrt", "tan", "tanh", "trunc")
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            x = torch.full((1,), 0.5, dtype=dtype)
            for op in ops:
                getattr(torch, op)(x)


def cpu_model():
    if DEVICE == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state():
    """`abc1234` or `abc1234 + uncommitted src/ changes`, or "" outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "Cargo.toml"], capture_output=True, text=True)
        return head.stdout.strip() + (" + uncommitted src/ changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return ""


def fmt_ms(r):
    if r is None:
        return "–"
    if "skipped_s" in r:
        return f"skipped ({r['skipped_s']:.1f} s/call)"
    v = r["median_ms"]
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def fmt_ratio(a, b):
    if a is None or b is None or "median_ms" not in a or "median_ms" not in b:
        return "–"
    return f"{a['median_ms'] / b['median_ms']:.2f}"


def best(results, side, prefixes=None):
    """(label, result) of the fastest timed method of one side (optionally by label prefix)."""
    cands = [
        (k, v)
        for (s, k), v in results.items()
        if s == side
        and "median_ms" in v
        and k != "closed form"
        and (prefixes is None or k.startswith(prefixes))
    ]
    return min(cands, key=lambda kv: kv[1]["median_ms"]) if cands else (None, None)


def status_kib(field):
    """A kB field of /proc/self/status (VmRSS:, VmHWM:), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line[len(field):].split()[0])
    except OSError:
        pass
    return None


def peak_one(case_name, label):
    """One cold call of one Laplacian method, in a process of its own: the peak resident memory of
    the call above the resident memory just before it (VmHWM reset through /proc/self/clear_refs,
    as bench/src/bin/peak_memory.rs does), and the process's peak; one JSON line on stdout. Before
    the reset: the inputs, jet's graph capture and one plain forward u(x) (libtorch's lazy set-up)."""
    with open(os.path.join(WORK, "manifest.json")) as fh:
        case = [c for c in json.load(fh)["cases"] if c["name"] == case_name][0]
    x = load(WORK, case["x"])
    if label.startswith("jet") and jet_module() is None:
        sys.exit(f"{label}: jet is not installed")
    fn = dict(lap_methods(case, x, want=label))[label]
    params = [load(WORK, case["extra"][f"{k}{i}"]) for i in range(1, case["layers"] + 1) for k in "wb"]
    with torch.no_grad():
        lap_u(case["net"], params)(x)
    del params
    process_before = status_kib("VmHWM:")
    rss_before = status_kib("VmRSS:")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    t = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t
    hwm = status_kib("VmHWM:")
    print(json.dumps({
        "side": "torch", "case": case_name, "method": label, "peak": True, "seconds": secs,
        "call_peak_kib": hwm - rss_before if reset and hwm is not None and rss_before is not None else None,
        "process_peak_kib": max(process_before, hwm) if process_before is not None and hwm is not None else None,
        "rss_before_kib": rss_before,
    }))
    del out


def lap_peak_memory(args, cases):
    """Peak memory of the Laplacian rows of the paper's MLP (d = 50), one process per method:
    {(case, side, method): the JSON of peak_one / compare --peak}."""
    peaks = {}
    for c in cases:
        if c["kind"] != "lapmlp" or c["n"] != 50:
            continue
        for label in LAP_TORCH:
            if label.startswith("jet") and jet_module() is None:
                continue
            print(f"  peak memory torch {c['name']} {label}", file=sys.stderr, flush=True)
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--rust-bin", args.rust_bin, "--work", args.work,
                 "--threads", str(args.threads), "--device", DEVICE, "--peak-one", c["name"], label],
                check=True, stdout=subprocess.PIPE, text=True).stdout
            peaks[(c["name"], "torch", label)] = json.loads(out.splitlines()[-1])
        for label in (LAP_AUTO, LAP_ROWS):
            print(f"  peak memory rust  {c['name']} {label}", file=sys.stderr, flush=True)
            out = subprocess.run(
                [args.rust_bin, "--dir", args.work, "--case", c["name"], "--threads", str(args.threads),
                 "--device", DEVICE, "--peak", label],
                check=True, stdout=subprocess.PIPE, text=True).stdout
            for line in out.splitlines():
                v = json.loads(line)
                if v.get("peak"):
                    peaks[(c["name"], "rust", label)] = v
    return peaks


def lap_report(results, cases, peaks):
    """The Markdown section of the Laplacian rows: times, ratios, targets, agreement, peak memory."""
    lap = [c for c in cases if c["kind"] == "lapmlp"]
    lines = []
    p = lines.append

    def med(c, side, k):
        r = results[c["name"]].get((side, k))
        return r["median_ms"] if r and "median_ms" in r else None

    def best_torch(c):
        """PyTorch's best tool: the faster of the nested loop and vmap(hessian)."""
        v = [t for t in (med(c, "torch", LAP_NESTED), med(c, "torch", LAP_VMAP)) if t is not None]
        return min(v) if v else None

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b is not None else "–"

    def target(c):
        return 1.0 if c["n"] == 2 else 0.5

    def row_label(c):
        return LABEL[c["name"]].removeprefix("PINN MLP ").removeprefix("PINN ")

    def torch_cell(c, k):
        """A PyTorch cell: its time, or "n/a †" where jet raised (footnoted below the table)."""
        return "n/a †" if (c["name"], k) in JET_NA else fmt_ms(results[c["name"]].get(("torch", k)))

    jet_na = {(cn, k): why for (cn, k), why in JET_NA.items() if cn in {c["name"] for c in lap}}
    have_jet = any(("torch", LAP_JET) in results[c["name"]] for c in lap) or bool(jet_na)
    cnn = [c for c in lap if c["net"] == "cnn"]
    p("### The Laplacian of PINN MLPs: median ms per call")
    p("")
    p("u: Linear layers with bias (PyTorch's `nn.Linear` init, the same `.npy` weights on both sides), tanh "
      "between them, a linear output; x ~ N(0, 1). \"Δu only\": Δu [B] (weights not requiring grad); "
      "\"loss + backward\": mean(Δu²) and `.backward()` to all weights (their `.grad` zeroed before each call). "
      f"PyTorch: {LAP_NESTED} (∇u with create_graph, one backward pass per input dimension), "
      f"{LAP_VMAP} (`vmap(torch.func.hessian(u))` then the trace), and jet-for-pytorch 1.0.0's "
      "`jet.laplacian(u, (mock_x,), collapsed=True/False)` on one datum, captured with `jet.capture_graph`, "
      "simplified with `jet.common_subexpression_elimination` and vmapped over the batch, as its paper's "
      "benchmark does (graph capture not timed). Ours: `laplacian_of(u, &x, &opts)` with "
      "`JacobianOptions::default()` (Auto) and `.strategy(Strategy::RowLoop)` (the nested row loop), "
      "`.create_graph(true)` for the loss; the first call (which also checks Δu against PyTorch's) runs the "
      "independence check, the default, and the timed calls `.check_independence(false)`, the setting its "
      "docs give for hot loops after a first checked call (jet and PyTorch check nothing; the check is one "
      "more collapsed pass). \"best PyTorch\": the faster of the nested loop and vmap(hessian)."
      + ("" if have_jet else " **jet was not installed: its columns are empty** (bench/install-jet).")
      + ("" if not cnn else " The CNN rows: u of a 1×8×8 field flattened to d = 64 inputs per sample, "
         "conv2d(1 → 8, 3×3, padding 1) → tanh → conv2d(8 → 8, 3×3, stride 2, padding 1) → tanh → flatten → "
         "Linear(128 → 1) (PyTorch's `nn.Conv2d` / `nn.Linear` init), the same methods on both sides; "
         "ours goes through `conv2d` (aten `convolution`) in collapsed Taylor mode."))
    p("")
    def per_round(c):
        """Auto / jet collapsed round by round (each round's two medians were taken seconds apart,
        so a load burst of minutes moves both), and their median; "–" without both."""
        a = results[c["name"]].get(("rust", LAP_AUTO), {}).get("round_medians", [])
        j = results[c["name"]].get(("torch", LAP_JET), {}).get("round_medians", [])
        if not a or len(a) != len(j):
            return "–"
        rs = [x / y for x, y in zip(a, j)]
        return f"{statistics.median(rs):.2f} ({', '.join(f'{r:.2f}' for r in rs)})"

    p(f"| PINN MLP (tanh), work | {LAP_NESTED} | {LAP_VMAP} | {LAP_JET} | {LAP_JET_STD} | ours: Auto | ours: RowLoop "
      "| Auto / best PyTorch (target) | Auto / jet collapsed (≤ 0.8) | RowLoop / best PyTorch | RowLoop / jet collapsed "
      "| Auto / jet collapsed per round: median (each round) |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in lap:
        res = results[c["name"]]
        cells = [torch_cell(c, k) for k in LAP_TORCH] + [fmt_ms(res.get(("rust", k))) for k in (LAP_AUTO, LAP_ROWS)]
        a, rl, tb, jc = med(c, "rust", LAP_AUTO), med(c, "rust", LAP_ROWS), best_torch(c), med(c, "torch", LAP_JET)
        cells += [f"{ratio(a, tb)} (≤ {target(c):g})", ratio(a, jc), ratio(rl, tb), ratio(rl, jc), per_round(c)]
        p(f"| {row_label(c)} | " + " | ".join(cells) + " |")
    p("")
    p("The ratios are of each side's fastest round; the last column pairs the two sides round by round "
      "(on a shared machine the load moves over minutes, and one side's fastest round may not be the "
      "other's). bench/lap_gemm.py and bench/src/bin/lap_gemm.rs compare the paper's MLP through its "
      "GEMMs, timed alternately in each process.")
    p("")
    if jet_na:
        p("† jet raised on this row (its cell is n/a, its ratios –): " + "; ".join(
            f"{cn}, {k}: {why}" for (cn, k), why in jet_na.items()) + ".")
        p("")
    p("Auto ran: " + "; ".join(
        f"{c['name']}: {results[c['name']].get(('rust', LAP_AUTO), {}).get('strategy', '?')}" for c in lap) + ".")
    p("")

    p("Agreement (before timing, compare.rs checks both of ours against PyTorch's float32 Δu from the nested "
      "loop, rtol 1e-4 of max |Δu|). Below: every method's first result against the float64 truth (the "
      "nested loop in float64: Δu, or the loss's gradient to W1), max |Δ| / max |truth|:")
    p("")
    p("| PINN MLP, work | max |truth| | ours: worst | PyTorch / jet: worst | ≤ 1e-4 |")
    p("|---|---:|---|---|---|")
    all_ok = True
    for c in lap:
        ref = load(WORK, c["j_ref"]).abs().max().item()
        worst = {}
        for side in ("rust", "torch"):
            items = [(k, v["max_abs_diff"] / ref) for (sd, k), v in results[c["name"]].items() if sd == side]
            worst[side] = max(items, key=lambda kv: kv[1]) if items else ("–", 0.0)
        ok = max(worst["rust"][1], worst["torch"][1]) <= 1e-4
        all_ok &= ok
        p(f"| {row_label(c)} | {ref:.3g} | {worst['rust'][0]}: {worst['rust'][1]:.1e} | "
          f"{worst['torch'][0]}: {worst['torch'][1]:.1e} | {'yes' if ok else '**no**'} |")
    p("")
    p(f"All methods within 1e-4 of the truth: **{'yes' if all_ok else 'NO'}**.")
    p("")

    p("Targets (ours = Auto):")
    p("")
    parts, ok1 = [], True
    for c in lap:
        a, tb = med(c, "rust", LAP_AUTO), best_torch(c)
        if a is None or tb is None:
            parts.append(f"{c['name']} not measured")
            ok1 = False
            continue
        good = a / tb <= target(c)
        ok1 &= good
        parts.append(f"{c['name']} {a / tb:.2f} (≤ {target(c):g}{'' if good else ', missed'})")
    where = ("at d = 32, on the paper's MLP and on the CNN (d = 64)" if cnn
             else "at d = 32 and on the paper's MLP")
    p(f"1. Δu and loss + backward ≤ 0.5× PyTorch's best (min of nested loop, vmap(hessian)) {where}, "
      f"≤ 1.0× at d = 2: {'**met**' if ok1 else '**missed**'} — " + "; ".join(parts) + ".")
    parts, ok2 = [], have_jet
    for c in lap:
        a, jc = med(c, "rust", LAP_AUTO), med(c, "torch", LAP_JET)
        if (c["name"], LAP_JET) in jet_na:  # jet cannot run this row: no verdict either way
            parts.append(f"{c['name']} n/a (jet raised †)")
            continue
        if a is None or jc is None:
            parts.append(f"{c['name']} not measured")
            ok2 = False
            continue
        good = a / jc <= 0.8
        ok2 &= good
        parts.append(f"{c['name']} {a / jc:.2f}{'' if good else ' (missed)'}")
    if have_jet and all((c["name"], LAP_JET) in jet_na for c in lap):
        p("2. ≤ 0.8× jet collapsed Taylor mode: **n/a** (jet raised on every row of this run †) — "
          + "; ".join(parts) + ".")
    elif have_jet:
        p(f"2. ≤ 0.8× jet collapsed Taylor mode on every row{' jet runs' if jet_na else ''}: "
          f"{'**met**' if ok2 else '**missed**'} — " + "; ".join(parts) + ".")
    else:
        p("2. ≤ 0.8× jet collapsed Taylor mode on every row: **not measured** (jet-for-pytorch not installed; "
          "bench/install-jet installs it outside the repository).")
    p("")

    if peaks:
        p("### Peak memory, the paper's MLP (50 → 768 → 768 → 512 → 512 → 1, B = 64), float32, CPU")
        p("")
        p("One process per cell, one cold call after the inputs, jet's graph capture and one plain forward "
          "u(x) (libtorch's lazy set-up). \"call\": the call's peak resident memory above the resident "
          "memory just before it (VmHWM reset through `/proc/self/clear_refs`, as `scripts/peak-memory`), "
          "MiB; in parentheses the process's peak (Python + torch vs a Rust binary: not comparable "
          "across the two sides) and the cold call's seconds.")
        p("")
        cols = [("torch", k) for k in LAP_TORCH] + [("rust", k) for k in (LAP_AUTO, LAP_ROWS)]
        cols = [c for c in cols if any((lc["name"],) + c in peaks for lc in lap)]
        p("| work | " + " | ".join(("ours: " if sd == "rust" else "") + k for sd, k in cols) + " |")
        p("|---|" + "---:|" * len(cols))
        for c in lap:
            if c["n"] != 50:
                continue
            cells = []
            for sd, k in cols:
                v = peaks.get((c["name"], sd, k))
                if v is None or v.get("call_peak_kib") is None:
                    cells.append("–")
                    continue
                cells.append(f"{v['call_peak_kib'] / 1024:.0f} ({v['process_peak_kib'] / 1024:.0f}, {v['seconds']:.2f} s)")
            p(f"| {'Δu only' if c['work'] == 'fwd' else 'loss + backward'} | " + " | ".join(cells) + " |")
        p("")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rust-bin", required=True, help="target/release/compare")
    ap.add_argument("--work", default="target/compare-pytorch", help="folder for the .npy inputs")
    ap.add_argument("--out", default="target/compare-pytorch.md", help="Markdown report")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both sides run")
    ap.add_argument("--budget", type=float, default=0.5, help="seconds of repetitions per cell and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all cells; the fastest round's median is kept")
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--max-reps", type=int, default=2000)
    ap.add_argument("--only", default="",
                    help="comma-separated case names or groups: time just those, print a short report "
                         "(the group `laplacian`, the six PINN-MLP Laplacian rows and the two CNN-PINN "
                         "rows lapfwdcnn, laplosscnn against the nested loop, vmap(hessian) and jet, also "
                         "prints their full section and writes it to OUT-laplacian.md; ~4-5 minutes on 2 "
                         "cores; e.g. --only lapfwdcnn,laplosscnn for the CNN rows alone)")
    ap.add_argument("--skip-over", type=float, default=2.0, help="skip a cell whose first call takes longer (s)")
    ap.add_argument("--lsq-b", default="1,16,256,4096", help="least-squares group: the batch sizes")
    ap.add_argument("--lsq-repeats", type=int, default=3, help="least-squares group: solves per median (1 at B = 4096)")
    ap.add_argument("--lsq-slow", action="store_true",
                    help="least-squares group: also torchimize, pypose and Theseus at B = 4096 (tens of minutes)")
    ap.add_argument("--no-peak-memory", action="store_true",
                    help="skip the peak-memory processes of the Laplacian rows of the paper's MLP")
    ap.add_argument("--peak-one", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    global DEVICE, WORK
    DEVICE = args.device
    WORK = args.work
    t_start = time.time()
    torch.set_num_threads(args.threads)
    resolve_vml_kernels()
    if args.peak_one:  # a child of lap_peak_memory: one cold call, its peak memory on stdout
        peak_one(*args.peak_one)
        return
    os.makedirs(args.work, exist_ok=True)
    rule = {
        "budget_s": args.budget,
        "min_reps": args.min_reps,
        "max_reps": args.max_reps,
        "skip_over_s": args.skip_over,
    }
    if "least-squares" in args.only.split(","):
        import compare_least_squares

        compare_least_squares.run(args, args.rust_bin, args.work, args.out, args.threads)
        return
    cases = make_inputs(args.work)
    if args.only:
        wanted = [n for w in args.only.split(",") for n in GROUPS.get(w, [w])]
        unknown = [w for w in wanted if w not in {c["name"] for c in cases}]
        if unknown:
            ap.error(f"unknown case(s) {unknown}; cases: {[c['name'] for c in cases]}")
        cases = [c for c in cases if c["name"] in wanted]
    with open(os.path.join(args.work, "manifest.json"), "w") as fh:
        json.dump({"rule": rule, "cases": cases}, fh, indent=1)
    load_start = os.getloadavg()

    # results[case][(side, method)] = timing dict (+ "max_abs_diff")
    results = {c["name"]: {} for c in cases}
    rust_threads = None

    def merge(case, key, r):
        """Keeps the fastest round's median (rounds filter out other processes' bursts)."""
        old = results[case].get(key)
        r["round_medians"] = [r["median_ms"]] if "median_ms" in r else []
        if old is None:
            results[case][key] = r
            return
        r["round_medians"] = old["round_medians"] + r["round_medians"]
        r["max_abs_diff"] = max(r["max_abs_diff"], old["max_abs_diff"])
        if "median_ms" in old and ("median_ms" not in r or old["median_ms"] <= r["median_ms"]):
            old.update(round_medians=r["round_medians"], max_abs_diff=r["max_abs_diff"])
        else:
            results[case][key] = r

    for rnd in range(args.rounds):
        # Rotate the case order so that no case always runs at the same point of a round.
        k = rnd % len(cases)
        for c in cases[k:] + cases[:k]:
            w, x, j_ref = (load(args.work, c[k]) for k in ("w", "x", "j_ref"))
            for label, fn in python_methods(c, w, x):
                prev = results[c["name"]].get(("torch", label))
                if prev is not None and "skipped_s" in prev:
                    continue
                if (c["name"], label) in JET_NA:
                    continue
                print(f"  round {rnd + 1}/{args.rounds} torch {c['name']:>6} {label}", file=sys.stderr, flush=True)
                try:
                    r, j = measure(fn, rule)
                except Exception as e:  # noqa: BLE001 (jet only: a call of its graph may raise)
                    if not label.startswith("jet"):
                        raise
                    jet_failed(c["name"], label, e)
                    results[c["name"]].pop(("torch", label), None)
                    continue
                r["max_abs_diff"] = (j.detach().double() - j_ref.double()).abs().max().item()
                merge(c["name"], ("torch", label), r)
            print(f"  round {rnd + 1}/{args.rounds} rust  {c['name']:>6}", file=sys.stderr, flush=True)
            out = subprocess.run(
                [args.rust_bin, "--dir", args.work, "--case", c["name"], "--threads", str(args.threads), "--device", DEVICE],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            ).stdout
            for line in out.splitlines():
                v = json.loads(line)
                if "threads" in v:
                    rust_threads = v["threads"]
                    continue
                merge(v["case"], ("rust", v.pop("method")), v)
    peaks = {}
    if not args.no_peak_memory:
        peaks = lap_peak_memory(args, cases)
    elapsed = time.time() - t_start
    load_end = os.getloadavg()
    lap_lines = lap_report(results, cases, peaks) if any(c["kind"] == "lapmlp" for c in cases) else []

    if args.only:
        for c in cases:
            res = results[c["name"]]
            tb = best(res, "torch")[1]
            print(f"### {LABEL[c['name']]}")
            for (sd, k), r in res.items():
                print(f"  {'PyTorch' if sd == 'torch' else 'ours'}: {k}: {fmt_ms(r)} ms, / best PyTorch "
                      f"{fmt_ratio(r, tb)}, max|Δ| {r['max_abs_diff']:.1e}, {r.get('strategy', '')}")
            for (cn, k), why in JET_NA.items():
                if cn == c["name"]:
                    print(f"  PyTorch: {k}: n/a ({why})")
        if lap_lines:
            head = [
                f"## The Laplacian of PINN MLPs: tch-jacobian vs PyTorch and jet ({'CPU' if DEVICE == 'cpu' else 'CUDA'}, float32)",
                "",
                f"`scripts/compare-pytorch --only {args.only}`. {'CPU' if DEVICE == 'cpu' else 'GPU'}: **{cpu_model()}**, "
                f"`nproc` = {os.cpu_count()}; threads: `torch.get_num_threads()` = {torch.get_num_threads()}, "
                f"`tch::get_num_threads()` = {rust_threads}; PyTorch {torch.__version__} (ours: tch 0.24 on libtorch "
                f"2.11.0{', commit ' + git_state() if git_state() else ''}). Each cell: warm-up, then the median of "
                f"≥ {args.min_reps} calls over ≥ {args.budget:g} s, in {args.rounds} rounds (PyTorch and ours "
                f"alternating case by case); the fastest round's median is shown. Load average "
                f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end; the whole run took {elapsed:.0f} s.",
                "",
            ]
            text = "\n".join(head + lap_lines) + "\n"
            sys.stdout.write("\n" + text)
            root, ext = os.path.splitext(args.out)
            path = f"{root}-laplacian{ext or '.md'}"
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as fh:
                fh.write(text)
            print(f"(written to {path})", file=sys.stderr)
        return

    lines = []
    p = lines.append
    p(f"## tch-jacobian vs PyTorch ({'CPU' if DEVICE == 'cpu' else 'CUDA'}, float32)")
    p("")
    p(
        f"`scripts/compare-pytorch`: F(x) = σ(Wx) as `f(x) = sigmoid(x @ W.T)` on both sides, the same "
        f"`W`, `x` (`.npy`), float32, {DEVICE.upper()}. {'CPU' if DEVICE == 'cpu' else 'GPU'}: **{cpu_model()}**, `nproc` = {os.cpu_count()}; "
        f"threads: `torch.get_num_threads()` = {torch.get_num_threads()}, "
        f"`tch::get_num_threads()` = {rust_threads}; PyTorch {torch.__version__} "
        f"(ours: tch 0.24 on libtorch 2.11.0{', commit ' + git_state() if git_state() else ''}). Each cell: warm-up, then the median of ≥ {args.min_reps} "
        f"calls over ≥ {args.budget:g} s, in {args.rounds} rounds over all cells (PyTorch and ours alternating case "
        f"by case); the fastest round's median is shown, which filters out other processes' bursts on a shared "
        f"machine. A cell whose first call takes > {args.skip_over:g} s is skipped. "
        f"Load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; "
        f"the whole run took {elapsed:.0f} s."
    )
    p("")
    singles = [c["name"] for c in cases if c["kind"] == "single"]
    pname = PENALTY[0]
    head = "| method | " + " | ".join(LABEL[s] for s in singles) + " |"
    sep = "|---|" + "---:|" * len(singles)

    p("### One Jacobian: median ms per call")
    p("")
    p(head)
    p(sep)
    for side, who in (("torch", "PyTorch"), ("rust", "ours")):
        labels = []
        for s in singles:
            for (sd, k) in results[s]:
                if sd == side and k not in labels:
                    labels.append(k)
        for k in labels:
            cells = [fmt_ms(results[s].get((side, k))) for s in singles]
            p(f"| {who}: {k} | " + " | ".join(cells) + " |")
    p("")

    def pair_rows(names, pairs):
        rows = []
        for ours, theirs in pairs:
            cells = []
            for s in names:
                res = results[s]
                a = best(res, "rust")[1] if ours == "best of ours" else res.get(("rust", ours))
                b = best(res, "torch")[1] if theirs == "best of PyTorch" else res.get(("torch", theirs))
                cells.append(fmt_ratio(a, b))
            rows.append(f"| {ours} / {theirs} | " + " | ".join(cells) + " |")
        return rows

    p("### Ratios ours / theirs (< 1: we are faster)")
    p("")
    p(head.replace("| method |", "| ours / PyTorch |"))
    p(sep)
    lines.extend(pair_rows(singles, SINGLE_PAIRS))
    p("")
    p("`auto` ran: " + "; ".join(
        f"{LABEL[s]}: {results[s].get(('rust', 'auto (jacobian_of)'), {}).get('strategy', '?')}" for s in singles
    ) + ".")
    p("")
    p("Fastest per shape: " + "; ".join(
        f"{LABEL[s]}: ours {best(results[s], 'rust')[0]}, PyTorch {best(results[s], 'torch')[0]}" for s in singles
    ) + ".")
    p("")

    bname = BATCH[0]
    p(f"### Per-sample Jacobians, {LABEL[bname]}: median ms per call")
    p("")
    p("| method | median ms |")
    p("|---|---:|")
    bres = results[bname]
    for side, who in (("torch", "PyTorch"), ("rust", "ours")):
        for (sd, k), r in bres.items():
            if sd == side:
                p(f"| {who}: {k} | {fmt_ms(r)} |")
    p("")
    p(f"`auto` ran: {bres.get(('rust', 'auto (per_sample_jacobian_of)'), {}).get('strategy', '?')}.")
    p("")
    p("| ours / PyTorch (< 1: we are faster) | ratio |")
    p("|---|---:|")
    lines.extend(pair_rows([bname], BATCH_PAIRS))
    p("")

    pres = results[pname]
    p(f"### {LABEL[pname]}: forward + penalty + backward to W, median ms per call")
    p("")
    p("| method | median ms |")
    p("|---|---:|")
    for (sd, k), r in pres.items():
        p(f"| {'PyTorch' if sd == 'torch' else 'ours'}: {k} | {fmt_ms(r)} |")
    p("")
    p(f"Ours ran: {pres.get(('rust', 'Exact (contractive_penalty)'), {}).get('strategy', '?')}. "
      "Agreement below compares the gradient dW with PyTorch's.")
    p("")

    for extra in [PSG[0]] + [c[0] for c in PSG_LARGE] + [HESSIAN[0], PRODUCTS[0]]:
        res = results[extra]
        p(f"### {LABEL[extra]}: median ms per call")
        p("")
        p("| method | median ms | ours / PyTorch |")
        p("|---|---:|---:|")
        theirs = [r for (sd, k), r in res.items() if sd == "torch"][0]
        for (sd, k), r in res.items():
            p(f"| {'PyTorch' if sd == 'torch' else 'ours'}: {k} | {fmt_ms(r)} | {fmt_ratio(r, theirs)} |")
        p("")

    for name, _, _ in PSG_MORE:
        res = results[name]
        p(f"### {LABEL[name]}: median ms per call")
        p("")
        p("| method | median ms | ours / PyTorch |")
        p("|---|---:|---:|")
        theirs = res.get(("torch", "vmap(grad) per-sample gradients"))
        for (sd, k), r in res.items():
            p(f"| {'PyTorch' if sd == 'torch' else 'ours'}: {k} | {fmt_ms(r)} | {fmt_ratio(r, theirs)} |")
        p("")

    for name, _, _, _ in PINN:
        res = results[name]
        p(f"### {LABEL[name]}: forward + derivatives + loss + backward to W1, median ms per call")
        p("")
        p("| method | median ms | / best of PyTorch |")
        p("|---|---:|---:|")
        tb = best(res, "torch")[1]
        for (sd, k), r in res.items():
            p(f"| {'PyTorch' if sd == 'torch' else 'ours'}: {k} | {fmt_ms(r)} | {fmt_ratio(r, tb)} |")
        p("")

    nres = results[NORM2[0]]
    p(f"### {LABEL[NORM2[0]]}: forward + penalty + backward to W, median ms per call")
    p("")
    p("The truth is PyTorch's autograd row loop; torch.func's jacrev is faster but wrong here.")
    p("")
    p("| method | median ms | / PyTorch row loop | max |ΔdW| from the truth (max |dW| "
      f"{load(args.work, [c for c in cases if c['name'] == NORM2[0]][0]['j_ref']).abs().max().item():.3g}) |")
    p("|---|---:|---:|---:|")
    rows_ref = nres.get(("torch", "row loop (autograd.grad, create_graph)"))
    for (sd, k), r in nres.items():
        p(f"| {'PyTorch' if sd == 'torch' else 'ours'}: {k} | {fmt_ms(r)} | {fmt_ratio(r, rows_ref)} | {r['max_abs_diff']:.1e} |")
    p("")

    lines.extend(lap_lines)

    p("### Agreement with PyTorch's J (torch.func.jacrev), max |ΔJ| (absolute, float32)")
    p("")
    p("| shape | max |J| | ours: worst method, max |ΔJ| | PyTorch: worst method, max |ΔJ| | ≤ 1e-5 |")
    p("|---|---:|---|---|---|")
    all_ok = True
    for c in cases:
        if c["kind"] == "lapmlp":  # their own table, relative to max |ref| (in the Laplacian section)
            continue
        s = c["name"]
        jmax = load(args.work, c["j_ref"]).abs().max().item()
        worst = {}
        for side in ("rust", "torch"):
            items = [(k, v["max_abs_diff"]) for (sd, k), v in results[s].items() if sd == side and k != KNOWN_WRONG]
            worst[side] = max(items, key=lambda kv: kv[1])
        ok = max(worst["rust"][1], worst["torch"][1]) <= 1e-5
        all_ok &= ok
        p(
            f"| {LABEL[s]} | {jmax:.3g} | {worst['rust'][0]}: {worst['rust'][1]:.1e} | "
            f"{worst['torch'][0]}: {worst['torch'][1]:.1e} | {'yes' if ok else '**no**'} |"
        )
    p("")
    p(f"All Jacobians (every method, both sides) agree with PyTorch's to 1e-5: **{'yes' if all_ok else 'NO'}**.")
    p("")

    # ---- targets
    p("### Targets")
    try:
        p("")

        def ms(s, side, k):
            r = results[s].get((side, k))
            return r["median_ms"] if r and "median_ms" in r else None

        def verdict(ok):
            return "**met**" if ok else "**missed**"

        nb = "notebook loop (autograd.grad per row)"
        small = [s for s, m, n in SINGLE if n <= 64]
        r1 = {s: ms(s, "rust", "row-loop (jacobian)") / ms(s, "torch", nb) for s in singles}
        ok_a = all(r1[s] <= 0.5 for s in small)
        ok_b = all(r <= 1.0 for r in r1.values())
        p(
            f"1. row-loop ≥ 2× faster than the Python notebook loop at n ≤ 64 ({', '.join(LABEL[s] for s in small)}; "
            f"ratio ≤ 0.5): {verdict(ok_a)} — ratios "
            + ", ".join(f"{LABEL[s]} {r1[s]:.2f}" for s in small)
            + f". Never slower (ratio ≤ 1 at every shape): {verdict(ok_b)} — "
            + ", ".join(f"{LABEL[s]} {r1[s]:.2f}" for s in singles if s not in small)
            + "."
        )
        # 2. Ours with default options (Auto), with a closure and from a built graph, against
        # PyTorch's best tool at each size.
        limits = {"64": 0.5, "256": 0.8, "1024": 1.1}
        parts2, ok2 = [], True
        for s, lim in limits.items():
            tb = best(results[s], "torch")[1]["median_ms"]
            for k in ("auto (jacobian_of)", "auto (jacobian_with)"):
                r = ms(s, "rust", k) / tb
                good = r <= lim
                ok2 &= good
                parts2.append(f"{LABEL[s]} {k.split(' ', 1)[1]} {r:.2f} (≤ {lim}{'' if good else ', missed'})")
        p(
            "2. Ours (auto) against PyTorch's best (jacrev, autograd.functional vectorize, jacfwd), with a "
            f"closure and from a built graph: {verdict(ok2)} — " + "; ".join(parts2) + "."
        )
        parts3, ok3 = [], True
        explicit = tuple(k for k in OUR_STRATEGIES if k != "auto")
        for s in singles + [bname]:
            auto = [v for (sd, k), v in results[s].items() if sd == "rust" and k.startswith("auto (per_sample_jacobian_of)" if s == bname else "auto (jacobian_of)")][0]
            bl, bv = best(results[s], "rust", explicit)
            r = auto["median_ms"] / bv["median_ms"]
            same = auto.get("strategy") is not None and auto.get("strategy") == bv.get("strategy")
            good = r <= 1.10 or same
            ok3 &= good
            note = f"runs {auto.get('strategy', '?')}"
            if same and r > 1.10:
                note += ", the same as the best: the gap is run-to-run noise"
            elif same:
                note += ", the best"
            else:
                note += f"; best {bl}"
            parts3.append(f"{LABEL[s]} {r:.2f} ({note}{'' if good else ', missed'})")
        p(
            "3. auto within 10% of our best explicit strategy for every shape (auto / best ≤ 1.10, or auto "
            f"resolves to that very strategy): {verdict(ok3)} — " + "; ".join(parts3) + "."
        )
        vj = ms(bname, "torch", "vmap(jacrev)")
        ra = ms(bname, "rust", "auto (per_sample_jacobian_of)") / vj
        rg = ms(bname, "rust", "auto (per_sample_jacobian)") / vj
        p(
            f"4. Per-sample Jacobians at B = 128 within 1.1× vmap(jacrev) (auto / vmap(jacrev) ≤ 1.1): "
            f"{verdict(ra <= 1.1 and rg <= 1.1)} — per_sample_jacobian_of {ra:.2f}, per_sample_jacobian (built graph) {rg:.2f}."
        )
        ours_p, theirs_p = ms(pname, "rust", "Exact (contractive_penalty)"), ms(pname, "torch", "vmap(jacrev) penalty")
        if ours_p is None or theirs_p is None:
            p("5. Exact CAE penalty within 1.1× PyTorch's vmap(jacrev) penalty: **not measured** (a side was skipped).")
        else:
            rp = ours_p / theirs_p
            p(
                f"5. Exact CAE penalty (forward + penalty + backward to W, B = 128, 784 → 256) within 1.1× "
                f"PyTorch's vmap(jacrev) penalty: {verdict(rp <= 1.1)} — ratio {rp:.2f}."
            )
        parts6, ok6 = [], True
        for name in [PSG[0]] + [c[0] for c in PSG_LARGE] + [c[0] for c in PSG_MORE]:
            ours_s = ms(name, "rust", "per_sample_gradients_of (cross_entropy, one sample)") or ms(name, "rust", "per_sample_gradients_of (one sample)")
            theirs_s = ms(name, "torch", "vmap(grad) per-sample gradients")
            if ours_s is None or theirs_s is None:
                parts6.append(f"{name} not measured")
                ok6 = False
                continue
            r = ours_s / theirs_s
            ok6 &= r <= 1.0
            parts6.append(f"{name} {r:.2f}")
        p(f"6. Per-sample gradients (per_sample_gradients_of) ≤ 1.0× vmap(grad) for the MLP with "
          f"cross-entropy and MSE and the conv net at B = 64, 256, 1024: {verdict(ok6)} — " + ", ".join(parts6) + ".")
        parts7, ok7 = [], True
        for name, _, _, _ in PINN:
            ours_s = ms(name, "rust", "auto")
            tb = best(results[name], "torch")[1].get("median_ms")
            if ours_s is None or tb is None:
                parts7.append(f"{name} not measured")
                ok7 = False
                continue
            r = ours_s / tb
            ok7 &= r <= 0.8
            parts7.append(f"{name} {r:.2f}")
        p(f"7. PINN per-sample Hessian and Laplacian (B = 1024, d = 2 and 32, loss + backward) ≤ 0.8× "
          f"PyTorch's best (vmap(hessian), autograd loop): {verdict(ok7)} — " + ", ".join(parts7) + ".")
    except (TypeError, KeyError) as e:
        # a run limited by --only, --budget or the device can lack a row a target needs
        p(f"(targets not computed: a row they need is missing from this run: {e!r})")
        print(f"compare-pytorch: targets not computed, a row is missing: {e!r}", file=sys.stderr)
    p("")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(f"(written to {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
