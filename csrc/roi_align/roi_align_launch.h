// RoIAlign CUDA launchers (defined in roi_align_cuda.cuh, instantiated in
// roi_kernels.cu). They know nothing of XLA FFI: plain kernel arguments and
// a stream in, a CUDA status out. Every launch is asynchronous on `stream`;
// nothing synchronises with the host and nothing allocates memory.
#ifndef JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_LAUNCH_H_
#define JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_LAUNCH_H_

#include "core/cuda_compat.h"
#include "roi_align/roi_align_args.h"

namespace jax_roi {
namespace cuda {

template <typename T, typename C>
cudaError_t roi_align_forward(cudaStream_t stream, const AlignForwardArgs<T, C>& args);

template <typename T, typename C>
cudaError_t roi_align_backward(cudaStream_t stream, const AlignBackwardArgs<T, C>& args);

template <typename T, typename C>
cudaError_t roi_align_box_grad(cudaStream_t stream, const AlignBoxGradArgs<T, C>& args);

}  // namespace cuda
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_ALIGN_ROI_ALIGN_LAUNCH_H_
