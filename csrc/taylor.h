// Collapsed Taylor mode: Σ_d v_dᵀ ∇²u v_d (the Laplacian for v_d = e_d) in one forward pass.
// What its parts share; each part is one file:
//
//   taylor_session.cpp      the session (one per thread), the table of coefficients, the jet
//                           algebra the rules share, and the extern "C" functions Rust calls
//   taylor_fallback.cpp     the dispatcher fallback that sees every aten op of the closure and
//                           picks a rule, a decomposition, or an error
//   taylor_elementwise.cpp  elementwise ops from f′ and f″ (and the fused CPU kernel)
//   taylor_shape.cpp        ops linear in one input: views, reductions, indexing, padding, …
//   taylor_products.cpp     add/sub/mul/div/where, matrix products, convolutions, binary ops
//   taylor_nn.cpp           softmax, logsumexp, layer/batch/group norms, prod, std/var, norms
//   taylor_generic.cpp      (engine) any other op with a forward-mode derivative, by
//                           vmap(jvp∘jvp) at functorch's levels
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
// Needs only libtorch's headers (the core), except taylor_generic.cpp (the engine: functorch).
// Contract with Rust (src/native/taylor.rs): no C++ exception crosses the boundary.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace tchj::taylor {

using at::Tensor;
using c10::IValue;
using torch::jit::Stack;

// The dispatch key the fallback sits on (the only one libtorch leaves to an out-of-tree mode in
// C++; see taylor_fallback.cpp).
constexpr auto kKey = c10::DispatchKey::TESTING_ONLY_GenericMode;
// The start of the message for an op without a rule (Rust's Error::NoTaylorRule names the op).
inline constexpr const char* kNoRule = "tch-jacobian: collapsed Taylor mode has no rule for ";
// The start of the message for a closure the mode refuses to follow (not a missing rule: a
// nested session, another thread, a derivative of an unrecorded tensor, …).
inline constexpr const char* kRefused = "tch-jacobian: collapsed Taylor mode cannot follow ";

struct Jet {
  Tensor v;  // the value (the closure's tensor)
  Tensor T;  // [D, *v.shape], never undefined for a tracked tensor
  Tensor S;  // v.shape, or undefined for zero
};

// The jet of tanh(x) or sigmoid(x) computed when it is first looked up rather than by the rule
// (taylor_elementwise.cpp), when nothing records: by then the closure has usually dropped x, and
// the kernel writes T_y over T_x instead of a fresh [D, …] buffer (one buffer less at the peak,
// and no read-for-ownership of new memory); a y that is never looked up costs nothing more.
struct Pending {
  Tensor Tx;      // x's first-order coefficients (never written by a rule: see record())
  Tensor Sx;      // x's second-order ones, contiguous, or undefined for zero
  Tensor d1, d2;  // f′(x) and f″(x), value-shaped and contiguous
};

// (T, S) of a pending jet. `exclusive`: nothing else holds Tx or its storage, so the kernel may
// write T over it. Runs with the key excluded and grad mode off.
std::pair<Tensor, Tensor> materialize(const Pending& p, bool exclusive);

// (T, S) of y·w for a pending y = f(x) of shape [B, H] and a constant column w [H, 1], from x's
// coefficients in one read, without forming T_y (a network's output layer):
//   T[d, b] = Σ_h T_x[d, b, h]·f′[b, h]·w[h]     S[b] = Σ_h w[h]·(f′·S_x + f″·Σ_d T_x[d]²)[b, h]
// nullopt when the shapes or the layout do not allow it.
std::optional<std::pair<Tensor, Tensor>> pending_times_column(const Pending& p, const Tensor& y,
                                                              const Tensor& w);

// A tensor's coefficients. The table holds its tensor weakly, so that the coefficients of the
// closure's dead intermediates are freed as it runs (as their values are): an entry whose
// tensor died is stale, whatever tensor now has its address, and is dropped.
struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> tensor;
  Tensor T;
  Tensor S;
  uint32_t version;
  // On the path of a derivative taken inside the closure (a leaf the crate prepared for an inner
  // derivative, and what is computed from it): its value op keeps its autograd graph even when
  // the session does not record (create_graph off), so that the inner backward pass can run.
  bool inner;
  // The tensor itself, held when a backward pass may need its jet after the closure dropped it
  // (see record()); undefined otherwise.
  Tensor keep;
  // Set while T and S are still to be computed (T is then undefined); lookup() computes them.
  std::shared_ptr<Pending> pending;
};

struct Session {
  int64_t D = 0;
  // Whether the coefficients are recorded by autograd (create_graph): otherwise the rules, and
  // the value ops of the closure's main path, run with grad mode off.
  bool create_graph = false;
  // Whether the session opened inside one of functorch's transforms (vmap(grad) of a loss that
  // computes a Laplacian): its tensors are then functorch's wrapped ones, and ops on them are
  // followed as any other.
  bool in_transform = false;
  // Guards `table` and `error`: a thread without a session that inherited the dispatch key (an
  // autograd worker, a TorchScript fork) looks tensors up in every open session.
  std::mutex mu;
  std::unordered_map<c10::TensorImpl*, Entry> table;
  std::unordered_set<const c10::StorageImpl*> written;  // storages written in place by rules
  std::vector<c10::Storage> written_alive;              // (kept alive: no address reuse)
  std::string error;                                    // the first failure
};

// This thread's open session, or nullptr.
Session* current();

// Records the session's first failure (keeps an earlier one) and throws `msg`.
[[noreturn]] void fail(const std::string& msg);

// Records a failure of `s` without throwing (another thread's, or a refusal from Rust).
void set_error(Session* s, const std::string& msg);

// The jet of `t` in this thread's session, or nullopt for a constant (no dependence on the
// input). A tensor modified in place behind the session's back is an error.
std::optional<Jet> lookup(const Tensor& t);
// The checks of lookup() (a stale or aliased write fails) without computing a pending jet.
void check_live(const Tensor& t);
// `t`'s pending jet (see Pending), or nullptr when it has none (or computed coefficients).
std::shared_ptr<Pending> pending_of(const Tensor& t);
bool tracked(const Tensor& t);
// Whether `t` is on an inner derivative's path (see Entry::inner).
bool inner(const Tensor& t);
// Gives `v` the coefficients (T, S); `inner` as Entry::inner.
void record(const Tensor& v, Tensor T, Tensor S, bool inner = false);
// Gives `v` coefficients computed at its first lookup (see Pending), on the current call's inner
// path as put().
void record_pending(const Tensor& v, Pending p);
// Drops `t`'s coefficients (it is now a constant).
void forget(const Tensor& t);
// Marks `t`'s current version as the one its coefficients describe.
void touch(const Tensor& t);
// Remembers that a rule wrote into `t`'s storage in place (reads through another alias fail).
void note_written(const Tensor& t);
bool written(const Tensor& t);

// Whether any open session (on any thread) tracks `t`; marks those sessions failed with `msg`.
// For threads without a session.
bool fail_owner(const Tensor& t, const std::string& msg);

// ---------------------------------------------------------------------------------------------
// Jet algebra (every op in it runs with the key excluded); taylor_session.cpp.

// T with singleton dims inserted after the direction dim so that it has rank 1 + `rank`.
Tensor lift(const Tensor& T, int64_t rank);
// `T` (lifted) broadcast to [D, *shape].
Tensor expand_T(const Tensor& T, at::IntArrayRef shape);
Tensor expand_S(const Tensor& S, at::IntArrayRef shape);
// a + b and a·b with undefined meaning zero.
Tensor plus(const Tensor& a, const Tensor& b);
Tensor times(const Tensor& a, const Tensor& b);
// Σ_d T[d]², value-shaped.
Tensor sumsq(const Tensor& T);
// A value dim as a dim of T (past the direction dim).
int64_t shift(int64_t d);
std::vector<int64_t> shift(const std::vector<int64_t>& dims);
// [D, *shape].
std::vector<int64_t> with_directions(at::IntArrayRef shape);

Jet constant_jet(const Tensor& v);
bool is_const(const Jet& j);
Jet jet_or_const(const Tensor& t);
// a + alpha·b, either side possibly constant; `out` the value.
Jet jet_add(const Jet& a, const Jet& b, const Tensor& out, const c10::Scalar& alpha);
// a·b.
Jet jet_mul(const Jet& a, const Jet& b, const Tensor& out);
Jet jet_scale(const Jet& a, const Tensor& out, const c10::Scalar& s);
// The jet of `out`, computed from `x` by a map linear in x: T and S through `f`.
Jet jet_linear(const Jet& x, const Tensor& out, const std::function<Tensor(const Tensor&, bool)>& f);
// Mean over `dims` (keepdim), of the value and the coefficients.
Jet jet_mean(const Jet& x, at::IntArrayRef dims);
// Sum over `dims` (keepdim).
Jet jet_sum(const Jet& x, at::IntArrayRef dims);
// log_softmax along `dim`.
Jet jet_log_softmax(const Jet& x, const Tensor& y, int64_t dim);

// y = f(x) elementwise from f′(x) and f″(x) (d2 undefined: f″ = 0); taylor_elementwise.cpp.
Jet unary(const Jet& x, const Tensor& y, const Tensor& d1, const Tensor& d2);
Jet jet_reciprocal(const Jet& x, const Tensor& y);
Jet jet_rsqrt(const Jet& x, const Tensor& y);
Jet jet_sqrt(const Jet& x, const Tensor& y);
Jet jet_exp(const Jet& x, const Tensor& y);
Jet jet_log(const Jet& x, const Tensor& y);
// z = f(a, b) elementwise from the partials f_a, f_b, f_aa, f_ab, f_bb (undefined: zero).
Jet binary(const Jet& a, const Jet& b, const Tensor& out, const Tensor& fa, const Tensor& fb,
           const Tensor& faa, const Tensor& fab, const Tensor& fbb);

// ---------------------------------------------------------------------------------------------
// Rule families. Each takes the op's call (its value already computed) and returns true when it
// gave the outputs their jets (or found them constant), false when it has no rule for this call.

struct Call {
  const c10::OperatorHandle& op;
  const std::string& name;      // "tanh" for aten::tanh.default
  const std::string& overload;  // "" for the default overload
  const Stack& args;
  const Stack& outs;
  std::vector<Tensor> out_ts;   // the tensors among `outs`, in order

  Tensor arg(size_t i) const {
    return i < args.size() && args[i].isTensor() ? args[i].toTensor() : Tensor();
  }
  Jet jet(size_t i) const {
    return jet_or_const(arg(i));
  }
  bool arg_tracked(size_t i) const {
    return i < args.size() && args[i].isTensor() && tracked(args[i].toTensor());
  }
};

// Gives `j.v` its jet (nothing for a constant jet). Outputs of a call with an input on an inner
// derivative's path are on that path too.
void put(const Jet& j);
// Set by the fallback around a call's rule: whether an input is on an inner derivative's path.
void set_call_inner(bool is_inner);

bool elementwise_rule(const Call& c);  // taylor_elementwise.cpp
bool shape_rule(const Call& c);        // taylor_shape.cpp
bool product_rule(const Call& c);      // taylor_products.cpp
bool nn_rule(const Call& c);           // taylor_nn.cpp

// The op names each family has a rule for (some only for some overloads or arguments: the rule
// then returns false and the fallback decomposes the op or takes the generic rule).
const std::unordered_set<std::string>& elementwise_ops();
const std::unordered_set<std::string>& shape_ops();
const std::unordered_set<std::string>& product_ops();
const std::unordered_set<std::string>& nn_ops();

// Calls `op` on `args` (with whatever keys the caller excluded) and returns its outputs.
Stack call(const c10::OperatorHandle& op, Stack args);
// The tensors in an op's outputs, in order (a Tensor or a Tensor[] each).
std::vector<Tensor> tensors_of(const Stack& outs);
bool is_float(const Tensor& t);

// The generic rule (taylor_generic.cpp, with the engine): the jets of a functional op's floating
// outputs by vmap(jvp∘jvp); false when it cannot (no forward-mode derivative, a random op).
// Installed by tchj_taylor_install_generic; nullptr without the engine.
using GenericRule = bool (*)(const c10::OperatorHandle& op, const Stack& args, const Stack& outs,
                             std::string* why);
void set_generic_rule(GenericRule rule);
GenericRule generic_rule();

}  // namespace tchj::taylor
