// Helpers of the XLA FFI handlers of every op, which decode the buffers and
// attributes and validate every dimension and dtype (returning an ffi::Error
// that names the argument, never reading out of bounds) before they pick the
// kernel instantiation (dispatch_*_type). Host code only: the FFI headers
// are never compiled by nvcc.
#ifndef JAX_ROI_CSRC_CORE_FFI_HELPERS_H_
#define JAX_ROI_CSRC_CORE_FFI_HELPERS_H_

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dims.h"
#include "core/types.h"
#include "xla/ffi/api/ffi.h"

namespace jax_roi {

namespace ffi = ::xla::ffi;

#define JAX_ROI_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::xla::ffi::Error jax_roi_error = (expr);          \
    if (jax_roi_error.failure()) return jax_roi_error; \
  } while (0)

inline std::string shape_string(ffi::Span<const int64_t> dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(dims[i]);
  }
  if (dims.size() == 1) s += ",";
  return s + ")";
}

inline std::string shape_string(const std::vector<int64_t>& dims) {
  return shape_string(ffi::Span<const int64_t>(dims.data(), dims.size()));
}

inline const char* dtype_name(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F16:
      return "float16";
    case ffi::DataType::BF16:
      return "bfloat16";
    case ffi::DataType::F32:
      return "float32";
    case ffi::DataType::F64:
      return "float64";
    case ffi::DataType::S32:
      return "int32";
    default:
      return "an unsupported dtype";
  }
}

inline ffi::Error invalid_argument(std::string_view op, std::string_view message) {
  return ffi::Error::InvalidArgument(std::string(op) + ": " + std::string(message));
}

inline ffi::Error check_shape(std::string_view op, std::string_view name,
                              ffi::Span<const int64_t> got, const std::vector<int64_t>& expected) {
  bool same = got.size() == expected.size();
  for (size_t i = 0; same && i < expected.size(); ++i) same = got[i] == expected[i];
  if (same) return ffi::Error::Success();
  return invalid_argument(op, std::string(name) + " must have shape " + shape_string(expected) +
                                  ", got " + shape_string(got));
}

inline ffi::Error check_dtype(std::string_view op, std::string_view name, ffi::DataType got,
                              ffi::DataType expected) {
  if (got == expected) return ffi::Error::Success();
  return invalid_argument(op, std::string(name) + " must have dtype " + dtype_name(expected) +
                                  ", got " + dtype_name(got));
}

// Decodes the dimensions every RoI op shares from the features (or gradient)
// dims, the rois dims, the layout name and the pooled size.
inline ffi::Error decode_dims(std::string_view op, std::string_view features_name,
                              ffi::Span<const int64_t> features, ffi::Span<const int64_t> rois,
                              std::string_view layout, int64_t pooled_height, int64_t pooled_width,
                              RoiDims* d) {
  if (layout == "NCHW") {
    d->layout = Layout::kNCHW;
  } else if (layout == "NHWC") {
    d->layout = Layout::kNHWC;
  } else {
    return invalid_argument(
        op, "layout must be \"NCHW\" or \"NHWC\", got \"" + std::string(layout) + "\"");
  }
  if (features.size() != 4) {
    return invalid_argument(
        op, std::string(features_name) + " must have rank 4, got shape " + shape_string(features));
  }
  for (int64_t v : features) {
    if (v < 0)
      return invalid_argument(op, std::string(features_name) + " has a negative dimension");
  }
  d->batch = features[0];
  if (d->layout == Layout::kNCHW) {
    d->channels = features[1];
    d->height = features[2];
    d->width = features[3];
  } else {
    d->height = features[1];
    d->width = features[2];
    d->channels = features[3];
  }
  if (d->height > 0 && d->width > std::numeric_limits<int32_t>::max() / d->height) {
    return invalid_argument(op,
                            "height * width must be below 2^31 (spatial indices are int32), got " +
                                shape_string(features));
  }
  if (rois.size() == 2 && rois[1] == 5) {
    d->num_rois = rois[0];
    d->rois_per_image = 0;
  } else if (rois.size() == 3 && rois[2] == 4) {
    if (rois[0] != d->batch) {
      return invalid_argument(op, "batched rois " + shape_string(rois) +
                                      " must have one row of boxes per image, " +
                                      std::to_string(d->batch) + " images");
    }
    d->rois_per_image = rois[1];
    d->num_rois = rois[0] * rois[1];
  } else {
    return invalid_argument(op,
                            "rois must have shape (K, 5) or (N, R, 4), got " + shape_string(rois));
  }
  if (pooled_height <= 0 || pooled_width <= 0 ||
      pooled_height > std::numeric_limits<int32_t>::max() / pooled_width) {
    return invalid_argument(op, "output_size must be positive with PH * PW below 2^31, got (" +
                                    std::to_string(pooled_height) + ", " +
                                    std::to_string(pooled_width) + ")");
  }
  d->pooled_height = pooled_height;
  d->pooled_width = pooled_width;
  return ffi::Error::Success();
}

// Shape of the per-RoI outputs: (K, C, PH, PW) or (K, PH, PW, C), with the
// leading K split into (N, R) for batched rois.
inline std::vector<int64_t> pooled_shape(const RoiDims& d, ffi::Span<const int64_t> rois) {
  std::vector<int64_t> s(rois.begin(), rois.end() - 1);  // (K,) or (N, R)
  if (d.layout == Layout::kNCHW) {
    s.insert(s.end(), {d.channels, d.pooled_height, d.pooled_width});
  } else {
    s.insert(s.end(), {d.pooled_height, d.pooled_width, d.channels});
  }
  return s;
}

inline ffi::Error check_spatial_scale(std::string_view op, double spatial_scale) {
  if (std::isfinite(spatial_scale) && spatial_scale >= 0) return ffi::Error::Success();
  return invalid_argument(
      op, "spatial_scale must be finite and non-negative, got " + std::to_string(spatial_scale));
}

// Calls f(T{}) for the storage type T of a features (or gradient) buffer.
template <typename F>
ffi::Error dispatch_feature_type(std::string_view op, std::string_view name, ffi::DataType t,
                                 F&& f) {
  switch (t) {
    case ffi::DataType::F32:
      return f(float{});
    case ffi::DataType::F64:
      return f(double{});
    case ffi::DataType::F16:
      return f(f16{});
    case ffi::DataType::BF16:
      return f(bf16{});
    default:
      return invalid_argument(op, std::string(name) +
                                      " must be float16, bfloat16, float32 or float64, got " +
                                      dtype_name(t));
  }
}

// Calls f(C{}) for the coordinate type C of a rois buffer.
template <typename F>
ffi::Error dispatch_box_type(std::string_view op, ffi::DataType t, F&& f) {
  switch (t) {
    case ffi::DataType::F32:
      return f(float{});
    case ffi::DataType::F64:
      return f(double{});
    default:
      return invalid_argument(op,
                              std::string("rois must be float32 or float64, got ") + dtype_name(t));
  }
}

template <typename T>
constexpr ffi::DataType data_type_of();
template <>
constexpr ffi::DataType data_type_of<float>() {
  return ffi::DataType::F32;
}
template <>
constexpr ffi::DataType data_type_of<double>() {
  return ffi::DataType::F64;
}

template <typename T>
const T* data_as(const ffi::AnyBuffer& b) {
  return static_cast<const T*>(b.untyped_data());
}
template <typename T>
T* mutable_data_as(const ffi::AnyBuffer& b) {
  return static_cast<T*>(b.untyped_data());
}

inline ffi::AnyBuffer buffer_of(ffi::AnyBuffer b) { return b; }
inline ffi::AnyBuffer buffer_of(ffi::Result<ffi::AnyBuffer> b) { return *b; }

// The buffers of .RemainingArgs() or .RemainingRets(), in order; on a
// decoding error, none and *error set.
template <typename Remaining>
std::vector<ffi::AnyBuffer> remaining_buffers(const Remaining& buffers, ffi::Error* error) {
  std::vector<ffi::AnyBuffer> out;
  for (size_t i = 0; i < buffers.size(); ++i) {
    auto b = buffers.template get<ffi::AnyBuffer>(i);
    if (b.has_error()) {
      *error = b.error();
      return {};
    }
    out.push_back(buffer_of(b.value()));
  }
  return out;
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_FFI_HELPERS_H_
