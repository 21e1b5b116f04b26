// RoIPool CUDA kernels and their launchers. The per-element math is
// roi_pool_math.h, shared with the CPU kernels. Kernel code only: no XLA FFI,
// and launches go through core/cuda_compat.h, so that this header also
// compiles with a host compiler under JAX_ROI_CUDA_EMULATION.
// Instantiated by roi_kernels.cu.
#ifndef JAX_ROI_CSRC_ROI_POOL_ROI_POOL_CUDA_CUH_
#define JAX_ROI_CSRC_ROI_POOL_ROI_POOL_CUDA_CUH_

#include <cstdint>

#include "core/box.h"
#include "core/cuda_compat.h"
#include "core/cuda_launch.h"
#include "core/dims.h"
#include "core/types.h"
#include "roi_pool/roi_pool_kernels.h"
#include "roi_pool/roi_pool_math.h"

namespace jax_roi::cuda {

// Output element i, bin (ph, pw) of channel c of a RoI: its maximum and argmax.
template <typename T, typename C>
__device__ __forceinline__ void store_pool_output(const PoolForwardArgs<T, C>& a, int64_t i,
                                                  const Box<C>& box, const PoolRoi<C>& r,
                                                  int64_t c, int64_t ph, int64_t pw) {
  const RoiDims& d = a.dims;
  acc_t<T> value = acc_t<T>(0);
  int32_t index = -1;
  if (!r.empty) {
    const Window rows = pool_bin(ph, r.bin_h, r.start_h, d.height);
    const Window cols = pool_bin(pw, r.bin_w, r.start_w, d.width);
    if (!rows.empty() && !cols.empty()) {
      const int64_t stride_h = d.layout == Layout::kNCHW ? d.width : d.width * d.channels;
      const int64_t stride_w = d.layout == Layout::kNCHW ? 1 : d.channels;
      const T* base = a.features + feature_index(d, box.image, c, 0, 0);
      value = window_max(base, stride_h, stride_w, d.width, rows, cols, &index);
    }
  }
  store(a.output + i, value);
  if (a.argmax != nullptr) a.argmax[i] = index;
}

template <typename T, typename C>
__global__ void roi_pool_forward_kernel(PoolForwardArgs<T, C> a, int64_t total) {
  const RoiDims& d = a.dims;
  const C scale = static_cast<C>(a.spatial_scale);
  for_each_output(d, total, [&](int64_t i, int64_t k, int64_t c, int64_t ph, int64_t pw) {
    const Box<C> box = read_box(a.rois, k, d);
    const PoolRoi<C> r = pool_roi(box, scale, d);
    store_pool_output(a, i, box, r, c, ph, pw);
  });
}

// Per-RoI forward (ForwardKernels::kPerRoi; core/cuda_launch.h's
// launch_per_roi): a block per (RoI, chunk of its outputs), the RoI's
// geometry computed once per block and the outputs' offsets decoded in 32-bit
// arithmetic when they fit. The same bits as the per-output kernel.
template <typename T, typename C>
__global__ void roi_pool_forward_per_roi_kernel(PoolForwardArgs<T, C> a, int64_t chunks,
                                                int64_t chunk, int64_t index32_limit) {
  const RoiDims& d = a.dims;
  const C scale = static_cast<C>(a.spatial_scale);
  const int64_t per_roi = d.channels * d.pooled_height * d.pooled_width;
  const bool narrow = per_roi <= index32_limit;
  for (int64_t item = blockIdx.x; item < d.num_rois * chunks; item += gridDim.x) {
    const int64_t k = item / chunks;
    const int64_t begin = (item - k * chunks) * chunk;
    const int64_t end = begin + chunk < per_roi ? begin + chunk : per_roi;
    const Box<C> box = read_box(a.rois, k, d);
    const PoolRoi<C> r = pool_roi(box, scale, d);
    for_each_roi_output(d, begin, end, narrow, [&](int64_t j, int64_t c, int64_t ph, int64_t pw) {
      store_pool_output(a, k * per_roi + j, box, r, c, ph, pw);
    });
  }
}

template <typename T, typename C>
__global__ void roi_pool_backward_kernel(PoolBackwardArgs<T, C> a, int64_t total) {
  const RoiDims& d = a.dims;
  const int64_t hw_size = d.height * d.width;
  for (int64_t i = grid_thread_index(); i < total; i += grid_thread_count()) {
    const int64_t hw = a.argmax[i];
    if (hw < 0 || hw >= hw_size) continue;
    int64_t k, c, ph, pw;
    split_output_index(d, i, &k, &c, &ph, &pw);
    const int64_t image = read_box(a.rois, k, d).image;
    if (image < 0) continue;
    atomicAdd(a.grad_features + feature_index_hw(d, image, c, hw), load(a.grad_output + i));
  }
}

template <typename T, typename C>
cudaError_t roi_pool_forward(cudaStream_t stream, const PoolForwardArgs<T, C>& args) {
  if (forward_kernels() == ForwardKernels::kPerRoi) {
    return launch_per_roi<roi_pool_forward_per_roi_kernel<T, C>>(stream, args);
  }
  return launch_per_output<roi_pool_forward_kernel<T, C>>(stream, args);
}

template <typename T, typename C>
cudaError_t roi_pool_backward(cudaStream_t stream, const PoolBackwardArgs<T, C>& args) {
  const RoiDims& d = args.dims;
  const int64_t grad_size = d.batch * d.channels * d.height * d.width;
  if (grad_size == 0) return cudaSuccess;
  const cudaError_t err = zero_async(args.grad_features, grad_size, stream);
  if (err != cudaSuccess) return err;
  return launch_per_output<roi_pool_backward_kernel<T, C>>(stream, args);
}

}  // namespace jax_roi::cuda

#endif  // JAX_ROI_CSRC_ROI_POOL_ROI_POOL_CUDA_CUH_
