// The CPU back end of the FFI handlers: runs a CPU kernel on XLA's intra-op
// thread pool (the binding's .Ctx<ffi::ThreadPool>()).
#ifndef JAX_ROI_CSRC_CORE_CPU_BACKEND_H_
#define JAX_ROI_CSRC_CORE_CPU_BACKEND_H_

#include <type_traits>
#include <utility>

#include "core/ffi_helpers.h"
#include "core/task_runner.h"

namespace jax_roi {

// A non-owning reference to a callable void(cpu::TaskRunner&): no copy, no
// allocation (so nothing can throw before run_kernel's guard).
class KernelRef {
 public:
  template <typename F, typename = std::enable_if_t<!std::is_same_v<std::decay_t<F>, KernelRef>>>
  KernelRef(F&& f)  // NOLINT(google-explicit-constructor)
      : callable_(static_cast<const void*>(&f)), call_([](const void* c, cpu::TaskRunner& runner) {
          (*static_cast<const std::remove_reference_t<F>*>(c))(runner);
        }) {}
  void operator()(cpu::TaskRunner& runner) const { call_(callable_, runner); }

 private:
  const void* callable_;
  void (*call_)(const void*, cpu::TaskRunner&);
};

// Runs kernel(runner) over the pool, with IEEE subnormals (XLA:CPU runs
// custom calls with flush-to-zero and denormals-are-zero; torchvision and the
// CUDA kernels keep subnormals) on every thread it uses; exceptions (the
// kernels' only failure is running out of memory for their caches) become
// errors.
ffi::Error run_kernel(ffi::ThreadPool& pool, KernelRef kernel);

struct CpuBackend {
  using Context = ffi::ThreadPool;

  // Runs kernel.cpu(args, runner): see JAX_ROI_KERNEL (core/ffi_target.h).
  template <typename Kernel, typename Args>
  static ffi::Error run(Context pool, const char* /*what*/, const Kernel& kernel,
                        const Args& args) {
    return run_kernel(pool, [&](cpu::TaskRunner& runner) { kernel.cpu(args, runner); });
  }
};

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_CPU_BACKEND_H_
