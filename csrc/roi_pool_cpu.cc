// RoIPool CPU kernels.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"
#include "roi_math.h"

namespace jax_roi {
namespace cpu {
namespace {

// Splits [0, n) into at most `parts` contiguous ranges and runs
// fn(begin, end) for each of them through the runner.
template <typename T, typename C>
void pool_forward_rois(const PoolForwardArgs<T, C>& a, int64_t k_begin, int64_t k_end) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const C scale = static_cast<C>(a.spatial_scale);
  const int64_t H = d.height, W = d.width, Cn = d.channels;
  const int64_t PH = d.pooled_height, PW = d.pooled_width;
  std::vector<Window> rows(PH), cols(PW);
  std::vector<A> best;
  std::vector<int32_t> best_index;
  if (d.layout == Layout::kNHWC) {
    best.resize(Cn);
    best_index.resize(Cn);
  }
  for (int64_t k = k_begin; k < k_end; ++k) {
    const Box<C> box = read_box(a.rois, k, d);
    const PoolRoi<C> r = pool_roi(box, scale, d);
    for (int64_t ph = 0; ph < PH; ++ph) {
      rows[ph] = r.empty ? Window{0, 0} : pool_bin(ph, r.bin_h, r.start_h, H);
    }
    for (int64_t pw = 0; pw < PW; ++pw) {
      cols[pw] = r.empty ? Window{0, 0} : pool_bin(pw, r.bin_w, r.start_w, W);
    }
    if (d.layout == Layout::kNCHW) {
      for (int64_t c = 0; c < Cn; ++c) {
        const T* plane = r.empty ? nullptr : a.features + feature_index(d, box.image, c, 0, 0);
        for (int64_t ph = 0; ph < PH; ++ph) {
          for (int64_t pw = 0; pw < PW; ++pw) {
            const int64_t o = output_index(d, k, c, ph, pw);
            A value = A(0);
            int32_t index = -1;
            if (!rows[ph].empty() && !cols[pw].empty()) {
              value = window_max(plane, W, 1, W, rows[ph], cols[pw], &index);
            }
            store(a.output + o, value);
            if (a.argmax != nullptr) a.argmax[o] = index;
          }
        }
      }
    } else {
      // NHWC: channels are contiguous, so the running maxima of all channels
      // advance together pixel by pixel. Same comparisons, same order per
      // channel as window_max.
      for (int64_t ph = 0; ph < PH; ++ph) {
        for (int64_t pw = 0; pw < PW; ++pw) {
          const int64_t o = output_index(d, k, 0, ph, pw);
          if (rows[ph].empty() || cols[pw].empty()) {
            for (int64_t c = 0; c < Cn; ++c) store(a.output + o + c, A(0));
            if (a.argmax != nullptr) std::fill_n(a.argmax + o, Cn, -1);
            continue;
          }
          std::fill(best.begin(), best.end(), pool_initial_max<A>());
          std::fill(best_index.begin(), best_index.end(), -1);
          for (int64_t h = rows[ph].start; h < rows[ph].end; ++h) {
            for (int64_t w = cols[pw].start; w < cols[pw].end; ++w) {
              const T* pixel = a.features + feature_index(d, box.image, 0, h, w);
              const int32_t hw = static_cast<int32_t>(h * W + w);
              for (int64_t c = 0; c < Cn; ++c) {
                const A v = load(pixel + c);
                if (v > best[c]) {
                  best[c] = v;
                  best_index[c] = hw;
                }
              }
            }
          }
          for (int64_t c = 0; c < Cn; ++c) store(a.output + o + c, best[c]);
          if (a.argmax != nullptr) std::copy(best_index.begin(), best_index.end(), a.argmax + o);
        }
      }
    }
  }
}

}  // namespace

template <typename T, typename C>
void roi_pool_forward(const PoolForwardArgs<T, C>& args, TaskRunner& runner) {
  const RoiDims& d = args.dims;
  if (d.channels == 0 || d.pooled_height == 0 || d.pooled_width == 0) return;
  parallel_ranges(runner, d.num_rois, 4 * runner.concurrency(),
                  [&](int64_t begin, int64_t end) { pool_forward_rois(args, begin, end); });
}

template <typename T, typename C>
void roi_pool_backward(const PoolBackwardArgs<T, C>& a, TaskRunner& runner) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t HW = d.height * d.width;
  const int64_t Cn = d.channels;
  const int64_t PH = d.pooled_height, PW = d.pooled_width;
  const int64_t parts = 4 * runner.concurrency();

  const int64_t grad_size = d.batch * Cn * HW;
  parallel_ranges(runner, grad_size, parts, [&](int64_t begin, int64_t end) {
    std::memset(a.grad_features + begin, 0, sizeof(A) * (end - begin));
  });

  // Each task owns a block of channels: no two tasks write the same element,
  // and every element sees its RoIs and bins in ascending order.
  parallel_ranges(runner, Cn, parts, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t k = 0; k < d.num_rois; ++k) {
      const int64_t image = read_box(a.rois, k, d).image;
      if (image < 0) continue;
      for (int64_t ph = 0; ph < PH; ++ph) {
        for (int64_t pw = 0; pw < PW; ++pw) {
          for (int64_t c = c_begin; c < c_end; ++c) {
            const int64_t o = output_index(d, k, c, ph, pw);
            const int64_t hw = a.argmax[o];
            if (hw < 0 || hw >= HW) continue;
            a.grad_features[feature_index_hw(d, image, c, hw)] += load(a.grad_output + o);
          }
        }
      }
    }
  });
}

#define JAX_ROI_INSTANTIATE_POOL(T, C)                                              \
  template void roi_pool_forward<T, C>(const PoolForwardArgs<T, C>&, TaskRunner&); \
  template void roi_pool_backward<T, C>(const PoolBackwardArgs<T, C>&, TaskRunner&);

JAX_ROI_FOR_EACH_TYPE_PAIR(JAX_ROI_INSTANTIATE_POOL)
#undef JAX_ROI_INSTANTIATE_POOL

}  // namespace cpu
}  // namespace jax_roi
