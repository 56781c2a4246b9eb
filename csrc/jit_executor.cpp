// The TorchScript executor's optimization switch (thread-local in libtorch), read and set in one
// call so that the crate can restore the caller's setting: tch only sets it.
//
// With it off, a loaded module's forward runs its graph op by op, as eager code does, instead of
// the profiling executor's optimized graph, whose differentiable subgraphs give wrong batched
// second derivatives (src/second_order.rs).
#include <torch/csrc/jit/python/update_graph_executor_opt.h>

extern "C" {

// Sets the switch on this thread and returns its previous value (1 on, 0 off).
int tchj_set_graph_executor_optimize(int on) {
  bool previous = torch::jit::getGraphExecutorOptimize();
  torch::jit::setGraphExecutorOptimize(on != 0);
  return previous ? 1 : 0;
}

}  // extern "C"
