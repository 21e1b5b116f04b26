// The Python extension module: it only exposes the XLA FFI handlers that the
// ops registered (core/registry.h), as capsules keyed by target name, one
// dict per platform.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "core/registry.h"
#include "xla/ffi/api/c_api.h"

namespace py = pybind11;

namespace {

py::dict targets(jax_roi::Platform platform) {
  py::dict d;
  for (const auto& [name, handler] : jax_roi::registered_targets(platform)) {
    d[py::str(name)] = py::capsule(reinterpret_cast<void*>(handler));
  }
  return d;
}

}  // namespace

PYBIND11_MODULE(_jax_roi, m) {
  if (!jax_roi::registration_errors().empty()) {
    std::string message = "jax_roi: invalid FFI target registrations:";
    for (const std::string& e : jax_roi::registration_errors()) message += "\n  " + e;
    throw std::runtime_error(message);
  }
  m.doc() = "XLA FFI handlers of jax_roi (use jax_roi, not this module).";
  m.def("cpu_targets", [] { return targets(jax_roi::Platform::kCpu); });
  m.def("cuda_targets", [] { return targets(jax_roi::Platform::kCuda); });
  m.attr("with_cuda") =
#ifdef JAX_ROI_WITH_CUDA
      true;
#else
      false;
#endif
  m.attr("ffi_api_version") = py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
}
