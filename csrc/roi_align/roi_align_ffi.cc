// roi_align's XLA FFI targets (CPU and CUDA): one feature map, through the
// handler cores of roi_align_ffi.h.
#include <cstdint>
#include <string_view>
#include <utility>

#include "core/ffi_helpers.h"
#include "core/ffi_target.h"
#include "roi_align/roi_align_ffi.h"
#include "roi_align/roi_align_kernels.h"

namespace jax_roi {
namespace {

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

template <typename Backend>
ffi::Error RoiAlignForward(typename Backend::Context ctx, ffi::AnyBuffer features,
                           ffi::AnyBuffer rois, ffi::Result<ffi::AnyBuffer> output,
                           ffi::Result<ffi::AnyBuffer> argmax_y,
                           ffi::Result<ffi::AnyBuffer> argmax_x, double spatial_scale,
                           int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                           bool aligned, std::string_view mode, std::string_view layout) {
  return AlignForwardCore<Backend>(
      ctx, "roi_align", {features}, ffi::Span<const double>(&spatial_scale, 1), LevelMap{}, rois,
      *output, &*argmax_y, &*argmax_x,
      AlignAttrs{pooled_height, pooled_width, sampling_ratio, aligned, mode, layout});
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

// The target names carry the ABI version of their binding (operands,
// results, attributes). A change to a binding gets a new version, so that
// serialized (jax.export) artifacts never call a handler they do not match.
JAX_ROI_FFI_TARGET("jax_roi_roi_align_fwd_v1", RoiAlignForward, RoiAlignForwardBinding);

// The backward; kDeterministic: the same bits on every run (the
// *_deterministic target).
template <bool kDeterministic>
struct RoiAlignBackwardAs {
  template <typename Backend>
  static ffi::Error Run(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                        ffi::AnyBuffer rois, ffi::AnyBuffer argmax_y, ffi::AnyBuffer argmax_x,
                        ffi::Result<ffi::AnyBuffer> grad_features, double spatial_scale,
                        int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                        bool aligned, std::string_view mode, std::string_view layout) {
    return AlignBackwardCore<Backend>(ctx, "roi_align backward", {*grad_features},
                                      ffi::Span<const double>(&spatial_scale, 1), LevelMap{},
                                      grad_output, rois, &argmax_y, &argmax_x,
                                      AlignAttrs{pooled_height, pooled_width, sampling_ratio,
                                                 aligned, mode, layout, kDeterministic});
  }
};

template <typename Backend>
constexpr auto RoiAlignBackward = RoiAlignBackwardAs<false>::Run<Backend>;
template <typename Backend>
constexpr auto RoiAlignBackwardDeterministic = RoiAlignBackwardAs<true>::Run<Backend>;

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

JAX_ROI_FFI_TARGET("jax_roi_roi_align_bwd_v1", RoiAlignBackward, RoiAlignBackwardBinding);
JAX_ROI_FFI_TARGET("jax_roi_roi_align_bwd_deterministic_v1", RoiAlignBackwardDeterministic,
                   RoiAlignBackwardBinding);

template <typename Backend>
ffi::Error RoiAlignBoxGrad(typename Backend::Context ctx, ffi::AnyBuffer features,
                           ffi::AnyBuffer rois, ffi::AnyBuffer grad_output, ffi::AnyBuffer argmax_y,
                           ffi::AnyBuffer argmax_x, ffi::Result<ffi::AnyBuffer> grad_rois,
                           double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                           int64_t sampling_ratio, bool aligned, std::string_view mode,
                           std::string_view layout) {
  return AlignBoxGradCore<Backend>(
      ctx, "roi_align box gradient", {features}, ffi::Span<const double>(&spatial_scale, 1),
      LevelMap{}, rois, grad_output, &argmax_y, &argmax_x, *grad_rois,
      AlignAttrs{pooled_height, pooled_width, sampling_ratio, aligned, mode, layout});
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

JAX_ROI_FFI_TARGET("jax_roi_roi_align_box_grad_v1", RoiAlignBoxGrad, RoiAlignBoxGradBinding);

}  // namespace
}  // namespace jax_roi
