// usage: g++ -O2 -march=native -std=c++17 -ffp-contract=off -I csrc repack_bench.cc -pthread -o repack_bench
//        ./repack_bench N C HW [dst offset in floats] -> core/repack.h's repack_nhwc_to_nchw against the
// previous version (row of tiles by row of tiles, kept here as old_nhwc_to_nchw) and a memcpy of the
// same bytes, on 2 threads: both checked bit for bit against a plain loop, then medians of 40 calls.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>
#include <algorithm>
#include <cstdlib>
#include "core/repack.h"
using namespace jax_roi::cpu;
struct Pool : TaskRunner {
  int64_t concurrency() const override { return 2; }
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) override {
    std::atomic<int64_t> next{0};
    auto work = [&] { for (int64_t i = next++; i < n; i = next++) fn(i); };
    std::thread t(work); work(); t.join();
  }
};
template <typename T>
void old_nhwc_to_nchw(const T* src, T* dst, int64_t batch, int64_t channels, int64_t hw, TaskRunner& runner) {
  constexpr int64_t kTileP = 256;
  const int64_t p_tiles = (hw + kTileP - 1) / kTileP;
  parallel_ranges(runner, batch * p_tiles, 4 * runner.concurrency(), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / p_tiles;
      const int64_t p0 = (t % p_tiles) * kTileP, p1 = std::min(hw, p0 + kTileP);
      transpose(src + (n * hw + p0) * channels, channels, dst + n * channels * hw + p0, hw, p1 - p0, channels);
    }
  });
}
int main(int argc, char** argv) {
  const int64_t N = atoi(argv[1]), C = atoi(argv[2]), HW = atoi(argv[3]);
  const int off = argc > 4 ? atoi(argv[4]) : 0;  // misalign dst by `off` floats
  const size_t n = N * C * HW;
  float* src = static_cast<float*>(std::aligned_alloc(2 << 20, n * 4 + (2 << 20)));
  float* dst0 = static_cast<float*>(std::aligned_alloc(2 << 20, n * 4 + (2 << 20)));
  float* dst = dst0 + off;
  std::vector<float> ref(n);
  for (size_t i = 0; i < n; ++i) { uint32_t b = uint32_t(i * 2654435761u); std::memcpy(&src[i], &b, 4); }
  for (int64_t b = 0; b < N; ++b) for (int64_t p = 0; p < HW; ++p) for (int64_t c = 0; c < C; ++c)
    std::memcpy(&ref[(b * C + c) * HW + p], &src[(b * HW + p) * C + c], 4);
  Pool pool;
  std::memset(dst, 0, n * 4);
  repack_nhwc_to_nchw(src, dst, N, C, HW, pool);
  std::printf("N=%ld C=%ld HW=%ld off=%d (%.1f MB): new equal=%d", N, C, HW, off, n * 4 / 1e6, std::memcmp(dst, ref.data(), n * 4) == 0);
  std::memset(dst, 0, n * 4);
  old_nhwc_to_nchw(src, dst, N, C, HW, pool);
  std::printf(" old equal=%d\n", std::memcmp(dst, ref.data(), n * 4) == 0);
  auto time = [&](auto&& f) {
    std::vector<double> ts;
    for (int r = 0; r < 40; ++r) {
      auto t0 = std::chrono::steady_clock::now(); f();
      ts.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    return ts[20];
  };
  for (int r = 0; r < 3; ++r) {
    double a = time([&] { old_nhwc_to_nchw(src, dst, N, C, HW, pool); });
    double b = time([&] { repack_nhwc_to_nchw(src, dst, N, C, HW, pool); });
    double m = time([&] { parallel_ranges(pool, (int64_t)n, 2, [&](int64_t b0, int64_t e) { std::memcpy(dst + b0, src + b0, (e - b0) * 4); }); });
    std::printf("  old %.3f ms, new %.3f ms, memcpy %.3f ms\n", a, b, m);
  }
}
