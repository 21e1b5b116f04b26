// Value types shared by the CPU and CUDA kernels of every op: storage types
// for half precision, the accumulation-type policy, loads and stores, and the
// (storage, coordinate) type pairs the kernels are compiled for. Nothing here
// knows about XLA FFI.
#ifndef JAX_ROI_CSRC_CORE_TYPES_H_
#define JAX_ROI_CSRC_CORE_TYPES_H_

#include <cmath>
#include <cstdint>
#include <cstring>

// JAX_ROI_HD marks the functions the CPU and CUDA kernels share. Under a
// host compiler (CPU kernels, FFI handlers, or CUDA kernels run by the host
// emulation of core/cuda_compat.h) they are plain inline functions.
#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define JAX_ROI_HD __host__ __device__ __forceinline__
#else
#define JAX_ROI_HD inline
#endif

namespace jax_roi {

// IEEE binary16 and bfloat16 values, stored as their bit patterns. The
// kernels never compute in these types: every load widens to float and every
// store rounds once, to nearest even.
struct f16 {
  uint16_t bits;
};
struct bf16 {
  uint16_t bits;
};

// Accumulation (and arithmetic) type of a storage type.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

// The bits of a float and back.
#if defined(__CUDA_ARCH__)
JAX_ROI_HD uint32_t float_bits(float v) { return __float_as_uint(v); }
JAX_ROI_HD float bits_float(uint32_t u) { return __uint_as_float(u); }
#else
template <typename To, typename From>
inline To bit_copy(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_copy needs types of one size");
  To out;
  std::memcpy(&out, &v, sizeof(out));
  return out;
}
JAX_ROI_HD uint32_t float_bits(float v) { return bit_copy<uint32_t>(v); }
JAX_ROI_HD float bits_float(uint32_t u) { return bit_copy<float>(u); }
#endif

JAX_ROI_HD float to_float(f16 h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h.bits));
#else
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu;
  const uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in float.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) {  // Inf or NaN (payload kept).
    return bits_float(sign | 0x7f800000u | (mantissa << 13));
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
#endif
}

JAX_ROI_HD float to_float(bf16 h) { return bits_float(static_cast<uint32_t>(h.bits) << 16); }

JAX_ROI_HD f16 to_f16(float v) {
#if defined(__CUDA_ARCH__)
  // NaN canonicalised as on the host (the intrinsic gives 0x7fff).
  if (v != v) return f16{static_cast<uint16_t>(((__float_as_uint(v) >> 16) & 0x8000u) | 0x7e00u)};
  return f16{__half_as_ushort(__float2half_rn(v))};
#else
  uint32_t x = float_bits(v);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {  // Inf stays Inf, NaN becomes a quiet NaN.
    return f16{static_cast<uint16_t>(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  }
  if (x >= 0x477ff000u) {  // >= 65520 rounds to infinity.
    return f16{static_cast<uint16_t>(sign | 0x7c00u)};
  }
  if (x < 0x38800000u) {  // Below 2^-14: a subnormal (or zero) result.
    // |v| * 2^24 is exact; rounding it to an integer (ties to even, the
    // default rounding mode) gives the subnormal mantissa. A result of 0x400
    // is the smallest normal number, which is also the right encoding.
    const float scaled = bits_float(x) * 16777216.0f;
    return f16{static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)))};
  }
  x += 0xfffu + ((x >> 13) & 1u);  // Round the 13 dropped bits to nearest even.
  x -= 0x38000000u;                // Rebias the exponent from 127 to 15.
  return f16{static_cast<uint16_t>(sign | (x >> 13))};
#endif
}

JAX_ROI_HD bf16 to_bf16(float v) {
  uint32_t x = float_bits(v);
  if ((x & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a quiet NaN.
    return bf16{static_cast<uint16_t>((x >> 16) | 0x40u)};
  }
  x += 0x7fffu + ((x >> 16) & 1u);
  return bf16{static_cast<uint16_t>(x >> 16)};
}

// load<T>: widen a stored value to its accumulation type.
JAX_ROI_HD float load(const float* p) { return *p; }
JAX_ROI_HD double load(const double* p) { return *p; }
JAX_ROI_HD float load(const f16* p) { return to_float(*p); }
JAX_ROI_HD float load(const bf16* p) { return to_float(*p); }

// store: round an accumulated value once into the storage type.
JAX_ROI_HD void store(float* p, float v) { *p = v; }
JAX_ROI_HD void store(double* p, double v) { *p = v; }
JAX_ROI_HD void store(f16* p, float v) { *p = to_f16(v); }
JAX_ROI_HD void store(bf16* p, float v) { *p = to_bf16(v); }

// Every (storage type, coordinate type) pair the kernels are compiled for:
// features float32/float64/float16/bfloat16 times boxes float32/float64.
// Expands M(T, C, extra...) for each pair (see core/kernel.h).
#define JAX_ROI_FOR_EACH_TYPE_PAIR(M, ...) \
  M(float, float, __VA_ARGS__)             \
  M(float, double, __VA_ARGS__)            \
  M(double, float, __VA_ARGS__)            \
  M(double, double, __VA_ARGS__)           \
  M(::jax_roi::f16, float, __VA_ARGS__)    \
  M(::jax_roi::f16, double, __VA_ARGS__)   \
  M(::jax_roi::bf16, float, __VA_ARGS__)   \
  M(::jax_roi::bf16, double, __VA_ARGS__)

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_TYPES_H_
