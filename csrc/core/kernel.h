// The interface of an op's kernels, declared once for every back end. An op
// declares each computation with the type of its argument struct (plain
// data, templated on the storage type T and the coordinate type C):
//
//   JAX_ROI_DECLARE_KERNEL(foo_forward, FooForwardArgs)
//
// which declares, in namespace jax_roi,
//   template <typename T, typename C>
//   void cpu::foo_forward(const FooForwardArgs<T, C>&, cpu::TaskRunner&);
// and, where CUDA types exist (CUDA builds, nvcc, the host emulation),
//   template <typename T, typename C>
//   cudaError_t cuda::foo_forward(cudaStream_t, const FooForwardArgs<T, C>&);
// (asynchronous on the stream: no synchronisation, no allocation).
//
// The op's CPU source defines the CPU kernel and instantiates it with
// JAX_ROI_INSTANTIATE_CPU_KERNEL(foo_forward, FooForwardArgs); its
// <op>_cuda.cuh defines the launcher, which roi_kernels.cu instantiates
// with JAX_ROI_INSTANTIATE_CUDA_KERNEL(foo_forward, FooForwardArgs): both for
// every pair of JAX_ROI_FOR_EACH_TYPE_PAIR. The FFI handlers run them with
// JAX_ROI_KERNEL(foo_forward) (core/ffi_target.h). No XLA FFI here.
#ifndef JAX_ROI_CSRC_CORE_KERNEL_H_
#define JAX_ROI_CSRC_CORE_KERNEL_H_

#include "core/task_runner.h"
#include "core/types.h"

#if defined(JAX_ROI_WITH_CUDA) || defined(__CUDACC__) || defined(JAX_ROI_CUDA_EMULATION)
#include "core/cuda_compat.h"
namespace jax_roi {
namespace cuda {
// Loads the code of every CUDA kernel of the module on the current device,
// once per device per process (core/cuda_launch.h's
// preload_registered_kernels(); defined by the CUDA translation unit,
// roi_kernels.cu). The CUDA handlers' FFI instantiate stage calls it, so
// that no kernel is loaded lazily during CUDA graph capture.
cudaError_t preload_kernels();
}  // namespace cuda
}  // namespace jax_roi
#define JAX_ROI_DECLARE_CUDA_KERNEL_(name, Args)                 \
  namespace cuda {                                               \
  template <typename T, typename C>                              \
  cudaError_t name(cudaStream_t stream, const Args<T, C>& args); \
  }
#else
#define JAX_ROI_DECLARE_CUDA_KERNEL_(name, Args)
#endif

// Use inside namespace jax_roi.
#define JAX_ROI_DECLARE_KERNEL(name, Args)               \
  namespace cpu {                                        \
  template <typename T, typename C>                      \
  void name(const Args<T, C>& args, TaskRunner& runner); \
  }                                                      \
  JAX_ROI_DECLARE_CUDA_KERNEL_(name, Args)

// Use at global scope, after the definitions.
#define JAX_ROI_INSTANTIATE_CPU_KERNEL_(T, C, name, Args) \
  template void jax_roi::cpu::name<T, C>(const jax_roi::Args<T, C>&, jax_roi::cpu::TaskRunner&);
#define JAX_ROI_INSTANTIATE_CPU_KERNEL(name, Args) \
  JAX_ROI_FOR_EACH_TYPE_PAIR(JAX_ROI_INSTANTIATE_CPU_KERNEL_, name, Args)

#define JAX_ROI_INSTANTIATE_CUDA_KERNEL_(T, C, name, Args) \
  template cudaError_t jax_roi::cuda::name<T, C>(cudaStream_t, const jax_roi::Args<T, C>&);
#define JAX_ROI_INSTANTIATE_CUDA_KERNEL(name, Args) \
  JAX_ROI_FOR_EACH_TYPE_PAIR(JAX_ROI_INSTANTIATE_CUDA_KERNEL_, name, Args)

#endif  // JAX_ROI_CSRC_CORE_KERNEL_H_
