// The emulation runtime's test module, _toy_emulation: the emulation controls
// (seed, stats, limits, errors) at the top level and one submodule per
// architecture build of the toy kernels (sm750, sm900, ...: see
// CMakeLists.txt, which generates toy_archs.inc). Used by
// tests/test_cuda_emulation_runtime.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/cuda_compat.h"
#include "cuda_emulation_bindings.h"

namespace py = pybind11;

namespace toy_module {

template <typename T>
T* data(py::array& a, const char* name) {
  if (!a.dtype().is(py::dtype::of<T>())) {
    throw std::invalid_argument(std::string(name) + ": wrong dtype");
  }
  if (!(a.flags() & py::array::c_style) || !a.writeable()) {
    throw std::invalid_argument(std::string(name) + ": must be C-contiguous and writeable");
  }
  return static_cast<T*>(a.mutable_data());
}

inline dim3 to_dim3(const py::tuple& t) {
  unsigned v[3] = {1, 1, 1};
  if (t.size() > 3) throw std::invalid_argument("at most 3 dimensions");
  for (size_t i = 0; i < t.size(); ++i) v[i] = t[i].cast<unsigned>();
  return dim3(v[0], v[1], v[2]);
}

}  // namespace toy_module

// Declarations and bindings of every architecture build (TOY_BIND_ALL(m)).
#include "toy_archs.inc"

PYBIND11_MODULE(_toy_emulation, m) {
  m.attr("cudaSuccess") = static_cast<int>(cudaSuccess);
  m.attr("cudaErrorInvalidValue") = static_cast<int>(cudaErrorInvalidValue);
  m.attr("cudaErrorInvalidConfiguration") = static_cast<int>(cudaErrorInvalidConfiguration);
  m.attr("cudaErrorLaunchFailure") = static_cast<int>(cudaErrorLaunchFailure);
  m.attr("cudaErrorNotSupported") = static_cast<int>(cudaErrorNotSupported);
#if defined(JAX_ROI_EMU_ASM_SWITCH)
  m.attr("FIBER_BACKEND") = "asm";
#else
  m.attr("FIBER_BACKEND") = "ucontext";
#endif

  jax_roi::bindings::def_emulation_controls(m);
  m.def("get_last_error", [] { return static_cast<int>(cudaGetLastError()); });
  m.def("peek_last_error", [] { return static_cast<int>(cudaPeekAtLastError()); });
  m.def("error_string",
        [](int e) { return std::string(cudaGetErrorString(static_cast<cudaError_t>(e))); });
  m.def("memset", [](py::array a, int value) {
    return static_cast<int>(jax_roi::cuda::memset_async(a.mutable_data(), value,
                                                        static_cast<size_t>(a.nbytes()), nullptr));
  });
  TOY_BIND_ALL(m);
}
