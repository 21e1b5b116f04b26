// CUDA launchers of the RoI kernels. They know nothing of XLA FFI: plain
// kernel arguments and a stream in, a CUDA status out. Every launch is
// asynchronous on `stream`; nothing synchronises with the host and nothing
// allocates memory.
#ifndef JAX_ROI_CSRC_ROI_KERNELS_H_
#define JAX_ROI_CSRC_ROI_KERNELS_H_

#include <cuda_runtime_api.h>

#include "roi_args.h"

namespace jax_roi {
namespace cuda {

template <typename T, typename C>
cudaError_t roi_pool_forward(cudaStream_t stream, const PoolForwardArgs<T, C>& args);

template <typename T, typename C>
cudaError_t roi_pool_backward(cudaStream_t stream, const PoolBackwardArgs<T, C>& args);

template <typename T, typename C>
cudaError_t roi_align_forward(cudaStream_t stream, const AlignForwardArgs<T, C>& args);

template <typename T, typename C>
cudaError_t roi_align_backward(cudaStream_t stream, const AlignBackwardArgs<T, C>& args);

template <typename T, typename C>
cudaError_t roi_align_box_grad(cudaStream_t stream, const AlignBoxGradArgs<T, C>& args);

}  // namespace cuda
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_KERNELS_H_
