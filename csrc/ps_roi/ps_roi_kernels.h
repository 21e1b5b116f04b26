// The position-sensitive RoI ops' kernels (ps_roi_cpu.cc, ps_roi_cuda.cuh):
// ps_roi_pool and ps_roi_align (torchvision.ops, R-FCN). Their arguments are
// plain data (pointers, dimensions and options; no XLA FFI types).
//
// dims describe the OUTPUT: dims.channels is the number of output channels
// C_out; the features have C_out * PH * PW channels (ps_input_dims), and bin
// (ph, pw) of output channel c reads input channel (c * PH + ph) * PW + pw
// (ps_input_channel), in either layout.
#ifndef JAX_ROI_CSRC_PS_ROI_PS_ROI_KERNELS_H_
#define JAX_ROI_CSRC_PS_ROI_PS_ROI_KERNELS_H_

#include <cstdint>

#include "core/dims.h"
#include "core/kernel.h"
#include "core/types.h"

namespace jax_roi {

// The features' dimensions: the output's, with C_out * PH * PW channels.
JAX_ROI_HD RoiDims ps_input_dims(RoiDims d) {
  d.channels = d.channels * d.pooled_height * d.pooled_width;
  return d;
}

// The input channel that bin (ph, pw) of output channel c reads.
JAX_ROI_HD int64_t ps_input_channel(const RoiDims& d, int64_t c, int64_t ph, int64_t pw) {
  return (c * d.pooled_height + ph) * d.pooled_width + pw;
}

// ps_roi_pool forward: the mean of each bin.
template <typename T, typename C>
struct PsPoolForwardArgs {
  RoiDims dims;  // output dims (channels = C_out)
  double spatial_scale;
  const T* features;
  const C* rois;
  T* output;
};

// ps_roi_pool feature gradient (the true derivative of the forward),
// written whole in the accumulation type.
template <typename T, typename C>
struct PsPoolBackwardArgs {
  RoiDims dims;
  double spatial_scale;
  const T* grad_output;
  const C* rois;
  acc_t<T>* grad_features;
};

// ps_roi_align (always aligned: -0.5 pixel offset, no minimum size).
template <typename T, typename C>
struct PsAlignForwardArgs {
  RoiDims dims;
  double spatial_scale;
  int64_t sampling_ratio;  // > 0: samples per bin axis; <= 0: adaptive.
  const T* features;
  const C* rois;
  T* output;
};

template <typename T, typename C>
struct PsAlignBackwardArgs {
  RoiDims dims;
  double spatial_scale;
  int64_t sampling_ratio;
  const T* grad_output;
  const C* rois;
  acc_t<T>* grad_features;
};

// d(sum(output * grad_output)) / d(rois), written whole (rois' shape and
// dtype; the batch-index column gets 0).
template <typename T, typename C>
struct PsAlignBoxGradArgs {
  RoiDims dims;
  double spatial_scale;
  int64_t sampling_ratio;
  const T* features;
  const C* rois;
  const T* grad_output;
  C* grad_rois;
};

JAX_ROI_DECLARE_KERNEL(ps_roi_pool_forward, PsPoolForwardArgs)
// Deterministic on the CPU: each gradient element receives its contributions
// in RoI order whatever the number of threads.
JAX_ROI_DECLARE_KERNEL(ps_roi_pool_backward, PsPoolBackwardArgs)
JAX_ROI_DECLARE_KERNEL(ps_roi_align_forward, PsAlignForwardArgs)
// Deterministic on the CPU (RoI, then sample order per element).
JAX_ROI_DECLARE_KERNEL(ps_roi_align_backward, PsAlignBackwardArgs)
// Deterministic: one CPU task per block of RoIs, one CUDA thread per RoI.
JAX_ROI_DECLARE_KERNEL(ps_roi_align_box_grad, PsAlignBoxGradArgs)

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_PS_ROI_PS_ROI_KERNELS_H_
