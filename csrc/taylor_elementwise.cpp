// Collapsed Taylor mode (see csrc/taylor.h): elementwise ops y = f(x), from f′ and f″.
//
//   T_y = f′(x)·T_x          S_y = f′(x)·S_x + f″(x)·Σ_d T_x[d]²
//
// The rule is fused into one pass over T on the CPU (float/double): T_out = d1·T and
// S_out = d1·S + d2·Σ_d T², reading T once instead of three times. T is viewed as [D, B, R]
// with R contiguous and B of stride R or 0 (the batch-broadcast directions of the seed and the
// first linear layer, never materialized). Its backward is fused the same way when nothing
// records it, and is the composite formula (right at every order) when it is recorded. With
// nothing recording, tanh's and sigmoid's jets are computed at their first lookup, over the
// input's coefficients when nothing else holds them (Pending in taylor.h). Tensors
// without storage (functorch's batched tensors, when a batched backward pass or vmap runs over a
// closure that computed a Laplacian) and CUDA tensors take the composite formula throughout.
#include "taylor.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

namespace tchj::taylor {

namespace {

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

// A plain CPU tensor the kernels may read: with storage, not wrapped by functorch, and no
// functorch transform active on this thread (under one, custom autograd functions are refused).
bool plain_cpu(const Tensor& t) {
  if (!t.defined()) {
    return true;
  }
  auto ks = t.key_set();
  return t.device().is_cpu() && t.has_storage() && !ks.has(c10::DispatchKey::FuncTorchBatched) &&
         !ks.has(c10::DispatchKey::FuncTorchGradWrapper) &&
         !c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode);
}

bool fusable(const Tensor& T, const Tensor& d1) {
  auto st = T.scalar_type();
  return plain_cpu(T) && plain_cpu(d1) && (st == at::kFloat || st == at::kDouble) &&
         d1.scalar_type() == st && T.dim() >= 1;
}

// Value-shaped operands as contiguous [B·R].
Tensor flat(const Tensor& t, at::IntArrayRef vshape) {
  return t.expand(vshape).contiguous();
}

// T as [D, B, R] for values of shape `vshape`: T itself ([D, *vshape]), or T holding one sample
// ([D, 1, …], from unexpanded()) read alike for each of the vshape[0] samples (batch stride 0).
std::optional<Layout> layout_for(const Tensor& T, at::IntArrayRef vshape) {
  auto L = layout_of(T);
  if (!L || T.dim() != static_cast<int64_t>(vshape.size()) + 1) return std::nullopt;
  for (int64_t i = 2; i < T.dim(); ++i) {
    if (T.size(i) != vshape[i - 1]) return std::nullopt;
  }
  if (T.dim() >= 2 && T.size(1) != vshape[0]) {
    if (T.dim() < 3 || T.size(1) != 1) return std::nullopt;
    L->B = vshape[0];
    L->sb = 0;
  }
  return L;
}

// A batch-broadcast T ([D, B, …], B > 1 of stride 0: the first layer's coefficients of the
// seed's directions, one sample expanded) as the view [D, 1, …] of the tensor it expands. The
// kernels read it for every sample alike, and the fused backward then writes Σ_b ∂/∂T, [D, 1, …],
// itself, instead of the [D, B, …] gradient that expand's backward reads again to sum. The
// gradient reaching that tensor is the same sum either way. Undefined when T is not such a view.
Tensor unexpanded(const Tensor& T) {
  if (T.dim() < 3 || T.size(1) <= 1 || T.stride(1) != 0 || !T.is_view()) return Tensor();
  const Tensor base(T._base());
  if (!base.defined() || !base.is_contiguous() || base.storage_offset() != T.storage_offset() ||
      base.numel() * T.size(1) != T.numel()) {
    return Tensor();
  }
  std::vector<int64_t> shape(T.sizes().begin(), T.sizes().end());
  shape[1] = 1;
  Tensor one = base.view(shape);
  for (int64_t i = 0; i < T.dim(); ++i) {
    if (i != 1 && T.size(i) != 1 && T.stride(i) != one.stride(i)) return Tensor();
  }
  return one;
}

// Activations whose f′ and f″ unary_inline derives from the output y itself.
enum class Act { Tanh, Sigmoid };

// The kernels walk each thread's range of the B·R values in blocks of kBlock: a block's
// value-shaped factors and accumulators stay in L1 while the loop over the D directions streams
// through T (each direction's part of the block is contiguous but for the batch stride of a
// broadcast T). Each value is computed by one thread, in the same order whatever the threads.
constexpr int64_t kBlock = 1024;

// Calls f(t, k0, k1) for the runs [c + k0, c + k1) of the block [c, c + n) that share one batch
// index; t[k] is T[d] at flat index c + k (the batch stride may be 0: a broadcast T).
template <typename scalar_t, typename F>
inline void runs(const scalar_t* T, const Layout& L, int64_t d, int64_t c, int64_t n, F&& f) {
  int64_t i = c;
  while (i < c + n) {
    const int64_t b = i / L.R;
    const int64_t stop = std::min(c + n, (b + 1) * L.R);
    // T[d, b, r] for the flat index i = b·R + r, at block offset k = i − c
    f(T + d * L.sd + b * L.sb + (c - b * L.R), i - c, stop - c);
    i = stop;
  }
}

// T_out = d1·T and S_out = d1·S + d2·Σ_d T² (q = Σ_d T² too, unless null). `To` may be T itself
// (materialize() in place): each value is read before it is written, by the same thread.
template <typename scalar_t>
void unary_forward_kernel(const scalar_t* T, Layout L, const scalar_t* d1, const scalar_t* d2,
                          const scalar_t* S, scalar_t* To, scalar_t* So, scalar_t* q) {
  const int64_t B = L.B, R = L.R, D = L.D;
  at::parallel_for(0, B * R, 4096, [&](int64_t begin, int64_t end) {
    alignas(64) scalar_t a[kBlock], qq[kBlock];
    for (int64_t c = begin; c < end; c += kBlock) {
      const int64_t n = std::min(end - c, kBlock);
      for (int64_t j = 0; j < n; ++j) {
        a[j] = d1[c + j];
        qq[j] = 0;
      }
      for (int64_t d = 0; d < D; ++d) {
        scalar_t* to = To + d * B * R + c;
        runs(T, L, d, c, n, [&](const scalar_t* t, int64_t k0, int64_t k1) {
          for (int64_t k = k0; k < k1; ++k) {
            scalar_t v = t[k];
            to[k] = v * a[k];
            qq[k] += v * v;
          }
        });
      }
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = c + j;
        if (q != nullptr) q[i] = qq[j];
        So[i] = d2[i] * qq[j] + (S != nullptr ? d1[i] * S[i] : scalar_t(0));
      }
    }
  });
}

// gT = d1·gTo + 2·d2·gSo·T and gd1 = Σ_d gTo·T (+ S·gSo). `gT` may be gTo itself (the incoming
// gradient, when nothing else holds it): each value is read before it is written, by the same
// thread.
template <typename scalar_t>
void unary_backward_kernel(const scalar_t* T, Layout L, const scalar_t* gTo, const scalar_t* d1,
                           const scalar_t* d2, const scalar_t* gSo, const scalar_t* S,
                           scalar_t* gT, scalar_t* gd1) {
  const int64_t B = L.B, R = L.R, D = L.D;
  at::parallel_for(0, B * R, 4096, [&](int64_t begin, int64_t end) {
    alignas(64) scalar_t a[kBlock], c2[kBlock], acc[kBlock];
    for (int64_t c = begin; c < end; c += kBlock) {
      const int64_t n = std::min(end - c, kBlock);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = c + j;
        a[j] = d1[i];
        c2[j] = 2 * d2[i] * gSo[i];
        acc[j] = S != nullptr ? S[i] * gSo[i] : scalar_t(0);
      }
      for (int64_t d = 0; d < D; ++d) {
        // g and out may be one buffer (not __restrict__): GCC vectorizes the loop behind a
        // run-time overlap check either way (a standalone copy: 0.41 ms in place, 0.60 ms not,
        // the same as with separate __restrict__ loops)
        const scalar_t* g = gTo + d * B * R + c;
        scalar_t* out = gT + d * B * R + c;
        runs(T, L, d, c, n, [&](const scalar_t* __restrict__ t, int64_t k0, int64_t k1) {
          for (int64_t k = k0; k < k1; ++k) {
            scalar_t v = t[k], gk = g[k];
            out[k] = a[k] * gk + c2[k] * v;
            acc[k] += gk * v;
          }
        });
      }
      for (int64_t j = 0; j < n; ++j) gd1[c + j] = acc[j];
    }
  });
}

// unary_backward_kernel for T holding one sample for the batch (T [D, 1, …], L.sb = 0, B > 1):
// T's gradient summed over the batch, [D, R],
//   gT[d, r] = Σ_b d1[b, r]·gTo[d, b, r] + T[d, r]·Σ_b 2·d2[b, r]·gSo[b, r]
// and gd1[b, r] = Σ_d gTo[d, b, r]·T[d, r] (+ S·gSo), reading gTo once, as it lies. The batch is
// cut into fixed groups of kGroup samples; each group's partial sums [D, R] are then added in
// group order. Every value is summed by one thread in one order, whatever the threads.
constexpr int64_t kGroup = 16;

template <typename scalar_t>
void unary_backward_broadcast_kernel(const scalar_t* T, Layout L, const scalar_t* gTo,
                                     const scalar_t* d1, const scalar_t* d2, const scalar_t* gSo,
                                     const scalar_t* S, scalar_t* part, scalar_t* gT,
                                     scalar_t* gd1) {
  const int64_t B = L.B, R = L.R, D = L.D;
  const int64_t groups = (B + kGroup - 1) / kGroup;
  // part[k, d, r] = Σ_{b in group k} d1[b, r]·gTo[d, b, r]; gd1 of the group's samples
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b0 = k * kGroup, b1 = std::min(B, b0 + kGroup);
      for (int64_t i = b0 * R; i < b1 * R; ++i) gd1[i] = S != nullptr ? S[i] * gSo[i] : scalar_t(0);
      for (int64_t d = 0; d < D; ++d) {
        const scalar_t* __restrict__ t = T + d * L.sd;
        scalar_t* __restrict__ acc = part + (k * D + d) * R;
        for (int64_t r = 0; r < R; ++r) acc[r] = 0;
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* __restrict__ g = gTo + (d * B + b) * R;
          const scalar_t* __restrict__ a = d1 + b * R;
          scalar_t* __restrict__ o = gd1 + b * R;
          for (int64_t r = 0; r < R; ++r) {
            const scalar_t gv = g[r];
            acc[r] += a[r] * gv;
            o[r] += gv * t[r];
          }
        }
      }
    }
  });
  // gT[d, r] = Σ_k part[k, d, r] + T[d, r]·Σ_b 2·d2·gSo
  constexpr int64_t kCols = 64;
  at::parallel_for(0, R, kCols, [&](int64_t begin, int64_t end) {
    alignas(64) scalar_t c2[kCols], sum[kCols];
    for (int64_t r0 = begin; r0 < end; r0 += kCols) {
      const int64_t n = std::min(end - r0, kCols);
      for (int64_t j = 0; j < n; ++j) c2[j] = 0;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < n; ++j) c2[j] += 2 * d2[b * R + r0 + j] * gSo[b * R + r0 + j];
      }
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t j = 0; j < n; ++j) sum[j] = 0;
        for (int64_t k = 0; k < groups; ++k) {
          const scalar_t* p = part + (k * D + d) * R + r0;
          for (int64_t j = 0; j < n; ++j) sum[j] += p[j];
        }
        for (int64_t j = 0; j < n; ++j) gT[d * R + r0 + j] = sum[j] + T[d * L.sd + r0 + j] * c2[j];
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
    // T is [D, *value shape] or, batch-broadcast, [D, 1, …] (unexpanded()); d1 is value-shaped.
    Tensor S = has_S ? S_or_placeholder : Tensor();
    auto vshape = d1.sizes();
    auto L = *layout_for(T, vshape);
    Tensor f1 = flat(d1, vshape), f2 = flat(d2, vshape);
    Tensor fS = S.defined() ? flat(S, vshape) : Tensor();
    Tensor To = at::empty(with_directions(vshape), T.options());
    Tensor So = at::empty(vshape, T.options());
    Tensor q = at::empty(vshape, T.options());
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

  // `grads` by reference: libtorch's CppNode passes its own list (custom_function.h,
  // CppNode_apply_functional), which nothing reads after this call; moving the incoming gradient
  // out of it leaves this function the only holder when nothing else holds it (see `reuse`). A
  // libtorch that passed a temporary would fail to compile here rather than share a gradient.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list& grads) {
    auto saved = ctx->get_saved_variables();
    Tensor T = saved[0], S = saved[1], d1 = saved[2], d2 = saved[3];
    Tensor gTo = std::move(grads[0]), gSo = std::move(grads[1]);
    auto value_shape = d1.sizes();
    auto reduce = [&](const Tensor& g, const Tensor& like) {
      // a value-shaped gradient summed to the shape of a broadcast operand
      return like.sizes().equals(g.sizes()) ? g : g.sum_to_size(like.sizes());
    };
    if (!gSo.defined()) {
      gSo = at::zeros(value_shape, T.options());
    }
    if (!gTo.defined()) {
      gTo = at::zeros(with_directions(value_shape), T.options());
    }
    Tensor gT, gS, gd1, gd2;
    const auto L = layout_for(T, value_shape);
    const bool fused = !at::GradMode::is_enabled() && fusable(T, d1) && plain_cpu(gTo) &&
                       plain_cpu(gSo) && plain_cpu(d2) && plain_cpu(S) && L;
    if (!fused) {
      // Recorded (a create_graph backward), or tensors the kernel cannot read (a batched backward
      // pass over the closure): the composite formula, right at every order.
      Tensor g2 = d2 * gSo;
      gT = reduce(gTo * d1 + 2 * T * g2, T);
      gd1 = (gTo * T).sum(0);
      if (S.defined()) {
        gd1 = gd1 + S * gSo;
      }
      gd2 = gSo * T.mul(T).sum(0);
    } else {
      Tensor f1 = flat(d1, value_shape), f2 = flat(d2, value_shape);
      Tensor fg = flat(gSo, value_shape);
      Tensor fS = S.defined() ? flat(S, value_shape) : Tensor();
      // T holds one sample for the whole batch ([D, 1, …], unexpanded()): its gradient is the
      // sum over the batch, in that shape
      const bool one_sample = T.dim() >= 3 && T.size(1) == 1 && L->B > 1;
      // The incoming gradient, when nothing else holds it or its storage (moved out of `grads`),
      // becomes T's: written in place, as autograd's own accumulation (InputBuffer) does with
      // such a gradient. That saves a [D, …] buffer and the read for ownership of fresh memory
      // (the d = 32 PINN's loss + backward: 1.71 → 1.65 of its GEMMs, medians of five A/B pairs).
      const bool reuse = !one_sample && gTo.use_count() == 1 && gTo.is_contiguous() &&
                         gTo.sizes().equals(T.sizes()) && gTo.storage_offset() == 0 &&
                         gTo.storage().use_count() == 1 &&
                         gTo.storage().nbytes() == static_cast<size_t>(gTo.nbytes());
      Tensor g = gTo.contiguous();
      gT = reuse ? g
                 : at::empty(T.sizes(), T.options().memory_format(at::MemoryFormat::Contiguous));
      gd1 = at::empty(value_shape, T.options());
      AT_DISPATCH_FLOATING_TYPES(T.scalar_type(), "taylor_unary_backward", [&] {
        const scalar_t* fSp = fS.defined() ? fS.const_data_ptr<scalar_t>() : nullptr;
        if (one_sample) {
          Tensor part = at::empty({(L->B + kGroup - 1) / kGroup, L->D, L->R}, T.options());
          unary_backward_broadcast_kernel<scalar_t>(
              T.const_data_ptr<scalar_t>(), *L, g.const_data_ptr<scalar_t>(),
              f1.const_data_ptr<scalar_t>(), f2.const_data_ptr<scalar_t>(),
              fg.const_data_ptr<scalar_t>(), fSp, part.data_ptr<scalar_t>(),
              gT.data_ptr<scalar_t>(), gd1.data_ptr<scalar_t>());
        } else {
          unary_backward_kernel<scalar_t>(
              T.const_data_ptr<scalar_t>(), *L, g.const_data_ptr<scalar_t>(),
              f1.const_data_ptr<scalar_t>(), f2.const_data_ptr<scalar_t>(),
              fg.const_data_ptr<scalar_t>(), fSp, gT.data_ptr<scalar_t>(),
              gd1.data_ptr<scalar_t>());
        }
      });
      gd2 = gSo * ctx->saved_data["q"].toTensor();
    }
    if (S.defined()) {
      gS = reduce(d1 * gSo, S);
    }
    return {gT, gS, reduce(gd1, d1), reduce(gd2, d2), Tensor()};
  }
};

// tanh or sigmoid with nothing recording: f′ and f″ from y now (value-shaped), the jet itself
// at y's first lookup (Pending, materialize()). False when the layout does not allow it.
bool unary_inline(const Jet& x, const Tensor& y, Act act) {
  if (at::GradMode::is_enabled() || !fusable(x.T, y) || !plain_cpu(x.S) || !layout_of(x.T) ||
      !y.sizes().equals(x.T.sizes().slice(1)) || !y.is_contiguous() ||
      (x.S.defined() && !x.S.sizes().equals(y.sizes()))) {
    return false;
  }
  Tensor d1 = at::empty(y.sizes(), y.options()), d2 = at::empty(y.sizes(), y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "taylor_unary_derivatives", [&] {
    const scalar_t* v = y.const_data_ptr<scalar_t>();
    scalar_t* f1 = d1.data_ptr<scalar_t>();
    scalar_t* f2 = d2.data_ptr<scalar_t>();
    at::parallel_for(0, y.numel(), 16384, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        scalar_t w = v[i];
        scalar_t a = act == Act::Tanh ? 1 - w * w : w * (1 - w);
        f1[i] = a;
        f2[i] = act == Act::Tanh ? -2 * w * a : a * (1 - 2 * w);
      }
    });
  });
  record_pending(y, Pending{x.T, x.S.defined() ? x.S.contiguous() : Tensor(), d1, d2});
  return true;
}

}  // namespace

std::pair<Tensor, Tensor> materialize(const Pending& p, bool exclusive) {
  c10::impl::ExcludeDispatchKeyGuard guard(kKey);
  c10::AutoGradMode no_grad(false);
  const Tensor& Tx = p.Tx;
  auto L = *layout_of(Tx);
  // In place only over a plain [D, B, R] buffer (not the batch-broadcast T of a first layer).
  const bool in_place = exclusive && Tx.is_contiguous() && (L.B == 1 || L.sb == L.R) &&
                        Tx.storage_offset() == 0 &&
                        Tx.storage().nbytes() == static_cast<size_t>(Tx.nbytes());
  Tensor To = in_place
                  ? Tx
                  : at::empty(Tx.sizes(), Tx.options().memory_format(at::MemoryFormat::Contiguous));
  Tensor So = at::empty(p.d1.sizes(), p.d1.options());
  AT_DISPATCH_FLOATING_TYPES(Tx.scalar_type(), "taylor_unary_pending", [&] {
    unary_forward_kernel<scalar_t>(Tx.const_data_ptr<scalar_t>(), L,
                                   p.d1.const_data_ptr<scalar_t>(),
                                   p.d2.const_data_ptr<scalar_t>(),
                                   p.Sx.defined() ? p.Sx.const_data_ptr<scalar_t>() : nullptr,
                                   To.data_ptr<scalar_t>(), So.data_ptr<scalar_t>(), nullptr);
  });
  return {To, So};
}

std::optional<std::pair<Tensor, Tensor>> pending_times_column(const Pending& p, const Tensor& y,
                                                              const Tensor& w) {
  const Tensor& Tx = p.Tx;
  if (y.dim() != 2 || w.dim() != 2 || w.size(1) != 1 || w.size(0) != y.size(1) ||
      !plain_cpu(w) || w.scalar_type() != Tx.scalar_type() || Tx.dim() != 3) {
    return std::nullopt;
  }
  auto lay = layout_of(Tx);
  if (!lay || lay->R != y.size(1) || lay->B != y.size(0)) {
    return std::nullopt;
  }
  c10::impl::ExcludeDispatchKeyGuard guard(kKey);
  c10::AutoGradMode no_grad(false);
  const auto L = *lay;
  const int64_t D = L.D, B = L.B, H = L.R;
  Tensor wc = w.reshape({H}).contiguous();
  Tensor T = at::empty({D, B, 1}, Tx.options());
  Tensor S = at::empty({B, 1}, Tx.options());
  AT_DISPATCH_FLOATING_TYPES(Tx.scalar_type(), "taylor_pending_column", [&] {
    const scalar_t* tx = Tx.const_data_ptr<scalar_t>();
    const scalar_t* d1 = p.d1.const_data_ptr<scalar_t>();
    const scalar_t* d2 = p.d2.const_data_ptr<scalar_t>();
    const scalar_t* sx = p.Sx.defined() ? p.Sx.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* wv = wc.const_data_ptr<scalar_t>();
    scalar_t* to = T.data_ptr<scalar_t>();
    scalar_t* so = S.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, D * H));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      constexpr int64_t K = 16;  // partial sums: a fixed order whatever the threads
      std::vector<scalar_t> g(H), q(H);
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t h = 0; h < H; ++h) {
          g[h] = d1[b * H + h] * wv[h];
          q[h] = 0;
        }
        for (int64_t d = 0; d < D; ++d) {
          const scalar_t* t = tx + d * L.sd + b * L.sb;
          scalar_t part[K] = {};
          int64_t h = 0;
          for (; h + K <= H; h += K) {
            for (int64_t k = 0; k < K; ++k) {
              scalar_t v = t[h + k];
              part[k] += v * g[h + k];
              q[h + k] += v * v;
            }
          }
          for (; h < H; ++h) {
            scalar_t v = t[h];
            part[0] += v * g[h];
            q[h] += v * v;
          }
          scalar_t acc = 0;
          for (int64_t k = 0; k < K; ++k) acc += part[k];
          to[d * B + b] = acc;
        }
        scalar_t acc = 0;
        for (int64_t h = 0; h < H; ++h) {
          const int64_t i = b * H + h;
          acc += wv[h] * (d2[i] * q[h] + (sx != nullptr ? d1[i] * sx[i] : scalar_t(0)));
        }
        so[b] = acc;
      }
    });
  });
  return std::make_pair(T, S);
}

namespace {

using Derivs = std::function<std::pair<Tensor, Tensor>(const Tensor& x, const Tensor& y,
                                                       const Stack& args)>;

constexpr double kTwoOverSqrtPi = 1.1283791670955126;

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
         Tensor d1 = kTwoOverSqrtPi * (-x * x).exp();
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
         Tensor d1 = -kTwoOverSqrtPi * (-x * x).exp();
         return std::make_pair(d1, -2 * x * d1);
       }},
      {"erfinv", [](const Tensor&, const Tensor& y, const Stack&) {
         // y = erfinv(x): x = erf(y), so f′ = 1/erf′(y) = (√π/2)·e^{y²} and f″ = 2y·f′².
         Tensor d1 = (y * y).exp() / kTwoOverSqrtPi;
         return std::make_pair(d1, 2 * y * d1 * d1);
       }},
      {"lgamma", [](const Tensor& x, const Tensor&, const Stack&) {
         return std::make_pair(x.digamma(), x.polygamma(1));
       }},
      {"digamma", [](const Tensor& x, const Tensor&, const Stack&) {
         return std::make_pair(x.polygamma(1), x.polygamma(2));
       }},
      {"deg2rad", [](const Tensor& x, const Tensor&, const Stack&) {
         return std::make_pair(at::full_like(x, 0.017453292519943295), Tensor());
       }},
      {"rad2deg", [](const Tensor& x, const Tensor&, const Stack&) {
         return std::make_pair(at::full_like(x, 57.29577951308232), Tensor());
       }},
      {"frac", [](const Tensor& x, const Tensor&, const Stack&) {
         return std::make_pair(at::ones_like(x), Tensor());
       }},
      {"nan_to_num", [](const Tensor& x, const Tensor&, const Stack&) {
         // autograd's rule: the gradient passes where x is finite
         return std::make_pair(x.isfinite().to(x.scalar_type()), Tensor());
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
      {"celu", [](const Tensor& x, const Tensor&, const Stack& a) {
         // celu(self, alpha) = max(0, x) + min(0, α(e^{x/α} − 1))
         double alpha = a.size() > 1 ? a[1].toScalar().toDouble() : 1.0;
         Tensor e = (x / alpha).exp();
         Tensor pos = x > 0;
         return std::make_pair(at::where(pos, at::ones_like(x), e),
                               at::where(pos, at::zeros_like(x), e / alpha));
       }},
      {"mish", [](const Tensor& x, const Tensor&, const Stack&) {
         // x·tanh(softplus(x)): with t = tanh(softplus(x)), s = σ(x), f′ = t + x(1 − t²)s and
         // f″ = (1 − t²)s·(2 + x(1 − s − 2ts)).
         Tensor t = at::softplus(x, 1, 20).tanh();
         Tensor s = x.sigmoid();
         Tensor u = (1 - t * t) * s;
         return std::make_pair(t + x * u, u * (2 + x * (1 - s - 2 * t * s)));
       }},
      {"logit", [](const Tensor& x, const Tensor&, const Stack& a) {
         // log(x/(1 − x)), x clamped to [eps, 1 − eps] when eps is given (zero slope outside)
         Tensor q = x * (1 - x);
         Tensor d1 = q.reciprocal();
         Tensor d2 = (2 * x - 1) * d1 * d1;
         if (a.size() > 1 && !a[1].isNone()) {
           double eps = a[1].toDouble();
           Tensor inside = (x >= eps) & (x <= 1 - eps);
           d1 = at::where(inside, d1, at::zeros_like(x));
           d2 = at::where(inside, d2, at::zeros_like(x));
         }
         return std::make_pair(d1, d2);
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
         // pow.Tensor_Scalar only (elementwise_rule checks the overload).
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
      {"clamp_min", [](const Tensor& x, const Tensor&, const Stack& a) {
         return std::make_pair((x >= a[1].toScalar()).to(x.scalar_type()), Tensor());
       }},
      {"clamp_max", [](const Tensor& x, const Tensor&, const Stack& a) {
         return std::make_pair((x <= a[1].toScalar()).to(x.scalar_type()), Tensor());
       }},
      {"hardtanh", [](const Tensor& x, const Tensor&, const Stack& a) {
         Tensor inside = (x > a[1].toScalar()) & (x < a[2].toScalar());
         return std::make_pair(inside.to(x.scalar_type()), Tensor());
       }},
      {"fmod", [](const Tensor& x, const Tensor&, const Stack&) {
         return std::make_pair(at::ones_like(x), Tensor());  // fmod.Scalar only
       }},
      {"remainder", [](const Tensor& x, const Tensor&, const Stack&) {
         return std::make_pair(at::ones_like(x), Tensor());  // remainder.Scalar only
       }},
  };
  return rules;
}

// The overloads each name's rule is for (others: no rule here).
bool overload_ok(const std::string& name, const std::string& overload) {
  if (name == "pow") return overload == "Tensor_Scalar";
  if (name == "clamp" || name == "clamp_min" || name == "clamp_max") return overload.empty();
  if (name == "fmod" || name == "remainder") return overload == "Scalar";
  return true;
}

}  // namespace

const std::unordered_set<std::string>& elementwise_ops() {
  static const std::unordered_set<std::string> ops = [] {
    std::unordered_set<std::string> s;
    for (const auto& kv : unary_rules()) s.insert(kv.first);
    s.insert("polygamma");
    s.insert("rrelu_with_noise");
    return s;
  }();
  return ops;
}

Jet unary(const Jet& x, const Tensor& y, const Tensor& d1, const Tensor& d2) {
  if (d2.defined() && fusable(x.T, d1) && plain_cpu(d2) && plain_cpu(x.S) &&
      d2.scalar_type() == d1.scalar_type() && layout_of(x.T) &&
      d1.sizes().equals(x.T.sizes().slice(1)) && d2.sizes().equals(x.T.sizes().slice(1)) &&
      (!x.S.defined() || x.S.sizes().equals(x.T.sizes().slice(1)))) {
    Tensor one = unexpanded(x.T);
    if (one.defined() && !layout_for(one, d1.sizes())) one = Tensor();
    auto out = UnaryJet::apply(one.defined() ? one : x.T, x.S.defined() ? x.S : d1, d1, d2,
                               x.S.defined());
    return Jet{y, out[0], out[1]};
  }
  Tensor T = x.T * d1;
  Tensor S = times(x.S, d1);
  if (d2.defined()) {
    S = plus(S, d2 * sumsq(x.T));
  }
  return Jet{y, T, S};
}

Jet jet_reciprocal(const Jet& x, const Tensor& y) {
  Tensor y2 = y * y;
  return unary(x, y, -y2, 2 * y2 * y);
}

Jet jet_rsqrt(const Jet& x, const Tensor& y) {
  Tensor y3 = y * y * y;
  return unary(x, y, -0.5 * y3, 0.75 * y3 * y * y);
}

Jet jet_sqrt(const Jet& x, const Tensor& y) {
  return unary(x, y, 0.5 / y, -0.25 / (y * y * y));
}

Jet jet_exp(const Jet& x, const Tensor& y) {
  return unary(x, y, y, y);
}

Jet jet_log(const Jet& x, const Tensor& y) {
  Tensor d1 = x.v.reciprocal();
  return unary(x, y, d1, -d1 * d1);
}

Jet binary(const Jet& a, const Jet& b, const Tensor& out, const Tensor& fa, const Tensor& fb,
           const Tensor& faa, const Tensor& fab, const Tensor& fbb) {
  auto r = out.dim();
  Tensor T, S;
  Tensor Ta = a.T.defined() ? lift(a.T, r) : Tensor();
  Tensor Tb = b.T.defined() ? lift(b.T, r) : Tensor();
  if (Ta.defined()) {
    T = Ta * fa;
    S = times(a.S, fa);
    if (faa.defined()) S = plus(S, faa * sumsq(Ta));
  }
  if (Tb.defined()) {
    T = plus(T, Tb * fb);
    S = plus(S, times(b.S, fb));
    if (fbb.defined()) S = plus(S, fbb * sumsq(Tb));
  }
  if (Ta.defined() && Tb.defined() && fab.defined()) {
    S = plus(S, 2 * fab * (Ta * Tb).sum(0));
  }
  if (!T.defined()) {
    return constant_jet(out);
  }
  return Jet{out, expand_T(T, out.sizes()), expand_S(S, out.sizes())};
}

bool elementwise_rule(const Call& c) {
  if (c.name == "rrelu_with_noise") {
    // (self, noise, lower, upper, training, generator): in training the op wrote each slope
    // into `noise` (1 where x ≥ 0), which is f′; otherwise a leaky relu of slope (l + u)/2.
    Jet x = c.jet(0);
    if (is_const(x)) return true;
    bool training = c.args[4].toBool();
    Tensor d1;
    if (training) {
      d1 = c.arg(1).to(x.v.scalar_type());
    } else {
      double slope = (c.args[2].toScalar().toDouble() + c.args[3].toScalar().toDouble()) / 2;
      d1 = at::where(x.v >= 0, at::ones_like(x.v), at::full_like(x.v, slope));
    }
    put(unary(x, c.out_ts[0], d1, Tensor()));
    return true;
  }
  if (c.name == "polygamma") {
    // polygamma(int n, Tensor self)
    Jet x = c.jet(1);
    if (is_const(x)) return true;
    int64_t n = c.args[0].toInt();
    put(unary(x, c.out_ts[0], x.v.polygamma(n + 1), x.v.polygamma(n + 2)));
    return true;
  }
  auto ur = unary_rules().find(c.name);
  if (ur == unary_rules().end() || !overload_ok(c.name, c.overload)) {
    return false;
  }
  Jet x = c.jet(0);
  if (is_const(x)) {
    return true;
  }
  if ((c.name == "tanh" || c.name == "sigmoid") &&
      unary_inline(x, c.out_ts[0], c.name == "tanh" ? Act::Tanh : Act::Sigmoid)) {
    return true;
  }
  auto d = ur->second(x.v, c.out_ts[0], c.args);
  put(unary(x, c.out_ts[0], d.first, d.second));
  return true;
}

}  // namespace tchj::taylor
