// Grid helpers of the CUDA kernels, op-agnostic: grid-stride loops over
// output elements, their launch configuration and the launch itself. Only
// core/cuda_compat.h's surface is used, so this compiles under nvcc and,
// with JAX_ROI_CUDA_EMULATION, under a host compiler.
#ifndef JAX_ROI_CSRC_CORE_CUDA_LAUNCH_H_
#define JAX_ROI_CSRC_CORE_CUDA_LAUNCH_H_

#include <cstddef>
#include <cstdint>
#include <utility>

#include "core/cuda_compat.h"
#include "core/dims.h"

namespace jax_roi {
namespace cuda {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535LL * 64;

// Blocks for n elements: one thread each, at most kMaxBlocks blocks (the
// grid-stride loops cover the rest), at least one.
inline int64_t num_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks);
}

// Start and step of a grid-stride loop:
//   for (int64_t i = grid_thread_index(); i < n; i += grid_thread_count())
__device__ __forceinline__ int64_t grid_thread_index() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_thread_count() {
  return static_cast<int64_t>(blockDim.x) * gridDim.x;
}

// Splits a flat output index into (k, c, ph, pw). Consecutive threads take
// consecutive output elements: pw fastest in NCHW, c fastest in NHWC, so
// output writes coalesce in both layouts.
__device__ __forceinline__ void split_output_index(const RoiDims& d, int64_t i, int64_t* k,
                                                   int64_t* c, int64_t* ph, int64_t* pw) {
  if (d.layout == Layout::kNCHW) {
    *pw = i % d.pooled_width;
    i /= d.pooled_width;
    *ph = i % d.pooled_height;
    i /= d.pooled_height;
    *c = i % d.channels;
    *k = i / d.channels;
  } else {
    *c = i % d.channels;
    i /= d.channels;
    *pw = i % d.pooled_width;
    i /= d.pooled_width;
    *ph = i % d.pooled_height;
    *k = i / d.pooled_height;
  }
}

// The grid-stride loop of a kernel with one thread per output element:
// f(i, k, c, ph, pw) for this thread's elements i < total.
template <typename F>
__device__ __forceinline__ void for_each_output(const RoiDims& d, int64_t total, F&& f) {
  for (int64_t i = grid_thread_index(); i < total; i += grid_thread_count()) {
    int64_t k, c, ph, pw;
    split_output_index(d, i, &k, &c, &ph, &pw);
    f(i, k, c, ph, pw);
  }
}

// Launches a grid-stride kernel over n elements on `stream`: nothing at all
// when n is 0 (CUDA rejects a 0-block grid).
template <typename... P, typename... A>
cudaError_t launch_over(int64_t n, void (*kernel)(P...), cudaStream_t stream, A&&... args) {
  if (n <= 0) return cudaSuccess;
  return launch_kernel(kernel, dim3(static_cast<unsigned int>(num_blocks(n))), dim3(kThreads),
                       0, stream, std::forward<A>(args)...);
}

// Zeroes n elements at p on `stream` (nothing when n is 0).
template <typename P>
cudaError_t zero_async(P* p, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return memset_async(p, 0, sizeof(P) * static_cast<size_t>(n), stream);
}

}  // namespace cuda
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_CUDA_LAUNCH_H_
