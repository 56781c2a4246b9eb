// Collapsed Taylor mode (see csrc/taylor.h): ops linear in their first input — views, reshapes,
// reductions that sum, indexing, padding, copies: T_out = op(T), S_out = op(S), with the dim
// arguments shifted past the direction dim (a size gets D in front, a permutation keeps the
// direction dim first, a gather index is broadcast over the directions). Any other tensor
// argument must be constant (an index, a mask); one with coefficients is not handled here.
#include "taylor.h"

namespace tchj::taylor {

namespace {

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
      "swapdims", "swapaxes", "trace", "sum_to_size", "tensor_split", "narrow_copy", "rot90",
      "_unsafe_index", "take_along_dim", "diagonal_scatter", "select_scatter", "slice_scatter",
  };
  return ops;
}

// The ops this file has a rule of its own for (beside linear_ops).
const std::unordered_set<std::string>& special_ops() {
  static const std::unordered_set<std::string> ops = {"copy", "cat", "stack"};
  return ops;
}

IValue shift_dims(const IValue& v) {
  if (v.isInt()) {
    return IValue(shift(v.toInt()));
  }
  if (v.isIntList()) {
    return IValue(shift(v.toIntVector()));
  }
  return v;
}

// The op's arguments for the coefficient tensor C ([D, …] when `first`, value-shaped if not).
// Returns false when the op's arguments cannot be shifted (the caller then has no rule).
bool linear_args(const c10::FunctionSchema& schema, const Stack& args, const Tensor& self,
                 const Tensor& C, bool first, Stack* result) {
  Stack& out = *result;
  out.assign(args.begin(), args.end());
  out[0] = IValue(C);
  if (!first) {
    // Only the zero fill of constant-filled positions changes for S.
    for (size_t i = 1; i < out.size(); ++i) {
      const auto& name = schema.arguments()[i].name();
      if (name == "value" && out[i].isScalar()) {
        out[i] = IValue(c10::Scalar(0.0));
      } else if ((name == "value" || name == "src") && out[i].isTensor()) {
        out[i] = IValue(at::zeros_like(out[i].toTensor()));
      }
    }
    return true;
  }
  const std::string& op = schema.name();
  int64_t D = C.size(0);
  for (size_t i = 1; i < out.size(); ++i) {
    const auto& name = schema.arguments()[i].name();
    IValue& a = out[i];
    if (name == "dim" || name == "dim0" || name == "dim1" || name == "dim2" ||
        name == "dimension" || name == "source" || name == "destination" || name == "axis0" ||
        name == "axis1") {
      if ((a.isNone() || (a.isIntList() && a.toIntVector().empty())) &&
          (op == "aten::sum" || op == "aten::mean")) {
        std::vector<int64_t> all;
        for (int64_t d = 1; d <= self.dim(); ++d) {
          all.push_back(d);
        }
        a = IValue(all);
      } else if (a.isNone() && (op == "aten::take_along_dim")) {
        return false;  // flattens the tensor
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
          return false;  // roll without dims flattens the tensor
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
    } else if ((name == "index" || name == "indices") && a.isTensor() &&
               (op == "aten::gather" || op == "aten::take_along_dim")) {
      Tensor idx = a.toTensor();
      std::vector<int64_t> s{D};
      for (auto d : idx.sizes()) {
        s.push_back(d);
      }
      a = IValue(idx.unsqueeze(0).expand(s));
    } else if (name == "indices" && (op == "aten::index" || op == "aten::_unsafe_index")) {
      c10::List<std::optional<Tensor>> idx;
      idx.push_back(std::nullopt);
      // (TorchScript passes Tensor?[] as a generic list)
      for (const auto& e : a.toListRef()) {
        idx.push_back(e.isNone() ? std::nullopt : std::optional<Tensor>(e.toTensor()));
      }
      a = IValue(idx);
    } else if (name == "src" && a.isTensor()) {
      // *_scatter(self, src, …): linear in (self, src) together; src must be constant here.
      std::vector<int64_t> s{D};
      for (auto d : a.toTensor().sizes()) s.push_back(d);
      a = IValue(at::zeros(s, a.toTensor().options()));
    } else if (name == "k" && op == "aten::rot90") {
      // unchanged
    } else if (name == "mask" && a.isTensor()) {
      // masked_fill's mask broadcasts from the right: unchanged.
    }
  }
  return true;
}

}  // namespace

const std::unordered_set<std::string>& shape_ops() {
  static const std::unordered_set<std::string> ops = [] {
    std::unordered_set<std::string> s = linear_ops();
    for (const auto& o : special_ops()) s.insert(o);
    return s;
  }();
  return ops;
}

bool shape_rule(const Call& c) {
  const auto& schema = c.op.schema();
  const std::string& name = c.name;
  const auto& out_ts = c.out_ts;
  if (name == "t" || name == "numpy_T" || name == "mT") {
    Jet x = c.jet(0);
    if (is_const(x)) return true;
    if (x.v.dim() < 2) {
      put(Jet{out_ts[0], x.T, x.S});
    } else {
      put(Jet{out_ts[0], x.T.transpose(-1, -2), x.S.defined() ? x.S.transpose(-1, -2) : Tensor()});
    }
    return true;
  }
  if (name == "squeeze" && c.overload.empty()) {
    Jet x = c.jet(0);
    if (is_const(x)) return true;
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
    Jet x = c.jet(0);
    if (is_const(x)) return true;
    std::vector<int64_t> dims;
    for (int64_t d = 1; d <= x.v.dim(); ++d) dims.push_back(d);
    auto dtype = c.args[1].toOptional<at::ScalarType>();
    Tensor T = name == "sum" ? x.T.sum(dims, false, dtype) : x.T.mean(dims, false, dtype);
    Tensor S;
    if (x.S.defined()) S = name == "sum" ? x.S.sum(dtype) : x.S.mean(dtype);
    put(Jet{out_ts[0], T, S});
    return true;
  }
  if (name == "trace") {
    Jet x = c.jet(0);
    if (is_const(x)) return true;
    Tensor T = x.T.diagonal(0, 1, 2).sum(-1);
    put(Jet{out_ts[0], T, x.S.defined() ? x.S.trace() : Tensor()});
    return true;
  }
  if (name == "cat" || name == "stack") {
    auto list = c.args[0].toTensorVector();
    int64_t dim = c.args[1].toInt();
    std::vector<Tensor> Ts, Ss;
    bool any_S = false, any_T = false;
    std::vector<std::optional<Jet>> jets;
    for (const auto& t : list) {
      jets.push_back(lookup(t));
      any_T = any_T || jets.back().has_value();
      any_S = any_S || (jets.back() && jets.back()->S.defined());
    }
    if (!any_T) return true;
    for (size_t i = 0; i < list.size(); ++i) {
      const auto& t = list[i];
      const auto& j = jets[i];
      if (j) {
        Ts.push_back(j->T);
        Ss.push_back(j->S.defined() || !any_S ? j->S : at::zeros_like(t));
      } else {
        Ts.push_back(at::zeros(with_directions(t.sizes()), t.options()));
        Ss.push_back(any_S ? at::zeros_like(t) : Tensor());
      }
    }
    // cat's dim is that of the inputs (1-d empty tensors aside); shift past the direction dim
    Tensor T = name == "cat" ? at::cat(Ts, shift(dim)) : at::stack(Ts, shift(dim));
    Tensor S;
    if (any_S) {
      S = name == "cat" ? at::cat(Ss, dim) : at::stack(Ss, dim);
    }
    put(Jet{out_ts[0], T, S});
    return true;
  }
  if (name == "copy") {
    // copy(self, src): src's values, broadcast to self's shape, in self's dtype.
    Jet s = c.jet(1);
    const Tensor& out = out_ts[0];
    if (is_const(s)) return true;
    Tensor T = expand_T(s.T, out.sizes()).to(out.scalar_type());
    Tensor S = s.S.defined() ? expand_S(s.S, out.sizes()).to(out.scalar_type()) : Tensor();
    put(Jet{out, T, S});
    return true;
  }
  if (linear_ops().count(name) == 0) {
    return false;
  }
  // Linear in `self` only: any other tensor argument with a jet is not handled.
  for (size_t i = 1; i < c.args.size(); ++i) {
    if (c.arg_tracked(i)) return false;
  }
  Jet x = c.jet(0);
  if (is_const(x)) return true;
  // view-like ops run as reshape on the coefficients (they may not be contiguous).
  const c10::OperatorHandle* cop = &c.op;
  std::optional<c10::OperatorHandle> reshape;
  if (name == "view" || name == "_unsafe_view" || name == "view_copy" || name == "_reshape_alias") {
    reshape = c10::Dispatcher::singleton().findSchemaOrThrow("aten::reshape", "");
    cop = &*reshape;
  }
  Stack targs;
  if (!linear_args(schema, c.args, x.v, x.T, true, &targs)) return false;
  if (name == "_reshape_alias" || name == "view" || name == "_unsafe_view" || name == "view_copy") {
    targs.resize(2);
  }
  auto Touts = tensors_of(call(*cop, targs));
  std::vector<Tensor> Souts;
  if (x.S.defined()) {
    Stack sargs;
    linear_args(schema, c.args, x.v, x.S, false, &sargs);
    if (name == "_reshape_alias" || name == "view" || name == "_unsafe_view" || name == "view_copy") {
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

}  // namespace tchj::taylor
