// Collapsed Taylor mode (see csrc/taylor.h): the dispatcher fallback through which a Rust
// closure's ops reach their rules.
//
// While a session is open on a thread, the dispatch key TESTING_ONLY_GenericMode is in that
// thread's included set, and a boxed fallback on it sees every aten op the closure calls (through
// tch, or a TorchScript module) before autograd does. For each op:
//
// * no input with coefficients: the op runs unchanged;
// * grad mode off (a `tch::no_grad` region inside the closure, or the backward pass of a
//   derivative taken inside it without create_graph): the op runs unchanged and its outputs are
//   constants — what reverse mode makes of such a region, so every method gives one answer;
// * an op with a rule: the op runs for its value (below this key, so autograd records it as
//   usual when the session records, or when it is on an inner derivative's path), then the
//   rule gives its outputs their jets from ordinary aten ops;
// * an op without a rule that has a CompositeImplicitAutograd kernel: decomposed into ops that
//   are seen again;
// * any other op: the generic rule (taylor_generic.cpp, with the engine) by vmap(jvp∘jvp), or an
//   error naming the op (the Rust side falls back to nested reverse mode under Auto);
// * in-place ops: their functional form's rule, written back into `self`; in-place view ops
//   (unsqueeze_, transpose_, …) change `self`'s shape and its coefficients with it.
//
// libtorch reserves no dispatch key for an out-of-tree mode in C++ other than this testing one
// (Python, PreDispatch and PythonDispatcher carry libtorch's Python fallbacks). The fallback is
// installed once per process, at the first session, after checking that no other kernel or
// fallback sits on the key: a program that registered its own cannot use collapsed Taylor mode,
// and is told so.
#include "taylor.h"

#include <ATen/core/enum_tag.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <mutex>

namespace tchj::taylor {

namespace {

// Ops whose floating outputs carry no derivative (or do not change the value).
const std::unordered_set<std::string>& constant_ops() {
  static const std::unordered_set<std::string> ops = {
      "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
      "randint_like", "sign", "sgn", "floor", "ceil", "round", "trunc", "detach", "new_zeros",
      "new_ones", "new_empty", "new_full", "new_empty_strided", "fill", "zero", "normal",
      "bernoulli", "uniform", "exponential", "random", "floor_divide", "_local_scalar_dense",
      "detach_copy", "empty_strided", "rand", "randn", "full", "heaviside", "signbit",
  };
  return ops;
}

// Ops that neither change values nor make new ones.
const std::unordered_set<std::string>& passthrough_ops() {
  static const std::unordered_set<std::string> ops = {
      "requires_grad_", "retain_grad", "output_nr", "_version", "is_leaf", "retains_grad",
      "record_stream", "is_same_size", "_has_same_storage_numel", "size", "stride", "numel",
      "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "_nested_tensor_size",
      "is_nonzero", "equal", "item", "_is_zerotensor", "is_conj", "is_neg",
  };
  return ops;
}

std::string base_name(const c10::OperatorHandle& op) {
  const std::string& full = op.schema().name();  // "aten::tanh_"
  auto pos = full.find("::");
  return pos == std::string::npos ? full : full.substr(pos + 2);
}

std::string full_name(const c10::FunctionSchema& schema) {
  return schema.name() + (schema.overload_name().empty() ? "" : "." + schema.overload_name());
}

bool has_family_rule(const std::string& name) {
  return elementwise_ops().count(name) > 0 || shape_ops().count(name) > 0 ||
         product_ops().count(name) > 0 || nn_ops().count(name) > 0;
}

// The families' rules for a functional op whose outputs are `outs`; false when none applies.
bool apply_rule_unguarded(const Call& c) {
  return elementwise_rule(c) || product_rule(c) || nn_rule(c) || shape_rule(c);
}

// apply_rule_unguarded, with a rule's own failure (not the op's: its value ran before) turned
// into a session error, so that Auto falls back to nested reverse mode.
bool apply_rule(const c10::OperatorHandle& op, const std::string& name, const Stack& args,
                const Stack& outs) {
  Call c{op, name, op.schema().overload_name(), args, outs, tensors_of(outs)};
  try {
    return apply_rule_unguarded(c);
  } catch (const std::exception& e) {
    Session* s = current();
    if (s != nullptr) {
      std::lock_guard<std::mutex> lock(s->mu);
      if (!s->error.empty()) {
        throw;
      }
    }
    std::string what = e.what();
    fail(std::string(kNoRule) + full_name(op.schema()) + " (its rule failed: " +
         what.substr(0, what.find('\n')) + ")");
  }
}

// Visits every tensor among an op's arguments (Tensor, Tensor[], Tensor?[]).
template <typename F>
void for_each_tensor(const Stack& args, F&& f) {
  for (const auto& a : args) {
    if (a.isTensor()) {
      f(a.toTensor());
    } else if (a.isTensorList()) {
      for (const auto& t : a.toTensorVector()) f(t);
    } else if (a.isList()) {  // Tensor?[] (a generic list when TorchScript passes it)
      for (const auto& e : a.toListRef()) {
        if (e.isTensor()) f(e.toTensor());
      }
    }
  }
}

// A functorch-wrapped tensor (vmap's BatchedTensor, grad's or jvp's TensorWrapper).
bool functorch_wrapped(const Tensor& t) {
  auto ks = t.key_set();
  return ks.has(c10::DispatchKey::FuncTorchBatched) ||
         ks.has(c10::DispatchKey::FuncTorchGradWrapper) ||
         ks.has(c10::DispatchKey::BatchedNestedTensor);
}

// A thread without a session that inherited the key: an op on a tensor that an open session
// tracks fails that session (see taylor_session.cpp's header), then runs unchanged.
void foreign(const c10::OperatorHandle& op, Stack* stack) {
  const size_t n = op.schema().arguments().size();
  Stack args(stack->end() - static_cast<std::ptrdiff_t>(n), stack->end());
  const std::string msg =
      std::string(kRefused) + full_name(op.schema()) +
      " on another thread (an autograd worker running a backward pass the closure started, e.g. "
      "on CUDA tensors, or a TorchScript fork): its result would count as a constant";
  for_each_tensor(args, [&](const Tensor& t) {
    if (is_float(t)) fail_owner(t, msg);
  });
  c10::impl::ExcludeDispatchKeyGuard guard(kKey);
  op.callBoxed(*stack);
}

// Runs `op` below the key with grad mode on or off, and returns its outputs.
Stack run_value(const c10::OperatorHandle& op, const Stack& args, bool grad) {
  c10::impl::ExcludeDispatchKeyGuard guard(kKey);
  c10::AutoGradMode mode(grad);
  return call(op, args);
}

void fallback(const c10::OperatorHandle& op, c10::DispatchKeySet ks, Stack* stack) {
  Session* s = current();
  if (s == nullptr) {
    foreign(op, stack);
    return;
  }
  const auto& schema = op.schema();
  const size_t n = schema.arguments().size();
  Stack args(stack->end() - static_cast<std::ptrdiff_t>(n), stack->end());
  bool any = false, any_inner = false, any_wrapped = false;
  for_each_tensor(args, [&](const Tensor& t) {
    if (!t.defined()) return;
    if (tracked(t)) {
      any = true;
      any_inner = any_inner || inner(t);
    } else if (written(t)) {
      any = true;
    }
    any_wrapped = any_wrapped || functorch_wrapped(t);
  });
  std::string name = base_name(op);
  if (!any || passthrough_ops().count(name) > 0) {
    c10::impl::ExcludeDispatchKeyGuard guard(kKey);
    op.callBoxed(*stack);
    return;
  }
  bool inplace = !name.empty() && name.back() == '_' && name.substr(0, 2) != "__";
  if (!c10::GradMode::is_enabled()) {
    // A no_grad region inside the closure: constants, as reverse mode makes them. An in-place
    // write keeps `self`'s coefficients (reverse mode does not see the write either).
    Tensor self = inplace && args[0].isTensor() ? args[0].toTensor() : Tensor();
    {
      c10::impl::ExcludeDispatchKeyGuard guard(kKey);
      op.callBoxed(*stack);
    }
    if (self.defined()) touch(self);
    return;
  }
  if (any_wrapped && !s->in_transform) {
    // A transform inside the closure (its wrappers hide the coefficients of what they wrap).
    fail(std::string(kRefused) + full_name(schema) +
         " on a functorch-transformed tensor with Taylor coefficients (a vmap or grad transform "
         "inside the closure)");
  }
  for (const auto& a : args) {  // stale jets fail here, before the op runs
    if (a.isTensor()) check_live(a.toTensor());
  }
  std::string functional = inplace ? name.substr(0, name.size() - 1) : name;
  for (const auto& a : schema.arguments()) {
    if (a.is_out()) {
      fail(std::string(kNoRule) + full_name(schema) + " (an out= variant); call the functional op");
    }
  }
  // Value ops keep their autograd graph when the session records or when they are on an inner
  // derivative's path; rules record only when the session does.
  const bool value_grad = s->create_graph || any_inner;
  set_call_inner(any_inner);
  if (constant_ops().count(functional) > 0) {
    Tensor self = inplace ? args[0].toTensor() : Tensor();
    {
      c10::impl::ExcludeDispatchKeyGuard guard(kKey);
      c10::AutoGradMode mode(value_grad);
      op.callBoxed(*stack);
    }
    if (inplace) forget(self);
    return;
  }
  if (inplace) {
    Tensor self = args[0].toTensor();
    const bool view_op = op.hasTag(at::Tag::inplace_view);
    if (self.is_view() && !view_op) {
      fail(std::string(kRefused) + full_name(schema) +
           ": an in-place write into a view of a tensor with Taylor coefficients; write out of "
           "place instead");
    }
    // The functional form: the same overload, or (transpose_ → transpose.int, …) another one
    // with the same arguments.
    auto fop = c10::Dispatcher::singleton().findOp({"aten::" + functional, schema.overload_name()});
    for (const char* ov : {"", "int", "dim", "Tensor", "Scalar", "self"}) {
      if (fop) break;
      auto cand = c10::Dispatcher::singleton().findOp({"aten::" + functional, ov});
      if (cand && cand->schema().arguments().size() == schema.arguments().size()) fop = cand;
    }
    if (!fop) {
      fail(std::string(kNoRule) + full_name(schema) + " (in place, no functional form)");
    }
    Stack outs = run_value(*fop, args, value_grad);
    Tensor fresh = tensors_of(outs).at(0);
    bool ok;
    {
      c10::impl::ExcludeDispatchKeyGuard guard(kKey);
      c10::AutoGradMode mode(s->create_graph);
      ok = apply_rule(*fop, functional, args, outs);
    }
    if (!ok) {
      fail(std::string(kNoRule) + full_name(schema));
    }
    auto j = lookup(fresh);
    {
      c10::impl::ExcludeDispatchKeyGuard guard(kKey);
      c10::AutoGradMode mode(value_grad);
      if (view_op) {
        // unsqueeze_, transpose_, …: `self` takes the new shape (its storage is unchanged).
        Stack again(args.begin(), args.end());
        op.callBoxed(again);
      } else {
        self.copy_(fresh);
        note_written(self);
      }
    }
    if (j && !is_const(*j)) {
      record(self, j->T, j->S, any_inner);
    } else {
      forget(self);
    }
    torch::jit::drop(*stack, n);
    stack->emplace_back(self);
    return;
  }
  // Functional op: a rule, or the composite decomposition, or the generic rule, or an error.
  if (has_family_rule(name)) {
    Stack outs = run_value(op, args, value_grad);
    bool ok;
    {
      c10::impl::ExcludeDispatchKeyGuard guard(kKey);
      c10::AutoGradMode mode(s->create_graph);
      ok = apply_rule(op, name, args, outs);
    }
    if (ok) {
      torch::jit::drop(*stack, n);
      for (auto& o : outs) stack->push_back(std::move(o));
      return;
    }
  }
  if (op.hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd)) {
    op.callBoxedForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd, *stack);
    return;
  }
  Stack outs = run_value(op, args, value_grad);
  bool floating = false;
  for (const auto& t : tensors_of(outs)) {
    floating = floating || is_float(t);
  }
  if (floating) {
    std::string why = "no collapsed rule, and this build has no engine for the generic rule";
    bool ok = false;
    if (GenericRule g = generic_rule()) {
      c10::impl::ExcludeDispatchKeyGuard guard(kKey);
      c10::AutoGradMode mode(s->create_graph);
      try {
        ok = g(op, args, outs, &why);
      } catch (const std::exception& e) {
        std::string what = e.what();
        why = "its forward-mode derivative failed: " + what.substr(0, what.find('\n'));
        ok = false;
      }
    }
    if (!ok) {
      fail(std::string(kNoRule) + full_name(schema) + " (" + why + ")");
    }
  }
  torch::jit::drop(*stack, n);
  for (auto& o : outs) stack->push_back(std::move(o));
}

}  // namespace

void install_fallback() {
  static std::once_flag once;
  static std::string refusal;
  std::call_once(once, [] {
    // The key must be free: another library's fallback on it would be replaced (or would replace
    // ours) silently.
    if (c10::Dispatcher::singleton().hasBackendFallbackForDispatchKey(kKey)) {
      refusal = std::string("another library registered a fallback on ") + c10::toString(kKey);
      return;
    }
    // Leaked on purpose: the registration lasts as long as the library object.
    auto* lib = new torch::Library(torch::Library::IMPL, "_", kKey, __FILE__, __LINE__);
    lib->fallback(torch::CppFunction::makeFromBoxedFunction<&fallback>());
  });
  TORCH_CHECK(refusal.empty(), kRefused, "any closure: ", refusal,
              ", the dispatch key collapsed Taylor mode needs");
}

}  // namespace tchj::taylor
