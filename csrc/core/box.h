// Reading RoI boxes (host and device): both box formats of RoiDims, the image
// index of a (K, 5) row, and the clamped conversion of box coordinates to
// integers.
#ifndef JAX_ROI_CSRC_CORE_BOX_H_
#define JAX_ROI_CSRC_CORE_BOX_H_

#include <cstdint>

#include "core/dims.h"
#include "core/math.h"
#include "core/types.h"

namespace jax_roi {

// Magnitude (in feature-map pixels) beyond which rounded box coordinates are
// clamped before their conversion to integers (clamp_to_i64): 2^40. It keeps
// every integer in the geometry far from int64 overflow (torchvision's int32
// conversion is undefined behaviour there) and changes nothing for
// coordinates that any real feature map can hold.
constexpr double kCoordLimit = 1099511627776.0;

// Image index of a (K, 5) row: the first column truncated toward zero, as
// torchvision's (int) cast does (1.7 -> image 1, -0.5 -> image 0). A value
// whose truncation falls outside [0, batch), or NaN, marks a padding row: -1.
// Written so that the comparison happens before any integer conversion.
template <typename C>
JAX_ROI_HD int64_t batch_index(C v, int64_t batch) {
  return (batch > 0 && v > static_cast<C>(-1) && v < static_cast<C>(batch))
             ? static_cast<int64_t>(v)
             : -1;
}

template <typename C>
struct Box {
  int64_t image;  // -1 for a padding row.
  C x1, y1, x2, y2;
};

// Reads RoI k in either box format (see RoiDims), always in xyxy order.
template <typename C>
JAX_ROI_HD Box<C> read_box(const C* rois, int64_t k, const RoiDims& d) {
  Box<C> b;
  if (d.rois_per_image > 0) {
    const C* p = rois + k * 4;
    b.image = k / d.rois_per_image;
    b.x1 = p[0];
    b.y1 = p[1];
    b.x2 = p[2];
    b.y2 = p[3];
  } else {
    const C* p = rois + k * 5;
    b.image = batch_index(p[0], d.batch);
    b.x1 = p[1];
    b.y1 = p[2];
    b.x2 = p[3];
    b.y2 = p[4];
  }
  return b;
}

// Values per RoI row: 4 for batched (N, R, 4) rois, 5 for (K, 5).
JAX_ROI_HD int64_t roi_row_size(const RoiDims& d) { return d.rois_per_image > 0 ? 4 : 5; }

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_BOX_H_
