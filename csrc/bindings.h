// What the Python extension modules (bindings.cpp: _jax_roi;
// cuda_emulation_bindings.cpp: the CUDA emulation test module) share: the
// registered FFI targets as Python objects. Include from one translation
// unit per module.
#ifndef JAX_ROI_CSRC_BINDINGS_H_
#define JAX_ROI_CSRC_BINDINGS_H_

#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "core/registry.h"

namespace jax_roi {
namespace bindings {

// Target name -> what jax.ffi.register_ffi_target takes: the execute
// handler's capsule, or, for a target with an instantiate stage, a dict of
// capsules by stage name ({"instantiate": ..., "execute": ...}).
inline pybind11::dict targets(Platform platform) {
  namespace py = pybind11;
  py::dict d;
  for (const auto& [name, stages] : registered_targets(platform)) {
    py::capsule execute(reinterpret_cast<void*>(stages.execute));
    if (stages.instantiate == nullptr) {
      d[py::str(name)] = execute;
    } else {
      py::dict bundle;
      bundle["instantiate"] = py::capsule(reinterpret_cast<void*>(stages.instantiate));
      bundle["execute"] = execute;
      d[py::str(name)] = bundle;
    }
  }
  return d;
}

// Registration mistakes (core/registry.h) fail the import.
inline void check_registrations() {
  if (registration_errors().empty()) return;
  std::string message = "jax_roi: invalid FFI target registrations:";
  for (const std::string& e : registration_errors()) message += "\n  " + e;
  throw std::runtime_error(message);
}

}  // namespace bindings
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_BINDINGS_H_
