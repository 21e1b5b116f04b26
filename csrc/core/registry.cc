#include "core/registry.h"

#include <map>
#include <string>
#include <vector>

#if defined(JAX_ROI_WITH_CUDA) || defined(JAX_ROI_CUDA_EMULATION)
#include "core/cuda_backend.h"
#endif

namespace jax_roi {
namespace {

// Constructed on first use: registrations run in static constructors of
// other translation units, in no particular order.
struct Registry {
  std::map<Platform, TargetMap> targets;
  std::vector<std::string> errors;
};

Registry& registry() {
  static Registry* r = new Registry();  // Never destroyed: no exit-order issues.
  return *r;
}

const char* platform_name(Platform platform) {
  switch (platform) {
    case Platform::kCpu:
      return "cpu";
    case Platform::kCuda:
      return "CUDA";
    case Platform::kCudaEmulation:
      return "cpu (CUDA emulation)";
  }
  return "?";
}

void add(Platform platform, const std::string& name, Stages stages) {
  Registry& r = registry();
  const char* where = platform_name(platform);
  if (stages.execute == nullptr) {
    r.errors.push_back(std::string("null ") + where + " handler for FFI target " + name);
  } else if (!r.targets[platform].emplace(name, stages).second) {
    r.errors.push_back("FFI target " + name + " registered twice for " + where);
  }
}

}  // namespace

const TargetMap& registered_targets(Platform platform) {
  static const TargetMap kNone;
  const Registry& r = registry();
  const auto it = r.targets.find(platform);
  return it != r.targets.end() ? it->second : kNone;
}

const std::vector<std::string>& registration_errors() { return registry().errors; }

TargetRegistration::TargetRegistration(const char* name, XLA_FFI_Handler* cpu,
                                       XLA_FFI_Handler* cuda) {
  add(Platform::kCpu, name, Stages{nullptr, cpu});
#if defined(JAX_ROI_WITH_CUDA)
  add(Platform::kCuda, name, Stages{JaxRoiPreloadCudaKernels, cuda});
#elif defined(JAX_ROI_CUDA_EMULATION)
  add(Platform::kCudaEmulation, std::string(name) + JAX_ROI_CUDA_EMULATION_SUFFIX,
      Stages{JaxRoiPreloadCudaKernels, cuda});
#else
  (void)cuda;
#endif
}

}  // namespace jax_roi
