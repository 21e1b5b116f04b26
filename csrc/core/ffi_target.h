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
// (args, TaskRunner&) and, where CUDA kernels exist, the launcher
// jax_roi::cuda::foo_forward(cudaStream_t, args). JAX_ROI_FFI_TARGET defines
// the CPU handler (FooForward<CpuBackend>, context ffi::ThreadPool) and
// the CUDA handler:
//   * CUDA builds (JAX_ROI_WITH_CUDA): FooForward<CudaBackend>, context
//     XLA's stream, kCmdBufferCompatible, registered for "CUDA" with an FFI
//     instantiate stage that preloads the kernels (core/cuda_backend.h);
//   * the CUDA emulation build (JAX_ROI_CUDA_EMULATION, the test module
//     _jax_roi_cuda_emulation_sm<arch>): FooForward<EmulatedCudaBackend>,
//     the same handler body and launchers with the kernels compiled for the
//     host, context ffi::ThreadPool, registered for "cpu" under the target
//     name + JAX_ROI_CUDA_EMULATION_SUFFIX, with the same instantiate stage;
// and registers them (see core/registry.h). Every op that defines its
// targets with this macro gets its CUDA handler and its emulated twin; the
// emulation build needs no list of ops. Use it at namespace scope, inside
// namespace jax_roi.
#ifndef JAX_ROI_CSRC_CORE_FFI_TARGET_H_
#define JAX_ROI_CSRC_CORE_FFI_TARGET_H_

#include "core/cpu_backend.h"
#include "core/ffi_helpers.h"
#include "core/registry.h"
#include "core/task_runner.h"

#if defined(JAX_ROI_WITH_CUDA) || defined(JAX_ROI_CUDA_EMULATION)
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
    ::jax_roi::cpu::fn(jax_roi_args, jax_roi_runner);                        \
  }

#if defined(JAX_ROI_WITH_CUDA) || defined(JAX_ROI_CUDA_EMULATION)

#define JAX_ROI_KERNEL(fn)                                                               \
  ::jax_roi::Kernel {                                                                    \
    JAX_ROI_CPU_KERNEL_(fn), [](cudaStream_t jax_roi_stream, const auto& jax_roi_args) { \
      return ::jax_roi::cuda::fn(jax_roi_stream, jax_roi_args);                          \
    }                                                                                    \
  }

#else

#define JAX_ROI_KERNEL(fn) \
  ::jax_roi::Kernel { JAX_ROI_CPU_KERNEL_(fn), nullptr }

#endif

// The CUDA handler's traits. kCmdBufferCompatible (XLA may capture the call
// into a CUDA graph and replay it) holds because, for given operand shapes
// and attributes, every call issues the same asynchronous work on XLA's
// stream and nothing else: the same kernel launches and memsets (their grid
// sizes depend on shapes only; buffer addresses are graph parameters that
// XLA updates), no host synchronisation, no allocation, no host read of
// device data, no other stream. Lazy kernel loading inside capture is the
// one hazard left, which the instantiate stage removes (core/cuda_launch.h).
// A handler that breaks any of this must drop the trait.
#define JAX_ROI_CUDA_TRAITS_ {::xla::ffi::Traits::kCmdBufferCompatible}

#if defined(JAX_ROI_WITH_CUDA)
#define JAX_ROI_CUDA_BACKEND_ ::jax_roi::CudaBackend
#elif defined(JAX_ROI_CUDA_EMULATION)
#define JAX_ROI_CUDA_BACKEND_ ::jax_roi::EmulatedCudaBackend
#endif

#ifdef JAX_ROI_CUDA_BACKEND_
#define JAX_ROI_DEFINE_CUDA_HANDLER_(handler, Impl, Binding)   \
  XLA_FFI_DEFINE_HANDLER(handler, Impl<JAX_ROI_CUDA_BACKEND_>, \
                         Binding<JAX_ROI_CUDA_BACKEND_::BindingContext>(), JAX_ROI_CUDA_TRAITS_);
#else
#define JAX_ROI_DEFINE_CUDA_HANDLER_(handler, Impl, Binding)
#endif

#define JAX_ROI_FFI_TARGET(name, Impl, Binding)                  \
  XLA_FFI_DEFINE_HANDLER(Impl##Cpu, Impl<::jax_roi::CpuBackend>, \
                         Binding<::xla::ffi::ThreadPool>());     \
  JAX_ROI_DEFINE_CUDA_HANDLER_(Impl##Cuda, Impl, Binding)        \
  JAX_ROI_REGISTER_FFI_TARGET(name, Impl##Cpu, Impl##Cuda)

#endif  // JAX_ROI_CSRC_CORE_FFI_TARGET_H_
