// Stand-in for core/cuda_compat.h in the emulation runtime's own tests: the
// toy kernels compile with nvcc against the real CUDA runtime and with the
// host compiler against core/cuda_emulation.h. The __CUDACC__ branch is the
// reference nvcc definition of the emulation's contract (launch_kernel,
// memset_async, JAX_ROI_DYNAMIC_SHARED, JAX_ROI_CUDA_ARCH).
#ifndef JAX_ROI_TESTS_CUDA_EMULATION_TOY_COMPAT_H_
#define JAX_ROI_TESTS_CUDA_EMULATION_TOY_COMPAT_H_

#if defined(__CUDACC__)
#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#if defined(__CUDA_ARCH__)
#define JAX_ROI_CUDA_ARCH __CUDA_ARCH__
#else
#define JAX_ROI_CUDA_ARCH 0
#endif

#define JAX_ROI_DYNAMIC_SHARED(type, name)                                  \
  extern __shared__ __align__(16) unsigned char jax_roi_dynamic_smem_[]; \
  type* name = reinterpret_cast<type*>(jax_roi_dynamic_smem_)

namespace jax_roi {
namespace cuda {
template <typename... P, typename... A>
cudaError_t launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, A&&... args) {
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<A>(args)...);
  return cudaGetLastError();
}
inline cudaError_t memset_async(void* p, int value, size_t bytes, cudaStream_t stream) {
  return cudaMemsetAsync(p, value, bytes, stream);
}
}  // namespace cuda
}  // namespace jax_roi

#elif defined(JAX_ROI_CUDA_EMULATION)
#include "core/cuda_emulation.h"
#else
#error "compile with nvcc or define JAX_ROI_CUDA_EMULATION"
#endif

#endif  // JAX_ROI_TESTS_CUDA_EMULATION_TOY_COMPAT_H_
