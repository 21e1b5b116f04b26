// The Python extension module: it only exposes the XLA FFI handlers that the
// ops registered (core/registry.h), keyed by target name, one dict per
// platform (bindings.h).
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "core/registry.h"
#include "xla/ffi/api/c_api.h"

namespace py = pybind11;
using jax_roi::bindings::targets;

PYBIND11_MODULE(_jax_roi, m) {
  jax_roi::bindings::check_registrations();
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
