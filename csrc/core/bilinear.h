// Bilinear sampling of a feature plane (host and device), torchvision's
// rule: the interpolation state of one sample, its value and its gradient
// with respect to its coordinates, and the two ways every kernel touches the
// four neighbours of a sample: gathering their weighted values, and
// scattering a gradient to them.
#ifndef JAX_ROI_CSRC_CORE_BILINEAR_H_
#define JAX_ROI_CSRC_CORE_BILINEAR_H_

#include <cstdint>

#include "core/types.h"

namespace jax_roi {

// A sample coordinate contributes only inside [-1, size] (zero beyond).
template <typename C>
JAX_ROI_HD bool coord_in_range(C v, int64_t size) {
  return v >= C(-1) && v <= static_cast<C>(size);
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

// One axis of a valid sample at v in [-1, size]: v clamped to the map (edge
// replication), its low and high neighbour and their weights l = v - low,
// h = 1 - l.
template <typename C>
struct BilinearAxis {
  int64_t low, high;
  C l, h;
  bool frozen;  // The value does not depend on v here.
};

template <typename C>
JAX_ROI_HD BilinearAxis<C> bilinear_axis(C v, int64_t size) {
  BilinearAxis<C> a;
  a.frozen = false;
  if (v <= C(0)) {
    v = C(0);
    a.frozen = true;
  }
  a.low = static_cast<int64_t>(v);
  if (a.low >= size - 1) {
    a.high = a.low = size - 1;
    v = static_cast<C>(a.low);
    a.frozen = true;
  } else {
    a.high = a.low + 1;
  }
  a.l = v - static_cast<C>(a.low);
  a.h = C(1) - a.l;
  return a;
}

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
  const BilinearAxis<C> ay = bilinear_axis(y, height);
  const BilinearAxis<C> ax = bilinear_axis(x, width);
  b.y_low = ay.low;
  b.y_high = ay.high;
  b.ly = ay.l;
  b.hy = ay.h;
  b.y_frozen = ay.frozen;
  b.x_low = ax.low;
  b.x_high = ax.high;
  b.lx = ax.l;
  b.hx = ax.h;
  b.x_frozen = ax.frozen;
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
JAX_ROI_HD void bilinear_gradient(const Bilinear<C>& b, A v1, A v2, A v3, A v4, C* d_dy, C* d_dx) {
  *d_dy = b.y_frozen ? C(0) : b.hx * static_cast<C>(v3 - v1) + b.lx * static_cast<C>(v4 - v2);
  *d_dx = b.x_frozen ? C(0) : b.hy * static_cast<C>(v2 - v1) + b.ly * static_cast<C>(v4 - v3);
}

// The four neighbours of a valid sample, in torchvision's order
// ((y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)): their
// spatial offsets y * width + x and their weights in the accumulation type A.
// I is the offset type (int32_t in the CPU kernels' per-RoI caches).
template <typename A, typename I = int64_t>
struct BilinearTaps {
  I o1, o2, o3, o4;
  A w1, w2, w3, w4;
};

template <typename A, typename I = int64_t, typename C>
JAX_ROI_HD BilinearTaps<A, I> bilinear_taps(const Bilinear<C>& s, int64_t width) {
  return BilinearTaps<A, I>{static_cast<I>(s.y_low * width + s.x_low),
                            static_cast<I>(s.y_low * width + s.x_high),
                            static_cast<I>(s.y_high * width + s.x_low),
                            static_cast<I>(s.y_high * width + s.x_high),
                            static_cast<A>(s.w1),
                            static_cast<A>(s.w2),
                            static_cast<A>(s.w3),
                            static_cast<A>(s.w4)};
}

// Interpolated value of a sample from the plane (NCHW: step 1) or the pixels
// (NHWC: step C) at base, whose element at spatial offset o is base[o * step].
template <typename T, typename A, typename I>
JAX_ROI_HD A bilinear_gather(const T* base, int64_t step, const BilinearTaps<A, I>& t) {
  return bilinear_value(t.w1, t.w2, t.w3, t.w4, load(base + t.o1 * step), load(base + t.o2 * step),
                        load(base + t.o3 * step), load(base + t.o4 * step));
}

// Scatters a sample's gradient to its four neighbours, in torchvision's
// order: add(grad + o * step, w) for each neighbour's offset o and weight w.
// `add` performs the accumulation: a plain or atomic add of g * w (divided
// by the sample count in avg mode), or a loop over a row of channels.
template <typename P, typename A, typename I, typename Add>
JAX_ROI_HD void bilinear_scatter(P* grad, int64_t step, const BilinearTaps<A, I>& t, Add&& add) {
  add(grad + t.o1 * step, t.w1);
  add(grad + t.o2 * step, t.w2);
  add(grad + t.o3 * step, t.w3);
  add(grad + t.o4 * step, t.w4);
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_BILINEAR_H_
