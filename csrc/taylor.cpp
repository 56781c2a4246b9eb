// Collapsed Taylor mode: Σ_d v_dᵀ ∇²u v_d (the Laplacian for v_d = e_d) in one forward pass.
//
// Every tensor t that depends on the input x carries a jet (t, T, S):
//   T = [D, *t.shape]   T[d] = ∂t/∂x · v_d                       (first-order coefficients)
//   S = t.shape         S = Σ_d v_dᵀ ∇²t v_d                     (the second-order ones, summed)
// seeded at x with T = the directions v_d and S = 0, and pushed through each op by its collapsed
// rule (Dangel, Siebert, Zeinhofer, Walther, "Collapsing Taylor Mode Automatic Differentiation",
// NeurIPS 2025; the forward Laplacian of Li et al. 2023). For y = f(x) elementwise:
//   T_y = f′(x)·T_x          S_y = f′(x)·S_x + f″(x)·Σ_d T_x[d]²
// and for a product y = a·b:  S_y = S_a·b + a·S_b + 2·Σ_d T_a[d]·T_b[d].
// At the output u: S_u = Σ_d v_dᵀ∇²u v_d and T_u[d] = ∇u·v_d, without a reverse pass.
//
// How it reaches a Rust closure: while a session is open on a thread, the dispatch key
// TESTING_ONLY_GenericMode is in that thread's included set, and a boxed fallback on it sees
// every aten op the closure calls (through tch, or a TorchScript module) before autograd does.
// Ops whose inputs carry no jet run unchanged. Otherwise the fallback runs the op for its value
// (below this key, so autograd records it as usual) and the op's rule for the coefficients,
// from ordinary aten ops — so with grad mode on, S is an ordinary tensor in the caller's graph
// (PINN losses train through it). An op without a rule that has a CompositeImplicitAutograd
// kernel is decomposed into ops that are seen again; any other op with a jet input is an error
// that names it (the Rust side falls back to nested reverse mode under Auto). Control flow is
// the closure's own: nothing is traced, nothing is frozen.
// libtorch reserves no dispatch key for an out-of-tree mode in C++ other than this testing one
// (Python, PreDispatch and PythonDispatcher carry libtorch's Python fallbacks); no other code in
// a tch process uses it. The fallback is installed once per process, at the first session.
//
// Safety of the table: jets are keyed by TensorImpl and hold a strong reference (no address is
// reused during a session) and the version counter at registration. A tensor written in place
// by other means than a rule here (its version moved on), an in-place write into a view of a
// tensor with a jet, or a read of storage that a rule wrote into through another alias, is an
// error — never a silently stale jet.
//
// Needs only libtorch's headers: part of every build with libtorch (the "core").
// Contract with Rust (src/native/taylor.rs): no C++ exception crosses the boundary.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "strings.h"

#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace {

using at::Tensor;
using c10::IValue;
using torch::jit::Stack;

constexpr auto kKey = c10::DispatchKey::TESTING_ONLY_GenericMode;
const char* const kNoRule = "tch-jacobian: collapsed Taylor mode has no rule for ";

struct Jet {
  Tensor v;  // the value (the closure's tensor)
  Tensor T;  // [D, *v.shape], never undefined for a tracked tensor
  Tensor S;  // v.shape, or undefined for zero
};

// A tensor's coefficients. The table holds its tensor weakly, so that the coefficients of the
// closure's dead intermediates are freed as it runs (as their values are): an entry whose
// tensor died is stale, whatever tensor now has its address, and is dropped.
struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> tensor;
  Tensor T;
  Tensor S;
  uint32_t version;
};

struct Session {
  int64_t D = 0;
  std::unordered_map<c10::TensorImpl*, Entry> table;
  std::unordered_set<const c10::StorageImpl*> written;  // storages written in place by rules
  std::vector<c10::Storage> written_alive;              // (kept alive: no address reuse)
  std::string error;                                    // the first rule failure
};

thread_local Session* session = nullptr;

[[noreturn]] void fail(const std::string& msg) {
  if (session != nullptr && session->error.empty()) {
    session->error = msg;
  }
  TORCH_CHECK(false, msg);
}

// ---------------------------------------------------------------------------------------------
// The table

const c10::StorageImpl* storage_of(const Tensor& t) {
  return t.has_storage() ? t.storage().unsafeGetStorageImpl() : nullptr;
}

// The live entry of `t`, or the table's end.
std::unordered_map<c10::TensorImpl*, Entry>::iterator find_live(const Tensor& t) {
  auto it = session->table.find(t.unsafeGetTensorImpl());
  if (it != session->table.end() && it->second.tensor.expired()) {
    session->table.erase(it);
    return session->table.end();
  }
  return it;
}

// The jet of `t`, or nullopt for a constant (no dependence on the input).
std::optional<Jet> lookup(const Tensor& t) {
  if (!t.defined()) {
    return std::nullopt;
  }
  auto it = find_live(t);
  if (it == session->table.end()) {
    if (!session->written.empty() && session->written.count(storage_of(t)) > 0) {
      fail("collapsed Taylor mode: a tensor is read after a rule wrote into its storage through "
           "another alias (an in-place write into a view); write out of place instead");
    }
    return std::nullopt;
  }
  if (t.unsafeGetTensorImpl()->version_counter().current_version() != it->second.version) {
    fail("collapsed Taylor mode: a tensor that depends on the input was modified in place "
         "through an alias (shape " + c10::str(t.sizes()) + "); write out of place instead");
  }
  return Jet{t, it->second.T, it->second.S};
}

bool tracked(const Tensor& t) {
  return t.defined() && find_live(t) != session->table.end();
}

void record(const Tensor& v, Tensor T, Tensor S) {
  TORCH_INTERNAL_ASSERT(T.defined());
  TORCH_CHECK(T.dim() == v.dim() + 1 && T.size(0) == session->D,
              "collapsed Taylor mode: internal shape error, T ", T.sizes(), " for value ", v.sizes());
  auto version = v.unsafeGetTensorImpl()->version_counter().current_version();
  // Drop the coefficients of tensors that died since (the table stays as small as the
  // closure's live tensors).
  for (auto it = session->table.begin(); it != session->table.end();) {
    it = it->second.tensor.expired() ? session->table.erase(it) : std::next(it);
  }
  session->table.erase(v.unsafeGetTensorImpl());
  session->table.emplace(
      v.unsafeGetTensorImpl(),
      Entry{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(
                v.getIntrusivePtr()),
            std::move(T), std::move(S), version});
}

// ---------------------------------------------------------------------------------------------
// Jet algebra (every op below runs with the key excluded)

// T with singleton dims inserted after the direction dim so that it has rank 1 + `rank`.
Tensor lift(const Tensor& T, int64_t rank) {
  if (!T.defined() || T.dim() - 1 >= rank) {
    return T;
  }
  std::vector<int64_t> shape{T.size(0)};
  for (int64_t i = 0; i < rank - (T.dim() - 1); ++i) {
    shape.push_back(1);
  }
  for (int64_t i = 1; i < T.dim(); ++i) {
    shape.push_back(T.size(i));
  }
  return T.reshape(shape);
}

// `T` (lifted) broadcast to [D, *shape].
Tensor expand_T(const Tensor& T, at::IntArrayRef shape) {
  auto l = lift(T, static_cast<int64_t>(shape.size()));
  std::vector<int64_t> full{l.size(0)};
  full.insert(full.end(), shape.begin(), shape.end());
  return l.sizes().equals(full) ? l : l.expand(full);
}

Tensor expand_S(const Tensor& S, at::IntArrayRef shape) {
  if (!S.defined() || S.sizes().equals(shape)) {
    return S;
  }
  return S.expand(shape);
}

Tensor plus(const Tensor& a, const Tensor& b) {
  if (!a.defined()) {
    return b;
  }
  if (!b.defined()) {
    return a;
  }
  return a + b;
}

Tensor times(const Tensor& a, const Tensor& b) {
  return (a.defined() && b.defined()) ? a * b : Tensor();
}

// Σ_d T[d]², value-shaped.
Tensor sumsq(const Tensor& T) {
  return T.mul(T).sum(0);
}

// ---------------------------------------------------------------------------------------------
// The elementwise rule fused into one pass over T (CPU, float/double): T_out = d1·T and
// S_out = d1·S + d2·Σ_d T², reading T once instead of three times. T is viewed as [D, B, R]
// with R contiguous and B of stride R or 0 (the batch-broadcast directions of the seed and the
// first linear layer, never materialized). Its backward is fused the same way when nothing
// records it, and is the composite formula (right at every order) when it is recorded.

struct Layout {
  int64_t D, B, R, sd, sb;  // T[d, b, r] = data[d·sd + b·sb + r]
};

// T as [D, B, R] without a copy when its strides allow it; nullopt otherwise.
std::optional<Layout> layout_of(const Tensor& T) {
  int64_t D = T.size(0);
  if (T.dim() == 1) {
    return Layout{D, 1, 1, T.stride(0), 0};
  }
  int64_t B = T.dim() >= 3 ? T.size(1) : 1;
  int64_t R = 1;
  for (int64_t i = T.dim() >= 3 ? 2 : 1; i < T.dim(); ++i) {
    R *= T.size(i);
  }
  // the dims after B must be contiguous among themselves
  int64_t expect = 1;
  for (int64_t i = T.dim() - 1; i >= (T.dim() >= 3 ? 2 : 1); --i) {
    if (T.size(i) != 1 && T.stride(i) != expect) {
      return std::nullopt;
    }
    expect *= T.size(i);
  }
  int64_t sb = T.dim() >= 3 ? T.stride(1) : 0;
  if (T.dim() >= 3 && B > 1 && sb != 0 && sb != R) {
    return std::nullopt;
  }
  return Layout{D, B, R, T.stride(0), B > 1 ? sb : 0};
}

bool fusable(const Tensor& T, const Tensor& d1) {
  auto st = T.scalar_type();
  return T.device().is_cpu() && (st == at::kFloat || st == at::kDouble) &&
         d1.scalar_type() == st && T.dim() >= 1;
}

// Value-shaped operands as contiguous [B·R] of T's dtype.
Tensor flat(const Tensor& t, const Tensor& T) {
  std::vector<int64_t> shape(T.sizes().begin() + 1, T.sizes().end());
  return t.expand(shape).contiguous();
}

// Activations whose f′ and f″ the forward kernel derives from the output y itself (no f′/f″
// tensors: used when nothing records).
enum class Act { None, Tanh, Sigmoid };

template <typename scalar_t>
void unary_forward_kernel(const scalar_t* T, Layout L, const scalar_t* d1_in,
                          const scalar_t* d2_in, const scalar_t* S, scalar_t* To, scalar_t* So,
                          scalar_t* q, Act act = Act::None, const scalar_t* y = nullptr,
                          scalar_t* fill1 = nullptr, scalar_t* fill2 = nullptr) {
  const int64_t B = L.B, R = L.R, D = L.D;
  at::parallel_for(0, B * R, 4096, [&](int64_t begin, int64_t end) {
    const scalar_t* d1 = d1_in;
    const scalar_t* d2 = d2_in;
    if (act != Act::None) {
      // f′ and f″ from y, into value-shaped buffers, in the same pass
      for (int64_t i = begin; i < end; ++i) {
        scalar_t v = y[i];
        scalar_t a = act == Act::Tanh ? 1 - v * v : v * (1 - v);
        fill1[i] = a;
        fill2[i] = act == Act::Tanh ? -2 * v * a : a * (1 - 2 * v);
      }
      d1 = fill1;
      d2 = fill2;
    }
    for (int64_t i = begin; i < end; ++i) q[i] = 0;
    for (int64_t d = 0; d < D; ++d) {
      int64_t i = begin;
      while (i < end) {
        int64_t b = i / R, r = i % R;
        int64_t stop = std::min(end, (b + 1) * R);
        const scalar_t* __restrict__ t = T + d * L.sd + b * L.sb - b * R;
        scalar_t* __restrict__ to = To + d * B * R;
        scalar_t* __restrict__ qq = q;
        const scalar_t* __restrict__ a = d1;
        for (int64_t j = i; j < stop; ++j) {
          scalar_t v = t[j];
          to[j] = v * a[j];
          qq[j] += v * v;
        }
        (void)r;
        i = stop;
      }
    }
    for (int64_t i = begin; i < end; ++i) {
      So[i] = d2[i] * q[i] + (S != nullptr ? d1[i] * S[i] : scalar_t(0));
    }
  });
}

template <typename scalar_t>
void unary_backward_kernel(const scalar_t* T, Layout L, const scalar_t* gTo, const scalar_t* d1,
                           const scalar_t* d2, const scalar_t* gSo, const scalar_t* S,
                           scalar_t* gT, scalar_t* gd1) {
  const int64_t B = L.B, R = L.R, D = L.D;
  at::parallel_for(0, B * R, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      gd1[i] = S != nullptr ? S[i] * gSo[i] : scalar_t(0);
    }
    for (int64_t d = 0; d < D; ++d) {
      int64_t i = begin;
      while (i < end) {
        int64_t b = i / R;
        int64_t stop = std::min(end, (b + 1) * R);
        const scalar_t* __restrict__ t = T + d * L.sd + b * L.sb - b * R;
        const scalar_t* __restrict__ g = gTo + d * B * R;
        scalar_t* __restrict__ out = gT + d * B * R;
        scalar_t* __restrict__ acc = gd1;
        for (int64_t j = i; j < stop; ++j) {
          scalar_t v = t[j], gj = g[j];
          out[j] = d1[j] * gj + 2 * d2[j] * gSo[j] * v;
          acc[j] += gj * v;
        }
        i = stop;
      }
    }
  });
}

struct UnaryJet : public torch::autograd::Function<UnaryJet> {
  // (T, S, d1, d2) → (T_out, S_out); `has_S` false: S is zero (autograd's inputs must all be
  // defined tensors, so a placeholder stands in its place).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const Tensor& T, const Tensor& S_or_placeholder,
                                                const Tensor& d1, const Tensor& d2, bool has_S) {
    Tensor S = has_S ? S_or_placeholder : Tensor();
    auto L = *layout_of(T);
    Tensor f1 = flat(d1, T), f2 = flat(d2, T);
    Tensor fS = S.defined() ? flat(S, T) : Tensor();
    Tensor To = at::empty(T.sizes(), T.options().memory_format(at::MemoryFormat::Contiguous));
    Tensor So = at::empty(T.sizes().slice(1), T.options());
    Tensor q = at::empty(T.sizes().slice(1), T.options());
    AT_DISPATCH_FLOATING_TYPES(T.scalar_type(), "taylor_unary", [&] {
      unary_forward_kernel<scalar_t>(T.const_data_ptr<scalar_t>(), L, f1.const_data_ptr<scalar_t>(),
                                     f2.const_data_ptr<scalar_t>(),
                                     fS.defined() ? fS.const_data_ptr<scalar_t>() : nullptr,
                                     To.data_ptr<scalar_t>(), So.data_ptr<scalar_t>(),
                                     q.data_ptr<scalar_t>());
    });
    ctx->save_for_backward({T, S, d1, d2});
    ctx->saved_data["q"] = q;
    ctx->saved_data["has_S"] = has_S;
    return {To, So};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    Tensor T = saved[0], S = saved[1], d1 = saved[2], d2 = saved[3];
    Tensor gTo = grads[0], gSo = grads[1];
    auto value_shape = T.sizes().slice(1);
    auto reduce = [&](const Tensor& g, const Tensor& like) {
      // a value-shaped gradient summed to the shape of a broadcast operand
      return like.sizes().equals(g.sizes()) ? g : g.sum_to_size(like.sizes());
    };
    if (!gSo.defined()) {
      gSo = at::zeros(value_shape, T.options());
    }
    if (!gTo.defined()) {
      gTo = at::zeros(T.sizes(), T.options());
    }
    Tensor gT, gS, gd1, gd2;
    if (at::GradMode::is_enabled() || !fusable(T, d1) || !layout_of(T)) {
      // Recorded (a create_graph backward): the composite formula, right at every order.
      Tensor g2 = d2 * gSo;
      gT = gTo * d1 + 2 * T * g2;
      gd1 = (gTo * T).sum(0);
      if (S.defined()) {
        gd1 = gd1 + S * gSo;
      }
      gd2 = gSo * T.mul(T).sum(0);
    } else {
      auto L = *layout_of(T);
      Tensor f1 = flat(d1, T), f2 = flat(d2, T), fg = gSo.expand(value_shape).contiguous();
      Tensor fS = S.defined() ? flat(S, T) : Tensor();
      Tensor g = gTo.contiguous();
      gT = at::empty(T.sizes(), T.options().memory_format(at::MemoryFormat::Contiguous));
      gd1 = at::empty(value_shape, T.options());
      AT_DISPATCH_FLOATING_TYPES(T.scalar_type(), "taylor_unary_backward", [&] {
        unary_backward_kernel<scalar_t>(
            T.const_data_ptr<scalar_t>(), L, g.const_data_ptr<scalar_t>(),
            f1.const_data_ptr<scalar_t>(), f2.const_data_ptr<scalar_t>(),
            fg.const_data_ptr<scalar_t>(), fS.defined() ? fS.const_data_ptr<scalar_t>() : nullptr,
            gT.data_ptr<scalar_t>(), gd1.data_ptr<scalar_t>());
      });
      gd2 = gSo * ctx->saved_data["q"].toTensor();
    }
    if (S.defined()) {
      gS = reduce(d1 * gSo, S);
    }
    return {gT, gS, reduce(gd1, d1), reduce(gd2, d2), Tensor()};
  }
};

// tanh or sigmoid with nothing recording: one kernel, f′ and f″ from y inside it. False when
// the layout does not allow it.
bool unary_inline(const Jet& x, const Tensor& y, Act act, Jet* out) {
  if (at::GradMode::is_enabled() || !fusable(x.T, y) || !layout_of(x.T) ||
      !y.sizes().equals(x.T.sizes().slice(1)) || !y.is_contiguous() ||
      (x.S.defined() && !x.S.sizes().equals(y.sizes()))) {
    return false;
  }
  auto L = *layout_of(x.T);
  Tensor fS = x.S.defined() ? x.S.contiguous() : Tensor();
  Tensor To = at::empty(x.T.sizes(), x.T.options().memory_format(at::MemoryFormat::Contiguous));
  Tensor So = at::empty(y.sizes(), y.options());
  Tensor q = at::empty(y.sizes(), y.options());
  Tensor d1 = at::empty(y.sizes(), y.options()), d2 = at::empty(y.sizes(), y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "taylor_unary_inline", [&] {
    unary_forward_kernel<scalar_t>(x.T.const_data_ptr<scalar_t>(), L, nullptr, nullptr,
                                   fS.defined() ? fS.const_data_ptr<scalar_t>() : nullptr,
                                   To.data_ptr<scalar_t>(), So.data_ptr<scalar_t>(),
                                   q.data_ptr<scalar_t>(), act, y.const_data_ptr<scalar_t>(),
                                   d1.data_ptr<scalar_t>(), d2.data_ptr<scalar_t>());
  });
  *out = Jet{y, To, So};
  return true;
}

// y = f(x) elementwise, from f′(x) and f″(x) (d2 undefined: f″ = 0).
Jet unary(const Jet& x, const Tensor& y, const Tensor& d1, const Tensor& d2) {
  if (d2.defined() && fusable(x.T, d1) && d2.scalar_type() == d1.scalar_type() &&
      layout_of(x.T) && d1.sizes().equals(x.T.sizes().slice(1)) &&
      d2.sizes().equals(x.T.sizes().slice(1)) &&
      (!x.S.defined() || x.S.sizes().equals(x.T.sizes().slice(1)))) {
    auto out = UnaryJet::apply(x.T, x.S.defined() ? x.S : d1, d1, d2, x.S.defined());
    return Jet{y, out[0], out[1]};
  }
  Tensor T = x.T * d1;
  Tensor S = times(x.S, d1);
  if (d2.defined()) {
    S = plus(S, d2 * sumsq(x.T));
  }
  return Jet{y, T, S};
}

Jet constant_jet(const Tensor& v) {
  return Jet{v, Tensor(), Tensor()};
}

bool is_const(const Jet& j) {
  return !j.T.defined();
}

Jet jet_or_const(const Tensor& t) {
  auto j = lookup(t);
  return j ? *j : constant_jet(t);
}

// a + alpha·b, either side possibly constant; `out` the value.
Jet jet_add(const Jet& a, const Jet& b, const Tensor& out, const c10::Scalar& alpha) {
  bool unit = alpha.equal(1);
  Tensor Tb = b.T.defined() ? (unit ? b.T : b.T * alpha) : Tensor();
  Tensor Sb = b.S.defined() ? (unit ? b.S : b.S * alpha) : Tensor();
  auto r = out.dim();
  Tensor T = a.T.defined() && Tb.defined() ? lift(a.T, r) + lift(Tb, r)
                                           : (a.T.defined() ? a.T : Tb);
  Tensor S = plus(a.S, Sb);
  return Jet{out, expand_T(T, out.sizes()), expand_S(S, out.sizes())};
}

// a·b.
Jet jet_mul(const Jet& a, const Jet& b, const Tensor& out) {
  auto r = out.dim();
  Tensor T, S;
  if (a.T.defined()) {
    T = lift(a.T, r) * b.v;
    S = times(a.S, b.v);
  }
  if (b.T.defined()) {
    T = plus(T, a.v * lift(b.T, r));
    S = plus(S, times(a.v, b.S));
  }
  if (a.T.defined() && b.T.defined()) {
    S = plus(S, 2 * (lift(a.T, r) * lift(b.T, r)).sum(0));
  }
  return Jet{out, expand_T(T, out.sizes()), expand_S(S, out.sizes())};
}

Jet jet_scale(const Jet& a, const Tensor& out, const c10::Scalar& s) {
  return Jet{out, a.T * s, a.S.defined() ? a.S * s : Tensor()};
}

Jet jet_reciprocal(const Jet& x, const Tensor& y) {
  Tensor y2 = y * y;
  return unary(x, y, -y2, 2 * y2 * y);
}

Jet jet_rsqrt(const Jet& x, const Tensor& y) {
  Tensor y3 = y * y * y;
  return unary(x, y, -0.5 * y3, 0.75 * y3 * y * y);
}

// Mean over `dims` (keepdim), of the value and the coefficients.
Jet jet_mean(const Jet& x, at::IntArrayRef dims) {
  std::vector<int64_t> tdims;
  for (auto d : dims) {
    tdims.push_back(d < 0 ? d : d + 1);
  }
  Tensor v = x.v.mean(dims, true);
  return Jet{v, x.T.mean(tdims, true), x.S.defined() ? x.S.mean(dims, true) : Tensor()};
}

// log_softmax along `dim`, and the softmax p.
Jet jet_log_softmax(const Jet& x, const Tensor& y, int64_t dim, Tensor* p_out) {
  int64_t td = dim < 0 ? dim : dim + 1;
  Tensor p = y.exp();
  Tensor m1 = (x.T * p).sum(td, true);  // [D, ..., 1, ...] = ⟨p, T_d⟩
  Tensor T = x.T - m1;
  // Second order of logsumexp along v: ⟨p, v²⟩ − ⟨p, v⟩², summed over the directions.
  Tensor lse2 = (sumsq(x.T) * p).sum(dim, true) - sumsq(m1);
  Tensor S = -lse2;
  if (x.S.defined()) {
    S = x.S - (x.S * p).sum(dim, true) + S;
  }
  if (p_out != nullptr) {
    *p_out = p;
  }
  return Jet{y, T, expand_S(S, y.sizes())};
}

// ---------------------------------------------------------------------------------------------
// Elementwise rules: f′ and f″ from the input x and the output y.

using Derivs = std::function<std::pair<Tensor, Tensor>(const Tensor& x, const Tensor& y,
                                                       const Stack& args)>;

const std::unordered_map<std::string, Derivs>& unary_rules() {
  static const std::unordered_map<std::string, Derivs> rules = {
      {"tanh", [](const Tensor&, const Tensor& y, const Stack&) {
         Tensor d1 = 1 - y * y;
         return std::make_pair(d1, -2 * y * d1);
       }},
      {"sigmoid", [](const Tensor&, const Tensor& y, const Stack&) {
         Tensor d1 = y * (1 - y);
         return std::make_pair(d1, d1 * (1 - 2 * y));
       }},
      {"sin", [](const Tensor& x, const Tensor& y, const Stack&) {
         return std::make_pair(x.cos(), -y);
       }},
      {"cos", [](const Tensor& x, const Tensor& y, const Stack&) {
         return std::make_pair(-x.sin(), -y);
       }},
      {"exp", [](const Tensor&, const Tensor& y, const Stack&) { return std::make_pair(y, y); }},
      {"expm1", [](const Tensor&, const Tensor& y, const Stack&) {
         Tensor e = y + 1;
         return std::make_pair(e, e);
       }},
      {"log", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor d1 = x.reciprocal();
         return std::make_pair(d1, -d1 * d1);
       }},
      {"log1p", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor d1 = (x + 1).reciprocal();
         return std::make_pair(d1, -d1 * d1);
       }},
      {"sqrt", [](const Tensor&, const Tensor& y, const Stack&) {
         Tensor d1 = 0.5 / y;
         return std::make_pair(d1, -0.25 / (y * y * y));
       }},
      {"rsqrt", [](const Tensor&, const Tensor& y, const Stack&) {
         Tensor y3 = y * y * y;
         return std::make_pair(-0.5 * y3, 0.75 * y3 * y * y);
       }},
      {"reciprocal", [](const Tensor&, const Tensor& y, const Stack&) {
         Tensor y2 = y * y;
         return std::make_pair(-y2, 2 * y2 * y);
       }},
      {"sinh", [](const Tensor& x, const Tensor& y, const Stack&) {
         return std::make_pair(x.cosh(), y);
       }},
      {"cosh", [](const Tensor& x, const Tensor& y, const Stack&) {
         return std::make_pair(x.sinh(), y);
       }},
      {"tan", [](const Tensor&, const Tensor& y, const Stack&) {
         Tensor d1 = 1 + y * y;
         return std::make_pair(d1, 2 * y * d1);
       }},
      {"atan", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor d1 = (1 + x * x).reciprocal();
         return std::make_pair(d1, -2 * x * d1 * d1);
       }},
      {"asinh", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor d1 = (1 + x * x).rsqrt();
         return std::make_pair(d1, -x * d1 * d1 * d1);
       }},
      {"erf", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor d1 = 1.1283791670955126 * (-x * x).exp();
         return std::make_pair(d1, -2 * x * d1);
       }},
      {"asin", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor d1 = (1 - x * x).rsqrt();
         return std::make_pair(d1, x * d1 * d1 * d1);
       }},
      {"acos", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor r = (1 - x * x).rsqrt();
         return std::make_pair(-r, -x * r * r * r);
       }},
      {"atanh", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor d1 = (1 - x * x).reciprocal();
         return std::make_pair(d1, 2 * x * d1 * d1);
       }},
      {"acosh", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor d1 = (x * x - 1).rsqrt();
         return std::make_pair(d1, -x * d1 * d1 * d1);
       }},
      {"exp2", [](const Tensor&, const Tensor& y, const Stack&) {
         const double l = 0.6931471805599453;
         return std::make_pair(l * y, l * l * y);
       }},
      {"log2", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor r = x.reciprocal();
         return std::make_pair(r * 1.4426950408889634, -r * r * 1.4426950408889634);
       }},
      {"log10", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor r = x.reciprocal();
         return std::make_pair(r * 0.4342944819032518, -r * r * 0.4342944819032518);
       }},
      {"erfc", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor d1 = -1.1283791670955126 * (-x * x).exp();
         return std::make_pair(d1, -2 * x * d1);
       }},
      {"deg2rad", [](const Tensor& x, const Tensor&, const Stack&) {
         return std::make_pair(at::full_like(x, 0.017453292519943295), Tensor());
       }},
      {"rad2deg", [](const Tensor& x, const Tensor&, const Stack&) {
         return std::make_pair(at::full_like(x, 57.29577951308232), Tensor());
       }},
      {"elu", [](const Tensor& x, const Tensor&, const Stack& a) {
         // elu(self, alpha, scale, input_scale)
         double alpha = a[1].toScalar().toDouble(), scale = a[2].toScalar().toDouble();
         double is = a[3].toScalar().toDouble();
         Tensor neg = scale * alpha * is * (x * is).exp();
         Tensor pos = x > 0;
         return std::make_pair(at::where(pos, at::full_like(x, scale), neg),
                               at::where(pos, at::zeros_like(x), neg * is));
       }},
      {"hardswish", [](const Tensor& x, const Tensor&, const Stack&) {
         // PyTorch's backward: 0 below −3, (2x + 3)/6 up to 3, 1 above
         Tensor mid = (x >= -3) & (x <= 3);
         Tensor d1 = at::where(x < -3, at::zeros_like(x), at::where(mid, (2 * x + 3) / 6, at::ones_like(x)));
         return std::make_pair(d1, at::where(mid, at::full_like(x, 1.0 / 3), at::zeros_like(x)));
       }},
      {"hardshrink", [](const Tensor& x, const Tensor&, const Stack& a) {
         return std::make_pair((x.abs() > a[1].toScalar()).to(x.scalar_type()), Tensor());
       }},
      {"softshrink", [](const Tensor& x, const Tensor&, const Stack& a) {
         return std::make_pair((x.abs() > a[1].toScalar()).to(x.scalar_type()), Tensor());
       }},
      {"threshold", [](const Tensor& x, const Tensor&, const Stack& a) {
         return std::make_pair((x > a[1].toScalar()).to(x.scalar_type()), Tensor());
       }},
      {"relu", [](const Tensor& x, const Tensor&, const Stack&) {
         return std::make_pair((x > 0).to(x.scalar_type()), Tensor());
       }},
      {"abs", [](const Tensor& x, const Tensor&, const Stack&) {
         return std::make_pair(x.sign(), Tensor());
       }},
      {"leaky_relu", [](const Tensor& x, const Tensor&, const Stack& a) {
         double slope = a.size() > 1 ? a[1].toScalar().toDouble() : 0.01;
         // (two Scalars would make a default-dtype tensor: float32's 0.01 in a float64 rule)
         return std::make_pair(at::where(x > 0, at::ones_like(x), at::full_like(x, slope)), Tensor());
       }},
      {"silu", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor s = x.sigmoid();
         Tensor s1 = s * (1 - s);
         return std::make_pair(s + x * s1, s1 * (2 + x * (1 - 2 * s)));
       }},
      {"log_sigmoid", [](const Tensor& x, const Tensor&, const Stack&) {
         Tensor s = x.sigmoid();
         return std::make_pair(1 - s, -s * (1 - s));
       }},
      {"softplus", [](const Tensor& x, const Tensor&, const Stack& a) {
         double beta = a[1].toScalar().toDouble();
         double threshold = a[2].toScalar().toDouble();
         Tensor s = (x * beta).sigmoid();
         Tensor d2 = beta * s * (1 - s);
         Tensor linear = x * beta > threshold;
         return std::make_pair(at::where(linear, 1.0, s).to(x.scalar_type()),
                               at::where(linear, 0.0, d2).to(x.scalar_type()));
       }},
      {"gelu", [](const Tensor& x, const Tensor&, const Stack& a) {
         std::string approx = a.size() > 1 ? std::string(a[1].toStringRef()) : "none";
         if (approx == "tanh") {
           const double k = 0.7978845608028654, c = 0.044715;
           Tensor u = k * (x + c * x * x * x);
           Tensor t = u.tanh();
           Tensor sech2 = 1 - t * t;
           Tensor du = k * (1 + 3 * c * x * x);
           Tensor d1 = 0.5 * (1 + t) + 0.5 * x * sech2 * du;
           Tensor d2 = sech2 * du + 0.5 * x * (-2 * t * sech2 * du * du + sech2 * 6 * k * c * x);
           return std::make_pair(d1, d2);
         }
         Tensor phi = 0.3989422804014327 * (-0.5 * x * x).exp();
         Tensor Phi = 0.5 * (1 + (x * 0.7071067811865476).erf());
         return std::make_pair(Phi + x * phi, phi * (2 - x * x));
       }},
      {"pow", [](const Tensor& x, const Tensor&, const Stack& a) {
         // pow.Tensor_Scalar only (the dispatcher below checks the overload).
         double p = a[1].toScalar().toDouble();
         if (p == 2) {
           return std::make_pair(2 * x, at::full_like(x, 2));
         }
         if (p == 1) {
           return std::make_pair(at::ones_like(x), Tensor());
         }
         if (p == 0) {
           return std::make_pair(at::zeros_like(x), Tensor());
         }
         return std::make_pair(p * x.pow(p - 1), p * (p - 1) * x.pow(p - 2));
       }},
      {"clamp", [](const Tensor& x, const Tensor&, const Stack& a) {
         // clamp(self, Scalar? min, Scalar? max): f′ = 1 inside [min, max] (autograd's rule).
         Tensor inside = at::ones_like(x, at::kBool);
         if (!a[1].isNone()) {
           inside = inside & (x >= a[1].toScalar());
         }
         if (!a[2].isNone()) {
           inside = inside & (x <= a[2].toScalar());
         }
         return std::make_pair(inside.to(x.scalar_type()), Tensor());
       }},
      {"hardtanh", [](const Tensor& x, const Tensor&, const Stack& a) {
         Tensor inside = (x > a[1].toScalar()) & (x < a[2].toScalar());
         return std::make_pair(inside.to(x.scalar_type()), Tensor());
       }},
  };
  return rules;
}

// ---------------------------------------------------------------------------------------------
// Linear ops: T_out = op(T), S_out = op(S), with dim arguments shifted past the direction dim.

const std::unordered_set<std::string>& linear_ops() {
  static const std::unordered_set<std::string> ops = {
      "view", "_unsafe_view", "reshape", "_reshape_alias", "expand", "permute", "transpose",
      "select", "slice", "narrow", "squeeze", "unsqueeze", "sum", "mean", "neg", "clone",
      "_to_copy", "alias", "split", "split_with_sizes", "unbind", "chunk", "index_select",
      "flip", "repeat", "diagonal", "cumsum", "constant_pad_nd", "unfold", "diag_embed",
      "movedim", "tril", "triu", "masked_fill", "gather", "index", "lift_fresh", "t",
      "numpy_T", "mT", "contiguous", "positive", "conj", "resolve_conj", "resolve_neg", "_conj",
      "roll", "squeeze_copy", "unsqueeze_copy", "view_copy", "expand_copy", "permute_copy",
      "transpose_copy", "select_copy", "slice_copy", "t_copy", "alias_copy", "diagonal_copy",
  };
  return ops;
}

// The ops apply_rule handles by a rule of their own (beside unary_rules and linear_ops).
const std::unordered_set<std::string>& other_rule_ops() {
  static const std::unordered_set<std::string> ops = {
      "add", "sub", "rsub", "mul", "div", "true_divide", "where", "mm", "bmm", "matmul",
      "addmm", "linear", "_softmax", "_log_softmax", "logsumexp", "native_layer_norm", "cat",
      "stack", "copy",
  };
  return ops;
}

int64_t shift(int64_t d) {
  return d < 0 ? d : d + 1;
}

IValue shift_dims(const IValue& v) {
  if (v.isInt()) {
    return IValue(shift(v.toInt()));
  }
  if (v.isIntList()) {
    std::vector<int64_t> out;
    for (auto d : v.toIntVector()) {
      out.push_back(shift(d));
    }
    return IValue(out);
  }
  return v;
}

// The op's arguments for the coefficient tensor C ([D, …] when `first`, value-shaped if not).
Stack linear_args(const c10::FunctionSchema& schema, const Stack& args, const Tensor& self,
                  const Tensor& C, bool first) {
  Stack out(args.begin(), args.end());
  out[0] = IValue(C);
  if (!first) {
    // Only the zero fill of constant-filled positions changes for S.
    for (size_t i = 1; i < out.size(); ++i) {
      const auto& name = schema.arguments()[i].name();
      if (name == "value" && out[i].isScalar()) {
        out[i] = IValue(c10::Scalar(0.0));
      } else if (name == "value" && out[i].isTensor()) {
        out[i] = IValue(at::zeros_like(out[i].toTensor()));
      }
    }
    return out;
  }
  const std::string& op = schema.name();
  int64_t D = C.size(0);
  for (size_t i = 1; i < out.size(); ++i) {
    const auto& name = schema.arguments()[i].name();
    IValue& a = out[i];
    if (name == "dim" || name == "dim0" || name == "dim1" || name == "dim2" ||
        name == "dimension" || name == "source" || name == "destination") {
      if ((a.isNone() || (a.isIntList() && a.toIntVector().empty())) &&
          (op == "aten::sum" || op == "aten::mean")) {
        std::vector<int64_t> all;
        for (int64_t d = 1; d <= self.dim(); ++d) {
          all.push_back(d);
        }
        a = IValue(all);
      } else {
        a = shift_dims(a);
      }
    } else if (name == "dims") {
      if (op == "aten::permute" || op == "aten::permute_copy") {
        std::vector<int64_t> p{0};
        for (auto d : a.toIntVector()) {
          p.push_back(d < 0 ? d + self.dim() + 1 : d + 1);
        }
        a = IValue(p);
      } else {
        if (op == "aten::roll" && a.toIntVector().empty()) {
          fail(std::string(kNoRule) + "aten::roll without dims (it flattens the tensor)");
        }
        a = shift_dims(a);
      }
    } else if (name == "size" || name == "shape") {
      if (a.isIntList()) {
        std::vector<int64_t> s{D};
        for (auto d : a.toIntVector()) {
          s.push_back(d);
        }
        a = IValue(s);
      }
    } else if (name == "repeats") {
      std::vector<int64_t> s{1};
      for (auto d : a.toIntVector()) {
        s.push_back(d);
      }
      a = IValue(s);
    } else if (name == "value" && a.isScalar()) {
      a = IValue(c10::Scalar(0.0));
    } else if (name == "value" && a.isTensor()) {
      a = IValue(at::zeros_like(a.toTensor()));
    } else if (name == "index" && a.isTensor() && op == "aten::gather") {
      Tensor idx = a.toTensor();
      std::vector<int64_t> s{D};
      for (auto d : idx.sizes()) {
        s.push_back(d);
      }
      a = IValue(idx.unsqueeze(0).expand(s));
    } else if (name == "indices" && op == "aten::index") {
      c10::List<std::optional<Tensor>> idx;
      idx.push_back(std::nullopt);
      // (TorchScript passes Tensor?[] as a generic list)
      for (const auto& e : a.toListRef()) {
        idx.push_back(e.isNone() ? std::nullopt : std::optional<Tensor>(e.toTensor()));
      }
      a = IValue(idx);
    } else if (name == "mask" && a.isTensor()) {
      // masked_fill's mask broadcasts from the right: unchanged.
    }
  }
  return out;
}

// Calls `op` on `args` (with the key excluded) and returns its outputs.
Stack call(const c10::OperatorHandle& op, Stack args) {
  op.callBoxed(args);
  return args;
}

// The tensors in an op's outputs, in order (a Tensor or a Tensor[] each).
std::vector<Tensor> tensors_of(const Stack& outs) {
  std::vector<Tensor> ts;
  for (const auto& o : outs) {
    if (o.isTensor()) {
      ts.push_back(o.toTensor());
    } else if (o.isTensorList()) {
      for (const auto& t : o.toTensorVector()) {
        ts.push_back(t);
      }
    }
  }
  return ts;
}

// ---------------------------------------------------------------------------------------------
// The fallback

bool is_float(const Tensor& t) {
  return t.defined() && (at::isFloatingType(t.scalar_type()) || at::isComplexType(t.scalar_type()));
}

// Ops whose floating outputs carry no derivative (or do not change the value).
const std::unordered_set<std::string>& constant_ops() {
  static const std::unordered_set<std::string> ops = {
      "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
      "randint_like", "sign", "sgn", "floor", "ceil", "round", "trunc", "detach", "new_zeros",
      "new_ones", "new_empty", "new_full", "new_empty_strided", "fill", "zero", "normal",
      "bernoulli", "uniform", "exponential", "random", "floor_divide", "_local_scalar_dense",
      "detach_copy", "empty_strided", "rand", "randn", "full",
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

// The jet of a functional op's outputs; `outs` holds the op's value outputs.
// Returns false when the op has no rule.
bool apply_rule_unguarded(const c10::OperatorHandle& op, const std::string& name,
                          const Stack& args, const Stack& outs);

// apply_rule_unguarded, with a rule's own failure (not the op's: its value ran before) turned
// into a session error, so that Auto falls back to nested reverse mode.
bool apply_rule(const c10::OperatorHandle& op, const std::string& name, const Stack& args,
                const Stack& outs) {
  try {
    return apply_rule_unguarded(op, name, args, outs);
  } catch (const std::exception& e) {
    if (session != nullptr && !session->error.empty()) {
      throw;
    }
    std::string what = e.what();
    fail(std::string(kNoRule) + op.schema().name() + " (its rule failed: " +
         what.substr(0, what.find('\n')) + ")");
  }
}

bool apply_rule_unguarded(const c10::OperatorHandle& op, const std::string& name,
                          const Stack& args, const Stack& outs) {
  const auto& schema = op.schema();
  const std::string& overload = schema.overload_name();
  auto out_ts = tensors_of(outs);
  auto arg = [&](size_t i) -> Tensor {
    return i < args.size() && args[i].isTensor() ? args[i].toTensor() : Tensor();
  };
  auto jet = [&](size_t i) { return jet_or_const(arg(i)); };
  auto put = [&](const Jet& j) {
    if (j.T.defined()) {
      record(j.v, j.T, j.S);
    }
  };
  // Elementwise unary (the Tensor_Scalar overload of pow only).
  auto ur = unary_rules().find(name);
  if (ur != unary_rules().end() && (name != "pow" || overload == "Tensor_Scalar") &&
      (name != "clamp" || overload.empty())) {
    Jet x = jet(0);
    if (is_const(x)) {
      return true;
    }
    Jet fast;
    if ((name == "tanh" || name == "sigmoid") &&
        unary_inline(x, out_ts[0], name == "tanh" ? Act::Tanh : Act::Sigmoid, &fast)) {
      put(fast);
      return true;
    }
    auto d = ur->second(x.v, out_ts[0], args);
    put(unary(x, out_ts[0], d.first, d.second));
    return true;
  }
  if (name == "add" || name == "sub" || name == "rsub") {
    Jet a = jet(0);
    c10::Scalar alpha = args.size() > 2 ? args[2].toScalar() : c10::Scalar(1);
    Jet b = args[1].isTensor() ? jet(1) : constant_jet(Tensor());
    if (name == "sub") {
      alpha = -alpha.toDouble();
    }
    if (name == "rsub") {  // other − alpha·self
      put(jet_add(b, a, out_ts[0], -alpha.toDouble()));
    } else {
      put(jet_add(a, b, out_ts[0], alpha));
    }
    return true;
  }
  if (name == "mul") {
    if (!args[1].isTensor()) {
      put(jet_scale(jet(0), out_ts[0], args[1].toScalar()));
    } else {
      put(jet_mul(jet(0), jet(1), out_ts[0]));
    }
    return true;
  }
  if (name == "div" || name == "true_divide") {
    if (args.size() > 2 && !args[2].isNone()) {  // rounding_mode: piecewise constant
      return true;
    }
    Jet a = jet(0);
    if (!args[1].isTensor()) {
      put(jet_scale(a, out_ts[0], 1.0 / args[1].toScalar().toDouble()));
      return true;
    }
    Jet b = jet(1);
    if (is_const(b)) {
      auto r = out_ts[0].dim();
      put(Jet{out_ts[0], expand_T(lift(a.T, r) / b.v, out_ts[0].sizes()),
              a.S.defined() ? expand_S(a.S / b.v, out_ts[0].sizes()) : Tensor()});
      return true;
    }
    Jet rb = jet_reciprocal(b, b.v.reciprocal());
    put(jet_mul(a, rb, out_ts[0]));
    return true;
  }
  if (name == "where" && overload == "self") {
    Tensor cond = arg(0);
    Jet a = jet(1), b = jet(2);
    const Tensor& out = out_ts[0];
    auto r = out.dim();
    Tensor Ta = a.T.defined() ? expand_T(a.T, out.sizes()) : Tensor();
    Tensor Tb = b.T.defined() ? expand_T(b.T, out.sizes()) : Tensor();
    Tensor T = Ta.defined() && Tb.defined() ? at::where(cond, Ta, Tb)
               : Ta.defined()               ? at::where(cond, Ta, 0.0)
                                            : at::where(cond.logical_not(), Tb, 0.0);
    Tensor Sa = a.S.defined() ? a.S : Tensor(), Sb = b.S.defined() ? b.S : Tensor();
    Tensor S;
    if (Sa.defined() || Sb.defined()) {
      Tensor za = Sa.defined() ? Sa : at::zeros({}, out.options());
      Tensor zb = Sb.defined() ? Sb : at::zeros({}, out.options());
      S = at::where(cond, za, zb);
    }
    (void)r;
    put(Jet{out, expand_T(T, out.sizes()), expand_S(S, out.sizes())});
    return true;
  }
  if (name == "mm" || name == "bmm" || name == "matmul" || name == "addmm" || name == "linear") {
    Tensor out = out_ts[0];
    Jet a, b, bias;
    c10::Scalar alpha(1), beta(1);
    if (name == "addmm") {
      bias = jet(0);
      a = jet(1);
      b = jet(2);
      beta = args[3].toScalar();
      alpha = args[4].toScalar();
    } else if (name == "linear") {
      a = jet(0);
      b = constant_jet(arg(1).t());
      bias = args[2].isTensor() ? jet(2) : constant_jet(Tensor());
      if (tracked(arg(1))) {
        return false;  // input-dependent weights: decompose
      }
      if (arg(1).dim() != 2) {
        return false;
      }
    } else {
      a = jet(0);
      b = jet(1);
    }
    if (name == "matmul" && (b.v.dim() < 2 || a.v.dim() < 1)) {
      return false;  // matrix-vector forms: decompose
    }
    auto prod = [&](const Tensor& x, const Tensor& y) { return at::matmul(x, y); };
    Tensor T, S;
    if (a.T.defined()) {
      Tensor Ta = a.T;
      // A batch-broadcast T (the seed's identity directions): one row is enough.
      if (Ta.dim() >= 3 && Ta.stride(1) == 0 && Ta.size(1) > 1 && b.v.dim() <= 2) {
        std::vector<int64_t> full(Ta.sizes().begin(), Ta.sizes().end());
        Tensor one = prod(Ta.narrow(1, 0, 1), b.v);
        full.back() = one.size(-1);
        T = one.expand(full);
      } else {
        T = prod(Ta, b.v);
      }
      if (a.S.defined()) {
        S = prod(a.S, b.v);
      }
    }
    if (b.T.defined()) {
      T = plus(T, prod(a.v, b.T));
      if (b.S.defined()) {
        S = plus(S, prod(a.v, b.S));
      }
    }
    if (a.T.defined() && b.T.defined()) {
      S = plus(S, 2 * prod(a.T, b.T).sum(0));
    }
    if (!alpha.equal(1)) {
      T = T.defined() ? T * alpha : T;
      S = S.defined() ? S * alpha : S;
    }
    if (bias.T.defined()) {
      Tensor Tb = beta.equal(1) ? bias.T : bias.T * beta;
      T = T.defined() ? lift(T, out.dim()) + lift(Tb, out.dim()) : Tb;
      if (bias.S.defined()) {
        S = plus(S, beta.equal(1) ? bias.S : bias.S * beta);
      }
    }
    if (!T.defined()) {
      return true;
    }
    put(Jet{out, expand_T(T, out.sizes()), expand_S(S, out.sizes())});
    return true;
  }
  if (name == "_softmax" || name == "_log_softmax") {
    Jet x = jet(0);
    if (is_const(x)) {
      return true;
    }
    int64_t dim = args[1].toInt();
    if (name == "_log_softmax") {
      put(jet_log_softmax(x, out_ts[0], dim, nullptr));
    } else {
      Tensor ls = x.v.log_softmax(dim);
      Jet l = jet_log_softmax(x, ls, dim, nullptr);
      const Tensor& y = out_ts[0];
      put(Jet{y, l.T * y, y * (l.S + sumsq(l.T))});
    }
    return true;
  }
  if (name == "logsumexp") {
    Jet x = jet(0);
    if (is_const(x)) {
      return true;
    }
    auto dims = args[1].toIntVector();
    bool keepdim = args[2].toBool();
    Tensor lse = x.v.logsumexp(dims, true);
    Tensor p = (x.v - lse).exp();
    std::vector<int64_t> tdims;
    for (auto d : dims) {
      tdims.push_back(shift(d));
    }
    Tensor m1 = (x.T * p).sum(tdims, true);
    Tensor S = (sumsq(x.T) * p).sum(dims, true) - sumsq(m1);
    if (x.S.defined()) {
      S = S + (x.S * p).sum(dims, true);
    }
    Tensor T = m1;
    if (!keepdim) {
      T = T.squeeze(tdims);
      S = S.squeeze(dims);
    }
    put(Jet{out_ts[0], T, S});
    return true;
  }
  if (name == "native_layer_norm") {
    Jet x = jet(0);
    auto normalized = args[1].toIntVector();
    Jet w = args[2].isTensor() ? jet(2) : constant_jet(Tensor());
    Jet b = args[3].isTensor() ? jet(3) : constant_jet(Tensor());
    double eps = args[4].toDouble();
    std::vector<int64_t> dims;
    for (int64_t i = 0; i < static_cast<int64_t>(normalized.size()); ++i) {
      dims.push_back(-1 - i);
    }
    Jet y;
    Jet mu, r;
    if (!is_const(x)) {
      mu = jet_mean(x, dims);
      Tensor cv = x.v - mu.v;
      Jet c = jet_add(x, mu, cv, -1);
      Jet c2 = jet_mul(c, c, cv * cv);
      Jet var = jet_mean(c2, dims);
      Tensor rv = (var.v + eps).rsqrt();
      r = jet_rsqrt(var, rv);
      y = jet_mul(c, r, cv * rv);
    } else {
      y = constant_jet(out_ts[0]);
    }
    if (w.v.defined()) {
      y = jet_mul(y, w, y.v * w.v);
    }
    if (b.v.defined()) {
      y = jet_add(y, b, y.v + b.v, 1);
    }
    if (y.T.defined()) {
      put(Jet{out_ts[0], expand_T(y.T, out_ts[0].sizes()), expand_S(y.S, out_ts[0].sizes())});
    }
    if (!is_const(x)) {
      // mean and rstd: libtorch keeps the normalized dims as size 1, as keepdim does.
      put(Jet{out_ts[1], mu.T.reshape([&] {
                std::vector<int64_t> s{session->D};
                for (auto d : out_ts[1].sizes()) s.push_back(d);
                return s;
              }()),
              mu.S.defined() ? mu.S.reshape(out_ts[1].sizes()) : Tensor()});
      put(Jet{out_ts[2], r.T.reshape([&] {
                std::vector<int64_t> s{session->D};
                for (auto d : out_ts[2].sizes()) s.push_back(d);
                return s;
              }()),
              r.S.defined() ? r.S.reshape(out_ts[2].sizes()) : Tensor()});
    }
    return true;
  }
  if (name == "cat" || name == "stack") {
    auto list = args[0].toTensorVector();
    int64_t dim = args[1].toInt();
    std::vector<Tensor> Ts, Ss;
    bool any_S = false;
    for (const auto& t : list) {
      auto j = lookup(t);
      if (j && j->S.defined()) {
        any_S = true;
      }
    }
    for (const auto& t : list) {
      auto j = lookup(t);
      if (j) {
        Ts.push_back(j->T);
        Ss.push_back(j->S.defined() || !any_S ? j->S : at::zeros_like(t));
      } else {
        std::vector<int64_t> s{session->D};
        for (auto d : t.sizes()) s.push_back(d);
        Ts.push_back(at::zeros(s, t.options()));
        Ss.push_back(any_S ? at::zeros_like(t) : Tensor());
      }
    }
    Tensor T = name == "cat" ? at::cat(Ts, shift(dim)) : at::stack(Ts, shift(dim));
    Tensor S;
    if (any_S) {
      S = name == "cat" ? at::cat(Ss, dim) : at::stack(Ss, dim);
    }
    put(Jet{out_ts[0], T, S});
    return true;
  }
  if (name == "t" || name == "numpy_T" || name == "mT") {
    Jet x = jet(0);
    if (x.v.dim() < 2) {
      put(Jet{out_ts[0], x.T, x.S});
    } else {
      put(Jet{out_ts[0], x.T.transpose(-1, -2), x.S.defined() ? x.S.transpose(-1, -2) : Tensor()});
    }
    return true;
  }
  if (name == "squeeze" && overload.empty()) {
    Jet x = jet(0);
    std::vector<int64_t> dims;
    for (int64_t i = 0; i < x.v.dim(); ++i) {
      if (x.v.size(i) == 1) dims.push_back(i + 1);
    }
    std::vector<int64_t> sdims;
    for (auto d : dims) sdims.push_back(d - 1);
    put(Jet{out_ts[0], x.T.squeeze(dims), x.S.defined() ? x.S.squeeze(sdims) : Tensor()});
    return true;
  }
  if ((name == "sum" || name == "mean") && schema.arguments().size() == 2) {
    // sum(self, *, dtype) / mean(self, *, dtype): every value dim, not the direction dim.
    Jet x = jet(0);
    if (is_const(x)) {
      return true;
    }
    std::vector<int64_t> dims;
    for (int64_t d = 1; d <= x.v.dim(); ++d) dims.push_back(d);
    auto dtype = args[1].toOptional<at::ScalarType>();
    Tensor T = name == "sum" ? x.T.sum(dims, false, dtype) : x.T.mean(dims, false, dtype);
    Tensor S;
    if (x.S.defined()) S = name == "sum" ? x.S.sum(dtype) : x.S.mean(dtype);
    put(Jet{out_ts[0], T, S});
    return true;
  }
  if (name == "copy") {
    // copy(self, src): src's values, broadcast to self's shape, in self's dtype.
    Jet s = jet(1);
    const Tensor& out = out_ts[0];
    if (is_const(s)) {
      return true;
    }
    Tensor T = expand_T(s.T, out.sizes()).to(out.scalar_type());
    Tensor S = s.S.defined() ? expand_S(s.S, out.sizes()).to(out.scalar_type()) : Tensor();
    put(Jet{out, T, S});
    return true;
  }
  if (linear_ops().count(name) > 0) {
    // Linear in `self` only: any other tensor argument with a jet is not handled.
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i].isTensor() && tracked(args[i].toTensor())) {
        return false;
      }
    }
    Jet x = jet(0);
    if (is_const(x)) {
      return true;
    }
    // view-like ops run as reshape on the coefficients (they may not be contiguous).
    const c10::OperatorHandle* cop = &op;
    std::optional<c10::OperatorHandle> reshape;
    if (name == "view" || name == "_unsafe_view" || name == "view_copy" || name == "_reshape_alias") {
      reshape = c10::Dispatcher::singleton().findSchemaOrThrow("aten::reshape", "");
      cop = &*reshape;
    }
    Stack targs = linear_args(schema, args, x.v, x.T, true);
    if (name == "_reshape_alias") {
      targs.resize(2);
    }
    auto Touts = tensors_of(call(*cop, targs));
    std::vector<Tensor> Souts;
    if (x.S.defined()) {
      Stack sargs = linear_args(schema, args, x.v, x.S, false);
      if (name == "_reshape_alias") {
        sargs.resize(2);
      }
      Souts = tensors_of(call(*cop, sargs));
    }
    TORCH_CHECK(Touts.size() == out_ts.size(), "collapsed Taylor mode: internal error in ", name);
    for (size_t i = 0; i < out_ts.size(); ++i) {
      if (is_float(out_ts[i])) {
        put(Jet{out_ts[i], Touts[i], x.S.defined() ? Souts[i] : Tensor()});
      }
    }
    return true;
  }
  return false;
}

void fallback(const c10::OperatorHandle& op, c10::DispatchKeySet ks, Stack* stack) {
  if (session == nullptr) {
    // A thread that inherited the key (e.g. an autograd worker) without a session.
    c10::impl::ExcludeDispatchKeyGuard guard(kKey);
    op.callBoxed(*stack);
    return;
  }
  const auto& schema = op.schema();
  const size_t n = schema.arguments().size();
  Stack args(stack->end() - static_cast<std::ptrdiff_t>(n), stack->end());
  bool any = false;
  for (const auto& a : args) {
    if (a.isTensor()) {
      any = any || tracked(a.toTensor()) ||
            (!session->written.empty() && a.toTensor().defined() &&
             session->written.count(storage_of(a.toTensor())) > 0);
    } else if (a.isTensorList()) {
      for (const auto& t : a.toTensorVector()) any = any || tracked(t);
    } else if (a.isList()) {  // Tensor?[] (a generic list when TorchScript passes it)
      for (const auto& e : a.toListRef()) {
        any = any || (e.isTensor() && tracked(e.toTensor()));
      }
    }
  }
  std::string name = base_name(op);
  if (!any || passthrough_ops().count(name) > 0) {
    c10::impl::ExcludeDispatchKeyGuard guard(kKey);
    op.callBoxed(*stack);
    return;
  }
  for (const auto& a : args) {  // stale jets fail here, before the op runs
    if (a.isTensor()) lookup(a.toTensor());
  }
  bool inplace = !name.empty() && name.back() == '_' && name.substr(0, 2) != "__";
  std::string functional = inplace ? name.substr(0, name.size() - 1) : name;
  bool has_out = false;
  for (const auto& a : schema.arguments()) {
    has_out = has_out || a.is_out();
  }
  if (has_out) {
    fail(std::string(kNoRule) + schema.name() + "." + schema.overload_name() +
         " (an out= variant); call the functional op");
  }
  if (constant_ops().count(functional) > 0) {
    c10::impl::ExcludeDispatchKeyGuard guard(kKey);
    Tensor self = inplace ? args[0].toTensor() : Tensor();
    op.callBoxed(*stack);
    if (inplace) {
      session->table.erase(self.unsafeGetTensorImpl());
    }
    return;
  }
  if (inplace) {
    Tensor self = args[0].toTensor();
    if (self.is_view()) {
      fail(std::string("collapsed Taylor mode: ") + schema.name() +
           " writes in place into a view; write out of place instead");
    }
    auto fop = c10::Dispatcher::singleton().findOp({"aten::" + functional, schema.overload_name()});
    if (!fop) {
      fail(std::string(kNoRule) + schema.name() + " (in place, no functional form)");
    }
    Stack outs;
    {
      c10::impl::ExcludeDispatchKeyGuard guard(kKey);
      outs = call(*fop, args);
    }
    Tensor fresh = tensors_of(outs).at(0);
    bool ok;
    {
      c10::impl::ExcludeDispatchKeyGuard guard(kKey);
      ok = apply_rule(*fop, functional, args, outs);
    }
    if (!ok) {
      fail(std::string(kNoRule) + schema.name() + "." + schema.overload_name());
    }
    auto it = find_live(fresh);
    {
      c10::impl::ExcludeDispatchKeyGuard guard(kKey);
      self.copy_(fresh);
    }
    if (self.has_storage() && session->written.insert(storage_of(self)).second) {
      session->written_alive.push_back(self.storage());
    }
    if (it != session->table.end()) {
      Tensor T = it->second.T, S = it->second.S;
      session->table.erase(it);
      record(self, T, S);
    } else {
      session->table.erase(self.unsafeGetTensorImpl());
    }
    torch::jit::drop(*stack, n);
    stack->emplace_back(self);
    return;
  }
  // Functional op: a rule, or the composite decomposition, or an error.
  if (unary_rules().count(name) > 0 || linear_ops().count(name) > 0 ||
      other_rule_ops().count(name) > 0) {
    c10::impl::ExcludeDispatchKeyGuard guard(kKey);
    Stack outs = call(op, args);
    if (apply_rule(op, name, args, outs)) {
      torch::jit::drop(*stack, n);
      for (auto& o : outs) stack->push_back(std::move(o));
      return;
    }
  }
  if (op.hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd)) {
    op.callBoxedForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd, *stack);
    return;
  }
  // No rule: fine when no output is floating (comparisons, argmax, isnan, ...).
  Stack outs;
  {
    c10::impl::ExcludeDispatchKeyGuard guard(kKey);
    outs = call(op, args);
  }
  for (const auto& t : tensors_of(outs)) {
    if (is_float(t)) {
      fail(std::string(kNoRule) + schema.name() +
           (schema.overload_name().empty() ? "" : "." + schema.overload_name()));
    }
  }
  torch::jit::drop(*stack, n);
  for (auto& o : outs) stack->push_back(std::move(o));
}

void install() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Leaked on purpose: the registration lasts as long as the library object.
    auto* lib = new torch::Library(torch::Library::IMPL, "_", kKey, __FILE__, __LINE__);
    lib->fallback(torch::CppFunction::makeFromBoxedFunction<&fallback>());
  });
}

// Closes this thread's session and restores its dispatch keys.
struct Active {
  Session s;
  bool was_included = false;
};
thread_local Active* active = nullptr;

void close_session() {
  if (active != nullptr) {
    c10::impl::tls_set_dispatch_key_included(kKey, active->was_included);
    delete active;
    active = nullptr;
    session = nullptr;
  }
}

// Runs `f` (returning nullptr or a malloc'd message); any exception closes the session and
// comes back as its message — none crosses into Rust.
template <typename F>
char* guarded(const char* what, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    close_session();
    return tchj::copy_string(e.what());
  } catch (...) {
    close_session();
    return tchj::copy_string(std::string("unknown C++ exception ") + what);
  }
}

}  // namespace

extern "C" {

// Opens a session on this thread: x (the tensor the closure receives) carries the jet
// (x, directions = [D, *x.shape], 0). Returns nullptr or a malloc'd message.
char* tchj_taylor_begin(const at::Tensor* x, const at::Tensor* directions) {
  return guarded("opening a collapsed Taylor session", [&]() -> char* {
    install();
    TORCH_CHECK(active == nullptr,
                "collapsed Taylor mode is already running on this thread (nested calls are not "
                "supported)");
    TORCH_CHECK(directions->dim() == x->dim() + 1 &&
                    directions->sizes().slice(1).equals(x->sizes()),
                "directions must be [D, *x.shape]; got ", directions->sizes(), " for x ",
                x->sizes());
    active = new Active();
    session = &active->s;
    session->D = directions->size(0);
    record(*x, *directions, Tensor());
    active->was_included = c10::impl::tls_is_dispatch_key_included(kKey);
    c10::impl::tls_set_dispatch_key_included(kKey, true);
    return nullptr;
  });
}

// Closes the session. With y non-null, *first = T_y ([D, *y.shape]) and *second = S_y
// (zeros for a y that does not depend on x). Returns nullptr, or the first rule failure of the
// session (also with y null: why the closure failed), or another malloc'd message.
char* tchj_taylor_end(const at::Tensor* y, at::Tensor** first, at::Tensor** second) {
  if (active == nullptr) {
    return tchj::copy_string("no collapsed Taylor session is open on this thread");
  }
  return guarded("closing a collapsed Taylor session", [&]() -> char* {
    std::string error = session->error;
    if (!error.empty()) {
      close_session();
      return tchj::copy_string(error);
    }
    if (y != nullptr) {
      std::optional<Jet> j;
      {
        c10::impl::ExcludeDispatchKeyGuard guard(kKey);
        j = lookup(*y);
      }
      int64_t D = session->D;
      c10::impl::ExcludeDispatchKeyGuard guard(kKey);
      close_session();
      Tensor T, S;
      if (j) {
        T = j->T;
        S = j->S.defined() ? j->S : at::zeros_like(*y);
      } else {
        std::vector<int64_t> s{D};
        for (auto d : y->sizes()) s.push_back(d);
        T = at::zeros(s, y->options());
        S = at::zeros_like(*y);
      }
      *first = new at::Tensor(T);
      *second = new at::Tensor(S);
      return nullptr;
    }
    close_session();
    return nullptr;
  });
}

}  // extern "C"
