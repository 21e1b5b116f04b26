// RoIAlign CPU kernels (avg and max modes, feature and box gradients).
//
// Sample positions and bilinear weights depend on the RoI and the bin, not on
// the channel: each RoI's samples are computed once (roi_math.h) into a
// cache that every channel then reuses, in the same order, so the results are
// those of the per-element math.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"
#include "roi_math.h"

namespace jax_roi {
namespace cpu {
namespace {

// One sample of the sampling region: the spatial offsets (h * W + w) of its
// four neighbours, its bilinear weights and grid indices.
template <typename C, typename A>
struct CachedSample {
  int64_t o1, o2, o3, o4;
  A w1, w2, w3, w4;
  int64_t iy, ix;
  Bilinear<C> b;
};

// The samples of every bin of one RoI, bin after bin.
template <typename C, typename A>
struct RoiSamples {
  AlignRoi<C> roi;
  std::vector<AlignBin> bins;
  std::vector<int64_t> begin;  // Samples of bin i: [begin[i], begin[i + 1]).
  std::vector<CachedSample<C, A>> samples;

  void build(const Box<C>& box, const AlignOptions& o, const RoiDims& d) {
    roi = align_roi(box, static_cast<C>(o.spatial_scale), o.aligned, o.sampling_ratio, d);
    const int64_t nbins = d.pooled_height * d.pooled_width;
    bins.resize(nbins);
    begin.resize(nbins + 1);
    samples.clear();
    const int64_t w = d.width;
    for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
      for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
        const int64_t i = ph * d.pooled_width + pw;
        bins[i] = align_bin(roi, ph, pw, d);
        begin[i] = static_cast<int64_t>(samples.size());
        for_each_sample(roi, bins[i], ph, pw, d,
                        [&](int64_t iy, int64_t ix, const Bilinear<C>& s) {
                          samples.push_back(CachedSample<C, A>{
                              s.y_low * w + s.x_low, s.y_low * w + s.x_high,
                              s.y_high * w + s.x_low, s.y_high * w + s.x_high,
                              static_cast<A>(s.w1), static_cast<A>(s.w2),
                              static_cast<A>(s.w3), static_cast<A>(s.w4), iy, ix, s});
                        });
      }
    }
    begin[nbins] = static_cast<int64_t>(samples.size());
  }
};

template <typename T, typename C>
void align_forward_rois(const AlignForwardArgs<T, C>& a, int64_t k_begin, int64_t k_end) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const AlignOptions& o = a.options;
  const int64_t Cn = d.channels, HW = d.height * d.width;
  const int64_t nbins = d.pooled_height * d.pooled_width;
  const bool with_argmax = o.max_mode && a.argmax_y != nullptr;
  RoiSamples<C, A> cache;
  std::vector<A> acc;
  std::vector<MaxSample<A>> best;
  if (d.layout == Layout::kNHWC) {
    acc.resize(Cn);
    best.resize(Cn);
  }
  for (int64_t k = k_begin; k < k_end; ++k) {
    const Box<C> box = read_box(a.rois, k, d);
    cache.build(box, o, d);
    const A count = static_cast<A>(cache.roi.count);
    const int64_t image = cache.roi.empty ? 0 : box.image;
    if (d.layout == Layout::kNCHW) {
      for (int64_t c = 0; c < Cn; ++c) {
        const T* plane = a.features + (image * Cn + c) * HW;
        for (int64_t i = 0; i < nbins; ++i) {
          const int64_t out = (k * Cn + c) * nbins + i;
          const CachedSample<C, A>* s = cache.samples.data() + cache.begin[i];
          const CachedSample<C, A>* end = cache.samples.data() + cache.begin[i + 1];
          if (!o.max_mode) {
            A sum = A(0);
            for (; s != end; ++s) {
              sum += bilinear_value(s->w1, s->w2, s->w3, s->w4, load(plane + s->o1),
                                    load(plane + s->o2), load(plane + s->o3),
                                    load(plane + s->o4));
            }
            store(a.output + out, sum / count);
          } else {
            const int64_t grid_w = cache.bins[i].grid_w;
            MaxSample<A> m;
            m.init();
            for (; s != end; ++s) {
              m.offer(bilinear_value(s->w1, s->w2, s->w3, s->w4, load(plane + s->o1),
                                     load(plane + s->o2), load(plane + s->o3),
                                     load(plane + s->o4)),
                      s->iy * grid_w + s->ix, s->iy, s->ix);
            }
            m.finish(cache.bins[i], first_outside(cache.bins[i]));
            store(a.output + out, m.value);
            if (with_argmax) {
              a.argmax_y[out] = static_cast<int32_t>(m.iy);
              a.argmax_x[out] = static_cast<int32_t>(m.ix);
            }
          }
        }
      }
    } else {
      // NHWC: the channels of a pixel are contiguous; every channel advances
      // through the same samples in the same order.
      const T* pixels = a.features + image * HW * Cn;
      for (int64_t i = 0; i < nbins; ++i) {
        const int64_t out = (k * nbins + i) * Cn;
        const CachedSample<C, A>* s = cache.samples.data() + cache.begin[i];
        const CachedSample<C, A>* end = cache.samples.data() + cache.begin[i + 1];
        if (!o.max_mode) {
          std::fill(acc.begin(), acc.end(), A(0));
          for (; s != end; ++s) {
            const T* p1 = pixels + s->o1 * Cn;
            const T* p2 = pixels + s->o2 * Cn;
            const T* p3 = pixels + s->o3 * Cn;
            const T* p4 = pixels + s->o4 * Cn;
            for (int64_t c = 0; c < Cn; ++c) {
              acc[c] += bilinear_value(s->w1, s->w2, s->w3, s->w4, load(p1 + c), load(p2 + c),
                                       load(p3 + c), load(p4 + c));
            }
          }
          for (int64_t c = 0; c < Cn; ++c) store(a.output + out + c, acc[c] / count);
        } else {
          const int64_t grid_w = cache.bins[i].grid_w;
          for (auto& m : best) m.init();
          for (; s != end; ++s) {
            const T* p1 = pixels + s->o1 * Cn;
            const T* p2 = pixels + s->o2 * Cn;
            const T* p3 = pixels + s->o3 * Cn;
            const T* p4 = pixels + s->o4 * Cn;
            const int64_t index = s->iy * grid_w + s->ix;
            for (int64_t c = 0; c < Cn; ++c) {
              best[c].offer(bilinear_value(s->w1, s->w2, s->w3, s->w4, load(p1 + c),
                                           load(p2 + c), load(p3 + c), load(p4 + c)),
                            index, s->iy, s->ix);
            }
          }
          const int64_t outside = first_outside(cache.bins[i]);
          for (int64_t c = 0; c < Cn; ++c) {
            best[c].finish(cache.bins[i], outside);
            store(a.output + out + c, best[c].value);
            if (with_argmax) {
              a.argmax_y[out + c] = static_cast<int32_t>(best[c].iy);
              a.argmax_x[out + c] = static_cast<int32_t>(best[c].ix);
            }
          }
        }
      }
    }
  }
}

}  // namespace

template <typename T, typename C>
void roi_align_forward(const AlignForwardArgs<T, C>& args, TaskRunner& runner) {
  const RoiDims& d = args.dims;
  if (d.channels == 0) return;
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(),
                  [&](int64_t begin, int64_t end) { align_forward_rois(args, begin, end); });
}

template <typename T, typename C>
void roi_align_backward(const AlignBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const AlignOptions& o = a.options;
  const int64_t Cn = d.channels, HW = d.height * d.width;
  const int64_t nbins = d.pooled_height * d.pooled_width;
  const int64_t parts = 4 * runner.concurrency();
  parallel_ranges(runner, d.batch * Cn * HW, parts, [&](int64_t begin, int64_t end) {
    std::memset(a.grad_features + begin, 0, sizeof(A) * (end - begin));
  });

  // Each task owns a block of channels, so no two tasks write the same
  // element, and every element receives its contributions in the order
  // (RoI, bin, sample, neighbour) whatever the number of tasks.
  parallel_ranges(runner, Cn, parts, [&](int64_t c_begin, int64_t c_end) {
    RoiSamples<C, A> cache;
    for (int64_t k = 0; k < d.num_rois; ++k) {
      const Box<C> box = read_box(a.rois, k, d);
      if (box.image < 0) continue;
      if (!o.max_mode) {
        cache.build(box, o, d);
        if (cache.roi.empty) continue;
        const A count = static_cast<A>(cache.roi.count);
        for (int64_t i = 0; i < nbins; ++i) {
          const CachedSample<C, A>* first = cache.samples.data() + cache.begin[i];
          const CachedSample<C, A>* end = cache.samples.data() + cache.begin[i + 1];
          if (first == end) continue;
          for (int64_t c = c_begin; c < c_end; ++c) {
            const A g = load(a.grad_output + output_index(d, k, c, i / d.pooled_width,
                                                          i % d.pooled_width));
            A* grad = a.grad_features + feature_index_hw(d, box.image, c, 0);
            const int64_t step = d.layout == Layout::kNCHW ? 1 : Cn;
            for (const CachedSample<C, A>* s = first; s != end; ++s) {
              grad[s->o1 * step] += g * s->w1 / count;
              grad[s->o2 * step] += g * s->w2 / count;
              grad[s->o3 * step] += g * s->w3 / count;
              grad[s->o4 * step] += g * s->w4 / count;
            }
          }
        }
      } else {
        const AlignRoi<C> r = align_roi(box, static_cast<C>(o.spatial_scale), o.aligned,
                                        o.sampling_ratio, d);
        for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
          for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
            for (int64_t c = c_begin; c < c_end; ++c) {
              const int64_t out = output_index(d, k, c, ph, pw);
              const Bilinear<C> s = winning_sample(r, ph, pw, a.argmax_y[out], a.argmax_x[out], d);
              if (!s.valid) continue;
              const A g = load(a.grad_output + out);
              A* grad = a.grad_features + feature_index_hw(d, box.image, c, 0);
              const int64_t step = d.layout == Layout::kNCHW ? 1 : Cn;
              const int64_t W = d.width;
              grad[(s.y_low * W + s.x_low) * step] += g * static_cast<A>(s.w1);
              grad[(s.y_low * W + s.x_high) * step] += g * static_cast<A>(s.w2);
              grad[(s.y_high * W + s.x_low) * step] += g * static_cast<A>(s.w3);
              grad[(s.y_high * W + s.x_high) * step] += g * static_cast<A>(s.w4);
            }
          }
        }
      }
    }
  });
}

template <typename T, typename C>
void roi_align_box_grad(const AlignBoxGradArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const AlignOptions& o = a.options;
  const int64_t Cn = d.channels, W = d.width;
  const int64_t row = d.rois_per_image > 0 ? 4 : 5;
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(),
                  [&](int64_t k_begin, int64_t k_end) {
    RoiSamples<C, A> cache;
    for (int64_t k = k_begin; k < k_end; ++k) {
      C* out = a.grad_rois + k * row;
      std::fill_n(out, row, C(0));
      const Box<C> box = read_box(a.rois, k, d);
      if (box.image < 0) continue;
      cache.build(box, o, d);
      const AlignRoi<C>& r = cache.roi;
      if (r.empty) continue;
      // Summed in double, in a fixed order: channels, bins, samples.
      BoxGradSums sums;
      const double inv_count = o.max_mode ? 1.0 : 1.0 / static_cast<double>(r.count);
      const int64_t step = d.layout == Layout::kNCHW ? 1 : Cn;
      auto add = [&](const Bilinear<C>& s, int64_t ph, int64_t pw, int64_t iy, int64_t ix,
                     double g, const T* base) {
        sums.add(s, load(base + (s.y_low * W + s.x_low) * step),
                 load(base + (s.y_low * W + s.x_high) * step),
                 load(base + (s.y_high * W + s.x_low) * step),
                 load(base + (s.y_high * W + s.x_high) * step), g,
                 sample_coord_dbin<C>(ph, iy, r.grid_h), sample_coord_dbin<C>(pw, ix, r.grid_w));
      };
      for (int64_t c = 0; c < Cn; ++c) {
        const T* base = a.features + feature_index_hw(d, box.image, c, 0);
        for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
          for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
            const int64_t out_index = output_index(d, k, c, ph, pw);
            const double g = static_cast<double>(load(a.grad_output + out_index)) * inv_count;
            if (!o.max_mode) {
              const int64_t i = ph * d.pooled_width + pw;
              for (int64_t j = cache.begin[i]; j < cache.begin[i + 1]; ++j) {
                const CachedSample<C, A>& s = cache.samples[j];
                add(s.b, ph, pw, s.iy, s.ix, g, base);
              }
            } else {
              const int32_t iy = a.argmax_y[out_index], ix = a.argmax_x[out_index];
              const Bilinear<C> s = winning_sample(r, ph, pw, iy, ix, d);
              if (s.valid) add(s, ph, pw, iy, ix, g, base);
            }
          }
        }
      }
      sums.write(r, o.spatial_scale, d, out + (row - 4));
    }
  });
}

#define JAX_ROI_INSTANTIATE_ALIGN(T, C)                                                   \
  template void roi_align_forward<T, C>(const AlignForwardArgs<T, C>&, TaskRunner&);     \
  template void roi_align_backward<T, C>(const AlignBackwardArgs<T, C>&, TaskRunner&);   \
  template void roi_align_box_grad<T, C>(const AlignBoxGradArgs<T, C>&, TaskRunner&);
JAX_ROI_FOR_EACH_TYPE_PAIR(JAX_ROI_INSTANTIATE_ALIGN)
#undef JAX_ROI_INSTANTIATE_ALIGN

}  // namespace cpu
}  // namespace jax_roi
