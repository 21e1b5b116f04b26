// RoIPool CPU kernels.
//
// Forward: one task per block of RoIs; each RoI's bin edges are computed
// once and reused for every channel. NCHW scans each bin's rows (contiguous)
// per channel with roi_pool_math.h's window_max; NHWC advances the running maxima
// of all channels together, pixel by pixel, the channel loop innermost and
// branch-free (vectorised), with window_max's comparison rule and order:
// row-major, strict '>', from -FLT_MAX.
//
// Backward: one task per block of channels, so no two tasks write the same
// element and each element receives its contributions in (RoI, bin) order
// whatever the number of threads: deterministic, torchvision's CPU order.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/box.h"
#include "core/dims.h"
#include "core/kernel.h"
#include "core/math.h"
#include "core/task_runner.h"
#include "core/types.h"
#include "roi_pool/roi_pool_kernels.h"
#include "roi_pool/roi_pool_math.h"

namespace jax_roi {
namespace cpu {
namespace {

template <typename T, typename C>
void pool_forward_rois(const PoolForwardArgs<T, C>& a, int64_t k_begin, int64_t k_end) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const C scale = static_cast<C>(a.spatial_scale);
  const int64_t H = d.height, W = d.width, Cn = d.channels, HW = H * W;
  const int64_t PH = d.pooled_height, PW = d.pooled_width, nbins = PH * PW;
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
      continue;
    }
    for (int64_t ph = 0; ph < PH; ++ph) {
      for (int64_t pw = 0; pw < PW; ++pw) {
        T* out = a.output + (k * nbins + ph * PW + pw) * Cn;
        int32_t* arg = a.argmax != nullptr ? a.argmax + (k * nbins + ph * PW + pw) * Cn : nullptr;
        if (rows[ph].empty() || cols[pw].empty()) {
          for (int64_t c = 0; c < Cn; ++c) store(out + c, A(0));
          if (arg != nullptr) std::fill_n(arg, Cn, -1);
          continue;
        }
        A* __restrict bp = best.data();
        int32_t* __restrict ip = best_index.data();
        std::fill_n(bp, Cn, pool_initial_max<A>());
        std::fill_n(ip, Cn, -1);
        for (int64_t h = rows[ph].start; h < rows[ph].end; ++h) {
          for (int64_t w = cols[pw].start; w < cols[pw].end; ++w) {
            const T* __restrict pixel = a.features + ((box.image * H + h) * W + w) * Cn;
            const int32_t hw = static_cast<int32_t>(h * W + w);
            for (int64_t c = 0; c < Cn; ++c) {
              const A v = load(pixel + c);
              const bool better = v > bp[c];
              bp[c] = better ? v : bp[c];
              ip[c] = better ? hw : ip[c];
            }
          }
        }
        for (int64_t c = 0; c < Cn; ++c) store(out + c, bp[c]);
        if (arg != nullptr) std::copy_n(ip, Cn, arg);
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
  const int64_t nbins = d.pooled_height * d.pooled_width;
  const int64_t parts = 4 * runner.concurrency();

  const int64_t grad_size = d.batch * Cn * HW;
  parallel_ranges(runner, grad_size, parts, [&](int64_t begin, int64_t end) {
    std::memset(a.grad_features + begin, 0, sizeof(A) * (end - begin));
  });

  parallel_ranges(runner, Cn, parts, [&](int64_t c_begin, int64_t c_end) {
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
      for (int64_t i = 0; i < nbins; ++i) {
        const int32_t* arg = a.argmax + (k * nbins + i) * Cn;
        const T* g = a.grad_output + (k * nbins + i) * Cn;
        for (int64_t c = c_begin; c < c_end; ++c) {
          const int64_t hw = arg[c];
          if (hw >= 0 && hw < HW) pixels[hw * Cn + c] += load(g + c);
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace jax_roi

JAX_ROI_INSTANTIATE_CPU_KERNEL(roi_pool_forward, PoolForwardArgs)
JAX_ROI_INSTANTIATE_CPU_KERNEL(roi_pool_backward, PoolBackwardArgs)
