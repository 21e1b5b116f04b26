// Regular sample grids inside the bins of a RoI (host and device), as
// RoIAlign-style ops place them: sample i of `grid` in bin p lies at
// start + p * bin + (i + 0.5) * bin / grid. The adaptive grid size, the
// sample coordinate in torchvision's exact expression order, its derivative
// with respect to the bin size, and the range of samples that can land on a
// feature map.
#ifndef JAX_ROI_CSRC_CORE_SAMPLE_GRID_H_
#define JAX_ROI_CSRC_CORE_SAMPLE_GRID_H_

#include <cstdint>

#include "core/math.h"
#include "core/types.h"

namespace jax_roi {

// Samples per bin along one axis never exceed this (2^31 - 1): the adaptive
// grid ceil(roi_size / pooled_size) is clamped here (clamp_to_i64), which
// only matters for bins wider than 2^31 feature pixels.
constexpr double kMaxGrid = 2147483647.0;

// Coordinate of sample i (of `grid`) of bin p, in torchvision's exact
// expression order: start + p * bin + ((i + 0.5f) * bin) / grid.
template <typename C>
JAX_ROI_HD C sample_coord(C start, int64_t p, C bin, int64_t i, int64_t grid) {
  const C half_step = static_cast<C>(static_cast<float>(i) + 0.5f);
  return start + static_cast<C>(p) * bin + half_step * bin / static_cast<C>(grid);
}

// d(sample coordinate) / d(bin) = p + (i + 0.5) / grid.
template <typename C>
JAX_ROI_HD C sample_coord_dbin(int64_t p, int64_t i, int64_t grid) {
  return static_cast<C>(p) + static_cast<C>(static_cast<float>(i) + 0.5f) / static_cast<C>(grid);
}

// The samples i in [0, grid) of bin p whose coordinate lies in [-1, size]:
// a half-open range [first, last). sample_coord is monotonic in i (every
// operation in it is), so the range is contiguous. Samples outside add
// exactly zero (bilinear interpolation, core/bilinear.h), so skipping them
// changes no result, and the work of a bin stays bounded by the samples that
// can land on the map, however large the adaptive grid of a huge box.
struct SampleRange {
  int64_t first, last;
};

template <typename C>
JAX_ROI_HD SampleRange sample_range(C start, int64_t p, C bin, int64_t grid, int64_t size) {
  if (grid <= 0) return SampleRange{0, 0};
  const bool increasing = bin >= C(0);
  // First i for which pred(i) holds, for a predicate monotone in i.
  auto first_true = [&](auto pred) {
    int64_t lo = 0, hi = grid;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (pred(mid)) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    return lo;
  };
  const C low = C(-1), high = static_cast<C>(size);
  int64_t first, last;
  if (increasing) {
    first = first_true([&](int64_t i) { return sample_coord(start, p, bin, i, grid) >= low; });
    last = first_true([&](int64_t i) { return sample_coord(start, p, bin, i, grid) > high; });
  } else {
    first = first_true([&](int64_t i) { return sample_coord(start, p, bin, i, grid) <= high; });
    last = first_true([&](int64_t i) { return sample_coord(start, p, bin, i, grid) < low; });
  }
  return SampleRange{first, last < first ? first : last};
}

}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_SAMPLE_GRID_H_
