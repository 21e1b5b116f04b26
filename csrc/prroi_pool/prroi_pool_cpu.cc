// Precise RoI Pooling CPU kernels (forward, feature and box gradients).
//
// The pixels and weights of a bin depend on the RoI and the bin, not on the
// channel: each RoI's are computed once (prroi_pool_math.h) into a cache that
// every channel reuses in the same order, so the results are exactly those
// of the per-element math (and of the CUDA kernels).
//  * forward: one task per block of RoIs, the channel loop innermost
//    (contiguous, vectorised); NCHW features are transposed image by image
//    to channels-last first (one image of scratch memory);
//  * feature gradient: one task per block of channels, each over every RoI
//    in order, so every element receives its contributions in the order
//    (RoI, bin, pixel) whatever the number of threads;
//  * box gradient: one task per block of RoIs, each RoI's sums in the
//    lanes and tree of prroi_pool_math.h.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/box.h"
#include "core/dims.h"
#include "core/kernel.h"
#include "core/repack.h"
#include "core/scratch.h"
#include "core/streaming.h"
#include "core/task_runner.h"
#include "core/types.h"
#include "prroi_pool/prroi_pool_kernels.h"
#include "prroi_pool/prroi_pool_math.h"

namespace jax_roi {
namespace cpu {
namespace {

template <typename A>
struct Tap {
  int64_t hw;
  A w;
};

// The taps of every bin of one RoI, bin after bin (bin i: [begin[i],
// begin[i + 1])).
template <typename C, typename A>
void roi_taps(const PrRoi<C>& r, const RoiDims& d, std::vector<Tap<A>>* taps,
              std::vector<int64_t>* begin) {
  taps->clear();
  begin->assign(d.pooled_height * d.pooled_width + 1, 0);
  for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
    for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
      (*begin)[ph * d.pooled_width + pw] = static_cast<int64_t>(taps->size());
      if (r.empty) continue;
      for_each_prroi_pixel(
          r, ph, pw, d, [&](int64_t hw, C w) { taps->push_back(Tap<A>{hw, static_cast<A>(w)}); });
    }
  }
  (*begin)[d.pooled_height * d.pooled_width] = static_cast<int64_t>(taps->size());
}

// s[c] = the sum over the taps [first, last), in order, of w * pixel[c]
// (pixel at pixels + hw * Cn), for the channels c < Cn of whole vector
// blocks; returns how many channels it did (the caller's loop makes the
// same sums for the rest). This generic version does none.
template <typename T, typename A>
int64_t sum_taps_blocked(const Tap<A>*, const Tap<A>*, const T*, int64_t, A*) {
  return 0;
}

#if defined(__GNUC__) || defined(__clang__)
// float: blocks of 64 channels (32 without AVX) whose sums stay in vector
// registers over all of a bin's taps (GCC/Clang vector extensions), instead
// of a load and a store of every sum per tap. The same products and additions
// in the same order (no contraction: -ffp-contract=off), so the same bits.
// faster-rcnn (512 x 38 x 50, K=300, 7 x 7) forward, medians of 30 calls:
// NHWC 6.5 -> 4.6 ms, NCHW 9.0 -> 6.6-7.5 ms. (Chunks of 64 channels, all
// bins of a chunk before the next chunk, so that NCHW's staged block stays
// in L1: NCHW 8.5 ms, slower.)
#if defined(__AVX__)
constexpr int64_t kPrLanes = 8;
#else
constexpr int64_t kPrLanes = 4;  // 32-byte vectors would be lowered lane by lane
#endif
typedef float PrF32xN __attribute__((vector_size(4 * kPrLanes)));
constexpr int64_t kPrVectors = 8, kPrBlock = kPrLanes * kPrVectors;

template <>
int64_t sum_taps_blocked<float, float>(const Tap<float>* first, const Tap<float>* last,
                                       const float* pixels, int64_t Cn, float* s) {
  int64_t c = 0;
  for (; c + kPrBlock <= Cn; c += kPrBlock) {
    PrF32xN sum[kPrVectors];
    for (int64_t v = 0; v < kPrVectors; ++v) sum[v] = PrF32xN{};
    for (const Tap<float>* t = first; t != last; ++t) {
      const float* p = pixels + t->hw * Cn + c;
      for (int64_t v = 0; v < kPrVectors; ++v) {
        PrF32xN x;
        std::memcpy(&x, p + kPrLanes * v, sizeof(x));
        sum[v] += t->w * x;
      }
    }
    std::memcpy(s + c, sum, sizeof(sum));
  }
  return c;
}
#endif

// Forward of RoI k from its image's pixels (channels contiguous: the
// features in NHWC, or an image transposed to it), written in the output's
// layout: NCHW outputs are made in (bin, channel) order in `staged` (nbins x
// C values) and transposed into place, so that stores stay contiguous.
template <typename T, typename C>
void forward_roi(const PrRoiForwardArgs<T, C>& a, int64_t k, const T* pixels,
                 std::vector<Tap<acc_t<T>>>* taps, std::vector<int64_t>* begin,
                 std::vector<acc_t<T>>* acc, T* staged, bool streamed) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t Cn = d.channels, nbins = d.pooled_height * d.pooled_width;
  const PrRoi<C> r = prroi_roi(read_box(a.rois, k, d), static_cast<C>(a.spatial_scale), d);
  const A area = static_cast<A>(r.area);
  roi_taps(r, d, taps, begin);
  for (int64_t bin = 0; bin < nbins; ++bin) {
    A* __restrict s = acc->data();
    const Tap<A>* first = taps->data() + (*begin)[bin];
    const Tap<A>* last = taps->data() + (*begin)[bin + 1];
    const int64_t blocked = sum_taps_blocked(first, last, pixels, Cn, s);
    std::fill(s + blocked, s + Cn, A(0));
    for (const Tap<A>* t = first; t != last; ++t) {
      const T* __restrict p = pixels + t->hw * Cn;
      for (int64_t c = blocked; c < Cn; ++c) s[c] += t->w * static_cast<A>(load(p + c));
    }
    T* out = d.layout == Layout::kNHWC ? a.output + (k * nbins + bin) * Cn : staged + bin * Cn;
    store_quotients(out, s, Cn, area, streamed);
  }
  if (d.layout == Layout::kNCHW) transpose_block(staged, a.output + k * Cn * nbins, nbins, Cn);
}

template <typename T, typename C>
void forward_nhwc(const PrRoiForwardArgs<T, C>& a, TaskRunner& runner) {
  const RoiDims& d = a.dims;
  const int64_t HWC = d.height * d.width * d.channels;
  const bool streamed = stream_output(a.output, output_count(d), d.channels);
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(), [&](int64_t begin, int64_t end) {
    std::vector<Tap<acc_t<T>>> taps;
    std::vector<int64_t> bins;
    std::vector<acc_t<T>> acc(d.channels);
    for (int64_t k = begin; k < end; ++k) {
      const int64_t image = read_box(a.rois, k, d).image;
      forward_roi(a, k, a.features + (image < 0 ? 0 : image) * HWC, &taps, &bins, &acc,
                  static_cast<T*>(nullptr), streamed);
    }
    streaming_fence();
  });
}

// The RoIs of each image (last: the padding rows), in increasing k.
template <typename C>
std::vector<std::vector<int64_t>> rois_by_image(const C* rois, const RoiDims& d) {
  std::vector<std::vector<int64_t>> by_image(d.batch + 1);
  for (int64_t k = 0; k < d.num_rois; ++k) {
    const int64_t image = read_box(rois, k, d).image;
    by_image[image < 0 ? d.batch : image].push_back(k);
  }
  return by_image;
}

// NCHW: image by image, the image copied to channels-last (core/repack.h,
// one image of scratch), then its RoIs run as in NHWC.
template <typename T, typename C>
void forward_nchw(const PrRoiForwardArgs<T, C>& a, TaskRunner& runner) {
  const RoiDims& d = a.dims;
  const int64_t Cn = d.channels, HW = d.height * d.width;
  const int64_t nbins = d.pooled_height * d.pooled_width;
  const int64_t parts = 4 * runner.concurrency();
  const auto by_image = rois_by_image(a.rois, d);
  const ScratchLease scratch(sizeof(T) * static_cast<size_t>(HW * Cn));
  T* pixels = scratch.as<T>();
  for (int64_t n = 0; n <= d.batch; ++n) {
    const std::vector<int64_t>& rois = by_image[n];
    if (rois.empty()) continue;
    if (n < d.batch) repack_nchw_to_nhwc(a.features + n * Cn * HW, pixels, 1, Cn, HW, runner);
    parallel_ranges(runner, static_cast<int64_t>(rois.size()), parts,
                    [&](int64_t begin, int64_t end) {
                      std::vector<Tap<acc_t<T>>> taps;
                      std::vector<int64_t> bins;
                      std::vector<acc_t<T>> acc(Cn);
                      std::vector<T> staged(static_cast<size_t>(nbins * Cn));
                      for (int64_t i = begin; i < end; ++i) {
                        forward_roi(a, rois[i], pixels, &taps, &bins, &acc, staged.data(), false);
                      }
                    });
  }
}

// NCHW: image by image, the gradient summed in NHWC scratch (zeroed; the
// channel loop innermost and contiguous, tasks own blocks of channels) as in
// NHWC, then copied into place (core/repack.h). Each element gets its terms
// in the same order as in NHWC (RoI, bin, tap), so both layouts give the
// same bits.
template <typename T, typename C>
void backward_nchw(const PrRoiBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t Cn = d.channels, HW = d.height * d.width;
  const int64_t nbins = d.pooled_height * d.pooled_width;
  const auto by_image = rois_by_image(a.rois, d);
  const ScratchLease scratch(sizeof(A) * static_cast<size_t>(HW * Cn));
  A* pixels = scratch.as<A>();
  for (int64_t n = 0; n < d.batch; ++n) {
    A* planes = a.grad_features + n * Cn * HW;
    if (by_image[n].empty()) {
      zero_parallel(planes, Cn * HW, runner);
      continue;
    }
    zero_parallel(pixels, HW * Cn, runner);
    parallel_ranges(runner, Cn, channel_blocks(runner, true, Cn), [&](int64_t c0, int64_t c1) {
      const int64_t cb = c1 - c0;
      std::vector<Tap<A>> taps;
      std::vector<int64_t> begin;
      std::vector<T> rows(static_cast<size_t>(nbins * cb));  // the RoI's cotangent, (bin, c)
      for (int64_t k : by_image[n]) {
        const PrRoi<C> r = prroi_roi(read_box(a.rois, k, d), static_cast<C>(a.spatial_scale), d);
        if (r.empty) continue;
        const A area = static_cast<A>(r.area);
        roi_taps(r, d, &taps, &begin);
        transpose(a.grad_output + (k * Cn + c0) * nbins, nbins, rows.data(), cb, cb, nbins);
        for (int64_t bin = 0; bin < nbins; ++bin) {
          const T* g = rows.data() + bin * cb;
          for (int64_t j = begin[bin]; j < begin[bin + 1]; ++j) {
            A* p = pixels + taps[j].hw * Cn + c0;
            const A w = taps[j].w;
            for (int64_t c = 0; c < cb; ++c) p[c] += (static_cast<A>(load(g + c)) * w) / area;
          }
        }
      }
    });
    repack_nhwc_to_nchw(pixels, planes, 1, Cn, HW, runner);
  }
}

// NHWC: tasks own blocks of channels [c_begin, c_end) of the whole gradient.
template <typename T, typename C>
void backward_nhwc_channels(const PrRoiBackwardArgs<T, C>& a, int64_t c_begin, int64_t c_end) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t Cn = d.channels, HW = d.height * d.width;
  const int64_t nbins = d.pooled_height * d.pooled_width;
  std::vector<Tap<A>> taps;
  std::vector<int64_t> begin;
  for (int64_t k = 0; k < d.num_rois; ++k) {
    const PrRoi<C> r = prroi_roi(read_box(a.rois, k, d), static_cast<C>(a.spatial_scale), d);
    if (r.empty) continue;
    const A area = static_cast<A>(r.area);
    roi_taps(r, d, &taps, &begin);
    if (taps.empty()) continue;
    A* image = a.grad_features + r.image * HW * Cn;
    for (int64_t bin = 0; bin < nbins; ++bin) {
      const T* g = a.grad_output + (k * nbins + bin) * Cn;
      for (int64_t j = begin[bin]; j < begin[bin + 1]; ++j) {
        A* p = image + taps[j].hw * Cn;
        const A w = taps[j].w;
        for (int64_t c = c_begin; c < c_end; ++c) p[c] += (static_cast<A>(load(g + c)) * w) / area;
      }
    }
  }
}

// PrDirectFactors' values read from a cache: y(i) at ys[3 * (i - y_first)],
// likewise x(j).
struct PrCachedFactors {
  const double* ys;
  int64_t y_first;
  const double* xs;
  int64_t x_first;

  void y(int64_t i, double* w, double* t0, double* t1) const {
    const double* p = ys + 3 * (i - y_first);
    *w = p[0];
    *t0 = p[1];
    *t1 = p[2];
  }
  void x(int64_t j, double* w, double* t0, double* t1) const {
    const double* p = xs + 3 * (j - x_first);
    *w = p[0];
    *t0 = p[1];
    *t1 = p[2];
  }
};

}  // namespace

template <typename T, typename C>
void prroi_pool_forward(const PrRoiForwardArgs<T, C>& args, TaskRunner& runner) {
  if (args.dims.channels == 0) return;
  advise_huge_pages(args.output, output_count(args.dims));
  if (args.dims.layout == Layout::kNCHW) {
    forward_nchw(args, runner);
  } else {
    forward_nhwc(args, runner);
  }
}

template <typename T, typename C>
void prroi_pool_backward(const PrRoiBackwardArgs<T, C>& a, TaskRunner& runner) {
  const RoiDims& d = a.dims;
  const int64_t size = feature_count(d);
  advise_huge_pages(a.grad_features, size);
  if (d.layout == Layout::kNCHW) {
    backward_nchw(a, runner);
    return;
  }
  zero_parallel(a.grad_features, size, runner);
  parallel_ranges(runner, d.channels, channel_blocks(runner, true, d.channels),
                  [&](int64_t begin, int64_t end) { backward_nhwc_channels(a, begin, end); });
}

template <typename T, typename C>
void prroi_pool_box_grad(const PrRoiBoxGradArgs<T, C>& a, TaskRunner& runner) {
  const RoiDims& d = a.dims;
  const int64_t row = roi_row_size(d);
  const int64_t step = d.layout == Layout::kNCHW ? 1 : d.channels;
  const int64_t nbins = d.pooled_height * d.pooled_width;
  const int64_t per_roi = d.channels * nbins;
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(), [&](int64_t b, int64_t e) {
    std::vector<PrRoiGradSums> lanes(static_cast<size_t>(kPrRoiGradLanes));
    std::vector<PrBin<C>> bins(static_cast<size_t>(nbins));
    std::vector<double> factors;
    std::vector<int64_t> fy(static_cast<size_t>(nbins)), fx(static_cast<size_t>(nbins));
    for (int64_t k = b; k < e; ++k) {
      C* out = a.grad_rois + k * row;
      std::fill_n(out, row, C(0));
      const PrRoi<C> r = prroi_roi(read_box(a.rois, k, d), static_cast<C>(a.spatial_scale), d);
      if (r.empty || d.channels == 0) continue;
      // Every bin's factors, once per RoI (PrDirectFactors' values).
      factors.clear();
      for (int64_t bin = 0; bin < nbins; ++bin) {
        const PrDirectFactors<C> direct{
            prroi_bin(r, bin / d.pooled_width, bin % d.pooled_width, d)};
        bins[bin] = direct.b;
        fy[bin] = static_cast<int64_t>(factors.size());
        for (int64_t i = direct.b.ys.first; i < direct.b.ys.last; ++i) {
          double v[3];
          direct.y(i, &v[0], &v[1], &v[2]);
          factors.insert(factors.end(), v, v + 3);
        }
        fx[bin] = static_cast<int64_t>(factors.size());
        for (int64_t j = direct.b.xs.first; j < direct.b.xs.last; ++j) {
          double v[3];
          direct.x(j, &v[0], &v[1], &v[2]);
          factors.insert(factors.end(), v, v + 3);
        }
      }
      // Output j of the RoI to lane j % kPrRoiGradLanes, in increasing j: each
      // lane's sum is the CUDA kernel's (prroi_lane_sum).
      std::fill(lanes.begin(), lanes.end(), PrRoiGradSums{});
      for (int64_t j = 0; j < per_roi; ++j) {
        int64_t c, ph, pw;
        prroi_split_output(d, j, &c, &ph, &pw);
        const int64_t bin = ph * d.pooled_width + pw;
        const PrBin<C>& pb = bins[bin];
        const PrCachedFactors f{factors.data() + fy[bin], pb.ys.first, factors.data() + fx[bin],
                                pb.xs.first};
        const T* base = a.features + feature_index_hw(d, r.image, c, 0);
        const double g = static_cast<double>(load(a.grad_output + k * per_roi + j));
        prroi_box_grad_bin(base, step, r, pb, f, ph, pw, d, g,
                           &lanes[static_cast<size_t>(j % kPrRoiGradLanes)]);
      }
      for (int64_t s = kPrRoiGradLanes / 2; s > 0; s /= 2) {
        for (int64_t l = 0; l < s; ++l) {
          lanes[static_cast<size_t>(l)].merge(lanes[static_cast<size_t>(l + s)]);
        }
      }
      lanes[0].write(a.spatial_scale, out + (row - 4));
    }
  });
}

}  // namespace cpu
}  // namespace jax_roi

JAX_ROI_INSTANTIATE_CPU_KERNEL(prroi_pool_forward, PrRoiForwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(prroi_pool_backward, PrRoiBackwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(prroi_pool_box_grad, PrRoiBoxGradArgs)
