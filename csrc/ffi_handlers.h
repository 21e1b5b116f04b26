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
  if (sampling_ratio > kMaxSamplingRatio) {
    return invalid_argument(op, "sampling_ratio must be at most " +
                                    std::to_string(kMaxSamplingRatio) + ", got " +
                                    std::to_string(sampling_ratio));
  }
  *o = AlignOptions{spatial_scale, sampling_ratio, aligned, mode == "max"};
  return ffi::Error::Success();
}

// The max-mode argmax pair: both full-shaped int32, or both empty when not
// needed (avg mode, or a forward whose gradient nobody asked for).
// y and x may be null: no argmax operands at all (multi-scale).
inline ffi::Error check_argmax_pair(std::string_view op, const ffi::AnyBuffer* y,
                                    const ffi::AnyBuffer* x, const std::vector<int64_t>& pooled,
                                    bool required, bool* present) {
  *present = y != nullptr && x != nullptr && (y->element_count() > 0 || x->element_count() > 0);
  if (!*present && !required) return ffi::Error::Success();
  if (y == nullptr || x == nullptr) return invalid_argument(op, "max mode needs argmax operands");
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "argmax_y", y->dimensions(), pooled));
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "argmax_x", x->dimensions(), pooled));
  JAX_ROI_RETURN_IF_ERROR(check_dtype(op, "argmax_y", y->element_type(), ffi::DataType::S32));
  return check_dtype(op, "argmax_x", x->element_type(), ffi::DataType::S32);
}

// Decodes and validates the feature levels (one for roi_align, the FPN
// levels for multi_scale_roi_align): same rank, N, C and dtype; returns the
// dimensions (height/width of level 0) and each level's spatial size.
inline ffi::Error decode_levels(std::string_view op, std::string_view name,
                                const std::vector<ffi::AnyBuffer>& levels,
                                ffi::Span<const int64_t> rois, std::string_view layout,
                                int64_t pooled_height, int64_t pooled_width, RoiDims* d,
                                std::vector<int64_t>* heights, std::vector<int64_t>* widths) {
  if (levels.empty() || levels.size() > static_cast<size_t>(kMaxLevels)) {
    return invalid_argument(op, "needs 1 to " + std::to_string(kMaxLevels) +
                                    " feature levels, got " + std::to_string(levels.size()));
  }
  heights->clear();
  widths->clear();
  for (size_t l = 0; l < levels.size(); ++l) {
    const std::string level_name =
        levels.size() == 1 ? std::string(name) : std::string(name) + "[" + std::to_string(l) + "]";
    RoiDims dl;
    JAX_ROI_RETURN_IF_ERROR(decode_dims(op, level_name, levels[l].dimensions(), rois, layout,
                                        pooled_height, pooled_width, &dl));
    if (l == 0) {
      *d = dl;
    } else if (dl.batch != d->batch || dl.channels != d->channels) {
      return invalid_argument(op, level_name + " must have the batch size and channels of " +
                                      std::string(name) + "[0], got " +
                                      shape_string(levels[l].dimensions()));
    }
    if (levels[l].element_type() != levels[0].element_type()) {
      return invalid_argument(op, level_name + " must have the dtype of " + std::string(name) +
                                      "[0]");
    }
    heights->push_back(dl.height);
    widths->push_back(dl.width);
  }
  return ffi::Error::Success();
}

inline ffi::Error decode_level_map(std::string_view op, size_t num_levels,
                                   ffi::Span<const double> scales, double canonical_scale,
                                   double canonical_level, int64_t k_min, int64_t k_max,
                                   LevelMap* m) {
  if (scales.size() != num_levels) {
    return invalid_argument(op, "needs one spatial scale per level: " +
                                    std::to_string(num_levels) + " levels, " +
                                    std::to_string(scales.size()) + " scales");
  }
  for (double s : scales) JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, s));
  if (!(std::isfinite(canonical_scale) && canonical_scale > 0) ||
      !std::isfinite(canonical_level) || k_max < k_min) {
    return invalid_argument(op, "invalid level mapping (canonical_scale, canonical_level, "
                                "k_min, k_max)");
  }
  m->num_levels = static_cast<int32_t>(num_levels);
  m->canonical_scale = canonical_scale;
  m->canonical_level = canonical_level;
  m->k_min = k_min;
  m->k_max = k_max;
  return ffi::Error::Success();
}

template <typename Backend>
ffi::Error AlignForwardCore(typename Backend::Context ctx, std::string_view op,
                            const std::vector<ffi::AnyBuffer>& levels,
                            ffi::Span<const double> scales, LevelMap map, ffi::AnyBuffer rois,
                            ffi::AnyBuffer output, const ffi::AnyBuffer* argmax_y,
                            const ffi::AnyBuffer* argmax_x, int64_t pooled_height,
                            int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                            std::string_view mode, std::string_view layout) {
  RoiDims d;
  AlignOptions o;
  std::vector<int64_t> heights, widths;
  JAX_ROI_RETURN_IF_ERROR(decode_levels(op, "features", levels, rois.dimensions(), layout,
                                        pooled_height, pooled_width, &d, &heights, &widths));
  JAX_ROI_RETURN_IF_ERROR(decode_align_options(op, scales[0], sampling_ratio, aligned, mode, &o));
  const std::vector<int64_t> pooled = pooled_shape(d, rois.dimensions());
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "output", output.dimensions(), pooled));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "output", output.element_type(), levels[0].element_type()));
  bool with_argmax;
  JAX_ROI_RETURN_IF_ERROR(
      check_argmax_pair(op, argmax_y, argmax_x, pooled, false, &with_argmax));
  if (with_argmax && !o.max_mode) {
    return invalid_argument(op, "argmax outputs are only produced in max mode");
  }
  return dispatch_feature_type(op, "features", levels[0].element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (output.element_count() == 0) return ffi::Error::Success();
      AlignForwardArgs<T, C> args{};
      args.dims = d;
      args.options = o;
      args.map = map;
      for (size_t l = 0; l < levels.size(); ++l) {
        args.levels[l] = FeatureLevel<const T>{data_as<T>(levels[l]), heights[l], widths[l],
                                               scales[l]};
      }
      args.rois = data_as<C>(rois);
      args.output = mutable_data_as<T>(output);
      args.argmax_y = with_argmax ? mutable_data_as<int32_t>(*argmax_y) : nullptr;
      args.argmax_x = with_argmax ? mutable_data_as<int32_t>(*argmax_x) : nullptr;
      return Backend::roi_align_forward(ctx, args);
    });
  });
}

template <typename Backend>
ffi::Error AlignBackwardCore(typename Backend::Context ctx, std::string_view op,
                             const std::vector<ffi::AnyBuffer>& grads,
                             ffi::Span<const double> scales, LevelMap map,
                             ffi::AnyBuffer grad_output, ffi::AnyBuffer rois,
                             const ffi::AnyBuffer* argmax_y, const ffi::AnyBuffer* argmax_x,
                             int64_t pooled_height, int64_t pooled_width,
                             int64_t sampling_ratio, bool aligned, std::string_view mode,
                             std::string_view layout) {
  RoiDims d;
  AlignOptions o;
  std::vector<int64_t> heights, widths;
  JAX_ROI_RETURN_IF_ERROR(decode_levels(op, "grad_features", grads, rois.dimensions(), layout,
                                        pooled_height, pooled_width, &d, &heights, &widths));
  JAX_ROI_RETURN_IF_ERROR(decode_align_options(op, scales[0], sampling_ratio, aligned, mode, &o));
  const std::vector<int64_t> pooled = pooled_shape(d, rois.dimensions());
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "grad_output", grad_output.dimensions(), pooled));
  bool with_argmax;
  JAX_ROI_RETURN_IF_ERROR(
      check_argmax_pair(op, argmax_y, argmax_x, pooled, o.max_mode, &with_argmax));
  return dispatch_feature_type(op, "grad_output", grad_output.element_type(), [&](auto t) {
    using T = decltype(t);
    JAX_ROI_RETURN_IF_ERROR(check_dtype(op, "grad_features", grads[0].element_type(),
                                        data_type_of<acc_t<T>>()));
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      AlignBackwardArgs<T, C> args{};
      args.dims = d;
      args.options = o;
      args.map = map;
      int64_t total = 0;
      for (size_t l = 0; l < grads.size(); ++l) {
        args.levels[l] = FeatureLevel<acc_t<T>>{mutable_data_as<acc_t<T>>(grads[l]), heights[l],
                                                widths[l], scales[l]};
        total += static_cast<int64_t>(grads[l].element_count());
      }
      if (total == 0) return ffi::Error::Success();
      args.grad_output = data_as<T>(grad_output);
      args.rois = data_as<C>(rois);
      args.argmax_y = with_argmax ? data_as<int32_t>(*argmax_y) : nullptr;
      args.argmax_x = with_argmax ? data_as<int32_t>(*argmax_x) : nullptr;
      return Backend::roi_align_backward(ctx, args);
    });
  });
}

template <typename Backend>
ffi::Error AlignBoxGradCore(typename Backend::Context ctx, std::string_view op,
                            const std::vector<ffi::AnyBuffer>& levels,
                            ffi::Span<const double> scales, LevelMap map, ffi::AnyBuffer rois,
                            ffi::AnyBuffer grad_output, const ffi::AnyBuffer* argmax_y,
                            const ffi::AnyBuffer* argmax_x, ffi::AnyBuffer grad_rois,
                            int64_t pooled_height, int64_t pooled_width,
                            int64_t sampling_ratio, bool aligned, std::string_view mode,
                            std::string_view layout) {
  RoiDims d;
  AlignOptions o;
  std::vector<int64_t> heights, widths;
  JAX_ROI_RETURN_IF_ERROR(decode_levels(op, "features", levels, rois.dimensions(), layout,
                                        pooled_height, pooled_width, &d, &heights, &widths));
  JAX_ROI_RETURN_IF_ERROR(decode_align_options(op, scales[0], sampling_ratio, aligned, mode, &o));
  const std::vector<int64_t> pooled = pooled_shape(d, rois.dimensions());
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "grad_output", grad_output.dimensions(), pooled));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "grad_output", grad_output.element_type(), levels[0].element_type()));
  const auto rd = rois.dimensions();
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "grad_rois", grad_rois.dimensions(),
                                      std::vector<int64_t>(rd.begin(), rd.end())));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "grad_rois", grad_rois.element_type(), rois.element_type()));
  bool with_argmax;
  JAX_ROI_RETURN_IF_ERROR(
      check_argmax_pair(op, argmax_y, argmax_x, pooled, o.max_mode, &with_argmax));
  return dispatch_feature_type(op, "features", levels[0].element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_rois.element_count() == 0) return ffi::Error::Success();
      AlignBoxGradArgs<T, C> args{};
      args.dims = d;
      args.options = o;
      args.map = map;
      for (size_t l = 0; l < levels.size(); ++l) {
        args.levels[l] = FeatureLevel<const T>{data_as<T>(levels[l]), heights[l], widths[l],
                                               scales[l]};
      }
      args.rois = data_as<C>(rois);
      args.grad_output = data_as<T>(grad_output);
      args.argmax_y = with_argmax ? data_as<int32_t>(*argmax_y) : nullptr;
      args.argmax_x = with_argmax ? data_as<int32_t>(*argmax_x) : nullptr;
      args.grad_rois = mutable_data_as<C>(grad_rois);
      return Backend::roi_align_box_grad(ctx, args);
    });
  });
}

// roi_align: one feature map.
template <typename Backend>
ffi::Error RoiAlignForward(typename Backend::Context ctx, ffi::AnyBuffer features,
                           ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> output,
                           ffi::Result<ffi::AnyBuffer> argmax_y,
                           ffi::Result<ffi::AnyBuffer> argmax_x, double spatial_scale,
                           int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                           bool aligned, std::string_view mode, std::string_view layout) {
  return AlignForwardCore<Backend>(ctx, "roi_align", {features},
                                   ffi::Span<const double>(&spatial_scale, 1), LevelMap{}, rois,
                                   *output, &*argmax_y, &*argmax_x, pooled_height, pooled_width,
                                   sampling_ratio, aligned, mode, layout);
}

template <typename Backend>
ffi::Error RoiAlignBackward(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                            ffi::AnyBuffer rois, ffi::AnyBuffer argmax_y, ffi::AnyBuffer argmax_x,
                            ffi::Result<ffi::AnyBuffer> grad_features, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width,
                            int64_t sampling_ratio, bool aligned, std::string_view mode,
                            std::string_view layout) {
  return AlignBackwardCore<Backend>(ctx, "roi_align backward", {*grad_features},
                                    ffi::Span<const double>(&spatial_scale, 1), LevelMap{},
                                    grad_output, rois, &argmax_y, &argmax_x, pooled_height,
                                    pooled_width, sampling_ratio, aligned, mode, layout);
}

template <typename Backend>
ffi::Error RoiAlignBoxGrad(typename Backend::Context ctx, ffi::AnyBuffer features,
                           ffi::AnyBuffer rois, ffi::AnyBuffer grad_output,
                           ffi::AnyBuffer argmax_y, ffi::AnyBuffer argmax_x,
                           ffi::Result<ffi::AnyBuffer> grad_rois, double spatial_scale,
                           int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                           bool aligned, std::string_view mode, std::string_view layout) {
  return AlignBoxGradCore<Backend>(ctx, "roi_align box gradient", {features},
                                   ffi::Span<const double>(&spatial_scale, 1), LevelMap{}, rois,
                                   grad_output, &argmax_y, &argmax_x, *grad_rois, pooled_height,
                                   pooled_width, sampling_ratio, aligned, mode, layout);
}

// multi_scale_roi_align: FPN levels, each RoI pooled from its level (avg).
inline std::vector<ffi::AnyBuffer> remaining_args(const ffi::RemainingArgs& args,
                                                  ffi::Error* error) {
  std::vector<ffi::AnyBuffer> out;
  for (size_t i = 0; i < args.size(); ++i) {
    auto b = args.get<ffi::AnyBuffer>(i);
    if (b.has_error()) {
      *error = b.error();
      return {};
    }
    out.push_back(b.value());
  }
  return out;
}

inline std::vector<ffi::AnyBuffer> remaining_rets(const ffi::RemainingRets& rets,
                                                  ffi::Error* error) {
  std::vector<ffi::AnyBuffer> out;
  for (size_t i = 0; i < rets.size(); ++i) {
    auto b = rets.get<ffi::AnyBuffer>(i);
    if (b.has_error()) {
      *error = b.error();
      return {};
    }
    out.push_back(*b.value());
  }
  return out;
}

template <typename Backend>
ffi::Error MultiScaleForward(typename Backend::Context ctx, ffi::AnyBuffer rois,
                             ffi::RemainingArgs features, ffi::Result<ffi::AnyBuffer> output,
                             ffi::Span<const double> spatial_scales, int64_t pooled_height,
                             int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                             std::string_view layout, double canonical_scale,
                             double canonical_level, int64_t k_min, int64_t k_max) {
  constexpr std::string_view op = "multi_scale_roi_align";
  ffi::Error error;
  const std::vector<ffi::AnyBuffer> levels = remaining_args(features, &error);
  JAX_ROI_RETURN_IF_ERROR(error);
  LevelMap map;
  JAX_ROI_RETURN_IF_ERROR(decode_level_map(op, levels.size(), spatial_scales, canonical_scale,
                                           canonical_level, k_min, k_max, &map));
  return AlignForwardCore<Backend>(ctx, op, levels, spatial_scales, map, rois, *output, nullptr,
                                   nullptr, pooled_height, pooled_width, sampling_ratio, aligned,
                                   "avg", layout);
}

template <typename Backend>
ffi::Error MultiScaleBackward(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                              ffi::AnyBuffer rois, ffi::RemainingRets grad_features,
                              ffi::Span<const double> spatial_scales, int64_t pooled_height,
                              int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                              std::string_view layout, double canonical_scale,
                              double canonical_level, int64_t k_min, int64_t k_max) {
  constexpr std::string_view op = "multi_scale_roi_align backward";
  ffi::Error error;
  const std::vector<ffi::AnyBuffer> grads = remaining_rets(grad_features, &error);
  JAX_ROI_RETURN_IF_ERROR(error);
  LevelMap map;
  JAX_ROI_RETURN_IF_ERROR(decode_level_map(op, grads.size(), spatial_scales, canonical_scale,
                                           canonical_level, k_min, k_max, &map));
  return AlignBackwardCore<Backend>(ctx, op, grads, spatial_scales, map, grad_output, rois,
                                    nullptr, nullptr, pooled_height, pooled_width,
                                    sampling_ratio, aligned, "avg", layout);
}

template <typename Backend>
ffi::Error MultiScaleBoxGrad(typename Backend::Context ctx, ffi::AnyBuffer rois,
                             ffi::AnyBuffer grad_output, ffi::RemainingArgs features,
                             ffi::Result<ffi::AnyBuffer> grad_rois,
                             ffi::Span<const double> spatial_scales, int64_t pooled_height,
                             int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                             std::string_view layout, double canonical_scale,
                             double canonical_level, int64_t k_min, int64_t k_max) {
  constexpr std::string_view op = "multi_scale_roi_align box gradient";
  ffi::Error error;
  const std::vector<ffi::AnyBuffer> levels = remaining_args(features, &error);
  JAX_ROI_RETURN_IF_ERROR(error);
  LevelMap map;
  JAX_ROI_RETURN_IF_ERROR(decode_level_map(op, levels.size(), spatial_scales, canonical_scale,
                                           canonical_level, k_min, k_max, &map));
  return AlignBoxGradCore<Backend>(ctx, op, levels, spatial_scales, map, rois, grad_output,
                                   nullptr, nullptr, *grad_rois, pooled_height,
                                   pooled_width, sampling_ratio, aligned, "avg", layout);
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

// multi_scale_roi_align's attributes, shared by its three targets.
template <typename Binding>
auto WithMultiScaleAttrs(Binding b) {
  return std::move(b)
      .template Attr<ffi::Span<const double>>("spatial_scales")
      .template Attr<int64_t>("pooled_height")
      .template Attr<int64_t>("pooled_width")
      .template Attr<int64_t>("sampling_ratio")
      .template Attr<bool>("aligned")
      .template Attr<std::string_view>("layout")
      .template Attr<double>("canonical_scale")
      .template Attr<double>("canonical_level")
      .template Attr<int64_t>("k_min")
      .template Attr<int64_t>("k_max");
}

template <typename Ctx>
auto MultiScaleForwardBinding() {
  return WithMultiScaleAttrs(ffi::Ffi::Bind()
                                 .Ctx<Ctx>()
                                 .template Arg<ffi::AnyBuffer>()    // rois
                                 .RemainingArgs()                   // features, one per level
                                 .template Ret<ffi::AnyBuffer>());  // output
}

template <typename Ctx>
auto MultiScaleBackwardBinding() {
  return WithMultiScaleAttrs(ffi::Ffi::Bind()
                                 .Ctx<Ctx>()
                                 .template Arg<ffi::AnyBuffer>()  // grad_output
                                 .template Arg<ffi::AnyBuffer>()  // rois
                                 .RemainingRets());               // grad_features per level
}

template <typename Ctx>
auto MultiScaleBoxGradBinding() {
  return WithMultiScaleAttrs(ffi::Ffi::Bind()
                                 .Ctx<Ctx>()
                                 .template Arg<ffi::AnyBuffer>()    // rois
                                 .template Arg<ffi::AnyBuffer>()    // grad_output
                                 .RemainingArgs()                   // features, one per level
                                 .template Ret<ffi::AnyBuffer>());  // grad_rois
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_FFI_HANDLERS_H_
