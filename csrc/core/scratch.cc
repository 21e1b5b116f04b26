#include "core/scratch.h"

#include <cstdlib>
#include <mutex>
#include <new>

namespace jax_roi {
namespace cpu {
namespace {

constexpr size_t kAlign = 64;

void* allocate(size_t bytes) {
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded == 0 ? kAlign : rounded);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

// The process's kept buffer (one, so that what is kept stays bounded
// whatever the number of threads calling the kernels).
struct Kept {
  std::mutex mutex;
  void* data = nullptr;
  size_t bytes = 0;
  bool leased = false;
  ~Kept() { std::free(data); }
};

Kept kept;

}  // namespace

ScratchLease::ScratchLease(size_t bytes) {
  if (bytes == 0) return;
  std::unique_lock<std::mutex> lock(kept.mutex);
  if (kept.leased || bytes > kScratchRetainBytes) {
    lock.unlock();
    data_ = allocate(bytes);
    owned_ = true;
    return;
  }
  if (kept.bytes < bytes) {
    std::free(kept.data);
    kept.data = nullptr;
    kept.bytes = 0;
    kept.data = allocate(bytes);
    kept.bytes = bytes;
  }
  kept.leased = true;
  data_ = kept.data;
  from_kept_ = true;
}

ScratchLease::~ScratchLease() {
  if (owned_) {
    std::free(data_);
  } else if (from_kept_) {
    const std::lock_guard<std::mutex> lock(kept.mutex);
    kept.leased = false;
  }
}

}  // namespace cpu
}  // namespace jax_roi
