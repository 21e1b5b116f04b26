// XLA FFI handlers of the CPU kernels.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>

#include "cpu_kernels.h"
#include "ffi_handlers.h"
#include "xla/ffi/api/ffi.h"

namespace jax_roi {
namespace {

// Runs tasks on XLA's intra-op thread pool. The calling thread works too and
// only waits for tasks that have actually started, so the call completes even
// when the pool runs tasks inline, late or never (a busy or absent pool).
class ThreadPoolRunner final : public cpu::TaskRunner {
 public:
  explicit ThreadPoolRunner(ffi::ThreadPool& pool) : pool_(pool) {
    const int64_t n = pool_.num_threads();
    concurrency_ = n > 0 ? n : 1;
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
  }

 private:
  struct State {
    int64_t n = 0;
    const std::function<void(int64_t)>* fn = nullptr;
    std::atomic<int64_t> next{0};
    int64_t active = 0;  // Workers inside their claim loop; guarded by mu.
    std::mutex mu;
    std::condition_variable cv;
  };

  static void Work(State& s) {
    {
      std::lock_guard<std::mutex> lock(s.mu);
      ++s.active;
    }
    // Once `next` has passed n no new claim succeeds, so fn is never called
    // after the caller has seen active == 0 with nothing left to claim.
    for (int64_t i = s.next.fetch_add(1); i < s.n; i = s.next.fetch_add(1)) (*s.fn)(i);
    std::lock_guard<std::mutex> lock(s.mu);
    if (--s.active == 0) s.cv.notify_all();
  }

  ffi::ThreadPool& pool_;
  int64_t concurrency_ = 1;
};

struct CpuBackend {
  using Context = ffi::ThreadPool;

  template <typename T, typename C>
  static ffi::Error roi_pool_forward(Context pool, const PoolForwardArgs<T, C>& args) {
    ThreadPoolRunner runner(pool);
    cpu::roi_pool_forward(args, runner);
    return ffi::Error::Success();
  }

  template <typename T, typename C>
  static ffi::Error roi_pool_backward(Context pool, const PoolBackwardArgs<T, C>& args) {
    ThreadPoolRunner runner(pool);
    cpu::roi_pool_backward(args, runner);
    return ffi::Error::Success();
  }

  template <typename T, typename C>
  static ffi::Error roi_align_forward(Context pool, const AlignForwardArgs<T, C>& args) {
    ThreadPoolRunner runner(pool);
    cpu::roi_align_forward(args, runner);
    return ffi::Error::Success();
  }

  template <typename T, typename C>
  static ffi::Error roi_align_backward(Context pool, const AlignBackwardArgs<T, C>& args) {
    ThreadPoolRunner runner(pool);
    cpu::roi_align_backward(args, runner);
    return ffi::Error::Success();
  }

  template <typename T, typename C>
  static ffi::Error roi_align_box_grad(Context pool, const AlignBoxGradArgs<T, C>& args) {
    ThreadPoolRunner runner(pool);
    cpu::roi_align_box_grad(args, runner);
    return ffi::Error::Success();
  }
};

}  // namespace
}  // namespace jax_roi

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiPoolForwardCpu, jax_roi::RoiPoolForward<jax_roi::CpuBackend>,
                              jax_roi::RoiPoolForwardBinding<xla::ffi::ThreadPool>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiPoolBackwardCpu,
                              jax_roi::RoiPoolBackward<jax_roi::CpuBackend>,
                              jax_roi::RoiPoolBackwardBinding<xla::ffi::ThreadPool>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiAlignForwardCpu,
                              jax_roi::RoiAlignForward<jax_roi::CpuBackend>,
                              jax_roi::RoiAlignForwardBinding<xla::ffi::ThreadPool>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiAlignBackwardCpu,
                              jax_roi::RoiAlignBackward<jax_roi::CpuBackend>,
                              jax_roi::RoiAlignBackwardBinding<xla::ffi::ThreadPool>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxRoiAlignBoxGradCpu,
                              jax_roi::RoiAlignBoxGrad<jax_roi::CpuBackend>,
                              jax_roi::RoiAlignBoxGradBinding<xla::ffi::ThreadPool>());
