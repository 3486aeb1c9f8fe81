/* The in-cache AND + popcount + add inner loop of a bit-serial kernel, as fast as this CPU runs it:
 * the roofline that benchmarks/kernels.py compares the TVM kernels against.
 * Each thread streams an L1-resident array of 64-bit activation words and ANDs every loaded vector
 * with WEIGHT_REGS weight vectors held in registers (as a register-blocked kernel does: one load
 * feeds several output channels), popcounts and accumulates into independent accumulators.
 * Streaming both operands from memory instead (two loads per popcount) measures the load ports,
 * not the popcount units: about 0.8 T/s per core on Zen 4, below what the TVM kernels reach.
 * Prints one line: threads, binary multiply-accumulates per second (1 bit pair = 1 binary MAC).
 * Build: gcc -O3 -march=native -fopenmp popcount_roofline.c -o roofline */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define WORDS 2048 /* 16 KiB per thread: in L1 */
#define PASSES 20000
#define WEIGHT_REGS 4

static uint64_t run(const uint64_t *a, const uint64_t *w) {
#if defined(__AVX512VPOPCNTDQ__)
  __m512i weight[WEIGHT_REGS], acc[2 * WEIGHT_REGS];
  for (int r = 0; r < WEIGHT_REGS; r++) weight[r] = _mm512_load_si512((const void *)(w + 8 * r));
  for (int k = 0; k < 2 * WEIGHT_REGS; k++) acc[k] = _mm512_setzero_si512();
  for (int pass = 0; pass < PASSES; pass++) {
    for (int i = 0; i < WORDS; i += 16) {
      for (int half = 0; half < 2; half++) {
        __m512i x = _mm512_load_si512((const void *)(a + i + 8 * half));
        for (int r = 0; r < WEIGHT_REGS; r++)
          acc[half * WEIGHT_REGS + r] =
              _mm512_add_epi64(acc[half * WEIGHT_REGS + r], _mm512_popcnt_epi64(_mm512_and_si512(x, weight[r])));
      }
    }
    __asm__ volatile("" ::: "memory");
  }
  uint64_t total = 0;
  for (int k = 0; k < 2 * WEIGHT_REGS; k++) total += (uint64_t)_mm512_reduce_add_epi64(acc[k]);
  return total;
#else /* scalar popcount: what the compiler makes of it without AVX-512 VPOPCNTDQ */
  uint64_t acc[WEIGHT_REGS] = {0};
  for (int pass = 0; pass < PASSES; pass++) {
    for (int i = 0; i < WORDS; i++)
      for (int r = 0; r < WEIGHT_REGS; r++) acc[r] += (uint64_t)__builtin_popcountll(a[i] & w[r]);
    __asm__ volatile("" ::: "memory");
  }
  uint64_t total = 0;
  for (int r = 0; r < WEIGHT_REGS; r++) total += acc[r];
  return total;
#endif
}

int main(void) {
  int threads = omp_get_max_threads();
  uint64_t checksum = 0;
  double start = omp_get_wtime();
#pragma omp parallel reduction(+ : checksum)
  {
    uint64_t *a = aligned_alloc(64, WORDS * sizeof(uint64_t));
    uint64_t *w = aligned_alloc(64, WORDS * sizeof(uint64_t));
    for (int i = 0; i < WORDS; i++) {
      a[i] = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1 + omp_get_thread_num());
      w[i] = 0xC2B2AE3D27D4EB4Full * (uint64_t)(i + 7);
    }
    checksum += run(a, w);
    free(a);
    free(w);
  }
  double seconds = omp_get_wtime() - start;
  double binary_macs = (double)threads * PASSES * WORDS * 64.0 * WEIGHT_REGS;
  printf("%d %.6e %llu\n", threads, binary_macs / seconds, (unsigned long long)checksum);
  return 0;
}
