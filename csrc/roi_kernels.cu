// CUDA kernels of the RoI operators. The per-element math is roi_math.h,
// shared with the CPU kernels.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "roi_kernels.h"
#include "roi_math.h"

namespace jax_roi {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535LL * 64;

int64_t num_blocks(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
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

template <typename T, typename C>
__global__ void roi_pool_forward_kernel(PoolForwardArgs<T, C> a, int64_t total) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const C scale = static_cast<C>(a.spatial_scale);
  const int64_t stride_h = d.layout == Layout::kNCHW ? d.width : d.width * d.channels;
  const int64_t stride_w = d.layout == Layout::kNCHW ? 1 : d.channels;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t k, c, ph, pw;
    split_output_index(d, i, &k, &c, &ph, &pw);
    const Box<C> box = read_box(a.rois, k, d);
    const PoolRoi<C> r = pool_roi(box, scale, d);
    A value = A(0);
    int32_t index = -1;
    if (!r.empty) {
      const Window rows = pool_bin(ph, r.bin_h, r.start_h, d.height);
      const Window cols = pool_bin(pw, r.bin_w, r.start_w, d.width);
      if (!rows.empty() && !cols.empty()) {
        const T* base = a.features + feature_index(d, box.image, c, 0, 0);
        value = window_max(base, stride_h, stride_w, d.width, rows, cols, &index);
      }
    }
    store(a.output + i, value);
    if (a.argmax != nullptr) a.argmax[i] = index;
  }
}

template <typename T, typename C>
__global__ void roi_pool_backward_kernel(PoolBackwardArgs<T, C> a, int64_t total) {
  const RoiDims& d = a.dims;
  const int64_t hw_size = d.height * d.width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t hw = a.argmax[i];
    if (hw < 0 || hw >= hw_size) continue;
    int64_t k, c, ph, pw;
    split_output_index(d, i, &k, &c, &ph, &pw);
    const int64_t image = read_box(a.rois, k, d).image;
    if (image < 0) continue;
    atomicAdd(a.grad_features + feature_index_hw(d, image, c, hw), load(a.grad_output + i));
  }
}

}  // namespace

template <typename T, typename C>
cudaError_t roi_pool_forward(cudaStream_t stream, const PoolForwardArgs<T, C>& args) {
  const RoiDims& d = args.dims;
  const int64_t total = d.num_rois * d.channels * d.pooled_height * d.pooled_width;
  if (total == 0) return cudaSuccess;
  roi_pool_forward_kernel<T, C><<<num_blocks(total), kThreads, 0, stream>>>(args, total);
  return cudaGetLastError();
}

template <typename T, typename C>
cudaError_t roi_pool_backward(cudaStream_t stream, const PoolBackwardArgs<T, C>& args) {
  const RoiDims& d = args.dims;
  const int64_t grad_size = d.batch * d.channels * d.height * d.width;
  if (grad_size == 0) return cudaSuccess;
  cudaError_t err =
      cudaMemsetAsync(args.grad_features, 0, sizeof(acc_t<T>) * grad_size, stream);
  if (err != cudaSuccess) return err;
  const int64_t total = d.num_rois * d.channels * d.pooled_height * d.pooled_width;
  if (total == 0) return cudaSuccess;
  roi_pool_backward_kernel<T, C><<<num_blocks(total), kThreads, 0, stream>>>(args, total);
  return cudaGetLastError();
}

#define JAX_ROI_INSTANTIATE_POOL(T, C)                                                     \
  template cudaError_t roi_pool_forward<T, C>(cudaStream_t, const PoolForwardArgs<T, C>&); \
  template cudaError_t roi_pool_backward<T, C>(cudaStream_t, const PoolBackwardArgs<T, C>&);
JAX_ROI_FOR_EACH_TYPE_PAIR(JAX_ROI_INSTANTIATE_POOL)
#undef JAX_ROI_INSTANTIATE_POOL

}  // namespace cuda
}  // namespace jax_roi
