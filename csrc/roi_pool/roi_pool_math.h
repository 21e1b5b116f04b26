// Per-element math of RoIPool (torchvision.ops.roi_pool, Fast R-CNN),
// shared by the CPU and CUDA kernels. Coordinates are computed in the box
// dtype C, values in acc_t<T>, in torchvision's operation order.
#ifndef JAX_ROI_CSRC_ROI_POOL_ROI_POOL_MATH_H_
#define JAX_ROI_CSRC_ROI_POOL_ROI_POOL_MATH_H_

#include <cstdint>

#include "core/box.h"
#include "core/dims.h"
#include "core/math.h"
#include "core/types.h"

namespace jax_roi {

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
  r.start_w = clamp_to_i64(math_round(sx1), kCoordLimit);
  r.start_h = clamp_to_i64(math_round(sy1), kCoordLimit);
  const int64_t end_w = clamp_to_i64(math_round(sx2), kCoordLimit);
  const int64_t end_h = clamp_to_i64(math_round(sy2), kCoordLimit);
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

// Maximum over a non-empty window of one (image, channel) plane whose element
// (h, w) is at base[h * stride_h + w * stride_w]; ties go to the first
// maximum in row-major order. *argmax receives h * width + w, or -1.
template <typename T>
JAX_ROI_HD acc_t<T> window_max(const T* base, int64_t stride_h, int64_t stride_w, int64_t width,
                               Window rows, Window cols, int32_t* argmax) {
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

// Output element (ph, pw) of channel c of a RoI (box, r = pool_roi(box)):
// its maximum, and in *argmax the flat index h * W + w of the first maximum,
// or -1 where the bin pools nothing (value 0). The forward's rule; the
// backward without a saved argmax finds the same winner again with it.
template <typename T, typename C>
JAX_ROI_HD acc_t<T> pool_output_max(const RoiDims& d, const T* features, const Box<C>& box,
                                    const PoolRoi<C>& r, int64_t c, int64_t ph, int64_t pw,
                                    int32_t* argmax) {
  *argmax = -1;
  if (r.empty) return acc_t<T>(0);
  const Window rows = pool_bin(ph, r.bin_h, r.start_h, d.height);
  const Window cols = pool_bin(pw, r.bin_w, r.start_w, d.width);
  if (rows.empty() || cols.empty()) return acc_t<T>(0);
  const int64_t stride_h = d.layout == Layout::kNCHW ? d.width : d.width * d.channels;
  const int64_t stride_w = d.layout == Layout::kNCHW ? 1 : d.channels;
  const T* base = features + feature_index(d, box.image, c, 0, 0);
  return window_max(base, stride_h, stride_w, d.width, rows, cols, argmax);
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_POOL_ROI_POOL_MATH_H_
