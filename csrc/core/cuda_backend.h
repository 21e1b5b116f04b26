// The CUDA back ends of the FFI handlers: call a CUDA launcher on a stream.
// Host code, compiled by the host compiler (never nvcc: the FFI headers warn
// there).
//
//  * CudaBackend: on a GPU, XLA's stream (the binding's .Ctx<CudaStream>()).
//  * EmulatedCudaBackend (builds with JAX_ROI_CUDA_EMULATION): the same
//    launchers compiled for the host (core/cuda_emulation.h), run as an
//    XLA:CPU custom call (the binding's .Ctx<ffi::ThreadPool>(), unused: an
//    emulated launch runs on the calling thread) with a null stream.
//
// Both are CudaBackendOn<Streams>: only where the stream comes from, and how
// the launch is wrapped, differ; a CUDA error becomes an ffi::Error naming
// the computation either way.
#ifndef JAX_ROI_CSRC_CORE_CUDA_BACKEND_H_
#define JAX_ROI_CSRC_CORE_CUDA_BACKEND_H_

#include <string>

#include "core/cuda_compat.h"
#include "core/ffi_helpers.h"

#ifdef JAX_ROI_CUDA_EMULATION
#include "core/cpu_backend.h"
#include "core/task_runner.h"
#endif

namespace jax_roi {

inline ffi::Error cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(what) + ": CUDA error: " + cudaGetErrorString(err));
}

// Streams: Context (what the handler receives), BindingContext (what its binding's
// .Ctx<>() names) and run(ctx, f), which calls f(cudaStream_t) -> ffi::Error.
template <typename Streams>
struct CudaBackendOn {
  using Context = typename Streams::Context;
  using BindingContext = typename Streams::BindingContext;

  // Calls kernel.cuda(stream, args): see JAX_ROI_KERNEL (core/ffi_target.h).
  // `what` names the computation in a CUDA error.
  template <typename Kernel, typename Args>
  static ffi::Error run(Context ctx, const char* what, const Kernel& kernel, const Args& args) {
    return Streams::run(
        ctx, [&](cudaStream_t stream) { return cuda_status(kernel.cuda(stream, args), what); });
  }
};

// XLA's compute stream for the call.
struct XlaStream {
  using Context = cudaStream_t;
  using BindingContext = ffi::PlatformStream<cudaStream_t>;
  template <typename F>
  static ffi::Error run(cudaStream_t stream, F&& f) {
    return f(stream);
  }
};

using CudaStream = XlaStream::BindingContext;
using CudaBackend = CudaBackendOn<XlaStream>;

#ifdef JAX_ROI_CUDA_EMULATION
// The emulated "stream": none (launches are synchronous). Run through the
// CPU back end's run_kernel for what every XLA:CPU custom call needs: IEEE
// subnormals (XLA:CPU sets flush-to-zero; a GPU without fast math keeps
// subnormals) and exceptions turned into errors.
struct EmulatedStream {
  using Context = ffi::ThreadPool;
  using BindingContext = ffi::ThreadPool;
  template <typename F>
  static ffi::Error run(Context pool, F&& f) {
    ffi::Error status = ffi::Error::Success();
    JAX_ROI_RETURN_IF_ERROR(
        run_kernel(pool, [&](cpu::TaskRunner&) { status = f(cudaStream_t{nullptr}); }));
    return status;
  }
};

using EmulatedCudaBackend = CudaBackendOn<EmulatedStream>;
#endif

}  // namespace jax_roi

// The FFI instantiate stage of every CUDA handler (core/cuda_backend.cc):
// loads every kernel of the module (cuda::preload_kernels(), core/kernel.h)
// so that none is loaded lazily while XLA captures a CUDA graph.
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxRoiPreloadCudaKernels);

#endif  // JAX_ROI_CSRC_CORE_CUDA_BACKEND_H_
