// Rotated RoIAlign's kernels (roi_align_rotated_cpu.cc,
// roi_align_rotated_cuda.cuh): their arguments, plain data (pointers,
// dimensions and options; no XLA FFI types), and their declarations on every
// back end (core/kernel.h).
//
// The RoIs are oriented boxes: (K, 6) rows [batch_index, cx, cy, w, h, angle]
// or (N, R, 5) boxes [cx, cy, w, h, angle] per image. RoiDims describes them
// as for the other ops (rois_per_image > 0: batched), with one more value per
// row (rotated_row_size).
#ifndef JAX_ROI_CSRC_ROI_ALIGN_ROTATED_ROI_ALIGN_ROTATED_KERNELS_H_
#define JAX_ROI_CSRC_ROI_ALIGN_ROTATED_ROI_ALIGN_ROTATED_KERNELS_H_

#include <cstdint>

#include "core/dims.h"
#include "core/kernel.h"
#include "core/types.h"

namespace jax_roi {

// Rotated RoIAlign options.
struct RotatedOptions {
  double spatial_scale;
  int64_t sampling_ratio;  // > 0: samples per bin axis; <= 0: adaptive.
  bool aligned;            // Half-pixel offset of the centre, no 1-pixel minimum size.
  bool degrees;            // Angles in degrees (detectron2), else radians (mmcv).
  bool clockwise;          // The angle turns clockwise: it is negated (mmcv's option).
};

template <typename T, typename C>
struct RotatedForwardArgs {
  RoiDims dims;
  RotatedOptions options;
  const T* features;
  const C* rois;
  T* output;
};

// Feature gradient (accumulation dtype), written whole.
template <typename T, typename C>
struct RotatedBackwardArgs {
  RoiDims dims;
  RotatedOptions options;
  const T* grad_output;
  const C* rois;
  acc_t<T>* grad_features;
};

// Box gradient: d(sum(output * grad_output)) / d(rois), written whole (rois'
// shape and dtype; the batch-index column gets 0).
template <typename T, typename C>
struct RotatedBoxGradArgs {
  RoiDims dims;
  RotatedOptions options;
  const T* features;
  const C* rois;
  const T* grad_output;
  C* grad_rois;
};

JAX_ROI_DECLARE_KERNEL(roi_align_rotated_forward, RotatedForwardArgs)

// Deterministic on the CPU: every gradient element receives its
// contributions in the order (RoI, bin, sample, neighbour) whatever the
// number of threads (one task per block of channels). CUDA: atomics.
JAX_ROI_DECLARE_KERNEL(roi_align_rotated_backward, RotatedBackwardArgs)

// Deterministic: the sums of a RoI run in a fixed order (one CPU task per
// block of RoIs, one CUDA thread per RoI; no atomics).
JAX_ROI_DECLARE_KERNEL(roi_align_rotated_box_grad, RotatedBoxGradArgs)

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_ALIGN_ROTATED_ROI_ALIGN_ROTATED_KERNELS_H_
