// Grid helpers of the CUDA kernels, op-agnostic: grid-stride loops over
// output elements, their launch configuration, the launch itself and the
// preloading of every kernel the module launches. Only core/cuda_compat.h's
// surface is used, so this compiles under nvcc and, with
// JAX_ROI_CUDA_EMULATION, under a host compiler.
//
// Kernels are launched with launch<kernel>(grid, block, shared_bytes,
// stream, args...) or launch_over<kernel>(n, stream, args...): the kernel is
// a template argument so that every kernel some launcher can launch is
// recorded, when the module is loaded, in a list that
// preload_registered_kernels() walks (see there).
#ifndef JAX_ROI_CSRC_CORE_CUDA_LAUNCH_H_
#define JAX_ROI_CSRC_CORE_CUDA_LAUNCH_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/cuda_compat.h"
#include "core/dims.h"

namespace jax_roi {
namespace cuda {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535LL * 64;

#ifdef JAX_ROI_CUDA_EMULATION
// Test knob of the emulation build (set_launch_limits of the emulation
// module): grid-stride launches use at most `blocks` blocks of `threads`
// threads (0: kMaxBlocks, kThreads), so that tests run every grid-stride
// loop over several strides (with the default shape a grid only strides
// past kMaxBlocks * kThreads elements).
struct LaunchLimits {
  std::atomic<int64_t> blocks{0};
  std::atomic<int> threads{0};
};
inline LaunchLimits& launch_limits() {
  static LaunchLimits limits;
  return limits;
}
#endif

// Which forward kernels the ops launch: one block per (RoI, chunk of its
// outputs), the RoI's geometry computed once per block and its samples
// tabulated in shared memory (kPerRoi, the default: 1.1-1.4x faster than the
// other on an H200, benchmarks/results/gpu-2026-11-29), or one thread per
// output element (kPerOutput, the first kernels), or kNhwcVec: the per-RoI
// kernels where each thread of roi_align's NHWC forward computes
// kVecBytes / sizeof(T) consecutive channels of a bin with 16-byte loads and
// stores (other ops and layouts, channel counts that are not a multiple of
// the vector, and unaligned buffers run the per-RoI kernels). All give the
// same bits. Set by the environment variable JAX_ROI_CUDA_FORWARD
// ("per_roi", "per_output" or "nhwc_vec"), read when the module is loaded;
// the emulation module's set_forward_kernels() changes it (tests). kNhwcVec
// stays an option until a GPU run shows it faster.
enum class ForwardKernels : int { kPerOutput = 0, kPerRoi = 1, kNhwcVec = 2 };

inline int forward_kernels_from_name(const char* e) {
  if (e != nullptr && std::strcmp(e, "per_output") == 0) return 0;
  if (e != nullptr && std::strcmp(e, "nhwc_vec") == 0) return 2;
  return 1;
}

inline std::atomic<int>& forward_kernels_ref() {
  static std::atomic<int> v{forward_kernels_from_name(std::getenv("JAX_ROI_CUDA_FORWARD"))};
  return v;
}

inline ForwardKernels forward_kernels() {
  return static_cast<ForwardKernels>(forward_kernels_ref().load(std::memory_order_relaxed));
}

// The atomic backward's kernels (deterministic=False): one thread per output
// element (kPerOutput, the default), or kNhwcVec: roi_align's and
// multi-scale's NHWC average backward with kGradLanes consecutive channels
// per thread and one vector atomic add per neighbour (float4 where CUDA has
// it, sm_90 and newer; four scalar atomic adds elsewhere); other ops, max
// mode, float64, NCHW, channel counts that are not a multiple of 4 and
// unaligned gradients run the per-output kernels. Set by the environment
// variable JAX_ROI_CUDA_BACKWARD ("per_output" or "nhwc_vec"), read when the
// module is loaded; the emulation module's set_backward_kernels() changes it
// (tests). kNhwcVec stays an option until a GPU run shows it faster.
enum class BackwardKernels : int { kPerOutput = 0, kNhwcVec = 2 };

inline int backward_kernels_from_name(const char* e) {
  return e != nullptr && std::strcmp(e, "nhwc_vec") == 0 ? 2 : 0;
}

inline std::atomic<int>& backward_kernels_ref() {
  static std::atomic<int> v{backward_kernels_from_name(std::getenv("JAX_ROI_CUDA_BACKWARD"))};
  return v;
}

inline BackwardKernels backward_kernels() {
  return static_cast<BackwardKernels>(backward_kernels_ref().load(std::memory_order_relaxed));
}

// Adds v[0..4) to p[0..4) atomically, lane by lane: one 16-byte vector atomic
// where the architecture has it (float4, sm_90+; p 16-byte aligned), else
// four scalar ones. Each lane's add is atomic either way.
template <typename A>
__device__ __forceinline__ void atomic_add_4(A* p, const A (&v)[4]) {
#if JAX_ROI_CUDA_ARCH >= 900
  if constexpr (std::is_same_v<A, float>) {
    atomicAdd(reinterpret_cast<float4*>(p), make_float4(v[0], v[1], v[2], v[3]));
  } else {
    for (int l = 0; l < 4; ++l) atomicAdd(p + l, v[l]);
  }
#else
  for (int l = 0; l < 4; ++l) atomicAdd(p + l, v[l]);
#endif
}

// The per-RoI kernels decode a RoI's output offsets with 32-bit arithmetic
// when the RoI has at most this many outputs (C * PH * PW), 64-bit otherwise.
// The emulation lowers it (set_index32_limit) to run both paths on small
// tensors.
inline std::atomic<int64_t>& index32_limit_ref() {
  static std::atomic<int64_t> v{INT32_MAX};
  return v;
}

inline int64_t index32_limit() { return index32_limit_ref().load(std::memory_order_relaxed); }

// Threads per block of a grid-stride launch.
inline int threads_per_block() {
#ifdef JAX_ROI_CUDA_EMULATION
  const int t = launch_limits().threads.load(std::memory_order_relaxed);
  if (t > 0 && t < kThreads) return t;
#endif
  return kThreads;
}

// The most blocks of a grid-stride launch.
inline int64_t max_blocks() {
#ifdef JAX_ROI_CUDA_EMULATION
  const int64_t b = launch_limits().blocks.load(std::memory_order_relaxed);
  if (b > 0 && b < kMaxBlocks) return b;
#endif
  return kMaxBlocks;
}

// Blocks for n elements: one thread each, at most max_blocks() blocks (the
// grid-stride loops cover the rest), at least one.
inline int64_t num_blocks(int64_t n) {
  const int64_t threads = threads_per_block();
  const int64_t blocks = (n + threads - 1) / threads;
  const int64_t most = max_blocks();
  return blocks < 1 ? 1 : (blocks > most ? most : blocks);
}

// Start and step of a grid-stride loop:
//   for (int64_t i = grid_thread_index(); i < n; i += grid_thread_count())
__device__ __forceinline__ int64_t grid_thread_index() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_thread_count() {
  return static_cast<int64_t>(blockDim.x) * gridDim.x;
}

// Splits a flat output index into (k, c, ph, pw). Consecutive threads take
// consecutive output elements: pw fastest in NCHW, c fastest in NHWC, so
// output writes coalesce in both layouts.
__device__ __forceinline__ void split_output_index(const RoiDims& d, int64_t i, int64_t* k,
                                                   int64_t* c, int64_t* ph, int64_t* pw) {
  if (d.layout == Layout::kNCHW) {
    *pw = i % d.pooled_width;
    i /= d.pooled_width;
    *ph = i % d.pooled_height;
    i /= d.pooled_height;
    *c = i % d.channels;
    *k = i / d.channels;
  } else {
    *c = i % d.channels;
    i /= d.channels;
    *pw = i % d.pooled_width;
    i /= d.pooled_width;
    *ph = i % d.pooled_height;
    *k = i / d.pooled_height;
  }
}

// The grid-stride loop of a kernel with one thread per output element:
// f(i, k, c, ph, pw) for this thread's elements i < total.
template <typename F>
__device__ __forceinline__ void for_each_output(const RoiDims& d, int64_t total, F&& f) {
  for (int64_t i = grid_thread_index(); i < total; i += grid_thread_count()) {
    int64_t k, c, ph, pw;
    split_output_index(d, i, &k, &c, &ph, &pw);
    f(i, k, c, ph, pw);
  }
}

// ---------------------------------------------------------------------------
// Kernel preloading
// ---------------------------------------------------------------------------
// CUDA loads modules lazily (CUDA_MODULE_LOADING=LAZY, the default since
// CUDA 12.2): a kernel's code is loaded into a device's context at its first
// launch. If that first launch happens while XLA captures a command buffer
// (a CUDA graph), the load happens inside stream capture, which drivers older
// than CUDA 12.3 reject. preload_kernels() loads every kernel beforehand
// (cudaFuncGetAttributes forces the load); the CUDA handlers call it
// (through cuda::preload_kernels(), core/kernel.h, which the CUDA
// translation unit defines with it) from their FFI instantiate stage
// (core/ffi_target.h), which XLA runs when it builds the executable, before
// anything is captured.
namespace detail {

struct KernelList {
  std::mutex mu;
  std::vector<const void*> kernels;    // guarded by mu
  std::vector<bool> loaded_on_device;  // guarded by mu
  size_t loads = 0;                    // successful loads so far; guarded by mu
};

inline KernelList& kernel_list() {
  static KernelList* list = new KernelList();  // never destroyed: no exit-order issues
  return *list;
}

inline bool register_kernel(const void* kernel) {
  KernelList& l = kernel_list();
  std::lock_guard<std::mutex> lock(l.mu);
  l.kernels.push_back(kernel);
  return true;
}

// Kernel's entry in the list, made by a dynamic initialiser when the module
// is loaded: launch<Kernel> odr-uses `registered`, which instantiates it.
template <auto Kernel>
struct KernelRegistration {
  static const bool registered;
};
template <auto Kernel>
const bool KernelRegistration<Kernel>::registered =
    register_kernel(reinterpret_cast<const void*>(Kernel));

}  // namespace detail

// The number of kernels the module can launch (each (T, C) instantiation
// counts).
inline size_t registered_kernel_count() {
  detail::KernelList& l = detail::kernel_list();
  std::lock_guard<std::mutex> lock(l.mu);
  return l.kernels.size();
}

// How many kernel loads preload_registered_kernels() has made in this
// process (every kernel once per device, when all goes well).
inline size_t kernel_loads() {
  detail::KernelList& l = detail::kernel_list();
  std::lock_guard<std::mutex> lock(l.mu);
  return l.loads;
}

// Loads every registered kernel on the calling thread's current device (the
// one whose context XLA makes current when it builds an executable for it),
// once per device per process (thread-safe; later calls only take a lock).
// Other devices are left alone: no context is created on a GPU the process
// does not use. Returns the first error (e.g. cudaErrorNoKernelImageForDevice:
// no code for this GPU), after clearing it from the runtime's last-error
// state so that no later launch reports it; a device whose loads failed is
// retried by the next call.
inline cudaError_t preload_registered_kernels() {
  detail::KernelList& l = detail::kernel_list();
  std::lock_guard<std::mutex> lock(l.mu);
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess && device >= 0) {
    if (l.loaded_on_device.size() <= static_cast<size_t>(device)) {
      l.loaded_on_device.resize(static_cast<size_t>(device) + 1, false);
    }
    if (l.loaded_on_device[static_cast<size_t>(device)]) return cudaSuccess;
    for (size_t k = 0; k < l.kernels.size() && err == cudaSuccess; ++k) {
      cudaFuncAttributes attributes;
      err = cudaFuncGetAttributes(&attributes, l.kernels[k]);
      if (err == cudaSuccess) ++l.loads;
    }
    if (err == cudaSuccess) l.loaded_on_device[static_cast<size_t>(device)] = true;
  }
  if (err != cudaSuccess) static_cast<void>(cudaGetLastError());
  return err;
}

// ---------------------------------------------------------------------------
// Launches
// ---------------------------------------------------------------------------

// Launches Kernel on `stream` (and registers it for preloading).
template <auto Kernel, typename... A>
cudaError_t launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, A&&... args) {
  static_cast<void>(detail::KernelRegistration<Kernel>::registered);
  return launch_kernel(Kernel, grid, block, shared_bytes, stream, std::forward<A>(args)...);
}

// Launches a grid-stride kernel over n elements on `stream`: nothing at all
// when n is 0 (CUDA rejects a 0-block grid).
template <auto Kernel, typename... A>
cudaError_t launch_over(int64_t n, cudaStream_t stream, A&&... args) {
  if (n <= 0) return cudaSuccess;
  return launch<Kernel>(dim3(static_cast<unsigned int>(num_blocks(n))),
                        dim3(static_cast<unsigned int>(threads_per_block())), 0, stream,
                        std::forward<A>(args)...);
}

// Launches a kernel with one block per item (blockIdx.x strides over the
// items when there are more than max_blocks()), threads_per_block() threads
// and `shared_bytes` of dynamic shared memory; nothing when items is 0.
template <auto Kernel, typename... A>
cudaError_t launch_per_block(int64_t items, size_t shared_bytes, cudaStream_t stream, A&&... args) {
  if (items <= 0) return cudaSuccess;
  const int64_t most = max_blocks();
  return launch<Kernel>(dim3(static_cast<unsigned int>(items < most ? items : most)),
                        dim3(static_cast<unsigned int>(threads_per_block())), shared_bytes, stream,
                        std::forward<A>(args)...);
}

// Launches Kernel(args, total) with one thread per output element of
// args.dims (the RoI ops' forward and backward kernels).
template <auto Kernel, typename Args>
cudaError_t launch_per_output(cudaStream_t stream, const Args& args) {
  const int64_t total = output_count(args.dims);
  return launch_over<Kernel>(total, stream, args, total);
}

// ---------------------------------------------------------------------------
// Per-RoI kernels: a block per (RoI, chunk of kChunkPerThread * blockDim.x of
// its C * PH * PW outputs), blockIdx.x striding over the items:
//   for (item = blockIdx.x; item < num_rois * chunks; item += gridDim.x)
// with k = item / chunks and the chunk's outputs [begin, end) visited by
// for_each_roi_output.
// ---------------------------------------------------------------------------
constexpr int64_t kChunkPerThread = 4;

// Output offset j of a RoI -> (c, ph, pw), in the index type I.
template <typename I>
__device__ __forceinline__ void split_roi_output_as(const RoiDims& d, I j, int64_t* c, int64_t* ph,
                                                    int64_t* pw) {
  const I pooled_w = static_cast<I>(d.pooled_width), pooled_h = static_cast<I>(d.pooled_height);
  if (d.layout == Layout::kNCHW) {
    const I q = j / pooled_w;
    *pw = static_cast<int64_t>(j - q * pooled_w);
    const I c_index = q / pooled_h;
    *ph = static_cast<int64_t>(q - c_index * pooled_h);
    *c = static_cast<int64_t>(c_index);
  } else {
    const I channels = static_cast<I>(d.channels);
    const I q = j / channels;
    *c = static_cast<int64_t>(j - q * channels);
    const I ph_index = q / pooled_w;
    *pw = static_cast<int64_t>(q - ph_index * pooled_w);
    *ph = static_cast<int64_t>(ph_index);
  }
}

// Calls f(j, c, ph, pw) for this thread's outputs j in [begin, end) of a RoI.
template <typename F>
__device__ __forceinline__ void for_each_roi_output(const RoiDims& d, int64_t begin, int64_t end,
                                                    bool narrow, F&& f) {
  int64_t c, ph, pw;
  if (narrow) {
    for (uint32_t j = static_cast<uint32_t>(begin) + threadIdx.x; j < static_cast<uint32_t>(end);
         j += blockDim.x) {
      split_roi_output_as<uint32_t>(d, j, &c, &ph, &pw);
      f(static_cast<int64_t>(j), c, ph, pw);
    }
  } else {
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
      split_roi_output_as<int64_t>(d, j, &c, &ph, &pw);
      f(j, c, ph, pw);
    }
  }
}

// Launches Kernel(args, chunks, chunk, index32_limit) per RoI and chunk of
// its `per_roi` work items (default: its C * PH * PW outputs).
template <auto Kernel, typename Args>
cudaError_t launch_per_roi(cudaStream_t stream, const Args& args, int64_t per_roi = -1) {
  const RoiDims& d = args.dims;
  if (per_roi < 0) per_roi = d.channels * d.pooled_height * d.pooled_width;
  if (d.num_rois <= 0 || per_roi <= 0) return cudaSuccess;
  const int64_t chunk = kChunkPerThread * threads_per_block();
  const int64_t chunks = (per_roi + chunk - 1) / chunk;
  return launch_per_block<Kernel>(d.num_rois * chunks, 0, stream, args, chunks, chunk,
                                  index32_limit());
}

// ---------------------------------------------------------------------------
// Owner tiles (the deterministic backward kernels): the feature gradient is
// cut into tiles of (map, image, band of rows, band of columns, chunk of
// channels), a block per tile (blockIdx.x striding over the tiles). A block
// alone writes its tile; each thread owns `vec` consecutive channels of it
// and adds with plain adds, so each element receives its terms in the order
// its thread visits them, whatever the schedule. The maps (FPN levels) are
// those of the op; their sizes only matter here.
// ---------------------------------------------------------------------------
constexpr int kMaxOwnerMaps = 8;
constexpr int kMaxOwnerVec = 4;  // channels per thread, at most

struct OwnerTile {
  int32_t map;
  int64_t image, row_begin, row_end, col_begin, col_end, c_begin;
};

struct OwnerGrid {
  int32_t num_maps = 0;
  int64_t batch = 0, channels = 0;
  int64_t vec = 1;    // channels per thread
  int64_t chunk = 1;  // channels per tile: blockDim.x * vec
  int64_t chunks = 0, band_rows = 1, band_cols = 1;
  int64_t height[kMaxOwnerMaps] = {}, width[kMaxOwnerMaps] = {};
  int64_t first[kMaxOwnerMaps + 1] = {};  // tiles before map m

  JAX_ROI_HD int64_t tiles() const { return first[num_maps]; }
};

// Test and tuning knobs, each 0 for the planner's choice: rows and columns
// per band (the emulation's set_owner_bands; the bits must not change) and
// channels per thread (JAX_ROI_CUDA_OWNER_VEC, read when the module loads).
struct OwnerKnobs {
  std::atomic<int64_t> rows{0}, cols{0};
  std::atomic<int64_t> vec{[] {
    const char* e = std::getenv("JAX_ROI_CUDA_OWNER_VEC");
    const int64_t v = e != nullptr ? std::atoll(e) : 0;
    return v >= 1 && v <= kMaxOwnerVec ? v : 0;
  }()};
};
inline OwnerKnobs& owner_knobs() {
  static OwnerKnobs knobs;
  return knobs;
}

// Enough tiles to fill a large GPU several times over: bands of one row,
// split into column bands while the tiles are fewer than kOwnerTargetTiles,
// or of several rows when they are many more.
constexpr int64_t kOwnerTargetTiles = 4096;

// The tiles of maps of the given sizes and their block size (threads);
// default_vec: channels per thread unless JAX_ROI_CUDA_OWNER_VEC says
// otherwise (the ops pick theirs from measurements on an H200:
// benchmarks/results/gpu-2026-11-30).
inline OwnerGrid owner_grid(int32_t num_maps, const int64_t* heights, const int64_t* widths,
                            int64_t batch, int64_t channels, int64_t default_vec, int* threads) {
  OwnerKnobs& knobs = owner_knobs();
  OwnerGrid g;
  g.num_maps = num_maps;
  g.batch = batch;
  g.channels = channels;
  const int64_t vec_knob = knobs.vec.load(std::memory_order_relaxed);
  g.vec = vec_knob > 0 ? vec_knob : default_vec;
  // Threads: enough for the channels (whole warps), at most threads_per_block().
  const int64_t lanes = (channels + g.vec - 1) / g.vec;
  int64_t t = (lanes + 31) / 32 * 32;
  if (t > threads_per_block()) t = threads_per_block();
  if (t < 1) t = 1;
  *threads = static_cast<int>(t);
  g.chunk = t * g.vec;
  g.chunks = (channels + g.chunk - 1) / g.chunk;
  int64_t rows = 0, max_width = 1;
  for (int32_t m = 0; m < num_maps; ++m) {
    rows += heights[m];
    if (widths[m] > max_width) max_width = widths[m];
  }
  const int64_t row_tiles = batch * rows * g.chunks;  // with one-row, full-width bands
  g.band_rows = 1;
  g.band_cols = max_width;
  if (row_tiles > 0 && row_tiles < kOwnerTargetTiles) {
    const int64_t splits = (kOwnerTargetTiles + row_tiles - 1) / row_tiles;
    g.band_cols = (max_width + splits - 1) / splits;
    if (g.band_cols < 8) g.band_cols = 8;
  }
  while (g.band_rows < 64 && row_tiles / (2 * g.band_rows) >= 4 * kOwnerTargetTiles) {
    g.band_rows *= 2;
  }
  const int64_t fixed_rows = knobs.rows.load(std::memory_order_relaxed);
  const int64_t fixed_cols = knobs.cols.load(std::memory_order_relaxed);
  if (fixed_rows > 0) g.band_rows = fixed_rows;
  if (fixed_cols > 0) g.band_cols = fixed_cols;
  for (int32_t m = 0; m < num_maps; ++m) {
    g.height[m] = heights[m];
    g.width[m] = widths[m];
    const int64_t bands = ((heights[m] + g.band_rows - 1) / g.band_rows) *
                          ((widths[m] + g.band_cols - 1) / g.band_cols);
    g.first[m + 1] = g.first[m] + batch * bands * g.chunks;
  }
  return g;
}

__device__ __forceinline__ OwnerTile owner_tile(const OwnerGrid& g, int64_t item) {
  OwnerTile t;
  int32_t m = 0;
  while (m + 1 < g.num_maps && item >= g.first[m + 1]) ++m;
  int64_t i = item - g.first[m];
  t.map = m;
  const int64_t chunk = i % g.chunks;
  i /= g.chunks;
  const int64_t col_bands = (g.width[m] + g.band_cols - 1) / g.band_cols;
  const int64_t col_band = i % col_bands;
  i /= col_bands;
  const int64_t row_bands = (g.height[m] + g.band_rows - 1) / g.band_rows;
  const int64_t row_band = i % row_bands;
  t.image = i / row_bands;
  t.row_begin = row_band * g.band_rows;
  t.row_end = t.row_begin + g.band_rows < g.height[m] ? t.row_begin + g.band_rows : g.height[m];
  t.col_begin = col_band * g.band_cols;
  t.col_end = t.col_begin + g.band_cols < g.width[m] ? t.col_begin + g.band_cols : g.width[m];
  t.c_begin = chunk * g.chunk;
  return t;
}

// Bits of the bins (rows ph, or columns pw) that may put terms in a tile:
// bit p for bin p < 63; bit 63 for any bin from 63 on, which are always
// "may" (checked term by term).
JAX_ROI_HD bool owner_may(uint64_t mask, int64_t p) {
  return p >= 63 ? mask != 0 : ((mask >> p) & 1u) != 0;
}

JAX_ROI_HD void owner_mark(uint64_t* mask, int64_t p) { *mask |= uint64_t{1} << (p < 63 ? p : 63); }

// Launches Kernel(args, grid) with a block per owner tile.
template <auto Kernel, typename Args>
cudaError_t launch_owner_tiles(cudaStream_t stream, const Args& args, const OwnerGrid& grid,
                               int threads) {
  const int64_t items = grid.tiles();
  if (items <= 0) return cudaSuccess;
  const int64_t most = max_blocks();
  return launch<Kernel>(dim3(static_cast<unsigned int>(items < most ? items : most)),
                        dim3(static_cast<unsigned int>(threads)), 0, stream, args, grid);
}

// Zeroes n elements at p on `stream` (nothing when n is 0).
template <typename P>
cudaError_t zero_async(P* p, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return memset_async(p, 0, sizeof(P) * static_cast<size_t>(n), stream);
}

}  // namespace cuda
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_CUDA_LAUNCH_H_
