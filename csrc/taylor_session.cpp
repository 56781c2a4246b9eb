// Collapsed Taylor mode (see csrc/taylor.h for its parts and the rules' algebra): the session,
// the table of coefficients, the jet algebra the rules share, and the functions Rust calls.
//
// A session is open on one thread at a time, between tchj_taylor_begin and tchj_taylor_end; the
// dispatch key of csrc/taylor_fallback.cpp is in that thread's included set meanwhile. A second
// session on the same thread (a Laplacian inside a Laplacian's closure) is refused without
// touching the first one: the inner computation then runs by nested reverse mode, which the outer
// session follows op by op.
//
// Threads: every open session is in a process-wide registry. A thread that inherited the key
// without a session of its own (an autograd worker running a backward pass that the closure
// started on CUDA tensors, a TorchScript fork) and sees a tensor with coefficients marks the
// session that owns it failed, so the Laplacian falls back (Auto) or errs — never a value that
// silently treats that thread's work as constant.
//
// The table: jets are keyed by TensorImpl and hold their tensor weakly (an entry whose tensor
// died is stale, whatever tensor has its address now) with the version counter at registration.
// A tensor written in place by other means than a rule (its version moved on), an in-place write
// into a view of a tensor with a jet, or a read of storage that a rule wrote into through another
// alias, is an error — never a silently stale jet.
#include "taylor.h"

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/graph_task.h>

#include "strings.h"

#include <algorithm>
#include <atomic>
#include <memory>

namespace tchj::taylor {

void install_fallback();  // taylor_fallback.cpp

namespace {

// This thread's session, and the dispatch-key state to restore when it closes.
struct Active {
  Session s;
  bool was_included = false;
};
thread_local Active* active = nullptr;

// Every open session, for threads without one (see the file's header).
std::mutex registry_mutex;
std::vector<Session*> registry;
std::atomic<int> open_sessions{0};

// Whether the op being given its jets has an input on an inner derivative's path (put()).
thread_local bool call_inner = false;

GenericRule the_generic_rule = nullptr;

const c10::StorageImpl* storage_of(const Tensor& t) {
  return t.has_storage() ? t.storage().unsafeGetStorageImpl() : nullptr;
}

// Whether `a` is a data alias of `b`: the same elements of the same storage (what autograd's
// saved outputs unpack to: `tensor_data()`, a new TensorImpl sharing storage and version counter).
bool same_data(const Tensor& a, const c10::TensorImpl* b) {
  return a.has_storage() && b->has_storage() &&
         a.storage().unsafeGetStorageImpl() == b->storage().unsafeGetStorageImpl() &&
         a.storage_offset() == b->storage_offset() && a.sizes().equals(b->sizes()) &&
         a.strides().equals(b->strides()) && a.scalar_type() == b->dtype().toScalarType();
}

// The live entry of `t`, or the table's end; `s->mu` held. Inside a backward pass (this thread
// runs a graph task) a tensor autograd saved as an output comes back as a data alias of the
// tensor with the jet: it is found by its storage, and gets the same jet.
std::unordered_map<c10::TensorImpl*, Entry>::iterator find_live(Session* s, const Tensor& t,
                                                                bool alias = true) {
  auto it = s->table.find(t.unsafeGetTensorImpl());
  if (it != s->table.end() && it->second.tensor.expired()) {
    s->table.erase(it);
    it = s->table.end();
  }
  if (it != s->table.end() || !alias || !t.has_storage() ||
      torch::autograd::get_current_graph_task_id() == -1) {
    return it;
  }
  for (auto e = s->table.begin(); e != s->table.end(); ++e) {
    auto held = e->second.tensor.lock();
    if (held && same_data(t, held.get())) {
      return e;
    }
  }
  return s->table.end();
}

void close_session() {
  if (active != nullptr) {
    {
      std::lock_guard<std::mutex> lock(registry_mutex);
      registry.erase(std::remove(registry.begin(), registry.end(), &active->s), registry.end());
      open_sessions.fetch_sub(1);
    }
    c10::impl::tls_set_dispatch_key_included(kKey, active->was_included);
    delete active;
    active = nullptr;
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

Session* current() {
  return active == nullptr ? nullptr : &active->s;
}

void set_error(Session* s, const std::string& msg) {
  std::lock_guard<std::mutex> lock(s->mu);
  if (s->error.empty()) {
    s->error = msg;
  }
}

[[noreturn]] void fail(const std::string& msg) {
  if (Session* s = current()) {
    set_error(s, msg);
  }
  TORCH_CHECK(false, msg);
}

namespace {

// The live entry of `t` after lookup()'s checks (which fail), or the table's end; `lock` holds
// `s->mu`.
std::unordered_map<c10::TensorImpl*, Entry>::iterator checked_entry(
    Session* s, const Tensor& t, std::unique_lock<std::mutex>& lock) {
  auto it = find_live(s, t);
  if (it == s->table.end()) {
    if (!s->written.empty() && s->written.count(storage_of(t)) > 0) {
      lock.unlock();
      fail("collapsed Taylor mode: a tensor is read after a rule wrote into its storage through "
           "another alias (an in-place write into a view); write out of place instead");
    }
    return it;
  }
  if (t.unsafeGetTensorImpl()->version_counter().current_version() != it->second.version) {
    lock.unlock();
    fail("collapsed Taylor mode: a tensor that depends on the input was modified in place "
         "through an alias (shape " + c10::str(t.sizes()) + "); write out of place instead");
  }
  return it;
}

}  // namespace

void check_live(const Tensor& t) {
  Session* s = current();
  if (s == nullptr || !t.defined()) {
    return;
  }
  std::unique_lock<std::mutex> lock(s->mu);
  checked_entry(s, t, lock);
}

std::shared_ptr<Pending> pending_of(const Tensor& t) {
  Session* s = current();
  if (s == nullptr || !t.defined()) {
    return nullptr;
  }
  std::unique_lock<std::mutex> lock(s->mu);
  auto it = checked_entry(s, t, lock);
  return it == s->table.end() ? nullptr : it->second.pending;
}

std::optional<Jet> lookup(const Tensor& t) {
  Session* s = current();
  if (s == nullptr || !t.defined()) {
    return std::nullopt;
  }
  std::unique_lock<std::mutex> lock(s->mu);
  auto it = checked_entry(s, t, lock);
  if (it == s->table.end()) {
    return std::nullopt;
  }
  if (it->second.pending) {
    // Drop the dead tensors' coefficients first: they may be what else holds Tx.
    for (auto e = s->table.begin(); e != s->table.end();) {
      e = e != it && e->second.tensor.expired() ? s->table.erase(e) : std::next(e);
    }
    std::shared_ptr<Pending> p = std::move(it->second.pending);
    const bool exclusive = p->Tx.use_count() == 1 && p->Tx.has_storage() &&
                           p->Tx.storage().use_count() == 1;
    std::pair<Tensor, Tensor> ts;
    try {
      ts = materialize(*p, exclusive);
    } catch (...) {
      it->second.pending = std::move(p);  // never an entry without coefficients
      throw;
    }
    it->second.T = std::move(ts.first);
    it->second.S = std::move(ts.second);
  }
  return Jet{t, it->second.T, it->second.S};
}

bool tracked(const Tensor& t) {
  Session* s = current();
  if (s == nullptr || !t.defined()) {
    return false;
  }
  std::lock_guard<std::mutex> lock(s->mu);
  return find_live(s, t) != s->table.end();
}

bool inner(const Tensor& t) {
  Session* s = current();
  if (s == nullptr || !t.defined()) {
    return false;
  }
  std::lock_guard<std::mutex> lock(s->mu);
  auto it = find_live(s, t);
  return it != s->table.end() && it->second.inner;
}

void record(const Tensor& v, Tensor T, Tensor S, bool is_inner) {
  Session* s = current();
  TORCH_INTERNAL_ASSERT(s != nullptr && T.defined());
  TORCH_CHECK(T.dim() == v.dim() + 1 && T.size(0) == s->D,
              "collapsed Taylor mode: internal shape error, T ", T.sizes(), " for value ", v.sizes());
  auto version = v.unsafeGetTensorImpl()->version_counter().current_version();
  std::lock_guard<std::mutex> lock(s->mu);
  // Drop the coefficients of tensors that died since (the table stays as small as the
  // closure's live tensors).
  for (auto it = s->table.begin(); it != s->table.end();) {
    it = it->second.tensor.expired() ? s->table.erase(it) : std::next(it);
  }
  s->table.erase(v.unsafeGetTensorImpl());
  // Held strongly where a backward pass may need the jet after the closure dropped the tensor
  // (autograd keeps a saved output's data, not its TensorImpl): when the session records, and
  // on an inner derivative's path.
  Tensor keep = (s->create_graph || is_inner) ? v : Tensor();
  s->table.emplace(
      v.unsafeGetTensorImpl(),
      Entry{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(
                v.getIntrusivePtr()),
            std::move(T), std::move(S), version, is_inner, std::move(keep)});
}

void record_pending(const Tensor& v, Pending p) {
  Session* s = current();
  TORCH_INTERNAL_ASSERT(s != nullptr && p.Tx.defined());
  // record() with a placeholder T (checked there), then the pending part in its place
  record(v, p.Tx, Tensor(), call_inner);
  std::lock_guard<std::mutex> lock(s->mu);
  auto it = s->table.find(v.unsafeGetTensorImpl());
  TORCH_INTERNAL_ASSERT(it != s->table.end());
  it->second.T = Tensor();
  it->second.pending = std::make_shared<Pending>(std::move(p));
}

void forget(const Tensor& t) {
  Session* s = current();
  if (s == nullptr || !t.defined()) {
    return;
  }
  std::lock_guard<std::mutex> lock(s->mu);
  s->table.erase(t.unsafeGetTensorImpl());
}

void touch(const Tensor& t) {
  Session* s = current();
  if (s == nullptr || !t.defined()) {
    return;
  }
  std::lock_guard<std::mutex> lock(s->mu);
  auto it = find_live(s, t);
  if (it != s->table.end()) {
    it->second.version = t.unsafeGetTensorImpl()->version_counter().current_version();
  }
}

void note_written(const Tensor& t) {
  Session* s = current();
  if (s == nullptr || !t.has_storage()) {
    return;
  }
  std::lock_guard<std::mutex> lock(s->mu);
  if (s->written.insert(storage_of(t)).second) {
    s->written_alive.push_back(t.storage());
  }
}

bool written(const Tensor& t) {
  Session* s = current();
  if (s == nullptr || !t.defined()) {
    return false;
  }
  std::lock_guard<std::mutex> lock(s->mu);
  return !s->written.empty() && s->written.count(storage_of(t)) > 0;
}

bool fail_owner(const Tensor& t, const std::string& msg) {
  if (open_sessions.load() == 0 || !t.defined()) {
    return false;
  }
  bool found = false;
  std::lock_guard<std::mutex> lock(registry_mutex);
  for (Session* s : registry) {
    std::lock_guard<std::mutex> session_lock(s->mu);
    if (find_live(s, t) != s->table.end()) {
      found = true;
      if (s->error.empty()) {
        s->error = msg;
      }
    }
  }
  return found;
}

void put(const Jet& j) {
  if (j.T.defined()) {
    record(j.v, j.T, j.S, call_inner);
  }
}

void set_call_inner(bool is_inner) {
  call_inner = is_inner;
}

void set_generic_rule(GenericRule rule) {
  the_generic_rule = rule;
}

GenericRule generic_rule() {
  return the_generic_rule;
}

// ---------------------------------------------------------------------------------------------
// Jet algebra

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

Tensor sumsq(const Tensor& T) {
  return T.mul(T).sum(0);
}

int64_t shift(int64_t d) {
  return d < 0 ? d : d + 1;
}

std::vector<int64_t> shift(const std::vector<int64_t>& dims) {
  std::vector<int64_t> out;
  out.reserve(dims.size());
  for (auto d : dims) {
    out.push_back(shift(d));
  }
  return out;
}

std::vector<int64_t> with_directions(at::IntArrayRef shape) {
  Session* s = current();
  std::vector<int64_t> full{s == nullptr ? 0 : s->D};
  full.insert(full.end(), shape.begin(), shape.end());
  return full;
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

Jet jet_add(const Jet& a, const Jet& b, const Tensor& out, const c10::Scalar& alpha) {
  bool unit = alpha.equal(1);
  Tensor Tb = b.T.defined() ? (unit ? b.T : b.T * alpha) : Tensor();
  Tensor Sb = b.S.defined() ? (unit ? b.S : b.S * alpha) : Tensor();
  auto r = out.dim();
  Tensor T = a.T.defined() && Tb.defined() ? lift(a.T, r) + lift(Tb, r)
                                           : (a.T.defined() ? a.T : Tb);
  Tensor S = plus(a.S, Sb);
  return Jet{out, T.defined() ? expand_T(T, out.sizes()) : T, expand_S(S, out.sizes())};
}

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
  return Jet{out, T.defined() ? expand_T(T, out.sizes()) : T, expand_S(S, out.sizes())};
}

Jet jet_scale(const Jet& a, const Tensor& out, const c10::Scalar& s) {
  return Jet{out, a.T.defined() ? a.T * s : Tensor(), a.S.defined() ? a.S * s : Tensor()};
}

Jet jet_linear(const Jet& x, const Tensor& out,
               const std::function<Tensor(const Tensor&, bool)>& f) {
  if (is_const(x)) {
    return constant_jet(out);
  }
  return Jet{out, f(x.T, true), x.S.defined() ? f(x.S, false) : Tensor()};
}

Jet jet_mean(const Jet& x, at::IntArrayRef dims) {
  std::vector<int64_t> vd(dims.begin(), dims.end());
  Tensor v = x.v.mean(dims, true);
  if (is_const(x)) {
    return constant_jet(v);
  }
  return Jet{v, x.T.mean(shift(vd), true), x.S.defined() ? x.S.mean(dims, true) : Tensor()};
}

Jet jet_sum(const Jet& x, at::IntArrayRef dims) {
  std::vector<int64_t> vd(dims.begin(), dims.end());
  Tensor v = x.v.sum(dims, true);
  if (is_const(x)) {
    return constant_jet(v);
  }
  return Jet{v, x.T.sum(shift(vd), true), x.S.defined() ? x.S.sum(dims, true) : Tensor()};
}

Jet jet_log_softmax(const Jet& x, const Tensor& y, int64_t dim) {
  int64_t td = shift(dim);
  Tensor p = y.exp();
  Tensor m1 = (x.T * p).sum(td, true);  // [D, ..., 1, ...] = ⟨p, T_d⟩
  Tensor T = x.T - m1;
  // Second order of logsumexp along v: ⟨p, v²⟩ − ⟨p, v⟩², summed over the directions.
  Tensor lse2 = (sumsq(x.T) * p).sum(dim, true) - sumsq(m1);
  Tensor S = -lse2;
  if (x.S.defined()) {
    S = x.S - (x.S * p).sum(dim, true) + S;
  }
  return Jet{y, T, expand_S(S, y.sizes())};
}

Stack call(const c10::OperatorHandle& op, Stack args) {
  op.callBoxed(args);
  return args;
}

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

bool is_float(const Tensor& t) {
  return t.defined() && (at::isFloatingType(t.scalar_type()) || at::isComplexType(t.scalar_type()));
}

}  // namespace tchj::taylor

using namespace tchj::taylor;

extern "C" {

// Opens a session on this thread: x (the tensor the closure receives) carries the jet
// (x, directions = [D, *x.shape], 0); `create_graph` as Session::create_graph. Returns nullptr
// or a malloc'd message. A session already open on this thread is a refusal (kRefused) that
// leaves it open.
char* tchj_taylor_begin(const at::Tensor* x, const at::Tensor* directions, int create_graph) {
  if (active != nullptr) {
    return tchj::copy_string(
        std::string(kRefused) +
        "a Laplacian inside a Laplacian's closure (one session per thread; the inner one runs by "
        "nested reverse mode, which the outer session follows)");
  }
  return guarded("opening a collapsed Taylor session", [&]() -> char* {
    install_fallback();
    TORCH_CHECK(directions->dim() == x->dim() + 1 &&
                    directions->sizes().slice(1).equals(x->sizes()),
                "directions must be [D, *x.shape]; got ", directions->sizes(), " for x ",
                x->sizes());
    active = new Active();
    active->s.D = directions->size(0);
    active->s.create_graph = create_graph != 0;
    active->s.in_transform =
        c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode);
    {
      std::lock_guard<std::mutex> lock(registry_mutex);
      registry.push_back(&active->s);
      open_sessions.fetch_add(1);
    }
    record(*x, *directions, Tensor());
    active->was_included = c10::impl::tls_is_dispatch_key_included(kKey);
    c10::impl::tls_set_dispatch_key_included(kKey, true);
    return nullptr;
  });
}

// Closes the session. With y non-null, *first = T_y ([D, *y.shape]) and *second = S_y
// (zeros for a y that does not depend on x). Returns nullptr, or the session's first failure
// (also with y null: why the closure failed), or another malloc'd message.
char* tchj_taylor_end(const at::Tensor* y, at::Tensor** first, at::Tensor** second) {
  if (active == nullptr) {
    return tchj::copy_string("no collapsed Taylor session is open on this thread");
  }
  return guarded("closing a collapsed Taylor session", [&]() -> char* {
    std::string error;
    {
      std::lock_guard<std::mutex> lock(active->s.mu);
      error = active->s.error;
    }
    if (!error.empty()) {
      close_session();
      return tchj::copy_string(error);
    }
    if (y != nullptr) {
      c10::impl::ExcludeDispatchKeyGuard guard(kKey);
      std::optional<Jet> j = lookup(*y);
      int64_t D = active->s.D;
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

// For the crate's own derivatives inside a closure: 0 when no session is open on this thread,
// 1 when one is and `t` has no coefficients, 2 when `t` has, 3 when it has and is on an inner
// derivative's path; +4 when the session records (create_graph).
int tchj_taylor_state(const at::Tensor* t) {
  Session* s = current();
  if (s == nullptr) {
    return 0;
  }
  try {
    int state = 1;
    if (t != nullptr && tracked(*t)) {
      state = inner(*t) ? 3 : 2;
    }
    return state + (s->create_graph ? 4 : 0);
  } catch (...) {
    return 1;
  }
}

// `to` (a fresh leaf the crate made from `from` for a derivative inside the closure) takes
// `from`'s coefficients, on an inner derivative's path. Returns nullptr or a malloc'd message
// (the session is then failed).
char* tchj_taylor_relay(const at::Tensor* from, const at::Tensor* to) {
  if (current() == nullptr) {
    return nullptr;
  }
  try {
    c10::impl::ExcludeDispatchKeyGuard guard(kKey);
    auto j = lookup(*from);
    if (j) {
      record(*to, j->T, j->S, true);
    }
    return nullptr;
  } catch (const std::exception& e) {
    return tchj::copy_string(e.what());
  }
}

// Fails this thread's session (if any) with `msg` (kRefused is prepended).
void tchj_taylor_refuse(const char* msg) {
  if (Session* s = current()) {
    set_error(s, std::string(kRefused) + msg);
  }
}

}  // extern "C"
