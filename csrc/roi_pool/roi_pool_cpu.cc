// RoIPool CPU kernels.
//
// Forward: one task per block of RoIs; each RoI's bin edges are computed
// once and reused for every channel. The work runs in NHWC order: the
// running maxima of a block of channels advance together, pixel by pixel,
// the channel loop innermost and branch-free (vectorised; for float, blocks
// of 32 channels held in vector registers), with window_max's comparison rule
// and order: row-major, strict '>', from -FLT_MAX. NCHW input is copied once
// into NHWC scratch when its RoIs read the map often enough to pay for the
// copy (core/repack.h), and read per channel plane with window_max otherwise;
// the values, and so the results, are the same either way.
//
// Backward: one task per block of channels, so no two tasks write the same
// element and each element receives its contributions in (RoI, bin) order
// whatever the number of threads: deterministic, torchvision's CPU order.
// Without a saved argmax, the tasks find each bin's winners again from the
// features (pool_backward_from_features): the same winners, the same bits.
#include <algorithm>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <optional>
#include <vector>

#include "core/box.h"
#include "core/dims.h"
#include "core/kernel.h"
#include "core/math.h"
#include "core/repack.h"
#include "core/scratch.h"
#include "core/streaming.h"
#include "core/task_runner.h"
#include "core/types.h"
#include "roi_pool/roi_pool_kernels.h"
#include "roi_pool/roi_pool_math.h"

namespace jax_roi {
namespace cpu {
namespace {

// The row and column windows of a RoI's bins (empty for an empty RoI).
template <typename C>
void pool_windows(const PoolRoi<C>& r, const RoiDims& d, std::vector<Window>* rows,
                  std::vector<Window>* cols) {
  rows->resize(d.pooled_height);
  cols->resize(d.pooled_width);
  for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
    (*rows)[ph] = r.empty ? Window{0, 0} : pool_bin(ph, r.bin_h, r.start_h, d.height);
  }
  for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
    (*cols)[pw] = r.empty ? Window{0, 0} : pool_bin(pw, r.bin_w, r.start_w, d.width);
  }
}

// Maxima, and first-maximum indices h * W + w when index != nullptr, of
// channels [0, n) of an NHWC image (pixel (h, w) at image + (h * W + w) * Cn)
// over one non-empty window.
template <typename T>
void window_max_channels(const T* image, int64_t W, int64_t Cn, Window rows, Window cols, int64_t n,
                         acc_t<T>* best, int32_t* index) {
  using A = acc_t<T>;
  std::fill_n(best, n, pool_initial_max<A>());
  if (index != nullptr) std::fill_n(index, n, -1);
  for (int64_t h = rows.start; h < rows.end; ++h) {
    for (int64_t w = cols.start; w < cols.end; ++w) {
      const T* __restrict pixel = image + (h * W + w) * Cn;
      A* __restrict bp = best;
      if (index == nullptr) {
        for (int64_t c = 0; c < n; ++c) {
          const A v = load(pixel + c);
          bp[c] = v > bp[c] ? v : bp[c];
        }
        continue;
      }
      int32_t* __restrict ip = index;
      const int32_t hw = static_cast<int32_t>(h * W + w);
      for (int64_t c = 0; c < n; ++c) {
        const A v = load(pixel + c);
        const bool better = v > bp[c];
        bp[c] = better ? v : bp[c];
        ip[c] = better ? hw : ip[c];
      }
    }
  }
}

#if defined(__GNUC__) || defined(__clang__)
// float: blocks of kLanes * kVectors channels whose maxima and indices stay in
// vector registers for the whole window (GCC/Clang vector extensions: 32-byte
// vectors with AVX, 16-byte ones without).
#if defined(__AVX__)
#define JAX_ROI_POOL_VECTOR_BYTES 32
#else
// Without AVX, GCC lowers 32-byte vectors lane by lane through the stack
// (13x slower in the x86-64-v2 build); 16-byte ones map onto SSE registers.
#define JAX_ROI_POOL_VECTOR_BYTES 16
#endif
typedef float f32xN __attribute__((vector_size(JAX_ROI_POOL_VECTOR_BYTES)));
typedef int32_t i32xN __attribute__((vector_size(JAX_ROI_POOL_VECTOR_BYTES)));
constexpr int64_t kLanes = JAX_ROI_POOL_VECTOR_BYTES / 4, kVectors = 4, kBlock = kLanes * kVectors;

template <bool kWithIndex>
void window_max_block(const float* image, int64_t W, int64_t Cn, Window rows, Window cols,
                      float* best_out, int32_t* index_out) {
  f32xN best[kVectors];
  i32xN index[kVectors];
  for (int64_t v = 0; v < kVectors; ++v) {
    for (int64_t l = 0; l < kLanes; ++l) {
      best[v][l] = pool_initial_max<float>();
      index[v][l] = -1;
    }
  }
  for (int64_t h = rows.start; h < rows.end; ++h) {
    for (int64_t w = cols.start; w < cols.end; ++w) {
      const float* pixel = image + (h * W + w) * Cn;
      const int32_t hw = static_cast<int32_t>(h * W + w);
      for (int64_t v = 0; v < kVectors; ++v) {
        f32xN x;
        std::memcpy(&x, pixel + v * kLanes, sizeof(x));
        const i32xN better = x > best[v];
        best[v] = better ? x : best[v];
        if (kWithIndex) index[v] = better ? hw : index[v];
      }
    }
  }
  std::memcpy(best_out, best, sizeof(best));
  if (kWithIndex) std::memcpy(index_out, index, sizeof(index));
}

void window_max_channels(const float* image, int64_t W, int64_t Cn, Window rows, Window cols,
                         int64_t n, float* best, int32_t* index) {
  int64_t c = 0;
  for (; c + kBlock <= n; c += kBlock) {
    if (index != nullptr) {
      window_max_block<true>(image + c, W, Cn, rows, cols, best + c, index + c);
    } else {
      window_max_block<false>(image + c, W, Cn, rows, cols, best + c, nullptr);
    }
  }
  if (c < n) {
    window_max_channels<float>(image + c, W, Cn, rows, cols, n - c, best + c,
                               index != nullptr ? index + c : nullptr);
  }
}
#endif

// The forward of RoIs [k_begin, k_end) from NHWC pixels (image n at
// pixels + n * H * W * Cn). The output (and argmax) is NHWC, or NCHW when
// nchw_output: each RoI's block is then made in NHWC order in scratch and
// transposed into place, so that every store is contiguous.
template <typename T, typename C>
void pool_forward_nhwc(const PoolForwardArgs<T, C>& a, const T* pixels, bool nchw_output,
                       int64_t k_begin, int64_t k_end) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const C scale = static_cast<C>(a.spatial_scale);
  const int64_t H = d.height, W = d.width, Cn = d.channels;
  const int64_t PW = d.pooled_width, nbins = d.pooled_height * PW;
  std::vector<Window> rows, cols;
  std::vector<A> best(Cn);
  std::vector<int32_t> best_index(Cn);
  int32_t* index = a.argmax != nullptr ? best_index.data() : nullptr;
  std::vector<T> out_block(nchw_output ? nbins * Cn : 0);
  std::vector<int32_t> arg_block(nchw_output && index != nullptr ? nbins * Cn : 0);
  const bool streamed = !nchw_output && stream_output(a.output, output_count(d), Cn);
  for (int64_t k = k_begin; k < k_end; ++k) {
    const Box<C> box = read_box(a.rois, k, d);
    pool_windows(pool_roi(box, scale, d), d, &rows, &cols);
    T* out_k = nchw_output ? out_block.data() : a.output + k * nbins * Cn;
    int32_t* arg_k = index == nullptr ? nullptr
                     : nchw_output    ? arg_block.data()
                                      : a.argmax + k * nbins * Cn;
    for (int64_t bin = 0; bin < nbins; ++bin) {
      const Window y = rows[bin / PW], x = cols[bin % PW];
      T* out = out_k + bin * Cn;
      if (y.empty() || x.empty()) {
        std::fill(best.begin(), best.end(), A(0));
        store_row(out, best.data(), Cn, streamed);
        if (arg_k != nullptr) std::fill_n(arg_k + bin * Cn, Cn, -1);
        continue;
      }
      window_max_channels(pixels + box.image * H * W * Cn, W, Cn, y, x, Cn, best.data(), index);
      store_row(out, best.data(), Cn, streamed);
      if (arg_k != nullptr) std::copy_n(best_index.data(), Cn, arg_k + bin * Cn);
    }
    if (nchw_output) {
      transpose_block(out_k, a.output + k * Cn * nbins, nbins, Cn);
      if (arg_k != nullptr) transpose_block(arg_k, a.argmax + k * Cn * nbins, nbins, Cn);
    }
  }
}

// The forward of RoIs [k_begin, k_end) straight from NCHW planes.
template <typename T, typename C>
void pool_forward_nchw(const PoolForwardArgs<T, C>& a, int64_t k_begin, int64_t k_end) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const C scale = static_cast<C>(a.spatial_scale);
  const int64_t H = d.height, W = d.width, Cn = d.channels, HW = H * W;
  const int64_t PH = d.pooled_height, PW = d.pooled_width, nbins = PH * PW;
  std::vector<Window> rows, cols;
  for (int64_t k = k_begin; k < k_end; ++k) {
    const Box<C> box = read_box(a.rois, k, d);
    const PoolRoi<C> r = pool_roi(box, scale, d);
    pool_windows(r, d, &rows, &cols);
    for (int64_t c = 0; c < Cn; ++c) {
      const T* plane = r.empty ? nullptr : a.features + (box.image * Cn + c) * HW;
      T* out = a.output + (k * Cn + c) * nbins;
      int32_t* arg = a.argmax != nullptr ? a.argmax + (k * Cn + c) * nbins : nullptr;
      for (int64_t ph = 0; ph < PH; ++ph) {
        for (int64_t pw = 0; pw < PW; ++pw) {
          A value = A(0);
          int32_t index = -1;
          if (!rows[ph].empty() && !cols[pw].empty()) {
            value = window_max(plane, W, int64_t{1}, W, rows[ph], cols[pw], &index);
          }
          store(out + ph * PW + pw, value);
          if (arg != nullptr) arg[ph * PW + pw] = index;
        }
      }
    }
  }
}

// How many (h, w) positions the RoIs' windows read, summed over RoIs.
template <typename T, typename C>
int64_t pool_pixels_read(const PoolForwardArgs<T, C>& a) {
  const RoiDims& d = a.dims;
  const C scale = static_cast<C>(a.spatial_scale);
  int64_t total = 0;
  for (int64_t k = 0; k < d.num_rois; ++k) {
    const PoolRoi<C> r = pool_roi(read_box(a.rois, k, d), scale, d);
    if (r.empty) continue;
    int64_t rows = 0, cols = 0;
    for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
      const Window y = pool_bin(ph, r.bin_h, r.start_h, d.height);
      rows += std::max<int64_t>(y.end - y.start, 0);
    }
    for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
      const Window x = pool_bin(pw, r.bin_w, r.start_w, d.width);
      cols += std::max<int64_t>(x.end - x.start, 0);
    }
    total += rows * cols;
  }
  return total;
}

// grad[index[c] * hw_stride + c * c_stride] += g[c * g_stride], c < n, for
// index[c] >= 0 (the winners of one bin's channels); grad holds `extent`
// elements.
template <typename A, typename T>
inline void scatter_channels(A* __restrict grad, int64_t hw_stride, int64_t c_stride,
                             const T* __restrict g, int64_t g_stride,
                             const int32_t* __restrict index, int64_t n, int64_t /*extent*/) {
  for (int64_t c = 0; c < n; ++c) {
    const int64_t hw = index[c];
    if (hw >= 0) grad[hw * hw_stride + c * c_stride] += load(g + c * g_stride);
  }
}

#if defined(__AVX512F__)
// float: 16 channels at a time with masked gathers, an add and a masked
// scatter. The 16 addresses are distinct (one per channel) and each is
// updated once: the scalar loop's bits. Offsets are 32-bit: only when the
// image's gradient (`extent` elements from grad) has fewer than 2^31.
inline void scatter_channels(float* __restrict grad, int64_t hw_stride, int64_t c_stride,
                             const float* __restrict g, int64_t g_stride,
                             const int32_t* __restrict index, int64_t n, int64_t extent) {
  int64_t c = 0;
  constexpr int64_t kLimit = int64_t{1} << 31;
  if (extent < kLimit && n * g_stride < kLimit) {
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i hw_step = _mm512_set1_epi32(static_cast<int32_t>(hw_stride));
    const __m512i c_at =
        _mm512_mullo_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(c_stride)));
    const __m512i g_at =
        _mm512_mullo_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(g_stride)));
    for (; c + 16 <= n; c += 16) {
      const __m512i hw = _mm512_loadu_si512(index + c);
      const __mmask16 won = _mm512_cmpge_epi32_mask(hw, _mm512_setzero_si512());
      const __m512i at = _mm512_add_epi32(
          _mm512_mullo_epi32(hw, hw_step),
          _mm512_add_epi32(c_at, _mm512_set1_epi32(static_cast<int32_t>(c * c_stride))));
      const float* gc = g + c * g_stride;
      const __m512 add = g_stride == 1
                             ? _mm512_loadu_ps(gc)
                             : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), won, g_at, gc, 4);
      const __m512 old = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), won, at, grad, 4);
      _mm512_mask_i32scatter_ps(grad, won, at, _mm512_add_ps(old, add), 4);
    }
  }
  for (; c < n; ++c) {
    const int64_t hw = index[c];
    if (hw >= 0) grad[hw * hw_stride + c * c_stride] += g[c * g_stride];
  }
}
#endif

// Bins of at most kDenseWindow positions: grad[hw * Cn + c] += g[c] for the
// channels c < n whose winner index[c] is hw, position by position over the
// window, one masked vector add per 16 channels instead of a gather and a
// scatter per 16 channels. Each element still receives this bin's one
// contribution, so the bits are the scatter's. Most faster-rcnn bins are
// this small (median 2-3 positions); larger windows cost more masked adds
// than the scatter saves. Backward alone, faster-rcnn NHWC, medians of 80
// calls in alternation: K=300 8.46 -> 7.66 ms, K=128 3.37 -> 3.19 ms (limit
// 9: 8.06 / 3.19 ms; 16: 8.76 / 3.45 ms). Returns false, having done
// nothing, for larger windows and where there is no such vector path.
constexpr int64_t kDenseWindow = 4;

template <typename A, typename T>
inline bool add_at_winners_dense(A*, int64_t, int64_t, Window, Window, const T*, const int32_t*,
                                 int64_t) {
  return false;
}

#if defined(__AVX512F__)
inline bool add_at_winners_dense(float* __restrict grad, int64_t W, int64_t Cn, Window rows,
                                 Window cols, const float* __restrict g,
                                 const int32_t* __restrict index, int64_t n) {
  if ((rows.end - rows.start) * (cols.end - cols.start) > kDenseWindow) return false;
  const int64_t tail = n % 16;
  const __mmask16 tail_lanes = static_cast<__mmask16>((1u << tail) - 1);
  for (int64_t h = rows.start; h < rows.end; ++h) {
    for (int64_t w = cols.start; w < cols.end; ++w) {
      const int32_t hw = static_cast<int32_t>(h * W + w);
      const __m512i at = _mm512_set1_epi32(hw);
      float* __restrict line = grad + hw * Cn;
      int64_t c = 0;
      for (; c + 16 <= n; c += 16) {
        const __mmask16 won = _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(index + c), at);
        const __m512 sum = _mm512_add_ps(_mm512_loadu_ps(line + c), _mm512_loadu_ps(g + c));
        _mm512_mask_storeu_ps(line + c, won, sum);
      }
      if (tail != 0) {
        const __mmask16 won = _mm512_mask_cmpeq_epi32_mask(
            tail_lanes, _mm512_maskz_loadu_epi32(tail_lanes, index + c), at);
        const __m512 sum =
            _mm512_add_ps(_mm512_maskz_loadu_ps(won, line + c), _mm512_maskz_loadu_ps(won, g + c));
        _mm512_mask_storeu_ps(line + c, won, sum);
      }
    }
  }
  return true;
}
#endif

// The backward without a saved argmax (PoolBackwardArgs::argmax == nullptr):
// each task owns a block of channels and, RoI by RoI and bin by bin, finds
// the winners of its channels again (window_max_channels on NHWC pixels:
// the features, or an NHWC copy of NCHW features when the copy pays;
// window_max on each NCHW plane otherwise) and adds the cotangent there.
// The same winners and the same (RoI, bin) order as the argmax backward: the
// same bits, without writing or reading an int32 per output.
template <typename T, typename C>
void pool_backward_from_features(const PoolBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const C scale = static_cast<C>(a.spatial_scale);
  const int64_t W = d.width, HW = d.height * W, Cn = d.channels;
  const int64_t PW = d.pooled_width, nbins = d.pooled_height * PW;
  const bool nhwc = d.layout == Layout::kNHWC;
  const T* pixels = nhwc ? a.features : nullptr;
  std::optional<ScratchLease> scratch;
  if (!nhwc) {
    const PoolForwardArgs<T, C> f{d, a.spatial_scale, a.features, a.rois, nullptr, nullptr};
    if (repack_pays(pool_pixels_read(f), d.batch * HW, Cn, sizeof(T))) {
      scratch.emplace(sizeof(T) * static_cast<size_t>(d.batch * HW * Cn));
      repack_nchw_to_nhwc(a.features, scratch->as<T>(), d.batch, Cn, HW, runner);
      pixels = scratch->as<T>();
    }
  }
  zero_parallel(a.grad_features, d.batch * Cn * HW, runner);
  const int64_t grad_c = nhwc ? 1 : HW, g_c = nhwc ? 1 : nbins;
  parallel_ranges(runner, Cn, channel_blocks(runner, nhwc, Cn), [&](int64_t c0, int64_t c1) {
    const int64_t n = c1 - c0;
    std::vector<Window> rows, cols;
    std::vector<A> best(n);
    std::vector<int32_t> index(n);
    for (int64_t k = 0; k < d.num_rois; ++k) {
      const Box<C> box = read_box(a.rois, k, d);
      if (box.image < 0) continue;
      pool_windows(pool_roi(box, scale, d), d, &rows, &cols);
      A* grad = a.grad_features + box.image * Cn * HW + c0 * grad_c;
      const T* g = a.grad_output + k * Cn * nbins + c0 * g_c;
      for (int64_t bin = 0; bin < nbins; ++bin) {
        const Window y = rows[bin / PW], x = cols[bin % PW];
        if (y.empty() || x.empty()) continue;
        if (pixels != nullptr) {
          window_max_channels(pixels + box.image * HW * Cn + c0, W, Cn, y, x, n, best.data(),
                              index.data());
        } else {
          for (int64_t c = 0; c < n; ++c) {
            window_max(a.features + (box.image * Cn + c0 + c) * HW, W, int64_t{1}, W, y, x,
                       &index[c]);
          }
        }
        if (nhwc) {
          if (add_at_winners_dense(grad, W, Cn, y, x, g + bin * Cn, index.data(), n)) continue;
          scatter_channels(grad, Cn, 1, g + bin * Cn, 1, index.data(), n, HW * Cn);
        } else {
          scatter_channels(grad, 1, HW, g + bin, nbins, index.data(), n, HW * Cn);
        }
      }
    }
  });
}

}  // namespace

template <typename T, typename C>
void roi_pool_forward(const PoolForwardArgs<T, C>& args, TaskRunner& runner) {
  const RoiDims& d = args.dims;
  if (d.channels == 0 || d.pooled_height == 0 || d.pooled_width == 0) return;
  advise_huge_pages(args.output, output_count(d));
  advise_huge_pages(args.argmax, output_count(d));
  const int64_t parts = 4 * runner.concurrency();
  if (d.layout == Layout::kNHWC) {
    parallel_ranges(runner, d.num_rois, parts, [&](int64_t begin, int64_t end) {
      pool_forward_nhwc(args, args.features, false, begin, end);
      streaming_fence();
    });
    return;
  }
  const int64_t HW = d.height * d.width;
  if (repack_pays(pool_pixels_read(args), d.batch * HW, d.channels, sizeof(T))) {
    const ScratchLease scratch(sizeof(T) * static_cast<size_t>(d.batch * HW * d.channels));
    T* pixels = scratch.as<T>();
    repack_nchw_to_nhwc(args.features, pixels, d.batch, d.channels, HW, runner);
    parallel_ranges(runner, d.num_rois, parts, [&](int64_t begin, int64_t end) {
      pool_forward_nhwc(args, pixels, true, begin, end);
    });
    return;
  }
  parallel_ranges(runner, d.num_rois, parts,
                  [&](int64_t begin, int64_t end) { pool_forward_nchw(args, begin, end); });
}

template <typename T, typename C>
void roi_pool_backward(const PoolBackwardArgs<T, C>& a, TaskRunner& runner) {
  advise_huge_pages(a.grad_features, feature_count(a.dims));
  if (a.argmax == nullptr) {
    pool_backward_from_features(a, runner);
    return;
  }
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t HW = d.height * d.width;
  const int64_t Cn = d.channels;
  const int64_t nbins = d.pooled_height * d.pooled_width;

  const int64_t grad_size = d.batch * Cn * HW;
  zero_parallel(a.grad_features, grad_size, runner);

  const int64_t blocks = channel_blocks(runner, d.layout == Layout::kNHWC, Cn);
  parallel_ranges(runner, Cn, blocks, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t k = 0; k < d.num_rois; ++k) {
      const int64_t image = read_box(a.rois, k, d).image;
      if (image < 0) continue;
      if (d.layout == Layout::kNCHW) {
        for (int64_t c = c_begin; c < c_end; ++c) {
          const int32_t* arg = a.argmax + (k * Cn + c) * nbins;
          const T* g = a.grad_output + (k * Cn + c) * nbins;
          A* plane = a.grad_features + (image * Cn + c) * HW;
          for (int64_t i = 0; i < nbins; ++i) {
            const int64_t hw = arg[i];
            if (hw >= 0 && hw < HW) plane[hw] += load(g + i);
          }
        }
        continue;
      }
      A* pixels = a.grad_features + image * HW * Cn;
      const int32_t* arg = a.argmax + k * nbins * Cn;
      const T* g = a.grad_output + k * nbins * Cn;
      for (int64_t i = 0; i < nbins; ++i) {
        for (int64_t c = c_begin; c < c_end; ++c) {
          const int64_t hw = arg[i * Cn + c];
          if (hw >= 0 && hw < HW) pixels[hw * Cn + c] += load(g + i * Cn + c);
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace jax_roi

JAX_ROI_INSTANTIATE_CPU_KERNEL(roi_pool_forward, PoolForwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(roi_pool_backward, PoolBackwardArgs)
