// Per-element math of the position-sensitive RoI ops, shared by the CPU and
// CUDA kernels, in torchvision's operation order (bit-exact forward on the
// CPU for float32 and float64; the kernels are compiled without
// floating-point contraction).
//
// ps_roi_pool (torchvision ps_roi_pool_kernel.cpp): start = round(x1 * s),
// end = round(x2 * s) (half away from zero), size max(end - start, 1) (no +1,
// unlike roi_pool), bin = size / pooled size; bin p covers [floor(p * bin),
// ceil((p + 1) * bin)) plus the start, clipped to [0, H - 1] (so the last row
// and column are never pooled); the output is the mean of the bin, 0 when
// empty. The backward here is the derivative of that forward (torchvision's
// clips to [0, H] instead).
//
// ps_roi_align: roi_align's geometry with aligned = true (roi_align_math.h:
// align_roi, align_bin, for_each_sample, BoxGradSums), the average dividing
// by max(grid_h * grid_w, 1): 0 where torchvision divides 0 by 0 (NaN).
#ifndef JAX_ROI_CSRC_PS_ROI_PS_ROI_MATH_H_
#define JAX_ROI_CSRC_PS_ROI_PS_ROI_MATH_H_

#include <cstdint>

#include "core/box.h"
#include "core/dims.h"
#include "core/math.h"
#include "core/types.h"
#include "ps_roi/ps_roi_kernels.h"
#include "roi_align/roi_align_math.h"

namespace jax_roi {

// Per-RoI geometry of ps_roi_pool.
template <typename C>
struct PsPoolRoi {
  bool empty;  // Every bin is empty: padding row or NaN coordinate.
  int64_t start_h, start_w;
  C bin_h, bin_w;
};

template <typename C>
JAX_ROI_HD PsPoolRoi<C> ps_pool_roi(const Box<C>& box, C scale, const RoiDims& d) {
  PsPoolRoi<C> r;
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
  const int64_t roi_w = max_i64(end_w - r.start_w, 1);
  const int64_t roi_h = max_i64(end_h - r.start_h, 1);
  r.bin_h = static_cast<C>(roi_h) / static_cast<C>(d.pooled_height);
  r.bin_w = static_cast<C>(roi_w) / static_cast<C>(d.pooled_width);
  return r;
}

// Half-open range [start, end) of pixel rows (or columns) of a bin.
struct PsWindow {
  int64_t start, end;
  JAX_ROI_HD bool empty() const { return end <= start; }
  JAX_ROI_HD int64_t size() const { return end - start; }
};

// Rows (or columns) of bin p: [floor(p * bin), ceil((p + 1) * bin)) shifted
// by the RoI start, each end clipped to [0, size - 1] (torchvision's forward).
template <typename C>
JAX_ROI_HD PsWindow ps_pool_bin(bool empty_roi, int64_t p, C bin, int64_t roi_start, int64_t size) {
  if (empty_roi || size <= 0) return PsWindow{0, 0};
  const int64_t lo = static_cast<int64_t>(math_floor(static_cast<C>(p) * bin)) + roi_start;
  const int64_t hi = static_cast<int64_t>(math_ceil(static_cast<C>(p + 1) * bin)) + roi_start;
  return PsWindow{clip_i64(lo, 0, size - 1), clip_i64(hi, 0, size - 1)};
}

// The bin's area as the divisor of its mean (torchvision: an int product
// converted to T).
template <typename A>
JAX_ROI_HD A ps_pool_area(PsWindow rows, PsWindow cols) {
  return static_cast<A>(rows.size() * cols.size());
}

// Mean of a non-empty window of one plane (element (h, w) at
// base[(h * width + w) * step]), summed in row-major order.
template <typename T>
JAX_ROI_HD acc_t<T> ps_pool_mean(const T* base, int64_t step, int64_t width, PsWindow rows,
                                 PsWindow cols) {
  using A = acc_t<T>;
  A sum = A(0);
  for (int64_t h = rows.start; h < rows.end; ++h) {
    for (int64_t w = cols.start; w < cols.end; ++w) sum += load(base + (h * width + w) * step);
  }
  return sum / ps_pool_area<A>(rows, cols);
}

// ps_roi_align's geometry: roi_align's with aligned = true.
template <typename C>
JAX_ROI_HD AlignRoi<C> ps_align_roi(const Box<C>& box, C scale, int64_t sampling_ratio,
                                    const RoiDims& d) {
  return align_roi(box, scale, true, sampling_ratio, d);
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_PS_ROI_PS_ROI_MATH_H_
