#include "core/registry.h"

#include <map>
#include <string>
#include <vector>

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

void add(Platform platform, const char* name, XLA_FFI_Handler* handler) {
  Registry& r = registry();
  const char* where = platform == Platform::kCpu ? "cpu" : "CUDA";
  if (handler == nullptr) {
    r.errors.push_back(std::string("null ") + where + " handler for FFI target " + name);
  } else if (!r.targets[platform].emplace(name, handler).second) {
    r.errors.push_back(std::string("FFI target ") + name + " registered twice for " + where);
  }
}

}  // namespace

const TargetMap& registered_targets(Platform platform) { return registry().targets[platform]; }

const std::vector<std::string>& registration_errors() { return registry().errors; }

TargetRegistration::TargetRegistration(const char* name, XLA_FFI_Handler* cpu,
                                       XLA_FFI_Handler* cuda) {
  add(Platform::kCpu, name, cpu);
#ifdef JAX_ROI_WITH_CUDA
  add(Platform::kCuda, name, cuda);
#else
  (void)cuda;
#endif
}

}  // namespace jax_roi
