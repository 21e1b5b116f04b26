#include "core/scratch.h"

#include <cstdlib>
#include <mutex>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace jax_roi {
namespace cpu {
namespace {

constexpr size_t kAlign = 64;
constexpr size_t kHugePage = size_t{2} << 20;

// Large buffers start on a huge page boundary, and get the hint.
void* allocate(size_t bytes) {
  const size_t align = bytes >= kHugePageHintBytes ? kHugePage : kAlign;
  const size_t rounded = (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded == 0 ? align : rounded);
  if (p == nullptr) throw std::bad_alloc();
  advise_huge_pages_bytes(p, rounded);
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

void advise_huge_pages_bytes(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p == nullptr || bytes < kHugePageHintBytes) return;
  const uintptr_t first = reinterpret_cast<uintptr_t>(p);
  const uintptr_t begin = (first + kHugePage - 1) & ~uintptr_t{kHugePage - 1};
  const uintptr_t end = (first + bytes) & ~uintptr_t{kHugePage - 1};
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

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
