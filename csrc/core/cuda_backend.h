// The CUDA back end of the FFI handlers: calls a CUDA launcher on XLA's
// stream (the binding's .Ctx<CudaStream>()). Host code, compiled by the host
// compiler (never nvcc: the FFI headers warn there). The handlers issue the
// same asynchronous work on every call, never synchronise and never
// allocate, so they are safe to capture into CUDA graphs (XLA command
// buffers): core/ffi_target.h declares them kCmdBufferCompatible.
#ifndef JAX_ROI_CSRC_CORE_CUDA_BACKEND_H_
#define JAX_ROI_CSRC_CORE_CUDA_BACKEND_H_

#include <string>

#include "core/cuda_compat.h"
#include "core/ffi_helpers.h"

namespace jax_roi {

inline ffi::Error cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(what) + ": CUDA error: " + cudaGetErrorString(err));
}

using CudaStream = ffi::PlatformStream<cudaStream_t>;

struct CudaBackend {
  using Context = cudaStream_t;

  // Calls kernel.cuda(stream, args): see JAX_ROI_KERNEL (core/ffi_target.h).
  // `what` names the computation in a CUDA error.
  template <typename Kernel, typename Args>
  static ffi::Error run(Context stream, const char* what, const Kernel& kernel,
                        const Args& args) {
    return cuda_status(kernel.cuda(stream, args), what);
  }
};

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_CUDA_BACKEND_H_
