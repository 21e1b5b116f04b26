// CPU kernels of the position-sensitive RoI ops.
//
// Forward: one task per block of RoIs. Each RoI's bins (ps_roi_pool: row and
// column windows; ps_roi_align: the samples of every bin, bilinear taps in a
// per-RoI cache) are computed once and reused for every output channel. In
// NHWC the channel loop is innermost (the input channels of one bin are
// PH * PW apart), so the bins of all output channels advance together.
//
// Backward: one task per block of INPUT channels, so no two tasks write the
// same element; every input channel belongs to exactly one (output channel,
// bin), and each element receives its contributions in RoI order (then
// sample order) whatever the number of threads: deterministic.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/bilinear.h"
#include "core/box.h"
#include "core/dims.h"
#include "core/kernel.h"
#include "core/sample_grid.h"
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
void ps_align_forward_rois(const PsAlignForwardArgs<T, C>& a, int64_t k_begin, int64_t k_end) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t H = d.height, W = d.width, Co = d.channels, Ci = in.channels, HW = H * W;
  const int64_t PH = d.pooled_height, PW = d.pooled_width, nbins = PH * PW;
  const int64_t step = d.layout == Layout::kNCHW ? 1 : Ci;
  PsRoiSamples<C, A> s;
  std::vector<A> acc(d.layout == Layout::kNHWC ? Co : 0);
  for (int64_t k = k_begin; k < k_end; ++k) {
    if (!ps_cacheable(a.rois, k, a.spatial_scale, a.sampling_ratio, d)) {
      // Straight from the samples (a huge RoI), element by element.
      const Box<C> box = read_box(a.rois, k, d);
      const AlignRoi<C> r = ps_align_roi(box, static_cast<C>(a.spatial_scale), a.sampling_ratio, d);
      for (int64_t c = 0; c < Co; ++c) {
        for (int64_t ph = 0; ph < PH; ++ph) {
          for (int64_t pw = 0; pw < PW; ++pw) {
            const T* base = a.features + feature_index_hw(in, r.empty ? 0 : box.image,
                                                          ps_input_channel(d, c, ph, pw), 0);
            store(a.output + output_index(d, k, c, ph, pw),
                  align_output_avg(base, step, r, align_bin(r, ph, pw, d), ph, pw, d));
          }
        }
      }
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

}  // namespace

template <typename T, typename C>
void ps_roi_pool_forward(const PsPoolForwardArgs<T, C>& args, TaskRunner& runner) {
  const RoiDims& d = args.dims;
  if (d.channels == 0 || d.num_rois == 0) return;
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(),
                  [&](int64_t begin, int64_t end) { ps_pool_forward_rois(args, begin, end); });
}

template <typename T, typename C>
void ps_roi_pool_backward(const PsPoolBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t H = d.height, W = d.width, HW = H * W, Ci = in.channels;
  const int64_t PW = d.pooled_width, nbins = d.pooled_height * PW;
  zero_parallel(a.grad_features, d.batch * Ci * HW, runner);
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
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(),
                  [&](int64_t begin, int64_t end) { ps_align_forward_rois(args, begin, end); });
}

template <typename T, typename C>
void ps_roi_align_backward(const PsAlignBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t HW = d.height * d.width, Ci = in.channels;
  const int64_t PW = d.pooled_width, nbins = d.pooled_height * PW;
  const int64_t step = d.layout == Layout::kNCHW ? 1 : Ci;
  zero_parallel(a.grad_features, d.batch * Ci * HW, runner);
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
