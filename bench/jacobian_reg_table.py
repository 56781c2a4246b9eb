#!/usr/bin/env python3
"""The Markdown table of scripts/jacobian-reg-compare: examples/jacobian_reg (ours) against its
PyTorch twin bench/jacobian_reg.py, from their --json files (one JSON object per line per
(model, estimator, seed); the schema of the shared spec).

    python bench/jacobian_reg_table.py OURS.jsonl PYTORCH.jsonl

The sides are told apart by each line's "impl" ("tch-jacobian" or "pytorch"), not by the order
of the files. Per model and estimator: both sides' ms/epoch (the mean over epochs 2..N, then the
mean over seeds) and their ratio ours / PyTorch; for each side the clean accuracy, the mean
‖J‖_F, the accuracy under Gaussian noise σ = 0.3 and under FGSM and PGD at ε = 0.1, as
mean ± standard deviation (n − 1) over the seeds. The header names the machine (lscpu's model
name), the threads, the dtype, the device and the git commit of this checkout.
"""

import argparse
import json
import math
import os
import subprocess
import sys

OURS, THEIRS = "tch-jacobian", "pytorch"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["mlp", "cnn"]
ESTIMATORS = ["none", "exact", "projections", "hutchpp"]


def read(paths):
    records = []
    for path in paths:
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{i}: not JSON: {e}")
                missing = [k for k in ("impl", "model", "estimator", "seed", "ms_per_epoch_mean") if k not in r]
                if missing:
                    sys.exit(f"{path}:{i}: no {', '.join(missing)}")
                records.append(r)
    return records


def machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def commit():
    def git(*a):
        return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True, check=True).stdout.strip()

    try:
        c = git("rev-parse", "--short", "HEAD")
        return c + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def grid_value(r, grid, at):
    """The accuracy of grid `grid` at the value `at` (keys are the values as strings)."""
    for k, v in (r.get(grid) or {}).items():
        try:
            if abs(float(k) - at) < 1e-9:
                return v
        except ValueError:
            continue
    return None


def stats(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def fmt(s, digits):
    if s is None:
        return "–"
    mean, std = s
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def ordered(values, known):
    return [v for v in known if v in values] + sorted(v for v in values if v not in known)


def distinct(records, key):
    return sorted({str(r.get(key)) for r in records})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="JSON-lines files of both sides")
    ap.add_argument("--sigma", type=float, default=0.3, help="noise level of the noise column")
    ap.add_argument("--eps", type=float, default=0.1, help="ε of the FGSM and PGD columns")
    args = ap.parse_args()
    records = read(args.files)
    impls = {r["impl"] for r in records}
    for side in (OURS, THEIRS):
        if side not in impls:
            print(f"jacobian_reg_table.py: warning: no records with \"impl\": \"{side}\"", file=sys.stderr)
    others = impls - {OURS, THEIRS}
    if others:
        print(f"jacobian_reg_table.py: warning: ignoring impl {', '.join(sorted(others))}", file=sys.stderr)

    by = {}
    for r in records:
        by.setdefault((r["model"], r["estimator"], r["impl"]), []).append(r)
    models = ordered({r["model"] for r in records}, MODELS)
    estimators = ordered({r["estimator"] for r in records}, ESTIMATORS)
    seeds = {side: sorted({r["seed"] for r in records if r["impl"] == side}) for side in (OURS, THEIRS)}

    print("## Jacobian regularization on the 8x8 digits: tch-jacobian against PyTorch\n")
    print(f"- machine: {machine()}")
    print(f"- threads: {', '.join(distinct(records, 'threads'))}; device: {', '.join(distinct(records, 'device'))}; dtype: float32")
    print(f"- epochs: {', '.join(distinct(records, 'epochs'))}; seeds: ours {seeds[OURS]}, PyTorch {seeds[THEIRS]}")
    print(f"- commit: {commit()}")
    print(
        "- ms/epoch: wall time of an epoch's training steps, mean over epochs 2..N, then over the seeds; "
        "ratio < 1: ours faster. Accuracies on the 360 test images, mean ± std over the seeds."
    )

    print("\n### Time per epoch\n")
    print("| model | estimator | ours ms/epoch | PyTorch ms/epoch | ours / PyTorch |")
    print("|---|---|---:|---:|---:|")
    for m in models:
        for e in estimators:
            a = stats([r["ms_per_epoch_mean"] for r in by.get((m, e, OURS), [])])
            b = stats([r["ms_per_epoch_mean"] for r in by.get((m, e, THEIRS), [])])
            if a is None and b is None:
                continue
            ratio = f"{a[0] / b[0]:.2f}" if a and b and b[0] > 0 else "–"
            print(f"| {m} | {e} | {fmt(a, 1)} | {fmt(b, 1)} | {ratio} |")

    s, eps = args.sigma, args.eps
    sk, ek = f"{s:g}", f"{eps:g}"
    print("\n### Accuracy and ‖J‖_F\n")
    print(
        f"| model | estimator | side | clean acc | mean ‖J‖_F | noise σ={sk} | FGSM ε={ek} | PGD ε={ek} |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for m in models:
        for e in estimators:
            for side, label in ((OURS, "ours"), (THEIRS, "PyTorch")):
                rs = by.get((m, e, side), [])
                if not rs:
                    continue
                cells = [
                    fmt(stats([r.get("clean_acc") for r in rs]), 3),
                    fmt(stats([r.get("mean_jf") for r in rs]), 3),
                    fmt(stats([grid_value(r, "noise", s) for r in rs]), 3),
                    fmt(stats([grid_value(r, "fgsm", eps) for r in rs]), 3),
                    fmt(stats([grid_value(r, "pgd", eps) for r in rs]), 3),
                ]
                print(f"| {m} | {e} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
