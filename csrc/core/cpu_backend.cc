// The CPU back end: XLA's intra-op thread pool as a TaskRunner, with IEEE
// subnormals on every thread the kernels use.
#include "core/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "core/ffi_helpers.h"
#include "core/task_runner.h"

namespace jax_roi {
namespace {

// XLA:CPU runs custom calls with flush-to-zero and denormals-are-zero set;
// torchvision (and the CUDA kernels) keep subnormal numbers. The kernels
// clear both modes for their duration, on every thread they use, so that
// subnormal inputs and results are computed exactly.
class ScopedSubnormals {
 public:
#if defined(__x86_64__) || defined(__i386__)
  ScopedSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ & ~0x8040u); }  // FTZ | DAZ
  ~ScopedSubnormals() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
#elif defined(__aarch64__)
  ScopedSubnormals() {
    asm volatile("mrs %0, fpcr" : "=r"(saved_));
    const uint64_t cleared = saved_ & ~(uint64_t{1} << 24);  // FZ
    asm volatile("msr fpcr, %0" : : "r"(cleared));
  }
  ~ScopedSubnormals() { asm volatile("msr fpcr, %0" : : "r"(saved_)); }

 private:
  uint64_t saved_;
#endif
};

// Runs tasks on XLA's intra-op thread pool. The calling thread works too and
// only waits for tasks that have actually started, so the call completes even
// when the pool runs tasks inline, late or never (a busy or absent pool).
class ThreadPoolRunner final : public cpu::TaskRunner {
 public:
  // JAX_ROI_CPU_THREADS, when set, overrides the number of concurrent tasks
  // (their work split changes, their results do not: see the kernels).
  explicit ThreadPoolRunner(ffi::ThreadPool& pool) : pool_(pool) {
    const int64_t n = pool_.num_threads();
    concurrency_ = n > 0 ? n : 1;
    if (const char* env = std::getenv("JAX_ROI_CPU_THREADS")) {
      const long v = std::strtol(env, nullptr, 10);
      if (v > 0) concurrency_ = std::min<long>(v, 1024);
    }
  }

  int64_t concurrency() const override { return concurrency_; }

  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) override {
    if (n <= 0) return;
    if (n == 1 || concurrency_ == 1) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    auto state = std::make_shared<State>();
    state->n = n;
    state->fn = &fn;
    const int64_t helpers = std::min<int64_t>(n, concurrency_) - 1;
    for (int64_t t = 0; t < helpers; ++t) {
      pool_.Schedule([state] { Work(*state); });
    }
    Work(*state);
    std::unique_lock<std::mutex> lock(state->mu);
    state->cv.wait(lock, [&] { return state->active == 0; });
    // A task's exception (e.g. std::bad_alloc) reaches the caller only after
    // every started task has finished with fn.
    if (state->error) std::rethrow_exception(state->error);
  }

 private:
  struct State {
    int64_t n = 0;
    const std::function<void(int64_t)>* fn = nullptr;
    std::atomic<int64_t> next{0};
    int64_t active = 0;        // Workers inside their claim loop; guarded by mu.
    std::exception_ptr error;  // The first exception of a task; guarded by mu.
    std::mutex mu;
    std::condition_variable cv;
  };

  static void Work(State& s) {
    ScopedSubnormals subnormals;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      ++s.active;
    }
    // Once `next` has passed n no new claim succeeds, so fn is never called
    // after the caller has seen active == 0 with nothing left to claim.
    try {
      for (int64_t i = s.next.fetch_add(1); i < s.n; i = s.next.fetch_add(1)) (*s.fn)(i);
    } catch (...) {
      s.next.store(s.n);  // No new claims: the other tasks wind down.
      std::lock_guard<std::mutex> lock(s.mu);
      if (!s.error) s.error = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(s.mu);
    if (--s.active == 0) s.cv.notify_all();
  }

  ffi::ThreadPool& pool_;
  int64_t concurrency_ = 1;
};

}  // namespace

ffi::Error run_kernel(ffi::ThreadPool& pool, KernelRef kernel) {
  ScopedSubnormals subnormals;
  try {
    ThreadPoolRunner runner(pool);
    kernel(runner);
    return ffi::Error::Success();
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "jax_roi: out of memory in a CPU kernel");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jax_roi: ") + e.what());
  }
}

}  // namespace jax_roi
