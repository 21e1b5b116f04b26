// RoIPool's kernels (roi_pool_cpu.cc, roi_pool_cuda.cuh): their arguments,
// plain data (pointers, dimensions and options; no XLA FFI types), and their
// declarations on every back end (core/kernel.h).
#ifndef JAX_ROI_CSRC_ROI_POOL_ROI_POOL_KERNELS_H_
#define JAX_ROI_CSRC_ROI_POOL_ROI_POOL_KERNELS_H_

#include <cstdint>

#include "core/dims.h"
#include "core/kernel.h"
#include "core/types.h"

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
// argmax == nullptr: each output's winner is found again from `features`
// with the forward's rule (the same winners; no argmax is saved or read).
template <typename T, typename C>
struct PoolBackwardArgs {
  RoiDims dims;
  const T* grad_output;
  const int32_t* argmax;  // or null, with features
  const C* rois;
  acc_t<T>* grad_features;
  // deterministic: the same bits on every run (CUDA: owner tiles, which need
  // the RoIs' bins, hence spatial_scale; the CPU backward is deterministic
  // anyway, in the order RoI, then bin).
  bool deterministic = false;
  double spatial_scale = 0;     // the deterministic or the argmax-free backward's
  const T* features = nullptr;  // the argmax-free backward's
};

JAX_ROI_DECLARE_KERNEL(roi_pool_forward, PoolForwardArgs)

// Deterministic on the CPU: each gradient element receives its contributions
// in the same order (RoI, then bin, ascending) whatever the number of threads.
JAX_ROI_DECLARE_KERNEL(roi_pool_backward, PoolBackwardArgs)

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_POOL_ROI_POOL_KERNELS_H_
