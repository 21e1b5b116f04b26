// Host scratch memory for the CPU kernels (they know no op, no FFI).
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

}  // namespace cpu
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_SCRATCH_H_
