// Per-element math of RoIAlign (torchvision.ops.roi_align, Mask R-CNN),
// shared by the CPU and CUDA kernels (one source of truth: the CPU tests
// validate the arithmetic the GPU runs), and the FPN level assignment of its
// multi-scale form.
//
// Coordinates are computed in the box dtype C (float or double), values in
// acc_t<T>. The operation order follows torchvision's CPU kernels exactly, and
// the kernels are compiled without floating-point contraction, so that the
// float32 and float64 results are bit-identical to torchvision's.
#ifndef JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_MATH_H_
#define JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_MATH_H_

#include <cstdint>

#include "core/bilinear.h"
#include "core/box.h"
#include "core/dims.h"
#include "core/math.h"
#include "core/sample_grid.h"
#include "core/types.h"
#include "roi_align/roi_align_kernels.h"

namespace jax_roi {

// Per-RoI geometry of RoIAlign.
template <typename C>
struct AlignRoi {
  bool empty;                 // No samples at all: padding row or a non-finite coordinate.
  C start_h, start_w;         // First sample region corner, in feature pixels.
  C bin_h, bin_w;             // Bin size (negative for an inverted aligned box).
  int64_t grid_h, grid_w;     // Samples per bin along each axis (<= 0: none).
  C count;                    // Divisor of the average: max(grid_h * grid_w, 1).
  bool clamped_h, clamped_w;  // Size forced to 1 pixel (aligned == false).
};

// torchvision's geometry: start = x1 * s - offset with offset 0.5 when
// aligned, size = end - start, forced to >= 1 when not aligned; bin = size /
// pooled size; grid = sampling_ratio if > 0, else ceil(size / pooled size).
template <typename C>
JAX_ROI_HD AlignRoi<C> align_roi(const Box<C>& box, C scale, bool aligned, int64_t sampling_ratio,
                                 const RoiDims& d) {
  AlignRoi<C> r;
  const C offset = aligned ? C(0.5) : C(0);
  r.start_w = box.x1 * scale - offset;
  r.start_h = box.y1 * scale - offset;
  const C end_w = box.x2 * scale - offset;
  const C end_h = box.y2 * scale - offset;
  C roi_w = end_w - r.start_w;
  C roi_h = end_h - r.start_h;
  r.clamped_h = r.clamped_w = false;
  if (!aligned) {  // Malformed RoIs become 1x1 (a -inf size too; NaN stays NaN).
    if (roi_w < C(1)) {
      roi_w = C(1);
      r.clamped_w = true;
    }
    if (roi_h < C(1)) {
      roi_h = C(1);
      r.clamped_h = true;
    }
  }
  // Empty where torchvision is undefined: a non-finite start or size (after
  // the clamp, which torchvision applies first: x2 = -inf is a 1-pixel RoI).
  r.empty =
      box.image < 0 || !(finite(r.start_w) && finite(r.start_h) && finite(roi_w) && finite(roi_h));
  if (r.empty) {
    r.start_h = r.start_w = r.bin_h = r.bin_w = C(0);
    r.grid_h = r.grid_w = 0;
    r.count = C(1);
    r.clamped_h = r.clamped_w = false;
    return r;
  }
  r.bin_h = roi_h / static_cast<C>(d.pooled_height);
  r.bin_w = roi_w / static_cast<C>(d.pooled_width);
  r.grid_h = sampling_ratio > 0 ? sampling_ratio : clamp_to_i64(math_ceil(r.bin_h), kMaxGrid);
  r.grid_w = sampling_ratio > 0 ? sampling_ratio : clamp_to_i64(math_ceil(r.bin_w), kMaxGrid);
  r.count = static_cast<C>(max_i64(r.grid_h * r.grid_w, 1));
  return r;
}

// The samples of one bin that land in the sampling region: a rectangle of
// grid indices [ys.first, ys.last) x [xs.first, xs.last). Every other grid
// sample lies beyond one pixel outside the map and has value zero.
struct AlignBin {
  int64_t grid_h, grid_w;  // The bin's full grid (<= 0: no samples).
  SampleRange ys, xs;
};

template <typename C>
JAX_ROI_HD AlignBin align_bin(const AlignRoi<C>& r, int64_t ph, int64_t pw, const RoiDims& d) {
  AlignBin b;
  b.grid_h = r.empty ? 0 : r.grid_h;
  b.grid_w = r.empty ? 0 : r.grid_w;
  if (b.grid_h <= 0 || b.grid_w <= 0 || d.height == 0 || d.width == 0) {
    b.ys = b.xs = SampleRange{0, 0};
    return b;
  }
  b.ys = sample_range(r.start_h, ph, r.bin_h, r.grid_h, d.height);
  b.xs = sample_range(r.start_w, pw, r.bin_w, r.grid_w, d.width);
  return b;
}

JAX_ROI_HD bool bin_has_samples(const AlignBin& b) { return b.grid_h > 0 && b.grid_w > 0; }

// Row-major grid index (iy * grid_w + ix) of the bin's first sample outside
// the sampling region, or -1 if there is none.
JAX_ROI_HD int64_t first_outside(const AlignBin& b) {
  if (!bin_has_samples(b)) return -1;
  const bool rows_empty = b.ys.last <= b.ys.first, cols_empty = b.xs.last <= b.xs.first;
  if (rows_empty || cols_empty || b.ys.first > 0 || b.xs.first > 0) return 0;
  if (b.xs.last < b.grid_w) return b.xs.last;  // Row 0 is in range from column 0.
  return b.ys.last < b.grid_h ? b.ys.last * b.grid_w : -1;
}

// Calls f(iy, ix, bilinear) for every sample of bin (ph, pw) in the sampling
// region, in torchvision's order (iy outer, ix inner).
template <typename C, typename F>
JAX_ROI_HD void for_each_sample(const AlignRoi<C>& r, const AlignBin& b, int64_t ph, int64_t pw,
                                const RoiDims& d, F&& f) {
  for (int64_t iy = b.ys.first; iy < b.ys.last; ++iy) {
    const C y = sample_coord(r.start_h, ph, r.bin_h, iy, r.grid_h);
    for (int64_t ix = b.xs.first; ix < b.xs.last; ++ix) {
      const C x = sample_coord(r.start_w, pw, r.bin_w, ix, r.grid_w);
      const Bilinear<C> s = bilinear(y, x, d.height, d.width);
      if (s.valid) f(iy, ix, s);
    }
  }
}

// Running maximum of a bin in max mode. Samples compete in grid order with a
// strict '>' from -FLT_MAX (ties: first sample; NaN never wins); the samples
// outside the sampling region are zeros and compete too.
template <typename A>
struct MaxSample {
  A value;
  int64_t index;  // Grid index of the winner in the region, -1 if none.
  int64_t iy, ix;

  JAX_ROI_HD void init() {
    value = pool_initial_max<A>();
    index = iy = ix = -1;
  }
  JAX_ROI_HD void offer(A v, int64_t i, int64_t y_index, int64_t x_index) {
    if (v > value) {
      value = v;
      index = i;
      iy = y_index;
      ix = x_index;
    }
  }
  // Adds the zero-valued samples outside the region (first one at grid index
  // `outside`, -1 if none) and settles the result. A bin without samples
  // outputs 0. Returns whether a sample in the region won (gradient flows).
  JAX_ROI_HD bool finish(const AlignBin& b, int64_t outside) {
    if (!bin_has_samples(b)) {
      value = A(0);
      index = iy = ix = -1;
      return false;
    }
    if (outside >= 0 && (A(0) > value || (A(0) == value && outside < index))) {
      value = A(0);
      index = iy = ix = -1;
    }
    return index >= 0;
  }
};

// The winning sample (grid indices iy, ix) of a max-mode output; invalid
// when there is none (-1) or the indices do not fit the bin's grid.
template <typename C>
JAX_ROI_HD Bilinear<C> winning_sample(const AlignRoi<C>& r, int64_t ph, int64_t pw, int64_t iy,
                                      int64_t ix, const RoiDims& d) {
  if (r.empty || iy < 0 || ix < 0 || iy >= r.grid_h || ix >= r.grid_w) {
    Bilinear<C> invalid = bilinear(C(-2), C(-2), d.height, d.width);  // out of range
    return invalid;
  }
  return bilinear(sample_coord(r.start_h, ph, r.bin_h, iy, r.grid_h),
                  sample_coord(r.start_w, pw, r.bin_w, ix, r.grid_w), d.height, d.width);
}

// Accumulates the gradient of sum(output * g) w.r.t. one RoI's box, from
// its samples: the value of a sample at (y, x) changes with the box through
//   y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h,
//   start_h = y1 * s - offset,  bin_h = (y2 - y1) * s / PH  (constant when
//   the 1-pixel minimum applies), and likewise for x. The adaptive grid is
// piecewise constant and contributes nothing.
struct BoxGradSums {
  double sy0 = 0, sy1 = 0, sx0 = 0, sx1 = 0;

  // One sample with cotangent g (already divided by the count in avg mode),
  // neighbour values v1..v4, and dy/dbin_h, dx/dbin_w.
  template <typename C, typename A>
  JAX_ROI_HD void add(const Bilinear<C>& s, A v1, A v2, A v3, A v4, double g, C dy_dbin,
                      C dx_dbin) {
    C d_dy, d_dx;
    bilinear_gradient(s, v1, v2, v3, v4, &d_dy, &d_dx);
    const double gy = g * static_cast<double>(d_dy);
    const double gx = g * static_cast<double>(d_dx);
    sy0 += gy;
    sy1 += gy * static_cast<double>(dy_dbin);
    sx0 += gx;
    sx1 += gx * static_cast<double>(dx_dbin);
  }

  // The same, reading the four neighbours from a plane (NCHW) or the pixels
  // of an image (NHWC, step = C).
  template <typename T, typename C>
  JAX_ROI_HD void add_sample(const T* base, int64_t step, int64_t width, const Bilinear<C>& s,
                             double g, C dy_dbin, C dx_dbin) {
    const BilinearTaps<C> t = bilinear_taps<C>(s, width);
    add(s, load(base + t.o1 * step), load(base + t.o2 * step), load(base + t.o3 * step),
        load(base + t.o4 * step), g, dy_dbin, dx_dbin);
  }

  JAX_ROI_HD void merge(const BoxGradSums& o) {
    sy0 += o.sy0;
    sy1 += o.sy1;
    sx0 += o.sx0;
    sx1 += o.sx1;
  }

  // Writes d/dx1, d/dy1, d/dx2, d/dy2.
  template <typename C>
  JAX_ROI_HD void write(const AlignRoi<C>& r, double spatial_scale, const RoiDims& d,
                        C* coords) const {
    const double scale = static_cast<double>(static_cast<C>(spatial_scale));
    const double dbin_h = r.clamped_h ? 0.0 : scale / static_cast<double>(d.pooled_height);
    const double dbin_w = r.clamped_w ? 0.0 : scale / static_cast<double>(d.pooled_width);
    coords[0] = static_cast<C>(scale * sx0 - dbin_w * sx1);
    coords[1] = static_cast<C>(scale * sy0 - dbin_h * sy1);
    coords[2] = static_cast<C>(dbin_w * sx1);
    coords[3] = static_cast<C>(dbin_h * sy1);
  }
};

// ---------------------------------------------------------------------------
// RoIAlign per output, straight from the samples (no cache): the CUDA
// kernels, and the CPU kernels for RoIs too large to cache.
// ---------------------------------------------------------------------------

// Value of a sample from the plane (NCHW) or pixels (NHWC, step = C) at base.
template <typename T, typename C>
JAX_ROI_HD acc_t<T> sample_value(const T* base, int64_t step, int64_t width, const Bilinear<C>& s) {
  return bilinear_gather(base, step, bilinear_taps<acc_t<T>>(s, width));
}

// avg: the output of bin (ph, pw) of one channel.
template <typename T, typename C>
JAX_ROI_HD acc_t<T> align_output_avg(const T* base, int64_t step, const AlignRoi<C>& r,
                                     const AlignBin& b, int64_t ph, int64_t pw, const RoiDims& d) {
  using A = acc_t<T>;
  A sum = A(0);
  for_each_sample(r, b, ph, pw, d, [&](int64_t, int64_t, const Bilinear<C>& s) {
    sum += sample_value(base, step, d.width, s);
  });
  return sum / static_cast<A>(r.count);
}

// max: the settled running maximum of bin (ph, pw) of one channel.
template <typename T, typename C>
JAX_ROI_HD MaxSample<acc_t<T>> align_output_max(const T* base, int64_t step, const AlignRoi<C>& r,
                                                const AlignBin& b, int64_t ph, int64_t pw,
                                                const RoiDims& d) {
  MaxSample<acc_t<T>> m;
  m.init();
  for_each_sample(r, b, ph, pw, d, [&](int64_t iy, int64_t ix, const Bilinear<C>& s) {
    m.offer(sample_value(base, step, d.width, s), iy * b.grid_w + ix, iy, ix);
  });
  m.finish(b, first_outside(b));
  return m;
}

// ---------------------------------------------------------------------------
// RoIAlign per output from tabulated samples (the CUDA per-RoI kernels): a
// RoI's sample coordinates along each axis, computed once per RoI, give the
// same bits as the per-sample path above (bilinear() is separable: its
// validity and weights are products of per-axis terms).
// ---------------------------------------------------------------------------

// One sample coordinate along one axis: the axis half of bilinear().
template <typename C>
struct AxisSample {
  int64_t low, high;
  C l, h;
  bool valid;  // In [-1, size] (and size > 0).
};

template <typename C>
JAX_ROI_HD AxisSample<C> axis_sample(C v, int64_t size) {
  AxisSample<C> s;
  s.valid = size > 0 && coord_in_range(v, size);
  if (!s.valid) {
    s.low = s.high = 0;
    s.l = s.h = C(0);
    return s;
  }
  const BilinearAxis<C> a = bilinear_axis(v, size);
  s.low = a.low;
  s.high = a.high;
  s.l = a.l;
  s.h = a.h;
  return s;
}

// The value of the sample at (y, x): bilinear(y, x) then sample_value().
template <typename T, typename C>
JAX_ROI_HD acc_t<T> tabulated_sample_value(const T* base, int64_t step, int64_t width,
                                           const AxisSample<C>& y, const AxisSample<C>& x) {
  using A = acc_t<T>;
  const C w1 = y.h * x.h, w2 = y.h * x.l, w3 = y.l * x.h, w4 = y.l * x.l;
  return bilinear_value(
      static_cast<A>(w1), static_cast<A>(w2), static_cast<A>(w3), static_cast<A>(w4),
      load(base + (y.low * width + x.low) * step), load(base + (y.low * width + x.high) * step),
      load(base + (y.high * width + x.low) * step), load(base + (y.high * width + x.high) * step));
}

// The bin of align_bin() with its sample ranges from tables.
template <typename C>
JAX_ROI_HD AlignBin tabulated_bin(const AlignRoi<C>& r, SampleRange ys, SampleRange xs) {
  AlignBin b;
  b.grid_h = r.empty ? 0 : r.grid_h;
  b.grid_w = r.empty ? 0 : r.grid_w;
  if (b.grid_h <= 0 || b.grid_w <= 0) ys = xs = SampleRange{0, 0};
  b.ys = ys;
  b.xs = xs;
  return b;
}

// Stores forward output element `out` of a max-mode bin: its value and, when
// the argmax outputs are wanted, the winner's grid indices.
template <typename T, typename C, typename A>
JAX_ROI_HD void store_max_output(const AlignForwardArgs<T, C>& a, int64_t out,
                                 const MaxSample<A>& m) {
  store(a.output + out, m.value);
  if (a.argmax_y != nullptr) {
    a.argmax_y[out] = static_cast<int32_t>(m.iy);
    a.argmax_x[out] = static_cast<int32_t>(m.ix);
  }
}

// Stores forward output element `out`, bin (ph, pw) of one channel (avg or
// max), straight from its samples.
template <typename T, typename C>
JAX_ROI_HD void store_align_output(const AlignForwardArgs<T, C>& a, int64_t out, const T* base,
                                   int64_t step, const AlignRoi<C>& r, int64_t ph, int64_t pw,
                                   const RoiDims& d) {
  const AlignBin b = align_bin(r, ph, pw, d);
  if (!a.options.max_mode) {
    store(a.output + out, align_output_avg(base, step, r, b, ph, pw, d));
  } else {
    store_max_output(a, out, align_output_max(base, step, r, b, ph, pw, d));
  }
}

// Adds one output's contributions to the box-gradient sums: every sample
// (avg) or the winner (max), at cotangent g_scaled = g / count (avg) or g
// (max), computed in double by the caller.
template <typename T, typename C>
JAX_ROI_HD void align_box_grad_output(const T* base, int64_t step, const AlignRoi<C>& r, int64_t ph,
                                      int64_t pw, const RoiDims& d, bool max_mode, int64_t winner_y,
                                      int64_t winner_x, double g_scaled, BoxGradSums* sums) {
  auto add = [&](int64_t iy, int64_t ix, const Bilinear<C>& s) {
    sums->add_sample(base, step, d.width, s, g_scaled, sample_coord_dbin<C>(ph, iy, r.grid_h),
                     sample_coord_dbin<C>(pw, ix, r.grid_w));
  };
  if (max_mode) {
    const Bilinear<C> s = winning_sample(r, ph, pw, winner_y, winner_x, d);
    if (s.valid) add(winner_y, winner_x, s);
    return;
  }
  for_each_sample(r, align_bin(r, ph, pw, d), ph, pw, d, add);
}

// The summation order of a RoI's box gradient, the same on every back end
// and for any number of threads (so the CPU and CUDA kernels give the same
// bits, run after run): the RoI's outputs, at offsets j = 0 .. P-1 within its
// block of the output (P = C * PH * PW, in the output's layout), are dealt to
// kBoxGradLanes lanes, output j to lane j % kBoxGradLanes; each lane sums its
// outputs' contributions in increasing j, in double (BoxGradSums); then the
// lanes are combined by a fixed pairwise tree: lane l += lane l + s for
// s = kBoxGradLanes / 2, ..., 2, 1 (reduce_box_grad_lanes). A CUDA block
// gives each thread one lane (or several, with fewer threads), a CPU task
// keeps the lanes in an array.
constexpr int64_t kBoxGradLanes = 256;

// Output offset j within a RoI's block of the output -> (c, ph, pw).
JAX_ROI_HD void split_roi_output(const RoiDims& d, int64_t j, int64_t* c, int64_t* ph,
                                 int64_t* pw) {
  if (d.layout == Layout::kNCHW) {
    *pw = j % d.pooled_width;
    j /= d.pooled_width;
    *ph = j % d.pooled_height;
    *c = j / d.pooled_height;
  } else {
    *c = j % d.channels;
    j /= d.channels;
    *pw = j % d.pooled_width;
    *ph = j / d.pooled_width;
  }
}

// One step of the lanes' tree: lanes[l] += lanes[l + s] for l < s.
JAX_ROI_HD void reduce_box_grad_lanes_step(BoxGradSums* lanes, int64_t s, int64_t l) {
  lanes[l].merge(lanes[l + s]);
}

// The whole tree, serially (the CPU kernel): the total is lanes[0].
JAX_ROI_HD const BoxGradSums& reduce_box_grad_lanes(BoxGradSums* lanes) {
  for (int64_t s = kBoxGradLanes / 2; s > 0; s /= 2) {
    for (int64_t l = 0; l < s; ++l) reduce_box_grad_lanes_step(lanes, s, l);
  }
  return lanes[0];
}

// ---------------------------------------------------------------------------
// Multi-scale (FPN) level assignment
// ---------------------------------------------------------------------------

// torchvision's LevelMapper, in the box dtype: the box area (x2 - x1) *
// (y2 - y1), floor(k0 + log2(sqrt(area) / s0) + 1e-6), clamped to [k_min,
// k_max], minus k_min. A box whose area is NaN (an inverted box, a NaN
// coordinate) goes to level 0, like a zero-area box (log2(0) = -inf).
template <typename C>
JAX_ROI_HD int32_t roi_level(const Box<C>& box, const LevelMap& m) {
  if (m.num_levels <= 1) return 0;
  const C area = (box.x2 - box.x1) * (box.y2 - box.y1);
  const C target = math_floor(static_cast<C>(m.canonical_level) +
                              math_log2(math_sqrt(area) / static_cast<C>(m.canonical_scale)) +
                              static_cast<C>(1e-6));
  const C lo = static_cast<C>(m.k_min), hi = static_cast<C>(m.k_max);
  if (!(target > lo)) return 0;  // Also NaN.
  const C clamped = target < hi ? target : hi;
  const int64_t level = static_cast<int64_t>(clamped - lo);
  return static_cast<int32_t>(level < m.num_levels ? level : m.num_levels - 1);
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_MATH_H_
