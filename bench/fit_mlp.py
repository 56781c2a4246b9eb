#!/usr/bin/env python3
"""The peers of examples/fit_mlp.rs (issue 32): the same 1 -> 32 -> 32 -> 1 tanh MLP (1153 parameters),
the same data (y = sin(3x)·exp(-x²/4) on 2000 points of [-3, 3], f32) and the same initial weights,
read from the .npy files the example writes (target/fit_mlp/), trained to the target MSE 1e-4 by

- pypose: pp.optim.LM(model) with its defaults (dense Jacobian by vectorized autograd, Cholesky,
  TrustRegion damping, reject = 16), optimizer.step(input, target);
- Adam: torch.optim.Adam, full batch, lr 1e-3, 3e-3, 1e-2;
- LBFGS: torch.optim.LBFGS(line_search_fn="strong_wolfe", max_iter=20, history_size=50), full batch.

Each run stops at the target MSE, after --max-seconds, or after its step cap; prints steps, seconds and
the final MSE, one line per peer (JSON with --json). 2 threads (torch.set_num_threads), as the example.

    cargo run --release --example fit_mlp       # writes target/fit_mlp/*.npy
    python bench/fit_mlp.py [--data target/fit_mlp] [--max-seconds 300]
"""
import argparse
import json
import os
import platform
import time

import numpy as np
import torch

TARGET = 1e-4


def model_from(data):
    net = torch.nn.Sequential(
        torch.nn.Linear(1, 32), torch.nn.Tanh(),
        torch.nn.Linear(32, 32), torch.nn.Tanh(),
        torch.nn.Linear(32, 1))
    with torch.no_grad():
        for i, layer in zip((0, 2, 4), ("l0", "l1", "l2")):
            net[i].weight.copy_(torch.from_numpy(np.load(os.path.join(data, f"{layer}.weight.npy"))))
            net[i].bias.copy_(torch.from_numpy(np.load(os.path.join(data, f"{layer}.bias.npy"))))
    return net


def mse(net, x, y):
    with torch.no_grad():
        return float((net(x).view(-1) - y).square().mean())


def run_pypose(data, x, y, max_seconds, max_steps=1000):
    import pypose as pp
    net = model_from(data)

    class Residual(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).view(-1)

    model = Residual(net)
    opt = pp.optim.LM(model)
    t0 = time.perf_counter()
    steps = 0
    while steps < max_steps and time.perf_counter() - t0 < max_seconds:
        opt.step(input=x, target=y)
        steps += 1
        if mse(net, x, y) <= TARGET:
            break
    return steps, time.perf_counter() - t0, mse(net, x, y)


def run_adam(data, x, y, lr, max_seconds, max_steps=10**7):
    net = model_from(data)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    t0 = time.perf_counter()
    steps = 0
    while steps < max_steps and time.perf_counter() - t0 < max_seconds:
        opt.zero_grad()
        loss = (net(x).view(-1) - y).square().mean()
        loss.backward()
        opt.step()
        steps += 1
        if float(loss.detach()) <= TARGET:
            break
    return steps, time.perf_counter() - t0, mse(net, x, y)


def run_lbfgs(data, x, y, max_seconds, max_steps=10**5):
    net = model_from(data)
    opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=20, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (net(x).view(-1) - y).square().mean()
        loss.backward()
        return loss

    t0 = time.perf_counter()
    steps = 0
    while steps < max_steps and time.perf_counter() - t0 < max_seconds:
        opt.step(closure)
        steps += 1
        if mse(net, x, y) <= TARGET:
            break
    return steps, time.perf_counter() - t0, mse(net, x, y)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="target/fit_mlp")
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", nargs="*", default=["pypose", "adam", "lbfgs"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.from_numpy(np.load(os.path.join(args.data, "x.npy")))
    y = torch.from_numpy(np.load(os.path.join(args.data, "y.npy")))
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, {x.dtype}, m = {y.numel()}, target MSE {TARGET:g}, "
          f"initial MSE {mse(model_from(args.data), x, y):.3e}")
    rows = []
    if "pypose" in args.peers:
        rows.append(("pypose LM", *run_pypose(args.data, x, y, args.max_seconds)))
    if "adam" in args.peers:
        for lr in (1e-3, 3e-3, 1e-2):
            rows.append((f"Adam lr {lr:g}", *run_adam(args.data, x, y, lr, args.max_seconds)))
    if "lbfgs" in args.peers:
        rows.append(("LBFGS (strong Wolfe, 20 it/step)", *run_lbfgs(args.data, x, y, args.max_seconds)))
    for name, steps, secs, m in rows:
        if args.json:
            print(json.dumps({"peer": name, "steps": steps, "seconds": secs, "mse": m,
                              "reached": m <= TARGET}))
        else:
            print(f"{name:34s} {steps:6d} steps  {secs:8.2f} s  MSE {m:.3e}  "
                  f"{'reached' if m <= TARGET else 'not reached'}", flush=True)


if __name__ == "__main__":
    main()
