#!/usr/bin/env python3
"""The CI subset of the third-order sweep (tests/third_order.rs): tests/data/third_order.

Runs bench/third_order_sweep.py (scripts/third-order-sweep runs it on every op) on the five
normalizations — libtorch 2.11's own third derivative is wrong through layer_norm, batch_norm and
instance_norm — and a few OpInfo ops, with small samples (at most 16 elements). Run in the setup
venv (scripts/gen-fixtures runs every tests/gen-*.py).
"""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "third_order")
OPS = [
    "mul",
    "atan2",
    "nn.functional.tanhshrink",
    "nn.functional.softplus",
    "nn.functional.mse_loss",
    "addcmul",
    "cumprod",
    "softmax",
    "logdet",
    "nn.functional.layer_norm",
    "logcumsumexp",
]


def main():
    try:
        import expecttest  # noqa: F401 - PyTorch's OpInfo database imports it
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check", "expecttest"])
    shutil.rmtree(OUT, ignore_errors=True)
    subprocess.check_call([
        sys.executable, os.path.join(HERE, "..", "bench", "third_order_sweep.py"),
        "--out", OUT, "--samples-per-op", "1", "--max-numel", "16", "--ops", ",".join(OPS),
    ])


if __name__ == "__main__":
    main()
