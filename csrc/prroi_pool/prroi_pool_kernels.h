// Precise RoI Pooling's kernels (prroi_pool_cpu.cc, prroi_pool_cuda.cuh):
// their arguments, plain data (pointers, dimensions and options; no XLA FFI
// types), and their declarations on every back end (core/kernel.h).
//
// The RoIs are axis-aligned boxes, (K, 5) rows [batch_index, x1, y1, x2, y2]
// or (N, R, 4) boxes per image, as roi_align's (RoiDims).
#ifndef JAX_ROI_CSRC_PRROI_POOL_PRROI_POOL_KERNELS_H_
#define JAX_ROI_CSRC_PRROI_POOL_PRROI_POOL_KERNELS_H_

#include <cstdint>

#include "core/dims.h"
#include "core/kernel.h"
#include "core/types.h"

namespace jax_roi {

template <typename T, typename C>
struct PrRoiForwardArgs {
  RoiDims dims;
  double spatial_scale;
  const T* features;
  const C* rois;
  T* output;
};

// Feature gradient (accumulation dtype), written whole.
template <typename T, typename C>
struct PrRoiBackwardArgs {
  RoiDims dims;
  double spatial_scale;
  const T* grad_output;
  const C* rois;
  acc_t<T>* grad_features;
};

// Box gradient: d(sum(output * grad_output)) / d(rois), written whole (rois'
// shape and dtype; the batch-index column gets 0).
template <typename T, typename C>
struct PrRoiBoxGradArgs {
  RoiDims dims;
  double spatial_scale;
  const T* features;
  const C* rois;
  const T* grad_output;
  C* grad_rois;
};

// The same bits on every back end: each output sums its pixels in one order
// (prroi_pool_math.h).
JAX_ROI_DECLARE_KERNEL(prroi_pool_forward, PrRoiForwardArgs)

// Deterministic on the CPU: every gradient element receives its
// contributions in the order (RoI, bin, pixel) whatever the number of
// threads (one task per block of channels). CUDA: atomics.
JAX_ROI_DECLARE_KERNEL(prroi_pool_backward, PrRoiBackwardArgs)

// Deterministic, and the same bits on every back end: the sums of a RoI run
// in kPrRoiGradLanes lanes and a fixed tree (prroi_pool_math.h; a CPU task
// per range of RoIs, a CUDA block per RoI; no atomics).
JAX_ROI_DECLARE_KERNEL(prroi_pool_box_grad, PrRoiBoxGradArgs)

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_PRROI_POOL_PRROI_POOL_KERNELS_H_
