// The one CUDA translation unit: every op's kernels (<op>/<op>_cuda.cuh),
// with their launchers instantiated for every (storage, coordinate) type
// pair. No XLA FFI here: the handlers (<op>/<op>_ffi.cc, host compiler) call
// the launchers through <op>/<op>_launch.h.
#include "core/types.h"
#include "roi_align/roi_align_cuda.cuh"
#include "roi_pool/roi_pool_cuda.cuh"

JAX_ROI_FOR_EACH_TYPE_PAIR(JAX_ROI_INSTANTIATE_ROI_POOL_CUDA)
JAX_ROI_FOR_EACH_TYPE_PAIR(JAX_ROI_INSTANTIATE_ROI_ALIGN_CUDA)
