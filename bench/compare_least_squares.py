"""The `least-squares` group of scripts/compare-pytorch (`--only least-squares`): tch-jacobian's
`least_squares` against SciPy's `least_squares` loop (lm, trf), torchimize, pypose and Theseus on
the batched curve-fit benchmark of issue 31, in one invocation, with the same threads, f64.

B independent fits y = a·exp(−b t) + c·sin(d t) + noise, 2000 points each, starts within ±20 %
(tests/lsq/bench_data.py; problem i of any B is the same). For each B (1, 16, 256, 4096 by
default) this writes t, y, the starts and SciPy lm's tight reference cost per problem as .npy
into WORK/least-squares, runs the Rust side (`compare --least-squares DIR`, bench/src/bin/compare.rs)
and times the peers here with bench/least_squares.py's harness (Theseus from its own venv,
bench/install-theseus, when it is there). Every solver gets the analytic Jacobian except ours'
collapsed-Taylor rows, which differentiate the residual themselves. A problem is "at SciPy's cost"
when its final cost ≤ ref·(1 + 1e-6), ref = SciPy lm from the same start, exact Jacobian,
ftol = xtol = gtol = 1e-15. Times: the median of `--lsq-repeats` whole solves (1 at B = 4096),
after one warm-up for ours and none for the peers (their first run is one of the repeats, as in
bench/least_squares.py). torchimize, pypose and Theseus at B = 4096 take tens of minutes on a
loaded 2-core machine: only with `--lsq-slow`.

The report (Markdown, with the machine, threads, dtype, commit and load average) goes to stdout and
OUT-least-squares.md.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "lsq"))

PEERS = "scipy_lm,scipy_trf,torchimize,pypose_joint,pypose_loop"


def theseus_python():
    """The Theseus venv's python (bench/install-theseus), if any."""
    for cand in (os.environ.get("TCH_JACOBIAN_THESEUS_PYTHON"), "/work/venv-theseus/bin/python",
                 os.path.expanduser("~/.cache/tch-jacobian/venv-theseus/bin/python"), "/tmp/venv-theseus/bin/python"):
        if cand and os.path.exists(cand):
            return cand
    return None


def git_commit():
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except Exception:  # noqa: BLE001
        return "?"


def time_peer(solve, t, start, y, ref, reps):
    import least_squares as harness

    times, x, extra = [], None, {}
    for _ in range(reps):
        t0 = time.perf_counter()
        x, extra = solve(t, start, y)
        times.append((time.perf_counter() - t0) * 1e3)
    cost = harness.costs_np(x, t, y)
    return dict(median_ms=statistics.median(times), ms_all=times, frac_at_ref=float(np.mean(cost <= ref * (1 + harness.REL))),
                worst_rel_excess=float(np.max((cost - ref) / ref)), extra=extra)


def run(args, rust_bin, work, out_path, threads):
    import bench_data
    import least_squares as harness
    import torch

    torch.set_num_threads(threads)
    torch.set_default_dtype(torch.float64)
    bs = [int(b) for b in args.lsq_b.split(",")]
    d = os.path.join(work, "least-squares")
    os.makedirs(d, exist_ok=True)
    load_start = os.getloadavg()
    t_start = time.time()
    data, cases = {}, []
    for b in bs:
        t, _, start, _, y = bench_data.problems(b)
        print(f"  least-squares: SciPy lm's tight reference for B = {b}", file=sys.stderr, flush=True)
        ref = harness.reference(t, start, y)
        data[b] = (t, start, y, ref)
        np.save(os.path.join(d, "t.npy"), t)
        for k, v in (("y", y), ("start", start), ("ref", ref)):
            np.save(os.path.join(d, f"{k}_{b}.npy"), v)
        reps = 1 if b >= 4096 else args.lsq_repeats
        cases.append(dict(b=b, t="t.npy", y=f"y_{b}.npy", start=f"start_{b}.npy", ref=f"ref_{b}.npy", repeats=reps))

    rows = []
    for b in bs:
        t, start, y, ref = data[b]
        reps = 1 if b >= 4096 else args.lsq_repeats
        # Ours first (one process per B: the same warm-up for every B).
        print(f"  least-squares: ours, B = {b}", file=sys.stderr, flush=True)
        with open(os.path.join(d, "lsq.json"), "w") as fh:
            json.dump(dict(cases=[c for c in cases if c["b"] == b]), fh, indent=1)
        out = subprocess.run([rust_bin, "--least-squares", d, "--threads", str(threads)], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        for line in out.splitlines():
            v = json.loads(line)
            if "median_ms" in v:
                rows.append(dict(side="ours", peer="tch-jacobian", settings=v["method"], B=b, median_ms=v["median_ms"],
                                 ms_all=v["ms_all"], frac_at_ref=v["frac_at_ref"], worst_rel_excess=v["worst_rel_excess"],
                                 extra=dict(mean_nfev=v["mean_nfev"], mean_njev=v["mean_njev"],
                                            max_iterations=v["max_iterations"], failed=v["failed"])))
        # The peers in this process.
        names = [n for n in PEERS.split(",") if b < 4096 or args.lsq_slow or n.startswith("scipy")]
        for solve, meta in harness.peers(names, b, args.lsq_slow):
            if solve is None:
                continue
            print(f"  least-squares: {meta['peer']} ({meta['settings'][:40]}…), B = {b}", file=sys.stderr, flush=True)
            one_rep = 1 if (b >= 4096 or (meta["peer"] == "pypose_loop" and b > 16)) else reps
            try:
                r = time_peer(solve, t, start, y, ref, one_rep)
            except Exception as e:  # noqa: BLE001
                r = dict(error=f"{type(e).__name__}: {e}"[:300])
            rows.append(dict(side="peer", B=b, **meta, **r))
    # Theseus in its own venv.
    py = theseus_python()
    tb = [b for b in bs if b < 4096 or args.lsq_slow]
    if py and tb:
        print(f"  least-squares: theseus ({py}), B = {tb}", file=sys.stderr, flush=True)
        tout = os.path.join(d, "theseus.jsonl")
        if os.path.exists(tout):
            os.remove(tout)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads))
        proc = subprocess.run([py, os.path.join(HERE, "least_squares.py"), "--B", *map(str, tb), "--peers", "theseus",
                               "--threads", str(threads), "--repeats", str(args.lsq_repeats), "--out", tout],
                              env=env, capture_output=True, text=True)
        if os.path.exists(tout):
            for line in open(tout):
                v = json.loads(line)
                if "ms_median" in v:
                    v["median_ms"] = v["ms_median"]
                rows.append(dict(side="peer", **{k: v[k] for k in v if k in (
                    "peer", "settings", "B", "median_ms", "ms_all", "frac_at_ref", "worst_rel_excess", "extra", "error")}))
        else:
            rows.append(dict(side="peer", peer="theseus", settings="-", B=tb[0],
                             error=f"did not run: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"))
    elif not py:
        rows.append(dict(side="peer", peer="theseus", settings="-", B=bs[0],
                         error="no Theseus venv (bench/install-theseus; or set TCH_JACOBIAN_THESEUS_PYTHON)"))
    load_end = os.getloadavg()
    text = report(rows, bs, threads, load_start, load_end, time.time() - t_start, args)
    sys.stdout.write("\n" + text)
    root, ext = os.path.splitext(out_path)
    path = f"{root}-least-squares{ext or '.md'}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    with open(os.path.join(d, "rows.jsonl"), "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    print(f"(written to {path})", file=sys.stderr)


def report(rows, bs, threads, load_start, load_end, elapsed, args):
    import least_squares as harness
    import torch

    v = harness.versions()
    lines = []
    p = lines.append
    p("## Batched least squares: tch-jacobian vs SciPy, torchimize, pypose, Theseus (CPU, float64)")
    p("")
    p(f"`scripts/compare-pytorch --only least-squares`: B fits y = a·e^(−bt) + c·sin(dt) + noise, 2000 points each, "
      f"starts within ±20 % (tests/lsq/bench_data.py), f64. CPU: **{harness.machine()}**, `nproc` = {os.cpu_count()}; "
      f"threads {threads} on every side (`torch.set_num_threads`, `tch::set_num_threads`, OMP/MKL/OpenBLAS); "
      f"Python {platform.python_version()}, torch {torch.__version__}, NumPy {v.get('numpy')}, SciPy {v.get('scipy')}, "
      f"torchimize {v.get('torchimize')}, pypose {v.get('pypose')}; ours: tch 0.24 on libtorch 2.11.0, commit "
      f"{git_commit()}. Load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; the group took "
      f"{elapsed:.0f} s. Each time is the median of {args.lsq_repeats} whole solves (1 at B = 4096; ours after a "
      f"warm-up). \"At SciPy's cost\": final cost ≤ ref·(1 + 1e-6), ref = SciPy lm from the same start with "
      f"ftol = xtol = gtol = 1e-15. Ratio: time / SciPy lm loop's (default tolerances) at the same B.")
    p("")
    p("| B | solver | settings | median ms | / SciPy lm loop | at SciPy's cost | worst (cost−ref)/ref | notes |")
    p("|---:|---|---|---:|---:|---:|---:|---|")
    for b in bs:
        base = next((r for r in rows if r.get("B") == b and r.get("peer") == "scipy_lm" and "default" in r["settings"]
                     and "median_ms" in r), None)
        sel = [r for r in rows if r.get("B") == b]
        sel.sort(key=lambda r: (r["side"] != "ours", r.get("peer", ""), r.get("settings", "")))
        for r in sel:
            if "median_ms" not in r:
                p(f"| {b} | {r['peer']} | {r.get('settings', '-')} | – | – | – | – | {r.get('error', 'no timing')[:140]} |")
                continue
            ratio = f"{r['median_ms'] / base['median_ms']:.3g}" if base else "–"
            extra = ", ".join(f"{k} {x:.3g}" if isinstance(x, float) else f"{k} {x}" for k, x in r.get("extra", {}).items())
            who = "**tch-jacobian**" if r["side"] == "ours" else r["peer"]
            p(f"| {b} | {who} | {r['settings']} | {r['median_ms']:.1f} | {ratio} | {100 * r['frac_at_ref']:.1f} % | "
              f"{r['worst_rel_excess']:.1e} | {extra} |")
    missing = [b for b in bs if b >= 4096 and not args.lsq_slow]
    if missing:
        p("")
        p("torchimize, pypose and Theseus are not run at B = 4096 without `--lsq-slow` (tens of minutes on 2 cores); "
          "bench/least_squares-peers.md has them.")
    return "\n".join(lines) + "\n"
