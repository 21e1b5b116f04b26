// Exhaustive check of Markstein's correction, as core/quotient.h computes it,
// against the IEEE division: every float a in [1, 2) (every mantissa; the
// exponent only scales, away from over- and underflow), counts b0..b1.
//   g++ -O2 -march=native -fopenmp -ffp-contract=off quotient_exhaustive.cc -o qe
//   ./qe 1 20000      # counts 1..20000, 2^23 values each
//   ./qe 1 50 -110    # the same values scaled by 2^-110
// Here q2 = fma(fma(-q, b, a), y, q), q = a*y, y = 1/b; the header writes
// fma(-fma(q, b, -a), y, q), the same value (the remainder is exact, only
// its sign is taken differently), with a zero's sign kept.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cstdlib>
static inline uint32_t bits(float f){uint32_t u;std::memcpy(&u,&f,4);return u;}
int main(int argc, char** argv){
  int b0 = atoi(argv[1]), b1 = atoi(argv[2]); int escale = argc > 3 ? atoi(argv[3]) : 0;
  long bad = 0, n = 0;
  const float s = std::ldexp(1.0f, escale);
  for (int bi = b0; bi <= b1; ++bi) {
    const float b = (float)bi, y = 1.0f / b;
    long badb = 0;
    #pragma omp parallel for reduction(+:badb)
    for (uint32_t m = 0; m < (1u<<23); ++m) {
      uint32_t u = (127u<<23) | m; float a; std::memcpy(&a,&u,4); a *= s;
      const float q = a * y; const float r = std::fma(-q, b, a); const float q2 = std::fma(r, y, q);
      const float ref = a / b;
      badb += bits(q2) != bits(ref);
    }
    if (badb) { if (bad < 20) printf("b=%d scale=2^%d: %ld mismatches\n", bi, escale, badb); }
    bad += badb; n += 1L<<23;
  }
  printf("counts %d..%d scale 2^%d: %ld of %ld differ\n", b0, b1, escale, bad, n);
}
