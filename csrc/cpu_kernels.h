// CPU kernels of the RoI operators. They know nothing of XLA FFI: the caller
// hands them plain pointers, dimensions and a TaskRunner for parallelism.
#ifndef JAX_ROI_CSRC_CPU_KERNELS_H_
#define JAX_ROI_CSRC_CPU_KERNELS_H_

#include <algorithm>
#include <cstdint>
#include <functional>

#include "roi_args.h"

namespace jax_roi {
namespace cpu {

// Runs independent tasks, possibly concurrently.
class TaskRunner {
 public:
  virtual ~TaskRunner() = default;
  // How many tasks may usefully run at once (>= 1).
  virtual int64_t concurrency() const = 0;
  // Calls fn(i) once for every i in [0, n) and returns when all calls have
  // returned. Calls may run on any thread, in any order.
  virtual void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) = 0;
};

// Runs every task on the calling thread, in order.
class SerialRunner final : public TaskRunner {
 public:
  int64_t concurrency() const override { return 1; }
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) override {
    for (int64_t i = 0; i < n; ++i) fn(i);
  }
};

// Splits [0, n) into at most `parts` contiguous ranges and runs
// fn(begin, end) for each of them through the runner.
template <typename F>
void parallel_ranges(TaskRunner& runner, int64_t n, int64_t parts, F&& fn) {
  if (n <= 0) return;
  parts = std::max<int64_t>(1, std::min(parts, n));
  const int64_t chunk = (n + parts - 1) / parts;
  const int64_t tasks = (n + chunk - 1) / chunk;
  runner.parallel_for(tasks, [&](int64_t t) {
    const int64_t begin = t * chunk;
    fn(begin, std::min(n, begin + chunk));
  });
}

template <typename T, typename C>
void roi_pool_forward(const PoolForwardArgs<T, C>& args, TaskRunner& runner);

// Deterministic: each gradient element receives its contributions in the
// same order (RoI, then bin, ascending) whatever the number of threads.
template <typename T, typename C>
void roi_pool_backward(const PoolBackwardArgs<T, C>& args, TaskRunner& runner);

template <typename T, typename C>
void roi_align_forward(const AlignForwardArgs<T, C>& args, TaskRunner& runner);

// Deterministic, like roi_pool_backward.
template <typename T, typename C>
void roi_align_backward(const AlignBackwardArgs<T, C>& args, TaskRunner& runner);

// Deterministic: one task per block of RoIs, sums in a fixed order.
template <typename T, typename C>
void roi_align_box_grad(const AlignBoxGradArgs<T, C>& args, TaskRunner& runner);

}  // namespace cpu
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CPU_KERNELS_H_
