// Scalar math shared by the kernels of every op (host and device): rounding
// and elementary functions overloaded for float and double, int64 helpers,
// the exact division by a sample count, and the start value of running
// maxima.
#ifndef JAX_ROI_CSRC_CORE_MATH_H_
#define JAX_ROI_CSRC_CORE_MATH_H_

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "core/types.h"

namespace jax_roi {

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

// Converts a non-NaN value to int64, truncating toward zero, after clamping
// it to [-limit, limit] (so that +-inf are defined too).
template <typename C>
JAX_ROI_HD int64_t clamp_to_i64(C v, double limit) {
  const C l = static_cast<C>(limit);
  v = v < -l ? -l : (v > l ? l : v);
  return static_cast<int64_t>(v);
}

template <typename C>
JAX_ROI_HD bool finite(C v) {
  return v - v == C(0);  // False for NaN and +-inf.
}

// The running maximum of a max pooling starts here, as torchvision's does
// (also for double): NaNs never win a strict '>' comparison and values <=
// -FLT_MAX never do either, so such a bin outputs -FLT_MAX (RoIPool) and no
// gradient flows from it.
template <typename A>
JAX_ROI_HD A pool_initial_max() {
  return static_cast<A>(-FLT_MAX);
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_MATH_H_
