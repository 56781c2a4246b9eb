#!/usr/bin/env python3
"""Writes the TorchScript models and PyTorch Jacobians that tests/module.rs and tests/cli.rs use.

Run in the setup venv (scripts/gen-fixtures runs every tests/gen-*.py):
    $(scripts/setup-libtorch --quiet)/../../../../bin/python tests/gen-torchscript.py

Everything goes to tests/data/ts/, in float64:

* <model>.pt                       a model saved with torch.jit.save (scripted)
* <model>_x.npy, <model>_j.npy     an input and torch.autograd.functional.jacobian(model, x)
* <model>_bx.npy, <model>_bj.npy   a batch and torch.func.vmap(torch.func.jacrev(model))(X)

Models: `mlp_tanh` ([5] -> [4]); `conv` ([1, 8, 8] images -> [4], with dropout, saved in
training mode so that the tests see load_module switch it to eval); `tall` ([2] -> [3, 4], more
outputs than inputs); `tuple_out` (returns (tanh(Wx + b) [3], x * sum(x) [5], x.dim()), cases
`tuple_out0` and `tuple_out1`); and, for error tests, `returns_str` and `returns_int` (no tensor
output). Plus inputs the models reject: `bad_shape_x.npy` ([3]), `int_x.npy` (int64 [5]),
`f32_x.npy` (float32 [5]). `transformer` (an nn.TransformerEncoderLayer, d_model 16, 4 heads, on one
sequence [6, 16]; only x and J): its CPU attention backward has no vmap batching rule. The saved models carry TorchScript's debug info (source lines of
this script).
"""
import os
from typing import Tuple

import numpy as np
import torch
from torch import nn
from torch.autograd.functional import jacobian
from torch.func import jacrev, vmap

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ts")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(7)
rng = np.random.default_rng(2024)


def randn(*shape):
    return torch.from_numpy(rng.standard_normal(shape))


def save_npy(name, t):
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    np.save(os.path.join(OUT, f"{name}.npy"), np.ascontiguousarray(t))


def export(name, model, train=False):
    """Scripts `model` (float64; in eval mode unless `train`), saves it and returns the eager
    model and the loaded TorchScript module, both in eval mode."""
    model = model.double().train(train)
    path = os.path.join(OUT, f"{name}.pt")
    torch.jit.save(torch.jit.script(model), path)
    return model.eval(), torch.jit.load(path).eval()


def check(a, b):
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), (a - b).abs().max()


class MlpTanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(5, 8)
        self.l2 = nn.Linear(8, 4)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


class Conv(nn.Module):
    """[*, 1, 8, 8] -> conv 3x3 (2 channels) -> tanh -> dropout -> flatten the last 3 dims -> [*, 4].

    Saved in training mode: load_module must switch it to eval (dropout off) to match."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(2 * 6 * 6, 4)

    def forward(self, x):
        return self.head(torch.flatten(self.drop(torch.tanh(self.conv(x))), -3))


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor, int]:
        return torch.tanh(self.lin(x)), x * x.sum(-1, keepdim=True), x.dim()


class Tall(nn.Module):
    """[*, 2] -> [*, 3, 4]: a tall Jacobian (12 outputs, 2 inputs) with a matrix output."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 12)

    def forward(self, x):
        return torch.unflatten(torch.tanh(self.lin(x)), -1, (3, 4))


class ReturnsStr(nn.Module):
    def forward(self, x: torch.Tensor) -> str:
        return "no tensor here"


class ReturnsInt(nn.Module):
    def forward(self, x: torch.Tensor) -> int:
        return x.dim()


def jacobians(name, model, ts, x, bx, out=lambda y: y):
    """Saves x, J (functional.jacobian of the loaded TorchScript model) and the vmap(jacrev) batch
    Jacobian of the eager model, after checking that eager and TorchScript agree."""
    f_ts = lambda x: out(ts(x))
    f = lambda x: out(model(x))
    j = jacobian(f_ts, x)
    check(j, jacobian(f, x))
    bj = vmap(jacrev(f))(bx)
    check(bj, torch.stack([jacobian(f_ts, xb) for xb in bx]))
    save_npy(f"{name}_x", x)
    save_npy(f"{name}_j", j)
    save_npy(f"{name}_bx", bx)
    save_npy(f"{name}_bj", bj)


model, ts = export("mlp_tanh", MlpTanh())
jacobians("mlp_tanh", model, ts, randn(5), randn(6, 5))

model, ts = export("conv", Conv(), train=True)
jacobians("conv", model, ts, randn(1, 8, 8), randn(3, 1, 8, 8))

model, ts = export("tall", Tall())
jacobians("tall", model, ts, randn(2), randn(5, 2))

model, ts = export("tuple_out", TupleOut())
x, bx = randn(5), randn(4, 5)
jacobians("tuple_out0", model, ts, x, bx, out=lambda y: y[0])
jacobians("tuple_out1", model, ts, x, bx, out=lambda y: y[1])

export("returns_str", ReturnsStr())
export("returns_int", ReturnsInt())

save_npy("bad_shape_x", randn(3))
save_npy("int_x", np.arange(5, dtype=np.int64))
save_npy("f32_x", randn(5).float())

# A real op without a vmap batching rule: the CPU attention backward of a transformer layer
# (aten::_scaled_dot_product_flash_attention_for_cpu_backward). One sequence of 6 tokens, d 16.
layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, dropout=0.0, batch_first=True)
model, ts = export("transformer", layer)
x = randn(6, 16)
j = jacobian(lambda v: ts(v), x)
check(j, jacobian(lambda v: model(v), x))
save_npy("transformer_x", x)
save_npy("transformer_j", j)

total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
assert total < 400_000, total
print(f"wrote TorchScript fixtures to {OUT} ({total} bytes) with torch {torch.__version__}")
