// Rotated RoIAlign CUDA kernels and their launchers. The per-element math is
// roi_align_rotated_math.h, shared with the CPU kernels. Kernel code only:
// no XLA FFI, and launches go through core/cuda_compat.h, so that this
// header also compiles with a host compiler under JAX_ROI_CUDA_EMULATION.
// Instantiated by roi_kernels.cu.
#ifndef JAX_ROI_CSRC_ROI_ALIGN_ROTATED_ROI_ALIGN_ROTATED_CUDA_CUH_
#define JAX_ROI_CSRC_ROI_ALIGN_ROTATED_ROI_ALIGN_ROTATED_CUDA_CUH_

#include <cstdint>

#include "core/bilinear.h"
#include "core/cuda_compat.h"
#include "core/cuda_launch.h"
#include "core/dims.h"
#include "core/types.h"
#include "roi_align_rotated/roi_align_rotated_kernels.h"
#include "roi_align_rotated/roi_align_rotated_math.h"

namespace jax_roi::cuda {

template <typename T, typename C>
__global__ void roi_align_rotated_forward_kernel(RotatedForwardArgs<T, C> a, int64_t total) {
  const RoiDims& d = a.dims;
  const int64_t step = d.layout == Layout::kNCHW ? 1 : d.channels;
  for_each_output(d, total, [&](int64_t i, int64_t k, int64_t c, int64_t ph, int64_t pw) {
    const RotatedBox<C> box = read_rotated_box(a.rois, k, d);
    const RotatedRoi<C> r = rotated_roi(box, static_cast<C>(a.options.spatial_scale), a.options, d);
    const T* base = a.features + feature_index_hw(d, r.empty ? 0 : box.image, c, 0);
    store(a.output + i, rotated_output(base, step, r, ph, pw, d));
  });
}

template <typename T, typename C>
__global__ void roi_align_rotated_backward_kernel(RotatedBackwardArgs<T, C> a, int64_t total) {
  using A = acc_t<T>;
  const RoiDims& d = a.dims;
  const int64_t step = d.layout == Layout::kNCHW ? 1 : d.channels;
  for_each_output(d, total, [&](int64_t i, int64_t k, int64_t c, int64_t ph, int64_t pw) {
    const RotatedBox<C> box = read_rotated_box(a.rois, k, d);
    const RotatedRoi<C> r = rotated_roi(box, static_cast<C>(a.options.spatial_scale), a.options, d);
    if (r.empty) return;
    A* grad = a.grad_features + feature_index_hw(d, box.image, c, 0);
    const A g = load(a.grad_output + i);
    const A count = static_cast<A>(r.count);
    for_each_rotated_sample(r, rotated_bin(r, ph, pw, d), ph, pw, d,
                            [&](const RotatedSample<C>& rs) {
                              bilinear_scatter(grad, step, bilinear_taps<A>(rs.s, d.width),
                                               [&](A* p, A w) { atomicAdd(p, (g * w) / count); });
                            });
  });
}

// One thread per RoI: sums over bins, samples and channels in a fixed order
// (deterministic, no atomics).
template <typename T, typename C>
__global__ void roi_align_rotated_box_grad_kernel(RotatedBoxGradArgs<T, C> a) {
  const RoiDims& d = a.dims;
  const RotatedOptions& o = a.options;
  const int64_t step = d.layout == Layout::kNCHW ? 1 : d.channels;
  const int64_t row = rotated_row_size(d);
  for (int64_t k = grid_thread_index(); k < d.num_rois; k += grid_thread_count()) {
    C* out = a.grad_rois + k * row;
    for (int64_t j = 0; j < row; ++j) out[j] = C(0);
    const RotatedBox<C> box = read_rotated_box(a.rois, k, d);
    const RotatedRoi<C> r = rotated_roi(box, static_cast<C>(o.spatial_scale), o, d);
    if (r.empty) continue;
    RotatedGradSums sums;
    const double count = static_cast<double>(r.count);
    for (int64_t ph = 0; ph < d.pooled_height; ++ph) {
      for (int64_t pw = 0; pw < d.pooled_width; ++pw) {
        for_each_rotated_sample(
            r, rotated_bin(r, ph, pw, d), ph, pw, d, [&](const RotatedSample<C>& rs) {
              double gy = 0, gx = 0;
              for (int64_t c = 0; c < d.channels; ++c) {
                const T* base = a.features + feature_index_hw(d, box.image, c, 0);
                const double g =
                    static_cast<double>(load(a.grad_output + output_index(d, k, c, ph, pw))) /
                    count;
                rotated_sample_grad(base, step, d.width, rs.s, g, &gy, &gx);
              }
              sums.add(r, rs, ph, pw, d, gy, gx);
            });
      }
    }
    sums.write(r, o, out + (row - 5));
  }
}

template <typename T, typename C>
cudaError_t roi_align_rotated_forward(cudaStream_t stream, const RotatedForwardArgs<T, C>& args) {
  return launch_per_output<roi_align_rotated_forward_kernel<T, C>>(stream, args);
}

template <typename T, typename C>
cudaError_t roi_align_rotated_backward(cudaStream_t stream, const RotatedBackwardArgs<T, C>& args) {
  const RoiDims& d = args.dims;
  const cudaError_t err =
      zero_async(args.grad_features, d.batch * d.channels * d.height * d.width, stream);
  if (err != cudaSuccess) return err;
  return launch_per_output<roi_align_rotated_backward_kernel<T, C>>(stream, args);
}

template <typename T, typename C>
cudaError_t roi_align_rotated_box_grad(cudaStream_t stream, const RotatedBoxGradArgs<T, C>& args) {
  return launch_over<roi_align_rotated_box_grad_kernel<T, C>>(args.dims.num_rois, stream, args);
}

}  // namespace jax_roi::cuda

#endif  // JAX_ROI_CSRC_ROI_ALIGN_ROTATED_ROI_ALIGN_ROTATED_CUDA_CUH_
