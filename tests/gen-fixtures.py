#!/usr/bin/env python3
"""Writes the PyTorch fixtures (.npy) that the Rust tests compare against.

Run in the setup venv (scripts/gen-fixtures does it):
    $(scripts/setup-libtorch --quiet)/../../../../bin/python tests/gen-fixtures.py

Every case saves its inputs/parameters and the Jacobian (or derivative) PyTorch 2.11 computes,
mostly in float64. File names: tests/data/<case>_<name>.npy. The Rust side rebuilds the same
function from the saved parameters (tests/pytorch_parity.rs, tests/penalty.rs).
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.functional import hessian, hvp, jacobian, jvp, vjp
from torch.func import jacrev, vmap

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)
rng = np.random.default_rng(1234)


def save(case, **arrays):
    for name, a in arrays.items():
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        np.save(os.path.join(OUT, f"{case}_{name}.npy"), np.array(a, order="C"))


def randn(*shape, dtype=torch.float64):
    return torch.from_numpy(rng.standard_normal(shape)).to(dtype)


# ---- Foundation: sigmoid(Wx), the notebook's model, J by torch.autograd.functional.jacobian ----
for name, (m, n, dtype) in {
    "sigmoid_notebook_f32": (3, 3, torch.float32),
    "sigmoid_5x7_f64": (5, 7, torch.float64),
    "sigmoid_64x32_f32": (64, 32, torch.float32),
    "sigmoid_1x1_f64": (1, 1, torch.float64),
}.items():
    if name == "sigmoid_notebook_f32":
        W = torch.tensor([[0.1, 0.3, 0.6], [1.5, 0.3, 4.1], [0.2, -0.3, -0.7]])
        x = torch.tensor([2.0, 1.0, 1.0])
    else:
        W, x = randn(m, n, dtype=dtype), randn(n, dtype=dtype)
    J = jacobian(lambda x: torch.sigmoid(W @ x), x)
    save(name, w=W, x=x, j=J)

# ---- API parity: ten-plus functions ----
def mlp(act):
    W1, b1, W2, b2 = randn(8, 5), randn(8), randn(4, 8), randn(4)
    return (W1, b1, W2, b2), lambda x: act(x @ W1.T + b1) @ W2.T + b2

for act_name, act in {"tanh": torch.tanh, "softplus": F.softplus, "gelu": F.gelu}.items():
    (W1, b1, W2, b2), f = mlp(act)
    x = randn(5)
    save(f"mlp_{act_name}", w1=W1, b1=b1, w2=W2, b2=b2, x=x, j=jacobian(f, x), j_rev=jacrev(f)(x))

x = randn(6)
save("elementwise", x=x, j=jacobian(lambda x: torch.sin(x) * torch.exp(x) + x**3, x))

x = randn(7)
save("reductions", x=x, j=jacobian(lambda x: torch.stack([x.sum(), (x**2).mean(), torch.logsumexp(x, 0), x.norm()]), x))

A = randn(3, 4)
x = randn(3)
save("matrix_out", a=A, x=x, j=jacobian(lambda x: x.unsqueeze(1) * A + torch.sin(x).unsqueeze(1), x))

B = randn(3, 4)
X = randn(2, 3)
save("input_2d", b=B, x=X, j=jacobian(lambda X: torch.tanh(X @ B), X))

W = randn(4, 5)
x = randn(5)
save("softmax", w=W, x=x, j=jacobian(lambda x: torch.softmax(W @ x, 0), x))

a, b, c = randn(3), randn(3), randn(2)
ja, jb, jc = jacobian(lambda a, b, c: a * torch.sin(b), (a, b, c))
save("two_inputs", a=a, b=b, c=c, ja=ja, jb=jb, jc=jc)
try:
    jacobian(lambda a, b, c: a * torch.sin(b), (a, b, c), strict=True)
    raise SystemExit("expected strict=True to fail")
except RuntimeError as e:
    assert "independent of input 2" in str(e), e

base = randn(4, 3)
xt = base.T  # non-contiguous [3, 4]
assert not xt.is_contiguous()
save("noncontig", base=base, j=jacobian(lambda x: (x**2).sum(0) * x[0], xt))

W32, x32 = randn(6, 4, dtype=torch.float32), randn(4, dtype=torch.float32)
save("tanh_f32", w=W32, x=x32, j=jacobian(lambda x: torch.tanh(W32 @ x), x32))

# create_graph: gradient of ||J||_F^2 w.r.t. the weights
W = randn(5, 4).requires_grad_(True)
x = randn(4)
J = jacobian(lambda x: torch.sigmoid(W @ x), x, create_graph=True)
(gW,) = torch.autograd.grad(J.pow(2).sum(), W)
save("create_graph_sigmoid", w=W, x=x, grad_w=gW, fro=J.pow(2).sum())

W1, b1, W2, b2 = (randn(8, 5).requires_grad_(True), randn(8), randn(4, 8).requires_grad_(True), randn(4))
x = randn(5)
J = jacobian(lambda x: torch.tanh(x @ W1.T + b1) @ W2.T + b2, x, create_graph=True)
gW1, gW2 = torch.autograd.grad(J.pow(2).sum(), (W1, W2))
save("create_graph_mlp", w1=W1, b1=b1, w2=W2, b2=b2, x=x, grad_w1=gW1, grad_w2=gW2)

# batch: vmap(jacrev(f))
W1, b1, W2, b2 = randn(8, 5), randn(8), randn(4, 8), randn(4)
f = lambda x: torch.tanh(x @ W1.T + b1) @ W2.T + b2
X = randn(6, 5)
save("batch_mlp", w1=W1, b1=b1, w2=W2, b2=b2, x=X, j=vmap(jacrev(f))(X))

Wc = randn(3, 2 * 4)
Xc = randn(5, 2, 4)  # per-sample input [2, 4], output [3]
save("batch_2d", w=Wc, x=Xc, j=vmap(jacrev(lambda x: torch.sigmoid(Wc @ x.reshape(-1))))(Xc))

# vjp, jvp, hvp, hessian
W = randn(4, 5)
x, v, u = randn(5), randn(4), randn(5)
f = lambda x: torch.tanh(W @ x)
save("products", w=W, x=x, v=v, u=u, vjp=vjp(f, x, v)[1], jvp=jvp(f, x, u)[1])
g = lambda x: (torch.tanh(W @ x) ** 2).sum() + x.prod()
hv = randn(5)
save("hessian", w=W, x=x, v=hv, h=hessian(g, x), hvp=hvp(g, x, hv)[1])

# ---- Contractive penalty: sigmoid encoder h = sigmoid(x W^T + b) ----
B, n, m, k = 6, 7, 5, 3
W = randn(m, n).requires_grad_(True)
b = randn(m).requires_grad_(True)
X = randn(B, n)
V = randn(k, B, m)
V = V / V.norm(dim=2, keepdim=True)


def enc(x):
    return torch.sigmoid(x @ W.T + b)


Jb = vmap(jacrev(enc))(X)  # [B, m, n]
per_sample = Jb.pow(2).sum((1, 2))
exact = per_sample.mean()
gW, gb = torch.autograd.grad(exact, (W, b))
Xg = X.clone().requires_grad_(True)
H = enc(Xg)
closed = ((H * (1 - H)) ** 2 @ (W**2).sum(1)).mean()
cW, cb = torch.autograd.grad(closed, (W, b))
H = enc(Xg)
proj = 0.0
for r in range(k):
    (g,) = torch.autograd.grad((H * V[r]).sum(), Xg, create_graph=True)
    proj = proj + g.pow(2).sum(1)
proj = (proj * m / k).mean()
pW, pb = torch.autograd.grad(proj, (W, b))
save("penalty", w=W, b=b, x=X, v=V, per_sample=per_sample, exact=exact, grad_w=gW, grad_b=gb,
     closed=closed, closed_grad_w=cW, closed_grad_b=cb, proj=proj, proj_grad_w=pW, proj_grad_b=pb)

# ---- The notebook's F = ||J||_F^2 per device and dtype (the notebook's loop, as PyTorch runs it) ----
# f32 on CUDA differs from the CPU in the last bits, so each device is compared with its own value.
# CUDA values are recomputed where CUDA is present, else kept from the existing file (they were
# first taken on an H100, ../shared/measurements/h100-2026-11-26).
def notebook_f(device, dtype):
    W = torch.tensor([[0.1, 0.3, 0.6], [1.5, 0.3, 4.1], [0.2, -0.3, -0.7]], dtype=dtype, device=device)
    x = torch.tensor([2.0, 1.0, 1.0], dtype=dtype, device=device, requires_grad=True)
    y = torch.sigmoid(W @ x)
    J = torch.zeros(3, 3, dtype=dtype, device=device)
    for i in range(3):
        J[i] = torch.autograd.grad(y[i], x, retain_graph=True)[0]
    return J.pow(2).sum().item()


values_path = os.path.join(OUT, "notebook_f.txt")
values = {}
if os.path.exists(values_path):
    for line in open(values_path):
        if line.strip() and not line.startswith("#"):
            dev, dt, v = line.split()
            values[(dev, dt)] = v
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
for dev in devices:
    for dt, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        values[(dev, dt)] = repr(notebook_f(dev, dtype))
with open(values_path, "w") as fh:
    fh.write(f"# device dtype F (the notebook's ||J||_F^2 by PyTorch {torch.__version__.split('+')[0]}; tests/gen-fixtures.py)\n")
    for (dev, dt), v in sorted(values.items()):
        fh.write(f"{dev} {dt} {v}\n")

# ---- What tch users ask for next: values with Jacobians, many products, several outputs,
# Hessians of closures, per-sample gradients (torch.func is the reference) ----
from torch.func import functional_call, grad, hessian as func_hessian, jvp as func_jvp, vjp as func_vjp

W = randn(4, 5)
x = randn(5)
f = lambda x: torch.tanh(W @ x)
# jacrev(f, has_aux=True): the value and an auxiliary output.
j_aux, aux = jacrev(lambda x: (f(x), (x**2).sum()), has_aux=True)(x)
save("value_aux", w=W, x=x, j=j_aux, value=f(x), aux=aux)
# Many products at once: vmap over a stack of cotangents / tangents.
V, U = randn(3, 4), randn(6, 5)
_, vjp_fn = func_vjp(f, x)
save("products_many", w=W, x=x, v=V, u=U, vjps=vmap(vjp_fn)(V)[0],
     jvps=vmap(lambda u: func_jvp(f, (x,), (u,))[1])(U))
# Several outputs and several inputs: torch.autograd.functional.jacobian with tuples.
a, b = randn(3), randn(2)
two = lambda a, b: (a * b.sum(), b.unsqueeze(1) * torch.sin(a))  # [3], [2, 3]
(j00, j01), (j10, j11) = jacobian(two, (a, b))
save("outputs", a=a, b=b, j00=j00, j01=j01, j10=j10, j11=j11)
# torch.func.hessian of a closure.
g = lambda x: (torch.tanh(W @ x) ** 2).sum() + x.prod()
save("hessian_of", w=W, x=x, h=func_hessian(g)(x))


# Per-sample gradients: vmap(grad(functional_call(...))) for an MLP and a small conv net.
def per_sample_grads(model, X, T):
    params = {k: v.detach() for k, v in model.named_parameters()}
    def loss(p, x, t):
        out = functional_call(model, p, (x.unsqueeze(0),))
        return F.cross_entropy(out, t.unsqueeze(0))
    return vmap(grad(loss), in_dims=(None, 0, 0))(params, X, T)


torch.manual_seed(3)
mlp_model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
X, T = randn(6, 5), torch.tensor([0, 2, 1, 1, 0, 2])
gs = per_sample_grads(mlp_model, X, T)
save("psg_mlp", x=X, t=T, w1=mlp_model[0].weight, b1=mlp_model[0].bias, w2=mlp_model[2].weight,
     b2=mlp_model[2].bias, g_w1=gs["0.weight"], g_b1=gs["0.bias"], g_w2=gs["2.weight"], g_b2=gs["2.bias"])
conv_model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                 torch.nn.Linear(2 * 4 * 4, 3)).double()
X, T = randn(4, 1, 6, 6), torch.tensor([1, 0, 2, 1])
gs = per_sample_grads(conv_model, X, T)
save("psg_conv", x=X, t=T, wc=conv_model[0].weight, bc=conv_model[0].bias, wl=conv_model[3].weight,
     bl=conv_model[3].bias, g_wc=gs["0.weight"], g_bc=gs["0.bias"], g_wl=gs["3.weight"], g_bl=gs["3.bias"])

# ---- Hutch++ for ||J||_F^2 with given draws: Estimator::FixedHutchPlusPlus, written out ----
B, n, m = 6, 7, 5
Wh, bh = randn(m, n).requires_grad_(True), randn(m).requires_grad_(True)
Xh, Sh, Vh = randn(B, n), randn(2, B, m), randn(3, B, m)
Vh = Vh / Vh.norm(dim=2, keepdim=True)
enc_h = lambda x: torch.sigmoid(x @ Wh.T + bh)
Xg = Xh.clone().requires_grad_(True)
H = enc_h(Xg)
R = torch.stack([torch.autograd.grad((H * Sh[r]).sum(), Xg, retain_graph=True)[0] for r in range(2)])
Q = torch.linalg.qr(R.detach().permute(1, 2, 0)).Q  # [B, n, s], the sketched row space
JQ = torch.stack([torch.func.jvp(enc_h, (Xh,), (Q[:, :, j],))[1] for j in range(Q.shape[2])])
G = torch.stack([torch.autograd.grad((H * Vh[r]).sum(), Xg, create_graph=True)[0] for r in range(3)])
G = G.permute(1, 0, 2)  # [B, g, n]
P = G - G @ Q @ Q.transpose(1, 2)
est_ps = JQ.pow(2).sum((0, 2)) + P.pow(2).sum((1, 2)) * m / 3
hW, hb = torch.autograd.grad(est_ps.mean(), (Wh, bh))
save("hutchpp", w=Wh, b=bh, x=Xh, s=Sh, v=Vh, per_sample=est_ps, grad_w=hW, grad_b=hb)

# Per-sample Hessians and the Laplacian of a PINN-style u: R^3 -> R (tanh MLP), and the gradient of
# the Laplacian loss mean((Δu)²) with respect to W1 (third derivatives): torch.func's
# vmap(hessian(u)) against an autograd loop (create_graph), which must agree.
torch.manual_seed(5)
pinn = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 6), torch.nn.Tanh(),
                           torch.nn.Linear(6, 1)).double()
Xp = randn(4, 3)
pp = dict(pinn.named_parameters())
u1 = lambda p, x: functional_call(pinn, p, (x,)).squeeze(-1)
Hp = vmap(func_hessian(u1, argnums=1), in_dims=(None, 0))(pp, Xp)
lap = Hp.diagonal(dim1=1, dim2=2).sum(-1)
gW1_func = torch.autograd.grad(lap.pow(2).mean(), pp["0.weight"])[0]
Xg = Xp.clone().requires_grad_(True)
gp = torch.autograd.grad(pinn(Xg).sum(), Xg, create_graph=True)[0]
lap_loop = sum(torch.autograd.grad(gp[:, i].sum(), Xg, create_graph=True)[0][:, i] for i in range(3))
gW1 = torch.autograd.grad(lap_loop.pow(2).mean(), pp["0.weight"])[0]
assert torch.allclose(lap, lap_loop) and torch.allclose(gW1, gW1_func)
save("batch_hessian", w1=pinn[0].weight, b1=pinn[0].bias, w2=pinn[2].weight, b2=pinn[2].bias,
     w3=pinn[4].weight, b3=pinn[4].bias, x=Xp, h=Hp, lap=lap, grad_w1=gW1)


print(f"wrote fixtures to {OUT} with torch {torch.__version__}")
