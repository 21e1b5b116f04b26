// Problem dimensions of a RoI op: the feature-map layout, the sizes every
// RoI op shares, and 64-bit index arithmetic. Host and device code; nothing
// here knows about XLA FFI.
#ifndef JAX_ROI_CSRC_CORE_DIMS_H_
#define JAX_ROI_CSRC_CORE_DIMS_H_

#include <cstdint>

#include "core/types.h"

namespace jax_roi {

// Feature-map layout. NCHW is torchvision's, NHWC is Flax's. Outputs follow
// the features: (K, C, PH, PW) for NCHW, (K, PH, PW, C) for NHWC.
enum class Layout : int32_t { kNCHW = 0, kNHWC = 1 };

// Problem dimensions of one RoI op. All sizes are 64-bit.
//
// Two box formats:
//   rois_per_image == 0: rois is (K, 5), rows [batch_index, x1, y1, x2, y2];
//   rois_per_image == R > 0: rois is (N, R, 4), rows [x1, y1, x2, y2], and
//     RoI k belongs to image k / R (K = N * R).
struct RoiDims {
  int64_t batch = 0;     // N
  int64_t channels = 0;  // C
  int64_t height = 0;    // H
  int64_t width = 0;     // W
  int64_t num_rois = 0;  // K
  int64_t rois_per_image = 0;
  int64_t pooled_height = 0;  // PH
  int64_t pooled_width = 0;   // PW
  Layout layout = Layout::kNCHW;
};

// Flat index of feature element (n, c, h, w).
JAX_ROI_HD int64_t feature_index(const RoiDims& d, int64_t n, int64_t c, int64_t h, int64_t w) {
  return d.layout == Layout::kNCHW ? ((n * d.channels + c) * d.height + h) * d.width + w
                                   : ((n * d.height + h) * d.width + w) * d.channels + c;
}

// Flat index of feature element (n, c) at spatial offset hw = h * W + w.
JAX_ROI_HD int64_t feature_index_hw(const RoiDims& d, int64_t n, int64_t c, int64_t hw) {
  return d.layout == Layout::kNCHW ? (n * d.channels + c) * d.height * d.width + hw
                                   : (n * d.height * d.width + hw) * d.channels + c;
}

// Flat index of output element (k, c, ph, pw).
JAX_ROI_HD int64_t output_index(const RoiDims& d, int64_t k, int64_t c, int64_t ph, int64_t pw) {
  return d.layout == Layout::kNCHW
             ? ((k * d.channels + c) * d.pooled_height + ph) * d.pooled_width + pw
             : ((k * d.pooled_height + ph) * d.pooled_width + pw) * d.channels + c;
}

// Number of output elements: K * C * PH * PW.
JAX_ROI_HD int64_t output_count(const RoiDims& d) {
  return d.num_rois * d.channels * d.pooled_height * d.pooled_width;
}

// Number of feature elements: N * C * H * W.
JAX_ROI_HD int64_t feature_count(const RoiDims& d) {
  return d.batch * d.channels * d.height * d.width;
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_DIMS_H_
