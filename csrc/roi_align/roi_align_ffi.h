// RoIAlign's FFI handler cores, shared by roi_align's targets (one feature
// map, roi_align_ffi.cc) and multi_scale_roi_align's (FPN levels,
// multi_scale_roi_align/multi_scale_ffi.cc): decode and validate the levels,
// options and operands, then run the kernels declared in roi_align_kernels.h
// through the back end.
#ifndef JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_FFI_H_
#define JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_FFI_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/dims.h"
#include "core/ffi_helpers.h"
#include "core/ffi_target.h"
#include "core/types.h"
#include "roi_align/roi_align_kernels.h"

namespace jax_roi {

// The attributes every RoIAlign target has (spatial scales aside).
struct AlignAttrs {
  int64_t pooled_height, pooled_width, sampling_ratio;
  bool aligned;
  std::string_view mode, layout;
  bool deterministic = false;  // backward targets *_bwd_deterministic_v1
};

inline ffi::Error decode_align_options(std::string_view op, double spatial_scale,
                                       int64_t sampling_ratio, bool aligned, std::string_view mode,
                                       AlignOptions* o) {
  JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, spatial_scale));
  if (mode != "avg" && mode != "max") {
    return invalid_argument(op,
                            "mode must be \"avg\" or \"max\", got \"" + std::string(mode) + "\"");
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
      return invalid_argument(op,
                              level_name + " must have the dtype of " + std::string(name) + "[0]");
    }
    heights->push_back(dl.height);
    widths->push_back(dl.width);
  }
  return ffi::Error::Success();
}

// A decoded and validated RoIAlign call: dimensions (height/width of level
// 0), options, level map, each level's spatial size and scale, and the shape
// of the per-RoI outputs.
struct AlignCall {
  RoiDims dims;
  AlignOptions options;
  LevelMap map;
  std::vector<int64_t> heights, widths;
  ffi::Span<const double> scales;
  std::vector<int64_t> pooled;
};

// The validation every RoIAlign target starts with: the levels (named
// levels_name) against the rois, the options, and the pooled-shape operand
// (output or grad_output, named pooled_name).
inline ffi::Error decode_align_call(std::string_view op, std::string_view levels_name,
                                    const std::vector<ffi::AnyBuffer>& levels,
                                    ffi::Span<const double> scales, LevelMap map,
                                    ffi::Span<const int64_t> rois, std::string_view pooled_name,
                                    ffi::Span<const int64_t> pooled_dims, const AlignAttrs& a,
                                    AlignCall* call) {
  JAX_ROI_RETURN_IF_ERROR(decode_levels(op, levels_name, levels, rois, a.layout, a.pooled_height,
                                        a.pooled_width, &call->dims, &call->heights,
                                        &call->widths));
  JAX_ROI_RETURN_IF_ERROR(
      decode_align_options(op, scales[0], a.sampling_ratio, a.aligned, a.mode, &call->options));
  call->options.deterministic = a.deterministic;
  call->map = map;
  call->scales = scales;
  call->pooled = pooled_shape(call->dims, rois);
  return check_shape(op, pooled_name, pooled_dims, call->pooled);
}

// Kernel arguments with the call's dimensions, options, level map and
// levels (the data of buffer l for level l).
template <typename Args>
Args align_args(const AlignCall& call, const std::vector<ffi::AnyBuffer>& buffers) {
  Args args{};
  args.dims = call.dims;
  args.options = call.options;
  args.map = call.map;
  using Level = std::remove_reference_t<decltype(args.levels[0])>;
  for (size_t l = 0; l < buffers.size(); ++l) {
    args.levels[l] = Level{static_cast<decltype(Level::data)>(buffers[l].untyped_data()),
                           call.heights[l], call.widths[l], call.scales[l]};
  }
  return args;
}

// Forward over the levels. argmax_y/argmax_x: the max-mode outputs (both
// empty when not needed), or null where the target has none (multi-scale).
template <typename Backend>
ffi::Error AlignForwardCore(typename Backend::Context ctx, std::string_view op,
                            const std::vector<ffi::AnyBuffer>& levels,
                            ffi::Span<const double> scales, LevelMap map, ffi::AnyBuffer rois,
                            ffi::AnyBuffer output, const ffi::AnyBuffer* argmax_y,
                            const ffi::AnyBuffer* argmax_x, const AlignAttrs& attrs) {
  AlignCall call;
  JAX_ROI_RETURN_IF_ERROR(decode_align_call(op, "features", levels, scales, map, rois.dimensions(),
                                            "output", output.dimensions(), attrs, &call));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "output", output.element_type(), levels[0].element_type()));
  bool with_argmax;
  JAX_ROI_RETURN_IF_ERROR(
      check_argmax_pair(op, argmax_y, argmax_x, call.pooled, false, &with_argmax));
  if (with_argmax && !call.options.max_mode) {
    return invalid_argument(op, "argmax outputs are only produced in max mode");
  }
  return dispatch_feature_type(op, "features", levels[0].element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (output.element_count() == 0) return ffi::Error::Success();
      auto args = align_args<AlignForwardArgs<T, C>>(call, levels);
      args.rois = data_as<C>(rois);
      args.output = mutable_data_as<T>(output);
      args.argmax_y = with_argmax ? mutable_data_as<int32_t>(*argmax_y) : nullptr;
      args.argmax_x = with_argmax ? mutable_data_as<int32_t>(*argmax_x) : nullptr;
      return Backend::run(ctx, "roi_align", JAX_ROI_KERNEL(roi_align_forward), args);
    });
  });
}

// Feature gradient, one result per level. argmax_y/argmax_x: as the forward
// produced them (max mode), or null where the target has none.
template <typename Backend>
ffi::Error AlignBackwardCore(typename Backend::Context ctx, std::string_view op,
                             const std::vector<ffi::AnyBuffer>& grads,
                             ffi::Span<const double> scales, LevelMap map,
                             ffi::AnyBuffer grad_output, ffi::AnyBuffer rois,
                             const ffi::AnyBuffer* argmax_y, const ffi::AnyBuffer* argmax_x,
                             const AlignAttrs& attrs) {
  AlignCall call;
  JAX_ROI_RETURN_IF_ERROR(decode_align_call(op, "grad_features", grads, scales, map,
                                            rois.dimensions(), "grad_output",
                                            grad_output.dimensions(), attrs, &call));
  bool with_argmax;
  JAX_ROI_RETURN_IF_ERROR(
      check_argmax_pair(op, argmax_y, argmax_x, call.pooled, call.options.max_mode, &with_argmax));
  return dispatch_feature_type(op, "grad_output", grad_output.element_type(), [&](auto t) {
    using T = decltype(t);
    JAX_ROI_RETURN_IF_ERROR(
        check_dtype(op, "grad_features", grads[0].element_type(), data_type_of<acc_t<T>>()));
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      auto args = align_args<AlignBackwardArgs<T, C>>(call, grads);
      int64_t total = 0;
      for (const ffi::AnyBuffer& g : grads) total += static_cast<int64_t>(g.element_count());
      if (total == 0) return ffi::Error::Success();
      args.grad_output = data_as<T>(grad_output);
      args.rois = data_as<C>(rois);
      args.argmax_y = with_argmax ? data_as<int32_t>(*argmax_y) : nullptr;
      args.argmax_x = with_argmax ? data_as<int32_t>(*argmax_x) : nullptr;
      return Backend::run(ctx, "roi_align backward", JAX_ROI_KERNEL(roi_align_backward), args);
    });
  });
}

// Box gradient: grad_rois has the rois' shape and dtype.
template <typename Backend>
ffi::Error AlignBoxGradCore(typename Backend::Context ctx, std::string_view op,
                            const std::vector<ffi::AnyBuffer>& levels,
                            ffi::Span<const double> scales, LevelMap map, ffi::AnyBuffer rois,
                            ffi::AnyBuffer grad_output, const ffi::AnyBuffer* argmax_y,
                            const ffi::AnyBuffer* argmax_x, ffi::AnyBuffer grad_rois,
                            const AlignAttrs& attrs) {
  AlignCall call;
  JAX_ROI_RETURN_IF_ERROR(decode_align_call(op, "features", levels, scales, map, rois.dimensions(),
                                            "grad_output", grad_output.dimensions(), attrs, &call));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "grad_output", grad_output.element_type(), levels[0].element_type()));
  const auto rd = rois.dimensions();
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "grad_rois", grad_rois.dimensions(),
                                      std::vector<int64_t>(rd.begin(), rd.end())));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "grad_rois", grad_rois.element_type(), rois.element_type()));
  bool with_argmax;
  JAX_ROI_RETURN_IF_ERROR(
      check_argmax_pair(op, argmax_y, argmax_x, call.pooled, call.options.max_mode, &with_argmax));
  return dispatch_feature_type(op, "features", levels[0].element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_rois.element_count() == 0) return ffi::Error::Success();
      auto args = align_args<AlignBoxGradArgs<T, C>>(call, levels);
      args.rois = data_as<C>(rois);
      args.grad_output = data_as<T>(grad_output);
      args.argmax_y = with_argmax ? data_as<int32_t>(*argmax_y) : nullptr;
      args.argmax_x = with_argmax ? data_as<int32_t>(*argmax_x) : nullptr;
      args.grad_rois = mutable_data_as<C>(grad_rois);
      return Backend::run(ctx, "roi_align box gradient", JAX_ROI_KERNEL(roi_align_box_grad), args);
    });
  });
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_FFI_H_
