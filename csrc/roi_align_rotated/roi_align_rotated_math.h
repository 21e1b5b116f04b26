// Per-element math of rotated RoIAlign (detectron2's ROIAlignRotated, mmcv's
// roi_align_rotated), shared by the CPU and CUDA kernels: the geometry of an
// oriented RoI, the positions of its samples, and the derivatives of a
// sample's position with respect to the five box parameters.
//
// Coordinates are computed in the box dtype C, values in acc_t<T>, in
// detectron2's order of operations (the kernels are compiled without
// floating-point contraction).
#ifndef JAX_ROI_CSRC_ROI_ALIGN_ROTATED_ROI_ALIGN_ROTATED_MATH_H_
#define JAX_ROI_CSRC_ROI_ALIGN_ROTATED_ROI_ALIGN_ROTATED_MATH_H_

#include <cmath>
#include <cstdint>

#include "core/bilinear.h"
#include "core/dims.h"
#include "core/math.h"
#include "core/sample_grid.h"
#include "core/types.h"
#include "roi_align_rotated/roi_align_rotated_kernels.h"

namespace jax_roi {

constexpr double kRotatedPi = 3.14159265358979323846;

JAX_ROI_HD float rotated_cos(float v) { return ::cosf(v); }
JAX_ROI_HD double rotated_cos(double v) { return ::cos(v); }
JAX_ROI_HD float rotated_sin(float v) { return ::sinf(v); }
JAX_ROI_HD double rotated_sin(double v) { return ::sin(v); }

// Values per RoI row: 5 for batched (N, R, 5) boxes, 6 for (K, 6) rows.
JAX_ROI_HD int64_t rotated_row_size(const RoiDims& d) { return d.rois_per_image > 0 ? 5 : 6; }

template <typename C>
struct RotatedBox {
  int64_t image;  // -1 for a padding row.
  C cx, cy, w, h, angle;
};

template <typename C>
JAX_ROI_HD RotatedBox<C> read_rotated_box(const C* rois, int64_t k, const RoiDims& d) {
  RotatedBox<C> b;
  const C* p;
  if (d.rois_per_image > 0) {
    p = rois + k * 5;
    b.image = k / d.rois_per_image;
  } else {
    p = rois + k * 6;
    // As core/box.h's batch_index: truncation toward zero; outside [0, N) or NaN: padding.
    b.image = (d.batch > 0 && p[0] > C(-1) && p[0] < static_cast<C>(d.batch))
                  ? static_cast<int64_t>(p[0])
                  : -1;
    ++p;
  }
  b.cx = p[0];
  b.cy = p[1];
  b.w = p[2];
  b.h = p[3];
  b.angle = p[4];
  return b;
}

// Per-RoI geometry. Sample (iy, ix) of bin (ph, pw) sits in the box frame at
//   yy = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h   (start_h = -h'/2)
//   xx = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
// and on the map at y = yy * cos - xx * sin + cy', x = yy * sin + xx * cos + cx'.
template <typename C>
struct RotatedRoi {
  bool empty;  // No samples: padding row, or a non-finite centre, size or angle.
  C cy, cx;    // Centre in feature pixels (offset applied).
  C cos_t, sin_t;
  C start_h, start_w;
  C bin_h, bin_w;
  int64_t grid_h, grid_w;     // <= 0: no samples.
  C count;                    // max(grid_h * grid_w, 1)
  bool clamped_h, clamped_w;  // Size forced to 1 pixel (aligned == false).
  // The box-frame rectangle [yy_lo, yy_hi] x [xx_lo, xx_hi] that holds every
  // point of the sampling region [-1, H] x [-1, W] (with a margin): samples
  // outside it are zero and never visited, so the work of a bin stays bounded
  // by the samples that can land on the map, however large the box.
  double yy_lo, yy_hi, xx_lo, xx_hi;
};

template <typename C>
JAX_ROI_HD RotatedRoi<C> rotated_roi(const RotatedBox<C>& box, C scale, const RotatedOptions& o,
                                     const RoiDims& d) {
  RotatedRoi<C> r;
  const C offset = o.aligned ? C(0.5) : C(0);
  r.cx = box.cx * scale - offset;
  r.cy = box.cy * scale - offset;
  C roi_w = box.w * scale;
  C roi_h = box.h * scale;
  const double sign = o.clockwise ? -1.0 : 1.0;
  const C theta = o.degrees
                      ? static_cast<C>(sign * static_cast<double>(box.angle) * kRotatedPi / 180.0)
                      : static_cast<C>(static_cast<double>(box.angle) * sign);
  r.cos_t = rotated_cos(theta);
  r.sin_t = rotated_sin(theta);
  r.clamped_h = r.clamped_w = false;
  if (!o.aligned) {  // mmcv's aligned=False: at least 1 pixel (NaN stays NaN).
    if (roi_w < C(1)) {
      roi_w = C(1);
      r.clamped_w = true;
    }
    if (roi_h < C(1)) {
      roi_h = C(1);
      r.clamped_h = true;
    }
  }
  r.empty = box.image < 0 || !(finite(r.cx) && finite(r.cy) && finite(roi_w) && finite(roi_h) &&
                               finite(r.cos_t) && finite(r.sin_t));
  if (r.empty) {
    r.cx = r.cy = r.start_h = r.start_w = r.bin_h = r.bin_w = C(0);
    r.cos_t = C(1);
    r.sin_t = C(0);
    r.grid_h = r.grid_w = 0;
    r.count = C(1);
    r.clamped_h = r.clamped_w = false;
    r.yy_lo = r.yy_hi = r.xx_lo = r.xx_hi = 0;
    return r;
  }
  r.start_h = -(roi_h / C(2));
  r.start_w = -(roi_w / C(2));
  r.bin_h = roi_h / static_cast<C>(d.pooled_height);
  r.bin_w = roi_w / static_cast<C>(d.pooled_width);
  r.grid_h = o.sampling_ratio > 0 ? o.sampling_ratio : clamp_to_i64(math_ceil(r.bin_h), kMaxGrid);
  r.grid_w = o.sampling_ratio > 0 ? o.sampling_ratio : clamp_to_i64(math_ceil(r.bin_w), kMaxGrid);
  r.count = static_cast<C>(max_i64(r.grid_h * r.grid_w, 1));
  // Box-frame bounds of the sampling region's corners: yy = (y - cy) cos +
  // (x - cx) sin, xx = (x - cx) cos - (y - cy) sin, in double, widened by a
  // margin far above the rounding of the sample positions.
  const double c = static_cast<double>(r.cos_t), s = static_cast<double>(r.sin_t);
  const double cy = static_cast<double>(r.cy), cx = static_cast<double>(r.cx);
  const double ys[2] = {-1.0 - cy, static_cast<double>(d.height) - cy};
  const double xs[2] = {-1.0 - cx, static_cast<double>(d.width) - cx};
  r.yy_lo = r.xx_lo = 1e308;
  r.yy_hi = r.xx_hi = -1e308;
  double magnitude = 0;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      const double yy = ys[i] * c + xs[j] * s, xx = xs[j] * c - ys[i] * s;
      r.yy_lo = yy < r.yy_lo ? yy : r.yy_lo;
      r.yy_hi = yy > r.yy_hi ? yy : r.yy_hi;
      r.xx_lo = xx < r.xx_lo ? xx : r.xx_lo;
      r.xx_hi = xx > r.xx_hi ? xx : r.xx_hi;
      const double m = (ys[i] < 0 ? -ys[i] : ys[i]) + (xs[j] < 0 ? -xs[j] : xs[j]);
      magnitude = m > magnitude ? m : magnitude;
    }
  }
  const double cm = (cy < 0 ? -cy : cy) + (cx < 0 ? -cx : cx);
  const double margin = 2.0 + 1e-4 * (magnitude + cm);
  r.yy_lo -= margin;
  r.yy_hi += margin;
  r.xx_lo -= margin;
  r.xx_hi += margin;
  return r;
}

// The grid indices i in [0, grid) of bin p whose box-frame coordinate lies
// in [lo, hi]: a half-open range (sample_coord is monotonic in i).
template <typename C>
JAX_ROI_HD SampleRange rotated_sample_range(C start, int64_t p, C bin, int64_t grid, double lo,
                                            double hi) {
  if (grid <= 0) return SampleRange{0, 0};
  const bool increasing = bin >= C(0);
  auto first_true = [&](auto pred) {
    int64_t a = 0, b = grid;
    while (a < b) {
      const int64_t mid = a + (b - a) / 2;
      if (pred(mid)) {
        b = mid;
      } else {
        a = mid + 1;
      }
    }
    return a;
  };
  auto at = [&](int64_t i) { return static_cast<double>(sample_coord(start, p, bin, i, grid)); };
  int64_t first, last;
  if (increasing) {
    first = first_true([&](int64_t i) { return at(i) >= lo; });
    last = first_true([&](int64_t i) { return at(i) > hi; });
  } else {
    first = first_true([&](int64_t i) { return at(i) <= hi; });
    last = first_true([&](int64_t i) { return at(i) < lo; });
  }
  return SampleRange{first, last < first ? first : last};
}

// The samples of bin (ph, pw) that may land in the sampling region.
struct RotatedBin {
  SampleRange ys, xs;
};

template <typename C>
JAX_ROI_HD RotatedBin rotated_bin(const RotatedRoi<C>& r, int64_t ph, int64_t pw,
                                  const RoiDims& d) {
  RotatedBin b;
  if (r.empty || r.grid_h <= 0 || r.grid_w <= 0 || d.height == 0 || d.width == 0) {
    b.ys = b.xs = SampleRange{0, 0};
    return b;
  }
  b.ys = rotated_sample_range(r.start_h, ph, r.bin_h, r.grid_h, r.yy_lo, r.yy_hi);
  b.xs = rotated_sample_range(r.start_w, pw, r.bin_w, r.grid_w, r.xx_lo, r.xx_hi);
  return b;
}

// One sample: its box-frame position and its bilinear interpolation state.
template <typename C>
struct RotatedSample {
  int64_t iy, ix;
  C yy, xx;
  Bilinear<C> s;
};

// Calls f(sample) for every valid sample of bin (ph, pw), in detectron2's
// order (iy outer, ix inner).
template <typename C, typename F>
JAX_ROI_HD void for_each_rotated_sample(const RotatedRoi<C>& r, const RotatedBin& b, int64_t ph,
                                        int64_t pw, const RoiDims& d, F&& f) {
  for (int64_t iy = b.ys.first; iy < b.ys.last; ++iy) {
    const C yy = sample_coord(r.start_h, ph, r.bin_h, iy, r.grid_h);
    for (int64_t ix = b.xs.first; ix < b.xs.last; ++ix) {
      const C xx = sample_coord(r.start_w, pw, r.bin_w, ix, r.grid_w);
      const C y = yy * r.cos_t - xx * r.sin_t + r.cy;
      const C x = yy * r.sin_t + xx * r.cos_t + r.cx;
      RotatedSample<C> rs{iy, ix, yy, xx, bilinear(y, x, d.height, d.width)};
      if (rs.s.valid) f(rs);
    }
  }
}

// avg output of bin (ph, pw) of one channel (plane at base, NCHW step 1,
// NHWC step C).
template <typename T, typename C>
JAX_ROI_HD acc_t<T> rotated_output(const T* base, int64_t step, const RotatedRoi<C>& r, int64_t ph,
                                   int64_t pw, const RoiDims& d) {
  using A = acc_t<T>;
  A sum = A(0);
  for_each_rotated_sample(r, rotated_bin(r, ph, pw, d), ph, pw, d, [&](const RotatedSample<C>& rs) {
    sum += bilinear_gather(base, step, bilinear_taps<A>(rs.s, d.width));
  });
  return sum / static_cast<A>(r.count);
}

// The gradient of sum(output * g) w.r.t. one RoI's five box parameters,
// accumulated in double from each sample's dvalue/dy and dvalue/dx (summed
// over channels with their cotangents: gy, gx). With h' = h * s (s the
// spatial scale) and t the angle in radians:
//   dy/dcy = s, dx/dcx = s,
//   dyy/dh' = -1/2 + (ph + (iy + 0.5) / grid_h) / PH  (0 when clamped), likewise xx,
//   dy/dyy = cos, dx/dyy = sin, dy/dxx = -sin, dx/dxx = cos,
//   dy/dt = -(yy sin + xx cos), dx/dt = yy cos - xx sin.
// The adaptive grid is piecewise constant and contributes nothing.
struct RotatedGradSums {
  double cy = 0, cx = 0, h = 0, w = 0, t = 0;

  template <typename C>
  JAX_ROI_HD void add(const RotatedRoi<C>& r, const RotatedSample<C>& rs, int64_t ph, int64_t pw,
                      const RoiDims& d, double gy, double gx) {
    const double c = static_cast<double>(r.cos_t), s = static_cast<double>(r.sin_t);
    const double yy = static_cast<double>(rs.yy), xx = static_cast<double>(rs.xx);
    cy += gy;
    cx += gx;
    const double dyy = -0.5 + static_cast<double>(sample_coord_dbin<C>(ph, rs.iy, r.grid_h)) /
                                  static_cast<double>(d.pooled_height);
    const double dxx = -0.5 + static_cast<double>(sample_coord_dbin<C>(pw, rs.ix, r.grid_w)) /
                                  static_cast<double>(d.pooled_width);
    h += (gy * c + gx * s) * dyy;
    w += (gx * c - gy * s) * dxx;
    t += gx * (yy * c - xx * s) - gy * (yy * s + xx * c);
  }

  // Writes d/dcx, d/dcy, d/dw, d/dh, d/dangle.
  template <typename C>
  JAX_ROI_HD void write(const RotatedRoi<C>& r, const RotatedOptions& o, C* out) const {
    const double scale = static_cast<double>(static_cast<C>(o.spatial_scale));
    const double dtheta = (o.clockwise ? -1.0 : 1.0) * (o.degrees ? kRotatedPi / 180.0 : 1.0);
    out[0] = static_cast<C>(scale * cx);
    out[1] = static_cast<C>(scale * cy);
    out[2] = static_cast<C>(r.clamped_w ? 0.0 : scale * w);
    out[3] = static_cast<C>(r.clamped_h ? 0.0 : scale * h);
    out[4] = static_cast<C>(dtheta * t);
  }
};

// One sample's (gy, gx) for one channel: g times the derivatives of the
// sample's value w.r.t. y and x (zero where frozen at the edge).
template <typename T, typename C>
JAX_ROI_HD void rotated_sample_grad(const T* base, int64_t step, int64_t width,
                                    const Bilinear<C>& s, double g, double* gy, double* gx) {
  const BilinearTaps<C> t = bilinear_taps<C>(s, width);
  C d_dy, d_dx;
  bilinear_gradient(s, load(base + t.o1 * step), load(base + t.o2 * step), load(base + t.o3 * step),
                    load(base + t.o4 * step), &d_dy, &d_dx);
  *gy += g * static_cast<double>(d_dy);
  *gx += g * static_cast<double>(d_dx);
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_ALIGN_ROTATED_ROI_ALIGN_ROTATED_MATH_H_
