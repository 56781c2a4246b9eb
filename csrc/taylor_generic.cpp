// Collapsed Taylor mode (see csrc/taylor.h): the generic rule, for any op without a collapsed
// rule of its own that has a forward-mode derivative (libtorch's derivatives.yaml), backward ops
// included. Part of the engine (functorch's headers).
//
// For inputs with jets (x_k, T_k, S_k), the op's output jet is
//
//   T_y[d] = Σ_k ∂y/∂x_k · T_k[d]
//   S_y    = Σ_k ∂y/∂x_k · S_k + Σ_d y″[T[d], T[d]]
//
// the second directional derivative along each direction, summed. With the curve
// x_k(ε) = x_k + ε·T_k[d] + ε²/2·S_k/D, the second derivative of y(x(ε)) at 0 is
// y″[T[d], T[d]] + Σ_k ∂y/∂x_k·S_k/D, and its first is T_y[d]. Both come from jvp∘jvp — two
// nested Jvp layers on one forward-AD level, as torch.func nests jvp: x at the outer layer is a
// dual with tangent T[d] whose inner tangent is itself a dual (T[d], S/D) — under one vmap layer
// over the D directions (torch.func's vmap(jvp(jvp(f)))). Summing the inner tangents' outer
// tangents over d gives S_y.
//
// Not for random ops (the derivative would draw again) nor for lists of tensors with jets (the
// families have cat and stack); an op whose forward-mode derivative is not implemented fails
// with libtorch's message (the fallback turns it into "no rule").
#include "taylor.h"

#include <ATen/core/enum_tag.h>

#include "functorch_guards.h"

#include <mutex>

namespace tchj::taylor {

namespace {

bool generic(const c10::OperatorHandle& op, const Stack& args, const Stack& outs,
             std::string* why) {
  if (op.hasTag(at::Tag::nondeterministic_seeded)) {
    *why = "a random op: its derivative would draw again";
    return false;
  }
  std::vector<size_t> idx;
  std::vector<Jet> jets;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].isTensor()) {
      auto j = lookup(args[i].toTensor());
      if (j) {
        idx.push_back(i);
        jets.push_back(*j);
      }
    } else if (args[i].isTensorList() || args[i].isList()) {
      bool any = false;
      if (args[i].isTensorList()) {
        for (const auto& t : args[i].toTensorVector()) any = any || tracked(t);
      } else {
        for (const auto& e : args[i].toListRef()) any = any || (e.isTensor() && tracked(e.toTensor()));
      }
      if (any) {
        *why = "a list of tensors with coefficients";
        return false;
      }
    }
  }
  auto out_ts = tensors_of(outs);
  if (idx.empty()) {
    return true;
  }
  const int64_t D = current()->D;
  tchj::Collector collector;  // the vmap fallback's warnings: an op without a batching rule loops
  c10::WarningUtils::WarningHandlerGuard warnings(&collector);
  std::lock_guard<std::recursive_mutex> lock(tchj::dual_level_mutex());
  std::vector<Tensor> T(out_ts.size()), S(out_ts.size());
  {
    tchj::VmapLevel vmap(D, at::functorch::RandomnessType::Error);
    std::vector<Tensor> first(out_ts.size()), second(out_ts.size());
    {
      tchj::JvpLevel outer;
      tchj::DualLevel dual;
      std::vector<Tensor> x1, t1;
      for (size_t k = 0; k < idx.size(); ++k) {
        Tensor Tb = at::functorch::addBatchDim(jets[k].T, 0, vmap.level());
        x1.push_back(at::_make_dual(jets[k].v, Tb, dual.idx()));
        t1.push_back(jets[k].S.defined()
                         ? at::_make_dual(Tb, jets[k].S / static_cast<double>(D), dual.idx())
                         : Tb);
      }
      std::vector<Tensor> inner_tangents(out_ts.size());
      {
        tchj::JvpLevel inner;
        Stack a2(args.begin(), args.end());
        for (size_t k = 0; k < idx.size(); ++k) {
          a2[idx[k]] = IValue(at::_make_dual(x1[k], t1[k], dual.idx()));
        }
        auto o2 = tensors_of(call(op, a2));
        TORCH_CHECK(o2.size() == out_ts.size(), "collapsed Taylor mode: internal error in the "
                    "generic rule of ", op.schema().name());
        for (size_t i = 0; i < o2.size(); ++i) {
          if (!is_float(o2[i])) continue;
          auto t = std::get<1>(at::_unpack_dual(o2[i], dual.idx()));
          if (t.defined()) inner_tangents[i] = tchj::unwrap_level(t, inner.level());
        }
      }
      for (size_t i = 0; i < out_ts.size(); ++i) {
        const Tensor& t = inner_tangents[i];
        if (!t.defined()) continue;
        auto unpacked = at::_unpack_dual(t, dual.idx());
        first[i] = tchj::unwrap_level(std::get<0>(unpacked), outer.level());
        Tensor s = std::get<1>(unpacked);
        if (s.defined()) second[i] = tchj::unwrap_level(s, outer.level());
      }
    }
    for (size_t i = 0; i < out_ts.size(); ++i) {
      if (!first[i].defined()) continue;
      T[i] = tchj::unwrap_batch(first[i], vmap.level(), D).contiguous();
      if (second[i].defined()) {
        S[i] = tchj::unwrap_batch(second[i], vmap.level(), D).sum(0);
      }
    }
  }
  for (size_t i = 0; i < out_ts.size(); ++i) {
    if (T[i].defined()) {
      TORCH_CHECK(T[i].sizes().slice(1).equals(out_ts[i].sizes()),
                  "collapsed Taylor mode: the generic rule of ", op.schema().name(),
                  " gave coefficients of shape ", T[i].sizes(), " for an output ", out_ts[i].sizes());
      put(Jet{out_ts[i], T[i].to(out_ts[i].scalar_type()),
              S[i].defined() ? S[i].to(out_ts[i].scalar_type()) : Tensor()});
    }
  }
  return true;
}

}  // namespace

}  // namespace tchj::taylor

extern "C" {

// Installs the generic rule (once is enough; idempotent).
void tchj_taylor_install_generic() {
  tchj::taylor::set_generic_rule(&tchj::taylor::generic);
}

}  // extern "C"
