// One row of 256 channels in L1, one core: p[c] += (g[c] * w) / 12 by the
// division, by Markstein's correction (core/quotient.h's fast path) and by a
// multiplication with 1/12 (not the same bits; the floor).
//   g++ -O3 -march=native -ffp-contract=off -I csrc quotient_bench.cc -o qb && ./qb
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>
#include <random>
#include "core/math.h"
using namespace jax_roi;
__attribute__((noinline)) void base(float* p, const float* __restrict g, float w, const CountDivider<float>& d, int64_t n){ for (int64_t c=0;c<n;++c) p[c] += d(g[c]*w);}
__attribute__((noinline)) void mark(float* p, const float* __restrict g, float w, const CountDivider<float>& d, int64_t n){
  const float b = d.count, y = d.reciprocal;
  for (int64_t c=0;c<n;++c) { const float a = g[c]*w; const float q = a*y; p[c] += std::fma(-std::fma(q, b, -a), y, q);} }
__attribute__((noinline)) void recip(float* p, const float* __restrict g, float w, const CountDivider<float>& d, int64_t n){
  const float y = d.reciprocal;  for (int64_t c=0;c<n;++c) p[c] += (g[c]*w)*y; }
int main(){
  const int64_t n = 256; std::vector<float> g(n), p(n*64, 0.f); std::mt19937 r(1); for (auto& v: g) v = std::uniform_real_distribution<float>(-1,1)(r);
  CountDivider<float> d(12.f);
  for (int rep=0; rep<3; ++rep) for (int m=0;m<3;++m){
    auto t0=std::chrono::steady_clock::now();
    for (int it=0; it<200000; ++it) { float* q = p.data() + (it%64)*n; (m==1? mark: m==2? recip: base)(q, g.data(), 0.3f + (it&7)*0.01f, d, n);}
    double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count();
    printf("%s %.3f ns/elem\n", m==1?"markstein":m==2?"reciprocal":"division", s/200000/n*1e9);
  }
}
