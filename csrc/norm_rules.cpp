// Batching rules for the normalizations' backward ops whose second derivatives are right.
//
// libtorch's own rules (aten/src/ATen/functorch/BatchRulesNorm.cpp) are right to first order but
// record a wrong graph under create_graph: they compute x̂ = (input − mean)·rstd from the saved
// statistics, which are non-differentiable outputs of the forward op, so the recorded graph
// misses ∂mean/∂input and ∂rstd/∂input (pytorch/functorch#534; torch.func gives the same wrong
// value). A row loop is right because the unbatched backward op has a correct double-backward
// formula in derivatives.yaml.
//
// The rules here keep that formula: they fold the vmap dimension into a dimension the op already
// treats independently and call the unbatched op once on the physical tensors —
//   * native_batch_norm_backward (and cudnn's, and batch_norm_backward): the vmap dimension becomes part of the channels,
//     [B, N, C, *] -> [N, B·C, *], so statistics, grad_weight and grad_bias stay per sample;
//   * native_layer_norm_backward: it becomes part of the leading (per-row) dimensions,
//     [B, *lead, *norm] -> [B·lead, *norm], for grad_input; grad_weight
//     and grad_bias (sums over the rows, which would mix the batch) are formed at the logical
//     level from x̂, whose statistics are recomputed from `input` so that gradients flow through
//     them (values kept equal to the saved ones: saved + (recomputed − recomputed.detach())).
//
// Group norm needs no rule: under create_graph its backward node runs libtorch's infinitely
// differentiable decomposition (ordinary ops, batched by their own rules) instead of
// native_group_norm_backward.
//
// They are installed once per process, at the first batched pass (tchj_install_norm_rules), on
// the FuncTorchBatched key — replacing libtorch's rules for every vmap in the process, which
// only makes those values right.
#include <ATen/ATen.h>
#include <ATen/functorch/DynamicLayer.h>
#include <ATen/functorch/PlumbingHelper.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <array>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using Grads = std::tuple<Tensor, Tensor, Tensor>;
using OptTensor = std::optional<Tensor>;

int64_t current_level(const char* what) {
  auto layer = at::functorch::maybeCurrentDynamicLayer();
  TORCH_CHECK(layer.has_value(), what, ": batching rule called outside vmap");
  return layer->layerId();
}

// The vmap size of the current level.
int64_t current_batch() {
  return at::functorch::maybeCurrentDynamicLayer()->batchSize().expect_int();
}

// The physical tensor of `t` at `level` with the vmap dimension first, [B, *t.shape]: moved when
// `t` is batched, expanded (no copy) when it is not.
Tensor physical(const Tensor& t, int64_t level, int64_t batch) {
  auto [value, bdim] = at::functorch::unwrapTensorAtLevel(t, level);
  if (bdim.has_value()) {
    return value.movedim(*bdim, 0);
  }
  std::vector<int64_t> shape{batch};
  auto sizes = value.sizes();
  shape.insert(shape.end(), sizes.begin(), sizes.end());
  return value.unsqueeze(0).expand(shape);
}

bool batched(const OptTensor& t, int64_t level) {
  return t.has_value() && t->defined() && at::functorch::isBatchedAtLevel(*t, level);
}

bool defined(const OptTensor& t) {
  return t.has_value() && t->defined();
}

// `saved` with the gradient of `recomputed` (equal values): saved + (r − r.detach()).
Tensor with_grad_of(const Tensor& saved, const Tensor& recomputed) {
  return saved + (recomputed - recomputed.detach());
}

// x̂ = (view − mean)·rstd with the statistics over `dims`, mean and rstd differentiable in `view`
// when grad mode is on (a create_graph pass).
Tensor normalized(
    const Tensor& view,
    at::IntArrayRef dims,
    const Tensor& mean,
    const Tensor& rstd) {
  if (!at::GradMode::is_enabled()) {
    return (view - mean) * rstd;
  }
  auto mu = view.mean(dims, /*keepdim=*/true);
  auto var = (view - mu).square().mean(dims, /*keepdim=*/true);
  // rstd = (var + eps)^(-1/2) exactly; eps recovered from the saved rstd.
  auto eps = (rstd.pow(-2) - var).detach();
  auto rs = (var + eps).rsqrt();
  return (view - with_grad_of(mean, mu)) * with_grad_of(rstd, rs);
}

// ---- layer norm ----------------------------------------------------------------------------

Grads layer_norm_backward_rule(
    const Tensor& grad_out,
    const Tensor& input,
    c10::SymIntArrayRef normalized_shape_sym,
    const Tensor& mean,
    const Tensor& rstd,
    const OptTensor& weight,
    const OptTensor& bias,
    std::array<bool, 3> mask) {
  auto normalized_shape = C10_AS_INTARRAYREF_SLOW(normalized_shape_sym);
  int64_t level = current_level("native_layer_norm_backward");
  int64_t batch = current_batch();
  int64_t axis = input.dim() - static_cast<int64_t>(normalized_shape.size());
  Tensor grad_input, grad_weight, grad_bias;
  const bool weight_batched = batched(weight, level);
  std::vector<int64_t> norm_dims;
  for (int64_t d = axis; d < input.dim(); ++d) {
    norm_dims.push_back(d);
  }
  if (mask[0]) {
    // grad_out·w with w batched: fold the weight into the gradient, call without it.
    Tensor go = grad_out;
    if (weight_batched) {
      go = grad_out * *weight;
    }
    Tensor gi;
    {
      c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::FuncTorchBatched);
      auto g = physical(go, level, batch);
      auto x = physical(input, level, batch).contiguous();
      auto mu = physical(mean, level, batch).contiguous();
      auto rs = physical(rstd, level, batch).contiguous();
      OptTensor w = (defined(weight) && !weight_batched) ? weight : OptTensor();
      gi = std::get<0>(at::native_layer_norm_backward(
          g.contiguous(), x, normalized_shape, mu, rs, w, OptTensor(), {true, false, false}));
    }
    grad_input = at::functorch::makeBatched(gi, 0, level);
  }
  std::vector<int64_t> lead;
  for (int64_t d = 0; d < axis; ++d) {
    lead.push_back(d);
  }
  if (mask[1] && defined(weight)) {
    auto xhat = normalized(input, norm_dims, mean, rstd);
    auto prod = grad_out * xhat;
    grad_weight = lead.empty() ? prod : prod.sum(lead);
  }
  if (mask[2] && defined(bias)) {
    grad_bias = lead.empty() ? grad_out.clone() : grad_out.sum(lead);
  }
  return {grad_input, grad_weight, grad_bias};
}

// ---- batch norm ----------------------------------------------------------------------------

// [B, N, C, *] -> [N, B·C, *] (the vmap dimension folded into the channels).
Tensor fold_channels(const Tensor& p) {
  auto sizes = p.sizes();
  std::vector<int64_t> shape{sizes[1], sizes[0] * sizes[2]};
  shape.insert(shape.end(), sizes.begin() + 3, sizes.end());
  return p.movedim(0, 1).reshape(shape);
}

// [N, B·C, *] -> [B, N, C, *].
Tensor unfold_channels(const Tensor& p, int64_t batch) {
  auto sizes = p.sizes();
  std::vector<int64_t> shape{sizes[0], batch, sizes[1] / batch};
  shape.insert(shape.end(), sizes.begin() + 2, sizes.end());
  return p.reshape(shape).movedim(1, 0);
}

// A per-channel tensor [C] as [B·C] (per sample when batched); others (e.g. the empty saved
// statistics of evaluation mode) unchanged.
OptTensor per_channel(const OptTensor& t, int64_t level, int64_t batch, int64_t channels) {
  if (!defined(t)) {
    return t;
  }
  auto [value, bdim] = at::functorch::unwrapTensorAtLevel(*t, level);
  if (bdim.has_value()) {
    return value.movedim(*bdim, 0).reshape({-1}).contiguous();
  }
  if (value.dim() == 1 && value.size(0) == channels) {
    return value.repeat({batch});
  }
  return value;
}

Grads batch_norm_backward_physical(
    const Tensor& grad_out,
    const Tensor& input,
    const OptTensor& weight,
    const OptTensor& running_mean,
    const OptTensor& running_var,
    const OptTensor& save_mean,
    const OptTensor& save_invstd,
    bool train,
    double eps,
    std::array<bool, 3> mask,
    const char* what) {
  int64_t level = current_level(what);
  int64_t batch = current_batch();
  int64_t channels = input.size(1);
  Tensor gi, gw, gb;
  {
    c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::FuncTorchBatched);
    auto g = fold_channels(physical(grad_out, level, batch)).contiguous();
    auto x = fold_channels(physical(input, level, batch)).contiguous();
    std::tie(gi, gw, gb) = at::native_batch_norm_backward(
        g,
        x,
        per_channel(weight, level, batch, channels),
        per_channel(running_mean, level, batch, channels),
        per_channel(running_var, level, batch, channels),
        per_channel(save_mean, level, batch, channels),
        per_channel(save_invstd, level, batch, channels),
        train,
        eps,
        mask);
    if (gi.defined()) gi = unfold_channels(gi, batch);
    if (gw.defined()) gw = gw.reshape({batch, channels});
    if (gb.defined()) gb = gb.reshape({batch, channels});
  }
  auto wrap = [&](const Tensor& t) {
    return t.defined() ? at::functorch::makeBatched(t, 0, level) : t;
  };
  return {wrap(gi), wrap(gw), wrap(gb)};
}

Grads batch_norm_backward_rule(
    const Tensor& grad_out,
    const Tensor& input,
    const OptTensor& weight,
    const OptTensor& running_mean,
    const OptTensor& running_var,
    const OptTensor& save_mean,
    const OptTensor& save_invstd,
    bool train,
    double eps,
    std::array<bool, 3> mask) {
  return batch_norm_backward_physical(
      grad_out, input, weight, running_mean, running_var, save_mean, save_invstd, train, eps,
      mask, "native_batch_norm_backward");
}

// cuDNN's backward is the training-mode one, with the inverse standard deviation saved as
// `save_var` (derivatives.yaml differentiates it as native batch norm with train=true).
Grads cudnn_batch_norm_backward_rule(
    const Tensor& input,
    const Tensor& grad_output,
    const Tensor& weight,
    const OptTensor& running_mean,
    const OptTensor& running_var,
    const OptTensor& save_mean,
    const OptTensor& save_var,
    double epsilon,
    const Tensor& /*reserve_space*/) {
  return batch_norm_backward_physical(
      grad_output, input, weight, running_mean, running_var, save_mean, save_var, true, epsilon,
      {true, true, true}, "cudnn_batch_norm_backward");
}

// The backward of _batch_norm_with_update / _batch_norm_no_update (`update` is training mode;
// `save_var` holds the inverse standard deviation): libtorch has no batching rule for it (its
// per-op fallback loops).
Grads new_batch_norm_backward_rule(
    const Tensor& grad_out,
    const Tensor& input,
    const Tensor& weight,
    const OptTensor& running_mean,
    const OptTensor& running_var,
    const OptTensor& save_mean,
    const OptTensor& save_var,
    bool update,
    double eps,
    std::array<bool, 3> mask,
    const Tensor& /*reserve*/) {
  return batch_norm_backward_physical(
      grad_out, input, weight, running_mean, running_var, save_mean, save_var, update, eps, mask,
      "batch_norm_backward");
}

}  // namespace

// Installs the rules above on the FuncTorchBatched key, once per process. Any C++ exception
// propagates to the caller (tchj_batched_vjp catches it).
void tchj_install_norm_rules() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Leaked on purpose: the registration lasts as long as the library object.
    auto* lib = new torch::Library(
        torch::Library::IMPL, "aten", c10::DispatchKey::FuncTorchBatched, __FILE__, __LINE__);
    lib->impl("native_layer_norm_backward", TORCH_FN(layer_norm_backward_rule));
    lib->impl("native_batch_norm_backward", TORCH_FN(batch_norm_backward_rule));
    lib->impl("cudnn_batch_norm_backward", TORCH_FN(cudnn_batch_norm_backward_rule));
    lib->impl("batch_norm_backward", TORCH_FN(new_batch_norm_backward_rule));
  });
}
