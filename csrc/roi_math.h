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
  return (v > static_cast<C>(-1) && v < static_cast<C>(batch)) ? static_cast<int64_t>(v)
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
  int64_t best_index = -1;
  for (int64_t h = rows.start; h < rows.end; ++h) {
    for (int64_t w = cols.start; w < cols.end; ++w) {
      const A v = load(base + h * stride_h + w * stride_w);
      if (v > best) {
        best = v;
        best_index = h * width + w;
      }
    }
  }
  *argmax = static_cast<int32_t>(best_index);
  return best;
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_MATH_H_
