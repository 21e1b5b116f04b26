// The FFI instantiate stage shared by every CUDA handler (CUDA builds and the
// CUDA emulation build; nothing otherwise).
#if defined(JAX_ROI_WITH_CUDA) || defined(JAX_ROI_CUDA_EMULATION)

#include "core/cuda_backend.h"

#include "core/ffi_helpers.h"
#include "core/kernel.h"

namespace jax_roi {
namespace {

// Runs once per call site when XLA builds the executable (no stream, no
// buffers, no device: XLA passes none at this stage); only the first call
// of the process loads anything (cuda::preload_kernels() is idempotent per
// device). A failure (e.g. no code for this GPU) fails the compilation with
// the CUDA error, instead of the first execution.
ffi::Error PreloadCudaKernels() {
  return cuda_status(cuda::preload_kernels(), "jax_roi: loading the CUDA kernels");
}

}  // namespace
}  // namespace jax_roi

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiPreloadCudaKernels, jax_roi::PreloadCudaKernels,
                              xla::ffi::Ffi::BindInstantiate());

#endif
