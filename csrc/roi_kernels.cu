// The one CUDA translation unit: every op's kernels (<op>/<op>_cuda.cuh),
// their launchers instantiated for every (storage, coordinate) type pair
// (JAX_ROI_FOR_EACH_TYPE_PAIR). No XLA FFI here: the handlers
// (<op>/<op>_ffi.cc, host compiler) call the launchers declared in
// <op>/<op>_kernels.h.
#include "core/cuda_launch.h"
#include "core/kernel.h"
#include "prroi_pool/prroi_pool_cuda.cuh"
#include "ps_roi/ps_roi_cuda.cuh"
#include "roi_align/roi_align_cuda.cuh"
#include "roi_align_rotated/roi_align_rotated_cuda.cuh"
#include "roi_pool/roi_pool_cuda.cuh"

JAX_ROI_INSTANTIATE_CUDA_KERNEL(roi_pool_forward, PoolForwardArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(roi_pool_backward, PoolBackwardArgs)

JAX_ROI_INSTANTIATE_CUDA_KERNEL(roi_align_forward, AlignForwardArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(roi_align_backward, AlignBackwardArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(roi_align_box_grad, AlignBoxGradArgs)

JAX_ROI_INSTANTIATE_CUDA_KERNEL(ps_roi_pool_forward, PsPoolForwardArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(ps_roi_pool_backward, PsPoolBackwardArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(ps_roi_align_forward, PsAlignForwardArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(ps_roi_align_backward, PsAlignBackwardArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(ps_roi_align_box_grad, PsAlignBoxGradArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(roi_align_rotated_forward, RotatedForwardArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(roi_align_rotated_backward, RotatedBackwardArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(roi_align_rotated_box_grad, RotatedBoxGradArgs)

JAX_ROI_INSTANTIATE_CUDA_KERNEL(prroi_pool_forward, PrRoiForwardArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(prroi_pool_backward, PrRoiBackwardArgs)
JAX_ROI_INSTANTIATE_CUDA_KERNEL(prroi_pool_box_grad, PrRoiBoxGradArgs)

// Every kernel the launchers above can launch registered itself when this
// module was loaded (core/cuda_launch.h).
cudaError_t jax_roi::cuda::preload_kernels() { return preload_registered_kernels(); }
