// Batching rules for the backward ops of the usual losses and of mish (and for nll_loss's forward,
// which per-sample gradients run under vmap), which libtorch's C++ has
// none for: PyTorch registers them from Python (torch/_functorch/predispatch.py registers
// decompositions on a Library("aten", "IMPL", "FuncTorchBatched")), which a C++-only program
// never loads, so in the crate they took libtorch's per-op vmap fallback — a loop over the
// cotangent rows, for the losses of every per-sample gradient.
//
// Each rule is the op written with ops that have batching rules (the math of PyTorch's
// decompositions in torch/_decomp/decompositions.py), registered at FuncTorchBatched: called on
// batched tensors, every op inside dispatches to its own rule. The formulas are exact, so their
// autograd graph differentiates right under create_graph too.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

// PyTorch's Reduction enum: None = 0, Mean = 1, Sum = 2.
constexpr int64_t kMean = 1;

// 1/numel for a mean reduction (the logical numel under vmap), 1 otherwise.
double norm_of(const Tensor& self, int64_t reduction) {
  return reduction == kMean ? 1.0 / static_cast<double>(self.numel()) : 1.0;
}

// d/dx of mean/sum/none (x − t)²: 2·(x − t)·grad / N.
Tensor mse_loss_backward_rule(
    const Tensor& grad_output,
    const Tensor& self,
    const Tensor& target,
    int64_t reduction) {
  return (self - target) * grad_output * (2.0 * norm_of(self, reduction));
}

// |d| < β: d/β, else sign(d) (β = 0: sign(d) only, so that no 0/0 enters the graph).
Tensor smooth_l1_loss_backward_rule(
    const Tensor& grad_output,
    const Tensor& self,
    const Tensor& target,
    int64_t reduction,
    double beta) {
  auto d = self - target;
  auto g = grad_output * norm_of(self, reduction);
  if (beta == 0.0) {
    return g * d.sign();
  }
  return at::where(d.abs() < beta, g * d / beta, g * d.sign());
}

// d < −δ: −δ, d > δ: δ, else d.
Tensor huber_loss_backward_rule(
    const Tensor& grad_output,
    const Tensor& self,
    const Tensor& target,
    int64_t reduction,
    double delta) {
  auto d = self - target;
  auto g = grad_output * norm_of(self, reduction);
  return at::where(d < -delta, -delta * g, at::where(d > delta, delta * g, d * g));
}

// mish(x) = x·tanh(softplus(x)); d/dx = tanh(sp) + x·σ(x)·(1 − tanh(sp)²).
Tensor mish_backward_rule(const Tensor& grad_output, const Tensor& self) {
  auto t = at::softplus(self).tanh();
  return grad_output * (t + self * self.sigmoid() * (1 - t * t));
}

// grad_input[…, target, …] = −w[target]·grad (÷ total_weight for a mean), 0 at ignore_index;
// the class dimension is 0 for an unbatched input, else 1 (nll_loss and nll_loss2d alike).
Tensor nll_loss_backward_rule(
    const Tensor& grad_output,
    const Tensor& self,
    const Tensor& target,
    const std::optional<Tensor>& weight,
    int64_t reduction,
    c10::SymInt ignore_index_sym,
    const Tensor& total_weight) {
  int64_t ignore_index = ignore_index_sym.expect_int();
  int64_t channel_dim = self.dim() < 2 ? 0 : 1;
  Tensor g = grad_output;
  if (reduction == kMean) {
    g = g / total_weight;
  }
  auto t = target.unsqueeze(channel_dim);
  auto keep = t != ignore_index;
  auto safe = at::where(keep, t, at::zeros_like(t));
  auto grad_input = at::zeros_like(self).scatter(channel_dim, safe, -1.0);
  if (grad_input.dim() > g.dim() && g.dim() > 0) {
    g = g.unsqueeze(channel_dim);
  }
  if (weight.has_value() && weight->defined()) {
    std::vector<int64_t> shape(self.dim(), 1);
    shape[channel_dim] = weight->size(0);
    g = g * weight->reshape(shape);
  }
  g = at::where(keep, g, at::zeros_like(g));
  return grad_input * g;
}

// The forward of nll_loss (and nll_loss2d): −self[…, target, …] (× weight), 0 at ignore_index,
// reduced; total_weight is the sum of the weights of the targets kept (their count without
// weights), 0 for reduction = none.
std::tuple<Tensor, Tensor> nll_loss_forward_rule(
    const Tensor& self_in,
    const Tensor& target,
    const std::optional<Tensor>& weight,
    int64_t reduction,
    c10::SymInt ignore_index_sym) {
  int64_t ignore_index = ignore_index_sym.expect_int();
  int64_t n_dims = self_in.dim();
  int64_t channel_dim = n_dims < 2 ? 0 : 1;
  Tensor self = self_in;
  Tensor w;
  const bool weighted = weight.has_value() && weight->defined();
  if (weighted) {
    if (n_dims > 1) {
      std::vector<int64_t> shape(n_dims, 1);
      shape[channel_dim] = weight->size(0);
      w = weight->view(shape);
    } else {
      w = *weight;
    }
    self = self * w;
  }
  auto keep = target != ignore_index;
  auto safe = at::where(keep, target, at::zeros_like(target)).unsqueeze(channel_dim);
  auto result = -at::gather(self, channel_dim, safe).squeeze(channel_dim);
  result = at::where(keep, result, at::zeros_like(result));
  if (reduction == 0 && n_dims > 1) {
    return {result, at::zeros({}, self.options())};
  }
  Tensor total_weight;
  if (weighted) {
    auto wsum = at::gather(w.expand(self.sizes()), channel_dim, safe).squeeze(channel_dim);
    total_weight = at::where(keep, wsum, at::zeros_like(wsum)).sum();
  } else {
    total_weight = keep.sum().to(self.scalar_type());
  }
  if (reduction == 2) {
    result = result.sum();
  } else if (reduction == kMean) {
    result = result.sum() / total_weight;
  }
  return {result, total_weight};
}

}  // namespace

// Installs the rules above on the FuncTorchBatched key, once per process (libtorch has no C++
// rule for these ops, so nothing of libtorch's is replaced).
void tchj_install_loss_rules() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Leaked on purpose: the registration lasts as long as the library object.
    auto* lib = new torch::Library(
        torch::Library::IMPL, "aten", c10::DispatchKey::FuncTorchBatched, __FILE__, __LINE__);
    lib->impl("mse_loss_backward", TORCH_FN(mse_loss_backward_rule));
    lib->impl("smooth_l1_loss_backward", TORCH_FN(smooth_l1_loss_backward_rule));
    lib->impl("huber_loss_backward", TORCH_FN(huber_loss_backward_rule));
    lib->impl("mish_backward", TORCH_FN(mish_backward_rule));
    lib->impl("nll_loss_backward", TORCH_FN(nll_loss_backward_rule));
    lib->impl("nll_loss2d_backward", TORCH_FN(nll_loss_backward_rule));
    lib->impl("nll_loss_forward", TORCH_FN(nll_loss_forward_rule));
    lib->impl("nll_loss2d_forward", TORCH_FN(nll_loss_forward_rule));
  });
}
