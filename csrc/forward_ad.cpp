// Jacobian columns of a Rust closure by forward-mode AD — torch.func.jacfwd, which tch does not
// expose: dual tensors whose tangents are a batch of k directions at one vmap level, so that one
// evaluation of the closure gives all k Jacobian-vector products.
//
// For x and tangents U = [k, *x.shape], one call returns J U as [k, *y.shape] and y = f(x) —
// torch.func's vmap(jvp) (torch/_functorch/eager_transforms.py, _jvp_with_argnums): push a Vmap
// layer of size k, push a Jvp layer with forward grad mode on, enter a forward-AD (dual) level;
// x_dual = _make_dual(x, addBatchDim(U, 0, vmap level), dual level) — the Jvp layer lifts both
// into wrappers at its level, so the dual is made by the wrapper's autograd (there is no vmap
// batching rule for _make_dual); y_dual = f(x_dual); (y, T) = _unpack_dual(y_dual); unwrap T at
// the Jvp level, then at the vmap level; leave the levels in reverse order. An output without a
// tangent is an error (see below). Unlike the crate's double-backward columns it builds no
// reverse graph, and unlike the replicated VectorizedForward it needs no row-wise closure.
//
// libtorch allows one dual level per process ("Nested forward mode AD is not supported"): calls
// are serialized by a process-wide recursive mutex, so another thread waits, and a nested call on
// the same thread gets libtorch's error instead of a deadlock.
//
// Contract with Rust (src/native/forward_ad.rs): as csrc/vmap_grad.cpp (the same callback type; here the
// closure receives no parameters and one input, the dual x).
#include <ATen/ATen.h>
#include <ATen/functorch/BatchedTensorImpl.h>
#include <ATen/functorch/DynamicLayer.h>
#include <ATen/functorch/TensorWrapper.h>
#include <c10/core/AutogradState.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/forward_grad.h>

#include "functorch_guards.h"

#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>


extern "C" {

// J U into *columns ([k, *y.shape]) and y into *value for the closure f at x; `fallback_ops` and
// the return value as in tchj_vmap_grad.
char* tchj_jacfwd(
    tchj_loss_fn f,
    void* ctx,
    const at::Tensor* x,
    const at::Tensor* tangents,
    int vmap_fallback,
    at::Tensor** columns,
    at::Tensor** value,
    char** fallback_ops) {
  *columns = nullptr;
  *value = nullptr;
  *fallback_ops = nullptr;
  try {
    at::Tensor cols;
    at::Tensor y;
    tchj::Collector collector;
    {
      c10::WarningUtils::WarningHandlerGuard warnings(&collector);
      tchj_install_norm_rules();
      tchj_install_loss_rules();
      tchj::FallbackMode mode(vmap_fallback != 0);
      std::lock_guard<std::recursive_mutex> lock(tchj::dual_level_mutex());
      const int64_t k = tangents->size(0);
      tchj::VmapLevel vmap(k);
      at::Tensor primal;
      at::Tensor tangent;
      {
        tchj::JvpLevel jvp;
        tchj::DualLevel dual;
        auto u = at::functorch::addBatchDim(*tangents, 0, vmap.level());
        auto x_dual = at::_make_dual(*x, u, dual.idx());
        at::Tensor* in = new at::Tensor(x_dual);
        at::Tensor* out_ptr = nullptr;
        int rc = f(ctx, nullptr, 0, &in, 1, &out_ptr);
        std::unique_ptr<at::Tensor> out(out_ptr);
        if (rc != 0 || !out) {
          throw std::runtime_error("callback failed");
        }
        auto unpacked = at::_unpack_dual(*out, dual.idx());
        primal = tchj::unwrap_level(std::get<0>(unpacked), jvp.level());
        tangent = std::get<1>(unpacked);
        if (tangent.defined()) {
          tangent = tchj::unwrap_level(tangent, jvp.level());
        }
      }
      // The primal does not depend on the tangents: unbatched, or the same for every column.
      auto* pb = at::functorch::maybeGetBatchedImpl(primal);
      y = (pb != nullptr && pb->level() == vmap.level()) ? pb->value().select(pb->bdim(), 0)
                                                          : primal;
      // No tangent: y does not depend on x — or the closure lost it (a TorchScript module's
      // optimized graph runs without forward AD). The caller cannot tell, so it says so and
      // the caller takes the reverse-mode route.
      TORCH_CHECK(
          tangent.defined(),
          "forward-mode AD: the closure's output carries no tangent (it does not depend on x, or "
          "an op dropped the forward-mode derivative)");
      cols = tchj::unwrap_batch(tangent, vmap.level(), k);
      // Plain tensors, not views of the transformed ones, before the levels go.
      y = y.clone();
      cols = cols.contiguous();
    }
    *columns = new at::Tensor(cols);
    *value = new at::Tensor(y);
    *fallback_ops = tchj::fallback_ops(collector);
    return nullptr;
  } catch (const c10::Error& e) {
    return tchj::copy_string(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return tchj::copy_string(e.what());
  } catch (...) {
    return tchj::copy_string("unknown C++ exception in the forward-mode Jacobian");
  }
}

}  // extern "C"
