// What the crate's functorch transforms share (csrc/batched_vjp.cpp, csrc/vmap_grad.cpp,
// csrc/forward_ad.cpp, csrc/taylor_generic.cpp): the vmap fallback switch, RAII levels (vmap,
// grad, jvp, the one forward-AD level) and the warning collector that names the ops which took
// the vmap fallback (the malloc'd strings handed to Rust are csrc/strings.h). Header-only;
// `inline` functions keep one instance of each process-wide mutex.
#pragma once

#include <ATen/ATen.h>
#include <ATen/functorch/BatchedFallback.h>
#include <ATen/functorch/BatchedTensorImpl.h>
#include <ATen/functorch/DynamicLayer.h>
#include <ATen/functorch/TensorWrapper.h>
#include <c10/core/AutogradState.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/forward_grad.h>

#include "strings.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

// The Rust side of a closure run under the transforms (csrc/vmap_grad.cpp, csrc/forward_ad.cpp):
// receives `n_params` parameters and `n_inputs` inputs (new heap tensors, now owned by the
// callee), writes its result (a new heap tensor) into `out`, returns 0, or non-zero after keeping
// its own error.
extern "C" typedef int (*tchj_loss_fn)(
    void* ctx,
    at::Tensor** params,
    int64_t n_params,
    at::Tensor** inputs,
    int64_t n_inputs,
    at::Tensor** out);

// csrc/norm_rules.cpp, csrc/loss_rules.cpp: batching rules, installed once per process.
void tchj_install_norm_rules();
void tchj_install_loss_rules();

namespace tchj {

// The vmap fallback switch is process-wide in libtorch. Calls that keep it on (the default)
// share the lock; a call that turns it off holds it alone and restores the previous value, so a
// concurrent call never sees another call's setting.
inline std::shared_mutex& fallback_mode_mutex() {
  static std::shared_mutex mutex;
  return mutex;
}

class FallbackMode {
 public:
  explicit FallbackMode(bool enabled) {
    if (enabled) {
      shared_ = std::shared_lock<std::shared_mutex>(fallback_mode_mutex());
    } else {
      unique_ = std::unique_lock<std::shared_mutex>(fallback_mode_mutex());
      previous_ = at::functorch::isVmapFallbackEnabled();
      at::functorch::setVmapFallbackEnabled(false);
      changed_ = true;
    }
  }
  ~FallbackMode() {
    if (changed_) {
      at::functorch::setVmapFallbackEnabled(previous_);
    }
  }
  FallbackMode(const FallbackMode&) = delete;
  FallbackMode& operator=(const FallbackMode&) = delete;

 private:
  std::shared_lock<std::shared_mutex> shared_;
  std::unique_lock<std::shared_mutex> unique_;
  bool previous_ = true;
  bool changed_ = false;
};

// Pushes a vmap level of `batch` and pops it on every path out of the scope. `randomness` is
// torch.func's vmap(randomness=...): random ops inside are an error (the default), or draw once
// for the whole batch (Same).
class VmapLevel {
 public:
  explicit VmapLevel(
      int64_t batch,
      at::functorch::RandomnessType randomness = at::functorch::RandomnessType::Error)
      : level_(at::functorch::initAndPushDynamicLayer(
            at::functorch::TransformType::Vmap,
            c10::SymInt(batch),
            randomness)) {}
  ~VmapLevel() {
    at::functorch::popDynamicLayerAndDeleteMetadata();
  }
  VmapLevel(const VmapLevel&) = delete;
  VmapLevel& operator=(const VmapLevel&) = delete;
  int64_t level() const {
    return level_;
  }

 private:
  int64_t level_;
};

// libtorch allows one forward-AD (dual) level per process ("Nested forward mode AD is not
// supported"); functorch nests jvp by entering it once and wrapping tensors at each Jvp layer.
// Calls that use it (csrc/forward_ad.cpp, csrc/taylor_generic.cpp) are serialized by this
// process-wide recursive mutex: another thread waits, and a nested call on the same thread gets
// libtorch's error instead of a deadlock.
inline std::recursive_mutex& dual_level_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

// A forward-AD level for the scope.
class DualLevel {
 public:
  DualLevel() : idx_(torch::autograd::ForwardADLevel::get_next_idx()) {}
  ~DualLevel() {
    torch::autograd::ForwardADLevel::release_idx(idx_);
  }
  DualLevel(const DualLevel&) = delete;
  DualLevel& operator=(const DualLevel&) = delete;
  int64_t idx() const {
    return static_cast<int64_t>(idx_);
  }

 private:
  uint64_t idx_;
};

// Pushes a Jvp layer with forward grad mode on, and restores both on every path out.
class JvpLevel {
 public:
  JvpLevel()
      : prev_fw_grad_mode_(c10::AutogradState::get_tls_state().get_fw_grad_mode()),
        level_(at::functorch::initAndPushDynamicLayer(
            at::functorch::TransformType::Jvp,
            std::nullopt,
            std::nullopt,
            std::nullopt,
            prev_fw_grad_mode_)) {
    c10::AutogradState::get_tls_state().set_fw_grad_mode(true);
  }
  ~JvpLevel() {
    at::functorch::popDynamicLayerAndDeleteMetadata();
    c10::AutogradState::get_tls_state().set_fw_grad_mode(prev_fw_grad_mode_);
  }
  JvpLevel(const JvpLevel&) = delete;
  JvpLevel& operator=(const JvpLevel&) = delete;
  int64_t level() const {
    return level_;
  }

 private:
  bool prev_fw_grad_mode_;
  int64_t level_;
};

// Pushes a grad (reverse-mode) level and pops it on every path out of the scope; grad mode must
// be on inside it, `prev_grad_mode` is the caller's.
class GradLevel {
 public:
  explicit GradLevel(bool prev_grad_mode)
      : level_(at::functorch::initAndPushDynamicLayer(
            at::functorch::TransformType::Grad, std::nullopt, std::nullopt, prev_grad_mode)) {}
  ~GradLevel() {
    at::functorch::popDynamicLayerAndDeleteMetadata();
  }
  GradLevel(const GradLevel&) = delete;
  GradLevel& operator=(const GradLevel&) = delete;
  int64_t level() const {
    return level_;
  }

 private:
  int64_t level_;
};

// The value of `t` below a grad or Jvp level (the tensor itself when it is not wrapped there).
inline at::Tensor unwrap_level(const at::Tensor& t, int64_t level) {
  auto* w = at::functorch::maybeGetTensorWrapper(t);
  if (w != nullptr && w->level().has_value() && *w->level() == level) {
    return w->value();
  }
  return t;
}

// [n, *shape] from a tensor of the vmap level of size n: its physical value with the batch
// dimension first, or the same block n times when it does not depend on the batch.
inline at::Tensor unwrap_batch(const at::Tensor& t, int64_t level, int64_t n) {
  auto* b = at::functorch::maybeGetBatchedImpl(t);
  if (b != nullptr && b->level() == level) {
    return b->value().movedim(b->bdim(), 0);
  }
  std::vector<int64_t> shape{n};
  auto sizes = t.sizes();
  shape.insert(shape.end(), sizes.begin(), sizes.end());
  return t.unsqueeze(0).expand(shape);
}

// Collects libtorch's warnings during a call (on this thread, and those the autograd engine
// replays to it) instead of printing them: the vmap fallback's warning names the op.
class Collector : public c10::WarningHandler {
 public:
  void process(const c10::Warning& warning) override {
    messages.push_back(warning.msg());
  }
  std::vector<std::string> messages;
};

// "…batching rule for aten::foo. Please file…" -> "aten::foo".
inline std::string fallback_op(const std::string& msg) {
  const std::string key = "batching rule for ";
  auto at = msg.find(key);
  if (at == std::string::npos) {
    return "";
  }
  auto start = at + key.size();
  auto end = msg.find_first_of(". ", start);
  return msg.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

// The distinct ops of the fallback warnings collected, '\n'-separated, as a malloc'd string
// (nullptr when none).
inline char* fallback_ops(const Collector& collector) {
  std::string ops;
  for (const auto& msg : collector.messages) {
    auto op = fallback_op(msg);
    if (!op.empty() && ops.find(op) == std::string::npos) {
      ops += ops.empty() ? op : "\n" + op;
    }
  }
  return ops.empty() ? nullptr : copy_string(ops);
}

}  // namespace tchj
