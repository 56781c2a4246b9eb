// Collapsed Taylor mode (see csrc/taylor.h): the network and statistics ops, composed from the
// jet algebra — softmax and log_softmax, logsumexp, layer norm and batch norm (statistics over
// their dims, or the running ones), var and std, prod, the vector p-norm, glu, dropout.
#include "taylor.h"

#include <algorithm>
#include <cmath>

namespace tchj::taylor {

namespace {

// [D, *shape] for a reshape of a coefficient tensor.
std::vector<int64_t> dshape(at::IntArrayRef shape) {
  return with_directions(shape);
}

// (x − μ)·(var + eps)^−½ over `dims` (keepdim), with the jets of μ and of the reciprocal
// standard deviation r: what layer norm and batch norm in training compute.
struct Normalized {
  Jet y, mu, r;
};

Normalized normalize(const Jet& x, const std::vector<int64_t>& dims, double eps) {
  Jet mu = jet_mean(x, dims);
  Tensor cv = x.v - mu.v;
  Jet c = jet_add(x, mu, cv, -1);
  Jet c2 = jet_mul(c, c, cv * cv);
  Jet var = jet_mean(c2, dims);
  Tensor rv = (var.v + eps).rsqrt();
  Jet r = jet_rsqrt(var, rv);
  Jet y = jet_mul(c, r, cv * rv);
  return Normalized{y, mu, r};
}

// `per_channel` [C] as [1, C, 1, …] for an input of rank `rank` (batch norm's layout).
Tensor channel_view(const Tensor& per_channel, int64_t rank) {
  std::vector<int64_t> shape(static_cast<size_t>(rank), 1);
  shape[rank >= 2 ? 1 : 0] = per_channel.size(0);
  return per_channel.reshape(shape);
}

Jet channel_jet(const Jet& j, int64_t rank) {
  if (!j.v.defined()) return j;
  Tensor v = channel_view(j.v, rank);
  if (is_const(j)) return constant_jet(v);
  std::vector<int64_t> shape(static_cast<size_t>(rank), 1);
  shape[rank >= 2 ? 1 : 0] = j.v.size(0);
  return Jet{v, j.T.reshape(dshape(shape)), j.S.defined() ? j.S.reshape(shape) : Tensor()};
}

// The coefficients of a statistic `stat` (keepdim) reshaped to the op's output `out`.
void put_as(const Jet& stat, const Tensor& out) {
  if (is_const(stat) || !out.defined() || out.numel() != stat.v.numel()) return;
  put(Jet{out, stat.T.reshape(dshape(out.sizes())),
          stat.S.defined() ? stat.S.reshape(out.sizes()) : Tensor()});
}

// Batch norm: statistics over every dim but the channel dim (training), or the running ones.
bool batch_norm(const Call& c, const Jet& x, const Jet& w, const Jet& b, const Tensor& rm,
                const Tensor& rv, bool training, double eps) {
  const Tensor& out = c.out_ts[0];
  const int64_t rank = x.v.dim();
  Jet y;
  if (training) {
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < rank; ++d) {
      if (d != 1) dims.push_back(d);
    }
    if (!is_const(x)) {
      Normalized n = normalize(x, dims, eps);
      y = n.y;
      // save_mean and save_invstd, shape [C]
      if (c.out_ts.size() > 2) {
        put_as(n.mu, c.out_ts[1]);
        put_as(n.r, c.out_ts[2]);
      }
    } else {
      y = constant_jet(out);
    }
  } else {
    if (!rm.defined() || !rv.defined() || tracked(rm) || tracked(rv)) return false;
    Tensor scale = channel_view((rv + eps).rsqrt(), rank);
    Tensor cv = x.v - channel_view(rm, rank);
    Jet cj = jet_add(x, constant_jet(channel_view(rm, rank)), cv, -1);
    y = jet_mul(cj, constant_jet(scale), cv * scale);
  }
  Jet wj = channel_jet(w, rank), bj = channel_jet(b, rank);
  if (wj.v.defined()) y = jet_mul(y, wj, y.v * wj.v);
  if (bj.v.defined()) y = jet_add(y, bj, y.v + bj.v, 1);
  if (!is_const(y)) {
    put(Jet{out, expand_T(y.T, out.sizes()), expand_S(y.S, out.sizes())});
  }
  return true;
}

Jet optional_jet(const Call& c, size_t i) {
  return c.args[i].isTensor() ? c.jet(i) : constant_jet(Tensor());
}

// The reduced dims of a `dim: int[1]?` argument (all of them for None or []).
std::vector<int64_t> reduced_dims(const IValue& dim, int64_t rank) {
  std::vector<int64_t> dims;
  if (!dim.isNone()) {
    dims = dim.isInt() ? std::vector<int64_t>{dim.toInt()} : dim.toIntVector();
  }
  if (dims.empty()) {
    for (int64_t d = 0; d < rank; ++d) dims.push_back(d);
  }
  for (auto& d : dims) {
    if (d < 0) d += rank;
  }
  return dims;
}

// A keepdim statistic as the op's output (squeezed when keepdim is false).
Jet finish(const Jet& stat, const std::vector<int64_t>& dims, bool keepdim, const Tensor& out) {
  if (keepdim || is_const(stat)) {
    return Jet{out, stat.T, stat.S};
  }
  std::vector<int64_t> sorted(dims);
  std::sort(sorted.rbegin(), sorted.rend());
  Tensor T = stat.T, S = stat.S;
  for (auto d : sorted) {
    T = T.squeeze(d + 1);
    if (S.defined()) S = S.squeeze(d);
  }
  return Jet{out, T, S};
}

bool var_std(const Call& c) {
  // var.correction / std.correction(self, dim?, *, correction?, keepdim)
  if (c.overload != "correction") return false;
  Jet x = c.jet(0);
  if (is_const(x)) return true;
  auto dims = reduced_dims(c.args[1], x.v.dim());
  double correction = c.args[2].isNone() ? 1.0 : c.args[2].toScalar().toDouble();
  bool keepdim = c.args[3].toBool();
  double count = 1;
  for (auto d : dims) count *= static_cast<double>(x.v.size(d));
  if (count - correction <= 0) return false;
  Jet mu = jet_mean(x, dims);
  Tensor cv = x.v - mu.v;
  Jet cj = jet_add(x, mu, cv, -1);
  Jet c2 = jet_mul(cj, cj, cv * cv);
  Jet s = jet_sum(c2, dims);
  Jet var = jet_scale(s, s.v / (count - correction), 1.0 / (count - correction));
  Jet out = var;
  if (c.name == "std") {
    Tensor y = var.v.sqrt();
    if ((y == 0).any().item<bool>()) return false;
    out = jet_sqrt(var, y);
  }
  put(finish(out, dims, keepdim, c.out_ts[0]));
  return true;
}

bool prod(const Call& c) {
  Jet x = c.jet(0);
  if (is_const(x)) return true;
  if ((x.v == 0).any().item<bool>()) return false;  // the generic rule handles zeros
  std::vector<int64_t> dims;
  bool keepdim = false;
  if (c.overload == "dim_int") {
    dims = reduced_dims(c.args[1], x.v.dim());
    keepdim = c.args[2].toBool();
  } else if (c.overload.empty()) {
    dims = reduced_dims(IValue(), x.v.dim());
  } else {
    return false;
  }
  const Tensor& out = c.out_ts[0];
  if (out.scalar_type() != x.v.scalar_type()) return false;
  // y = Π x: T_y = y·Σ T/x, S_y = y·(Σ S/x + Σ_d[(Σ T_d/x)² − Σ (T_d/x)²])
  Tensor y = x.v.prod(dims[0], true);
  for (size_t i = 1; i < dims.size(); ++i) y = y.prod(dims[i], true);
  auto td = shift(dims);
  Tensor q = x.T / x.v;
  Tensor m1 = q.sum(td, true);
  Tensor T = y * m1;
  Tensor S = y * (sumsq(m1) - sumsq(q).sum(dims, true));
  if (x.S.defined()) S = S + y * (x.S / x.v).sum(dims, true);
  put(finish(Jet{y, T, S}, dims, keepdim, out));
  return true;
}

bool vector_norm(const Call& c) {
  // linalg_vector_norm(self, ord=2, dim=None, keepdim=False, *, dtype=None), and norm's
  // overloads Scalar(self, p=2), ScalarOpt_dim(self, p?, dim, keepdim) and the dtype ones with
  // the input's own dtype (libtorch's forward-mode formula for them writes in place, which a
  // recorded second derivative cannot go through).
  Jet x = c.jet(0);
  if (is_const(x)) return true;
  IValue p_arg = c.args.size() > 1 ? c.args[1] : IValue();
  IValue dim_arg, dtype_arg;
  bool keepdim = false;
  const std::string& ov = c.overload;
  if (c.name == "linalg_vector_norm") {
    dim_arg = c.args[2];
    keepdim = c.args[3].toBool();
    dtype_arg = c.args[4];
  } else if (ov == "Scalar" || ov == "ScalarOpt_dtype") {
    dtype_arg = ov == "ScalarOpt_dtype" ? c.args[2] : IValue();
  } else if (ov == "ScalarOpt_dim" || ov == "ScalarOpt_dim_dtype") {
    dim_arg = c.args[2];
    keepdim = c.args[3].toBool();
    dtype_arg = ov == "ScalarOpt_dim_dtype" ? c.args[4] : IValue();
  } else {
    return false;
  }
  if (!dtype_arg.isNone() && dtype_arg.toScalarType() != x.v.scalar_type()) return false;
  double p = p_arg.isNone() ? 2.0 : p_arg.toScalar().toDouble();
  if (!std::isfinite(p) || p <= 0) return false;
  auto dims = reduced_dims(dim_arg, x.v.dim());
  const Tensor& out = c.out_ts[0];
  if (p == 2) {
    Jet sq = jet_mul(x, x, x.v * x.v);
    Jet s = jet_sum(sq, dims);
    Tensor y = s.v.sqrt();
    if ((y == 0).any().item<bool>()) return false;
    put(finish(jet_sqrt(s, y), dims, keepdim, out));
    return true;
  }
  Tensor a = x.v.abs();
  if (p < 2 && (a == 0).any().item<bool>()) return false;
  Jet aj = unary(x, a, x.v.sign(), Tensor());
  Tensor ap = a.pow(p);
  Jet apj = unary(aj, ap, p * a.pow(p - 1), p * (p - 1) * a.pow(p - 2));
  Jet s = jet_sum(apj, dims);
  Tensor y = s.v.pow(1.0 / p);
  if ((y == 0).any().item<bool>()) return false;
  double k = 1.0 / p;
  Jet yj = unary(s, y, k * s.v.pow(k - 1), k * (k - 1) * s.v.pow(k - 2));
  put(finish(yj, dims, keepdim, out));
  return true;
}

bool glu(const Call& c) {
  Jet x = c.jet(0);
  if (is_const(x)) return true;
  int64_t dim = c.args.size() > 1 ? c.args[1].toInt() : -1;
  if (dim < 0) dim += x.v.dim();
  int64_t h = x.v.size(dim) / 2;
  auto half = [&](const Jet& j, int64_t start) {
    return Jet{j.v.narrow(dim, start, h), j.T.narrow(dim + 1, start, h),
               j.S.defined() ? j.S.narrow(dim, start, h) : Tensor()};
  };
  Jet a = half(x, 0), b = half(x, h);
  Tensor s = b.v.sigmoid();
  Tensor d1 = s * (1 - s);
  Jet sj = unary(b, s, d1, d1 * (1 - 2 * s));
  put(jet_mul(a, sj, c.out_ts[0]));
  return true;
}

}  // namespace

const std::unordered_set<std::string>& nn_ops() {
  static const std::unordered_set<std::string> ops = {
      "_softmax", "_log_softmax", "logsumexp", "native_layer_norm", "native_batch_norm",
      "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
      "_batch_norm_with_update", "_batch_norm_no_update", "var", "std", "prod",
      "linalg_vector_norm", "norm", "glu", "native_dropout",
  };
  return ops;
}

bool nn_rule(const Call& c) {
  const std::string& name = c.name;
  const auto& args = c.args;
  const auto& out_ts = c.out_ts;
  if (name == "_softmax" || name == "_log_softmax") {
    Jet x = c.jet(0);
    if (is_const(x)) {
      return true;
    }
    int64_t dim = args[1].toInt();
    if (name == "_log_softmax") {
      put(jet_log_softmax(x, out_ts[0], dim));
    } else {
      Tensor ls = x.v.log_softmax(dim);
      Jet l = jet_log_softmax(x, ls, dim);
      const Tensor& y = out_ts[0];
      put(Jet{y, l.T * y, y * (l.S + sumsq(l.T))});
    }
    return true;
  }
  if (name == "logsumexp") {
    Jet x = c.jet(0);
    if (is_const(x)) {
      return true;
    }
    auto dims = args[1].toIntVector();
    bool keepdim = args[2].toBool();
    Tensor lse = x.v.logsumexp(dims, true);
    Tensor p = (x.v - lse).exp();
    auto tdims = shift(dims);
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
    Jet x = c.jet(0);
    auto normalized = args[1].toIntVector();
    Jet w = optional_jet(c, 2), b = optional_jet(c, 3);
    double eps = args[4].toDouble();
    std::vector<int64_t> dims;
    for (int64_t i = 0; i < static_cast<int64_t>(normalized.size()); ++i) {
      dims.push_back(-1 - i);
    }
    Jet y;
    Normalized n;
    if (!is_const(x)) {
      n = normalize(x, dims, eps);
      y = n.y;
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
      put_as(n.mu, out_ts[1]);
      put_as(n.r, out_ts[2]);
    }
    return true;
  }
  if (name == "native_batch_norm" || name == "_native_batch_norm_legit") {
    // (input, weight?, bias?, running_mean?, running_var?, training, momentum, eps); the
    // no_stats overload of _native_batch_norm_legit has no running stats.
    Jet x = c.jet(0), w = optional_jet(c, 1), b = optional_jet(c, 2);
    if (c.overload == "no_stats") {
      return batch_norm(c, x, w, b, Tensor(), Tensor(), args[3].toBool(), args[5].toDouble());
    }
    return batch_norm(c, x, w, b, c.arg(3), c.arg(4), args[5].toBool(), args[7].toDouble());
  }
  if (name == "_native_batch_norm_legit_no_training" || name == "_batch_norm_no_update") {
    // (input, weight?, bias?, running_mean, running_var, momentum, eps)
    Jet x = c.jet(0), w = optional_jet(c, 1), b = optional_jet(c, 2);
    return batch_norm(c, x, w, b, c.arg(3), c.arg(4), false, args[6].toDouble());
  }
  if (name == "_batch_norm_with_update") {
    // (input, weight?, bias?, running_mean, running_var, momentum, eps): training statistics
    Jet x = c.jet(0), w = optional_jet(c, 1), b = optional_jet(c, 2);
    return batch_norm(c, x, w, b, c.arg(3), c.arg(4), true, args[6].toDouble());
  }
  if (name == "var" || name == "std") return var_std(c);
  if (name == "prod") return prod(c);
  if (name == "linalg_vector_norm" || name == "norm") return vector_norm(c);
  if (name == "glu") return glu(c);
  if (name == "native_dropout") {
    // (input, p, train?) → (output, mask): output = input·mask/(1 − p) when training
    Jet x = c.jet(0);
    if (is_const(x)) return true;
    bool train = args[2].isNone() ? true : args[2].toBool();
    double p = args[1].toDouble();
    Tensor factor = train ? out_ts[1].to(x.v.scalar_type()) * (p >= 1 ? 0.0 : 1.0 / (1 - p))
                          : at::ones_like(x.v);
    put(jet_mul(x, constant_jet(factor), out_ts[0]));
    return true;
  }
  return false;
}

}  // namespace tchj::taylor
