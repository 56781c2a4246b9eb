// Autograd kernels for the normalizations' backward ops that are right at every order.
//
// libtorch 2.11's double-backward formulas for native_layer_norm_backward and the batch-norm
// backward ops (derivatives.yaml: layer_norm_double_backward, batchnorm_double_backward) take
// the saved mean and 1/σ (non-differentiable outputs of the forward op) as constants. The
// second derivatives they compute are right (the formula holds the statistics' terms
// analytically), but the graph they record under create_graph misses ∂mean/∂input and
// ∂rstd/∂input: third and higher derivatives through layer_norm, batch_norm (training) and
// instance_norm are wrong in plain autograd (pytorch#175754 for layer norm, #186256 for batch
// norm), and so is every PINN or Hessian penalty trained through a norm layer.
//
// The kernels here replace those ops' kernels on the Autograd key:
//   * nothing to record (grad mode off — a plain backward pass — or no input requires grad):
//     the op below autograd, exactly as libtorch runs it;
//   * recording (a create_graph pass): the same fused op gives the values, under a node
//     (NormBackward) whose backward differentiates a composite of the same formula, with the
//     statistics recomputed from `input` (values kept equal to the saved ones), by a nested
//     autograd::grad — with create_graph when that backward is itself recorded. The recorded
//     graph is then made of ordinary ops, whose derivatives are right at every order.
// The nested grad differentiates fresh views of gO, input and weight, so that it computes
// partial derivatives even when gO itself depends on input (as it does in a Hessian).
//
// Needs no functorch header: it is part of every build with libtorch (not of the optional
// engine), so values do not depend on an optional part. Installed once per process at the
// first create_graph pass (tchj_install_norm_autograd), replacing libtorch's kernels for every
// create_graph pass in the process, which only makes those values right.
//
// Contract with Rust (src/native/norm_autograd.rs): no C++ exception crosses the boundary.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "strings.h"

#include <array>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using Grads = std::tuple<Tensor, Tensor, Tensor>;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool defined(const OptTensor& t) {
  return t.has_value() && t->defined();
}

bool requires_grad(const OptTensor& t) {
  return defined(t) && t->requires_grad();
}

// `saved` with the derivatives of `recomputed` (equal values): saved + (r − r.detach()).
Tensor with_grad_of(const Tensor& saved, const Tensor& recomputed) {
  return saved + (recomputed - recomputed.detach());
}

// What a NormBackward node needs besides gO, input and weight.
struct Spec {
  bool layer = true;               // layer norm (else batch norm)
  std::vector<int64_t> norm_dims;  // layer norm: the normalized (last) dims
  bool train = true;               // batch norm: batch statistics (else running ones)
  double eps = 0.0;                // batch norm
  Tensor mean, rstd;               // saved statistics (batch norm: [C]; layer norm: keepdim shape)
  Tensor running_mean, running_var;
  std::array<bool, 3> mask{true, true, true};
  bool has_weight = false;
};

std::vector<int64_t> complement(int64_t dim, const std::vector<int64_t>& dims) {
  std::vector<int64_t> out;
  for (int64_t d = 0; d < dim; ++d) {
    bool in = false;
    for (auto k : dims) in = in || k == d;
    if (!in) out.push_back(d);
  }
  return out;
}

// Where a norm's statistics live: the dims they reduce over, the dims gW and gB sum over, and
// the keepdim shape of a statistic — also the shape batch norm's per-channel w, gW and gB
// broadcast to (layer norm's have the normalized shape and broadcast as they are).
struct Layout {
  std::vector<int64_t> dims, rest, stat_shape;
};

Layout layout(const Spec& s, const Tensor& x) {
  Layout L;
  if (s.layer) {
    L.dims = s.norm_dims;
    L.rest = complement(x.dim(), L.dims);
  } else {
    L.rest = complement(x.dim(), {1});
    L.dims = L.rest;
  }
  L.stat_shape = x.sizes().vec();
  for (auto d : L.dims) L.stat_shape[d] = 1;
  return L;
}

// A per-channel tensor (w, gW, gB; undefined stays undefined) broadcastable against x.
Tensor per_channel(const Spec& s, const Layout& L, const Tensor& t) {
  return (s.layer || !t.defined()) ? t : t.reshape(L.stat_shape);
}

// The backward formula as ordinary ops of (gO, x, w), with the statistics recomputed from x:
// x̂ = (x − μ)·r, gI = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = gO·w (batch statistics),
// gI = ĝ·r (running statistics), gW = Σ gO·x̂, gB = Σ gO.
Grads composite(const Spec& s, const Tensor& go, const Tensor& x, const Tensor& w) {
  const Layout L = layout(s, x);
  const auto& dims = L.dims;
  const auto& rest = L.rest;
  const auto kind = x.scalar_type();
  Tensor xhat, r;
  if (s.layer || s.train) {
    auto mu = x.mean(dims, /*keepdim=*/true);
    auto var = (x - mu).square().mean(dims, /*keepdim=*/true);
    auto mean = s.mean.to(kind).reshape(L.stat_shape);
    auto rstd = s.rstd.to(kind).reshape(L.stat_shape);
    // layer norm: rstd = (var + eps)^(-1/2) exactly, eps recovered from the saved rstd
    auto eps = s.layer ? (rstd.pow(-2) - var).detach() : at::scalar_tensor(s.eps, x.options());
    r = with_grad_of(rstd, (var + eps).rsqrt());
    xhat = (x - with_grad_of(mean, mu)) * r;
  } else {
    r = (s.running_var.to(kind) + s.eps).rsqrt().reshape(L.stat_shape);
    xhat = (x - s.running_mean.to(kind).reshape(L.stat_shape)) * r;
  }
  Tensor gx = s.has_weight ? go * per_channel(s, L, w) : go;
  Tensor gi, gw, gb;
  if (s.mask[0]) {
    if (s.layer || s.train) {
      gi = r * (gx - gx.mean(dims, /*keepdim=*/true) -
                xhat * (gx * xhat).mean(dims, /*keepdim=*/true));
    } else {
      gi = gx * r;
    }
  }
  if (s.mask[1] && s.has_weight) {
    auto prod = go * xhat;
    gw = rest.empty() ? prod : prod.sum(rest);
  }
  if (s.mask[2]) {
    gb = rest.empty() ? go.clone() : go.sum(rest);
  }
  return {gi, gw, gb};
}

// The vector–Jacobian product of `composite` written out, for a backward that is not itself
// recorded (a second-order pass): with cotangents A (of gI), Gw (of gW), Gb (of gB) and M the
// mean over the statistics' dims (N elements), x̂ = (x − μ)·r, g = gO·w, ḡ = M(g), m = M(g·x̂):
//   P   = r·(A − M(A) − x̂·M(A·x̂))                               (∂⟨A, gI⟩/∂g)
//   dgO = P·w + Gw·x̂ + Gb,   dw = Σ_rest P·gO
//   dx  = r²·(3·m·M(A·x̂)·x̂ − (M(A·g) − M(A)·ḡ)·x̂ − M(A·x̂)·(g − ḡ) − m·(A − M(A)))
//       + r·(E − M(E) − x̂·M(E·x̂)),   E = Gw·gO                  (batch statistics)
//   dx  = r·Gw·gO,  P = A·r                                        (running statistics)
// derived from gI = r·(g − ḡ − x̂·m) with ∂x̂ⱼ/∂xᵢ = r(δᵢⱼ − 1/N − x̂ᵢx̂ⱼ/N), ∂r/∂xᵢ = −r²x̂ᵢ/N.
// The same partial derivatives as a nested autograd::grad of `composite` (to rounding), without
// building and running its graph: that costs ~40 small ops per call, which a row loop of
// second-order passes pays once per row.
std::array<Tensor, 3> composite_vjp(
    const Spec& s,
    const Tensor& go,
    const Tensor& x,
    const Tensor& w,
    const Tensor& ga,
    const Tensor& gw_in,
    const Tensor& gb_in) {
  at::NoGradGuard no_grad;
  const Layout L = layout(s, x);
  const auto& dims = L.dims;
  const auto& rest = L.rest;
  const auto kind = x.scalar_type();
  Tensor mu, r;
  if (s.layer || s.train) {
    mu = s.mean.to(kind).reshape(L.stat_shape);
    r = s.rstd.to(kind).reshape(L.stat_shape);
  } else {
    mu = s.running_mean.to(kind).reshape(L.stat_shape);
    r = (s.running_var.to(kind) + s.eps).rsqrt().reshape(L.stat_shape);
  }
  Tensor wb = per_channel(s, L, w), gwb = per_channel(s, L, gw_in), gbb = per_channel(s, L, gb_in);
  auto M = [&](const Tensor& t) { return t.mean(dims, /*keepdim=*/true); };
  auto sum_rest = [&](const Tensor& t) { return rest.empty() ? t : t.sum(rest); };
  const bool stats = s.layer || s.train;
  Tensor xhat = (x - mu) * r;
  Tensor g = s.has_weight ? go * wb : go;
  Tensor dgo, dx, dw;
  auto add = [](Tensor& acc, const Tensor& t) { acc = acc.defined() ? acc + t : t; };
  if (ga.defined()) {
    Tensor P;
    if (stats) {
      Tensor a_bar = M(ga);
      Tensor m_ax = M(ga * xhat);
      Tensor g_bar = M(g);
      Tensor m = M(g * xhat);
      P = r * (ga - a_bar - xhat * m_ax);
      Tensor c = M(ga * g) - a_bar * g_bar;
      add(dx, r.square() * (xhat * (m * m_ax * 3 - c) - m_ax * (g - g_bar) - m * (ga - a_bar)));
    } else {
      P = ga * r;
    }
    add(dgo, s.has_weight ? P * wb : P);
    if (s.has_weight) dw = sum_rest(P * go);
  }
  if (gwb.defined() && s.has_weight) {
    add(dgo, gwb * xhat);
    Tensor e = gwb * go;
    add(dx, stats ? r * (e - M(e) - xhat * M(e * xhat)) : r * e);
  }
  if (gbb.defined()) {
    add(dgo, gbb.expand_as(go));
  }
  return {dgo, dx, dw};
}

// The node recorded for a create_graph pass: values from the fused op, derivatives from the
// composite above.
struct NormBackward : public torch::autograd::Function<NormBackward> {
  static variable_list forward(
      AutogradContext* ctx,
      const Tensor& go,
      const Tensor& x,
      const OptTensor& w,
      const Spec& spec,
      const std::function<Grads()>& values) {
    ctx->save_for_backward({go, x, w.value_or(Tensor())});
    ctx->saved_data["layer"] = spec.layer;
    ctx->saved_data["norm_dims"] = spec.norm_dims;
    ctx->saved_data["train"] = spec.train;
    ctx->saved_data["eps"] = spec.eps;
    ctx->saved_data["mean"] = spec.mean;
    ctx->saved_data["rstd"] = spec.rstd;
    ctx->saved_data["running_mean"] = spec.running_mean;
    ctx->saved_data["running_var"] = spec.running_var;
    ctx->saved_data["mask"] = std::vector<bool>{spec.mask[0], spec.mask[1], spec.mask[2]};
    ctx->saved_data["has_weight"] = spec.has_weight;
    // Only the defined outputs become the node's outputs (autograd cannot wrap an undefined
    // one); which ones is kept for the backward and for as_grads.
    auto [gi, gw, gb] = values();
    variable_list outs;
    std::vector<bool> present;
    for (const auto& t : {gi, gw, gb}) {
      present.push_back(t.defined());
      if (t.defined()) outs.push_back(t);
    }
    ctx->saved_data["present"] = present;
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    Spec s;
    s.layer = ctx->saved_data["layer"].toBool();
    s.norm_dims = ctx->saved_data["norm_dims"].toIntVector();
    s.train = ctx->saved_data["train"].toBool();
    s.eps = ctx->saved_data["eps"].toDouble();
    s.mean = ctx->saved_data["mean"].toTensor();
    s.rstd = ctx->saved_data["rstd"].toTensor();
    s.running_mean = ctx->saved_data["running_mean"].toTensor();
    s.running_var = ctx->saved_data["running_var"].toTensor();
    auto mask = ctx->saved_data["mask"].toBoolList();
    s.mask = {mask[0], mask[1], mask[2]};
    s.has_weight = ctx->saved_data["has_weight"].toBool();

    // Recorded when this backward is itself recorded (a create_graph pass one order up).
    const bool create = at::GradMode::is_enabled();
    auto present = ctx->saved_data["present"].toBoolList();
    if (!create) {
      // Not recorded: the composite's partial derivatives in closed form (composite_vjp).
      std::array<Tensor, 3> cot;
      size_t slot = 0;
      for (size_t k = 0; k < 3; ++k) {
        if (present[k]) cot[k] = grads[slot++];
      }
      if (!s.mask[0]) cot[0] = Tensor();
      if (!s.mask[1] || !s.has_weight) cot[1] = Tensor();
      if (!s.mask[2]) cot[2] = Tensor();
      auto [dgo, dx, dw] = composite_vjp(s, saved[0], saved[1], saved[2], cot[0], cot[1], cot[2]);
      variable_list result(5);
      result[0] = dgo;
      result[1] = dx;
      if (saved[2].defined()) result[2] = dw;
      return result;
    }
    at::AutoGradMode enable(true);
    // Fresh differentiable stand-ins: views (connected to gO, input, weight) when recording,
    // detached leaves otherwise.
    auto stand_in = [&](const Tensor& t) -> Tensor {
      if (!t.defined()) return t;
      if (create && t.requires_grad()) return t.view_as(t);
      return t.detach().requires_grad_(true);
    };
    Tensor go = stand_in(saved[0]);
    Tensor x = stand_in(saved[1]);
    Tensor w = stand_in(saved[2]);
    auto [gi, gw, gb] = composite(s, go, x, w);

    variable_list outs, gouts;
    std::array<Tensor, 3> computed{gi, gw, gb};
    size_t slot = 0;  // index into `grads`, one per present output
    for (size_t k = 0; k < 3; ++k) {
      if (!present[k]) continue;
      const Tensor& grad = grads[slot++];
      if (computed[k].defined() && grad.defined()) {
        outs.push_back(computed[k]);
        gouts.push_back(grad);
      }
    }
    variable_list ins{go, x};
    if (w.defined()) ins.push_back(w);
    variable_list result(5);  // gO, input, weight, spec, values
    if (outs.empty()) {
      return result;
    }
    auto g = torch::autograd::grad(
        outs, ins, gouts, /*retain_graph=*/create, /*create_graph=*/create, /*allow_unused=*/true);
    result[0] = g[0];
    result[1] = g[1];
    if (w.defined()) result[2] = g[2];
    return result;
  }
};

// Whether a backward op's call records a graph: grad mode on and an input requiring grad.
bool recording(const Tensor& go, const Tensor& x, const OptTensor& w) {
  return at::GradMode::is_enabled() &&
         (go.requires_grad() || x.requires_grad() || requires_grad(w));
}

variable_list as_list(const Grads& g) {
  return {std::get<0>(g), std::get<1>(g), std::get<2>(g)};
}

// The node's outputs (the defined ones of the fused op's three, see NormBackward::forward) in
// their three places.
Grads as_grads(const variable_list& v, const Grads& shape_of) {
  std::array<Tensor, 3> out;
  std::array<bool, 3> present{std::get<0>(shape_of).defined(), std::get<1>(shape_of).defined(),
                              std::get<2>(shape_of).defined()};
  size_t slot = 0;
  for (size_t k = 0; k < 3; ++k) {
    if (present[k]) out[k] = v[slot++];
  }
  return {out[0], out[1], out[2]};
}

// A recorded call: the fused op's values as the outputs of a NormBackward node.
Grads record(
    const Tensor& go,
    const Tensor& x,
    const OptTensor& w,
    const Spec& s,
    const std::function<Grads()>& below) {
  Grads fused;
  std::function<Grads()> values = [&] {
    fused = below();
    return fused;
  };
  auto outs = NormBackward::apply(go, x, w, s, values);
  return as_grads(outs, fused);
}

// ---- the kernels ----------------------------------------------------------------------------

Grads layer_norm_backward(
    const Tensor& grad_out,
    const Tensor& input,
    c10::SymIntArrayRef normalized_shape,
    const Tensor& mean,
    const Tensor& rstd,
    const OptTensor& weight,
    const OptTensor& bias,
    std::array<bool, 3> mask) {
  auto below = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return at::native_layer_norm_backward_symint(
        grad_out, input, normalized_shape, mean, rstd, weight, bias, mask);
  };
  if (!recording(grad_out, input, weight)) {
    return below();
  }
  Spec s;
  s.layer = true;
  for (int64_t d = input.dim() - static_cast<int64_t>(normalized_shape.size()); d < input.dim();
       ++d) {
    s.norm_dims.push_back(d);
  }
  s.mean = mean.detach();
  s.rstd = rstd.detach();
  s.mask = {mask[0], mask[1] && defined(weight), mask[2] && defined(bias)};
  s.has_weight = defined(weight);
  return record(grad_out, input, weight, s, below);
}

Spec batch_spec(
    const OptTensor& weight,
    const OptTensor& running_mean,
    const OptTensor& running_var,
    const OptTensor& save_mean,
    const OptTensor& save_invstd,
    bool train,
    double eps,
    std::array<bool, 3> mask) {
  Spec s;
  s.layer = false;
  s.train = train;
  s.eps = eps;
  if (defined(save_mean)) s.mean = save_mean->detach();
  if (defined(save_invstd)) s.rstd = save_invstd->detach();
  if (defined(running_mean)) s.running_mean = running_mean->detach();
  if (defined(running_var)) s.running_var = running_var->detach();
  s.mask = {mask[0], mask[1] && defined(weight), mask[2]};
  s.has_weight = defined(weight);
  return s;
}

// Training mode differentiates through the saved batch statistics, evaluation mode through the
// running ones; a recorded call without them is an error (libtorch never makes one).
void check_composable(const Spec& s, const char* op) {
  TORCH_CHECK(
      s.train ? (s.mean.defined() && s.rstd.defined())
              : (s.running_mean.defined() && s.running_var.defined()),
      "tch-jacobian: ", op, " under create_graph without the ",
      s.train ? "saved batch statistics" : "running statistics", " it needs");
}

Grads native_batch_norm_backward(
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
  auto below = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return at::native_batch_norm_backward(
        grad_out, input, weight, running_mean, running_var, save_mean, save_invstd, train, eps,
        mask);
  };
  if (!recording(grad_out, input, weight)) {
    return below();
  }
  auto s = batch_spec(weight, running_mean, running_var, save_mean, save_invstd, train, eps, mask);
  check_composable(s, "native_batch_norm_backward");
  return record(grad_out, input, weight, s, below);
}

// The backward of _batch_norm_with_update / _batch_norm_no_update: `update` is training mode,
// `save_var` holds the inverse standard deviation.
Grads batch_norm_backward(
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
    const Tensor& reserve) {
  auto below = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return at::batch_norm_backward(
        grad_out, input, weight, running_mean, running_var, save_mean, save_var, update, eps,
        mask, reserve);
  };
  OptTensor w = weight.defined() ? OptTensor(weight) : OptTensor();
  if (!recording(grad_out, input, w)) {
    return below();
  }
  auto s = batch_spec(w, running_mean, running_var, save_mean, save_var, update, eps, mask);
  check_composable(s, "batch_norm_backward");
  return record(grad_out, input, w, s, below);
}

// cuDNN's backward is the training-mode one (`save_var` holds 1/σ; derivatives.yaml
// differentiates it as batch norm with train = true).
Grads cudnn_batch_norm_backward(
    const Tensor& input,
    const Tensor& grad_output,
    const Tensor& weight,
    const OptTensor& running_mean,
    const OptTensor& running_var,
    const OptTensor& save_mean,
    const OptTensor& save_var,
    double epsilon,
    const Tensor& reserve_space) {
  auto below = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return at::cudnn_batch_norm_backward(
        input, grad_output, weight, running_mean, running_var, save_mean, save_var, epsilon,
        reserve_space);
  };
  OptTensor w = weight.defined() ? OptTensor(weight) : OptTensor();
  if (!recording(grad_output, input, w)) {
    return below();
  }
  auto s = batch_spec(w, running_mean, running_var, save_mean, save_var, true, epsilon,
                      {true, true, true});
  check_composable(s, "cudnn_batch_norm_backward");
  return record(grad_output, input, w, s, below);
}

}  // namespace

extern "C" {

// Installs the kernels above on the Autograd key, once per process. Returns nullptr or a
// malloc'd message.
char* tchj_install_norm_autograd() {
  static std::once_flag once;
  try {
    std::call_once(once, [] {
      // libtorch warns that these replace its own kernels ("Overriding a previously registered
      // kernel"): expected, and not the caller's business, so not printed.
      struct Quiet : c10::WarningHandler {
        void process(const c10::Warning&) override {}
      } quiet;
      c10::WarningUtils::WarningHandlerGuard guard(&quiet);
      // Leaked on purpose: the registration lasts as long as the library object.
      auto* lib = new torch::Library(
          torch::Library::IMPL, "aten", c10::DispatchKey::Autograd, __FILE__, __LINE__);
      lib->impl("native_layer_norm_backward", TORCH_FN(layer_norm_backward));
      lib->impl("native_batch_norm_backward", TORCH_FN(native_batch_norm_backward));
      lib->impl("batch_norm_backward", TORCH_FN(batch_norm_backward));
      lib->impl("cudnn_batch_norm_backward", TORCH_FN(cudnn_batch_norm_backward));
    });
    return nullptr;
  } catch (const std::exception& e) {
    return tchj::copy_string(e.what());
  } catch (...) {
    return tchj::copy_string("unknown C++ exception installing the normalizations' autograd kernels");
  }
}

}  // extern "C"
