// Rotated RoIAlign CPU kernels (forward, feature and box gradients).
//
// The sample positions and bilinear weights of a bin depend on the RoI and
// the bin, not on the channel: each bin's samples are computed once
// (roi_align_rotated_math.h) into a cache that every channel reuses in the
// same order, so the results are exactly those of the per-element math.
//  * forward: one task per block of RoIs, the channel loop innermost
//    (contiguous, vectorised); NCHW features are transposed image by image
//    to channels-last first (core/repack.h, one image of scratch memory);
//  * feature gradient: one task per block of channels, each over every RoI
//    in order, so every element receives its contributions in the order
//    (RoI, bin, sample, neighbour) whatever the number of threads. For NCHW
//    features whose RoIs read the map enough (core/repack.h's rule), the
//    gradient is summed in NHWC scratch, channels contiguous (vectorised),
//    then transposed into place: the same terms in the same order;
//  * box gradient: one task per block of RoIs, sums in a fixed order.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/bilinear.h"
#include "core/dims.h"
#include "core/kernel.h"
#include "core/math.h"
#include "core/quotient.h"
#include "core/repack.h"
#include "core/scratch.h"
#include "core/task_runner.h"
#include "core/types.h"
#include "roi_align_rotated/roi_align_rotated_kernels.h"
#include "roi_align_rotated/roi_align_rotated_math.h"

namespace jax_roi {
namespace cpu {
namespace {

template <typename A>
using Taps = BilinearTaps<A, int32_t>;

// The taps of every valid sample of every bin of one RoI, bin after bin
// (bin i: [begin[i], begin[i + 1])), so that NCHW loops run channel by
// channel over the whole RoI: each plane's footprint is read once per RoI.
template <typename C, typename A>
void roi_taps(const RotatedRoi<C>& r, const RoiDims& d, std::vector<Taps<A>>* taps,
              std::vector<int64_t>* begin) {
  taps->clear();
  begin->assign(d.pooled_height * d.pooled_width + 1, 0);
  for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
    for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
      (*begin)[ph * d.pooled_width + pw] = static_cast<int64_t>(taps->size());
      for_each_rotated_sample(r, rotated_bin(r, ph, pw, d), ph, pw, d,
                              [&](const RotatedSample<C>& rs) {
                                taps->push_back(bilinear_taps<A, int32_t>(rs.s, d.width));
                              });
    }
  }
  (*begin)[d.pooled_height * d.pooled_width] = static_cast<int64_t>(taps->size());
}

// The taps of every valid sample of bin (ph, pw), in sample order.
template <typename C, typename A>
void bin_taps(const RotatedRoi<C>& r, int64_t ph, int64_t pw, const RoiDims& d,
              std::vector<Taps<A>>* taps, std::vector<RotatedSample<C>>* samples = nullptr) {
  taps->clear();
  if (samples != nullptr) samples->clear();
  for_each_rotated_sample(r, rotated_bin(r, ph, pw, d), ph, pw, d, [&](const RotatedSample<C>& rs) {
    taps->push_back(bilinear_taps<A, int32_t>(rs.s, d.width));
    if (samples != nullptr) samples->push_back(rs);
  });
}

// Forward of RoI k from its image's pixels (channels contiguous: the
// features in NHWC, or an image transposed to it), every bin's channels
// accumulated together (vectorised), written in the output's layout.
template <typename T, typename C>
void forward_roi(const RotatedForwardArgs<T, C>& a, int64_t k, const T* pixels,
                 std::vector<Taps<acc_t<T>>>* taps, std::vector<int64_t>* begin,
                 std::vector<acc_t<T>>* acc) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RotatedOptions& o = a.options;
  const int64_t Cn = d.channels, nbins = d.pooled_height * d.pooled_width;
  const RotatedBox<C> box = read_rotated_box(a.rois, k, d);
  const RotatedRoi<C> r = rotated_roi(box, static_cast<C>(o.spatial_scale), o, d);
  const A count = static_cast<A>(r.count);
  roi_taps(r, d, taps, begin);
  for (int64_t bin = 0; bin < nbins; ++bin) {
    A* __restrict s = acc->data();
    std::fill_n(s, Cn, A(0));
    for (int64_t j = (*begin)[bin]; j < (*begin)[bin + 1]; ++j) {
      const Taps<A>& t = (*taps)[j];
      const T* __restrict p1 = pixels + t.o1 * Cn;
      const T* __restrict p2 = pixels + t.o2 * Cn;
      const T* __restrict p3 = pixels + t.o3 * Cn;
      const T* __restrict p4 = pixels + t.o4 * Cn;
      for (int64_t c = 0; c < Cn; ++c) {
        s[c] += bilinear_value(t.w1, t.w2, t.w3, t.w4, load(p1 + c), load(p2 + c), load(p3 + c),
                               load(p4 + c));
      }
    }
    if (d.layout == Layout::kNHWC) {
      T* out = a.output + (k * nbins + bin) * Cn;
      for (int64_t c = 0; c < Cn; ++c) store(out + c, s[c] / count);
    } else {
      T* out = a.output + k * Cn * nbins + bin;
      for (int64_t c = 0; c < Cn; ++c) store(out + c * nbins, s[c] / count);
    }
  }
}

// NHWC forward: one task per block of RoIs.
template <typename T, typename C>
void forward_nhwc(const RotatedForwardArgs<T, C>& a, TaskRunner& runner) {
  const RoiDims& d = a.dims;
  const int64_t HWC = d.height * d.width * d.channels;
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(), [&](int64_t begin, int64_t end) {
    std::vector<Taps<acc_t<T>>> taps;
    std::vector<int64_t> bins;
    std::vector<acc_t<T>> acc(d.channels);
    for (int64_t k = begin; k < end; ++k) {
      const int64_t image = read_rotated_box(a.rois, k, d).image;
      forward_roi(a, k, a.features + (image < 0 ? 0 : image) * HWC, &taps, &bins, &acc);
    }
  });
}

// NCHW forward: image by image, the image is transposed to channels-last
// (one image of scratch), then its RoIs run as in NHWC: gathers of
// contiguous channels instead of one scalar gather per channel.
template <typename T, typename C>
void forward_nchw(const RotatedForwardArgs<T, C>& a, TaskRunner& runner) {
  const RoiDims& d = a.dims;
  const int64_t Cn = d.channels, HW = d.height * d.width;
  const int64_t parts = 4 * runner.concurrency();
  std::vector<std::vector<int64_t>> by_image(d.batch + 1);  // last: padding rows
  for (int64_t k = 0; k < d.num_rois; ++k) {
    const int64_t image = read_rotated_box(a.rois, k, d).image;
    by_image[image < 0 ? d.batch : image].push_back(k);
  }
  const ScratchLease scratch(sizeof(T) * static_cast<size_t>(HW * Cn));
  T* pixels = scratch.as<T>();
  for (int64_t n = 0; n <= d.batch; ++n) {
    const std::vector<int64_t>& rois = by_image[n];
    if (rois.empty()) continue;
    // (Padding rows read no pixel.)
    if (n < d.batch) repack_nchw_to_nhwc(a.features + n * Cn * HW, pixels, 1, Cn, HW, runner);
    parallel_ranges(runner, static_cast<int64_t>(rois.size()), parts,
                    [&](int64_t begin, int64_t end) {
                      std::vector<Taps<acc_t<T>>> taps;
                      std::vector<int64_t> bins;
                      std::vector<acc_t<T>> acc(Cn);
                      for (int64_t i = begin; i < end; ++i) {
                        forward_roi(a, rois[i], pixels, &taps, &bins, &acc);
                      }
                    });
  }
}

// Feature gradient of every RoI, in RoI order, for channels [c_begin,
// c_end). grad: the gradient in the features' layout, or (nhwc_grad, NCHW
// features) in NHWC scratch; the cotangent is read in its own layout.
template <typename T, typename C>
void backward_channels(const RotatedBackwardArgs<T, C>& a, acc_t<T>* grad, bool nhwc_grad,
                       int64_t c_begin, int64_t c_end) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RotatedOptions& o = a.options;
  const int64_t Cn = d.channels, HW = d.height * d.width, cn = c_end - c_begin;
  const int64_t PH = d.pooled_height, PW = d.pooled_width, nbins = PH * PW;
  const bool planes = d.layout == Layout::kNCHW && !nhwc_grad;
  std::vector<Taps<A>> taps;
  std::vector<int64_t> begin;
  std::vector<A> cotangent(static_cast<size_t>(cn));
  for (int64_t k = 0; k < d.num_rois; ++k) {
    const RotatedBox<C> box = read_rotated_box(a.rois, k, d);
    const RotatedRoi<C> r = rotated_roi(box, static_cast<C>(o.spatial_scale), o, d);
    if (r.empty) continue;
    const CountDivider<A> div(static_cast<A>(r.count));
    roi_taps(r, d, &taps, &begin);
    if (taps.empty()) continue;
    if (planes) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        const T* g = a.grad_output + (k * Cn + c) * nbins;
        A* plane = grad + (box.image * Cn + c) * HW;
        for (int64_t bin = 0; bin < nbins; ++bin) {
          const A gb = load(g + bin);
          for (int64_t j = begin[bin]; j < begin[bin + 1]; ++j) {
            bilinear_scatter(plane, 1, taps[j], [&](A* p, A w) { *p += div(gb * w); });
          }
        }
      }
      continue;
    }
    A* image = grad + box.image * HW * Cn + c_begin;
    for (int64_t bin = 0; bin < nbins; ++bin) {
      A* __restrict g = cotangent.data();
      if (d.layout == Layout::kNCHW) {  // The cotangent's channels are nbins apart.
        const T* go = a.grad_output + (k * Cn + c_begin) * nbins + bin;
        for (int64_t c = 0; c < cn; ++c) g[c] = load(go + c * nbins);
      } else {
        const T* go = a.grad_output + (k * nbins + bin) * Cn + c_begin;
        for (int64_t c = 0; c < cn; ++c) g[c] = load(go + c);
      }
      const CotangentRange<A> range = cotangent_range(g, cn);
      for (int64_t j = begin[bin]; j < begin[bin + 1]; ++j) {
        // The four neighbours may coincide: four separate passes, in order.
        bilinear_scatter(image, Cn, taps[j],
                         [&](A* p, A w) { add_quotients(p, g, w, div, range, cn); });
      }
    }
  }
}

// (h, w) positions the RoIs' samples read, four per sample (at most: the
// samples outside the map read none).
template <typename T, typename C>
int64_t rotated_pixels_read(const RotatedBackwardArgs<T, C>& a) {
  const RoiDims& d = a.dims;
  const int64_t nbins = d.pooled_height * d.pooled_width;
  int64_t reads = 0;
  for (int64_t k = 0; k < d.num_rois; ++k) {
    const RotatedRoi<C> r = rotated_roi(read_rotated_box(a.rois, k, d),
                                        static_cast<C>(a.options.spatial_scale), a.options, d);
    if (!r.empty && r.grid_h > 0 && r.grid_w > 0) reads += 4 * nbins * r.grid_h * r.grid_w;
  }
  return reads;
}

template <typename T, typename C>
void box_grad_rois(const RotatedBoxGradArgs<T, C>& a, int64_t k_begin, int64_t k_end) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RotatedOptions& o = a.options;
  const int64_t Cn = d.channels, HW = d.height * d.width;
  const int64_t PH = d.pooled_height, PW = d.pooled_width;
  const int64_t row = rotated_row_size(d);
  const int64_t step = d.layout == Layout::kNCHW ? 1 : Cn;
  std::vector<Taps<A>> taps;
  std::vector<RotatedSample<C>> samples;
  for (int64_t k = k_begin; k < k_end; ++k) {
    C* out = a.grad_rois + k * row;
    std::fill_n(out, row, C(0));
    const RotatedBox<C> box = read_rotated_box(a.rois, k, d);
    const RotatedRoi<C> r = rotated_roi(box, static_cast<C>(o.spatial_scale), o, d);
    if (r.empty) continue;
    RotatedGradSums sums;
    const double count = static_cast<double>(r.count);
    for (int64_t ph = 0; ph < PH; ++ph) {
      for (int64_t pw = 0; pw < PW; ++pw) {
        bin_taps(r, ph, pw, d, &taps, &samples);
        for (const RotatedSample<C>& rs : samples) {
          double gy = 0, gx = 0;
          for (int64_t c = 0; c < Cn; ++c) {
            const T* base = a.features + feature_index_hw(d, box.image, c, 0);
            const double g =
                static_cast<double>(load(a.grad_output + output_index(d, k, c, ph, pw))) / count;
            rotated_sample_grad(base, step, d.width, rs.s, g, &gy, &gx);
          }
          sums.add(r, rs, ph, pw, d, gy, gx);
        }
      }
    }
    sums.write(r, o, out + (row - 5));
  }
  static_cast<void>(HW);
}

}  // namespace

template <typename T, typename C>
void roi_align_rotated_forward(const RotatedForwardArgs<T, C>& args, TaskRunner& runner) {
  if (args.dims.channels == 0) return;
  advise_huge_pages(args.output, output_count(args.dims));
  if (args.dims.layout == Layout::kNCHW) {
    forward_nchw(args, runner);
  } else {
    forward_nhwc(args, runner);
  }
}

template <typename T, typename C>
void roi_align_rotated_backward(const RotatedBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t size = feature_count(d), HW = d.height * d.width;
  advise_huge_pages(a.grad_features, size);
  const bool nhwc_grad = d.layout == Layout::kNCHW && d.channels > 0 && d.num_rois > 0 &&
                         repack_pays(rotated_pixels_read(a), d.batch * HW, d.channels, sizeof(A));
  const ScratchLease scratch(nhwc_grad ? sizeof(A) * static_cast<size_t>(size) : 0);
  A* grad = nhwc_grad ? scratch.as<A>() : a.grad_features;
  zero_parallel(grad, size, runner);
  const int64_t blocks = channel_blocks(runner, d.layout == Layout::kNHWC || nhwc_grad, d.channels);
  parallel_ranges(runner, d.channels, blocks, [&](int64_t begin, int64_t end) {
    backward_channels(a, grad, nhwc_grad, begin, end);
  });
  if (nhwc_grad) repack_nhwc_to_nchw(grad, a.grad_features, d.batch, d.channels, HW, runner);
}

template <typename T, typename C>
void roi_align_rotated_box_grad(const RotatedBoxGradArgs<T, C>& args, TaskRunner& runner) {
  parallel_ranges(runner, args.dims.num_rois, 4 * runner.concurrency(),
                  [&](int64_t begin, int64_t end) { box_grad_rois(args, begin, end); });
}

}  // namespace cpu
}  // namespace jax_roi

JAX_ROI_INSTANTIATE_CPU_KERNEL(roi_align_rotated_forward, RotatedForwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(roi_align_rotated_backward, RotatedBackwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(roi_align_rotated_box_grad, RotatedBoxGradArgs)
