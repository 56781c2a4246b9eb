// The malloc'd strings every csrc/ file hands to Rust (messages, name lists), freed there with
// tchj_free_string (csrc/graph_scan.cpp). Needs no libtorch header: the core and the engine
// share it.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>

namespace tchj {

// A malloc'd copy of `s` (nullptr if the allocation fails).
inline char* copy_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

}  // namespace tchj
