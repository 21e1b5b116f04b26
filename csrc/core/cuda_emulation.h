// Host emulation of the CUDA execution model, for running jax_roi's CUDA
// kernels on the CPU (CI has no GPU). Included by core/cuda_compat.h when
// JAX_ROI_CUDA_EMULATION is defined and the compiler is not nvcc; header-only,
// C++17, Linux (g++ / clang).
//
// ---------------------------------------------------------------------------
// Execution model
// ---------------------------------------------------------------------------
// * A launch runs synchronously on the calling OS thread, ONE BLOCK AT A
//   TIME, blocks in a seeded pseudo-random order (a bijective permutation of
//   the block index space, so huge grids cost no memory).
// * Every CUDA thread of a block runs as a cooperative user-space context (a
//   "fiber": own stack, switched by a 14-instruction assembly routine on
//   x86-64, by swapcontext elsewhere). Threads start in a seeded shuffled
//   order. A fiber that finishes its CUDA thread immediately starts the next
//   unstarted one, so a kernel without barriers or warp intrinsics costs two
//   context switches per BLOCK and runs its threads back to back (the fast
//   path needs no declaration from the kernel author: it is what happens when
//   no thread ever waits).
// * __syncthreads() and friends suspend the calling thread until every thread
//   of the block has arrived; released threads resume in a new shuffled
//   order. A barrier reached while some threads of the block have exited, a
//   thread exiting while others wait at a barrier, and a block in which no
//   thread can progress (e.g. half the block at __syncthreads, half at a
//   shuffle) are reported as a launch failure (cudaErrorLaunchFailure, with
//   emulation::last_error_message() describing it); the rest of the launch
//   is not run. Exited threads are NOT counted as arrived (CUDA: barriers in
//   divergent code are undefined behaviour).
// * Warp intrinsics (__shfl*_sync, __ballot_sync, __all/__any_sync,
//   __syncwarp, sm_80 __reduce_*_sync) are synchronisation points of the
//   lanes named in the mask: each lane suspends until every non-exited lane
//   of the mask has arrived at a warp intrinsic with the same mask, then all
//   exchange values at once (PTX shfl.sync semantics, width included).
//   Reading a lane that does not take part (exited, outside the mask, past
//   the end of the block) gives a seeded pseudo-random value (undefined in
//   CUDA) and is counted in Stats::undefined_shuffle_reads. A lane whose own
//   bit is missing from the mask, mismatched intrinsics within one exchange
//   and invalid widths are launch failures. Lanes are numbered by linear
//   thread index (x fastest), as on the GPU. __activemask() returns only the
//   calling lane's bit (allowed under independent thread scheduling: the
//   emulation never claims convergence it cannot guarantee).
// * __shared__ is `static thread_local`: since the blocks of a launch run one
//   after another on one OS thread and the threads of a block are fibers on
//   that same OS thread, such a variable is shared by the threads of the
//   block being run and re-used by the next block - which is exactly CUDA's
//   per-block shared memory. Concurrent launches from several OS threads
//   (XLA runs independent ops in parallel) each get their own copy. The
//   constraints: fibers never migrate between OS threads, and a launch never
//   interleaves two blocks (both hold here). Static shared memory is not
//   re-initialised between blocks (a kernel reading it before writing sees
//   the previous block's values, where a GPU shows garbage) and does not
//   count against the dynamic-shared-memory limit.
// * Dynamic shared memory: declare it with JAX_ROI_DYNAMIC_SHARED(type, name)
//   (`extern __shared__` cannot be emulated: `extern static` is ill-formed).
//   Its nvcc definition, for core/cuda_compat.h, is
//     #define JAX_ROI_DYNAMIC_SHARED(type, name) <backslash>
//       extern __shared__ __align__(16) unsigned char jax_roi_dynamic_smem_[]; <backslash>
//       type* name = reinterpret_cast<type*>(jax_roi_dynamic_smem_)
//   (one declaration per kernel; the same extern name in every kernel, typed
//   unsigned char, is what nvcc accepts).
//   Under emulation it is an exact-size, 16-byte aligned heap buffer
//   (AddressSanitizer catches overruns), filled with seeded garbage before
//   every block (shared memory is uninitialised on a GPU).
// * Atomics are plain read-modify-writes: exact, because nothing else runs
//   concurrently with a block. Integer atomics wrap like the hardware's.
// * Memory is host memory: kernels receive host pointers; memset_async is
//   std::memset; streams are ignored (launches are synchronous).
// * Races: the shuffled block and thread orders (vary the seed) expose
//   order-dependent results - floating-point accumulation order, last writer
//   wins, reading another thread's output without a barrier. A lost update
//   of a non-atomic read-modify-write between two sync points cannot show
//   (threads only switch at sync points): use compute-sanitizer racecheck on
//   a GPU for that.
//
// ---------------------------------------------------------------------------
// Launch validation (checked before anything runs, as cudaLaunchKernel does)
// ---------------------------------------------------------------------------
//   grid or block with a zero extent, block.x/y > 1024, block.z > 64,
//   block.x*y*z > 1024, grid.x > 2^31-1, grid.y/z > 65535
//       -> cudaErrorInvalidConfiguration
//   dynamic shared memory > emulation::max_dynamic_shared_bytes()
//   (48 KiB unless raised, as by cudaFuncSetAttribute) -> cudaErrorInvalidValue
//   a launch from inside a kernel -> cudaErrorNotSupported
// The error is also what cudaGetLastError() returns next (per OS thread).
//
// ---------------------------------------------------------------------------
// Architecture
// ---------------------------------------------------------------------------
// JAX_ROI_CUDA_ARCH stands for __CUDA_ARCH__ in kernel code
// (`#if JAX_ROI_CUDA_ARCH >= 800`). Under emulation it comes from the build
// (-DJAX_ROI_CUDA_ARCH=750, 800, 900, ...; default 900), so a test harness
// compiles the emulated kernels once per supported architecture value, each
// build in its own module (the value must be the same in every translation
// unit linked together). __CUDA_ARCH__ and __CUDACC__ stay undefined: host
// code paths (e.g. the memcpy bit casts of core/types.h) are used.
// Intrinsics that need a newer architecture (__reduce_*_sync: 800) exist
// only when JAX_ROI_CUDA_ARCH is high enough, so a missing #if guard fails
// to compile in the older build, as it would with nvcc. The nvcc side, for
// core/cuda_compat.h:
//     #if defined(__CUDA_ARCH__)
//     #define JAX_ROI_CUDA_ARCH __CUDA_ARCH__
//     #else
//     #define JAX_ROI_CUDA_ARCH 0  // host pass: kernel bodies are not code-generated
//     #endif
//
// ---------------------------------------------------------------------------
// Knobs (namespace jax_roi::cuda::emulation; global, thread-safe)
// ---------------------------------------------------------------------------
//   set_seed(uint64_t) / seed()        block and thread orders, garbage fill
//   set_shuffle(bool)                  false: natural order (debugging)
//   stats() / reset_stats()            counters, see struct Stats
//   set_max_dynamic_shared_bytes(n)    the dynamic shared memory limit
//   last_error_message()               why the last failed launch failed
//   set_verbose(bool)                  print kernel failures to stderr (default on)
//   set_stack_bytes(n)                 fiber stack size for new fibers (256 KiB;
//                                      env JAX_ROI_CUDA_EMULATION_STACK_KB)
// Build options: -DJAX_ROI_CUDA_EMULATION_UCONTEXT forces the portable
// swapcontext back end (one syscall per switch: ~10x slower at barriers).
// AddressSanitizer: fiber switches are annotated
// (__sanitizer_start/finish_switch_fiber) and recycled stacks unpoisoned.
#ifndef JAX_ROI_CSRC_CORE_CUDA_EMULATION_H_
#define JAX_ROI_CSRC_CORE_CUDA_EMULATION_H_

#if defined(__CUDACC__)
#error "core/cuda_emulation.h is the host emulation of CUDA: do not compile it with nvcc"
#endif

#ifndef JAX_ROI_CUDA_EMULATION
#define JAX_ROI_CUDA_EMULATION 1
#endif

#ifndef JAX_ROI_CUDA_ARCH
#define JAX_ROI_CUDA_ARCH 900
#endif
#if JAX_ROI_CUDA_ARCH < 700
#error "the emulation models sm_70+ (independent thread scheduling, *_sync intrinsics)"
#endif

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define JAX_ROI_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define JAX_ROI_EMU_ASAN 1
#endif
#endif
#if defined(JAX_ROI_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) && defined(__linux__) && !defined(JAX_ROI_CUDA_EMULATION_UCONTEXT)
#define JAX_ROI_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

// ---------------------------------------------------------------------------
// Qualifiers and built-in types
// ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is a g++/clang keyword already. __noinline__ is deliberately
// not defined: libstdc++ spells __attribute__((__noinline__)).

#define JAX_ROI_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::jax_roi::cuda::emulation::dynamic_shared_memory())

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}  // NOLINT: implicit, as CUDA's
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

// Per OS thread; the runtime rewrites threadIdx whenever it switches to
// another CUDA thread (fiber), and the others once per block / launch.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------
// Runtime API subset
// ---------------------------------------------------------------------------
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
};
typedef enum cudaError cudaError_t;
typedef struct CUstream_st* cudaStream_t;

inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidDeviceFunction:
      return "cudaErrorInvalidDeviceFunction";
    case cudaErrorLaunchOutOfResources:
      return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported:
      return "cudaErrorNotSupported";
  }
  return "cudaErrorUnknown";
}

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidDeviceFunction:
      return "invalid device function";
    case cudaErrorLaunchOutOfResources:
      return "too many resources requested for launch";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
    case cudaErrorNotSupported:
      return "operation not supported";
  }
  return "unrecognized error code";
}

namespace jax_roi {
namespace cuda {
namespace emulation {

struct Stats {
  uint64_t launches = 0;                 // launches that ran (validation passed)
  uint64_t failed_launches = 0;          // rejected by validation or failed while running
  uint64_t blocks = 0;                   // blocks run
  uint64_t threads = 0;                  // CUDA threads started
  uint64_t barriers = 0;                 // block-wide barriers completed
  uint64_t warp_syncs = 0;               // warp intrinsic exchanges completed
  uint64_t suspensions = 0;              // times a CUDA thread waited (fiber switched away)
  uint64_t fibers_created = 0;           // fiber stacks allocated (pooled per OS thread)
  uint64_t undefined_shuffle_reads = 0;  // warp reads of a non-participating lane
  uint64_t memsets = 0;
  uint64_t func_attribute_queries = 0;  // cudaFuncGetAttributes calls (kernel preloading)
};

namespace detail {

inline std::atomic<uint64_t>& seed_ref() {
  static std::atomic<uint64_t> s{0};
  return s;
}
inline std::atomic<bool>& shuffle_ref() {
  static std::atomic<bool> s{true};
  return s;
}
inline std::atomic<bool>& verbose_ref() {
  static std::atomic<bool> s{true};
  return s;
}
inline std::atomic<size_t>& max_dyn_smem_ref() {
  static std::atomic<size_t> s{48 * 1024};
  return s;
}
inline size_t default_stack_bytes() {
  const char* env = std::getenv("JAX_ROI_CUDA_EMULATION_STACK_KB");
  const long kb = env ? std::atol(env) : 0;
  return kb > 0 ? static_cast<size_t>(kb) * 1024 : size_t{256} * 1024;
}
inline std::atomic<size_t>& stack_bytes_ref() {
  static std::atomic<size_t> s{default_stack_bytes()};
  return s;
}

constexpr int kNumStats = 11;  // the fields of Stats
struct AtomicStats {
  std::atomic<uint64_t> v[kNumStats];
  AtomicStats() {
    for (auto& x : v) x.store(0);
  }
};
inline AtomicStats& global_stats() {
  static AtomicStats s;
  return s;
}
inline void add_stats(const Stats& s) {
  const uint64_t add[kNumStats] = {s.launches,
                                   s.failed_launches,
                                   s.blocks,
                                   s.threads,
                                   s.barriers,
                                   s.warp_syncs,
                                   s.suspensions,
                                   s.fibers_created,
                                   s.undefined_shuffle_reads,
                                   s.memsets,
                                   s.func_attribute_queries};
  AtomicStats& g = global_stats();
  for (int i = 0; i < kNumStats; ++i) {
    if (add[i]) g.v[i].fetch_add(add[i], std::memory_order_relaxed);
  }
}

inline std::mutex& message_mutex() {
  static std::mutex m;
  return m;
}
inline std::string& message_ref() {
  static std::string s;
  return s;
}
inline void set_message(const std::string& m) {
  std::lock_guard<std::mutex> lock(message_mutex());
  message_ref() = m;
}

inline cudaError_t& last_error_ref() {
  static thread_local cudaError_t e = cudaSuccess;
  return e;
}

// ---- random numbers and permutations --------------------------------------
inline uint64_t mix64(uint64_t z) {  // splitmix64 finaliser
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t s = 0) : state(s) {}
  uint64_t next() {
    state += 0x9e3779b97f4a7c15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint32_t below(uint32_t n) {  // uniform enough for shuffling (n <= 2^10 here)
    return static_cast<uint32_t>(((next() >> 32) * n) >> 32);
  }
};

// A seeded bijection of [0, n) (4-round Feistel network on the next even
// power of two, cycle-walking back into range); O(1) memory for any grid.
struct Permutation {
  uint64_t n;
  uint64_t key;
  bool identity;
  int half_bits = 1;
  uint64_t half_mask = 1;
  Permutation(uint64_t n_, uint64_t key_, bool shuffle) : n(n_), key(key_), identity(!shuffle) {
    int bits = 2;
    while (bits < 64 && (uint64_t{1} << bits) < n) bits += 2;
    half_bits = bits / 2;
    half_mask = (uint64_t{1} << half_bits) - 1;
  }
  uint64_t round(uint64_t i) const {
    uint64_t l = i >> half_bits, r = i & half_mask;
    for (uint64_t k = 0; k < 4; ++k) {
      const uint64_t f = mix64(r ^ (key + k * 0x632be59bd9b4e019ull)) & half_mask;
      const uint64_t t = l ^ f;
      l = r;
      r = t;
    }
    return (l << half_bits) | r;
  }
  uint64_t operator()(uint64_t i) const {
    if (identity) return i;
    do {
      i = round(i);
    } while (i >= n);
    return i;
  }
};

// ---- fibers ----------------------------------------------------------------
#if defined(JAX_ROI_EMU_ASM_SWITCH)
// jax_roi_emu_switch_v1(void** save_sp, void* load_sp): saves the callee-saved
// registers, MXCSR and the x87 control word on the current stack, stores the
// stack pointer in *save_sp, loads load_sp and restores the same from there.
// A COMDAT section: one copy per linked module whichever TUs include this.
asm(".pushsection .text.jax_roi_emu_switch_v1,\"axG\",@progbits,jax_roi_emu_switch_v1,comdat\n"
    ".globl jax_roi_emu_switch_v1\n"
    ".hidden jax_roi_emu_switch_v1\n"
    ".type jax_roi_emu_switch_v1,@function\n"
    ".p2align 4\n"
    "jax_roi_emu_switch_v1:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $16, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $16, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size jax_roi_emu_switch_v1,.-jax_roi_emu_switch_v1\n"
    ".popsection\n");
}  // namespace detail
}  // namespace emulation
}  // namespace cuda
}  // namespace jax_roi
extern "C" void jax_roi_emu_switch_v1(void** save_sp, void* load_sp)
    __attribute__((visibility("hidden")));
namespace jax_roi {
namespace cuda {
namespace emulation {
namespace detail {
#endif

struct Fiber {
#if defined(JAX_ROI_EMU_ASM_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  void* map = nullptr;  // mapping: guard page + stack
  size_t map_bytes = 0;
  char* stack_lo = nullptr;  // usable stack [stack_lo, stack_lo + stack_bytes)
  size_t stack_bytes = 0;
  bool idle = true;
};

struct Block;

struct ThreadRuntime {
  std::vector<Fiber*> fibers;  // all fibers of this OS thread
  std::vector<Fiber*> idle;
  Fiber* current = nullptr;  // fiber running now (null: the OS thread's own stack)
#if defined(JAX_ROI_EMU_ASM_SWITCH)
  void* main_sp = nullptr;
#else
  ucontext_t main_ctx;
#endif
  const void* main_stack_bottom = nullptr;  // for ASan's switch annotations
  size_t main_stack_size = 0;
  Block* block = nullptr;  // block being run (non-null only inside a launch)
  unsigned char* dyn_smem = nullptr;
  ~ThreadRuntime() {
    for (Fiber* f : fibers) {
#if defined(JAX_ROI_EMU_ASAN)
      ASAN_UNPOISON_MEMORY_REGION(f->stack_lo, f->stack_bytes);
#endif
      munmap(f->map, f->map_bytes);
      delete f;
    }
  }
};

inline ThreadRuntime& rt() {
  static thread_local ThreadRuntime r;
  return r;
}

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "jax_roi CUDA emulation: %s\n", what);
  std::abort();
}

inline void fiber_main();

inline void init_fiber_context(Fiber* f) {
#if defined(JAX_ROI_EMU_ASM_SWITCH)
  // Initial frame, read by the switch routine: [mxcsr, fpcw, pad][r15 r14 r13
  // r12 rbx rbp][return address = fiber_main][0: fiber_main's return address]
  // with the return-address slot 16-byte aligned, as after a call.
  uintptr_t top = reinterpret_cast<uintptr_t>(f->stack_lo + f->stack_bytes) & ~uintptr_t{15};
  uint64_t* a = reinterpret_cast<uint64_t*>(top - 16);
  a[0] = reinterpret_cast<uint64_t>(&fiber_main);
  a[1] = 0;
  uint64_t* frame = a - 8;
  for (int i = 0; i < 8; ++i) frame[i] = 0;
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  std::memcpy(reinterpret_cast<char*>(frame), &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(frame) + 4, &fpcw, 2);
  f->sp = frame;
#else
  if (getcontext(&f->ctx) != 0) die("getcontext failed");
  f->ctx.uc_stack.ss_sp = f->stack_lo;
  f->ctx.uc_stack.ss_size = f->stack_bytes;
  f->ctx.uc_link = nullptr;
  makecontext(&f->ctx, &fiber_main, 0);
#endif
}

inline Fiber* new_fiber(Stats* st) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t bytes = stack_bytes_ref().load(std::memory_order_relaxed);
  bytes = (bytes + page - 1) / page * page;
  Fiber* f = new Fiber;
  f->map_bytes = bytes + page;
  f->map = mmap(nullptr, f->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (f->map == MAP_FAILED) die("cannot map a fiber stack");
  mprotect(f->map, page, PROT_NONE);  // guard page: a stack overflow faults
  f->stack_lo = static_cast<char*>(f->map) + page;
  f->stack_bytes = bytes;
  init_fiber_context(f);
  rt().fibers.push_back(f);
  ++st->fibers_created;
  return f;
}

// Switches between the OS thread's stack ("main") and a fiber; main <-> fiber
// only (star topology).
inline void switch_main_to_fiber(ThreadRuntime& r, Fiber* f) {
  r.current = f;
#if defined(JAX_ROI_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack_lo, f->stack_bytes);
#endif
#if defined(JAX_ROI_EMU_ASM_SWITCH)
  jax_roi_emu_switch_v1(&r.main_sp, f->sp);
#else
  swapcontext(&r.main_ctx, &f->ctx);
#endif
#if defined(JAX_ROI_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  r.current = nullptr;
}

// dying: the fiber will not be resumed (its stack is about to be recycled).
inline void switch_fiber_to_main(ThreadRuntime& r, Fiber* f, bool dying) {
#if defined(JAX_ROI_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(dying ? nullptr : &fake, r.main_stack_bottom, r.main_stack_size);
#else
  (void)dying;
#endif
#if defined(JAX_ROI_EMU_ASM_SWITCH)
  jax_roi_emu_switch_v1(&f->sp, r.main_sp);
#else
  swapcontext(&f->ctx, &r.main_ctx);
#endif
#if defined(JAX_ROI_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

// ---- blocks ----------------------------------------------------------------
enum ThreadState : uint8_t { kUnstarted, kRunning, kReady, kAtBarrier, kAtWarp, kExited };

enum WarpOp : uint8_t {
  kShflIdx,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAll,
  kAny,
  kSyncWarp,
  kRedAddU,
  kRedAddI,
  kRedMinU,
  kRedMinI,
  kRedMaxU,
  kRedMaxI,
  kRedAnd,
  kRedOr,
  kRedXor,
};

inline const char* warp_op_name(uint8_t op) {
  static const char* const names[] = {"__shfl_sync",       "__shfl_up_sync",    "__shfl_down_sync",
                                      "__shfl_xor_sync",   "__ballot_sync",     "__all_sync",
                                      "__any_sync",        "__syncwarp",        "__reduce_add_sync",
                                      "__reduce_add_sync", "__reduce_min_sync", "__reduce_min_sync",
                                      "__reduce_max_sync", "__reduce_max_sync", "__reduce_and_sync",
                                      "__reduce_or_sync",  "__reduce_xor_sync"};
  return op < sizeof(names) / sizeof(names[0]) ? names[op] : "?";
}

struct Slot {  // per-thread data of a pending synchronisation
  Fiber* fiber = nullptr;
  uint64_t value = 0;
  uint64_t result = 0;
  unsigned mask = 0;
  int param = 0;
  int width = 0;
  uint8_t op = 0;
};

struct Block {
  // launch constants
  void (*invoke)(void*) = nullptr;
  void* params = nullptr;
  dim3 dim;
  unsigned n = 0;  // threads per block
  unsigned warps = 0;
  // per block
  uint3 idx{0, 0, 0};
  std::vector<uint8_t> state;
  std::vector<Slot> slot;
  std::vector<unsigned> order;  // start order (linear thread ids)
  std::vector<unsigned> ready;  // released threads waiting to resume: [ready_head, end)
  size_t ready_head = 0;
  bool shuffle = true;
  std::vector<unsigned> warp_waiting;  // per warp: lanes at a warp intrinsic
  unsigned next_start = 0;
  unsigned exited = 0;
  unsigned running = 0;
  unsigned bar_arrived = 0;
  unsigned bar_count = 0;  // threads with a non-zero predicate (__syncthreads_count/and/or)
  bool failed = false;
  std::string error;
  Rng rng;
  Stats st;
};

inline std::string thread_name(const Block& b, unsigned t) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "thread (%u,%u,%u) of block (%u,%u,%u)", t % b.dim.x,
                (t / b.dim.x) % b.dim.y, t / (b.dim.x * b.dim.y), b.idx.x, b.idx.y, b.idx.z);
  return buf;
}

inline void set_thread_builtins(const Block& b, unsigned t) {
  const unsigned bx = b.dim.x, by = b.dim.y;
  threadIdx = b.dim.x == b.n ? uint3{t, 0, 0} : uint3{t % bx, (t / bx) % by, t / (bx * by)};
}

inline void mark_failed(Block& b, const std::string& why) {
  if (!b.failed) {
    b.failed = true;
    b.error = why;
  }
}

inline Block& current_block(const char* what) {
  Block* b = rt().block;
  if (b == nullptr || rt().current == nullptr) {
    std::string m = std::string(what) + " called outside a kernel";
    die(m.c_str());
  }
  return *b;
}

// Suspends the running CUDA thread; returns when the scheduler resumes it
// (never, once the launch has failed).
inline void suspend(Block& b) {
  ThreadRuntime& r = rt();
  Fiber* f = r.current;
  b.slot[b.running].fiber = f;
  ++b.st.suspensions;
  switch_fiber_to_main(r, f, b.failed);
}

// Fails the launch from inside a CUDA thread: never returns (the fiber is
// abandoned and its stack recycled).
[[noreturn]] inline void fail_here(Block& b, const std::string& why) {
  mark_failed(b, thread_name(b, b.running) + ": " + why);
  ThreadRuntime& r = rt();
  switch_fiber_to_main(r, r.current, true);
  die("a failed CUDA thread was resumed");
}

inline void release(Block& b, unsigned t) {
  b.state[t] = kReady;
  b.ready.push_back(t);
}

// Completes the exchange of warp `w` among the lanes of `mask` if every
// non-exited lane of the mask has arrived; returns whether it did.
inline bool try_complete_warp(Block& b, unsigned w, unsigned mask) {
  const unsigned base = w * 32;
  unsigned present = 0;  // lanes taking part
  int first = -1;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    const unsigned t = base + lane;
    if (t >= b.n || b.state[t] == kExited) continue;
    if (b.state[t] != kAtWarp || b.slot[t].mask != mask) return false;
    present |= 1u << lane;
    if (first < 0) first = static_cast<int>(t);
  }
  if (first < 0) return false;
  const Slot& s0 = b.slot[first];
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!(present >> lane & 1u)) continue;
    const Slot& s = b.slot[base + lane];
    if (s.op != s0.op || s.width != s0.width) {
      mark_failed(b, thread_name(b, base + lane) + ": " + warp_op_name(s.op) + " met " +
                         warp_op_name(s0.op) + " (or another width) in one warp exchange");
      return true;
    }
  }
  const uint8_t op = s0.op;
  if (op <= kShflXor) {
    const unsigned seg = static_cast<unsigned>(32 - s0.width) & 31u;  // PTX c[12:8]
    const unsigned clamp = op == kShflUp ? 0u : 31u;                  // PTX c[4:0]
    for (unsigned lane = 0; lane < 32; ++lane) {
      if (!(present >> lane & 1u)) continue;
      Slot& s = b.slot[base + lane];
      const int bval = s.param & 31;
      const int max_lane = static_cast<int>((lane & seg) | (clamp & ~seg));
      const int min_lane = static_cast<int>(lane & seg);
      int j = 0;
      bool in_range = false;
      switch (op) {
        case kShflUp:
          j = static_cast<int>(lane) - bval;
          in_range = j >= max_lane;
          break;
        case kShflDown:
          j = static_cast<int>(lane) + bval;
          in_range = j <= max_lane;
          break;
        case kShflXor:
          j = static_cast<int>(lane) ^ bval;
          in_range = j <= max_lane;
          break;
        default:
          j = min_lane | (bval & ~static_cast<int>(seg));
          in_range = j <= max_lane;
          break;
      }
      if (!in_range) {
        s.result = s.value;
      } else if (present >> j & 1u) {
        s.result = b.slot[base + static_cast<unsigned>(j)].value;
      } else {
        s.result = b.rng.next();  // undefined in CUDA
        ++b.st.undefined_shuffle_reads;
      }
    }
  } else {
    uint64_t acc = 0;
    switch (op) {
      case kRedMinU:
        acc = 0xffffffffu;
        break;
      case kRedMinI:
        acc = 0x7fffffffu;
        break;
      case kRedMaxI:
        acc = 0x80000000u;
        break;
      case kRedAnd:
        acc = 0xffffffffu;
        break;
      default:
        break;
    }
    unsigned ballot = 0;
    for (unsigned lane = 0; lane < 32; ++lane) {
      if (!(present >> lane & 1u)) continue;
      const uint32_t v = static_cast<uint32_t>(b.slot[base + lane].value);
      const int32_t iv = static_cast<int32_t>(v), ia = static_cast<int32_t>(acc);
      if (v != 0) ballot |= 1u << lane;
      switch (op) {
        case kRedAddU:
        case kRedAddI:
          acc = static_cast<uint32_t>(acc + v);
          break;
        case kRedMinU:
          acc = v < acc ? v : acc;
          break;
        case kRedMaxU:
          acc = v > acc ? v : acc;
          break;
        case kRedMinI:
          acc = static_cast<uint32_t>(iv < ia ? iv : ia);
          break;
        case kRedMaxI:
          acc = static_cast<uint32_t>(iv > ia ? iv : ia);
          break;
        case kRedAnd:
          acc &= v;
          break;
        case kRedOr:
          acc |= v;
          break;
        case kRedXor:
          acc ^= v;
          break;
        default:
          break;
      }
    }
    uint64_t result = acc;
    if (op == kBallot) result = ballot;
    if (op == kAll) result = ballot == present;
    if (op == kAny) result = ballot != 0;
    for (unsigned lane = 0; lane < 32; ++lane) {
      if (present >> lane & 1u) b.slot[base + lane].result = result;
    }
  }
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (present >> lane & 1u) {
      --b.warp_waiting[w];
      release(b, base + lane);
    }
  }
  ++b.st.warp_syncs;
  return true;
}

inline uint64_t warp_exchange(uint8_t op, unsigned mask, uint64_t value, int param, int width) {
  Block& b = current_block(warp_op_name(op));
  const unsigned t = b.running, lane = t % 32, w = t / 32;
  if (!(mask >> lane & 1u)) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), "%s with mask 0x%08x, which lacks the calling lane %u",
                  warp_op_name(op), mask, lane);
    fail_here(b, buf);
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail_here(b, std::string(warp_op_name(op)) + " with width " + std::to_string(width) +
                     " (must be a power of two <= 32)");
  }
  Slot& s = b.slot[t];
  s.op = op;
  s.mask = mask;
  s.value = value;
  s.param = param;
  s.width = width;
  b.state[t] = kAtWarp;
  ++b.warp_waiting[w];
  // Two lanes naming each other while waiting at different exchanges can
  // never both proceed.
  for (unsigned l = 0; l < 32; ++l) {
    const unsigned u = w * 32 + l;
    if (l == lane || !(mask >> l & 1u) || u >= b.n || b.state[u] != kAtWarp) continue;
    if (b.slot[u].mask != mask && (b.slot[u].mask >> lane & 1u)) {
      char buf[160];
      std::snprintf(buf, sizeof(buf),
                    "%s with mask 0x%08x while lane %u waits at %s with mask 0x%08x (deadlock)",
                    warp_op_name(op), mask, l, warp_op_name(b.slot[u].op), b.slot[u].mask);
      fail_here(b, buf);
    }
  }
  try_complete_warp(b, w, mask);
  suspend(b);
  return b.slot[t].result;
}

enum BarrierOp : int { kBarSync, kBarCount, kBarAnd, kBarOr };

inline int block_barrier(int op, int predicate) {
  static const char* const names[] = {"__syncthreads()", "__syncthreads_count()",
                                      "__syncthreads_and()", "__syncthreads_or()"};
  Block& b = current_block(names[op]);
  const unsigned t = b.running;
  if (b.exited > 0) {
    fail_here(b, std::string(names[op]) + " reached after " + std::to_string(b.exited) +
                     " thread(s) of the block exited (barrier in divergent code)");
  }
  b.state[t] = kAtBarrier;
  ++b.bar_arrived;
  if (predicate) ++b.bar_count;
  if (b.bar_arrived == b.n) {
    const unsigned count = b.bar_count;
    uint64_t result = count;
    if (op == kBarAnd) result = count == b.n;
    if (op == kBarOr) result = count != 0;
    for (unsigned u = 0; u < b.n; ++u) {
      b.slot[u].result = result;
      release(b, u);
    }
    b.bar_arrived = 0;
    b.bar_count = 0;
    ++b.st.barriers;
  }
  suspend(b);
  return static_cast<int>(b.slot[t].result);
}

inline void thread_exited(Block& b, unsigned t) {
  b.state[t] = kExited;
  ++b.exited;
  if (b.bar_arrived > 0) {
    mark_failed(b, thread_name(b, t) + " exited while " + std::to_string(b.bar_arrived) +
                       " thread(s) of the block wait at __syncthreads() (barrier in "
                       "divergent code)");
    return;
  }
  const unsigned w = t / 32, lane = t % 32;
  if (b.warp_waiting[w] == 0) return;
  // The exited lane may have been the last one an exchange waited for.
  for (unsigned l = 0; l < 32 && b.warp_waiting[w] > 0 && !b.failed; ++l) {
    const unsigned u = w * 32 + l;
    if (u < b.n && b.state[u] == kAtWarp && (b.slot[u].mask >> lane & 1u)) {
      try_complete_warp(b, w, b.slot[u].mask);
    }
  }
}

// Body of every fiber: runs unstarted CUDA threads of the current block one
// after another until none is left, then parks itself in the idle pool.
inline void fiber_main() {
  ThreadRuntime& r = rt();
#if defined(JAX_ROI_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &r.main_stack_bottom, &r.main_stack_size);
#endif
  for (;;) {
    Block* b = r.block;
    while (b->next_start < b->n && !b->failed) {
      const unsigned t = b->order[b->next_start++];
      b->state[t] = kRunning;
      b->running = t;
      set_thread_builtins(*b, t);
      b->invoke(b->params);
      thread_exited(*b, t);
    }
    Fiber* self = r.current;
    self->idle = true;
    r.idle.push_back(self);
    switch_fiber_to_main(r, self, false);
  }
}

inline void recycle_abandoned_fibers(ThreadRuntime& r) {
  for (Fiber* f : r.fibers) {
    if (f->idle) continue;
#if defined(JAX_ROI_EMU_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(f->stack_lo, f->stack_bytes);
#endif
    init_fiber_context(f);
    f->idle = true;
    r.idle.push_back(f);
  }
}

inline void describe_deadlock(Block& b) {
  unsigned at_bar = 0, at_warp = 0;
  int example = -1;
  for (unsigned t = 0; t < b.n; ++t) {
    if (b.state[t] == kAtBarrier) ++at_bar;
    if (b.state[t] == kAtWarp) {
      ++at_warp;
      if (example < 0) example = static_cast<int>(t);
    }
  }
  std::string m = "deadlock in block (" + std::to_string(b.idx.x) + "," + std::to_string(b.idx.y) +
                  "," + std::to_string(b.idx.z) + "): " + std::to_string(at_bar) +
                  " thread(s) at a block barrier, " + std::to_string(at_warp) +
                  " at warp intrinsics, " + std::to_string(b.exited) + " exited";
  if (example >= 0) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), " (e.g. lane %u waits at %s, mask 0x%08x)",
                  static_cast<unsigned>(example) % 32, warp_op_name(b.slot[example].op),
                  b.slot[example].mask);
    m += buf;
  }
  mark_failed(b, m);
}

inline void run_block(ThreadRuntime& r, Block& b) {
  for (;;) {
    if (b.failed) break;
    if (b.ready_head < b.ready.size()) {
      if (b.shuffle) {
        const size_t k =
            b.ready_head + b.rng.below(static_cast<uint32_t>(b.ready.size() - b.ready_head));
        std::swap(b.ready[k], b.ready[b.ready_head]);
      }
      const unsigned t = b.ready[b.ready_head++];
      if (b.ready_head == b.ready.size()) {
        b.ready.clear();
        b.ready_head = 0;
      }
      b.state[t] = kRunning;
      b.running = t;
      set_thread_builtins(b, t);
      switch_main_to_fiber(r, b.slot[t].fiber);
      continue;
    }
    if (b.next_start < b.n) {
      Fiber* f;
      if (!r.idle.empty()) {
        f = r.idle.back();
        r.idle.pop_back();
      } else {
        f = new_fiber(&b.st);
      }
      f->idle = false;
      switch_main_to_fiber(r, f);
      continue;
    }
    break;
  }
  if (!b.failed && b.exited != b.n) describe_deadlock(b);
  if (b.failed) recycle_abandoned_fibers(r);
}

struct LaunchScope {  // clears the per-OS-thread launch state on every exit path
  ThreadRuntime& r;
  ~LaunchScope() {
    r.block = nullptr;
    if (r.dyn_smem) ::operator delete[](r.dyn_smem, std::align_val_t(16));
    r.dyn_smem = nullptr;
  }
};

inline cudaError_t set_error(cudaError_t e) {
  last_error_ref() = e;
  return e;
}

// e (and the next cudaGetLastError) when failed, else cudaSuccess.
inline cudaError_t set_error_if(bool failed, cudaError_t e) {
  return failed ? set_error(e) : cudaSuccess;
}

inline cudaError_t validate(dim3 grid, dim3 block, size_t shared_bytes) {
  if (rt().block != nullptr) return cudaErrorNotSupported;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0) {
    return cudaErrorInvalidConfiguration;
  }
  if (block.x > 1024 || block.y > 1024 || block.z > 64 ||
      uint64_t{block.x} * block.y * block.z > 1024) {
    return cudaErrorInvalidConfiguration;
  }
  if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  if (shared_bytes > max_dyn_smem_ref().load(std::memory_order_relaxed)) {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

inline cudaError_t run_launch(dim3 grid, dim3 block, size_t shared_bytes, void (*invoke)(void*),
                              void* params) {
  const cudaError_t err = validate(grid, block, shared_bytes);
  if (err != cudaSuccess) {
    Stats s;
    s.failed_launches = 1;
    add_stats(s);
    if (err == cudaErrorNotSupported) set_message("kernel launch from inside a kernel");
    return set_error(err);
  }
  ThreadRuntime& r = rt();
  Block b;
  b.invoke = invoke;
  b.params = params;
  b.dim = block;
  b.n = block.x * block.y * block.z;
  b.warps = (b.n + 31) / 32;
  b.state.resize(b.n);
  b.slot.resize(b.n);
  b.order.resize(b.n);
  b.ready.reserve(b.n);
  b.warp_waiting.resize(b.warps);
  LaunchScope scope{r};
  r.dyn_smem = static_cast<unsigned char*>(
      ::operator new[](shared_bytes ? shared_bytes : 1, std::align_val_t(16)));
  r.block = &b;
  gridDim = grid;
  blockDim = block;
  const uint64_t seed = seed_ref().load(std::memory_order_relaxed);
  const bool shuffle = shuffle_ref().load(std::memory_order_relaxed);
  b.shuffle = shuffle;
  const uint64_t num_blocks = uint64_t{grid.x} * grid.y * grid.z;
  const Permutation perm(num_blocks, mix64(seed ^ 0x5eedb10c5ull), shuffle);
  for (uint64_t i = 0; i < num_blocks && !b.failed; ++i) {
    const uint64_t id = perm(i);
    b.idx = uint3{static_cast<unsigned>(id % grid.x), static_cast<unsigned>(id / grid.x % grid.y),
                  static_cast<unsigned>(id / (uint64_t{grid.x} * grid.y))};
    blockIdx = b.idx;
    b.rng = Rng(mix64(seed) ^ mix64(id + 0x1234567ull));
    std::memset(b.state.data(), kUnstarted, b.n);
    for (unsigned t = 0; t < b.n; ++t) b.order[t] = t;
    if (shuffle) {
      for (unsigned t = b.n - 1; t > 0; --t) std::swap(b.order[t], b.order[b.rng.below(t + 1)]);
    }
    std::fill(b.warp_waiting.begin(), b.warp_waiting.end(), 0u);
    b.ready.clear();
    b.ready_head = 0;
    b.next_start = b.exited = b.bar_arrived = b.bar_count = 0;
    for (size_t k = 0; k < shared_bytes; k += 8) {  // uninitialised shared memory
      const uint64_t g = b.rng.next();
      std::memcpy(r.dyn_smem + k, &g, shared_bytes - k < 8 ? shared_bytes - k : 8);
    }
    run_block(r, b);
    ++b.st.blocks;
    b.st.threads += b.next_start;
  }
  if (b.failed) {
    b.st.failed_launches = 1;
    set_message(b.error);
    if (verbose_ref().load(std::memory_order_relaxed)) {
      std::fprintf(stderr, "jax_roi CUDA emulation: kernel failed: %s\n", b.error.c_str());
    }
  } else {
    b.st.launches = 1;
  }
  add_stats(b.st);
  return set_error(b.failed ? cudaErrorLaunchFailure : cudaSuccess);
}

template <typename Closure>
void invoke_closure(void* p) {
  Closure* c = static_cast<Closure*>(p);
  std::apply(c->kernel, c->params);  // each CUDA thread gets its own parameter copies
}

template <typename T>
T warp_value(uint8_t op, unsigned mask, T var, int param, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = warp_exchange(op, mask, bits, param, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace detail

inline void set_seed(uint64_t s) { detail::seed_ref().store(s); }
inline uint64_t seed() { return detail::seed_ref().load(); }
inline void set_shuffle(bool on) { detail::shuffle_ref().store(on); }
inline void set_verbose(bool on) { detail::verbose_ref().store(on); }
inline void set_max_dynamic_shared_bytes(size_t n) { detail::max_dyn_smem_ref().store(n); }
inline size_t max_dynamic_shared_bytes() { return detail::max_dyn_smem_ref().load(); }
inline void set_stack_bytes(size_t n) { detail::stack_bytes_ref().store(n); }

inline Stats stats() {
  detail::AtomicStats& g = detail::global_stats();
  Stats s;
  uint64_t* out[detail::kNumStats] = {&s.launches,
                                      &s.failed_launches,
                                      &s.blocks,
                                      &s.threads,
                                      &s.barriers,
                                      &s.warp_syncs,
                                      &s.suspensions,
                                      &s.fibers_created,
                                      &s.undefined_shuffle_reads,
                                      &s.memsets,
                                      &s.func_attribute_queries};
  for (int i = 0; i < detail::kNumStats; ++i) *out[i] = g.v[i].load();
  return s;
}
inline void reset_stats() {
  for (auto& x : detail::global_stats().v) x.store(0);
}
inline std::string last_error_message() {
  std::lock_guard<std::mutex> lock(detail::message_mutex());
  return detail::message_ref();
}
inline bool in_kernel() { return detail::rt().block != nullptr; }

// Base of the dynamic shared memory of the running launch (16-byte aligned).
inline void* dynamic_shared_memory() {
  if (detail::rt().block == nullptr) detail::die("dynamic shared memory used outside a kernel");
  return detail::rt().dyn_smem;
}

}  // namespace emulation

// The launch entry point kernels are started with (its nvcc definition in
// core/cuda_compat.h: `kernel<<<grid, block, shared_bytes, stream>>>(
// std::forward<A>(args)...); return cudaGetLastError();`). Arguments are
// converted to the kernel's parameter types once, as CUDA does. Runs the
// whole grid before returning.
template <typename... P, typename... A>
cudaError_t launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "launch_kernel: wrong number of kernel arguments");
  static_assert(!(std::is_reference<P>::value || ...),
                "CUDA kernels take their parameters by value");
  (void)stream;
  struct Closure {
    void (*kernel)(P...);
    std::tuple<P...> params;
  };
  Closure c{kernel, std::tuple<P...>(std::forward<A>(args)...)};
  return emulation::detail::run_launch(grid, block, shared_bytes,
                                       &emulation::detail::invoke_closure<Closure>, &c);
}

inline cudaError_t memset_async(void* p, int value, size_t bytes, cudaStream_t stream) {
  (void)stream;
  if (bytes) std::memset(p, value, bytes);
  emulation::Stats s;
  s.memsets = 1;
  emulation::detail::add_stats(s);
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace jax_roi

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = jax_roi::cuda::emulation::detail::last_error_ref();
  jax_roi::cuda::emulation::detail::last_error_ref() = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() {
  return jax_roi::cuda::emulation::detail::last_error_ref();
}

// Device management and kernel attributes, as far as kernel preloading
// (core/cuda_launch.h) uses them: one device (0); cudaFuncGetAttributes
// "loads" a kernel (on a GPU it forces lazy module loading), counts it in
// Stats::func_attribute_queries and reports the limits the launch validation
// applies.
struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  size_t constSizeBytes;
  size_t localSizeBytes;
  int maxThreadsPerBlock;
  int numRegs;
  int ptxVersion;
  int binaryVersion;
  int cacheModeCA;
  int maxDynamicSharedSizeBytes;
  int preferredShmemCarveout;
};

inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) {
  return jax_roi::cuda::emulation::detail::set_error_if(device != 0, cudaErrorInvalidDevice);
}
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func) {
  namespace d = jax_roi::cuda::emulation::detail;
  if (attr == nullptr || func == nullptr)
    return d::set_error_if(true, cudaErrorInvalidDeviceFunction);
  *attr = cudaFuncAttributes{};
  attr->maxThreadsPerBlock = 1024;
  attr->binaryVersion = attr->ptxVersion = JAX_ROI_CUDA_ARCH / 10;
  attr->maxDynamicSharedSizeBytes =
      static_cast<int>(jax_roi::cuda::emulation::max_dynamic_shared_bytes());
  jax_roi::cuda::emulation::Stats s;
  s.func_attribute_queries = 1;
  d::add_stats(s);
  return cudaSuccess;
}

// ---------------------------------------------------------------------------
// Device functions
// ---------------------------------------------------------------------------
inline void __syncthreads() {
  jax_roi::cuda::emulation::detail::block_barrier(jax_roi::cuda::emulation::detail::kBarSync, 0);
}
inline int __syncthreads_count(int predicate) {
  return jax_roi::cuda::emulation::detail::block_barrier(
      jax_roi::cuda::emulation::detail::kBarCount, predicate);
}
inline int __syncthreads_and(int predicate) {
  return jax_roi::cuda::emulation::detail::block_barrier(jax_roi::cuda::emulation::detail::kBarAnd,
                                                         predicate);
}
inline int __syncthreads_or(int predicate) {
  return jax_roi::cuda::emulation::detail::block_barrier(jax_roi::cuda::emulation::detail::kBarOr,
                                                         predicate);
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  jax_roi::cuda::emulation::detail::warp_exchange(jax_roi::cuda::emulation::detail::kSyncWarp, mask,
                                                  0, 0, 32);
}
inline unsigned __activemask() {
  const unsigned t = jax_roi::cuda::emulation::detail::current_block("__activemask").running;
  return 1u << (t % 32);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(jax_roi::cuda::emulation::detail::warp_exchange(
      jax_roi::cuda::emulation::detail::kBallot, mask, predicate != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int predicate) {
  return static_cast<int>(jax_roi::cuda::emulation::detail::warp_exchange(
      jax_roi::cuda::emulation::detail::kAll, mask, predicate != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int predicate) {
  return static_cast<int>(jax_roi::cuda::emulation::detail::warp_exchange(
      jax_roi::cuda::emulation::detail::kAny, mask, predicate != 0, 0, 32));
}

// The shuffles, for CUDA's overload set (other types convert as with nvcc).
#define JAX_ROI_EMU_SHUFFLES(T)                                                                \
  inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {             \
    return jax_roi::cuda::emulation::detail::warp_value<T>(                                    \
        jax_roi::cuda::emulation::detail::kShflIdx, mask, var, src_lane, width);               \
  }                                                                                            \
  inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {    \
    return jax_roi::cuda::emulation::detail::warp_value<T>(                                    \
        jax_roi::cuda::emulation::detail::kShflUp, mask, var, static_cast<int>(delta & 31u),   \
        width);                                                                                \
  }                                                                                            \
  inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {  \
    return jax_roi::cuda::emulation::detail::warp_value<T>(                                    \
        jax_roi::cuda::emulation::detail::kShflDown, mask, var, static_cast<int>(delta & 31u), \
        width);                                                                                \
  }                                                                                            \
  inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {        \
    return jax_roi::cuda::emulation::detail::warp_value<T>(                                    \
        jax_roi::cuda::emulation::detail::kShflXor, mask, var, lane_mask, width);              \
  }
JAX_ROI_EMU_SHUFFLES(int)
JAX_ROI_EMU_SHUFFLES(unsigned int)
JAX_ROI_EMU_SHUFFLES(long)
JAX_ROI_EMU_SHUFFLES(unsigned long)
JAX_ROI_EMU_SHUFFLES(long long)
JAX_ROI_EMU_SHUFFLES(unsigned long long)
JAX_ROI_EMU_SHUFFLES(float)
JAX_ROI_EMU_SHUFFLES(double)
#undef JAX_ROI_EMU_SHUFFLES

#if JAX_ROI_CUDA_ARCH >= 800
#define JAX_ROI_EMU_REDUCE(name, T, op)                                                          \
  inline T name(unsigned mask, T value) {                                                        \
    return jax_roi::cuda::emulation::detail::warp_value<T>(jax_roi::cuda::emulation::detail::op, \
                                                           mask, value, 0, 32);                  \
  }
JAX_ROI_EMU_REDUCE(__reduce_add_sync, unsigned, kRedAddU)
JAX_ROI_EMU_REDUCE(__reduce_add_sync, int, kRedAddI)
JAX_ROI_EMU_REDUCE(__reduce_min_sync, unsigned, kRedMinU)
JAX_ROI_EMU_REDUCE(__reduce_min_sync, int, kRedMinI)
JAX_ROI_EMU_REDUCE(__reduce_max_sync, unsigned, kRedMaxU)
JAX_ROI_EMU_REDUCE(__reduce_max_sync, int, kRedMaxI)
JAX_ROI_EMU_REDUCE(__reduce_and_sync, unsigned, kRedAnd)
JAX_ROI_EMU_REDUCE(__reduce_or_sync, unsigned, kRedOr)
JAX_ROI_EMU_REDUCE(__reduce_xor_sync, unsigned, kRedXor)
#undef JAX_ROI_EMU_REDUCE
#endif

// Memory fences: nothing runs concurrently with a block; keep the compiler
// from moving memory accesses across them.
inline void __threadfence() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_signal_fence(std::memory_order_seq_cst); }

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// Atomics: plain read-modify-writes (exact: a block runs alone); integer
// arithmetic wraps as on the GPU (signed values go through their unsigned
// twin). Each returns the old value.
template <typename T, typename F>
inline T jax_roi_emu_rmw(T* a, F f) {
  const T old = *a;
  *a = static_cast<T>(f(old));
  return old;
}
inline int jax_roi_emu_wrap(unsigned v) { return static_cast<int>(v); }
#define JAX_ROI_EMU_RMW(R, name, T, expr)                                    \
  inline R name(T* a, T v) {                                                 \
    return jax_roi_emu_rmw(a, [&]([[maybe_unused]] T old) { return expr; }); \
  }
JAX_ROI_EMU_RMW(int, atomicAdd, int, jax_roi_emu_wrap(static_cast<unsigned>(old) + v))
JAX_ROI_EMU_RMW(unsigned, atomicAdd, unsigned, old + v)
JAX_ROI_EMU_RMW(unsigned long long, atomicAdd, unsigned long long, old + v)
JAX_ROI_EMU_RMW(float, atomicAdd, float, old + v)
JAX_ROI_EMU_RMW(double, atomicAdd, double, old + v)
JAX_ROI_EMU_RMW(int, atomicSub, int, jax_roi_emu_wrap(static_cast<unsigned>(old) - v))
JAX_ROI_EMU_RMW(unsigned, atomicSub, unsigned, old - v)
JAX_ROI_EMU_RMW(int, atomicExch, int, v)
JAX_ROI_EMU_RMW(unsigned, atomicExch, unsigned, v)
JAX_ROI_EMU_RMW(unsigned long long, atomicExch, unsigned long long, v)
JAX_ROI_EMU_RMW(float, atomicExch, float, v)
JAX_ROI_EMU_RMW(unsigned, atomicInc, unsigned, old >= v ? 0u : old + 1u)
JAX_ROI_EMU_RMW(unsigned, atomicDec, unsigned, (old == 0u || old > v) ? v : old - 1u)
// CUDA's vector types used by the kernels (vector_types.h) and, from sm_90,
// the float2 / float4 atomicAdd (global memory): each lane a plain add, the
// old value returned.
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
#if JAX_ROI_CUDA_ARCH >= 900
inline float2 atomicAdd(float2* a, float2 v) {
  const float2 old = *a;
  *a = float2{old.x + v.x, old.y + v.y};
  return old;
}
inline float4 atomicAdd(float4* a, float4 v) {
  const float4 old = *a;
  *a = float4{old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w};
  return old;
}
#endif
#define JAX_ROI_EMU_INTEGER_ATOMICS(T)                \
  JAX_ROI_EMU_RMW(T, atomicMin, T, v < old ? v : old) \
  JAX_ROI_EMU_RMW(T, atomicMax, T, v > old ? v : old)
JAX_ROI_EMU_INTEGER_ATOMICS(int)
JAX_ROI_EMU_INTEGER_ATOMICS(unsigned)
JAX_ROI_EMU_INTEGER_ATOMICS(long long)
JAX_ROI_EMU_INTEGER_ATOMICS(unsigned long long)
#define JAX_ROI_EMU_BITWISE_ATOMICS(T)     \
  JAX_ROI_EMU_RMW(T, atomicAnd, T, old& v) \
  JAX_ROI_EMU_RMW(T, atomicOr, T, old | v) \
  JAX_ROI_EMU_RMW(T, atomicXor, T, old ^ v)
JAX_ROI_EMU_BITWISE_ATOMICS(int)
JAX_ROI_EMU_BITWISE_ATOMICS(unsigned)
JAX_ROI_EMU_BITWISE_ATOMICS(unsigned long long)
#define JAX_ROI_EMU_CAS(T)                                                      \
  inline T atomicCAS(T* a, T compare, T v) {                                    \
    return jax_roi_emu_rmw(a, [&](T old) { return old == compare ? v : old; }); \
  }
JAX_ROI_EMU_CAS(int)
JAX_ROI_EMU_CAS(unsigned)
JAX_ROI_EMU_CAS(unsigned long long)
JAX_ROI_EMU_CAS(unsigned short)
#undef JAX_ROI_EMU_CAS
#undef JAX_ROI_EMU_BITWISE_ATOMICS
#undef JAX_ROI_EMU_INTEGER_ATOMICS
#undef JAX_ROI_EMU_RMW

// Integer intrinsics common in warp code.
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i, x >>= 1) r = (r << 1) | (x & 1u);
  return r;
}

#endif  // JAX_ROI_CSRC_CORE_CUDA_EMULATION_H_
