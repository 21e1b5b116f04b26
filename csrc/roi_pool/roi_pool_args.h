// RoIPool's kernel arguments, shared by its CPU kernels and CUDA launchers.
// Plain data: pointers, dimensions and options. No XLA FFI types.
#ifndef JAX_ROI_CSRC_ROI_POOL_ROI_POOL_ARGS_H_
#define JAX_ROI_CSRC_ROI_POOL_ROI_POOL_ARGS_H_

#include <cstdint>

#include "core/dims.h"
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
template <typename T, typename C>
struct PoolBackwardArgs {
  RoiDims dims;
  const T* grad_output;
  const int32_t* argmax;
  const C* rois;
  acc_t<T>* grad_features;
};

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_POOL_ROI_POOL_ARGS_H_
