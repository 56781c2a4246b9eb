"""PyTorch's side of bench/src/bin/lap_gemm.rs: jet-for-pytorch's collapsed Taylor mode (and
PyTorch's nested autograd loop) on the Laplacian of a tanh MLP, timed call by call alternating with
the same GEMMs lap_gemm.rs times (per layer, ``matmul`` of the stacked ``(D + 2)·B`` rows, ``2·B``
at the first layer, by that layer's weights; with ``loss`` also the backward's two per layer, the
input's gradient ``G·W`` past the first layer and the weight's ``Gᵀ·A``), in one process.

On a shared machine the GEMM rate drifts between runs (and between the two sides of
``scripts/compare-pytorch``, which time one after the other); a time divided by GEMMs timed
alternately with it in the same process does not. Dividing lap_gemm.rs's "ours / GEMMs" by this
script's "jet / GEMMs" gives ours / jet through the common reference (docs/benchmarks.md).

    python bench/lap_gemm.py [WIDTHS [B [SECONDS [loss]]]]

WIDTHS defaults to 50,768,768,512,512,1 and B to 64, as lap_gemm.rs; SECONDS (default 3) per
method. Threads: TCH_JACOBIAN_THREADS (default 2). Needs jet (bench/install-jet) for its row;
run it with the setup-libtorch venv's python (scripts/setup-libtorch prints torch's folder).
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_pytorch as cp  # noqa: E402


def alternate(secs, a, b):
    """Times a and b alternately (one warm-up call each): medians, minima (ms), median ratio a/b."""
    a()
    b()
    ta, tb, ratio = [], [], []
    start = time.perf_counter()
    while time.perf_counter() - start < secs or len(ta) < 5:
        t = time.perf_counter()
        a()
        ms_a = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        b()
        ms_b = (time.perf_counter() - t) * 1e3
        ta.append(ms_a)
        tb.append(ms_b)
        ratio.append(ms_a / ms_b)
    return (statistics.median(ta), min(ta)), (statistics.median(tb), min(tb)), statistics.median(ratio)


def main():
    args = sys.argv[1:]
    widths = [int(w) for w in (args[0] if args else "50,768,768,512,512,1").split(",")]
    b = int(args[1]) if len(args) > 1 else 64
    secs = float(args[2]) if len(args) > 2 else 3.0
    loss = len(args) > 3 and args[3] == "loss"
    threads = int(os.environ.get("TCH_JACOBIAN_THREADS", "2"))
    torch.set_num_threads(threads)
    cp.resolve_vml_kernels()  # pytorch#188792, as compare_pytorch.py and the crate do
    gen = torch.Generator().manual_seed(0)
    params = []
    for w0, w1 in zip(widths[:-1], widths[1:]):
        scale = 1.0 / w0 ** 0.5
        params.append(((torch.rand(w1, w0, generator=gen) * 2 - 1) * scale).requires_grad_(loss))
        params.append(((torch.rand(w1, generator=gen) * 2 - 1) * scale).requires_grad_(loss))
    x = torch.randn(b, widths[0], generator=gen)
    d = widths[0]
    u = cp.mlp_u(params)
    products = []
    for i, (w0, w1) in enumerate(zip(widths[:-1], widths[1:])):
        rows = 2 * b if i == 0 else (d + 2) * b
        products.append((torch.randn(rows, w0, generator=gen), params[2 * i].detach(),
                         torch.randn(rows, w1, generator=gen)))

    def gemms():
        for i, (a, w, g) in enumerate(products):
            a.matmul(w.T)
            if loss:
                if i > 0:
                    g.matmul(w)
                g.T.matmul(a)

    methods = [(cp.LAP_NESTED, lambda: cp.lap_nested(u, x, loss))]
    if cp.jet_module() is not None:
        jet = cp.lap_jet(u, d, True)
        methods.append((cp.LAP_JET, lambda: jet(x)))
    work = "loss + backward" if loss else "Δu"
    print(f"widths {widths}, B = {b}, {threads} threads, f32, calls alternating")
    for label, fn in methods:
        call = cp.with_backward(fn, params) if loss else fn
        (m, lo), (gm, glo), r = alternate(secs, call, gemms)
        print(f"{label} ({work}): median {m:.3f} ms, min {lo:.3f} ms")
        which = "the forward and backward products" if loss else "the forward products"
        print(f"GEMMs ({which}): median {gm:.3f} ms, min {glo:.3f} ms")
        print(f"{label} / GEMMs: {r:.3f} (median of the per-pair ratios), {lo / glo:.3f} (minima)")


if __name__ == "__main__":
    main()
