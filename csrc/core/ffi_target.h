// How an op defines its FFI targets. A handler body is written once, as a
// template over the back end, and runs a kernel through it:
//
//   template <typename Backend>
//   ffi::Error FooForward(typename Backend::Context ctx, ffi::AnyBuffer x, ...) {
//     ... decode and validate, build FooArgs<T, C> args ...
//     return Backend::run(ctx, "foo", JAX_ROI_KERNEL(foo_forward), args);
//   }
//
//   template <typename Ctx>
//   auto FooForwardBinding() { return ffi::Ffi::Bind().Ctx<Ctx>().Arg<...>()...; }
//
//   JAX_ROI_FFI_TARGET("jax_roi_foo_fwd_v1", FooForward, FooForwardBinding);
//
// JAX_ROI_KERNEL(foo_forward) names the CPU kernel jax_roi::cpu::foo_forward
// (args, TaskRunner&) and, in CUDA builds, the launcher
// jax_roi::cuda::foo_forward(cudaStream_t, args). JAX_ROI_FFI_TARGET defines
// the CPU handler (FooForward<CpuBackend>, context ffi::ThreadPool), in CUDA
// builds the CUDA handler (FooForward<CudaBackend>, context XLA's stream,
// kCmdBufferCompatible), and registers both under the target name (see
// core/registry.h). Use it at namespace scope, inside namespace jax_roi.
#ifndef JAX_ROI_CSRC_CORE_FFI_TARGET_H_
#define JAX_ROI_CSRC_CORE_FFI_TARGET_H_

#include "core/cpu_backend.h"
#include "core/ffi_helpers.h"
#include "core/registry.h"
#include "core/task_runner.h"

#ifdef JAX_ROI_WITH_CUDA
#include "core/cuda_backend.h"
#endif

namespace jax_roi {

// One computation on every back end: cpu(args, runner) and, with CUDA,
// cuda(stream, args) (nullptr_t without).
template <typename Cpu, typename Cuda>
struct Kernel {
  Cpu cpu;
  Cuda cuda;
};
template <typename Cpu, typename Cuda>
Kernel(Cpu, Cuda) -> Kernel<Cpu, Cuda>;

}  // namespace jax_roi

#define JAX_ROI_CPU_KERNEL_(fn)                                              \
  [](const auto& jax_roi_args, ::jax_roi::cpu::TaskRunner& jax_roi_runner) { \
    ::jax_roi::cpu::fn(jax_roi_args, jax_roi_runner);                         \
  }

#ifdef JAX_ROI_WITH_CUDA

#define JAX_ROI_KERNEL(fn)                                                             \
  ::jax_roi::Kernel {                                                                  \
    JAX_ROI_CPU_KERNEL_(fn), [](cudaStream_t jax_roi_stream, const auto& jax_roi_args) { \
      return ::jax_roi::cuda::fn(jax_roi_stream, jax_roi_args);                         \
    }                                                                                  \
  }

#define JAX_ROI_DEFINE_CUDA_HANDLER_(handler, Impl, Binding)                        \
  XLA_FFI_DEFINE_HANDLER(handler, Impl<::jax_roi::CudaBackend>,                     \
                         Binding<::jax_roi::CudaStream>(),                          \
                         {::xla::ffi::Traits::kCmdBufferCompatible});

#else

#define JAX_ROI_KERNEL(fn) \
  ::jax_roi::Kernel { JAX_ROI_CPU_KERNEL_(fn), nullptr }

#define JAX_ROI_DEFINE_CUDA_HANDLER_(handler, Impl, Binding)

#endif

#define JAX_ROI_FFI_TARGET(name, Impl, Binding)                                               \
  XLA_FFI_DEFINE_HANDLER(Impl##Cpu, Impl<::jax_roi::CpuBackend>,                              \
                         Binding<::xla::ffi::ThreadPool>());                                  \
  JAX_ROI_DEFINE_CUDA_HANDLER_(Impl##Cuda, Impl, Binding)                                     \
  JAX_ROI_REGISTER_FFI_TARGET(name, Impl##Cpu, Impl##Cuda)

#endif  // JAX_ROI_CSRC_CORE_FFI_TARGET_H_
