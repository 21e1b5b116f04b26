// The CUDA surface of the kernel headers (*_cuda.cuh) and of the launcher
// declarations (JAX_ROI_DECLARE_KERNEL in *_kernels.h), on three compilers:
//
//  * nvcc (__CUDACC__): <cuda_runtime.h>. JAX_ROI_CUDA_ARCH is __CUDA_ARCH__
//    in the device pass and 0 in the host pass: architecture-dependent code
//    tests JAX_ROI_CUDA_ARCH, never __CUDA_ARCH__ (core/types.h's half
//    conversions excepted: they pick device intrinsics). Dynamic shared
//    memory is declared with JAX_ROI_DYNAMIC_SHARED(type, name).
//  * a host C++ compiler with JAX_ROI_CUDA_EMULATION defined: the kernels run
//    on the CPU through core/cuda_emulation.h, which must provide
//      - __global__, __device__, __host__, __shared__: empty or host
//        equivalents; __forceinline__: `inline` (plus attributes if wanted:
//        non-template __device__ __forceinline__ helpers live in headers);
//      - dim3 (x, y, z; constructible from up to three unsigned values, the
//        missing ones 1), and blockIdx, threadIdx (x, y, z: unsigned int),
//        blockDim, gridDim (dim3), readable in kernel code;
//      - atomicAdd(float*, float) and atomicAdd(double*, double), returning
//        the old value; __syncthreads();
//      - cudaStream_t, cudaError_t, cudaSuccess, cudaGetErrorString(cudaError_t);
//      - cudaGetDeviceCount, cudaGetDevice, cudaSetDevice and
//        cudaFuncGetAttributes(cudaFuncAttributes*, const void* kernel)
//        (kernel preloading, core/cuda_launch.h);
//      - JAX_ROI_DYNAMIC_SHARED(type, name) (dynamic shared memory);
//      - in namespace jax_roi::cuda, the two functions below:
//          template <typename... P, typename... A>
//          cudaError_t launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block,
//                                    size_t shared_bytes, cudaStream_t stream,
//                                    A&&... args);
//          cudaError_t memset_async(void* p, int value, size_t bytes,
//                                   cudaStream_t stream);
//        launch_kernel runs kernel(args...) once for every thread of the
//        grid (each seeing its own blockIdx/threadIdx) and returns when all
//        have returned; memset_async is std::memset.
//  * a host C++ compiler otherwise (the FFI handlers, which only call the
//    launchers): <cuda_runtime_api.h>, for cudaStream_t and cudaError_t.
//
// Kernel headers launch only through core/cuda_launch.h's launch<kernel> and
// launch_over<kernel> (which register the kernel for preloading and call
// jax_roi::cuda::launch_kernel; never the <<<>>> syntax, which only nvcc
// parses) and clear memory only through jax_roi::cuda::memset_async.
#ifndef JAX_ROI_CSRC_CORE_CUDA_COMPAT_H_
#define JAX_ROI_CSRC_CORE_CUDA_COMPAT_H_

#if defined(__CUDACC__)

#include <cuda_runtime.h>

#include <cstddef>

#if defined(__CUDA_ARCH__)
#define JAX_ROI_CUDA_ARCH __CUDA_ARCH__
#else
#define JAX_ROI_CUDA_ARCH 0  // host pass: kernel bodies are not code-generated
#endif

// Dynamic shared memory of a kernel: `JAX_ROI_DYNAMIC_SHARED(float, buf);`
// declares `float* buf` (16-byte aligned, shared_bytes of launch_kernel).
// One per kernel; the same extern name in every kernel, typed unsigned
// char, is what nvcc accepts (the emulation's definition is a heap buffer:
// `extern __shared__` cannot be emulated).
#define JAX_ROI_DYNAMIC_SHARED(type, name)                               \
  extern __shared__ __align__(16) unsigned char jax_roi_dynamic_smem_[]; \
  type* name = reinterpret_cast<type*>(jax_roi_dynamic_smem_)

namespace jax_roi {
namespace cuda {

// Launches kernel on `stream`; the status of the launch itself (an invalid
// configuration, or an earlier asynchronous error).
template <typename... P, typename... A>
cudaError_t launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, A&&... args) {
  kernel<<<grid, block, shared_bytes, stream>>>(args...);
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

#include <cuda_runtime_api.h>

#endif

#endif  // JAX_ROI_CSRC_CORE_CUDA_COMPAT_H_
