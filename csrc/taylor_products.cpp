// Collapsed Taylor mode (see csrc/taylor.h): sums and products of tensors with coefficients.
//
//   a + αb:   T = T_a + αT_b                   S = S_a + αS_b
//   a·b:      T = T_a·b + a·T_b                S = S_a·b + a·S_b + 2·Σ_d T_a[d]·T_b[d]
//
// and the same bilinear rule for the matrix products (mm, bmm, matmul, addmm, linear, mv, dot)
// and convolutions (the direction dim joins the batch); binary elementwise ops z = f(a, b) from
// their partials (binary() in taylor_elementwise.cpp): atan2, hypot, logaddexp(2), maximum,
// minimum, fmax, fmin, pow, xlogy, copysign, clamp with tensor bounds, fmod, remainder.
#include "taylor.h"

namespace tchj::taylor {

namespace {

// A scalar argument as a 0-d tensor of `like`'s dtype and device.
Tensor scalar_like(const IValue& v, const Tensor& like) {
  return at::scalar_tensor(v.toScalar(), like.options());
}

// The binary elementwise ops: their partials from the operands and the output.
bool binary_rule(const Call& c) {
  const std::string& name = c.name;
  const std::string& ov = c.overload;
  const Tensor& out = c.out_ts[0];
  auto two = [&](size_t ia, size_t ib, Jet* a, Jet* b) {
    *a = c.args[ia].isTensor() ? c.jet(ia) : constant_jet(scalar_like(c.args[ia], out));
    *b = c.args[ib].isTensor() ? c.jet(ib) : constant_jet(scalar_like(c.args[ib], out));
  };
  Jet a, b;
  if (name == "atan2") {
    two(0, 1, &a, &b);
    Tensor r2 = a.v * a.v + b.v * b.v;
    Tensor q = (r2 * r2).reciprocal();
    Tensor ab = a.v * b.v;
    put(binary(a, b, out, b.v / r2, -a.v / r2, -2 * ab * q, (a.v * a.v - b.v * b.v) * q,
               2 * ab * q));
    return true;
  }
  if (name == "hypot") {
    two(0, 1, &a, &b);
    Tensor h3 = out * out * out;
    put(binary(a, b, out, a.v / out, b.v / out, b.v * b.v / h3, -a.v * b.v / h3,
               a.v * a.v / h3));
    return true;
  }
  if (name == "logaddexp" || name == "logaddexp2") {
    two(0, 1, &a, &b);
    const bool base2 = name == "logaddexp2";
    const double l = base2 ? 0.6931471805599453 : 1.0;
    Tensor pa = base2 ? at::exp2(a.v - out) : (a.v - out).exp();
    Tensor pb = base2 ? at::exp2(b.v - out) : (b.v - out).exp();
    Tensor pp = l * pa * pb;
    put(binary(a, b, out, pa, pb, pp, -pp, pp));
    return true;
  }
  if (name == "maximum" || name == "minimum" || name == "fmax" || name == "fmin") {
    two(0, 1, &a, &b);
    const bool max = name == "maximum" || name == "fmax";
    // autograd's rule: the larger (smaller) operand takes the gradient, ties split it evenly
    Tensor wa = (max ? a.v > b.v : a.v < b.v).to(out.scalar_type()) +
                0.5 * (a.v == b.v).to(out.scalar_type());
    Tensor wb = 1 - wa;
    if (name == "fmax" || name == "fmin") {
      // a NaN operand loses
      wa = at::where(a.v.isnan(), at::zeros_like(wa), at::where(b.v.isnan(), at::ones_like(wa), wa));
      wb = at::where(b.v.isnan(), at::zeros_like(wb), at::where(a.v.isnan(), at::ones_like(wb), wb));
    }
    put(binary(a, b, out, wa, wb, Tensor(), Tensor(), Tensor()));
    return true;
  }
  if (name == "pow" && (ov == "Tensor_Tensor" || ov == "Scalar")) {
    two(0, 1, &a, &b);
    // z = a^b: z_a = b a^(b−1), z_b = z ln a, z_aa = b(b−1) a^(b−2), z_ab = a^(b−1)(1 + b ln a),
    // z_bb = z (ln a)²; where a = 0 and b ≥ 0 autograd takes z_b = 0.
    Tensor la = a.v.log();
    Tensor zero_base = (a.v == 0) & (b.v >= 0);
    Tensor fb = at::where(zero_base, at::zeros_like(out), out * la);
    Tensor fbb = at::where(zero_base, at::zeros_like(out), out * la * la);
    Tensor fa, faa, fab;
    if (!is_const(a)) {
      Tensor am1 = a.v.pow(b.v - 1);
      fa = b.v * am1;
      faa = b.v * (b.v - 1) * a.v.pow(b.v - 2);
      fab = at::where(zero_base, at::zeros_like(out), am1 * (1 + b.v * la));
    }
    put(binary(a, b, out, fa, fb, faa, fab, fbb));
    return true;
  }
  if (name == "xlogy") {
    two(0, 1, &a, &b);
    // z = a ln b (0 where a = 0): z_a = ln b (0 where a = 0, as autograd), z_b = a/b,
    // z_ab = 1/b, z_bb = −a/b²
    Tensor rb = b.v.reciprocal();
    Tensor fa = at::where(a.v == 0, at::zeros_like(out), b.v.log().expand_as(out));
    put(binary(a, b, out, fa, a.v * rb, Tensor(), rb, -a.v * rb * rb));
    return true;
  }
  if (name == "copysign" && ov == "Tensor") {
    two(0, 1, &a, &b);
    Tensor fa = at::where(a.v == 0, at::zeros_like(out), out / a.v);
    put(binary(a, b, out, fa, at::zeros_like(out), Tensor(), Tensor(), Tensor()));
    return true;
  }
  if ((name == "clamp_min" || name == "clamp_max") && ov == "Tensor") {
    two(0, 1, &a, &b);
    Tensor in = name == "clamp_min" ? a.v >= b.v : a.v <= b.v;
    Tensor wa = in.to(out.scalar_type());
    put(binary(a, b, out, wa, 1 - wa, Tensor(), Tensor(), Tensor()));
    return true;
  }
  if ((name == "fmod" || name == "remainder") && ov == "Tensor") {
    two(0, 1, &a, &b);
    Tensor q = a.v / b.v;
    Tensor fb = name == "fmod" ? -q.trunc() : -q.floor();
    put(binary(a, b, out, at::ones_like(out), fb, Tensor(), Tensor(), Tensor()));
    return true;
  }
  return false;
}

// The bilinear rule of a product p(a, b) (p linear in each side): T = p(T_a, b) + p(a, T_b),
// S = p(S_a, b) + p(a, S_b) + 2·Σ_d p(T_a[d], T_b[d]). `pa(Ta)`, `pb(Tb)` apply p with the
// direction dim on one side; `pab(Ta, Tb)` with it on both; `ps(Sa, Sb)` on value-shaped ones.
Jet bilinear(const Jet& a, const Jet& b, const Tensor& out,
             const std::function<Tensor(const Tensor&)>& pa,
             const std::function<Tensor(const Tensor&)>& pb,
             const std::function<Tensor(const Tensor&, const Tensor&)>& pab,
             const std::function<Tensor(const Tensor&, const Tensor&)>& ps) {
  Tensor T, S;
  if (a.T.defined()) {
    T = pa(a.T);
    if (a.S.defined()) S = ps(a.S, b.v);
  }
  if (b.T.defined()) {
    T = plus(T, pb(b.T));
    if (b.S.defined()) S = plus(S, ps(a.v, b.S));
  }
  if (a.T.defined() && b.T.defined()) {
    S = plus(S, 2 * pab(a.T, b.T).sum(0));
  }
  if (!T.defined()) return constant_jet(out);
  return Jet{out, expand_T(T, out.sizes()), expand_S(S, out.sizes())};
}

// aten::convolution(input, weight, bias?, stride, padding, dilation, transposed,
// output_padding, groups): bilinear in (input, weight), plus the bias.
bool conv_rule(const Call& c) {
  const Tensor& out = c.out_ts[0];
  Jet x = c.jet(0), w = c.jet(1);
  Jet bias = c.args[2].isTensor() ? c.jet(2) : constant_jet(Tensor());
  auto conv = [&](const Tensor& in, const Tensor& weight) {
    Stack s(c.args.begin(), c.args.end());
    s[0] = IValue(in);
    s[1] = IValue(weight);
    s[2] = IValue();  // no bias
    return tensors_of(call(c.op, s)).at(0);
  };
  const bool batched = x.v.dim() == w.v.dim();  // [N, C, …] rather than [C, …]
  // T_x [D, N, C, …] → [D·N, C, …] (or, unbatched, [D, C, …] is a batch of D).
  auto over_directions = [&](const Tensor& T, const Tensor& weight) -> Tensor {
    if (!batched) return conv(T, weight);
    const int64_t D = T.size(0), N = T.size(1);
    if (N > 1 && T.stride(1) == 0) {
      // a batch-broadcast T (the seed's directions): one sample is enough
      Tensor one = conv(T.select(1, 0), weight);  // [D, C', …]
      std::vector<int64_t> full{D, N};
      for (int64_t i = 1; i < one.dim(); ++i) full.push_back(one.size(i));
      return one.unsqueeze(1).expand(full);
    }
    Tensor y = conv(T.flatten(0, 1), weight);
    std::vector<int64_t> shape{D, N};
    for (int64_t i = 1; i < y.dim(); ++i) shape.push_back(y.size(i));
    return y.reshape(shape);
  };
  Tensor T, S;
  if (x.T.defined()) {
    T = over_directions(x.T, w.v);
    if (x.S.defined()) S = conv(x.S, w.v);
  }
  if (w.T.defined()) {
    // weights with coefficients: p(x, T_w[d]) per direction
    std::vector<Tensor> parts;
    for (int64_t d = 0; d < w.T.size(0); ++d) parts.push_back(conv(x.v, w.T[d]));
    T = plus(T, at::stack(parts));
    if (w.S.defined()) S = plus(S, conv(x.v, w.S));
    if (x.T.defined()) {
      Tensor cross;
      for (int64_t d = 0; d < w.T.size(0); ++d) {
        cross = plus(cross, conv(x.T[d], w.T[d]));
      }
      S = plus(S, 2 * cross);
    }
  }
  if (bias.T.defined()) {
    // [D, C'] → [D, (1,) C', 1, …]
    std::vector<int64_t> shape{bias.T.size(0)};
    if (batched) shape.push_back(1);
    shape.push_back(bias.T.size(1));
    for (int64_t i = 0; i < w.v.dim() - 2; ++i) shape.push_back(1);
    T = plus(T, bias.T.reshape(shape));
    if (bias.S.defined()) {
      std::vector<int64_t> sshape(shape.begin() + 1, shape.end());
      S = plus(S, bias.S.reshape(sshape));
    }
  }
  if (!T.defined()) return true;
  put(Jet{out, expand_T(T, out.sizes()), expand_S(S, out.sizes())});
  return true;
}

// y·w for a pending activation y [B, H] and a constant column w [H, 1] (mm, matmul, or addmm /
// linear, whose constant bias adds nothing to the coefficients): the jet from the activation's
// input without forming its T (pending_times_column). False otherwise.
bool pending_column_rule(const Call& c) {
  const std::string& name = c.name;
  const bool is_addmm = name == "addmm", is_linear = name == "linear";
  if (name != "mm" && name != "matmul" && !is_addmm && !is_linear) return false;
  const size_t ia = is_addmm ? 1 : 0, iw = is_addmm ? 2 : 1;
  if (c.arg_tracked(iw) || !c.arg(iw).defined() || !c.arg(ia).defined()) return false;
  if ((is_addmm || is_linear) && c.arg_tracked(is_addmm ? 0 : 2)) return false;
  if (is_addmm && (!c.args[3].toScalar().equal(1) || !c.args[4].toScalar().equal(1))) return false;
  Tensor y = c.arg(ia);
  auto p = pending_of(y);
  if (!p) return false;
  Tensor w = is_linear ? (c.arg(iw).dim() == 2 ? c.arg(iw).t() : Tensor()) : c.arg(iw);
  if (!w.defined()) return false;
  auto ts = pending_times_column(*p, y, w);
  if (!ts) return false;
  const Tensor& out = c.out_ts[0];
  if (!out.sizes().equals(ts->second.sizes())) return false;
  put(Jet{out, ts->first, ts->second});
  return true;
}

bool matmul_rule(const Call& c) {
  const std::string& name = c.name;
  const Tensor& out = c.out_ts[0];
  if (pending_column_rule(c)) return true;
  Jet a, b, bias;
  c10::Scalar alpha(1), beta(1);
  if (name == "addmm") {
    bias = c.jet(0);
    a = c.jet(1);
    b = c.jet(2);
    beta = c.args[3].toScalar();
    alpha = c.args[4].toScalar();
  } else if (name == "linear") {
    if (c.arg_tracked(1) || c.arg(1).dim() != 2) {
      return false;  // input-dependent or 1-d weights: decompose
    }
    a = c.jet(0);
    b = constant_jet(c.arg(1).t());
    bias = c.args[2].isTensor() ? c.jet(2) : constant_jet(Tensor());
  } else {
    a = c.jet(0);
    b = c.jet(1);
  }
  if (name == "matmul" && (b.v.dim() < 2 || a.v.dim() < 1)) {
    return false;  // matrix-vector forms: decompose (mv, dot)
  }
  if (name == "mv" || name == "dot" || name == "vdot") {
    auto col = [](const Tensor& v) { return v.unsqueeze(-1); };
    Jet j;
    if (name == "mv") {
      // A [n, m] · v [m]
      j = bilinear(
          a, b, out, [&](const Tensor& Ta) { return at::matmul(Ta, b.v); },
          [&](const Tensor& Tb) { return at::matmul(a.v, col(Tb)).squeeze(-1); },
          [&](const Tensor& Ta, const Tensor& Tb) { return at::matmul(Ta, col(Tb)).squeeze(-1); },
          [&](const Tensor& x, const Tensor& y) { return at::mv(x, y); });
    } else {
      j = bilinear(
          a, b, out, [&](const Tensor& Ta) { return (Ta * b.v).sum(-1); },
          [&](const Tensor& Tb) { return (a.v * Tb).sum(-1); },
          [&](const Tensor& Ta, const Tensor& Tb) { return (Ta * Tb).sum(-1); },
          [&](const Tensor& x, const Tensor& y) { return at::dot(x, y); });
    }
    put(j);
    return true;
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

}  // namespace

const std::unordered_set<std::string>& product_ops() {
  static const std::unordered_set<std::string> ops = {
      "add", "sub", "rsub", "mul", "div", "true_divide", "where", "mm", "bmm", "matmul",
      "addmm", "linear", "mv", "dot", "vdot", "convolution", "atan2", "hypot", "logaddexp",
      "logaddexp2", "maximum", "minimum", "fmax", "fmin", "pow", "xlogy", "copysign",
      "clamp_min", "clamp_max", "fmod", "remainder",
  };
  return ops;
}

bool product_rule(const Call& c) {
  const std::string& name = c.name;
  const auto& args = c.args;
  const auto& out_ts = c.out_ts;
  if (name == "add" || name == "sub" || name == "rsub") {
    Jet a = c.jet(0);
    c10::Scalar alpha = args.size() > 2 ? args[2].toScalar() : c10::Scalar(1);
    Jet b = args[1].isTensor() ? c.jet(1) : constant_jet(Tensor());
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
      put(jet_scale(c.jet(0), out_ts[0], args[1].toScalar()));
    } else {
      put(jet_mul(c.jet(0), c.jet(1), out_ts[0]));
    }
    return true;
  }
  if (name == "div" || name == "true_divide") {
    if (args.size() > 2 && !args[2].isNone()) {  // rounding_mode: piecewise constant
      return true;
    }
    Jet a = c.jet(0);
    if (!args[1].isTensor()) {
      put(jet_scale(a, out_ts[0], 1.0 / args[1].toScalar().toDouble()));
      return true;
    }
    Jet b = c.jet(1);
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
  if (name == "where") {
    if (c.overload != "self") return false;
    Tensor cond = c.arg(0);
    Jet a = c.jet(1), b = c.jet(2);
    const Tensor& out = out_ts[0];
    Tensor Ta = a.T.defined() ? expand_T(a.T, out.sizes()) : Tensor();
    Tensor Tb = b.T.defined() ? expand_T(b.T, out.sizes()) : Tensor();
    if (!Ta.defined() && !Tb.defined()) return true;
    Tensor T = Ta.defined() && Tb.defined() ? at::where(cond, Ta, Tb)
               : Ta.defined()               ? at::where(cond, Ta, 0.0)
                                            : at::where(cond.logical_not(), Tb, 0.0);
    Tensor S;
    if (a.S.defined() || b.S.defined()) {
      Tensor za = a.S.defined() ? a.S : at::zeros({}, out.options());
      Tensor zb = b.S.defined() ? b.S : at::zeros({}, out.options());
      S = at::where(cond, za, zb);
    }
    put(Jet{out, expand_T(T, out.sizes()), expand_S(S, out.sizes())});
    return true;
  }
  if (name == "mm" || name == "bmm" || name == "matmul" || name == "addmm" || name == "linear" ||
      name == "mv" || name == "dot" || name == "vdot") {
    return matmul_rule(c);
  }
  if (name == "convolution") {
    return conv_rule(c);
  }
  return binary_rule(c);
}

}  // namespace tchj::taylor
