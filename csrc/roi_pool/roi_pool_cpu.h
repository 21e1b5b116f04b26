// RoIPool CPU kernels: plain arguments and a TaskRunner, no XLA FFI.
#ifndef JAX_ROI_CSRC_ROI_POOL_ROI_POOL_CPU_H_
#define JAX_ROI_CSRC_ROI_POOL_ROI_POOL_CPU_H_

#include "core/task_runner.h"
#include "roi_pool/roi_pool_args.h"

namespace jax_roi {
namespace cpu {

template <typename T, typename C>
void roi_pool_forward(const PoolForwardArgs<T, C>& args, TaskRunner& runner);

// Deterministic: each gradient element receives its contributions in the
// same order (RoI, then bin, ascending) whatever the number of threads.
template <typename T, typename C>
void roi_pool_backward(const PoolBackwardArgs<T, C>& args, TaskRunner& runner);

}  // namespace cpu
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_POOL_ROI_POOL_CPU_H_
