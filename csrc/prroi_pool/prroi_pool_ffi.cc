// Precise RoI Pooling's XLA FFI targets (CPU and CUDA): decode and validate,
// then run the kernels declared in prroi_pool_kernels.h.
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dims.h"
#include "core/ffi_helpers.h"
#include "core/ffi_target.h"
#include "core/types.h"
#include "prroi_pool/prroi_pool_kernels.h"

namespace jax_roi {
namespace {

// Decodes the dimensions of a call: the features (named features_name)
// against the rois, the spatial scale, and the shape of the pooled operand
// (named pooled_name).
ffi::Error decode_prroi(std::string_view op, std::string_view features_name,
                        ffi::Span<const int64_t> features, ffi::Span<const int64_t> rois,
                        std::string_view pooled_name, ffi::Span<const int64_t> pooled_dims,
                        double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                        std::string_view layout, RoiDims* d) {
  JAX_ROI_RETURN_IF_ERROR(
      decode_dims(op, features_name, features, rois, layout, pooled_height, pooled_width, d));
  JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, spatial_scale));
  return check_shape(op, pooled_name, pooled_dims, pooled_shape(*d, rois));
}

template <typename Binding>
auto WithPrRoiAttrs(Binding b) {
  return std::move(b)
      .template Attr<double>("spatial_scale")
      .template Attr<int64_t>("pooled_height")
      .template Attr<int64_t>("pooled_width")
      .template Attr<std::string_view>("layout");
}

template <typename Backend>
ffi::Error PrRoiPoolForward(typename Backend::Context ctx, ffi::AnyBuffer features,
                            ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> output,
                            double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                            std::string_view layout) {
  constexpr std::string_view op = "prroi_pool";
  RoiDims d;
  JAX_ROI_RETURN_IF_ERROR(decode_prroi(op, "features", features.dimensions(), rois.dimensions(),
                                       "output", output->dimensions(), spatial_scale, pooled_height,
                                       pooled_width, layout, &d));
  JAX_ROI_RETURN_IF_ERROR(
      check_dtype(op, "output", output->element_type(), features.element_type()));
  return dispatch_feature_type(op, "features", features.element_type(), [&](auto t) {
    using T = decltype(t);
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (output->element_count() == 0) return ffi::Error::Success();
      PrRoiForwardArgs<T, C> args{d, spatial_scale, data_as<T>(features), data_as<C>(rois),
                                  mutable_data_as<T>(*output)};
      return Backend::run(ctx, "prroi_pool", JAX_ROI_KERNEL(prroi_pool_forward), args);
    });
  });
}

template <typename Ctx>
auto PrRoiPoolForwardBinding() {
  return WithPrRoiAttrs(ffi::Ffi::Bind()
                            .Ctx<Ctx>()
                            .template Arg<ffi::AnyBuffer>()    // features
                            .template Arg<ffi::AnyBuffer>()    // rois
                            .template Ret<ffi::AnyBuffer>());  // output
}

// Versioned names, as every target's (see roi_align_ffi.cc).
JAX_ROI_FFI_TARGET("jax_roi_prroi_pool_fwd_v1", PrRoiPoolForward, PrRoiPoolForwardBinding);

template <typename Backend>
ffi::Error PrRoiPoolBackward(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                             ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> grad_features,
                             double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                             std::string_view layout) {
  constexpr std::string_view op = "prroi_pool backward";
  RoiDims d;
  JAX_ROI_RETURN_IF_ERROR(decode_prroi(op, "grad_features", grad_features->dimensions(),
                                       rois.dimensions(), "grad_output", grad_output.dimensions(),
                                       spatial_scale, pooled_height, pooled_width, layout, &d));
  return dispatch_feature_type(op, "grad_output", grad_output.element_type(), [&](auto t) {
    using T = decltype(t);
    JAX_ROI_RETURN_IF_ERROR(
        check_dtype(op, "grad_features", grad_features->element_type(), data_type_of<acc_t<T>>()));
    return dispatch_box_type(op, rois.element_type(), [&](auto c) {
      using C = decltype(c);
      if (grad_features->element_count() == 0) return ffi::Error::Success();
      PrRoiBackwardArgs<T, C> args{d, spatial_scale, data_as<T>(grad_output), data_as<C>(rois),
                                   mutable_data_as<acc_t<T>>(*grad_features)};
      return Backend::run(ctx, "prroi_pool backward", JAX_ROI_KERNEL(prroi_pool_backward), args);
    });
  });
}

template <typename Ctx>
auto PrRoiPoolBackwardBinding() {
  return WithPrRoiAttrs(ffi::Ffi::Bind()
                            .Ctx<Ctx>()
                            .template Arg<ffi::AnyBuffer>()    // grad_output
                            .template Arg<ffi::AnyBuffer>()    // rois
                            .template Ret<ffi::AnyBuffer>());  // grad_features
}

JAX_ROI_FFI_TARGET("jax_roi_prroi_pool_bwd_v1", PrRoiPoolBackward, PrRoiPoolBackwardBinding);

template <typename Backend>
ffi::Error PrRoiPoolBoxGrad(typename Backend::Context ctx, ffi::AnyBuffer features,
                            ffi::AnyBuffer rois, ffi::AnyBuffer grad_output,
                            ffi::Result<ffi::AnyBuffer> grad_rois, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width, std::string_view layout) {
  constexpr std::string_view op = "prroi_pool box gradient";
  RoiDims d;
  JAX_ROI_RETURN_IF_ERROR(decode_prroi(op, "features", features.dimensions(), rois.dimensions(),
                                       "grad_output", grad_output.dimensions(), spatial_scale,
                                       pooled_height, pooled_width, layout, &d));
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
      PrRoiBoxGradArgs<T, C> args{d,
                                  spatial_scale,
                                  data_as<T>(features),
                                  data_as<C>(rois),
                                  data_as<T>(grad_output),
                                  mutable_data_as<C>(*grad_rois)};
      return Backend::run(ctx, "prroi_pool box gradient", JAX_ROI_KERNEL(prroi_pool_box_grad),
                          args);
    });
  });
}

template <typename Ctx>
auto PrRoiPoolBoxGradBinding() {
  return WithPrRoiAttrs(ffi::Ffi::Bind()
                            .Ctx<Ctx>()
                            .template Arg<ffi::AnyBuffer>()    // features
                            .template Arg<ffi::AnyBuffer>()    // rois
                            .template Arg<ffi::AnyBuffer>()    // grad_output
                            .template Ret<ffi::AnyBuffer>());  // grad_rois
}

JAX_ROI_FFI_TARGET("jax_roi_prroi_pool_box_grad_v1", PrRoiPoolBoxGrad, PrRoiPoolBoxGradBinding);

}  // namespace
}  // namespace jax_roi
