// CUDA kernels of the position-sensitive RoI ops and their launchers. The
// per-element math is ps_roi_math.h (and roi_align_math.h), shared with the
// CPU kernels. Kernel code only: no XLA FFI, and launches go through
// core/cuda_compat.h, so that this header also compiles with a host compiler
// under JAX_ROI_CUDA_EMULATION. Instantiated by roi_kernels.cu.
#ifndef JAX_ROI_CSRC_PS_ROI_PS_ROI_CUDA_CUH_
#define JAX_ROI_CSRC_PS_ROI_PS_ROI_CUDA_CUH_

#include <cstdint>

#include "core/bilinear.h"
#include "core/box.h"
#include "core/cuda_compat.h"
#include "core/cuda_launch.h"
#include "core/dims.h"
#include "core/types.h"
#include "ps_roi/ps_roi_kernels.h"
#include "ps_roi/ps_roi_math.h"
#include "roi_align/roi_align_cuda.cuh"
#include "roi_align/roi_align_math.h"

namespace jax_roi::cuda {

// One thread per output element (dims: the output's).
template <typename T, typename C>
__global__ void ps_roi_pool_forward_kernel(PsPoolForwardArgs<T, C> a, int64_t total) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t step = d.layout == Layout::kNCHW ? 1 : in.channels;
  const C scale = static_cast<C>(a.spatial_scale);
  for_each_output(d, total, [&](int64_t i, int64_t k, int64_t c, int64_t ph, int64_t pw) {
    const Box<C> box = read_box(a.rois, k, d);
    const PsPoolRoi<C> r = ps_pool_roi(box, scale, d);
    const PsWindow rows = ps_pool_bin(r.empty, ph, r.bin_h, r.start_h, d.height);
    const PsWindow cols = ps_pool_bin(r.empty, pw, r.bin_w, r.start_w, d.width);
    A value = A(0);
    if (!rows.empty() && !cols.empty()) {
      const T* base =
          a.features + feature_index_hw(in, box.image, ps_input_channel(d, c, ph, pw), 0);
      value = ps_pool_mean(base, step, d.width, rows, cols);
    }
    store(a.output + i, value);
  });
}

template <typename T, typename C>
__global__ void ps_roi_pool_backward_kernel(PsPoolBackwardArgs<T, C> a, int64_t total) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t step = d.layout == Layout::kNCHW ? 1 : in.channels;
  const C scale = static_cast<C>(a.spatial_scale);
  for_each_output(d, total, [&](int64_t i, int64_t k, int64_t c, int64_t ph, int64_t pw) {
    const Box<C> box = read_box(a.rois, k, d);
    const PsPoolRoi<C> r = ps_pool_roi(box, scale, d);
    const PsWindow rows = ps_pool_bin(r.empty, ph, r.bin_h, r.start_h, d.height);
    const PsWindow cols = ps_pool_bin(r.empty, pw, r.bin_w, r.start_w, d.width);
    if (rows.empty() || cols.empty()) return;
    const A g = load(a.grad_output + i) / ps_pool_area<A>(rows, cols);
    A* grad = a.grad_features + feature_index_hw(in, box.image, ps_input_channel(d, c, ph, pw), 0);
    for (int64_t h = rows.start; h < rows.end; ++h) {
      for (int64_t w = cols.start; w < cols.end; ++w) {
        atomicAdd(grad + (h * d.width + w) * step, g);
      }
    }
  });
}

template <typename T, typename C>
__global__ void ps_roi_align_forward_kernel(PsAlignForwardArgs<T, C> a, int64_t total) {
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t step = d.layout == Layout::kNCHW ? 1 : in.channels;
  const C scale = static_cast<C>(a.spatial_scale);
  for_each_output(d, total, [&](int64_t i, int64_t k, int64_t c, int64_t ph, int64_t pw) {
    const Box<C> box = read_box(a.rois, k, d);
    const AlignRoi<C> r = ps_align_roi(box, scale, a.sampling_ratio, d);
    const T* base = a.features + feature_index_hw(in, r.empty ? 0 : box.image,
                                                  ps_input_channel(d, c, ph, pw), 0);
    store(a.output + i, align_output_avg(base, step, r, align_bin(r, ph, pw, d), ph, pw, d));
  });
}

template <typename T, typename C>
__global__ void ps_roi_align_backward_kernel(PsAlignBackwardArgs<T, C> a, int64_t total) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t step = d.layout == Layout::kNCHW ? 1 : in.channels;
  const C scale = static_cast<C>(a.spatial_scale);
  for_each_output(d, total, [&](int64_t i, int64_t k, int64_t c, int64_t ph, int64_t pw) {
    const Box<C> box = read_box(a.rois, k, d);
    const AlignRoi<C> r = ps_align_roi(box, scale, a.sampling_ratio, d);
    if (r.empty) return;
    A* grad = a.grad_features + feature_index_hw(in, box.image, ps_input_channel(d, c, ph, pw), 0);
    const A g = load(a.grad_output + i);
    const CountDivider<A> div(static_cast<A>(r.count));
    for_each_sample(r, align_bin(r, ph, pw, d), ph, pw, d,
                    [&](int64_t, int64_t, const Bilinear<C>& s) {
                      bilinear_scatter(grad, step, bilinear_taps<A>(s, d.width),
                                       [&](A* p, A w) { atomicAdd(p, div(g * w)); });
                    });
  });
}

// One block per RoI: the RoI's outputs summed in kBoxGradLanes lanes and a
// fixed tree (roi_align_math.h), as the CPU kernel sums them: deterministic,
// the same bits on both back ends whatever the block size.
template <typename T, typename C>
__global__ void ps_roi_align_box_grad_kernel(PsAlignBoxGradArgs<T, C> a) {
  JAX_ROI_DYNAMIC_SHARED(BoxGradSums, lanes);  // kBoxGradLanes of them
  const RoiDims& d = a.dims;
  const RoiDims in = ps_input_dims(d);
  const int64_t step = d.layout == Layout::kNCHW ? 1 : in.channels;
  const int64_t row = roi_row_size(d);
  const C scale = static_cast<C>(a.spatial_scale);
  const int64_t per_roi = d.channels * d.pooled_height * d.pooled_width;
  for (int64_t k = blockIdx.x; k < d.num_rois; k += gridDim.x) {
    C* out = a.grad_rois + k * row;
    const Box<C> box = read_box(a.rois, k, d);
    const AlignRoi<C> r = ps_align_roi(box, scale, a.sampling_ratio, d);
    // The same for every thread of the block: no thread skips a barrier.
    if (r.empty || d.channels == 0 || d.height == 0 || d.width == 0) {
      for (int64_t j = threadIdx.x; j < row; j += blockDim.x) out[j] = C(0);
      continue;
    }
    const double count = static_cast<double>(r.count);
    for (int64_t l = threadIdx.x; l < kBoxGradLanes; l += blockDim.x) {
      BoxGradSums sums;
      for (int64_t j = l; j < per_roi; j += kBoxGradLanes) {
        int64_t c, ph, pw;
        split_roi_output(d, j, &c, &ph, &pw);
        const T* base =
            a.features + feature_index_hw(in, box.image, ps_input_channel(d, c, ph, pw), 0);
        const double g = static_cast<double>(load(a.grad_output + k * per_roi + j)) / count;
        align_box_grad_output(base, step, r, ph, pw, d, false, -1, -1, g, &sums);
      }
      lanes[l] = sums;
    }
    write_box_grad(lanes, r, a.spatial_scale, d, out, row);
  }
}

template <typename T, typename C>
cudaError_t ps_roi_pool_forward(cudaStream_t stream, const PsPoolForwardArgs<T, C>& args) {
  return launch_per_output<ps_roi_pool_forward_kernel<T, C>>(stream, args);
}

template <typename T, typename C>
cudaError_t ps_roi_pool_backward(cudaStream_t stream, const PsPoolBackwardArgs<T, C>& args) {
  const RoiDims in = ps_input_dims(args.dims);
  const cudaError_t err =
      zero_async(args.grad_features, in.batch * in.channels * in.height * in.width, stream);
  if (err != cudaSuccess) return err;
  return launch_per_output<ps_roi_pool_backward_kernel<T, C>>(stream, args);
}

template <typename T, typename C>
cudaError_t ps_roi_align_forward(cudaStream_t stream, const PsAlignForwardArgs<T, C>& args) {
  return launch_per_output<ps_roi_align_forward_kernel<T, C>>(stream, args);
}

template <typename T, typename C>
cudaError_t ps_roi_align_backward(cudaStream_t stream, const PsAlignBackwardArgs<T, C>& args) {
  const RoiDims in = ps_input_dims(args.dims);
  const cudaError_t err =
      zero_async(args.grad_features, in.batch * in.channels * in.height * in.width, stream);
  if (err != cudaSuccess) return err;
  return launch_per_output<ps_roi_align_backward_kernel<T, C>>(stream, args);
}

template <typename T, typename C>
cudaError_t ps_roi_align_box_grad(cudaStream_t stream, const PsAlignBoxGradArgs<T, C>& args) {
  return launch_per_block<ps_roi_align_box_grad_kernel<T, C>>(
      args.dims.num_rois, sizeof(BoxGradSums) * kBoxGradLanes, stream, args);
}

}  // namespace jax_roi::cuda

#endif  // JAX_ROI_CSRC_PS_ROI_PS_ROI_CUDA_CUH_
