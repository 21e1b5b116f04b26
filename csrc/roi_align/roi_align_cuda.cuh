// RoIAlign CUDA kernels (one feature map, or FPN levels with each RoI pooled
// from its level) and their launchers. The per-element math is
// roi_align_math.h, shared with the CPU kernels. Kernel code only: no XLA
// FFI, and launches go through core/cuda_compat.h, so that this header also
// compiles with a host compiler under JAX_ROI_CUDA_EMULATION.
// Instantiated by roi_kernels.cu.
#ifndef JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_CUDA_CUH_
#define JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_CUDA_CUH_

#include <cstdint>
#include <type_traits>

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

// Fills a RoI's tables, the block's threads sharing the work: the sample
// coordinates along each axis (kAxisTable entries at most) and each row's
// and column's sample ranges. The caller synchronises before reading them.
template <typename C>
__device__ __forceinline__ void tabulate_samples(const AlignRoi<C>& r, const RoiDims& d,
                                                 AxisSample<C>* y_samples, AxisSample<C>* x_samples,
                                                 SampleRange* y_ranges, SampleRange* x_ranges) {
  for (int64_t e = threadIdx.x; e < d.pooled_height * r.grid_h; e += blockDim.x) {
    const int64_t ph = e / r.grid_h;
    y_samples[e] =
        axis_sample(sample_coord(r.start_h, ph, r.bin_h, e - ph * r.grid_h, r.grid_h), d.height);
  }
  for (int64_t e = threadIdx.x; e < d.pooled_width * r.grid_w; e += blockDim.x) {
    const int64_t pw = e / r.grid_w;
    x_samples[e] =
        axis_sample(sample_coord(r.start_w, pw, r.bin_w, e - pw * r.grid_w, r.grid_w), d.width);
  }
  for (int64_t p = threadIdx.x; p < d.pooled_height; p += blockDim.x) {
    y_ranges[p] = sample_range(r.start_h, p, r.bin_h, r.grid_h, d.height);
  }
  for (int64_t p = threadIdx.x; p < d.pooled_width; p += blockDim.x) {
    x_ranges[p] = sample_range(r.start_w, p, r.bin_w, r.grid_w, d.width);
  }
}

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
    if (kTabulated && sampled) tabulate_samples(r, d, y_samples, x_samples, y_ranges, x_ranges);
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

// NHWC average backward with vector atomics (BackwardKernels::kNhwcVec,
// core/cuda_launch.h): a thread per (RoI, bin, group of kGradLanes
// consecutive channels); its samples and their four neighbours are the
// per-output kernel's, and each neighbour receives the group's kGradLanes
// terms div(g * w) in one atomic_add_4. Used when nhwc_vec_backward_applies.
constexpr int64_t kGradLanes = 4;

template <typename T, typename C>
__global__ void roi_align_backward_nhwc_vec_kernel(AlignBackwardArgs<T, C> a, int64_t total) {
  using A = acc_t<T>;
  const AlignOptions& o = a.options;
  const int64_t Cn = a.dims.channels, groups = Cn / kGradLanes;
  const int64_t PW = a.dims.pooled_width, nbins = a.dims.pooled_height * PW;
  for (int64_t j = grid_thread_index(); j < total; j += grid_thread_count()) {
    const int64_t kb = j / groups, k = kb / nbins, bin = kb - k * nbins;
    const int64_t c0 = (j - kb * groups) * kGradLanes, ph = bin / PW, pw = bin - ph * PW;
    const Box<C> box = read_box(a.rois, k, a.dims);
    if (box.image < 0) continue;
    const FeatureLevel<A> level = a.levels[roi_level(box, a.map)];
    const RoiDims d = level_dims(a.dims, level);
    const AlignRoi<C> r =
        align_roi(box, static_cast<C>(level.spatial_scale), o.aligned, o.sampling_ratio, d);
    A* grad = level.data + feature_index_hw(d, box.image, c0, 0);
    A g[kGradLanes];
    for (int64_t l = 0; l < kGradLanes; ++l) g[l] = load(a.grad_output + kb * Cn + c0 + l);
    const CountDivider<A> div(static_cast<A>(r.count));
    for_each_sample(r, align_bin(r, ph, pw, d), ph, pw, d,
                    [&](int64_t, int64_t, const Bilinear<C>& s) {
                      bilinear_scatter(grad, Cn, bilinear_taps<A>(s, d.width), [&](A* p, A w) {
                        A v[kGradLanes];
                        for (int64_t l = 0; l < kGradLanes; ++l) v[l] = div(g[l] * w);
                        atomic_add_4(p, v);
                      });
                    });
  }
}

// Whether the vector backward can run: NHWC, average mode, float
// accumulation, whole groups of channels, 16-byte aligned gradients.
template <typename T, typename C>
bool nhwc_vec_backward_applies(const AlignBackwardArgs<T, C>& args) {
  if (args.dims.layout != Layout::kNHWC || args.options.max_mode ||
      !std::is_same_v<acc_t<T>, float> || args.dims.channels % kGradLanes != 0) {
    return false;
  }
  for (int32_t l = 0; l < (args.map.num_levels > 1 ? args.map.num_levels : 1); ++l) {
    if (reinterpret_cast<uintptr_t>(args.levels[l].data) % 16 != 0) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Deterministic backward (AlignOptions::deterministic; core/cuda_launch.h's
// owner tiles): a block per (level, image, band of rows, band of columns,
// chunk of channels) of the feature gradient, `vec` channels per thread. The
// block walks the RoIs in increasing k, kRoiTile at a time: one thread per
// RoI computes its geometry and which bin rows and columns may reach the
// tile (shared memory), and the RoIs that cannot are dropped; each thread
// then adds, with plain adds, the terms that land in the tile, in the CPU
// kernel's order (RoI, bin, sample, neighbour): the same bits as the CPU
// backward, on every run, whatever the schedule.
// ---------------------------------------------------------------------------
constexpr int64_t kRoiTile = 64;

// Whether the samples of bin p along one axis (sample range `range`) may
// touch [begin, end) of that axis: a coordinate v touches row floor(v) and
// the next one, after clamping to [0, size - 1]. Half a row of margin covers
// the rounding of the sample coordinates; NaN answers yes.
template <typename C>
__device__ __forceinline__ bool align_bin_may_touch(C start, int64_t p, C bin, int64_t grid,
                                                    SampleRange range, int64_t size, int64_t begin,
                                                    int64_t end) {
  if (range.last <= range.first) return false;
  const C a = sample_coord(start, p, bin, range.first, grid);
  const C b = sample_coord(start, p, bin, range.last - 1, grid);
  const C top = static_cast<C>(size - 1);
  C lo = a < b ? a : b, hi = a < b ? b : a;
  lo = lo < C(0) ? C(0) : (lo > top ? top : lo);
  hi = hi < C(0) ? C(0) : (hi > top ? top : hi);
  return !(hi < static_cast<C>(begin) - C(1.5) || lo >= static_cast<C>(end) + C(0.5));
}

template <typename T, typename C>
__global__ void roi_align_backward_owner_kernel(AlignBackwardArgs<T, C> a, OwnerGrid grid) {
  using A = acc_t<T>;
  __shared__ AlignRoi<C> geometry[kRoiTile];
  __shared__ uint64_t row_bins[kRoiTile], col_bins[kRoiTile];  // 0: misses the tile
  const AlignOptions& o = a.options;
  for (int64_t item = blockIdx.x; item < grid.tiles(); item += gridDim.x) {
    const OwnerTile t = owner_tile(grid, item);
    const FeatureLevel<A> level = a.levels[t.map];
    const RoiDims d = level_dims(a.dims, level);
    const int64_t step = d.layout == Layout::kNCHW ? 1 : d.channels;
    const int64_t plane = d.layout == Layout::kNCHW ? d.height * d.width : 1;
    const int64_t c0 = t.c_begin + threadIdx.x * grid.vec;
    int64_t vec = d.channels - c0 < grid.vec ? d.channels - c0 : grid.vec;
    if (vec < 0) vec = 0;
    A* grad = level.data + feature_index_hw(d, t.image, vec > 0 ? c0 : 0, 0);
    auto in_rows = [&](int64_t y) { return y >= t.row_begin && y < t.row_end; };
    auto in_cols = [&](int64_t x) { return x >= t.col_begin && x < t.col_end; };
    // Adds g[v] * w (divided) to the `vec` channels at spatial offset hw.
    auto add = [&](int64_t hw, const A* g, A w, const CountDivider<A>& div) {
      A* p = grad + hw * step;
      for (int v = 0; v < kMaxOwnerVec; ++v) {
        if (v < vec) p[v * plane] += div(g[v] * w);
      }
    };
    auto scatter = [&](const AxisSample<C>& y, const AxisSample<C>& x, const A* g,
                       const CountDivider<A>& div) {
      if (in_rows(y.low)) {
        if (in_cols(x.low)) add(y.low * d.width + x.low, g, static_cast<A>(y.h * x.h), div);
        if (in_cols(x.high)) add(y.low * d.width + x.high, g, static_cast<A>(y.h * x.l), div);
      }
      if (in_rows(y.high)) {
        if (in_cols(x.low)) add(y.high * d.width + x.low, g, static_cast<A>(y.l * x.h), div);
        if (in_cols(x.high)) add(y.high * d.width + x.high, g, static_cast<A>(y.l * x.l), div);
      }
    };
    auto sample_y = [&](const AlignRoi<C>& r, int64_t ph, int64_t iy) {
      return axis_sample(sample_coord(r.start_h, ph, r.bin_h, iy, r.grid_h), d.height);
    };
    auto sample_x = [&](const AlignRoi<C>& r, int64_t pw, int64_t ix) {
      return axis_sample(sample_coord(r.start_w, pw, r.bin_w, ix, r.grid_w), d.width);
    };
    for (int64_t k0 = 0; k0 < d.num_rois; k0 += kRoiTile) {
      const int64_t n = d.num_rois - k0 < kRoiTile ? d.num_rois - k0 : kRoiTile;
      __syncthreads();  // the previous RoIs' geometry is read
      for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
        const Box<C> box = read_box(a.rois, k0 + e, d);
        uint64_t rows = 0, cols = 0;
        if (box.image == t.image && roi_level(box, a.map) == t.map) {
          const AlignRoi<C> r =
              align_roi(box, static_cast<C>(level.spatial_scale), o.aligned, o.sampling_ratio, d);
          geometry[e] = r;
          if (!r.empty && r.grid_h > 0 && r.grid_w > 0) {
            for (int64_t p = 0; p < d.pooled_height; ++p) {
              const SampleRange ys = sample_range(r.start_h, p, r.bin_h, r.grid_h, d.height);
              if (align_bin_may_touch(r.start_h, p, r.bin_h, r.grid_h, ys, d.height, t.row_begin,
                                      t.row_end)) {
                owner_mark(&rows, p);
              }
            }
            for (int64_t p = 0; p < d.pooled_width && rows != 0; ++p) {
              const SampleRange xs = sample_range(r.start_w, p, r.bin_w, r.grid_w, d.width);
              if (align_bin_may_touch(r.start_w, p, r.bin_w, r.grid_w, xs, d.width, t.col_begin,
                                      t.col_end)) {
                owner_mark(&cols, p);
              }
            }
          }
        }
        row_bins[e] = cols != 0 ? rows : 0;
        col_bins[e] = cols;
      }
      __syncthreads();
      for (int64_t e = 0; e < n && vec > 0; ++e) {
        const uint64_t rows = row_bins[e], cols = col_bins[e];
        if (rows == 0) continue;
        const AlignRoi<C> r = geometry[e];
        const int64_t k = k0 + e;
        const CountDivider<A> div(o.max_mode ? A(1) : static_cast<A>(r.count));
        for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
          if (!owner_may(rows, ph)) continue;
          const SampleRange ys = sample_range(r.start_h, ph, r.bin_h, r.grid_h, d.height);
          for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
            if (!owner_may(cols, pw)) continue;
            const int64_t i = output_index(d, k, c0, ph, pw);
            const int64_t gstep = d.layout == Layout::kNCHW ? d.pooled_height * d.pooled_width : 1;
            A g[kMaxOwnerVec];
            for (int v = 0; v < kMaxOwnerVec; ++v) {
              g[v] = v < vec ? static_cast<A>(load(a.grad_output + i + v * gstep)) : A(0);
            }
            if (o.max_mode) {
              // Each channel has its own winner.
              for (int v = 0; v < vec; ++v) {
                const int64_t iy = a.argmax_y[i + v * gstep], ix = a.argmax_x[i + v * gstep];
                if (iy < 0 || ix < 0 || iy >= r.grid_h || ix >= r.grid_w) continue;
                const AxisSample<C> y = sample_y(r, ph, iy);
                const AxisSample<C> x = sample_x(r, pw, ix);
                if (!y.valid || !x.valid) continue;
                A* p = grad + v * plane;
                auto one = [&](int64_t yy, int64_t xx, A w) {
                  if (in_rows(yy) && in_cols(xx)) p[(yy * d.width + xx) * step] += div(g[v] * w);
                };
                one(y.low, x.low, static_cast<A>(y.h * x.h));
                one(y.low, x.high, static_cast<A>(y.h * x.l));
                one(y.high, x.low, static_cast<A>(y.l * x.h));
                one(y.high, x.high, static_cast<A>(y.l * x.l));
              }
              continue;
            }
            const SampleRange xs = sample_range(r.start_w, pw, r.bin_w, r.grid_w, d.width);
            for (int64_t iy = ys.first; iy < ys.last; ++iy) {
              const AxisSample<C> y = sample_y(r, ph, iy);
              if (!y.valid || y.high < t.row_begin || y.low >= t.row_end) continue;
              for (int64_t ix = xs.first; ix < xs.last; ++ix) {
                const AxisSample<C> x = sample_x(r, pw, ix);
                if (x.valid && x.high >= t.col_begin && x.low < t.col_end) scatter(y, x, g, div);
              }
            }
          }
        }
      }
    }
  }
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
        align_box_grad_output(level.data + feature_index_hw(d, box.image, c, 0), step, r, ph, pw, d,
                              o.max_mode, wy, wx, g, &sums);
      }
      lanes[l] = sums;
    }
    write_box_grad(lanes, r, level.spatial_scale, d, out, row);
  }
}

// ---------------------------------------------------------------------------
// NHWC vector forward (ForwardKernels::kNhwcVec): the tabulated per-RoI
// kernel where a thread computes kLanes = 16 / sizeof(T) consecutive channels
// of one bin (4 float, 8 f16/bf16, 2 double): each tap's channels come in one
// 16-byte load, the outputs go out in one 16-byte store, and the bin's
// geometry is decoded once per vector. Each channel's arithmetic is
// tabulated_sample_value's, in the same order: the same bits. Used when the
// channel count is a multiple of kLanes and every buffer is 16-byte aligned;
// the launcher falls back to the per-RoI kernel otherwise.
// ---------------------------------------------------------------------------
constexpr int64_t kVecBytes = 16;

template <typename T>
struct alignas(kVecBytes) ChannelVec {
  static constexpr int64_t kLanes = kVecBytes / static_cast<int64_t>(sizeof(T));
  T v[kLanes];
};

template <typename T, typename C>
__global__ void roi_align_forward_nhwc_vec_kernel(AlignForwardArgs<T, C> a, int64_t chunks,
                                                  int64_t chunk, int64_t index32_limit) {
  using A = acc_t<T>;
  using V = ChannelVec<T>;
  constexpr int64_t kLanes = V::kLanes;
  __shared__ AxisSample<C> y_samples[kAxisTable];
  __shared__ AxisSample<C> x_samples[kAxisTable];
  __shared__ SampleRange y_ranges[kAxisTable];
  __shared__ SampleRange x_ranges[kAxisTable];
  const AlignOptions& o = a.options;
  const int64_t Cn = a.dims.channels, groups = Cn / kLanes;
  const int64_t nbins = a.dims.pooled_height * a.dims.pooled_width;
  const int64_t per_roi = nbins * groups;  // vectors of outputs per RoI
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
    const bool sampled = !r.empty && d.height > 0 && d.width > 0;
    const bool fits = d.pooled_height <= kAxisTable && d.pooled_width <= kAxisTable &&
                      d.pooled_height * r.grid_h <= kAxisTable &&
                      d.pooled_width * r.grid_w <= kAxisTable;
    if (sampled && !fits) continue;  // the untabulated per-RoI kernel's
    if (sampled) tabulate_samples(r, d, y_samples, x_samples, y_ranges, x_ranges);
    __syncthreads();
    const T* pixels = level.data + image * d.height * d.width * Cn;
    auto vector_at = [&](int64_t y, int64_t x, int64_t c0) {
      return *reinterpret_cast<const V*>(pixels + (y * d.width + x) * Cn + c0);
    };
    auto body = [&](int64_t bin, int64_t c0) {
      const int64_t ph = bin / d.pooled_width, pw = bin - ph * d.pooled_width;
      const AlignBin b = sampled ? tabulated_bin(r, y_ranges[ph], x_ranges[pw])
                                 : tabulated_bin(r, SampleRange{0, 0}, SampleRange{0, 0});
      const int64_t y0 = ph * r.grid_h, x0 = pw * r.grid_w;
      const int64_t out = (k * nbins + bin) * Cn + c0;
      if (!o.max_mode) {
        A sum[kLanes];
        for (int64_t l = 0; l < kLanes; ++l) sum[l] = A(0);
        for (int64_t iy = b.ys.first; iy < b.ys.last; ++iy) {
          for (int64_t ix = b.xs.first; ix < b.xs.last; ++ix) {
            const AxisSample<C>& y = y_samples[y0 + iy];
            const AxisSample<C>& x = x_samples[x0 + ix];
            if (!(y.valid && x.valid)) continue;
            const C w1 = y.h * x.h, w2 = y.h * x.l, w3 = y.l * x.h, w4 = y.l * x.l;
            const V v1 = vector_at(y.low, x.low, c0), v2 = vector_at(y.low, x.high, c0);
            const V v3 = vector_at(y.high, x.low, c0), v4 = vector_at(y.high, x.high, c0);
            for (int64_t l = 0; l < kLanes; ++l) {
              sum[l] += bilinear_value(static_cast<A>(w1), static_cast<A>(w2), static_cast<A>(w3),
                                       static_cast<A>(w4), load(&v1.v[l]), load(&v2.v[l]),
                                       load(&v3.v[l]), load(&v4.v[l]));
            }
          }
        }
        V result;
        for (int64_t l = 0; l < kLanes; ++l) store(&result.v[l], sum[l] / static_cast<A>(r.count));
        *reinterpret_cast<V*>(a.output + out) = result;
        return;
      }
      MaxSample<A> m[kLanes];
      for (int64_t l = 0; l < kLanes; ++l) m[l].init();
      for (int64_t iy = b.ys.first; iy < b.ys.last; ++iy) {
        for (int64_t ix = b.xs.first; ix < b.xs.last; ++ix) {
          const AxisSample<C>& y = y_samples[y0 + iy];
          const AxisSample<C>& x = x_samples[x0 + ix];
          if (!(y.valid && x.valid)) continue;
          const C w1 = y.h * x.h, w2 = y.h * x.l, w3 = y.l * x.h, w4 = y.l * x.l;
          const V v1 = vector_at(y.low, x.low, c0), v2 = vector_at(y.low, x.high, c0);
          const V v3 = vector_at(y.high, x.low, c0), v4 = vector_at(y.high, x.high, c0);
          for (int64_t l = 0; l < kLanes; ++l) {
            m[l].offer(bilinear_value(static_cast<A>(w1), static_cast<A>(w2), static_cast<A>(w3),
                                      static_cast<A>(w4), load(&v1.v[l]), load(&v2.v[l]),
                                      load(&v3.v[l]), load(&v4.v[l])),
                       iy * b.grid_w + ix, iy, ix);
          }
        }
      }
      const int64_t outside = first_outside(b);
      for (int64_t l = 0; l < kLanes; ++l) {
        m[l].finish(b, outside);
        store_max_output(a, out + l, m[l]);
      }
    };
    if (narrow) {
      const uint32_t g = static_cast<uint32_t>(groups);
      for (uint32_t j = static_cast<uint32_t>(begin) + threadIdx.x; j < static_cast<uint32_t>(end);
           j += blockDim.x) {
        const uint32_t bin = j / g;
        body(bin, static_cast<int64_t>(j - bin * g) * kLanes);
      }
    } else {
      for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
        const int64_t bin = j / groups;
        body(bin, (j - bin * groups) * kLanes);
      }
    }
    __syncthreads();  // the tables are read before the next item rebuilds them
  }
}

// Whether the NHWC vector forward can run: NHWC, whole vectors of channels,
// 16-byte aligned maps and output.
template <typename T, typename C>
bool nhwc_vec_applies(const AlignForwardArgs<T, C>& args) {
  const auto aligned = [](const void* p) {
    return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(kVecBytes) == 0;
  };
  if (args.dims.layout != Layout::kNHWC || args.dims.channels % ChannelVec<T>::kLanes != 0) {
    return false;
  }
  if (!aligned(args.output)) return false;
  for (int32_t l = 0; l < (args.map.num_levels > 1 ? args.map.num_levels : 1); ++l) {
    if (!aligned(args.levels[l].data)) return false;
  }
  return true;
}

template <typename T, typename C>
cudaError_t roi_align_forward(cudaStream_t stream, const AlignForwardArgs<T, C>& args) {
  const ForwardKernels kernels = forward_kernels();
  if (kernels != ForwardKernels::kPerOutput) {
    const RoiDims& d = args.dims;
    const cudaError_t err =
        kernels == ForwardKernels::kNhwcVec && nhwc_vec_applies(args)
            ? launch_per_roi<roi_align_forward_nhwc_vec_kernel<T, C>>(
                  stream, args,
                  d.pooled_height * d.pooled_width * (d.channels / ChannelVec<T>::kLanes))
            : launch_per_roi<roi_align_forward_per_roi_kernel<T, C, true>>(stream, args);
    if (err != cudaSuccess) return err;
    // The RoIs whose samples do not fit the tables: none with a fixed
    // sampling ratio that fits (no launch); with adaptive sampling, the large
    // RoIs (their blocks share the work as the per-output kernel's do).
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
  if (args.options.deterministic) {
    const int32_t maps = args.map.num_levels > 1 ? args.map.num_levels : 1;
    int64_t heights[kMaxLevels], widths[kMaxLevels];
    for (int32_t l = 0; l < maps; ++l) {
      heights[l] = args.levels[l].height;
      widths[l] = args.levels[l].width;
    }
    int threads = 0;
    // 4 channels per thread: 1.9-2.5x the atomic fwd+bwd on the mask-rcnn
    // workloads, against 2.4-3.3x with 2 and 3.7-8.3x with 1.
    const OwnerGrid grid = owner_grid(maps, heights, widths, d.batch, d.channels, 4, &threads);
    return launch_owner_tiles<roi_align_backward_owner_kernel<T, C>>(stream, args, grid, threads);
  }
  if (backward_kernels() == BackwardKernels::kNhwcVec && nhwc_vec_backward_applies(args)) {
    const int64_t total = output_count(d) / kGradLanes;
    return launch_over<roi_align_backward_nhwc_vec_kernel<T, C>>(total, stream, args, total);
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
