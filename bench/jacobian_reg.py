#!/usr/bin/env python3
"""PyTorch twin of examples/jacobian_reg: Jacobian regularization (Hoffman, Roberts & Yaida,
2019, "Robust learning with Jacobian regularization", arXiv:1908.02729) on the 8x8 digits.

Both sides follow the same spec (models, training, estimators, evaluation, timing, flags, JSON
schema), so that scripts/jacobian-reg-compare can put their numbers side by side. Run it with the
project venv's python (torch 2.11 + numpy):

    ~/.cache/tch-jacobian/torch-2.11.0/bin/python bench/jacobian_reg.py [--help]

What it does, per model (mlp, cnn), estimator and seed: torch.manual_seed(seed), the model with
PyTorch's default initialization, Adam (lr 1e-3), 30 epochs of mini-batches of 64 (a fresh
torch.randperm every epoch, the last partial batch kept), loss CE + λ·mean_b ‖J_b‖_F² with
J_b = ∂ logits_b / ∂ x_b and λ = 0.01 (no 1/2: the reference code's JacobianReg returns half of
this). The penalty's estimators (m = 10 outputs):

- exact: the reference code's full mode (facebookresearch/jacobian_regularizer,
  JacobianReg(n=-1)): a loop over the 10 one-hot output directions e_i, each
  autograd.grad(logits, x, e_i, create_graph=True), summing ‖e_iᵀ J‖² / B.
- projections: Hoffman's estimator with n_proj = 1: one direction v_b per sample and step,
  uniform on the unit sphere of R^10 (normalized Gaussians), m·‖v_bᵀ J_b‖² (one create_graph
  VJP).
- hutchpp: Hutch++ with k = 3 products per sample, by hand: a sketch direction s_b (sphere),
  Q_b = orth(J_bᵀ s_b) (one VJP without create_graph, torch.linalg.qr per sample, detached); the
  exact part ‖J_b Q_b‖² by one JVP with create_graph — the double-backward trick (a VJP with a
  zero cotangent u that requires grad and create_graph, then the gradient of that with respect
  to u along Q), which is what torch.autograd.functional.jvp does; plus the remainder
  m·‖v_bᵀ J_b (I − Q_b Q_bᵀ)‖² with one more sphere direction v_b (one create_graph VJP). The
  directions are drawn in the crate's order (v, then the sketch). Through the CNN's LayerNorm
  the double-backward JVP's parameter gradient is wrong (pytorch/pytorch#196700; torch.func.jvp
  is no better here): --check-func measures it. So, like the crate, J Q is formed there from the
  10 rows of J (--hutchpp-jq auto; `double-backward` times the wrong, faster variant).
- none: CE alone.

Then on the 360 test images: clean accuracy, mean exact ‖J_b‖_F (the row loop without
create_graph), accuracy under Gaussian noise clip(x + σz, 0, 1) (z: one draw per image, shared by
every σ, torch.manual_seed(seed) then torch.randn on the CPU, like the Rust side), FGSM and PGD
(L∞, `--pgd-steps` steps of 2.5ε/steps from x, no random start), the input gradients by
autograd.grad of the summed cross-entropy.

Time per epoch: wall time of the epoch's training steps only (no evaluation; CUDA synchronized
before the clock is read), ms; the mean over epochs 2..N and their minimum (all epochs when N = 1).

On the 2-core CPU (2 threads, otherwise idle) the default run (one seed, both models, the four
estimators) takes about 35 s, --seeds 0,1,2 about 110 s, --check-func 2 s.

--json PATH writes one JSON object per (model, estimator, seed), "impl": "pytorch", the grids'
keys their values formatted like Rust's `{}` (0 → "0", 0.1 → "0.1").

--check-func: for the CNN (LayerNorm) and the MLP at their initialization (first seed), on the
first 64 training images, the gradient with respect to all parameters of mean_b ‖J_b‖_F² three
ways — (a) the autograd row loop above, (b) torch.func: vmap(jacrev(functional_call)) over the
batch, differentiated by torch.func.grad and by autograd, (c) float64 central finite
differences along a random parameter direction — and the same for the Hutch++ estimate with
fixed draws (JVP by the double-backward trick, by torch.func.jvp, and J Q from the rows).
torch.func's batching rule of layer_norm's backward is known to be wrong for second derivatives
(pytorch/functorch#534, docs/second-order.md); this reports what happens for this penalty.
"""

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "data", "digits")
ESTIMATORS = ["none", "exact", "projections", "hutchpp"]


# ---------------------------------------------------------------- data and models


def load_digits(folder, device):
    """(train_x, train_y, test_x, test_y): images [N, 1, 8, 8] float32 pixels / 16, labels int64."""

    def load(name):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            sys.exit(f"jacobian_reg.py: no {path} (data/digits/gen-digits.py writes it)")
        return np.load(path, allow_pickle=False)

    out = []
    for split in ["train", "test"]:
        img = load(f"{split}-images.npy")
        lab = load(f"{split}-labels.npy")
        x = torch.from_numpy(img.astype(np.float32) / 16.0).reshape(-1, 1, img.shape[1], img.shape[2])
        out += [x.to(device), torch.from_numpy(lab.astype(np.int64)).to(device)]
    return tuple(out)


def make_model(kind, side=8):
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(side * side, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
        )
    pooled = side // 4
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.LayerNorm([16, side, side]),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * pooled * pooled, 10),
    )


def model_input(kind, images):
    """Images [B, 1, H, W] in the model's input shape: [B, H·W] for the MLP."""
    return images.reshape(images.shape[0], -1) if kind == "mlp" else images


# ---------------------------------------------------------------- the penalty's estimators


def penalty_exact(logits, x, create_graph=True):
    """mean_b ‖J_b‖_F²: the reference code's full mode, one VJP per output direction."""
    b, c = logits.shape
    total = 0
    for i in range(c):
        v = torch.zeros_like(logits)
        v[:, i] = 1
        (g,) = torch.autograd.grad(logits, x, v, retain_graph=True, create_graph=create_graph)
        total = total + g.square().sum() / b
    return total


def sphere(k, b, c, like):
    """k directions per sample, uniform on the unit sphere of R^c: [k, b, c]."""
    g = torch.randn(k, b, c, dtype=like.dtype, device=like.device)
    return g / g.norm(dim=2, keepdim=True)


def penalty_projections(logits, x, v=None):
    """Hoffman's estimator, n_proj = 1: mean_b m·‖v_bᵀ J_b‖²."""
    b, c = logits.shape
    if v is None:
        v = sphere(1, b, c, logits)
    (g,) = torch.autograd.grad(logits, x, v[0], create_graph=True)
    return c * g.square().sum() / b


def jvp_double_backward(out, x, t):
    """J t with create_graph, by the double-backward trick (torch.autograd.functional.jvp's)."""
    u = torch.zeros_like(out, requires_grad=True)
    (g,) = torch.autograd.grad(out, x, u, create_graph=True)
    (jt,) = torch.autograd.grad(g, u, t, create_graph=True)
    return jt


def hutchpp_basis(logits, x, sketch):
    """Q_b = orth(J_bᵀ s_b): one VJP without create_graph, QR per sample, detached; [B, n, 1]."""
    (sk,) = torch.autograd.grad(logits, x, sketch[0], retain_graph=True)
    q, _ = torch.linalg.qr(sk.reshape(logits.shape[0], -1, 1))
    return q.detach()


def penalty_hutchpp(logits, x, v=None, sketch=None, q=None, jq_by="double-backward", model=None):
    """Hutch++ with s = 1 sketch direction and g = 1 remainder direction (k = 3 products):
    mean_b ‖J_b Q_b‖² + m·‖v_bᵀ J_b (I − Q_b Q_bᵀ)‖², Q_b = orth(J_bᵀ s_b) detached.

    q: a given basis instead of the sketch's (--check-func's finite differences hold it fixed).
    jq_by: how J Q is formed — "double-backward" (training), "func" (torch.func.jvp through
    model, needs `model`) or "rows" (from the 10 rows of J, for --check-func's reference)."""
    b, c = logits.shape
    if v is None:
        v = sphere(1, b, c, logits)
    if q is None:
        if sketch is None:
            sketch = sphere(1, b, c, logits)
        q = hutchpp_basis(logits, x, sketch)
    qt = q.reshape(x.shape)
    if jq_by == "double-backward":
        jq = jvp_double_backward(logits, x, qt)
    elif jq_by == "func":
        _, jq = torch.func.jvp(model, (x.detach(),), (qt,))
    else:
        cols = []
        for i in range(c):
            e = torch.zeros_like(logits)
            e[:, i] = 1
            (row,) = torch.autograd.grad(logits, x, e, retain_graph=True, create_graph=True)
            cols.append((row.reshape(b, -1) * q[:, :, 0]).sum(1))
        jq = torch.stack(cols, 1)
    exact = jq.square().sum(1)
    (vj,) = torch.autograd.grad(logits, x, v[0], create_graph=True)
    vj = vj.reshape(b, 1, -1)
    rest = c * (vj - vj @ q @ q.transpose(1, 2)).square().sum((1, 2))
    return (exact + rest).mean()


def penalty(est, logits, x, jq_by):
    if est == "exact":
        return penalty_exact(logits, x)
    if est == "projections":
        return penalty_projections(logits, x)
    if est == "hutchpp":
        return penalty_hutchpp(logits, x, jq_by=jq_by)
    raise ValueError(est)


def hutchpp_jq(args, kind):
    """How Hutch++ forms J Q: --hutchpp-jq, or by default what the crate does — the
    double-backward JVP for the MLP, and from the 10 rows of J through the CNN's LayerNorm, where
    the double-backward JVP's parameter gradient is wrong (pytorch/pytorch#196700)."""
    if args.hutchpp_jq != "auto":
        return args.hutchpp_jq
    return "rows" if kind == "cnn" else "double-backward"


# ---------------------------------------------------------------- training


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(data, kind, est, seed, args, device):
    train_x, train_y = data[0], data[1]
    torch.manual_seed(seed)
    model = make_model(kind, train_x.shape[-1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    n = train_x.shape[0]
    epoch_ms = []
    last_ce = last_pen = float("nan")
    for _ in range(args.epochs):
        sync(device)
        start = time.perf_counter()
        perm = torch.randperm(n, device=device)
        ce_sum = torch.zeros((), device=device)
        pen_sum = torch.zeros((), device=device)
        for lo in range(0, n, args.batch_size):
            idx = perm[lo : lo + args.batch_size]
            x = model_input(kind, train_x[idx])
            y = train_y[idx]
            if est != "none":
                x = x.detach().requires_grad_(True)
            logits = model(x)
            ce = F.cross_entropy(logits, y)
            loss = ce
            if est != "none":
                pen = penalty(est, logits, x, hutchpp_jq(args, kind))
                pen_sum += pen.detach() * len(idx)
                loss = ce + args.lambda_ * pen
            ce_sum += ce.detach() * len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        epoch_ms.append((time.perf_counter() - start) * 1e3)
        last_ce = ce_sum.item() / n
        if est != "none":
            last_pen = pen_sum.item() / n
        if not (math.isfinite(last_ce) and (est == "none" or math.isfinite(last_pen))):
            sys.exit(f"{kind} {est} seed {seed}: training diverged (CE {last_ce}, penalty {last_pen})")
    timed = epoch_ms[1:] if len(epoch_ms) > 1 else epoch_ms
    return model, sum(timed) / len(timed), min(timed), last_ce, last_pen


# ---------------------------------------------------------------- evaluation


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(-1) == y).double().mean().item()


def input_gradient(model, x, y):
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


def fgsm(model, x, y, eps):
    return (x + eps * input_gradient(model, x, y).sign()).clamp(0, 1)


def pgd(model, x0, y, eps, steps):
    alpha = 2.5 * eps / steps
    lo, hi = x0 - eps, x0 + eps
    x = x0
    for _ in range(steps):
        x = torch.minimum(torch.maximum(x + alpha * input_gradient(model, x, y).sign(), lo), hi).clamp(0, 1)
    return x


def mean_jacobian_norm(model, x):
    x = x.detach().requires_grad_(True)
    logits = model(x)
    b, c = logits.shape
    sq = torch.zeros(b, dtype=torch.float64, device=x.device)
    for i in range(c):
        v = torch.zeros_like(logits)
        v[:, i] = 1
        (g,) = torch.autograd.grad(logits, x, v, retain_graph=True)
        sq += g.reshape(b, -1).double().square().sum(1)
    return sq.sqrt().mean().item()


def evaluate(model, kind, data, args, seed):
    test_x, test_y = data[2], data[3]
    x = model_input(kind, test_x)
    y = test_y
    res = {"clean_acc": accuracy(model, x, y), "mean_jf": mean_jacobian_norm(model, x)}
    torch.manual_seed(seed)
    z = torch.randn(test_x.shape).to(x.device).reshape(x.shape)
    res["noise"] = [(s, accuracy(model, (x + s * z).clamp(0, 1), y)) for s in args.sigmas]
    res["fgsm"] = [(e, accuracy(model, fgsm(model, x, y, e), y)) for e in args.eps]
    res["pgd"] = [(e, accuracy(model, pgd(model, x, y, e, args.pgd_steps), y)) for e in args.eps]
    return res


# ---------------------------------------------------------------- output


def rust_fmt(v):
    """A float as Rust's `{}` writes it: shortest round trip, no exponent, no trailing '.0'."""
    return np.format_float_positional(float(v), trim="-")


def json_num(v):
    return v if math.isfinite(v) else None


def json_line(r, args, device):
    grid = lambda pts: {rust_fmt(k): json_num(a) for k, a in pts}
    obj = {
        "impl": "pytorch",
        "model": r["model"],
        "estimator": r["estimator"],
        "seed": r["seed"],
        "epochs": args.epochs,
        "threads": args.threads,
        "device": device_name(device),
        "ms_per_epoch_mean": json_num(r["ms_mean"]),
        "ms_per_epoch_min": json_num(r["ms_min"]),
        "clean_acc": json_num(r["clean_acc"]),
        "mean_jf": json_num(r["mean_jf"]),
        "noise": grid(r["noise"]),
        "fgsm": grid(r["fgsm"]),
        "pgd": grid(r["pgd"]),
    }
    return json.dumps(obj)


def device_name(device):
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return "cpu"


def print_tables(records, kind, estimators, n_seeds, pgd_steps):
    rows = [(e, [r for r in records if r["model"] == kind and r["estimator"] == e]) for e in estimators]
    rows = [(e, rs) for e, rs in rows if rs]
    if not rows:
        return
    mean = lambda v: sum(v) / len(v)
    seeds = "1 seed" if n_seeds == 1 else f"means over {n_seeds} seeds"
    print(f"\n{kind} ({seeds})")
    print(f"{'estimator':<12} {'ms/epoch mean':>14} {'ms/epoch min':>12} {'clean acc':>10} {'mean ‖J‖_F':>12}")
    for e, rs in rows:
        print(
            f"{e:<12} {mean([r['ms_mean'] for r in rs]):>14.1f} {mean([r['ms_min'] for r in rs]):>12.1f}"
            f" {mean([r['clean_acc'] for r in rs]):>10.4f} {mean([r['mean_jf'] for r in rs]):>12.3f}"
        )
    for title, key in [("Gaussian noise σ", "noise"), ("FGSM ε", "fgsm"), (f"PGD-{pgd_steps} ε", "pgd")]:
        keys = [k for k, _ in rows[0][1][0][key]]
        if not keys:
            continue
        widths = [max(7, len(rust_fmt(k)) + 1) for k in keys]
        print(f"{'':<12}" + "".join(f"{rust_fmt(k):>{w}}" for k, w in zip(keys, widths)) + f"   ← accuracy under {title}")
        for e, rs in rows:
            cells = [mean([r[key][i][1] for r in rs]) for i in range(len(keys))]
            print(f"{e:<12}" + "".join(f"{a:>{w}.3f}" for a, w in zip(cells, widths)))


# ---------------------------------------------------------------- --check-func


def flat_grads(loss, params):
    return torch.autograd.grad(loss, params, materialize_grads=True)


def fd_directional(f, params, d, h):
    """Central finite difference of f() along d (params changed in place and restored)."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s, dd in zip(params, saved, d):
            p.copy_(s + h * dd)
    fp = f()
    with torch.no_grad():
        for p, s, dd in zip(params, saved, d):
            p.copy_(s - h * dd)
    fm = f()
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
    return (fp - fm) / (2 * h)


def check_func(args, device, data):
    from torch.func import functional_call, grad, jacrev, vmap

    seed = args.seeds[0]
    images = data[0][:64]
    print(
        f"--check-func: ∇_θ of mean_b ‖J_b‖_F² (J_b = ∂ logits_b/∂ x_b) at initialization (seed {seed}), "
        f"first 64 training images, device {device_name(device)}\n"
        "  (a) autograd row loop, create_graph (the reference code's full mode)\n"
        "  (b) torch.func: vmap(jacrev(functional_call)) over the batch; (b1) its gradient by torch.func.grad,\n"
        "      (b2) by autograd through the vmap\n"
        "  (c) float64 central finite differences of the row loop's value (no create_graph) along a random\n"
        "      direction d of the parameters\n"
        "  max|Δ|: max abs difference over all parameter gradients; per parameter where it is not ~0."
    )
    for kind in ["cnn", "mlp"]:
        torch.manual_seed(seed)
        base = make_model(kind, images.shape[-1]).to(device)
        for dtype in [torch.float32, torch.float64]:
            model = copy.deepcopy(base).to(dtype)
            names = [n for n, _ in model.named_parameters()]
            params = [p for _, p in model.named_parameters()]
            x = model_input(kind, images).to(dtype).detach()
            b = x.shape[0]

            def value_rows():
                xx = x.clone().requires_grad_(True)
                return penalty_exact(model(xx), xx, create_graph=False).item()

            xx = x.clone().requires_grad_(True)
            pen_a = penalty_exact(model(xx), xx)
            g_a = flat_grads(pen_a, params)

            def per_sample(p, xb):
                return functional_call(model, p, (xb.unsqueeze(0),)).squeeze(0)

            def pen_func(p):
                j = vmap(jacrev(per_sample, argnums=1), in_dims=(None, 0))(p, x)
                return j.square().sum() / b

            pdict = {n: p.detach() for n, p in zip(names, params)}
            g_b1d = grad(pen_func)(pdict)
            g_b1 = [g_b1d[n] for n in names]
            pen_b = pen_func(dict(zip(names, params)))
            g_b2 = flat_grads(pen_b, params)

            scale = max(g.abs().max().item() for g in g_a)
            tag = f"{kind} {str(dtype).replace('torch.', '')}"
            print(f"\n{tag}: penalty (a) {pen_a.item():.10g}, (b) {pen_b.item():.10g}; max|∇(a)| {scale:.3e}")
            for lab, g_b in [("(b1) torch.func.grad", g_b1), ("(b2) autograd over vmap", g_b2)]:
                diffs = [(n, (u - w).abs().max().item(), w.abs().max().item()) for n, u, w in zip(names, g_b, g_a)]
                worst = max(d for _, d, _ in diffs)
                print(f"  {lab} − (a): max|Δ| {worst:.3e} ({worst / scale:.2e} of max|∇(a)|)")
                for n, d, s in diffs:
                    if d > 1e-4 * scale:
                        print(f"      {n:<12} max|Δ| {d:.3e}  max|∇(a)| {s:.3e}")
            if dtype != torch.float64:
                continue
            # (c): the direction leaves LayerNorm's elementwise weight and bias out: at
            # initialization they are exactly 1 and 0, so the constant zero-pixel regions give
            # tied max-pool windows, which any change of those parameters unties — the penalty
            # jumps there (not differentiable), while changes of the other parameters keep the
            # ties exact.
            gen = torch.Generator(device=device).manual_seed(1234)
            d = [
                torch.zeros_like(p)
                if isinstance(mod, nn.LayerNorm)
                else torch.randn(p.shape, generator=gen, dtype=dtype, device=device)
                for p, mod in zip(params, owners(model, names))
            ]
            skipped = [n for n, dd in zip(names, d) if not dd.any()]
            dirs = lambda g: sum((u * w).sum().item() for u, w in zip(g, d))
            fds = [fd_directional(value_rows, params, d, h) for h in (1e-7, 1e-8)]
            print(
                f"  directional derivative along d{' (d = 0 on ' + ', '.join(skipped) + ')' if skipped else ''}:\n"
                f"      (a) {dirs(g_a):.10g}   (b1) {dirs(g_b1):.10g}   (b2) {dirs(g_b2):.10g}\n"
                f"      (c) {fds[1]:.10g} (h = 1e-8; {fds[0]:.10g} at h = 1e-7)"
            )
            # Hutch++ with fixed draws: J Q by the double-backward trick (training's), by
            # torch.func.jvp, and from the 10 rows (the reference), and finite differences.
            # Q is detached in the estimator, so the finite differences hold it fixed at the
            # initial parameters' basis.
            torch.manual_seed(seed + 1)
            v = sphere(1, b, 10, x)
            sk = sphere(1, b, 10, x)
            xx = x.clone().requires_grad_(True)
            q0 = hutchpp_basis(model(xx), xx, sk)

            def hpp(jq_by):
                xx = x.clone().requires_grad_(True)
                return penalty_hutchpp(model(xx), xx, v=v, q=q0, jq_by=jq_by, model=model)

            g_rows = flat_grads(hpp("rows"), params)
            g_dbl = flat_grads(hpp("double-backward"), params)
            g_fun = flat_grads(hpp("func"), params)
            hscale = max(g.abs().max().item() for g in g_rows)
            fd_h = fd_directional(lambda: hpp("rows").item(), params, d, 1e-8)
            print(
                f"  Hutch++ (fixed draws v, s; Q held at its initial value), value {hpp('rows').item():.10g}; "
                f"max|∇(rows)| {hscale:.3e}"
            )
            for lab, g in [("JVP by double backward", g_dbl), ("JVP by torch.func.jvp", g_fun)]:
                diffs = [(n, (u - w).abs().max().item(), w.abs().max().item()) for n, u, w in zip(names, g, g_rows)]
                worst = max(dd for _, dd, _ in diffs)
                print(f"    {lab} − J Q from rows: max|Δ| {worst:.3e} ({worst / hscale:.2e} of max|∇|)")
                for n, dd, s in diffs:
                    if dd > 1e-4 * hscale:
                        print(f"        {n:<12} max|Δ| {dd:.3e}  max|∇(rows)| {s:.3e}")
            print(
                f"    along d: rows {dirs(g_rows):.10g}   double backward {dirs(g_dbl):.10g}   "
                f"torch.func.jvp {dirs(g_fun):.10g}   finite differences {fd_h:.10g}"
            )


def owners(model, names):
    """The module owning each named parameter."""
    mods = dict(model.named_modules())
    return [mods[n.rsplit(".", 1)[0]] if "." in n else model for n in names]


# ---------------------------------------------------------------- main


def floats(s):
    out = []
    for v in s.split(","):
        v = float(v)
        if not (math.isfinite(v) and v >= 0):
            raise argparse.ArgumentTypeError(f"needs finite values ≥ 0, got {v}")
        out.append(v)
    return out


def estimator_list(s):
    out = [v.strip() for v in s.split(",")]
    for v in out:
        if v not in ESTIMATORS:
            raise argparse.ArgumentTypeError(f"expected none, exact, projections or hutchpp, got {v!r}")
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError("an estimator given twice")
    return out


def main():
    ap = argparse.ArgumentParser(
        description="PyTorch twin of examples/jacobian_reg: Jacobian regularization (Hoffman, Roberts & "
        "Yaida, 2019) of an MLP and a CNN on the 8x8 digits (the module docstring has the details).",
    )
    ap.add_argument("--model", choices=["mlp", "cnn", "both"], default="both", help="default both")
    ap.add_argument(
        "--estimators",
        type=estimator_list,
        default=ESTIMATORS,
        metavar="LIST",
        help="comma list of none, exact, projections, hutchpp (default all four)",
    )
    ap.add_argument(
        "--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0], metavar="LIST",
        help="comma list (default 0); a seed drives the initialization, the shuffling, the "
        "estimators' draws and the test noise",
    )
    ap.add_argument("--epochs", type=int, default=30, metavar="N", help="default 30")
    ap.add_argument("--batch-size", type=int, default=64, metavar="B", help="default 64, the last partial batch kept")
    ap.add_argument("--lr", type=float, default=1e-3, metavar="R", help="Adam learning rate (default 0.001)")
    ap.add_argument("--lambda", dest="lambda_", type=float, default=0.01, metavar="L", help="penalty weight (default 0.01)")
    ap.add_argument("--threads", type=int, default=2, metavar="T", help="torch.set_num_threads (default 2)")
    ap.add_argument(
        "--sigmas", type=floats, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5], metavar="LIST",
        help="Gaussian noise s.d. on the test images (default 0,0.1,0.2,0.3,0.4,0.5)",
    )
    ap.add_argument(
        "--eps", type=floats, default=[0.0, 0.02, 0.05, 0.1, 0.15, 0.2], metavar="LIST",
        help="L-inf budgets of FGSM and PGD (default 0,0.02,0.05,0.1,0.15,0.2)",
    )
    ap.add_argument(
        "--hutchpp-jq",
        choices=["auto", "double-backward", "rows"],
        default="auto",
        help="how Hutch++ forms J Q: auto (default: the crate's choice — rows through the CNN's "
        "LayerNorm, where the double-backward JVP's gradient is wrong, pytorch/pytorch#196700; the "
        "double-backward JVP for the MLP), double-backward (fast, wrong on the CNN), rows",
    )
    ap.add_argument("--pgd-steps", type=int, default=10, metavar="N", help="PGD steps of 2.5 eps / N (default 10)")
    ap.add_argument("--json", metavar="PATH", help="write one JSON object per line per (model, estimator, seed)")
    ap.add_argument("--digits", default=DIGITS, metavar="DIR", help="the digits' .npy files (default data/digits)")
    ap.add_argument("--device", metavar="D", help="cpu, cuda or cuda:N (default: CUDA when available)")
    ap.add_argument(
        "--check-func", action="store_true",
        help="only the check of the penalty's parameter gradient: autograd row loop, torch.func, finite differences",
    )
    args = ap.parse_args()
    if args.epochs < 1 or args.batch_size < 1 or args.threads < 1 or args.pgd_steps < 1:
        ap.error("--epochs, --batch-size, --threads, --pgd-steps need at least 1")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    data = load_digits(args.digits, device)
    t0 = time.perf_counter()
    if args.check_func:
        check_func(args, device, data)
        print(f"\ntotal {time.perf_counter() - t0:.1f} s ({args.threads} threads)")
        return

    models = ["mlp", "cnn"] if args.model == "both" else [args.model]
    print(
        f"Jacobian regularization, PyTorch {torch.__version__}, {device_name(device)}, {args.threads} threads; "
        f"{data[0].shape[0]} train / {data[2].shape[0]} test images; {args.epochs} epochs, batch {args.batch_size}, "
        f"Adam lr {args.lr}, λ {args.lambda_}"
    )
    json_file = None
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        json_file = open(args.json, "w")
    records = []
    for kind in models:
        for est in args.estimators:
            for seed in args.seeds:
                t1 = time.perf_counter()
                model, ms_mean, ms_min, ce, pen = train(data, kind, est, seed, args, device)
                ev = evaluate(model, kind, data, args, seed)
                r = dict(model=kind, estimator=est, seed=seed, ms_mean=ms_mean, ms_min=ms_min, **ev)
                records.append(r)
                pen_s = f", ‖J‖²_F {pen:.3f}" if est != "none" else ""
                print(
                    f"{kind} {est} seed {seed}: {ms_mean:.1f} ms/epoch, CE {ce:.4f}{pen_s}, clean acc "
                    f"{ev['clean_acc']:.4f}, mean ‖J‖_F {ev['mean_jf']:.3f} ({time.perf_counter() - t1:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                if json_file:
                    json_file.write(json_line(r, args, device) + "\n")
                    json_file.flush()
    for kind in models:
        print_tables(records, kind, args.estimators, len(args.seeds), args.pgd_steps)
    if json_file:
        json_file.close()
        print(f"json: {args.json}")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
