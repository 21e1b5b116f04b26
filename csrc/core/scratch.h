// Host memory for the CPU kernels (they know no op, no FFI): scratch
// buffers, and a page-size hint for the large buffers XLA hands them.
//
// A kernel that needs a large temporary buffer (e.g. the NHWC copy of an NCHW
// feature map, core/repack.h) takes a ScratchLease. Fresh memory of that size
// costs more than the work itself: the kernel maps and zeroes every page on
// first touch (for a 60 MB map, ~20 ms of page faults on the 2-core dev
// machine, more than the copy). So the process keeps one buffer, the largest
// leased so far up to kScratchRetainBytes, for the next lease; larger
// requests, and leases while it is out, get memory allocated and freed with
// the lease. Memory is uninitialised.
#ifndef JAX_ROI_CSRC_CORE_SCRATCH_H_
#define JAX_ROI_CSRC_CORE_SCRATCH_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>

namespace jax_roi {
namespace cpu {

// The most memory the process keeps between leases.
constexpr size_t kScratchRetainBytes = size_t{512} << 20;

// A buffer of at least `bytes` (64-byte aligned) for the lease's lifetime.
// Throws std::bad_alloc (which run_kernel turns into an error). Thread-safe.
class ScratchLease {
 public:
  explicit ScratchLease(size_t bytes);
  ~ScratchLease();
  ScratchLease(const ScratchLease&) = delete;
  ScratchLease& operator=(const ScratchLease&) = delete;

  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  bool owned_ = false;      // A fresh buffer, freed with the lease.
  bool from_kept_ = false;  // The process's kept buffer, returned with the lease.
};

// An object the process keeps between kernel calls for the memory it holds,
// e.g. the vectors of per-RoI sample caches that every call refills: their
// pages stay mapped, so a call does not fault them in afresh (for the
// mask-rcnn mask head, ~2,800 of its ~3,700 page faults a call). A lease
// takes the kept object (its contents are stale: the caller overwrites what
// it uses), or a new one while it is out. At the lease's end the object is kept again if
// no other is and bytes(object) <= kKeptObjectBytes, else freed.
// Thread-safe; one kept object per type T.
constexpr size_t kKeptObjectBytes = size_t{64} << 20;

template <typename T>
class KeptObjectLease {
 public:
  explicit KeptObjectLease(size_t (*bytes)(const T&)) : bytes_(bytes) {
    {
      const std::lock_guard<std::mutex> lock(slot().mutex);
      object_ = std::move(slot().object);
    }
    if (!object_) object_ = std::make_unique<T>();
  }
  ~KeptObjectLease() {
    if (bytes_(*object_) > kKeptObjectBytes) return;
    const std::lock_guard<std::mutex> lock(slot().mutex);
    if (!slot().object) slot().object = std::move(object_);
  }
  KeptObjectLease(const KeptObjectLease&) = delete;
  KeptObjectLease& operator=(const KeptObjectLease&) = delete;

  T& get() const { return *object_; }

 private:
  struct Slot {
    std::mutex mutex;
    std::unique_ptr<T> object;
  };
  static Slot& slot() {
    static Slot s;
    return s;
  }
  size_t (*bytes_)(const T&);
  std::unique_ptr<T> object_;
};

// Buffers of at least this many bytes are worth the hint below.
constexpr size_t kHugePageHintBytes = size_t{4} << 20;

// Asks the OS (Linux: madvise(MADV_HUGEPAGE), where transparent huge pages
// are in "madvise" mode, the common default) to back the 2 MiB-aligned
// pages inside [p, p + bytes) with huge pages when they are first touched.
// A hint only: contents never change, errors are ignored, other systems and
// buffers under kHugePageHintBytes get nothing. Kernels call it on the
// large outputs XLA allocates for them. glibc maps such buffers afresh on
// every call and the OS zeroes and maps them one 4 KiB page at a time when
// the kernel first writes them: for a 51 MB output on the 2-core dev machine,
// about 1 us per page, 12 ms in all; with 2 MiB pages, 25 faults.
void advise_huge_pages_bytes(void* p, size_t bytes);

// The same for `count` elements at p.
template <typename T>
void advise_huge_pages(T* p, int64_t count) {
  if (count > 0) advise_huge_pages_bytes(p, sizeof(T) * static_cast<size_t>(count));
}

}  // namespace cpu
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_SCRATCH_H_
