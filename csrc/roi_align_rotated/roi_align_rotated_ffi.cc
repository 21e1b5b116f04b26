// Rotated RoIAlign's XLA FFI targets (CPU and CUDA): decode and validate,
// then run the kernels declared in roi_align_rotated_kernels.h.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dims.h"
#include "core/ffi_helpers.h"
#include "core/ffi_target.h"
#include "core/types.h"
#include "roi_align_rotated/roi_align_rotated_kernels.h"

namespace jax_roi {
namespace {

// As roi_align's limit (roi_align_kernels.h kMaxSamplingRatio).
constexpr int64_t kRotatedMaxSamplingRatio = 1024;

struct RotatedAttrs {
  double spatial_scale;
  int64_t pooled_height, pooled_width, sampling_ratio;
  bool aligned;
  std::string_view angle_unit;
  bool clockwise;
  std::string_view layout;
};

// Decodes the dimensions of a call: the features (named features_name)
// against rotated rois (K, 6) or (N, R, 5), the options, and the shape of the
// pooled operand (named pooled_name).
ffi::Error decode_rotated(std::string_view op, std::string_view features_name,
                          ffi::Span<const int64_t> features, ffi::Span<const int64_t> rois,
                          std::string_view pooled_name, ffi::Span<const int64_t> pooled_dims,
                          const RotatedAttrs& a, RoiDims* d, RotatedOptions* o) {
  // The rotated rows have one value more than the axis-aligned ones that
  // decode_dims knows: it checks everything else on the axis-aligned shape.
  std::vector<int64_t> boxes(rois.begin(), rois.end());
  if (boxes.size() == 2 && boxes[1] == 6) {
    boxes[1] = 5;
  } else if (boxes.size() == 3 && boxes[2] == 5) {
    boxes[2] = 4;
  } else {
    return invalid_argument(op,
                            "rois must have shape (K, 6) or (N, R, 5), got " + shape_string(rois));
  }
  JAX_ROI_RETURN_IF_ERROR(decode_dims(op, features_name, features,
                                      ffi::Span<const int64_t>(boxes.data(), boxes.size()),
                                      a.layout, a.pooled_height, a.pooled_width, d));
  JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, a.spatial_scale));
  if (a.sampling_ratio > kRotatedMaxSamplingRatio) {
    return invalid_argument(op, "sampling_ratio must be at most " +
                                    std::to_string(kRotatedMaxSamplingRatio) + ", got " +
                                    std::to_string(a.sampling_ratio));
  }
  if (a.angle_unit != "degrees" && a.angle_unit != "radians") {
    return invalid_argument(op, "angle_unit must be \"degrees\" or \"radians\", got \"" +
                                    std::string(a.angle_unit) + "\"");
  }
  *o = RotatedOptions{a.spatial_scale, a.sampling_ratio, a.aligned, a.angle_unit == "degrees",
                      a.clockwise};
  return check_shape(op, pooled_name, pooled_dims, pooled_shape(*d, rois));
}

template <typename Binding>
auto WithRotatedAttrs(Binding b) {
  return std::move(b)
      .template Attr<double>("spatial_scale")
      .template Attr<int64_t>("pooled_height")
      .template Attr<int64_t>("pooled_width")
      .template Attr<int64_t>("sampling_ratio")
      .template Attr<bool>("aligned")
      .template Attr<std::string_view>("angle_unit")
      .template Attr<bool>("clockwise")
      .template Attr<std::string_view>("layout");
}

template <typename Backend>
ffi::Error RoiAlignRotatedForward(typename Backend::Context ctx, ffi::AnyBuffer features,
                                  ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> output,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t sampling_ratio, bool aligned, std::string_view angle_unit,
                                  bool clockwise, std::string_view layout) {
  constexpr std::string_view op = "roi_align_rotated";
  const RotatedAttrs attrs{spatial_scale, pooled_height, pooled_width, sampling_ratio,
                           aligned,       angle_unit,    clockwise,    layout};
  RoiDims d;
  RotatedOptions o;
  JAX_ROI_RETURN_IF_ERROR(decode_rotated(op, "features", features.dimensions(), rois.dimensions(),
                                         "output", output->dimensions(), attrs, &d, &o));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "output", output->element_type(), features.element_type()));
  return dispatch_feature_type(op, "features", features.element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (output->element_count() == 0) return ffi::Error::Success();
      RotatedForwardArgs<T, C> args{d, o, data_as<T>(features), data_as<C>(rois),
                                    mutable_data_as<T>(*output)};
      return Backend::run(ctx, "roi_align_rotated", JAX_ROI_KERNEL(roi_align_rotated_forward),
                          args);
    });
  });
}

template <typename Ctx>
auto RoiAlignRotatedForwardBinding() {
  return WithRotatedAttrs(ffi::Ffi::Bind()
                              .Ctx<Ctx>()
                              .template Arg<ffi::AnyBuffer>()    // features
                              .template Arg<ffi::AnyBuffer>()    // rois
                              .template Ret<ffi::AnyBuffer>());  // output
}

// Versioned names, as every target's (see roi_align_ffi.cc).
JAX_ROI_FFI_TARGET("jax_roi_roi_align_rotated_fwd_v1", RoiAlignRotatedForward,
                   RoiAlignRotatedForwardBinding);

template <typename Backend>
ffi::Error RoiAlignRotatedBackward(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                                   ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> grad_features,
                                   double spatial_scale, int64_t pooled_height,
                                   int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                   std::string_view angle_unit, bool clockwise,
                                   std::string_view layout) {
  constexpr std::string_view op = "roi_align_rotated backward";
  const RotatedAttrs attrs{spatial_scale, pooled_height, pooled_width, sampling_ratio,
                           aligned,       angle_unit,    clockwise,    layout};
  RoiDims d;
  RotatedOptions o;
  JAX_ROI_RETURN_IF_ERROR(decode_rotated(op, "grad_features", grad_features->dimensions(),
                                         rois.dimensions(), "grad_output", grad_output.dimensions(),
                                         attrs, &d, &o));
  return dispatch_feature_type(op, "grad_output", grad_output.element_type(), [&](auto t) {
    using T = decltype(t);
    JAX_ROI_RETURN_IF_ERROR(
        check_dtype(op, "grad_features", grad_features->element_type(), data_type_of<acc_t<T>>()));
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_features->element_count() == 0) return ffi::Error::Success();
      RotatedBackwardArgs<T, C> args{d, o, data_as<T>(grad_output), data_as<C>(rois),
                                     mutable_data_as<acc_t<T>>(*grad_features)};
      return Backend::run(ctx, "roi_align_rotated backward",
                          JAX_ROI_KERNEL(roi_align_rotated_backward), args);
    });
  });
}

template <typename Ctx>
auto RoiAlignRotatedBackwardBinding() {
  return WithRotatedAttrs(ffi::Ffi::Bind()
                              .Ctx<Ctx>()
                              .template Arg<ffi::AnyBuffer>()    // grad_output
                              .template Arg<ffi::AnyBuffer>()    // rois
                              .template Ret<ffi::AnyBuffer>());  // grad_features
}

JAX_ROI_FFI_TARGET("jax_roi_roi_align_rotated_bwd_v1", RoiAlignRotatedBackward,
                   RoiAlignRotatedBackwardBinding);

template <typename Backend>
ffi::Error RoiAlignRotatedBoxGrad(typename Backend::Context ctx, ffi::AnyBuffer features,
                                  ffi::AnyBuffer rois, ffi::AnyBuffer grad_output,
                                  ffi::Result<ffi::AnyBuffer> grad_rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width,
                                  int64_t sampling_ratio, bool aligned, std::string_view angle_unit,
                                  bool clockwise, std::string_view layout) {
  constexpr std::string_view op = "roi_align_rotated box gradient";
  const RotatedAttrs attrs{spatial_scale, pooled_height, pooled_width, sampling_ratio,
                           aligned,       angle_unit,    clockwise,    layout};
  RoiDims d;
  RotatedOptions o;
  JAX_ROI_RETURN_IF_ERROR(decode_rotated(op, "features", features.dimensions(), rois.dimensions(),
                                         "grad_output", grad_output.dimensions(), attrs, &d, &o));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "grad_output", grad_output.element_type(), features.element_type()));
  const auto rd = rois.dimensions();
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "grad_rois", grad_rois->dimensions(),
                                      std::vector<int64_t>(rd.begin(), rd.end())));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "grad_rois", grad_rois->element_type(), rois.element_type()));
  return dispatch_feature_type(op, "features", features.element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_rois->element_count() == 0) return ffi::Error::Success();
      RotatedBoxGradArgs<T, C> args{d,
                                    o,
                                    data_as<T>(features),
                                    data_as<C>(rois),
                                    data_as<T>(grad_output),
                                    mutable_data_as<C>(*grad_rois)};
      return Backend::run(ctx, "roi_align_rotated box gradient",
                          JAX_ROI_KERNEL(roi_align_rotated_box_grad), args);
    });
  });
}

template <typename Ctx>
auto RoiAlignRotatedBoxGradBinding() {
  return WithRotatedAttrs(ffi::Ffi::Bind()
                              .Ctx<Ctx>()
                              .template Arg<ffi::AnyBuffer>()    // features
                              .template Arg<ffi::AnyBuffer>()    // rois
                              .template Arg<ffi::AnyBuffer>()    // grad_output
                              .template Ret<ffi::AnyBuffer>());  // grad_rois
}

JAX_ROI_FFI_TARGET("jax_roi_roi_align_rotated_box_grad_v1", RoiAlignRotatedBoxGrad,
                   RoiAlignRotatedBoxGradBinding);

}  // namespace
}  // namespace jax_roi
