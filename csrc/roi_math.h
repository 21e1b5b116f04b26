// Per-element math of the RoI operators, shared by the CPU and CUDA kernels
// (one source of truth: the CPU tests validate the arithmetic the GPU runs).
//
// Coordinates are computed in the box dtype C (float or double), values in
// acc_t<T>. The operation order follows torchvision's CPU kernels exactly, and
// the kernels are compiled without floating-point contraction, so that the
// float32 and float64 results are bit-identical to torchvision's.
#ifndef JAX_ROI_CSRC_ROI_MATH_H_
#define JAX_ROI_CSRC_ROI_MATH_H_

#include <cfloat>
#include <cstdint>

#include "roi_args.h"
#include "roi_common.h"

namespace jax_roi {

// Magnitude (in feature-map pixels) beyond which rounded box coordinates are
// clamped before their conversion to integers: 2^40. It keeps every integer
// in the geometry far from int64 overflow (torchvision's int32 conversion is
// undefined behaviour there) and changes nothing for coordinates that any
// real feature map can hold.
constexpr double kCoordLimit = 1099511627776.0;

JAX_ROI_HD float math_round(float v) { return ::roundf(v); }  // Half away from 0.
JAX_ROI_HD double math_round(double v) { return ::round(v); }
JAX_ROI_HD float math_floor(float v) { return ::floorf(v); }
JAX_ROI_HD double math_floor(double v) { return ::floor(v); }
JAX_ROI_HD float math_ceil(float v) { return ::ceilf(v); }
JAX_ROI_HD double math_ceil(double v) { return ::ceil(v); }
JAX_ROI_HD float math_sqrt(float v) { return ::sqrtf(v); }
JAX_ROI_HD double math_sqrt(double v) { return ::sqrt(v); }
JAX_ROI_HD float math_log2(float v) { return ::log2f(v); }
JAX_ROI_HD double math_log2(double v) { return ::log2(v); }

JAX_ROI_HD int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
JAX_ROI_HD int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
JAX_ROI_HD int64_t clip_i64(int64_t v, int64_t lo, int64_t hi) {
  return min_i64(max_i64(v, lo), hi);
}

// Converts a non-NaN value to int64, truncating toward zero, after clamping
// it to [-kCoordLimit, kCoordLimit] (so that +-inf are defined too).
template <typename C>
JAX_ROI_HD int64_t clamp_to_i64(C v) {
  const C limit = static_cast<C>(kCoordLimit);
  v = v < -limit ? -limit : (v > limit ? limit : v);
  return static_cast<int64_t>(v);
}

// Image index of a (K, 5) row: the first column truncated toward zero, as
// torchvision's (int) cast does (1.7 -> image 1, -0.5 -> image 0). A value
// whose truncation falls outside [0, batch), or NaN, marks a padding row: -1.
// Written so that the comparison happens before any integer conversion.
template <typename C>
JAX_ROI_HD int64_t batch_index(C v, int64_t batch) {
  return (batch > 0 && v > static_cast<C>(-1) && v < static_cast<C>(batch))
             ? static_cast<int64_t>(v)
             : -1;
}

template <typename C>
struct Box {
  int64_t image;  // -1 for a padding row.
  C x1, y1, x2, y2;
};

// Reads RoI k in either box format (see RoiDims), always in xyxy order.
template <typename C>
JAX_ROI_HD Box<C> read_box(const C* rois, int64_t k, const RoiDims& d) {
  Box<C> b;
  if (d.rois_per_image > 0) {
    const C* p = rois + k * 4;
    b.image = k / d.rois_per_image;
    b.x1 = p[0];
    b.y1 = p[1];
    b.x2 = p[2];
    b.y2 = p[3];
  } else {
    const C* p = rois + k * 5;
    b.image = batch_index(p[0], d.batch);
    b.x1 = p[1];
    b.y1 = p[2];
    b.x2 = p[3];
    b.y2 = p[4];
  }
  return b;
}

// ---------------------------------------------------------------------------
// RoIPool (torchvision.ops.roi_pool, Fast R-CNN)
// ---------------------------------------------------------------------------

// Per-RoI geometry of RoIPool.
template <typename C>
struct PoolRoi {
  bool empty;  // Every bin is empty: padding row or NaN coordinate.
  int64_t start_h, start_w;
  C bin_h, bin_w;
};

// start = round(x1 * s) (half away from zero), end = round(x2 * s), the end
// pixel is inclusive, malformed RoIs become 1x1, bin = size / pooled size.
template <typename C>
JAX_ROI_HD PoolRoi<C> pool_roi(const Box<C>& box, C scale, const RoiDims& d) {
  PoolRoi<C> r;
  const C sx1 = box.x1 * scale;
  const C sy1 = box.y1 * scale;
  const C sx2 = box.x2 * scale;
  const C sy2 = box.y2 * scale;
  r.empty = box.image < 0 || !(sx1 == sx1 && sy1 == sy1 && sx2 == sx2 && sy2 == sy2);
  if (r.empty) {
    r.start_h = r.start_w = 0;
    r.bin_h = r.bin_w = C(0);
    return r;
  }
  r.start_w = clamp_to_i64(math_round(sx1));
  r.start_h = clamp_to_i64(math_round(sy1));
  const int64_t end_w = clamp_to_i64(math_round(sx2));
  const int64_t end_h = clamp_to_i64(math_round(sy2));
  const int64_t roi_w = max_i64(end_w - r.start_w + 1, 1);
  const int64_t roi_h = max_i64(end_h - r.start_h + 1, 1);
  r.bin_h = static_cast<C>(roi_h) / static_cast<C>(d.pooled_height);
  r.bin_w = static_cast<C>(roi_w) / static_cast<C>(d.pooled_width);
  return r;
}

// Half-open range [start, end) of pixel rows (or columns).
struct Window {
  int64_t start, end;
  JAX_ROI_HD bool empty() const { return end <= start; }
};

// Rows (or columns) of bin p: [floor(p * bin), ceil((p + 1) * bin)) shifted
// by the RoI start and clipped to [0, size].
template <typename C>
JAX_ROI_HD Window pool_bin(int64_t p, C bin, int64_t roi_start, int64_t size) {
  const int64_t lo = static_cast<int64_t>(math_floor(static_cast<C>(p) * bin)) + roi_start;
  const int64_t hi = static_cast<int64_t>(math_ceil(static_cast<C>(p + 1) * bin)) + roi_start;
  return Window{clip_i64(lo, 0, size), clip_i64(hi, 0, size)};
}

// The running maximum starts here, as torchvision's does (also for double):
// NaNs never win a strict '>' comparison and values <= -FLT_MAX never do
// either, so such a bin outputs -FLT_MAX with argmax -1 (no gradient).
template <typename A>
JAX_ROI_HD A pool_initial_max() {
  return static_cast<A>(-FLT_MAX);
}

// Maximum over a non-empty window of one (image, channel) plane whose element
// (h, w) is at base[h * stride_h + w * stride_w]; ties go to the first
// maximum in row-major order. *argmax receives h * width + w, or -1.
template <typename T>
JAX_ROI_HD acc_t<T> window_max(const T* base, int64_t stride_h, int64_t stride_w,
                               int64_t width, Window rows, Window cols, int32_t* argmax) {
  using A = acc_t<T>;
  A best = pool_initial_max<A>();
  int32_t best_index = -1;
  for (int64_t h = rows.start; h < rows.end; ++h) {
    for (int64_t w = cols.start; w < cols.end; ++w) {
      const A v = load(base + h * stride_h + w * stride_w);
      if (v > best) {  // Rarely taken: a well-predicted branch beats a select chain.
        best = v;
        best_index = static_cast<int32_t>(h * width + w);
      }
    }
  }
  *argmax = best_index;
  return best;
}

// ---------------------------------------------------------------------------
// RoIAlign (torchvision.ops.roi_align, Mask R-CNN)
// ---------------------------------------------------------------------------

// Samples per bin along one axis never exceed this (2^31 - 1): the adaptive
// grid ceil(roi_size / pooled_size) is clamped here, which only matters for
// bins wider than 2^31 feature pixels.
constexpr int64_t kMaxGrid = 2147483647;

// Per-RoI geometry of RoIAlign.
template <typename C>
struct AlignRoi {
  bool empty;  // No samples at all: padding row or a non-finite coordinate.
  C start_h, start_w;  // First sample region corner, in feature pixels.
  C bin_h, bin_w;      // Bin size (negative for an inverted aligned box).
  int64_t grid_h, grid_w;  // Samples per bin along each axis (<= 0: none).
  C count;                 // Divisor of the average: max(grid_h * grid_w, 1).
  bool clamped_h, clamped_w;  // Size forced to 1 pixel (aligned == false).
};

// Converts a finite ceil() result to a grid size in [-kMaxGrid, kMaxGrid].
template <typename C>
JAX_ROI_HD int64_t grid_size(C v) {
  const C limit = static_cast<C>(kMaxGrid);
  v = v < -limit ? -limit : (v > limit ? limit : v);
  return static_cast<int64_t>(v);
}

template <typename C>
JAX_ROI_HD bool finite(C v) {
  return v - v == C(0);  // False for NaN and +-inf.
}

// torchvision's geometry: start = x1 * s - offset with offset 0.5 when
// aligned, size = end - start, forced to >= 1 when not aligned; bin = size /
// pooled size; grid = sampling_ratio if > 0, else ceil(size / pooled size).
template <typename C>
JAX_ROI_HD AlignRoi<C> align_roi(const Box<C>& box, C scale, bool aligned,
                                 int64_t sampling_ratio, const RoiDims& d) {
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
  r.empty = box.image < 0 || !(finite(r.start_w) && finite(r.start_h) && finite(roi_w) &&
                              finite(roi_h));
  if (r.empty) {
    r.start_h = r.start_w = r.bin_h = r.bin_w = C(0);
    r.grid_h = r.grid_w = 0;
    r.count = C(1);
    r.clamped_h = r.clamped_w = false;
    return r;
  }
  r.bin_h = roi_h / static_cast<C>(d.pooled_height);
  r.bin_w = roi_w / static_cast<C>(d.pooled_width);
  r.grid_h = sampling_ratio > 0 ? sampling_ratio : grid_size(math_ceil(r.bin_h));
  r.grid_w = sampling_ratio > 0 ? sampling_ratio : grid_size(math_ceil(r.bin_w));
  r.count = static_cast<C>(max_i64(r.grid_h * r.grid_w, 1));
  return r;
}

// Coordinate of sample i (of `grid`) of bin p, in torchvision's exact
// expression order: start + p * bin + ((i + 0.5f) * bin) / grid.
template <typename C>
JAX_ROI_HD C sample_coord(C start, int64_t p, C bin, int64_t i, int64_t grid) {
  const C half_step = static_cast<C>(static_cast<float>(i) + 0.5f);
  return start + static_cast<C>(p) * bin + half_step * bin / static_cast<C>(grid);
}

// d(sample coordinate) / d(bin) = p + (i + 0.5) / grid.
template <typename C>
JAX_ROI_HD C sample_coord_dbin(int64_t p, int64_t i, int64_t grid) {
  return static_cast<C>(p) +
         static_cast<C>(static_cast<float>(i) + 0.5f) / static_cast<C>(grid);
}

// A sample coordinate contributes only inside [-1, size] (zero beyond).
template <typename C>
JAX_ROI_HD bool coord_in_range(C v, int64_t size) {
  return v >= C(-1) && v <= static_cast<C>(size);
}

// The samples i in [0, grid) of bin p whose coordinate lies in [-1, size]:
// a half-open range [first, last). sample_coord is monotonic in i (every
// operation in it is), so the range is contiguous. Samples outside add
// exactly zero, so skipping them changes no result, and the work of a bin
// stays bounded by the samples that can land on the map, however large the
// adaptive grid of a huge box.
struct SampleRange {
  int64_t first, last;
};

template <typename C>
JAX_ROI_HD SampleRange sample_range(C start, int64_t p, C bin, int64_t grid, int64_t size) {
  if (grid <= 0) return SampleRange{0, 0};
  const bool increasing = bin >= C(0);
  // First i for which pred(i) holds, for a predicate monotone in i.
  auto first_true = [&](auto pred) {
    int64_t lo = 0, hi = grid;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (pred(mid)) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    return lo;
  };
  const C low = C(-1), high = static_cast<C>(size);
  int64_t first, last;
  if (increasing) {
    first = first_true([&](int64_t i) { return sample_coord(start, p, bin, i, grid) >= low; });
    last = first_true([&](int64_t i) { return sample_coord(start, p, bin, i, grid) > high; });
  } else {
    first = first_true([&](int64_t i) { return sample_coord(start, p, bin, i, grid) <= high; });
    last = first_true([&](int64_t i) { return sample_coord(start, p, bin, i, grid) < low; });
  }
  return SampleRange{first, last < first ? first : last};
}

// Bilinear interpolation of one sample: torchvision's rule. Outside
// [-1, size] the sample is zero (valid == false); within one pixel outside
// the map it replicates the edge.
template <typename C>
struct Bilinear {
  bool valid;
  int64_t y_low, y_high, x_low, x_high;
  C ly, lx, hy, hx;
  C w1, w2, w3, w4;
  bool y_frozen, x_frozen;  // The value does not depend on y (x) here.
};

template <typename C>
JAX_ROI_HD Bilinear<C> bilinear(C y, C x, int64_t height, int64_t width) {
  Bilinear<C> b;
  // Written as !(in range) so that NaN takes this branch.
  b.valid = height > 0 && width > 0 && coord_in_range(y, height) && coord_in_range(x, width);
  if (!b.valid) {
    b.y_low = b.y_high = b.x_low = b.x_high = 0;
    b.ly = b.lx = b.hy = b.hx = b.w1 = b.w2 = b.w3 = b.w4 = C(0);
    b.y_frozen = b.x_frozen = true;
    return b;
  }
  b.y_frozen = b.x_frozen = false;
  if (y <= C(0)) {
    y = C(0);
    b.y_frozen = true;
  }
  if (x <= C(0)) {
    x = C(0);
    b.x_frozen = true;
  }
  b.y_low = static_cast<int64_t>(y);
  b.x_low = static_cast<int64_t>(x);
  if (b.y_low >= height - 1) {
    b.y_high = b.y_low = height - 1;
    y = static_cast<C>(b.y_low);
    b.y_frozen = true;
  } else {
    b.y_high = b.y_low + 1;
  }
  if (b.x_low >= width - 1) {
    b.x_high = b.x_low = width - 1;
    x = static_cast<C>(b.x_low);
    b.x_frozen = true;
  } else {
    b.x_high = b.x_low + 1;
  }
  b.ly = y - static_cast<C>(b.y_low);
  b.lx = x - static_cast<C>(b.x_low);
  b.hy = C(1) - b.ly;
  b.hx = C(1) - b.lx;
  b.w1 = b.hy * b.hx;
  b.w2 = b.hy * b.lx;
  b.w3 = b.ly * b.hx;
  b.w4 = b.ly * b.lx;
  return b;
}

// Value of a valid sample from its four neighbours v1..v4 (torchvision's
// order of operations).
template <typename A>
JAX_ROI_HD A bilinear_value(A w1, A w2, A w3, A w4, A v1, A v2, A v3, A v4) {
  return w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4;
}

// Partial derivatives of a valid sample's value w.r.t. its y and x
// coordinates (zero where the value is locally constant in that coordinate).
template <typename C, typename A>
JAX_ROI_HD void bilinear_gradient(const Bilinear<C>& b, A v1, A v2, A v3, A v4, C* d_dy,
                                  C* d_dx) {
  *d_dy = b.y_frozen ? C(0)
                     : b.hx * static_cast<C>(v3 - v1) + b.lx * static_cast<C>(v4 - v2);
  *d_dx = b.x_frozen ? C(0)
                     : b.hy * static_cast<C>(v2 - v1) + b.ly * static_cast<C>(v4 - v3);
}

// The samples of one bin that land in the sampling region: a rectangle of
// grid indices [ys.first, ys.last) x [xs.first, xs.last). Every other grid
// sample lies beyond one pixel outside the map and has value zero.
struct AlignBin {
  int64_t grid_h, grid_w;  // The bin's full grid (<= 0: no samples).
  SampleRange ys, xs;
};

template <typename C>
JAX_ROI_HD AlignBin align_bin(const AlignRoi<C>& r, int64_t ph, int64_t pw,
                              const RoiDims& d) {
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
JAX_ROI_HD void for_each_sample(const AlignRoi<C>& r, const AlignBin& b, int64_t ph,
                                int64_t pw, const RoiDims& d, F&& f) {
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
JAX_ROI_HD Bilinear<C> winning_sample(const AlignRoi<C>& r, int64_t ph, int64_t pw,
                                      int64_t iy, int64_t ix, const RoiDims& d) {
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
    add(s, load(base + (s.y_low * width + s.x_low) * step),
        load(base + (s.y_low * width + s.x_high) * step),
        load(base + (s.y_high * width + s.x_low) * step),
        load(base + (s.y_high * width + s.x_high) * step), g, dy_dbin, dx_dbin);
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
JAX_ROI_HD acc_t<T> sample_value(const T* base, int64_t step, int64_t width,
                                 const Bilinear<C>& s) {
  using A = acc_t<T>;
  return bilinear_value(static_cast<A>(s.w1), static_cast<A>(s.w2), static_cast<A>(s.w3),
                        static_cast<A>(s.w4), load(base + (s.y_low * width + s.x_low) * step),
                        load(base + (s.y_low * width + s.x_high) * step),
                        load(base + (s.y_high * width + s.x_low) * step),
                        load(base + (s.y_high * width + s.x_high) * step));
}

// avg: the output of bin (ph, pw) of one channel.
template <typename T, typename C>
JAX_ROI_HD acc_t<T> align_output_avg(const T* base, int64_t step, const AlignRoi<C>& r,
                                     const AlignBin& b, int64_t ph, int64_t pw,
                                     const RoiDims& d) {
  using A = acc_t<T>;
  A sum = A(0);
  for_each_sample(r, b, ph, pw, d, [&](int64_t, int64_t, const Bilinear<C>& s) {
    sum += sample_value(base, step, d.width, s);
  });
  return sum / static_cast<A>(r.count);
}

// max: the settled running maximum of bin (ph, pw) of one channel.
template <typename T, typename C>
JAX_ROI_HD MaxSample<acc_t<T>> align_output_max(const T* base, int64_t step,
                                                const AlignRoi<C>& r, const AlignBin& b,
                                                int64_t ph, int64_t pw, const RoiDims& d) {
  MaxSample<acc_t<T>> m;
  m.init();
  for_each_sample(r, b, ph, pw, d, [&](int64_t iy, int64_t ix, const Bilinear<C>& s) {
    m.offer(sample_value(base, step, d.width, s), iy * b.grid_w + ix, iy, ix);
  });
  m.finish(b, first_outside(b));
  return m;
}

// Adds one output's contributions to the box-gradient sums: every sample
// (avg) or the winner (max), at cotangent g_scaled = g / count (avg) or g
// (max), computed in double by the caller.
template <typename T, typename C>
JAX_ROI_HD void align_box_grad_output(const T* base, int64_t step, const AlignRoi<C>& r,
                                      int64_t ph, int64_t pw, const RoiDims& d, bool max_mode,
                                      int64_t winner_y, int64_t winner_x, double g_scaled,
                                      BoxGradSums* sums) {
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

// (g * w) / count, exactly. When count is a power of two (sampling_ratio 2
// gives 4) the division is a multiplication by its exact reciprocal, which
// gives the same result and is much cheaper.
template <typename A>
struct CountDivider {
  A count, reciprocal;
  bool power_of_two;
  JAX_ROI_HD explicit CountDivider(A c) : count(c), reciprocal(A(1) / c) {
    power_of_two = reciprocal * c == A(1) && is_power_of_two(c);
  }
  JAX_ROI_HD A operator()(A v) const { return power_of_two ? v * reciprocal : v / count; }

 private:
  JAX_ROI_HD static bool is_power_of_two(A c) {
    // c is a positive integer (a sample count) below 2^62.
    const int64_t n = static_cast<int64_t>(c);
    return static_cast<A>(n) == c && n > 0 && (n & (n - 1)) == 0;
  }
};

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

#endif  // JAX_ROI_CSRC_ROI_MATH_H_
