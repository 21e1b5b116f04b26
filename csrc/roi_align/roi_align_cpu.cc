// RoIAlign CPU kernels (avg and max modes, feature and box gradients).
//
// Sample positions and bilinear weights depend on the RoI and the bin, not on
// the channel: they are computed once per RoI (roi_align_math.h) into a compact
// cache that every channel then reuses in the same order, so the results are
// exactly those of the per-element math.
//
// Work is organised for the memory system:
//  * RoIs are processed in groups whose caches fit a memory budget, in image
//    order (a stable sort: RoIs of one image keep their relative order);
//  * NCHW: a task owns a block of channels and runs over the group's RoIs
//    channel by channel, so each (image, channel) plane stays in cache;
//  * NHWC: the innermost loop runs over contiguous channels (vectorised);
//    with NHWC output and maps larger than the caches, the forward's tasks
//    own runs of bins of all the group's RoIs, visited in the order of the
//    pixels they read (core/spatial_order.h), not RoI by RoI.
// The backward gives every feature-gradient element its contributions in the
// order (RoI, bin, sample, neighbour), torchvision's CPU order, whatever the
// number of threads.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/bilinear.h"
#include "core/box.h"
#include "core/dims.h"
#include "core/kernel.h"
#include "core/quotient.h"
#include "core/repack.h"
#include "core/sample_grid.h"
#include "core/scratch.h"
#include "core/spatial_order.h"
#include "core/streaming.h"
#include "core/task_runner.h"
#include "core/types.h"
#include "roi_align/roi_align_kernels.h"
#include "roi_align/roi_align_math.h"

namespace jax_roi {
namespace cpu {
namespace {

// One sample in the sampling region: spatial offsets (h * W + w) of its four
// neighbours and its bilinear weights in the accumulation type.
template <typename A>
using Sample = BilinearTaps<A, int32_t>;

// The samples of every bin of one RoI, bin after bin.
template <typename C, typename A>
struct RoiSamples {
  AlignRoi<C> roi;
  int64_t k = 0;      // RoI index
  int64_t image = 0;  // its image (0 for an empty RoI, never read then)
  std::vector<AlignBin> bins;
  std::vector<int64_t> begin;  // Samples of bin i: [begin[i], begin[i + 1]).
  std::vector<Sample<A>> samples;
  std::vector<int32_t> iy, ix;        // Grid indices (max mode only).
  std::vector<Bilinear<C>> bilinear;  // Full interpolation state (box gradient only).

  void build(const C* rois, int64_t index, const AlignOptions& o, const RoiDims& d,
             bool with_indices, bool with_bilinear) {
    k = index;
    const Box<C> box = read_box(rois, index, d);
    this->roi = align_roi(box, static_cast<C>(o.spatial_scale), o.aligned, o.sampling_ratio, d);
    image = this->roi.empty ? 0 : box.image;
    const int64_t nbins = d.pooled_height * d.pooled_width;
    bins.resize(nbins);
    begin.resize(nbins + 1);
    samples.clear();
    iy.clear();
    ix.clear();
    bilinear.clear();
    const int64_t w = d.width;
    for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
      for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
        const int64_t i = ph * d.pooled_width + pw;
        bins[i] = align_bin(this->roi, ph, pw, d);
        begin[i] = static_cast<int64_t>(samples.size());
        for_each_sample(this->roi, bins[i], ph, pw, d,
                        [&](int64_t sy, int64_t sx, const Bilinear<C>& s) {
                          samples.push_back(bilinear_taps<A, int32_t>(s, w));
                          if (with_indices) {
                            iy.push_back(static_cast<int32_t>(sy));
                            ix.push_back(static_cast<int32_t>(sx));
                          }
                          if (with_bilinear) bilinear.push_back(s);
                        });
      }
    }
    begin[nbins] = static_cast<int64_t>(samples.size());
  }
};

// The number of samples a RoI's cache holds: the in-range samples are a
// rectangle per bin, and the ranges of a row of bins (a column) are the
// same for every column (row), so the count is separable.
template <typename C>
int64_t sample_count(const AlignRoi<C>& r, const RoiDims& d) {
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

// The memory a vector of caches holds (for KeptObjectLease).
template <typename C, typename A>
size_t cache_bytes(const std::vector<RoiSamples<C, A>>& caches) {
  size_t bytes = caches.capacity() * sizeof(RoiSamples<C, A>);
  for (const RoiSamples<C, A>& s : caches) {
    bytes += s.bins.capacity() * sizeof(AlignBin) + s.begin.capacity() * sizeof(int64_t) +
             s.samples.capacity() * sizeof(Sample<A>) +
             (s.iy.capacity() + s.ix.capacity()) * sizeof(int32_t) +
             s.bilinear.capacity() * sizeof(Bilinear<C>);
  }
  return bytes;
}

// The caches of a call: the vectors the last call filled, when free
// (core/scratch.h), so that their pages are not faulted in again.
template <typename C, typename A>
using CacheLease = KeptObjectLease<std::vector<RoiSamples<C, A>>>;

// RoIs whose cache would exceed this many samples (~128 MB) are computed
// straight from their samples instead, without a cache.
constexpr int64_t kCacheBudget = int64_t{1} << 22;

// The RoIs of each level (in RoI order); one list when there is one level.
template <typename C>
std::vector<std::vector<int64_t>> rois_by_level(const C* rois, const RoiDims& d,
                                                const LevelMap& m) {
  std::vector<std::vector<int64_t>> levels(std::max<int32_t>(m.num_levels, 1));
  for (int64_t k = 0; k < d.num_rois; ++k) {
    levels[roi_level(read_box(rois, k, d), m)].push_back(k);
  }
  return levels;
}

// Splits a level's RoIs, in image order, into groups whose caches stay
// within the budget; calls cached(group) for each group (a vector of RoI
// indices) and uncached(k) for each RoI too large for any cache. d and o are
// the level's.
template <typename C, typename F, typename G>
void for_each_group(const C* rois, const AlignOptions& o, const RoiDims& d,
                    const std::vector<int64_t>& order, F&& cached, G&& uncached) {
  const int64_t K = static_cast<int64_t>(order.size());
  std::vector<int64_t> image(K), count(K);
  for (int64_t i = 0; i < K; ++i) {
    const Box<C> box = read_box(rois, order[i], d);
    image[i] = box.image;
    count[i] = sample_count(
        align_roi(box, static_cast<C>(o.spatial_scale), o.aligned, o.sampling_ratio, d), d);
  }
  std::vector<int64_t> rank(K);
  std::iota(rank.begin(), rank.end(), 0);
  std::stable_sort(rank.begin(), rank.end(),
                   [&](int64_t a, int64_t b) { return image[a] < image[b]; });
  constexpr int64_t kMaxGroup = 512;
  std::vector<int64_t> group;
  int64_t total = 0;
  for (int64_t i : rank) {
    if (count[i] > kCacheBudget) {
      uncached(order[i]);
      continue;
    }
    if (!group.empty() &&
        (total + count[i] > kCacheBudget || static_cast<int64_t>(group.size()) >= kMaxGroup)) {
      cached(group);
      group.clear();
      total = 0;
    }
    group.push_back(order[i]);
    total += count[i];
  }
  if (!group.empty()) cached(group);
}

template <typename C, typename A>
void build_group(std::vector<RoiSamples<C, A>>& caches, const std::vector<int64_t>& group,
                 const C* rois, const AlignOptions& o, const RoiDims& d, TaskRunner& runner,
                 bool with_indices) {
  if (caches.size() < group.size()) caches.resize(group.size());
  parallel_ranges(runner, static_cast<int64_t>(group.size()), 4 * runner.concurrency(),
                  [&](int64_t begin, int64_t end) {
                    for (int64_t i = begin; i < end; ++i) {
                      caches[i].build(rois, group[i], o, d, with_indices, false);
                    }
                  });
}

// The sums over one bin's samples (in order) of every channel's bilinear
// value, NHWC pixels (pixel o at pixels + o * Cn).
template <typename T, typename A>
void bin_sums(const T* pixels, int64_t Cn, const Sample<A>* begin, const Sample<A>* end, A* acc) {
  for (int64_t c = 0; c < Cn; ++c) acc[c] = A(0);
  for (const Sample<A>* q = begin; q != end; ++q) {
    const Sample<A> p = *q;
    const T* __restrict p1 = pixels + p.o1 * Cn;
    const T* __restrict p2 = pixels + p.o2 * Cn;
    const T* __restrict p3 = pixels + p.o3 * Cn;
    const T* __restrict p4 = pixels + p.o4 * Cn;
    A* __restrict a = acc;
    for (int64_t c = 0; c < Cn; ++c) {
      a[c] += bilinear_value(p.w1, p.w2, p.w3, p.w4, load(p1 + c), load(p2 + c), load(p3 + c),
                             load(p4 + c));
    }
  }
}

// Forward of a group of one level's RoIs (d, o, features: the level's;
// nhwc: the level's map in NHWC order, the input itself or a scratch copy of
// NCHW input, or nullptr to read NCHW planes).
template <typename T, typename C>
void forward_group(const AlignForwardArgs<T, C>& a, const T* features, const T* nhwc,
                   const RoiDims& d, const AlignOptions& o,
                   const std::vector<RoiSamples<C, acc_t<T>>>& caches, int64_t n,
                   TaskRunner& runner) {
  using A = acc_t<T>;
  const int64_t Cn = d.channels, HW = d.height * d.width;
  const int64_t nbins = d.pooled_height * d.pooled_width;
  if (nhwc == nullptr) {
    parallel_ranges(runner, Cn, 4 * runner.concurrency(), [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = 0; r < n; ++r) {
          const RoiSamples<C, A>& s = caches[r];
          const T* plane = features + (s.image * Cn + c) * HW;
          const int64_t out0 = (s.k * Cn + c) * nbins;
          const A count = static_cast<A>(s.roi.count);
          for (int64_t i = 0; i < nbins; ++i) {
            const Sample<A>* p = s.samples.data() + s.begin[i];
            const Sample<A>* end = s.samples.data() + s.begin[i + 1];
            if (!o.max_mode) {
              A sum = A(0);
              for (; p != end; ++p) sum += bilinear_gather(plane, 1, *p);
              store(a.output + out0 + i, sum / count);
              continue;
            }
            const int64_t grid_w = s.bins[i].grid_w;
            MaxSample<A> m;
            m.init();
            for (int64_t j = s.begin[i]; j < s.begin[i + 1]; ++j) {
              m.offer(bilinear_gather(plane, 1, s.samples[j]), s.iy[j] * grid_w + s.ix[j], s.iy[j],
                      s.ix[j]);
            }
            m.finish(s.bins[i], first_outside(s.bins[i]));
            store_max_output(a, out0 + i, m);
          }
        }
      }
    });
    return;
  }
  // NHWC: every channel advances through the same samples in the same
  // order, the channel loop innermost and contiguous. Each bin's outputs are
  // made in channel order: in place for NHWC output, else in a RoI's scratch
  // block, then transposed into the NCHW output (contiguous stores).
  const bool nchw_output = d.layout == Layout::kNCHW;
  const bool streamed = !nchw_output && stream_output(a.output, output_count(a.dims), Cn);
  const bool with_argmax = o.max_mode && a.argmax_y != nullptr;
  // Bin i of RoI s, every channel, into out (that RoI's outputs, at (bin,
  // channel)); acc and best hold Cn values.
  auto one_bin = [&](const RoiSamples<C, A>& s, int64_t i, const AlignForwardArgs<T, C>& out,
                     A* __restrict acc, MaxSample<A>* best) {
    const T* pixels = nhwc + s.image * HW * Cn;
    if (!o.max_mode) {
      bin_sums(pixels, Cn, s.samples.data() + s.begin[i], s.samples.data() + s.begin[i + 1], acc);
      store_quotients(out.output + i * Cn, acc, Cn, static_cast<A>(s.roi.count), streamed);
      return;
    }
    const int64_t grid_w = s.bins[i].grid_w;
    for (int64_t c = 0; c < Cn; ++c) best[c].init();
    for (int64_t j = s.begin[i]; j < s.begin[i + 1]; ++j) {
      const int64_t index = int64_t{s.iy[j]} * grid_w + s.ix[j];
      for (int64_t c = 0; c < Cn; ++c) {
        best[c].offer(bilinear_gather(pixels + c, Cn, s.samples[j]), index, s.iy[j], s.ix[j]);
      }
    }
    const int64_t outside = first_outside(s.bins[i]);
    for (int64_t c = 0; c < Cn; ++c) {
      best[c].finish(s.bins[i], outside);
      store_max_output(out, i * Cn + c, best[c]);
    }
  };
  // The outputs of RoI s in place (NHWC output).
  auto in_place = [&](const RoiSamples<C, A>& s) {
    const int64_t base = s.k * nbins * Cn;
    AlignForwardArgs<T, C> out = a;
    out.output = a.output + base;
    out.argmax_y = with_argmax ? a.argmax_y + base : nullptr;
    out.argmax_x = with_argmax ? a.argmax_x + base : nullptr;
    return out;
  };
  // NHWC output of maps too large for the caches: the tasks own runs of
  // bins visited in the order of the pixels they read (core/spatial_order.h).
  if (!nchw_output && spatial_order_pays(HW * Cn * static_cast<int64_t>(sizeof(T)))) {
    int64_t first_image = caches[0].image, last_image = first_image;
    for (int64_t r = 1; r < n; ++r) {
      first_image = std::min(first_image, caches[r].image);
      last_image = std::max(last_image, caches[r].image);
    }
    const std::vector<uint32_t> order =
        spatial_order(n * nbins, first_image, last_image, d.height, d.width, [&](int64_t j) {
          const RoiSamples<C, A>& s = caches[j / nbins];
          const int64_t i = j % nbins;
          // Where the bin's first sample reads (an empty bin: anywhere).
          const int64_t at = s.begin[i] < s.begin[i + 1] ? s.samples[s.begin[i]].o1 : 0;
          return PixelKey{s.image, at / d.width, at % d.width};
        });
    if (!order.empty()) {
      parallel_ranges(runner, n * nbins, 4 * runner.concurrency(), [&](int64_t j0, int64_t j1) {
        std::vector<A> acc(Cn);
        std::vector<MaxSample<A>> best(o.max_mode ? Cn : 0);
        for (int64_t j = j0; j < j1; ++j) {
          const RoiSamples<C, A>& s = caches[order[j] / nbins];
          one_bin(s, order[j] % nbins, in_place(s), acc.data(), best.data());
        }
        streaming_fence();
      });
      return;
    }
  }
  // Otherwise a task owns RoIs.
  parallel_ranges(runner, n, 4 * runner.concurrency(), [&](int64_t r0, int64_t r1) {
    std::vector<A> acc(Cn);
    std::vector<MaxSample<A>> best(o.max_mode ? Cn : 0);
    std::vector<T> out_block(nchw_output ? nbins * Cn : 0);
    std::vector<int32_t> y_block(nchw_output && with_argmax ? nbins * Cn : 0);
    std::vector<int32_t> x_block(y_block.size());
    for (int64_t r = r0; r < r1; ++r) {
      const RoiSamples<C, A>& s = caches[r];
      AlignForwardArgs<T, C> out = in_place(s);
      if (nchw_output) {
        out.output = out_block.data();
        out.argmax_y = with_argmax ? y_block.data() : nullptr;
        out.argmax_x = with_argmax ? x_block.data() : nullptr;
      }
      for (int64_t i = 0; i < nbins; ++i) one_bin(s, i, out, acc.data(), best.data());
      if (nchw_output) {
        const int64_t base = s.k * nbins * Cn;
        transpose_block(out_block.data(), a.output + base, nbins, Cn);
        if (with_argmax) {
          transpose_block(y_block.data(), a.argmax_y + base, nbins, Cn);
          transpose_block(x_block.data(), a.argmax_x + base, nbins, Cn);
        }
      }
    }
    streaming_fence();
  });
}

// Feature gradient of a group of one level's RoIs (d, grad: the level's).
// nhwc_grad: NCHW input whose gradient is summed in NHWC scratch (the
// cotangent stays NCHW); the terms reach each element in the same order.
template <typename T, typename C>
void backward_group(const AlignBackwardArgs<T, C>& a, acc_t<T>* grad_features, const RoiDims& d,
                    const std::vector<RoiSamples<C, acc_t<T>>>& caches, int64_t n,
                    TaskRunner& runner, bool nhwc_grad = false) {
  using A = acc_t<T>;
  const int64_t Cn = d.channels, HW = d.height * d.width;
  const int64_t nbins = d.pooled_height * d.pooled_width;
  const bool nchw = d.layout == Layout::kNCHW;
  // Tasks own blocks of channels: no two write the same element.
  const int64_t blocks = channel_blocks(runner, !nchw || nhwc_grad, Cn);
  parallel_ranges(runner, Cn, blocks, [&](int64_t c0, int64_t c1) {
    if (nchw && !nhwc_grad) {
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = 0; r < n; ++r) {
          const RoiSamples<C, A>& s = caches[r];
          if (s.roi.empty) continue;
          A* plane = grad_features + (s.image * Cn + c) * HW;
          const CountDivider<A> div(static_cast<A>(s.roi.count));
          for (int64_t i = 0; i < nbins; ++i) {
            const A g = load(a.grad_output + (s.k * Cn + c) * nbins + i);
            for (int64_t j = s.begin[i]; j < s.begin[i + 1]; ++j) {
              bilinear_scatter(plane, 1, s.samples[j], [&](A* q, A w) { *q += div(g * w); });
            }
          }
        }
      }
      return;
    }
    const int64_t cn = c1 - c0;
    std::vector<A> g(cn);
    for (int64_t r = 0; r < n; ++r) {
      const RoiSamples<C, A>& s = caches[r];
      if (s.roi.empty) continue;
      A* pixels = grad_features + s.image * HW * Cn + c0;
      const CountDivider<A> div(static_cast<A>(s.roi.count));
      for (int64_t i = 0; i < nbins; ++i) {
        A* __restrict gp = g.data();
        if (nchw) {  // The cotangent's channels are nbins apart.
          const T* go = a.grad_output + (s.k * Cn + c0) * nbins + i;
          for (int64_t c = 0; c < cn; ++c) gp[c] = load(go + c * nbins);
        } else {
          const T* go = a.grad_output + (s.k * nbins + i) * Cn + c0;
          for (int64_t c = 0; c < cn; ++c) gp[c] = load(go + c);
        }
        const CotangentRange<A> range = cotangent_range(gp, cn);
        for (int64_t j = s.begin[i]; j < s.begin[i + 1]; ++j) {
          // The four neighbours may coincide (edge replication), so the
          // four updates stay separate passes over the channels, in
          // torchvision's order (and q gets no __restrict).
          bilinear_scatter(pixels, Cn, s.samples[j],
                           [&](A* q, A w) { add_quotients(q, gp, w, div, range, cn); });
        }
      }
    }
  });
}

// Forward of one RoI too large to cache, straight from its samples: a task
// per block of channels.
template <typename T, typename C>
void forward_uncached(const AlignForwardArgs<T, C>& a, const T* features, const RoiDims& d,
                      const AlignOptions& o, int64_t k, TaskRunner& runner) {
  const Box<C> box = read_box(a.rois, k, d);
  const AlignRoi<C> r =
      align_roi(box, static_cast<C>(o.spatial_scale), o.aligned, o.sampling_ratio, d);
  const int64_t step = d.layout == Layout::kNCHW ? 1 : d.channels;
  parallel_ranges(runner, d.channels, 4 * runner.concurrency(), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const T* base = features + feature_index_hw(d, r.empty ? 0 : box.image, c, 0);
      for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
        for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
          store_align_output(a, output_index(d, k, c, ph, pw), base, step, r, ph, pw, d);
        }
      }
    }
  });
}

// Feature gradient (avg) of one RoI too large to cache.
template <typename T, typename C>
void backward_uncached(const AlignBackwardArgs<T, C>& a, acc_t<T>* grad_features, const RoiDims& d,
                       const AlignOptions& o, int64_t k, TaskRunner& runner) {
  using A = acc_t<T>;
  const Box<C> box = read_box(a.rois, k, d);
  const AlignRoi<C> r =
      align_roi(box, static_cast<C>(o.spatial_scale), o.aligned, o.sampling_ratio, d);
  if (r.empty) return;
  const int64_t step = d.layout == Layout::kNCHW ? 1 : d.channels;
  const int64_t W = d.width;
  const CountDivider<A> div(static_cast<A>(r.count));
  parallel_ranges(runner, d.channels, 4 * runner.concurrency(), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      A* grad = grad_features + feature_index_hw(d, box.image, c, 0);
      for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
        for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
          const A g = load(a.grad_output + output_index(d, k, c, ph, pw));
          for_each_sample(r, align_bin(r, ph, pw, d), ph, pw, d,
                          [&](int64_t, int64_t, const Bilinear<C>& s) {
                            bilinear_scatter(grad, step, bilinear_taps<A>(s, W),
                                             [&](A* q, A w) { *q += div(g * w); });
                          });
        }
      }
    }
  });
}

// Max mode: each output's gradient goes to its winning sample only; no
// cache needed (one sample per output).
template <typename T, typename C>
void backward_max(const AlignBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const int64_t Cn = a.dims.channels;
  parallel_ranges(runner, Cn, 4 * runner.concurrency(), [&](int64_t c0, int64_t c1) {
    for (int64_t k = 0; k < a.dims.num_rois; ++k) {
      const Box<C> box = read_box(a.rois, k, a.dims);
      if (box.image < 0) continue;
      const FeatureLevel<A>& level = a.levels[roi_level(box, a.map)];
      const RoiDims d = level_dims(a.dims, level);
      const AlignRoi<C> r = align_roi(box, static_cast<C>(level.spatial_scale), a.options.aligned,
                                      a.options.sampling_ratio, d);
      const int64_t W = d.width;
      const int64_t step = d.layout == Layout::kNCHW ? 1 : Cn;
      for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
        for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t out = output_index(d, k, c, ph, pw);
            const Bilinear<C> s = winning_sample(r, ph, pw, a.argmax_y[out], a.argmax_x[out], d);
            if (!s.valid) continue;
            const A g = load(a.grad_output + out);
            A* grad = level.data + feature_index_hw(d, box.image, c, 0);
            bilinear_scatter(grad, step, bilinear_taps<A>(s, W), [&](A* q, A w) { *q += g * w; });
          }
        }
      }
    }
  });
}

// How many (h, w) positions the RoIs' samples read (four per sample), and
// the largest RoI's sample count.
struct SampleStats {
  int64_t pixels_read = 0, largest = 0;
};

template <typename C>
SampleStats sample_stats(const C* rois, const AlignOptions& o, const RoiDims& d,
                         const std::vector<int64_t>& order) {
  SampleStats st;
  for (int64_t k : order) {
    const AlignRoi<C> r = align_roi(read_box(rois, k, d), static_cast<C>(o.spatial_scale),
                                    o.aligned, o.sampling_ratio, d);
    const int64_t n = sample_count(r, d);
    st.pixels_read += 4 * std::min(n, kCacheBudget);
    st.largest = std::max(st.largest, n);
  }
  return st;
}

}  // namespace

template <typename T, typename C>
void roi_align_forward(const AlignForwardArgs<T, C>& args, TaskRunner& runner) {
  if (args.dims.channels == 0 || args.dims.num_rois == 0) return;
  const int64_t outputs = output_count(args.dims);
  advise_huge_pages(args.output, outputs);
  if (args.options.max_mode) {
    advise_huge_pages(args.argmax_y, outputs);
    advise_huge_pages(args.argmax_x, outputs);
  }
  const CacheLease<C, acc_t<T>> lease(&cache_bytes<C, acc_t<T>>);
  std::vector<RoiSamples<C, acc_t<T>>>& caches = lease.get();
  const auto by_level = rois_by_level(args.rois, args.dims, args.map);
  for (size_t l = 0; l < by_level.size(); ++l) {
    if (by_level[l].empty()) continue;
    const RoiDims d = level_dims(args.dims, args.levels[l]);
    const AlignOptions o = level_options(args.options, args.levels[l]);
    const T* features = args.levels[l].data;
    const T* nhwc = d.layout == Layout::kNHWC ? features : nullptr;
    const int64_t HW = d.height * d.width;
    // NCHW input that pays for it is read from an NHWC copy (core/repack.h).
    const bool repack =
        nhwc == nullptr && repack_pays(sample_stats(args.rois, o, d, by_level[l]).pixels_read,
                                       d.batch * HW, d.channels, sizeof(T));
    const ScratchLease scratch(repack ? sizeof(T) * static_cast<size_t>(d.batch * HW * d.channels)
                                      : 0);
    if (repack) {
      repack_nchw_to_nhwc(features, scratch.as<T>(), d.batch, d.channels, HW, runner);
      nhwc = scratch.as<T>();
    }
    for_each_group(
        args.rois, o, d, by_level[l],
        [&](const std::vector<int64_t>& group) {
          build_group(caches, group, args.rois, o, d, runner, o.max_mode);
          forward_group(args, features, nhwc, d, o, caches, static_cast<int64_t>(group.size()),
                        runner);
        },
        [&](int64_t k) { forward_uncached(args, args.levels[l].data, d, o, k, runner); });
  }
}

template <typename T, typename C>
void roi_align_backward(const AlignBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& dims = a.dims;
  const int32_t levels = std::max<int32_t>(a.map.num_levels, 1);
  const bool avg = !a.options.max_mode && dims.channels > 0 && dims.num_rois > 0;
  const auto by_level = rois_by_level(a.rois, dims, a.map);
  // Avg mode, NCHW: a level whose RoIs read it enough (and none too large to
  // cache) sums its gradient in NHWC scratch (core/repack.h), then
  // transposes it into place: the scatter then runs over contiguous channels.
  std::vector<bool> nhwc_grad(levels, false);
  for (int32_t l = 0; l < levels; ++l) {
    const RoiDims d = level_dims(dims, a.levels[l]);
    if (!avg || d.layout != Layout::kNCHW || by_level[l].empty()) continue;
    const AlignOptions o = level_options(a.options, a.levels[l]);
    const SampleStats st = sample_stats(a.rois, o, d, by_level[l]);
    nhwc_grad[l] = st.largest <= kCacheBudget &&
                   repack_pays(st.pixels_read, d.batch * d.height * d.width, d.channels, sizeof(A));
  }
  for (int32_t l = 0; l < levels; ++l) {
    const RoiDims d = level_dims(dims, a.levels[l]);
    advise_huge_pages(a.levels[l].data, feature_count(d));
    if (!nhwc_grad[l]) zero_parallel(a.levels[l].data, feature_count(d), runner);
  }
  if (!avg) {
    if (a.options.max_mode && dims.channels > 0 && dims.num_rois > 0) backward_max(a, runner);
    return;
  }
  const CacheLease<C, A> lease(&cache_bytes<C, A>);
  std::vector<RoiSamples<C, A>>& caches = lease.get();
  for (size_t l = 0; l < by_level.size(); ++l) {
    if (by_level[l].empty()) continue;
    const RoiDims d = level_dims(dims, a.levels[l]);
    const AlignOptions o = level_options(a.options, a.levels[l]);
    const int64_t HW = d.height * d.width, size = d.batch * d.channels * HW;
    const ScratchLease scratch(nhwc_grad[l] ? sizeof(A) * static_cast<size_t>(size) : 0);
    A* grad = nhwc_grad[l] ? scratch.as<A>() : a.levels[l].data;
    if (nhwc_grad[l]) zero_parallel(grad, size, runner);
    // Uncached RoIs are visited in the same (image, RoI) order as the cached
    // ones, so every element still receives its contributions in RoI order.
    for_each_group(
        a.rois, o, d, by_level[l],
        [&](const std::vector<int64_t>& group) {
          build_group(caches, group, a.rois, o, d, runner, false);
          backward_group(a, grad, d, caches, static_cast<int64_t>(group.size()), runner,
                         nhwc_grad[l]);
        },
        // (never on scratch: nhwc_grad needs every RoI cached)
        [&](int64_t k) { backward_uncached(a, grad, d, o, k, runner); });
    if (nhwc_grad[l]) {
      repack_nhwc_to_nchw(grad, a.levels[l].data, d.batch, d.channels, HW, runner);
    }
  }
}

template <typename T, typename C>
void roi_align_box_grad(const AlignBoxGradArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const int64_t Cn = a.dims.channels;
  const int64_t row = roi_row_size(a.dims);
  parallel_ranges(
      runner, a.dims.num_rois, 4 * runner.concurrency(), [&](int64_t k_begin, int64_t k_end) {
        RoiSamples<C, A> cache;
        std::vector<BoxGradSums> lanes(static_cast<size_t>(kBoxGradLanes));
        for (int64_t k = k_begin; k < k_end; ++k) {
          C* out = a.grad_rois + k * row;
          std::fill_n(out, row, C(0));
          const Box<C> box = read_box(a.rois, k, a.dims);
          if (box.image < 0 || Cn == 0) continue;
          const FeatureLevel<const T>& level = a.levels[roi_level(box, a.map)];
          const RoiDims d = level_dims(a.dims, level);
          const AlignOptions o = level_options(a.options, level);
          const AlignRoi<C> r =
              align_roi(box, static_cast<C>(o.spatial_scale), o.aligned, o.sampling_ratio, d);
          if (r.empty || d.height == 0 || d.width == 0) continue;
          // Cotangents scaled like the forward (1 / count in avg mode), summed in
          // double in the order of kBoxGradLanes lanes (roi_align_math.h), which
          // the CUDA kernel follows too.
          const double count = o.max_mode ? 1.0 : static_cast<double>(r.count);
          const int64_t step = d.layout == Layout::kNCHW ? 1 : Cn;
          const bool cached = !o.max_mode && sample_count(r, d) <= kCacheBudget;
          if (cached) cache.build(a.rois, k, o, d, true, true);
          std::fill(lanes.begin(), lanes.end(), BoxGradSums{});
          const int64_t per_roi = Cn * d.pooled_height * d.pooled_width;
          for (int64_t j = 0; j < per_roi; ++j) {
            int64_t c, ph, pw;
            split_roi_output(d, j, &c, &ph, &pw);
            BoxGradSums& sums = lanes[static_cast<size_t>(j % kBoxGradLanes)];
            const T* base = level.data + feature_index_hw(d, box.image, c, 0);
            const int64_t o_index = k * per_roi + j;
            const double g = static_cast<double>(load(a.grad_output + o_index)) / count;
            if (cached) {  // The samples of this bin, from the cache.
              const int64_t i = ph * d.pooled_width + pw;
              for (int64_t s = cache.begin[i]; s < cache.begin[i + 1]; ++s) {
                sums.add_sample(base, step, d.width, cache.bilinear[s], g,
                                sample_coord_dbin<C>(ph, cache.iy[s], r.grid_h),
                                sample_coord_dbin<C>(pw, cache.ix[s], r.grid_w));
              }
              continue;
            }
            const int64_t wy = o.max_mode ? a.argmax_y[o_index] : -1;
            const int64_t wx = o.max_mode ? a.argmax_x[o_index] : -1;
            align_box_grad_output(base, step, r, ph, pw, d, o.max_mode, wy, wx, g, &sums);
          }
          const BoxGradSums& sums = reduce_box_grad_lanes(lanes.data());
          sums.write(r, o.spatial_scale, d, out + (row - 4));
        }
      });
}

}  // namespace cpu
}  // namespace jax_roi

JAX_ROI_INSTANTIATE_CPU_KERNEL(roi_align_forward, AlignForwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(roi_align_backward, AlignBackwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(roi_align_box_grad, AlignBoxGradArgs)
