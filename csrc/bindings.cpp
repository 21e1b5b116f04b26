// The Python extension module: it only exposes the XLA FFI handlers that the
// ops registered (core/registry.h), keyed by target name, one dict per
// platform (bindings.h).
//
// The same sources may be built more than once, for wider instruction sets
// (CMake's JAX_ROI_CPU_VARIANTS): each copy is its own module, named by
// JAX_ROI_MODULE_NAME (default _jax_roi), and reports the -march it was
// compiled with (cpu_arch). jax_roi/_core/extension.py imports _jax_roi,
// asks it which levels this CPU runs (cpu_supports), and registers the
// widest copy that runs here.
#include <pybind11/pybind11.h>

#include <string>

#include "bindings.h"
#include "core/registry.h"
#include "xla/ffi/api/c_api.h"

namespace py = pybind11;
using jax_roi::bindings::targets;

#ifndef JAX_ROI_MODULE_NAME
#define JAX_ROI_MODULE_NAME _jax_roi
#endif
#ifndef JAX_ROI_CPU_ARCH_NAME
#define JAX_ROI_CPU_ARCH_NAME ""
#endif

namespace {

// Whether this CPU (and its operating system, which must save the wider
// registers) runs code built with -march=<level>, for the levels that
// variant modules are built for. Only x86-64 GCC/Clang builds can tell;
// elsewhere, false (the baseline module is used).
bool cpu_supports(const std::string& level) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
  // libgcc checks every feature of the level, and that the OS saves the
  // registers (XCR0).
  __builtin_cpu_init();
  if (level == "x86-64-v3") return __builtin_cpu_supports("x86-64-v3");
  if (level == "x86-64-v4") return __builtin_cpu_supports("x86-64-v4");
#elif defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // Compilers that do not know the level names: the levels' vector and
  // bit-manipulation features, one by one.
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                  __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt") &&
                  __builtin_cpu_supports("sse4.2");
  if (level == "x86-64-v3") return v3;
  if (level == "x86-64-v4") {
    return v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
  }
#else
  (void)level;
#endif
  return false;
}

}  // namespace

PYBIND11_MODULE(JAX_ROI_MODULE_NAME, m) {
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
  // The -march of this module's C++ code ("" for the compiler's default).
  m.attr("cpu_arch") = JAX_ROI_CPU_ARCH_NAME;
  m.def("cpu_supports", &cpu_supports, py::arg("level"),
        "Whether this CPU runs code built with -march=<level> (x86-64-v3 or x86-64-v4).");
}
