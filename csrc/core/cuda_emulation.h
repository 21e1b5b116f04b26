// A minimal serial stand-in for the host emulation of CUDA that
// core/cuda_compat.h includes when JAX_ROI_CUDA_EMULATION is defined (see the
// contract there). It runs a grid one thread at a time, in order, on the
// calling thread: enough for kernels that use grid-stride loops and global
// atomics only (no shared memory, no __syncthreads across threads, no warp
// intrinsics), which is all jax_roi's kernels do. To be replaced by the real
// emulation runtime.
#ifndef JAX_ROI_CSRC_CORE_CUDA_EMULATION_H_
#define JAX_ROI_CSRC_CORE_CUDA_EMULATION_H_

#include <cstddef>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
};

struct uint3 {
  unsigned int x, y, z;
};

inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// One thread at a time: a plain add is atomic.
inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}

inline double atomicAdd(double* p, double v) {
  const double old = *p;
  *p = old + v;
  return old;
}

// Threads run one after the other, so no thread can wait for another here.
inline void __syncthreads() {}

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };

inline const char* cudaGetErrorString(cudaError_t err) {
  return err == cudaSuccess ? "no error" : "invalid argument";
}

namespace jax_roi {
namespace cuda {

template <typename... P, typename... A>
cudaError_t launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t /*shared_bytes*/,
                          cudaStream_t /*stream*/, A&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 ||
      block.z == 0) {
    return cudaErrorInvalidValue;  // As CUDA rejects an empty launch.
  }
  gridDim = grid;
  blockDim = block;
  for (unsigned int bz = 0; bz < grid.z; ++bz) {
    for (unsigned int by = 0; by < grid.y; ++by) {
      for (unsigned int bx = 0; bx < grid.x; ++bx) {
        blockIdx = uint3{bx, by, bz};
        for (unsigned int tz = 0; tz < block.z; ++tz) {
          for (unsigned int ty = 0; ty < block.y; ++ty) {
            for (unsigned int tx = 0; tx < block.x; ++tx) {
              threadIdx = uint3{tx, ty, tz};
              kernel(args...);
            }
          }
        }
      }
    }
  }
  return cudaSuccess;
}

inline cudaError_t memset_async(void* p, int value, size_t bytes, cudaStream_t /*stream*/) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_CUDA_EMULATION_H_
