// XLA FFI targets of the position-sensitive RoI ops (CPU and CUDA):
// ps_roi_pool and ps_roi_align. Decode and validate, then run the kernels
// declared in ps_roi_kernels.h.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/dims.h"
#include "core/ffi_helpers.h"
#include "core/ffi_target.h"
#include "core/types.h"
#include "ps_roi/ps_roi_kernels.h"
#include "roi_align/roi_align_kernels.h"

namespace jax_roi {
namespace {

// Decodes the features (or feature gradient) and rois dims into the OUTPUT
// dims of a position-sensitive op (channels = C / (PH * PW)), checking that
// C is divisible by PH * PW.
ffi::Error decode_ps_dims(std::string_view op, std::string_view features_name,
                          ffi::Span<const int64_t> features, ffi::Span<const int64_t> rois,
                          std::string_view layout, int64_t pooled_height, int64_t pooled_width,
                          RoiDims* d) {
  JAX_ROI_RETURN_IF_ERROR(
      decode_dims(op, features_name, features, rois, layout, pooled_height, pooled_width, d));
  const int64_t bins = d->pooled_height * d->pooled_width;
  if (d->channels % bins != 0) {
    return invalid_argument(
        op, std::string(features_name) + " has " + std::to_string(d->channels) +
                " channels, which must be divisible by PH * PW = " + std::to_string(bins));
  }
  d->channels /= bins;
  return ffi::Error::Success();
}

ffi::Error check_ps_sampling_ratio(std::string_view op, int64_t sampling_ratio) {
  if (sampling_ratio <= kMaxSamplingRatio) return ffi::Error::Success();
  return invalid_argument(op, "sampling_ratio must be at most " +
                                  std::to_string(kMaxSamplingRatio) + ", got " +
                                  std::to_string(sampling_ratio));
}

// ---------------------------------------------------------------------------
// ps_roi_pool
// ---------------------------------------------------------------------------

template <typename Backend>
ffi::Error PsRoiPoolForward(typename Backend::Context ctx, ffi::AnyBuffer features,
                            ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> output,
                            double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                            std::string_view layout) {
  constexpr std::string_view op = "ps_roi_pool";
  RoiDims d;
  JAX_ROI_RETURN_IF_ERROR(decode_ps_dims(op, "features", features.dimensions(), rois.dimensions(),
                                         layout, pooled_height, pooled_width, &d));
  JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, spatial_scale));
  JAX_ROI_RETURN_IF_ERROR(
      check_shape(op, "output", output->dimensions(), pooled_shape(d, rois.dimensions())));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "output", output->element_type(), features.element_type()));
  return dispatch_feature_type(op, "features", features.element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (output->element_count() == 0) return ffi::Error::Success();
      PsPoolForwardArgs<T, C> args{d, spatial_scale, data_as<T>(features), data_as<C>(rois),
                                   mutable_data_as<T>(*output)};
      return Backend::run(ctx, "ps_roi_pool", JAX_ROI_KERNEL(ps_roi_pool_forward), args);
    });
  });
}

template <typename Ctx>
auto PsRoiPoolForwardBinding() {
  return ffi::Ffi::Bind()
      .Ctx<Ctx>()
      .template Arg<ffi::AnyBuffer>()  // features
      .template Arg<ffi::AnyBuffer>()  // rois
      .template Ret<ffi::AnyBuffer>()  // output
      .template Attr<double>("spatial_scale")
      .template Attr<int64_t>("pooled_height")
      .template Attr<int64_t>("pooled_width")
      .template Attr<std::string_view>("layout");
}

// The target names carry the ABI version of their binding (operands,
// results, attributes): a change to a binding gets a new version.
JAX_ROI_FFI_TARGET("jax_roi_ps_roi_pool_fwd_v1", PsRoiPoolForward, PsRoiPoolForwardBinding);

// Backward: grad_output (the output's shape and the features' dtype) ->
// grad_features (the features' shape, the accumulation dtype).
template <typename Backend>
ffi::Error PsRoiPoolBackward(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                             ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> grad_features,
                             double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                             std::string_view layout) {
  constexpr std::string_view op = "ps_roi_pool backward";
  RoiDims d;
  JAX_ROI_RETURN_IF_ERROR(decode_ps_dims(op, "grad_features", grad_features->dimensions(),
                                         rois.dimensions(), layout, pooled_height, pooled_width,
                                         &d));
  JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, spatial_scale));
  JAX_ROI_RETURN_IF_ERROR(
      check_shape(op, "grad_output", grad_output.dimensions(), pooled_shape(d, rois.dimensions())));
  return dispatch_feature_type(op, "grad_output", grad_output.element_type(), [&](auto t) {
    using T = decltype(t);
    JAX_ROI_RETURN_IF_ERROR(
        check_dtype(op, "grad_features", grad_features->element_type(), data_type_of<acc_t<T>>()));
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_features->element_count() == 0) return ffi::Error::Success();
      PsPoolBackwardArgs<T, C> args{d, spatial_scale, data_as<T>(grad_output), data_as<C>(rois),
                                    mutable_data_as<acc_t<T>>(*grad_features)};
      return Backend::run(ctx, "ps_roi_pool backward", JAX_ROI_KERNEL(ps_roi_pool_backward), args);
    });
  });
}

template <typename Ctx>
auto PsRoiPoolBackwardBinding() {
  return ffi::Ffi::Bind()
      .Ctx<Ctx>()
      .template Arg<ffi::AnyBuffer>()  // grad_output
      .template Arg<ffi::AnyBuffer>()  // rois
      .template Ret<ffi::AnyBuffer>()  // grad_features
      .template Attr<double>("spatial_scale")
      .template Attr<int64_t>("pooled_height")
      .template Attr<int64_t>("pooled_width")
      .template Attr<std::string_view>("layout");
}

JAX_ROI_FFI_TARGET("jax_roi_ps_roi_pool_bwd_v1", PsRoiPoolBackward, PsRoiPoolBackwardBinding);

// ---------------------------------------------------------------------------
// ps_roi_align
// ---------------------------------------------------------------------------

template <typename Binding>
auto WithPsAlignAttrs(Binding b) {
  return std::move(b)
      .template Attr<double>("spatial_scale")
      .template Attr<int64_t>("pooled_height")
      .template Attr<int64_t>("pooled_width")
      .template Attr<int64_t>("sampling_ratio")
      .template Attr<std::string_view>("layout");
}

template <typename Backend>
ffi::Error PsRoiAlignForward(typename Backend::Context ctx, ffi::AnyBuffer features,
                             ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> output,
                             double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                             int64_t sampling_ratio, std::string_view layout) {
  constexpr std::string_view op = "ps_roi_align";
  RoiDims d;
  JAX_ROI_RETURN_IF_ERROR(decode_ps_dims(op, "features", features.dimensions(), rois.dimensions(),
                                         layout, pooled_height, pooled_width, &d));
  JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, spatial_scale));
  JAX_ROI_RETURN_IF_ERROR(check_ps_sampling_ratio(op, sampling_ratio));
  JAX_ROI_RETURN_IF_ERROR(
      check_shape(op, "output", output->dimensions(), pooled_shape(d, rois.dimensions())));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "output", output->element_type(), features.element_type()));
  return dispatch_feature_type(op, "features", features.element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (output->element_count() == 0) return ffi::Error::Success();
      PsAlignForwardArgs<T, C> args{d,
                                    spatial_scale,
                                    sampling_ratio,
                                    data_as<T>(features),
                                    data_as<C>(rois),
                                    mutable_data_as<T>(*output)};
      return Backend::run(ctx, "ps_roi_align", JAX_ROI_KERNEL(ps_roi_align_forward), args);
    });
  });
}

template <typename Ctx>
auto PsRoiAlignForwardBinding() {
  return WithPsAlignAttrs(ffi::Ffi::Bind()
                              .Ctx<Ctx>()
                              .template Arg<ffi::AnyBuffer>()    // features
                              .template Arg<ffi::AnyBuffer>()    // rois
                              .template Ret<ffi::AnyBuffer>());  // output
}

JAX_ROI_FFI_TARGET("jax_roi_ps_roi_align_fwd_v1", PsRoiAlignForward, PsRoiAlignForwardBinding);

template <typename Backend>
ffi::Error PsRoiAlignBackward(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                              ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> grad_features,
                              double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                              int64_t sampling_ratio, std::string_view layout) {
  constexpr std::string_view op = "ps_roi_align backward";
  RoiDims d;
  JAX_ROI_RETURN_IF_ERROR(decode_ps_dims(op, "grad_features", grad_features->dimensions(),
                                         rois.dimensions(), layout, pooled_height, pooled_width,
                                         &d));
  JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, spatial_scale));
  JAX_ROI_RETURN_IF_ERROR(check_ps_sampling_ratio(op, sampling_ratio));
  JAX_ROI_RETURN_IF_ERROR(
      check_shape(op, "grad_output", grad_output.dimensions(), pooled_shape(d, rois.dimensions())));
  return dispatch_feature_type(op, "grad_output", grad_output.element_type(), [&](auto t) {
    using T = decltype(t);
    JAX_ROI_RETURN_IF_ERROR(
        check_dtype(op, "grad_features", grad_features->element_type(), data_type_of<acc_t<T>>()));
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_features->element_count() == 0) return ffi::Error::Success();
      PsAlignBackwardArgs<T, C> args{d,
                                     spatial_scale,
                                     sampling_ratio,
                                     data_as<T>(grad_output),
                                     data_as<C>(rois),
                                     mutable_data_as<acc_t<T>>(*grad_features)};
      return Backend::run(ctx, "ps_roi_align backward", JAX_ROI_KERNEL(ps_roi_align_backward),
                          args);
    });
  });
}

template <typename Ctx>
auto PsRoiAlignBackwardBinding() {
  return WithPsAlignAttrs(ffi::Ffi::Bind()
                              .Ctx<Ctx>()
                              .template Arg<ffi::AnyBuffer>()    // grad_output
                              .template Arg<ffi::AnyBuffer>()    // rois
                              .template Ret<ffi::AnyBuffer>());  // grad_features
}

JAX_ROI_FFI_TARGET("jax_roi_ps_roi_align_bwd_v1", PsRoiAlignBackward, PsRoiAlignBackwardBinding);

template <typename Backend>
ffi::Error PsRoiAlignBoxGrad(typename Backend::Context ctx, ffi::AnyBuffer features,
                             ffi::AnyBuffer rois, ffi::AnyBuffer grad_output,
                             ffi::Result<ffi::AnyBuffer> grad_rois, double spatial_scale,
                             int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                             std::string_view layout) {
  constexpr std::string_view op = "ps_roi_align box gradient";
  RoiDims d;
  JAX_ROI_RETURN_IF_ERROR(decode_ps_dims(op, "features", features.dimensions(), rois.dimensions(),
                                         layout, pooled_height, pooled_width, &d));
  JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, spatial_scale));
  JAX_ROI_RETURN_IF_ERROR(check_ps_sampling_ratio(op, sampling_ratio));
  JAX_ROI_RETURN_IF_ERROR(
      check_shape(op, "grad_output", grad_output.dimensions(), pooled_shape(d, rois.dimensions())));
  const auto r = rois.dimensions();
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "grad_rois", grad_rois->dimensions(),
                                      std::vector<int64_t>(r.begin(), r.end())));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "grad_rois", grad_rois->element_type(), rois.element_type()));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "grad_output", grad_output.element_type(), features.element_type()));
  return dispatch_feature_type(op, "features", features.element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_rois->element_count() == 0) return ffi::Error::Success();
      PsAlignBoxGradArgs<T, C> args{d,
                                    spatial_scale,
                                    sampling_ratio,
                                    data_as<T>(features),
                                    data_as<C>(rois),
                                    data_as<T>(grad_output),
                                    mutable_data_as<C>(*grad_rois)};
      return Backend::run(ctx, "ps_roi_align box gradient", JAX_ROI_KERNEL(ps_roi_align_box_grad),
                          args);
    });
  });
}

template <typename Ctx>
auto PsRoiAlignBoxGradBinding() {
  return WithPsAlignAttrs(ffi::Ffi::Bind()
                              .Ctx<Ctx>()
                              .template Arg<ffi::AnyBuffer>()    // features
                              .template Arg<ffi::AnyBuffer>()    // rois
                              .template Arg<ffi::AnyBuffer>()    // grad_output
                              .template Ret<ffi::AnyBuffer>());  // grad_rois
}

JAX_ROI_FFI_TARGET("jax_roi_ps_roi_align_box_grad_v1", PsRoiAlignBoxGrad, PsRoiAlignBoxGradBinding);

}  // namespace
}  // namespace jax_roi
