// RoIAlign's kernels (roi_align_cpu.cc, roi_align_cuda.cuh), which also run
// multi_scale_roi_align (FPN levels): their arguments, plain data (pointers,
// dimensions and options; no XLA FFI types), and their declarations on every
// back end (core/kernel.h).
//
// AlignOptions shares its name with the Python-side jax_roi._ffi.AlignOptions
// (a NamedTuple of the same options); they never meet in one language.
#ifndef JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_KERNELS_H_
#define JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_KERNELS_H_

#include <cstdint>

#include "core/dims.h"
#include "core/kernel.h"
#include "core/types.h"

namespace jax_roi {

// A fixed sampling ratio above this is rejected: it bounds the work of a bin
// (at most 2^20 samples) and keeps grid indices far from overflow.
constexpr int64_t kMaxSamplingRatio = 1024;

// RoIAlign options (spatial_scale: see FeatureLevel).
struct AlignOptions {
  double spatial_scale;
  int64_t sampling_ratio;  // > 0: samples per bin axis; <= 0: adaptive.
  bool aligned;            // Half-pixel offset, no 1-pixel minimum size.
  bool max_mode;           // Maximum of the samples instead of their mean.
  // Backward only: the same bits on every run (CUDA: owner tiles instead of
  // atomics; the CPU backward is deterministic anyway).
  bool deterministic = false;
};

// Feature pyramid levels (multi-scale RoIAlign): at most this many.
constexpr int kMaxLevels = 8;

// One feature map: its data (features, or their gradient), spatial size and
// scale. N, C and the layout are the RoiDims'.
template <typename P>
struct FeatureLevel {
  P* data;
  int64_t height, width;
  double spatial_scale;
};

// torchvision's FPN level assignment (MultiScaleRoIAlign's LevelMapper):
// level = clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale)
// + 1e-6), k_min, k_max) - k_min. With one level every RoI is level 0.
struct LevelMap {
  int32_t num_levels = 1;
  double canonical_scale = 224;
  double canonical_level = 4;
  int64_t k_min = 0, k_max = 0;
};

// RoIAlign forward over one feature map, or over FPN levels with each RoI
// pooled from its level. In max mode, argmax_y/argmax_x (when not null)
// receive the grid indices (iy, ix) of each output's winning sample, or -1
// where no gradient flows (no winner, or a winner outside the map).
template <typename T, typename C>
struct AlignForwardArgs {
  RoiDims dims;          // height/width: unused (per level)
  AlignOptions options;  // spatial_scale: unused (per level)
  LevelMap map;
  FeatureLevel<const T> levels[kMaxLevels];
  const C* rois;
  T* output;
  int32_t* argmax_y;
  int32_t* argmax_x;
};

// RoIAlign feature gradient, one buffer per level. argmax_y/argmax_x are
// used in max mode only.
template <typename T, typename C>
struct AlignBackwardArgs {
  RoiDims dims;
  AlignOptions options;
  LevelMap map;
  FeatureLevel<acc_t<T>> levels[kMaxLevels];
  const T* grad_output;
  const C* rois;
  const int32_t* argmax_y;
  const int32_t* argmax_x;
};

// RoIAlign box gradient: d(sum(output * grad_output)) / d(rois), written
// whole (rois' shape and dtype; the batch-index column gets 0).
template <typename T, typename C>
struct AlignBoxGradArgs {
  RoiDims dims;
  AlignOptions options;
  LevelMap map;
  FeatureLevel<const T> levels[kMaxLevels];
  const C* rois;
  const T* grad_output;
  const int32_t* argmax_y;
  const int32_t* argmax_x;
  C* grad_rois;
};

JAX_ROI_DECLARE_KERNEL(roi_align_forward, AlignForwardArgs)

// Deterministic on the CPU: each gradient element receives its contributions
// in the same order (RoI, then bin, ascending) whatever the number of threads.
// On CUDA, atomics (the order follows the schedule); with
// options.deterministic, owner tiles that follow the CPU's order: the same
// bits as the CPU.
JAX_ROI_DECLARE_KERNEL(roi_align_backward, AlignBackwardArgs)

// Deterministic, and the same bits on every back end: the sums of a RoI run in
// the order of kBoxGradLanes lanes and a fixed tree (roi_align_math.h; a CPU
// task per range of RoIs, a CUDA block per RoI; no atomics).
JAX_ROI_DECLARE_KERNEL(roi_align_box_grad, AlignBoxGradArgs)

// The dimensions and options of one level.
template <typename P>
JAX_ROI_HD RoiDims level_dims(RoiDims d, const FeatureLevel<P>& level) {
  d.height = level.height;
  d.width = level.width;
  return d;
}

template <typename P>
JAX_ROI_HD AlignOptions level_options(AlignOptions o, const FeatureLevel<P>& level) {
  o.spatial_scale = level.spatial_scale;
  return o;
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_KERNELS_H_
