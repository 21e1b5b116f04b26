// XLA FFI handlers of the CUDA kernels: decode and validate (ffi_handlers.h),
// then launch on XLA's stream. The handlers issue the same asynchronous work
// on every call, never synchronise and never allocate, so they are safe to
// capture into CUDA graphs (XLA command buffers).
#include <cuda_runtime_api.h>

#include <string>

#include "ffi_handlers.h"
#include "roi_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace jax_roi {
namespace {

ffi::Error cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(what) + ": CUDA error: " + cudaGetErrorString(err));
}

struct CudaBackend {
  using Context = cudaStream_t;

  template <typename T, typename C>
  static ffi::Error roi_pool_forward(Context stream, const PoolForwardArgs<T, C>& args) {
    return cuda_status(cuda::roi_pool_forward(stream, args), "roi_pool");
  }

  template <typename T, typename C>
  static ffi::Error roi_pool_backward(Context stream, const PoolBackwardArgs<T, C>& args) {
    return cuda_status(cuda::roi_pool_backward(stream, args), "roi_pool backward");
  }

  template <typename T, typename C>
  static ffi::Error roi_align_forward(Context stream, const AlignForwardArgs<T, C>& args) {
    return cuda_status(cuda::roi_align_forward(stream, args), "roi_align");
  }

  template <typename T, typename C>
  static ffi::Error roi_align_backward(Context stream, const AlignBackwardArgs<T, C>& args) {
    return cuda_status(cuda::roi_align_backward(stream, args), "roi_align backward");
  }

  template <typename T, typename C>
  static ffi::Error roi_align_box_grad(Context stream, const AlignBoxGradArgs<T, C>& args) {
    return cuda_status(cuda::roi_align_box_grad(stream, args), "roi_align box gradient");
  }
};

using Stream = ffi::PlatformStream<cudaStream_t>;

}  // namespace
}  // namespace jax_roi

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiPoolForwardCuda,
                              jax_roi::RoiPoolForward<jax_roi::CudaBackend>,
                              jax_roi::RoiPoolForwardBinding<jax_roi::Stream>(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiPoolBackwardCuda,
                              jax_roi::RoiPoolBackward<jax_roi::CudaBackend>,
                              jax_roi::RoiPoolBackwardBinding<jax_roi::Stream>(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiAlignForwardCuda,
                              jax_roi::RoiAlignForward<jax_roi::CudaBackend>,
                              jax_roi::RoiAlignForwardBinding<jax_roi::Stream>(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiAlignBackwardCuda,
                              jax_roi::RoiAlignBackward<jax_roi::CudaBackend>,
                              jax_roi::RoiAlignBackwardBinding<jax_roi::Stream>(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiAlignBoxGradCuda,
                              jax_roi::RoiAlignBoxGrad<jax_roi::CudaBackend>,
                              jax_roi::RoiAlignBoxGradBinding<jax_roi::Stream>(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiMultiScaleForwardCuda, jax_roi::MultiScaleForward<jax_roi::CudaBackend>,
                              jax_roi::MultiScaleForwardBinding<jax_roi::Stream>(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiMultiScaleBackwardCuda, jax_roi::MultiScaleBackward<jax_roi::CudaBackend>,
                              jax_roi::MultiScaleBackwardBinding<jax_roi::Stream>(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiMultiScaleBoxGradCuda, jax_roi::MultiScaleBoxGrad<jax_roi::CudaBackend>,
                              jax_roi::MultiScaleBoxGradBinding<jax_roi::Stream>(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
