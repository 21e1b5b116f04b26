// Precise RoI Pooling CUDA kernels and their launchers. The per-element math
// is prroi_pool_math.h, shared with the CPU kernels. Kernel code only: no
// XLA FFI, and launches go through core/cuda_compat.h, so that this header
// also compiles with a host compiler under JAX_ROI_CUDA_EMULATION.
// Instantiated by roi_kernels.cu.
#ifndef JAX_ROI_CSRC_PRROI_POOL_PRROI_POOL_CUDA_CUH_
#define JAX_ROI_CSRC_PRROI_POOL_PRROI_POOL_CUDA_CUH_

#include <cstdint>

#include "core/box.h"
#include "core/cuda_compat.h"
#include "core/cuda_launch.h"
#include "core/dims.h"
#include "core/types.h"
#include "prroi_pool/prroi_pool_kernels.h"
#include "prroi_pool/prroi_pool_math.h"

namespace jax_roi::cuda {

template <typename T, typename C>
__global__ void prroi_pool_forward_kernel(PrRoiForwardArgs<T, C> a, int64_t total) {
  const RoiDims& d = a.dims;
  const int64_t step = d.layout == Layout::kNCHW ? 1 : d.channels;
  for_each_output(d, total, [&](int64_t i, int64_t k, int64_t c, int64_t ph, int64_t pw) {
    const PrRoi<C> r = prroi_roi(read_box(a.rois, k, d), static_cast<C>(a.spatial_scale), d);
    const T* base = a.features + feature_index_hw(d, r.empty ? 0 : r.image, c, 0);
    store(a.output + i, prroi_output(base, step, r, ph, pw, d));
  });
}

template <typename T, typename C>
__global__ void prroi_pool_backward_kernel(PrRoiBackwardArgs<T, C> a, int64_t total) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t step = d.layout == Layout::kNCHW ? 1 : d.channels;
  for_each_output(d, total, [&](int64_t i, int64_t k, int64_t c, int64_t ph, int64_t pw) {
    const PrRoi<C> r = prroi_roi(read_box(a.rois, k, d), static_cast<C>(a.spatial_scale), d);
    if (r.empty) return;
    A* grad = a.grad_features + feature_index_hw(d, r.image, c, 0);
    const A g = load(a.grad_output + i);
    const A area = static_cast<A>(r.area);
    for_each_prroi_pixel(r, ph, pw, d, [&](int64_t hw, C w) {
      atomicAdd(grad + hw * step, (g * static_cast<A>(w)) / area);
    });
  });
}

// One block per RoI (a grid-stride loop over RoIs): the block's threads sum
// the RoI's outputs in kPrRoiGradLanes lanes, then combine the lanes by the
// fixed tree of prroi_pool_math.h: deterministic (no atomics) and
// bit-identical to the CPU kernel, whatever the block size.
template <typename T, typename C>
__global__ void prroi_pool_box_grad_kernel(PrRoiBoxGradArgs<T, C> a) {
  JAX_ROI_DYNAMIC_SHARED(PrRoiGradSums, lanes);  // kPrRoiGradLanes of them
  const RoiDims& d = a.dims;
  const int64_t row = roi_row_size(d);
  for (int64_t k = blockIdx.x; k < d.num_rois; k += gridDim.x) {
    C* out = a.grad_rois + k * row;
    const PrRoi<C> r = prroi_roi(read_box(a.rois, k, d), static_cast<C>(a.spatial_scale), d);
    // The same for every thread of the block: no thread skips a barrier.
    if (r.empty || d.channels == 0) {
      for (int64_t j = threadIdx.x; j < row; j += blockDim.x) out[j] = C(0);
      continue;
    }
    for (int64_t l = threadIdx.x; l < kPrRoiGradLanes; l += blockDim.x) {
      lanes[l] = prroi_lane_sum(a, r, k, l);
    }
    __syncthreads();
    for (int64_t s = kPrRoiGradLanes / 2; s > 0; s /= 2) {
      for (int64_t l = threadIdx.x; l < s; l += blockDim.x) lanes[l].merge(lanes[l + s]);
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      for (int64_t j = 0; j < row - 4; ++j) out[j] = C(0);
      lanes[0].write(a.spatial_scale, out + (row - 4));
    }
    __syncthreads();  // lanes[0] is read before the next RoI's lanes are written
  }
}

template <typename T, typename C>
cudaError_t prroi_pool_forward(cudaStream_t stream, const PrRoiForwardArgs<T, C>& args) {
  return launch_per_output<prroi_pool_forward_kernel<T, C>>(stream, args);
}

template <typename T, typename C>
cudaError_t prroi_pool_backward(cudaStream_t stream, const PrRoiBackwardArgs<T, C>& args) {
  const RoiDims& d = args.dims;
  const cudaError_t err =
      zero_async(args.grad_features, d.batch * d.channels * d.height * d.width, stream);
  if (err != cudaSuccess) return err;
  return launch_per_output<prroi_pool_backward_kernel<T, C>>(stream, args);
}

template <typename T, typename C>
cudaError_t prroi_pool_box_grad(cudaStream_t stream, const PrRoiBoxGradArgs<T, C>& args) {
  return launch_per_block<prroi_pool_box_grad_kernel<T, C>>(
      args.dims.num_rois, sizeof(PrRoiGradSums) * kPrRoiGradLanes, stream, args);
}

}  // namespace jax_roi::cuda

#endif  // JAX_ROI_CSRC_PRROI_POOL_PRROI_POOL_CUDA_CUH_
