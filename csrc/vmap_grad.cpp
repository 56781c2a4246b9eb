// Per-sample gradients by running a Rust closure under functorch's vmap and grad transforms —
// torch.func's vmap(grad(f)) — which tch does not expose.
//
// For parameters θ_p, inputs X_k = [B, *sample_k] and a closure f(θ, x) -> scalar loss of one
// sample, one call returns G_p = [B, *θ_p] with G_p[b] = ∂f(θ, X[b])/∂θ_p and the losses [B]:
// every weight gradient is formed per sample, O(B) work (a backward pass over the batch graph
// with B cotangents forms each weight gradient over the whole batch B times: O(B²)).
//
// Recipe (../shared/design/second-order-and-transforms.md, torch/_functorch/eager_transforms.py):
// push a Vmap layer of size B and wrap each input with addBatchDim(·, 0, vmap level); push a
// Grad layer with grad mode on and wrap each parameter with makeTensorWrapper(·, grad level) that
// requires grad; run f; autograd::grad(loss, wrapped parameters, create_graph) as torch.func
// does; unwrap each result at the grad level, pop the Grad layer; unwrap at the vmap level
// (value moved to bdim 0, or expanded when a gradient does not depend on the sample), pop the
// Vmap layer. RAII guards pop the layers on every path.
//
// Contract with Rust (src/native/vmap_grad.rs): no C++ exception crosses the boundary, and no Rust panic
// crosses into C++ (the Rust callback catches it and returns non-zero, after which this file
// throws to unwind its own guards). The callback receives heap-allocated copies of the wrapped
// tensors (owned by Rust from then on) and hands back a heap-allocated loss (owned here).
#include <ATen/ATen.h>
#include <ATen/functorch/BatchedTensorImpl.h>
#include <ATen/functorch/DynamicLayer.h>
#include <ATen/functorch/TensorWrapper.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>

#include "functorch_guards.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

extern "C" {

// G_p = [B, *θ_p] per parameter into grads[p] (nullptr when the loss does not reach θ_p) and the
// per-sample losses [B] into *losses; `fallback_ops` receives the ops that took libtorch's
// per-op vmap fallback ('\n'-separated, or nullptr), which `vmap_fallback = 0` turns into an
// error instead. `randomness` is vmap's for random ops inside the closure: 0 = an error,
// 1 = one draw for the whole batch ("same"), 2 = one draw per sample ("different"). `f` is the Rust closure
// (tchj_loss_fn, functorch_guards.h). Returns nullptr or a malloc'd message; the message
// "callback failed" means the Rust callback failed and kept its own error.
char* tchj_vmap_grad(
    tchj_loss_fn f,
    void* ctx,
    const at::Tensor* const* params,
    int64_t n_params,
    const at::Tensor* const* inputs,
    int64_t n_inputs,
    int64_t batch,
    int vmap_fallback,
    int randomness,
    at::Tensor** grads,
    at::Tensor** losses,
    char** fallback_ops) {
  for (int64_t p = 0; p < n_params; ++p) {
    grads[p] = nullptr;
  }
  *losses = nullptr;
  *fallback_ops = nullptr;
  try {
    std::vector<at::Tensor> out(n_params);
    at::Tensor loss_values;
    tchj::Collector collector;
    {
      c10::WarningUtils::WarningHandlerGuard warnings(&collector);
      // (libtorch warns that the rules override its own: collected here, not printed.)
      tchj_install_norm_rules();
      tchj_install_loss_rules();
      tchj::FallbackMode mode(vmap_fallback != 0);
      const bool prev_grad_mode = at::GradMode::is_enabled();
      tchj::VmapLevel vmap(
          batch,
          randomness == 2   ? at::functorch::RandomnessType::Different
          : randomness == 1 ? at::functorch::RandomnessType::Same
                            : at::functorch::RandomnessType::Error);
      std::vector<at::Tensor> xs;
      for (int64_t k = 0; k < n_inputs; ++k) {
        xs.push_back(at::functorch::addBatchDim(*inputs[k], 0, vmap.level()));
      }
      std::vector<at::Tensor> grads_inner;
      at::Tensor loss_inner;
      {
        at::AutoGradMode grad_mode(true);
        tchj::GradLevel grad(prev_grad_mode);
        std::vector<at::Tensor> wrapped;
        for (int64_t p = 0; p < n_params; ++p) {
          auto w = at::functorch::makeTensorWrapper(*params[p], grad.level());
          w.requires_grad_(true);
          wrapped.push_back(w);
        }
        std::vector<at::Tensor*> p_args;
        std::vector<at::Tensor*> x_args;
        for (auto& w : wrapped) p_args.push_back(new at::Tensor(w));
        for (auto& x : xs) x_args.push_back(new at::Tensor(x));
        at::Tensor* loss_ptr = nullptr;
        int rc = f(ctx, p_args.data(), n_params, x_args.data(), n_inputs, &loss_ptr);
        std::unique_ptr<at::Tensor> loss(loss_ptr);
        if (rc != 0 || !loss) {
          throw std::runtime_error("callback failed");
        }
        TORCH_CHECK(
            loss->dim() == 0,
            "the loss closure must return one scalar per sample; it returned shape ",
            loss->sizes(), " for one sample");
        std::vector<at::Tensor> inputs_for_grad(wrapped.begin(), wrapped.end());
        auto raw = torch::autograd::grad(
            {*loss}, inputs_for_grad, {}, /*retain_graph=*/true, /*create_graph=*/true,
            /*allow_unused=*/true);
        for (int64_t p = 0; p < n_params; ++p) {
          grads_inner.push_back(
              raw[p].defined() ? tchj::unwrap_level(raw[p], grad.level()) : raw[p]);
        }
        loss_inner = tchj::unwrap_level(*loss, grad.level());
      }
      for (int64_t p = 0; p < n_params; ++p) {
        if (grads_inner[p].defined()) {
          out[p] = tchj::unwrap_batch(grads_inner[p], vmap.level(), batch);
        }
      }
      loss_values = tchj::unwrap_batch(loss_inner, vmap.level(), batch);
    }
    for (int64_t p = 0; p < n_params; ++p) {
      if (out[p].defined()) {
        grads[p] = new at::Tensor(out[p].detach());
      }
    }
    *losses = new at::Tensor(loss_values.detach());
    *fallback_ops = tchj::fallback_ops(collector);
    return nullptr;
  } catch (const c10::Error& e) {
    for (int64_t p = 0; p < n_params; ++p) {
      delete grads[p];
      grads[p] = nullptr;
    }
    return tchj::copy_string(e.what_without_backtrace());
  } catch (const std::exception& e) {
    for (int64_t p = 0; p < n_params; ++p) {
      delete grads[p];
      grads[p] = nullptr;
    }
    return tchj::copy_string(e.what());
  } catch (...) {
    for (int64_t p = 0; p < n_params; ++p) {
      delete grads[p];
      grads[p] = nullptr;
    }
    return tchj::copy_string("unknown C++ exception in the per-sample gradient transform");
  }
}

// 1 when a functorch transform (vmap, grad, …) is active on this thread — the crate's own, around
// a closure — else 0. Engines that would write batched results into a plain preallocated tensor
// (an in-place copy vmap refuses) concatenate instead.
int tchj_in_transform() {
  return at::functorch::getDynamicLayerStack().empty() ? 0 : 1;
}

// Sets the randomness of the innermost vmap level on this thread (0 = error, 1 = same,
// 2 = different) and returns the previous one, or -1 outside vmap. The module door runs the
// model's construction (its initial draws, on unbatched tensors, which "different" refuses)
// under "same" and the loss under the caller's choice. libtorch has no setter: the level's
// metadata is written in place (the layer stack is this thread's own).
int tchj_set_vmap_randomness(int randomness) {
  const auto& stack = at::functorch::getDynamicLayerStack();
  for (auto it = stack.rbegin(); it != stack.rend(); ++it) {
    if (it->key() != at::functorch::TransformType::Vmap) continue;
    auto& meta = const_cast<at::functorch::InterpreterMeta&>(it->interpreter().meta());
    auto& vmap = std::get<at::functorch::VmapInterpreterMeta>(meta);
    int previous = static_cast<int>(vmap.randomness_);
    vmap.randomness_ = static_cast<at::functorch::RandomnessType>(randomness);
    return previous;
  }
  return -1;
}

}  // extern "C"
