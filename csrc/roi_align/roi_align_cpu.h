// RoIAlign CPU kernels (one feature map, or FPN levels): plain arguments and
// a TaskRunner, no XLA FFI.
#ifndef JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_CPU_H_
#define JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_CPU_H_

#include "core/task_runner.h"
#include "roi_align/roi_align_args.h"

namespace jax_roi {
namespace cpu {

template <typename T, typename C>
void roi_align_forward(const AlignForwardArgs<T, C>& args, TaskRunner& runner);

// Deterministic: each gradient element receives its contributions in the
// same order (RoI, then bin, ascending) whatever the number of threads.
template <typename T, typename C>
void roi_align_backward(const AlignBackwardArgs<T, C>& args, TaskRunner& runner);

// Deterministic: one task per block of RoIs, sums in a fixed order.
template <typename T, typename C>
void roi_align_box_grad(const AlignBoxGradArgs<T, C>& args, TaskRunner& runner);

}  // namespace cpu
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_CPU_H_
