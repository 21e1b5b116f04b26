// RoIAlign CUDA kernels (one feature map, or FPN levels with each RoI pooled
// from its level) and their launchers. The per-element math is
// roi_align_math.h, shared with the CPU kernels. Kernel code only: no XLA
// FFI, and launches go through core/cuda_compat.h, so that this header also
// compiles with a host compiler under JAX_ROI_CUDA_EMULATION.
// Instantiated by roi_kernels.cu.
#ifndef JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_CUDA_CUH_
#define JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_CUDA_CUH_

#include <cstdint>

#include "core/bilinear.h"
#include "core/box.h"
#include "core/cuda_compat.h"
#include "core/cuda_launch.h"
#include "core/dims.h"
#include "core/types.h"
#include "roi_align/roi_align_kernels.h"
#include "roi_align/roi_align_math.h"

namespace jax_roi::cuda {

template <typename T, typename C>
__global__ void roi_align_forward_kernel(AlignForwardArgs<T, C> a, int64_t total) {
  const AlignOptions& o = a.options;
  const int64_t step = a.dims.layout == Layout::kNCHW ? 1 : a.dims.channels;
  for_each_output(a.dims, total, [&](int64_t i, int64_t k, int64_t c, int64_t ph, int64_t pw) {
    const Box<C> box = read_box(a.rois, k, a.dims);
    const FeatureLevel<const T> level = a.levels[roi_level(box, a.map)];
    const RoiDims d = level_dims(a.dims, level);
    const AlignRoi<C> r =
        align_roi(box, static_cast<C>(level.spatial_scale), o.aligned, o.sampling_ratio, d);
    const T* base = level.data + feature_index_hw(d, r.empty ? 0 : box.image, c, 0);
    store_align_output(a, i, base, step, r, ph, pw, d);
  });
}

template <typename T, typename C>
__global__ void roi_align_backward_kernel(AlignBackwardArgs<T, C> a, int64_t total) {
  using A = acc_t<T>;
  const AlignOptions& o = a.options;
  const int64_t step = a.dims.layout == Layout::kNCHW ? 1 : a.dims.channels;
  for_each_output(a.dims, total, [&](int64_t i, int64_t k, int64_t c, int64_t ph, int64_t pw) {
    const Box<C> box = read_box(a.rois, k, a.dims);
    if (box.image < 0) return;
    const FeatureLevel<A> level = a.levels[roi_level(box, a.map)];
    const RoiDims d = level_dims(a.dims, level);
    const AlignRoi<C> r =
        align_roi(box, static_cast<C>(level.spatial_scale), o.aligned, o.sampling_ratio, d);
    A* grad = level.data + feature_index_hw(d, box.image, c, 0);
    const A g = load(a.grad_output + i);
    const CountDivider<A> div(o.max_mode ? A(1) : static_cast<A>(r.count));
    auto scatter = [&](const Bilinear<C>& s) {
      bilinear_scatter(grad, step, bilinear_taps<A>(s, d.width),
                       [&](A* p, A w) { atomicAdd(p, div(g * w)); });
    };
    if (!o.max_mode) {
      for_each_sample(r, align_bin(r, ph, pw, d), ph, pw, d,
                      [&](int64_t, int64_t, const Bilinear<C>& s) { scatter(s); });
    } else {
      const Bilinear<C> s = winning_sample(r, ph, pw, a.argmax_y[i], a.argmax_x[i], d);
      if (s.valid) scatter(s);
    }
  });
}

// One thread per RoI: sums over channels, bins and samples in a fixed order
// (deterministic, no atomics).
template <typename T, typename C>
__global__ void roi_align_box_grad_kernel(AlignBoxGradArgs<T, C> a) {
  const AlignOptions& o = a.options;
  const int64_t step = a.dims.layout == Layout::kNCHW ? 1 : a.dims.channels;
  const int64_t row = roi_row_size(a.dims);
  for (int64_t k = grid_thread_index(); k < a.dims.num_rois; k += grid_thread_count()) {
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

template <typename T, typename C>
cudaError_t roi_align_forward(cudaStream_t stream, const AlignForwardArgs<T, C>& args) {
  return launch_per_output<roi_align_forward_kernel<T, C>>(stream, args);
}

template <typename T, typename C>
cudaError_t roi_align_backward(cudaStream_t stream, const AlignBackwardArgs<T, C>& args) {
  const RoiDims& d = args.dims;
  for (int32_t l = 0; l < (args.map.num_levels > 1 ? args.map.num_levels : 1); ++l) {
    const int64_t size = d.batch * d.channels * args.levels[l].height * args.levels[l].width;
    const cudaError_t err = zero_async(args.levels[l].data, size, stream);
    if (err != cudaSuccess) return err;
  }
  return launch_per_output<roi_align_backward_kernel<T, C>>(stream, args);
}

template <typename T, typename C>
cudaError_t roi_align_box_grad(cudaStream_t stream, const AlignBoxGradArgs<T, C>& args) {
  return launch_over<roi_align_box_grad_kernel<T, C>>(args.dims.num_rois, stream, args);
}

}  // namespace jax_roi::cuda

#endif  // JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_CUDA_CUH_
