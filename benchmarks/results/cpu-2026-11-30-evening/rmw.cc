// Scattered read-modify-writes, one float each, as the roi_pool NHWC backward
// does them: per "bin", 256 channels (16 lines' worth of channel positions),
// each at a random pixel of a window of `pix` pixels (256 channels = 1 KB per
// pixel). Offsets come from a precomputed L1-resident table; bins from a
// table of random window origins.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>
static double run(int64_t pixels, int64_t channels, int64_t pix, int64_t bins, int threads, bool add) {
  std::vector<std::thread> ts;
  std::vector<std::vector<float>> bufs(threads, std::vector<float>(pixels * channels, 0.f));
  std::mt19937 rng(1);
  std::vector<int32_t> table(64 * channels);  // 64 patterns of per-channel pixel picks
  for (auto& v : table) v = rng() % pix;
  std::vector<int32_t> origin(bins);
  for (auto& v : origin) v = rng() % (pixels - pix);
  auto t0 = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      float* buf = bufs[t].data();
      for (int64_t b = 0; b < bins; ++b) {
        const int32_t* pick = table.data() + (b & 63) * channels;
        float* base = buf + int64_t(origin[b]) * channels;
        if (add) {
          for (int64_t c = 0; c < channels; ++c) base[pick[c] * channels + c] += 1.0f;
        } else {
          float s = 0;
          for (int64_t c = 0; c < channels; ++c) s += base[pick[c] * channels + c];
          buf[b % 16] = s;
        }
      }
    });
  }
  for (auto& x : ts) x.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
int main() {
  const int64_t C = 256, bins = 300 * 49;  // 7.5M elements over two threads of 256 channels
  for (int rep = 0; rep < 2; ++rep)
    for (int64_t pixels : {int64_t{16}, int64_t{1900}}) {
      for (int64_t pix : {int64_t{4}, int64_t{12}}) {
        for (bool add : {true, false}) {
          double best = 1e9;
          for (int r = 0; r < 7; ++r) best = std::min(best, run(pixels, C, pix, bins, 2, add));
          printf("%s grad %5.0f KB/thread, window %2ld px: %.2f ms (%.2f ns per element per thread)\n",
                 add ? "RMW " : "read", pixels * C * 4 / 1024.0, (long)pix, best * 1e3,
                 best * 1e9 / (bins * C));
        }
      }
    }
}
