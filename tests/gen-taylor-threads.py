#!/usr/bin/env python3
"""A TorchScript module whose forward forks work onto another thread, for tests/taylor_nested.rs
(collapsed Taylor mode must not treat that thread's ops as constants).

Run in the setup venv (scripts/gen-fixtures runs every tests/gen-*.py):
    $(scripts/setup-libtorch --quiet)/../../../../bin/python tests/gen-taylor-threads.py

Writes tests/data/taylor_threads/fork.pt: u(x) = Σ_j sin(x)_j·x_j per row, with sin computed by
torch.jit.fork (libtorch's inter-op thread pool, which inherits the caller's dispatch keys).
"""
import os

import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "taylor_threads")
os.makedirs(OUT, exist_ok=True)


class Fork(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fut = torch.jit.fork(torch.sin, x)
        s = torch.jit.wait(fut)
        return (s * x).sum(1)


m = torch.jit.script(Fork())
torch.jit.save(m, os.path.join(OUT, "fork.pt"))
x = torch.randn(3, 2, dtype=torch.float64)
assert torch.allclose(torch.jit.load(os.path.join(OUT, "fork.pt"))(x), (x.sin() * x).sum(1))
print("wrote", os.path.join(OUT, "fork.pt"))
