// RoIPool's XLA FFI targets (CPU and CUDA): decode and validate, then run
// the kernels declared in roi_pool_kernels.h.
#include <cstdint>
#include <string_view>
#include <vector>

#include "core/dims.h"
#include "core/ffi_helpers.h"
#include "core/ffi_target.h"
#include "core/types.h"
#include "roi_pool/roi_pool_kernels.h"

namespace jax_roi {
namespace {

// Forward. Results: output (features' dtype, pooled shape) and argmax (int32,
// pooled shape, or an empty array when the caller needs no argmax).
template <typename Backend>
ffi::Error RoiPoolForward(typename Backend::Context ctx, ffi::AnyBuffer features,
                          ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> output,
                          ffi::Result<ffi::AnyBuffer> argmax, double spatial_scale,
                          int64_t pooled_height, int64_t pooled_width, std::string_view layout) {
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
      return Backend::run(ctx, "roi_pool", JAX_ROI_KERNEL(roi_pool_forward), args);
    });
  });
}

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

// The target names carry the ABI version of their binding (operands,
// results, attributes). A change to a binding gets a new version, so that
// serialized (jax.export) artifacts never call a handler they do not match.
JAX_ROI_FFI_TARGET("jax_roi_roi_pool_fwd_v1", RoiPoolForward, RoiPoolForwardBinding);

// Backward. grad_output has the pooled shape and the features' dtype; the
// result grad_features has the features' shape in the accumulation dtype
// (float32 for float16/bfloat16/float32, float64 for float64). Each output's
// winner comes from `argmax` (the forward's) or, when argmax is null, is
// found again in `features` (the forward's operand, with spatial_scale).
// deterministic: the *_deterministic target (spatial_scale: its attribute).
template <typename Backend>
ffi::Error RoiPoolBackwardCore(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                               const ffi::AnyBuffer* argmax, const ffi::AnyBuffer* features,
                               ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> grad_features,
                               std::string_view layout, bool deterministic, double spatial_scale) {
  constexpr std::string_view op = "roi_pool backward";
  // The pooled size is read from grad_output, whose layout is the features'.
  const auto g = grad_output.dimensions();
  if (g.size() < 3) {
    return invalid_argument(op, "grad_output must have rank >= 3, got " + shape_string(g));
  }
  const bool nchw = layout == "NCHW";
  const int64_t pooled_height = nchw ? g[g.size() - 2] : g[g.size() - 3];
  const int64_t pooled_width = nchw ? g[g.size() - 1] : g[g.size() - 2];
  if (deterministic || argmax == nullptr) {
    JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, spatial_scale));
  }
  RoiDims d;
  JAX_ROI_RETURN_IF_ERROR(decode_dims(op, "grad_features", grad_features->dimensions(),
                                      rois.dimensions(), layout, pooled_height, pooled_width, &d));
  const std::vector<int64_t> pooled = pooled_shape(d, rois.dimensions());
  JAX_ROI_RETURN_IF_ERROR(check_shape(op, "grad_output", g, pooled));
  if (argmax != nullptr) {
    JAX_ROI_RETURN_IF_ERROR(check_shape(op, "argmax", argmax->dimensions(), pooled));
    JAX_ROI_RETURN_IF_ERROR(check_dtype(op, "argmax", argmax->element_type(), ffi::DataType::S32));
  } else {
    const auto f = grad_features->dimensions();
    JAX_ROI_RETURN_IF_ERROR(check_shape(op, "features", features->dimensions(),
                                        std::vector<int64_t>(f.begin(), f.end())));
    JAX_ROI_RETURN_IF_ERROR(
        check_dtype(op, "features", features->element_type(), grad_output.element_type()));
  }
  return dispatch_feature_type(op, "grad_output", grad_output.element_type(), [&](auto t) {
    using T = decltype(t);
    JAX_ROI_RETURN_IF_ERROR(
        check_dtype(op, "grad_features", grad_features->element_type(), data_type_of<acc_t<T>>()));
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_features->element_count() == 0) return ffi::Error::Success();
      PoolBackwardArgs<T, C> args{d,
                                  data_as<T>(grad_output),
                                  argmax != nullptr ? data_as<int32_t>(*argmax) : nullptr,
                                  data_as<C>(rois),
                                  mutable_data_as<acc_t<T>>(*grad_features),
                                  deterministic,
                                  spatial_scale,
                                  argmax != nullptr ? nullptr : data_as<T>(*features)};
      return Backend::run(ctx, "roi_pool backward", JAX_ROI_KERNEL(roi_pool_backward), args);
    });
  });
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

template <typename Backend>
ffi::Error RoiPoolBackward(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                           ffi::AnyBuffer argmax, ffi::AnyBuffer rois,
                           ffi::Result<ffi::AnyBuffer> grad_features, std::string_view layout) {
  return RoiPoolBackwardCore<Backend>(ctx, grad_output, &argmax, nullptr, rois, grad_features,
                                      layout, false, 0.0);
}

template <typename Backend>
ffi::Error RoiPoolBackwardDeterministic(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                                        ffi::AnyBuffer argmax, ffi::AnyBuffer rois,
                                        ffi::Result<ffi::AnyBuffer> grad_features,
                                        std::string_view layout, double spatial_scale) {
  return RoiPoolBackwardCore<Backend>(ctx, grad_output, &argmax, nullptr, rois, grad_features,
                                      layout, true, spatial_scale);
}

template <typename Ctx>
auto RoiPoolBackwardDeterministicBinding() {
  return RoiPoolBackwardBinding<Ctx>().template Attr<double>("spatial_scale");
}

// Backward without a saved argmax: each output's winner is found again in
// `features` (the forward's operand; spatial_scale: the forward's attribute).
// The same gradient, bit for bit, as the argmax backward after the forward
// with the same features.
template <typename Backend>
ffi::Error RoiPoolBackwardFromFeatures(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                                       ffi::AnyBuffer features, ffi::AnyBuffer rois,
                                       ffi::Result<ffi::AnyBuffer> grad_features,
                                       std::string_view layout, double spatial_scale) {
  return RoiPoolBackwardCore<Backend>(ctx, grad_output, nullptr, &features, rois, grad_features,
                                      layout, false, spatial_scale);
}

template <typename Ctx>
auto RoiPoolBackwardFromFeaturesBinding() {
  return ffi::Ffi::Bind()
      .Ctx<Ctx>()
      .template Arg<ffi::AnyBuffer>()  // grad_output
      .template Arg<ffi::AnyBuffer>()  // features
      .template Arg<ffi::AnyBuffer>()  // rois
      .template Ret<ffi::AnyBuffer>()  // grad_features
      .template Attr<std::string_view>("layout")
      .template Attr<double>("spatial_scale");
}

JAX_ROI_FFI_TARGET("jax_roi_roi_pool_bwd_v1", RoiPoolBackward, RoiPoolBackwardBinding);
JAX_ROI_FFI_TARGET("jax_roi_roi_pool_bwd_from_features_v1", RoiPoolBackwardFromFeatures,
                   RoiPoolBackwardFromFeaturesBinding);
JAX_ROI_FFI_TARGET("jax_roi_roi_pool_bwd_deterministic_v1", RoiPoolBackwardDeterministic,
                   RoiPoolBackwardDeterministicBinding);

}  // namespace
}  // namespace jax_roi
