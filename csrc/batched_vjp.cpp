// The crate's one C++ file: a batched vector-Jacobian product through functorch's vmap level,
// which tch does not expose (tch seeds backward passes with ones only).
//
// For an output y (already computed, graph kept), inputs xs and a chunk of cotangents
// V = [c, *y.shape], one call runs ONE backward pass whose cotangent is V viewed as a batch of c
// at a fresh vmap level, and returns, per input, G_k = [c, *x_k.shape] with G_k[r] = V[r]ᵀ ∂y/∂x_k.
// With V = rows of the identity, G_k holds c rows of the Jacobian.
//
// Recipe (../shared/design/batched-vjp.md): push a vmap DynamicLayer, wrap V with
// at::functorch::addBatchDim (not the legacy at::_add_batch_dim), torch::autograd::grad with
// retain_graph, unwrap each result at that level, pop the level (RAII: on every path).
//
// Contract with Rust (src/native/batched_vjp.rs): no C++ exception crosses the boundary. Every function
// returns nullptr on success or a malloc'd message (freed with tchj_free_string, csrc/graph_scan.cpp).
#include <ATen/ATen.h>
#include <ATen/functorch/BatchedFallback.h>
#include <ATen/functorch/BatchedTensorImpl.h>
#include <ATen/functorch/DynamicLayer.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>

#include "functorch_guards.h"

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

using tchj::Collector;
using tchj::copy_string;
using tchj::FallbackMode;
using tchj::VmapLevel;

extern "C" {

// Bumped when the signature below changes; src/native/batched_vjp.rs checks it.
int tchj_engine_version() {
  return 1;
}

// G_k = [c, *x_k.shape] for each input (see the file comment). `out[k]` receives a new
// heap-allocated tensor, or nullptr when y does not reach x_k. `fallback_ops` receives the ops
// that went through libtorch's per-op vmap fallback, one per line ('\n'-separated; nullptr when
// none; free with tchj_free_string). Returns nullptr or an error message.
char* tchj_batched_vjp(
    const at::Tensor* y,
    const at::Tensor* const* xs,
    int64_t n_inputs,
    const at::Tensor* cotangent,
    int create_graph,
    int vmap_fallback,
    at::Tensor** out,
    char** fallback_ops) {
  for (int64_t k = 0; k < n_inputs; ++k) {
    out[k] = nullptr;
  }
  *fallback_ops = nullptr;
  std::vector<at::Tensor*> made;
  try {
    Collector collector;
    std::vector<at::Tensor> grads;
    int64_t c = cotangent->size(0);
    {
      c10::WarningUtils::WarningHandlerGuard warnings(&collector);
      // (libtorch warns that it overrides its own rules: collected here, not printed.)
      tchj_install_norm_rules();
      tchj_install_loss_rules();
      FallbackMode mode(vmap_fallback != 0);
      VmapLevel vmap(c);
      auto v = at::functorch::addBatchDim(*cotangent, 0, vmap.level());
      std::vector<at::Tensor> input_vars;
      input_vars.reserve(n_inputs);
      for (int64_t k = 0; k < n_inputs; ++k) {
        input_vars.push_back(*xs[k]);
      }
      auto raw = torch::autograd::grad(
          {*y}, input_vars, {v}, /*retain_graph=*/true, create_graph != 0, /*allow_unused=*/true);
      grads.reserve(raw.size());
      for (int64_t k = 0; k < n_inputs; ++k) {
        const at::Tensor& g = raw[k];
        if (!g.defined()) {
          grads.emplace_back();
          continue;
        }
        auto* batched = at::functorch::maybeGetBatchedImpl(g);
        if (batched != nullptr && batched->level() == vmap.level()) {
          grads.push_back(batched->value().movedim(batched->bdim(), 0));
        } else {
          // Does not depend on the cotangent: the same block for every row.
          std::vector<int64_t> shape{c};
          auto sizes = g.sizes();
          shape.insert(shape.end(), sizes.begin(), sizes.end());
          grads.push_back(g.unsqueeze(0).expand(shape));
        }
      }
      raw.clear();
    }

    for (int64_t k = 0; k < n_inputs; ++k) {
      if (grads[k].defined()) {
        out[k] = new at::Tensor(std::move(grads[k]));
        made.push_back(out[k]);
      }
    }
    *fallback_ops = tchj::fallback_ops(collector);
    return nullptr;
  } catch (const c10::Error& e) {
    for (auto* t : made) delete t;
    for (int64_t k = 0; k < n_inputs; ++k) out[k] = nullptr;
    return copy_string(e.what_without_backtrace());
  } catch (const std::exception& e) {
    for (auto* t : made) delete t;
    for (int64_t k = 0; k < n_inputs; ++k) out[k] = nullptr;
    return copy_string(e.what());
  } catch (...) {
    for (auto* t : made) delete t;
    for (int64_t k = 0; k < n_inputs; ++k) out[k] = nullptr;
    return copy_string("unknown C++ exception in the batched VJP");
  }
}

// Free and total memory of CUDA device `device` (cudaMemGetInfo), looked up at run time in the
// CUDA runtime that libtorch_cuda loaded, so this file needs no CUDA headers and works with a
// CPU-only libtorch (returns non-zero there). Memory held by PyTorch's caching allocator counts
// as used. Returns 0 on success.
int tchj_cuda_mem_get_info(int device, uint64_t* free_bytes, uint64_t* total_bytes) {
  using GetDevice = int (*)(int*);
  using SetDevice = int (*)(int);
  using MemGetInfo = int (*)(size_t*, size_t*);
  auto get = reinterpret_cast<GetDevice>(dlsym(RTLD_DEFAULT, "cudaGetDevice"));
  auto set = reinterpret_cast<SetDevice>(dlsym(RTLD_DEFAULT, "cudaSetDevice"));
  auto info = reinterpret_cast<MemGetInfo>(dlsym(RTLD_DEFAULT, "cudaMemGetInfo"));
  if (get == nullptr || set == nullptr || info == nullptr) {
    return -1;
  }
  int previous = 0;
  if (get(&previous) != 0 || set(device) != 0) {
    return -2;
  }
  size_t free_b = 0;
  size_t total_b = 0;
  int rc = info(&free_b, &total_b);
  set(previous);
  if (rc != 0) {
    return -3;
  }
  *free_bytes = free_b;
  *total_bytes = total_b;
  return 0;
}

}  // extern "C"
