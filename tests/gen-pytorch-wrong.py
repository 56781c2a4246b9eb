#!/usr/bin/env python3
"""Fixtures for "where PyTorch is wrong and tch-jacobian is right" (docs/second-order.md).

Each case is a scalar L(a) built from a Jacobian with create_graph, on fixed small inputs, and
its derivative dL/da three ways: PyTorch's fast tool (torch.func, or the double-backward trick
of torch.autograd.functional.jvp), a plain autograd row loop, and central finite differences in
float64. Where the first disagrees with the other two, PyTorch is wrong; the Rust side
(tests/second_order.rs, bench's second_order_costs) computes the same with the crate.

Writes tests/data/wrong_<case>_{x,w,b,u,value}.npy, value = [torch_fast, row_loop, finite_diff].
Run in the setup venv (scripts/gen-fixtures does it).
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.functional import jvp
from torch.func import jacrev

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
A = 1.3
X_LN = torch.tensor([[0.3, -1.2, 0.8, 2.0, -0.5]])
X_BN = torch.tensor([[0.3, -1.2, 0.8], [2.0, -0.5, 0.1], [-0.7, 0.4, 1.1], [0.9, 1.5, -0.2]])
W5 = torch.tensor([0.5, -1.0, 1.5, 0.7, -0.3])
W3 = torch.tensor([0.5, -1.0, 1.5])
U5 = torch.tensor([[1.0, -0.5, 0.25, 2.0, -1.0]])


def ln(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b)


def bn(x, w, b):
    return F.batch_norm(x, None, None, w, b, training=True)


def rows(y, wrt):
    """J by an autograd row loop with create_graph: [*y.shape, *wrt.shape]."""
    flat = y.reshape(-1)
    js = [torch.autograd.grad(flat[i], wrt, create_graph=True)[0] for i in range(flat.numel())]
    return torch.stack(js).reshape(*y.shape, *wrt.shape)


def weight_case(norm, x, w, b):
    """L(a) = ‖∂norm(a·x; w, b)/∂w‖²: torch.func.jacrev (wrong), the row loop, central FD."""
    def l_rows(a):
        wg = w.clone().requires_grad_(True)
        return rows(norm(a * x, wg, b), wg).pow(2).sum()

    def l_fast(a):
        return jacrev(lambda wv: norm(a * x, wv, b))(w).pow(2).sum()

    return derivatives(l_fast, l_rows)


def jvp_case(x, w, b, u):
    """L(a) = ‖J u‖² of layer_norm(a·x) by PyTorch's double-backward jvp (wrong one order
    higher), against J from the row loop."""
    def l_rows(a):
        xg = x.clone().requires_grad_(True)
        j = rows(ln(a * xg, w, b), xg)
        return (j.reshape(x.numel(), x.numel()) @ u.reshape(-1)).pow(2).sum()

    def l_fast(a):
        _, ju = jvp(lambda v: ln(a * v, w, b), x, u, create_graph=True)
        return ju.pow(2).sum()

    return derivatives(l_fast, l_rows)


def derivatives(l_fast, l_rows, h=1e-6):
    a = torch.tensor(A, requires_grad=True)
    fast = torch.autograd.grad(l_fast(a), a)[0].item()
    row = torch.autograd.grad(l_rows(a), a)[0].item()
    fd = ((l_rows(torch.tensor(A + h)) - l_rows(torch.tensor(A - h))) / (2 * h)).item()
    return np.array([fast, row, fd])


def save(case, **arrays):
    for name, t in arrays.items():
        a = t.detach().numpy() if isinstance(t, torch.Tensor) else t
        np.save(os.path.join(OUT, f"wrong_{case}_{name}.npy"), np.array(a, dtype=np.float64))


B5, B3 = torch.full((5,), 0.1), torch.full((3,), 0.1)
save("layer_norm_weight", x=X_LN, w=W5, b=B5, value=weight_case(ln, X_LN, W5, B5))
save("batch_norm_weight", x=X_BN, w=W3, b=B3, value=weight_case(bn, X_BN, W3, B3))
save("layer_norm_jvp", x=X_LN, w=W5, b=B5, u=U5, value=jvp_case(X_LN, W5, B5, U5))
for case in ("layer_norm_weight", "batch_norm_weight", "layer_norm_jvp"):
    v = np.load(os.path.join(OUT, f"wrong_{case}_value.npy"))
    print(f"{case}: PyTorch's fast tool {v[0]:.10g}, row loop {v[1]:.10g}, finite differences {v[2]:.10g}")
