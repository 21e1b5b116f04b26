// XLA FFI handler bodies shared by the CPU and CUDA back ends: decode the
// buffers and attributes, validate every dimension and dtype (returning an
// ffi::Error that names the argument, never reading out of bounds), pick the
// kernel instantiation, and hand plain kernel arguments to the back end.
//
// A back end is a struct with
//   using Context = ...;  // what the binding's .Ctx<>() decodes to
//   template <typename T, typename C>
//   static ffi::Error roi_pool_forward(Context, const PoolForwardArgs<T, C>&);
//   ... and likewise for every other kernel.
#ifndef JAX_ROI_CSRC_FFI_HANDLERS_H_
#define JAX_ROI_CSRC_FFI_HANDLERS_H_

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "roi_args.h"
#include "roi_common.h"
#include "xla/ffi/api/ffi.h"

namespace jax_roi {

namespace ffi = ::xla::ffi;

#define JAX_ROI_RETURN_IF_ERROR(expr)                 \
  do {                                                \
    ::xla::ffi::Error jax_roi_error = (expr);         \
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
                              ffi::Span<const int64_t> got,
                              const std::vector<int64_t>& expected) {
  bool same = got.size() == expected.size();
  for (size_t i = 0; same && i < expected.size(); ++i) same = got[i] == expected[i];
  if (same) return ffi::Error::Success();
  return invalid_argument(op, std::string(name) + " must have shape " +
                                  shape_string(expected) + ", got " + shape_string(got));
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
                              std::string_view layout, int64_t pooled_height,
                              int64_t pooled_width, RoiDims* d) {
  if (layout == "NCHW") {
    d->layout = Layout::kNCHW;
  } else if (layout == "NHWC") {
    d->layout = Layout::kNHWC;
  } else {
    return invalid_argument(op, "layout must be \"NCHW\" or \"NHWC\", got \"" +
                                    std::string(layout) + "\"");
  }
  if (features.size() != 4) {
    return invalid_argument(op, std::string(features_name) + " must have rank 4, got shape " +
                                    shape_string(features));
  }
  for (int64_t v : features) {
    if (v < 0) return invalid_argument(op, std::string(features_name) + " has a negative dimension");
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
    return invalid_argument(op, "height * width must be below 2^31 (spatial indices are int32), got " +
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
    return invalid_argument(op, "rois must have shape (K, 5) or (N, R, 4), got " + shape_string(rois));
  }
  if (pooled_height <= 0 || pooled_width <= 0) {
    return invalid_argument(op, "output_size must be positive, got (" +
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
  return invalid_argument(op, "spatial_scale must be finite and non-negative, got " +
                                  std::to_string(spatial_scale));
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
      return invalid_argument(op, std::string("rois must be float32 or float64, got ") +
                                      dtype_name(t));
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

// ---------------------------------------------------------------------------
// RoIPool
// ---------------------------------------------------------------------------

// Forward. Results: output (features' dtype, pooled shape) and argmax (int32,
// pooled shape, or an empty array when the caller needs no argmax).
template <typename Backend>
ffi::Error RoiPoolForward(typename Backend::Context ctx, ffi::AnyBuffer features,
                          ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> output,
                          ffi::Result<ffi::AnyBuffer> argmax, double spatial_scale,
                          int64_t pooled_height, int64_t pooled_width,
                          std::string_view layout) {
  constexpr std::string_view op = "roi_pool";
  RoiDims d;
  JAX_ROI_RETURN_IF_ERROR(decode_dims(op, "features", features.dimensions(), rois.dimensions(),
                                      layout, pooled_height, pooled_width, &d));
  JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, spatial_scale));
  const std::vector<int64_t> pooled = pooled_shape(d, rois.dimensions());
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "output", output->dimensions(), pooled));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "output", output->element_type(), features.element_type()));
  const bool with_argmax = argmax->element_count() > 0;
  if (with_argmax) {
    JAX_ROI_RETURN_IF_ERROR(check_shape(op, "argmax", argmax->dimensions(), pooled));
    JAX_ROI_RETURN_IF_ERROR(check_dtype(op, "argmax", argmax->element_type(), ffi::DataType::S32));
  }
  return dispatch_feature_type(op, "features", features.element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (output->element_count() == 0) return ffi::Error::Success();
      PoolForwardArgs<T, C> args{d,
                                 spatial_scale,
                                 data_as<T>(features),
                                 data_as<C>(rois),
                                 mutable_data_as<T>(*output),
                                 with_argmax ? mutable_data_as<int32_t>(*argmax) : nullptr};
      return Backend::roi_pool_forward(ctx, args);
    });
  });
}

// Backward. grad_output has the pooled shape and the features' dtype; the
// result grad_features has the features' shape in the accumulation dtype
// (float32 for float16/bfloat16/float32, float64 for float64).
template <typename Backend>
ffi::Error RoiPoolBackward(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                           ffi::AnyBuffer argmax, ffi::AnyBuffer rois,
                           ffi::Result<ffi::AnyBuffer> grad_features, std::string_view layout) {
  constexpr std::string_view op = "roi_pool backward";
  // The pooled size is read from grad_output, whose layout is the features'.
  const auto g = grad_output.dimensions();
  if (g.size() < 3) {
    return invalid_argument(op, "grad_output must have rank >= 3, got " + shape_string(g));
  }
  const bool nchw = layout == "NCHW";
  const int64_t pooled_height = nchw ? g[g.size() - 2] : g[g.size() - 3];
  const int64_t pooled_width = nchw ? g[g.size() - 1] : g[g.size() - 2];
  RoiDims d;
  JAX_ROI_RETURN_IF_ERROR(decode_dims(op, "grad_features", grad_features->dimensions(),
                                      rois.dimensions(), layout, pooled_height, pooled_width,
                                      &d));
  const std::vector<int64_t> pooled = pooled_shape(d, rois.dimensions());
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "grad_output", g, pooled));
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "argmax", argmax.dimensions(), pooled));
  JAX_ROI_RETURN_IF_ERROR(check_dtype(op, "argmax", argmax.element_type(), ffi::DataType::S32));
  return dispatch_feature_type(op, "grad_output", grad_output.element_type(), [&](auto t) {
    using T = decltype(t);
    JAX_ROI_RETURN_IF_ERROR(check_dtype(op, "grad_features", grad_features->element_type(),
                                        data_type_of<acc_t<T>>()));
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_features->element_count() == 0) return ffi::Error::Success();
      PoolBackwardArgs<T, C> args{d, data_as<T>(grad_output), data_as<int32_t>(argmax),
                                  data_as<C>(rois), mutable_data_as<acc_t<T>>(*grad_features)};
      return Backend::roi_pool_backward(ctx, args);
    });
  });
}

// ---------------------------------------------------------------------------
// RoIAlign
// ---------------------------------------------------------------------------

inline ffi::Error decode_align_options(std::string_view op, double spatial_scale,
                                       int64_t sampling_ratio, bool aligned,
                                       std::string_view mode, AlignOptions* o) {
  JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, spatial_scale));
  if (mode != "avg" && mode != "max") {
    return invalid_argument(op, "mode must be \"avg\" or \"max\", got \"" + std::string(mode) +
                                    "\"");
  }
  *o = AlignOptions{spatial_scale, sampling_ratio, aligned, mode == "max"};
  return ffi::Error::Success();
}

// The max-mode argmax pair: both full-shaped int32, or both empty when not
// needed (avg mode, or a forward whose gradient nobody asked for).
inline ffi::Error check_argmax_pair(std::string_view op, const ffi::AnyBuffer& y,
                                    const ffi::AnyBuffer& x, const std::vector<int64_t>& pooled,
                                    bool required, bool* present) {
  *present = y.element_count() > 0 || x.element_count() > 0;
  if (!*present && !required) return ffi::Error::Success();
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "argmax_y", y.dimensions(), pooled));
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "argmax_x", x.dimensions(), pooled));
  JAX_ROI_RETURN_IF_ERROR(check_dtype(op, "argmax_y", y.element_type(), ffi::DataType::S32));
  return check_dtype(op, "argmax_x", x.element_type(), ffi::DataType::S32);
}

template <typename Backend>
ffi::Error RoiAlignForward(typename Backend::Context ctx, ffi::AnyBuffer features,
                           ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> output,
                           ffi::Result<ffi::AnyBuffer> argmax_y,
                           ffi::Result<ffi::AnyBuffer> argmax_x, double spatial_scale,
                           int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                           bool aligned, std::string_view mode, std::string_view layout) {
  constexpr std::string_view op = "roi_align";
  RoiDims d;
  AlignOptions o;
  JAX_ROI_RETURN_IF_ERROR(decode_dims(op, "features", features.dimensions(), rois.dimensions(),
                                      layout, pooled_height, pooled_width, &d));
  JAX_ROI_RETURN_IF_ERROR(
      decode_align_options(op, spatial_scale, sampling_ratio, aligned, mode, &o));
  const std::vector<int64_t> pooled = pooled_shape(d, rois.dimensions());
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "output", output->dimensions(), pooled));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "output", output->element_type(), features.element_type()));
  bool with_argmax;
  JAX_ROI_RETURN_IF_ERROR(check_argmax_pair(op, *argmax_y, *argmax_x, pooled, false, &with_argmax));
  if (with_argmax && !o.max_mode) {
    return invalid_argument(op, "argmax outputs are only produced in max mode");
  }
  return dispatch_feature_type(op, "features", features.element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (output->element_count() == 0) return ffi::Error::Success();
      AlignForwardArgs<T, C> args{d,
                                  o,
                                  data_as<T>(features),
                                  data_as<C>(rois),
                                  mutable_data_as<T>(*output),
                                  with_argmax ? mutable_data_as<int32_t>(*argmax_y) : nullptr,
                                  with_argmax ? mutable_data_as<int32_t>(*argmax_x) : nullptr};
      return Backend::roi_align_forward(ctx, args);
    });
  });
}

template <typename Backend>
ffi::Error RoiAlignBackward(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                            ffi::AnyBuffer rois, ffi::AnyBuffer argmax_y, ffi::AnyBuffer argmax_x,
                            ffi::Result<ffi::AnyBuffer> grad_features, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width,
                            int64_t sampling_ratio, bool aligned, std::string_view mode,
                            std::string_view layout) {
  constexpr std::string_view op = "roi_align backward";
  RoiDims d;
  AlignOptions o;
  JAX_ROI_RETURN_IF_ERROR(decode_dims(op, "grad_features", grad_features->dimensions(),
                                      rois.dimensions(), layout, pooled_height, pooled_width,
                                      &d));
  JAX_ROI_RETURN_IF_ERROR(
      decode_align_options(op, spatial_scale, sampling_ratio, aligned, mode, &o));
  const std::vector<int64_t> pooled = pooled_shape(d, rois.dimensions());
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "grad_output", grad_output.dimensions(), pooled));
  bool with_argmax;
  JAX_ROI_RETURN_IF_ERROR(
      check_argmax_pair(op, argmax_y, argmax_x, pooled, o.max_mode, &with_argmax));
  return dispatch_feature_type(op, "grad_output", grad_output.element_type(), [&](auto t) {
    using T = decltype(t);
    JAX_ROI_RETURN_IF_ERROR(check_dtype(op, "grad_features", grad_features->element_type(),
                                        data_type_of<acc_t<T>>()));
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_features->element_count() == 0) return ffi::Error::Success();
      AlignBackwardArgs<T, C> args{d,
                                   o,
                                   data_as<T>(grad_output),
                                   data_as<C>(rois),
                                   with_argmax ? data_as<int32_t>(argmax_y) : nullptr,
                                   with_argmax ? data_as<int32_t>(argmax_x) : nullptr,
                                   mutable_data_as<acc_t<T>>(*grad_features)};
      return Backend::roi_align_backward(ctx, args);
    });
  });
}

template <typename Backend>
ffi::Error RoiAlignBoxGrad(typename Backend::Context ctx, ffi::AnyBuffer features,
                           ffi::AnyBuffer rois, ffi::AnyBuffer grad_output,
                           ffi::AnyBuffer argmax_y, ffi::AnyBuffer argmax_x,
                           ffi::Result<ffi::AnyBuffer> grad_rois, double spatial_scale,
                           int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                           bool aligned, std::string_view mode, std::string_view layout) {
  constexpr std::string_view op = "roi_align box gradient";
  RoiDims d;
  AlignOptions o;
  JAX_ROI_RETURN_IF_ERROR(decode_dims(op, "features", features.dimensions(), rois.dimensions(),
                                      layout, pooled_height, pooled_width, &d));
  JAX_ROI_RETURN_IF_ERROR(
      decode_align_options(op, spatial_scale, sampling_ratio, aligned, mode, &o));
  const std::vector<int64_t> pooled = pooled_shape(d, rois.dimensions());
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "grad_output", grad_output.dimensions(), pooled));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "grad_output", grad_output.element_type(), features.element_type()));
  const auto rd = rois.dimensions();
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "grad_rois", grad_rois->dimensions(),
                                      std::vector<int64_t>(rd.begin(), rd.end())));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "grad_rois", grad_rois->element_type(), rois.element_type()));
  bool with_argmax;
  JAX_ROI_RETURN_IF_ERROR(
      check_argmax_pair(op, argmax_y, argmax_x, pooled, o.max_mode, &with_argmax));
  return dispatch_feature_type(op, "features", features.element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_rois->element_count() == 0) return ffi::Error::Success();
      AlignBoxGradArgs<T, C> args{d,
                                  o,
                                  data_as<T>(features),
                                  data_as<C>(rois),
                                  data_as<T>(grad_output),
                                  with_argmax ? data_as<int32_t>(argmax_y) : nullptr,
                                  with_argmax ? data_as<int32_t>(argmax_x) : nullptr,
                                  mutable_data_as<C>(*grad_rois)};
      return Backend::roi_align_box_grad(ctx, args);
    });
  });
}

// Bindings: the same operands and attributes on every platform, only the
// execution context differs.
template <typename Ctx>
auto RoiPoolForwardBinding() {
  return ffi::Ffi::Bind()
      .Ctx<Ctx>()
      .template Arg<ffi::AnyBuffer>()  // features
      .template Arg<ffi::AnyBuffer>()  // rois
      .template Ret<ffi::AnyBuffer>()  // output
      .template Ret<ffi::AnyBuffer>()  // argmax (int32, or empty)
      .template Attr<double>("spatial_scale")
      .template Attr<int64_t>("pooled_height")
      .template Attr<int64_t>("pooled_width")
      .template Attr<std::string_view>("layout");
}

template <typename Ctx>
auto RoiPoolBackwardBinding() {
  return ffi::Ffi::Bind()
      .Ctx<Ctx>()
      .template Arg<ffi::AnyBuffer>()  // grad_output
      .template Arg<ffi::AnyBuffer>()  // argmax
      .template Arg<ffi::AnyBuffer>()  // rois
      .template Ret<ffi::AnyBuffer>()  // grad_features
      .template Attr<std::string_view>("layout");
}

// RoIAlign's attributes, shared by its three targets.
template <typename Binding>
auto WithAlignAttrs(Binding b) {
  return std::move(b)
      .template Attr<double>("spatial_scale")
      .template Attr<int64_t>("pooled_height")
      .template Attr<int64_t>("pooled_width")
      .template Attr<int64_t>("sampling_ratio")
      .template Attr<bool>("aligned")
      .template Attr<std::string_view>("mode")
      .template Attr<std::string_view>("layout");
}

template <typename Ctx>
auto RoiAlignForwardBinding() {
  return WithAlignAttrs(ffi::Ffi::Bind()
                            .Ctx<Ctx>()
                            .template Arg<ffi::AnyBuffer>()    // features
                            .template Arg<ffi::AnyBuffer>()    // rois
                            .template Ret<ffi::AnyBuffer>()    // output
                            .template Ret<ffi::AnyBuffer>()    // argmax_y (max mode, or empty)
                            .template Ret<ffi::AnyBuffer>());  // argmax_x (max mode, or empty)
}

template <typename Ctx>
auto RoiAlignBackwardBinding() {
  return WithAlignAttrs(ffi::Ffi::Bind()
                            .Ctx<Ctx>()
                            .template Arg<ffi::AnyBuffer>()    // grad_output
                            .template Arg<ffi::AnyBuffer>()    // rois
                            .template Arg<ffi::AnyBuffer>()    // argmax_y
                            .template Arg<ffi::AnyBuffer>()    // argmax_x
                            .template Ret<ffi::AnyBuffer>());  // grad_features
}

template <typename Ctx>
auto RoiAlignBoxGradBinding() {
  return WithAlignAttrs(ffi::Ffi::Bind()
                            .Ctx<Ctx>()
                            .template Arg<ffi::AnyBuffer>()    // features
                            .template Arg<ffi::AnyBuffer>()    // rois
                            .template Arg<ffi::AnyBuffer>()    // grad_output
                            .template Arg<ffi::AnyBuffer>()    // argmax_y
                            .template Arg<ffi::AnyBuffer>()    // argmax_x
                            .template Ret<ffi::AnyBuffer>());  // grad_rois
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_FFI_HANDLERS_H_
