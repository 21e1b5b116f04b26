// The CUDA emulation test module, _jax_roi_cuda_emulation_sm<arch>
// (CMakeLists.txt: JAX_ROI_BUILD_CUDA_EMULATION): the same sources as
// _jax_roi, compiled with JAX_ROI_CUDA_EMULATION and JAX_ROI_CUDA_ARCH=<arch>,
// so that every target's CUDA handler (core/ffi_target.h) runs the CUDA
// kernels on the host (core/cuda_emulation.h) as an XLA:CPU custom call.
// Exposes those handlers, registered under the target name +
// JAX_ROI_CUDA_EMULATION_SUFFIX (core/registry.h), and the emulation's
// controls. Used by tests/test_cuda_emulation.py; never installed.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings.h"
#include "core/cuda_compat.h"
#include "core/cuda_launch.h"
#include "core/kernel.h"
#include "core/registry.h"
#include "cuda_emulation_bindings.h"
#include "xla/ffi/api/c_api.h"

#if !defined(JAX_ROI_CUDA_EMULATION) || !defined(JAX_ROI_EMULATION_MODULE)
#error "build with -DJAX_ROI_CUDA_EMULATION and -DJAX_ROI_EMULATION_MODULE=<module name>"
#endif

namespace py = pybind11;

PYBIND11_MODULE(JAX_ROI_EMULATION_MODULE, m) {
  jax_roi::bindings::check_registrations();
  m.doc() = "jax_roi's CUDA kernels run on the CPU by the CUDA emulation (tests only).";
  // The emulated CUDA handlers, for platform "cpu" (the real CPU handlers
  // are _jax_roi's).
  m.def("cpu_targets",
        [] { return jax_roi::bindings::targets(jax_roi::Platform::kCudaEmulation); });
  m.attr("target_suffix") = JAX_ROI_CUDA_EMULATION_SUFFIX;
  m.attr("cuda_arch") = JAX_ROI_CUDA_ARCH;
  m.attr("ffi_api_version") = py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);

  jax_roi::bindings::def_emulation_controls(m);
  // Grid-stride launches with at most `blocks` blocks of `threads` threads
  // (0, 0: the real launch shape), to run the grid-stride loops over several
  // strides (core/cuda_launch.h).
  m.def("set_launch_limits", [](int64_t blocks, int threads) {
    jax_roi::cuda::launch_limits().blocks.store(blocks);
    jax_roi::cuda::launch_limits().threads.store(threads);
  });
  // The forward kernels ("per_output", "per_roi" or "nhwc_vec") and the
  // 32-bit indexing threshold of the per-RoI kernels (core/cuda_launch.h).
  m.def("set_forward_kernels", [](const std::string& name) {
    if (name != "per_output" && name != "per_roi" && name != "nhwc_vec") {
      throw py::value_error("forward kernels: 'per_output', 'per_roi' or 'nhwc_vec', got '" + name +
                            "'");
    }
    jax_roi::cuda::forward_kernels_ref().store(
        jax_roi::cuda::forward_kernels_from_name(name.c_str()));
  });
  m.def("forward_kernels", [] {
    switch (jax_roi::cuda::forward_kernels()) {
      case jax_roi::cuda::ForwardKernels::kPerOutput:
        return "per_output";
      case jax_roi::cuda::ForwardKernels::kNhwcVec:
        return "nhwc_vec";
      default:
        return "per_roi";
    }
  });
  // The atomic backward's kernels ("per_output" or "nhwc_vec").
  m.def("set_backward_kernels", [](const std::string& name) {
    if (name != "per_output" && name != "nhwc_vec") {
      throw py::value_error("backward kernels: 'per_output' or 'nhwc_vec', got '" + name + "'");
    }
    jax_roi::cuda::backward_kernels_ref().store(
        jax_roi::cuda::backward_kernels_from_name(name.c_str()));
  });
  m.def("backward_kernels", [] {
    return jax_roi::cuda::backward_kernels() == jax_roi::cuda::BackwardKernels::kNhwcVec
               ? "nhwc_vec"
               : "per_output";
  });
  m.def("set_index32_limit", [](int64_t n) { jax_roi::cuda::index32_limit_ref().store(n); });
  // Rows and columns per band and channels per thread of the deterministic
  // backward's owner tiles (0: the planner's choice); the bits do not depend
  // on them.
  m.def("set_owner_tiles", [](int64_t rows, int64_t cols, int64_t vec) {
    if (vec < 0 || vec > jax_roi::cuda::kMaxOwnerVec) throw py::value_error("vec: 0 to 4");
    auto& k = jax_roi::cuda::owner_knobs();
    k.rows.store(rows);
    k.cols.store(cols);
    k.vec.store(vec);
  });
  // Kernel preloading (the CUDA handlers' instantiate stage).
  m.def("registered_kernel_count", [] { return jax_roi::cuda::registered_kernel_count(); });
  m.def("kernel_loads", [] { return jax_roi::cuda::kernel_loads(); });
  m.def("preload_kernels", [] { return static_cast<int>(jax_roi::cuda::preload_kernels()); });
}
