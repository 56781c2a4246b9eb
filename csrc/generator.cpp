// The state of libtorch's default random generator of a device, read and written back: the
// per-sample loop of `Randomness::Same` reseeds that generator before every sample and then
// restores the state it found, so the caller's random stream is not changed by the call beyond
// the one seed it draws.
//
// Needs only libtorch's headers (the core). Contract with Rust (src/native/generator.rs): no C++
// exception crosses the boundary; errors come back as malloc'd messages (csrc/strings.h).
#include <ATen/ATen.h>
#include <ATen/Context.h>

#include "strings.h"

#include <mutex>

namespace {

at::Generator default_generator(int device_type, int device_index) {
  if (device_type == 1) {
    return at::globalContext().defaultGenerator(at::Device(at::kCUDA, device_index));
  }
  return at::globalContext().defaultGenerator(at::Device(at::kCPU));
}

}  // namespace

extern "C" {

// *state = a copy of the generator's state (a byte tensor).
char* tchj_generator_get_state(int device_type, int device_index, at::Tensor** state) {
  *state = nullptr;
  try {
    auto gen = default_generator(device_type, device_index);
    std::lock_guard<std::mutex> lock(gen.mutex());
    *state = new at::Tensor(gen.get_state());
    return nullptr;
  } catch (const std::exception& e) {
    return tchj::copy_string(e.what());
  }
}

// Writes `state` (from tchj_generator_get_state) back into the generator.
char* tchj_generator_set_state(int device_type, int device_index, const at::Tensor* state) {
  try {
    auto gen = default_generator(device_type, device_index);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(*state);
    return nullptr;
  } catch (const std::exception& e) {
    return tchj::copy_string(e.what());
  }
}

}  // extern "C"
