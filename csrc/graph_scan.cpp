// The names of the autograd nodes reachable from a tensor's grad_fn, which tch does not expose.
//
// The crate's policy (src/strategy.rs, src/engine/mod.rs) reads them before a create_graph pass:
// libtorch's double backward of the normalizations is wrong one order higher (pytorch#196700),
// and batched passes through a TorchScript executor's optimized differentiable subgraphs lose
// terms, so some strategies are wrong on graphs that hold those nodes.
//
// Contract with Rust (src/native/graph_scan.rs): no C++ exception crosses the boundary; returns nullptr on
// success or a malloc'd message; `names` receives the distinct node names, '\n'-separated
// (malloc'd; nullptr for a tensor without grad_fn).
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/variable.h>

#include "strings.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

extern "C" {

// Frees a message or name list that a C++ function of the crate malloc'd (every csrc/ file).
void tchj_free_string(char* s) {
  std::free(s);
}

char* tchj_graph_node_names(const at::Tensor* y, char** names, int64_t* visited) {
  *names = nullptr;
  *visited = 0;
  try {
    const auto& root = torch::autograd::impl::gradient_edge(*y).function;
    if (!root) {
      return nullptr;
    }
    std::unordered_set<const torch::autograd::Node*> seen{root.get()};
    std::vector<torch::autograd::Node*> stack{root.get()};
    std::unordered_set<std::string> distinct;
    std::string out;
    while (!stack.empty()) {
      auto* node = stack.back();
      stack.pop_back();
      auto name = node->name();
      if (distinct.insert(name).second) {
        out += out.empty() ? name : "\n" + name;
      }
      for (const auto& edge : node->next_edges()) {
        auto* next = edge.function.get();
        if (next != nullptr && seen.insert(next).second) {
          stack.push_back(next);
        }
      }
    }
    *visited = static_cast<int64_t>(seen.size());
    *names = tchj::copy_string(out);
    return nullptr;
  } catch (const c10::Error& e) {
    return tchj::copy_string(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return tchj::copy_string(e.what());
  } catch (...) {
    return tchj::copy_string("unknown C++ exception while scanning the autograd graph");
  }
}

}  // extern "C"
