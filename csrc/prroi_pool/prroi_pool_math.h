// Per-element math of Precise RoI Pooling (IoU-Net's PrRoIPool, mmcv's
// prroi_pool), shared by the CPU and CUDA kernels.
//
// The feature map is the surface f(y, x) = sum_ij F[i, j] tri(y - i)
// tri(x - j), tri(t) = max(0, 1 - |t|), with F = 0 at every grid point
// outside the map: the bilinear interpolation of the pixels, fading to 0
// within one pixel past the edge. A bin [y0, y1] x [x0, x1] outputs
//   (1 / area) * integral of f over the bin
//     = (1 / area) * sum_ij F[i, j] * wy(i) * wx(j),
//   wy(i) = integral_{y0}^{y1} tri(y - i) dy   (likewise wx),
// area = (y1 - y0) * (x1 - x0). Each weight is computed per pixel cell from
// the closed form of the integral of a linear function (prroi_weight).
//
// Geometry: box corners times spatial_scale, no offset; roi_w =
// max(x2 - x1, 0), bin_w = roi_w / PW, bin pw spans [x1 + pw * bin_w,
// x1 + pw * bin_w + bin_w] (likewise y). A bin of zero area, a padding row
// or a non-finite box outputs 0 and has zero gradients.
//
// Coordinates and weights are computed in the box dtype C, values summed in
// acc_t<T>: each output sums w(i, j) * F[i, j] over its pixels, rows
// ascending, columns ascending within a row, w(i, j) = wy(i) * wx(j) rounded
// to C then converted to acc_t<T>; then divides by the area (the kernels are
// compiled without floating-point contraction).
#ifndef JAX_ROI_CSRC_PRROI_POOL_PRROI_POOL_MATH_H_
#define JAX_ROI_CSRC_PRROI_POOL_PRROI_POOL_MATH_H_

#include <cstdint>

#include "core/box.h"
#include "core/dims.h"
#include "core/math.h"
#include "core/types.h"
#include "prroi_pool/prroi_pool_kernels.h"

namespace jax_roi {

template <typename C>
struct PrRoi {
  bool empty;  // Padding row, non-finite box, zero bin area or empty map.
  int64_t image;
  C start_y, start_x;  // Scaled top-left corner.
  C bin_h, bin_w;
  C area;  // bin_h * bin_w
};

template <typename C>
JAX_ROI_HD PrRoi<C> prroi_roi(const Box<C>& box, C scale, const RoiDims& d) {
  PrRoi<C> r;
  r.image = box.image;
  r.start_x = box.x1 * scale;
  r.start_y = box.y1 * scale;
  const C end_x = box.x2 * scale;
  const C end_y = box.y2 * scale;
  C roi_w = end_x - r.start_x;
  C roi_h = end_y - r.start_y;
  roi_w = roi_w > C(0) ? roi_w : C(0);  // max(x2 - x1, 0); NaN -> 0 (empty below).
  roi_h = roi_h > C(0) ? roi_h : C(0);
  r.bin_w = roi_w / static_cast<C>(d.pooled_width);
  r.bin_h = roi_h / static_cast<C>(d.pooled_height);
  r.area = r.bin_h * r.bin_w;
  r.empty = box.image < 0 || d.height == 0 || d.width == 0 || !finite(r.start_x) ||
            !finite(r.start_y) || !finite(end_x) || !finite(end_y) || !finite(r.area) ||
            !(r.area > C(0));
  if (r.empty) {
    r.start_x = r.start_y = r.bin_h = r.bin_w = C(0);
    r.area = C(1);
  }
  return r;
}

// The integral of tri(t - i) over [a, b] (a <= b): the parts of [a, b] in
// the cells [i - 1, i] (where tri(t - i) = u, u = t - (i - 1)) and [i, i + 1]
// (where it is 1 - u, u = t - i), each the closed form of a linear function's
// integral over [u0, u1]: (u1 - u0) * (u0 + u1) / 2, and
// (u1 - u0) * (1 - (u0 + u1) / 2).
template <typename C>
JAX_ROI_HD C prroi_weight(C a, C b, int64_t i) {
  const C ci = static_cast<C>(i);
  const C left = ci - C(1), right = ci + C(1);
  C w = C(0);
  C lo = a > left ? a : left;
  C hi = b < ci ? b : ci;
  if (hi > lo) {
    const C u0 = lo - left, u1 = hi - left;
    w += (u1 - u0) * ((u0 + u1) * C(0.5));
  }
  lo = a > ci ? a : ci;
  hi = b < right ? b : right;
  if (hi > lo) {
    const C u0 = lo - ci, u1 = hi - ci;
    w += (u1 - u0) * (C(1) - (u0 + u1) * C(0.5));
  }
  return w;
}

// tri(t) = max(0, 1 - |t|): the weight of grid point i at y (t = y - i).
JAX_ROI_HD double prroi_tri(double t) {
  const double a = t < 0 ? -t : t;
  return a < 1.0 ? 1.0 - a : 0.0;
}

// Grid points [first, last) of the map that [a, b] can weigh:
// [floor(a), ceil(b)] clipped to [0, size - 1].
struct PrRange {
  int64_t first, last;
};

template <typename C>
JAX_ROI_HD PrRange prroi_points(C a, C b, int64_t size) {
  const int64_t first = max_i64(clamp_to_i64(math_floor(a), kCoordLimit), 0);
  int64_t last = min_i64(clamp_to_i64(math_ceil(b), kCoordLimit) + 1, size);
  return PrRange{first, last < first ? first : last};
}

// Bin (ph, pw) of a non-empty RoI: its edges and the grid points it weighs.
template <typename C>
struct PrBin {
  C y0, y1, x0, x1;
  PrRange ys, xs;
};

template <typename C>
JAX_ROI_HD PrBin<C> prroi_bin(const PrRoi<C>& r, int64_t ph, int64_t pw, const RoiDims& d) {
  PrBin<C> b;
  b.y0 = r.start_y + static_cast<C>(ph) * r.bin_h;
  b.y1 = b.y0 + r.bin_h;
  b.x0 = r.start_x + static_cast<C>(pw) * r.bin_w;
  b.x1 = b.x0 + r.bin_w;
  if (r.empty) {
    b.ys = b.xs = PrRange{0, 0};
  } else {
    b.ys = prroi_points(b.y0, b.y1, d.height);
    b.xs = prroi_points(b.x0, b.x1, d.width);
  }
  return b;
}

// Calls f(hw, w) for every pixel hw = i * W + j of bin (ph, pw), rows
// ascending, columns ascending, with its weight w = wy(i) * wx(j) (in C).
template <typename C, typename F>
JAX_ROI_HD void for_each_prroi_pixel(const PrRoi<C>& r, int64_t ph, int64_t pw, const RoiDims& d,
                                     F&& f) {
  const PrBin<C> b = prroi_bin(r, ph, pw, d);
  for (int64_t i = b.ys.first; i < b.ys.last; ++i) {
    const C wy = prroi_weight(b.y0, b.y1, i);
    for (int64_t j = b.xs.first; j < b.xs.last; ++j) {
      f(i * d.width + j, wy * prroi_weight(b.x0, b.x1, j));
    }
  }
}

// The output of bin (ph, pw) of one channel (plane at base, NCHW step 1,
// NHWC step C).
template <typename T, typename C>
JAX_ROI_HD acc_t<T> prroi_output(const T* base, int64_t step, const PrRoi<C>& r, int64_t ph,
                                 int64_t pw, const RoiDims& d) {
  using A = acc_t<T>;
  if (r.empty) return A(0);
  A sum = A(0);
  for_each_prroi_pixel(r, ph, pw, d, [&](int64_t hw, C w) {
    sum += static_cast<A>(w) * static_cast<A>(load(base + hw * step));
  });
  return sum / static_cast<A>(r.area);
}

// The box gradient's sums of one RoI (unscaled: derivatives w.r.t. the
// scaled corners), in double.
struct PrRoiGradSums {
  double x1 = 0, y1 = 0, x2 = 0, y2 = 0;

  JAX_ROI_HD void merge(const PrRoiGradSums& o) {
    x1 += o.x1;
    y1 += o.y1;
    x2 += o.x2;
    y2 += o.y2;
  }

  // Writes d/dx1, d/dy1, d/dx2, d/dy2 (times the spatial scale, in the
  // box dtype's rounding of it, as the forward scales the corners).
  template <typename C>
  JAX_ROI_HD void write(double spatial_scale, C* coords) const {
    const double scale = static_cast<double>(static_cast<C>(spatial_scale));
    coords[0] = static_cast<C>(scale * x1);
    coords[1] = static_cast<C>(scale * y1);
    coords[2] = static_cast<C>(scale * x2);
    coords[3] = static_cast<C>(scale * y2);
  }
};

// Adds g times the derivative of output (ph, pw) of one channel w.r.t. the
// scaled corners (Y1, X1, Y2, X2) of a non-empty RoI. With I the integral,
// A = bin_h * bin_w, O = I / A, and the bin edges y0 = Y1 + ph * bin_h,
// y1 = y0 + bin_h, bin_h = (Y2 - Y1) / PH:
//   dI/dy1 = E(y1), dI/dy0 = -E(y0), E(y) = integral_{x0}^{x1} f(y, x) dx
//          = sum_ij F[i, j] tri(y - i) wx(j)  (the bin's edge integrals),
//   dy0/dY1 = 1 - ph / PH, dy0/dY2 = ph / PH,
//   dy1/dY1 = 1 - (ph + 1) / PH, dy1/dY2 = (ph + 1) / PH,
//   dO/dY = (dI/dY) / A - O * (dbin_h/dY) / bin_h, dbin_h/dY2 = -dbin_h/dY1 = 1 / PH;
// likewise along x. The sums run in double, in for_each_prroi_pixel's order.
// The per-grid-point factors of a bin's box gradient, in double: along y
// the weight wy(i) and the edge values tri(y0 - i), tri(y1 - i) (likewise
// along x), computed from the bin (the CUDA kernel). The CPU kernel reads the
// same values from a per-RoI cache (PrCachedFactors, prroi_pool_cpu.cc):
// the same numbers, so the same sums.
template <typename C>
struct PrDirectFactors {
  PrBin<C> b;

  JAX_ROI_HD void y(int64_t i, double* w, double* t0, double* t1) const {
    const double di = static_cast<double>(i);
    *w = static_cast<double>(prroi_weight(b.y0, b.y1, i));
    *t0 = prroi_tri(static_cast<double>(b.y0) - di);
    *t1 = prroi_tri(static_cast<double>(b.y1) - di);
  }
  JAX_ROI_HD void x(int64_t j, double* w, double* t0, double* t1) const {
    const double dj = static_cast<double>(j);
    *w = static_cast<double>(prroi_weight(b.x0, b.x1, j));
    *t0 = prroi_tri(static_cast<double>(b.x0) - dj);
    *t1 = prroi_tri(static_cast<double>(b.x1) - dj);
  }
};

// Adds g times the derivative of output (ph, pw) of one channel w.r.t. the
// scaled corners (Y1, X1, Y2, X2) of a non-empty RoI (bin b, factors f). With
// I the integral, A = bin_h * bin_w, O = I / A, and the bin edges
// y0 = Y1 + ph * bin_h, y1 = y0 + bin_h, bin_h = (Y2 - Y1) / PH:
//   dI/dy1 = E(y1), dI/dy0 = -E(y0), E(y) = integral_{x0}^{x1} f(y, x) dx
//          = sum_ij F[i, j] tri(y - i) wx(j)  (the bin's edge integrals),
//   dy0/dY1 = 1 - ph / PH, dy0/dY2 = ph / PH,
//   dy1/dY1 = 1 - (ph + 1) / PH, dy1/dY2 = (ph + 1) / PH,
//   dO/dY = (dI/dY) / A - O * (dbin_h/dY) / bin_h, dbin_h/dY2 = -dbin_h/dY1 = 1 / PH;
// likewise along x. The sums run in double, rows ascending, columns
// ascending.
template <typename T, typename C, typename Factors>
JAX_ROI_HD void prroi_box_grad_bin(const T* base, int64_t step, const PrRoi<C>& r,
                                   const PrBin<C>& b, const Factors& f, int64_t ph, int64_t pw,
                                   const RoiDims& d, double g, PrRoiGradSums* s) {
  double total = 0, ey0 = 0, ey1 = 0, ex0 = 0, ex1 = 0;
  for (int64_t i = b.ys.first; i < b.ys.last; ++i) {
    double wy, ty0, ty1;
    f.y(i, &wy, &ty0, &ty1);
    double row = 0, row_x0 = 0, row_x1 = 0;
    for (int64_t j = b.xs.first; j < b.xs.last; ++j) {
      double wx, tx0, tx1;
      f.x(j, &wx, &tx0, &tx1);
      const double v = static_cast<double>(load(base + (i * d.width + j) * step));
      row += wx * v;
      row_x0 += tx0 * v;
      row_x1 += tx1 * v;
    }
    total += wy * row;
    ey0 += ty0 * row;
    ey1 += ty1 * row;
    ex0 += wy * row_x0;
    ex1 += wy * row_x1;
  }
  const double bin_h = static_cast<double>(r.bin_h), bin_w = static_cast<double>(r.bin_w);
  const double area = bin_h * bin_w;
  const double out = total / area;
  const double fh = static_cast<double>(ph), PH = static_cast<double>(d.pooled_height);
  const double fw = static_cast<double>(pw), PW = static_cast<double>(d.pooled_width);
  const double oh = out / (PH * bin_h), ow = out / (PW * bin_w);
  s->y1 += g * ((ey1 * (1.0 - (fh + 1.0) / PH) - ey0 * (1.0 - fh / PH)) / area + oh);
  s->y2 += g * ((ey1 * ((fh + 1.0) / PH) - ey0 * (fh / PH)) / area - oh);
  s->x1 += g * ((ex1 * (1.0 - (fw + 1.0) / PW) - ex0 * (1.0 - fw / PW)) / area + ow);
  s->x2 += g * ((ex1 * ((fw + 1.0) / PW) - ex0 * (fw / PW)) / area - ow);
}

// The box gradient's summation order (both back ends): a RoI's outputs are
// split over kPrRoiGradLanes lanes, output j (its offset in the RoI's block
// of the output, in the output's layout) to lane j % kPrRoiGradLanes; each
// lane sums in increasing j; the lanes combine by a fixed tree: lane l +=
// lane l + s for s = kPrRoiGradLanes / 2, ..., 1.
constexpr int64_t kPrRoiGradLanes = 256;

// Output offset j within a RoI's block of the output -> (c, ph, pw).
JAX_ROI_HD void prroi_split_output(const RoiDims& d, int64_t j, int64_t* c, int64_t* ph,
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

// One lane's sum: outputs l, l + lanes, ... of a non-empty RoI k (the CUDA
// kernel; the CPU kernel sums the same terms from cached factors).
template <typename T, typename C>
JAX_ROI_HD PrRoiGradSums prroi_lane_sum(const PrRoiBoxGradArgs<T, C>& a, const PrRoi<C>& r,
                                        int64_t k, int64_t l) {
  const RoiDims& d = a.dims;
  const int64_t step = d.layout == Layout::kNCHW ? 1 : d.channels;
  const int64_t per_roi = d.channels * d.pooled_height * d.pooled_width;
  PrRoiGradSums sums;
  for (int64_t j = l; j < per_roi; j += kPrRoiGradLanes) {
    int64_t c, ph, pw;
    prroi_split_output(d, j, &c, &ph, &pw);
    const T* base = a.features + feature_index_hw(d, r.image, c, 0);
    const double g = static_cast<double>(load(a.grad_output + k * per_roi + j));
    const PrDirectFactors<C> f{prroi_bin(r, ph, pw, d)};
    prroi_box_grad_bin(base, step, r, f.b, f, ph, pw, d, g, &sums);
  }
  return sums;
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_PRROI_POOL_PRROI_POOL_MATH_H_
