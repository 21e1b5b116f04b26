// Kernel argument structs, shared by the CPU kernels and the CUDA launchers.
// Plain data: pointers, dimensions and options. No XLA FFI types.
#ifndef JAX_ROI_CSRC_ROI_ARGS_H_
#define JAX_ROI_CSRC_ROI_ARGS_H_

#include <cstdint>

#include "roi_common.h"

namespace jax_roi {

// RoIPool forward: output (and, when argmax != nullptr, the flat spatial
// index h * W + w of each maximum, -1 where nothing was pooled).
template <typename T, typename C>
struct PoolForwardArgs {
  RoiDims dims;
  double spatial_scale;
  const T* features;
  const C* rois;
  T* output;
  int32_t* argmax;  // May be null: inference needs no argmax.
};

// RoIPool backward: grad_features = scatter-add of grad_output through
// argmax. grad_features is written whole (zeros where nothing lands).
template <typename T, typename C>
struct PoolBackwardArgs {
  RoiDims dims;
  const T* grad_output;
  const int32_t* argmax;
  const C* rois;
  acc_t<T>* grad_features;
};

// RoIAlign options.
struct AlignOptions {
  double spatial_scale;
  int64_t sampling_ratio;  // > 0: samples per bin axis; <= 0: adaptive.
  bool aligned;            // Half-pixel offset, no 1-pixel minimum size.
  bool max_mode;           // Maximum of the samples instead of their mean.
};

// RoIAlign forward. In max mode, argmax_y/argmax_x (when not null) receive
// the grid indices (iy, ix) of each output's winning sample, or -1 where no
// gradient flows (no winner, or a winner outside the map).
template <typename T, typename C>
struct AlignForwardArgs {
  RoiDims dims;
  AlignOptions options;
  const T* features;
  const C* rois;
  T* output;
  int32_t* argmax_y;
  int32_t* argmax_x;
};

// RoIAlign feature gradient. argmax_y/argmax_x are used in max mode only.
template <typename T, typename C>
struct AlignBackwardArgs {
  RoiDims dims;
  AlignOptions options;
  const T* grad_output;
  const C* rois;
  const int32_t* argmax_y;
  const int32_t* argmax_x;
  acc_t<T>* grad_features;
};

// RoIAlign box gradient: d(sum(output * grad_output)) / d(rois), written
// whole (rois' shape and dtype; the batch-index column gets 0).
template <typename T, typename C>
struct AlignBoxGradArgs {
  RoiDims dims;
  AlignOptions options;
  const T* features;
  const C* rois;
  const T* grad_output;
  const int32_t* argmax_y;
  const int32_t* argmax_x;
  C* grad_rois;
};

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_ARGS_H_
