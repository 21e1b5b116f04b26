// The registry of XLA FFI targets: every op registers its handlers here, at
// static-initialisation time, next to their definitions; bindings.cpp
// exports whatever is registered. It knows no op.
//
//   JAX_ROI_REGISTER_FFI_TARGET("jax_roi_foo_fwd_v1", FooForwardCpu, FooForwardCuda);
//
// registers a CPU handler and a CUDA handler (XLA_FFI_Handler*) under one
// target name. The CUDA handler is only referenced in builds with CUDA
// kernels: elsewhere the preprocessor drops it, so it need not exist. Where
// it goes:
//   * JAX_ROI_WITH_CUDA (a CUDA build): Platform::kCuda, same name, with the
//     instantiate stage JaxRoiPreloadCudaKernels (core/cuda_backend.h);
//   * JAX_ROI_CUDA_EMULATION (the emulation build: the CUDA handler runs the
//     host-compiled kernels on XLA:CPU): Platform::kCudaEmulation, under the
//     name + JAX_ROI_CUDA_EMULATION_SUFFIX, with the same instantiate stage.
// core/ffi_target.h defines both handlers and registers them in one line
// (JAX_ROI_FFI_TARGET).
//
// Registration happens in static constructors of the op sources, which are
// linked straight into the module (no static library that could drop them).
#ifndef JAX_ROI_CSRC_CORE_REGISTRY_H_
#define JAX_ROI_CSRC_CORE_REGISTRY_H_

#include <map>
#include <string>
#include <vector>

#include "xla/ffi/api/c_api.h"

// The emulation build's target-name suffix (its build sets one per
// architecture: "_cuda_emulation_sm750", ...).
#ifndef JAX_ROI_CUDA_EMULATION_SUFFIX
#define JAX_ROI_CUDA_EMULATION_SUFFIX "_cuda_emulation"
#endif

namespace jax_roi {

// kCudaEmulation: the CUDA handlers of the emulation build, for XLA:CPU.
enum class Platform { kCpu, kCuda, kCudaEmulation };

// A target's handlers by FFI execution stage (instantiate may be null).
struct Stages {
  XLA_FFI_Handler* instantiate = nullptr;
  XLA_FFI_Handler* execute = nullptr;
};

// Target name -> handlers, one map per platform, sorted by name.
using TargetMap = std::map<std::string, Stages>;

// The targets registered for a platform.
const TargetMap& registered_targets(Platform platform);

// Registration mistakes (a name registered twice on one platform, a null
// handler): reported when the module is imported, since static constructors
// cannot report errors.
const std::vector<std::string>& registration_errors();

// Registers its handlers when constructed. cuda is ignored in builds without
// CUDA kernels (JAX_ROI_REGISTER_FFI_TARGET passes null there); elsewhere a
// null handler is a registration error.
struct TargetRegistration {
  TargetRegistration(const char* name, XLA_FFI_Handler* cpu, XLA_FFI_Handler* cuda);
};

}  // namespace jax_roi

#define JAX_ROI_REGISTRY_CONCAT_(a, b) a##b
#define JAX_ROI_REGISTRY_CONCAT(a, b) JAX_ROI_REGISTRY_CONCAT_(a, b)

#if defined(JAX_ROI_WITH_CUDA) || defined(JAX_ROI_CUDA_EMULATION)
#define JAX_ROI_CUDA_HANDLER_OR_NULL(handler) handler
#else
#define JAX_ROI_CUDA_HANDLER_OR_NULL(handler) nullptr
#endif

#define JAX_ROI_REGISTER_FFI_TARGET(name, cpu_handler, cuda_handler)  \
  static const ::jax_roi::TargetRegistration JAX_ROI_REGISTRY_CONCAT( \
      jax_roi_target_registration_, __COUNTER__)(name, cpu_handler,   \
                                                 JAX_ROI_CUDA_HANDLER_OR_NULL(cuda_handler))

#endif  // JAX_ROI_CSRC_CORE_REGISTRY_H_
