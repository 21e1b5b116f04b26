// RoIPool CUDA launchers (defined in roi_pool_cuda.cuh, instantiated in
// roi_kernels.cu). They know nothing of XLA FFI: plain kernel arguments and
// a stream in, a CUDA status out. Every launch is asynchronous on `stream`;
// nothing synchronises with the host and nothing allocates memory.
#ifndef JAX_ROI_CSRC_ROI_POOL_ROI_POOL_LAUNCH_H_
#define JAX_ROI_CSRC_ROI_POOL_ROI_POOL_LAUNCH_H_

#include "core/cuda_compat.h"
#include "roi_pool/roi_pool_args.h"

namespace jax_roi {
namespace cuda {

template <typename T, typename C>
cudaError_t roi_pool_forward(cudaStream_t stream, const PoolForwardArgs<T, C>& args);

template <typename T, typename C>
cudaError_t roi_pool_backward(cudaStream_t stream, const PoolBackwardArgs<T, C>& args);

}  // namespace cuda
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_ROI_POOL_ROI_POOL_LAUNCH_H_
