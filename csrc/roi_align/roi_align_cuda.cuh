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

// ---------------------------------------------------------------------------
// Per-RoI forward (ForwardKernels::kPerRoi; core/cuda_launch.h's
// launch_per_roi): a block per (RoI, chunk of its outputs). The RoI's geometry is
// computed once per block, its sample coordinates along each axis and each
// bin's sample ranges are tabulated in shared memory (when they fit in
// kAxisTable entries; otherwise each output takes the per-output path), and
// the outputs' offsets are decoded in 32-bit arithmetic when they fit. The
// same bits as the per-output kernel.
// ---------------------------------------------------------------------------
constexpr int64_t kAxisTable = 256;

// kTabulated: the RoIs whose samples fit the tables, and those without
// samples (the others are skipped); else the others, output by output: two
// launches, so that the registers of the untabulated path (large RoIs under
// adaptive sampling) do not weigh on the tabulated one.
template <typename T, typename C, bool kTabulated>
__global__ void roi_align_forward_per_roi_kernel(AlignForwardArgs<T, C> a, int64_t chunks,
                                                 int64_t chunk, int64_t index32_limit) {
  using A = acc_t<T>;
  __shared__ AxisSample<C> y_samples[kAxisTable];
  __shared__ AxisSample<C> x_samples[kAxisTable];
  __shared__ SampleRange y_ranges[kAxisTable];
  __shared__ SampleRange x_ranges[kAxisTable];
  const AlignOptions& o = a.options;
  const int64_t step = a.dims.layout == Layout::kNCHW ? 1 : a.dims.channels;
  const int64_t per_roi = a.dims.channels * a.dims.pooled_height * a.dims.pooled_width;
  const bool narrow = per_roi <= index32_limit;
  for (int64_t item = blockIdx.x; item < a.dims.num_rois * chunks; item += gridDim.x) {
    const int64_t k = item / chunks;
    const int64_t begin = (item - k * chunks) * chunk;
    const int64_t end = begin + chunk < per_roi ? begin + chunk : per_roi;
    const Box<C> box = read_box(a.rois, k, a.dims);
    const FeatureLevel<const T> level = a.levels[roi_level(box, a.map)];
    const RoiDims d = level_dims(a.dims, level);
    const AlignRoi<C> r =
        align_roi(box, static_cast<C>(level.spatial_scale), o.aligned, o.sampling_ratio, d);
    const int64_t image = r.empty ? 0 : box.image;
    // Whether the RoI has samples at all, and whether they fit the tables;
    // the same for every thread of the block: no thread skips a barrier. RoIs
    // without samples (padding rows, empty maps) output zeros here.
    const bool sampled = !r.empty && d.height > 0 && d.width > 0;
    const bool fits = d.pooled_height <= kAxisTable && d.pooled_width <= kAxisTable &&
                      d.pooled_height * r.grid_h <= kAxisTable &&
                      d.pooled_width * r.grid_w <= kAxisTable;
    if ((!sampled || fits) != kTabulated) continue;
    if (kTabulated) {
      if (sampled) {
        for (int64_t e = threadIdx.x; e < d.pooled_height * r.grid_h; e += blockDim.x) {
          const int64_t ph = e / r.grid_h;
          y_samples[e] = axis_sample(
              sample_coord(r.start_h, ph, r.bin_h, e - ph * r.grid_h, r.grid_h), d.height);
        }
        for (int64_t e = threadIdx.x; e < d.pooled_width * r.grid_w; e += blockDim.x) {
          const int64_t pw = e / r.grid_w;
          x_samples[e] = axis_sample(
              sample_coord(r.start_w, pw, r.bin_w, e - pw * r.grid_w, r.grid_w), d.width);
        }
      }
      for (int64_t p = threadIdx.x; p < d.pooled_height && sampled; p += blockDim.x) {
        y_ranges[p] = sample_range(r.start_h, p, r.bin_h, r.grid_h, d.height);
      }
      for (int64_t p = threadIdx.x; p < d.pooled_width && sampled; p += blockDim.x) {
        x_ranges[p] = sample_range(r.start_w, p, r.bin_w, r.grid_w, d.width);
      }
    }
    if (kTabulated) __syncthreads();
    for_each_roi_output(d, begin, end, narrow, [&](int64_t j, int64_t c, int64_t ph, int64_t pw) {
      const int64_t out = k * per_roi + j;
      const T* base = level.data + feature_index_hw(d, image, c, 0);
      if (!kTabulated) {
        store_align_output(a, out, base, step, r, ph, pw, d);
        return;
      }
      const AlignBin b = sampled ? tabulated_bin(r, y_ranges[ph], x_ranges[pw])
                                 : tabulated_bin(r, SampleRange{0, 0}, SampleRange{0, 0});
      // (indexed only inside the ranges, which are empty for a RoI without samples)
      const AxisSample<C>* ys = y_samples;
      const AxisSample<C>* xs = x_samples;
      const int64_t y0 = ph * r.grid_h, x0 = pw * r.grid_w;
      if (!o.max_mode) {
        A sum = A(0);
        for (int64_t iy = b.ys.first; iy < b.ys.last; ++iy) {
          for (int64_t ix = b.xs.first; ix < b.xs.last; ++ix) {
            const AxisSample<C>& y = ys[y0 + iy];
            const AxisSample<C>& x = xs[x0 + ix];
            if (y.valid && x.valid) sum += tabulated_sample_value(base, step, d.width, y, x);
          }
        }
        store(a.output + out, sum / static_cast<A>(r.count));
      } else {
        MaxSample<A> m;
        m.init();
        for (int64_t iy = b.ys.first; iy < b.ys.last; ++iy) {
          for (int64_t ix = b.xs.first; ix < b.xs.last; ++ix) {
            const AxisSample<C>& y = ys[y0 + iy];
            const AxisSample<C>& x = xs[x0 + ix];
            if (y.valid && x.valid) {
              m.offer(tabulated_sample_value(base, step, d.width, y, x), iy * b.grid_w + ix, iy,
                      ix);
            }
          }
        }
        m.finish(b, first_outside(b));
        store_max_output(a, out, m);
      }
    });
    if (kTabulated) __syncthreads();  // the tables are read before the next item rebuilds them
  }
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

// The end of a box-gradient block: after every thread stored its lanes,
// combines them by the fixed tree of roi_align_math.h and writes the RoI's
// gradient row (the batch-index column, if any, gets 0). Every thread of the
// block calls it.
template <typename C>
__device__ __forceinline__ void write_box_grad(BoxGradSums* lanes, const AlignRoi<C>& r,
                                               double spatial_scale, const RoiDims& d, C* out,
                                               int64_t row) {
  __syncthreads();
  for (int64_t s = kBoxGradLanes / 2; s > 0; s /= 2) {
    for (int64_t l = threadIdx.x; l < s; l += blockDim.x) reduce_box_grad_lanes_step(lanes, s, l);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    for (int64_t j = 0; j < row - 4; ++j) out[j] = C(0);
    lanes[0].write(r, spatial_scale, d, out + (row - 4));
  }
  __syncthreads();  // lanes[0] is read before the next RoI's lanes are written
}

// One block per RoI (a grid-stride loop over RoIs): the block's threads sum
// the RoI's outputs in kBoxGradLanes lanes, then combine the lanes by the
// fixed tree of roi_align_math.h: deterministic (no atomics) and bit-identical
// to the CPU kernel, whatever the block size.
template <typename T, typename C>
__global__ void roi_align_box_grad_kernel(AlignBoxGradArgs<T, C> a) {
  JAX_ROI_DYNAMIC_SHARED(BoxGradSums, lanes);  // kBoxGradLanes of them
  const AlignOptions& o = a.options;
  const int64_t row = roi_row_size(a.dims);
  for (int64_t k = blockIdx.x; k < a.dims.num_rois; k += gridDim.x) {
    C* out = a.grad_rois + k * row;
    const Box<C> box = read_box(a.rois, k, a.dims);
    const FeatureLevel<const T> level = a.levels[box.image < 0 ? 0 : roi_level(box, a.map)];
    const RoiDims d = level_dims(a.dims, level);
    const AlignRoi<C> r =
        align_roi(box, static_cast<C>(level.spatial_scale), o.aligned, o.sampling_ratio, d);
    // The same for every thread of the block: no thread skips a barrier.
    if (box.image < 0 || r.empty || d.channels == 0 || d.height == 0 || d.width == 0) {
      for (int64_t j = threadIdx.x; j < row; j += blockDim.x) out[j] = C(0);
      continue;
    }
    const double count = o.max_mode ? 1.0 : static_cast<double>(r.count);
    const int64_t step = d.layout == Layout::kNCHW ? 1 : d.channels;
    const int64_t per_roi = d.channels * d.pooled_height * d.pooled_width;
    for (int64_t l = threadIdx.x; l < kBoxGradLanes; l += blockDim.x) {
      BoxGradSums sums;
      for (int64_t j = l; j < per_roi; j += kBoxGradLanes) {
        int64_t c, ph, pw;
        split_roi_output(d, j, &c, &ph, &pw);
        const int64_t o_index = k * per_roi + j;
        const double g = static_cast<double>(load(a.grad_output + o_index)) / count;
        const int64_t wy = o.max_mode ? a.argmax_y[o_index] : -1;
        const int64_t wx = o.max_mode ? a.argmax_x[o_index] : -1;
        align_box_grad_output(level.data + feature_index_hw(d, box.image, c, 0), step, r, ph,
                              pw, d, o.max_mode, wy, wx, g, &sums);
      }
      lanes[l] = sums;
    }
    write_box_grad(lanes, r, level.spatial_scale, d, out, row);
  }
}

template <typename T, typename C>
cudaError_t roi_align_forward(cudaStream_t stream, const AlignForwardArgs<T, C>& args) {
  if (forward_kernels() == ForwardKernels::kPerRoi) {
    const cudaError_t err =
        launch_per_roi<roi_align_forward_per_roi_kernel<T, C, true>>(stream, args);
    if (err != cudaSuccess) return err;
    // The RoIs whose samples do not fit the tables: none with a fixed
    // sampling ratio that fits (no launch); with adaptive sampling, the large
    // RoIs (their blocks share the work as the per-output kernel's do).
    const RoiDims& d = args.dims;
    const int64_t sr = args.options.sampling_ratio;
    if (sr > 0 && d.pooled_height <= kAxisTable && d.pooled_width <= kAxisTable &&
        d.pooled_height * sr <= kAxisTable && d.pooled_width * sr <= kAxisTable) {
      return cudaSuccess;
    }
    return launch_per_roi<roi_align_forward_per_roi_kernel<T, C, false>>(stream, args);
  }
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
  return launch_per_block<roi_align_box_grad_kernel<T, C>>(
      args.dims.num_rois, sizeof(BoxGradSums) * kBoxGradLanes, stream, args);
}

}  // namespace jax_roi::cuda

#endif  // JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_CUDA_CUH_
