// CPU layout helpers shared by the ops' CPU kernels (they know no op):
// an NCHW -> NHWC repack of a feature map into scratch memory, and the rule
// that decides when a kernel's NCHW path should run on such a copy.
//
// The NHWC kernels run their channel loop innermost over contiguous memory
// (vectorised), several times faster than the per-channel plane walks of the
// NCHW paths; for NCHW input whose RoIs read the map more than a fraction of
// a time over, copying the map once into NHWC scratch and running the NHWC
// loops (writing the NCHW output) is the faster way. The copy moves values
// unchanged, so results are bit for bit those of the NCHW loops.
#ifndef JAX_ROI_CSRC_CORE_REPACK_H_
#define JAX_ROI_CSRC_CORE_REPACK_H_

#include <algorithm>
#include <cstdint>

#include "core/task_runner.h"

namespace jax_roi {
namespace cpu {

// Largest NHWC scratch copy (bytes) a kernel makes; larger maps stay NCHW.
constexpr int64_t kRepackBudgetBytes = int64_t{2} << 30;

// Whether to repack: the RoIs read `pixels_read` (h, w) positions of the map
// (one read serves every channel), the map has `pixels` of them, and the
// copy fits the budget.
inline bool repack_pays(int64_t pixels_read, int64_t pixels, int64_t channels, int64_t itemsize) {
  if (pixels <= 0 || channels <= 0) return false;
  if (pixels * channels * itemsize > kRepackBudgetBytes) return false;
  return 4 * pixels_read >= pixels;
}

// dst[(n * HW + p) * C + c] = src[(n * C + c) * HW + p], in tiles of
// channels x positions so that reads and writes both stay in cache lines.
template <typename T>
void repack_nchw_to_nhwc(const T* src, T* dst, int64_t batch, int64_t channels, int64_t hw,
                         TaskRunner& runner) {
  constexpr int64_t kTileC = 16, kTileP = 64;
  const int64_t p_tiles = (hw + kTileP - 1) / kTileP;
  parallel_ranges(runner, batch * p_tiles, 4 * runner.concurrency(), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / p_tiles;
      const int64_t p0 = (t % p_tiles) * kTileP, p1 = std::min(hw, p0 + kTileP);
      const T* s = src + n * channels * hw;
      T* d = dst + n * hw * channels;
      for (int64_t c0 = 0; c0 < channels; c0 += kTileC) {
        const int64_t c1 = std::min(channels, c0 + kTileC);
        for (int64_t p = p0; p < p1; ++p) {
          for (int64_t c = c0; c < c1; ++c) d[p * channels + c] = s[c * hw + p];
        }
      }
    }
  });
}

// dst[c * rows + r] = src[r * cols + c]: one (rows x cols) block, e.g. a
// RoI's outputs made in NHWC order, into NCHW order; in 8 x 8 tiles.
template <typename T>
void transpose_block(const T* src, T* dst, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 8;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = std::min(rows, r0 + kTile);
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = std::min(cols, c0 + kTile);
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
      }
    }
  }
}

}  // namespace cpu
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_REPACK_H_
