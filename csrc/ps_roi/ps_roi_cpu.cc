// CPU kernels of the position-sensitive RoI ops.
//
// Bin (ph, pw) of output channel c reads input channel c * PH * PW + bin, so
// in either layout the C_out channels that one bin reads lie PH * PW apart.
//
// Bin path (when the RoIs read the map enough: bin_major_pays). Work items
// own (image, block of bins, block of output channels). Each item sees its
// bins with the C_out channels contiguous: NCHW input, a local map the item
// fills from its bins' planes (it stays in L2 while every RoI of the image
// passes over it); NHWC input, a copy of the whole map with each position's
// channels transposed (nhwc_to_bins). A bin's window (or samples) then runs
// over contiguous channels, 8 to 32 sums in registers. NCHW forward outputs
// go to bin-major staging, then into place. The backward sums an item's
// gradient in its zeroed maps (NCHW: the item's local map; NHWC: the copy,
// zeroed at once) and moves it into place (every element belongs to exactly
// one item; it receives its contributions in RoI order, then sample order:
// deterministic): the gradient itself is written once, with no zeroing pass.
//
// Direct path (few or small RoIs): forward, one task per block of RoIs, each
// RoI's geometry computed once and reused for every output channel;
// backward, one task per block of input channels, in RoI order.
//
// Every output's sum keeps the order of the formulas (ps_roi_math.h) on both
// paths, so the results are bit for bit the same.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/bilinear.h"
#include "core/box.h"
#include "core/dims.h"
#include "core/kernel.h"
#include "core/quotient.h"
#include "core/repack.h"
#include "core/sample_grid.h"
#include "core/scratch.h"
#include "core/task_runner.h"
#include "core/types.h"
#include "ps_roi/ps_roi_kernels.h"
#include "ps_roi/ps_roi_math.h"
#include "roi_align/roi_align_math.h"

namespace jax_roi {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------
// ps_roi_pool
// ---------------------------------------------------------------------------

template <typename C>
void pool_windows(const PsPoolRoi<C>& r, const RoiDims& d, std::vector<PsWindow>* rows,
                  std::vector<PsWindow>* cols) {
  rows->resize(d.pooled_height);
  cols->resize(d.pooled_width);
  for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
    (*rows)[ph] = ps_pool_bin(r.empty, ph, r.bin_h, r.start_h, d.height);
  }
  for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
    (*cols)[pw] = ps_pool_bin(r.empty, pw, r.bin_w, r.start_w, d.width);
  }
}

template <typename T, typename C>
void ps_pool_forward_rois(const PsPoolForwardArgs<T, C>& a, int64_t k_begin, int64_t k_end) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const C scale = static_cast<C>(a.spatial_scale);
  const int64_t H = d.height, W = d.width, Co = d.channels, Ci = in.channels, HW = H * W;
  const int64_t PH = d.pooled_height, PW = d.pooled_width, nbins = PH * PW;
  std::vector<PsWindow> rows, cols;
  std::vector<A> acc(d.layout == Layout::kNHWC ? Co : 0);
  for (int64_t k = k_begin; k < k_end; ++k) {
    const Box<C> box = read_box(a.rois, k, d);
    const PsPoolRoi<C> r = ps_pool_roi(box, scale, d);
    pool_windows(r, d, &rows, &cols);
    if (d.layout == Layout::kNCHW) {
      for (int64_t c = 0; c < Co; ++c) {
        T* out = a.output + (k * Co + c) * nbins;
        for (int64_t ph = 0; ph < PH; ++ph) {
          for (int64_t pw = 0; pw < PW; ++pw) {
            A value = A(0);
            if (!rows[ph].empty() && !cols[pw].empty()) {
              const T* plane = a.features + (box.image * Ci + ps_input_channel(d, c, ph, pw)) * HW;
              value = ps_pool_mean(plane, 1, W, rows[ph], cols[pw]);
            }
            store(out + ph * PW + pw, value);
          }
        }
      }
      continue;
    }
    for (int64_t ph = 0; ph < PH; ++ph) {
      for (int64_t pw = 0; pw < PW; ++pw) {
        T* out = a.output + (k * nbins + ph * PW + pw) * Co;
        if (rows[ph].empty() || cols[pw].empty()) {
          for (int64_t c = 0; c < Co; ++c) store(out + c, A(0));
          continue;
        }
        const int64_t bin = ph * PW + pw;  // input channel c * nbins + bin
        A* __restrict accp = acc.data();
        std::fill_n(accp, Co, A(0));
        for (int64_t h = rows[ph].start; h < rows[ph].end; ++h) {
          for (int64_t w = cols[pw].start; w < cols[pw].end; ++w) {
            const T* __restrict pixel = a.features + ((box.image * H + h) * W + w) * Ci + bin;
            for (int64_t c = 0; c < Co; ++c) accp[c] += load(pixel + c * nbins);
          }
        }
        const A area = ps_pool_area<A>(rows[ph], cols[pw]);
        for (int64_t c = 0; c < Co; ++c) store(out + c, accp[c] / area);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// ps_roi_align
// ---------------------------------------------------------------------------

// The samples of every bin of one RoI (bilinear taps, spatial offsets
// h * W + w), bin after bin.
template <typename C, typename A>
struct PsRoiSamples {
  AlignRoi<C> roi;
  int64_t image = 0;
  std::vector<int64_t> begin;  // Samples of bin i: [begin[i], begin[i + 1]).
  std::vector<BilinearTaps<A, int32_t>> samples;

  void build(const C* rois, int64_t k, double spatial_scale, int64_t sampling_ratio,
             const RoiDims& d) {
    const Box<C> box = read_box(rois, k, d);
    roi = ps_align_roi(box, static_cast<C>(spatial_scale), sampling_ratio, d);
    image = roi.empty ? 0 : box.image;
    const int64_t nbins = d.pooled_height * d.pooled_width;
    begin.resize(nbins + 1);
    samples.clear();
    for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
      for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
        begin[ph * d.pooled_width + pw] = static_cast<int64_t>(samples.size());
        for_each_sample(roi, align_bin(roi, ph, pw, d), ph, pw, d,
                        [&](int64_t, int64_t, const Bilinear<C>& s) {
                          samples.push_back(bilinear_taps<A, int32_t>(s, d.width));
                        });
      }
    }
    begin[nbins] = static_cast<int64_t>(samples.size());
  }
};

// Samples of a RoI in the sampling region (separable: rows x columns).
template <typename C>
int64_t ps_sample_count(const AlignRoi<C>& r, const RoiDims& d) {
  if (r.empty || r.grid_h <= 0 || r.grid_w <= 0 || d.height == 0 || d.width == 0) return 0;
  int64_t rows = 0, cols = 0;
  for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
    const SampleRange y = sample_range(r.start_h, ph, r.bin_h, r.grid_h, d.height);
    rows += y.last - y.first;
  }
  for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
    const SampleRange x = sample_range(r.start_w, pw, r.bin_w, r.grid_w, d.width);
    cols += x.last - x.first;
  }
  return rows * cols;
}

// A RoI whose cache would exceed this many samples (~64 MB) is computed
// straight from its samples, without a cache.
constexpr int64_t kPsCacheBudget = int64_t{1} << 22;

template <typename C>
bool ps_cacheable(const C* rois, int64_t k, double spatial_scale, int64_t sampling_ratio,
                  const RoiDims& d) {
  const AlignRoi<C> r =
      ps_align_roi(read_box(rois, k, d), static_cast<C>(spatial_scale), sampling_ratio, d);
  return ps_sample_count(r, d) <= kPsCacheBudget;
}

template <typename T, typename C>
void ps_align_forward_direct(const PsAlignForwardArgs<T, C>& a, int64_t k) {
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t step = d.layout == Layout::kNCHW ? 1 : in.channels;
  const Box<C> box = read_box(a.rois, k, d);
  const AlignRoi<C> r = ps_align_roi(box, static_cast<C>(a.spatial_scale), a.sampling_ratio, d);
  for (int64_t c = 0; c < d.channels; ++c) {
    for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
      for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
        const T* base = a.features + feature_index_hw(in, r.empty ? 0 : box.image,
                                                      ps_input_channel(d, c, ph, pw), 0);
        store(a.output + output_index(d, k, c, ph, pw),
              align_output_avg(base, step, r, align_bin(r, ph, pw, d), ph, pw, d));
      }
    }
  }
}

template <typename T, typename C>
void ps_align_forward_rois(const PsAlignForwardArgs<T, C>& a, int64_t k_begin, int64_t k_end) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t H = d.height, W = d.width, Co = d.channels, Ci = in.channels, HW = H * W;
  const int64_t nbins = d.pooled_height * d.pooled_width;
  PsRoiSamples<C, A> s;
  std::vector<A> acc(d.layout == Layout::kNHWC ? Co : 0);
  for (int64_t k = k_begin; k < k_end; ++k) {
    if (!ps_cacheable(a.rois, k, a.spatial_scale, a.sampling_ratio, d)) {
      ps_align_forward_direct(a, k);  // A huge RoI, straight from its samples.
      continue;
    }
    s.build(a.rois, k, a.spatial_scale, a.sampling_ratio, d);
    const A count = static_cast<A>(s.roi.count);
    if (d.layout == Layout::kNCHW) {
      for (int64_t c = 0; c < Co; ++c) {
        for (int64_t i = 0; i < nbins; ++i) {
          const T* plane = a.features + (s.image * Ci + c * nbins + i) * HW;
          A sum = A(0);
          for (int64_t j = s.begin[i]; j < s.begin[i + 1]; ++j) {
            sum += bilinear_gather(plane, 1, s.samples[j]);
          }
          store(a.output + (k * Co + c) * nbins + i, sum / count);
        }
      }
      continue;
    }
    const T* pixels = a.features + s.image * HW * Ci;
    for (int64_t i = 0; i < nbins; ++i) {
      A* __restrict accp = acc.data();
      std::fill_n(accp, Co, A(0));
      for (int64_t j = s.begin[i]; j < s.begin[i + 1]; ++j) {
        const BilinearTaps<A, int32_t> p = s.samples[j];
        const T* __restrict p1 = pixels + p.o1 * Ci + i;
        const T* __restrict p2 = pixels + p.o2 * Ci + i;
        const T* __restrict p3 = pixels + p.o3 * Ci + i;
        const T* __restrict p4 = pixels + p.o4 * Ci + i;
        for (int64_t c = 0; c < Co; ++c) {
          const int64_t o = c * nbins;
          accp[c] += bilinear_value(p.w1, p.w2, p.w3, p.w4, load(p1 + o), load(p2 + o),
                                    load(p3 + o), load(p4 + o));
        }
      }
      T* out = a.output + (k * nbins + i) * Co;
      for (int64_t c = 0; c < Co; ++c) store(out + c, accp[c] / count);
    }
  }
}

// ---------------------------------------------------------------------------
// Bin path (see the top of the file)
// ---------------------------------------------------------------------------

// Whether the RoIs' bins read the map's (bin, position) pairs, `reads` of
// them in all, often enough to pay for copying every pair's channels once
// (core/repack.h's rule, with (bin, position) pairs for positions).
inline bool bin_major_pays(int64_t reads, const RoiDims& d, int64_t itemsize) {
  return repack_pays(reads, d.batch * d.pooled_height * d.pooled_width * d.height * d.width,
                     d.channels, itemsize);
}

// (bin, position) pairs the RoIs' ps_roi_pool windows read.
template <typename C>
int64_t ps_pool_reads(const C* rois, double spatial_scale, const RoiDims& d) {
  int64_t reads = 0;
  std::vector<PsWindow> rows, cols;
  for (int64_t k = 0; k < d.num_rois; ++k) {
    const PsPoolRoi<C> r = ps_pool_roi(read_box(rois, k, d), static_cast<C>(spatial_scale), d);
    if (r.empty) continue;
    pool_windows(r, d, &rows, &cols);
    int64_t h = 0, w = 0;
    for (const PsWindow& x : rows) h += std::max<int64_t>(x.size(), 0);
    for (const PsWindow& x : cols) w += std::max<int64_t>(x.size(), 0);
    reads += h * w;
  }
  return reads;
}

// Bilinear taps the RoIs' ps_roi_align samples read (4 per sample).
template <typename C>
int64_t ps_align_reads(const C* rois, double spatial_scale, int64_t sampling_ratio,
                       const RoiDims& d) {
  int64_t reads = 0;
  for (int64_t k = 0; k < d.num_rois; ++k) {
    const AlignRoi<C> r =
        ps_align_roi(read_box(rois, k, d), static_cast<C>(spatial_scale), sampling_ratio, d);
    reads += 4 * std::min(ps_sample_count(r, d), kPsCacheBudget);
  }
  return reads;
}

// Channel lanes in whole blocks of 8: the kernels below keep 8 to 32 sums
// in registers and run over padded lanes (zeros) rather than a remainder.
inline int64_t lanes8(int64_t n) { return (n + 7) / 8 * 8; }

// Calls f(width, l0) for chunks [l0, l0 + width) of [0, lanes) (a multiple
// of 8), width a compile-time 8, 16, 24 or 32.
template <typename F>
void for_lane_chunks(int64_t lanes, F&& f) {
  for (int64_t l0 = 0; l0 < lanes; l0 += 32) {
    switch (std::min<int64_t>(4, (lanes - l0) / 8)) {
      case 4:
        f(std::integral_constant<int, 32>{}, l0);
        break;
      case 3:
        f(std::integral_constant<int, 24>{}, l0);
        break;
      case 2:
        f(std::integral_constant<int, 16>{}, l0);
        break;
      default:
        f(std::integral_constant<int, 8>{}, l0);
        break;
    }
  }
}

// out[l0 + l] = sum[l] / divisor for the lanes of a chunk that are channels
// (l0 + l < channels).
template <typename T, typename A, int L>
void store_means(T* out, int64_t l0, int64_t channels, const A (&sum)[L], A divisor) {
  const int64_t n = std::min<int64_t>(L, channels - l0);
  for (int64_t l = 0; l < n; ++l) store(out + l0 + l, sum[l] / divisor);
}

// One work item: image n, bins [b0, b1), output channels [c0, c1).
struct BinItem {
  int64_t n, b0, b1, c0, c1;
};

// The split of the work into items, and the size of an item's local map.
struct BinItems {
  // An item's bins aim at this size (half of a 2 MB L2).
  static constexpr int64_t kLocalBytes = int64_t{1} << 20;
  int64_t bins_per, channels_per, bin_blocks, channel_blocks, count, local_size;

  BinItems(TaskRunner& runner, const RoiDims& d, int64_t itemsize) {
    const int64_t nbins = d.pooled_height * d.pooled_width, HW = d.height * d.width;
    const int64_t want = 8 * runner.concurrency();
    const int64_t per_bin = std::max<int64_t>(1, HW * d.channels * itemsize);
    // Bins per item: as many as fit the local size, but enough items.
    bins_per = std::clamp<int64_t>(kLocalBytes / per_bin, 1, nbins);
    bins_per = std::min(bins_per, std::max<int64_t>(1, d.batch * nbins / want));
    bin_blocks = (nbins + bins_per - 1) / bins_per;
    // Channel blocks: where items are still too few, or one bin too large.
    int64_t blocks = (want + d.batch * bin_blocks - 1) / (d.batch * bin_blocks);
    blocks = std::max(blocks, (per_bin + kLocalBytes - 1) / kLocalBytes);
    blocks = std::clamp<int64_t>(blocks, 1, std::max<int64_t>(d.channels, 1));
    // Whole blocks of 8 lanes each, so that items own disjoint lanes.
    channels_per = blocks == 1 ? d.channels : lanes8((d.channels + blocks - 1) / blocks);
    channel_blocks = (d.channels + channels_per - 1) / channels_per;
    count = d.batch * bin_blocks * channel_blocks;
    // Whole cache lines per worker's map (no false sharing between them).
    local_size = (bins_per * HW * lanes8(channels_per) * itemsize + 63) / 64 * 64 / itemsize;
  }

  BinItem item(int64_t t, const RoiDims& d) const {
    const int64_t nbins = d.pooled_height * d.pooled_width;
    BinItem it;
    it.c0 = (t % channel_blocks) * channels_per;
    it.c1 = std::min(d.channels, it.c0 + channels_per);
    t /= channel_blocks;
    it.b0 = (t % bin_blocks) * bins_per;
    it.b1 = std::min(nbins, it.b0 + bins_per);
    it.n = t / bin_blocks;
    return it;
  }
};

// An item's bins: channel c0 + c of position p of the item's bin b0 + i is
// at bin(i)[p * stride + c], for c < lanes (lanes8 of the item's channels,
// the padding lanes zeros).
template <typename E>
struct ItemMaps {
  E* base;
  int64_t stride, bin_size, lanes;
  E* bin(int64_t i) const { return base + i * bin_size; }
};

// NHWC input: a copy of the whole map with each position's C_out x nbins
// block of channels transposed to nbins x lanes8(C_out)
// (copy[((n * HW + p) * nbins + bin) * lanes8(C_out) + c], the padding
// zeros): one pass that reads and writes memory in order. (Items copying
// their own bins would each read most of every position's cache lines.)
// And the inverse, for the gradient.
template <typename T>
void nhwc_to_bins(const T* src, T* dst, const RoiDims& d, TaskRunner& runner) {
  const int64_t Co = d.channels, Cp = lanes8(Co), nbins = d.pooled_height * d.pooled_width;
  parallel_ranges(
      runner, d.batch * d.height * d.width, 4 * runner.concurrency(), [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          transpose(src + q * Co * nbins, nbins, dst + q * nbins * Cp, Cp, Co, nbins, true);
        }
      });
}

template <typename A>
void bins_to_nhwc(const A* src, A* dst, const RoiDims& d, TaskRunner& runner) {
  const int64_t Co = d.channels, Cp = lanes8(Co), nbins = d.pooled_height * d.pooled_width;
  parallel_ranges(runner, d.batch * d.height * d.width, 4 * runner.concurrency(),
                  [&](int64_t q0, int64_t q1) {
                    for (int64_t q = q0; q < q1; ++q) {
                      transpose(src + q * nbins * Cp, Cp, dst + q * Co * nbins, nbins, nbins, Co);
                    }
                  });
}

// NCHW input: an item copies its bins' planes into its own local map
// (local[(i * HW + p) * lanes8(nc) + c], the padding zeros), and its
// gradient back.
template <typename T>
void load_bins(const T* features, const RoiDims& d, const BinItem& it, T* local) {
  const int64_t HW = d.height * d.width, nbins = d.pooled_height * d.pooled_width;
  const int64_t Ci = d.channels * nbins, nc = it.c1 - it.c0, ncp = lanes8(nc);
  for (int64_t b = it.b0; b < it.b1; ++b) {
    transpose(features + (it.n * Ci + it.c0 * nbins + b) * HW, nbins * HW,
              local + (b - it.b0) * HW * ncp, ncp, nc, HW, true);
  }
}

template <typename A>
void store_bins(const A* local, const RoiDims& d, const BinItem& it, A* grad) {
  const int64_t HW = d.height * d.width, nbins = d.pooled_height * d.pooled_width;
  const int64_t Ci = d.channels * nbins, nc = it.c1 - it.c0, ncp = lanes8(nc);
  for (int64_t b = it.b0; b < it.b1; ++b) {
    transpose(local + (b - it.b0) * HW * ncp, ncp, grad + (it.n * Ci + it.c0 * nbins + b) * HW,
              nbins * HW, HW, nc);
  }
}

// Runs fn(item, local) for every item: one task per thread, each with its own
// local map (local_size elements of `locals`, if any), pulling items in order.
template <typename E, typename F>
void for_each_bin_item(TaskRunner& runner, const RoiDims& d, const BinItems& items, E* locals,
                       F&& fn) {
  const int64_t workers = std::min(runner.concurrency(), items.count);
  std::atomic<int64_t> next{0};
  runner.parallel_for(workers, [&](int64_t w) {
    E* local = locals == nullptr ? nullptr : locals + w * items.local_size;
    for (int64_t t = next.fetch_add(1); t < items.count; t = next.fetch_add(1)) {
      fn(items.item(t, d), local);
    }
  });
}

// NCHW: items write output (k, c, bin) to bin-major staging,
// staged[(bin * K + k) * C_out + c], which whole RoIs then move into place
// (in place, an item's outputs would be single values PH * PW apart, in
// cache lines shared with the items of neighbouring bins). NHWC items write
// their run of bins x channels of each RoI in place.
template <typename T>
void unstage_outputs(const T* staged, T* output, const RoiDims& d, TaskRunner& runner) {
  const int64_t nbins = d.pooled_height * d.pooled_width, Co = d.channels, K = d.num_rois;
  parallel_ranges(runner, K, 4 * runner.concurrency(), [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      if (d.layout == Layout::kNCHW) {
        transpose(staged + k * Co, K * Co, output + k * Co * nbins, nbins, nbins, Co);
        continue;
      }
      for (int64_t b = 0; b < nbins; ++b) {
        std::copy_n(staged + (b * K + k) * Co, Co, output + (k * nbins + b) * Co);
      }
    }
  });
}

// The forward's frame: compute(item, maps, out_at) for every item, where
// out_at(k, bin)[c] is where output (k, c0 + c, bin) goes.
template <typename T, typename F>
void bin_major_forward(const T* features, T* output, const RoiDims& d, TaskRunner& runner,
                       F&& compute) {
  const int64_t HW = d.height * d.width, Co = d.channels;
  const int64_t nbins = d.pooled_height * d.pooled_width, K = d.num_rois;
  const bool nhwc = d.layout == Layout::kNHWC;
  const BinItems items(runner, d, sizeof(T));
  const int64_t Cp = lanes8(Co);
  const int64_t staged = nhwc ? 0 : K * Co * nbins, whole = nhwc ? d.batch * nbins * HW * Cp : 0;
  const int64_t locals = nhwc ? 0 : std::min(runner.concurrency(), items.count) * items.local_size;
  const ScratchLease scratch(sizeof(T) * static_cast<size_t>(staged + whole + locals));
  T* stage = scratch.as<T>();
  T* map = stage + staged;
  if (nhwc) nhwc_to_bins(features, map, d, runner);
  for_each_bin_item(runner, d, items, nhwc ? nullptr : map, [&](const BinItem& it, T* local) {
    const int64_t ncp = lanes8(it.c1 - it.c0);
    ItemMaps<const T> maps{map + (it.n * HW * nbins + it.b0) * Cp + it.c0, nbins * Cp, Cp, ncp};
    if (!nhwc) {
      load_bins(features, d, it, local);
      maps = ItemMaps<const T>{local, ncp, HW * ncp, ncp};
    }
    compute(it, maps, [&](int64_t k, int64_t bin) {
      return nhwc ? output + (k * nbins + bin) * Co + it.c0 : stage + (bin * K + k) * Co + it.c0;
    });
  });
  if (!nhwc) unstage_outputs(stage, output, d, runner);
}

// The backward's frame: scatter(item, maps) adds the item's contributions
// to its zeroed maps (0 to the padding lanes), which then go into place.
template <typename A, typename F>
void bin_major_backward(A* grad, const RoiDims& d, TaskRunner& runner, F&& scatter) {
  const int64_t HW = d.height * d.width, Co = d.channels;
  const int64_t nbins = d.pooled_height * d.pooled_width;
  const bool nhwc = d.layout == Layout::kNHWC;
  const BinItems items(runner, d, sizeof(A));
  const int64_t Cp = lanes8(Co);
  const int64_t whole = nhwc ? d.batch * nbins * HW * Cp : 0;
  const int64_t locals = nhwc ? 0 : std::min(runner.concurrency(), items.count) * items.local_size;
  const ScratchLease scratch(sizeof(A) * static_cast<size_t>(whole + locals));
  A* map = scratch.as<A>();
  // NHWC: the whole copy zeroed at once (zeroing each item's bins position by
  // position took a tenth of the step in small memsets).
  if (nhwc) zero_parallel(map, whole, runner);
  for_each_bin_item(runner, d, items, nhwc ? nullptr : map, [&](const BinItem& it, A* local) {
    const int64_t ncp = lanes8(it.c1 - it.c0);
    const ItemMaps<A> maps =
        nhwc ? ItemMaps<A>{map + (it.n * HW * nbins + it.b0) * Cp + it.c0, nbins * Cp, Cp, ncp}
             : ItemMaps<A>{local, ncp, HW * ncp, ncp};
    if (!nhwc) std::memset(local, 0, sizeof(A) * (it.b1 - it.b0) * HW * ncp);
    scatter(it, maps);
    if (!nhwc) store_bins(local, d, it, grad);
  });
  if (nhwc) bins_to_nhwc(map, grad, d, runner);
}

// The cotangent of output (k, c0 + c, bin) is go[c * step].
inline int64_t bin_grad_offset(const RoiDims& d, int64_t k, int64_t bin) {
  const int64_t nbins = d.pooled_height * d.pooled_width;
  return d.layout == Layout::kNHWC ? (k * nbins + bin) * d.channels : k * d.channels * nbins + bin;
}
inline int64_t bin_grad_step(const RoiDims& d) {
  return d.layout == Layout::kNHWC ? 1 : d.pooled_height * d.pooled_width;
}

// Per-RoI geometry of a bin-path kernel, computed once, in parallel: the
// image (0 for an empty RoI) and the op's geometry G.
template <typename G>
struct RoiTable {
  std::vector<int64_t> images;
  std::vector<G> geo;
  template <typename Make>
  RoiTable(const RoiDims& d, TaskRunner& runner, Make&& make)
      : images(d.num_rois), geo(d.num_rois) {
    parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) images[k] = make(k, &geo[k]);
    });
  }
};

template <typename C>
RoiTable<PsPoolRoi<C>> pool_table(const C* rois, double spatial_scale, const RoiDims& d,
                                  TaskRunner& runner) {
  return RoiTable<PsPoolRoi<C>>(d, runner, [&](int64_t k, PsPoolRoi<C>* r) {
    const Box<C> box = read_box(rois, k, d);
    *r = ps_pool_roi(box, static_cast<C>(spatial_scale), d);
    return r->empty ? int64_t{0} : box.image;
  });
}

template <typename C>
RoiTable<AlignRoi<C>> align_table(const C* rois, double spatial_scale, int64_t sampling_ratio,
                                  const RoiDims& d, TaskRunner& runner) {
  return RoiTable<AlignRoi<C>>(d, runner, [&](int64_t k, AlignRoi<C>* r) {
    const Box<C> box = read_box(rois, k, d);
    *r = ps_align_roi(box, static_cast<C>(spatial_scale), sampling_ratio, d);
    return r->empty ? int64_t{0} : box.image;
  });
}

template <typename T, typename C>
void ps_pool_forward_bin_major(const PsPoolForwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t H = d.height, W = d.width, PW = d.pooled_width;
  const auto table = pool_table(a.rois, a.spatial_scale, d, runner);
  bin_major_forward(a.features, a.output, d, runner,
                    [&](const BinItem& it, const ItemMaps<const T>& maps, auto&& out_at) {
                      const int64_t nc = it.c1 - it.c0, cs = maps.stride;
                      for (int64_t k = 0; k < d.num_rois; ++k) {
                        if (table.images[k] != it.n) continue;
                        const PsPoolRoi<C>& r = table.geo[k];
                        for (int64_t bin = it.b0; bin < it.b1; ++bin) {
                          T* out = out_at(k, bin);
                          const PsWindow y = ps_pool_bin(r.empty, bin / PW, r.bin_h, r.start_h, H);
                          const PsWindow x = ps_pool_bin(r.empty, bin % PW, r.bin_w, r.start_w, W);
                          if (y.empty() || x.empty()) {
                            for (int64_t c = 0; c < nc; ++c) store(out + c, A(0));
                            continue;
                          }
                          const T* map = maps.bin(bin - it.b0);
                          const A area = ps_pool_area<A>(y, x);
                          for_lane_chunks(maps.lanes, [&](auto width, int64_t l0) {
                            constexpr int L = decltype(width)::value;
                            A sum[L] = {};
                            for (int64_t h = y.start; h < y.end; ++h) {
                              for (int64_t w = x.start; w < x.end; ++w) {
                                const T* __restrict px = map + (h * W + w) * cs + l0;
                                for (int l = 0; l < L; ++l) sum[l] += load(px + l);
                              }
                            }
                            store_means(out, l0, nc, sum, area);
                          });
                        }
                      }
                    });
}

template <typename T, typename C>
void ps_pool_backward_bin_major(const PsPoolBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t H = d.height, W = d.width, PW = d.pooled_width;
  const int64_t gstep = bin_grad_step(d);
  const auto table = pool_table(a.rois, a.spatial_scale, d, runner);
  bin_major_backward(a.grad_features, d, runner, [&](const BinItem& it, const ItemMaps<A>& maps) {
    const int64_t nc = it.c1 - it.c0, cs = maps.stride;
    for (int64_t k = 0; k < d.num_rois; ++k) {
      const PsPoolRoi<C>& r = table.geo[k];
      if (r.empty || table.images[k] != it.n) continue;
      for (int64_t bin = it.b0; bin < it.b1; ++bin) {
        const PsWindow y = ps_pool_bin(false, bin / PW, r.bin_h, r.start_h, H);
        const PsWindow x = ps_pool_bin(false, bin % PW, r.bin_w, r.start_w, W);
        if (y.empty() || x.empty()) continue;
        const A area = ps_pool_area<A>(y, x);
        const T* go = a.grad_output + bin_grad_offset(d, k, bin) + it.c0 * gstep;
        A* map = maps.bin(bin - it.b0);
        for_lane_chunks(maps.lanes, [&](auto width, int64_t l0) {
          constexpr int L = decltype(width)::value;
          A g[L];
          for (int l = 0; l < L; ++l)
            g[l] = l0 + l < nc ? load(go + (l0 + l) * gstep) / area : A(0);
          for (int64_t h = y.start; h < y.end; ++h) {
            for (int64_t w = x.start; w < x.end; ++w) {
              A* __restrict px = map + (h * W + w) * cs + l0;
              for (int l = 0; l < L; ++l) px[l] += g[l];
            }
          }
        });
      }
    }
  });
}

template <typename T, typename C>
void ps_align_forward_bin_major(const PsAlignForwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t W = d.width, PW = d.pooled_width;
  const auto table = align_table(a.rois, a.spatial_scale, a.sampling_ratio, d, runner);
  bin_major_forward(
      a.features, a.output, d, runner,
      [&](const BinItem& it, const ItemMaps<const T>& maps, auto&& out_at) {
        const int64_t nc = it.c1 - it.c0, cs = maps.stride;
        for (int64_t k = 0; k < d.num_rois; ++k) {
          if (table.images[k] != it.n) continue;
          const AlignRoi<C>& r = table.geo[k];
          const A count = static_cast<A>(r.count);
          for (int64_t bin = it.b0; bin < it.b1; ++bin) {
            const int64_t ph = bin / PW, pw = bin % PW;
            const AlignBin b = align_bin(r, ph, pw, d);
            const T* map = maps.bin(bin - it.b0);
            T* out = out_at(k, bin);
            for_lane_chunks(maps.lanes, [&](auto width, int64_t l0) {
              constexpr int L = decltype(width)::value;
              A sum[L] = {};
              for_each_sample(r, b, ph, pw, d, [&](int64_t, int64_t, const Bilinear<C>& s) {
                const BilinearTaps<A> t = bilinear_taps<A>(s, W);
                const T* __restrict p1 = map + t.o1 * cs + l0;
                const T* __restrict p2 = map + t.o2 * cs + l0;
                const T* __restrict p3 = map + t.o3 * cs + l0;
                const T* __restrict p4 = map + t.o4 * cs + l0;
                for (int l = 0; l < L; ++l) {
                  sum[l] += bilinear_value(t.w1, t.w2, t.w3, t.w4, load(p1 + l), load(p2 + l),
                                           load(p3 + l), load(p4 + l));
                }
              });
              store_means(out, l0, nc, sum, count);
            });
          }
        }
      });
}

template <typename T, typename C>
void ps_align_backward_bin_major(const PsAlignBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t W = d.width, PW = d.pooled_width;
  const int64_t gstep = bin_grad_step(d);
  const auto table = align_table(a.rois, a.spatial_scale, a.sampling_ratio, d, runner);
  bin_major_backward(a.grad_features, d, runner, [&](const BinItem& it, const ItemMaps<A>& maps) {
    const int64_t nc = it.c1 - it.c0, cs = maps.stride;
    for (int64_t k = 0; k < d.num_rois; ++k) {
      const AlignRoi<C>& r = table.geo[k];
      if (r.empty || table.images[k] != it.n) continue;
      const CountDivider<A> div(static_cast<A>(r.count));
      for (int64_t bin = it.b0; bin < it.b1; ++bin) {
        const int64_t ph = bin / PW, pw = bin % PW;
        const AlignBin b = align_bin(r, ph, pw, d);
        const T* go = a.grad_output + bin_grad_offset(d, k, bin) + it.c0 * gstep;
        A* map = maps.bin(bin - it.b0);
        for_lane_chunks(maps.lanes, [&](auto width, int64_t l0) {
          constexpr int L = decltype(width)::value;
          A g[L];
          for (int l = 0; l < L; ++l) g[l] = l0 + l < nc ? load(go + (l0 + l) * gstep) : A(0);
          const CotangentRange<A> range = cotangent_range(g, L);
          for_each_sample(r, b, ph, pw, d, [&](int64_t, int64_t, const Bilinear<C>& s) {
            bilinear_scatter(map + l0, cs, bilinear_taps<A>(s, W),
                             [&](A* q, A w) { add_quotients(q, g, w, div, range, L); });
          });
        });
      }
    }
  });
}

}  // namespace

template <typename T, typename C>
void ps_roi_pool_forward(const PsPoolForwardArgs<T, C>& args, TaskRunner& runner) {
  const RoiDims& d = args.dims;
  if (d.channels == 0 || d.num_rois == 0) return;
  advise_huge_pages(args.output, output_count(d));
  if (bin_major_pays(ps_pool_reads(args.rois, args.spatial_scale, d), d, sizeof(T))) {
    ps_pool_forward_bin_major(args, runner);
    return;
  }
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(),
                  [&](int64_t begin, int64_t end) { ps_pool_forward_rois(args, begin, end); });
}

template <typename T, typename C>
void ps_roi_pool_backward(const PsPoolBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t H = d.height, W = d.width, Ci = in.channels;
  const int64_t PW = d.pooled_width, nbins = d.pooled_height * PW;
  advise_huge_pages(a.grad_features, feature_count(in));
  if (Ci > 0 && d.num_rois > 0 &&
      bin_major_pays(ps_pool_reads(a.rois, a.spatial_scale, d), d, sizeof(acc_t<T>))) {
    ps_pool_backward_bin_major(a, runner);
    return;
  }
  zero_parallel(a.grad_features, feature_count(in), runner);
  if (Ci == 0 || d.num_rois == 0) return;
  const C scale = static_cast<C>(a.spatial_scale);
  // The windows of every RoI, computed once.
  std::vector<PsPoolRoi<C>> geo(d.num_rois);
  std::vector<int64_t> images(d.num_rois);
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(), [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const Box<C> box = read_box(a.rois, k, d);
      geo[k] = ps_pool_roi(box, scale, d);
      images[k] = box.image;
    }
  });
  parallel_ranges(runner, Ci, channel_blocks(runner, d.layout == Layout::kNHWC, Ci),
                  [&](int64_t c0, int64_t c1) {
                    for (int64_t k = 0; k < d.num_rois; ++k) {
                      const PsPoolRoi<C>& r = geo[k];
                      if (r.empty) continue;
                      for (int64_t ci = c0; ci < c1; ++ci) {
                        const int64_t c = ci / nbins, bin = ci % nbins, ph = bin / PW,
                                      pw = bin % PW;
                        const PsWindow rows = ps_pool_bin(false, ph, r.bin_h, r.start_h, H);
                        const PsWindow cols = ps_pool_bin(false, pw, r.bin_w, r.start_w, W);
                        if (rows.empty() || cols.empty()) continue;
                        const A g = load(a.grad_output + output_index(d, k, c, ph, pw)) /
                                    ps_pool_area<A>(rows, cols);
                        A* grad = a.grad_features + feature_index_hw(in, images[k], ci, 0);
                        const int64_t step = d.layout == Layout::kNCHW ? 1 : Ci;
                        for (int64_t h = rows.start; h < rows.end; ++h) {
                          for (int64_t w = cols.start; w < cols.end; ++w)
                            grad[(h * W + w) * step] += g;
                        }
                      }
                    }
                  });
}

template <typename T, typename C>
void ps_roi_align_forward(const PsAlignForwardArgs<T, C>& args, TaskRunner& runner) {
  const RoiDims& d = args.dims;
  if (d.channels == 0 || d.num_rois == 0) return;
  advise_huge_pages(args.output, output_count(d));
  if (bin_major_pays(ps_align_reads(args.rois, args.spatial_scale, args.sampling_ratio, d), d,
                     sizeof(T))) {
    ps_align_forward_bin_major(args, runner);
    return;
  }
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(),
                  [&](int64_t begin, int64_t end) { ps_align_forward_rois(args, begin, end); });
}

template <typename T, typename C>
void ps_roi_align_backward(const PsAlignBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t Ci = in.channels;
  const int64_t PW = d.pooled_width, nbins = d.pooled_height * PW;
  advise_huge_pages(a.grad_features, feature_count(in));
  const int64_t step = d.layout == Layout::kNCHW ? 1 : Ci;
  if (Ci > 0 && d.num_rois > 0 &&
      bin_major_pays(ps_align_reads(a.rois, a.spatial_scale, a.sampling_ratio, d), d, sizeof(A))) {
    ps_align_backward_bin_major(a, runner);
    return;
  }
  zero_parallel(a.grad_features, feature_count(in), runner);
  if (Ci == 0 || d.num_rois == 0) return;
  // RoIs in groups whose caches fit the budget (built in parallel, then
  // scattered by channel blocks); a RoI too large for any cache goes alone,
  // straight from its samples. Groups keep RoI order.
  std::vector<PsRoiSamples<C, A>> caches;
  int64_t k = 0;
  while (k < d.num_rois) {
    std::vector<int64_t> group;
    std::vector<char> cached;
    int64_t total = 0;
    while (k < d.num_rois && group.size() < 256) {
      const AlignRoi<C> r = ps_align_roi(read_box(a.rois, k, d), static_cast<C>(a.spatial_scale),
                                         a.sampling_ratio, d);
      const int64_t n = ps_sample_count(r, d);
      if (!group.empty() && total + std::min(n, kPsCacheBudget) > kPsCacheBudget) break;
      group.push_back(k);
      cached.push_back(n <= kPsCacheBudget);
      total += std::min(n, kPsCacheBudget);
      ++k;
    }
    const int64_t g_size = static_cast<int64_t>(group.size());
    if (static_cast<int64_t>(caches.size()) < g_size) caches.resize(g_size);
    parallel_ranges(runner, g_size, 4 * runner.concurrency(), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        if (cached[i]) caches[i].build(a.rois, group[i], a.spatial_scale, a.sampling_ratio, d);
      }
    });
    parallel_ranges(
        runner, Ci, channel_blocks(runner, d.layout == Layout::kNHWC, Ci),
        [&](int64_t c0, int64_t c1) {
          for (int64_t gi = 0; gi < g_size; ++gi) {
            const int64_t kk = group[gi];
            if (!cached[gi]) {
              const Box<C> box = read_box(a.rois, kk, d);
              const AlignRoi<C> r =
                  ps_align_roi(box, static_cast<C>(a.spatial_scale), a.sampling_ratio, d);
              if (r.empty) continue;
              const CountDivider<A> div(static_cast<A>(r.count));
              for (int64_t ci = c0; ci < c1; ++ci) {
                const int64_t c = ci / nbins, bin = ci % nbins, ph = bin / PW, pw = bin % PW;
                const A g = load(a.grad_output + output_index(d, kk, c, ph, pw));
                A* grad = a.grad_features + feature_index_hw(in, box.image, ci, 0);
                for_each_sample(r, align_bin(r, ph, pw, d), ph, pw, d,
                                [&](int64_t, int64_t, const Bilinear<C>& s) {
                                  bilinear_scatter(grad, step, bilinear_taps<A>(s, d.width),
                                                   [&](A* q, A w) { *q += div(g * w); });
                                });
              }
              continue;
            }
            const PsRoiSamples<C, A>& s = caches[gi];
            if (s.roi.empty) continue;
            const CountDivider<A> div(static_cast<A>(s.roi.count));
            for (int64_t ci = c0; ci < c1; ++ci) {
              const int64_t c = ci / nbins, bin = ci % nbins, ph = bin / PW, pw = bin % PW;
              const A g = load(a.grad_output + output_index(d, kk, c, ph, pw));
              A* grad = a.grad_features + feature_index_hw(in, s.image, ci, 0);
              for (int64_t j = s.begin[bin]; j < s.begin[bin + 1]; ++j) {
                bilinear_scatter(grad, step, s.samples[j], [&](A* q, A w) { *q += div(g * w); });
              }
            }
          }
        });
  }
}

template <typename T, typename C>
void ps_roi_align_box_grad(const PsAlignBoxGradArgs<T, C>& a, TaskRunner& runner) {
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t row = roi_row_size(d);
  const int64_t step = d.layout == Layout::kNCHW ? 1 : in.channels;
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(), [&](int64_t b, int64_t e) {
    std::vector<BoxGradSums> lanes(static_cast<size_t>(kBoxGradLanes));
    for (int64_t k = b; k < e; ++k) {
      C* out = a.grad_rois + k * row;
      std::fill_n(out, row, C(0));
      const Box<C> box = read_box(a.rois, k, d);
      const AlignRoi<C> r = ps_align_roi(box, static_cast<C>(a.spatial_scale), a.sampling_ratio, d);
      if (r.empty || d.channels == 0 || d.height == 0 || d.width == 0) continue;
      // Summed in the order of kBoxGradLanes lanes (roi_align_math.h), which
      // the CUDA kernel follows too.
      const double count = static_cast<double>(r.count);
      std::fill(lanes.begin(), lanes.end(), BoxGradSums{});
      const int64_t per_roi = d.channels * d.pooled_height * d.pooled_width;
      for (int64_t j = 0; j < per_roi; ++j) {
        int64_t c, ph, pw;
        split_roi_output(d, j, &c, &ph, &pw);
        const T* base =
            a.features + feature_index_hw(in, box.image, ps_input_channel(d, c, ph, pw), 0);
        const double g = static_cast<double>(load(a.grad_output + k * per_roi + j)) / count;
        align_box_grad_output(base, step, r, ph, pw, d, false, -1, -1, g,
                              &lanes[static_cast<size_t>(j % kBoxGradLanes)]);
      }
      const BoxGradSums& sums = reduce_box_grad_lanes(lanes.data());
      sums.write(r, a.spatial_scale, d, out + (row - 4));
    }
  });
}

}  // namespace cpu
}  // namespace jax_roi

JAX_ROI_INSTANTIATE_CPU_KERNEL(ps_roi_pool_forward, PsPoolForwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(ps_roi_pool_backward, PsPoolBackwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(ps_roi_align_forward, PsAlignForwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(ps_roi_align_backward, PsAlignBackwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(ps_roi_align_box_grad, PsAlignBoxGradArgs)
