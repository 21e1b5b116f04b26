// multi_scale_roi_align's XLA FFI targets (CPU and CUDA): FPN levels, each
// RoI pooled (avg) from the level torchvision's LevelMapper assigns it. The
// kernels are roi_align's (they handle levels); this file only adds the
// level operands, the level mapping and its validation.
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/ffi_helpers.h"
#include "core/ffi_target.h"
#include "roi_align/roi_align_ffi.h"
#include "roi_align/roi_align_kernels.h"

namespace jax_roi {
namespace {

// multi_scale_roi_align's attributes, shared by its three targets and
// decoded by name from the call's attribute dictionary (the registration
// after the namespace): the same attribute set as when each was bound with
// .Attr<T>(name).
struct MultiScaleAttrs {
  ffi::Span<const double> spatial_scales;
  int64_t pooled_height, pooled_width, sampling_ratio;
  bool aligned;
  std::string_view layout;
  double canonical_scale, canonical_level;
  int64_t k_min, k_max;

  AlignAttrs align() const {
    return AlignAttrs{pooled_height, pooled_width, sampling_ratio, aligned, "avg", layout};
  }
};

}  // namespace
}  // namespace jax_roi

// (Members in the struct's order.)
XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(
    ::jax_roi::MultiScaleAttrs,
    ::xla::ffi::StructMember<::xla::ffi::Span<const double>>("spatial_scales"),
    ::xla::ffi::StructMember<int64_t>("pooled_height"),
    ::xla::ffi::StructMember<int64_t>("pooled_width"),
    ::xla::ffi::StructMember<int64_t>("sampling_ratio"), ::xla::ffi::StructMember<bool>("aligned"),
    ::xla::ffi::StructMember<std::string_view>("layout"),
    ::xla::ffi::StructMember<double>("canonical_scale"),
    ::xla::ffi::StructMember<double>("canonical_level"), ::xla::ffi::StructMember<int64_t>("k_min"),
    ::xla::ffi::StructMember<int64_t>("k_max"));

namespace jax_roi {
namespace {

inline ffi::Error decode_level_map(std::string_view op, size_t num_levels, const MultiScaleAttrs& a,
                                   LevelMap* m) {
  if (a.spatial_scales.size() != num_levels) {
    return invalid_argument(op, "needs one spatial scale per level: " + std::to_string(num_levels) +
                                    " levels, " + std::to_string(a.spatial_scales.size()) +
                                    " scales");
  }
  for (double s : a.spatial_scales) JAX_ROI_RETURN_IF_ERROR(check_spatial_scale(op, s));
  if (!(std::isfinite(a.canonical_scale) && a.canonical_scale > 0) ||
      !std::isfinite(a.canonical_level) || a.k_max < a.k_min) {
    return invalid_argument(op,
                            "invalid level mapping (canonical_scale, canonical_level, "
                            "k_min, k_max)");
  }
  m->num_levels = static_cast<int32_t>(num_levels);
  m->canonical_scale = a.canonical_scale;
  m->canonical_level = a.canonical_level;
  m->k_min = a.k_min;
  m->k_max = a.k_max;
  return ffi::Error::Success();
}

// The level buffers (.RemainingArgs() or .RemainingRets(), one per level)
// and the level mapping of a call.
template <typename Remaining>
ffi::Error decode_fpn(std::string_view op, const Remaining& buffers, const MultiScaleAttrs& a,
                      std::vector<ffi::AnyBuffer>* levels, LevelMap* map) {
  ffi::Error error;
  *levels = remaining_buffers(buffers, &error);
  JAX_ROI_RETURN_IF_ERROR(error);
  return decode_level_map(op, levels->size(), a, map);
}

// The target names carry the ABI version of their binding (operands,
// results, attributes). A change to a binding gets a new version, so that
// serialized (jax.export) artifacts never call a handler they do not match.

template <typename Backend>
ffi::Error MultiScaleForward(typename Backend::Context ctx, ffi::AnyBuffer rois,
                             ffi::RemainingArgs features, ffi::Result<ffi::AnyBuffer> output,
                             MultiScaleAttrs a) {
  constexpr std::string_view op = "multi_scale_roi_align";
  std::vector<ffi::AnyBuffer> levels;
  LevelMap map;
  JAX_ROI_RETURN_IF_ERROR(decode_fpn(op, features, a, &levels, &map));
  return AlignForwardCore<Backend>(ctx, op, levels, a.spatial_scales, map, rois, *output, nullptr,
                                   nullptr, a.align());
}

template <typename Ctx>
auto MultiScaleForwardBinding() {
  return ffi::Ffi::Bind()
      .Ctx<Ctx>()
      .template Arg<ffi::AnyBuffer>()  // rois
      .RemainingArgs()                 // features, one per level
      .template Ret<ffi::AnyBuffer>()  // output
      .template Attrs<MultiScaleAttrs>();
}

JAX_ROI_FFI_TARGET("jax_roi_multi_scale_roi_align_fwd_v1", MultiScaleForward,
                   MultiScaleForwardBinding);

// The backward; kDeterministic: the same bits on every run (the
// *_deterministic target).
template <bool kDeterministic>
struct MultiScaleBackwardAs {
  template <typename Backend>
  static ffi::Error Run(typename Backend::Context ctx, ffi::AnyBuffer grad_output,
                        ffi::AnyBuffer rois, ffi::RemainingRets grad_features, MultiScaleAttrs a) {
    constexpr std::string_view op = "multi_scale_roi_align backward";
    std::vector<ffi::AnyBuffer> grads;
    LevelMap map;
    JAX_ROI_RETURN_IF_ERROR(decode_fpn(op, grad_features, a, &grads, &map));
    AlignAttrs attrs = a.align();
    attrs.deterministic = kDeterministic;
    return AlignBackwardCore<Backend>(ctx, op, grads, a.spatial_scales, map, grad_output, rois,
                                      nullptr, nullptr, attrs);
  }
};

template <typename Backend>
constexpr auto MultiScaleBackward = MultiScaleBackwardAs<false>::Run<Backend>;
template <typename Backend>
constexpr auto MultiScaleBackwardDeterministic = MultiScaleBackwardAs<true>::Run<Backend>;

template <typename Ctx>
auto MultiScaleBackwardBinding() {
  return ffi::Ffi::Bind()
      .Ctx<Ctx>()
      .template Arg<ffi::AnyBuffer>()  // grad_output
      .template Arg<ffi::AnyBuffer>()  // rois
      .RemainingRets()                 // grad_features, one per level
      .template Attrs<MultiScaleAttrs>();
}

JAX_ROI_FFI_TARGET("jax_roi_multi_scale_roi_align_bwd_v1", MultiScaleBackward,
                   MultiScaleBackwardBinding);
JAX_ROI_FFI_TARGET("jax_roi_multi_scale_roi_align_bwd_deterministic_v1",
                   MultiScaleBackwardDeterministic, MultiScaleBackwardBinding);

template <typename Backend>
ffi::Error MultiScaleBoxGrad(typename Backend::Context ctx, ffi::AnyBuffer rois,
                             ffi::AnyBuffer grad_output, ffi::RemainingArgs features,
                             ffi::Result<ffi::AnyBuffer> grad_rois, MultiScaleAttrs a) {
  constexpr std::string_view op = "multi_scale_roi_align box gradient";
  std::vector<ffi::AnyBuffer> levels;
  LevelMap map;
  JAX_ROI_RETURN_IF_ERROR(decode_fpn(op, features, a, &levels, &map));
  return AlignBoxGradCore<Backend>(ctx, op, levels, a.spatial_scales, map, rois, grad_output,
                                   nullptr, nullptr, *grad_rois, a.align());
}

template <typename Ctx>
auto MultiScaleBoxGradBinding() {
  return ffi::Ffi::Bind()
      .Ctx<Ctx>()
      .template Arg<ffi::AnyBuffer>()  // rois
      .template Arg<ffi::AnyBuffer>()  // grad_output
      .RemainingArgs()                 // features, one per level
      .template Ret<ffi::AnyBuffer>()  // grad_rois
      .template Attrs<MultiScaleAttrs>();
}

JAX_ROI_FFI_TARGET("jax_roi_multi_scale_roi_align_box_grad_v1", MultiScaleBoxGrad,
                   MultiScaleBoxGradBinding);

}  // namespace
}  // namespace jax_roi
