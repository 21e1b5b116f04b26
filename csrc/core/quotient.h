// Sums of quotients by a sample count for the CPU backward kernels (they
// know no op, no FFI): p[c] += (g[c] * w) / count, with the bits of the
// IEEE division, without the division.
//
// The average-mode backwards of roi_align, roi_align_rotated and
// ps_roi_align divide every term by the RoI's sample count, as torchvision
// and detectron2 do. With adaptive sampling the count is rarely a power of
// two (CountDivider's cheap case), and a vector division costs about twice
// the rest of the update: 0.21-0.23 ns a term against 0.08-0.12 ns here
// (one core, a row of 256 channels in L1).
//
// Markstein's theorem (Handbook of Floating-Point Arithmetic, 2nd ed.,
// section 4.7): with y = RN(1/b) and q = RN(a * y), which lies within an
// ulp of a/b, the remainder r = a - q * b is exact (one FMA), and
// RN(q + r * y) is the correctly rounded a/b. It needs q normal and finite.
// Written as q - RN(q * b - a) * y it also gives a signed zero the sign of
// a / b. The check is per row and tap, not per element: with m and M the
// smallest nonzero and the largest |g| of the row (all finite), every
// nonzero |q| lies in [RN(RN(m |w|) y), RN(RN(M |w|) y)] since rounding is
// monotonic; the fast path runs when that interval lies in
// [2^-125, FLT_MAX] (a binade of margin above the subnormals) or w is zero,
// and the division otherwise (subnormal or infinite quotients, NaN, inf).
// tests/test_quotients.py compiles this header and checks every float32
// mantissa against the division for the counts 1-4096 and values of every
// exponent; the ops' tests compare the gradients with loop references.
#ifndef JAX_ROI_CSRC_CORE_QUOTIENT_H_
#define JAX_ROI_CSRC_CORE_QUOTIENT_H_

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "core/math.h"

namespace jax_roi {
namespace cpu {

// The range of |g| over a row of cotangents that add_quotients scales.
template <typename A>
struct CotangentRange {
  A smallest = A(INFINITY);  // The smallest nonzero |g| (inf: none).
  A largest = A(0);          // The largest |g|.
  bool finite = true;        // No inf or NaN in the row.
};

template <typename A>
CotangentRange<A> cotangent_range(const A* g, int64_t n) {
  CotangentRange<A> r;
  int64_t not_finite = 0;
  for (int64_t c = 0; c < n; ++c) {
    const A v = std::fabs(g[c]);
    not_finite += !(v <= A(FLT_MAX));
    r.smallest = v > A(0) && v < r.smallest ? v : r.smallest;
    r.largest = v > r.largest ? v : r.largest;
  }
  r.finite = not_finite == 0;
  return r;
}

// p[c] += div(g[c] * w) for c < n, in order of c, bit for bit; `range` is
// cotangent_range(g, n). p and g do not overlap.
template <typename A>
inline void add_quotients(A* p, const A* __restrict g, A w, const CountDivider<A>& div,
                          const CotangentRange<A>& range, int64_t n) {
  (void)range;
  for (int64_t c = 0; c < n; ++c) p[c] += div(g[c] * w);
}

#if defined(__FMA__)
inline void add_quotients(float* p, const float* __restrict g, float w,
                          const CountDivider<float>& div, const CotangentRange<float>& range,
                          int64_t n) {
  const float b = div.count, y = div.reciprocal, aw = std::fabs(w);
  const bool normal = range.finite && (w == 0.0f || ((range.smallest * aw) * y >= 0x1p-125f &&
                                                     (range.largest * aw) * y <= FLT_MAX));
  if (div.power_of_two || !normal) {  // An exact multiplication, or the division.
    for (int64_t c = 0; c < n; ++c) p[c] += div(g[c] * w);
    return;
  }
  for (int64_t c = 0; c < n; ++c) {  // Vectorised: two multiplies and two FMAs.
    const float a = g[c] * w;
    const float q = a * y;
    p[c] += std::fma(-std::fma(q, b, -a), y, q);
  }
}
#endif

}  // namespace cpu
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_QUOTIENT_H_
