// Visiting work items in the order of the pixels they read (CPU kernels;
// knows no op).
//
// A RoI kernel's work items (e.g. the bins of every RoI) each read a small
// neighbourhood of the feature map, and items of different RoIs read the
// same pixels: the mask-rcnn box head reads each pixel of its 62 MB maps
// about 6.6 times. In RoI order those reads lie far apart in time, and a map
// much larger than the caches is fetched from memory each time. Sorted by
// image, then by the Morton (Z-order) index of the pixel tile where each
// item reads, consecutive items read neighbouring pixels, which are still in
// cache. Every item is computed as before, so the results keep their bits;
// only the order of independent items changes.
#ifndef JAX_ROI_CSRC_CORE_SPATIAL_ORDER_H_
#define JAX_ROI_CSRC_CORE_SPATIAL_ORDER_H_

#include <algorithm>
#include <cstdint>
#include <vector>

namespace jax_roi {
namespace cpu {

// One image's map must hold more bytes than this (about one core's L2) for
// the order to pay; below, the whole map stays in cache in any order and the
// sort is overhead (a 0.5 MB map: 0.3 -> 0.4 ms).
constexpr int64_t kSpatialOrderMinImageBytes = int64_t{2} << 20;

inline bool spatial_order_pays(int64_t image_bytes) {
  return image_bytes > kSpatialOrderMinImageBytes;
}

// Where one item reads: its image (>= first_image of spatial_order) and a
// pixel (y, x) of it.
struct PixelKey {
  int64_t image, y, x;
};

// The Morton index of (y, x): their bits interleaved, x's lowest.
inline uint32_t morton2(uint32_t y, uint32_t x) {
  auto spread = [](uint32_t v) {  // bit i -> bit 2i, for v < 2^16
    v &= 0xffffu;
    v = (v | (v << 8)) & 0x00ff00ffu;
    v = (v | (v << 4)) & 0x0f0f0f0fu;
    v = (v | (v << 2)) & 0x33333333u;
    v = (v | (v << 1)) & 0x55555555u;
    return v;
  };
  return spread(x) | (spread(y) << 1);
}

// The items [0, items) sorted (stably, by a counting sort) by image, then by
// the Morton index of the tile holding where(j), a PixelKey with image in
// [first_image, last_image], y in [0, height), x in [0, width). Tiles are 4x4
// pixels, larger when there are many images (at most 2^20 buckets). Empty
// when the items do not fit 32-bit indices (the caller keeps its order).
template <typename F>
std::vector<uint32_t> spatial_order(int64_t items, int64_t first_image, int64_t last_image,
                                    int64_t height, int64_t width, F&& where) {
  constexpr int64_t kMaxBuckets = int64_t{1} << 20;
  const int64_t images = last_image - first_image + 1;
  if (items <= 0 || items > int64_t{0xffffffff} || images <= 0 || images > kMaxBuckets) return {};
  int shift = 2, bits = 0;  // tile = 2^shift pixels a side; 2^bits tiles per axis
  for (;;) {
    bits = 0;
    while (((std::max<int64_t>(height, width) - 1) >> (shift + bits)) > 0) ++bits;
    if (images << (2 * bits) <= kMaxBuckets) break;
    ++shift;
  }
  const int64_t per_image = int64_t{1} << (2 * bits);
  const int64_t buckets = images * per_image;
  std::vector<uint32_t> key(static_cast<size_t>(items));
  std::vector<uint32_t> start(static_cast<size_t>(buckets) + 1, 0);
  for (int64_t j = 0; j < items; ++j) {
    const PixelKey p = where(j);
    const int64_t k =
        (p.image - first_image) * per_image +
        morton2(static_cast<uint32_t>(p.y >> shift), static_cast<uint32_t>(p.x >> shift));
    key[j] = static_cast<uint32_t>(k);
    ++start[k + 1];
  }
  for (int64_t b = 0; b < buckets; ++b) start[b + 1] += start[b];
  std::vector<uint32_t> order(static_cast<size_t>(items));
  for (int64_t j = 0; j < items; ++j) order[start[key[j]]++] = static_cast<uint32_t>(j);
  return order;
}

}  // namespace cpu
}  // namespace jax_roi

#endif  // JAX_ROI_CSRC_CORE_SPATIAL_ORDER_H_
