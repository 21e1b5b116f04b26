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

template <typename T, typename C>
__global__ void roi_align_forward_kernel(AlignForwardArgs<T, C> a, int64_t total) {
  using A = acc_t<T>;
  const AlignOptions& o = a.options;
  const int64_t step = a.dims.layout == Layout::kNCHW ? 1 : a.dims.channels;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t k, c, ph, pw;
    split_output_index(a.dims, i, &k, &c, &ph, &pw);
    const Box<C> box = read_box(a.rois, k, a.dims);
    const FeatureLevel<const T> level = a.levels[roi_level(box, a.map)];
    const RoiDims d = level_dims(a.dims, level);
    const AlignRoi<C> r =
        align_roi(box, static_cast<C>(level.spatial_scale), o.aligned, o.sampling_ratio, d);
    const AlignBin b = align_bin(r, ph, pw, d);
    const T* base = level.data + feature_index_hw(d, r.empty ? 0 : box.image, c, 0);
    if (!o.max_mode) {
      store(a.output + i, align_output_avg(base, step, r, b, ph, pw, d));
    } else {
      const MaxSample<A> m = align_output_max(base, step, r, b, ph, pw, d);
      store(a.output + i, m.value);
      if (a.argmax_y != nullptr) {
        a.argmax_y[i] = static_cast<int32_t>(m.iy);
        a.argmax_x[i] = static_cast<int32_t>(m.ix);
      }
    }
  }
}

template <typename T, typename C>
__global__ void roi_align_backward_kernel(AlignBackwardArgs<T, C> a, int64_t total) {
  using A = acc_t<T>;
  const AlignOptions& o = a.options;
  const int64_t step = a.dims.layout == Layout::kNCHW ? 1 : a.dims.channels;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    int64_t k, c, ph, pw;
    split_output_index(a.dims, i, &k, &c, &ph, &pw);
    const Box<C> box = read_box(a.rois, k, a.dims);
    if (box.image < 0) continue;
    const FeatureLevel<A> level = a.levels[roi_level(box, a.map)];
    const RoiDims d = level_dims(a.dims, level);
    const int64_t W = d.width;
    const AlignRoi<C> r =
        align_roi(box, static_cast<C>(level.spatial_scale), o.aligned, o.sampling_ratio, d);
    A* grad = level.data + feature_index_hw(d, box.image, c, 0);
    const A g = load(a.grad_output + i);
    const CountDivider<A> div(o.max_mode ? A(1) : static_cast<A>(r.count));
    auto scatter = [&](const Bilinear<C>& s) {
      atomicAdd(grad + (s.y_low * W + s.x_low) * step, div(g * static_cast<A>(s.w1)));
      atomicAdd(grad + (s.y_low * W + s.x_high) * step, div(g * static_cast<A>(s.w2)));
      atomicAdd(grad + (s.y_high * W + s.x_low) * step, div(g * static_cast<A>(s.w3)));
      atomicAdd(grad + (s.y_high * W + s.x_high) * step, div(g * static_cast<A>(s.w4)));
    };
    if (!o.max_mode) {
      for_each_sample(r, align_bin(r, ph, pw, d), ph, pw, d,
                      [&](int64_t, int64_t, const Bilinear<C>& s) { scatter(s); });
    } else {
      const Bilinear<C> s = winning_sample(r, ph, pw, a.argmax_y[i], a.argmax_x[i], d);
      if (s.valid) scatter(s);
    }
  }
}

// One thread per RoI: sums over channels, bins and samples in a fixed order
// (deterministic, no atomics).
template <typename T, typename C>
__global__ void roi_align_box_grad_kernel(AlignBoxGradArgs<T, C> a) {
  const AlignOptions& o = a.options;
  const int64_t step = a.dims.layout == Layout::kNCHW ? 1 : a.dims.channels;
  const int64_t row = a.dims.rois_per_image > 0 ? 4 : 5;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       k < a.dims.num_rois; k += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    C* out = a.grad_rois + k * row;
    for (int64_t j = 0; j < row; ++j) out[j] = C(0);
    const Box<C> box = read_box(a.rois, k, a.dims);
    if (box.image < 0) continue;
    const FeatureLevel<const T> level = a.levels[roi_level(box, a.map)];
    const RoiDims d = level_dims(a.dims, level);
    const AlignRoi<C> r =
        align_roi(box, static_cast<C>(level.spatial_scale), o.aligned, o.sampling_ratio, d);
    if (r.empty) continue;
    BoxGradSums sums;
    const double count = o.max_mode ? 1.0 : static_cast<double>(r.count);
    for (int64_t c = 0; c < d.channels; ++c) {
      const T* base = level.data + feature_index_hw(d, box.image, c, 0);
      for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
        for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
          const int64_t o_index = output_index(d, k, c, ph, pw);
          const double g = static_cast<double>(load(a.grad_output + o_index)) / count;
          const int64_t wy = o.max_mode ? a.argmax_y[o_index] : -1;
          const int64_t wx = o.max_mode ? a.argmax_x[o_index] : -1;
          align_box_grad_output(base, step, r, ph, pw, d, o.max_mode, wy, wx, g, &sums);
        }
      }
    }
    sums.write(r, level.spatial_scale, d, out + (row - 4));
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

template <typename T, typename C>
cudaError_t roi_align_forward(cudaStream_t stream, const AlignForwardArgs<T, C>& args) {
  const RoiDims& d = args.dims;
  const int64_t total = d.num_rois * d.channels * d.pooled_height * d.pooled_width;
  if (total == 0) return cudaSuccess;
  roi_align_forward_kernel<T, C><<<num_blocks(total), kThreads, 0, stream>>>(args, total);
  return cudaGetLastError();
}

template <typename T, typename C>
cudaError_t roi_align_backward(cudaStream_t stream, const AlignBackwardArgs<T, C>& args) {
  const RoiDims& d = args.dims;
  for (int32_t l = 0; l < (args.map.num_levels > 1 ? args.map.num_levels : 1); ++l) {
    const int64_t size =
        d.batch * d.channels * args.levels[l].height * args.levels[l].width;
    if (size == 0) continue;
    cudaError_t err =
        cudaMemsetAsync(args.levels[l].data, 0, sizeof(acc_t<T>) * size, stream);
    if (err != cudaSuccess) return err;
  }
  const int64_t total = d.num_rois * d.channels * d.pooled_height * d.pooled_width;
  if (total == 0) return cudaSuccess;
  roi_align_backward_kernel<T, C><<<num_blocks(total), kThreads, 0, stream>>>(args, total);
  return cudaGetLastError();
}

template <typename T, typename C>
cudaError_t roi_align_box_grad(cudaStream_t stream, const AlignBoxGradArgs<T, C>& args) {
  const int64_t k = args.dims.num_rois;
  if (k == 0) return cudaSuccess;
  roi_align_box_grad_kernel<T, C><<<num_blocks(k), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

#define JAX_ROI_INSTANTIATE_POOL(T, C)                                                     \
  template cudaError_t roi_pool_forward<T, C>(cudaStream_t, const PoolForwardArgs<T, C>&); \
  template cudaError_t roi_pool_backward<T, C>(cudaStream_t, const PoolBackwardArgs<T, C>&);
JAX_ROI_FOR_EACH_TYPE_PAIR(JAX_ROI_INSTANTIATE_POOL)
#undef JAX_ROI_INSTANTIATE_POOL

#define JAX_ROI_INSTANTIATE_ALIGN(T, C)                                                      \
  template cudaError_t roi_align_forward<T, C>(cudaStream_t, const AlignForwardArgs<T, C>&); \
  template cudaError_t roi_align_backward<T, C>(cudaStream_t,                                \
                                                const AlignBackwardArgs<T, C>&);             \
  template cudaError_t roi_align_box_grad<T, C>(cudaStream_t, const AlignBoxGradArgs<T, C>&);
JAX_ROI_FOR_EACH_TYPE_PAIR(JAX_ROI_INSTANTIATE_ALIGN)
#undef JAX_ROI_INSTANTIATE_ALIGN

}  // namespace cuda
}  // namespace jax_roi
