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

#if defined(__GNUC__)
#define JAX_ROI_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define JAX_ROI_ALWAYS_INLINE inline
#endif

#if defined(__AVX__)
#include <immintrin.h>
#endif

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

// Transposes of 4-byte values (float, int32) in 8 x 8 register tiles where
// the compiler targets AVX: moves only, so every bit pattern (NaN payloads,
// subnormals) is kept.
template <typename T>
constexpr bool kTile8x8 =
#if defined(__AVX__)
    sizeof(T) == 4;
#else
    false;
#endif

#if defined(__AVX__)
// Transposes the 8 x 8 tile held in rows r[0..8) in registers: afterwards,
// r[j] holds column j.
JAX_ROI_ALWAYS_INLINE void transpose_registers_8x8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}
#endif

// dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < 8.
template <typename T>
JAX_ROI_ALWAYS_INLINE void transpose_8x8(const T* src, int64_t src_stride, T* dst,
                                         int64_t dst_stride) {
#if defined(__AVX__)
  if constexpr (kTile8x8<T>) {
    const float* s = reinterpret_cast<const float*>(src);
    float* d = reinterpret_cast<float*>(dst);
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * src_stride);
    transpose_registers_8x8(r);
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(d + j * dst_stride, r[j]);
    return;
  }
#endif
  for (int64_t j = 0; j < 8; ++j) {
    for (int64_t i = 0; i < 8; ++i) dst[j * dst_stride + i] = src[i * src_stride + j];
  }
}

#if defined(__AVX512F__) && defined(__AVX512VL__)
// Edge tiles in registers too: masked loads and stores (which touch no
// element outside the mask) of 4-byte values.
template <typename T>
constexpr bool kPartialTiles = sizeof(T) == 4;

// transpose_8x8 of the tile's first `rows` rows and `cols` columns (each
// 1..8); nothing outside them is read, nor written but, with zero_pad, the
// zeros that fill each written row of dst up to 8 values.
template <typename T>
JAX_ROI_ALWAYS_INLINE void transpose_8x8_partial(const T* src, int64_t src_stride, T* dst,
                                                 int64_t dst_stride, int rows, int cols,
                                                 bool zero_pad) {
  const float* s = reinterpret_cast<const float*>(src);
  float* d = reinterpret_cast<float*>(dst);
  const __mmask8 load_mask = static_cast<__mmask8>((1u << cols) - 1);
  const __mmask8 store_mask = zero_pad ? __mmask8{0xFF} : static_cast<__mmask8>((1u << rows) - 1);
  __m256 r[8];
  for (int i = 0; i < 8; ++i) {
    r[i] = i < rows ? _mm256_maskz_loadu_ps(load_mask, s + i * src_stride) : _mm256_setzero_ps();
  }
  transpose_registers_8x8(r);
  for (int j = 0; j < cols; ++j) _mm256_mask_storeu_ps(d + j * dst_stride, store_mask, r[j]);
}
#else
template <typename T>
constexpr bool kPartialTiles = false;

template <typename T>
inline void transpose_8x8_partial(const T* src, int64_t src_stride, T* dst, int64_t dst_stride,
                                  int rows, int cols, bool zero_pad) {
  for (int j = 0; j < cols; ++j) {
    for (int i = 0; i < rows; ++i) dst[j * dst_stride + i] = src[i * src_stride + j];
    for (int i = rows; zero_pad && i < 8; ++i) dst[j * dst_stride + i] = T{};  // zero bits
  }
}
#endif

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols:
// 8 x 8 tiles, then the edges (in registers too where the compiler targets
// AVX-512VL: a 21 x 49 block is a quarter edges), else one by one. With
// zero_pad, dst[c * dst_stride + r] = 0 for r from rows up to the next
// multiple of 8 (lanes a kernel reads in whole blocks of 8). The tiles go
// row of tiles by row of tiles, or, with columns_outer, column by column
// (transpose_block).
template <typename T>
void transpose(const T* src, int64_t src_stride, T* dst, int64_t dst_stride, int64_t rows,
               int64_t cols, bool zero_pad = false, bool columns_outer = false) {
  if constexpr (kPartialTiles<T>) {
    const auto tile = [&](int64_t r, int64_t c) {
      const int rr = static_cast<int>(std::min<int64_t>(8, rows - r));
      const int cc = static_cast<int>(std::min<int64_t>(8, cols - c));
      if (rr == 8 && cc == 8) {
        transpose_8x8(src + r * src_stride + c, src_stride, dst + c * dst_stride + r, dst_stride);
      } else {
        transpose_8x8_partial(src + r * src_stride + c, src_stride, dst + c * dst_stride + r,
                              dst_stride, rr, cc, zero_pad);
      }
    };
    if (columns_outer) {
      for (int64_t c = 0; c < cols; c += 8) {
        for (int64_t r = 0; r < rows; r += 8) tile(r, c);
      }
    } else {
      for (int64_t r = 0; r < rows; r += 8) {
        for (int64_t c = 0; c < cols; c += 8) tile(r, c);
      }
    }
    return;
  }
  const int64_t rows8 = rows - rows % 8, cols8 = cols - cols % 8;
  if (columns_outer) {
    for (int64_t c = 0; c < cols8; c += 8) {
      for (int64_t r = 0; r < rows8; r += 8) {
        transpose_8x8(src + r * src_stride + c, src_stride, dst + c * dst_stride + r, dst_stride);
      }
    }
  }
  for (int64_t r = 0; r < rows8; r += 8) {
    for (int64_t c = 0; !columns_outer && c < cols8; c += 8) {
      transpose_8x8(src + r * src_stride + c, src_stride, dst + c * dst_stride + r, dst_stride);
    }
    for (int64_t c = cols8; c < cols; ++c) {
      for (int64_t i = r; i < r + 8; ++i) dst[c * dst_stride + i] = src[i * src_stride + c];
    }
  }
  for (int64_t r = rows8; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
  }
  if (zero_pad && rows % 8 != 0) {
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t r = rows; r < rows8 + 8; ++r) dst[c * dst_stride + r] = T{};
    }
  }
}

// Copies at least this large bypass the caches (they would not stay there
// for the kernel that reads them anyway); smaller ones stay for it.
constexpr int64_t kStreamingRepackBytes = int64_t{32} << 20;

#if defined(__AVX__)
// transpose() of a (channels x positions) block into rows of `channels`
// values whose 16-channel groups are whole 64-byte lines of dst: each line
// is written at once with non-temporal stores, so the OS-fresh or evicted
// destination is never read first. Needs 4-byte T, channels % 16 == 0,
// dst 64-byte aligned; positions % 8 == 0. The caller fences.
template <typename T>
void transpose_streaming(const T* src, int64_t src_stride, T* dst, int64_t channels,
                         int64_t positions) {
  const float* s = reinterpret_cast<const float*>(src);
  float* d = reinterpret_cast<float*>(dst);
  for (int64_t c = 0; c < channels; c += 16) {
    for (int64_t p = 0; p < positions; p += 8) {
      __m256 a[8], b[8];
      for (int i = 0; i < 8; ++i) {
        a[i] = _mm256_loadu_ps(s + (c + i) * src_stride + p);
        b[i] = _mm256_loadu_ps(s + (c + 8 + i) * src_stride + p);
      }
      transpose_registers_8x8(a);
      transpose_registers_8x8(b);
      for (int j = 0; j < 8; ++j) {
        float* line = d + (p + j) * channels + c;
        _mm256_stream_ps(line, a[j]);
        _mm256_stream_ps(line + 8, b[j]);
      }
    }
  }
}

// The inverse direction: transpose() of a (positions x channels) block into
// `channels` rows of dst (row stride dst_stride) whose 16-position groups are
// whole 64-byte lines, each written at once with non-temporal stores. Needs
// 4-byte T, channels % 8 == 0, positions % 16 == 0 and every row's start
// 64-byte aligned (dst, and dst_stride * 4 a multiple of 64). Channel group
// by channel group, so that each pass writes 8 rows in order while the
// block's source stays in L2. The caller fences.
template <typename T>
void transpose_streaming_to_rows(const T* src, int64_t channels, T* dst, int64_t dst_stride,
                                 int64_t positions) {
  const float* s = reinterpret_cast<const float*>(src);
  float* d = reinterpret_cast<float*>(dst);
  for (int64_t c = 0; c < channels; c += 8) {
    for (int64_t p = 0; p < positions; p += 16) {
      __m256 a[8], b[8];
      for (int i = 0; i < 8; ++i) {
        a[i] = _mm256_loadu_ps(s + (p + i) * channels + c);
        b[i] = _mm256_loadu_ps(s + (p + 8 + i) * channels + c);
      }
      transpose_registers_8x8(a);
      transpose_registers_8x8(b);
      for (int j = 0; j < 8; ++j) {
        float* line = d + (c + j) * dst_stride + p;
        _mm256_stream_ps(line, a[j]);
        _mm256_stream_ps(line + 8, b[j]);
      }
    }
  }
}
#endif

// dst[(n * HW + p) * C + c] = src[(n * C + c) * HW + p]: tasks own runs of
// kTileP positions of one image, all channels.
template <typename T>
void repack_nchw_to_nhwc(const T* src, T* dst, int64_t batch, int64_t channels, int64_t hw,
                         TaskRunner& runner) {
  constexpr int64_t kTileP = 256;  // 62 MB on two threads: 12.8 ms (64: 16.7 ms, 1024: 21.5 ms)
  const int64_t p_tiles = (hw + kTileP - 1) / kTileP;
#if defined(__AVX__)
  const bool streaming = kTile8x8<T> && channels % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(dst) % 64 == 0 &&
                         batch * channels * hw * int64_t{sizeof(T)} >= kStreamingRepackBytes;
#endif
  parallel_ranges(runner, batch * p_tiles, 4 * runner.concurrency(), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / p_tiles;
      int64_t p0 = (t % p_tiles) * kTileP;
      const int64_t p1 = std::min(hw, p0 + kTileP);
#if defined(__AVX__)
      if (streaming) {
        const int64_t whole = (p1 - p0) / 8 * 8;
        transpose_streaming(src + n * channels * hw + p0, hw, dst + (n * hw + p0) * channels,
                            channels, whole);
        p0 += whole;
      }
#endif
      // (channels x positions) block of the NCHW image -> (positions x channels).
      if (p1 > p0) {
        transpose(src + n * channels * hw + p0, hw, dst + (n * hw + p0) * channels, channels,
                  channels, p1 - p0);
      }
    }
#if defined(__AVX__)
    _mm_sfence();  // the streamed lines, before the task's end is published
#endif
  });
}

// The inverse: dst[(n * C + c) * HW + p] = src[(n * HW + p) * C + c].
// Tasks own runs of kTileP positions of one image, all channels (a 256 KB
// block for 256 channels, which stays in L2), written channel group by
// channel group: 8 rows of dst at a time, 1 KB of each. Large copies stream
// their whole lines. Writing row of tiles by row of tiles instead touched
// all C rows of dst (C pages) every 8 positions, half lines each: 124 MB
// (2 x 256 x 200 x 304) took 34-40 ms on two threads, against 14-21 ms now
// and 10-12 ms for a memcpy of the same bytes (`benchmarks/results/
// cpu-2026-12-01/README.md`).
template <typename T>
void repack_nhwc_to_nchw(const T* src, T* dst, int64_t batch, int64_t channels, int64_t hw,
                         TaskRunner& runner) {
  constexpr int64_t kTileP = 256;
  const int64_t p_tiles = (hw + kTileP - 1) / kTileP;
#if defined(__AVX__)
  const bool streaming = kTile8x8<T> && channels % 8 == 0 &&
                         reinterpret_cast<uintptr_t>(dst) % 64 == 0 &&
                         (hw * int64_t{sizeof(T)}) % 64 == 0 &&
                         batch * channels * hw * int64_t{sizeof(T)} >= kStreamingRepackBytes;
#endif
  parallel_ranges(runner, batch * p_tiles, 4 * runner.concurrency(), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / p_tiles;
      int64_t p0 = (t % p_tiles) * kTileP;
      const int64_t p1 = std::min(hw, p0 + kTileP);
#if defined(__AVX__)
      if (streaming) {
        const int64_t whole = (p1 - p0) / 16 * 16;
        transpose_streaming_to_rows(src + (n * hw + p0) * channels, channels,
                                    dst + n * channels * hw + p0, hw, whole);
        p0 += whole;
      }
#endif
      // (positions x channels) block of the NHWC image -> (channels x positions).
      if (p1 > p0) {
        transpose(src + (n * hw + p0) * channels, channels, dst + n * channels * hw + p0, hw,
                  p1 - p0, channels, /*zero_pad=*/false, /*columns_outer=*/true);
      }
    }
#if defined(__AVX__)
    _mm_sfence();  // the streamed lines, before the task's end is published
#endif
  });
}

// dst[c * rows + r] = src[r * cols + c]: one (rows x cols) block, e.g. a
// RoI's outputs made in NHWC order, into NCHW order.
//
// Column of tiles by column of tiles: each 8 rows of dst (8 x rows values,
// contiguous) are written whole while they are in L1. Row of tiles by row of
// tiles revisits every row of dst once per 8 rows of src: for a RoI's
// 49 x 512 block (100 KB, more than L1) that made faster-rcnn's NCHW forwards
// 5-15% slower (in-process A/B, medians of 64 calls: roi_pool K=128
// 2.46-2.55 -> 2.10-2.13 ms, K=300 4.87-6.20 -> 4.35-5.54 ms, prroi_pool
// K=300 7.49-7.53 -> 7.10-7.12 ms; mask-rcnn unchanged).
template <typename T>
void transpose_block(const T* src, T* dst, int64_t rows, int64_t cols) {
  transpose(src, cols, dst, rows, rows, cols, /*zero_pad=*/false, /*columns_outer=*/true);
}

}  // namespace cpu
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_REPACK_H_
