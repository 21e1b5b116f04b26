// Toy CUDA kernels exercising the emulation runtime (core/cuda_emulation.h):
// grid-stride loops, atomics, a racy accumulation, a shared-memory block
// reduction with and without barriers, warp shuffles, dynamic shared memory,
// and kernels that misuse barriers / warp intrinsics. The same source
// compiles with nvcc (`nvcc -std=c++17 -x cu -c toy_kernels.cu.h`).
//
// The host wrappers (declared in toy_api.h) return the launch's cudaError_t
// and take device pointers (host pointers under the emulation). Everything
// lives in namespace TOY_NAMESPACE (default `toy`), so that builds for
// several JAX_ROI_CUDA_ARCH values link into one test module.
#ifndef JAX_ROI_TESTS_CUDA_EMULATION_TOY_KERNELS_CU_H_
#define JAX_ROI_TESTS_CUDA_EMULATION_TOY_KERNELS_CU_H_

#include <cstdint>

#include "core/cuda_compat.h"

#ifndef TOY_NAMESPACE
#define TOY_NAMESPACE toy
#endif
#include "toy_api.h"

namespace TOY_NAMESPACE {

constexpr int kReduceThreads = 256;

// out[i] = a * x[i] + b over a grid-stride loop (grid may be smaller than n).
__global__ void axpb_kernel(const float* x, float* out, int64_t n, float a, float b) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    out[i] = a * x[i] + b;
  }
}

// Every thread of a 3-D grid of 3-D blocks records who it is, once.
// visits[g] counts the runs of global thread g; who[g] = packed indices.
__global__ void identify_kernel(int* visits, int64_t* who) {
  const int64_t block =
      blockIdx.x +
      static_cast<int64_t>(gridDim.x) * (blockIdx.y + static_cast<int64_t>(gridDim.y) * blockIdx.z);
  const int64_t tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int64_t g = block * (blockDim.x * blockDim.y * blockDim.z) + tid;
  atomicAdd(visits + g, 1);
  who[g] = ((((static_cast<int64_t>(blockIdx.z) * 1024 + blockIdx.y) * 1024 + blockIdx.x) * 1024 +
             threadIdx.z) *
                1024 +
            threadIdx.y) *
               1024 +
           threadIdx.x;
}

// RACY on purpose: many threads do a non-atomic read-modify-write of one
// element. On a GPU updates get lost; in the emulation the result depends on
// the (seeded) execution order through float rounding.
__global__ void racy_sum_kernel(const float* x, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    *out += x[i];
  }
}

// Integer / double atomics with exactly representable results.
__global__ void atomics_kernel(const int* x, int64_t n, int* hist, int bins, unsigned* count,
                               int* max_value, unsigned long long* cas_count, double* dsum,
                               unsigned* wrap, int* cas_winner) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int v = x[i];
    atomicAdd(hist + ((v % bins) + bins) % bins, 1);
    atomicAdd(count, 1u);
    atomicMax(max_value, v);
    unsigned long long old = *cas_count, assumed;
    do {  // increment through a CAS loop
      assumed = old;
      old = atomicCAS(cas_count, assumed, assumed + 1ull);
    } while (old != assumed);
    atomicAdd(dsum, static_cast<double>(v) * 0.5);
    atomicInc(wrap, 9u);                             // counts modulo 10
    atomicCAS(cas_winner, -1, static_cast<int>(i));  // first thread to arrive wins
  }
}

// One partial sum per block: shared-memory tree reduction. With sync=false
// the barriers are skipped (a data race: wrong results).
__global__ void block_sum_kernel(const int* x, int64_t n, int* out, bool sync) {
  __shared__ int buf[kReduceThreads];
  const unsigned t = threadIdx.x;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + t;
  buf[t] = i < n ? x[i] : 0;
  if (sync) __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) buf[t] += buf[t + s];
    if (sync) __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// __syncthreads_count / _and / _or: out[3 * block + k].
__global__ void barrier_predicates_kernel(const int* x, int* out) {
  const int v = x[blockIdx.x * blockDim.x + threadIdx.x];
  const int count = __syncthreads_count(v > 0);
  const int all = __syncthreads_and(v > 0);
  const int any = __syncthreads_or(v > 0);
  if (threadIdx.x == 0) {
    out[3 * blockIdx.x] = count;
    out[3 * blockIdx.x + 1] = all;
    out[3 * blockIdx.x + 2] = any;
  }
}

// Warp reduction: shuffles down, then one atomic per warp.
__global__ void warp_sum_kernel(const int* x, int64_t n, int* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  int v = i < n ? x[i] : 0;
#if JAX_ROI_CUDA_ARCH >= 800
  v = __reduce_add_sync(0xffffffffu, v);
#else
  for (int offset = warpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
#endif
  if ((threadIdx.x & (warpSize - 1)) == 0) atomicAdd(out, v);
}

// A bug: a full-warp reduction run by half of the warp (the other lanes
// exit), so lanes 0-15 read lanes 16-31, which never provide a value.
// (Unsigned: the undefined values must not overflow a signed sum.)
__global__ void warp_sum_divergent_kernel(const unsigned* x, unsigned* out) {
  unsigned v = x[blockIdx.x * blockDim.x + threadIdx.x];
  if ((threadIdx.x & 31) >= 16) return;
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  if ((threadIdx.x & 31) == 0) out[(blockIdx.x * blockDim.x + threadIdx.x) / 32] = v;
}

// Several warp intrinsics per thread: out[6 * g + k] for global thread g.
__global__ void warp_ops_kernel(const int* x, int* out) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x & 31;
  const int v = x[g];
  int sum = v;  // butterfly all-reduce: every lane gets the warp sum
  for (int m = 16; m > 0; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
  const int bcast = __shfl_sync(0xffffffffu, v, 3, 8);  // lane 3 of each group of 8
  int scan = v;                                         // inclusive prefix sum within groups of 16
  for (int d = 1; d < 16; d *= 2) {
    const int up = __shfl_up_sync(0xffffffffu, scan, d, 16);
    if (static_cast<int>(lane & 15) >= d) scan += up;
  }
  const unsigned ballot = __ballot_sync(0xffffffffu, v > 0);
  const int all = __all_sync(0xffffffffu, v > 0);
  const int any = __any_sync(0xffffffffu, v > 100);
  const double dv = __shfl_down_sync(0xffffffffu, static_cast<double>(v) + 0.25, 1);
  __syncwarp();
  out[6 * g] = sum;
  out[6 * g + 1] = bcast;
  out[6 * g + 2] = scan;
  out[6 * g + 3] = static_cast<int>(ballot);
  out[6 * g + 4] = all + 2 * any;
  out[6 * g + 5] = static_cast<int>(dv * 4.0);
}

// Reverses each block's slice through dynamic shared memory.
__global__ void reverse_kernel(const float* x, float* y) {
  JAX_ROI_DYNAMIC_SHARED(float, s);
  const unsigned t = threadIdx.x;
  const unsigned base = blockIdx.x * blockDim.x;
  s[t] = x[base + t];
  __syncthreads();
  y[base + t] = s[blockDim.x - 1 - t];
}

// Misuse: threads past `active` return before the barrier.
__global__ void early_exit_barrier_kernel(int* out, unsigned active) {
  if (threadIdx.x >= active) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Misuse: lane 0 shuffles with lane 1 while lane 1 waits at a block barrier.
__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x == 0) {
    out[0] = __shfl_sync(0x3u, 1, 1);
  } else {
    __syncthreads();
  }
}

// Misuse: the mask omits the calling lane.
__global__ void bad_mask_kernel(int* out) {
  out[threadIdx.x] = __shfl_sync(0x1u << ((threadIdx.x + 1) & 31), 1, 0);
}

// Cost measurement: `rounds` barriers per thread (0: none).
__global__ void spin_kernel(float* out, int64_t n, int rounds) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    out[i] = static_cast<float>(i) * 0.5f;
  }
  for (int r = 0; r < rounds; ++r) __syncthreads();
}

// ---- host wrappers ---------------------------------------------------------
using jax_roi::cuda::launch_kernel;

int arch() { return JAX_ROI_CUDA_ARCH; }

cudaError_t axpb(cudaStream_t s, dim3 grid, dim3 block, size_t smem, const float* x, float* out,
                 int64_t n, float a, float b) {
  return launch_kernel(axpb_kernel, grid, block, smem, s, x, out, n, a, b);
}
cudaError_t identify(cudaStream_t s, dim3 grid, dim3 block, int* visits, int64_t* who) {
  return launch_kernel(identify_kernel, grid, block, 0, s, visits, who);
}
cudaError_t racy_sum(cudaStream_t s, const float* x, float* out, int64_t n) {
  return launch_kernel(racy_sum_kernel, dim3(4), dim3(64), 0, s, x, out, n);
}
cudaError_t atomics(cudaStream_t s, const int* x, int64_t n, int* hist, int bins, unsigned* count,
                    int* max_value, unsigned long long* cas_count, double* dsum, unsigned* wrap,
                    int* cas_winner) {
  return launch_kernel(atomics_kernel, dim3(3), dim3(96), 0, s, x, n, hist, bins, count, max_value,
                       cas_count, dsum, wrap, cas_winner);
}
cudaError_t block_sum(cudaStream_t s, const int* x, int64_t n, int* out, bool sync) {
  const unsigned blocks = static_cast<unsigned>((n + kReduceThreads - 1) / kReduceThreads);
  return launch_kernel(block_sum_kernel, dim3(blocks), dim3(kReduceThreads), 0, s, x, n, out, sync);
}
cudaError_t barrier_predicates(cudaStream_t s, const int* x, int* out, unsigned blocks,
                               unsigned threads) {
  return launch_kernel(barrier_predicates_kernel, dim3(blocks), dim3(threads), 0, s, x, out);
}
cudaError_t warp_sum(cudaStream_t s, const int* x, int64_t n, int* out, unsigned threads) {
  const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
  return launch_kernel(warp_sum_kernel, dim3(blocks), dim3(threads), 0, s, x, n, out);
}
cudaError_t warp_sum_divergent(cudaStream_t s, const unsigned* x, unsigned* out, unsigned blocks) {
  return launch_kernel(warp_sum_divergent_kernel, dim3(blocks), dim3(64), 0, s, x, out);
}
cudaError_t warp_ops(cudaStream_t s, const int* x, int* out, unsigned blocks, unsigned threads) {
  return launch_kernel(warp_ops_kernel, dim3(blocks), dim3(threads), 0, s, x, out);
}
cudaError_t reverse(cudaStream_t s, const float* x, float* y, unsigned blocks, unsigned threads,
                    size_t smem) {
  return launch_kernel(reverse_kernel, dim3(blocks), dim3(threads), smem, s, x, y);
}
cudaError_t early_exit_barrier(cudaStream_t s, int* out, unsigned threads, unsigned active) {
  return launch_kernel(early_exit_barrier_kernel, dim3(1), dim3(threads), 0, s, out, active);
}
cudaError_t deadlock(cudaStream_t s, int* out) {
  return launch_kernel(deadlock_kernel, dim3(2), dim3(32), 0, s, out);
}
cudaError_t bad_mask(cudaStream_t s, int* out) {
  return launch_kernel(bad_mask_kernel, dim3(1), dim3(32), 0, s, out);
}
cudaError_t spin(cudaStream_t s, float* out, int64_t n, unsigned blocks, unsigned threads,
                 int rounds) {
  return launch_kernel(spin_kernel, dim3(blocks), dim3(threads), 0, s, out, n, rounds);
}

}  // namespace TOY_NAMESPACE

#endif  // JAX_ROI_TESTS_CUDA_EMULATION_TOY_KERNELS_CU_H_
