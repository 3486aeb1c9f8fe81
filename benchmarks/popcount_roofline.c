/* The binary-MAC roofline of this CPU: an upper bound on what a bit-serial kernel (AND + popcount +
 * accumulate over bit-planes) can reach, derived from instruction throughput, and loops that reach it.
 * benchmarks/kernels.py compares the TVM kernels against the bound ("% roofline").
 *
 * 1. Clock: each thread times a chain of dependent scalar ADDs (latency 1 cycle on every x86 core),
 *    all threads at once, so the all-core clock is what is measured. The best of several tries is
 *    kept: a descheduled thread only lowers the figure, so the maximum is the clock.
 * 2. Per-instruction throughput, as uops.info measures it: 12 independent chains of one 512-bit
 *    instruction (VPANDQ, VPADDQ, VPTERNLOGQ, VPOPCNTQ) per thread, instructions per cycle.
 * 3. The bound. Per 512 binary MACs (one 512-bit AND of activation and weight bits) a kernel
 *    needs either AND + VPOPCNTQ + ADD (the plain loop), or, in a Harley-Seal carry-save tree of
 *    VPTERNLOG full adders, AND + 15/16 CSA (2 VPTERNLOG each) + 1/16 (VPOPCNTQ + ADD): both mixes
 *    are 3 vector ops per 512 MACs; they differ in how many are popcounts. With P 512-bit vector
 *    ops per cycle on the vector pipes, of which at most Q popcounts, a mix of n ops with p
 *    popcounts needs max(n / P, p / Q) cycles (and the load and dispatch limits below, which never
 *    bind here). The bound is 512 * clock / the cheaper mix, summed over the physical cores that
 *    the threads occupy. P and Q come from TABLE (documented per microarchitecture); where this
 *    program measures a higher throughput than the table on this CPU (step 2), the measurement is
 *    used instead, so the bound can be too high but never below what the CPU does.
 * 4. Loops that try to reach it, each thread over an L1-resident array of activation words with
 *    weight vectors held in registers (as a register-blocked conv does): the plain loop with R
 *    weight registers x H independent accumulators each, and Harley-Seal CSA trees. Every
 *    variant computes the same sum of popcount(a & w), checked against a scalar reference.
 *
 * Prints one JSON object. Build: gcc -O3 -march=native -fopenmp popcount_roofline.c -o roofline */
#define _GNU_SOURCE
#include <immintrin.h>
#include <omp.h>
#include <sched.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Throughput per core of 512-bit (zmm) ops, per cycle, from the sources named.
 * simple: VPANDQ / VPADDQ / VPTERNLOGQ zmm (any of the four vector pipes FP0-3);
 * popcnt: VPOPCNTQ zmm; dispatch: macro-ops dispatched per cycle. */
typedef struct {
  const char *cpu; /* LLVM cpu name */
  double simple, popcnt, dispatch;
  const char *source;
} Uarch;

static const Uarch TABLE[] = {
    /* Zen 4 runs a 512-bit op as two halves on its four 256-bit pipes: 2 zmm ops per cycle
     * (reciprocal throughput 0.5 for VPANDQ/VPADDQ/VPTERNLOGQ zmm, 1 for VPOPCNTQ zmm, which only
     * pipes FP0/FP1 execute); 6-wide dispatch. */
    {"znver4", 2.0, 1.0, 6.0,
     "AMD Software Optimization Guide for Family 19h (Zen 4), 2.9-2.12 and its latency table; "
     "uops.info Zen 4 measurements; Agner Fog, instruction_tables.pdf, AMD Zen 4"},
    /* Zen 5 (desktop/server dies) has four native 512-bit pipes: 4 simple zmm ops per cycle,
     * VPOPCNTQ zmm 2 per cycle (FP0/FP1); 8-wide dispatch. */
    {"znver5", 4.0, 2.0, 8.0,
     "AMD Software Optimization Guide for Family 1Ah (Zen 5), 2.11-2.12; A. Yee, 'Zen5's AVX512 "
     "Teardown' (numberworld.org, 2024): 4 x 512-bit integer pipes; Agner Fog, instruction_tables.pdf, AMD Zen 5"},
};

#define WORDS 2048 /* 16 KiB of activation words per thread: in L1 */
#define VECTORS (WORDS / 8)
#define MAX_WEIGHTS 8
#define TRIES 5
#define CHUNK 48 /* passes x weight registers per timed window: divisible by every variant's */
#define WINDOWS 100
#define MAX_THREADS 256

static double now(void) { return omp_get_wtime(); }

/* ---- 1. clock ---- */
#define ADD10 "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t" \
              "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
static double clock_hz(void) { /* best of many short windows: an interrupted one only reads low */
  double best = 0;
  for (int window = 0; window < 400; window++) {
    uint64_t x = 0;
    double start = now();
    for (int i = 0; i < 2000; i++) __asm__ volatile(ADD10 ADD10 ADD10 ADD10 ADD10 : "+r"(x));
    double hz = 50.0 * 2000 / (now() - start);
    if (hz > best) best = hz;
  }
  return best;
}

/* ---- 2. per-instruction throughput: 12 independent chains ---- */
/* The whole window is one asm loop: the compiler can neither fold the chains (x & k & k is
 * x & k) nor put register moves between them. %12 counts down; %13 and %14 are the constant inputs. */
#define CHAINS(OP)                                                                                     \
  do {                                                                                                 \
    long n_ = WINDOW;                                                                                  \
    __asm__ volatile("1:\n\t" OP("%0") OP("%1") OP("%2") OP("%3") OP("%4") OP("%5") OP("%6") OP("%7")  \
                         OP("%8") OP("%9") OP("%10") OP("%11") "dec %12\n\tjnz 1b"                      \
                     : "+v"(v0), "+v"(v1), "+v"(v2), "+v"(v3), "+v"(v4), "+v"(v5), "+v"(v6), "+v"(v7), \
                       "+v"(v8), "+v"(v9), "+v"(v10), "+v"(v11), "+r"(n_)                              \
                     : "v"(k), "v"(m)                                                                   \
                     : "cc");                                                                          \
  } while (0)
#define WINDOW 4000 /* x 12 instructions */
#define INSTRUCTION_LOOP(NAME, OP)                                                  \
  static double NAME(void) {                                                        \
    __m512i v0 = _mm512_set1_epi64(1), v1 = v0, v2 = v0, v3 = v0, v4 = v0, v5 = v0, \
            v6 = v0, v7 = v0, v8 = v0, v9 = v0, v10 = v0, v11 = v0;                 \
    __m512i k = _mm512_set1_epi64(0x5555), m = _mm512_set1_epi64(0x3333);           \
    double seconds = 1e30;                                                          \
    for (int window = 0; window < 200; window++) {                                  \
      double start = now();                                                         \
      CHAINS(OP);                                                                   \
      if (now() - start < seconds) seconds = now() - start;                         \
    }                                                                               \
    __m512i s = _mm512_add_epi64(_mm512_add_epi64(v0, v1), _mm512_add_epi64(v2, v3)); \
    s = _mm512_add_epi64(s, _mm512_add_epi64(_mm512_add_epi64(v4, v5), v6));        \
    s = _mm512_add_epi64(s, _mm512_add_epi64(_mm512_add_epi64(v7, v8), v9));        \
    s = _mm512_add_epi64(s, _mm512_add_epi64(v10, v11));                            \
    __asm__ volatile("" ::"v"(s));                                                  \
    return 12.0 * WINDOW / seconds;                                                 \
  }
#define OP_AND(r) "vpandq %13, " r ", " r "\n\t"
#define OP_ADD(r) "vpaddq %13, " r ", " r "\n\t"
#define OP_TERNLOG(r) "vpternlogq $0x96, %13, %14, " r "\n\t"
#define OP_POPCNT(r) "vpopcntq " r ", " r "\n\t"
INSTRUCTION_LOOP(rate_and, OP_AND)
INSTRUCTION_LOOP(rate_add, OP_ADD)
INSTRUCTION_LOOP(rate_ternlog, OP_TERNLOG)
INSTRUCTION_LOOP(rate_popcnt, OP_POPCNT)

/* ---- 4. the loops: each returns sum over passes, r < R, vectors i of popcount(a_i & w_r) ---- */
static inline __attribute__((always_inline)) uint64_t plain_loop(const uint64_t *a, const uint64_t *w,
                                                                  long passes, const int R, const int H) {
  __m512i weight[MAX_WEIGHTS], acc[4 * MAX_WEIGHTS];
  for (int r = 0; r < R; r++) weight[r] = _mm512_load_si512((const void *)(w + 8 * r));
  for (int k = 0; k < R * H; k++) acc[k] = _mm512_setzero_si512();
  for (long pass = 0; pass < passes; pass++) {
    for (int i = 0; i < VECTORS; i += H)
      for (int h = 0; h < H; h++) {
        __m512i x = _mm512_load_si512((const void *)(a + 8 * (i + h)));
        for (int r = 0; r < R; r++)
          acc[h * R + r] = _mm512_add_epi64(acc[h * R + r], _mm512_popcnt_epi64(_mm512_and_si512(x, weight[r])));
      }
    __asm__ volatile("" ::: "memory");
  }
  uint64_t total = 0;
  for (int k = 0; k < R * H; k++) total += (uint64_t)_mm512_reduce_add_epi64(acc[k]);
  return total;
}

/* Full adder over 512 bit lanes: sum = a ^ b ^ c (0x96), carry = majority(a, b, c) (0xE8). */
#define CSA(carry, sum, a, b, c)                     \
  do {                                               \
    __m512i a_ = (a), b_ = (b), c_ = (c);            \
    sum = _mm512_ternarylogic_epi64(a_, b_, c_, 0x96); \
    carry = _mm512_ternarylogic_epi64(a_, b_, c_, 0xE8); \
  } while (0)

static inline __attribute__((always_inline)) uint64_t harley_seal(const uint64_t *a, const uint64_t *w,
                                                                   long passes, const int R) {
  __m512i weight[MAX_WEIGHTS], ones[MAX_WEIGHTS], twos[MAX_WEIGHTS], fours[MAX_WEIGHTS],
      eights[MAX_WEIGHTS], sixteens[MAX_WEIGHTS];
  for (int r = 0; r < R; r++) {
    weight[r] = _mm512_load_si512((const void *)(w + 8 * r));
    ones[r] = twos[r] = fours[r] = eights[r] = sixteens[r] = _mm512_setzero_si512();
  }
  for (long pass = 0; pass < passes; pass++) {
    for (int i = 0; i < VECTORS; i += 16) {
      for (int r = 0; r < R; r++) {
        __m512i x[16], twos_a, twos_b, fours_a, fours_b, eights_a, eights_b, sixteen;
        for (int j = 0; j < 16; j++)
          x[j] = _mm512_and_si512(_mm512_load_si512((const void *)(a + 8 * (i + j))), weight[r]);
        CSA(twos_a, ones[r], ones[r], x[0], x[1]);
        CSA(twos_b, ones[r], ones[r], x[2], x[3]);
        CSA(fours_a, twos[r], twos[r], twos_a, twos_b);
        CSA(twos_a, ones[r], ones[r], x[4], x[5]);
        CSA(twos_b, ones[r], ones[r], x[6], x[7]);
        CSA(fours_b, twos[r], twos[r], twos_a, twos_b);
        CSA(eights_a, fours[r], fours[r], fours_a, fours_b);
        CSA(twos_a, ones[r], ones[r], x[8], x[9]);
        CSA(twos_b, ones[r], ones[r], x[10], x[11]);
        CSA(fours_a, twos[r], twos[r], twos_a, twos_b);
        CSA(twos_a, ones[r], ones[r], x[12], x[13]);
        CSA(twos_b, ones[r], ones[r], x[14], x[15]);
        CSA(fours_b, twos[r], twos[r], twos_a, twos_b);
        CSA(eights_b, fours[r], fours[r], fours_a, fours_b);
        CSA(sixteen, eights[r], eights[r], eights_a, eights_b);
        sixteens[r] = _mm512_add_epi64(sixteens[r], _mm512_popcnt_epi64(sixteen));
      }
    }
    __asm__ volatile("" ::: "memory");
  }
  uint64_t total = 0;
  for (int r = 0; r < R; r++)
    total += (uint64_t)_mm512_reduce_add_epi64(sixteens[r]) * 16 +
             (uint64_t)_mm512_reduce_add_epi64(_mm512_popcnt_epi64(eights[r])) * 8 +
             (uint64_t)_mm512_reduce_add_epi64(_mm512_popcnt_epi64(fours[r])) * 4 +
             (uint64_t)_mm512_reduce_add_epi64(_mm512_popcnt_epi64(twos[r])) * 2 +
             (uint64_t)_mm512_reduce_add_epi64(_mm512_popcnt_epi64(ones[r]));
  return total;
}

typedef struct {
  const char *name;
  int weights; /* binary MACs per pass = VECTORS * 512 * weights */
  uint64_t (*run)(const uint64_t *, const uint64_t *, long);
} Variant;

#define PLAIN(R, H) \
  static uint64_t plain_##R##_##H(const uint64_t *a, const uint64_t *w, long p) { return plain_loop(a, w, p, R, H); }
#define HS(R) \
  static uint64_t hs_##R(const uint64_t *a, const uint64_t *w, long p) { return harley_seal(a, w, p, R); }
PLAIN(4, 2) PLAIN(2, 4) PLAIN(4, 4) PLAIN(8, 1) PLAIN(8, 2) PLAIN(6, 4) HS(1) HS(2) HS(4)

static const Variant VARIANTS[] = {
    {"and+popcnt+add, 4 weight regs x 2 accumulators (the old roofline loop)", 4, plain_4_2},
    {"and+popcnt+add, 2 weight regs x 4 accumulators", 2, plain_2_4},
    {"and+popcnt+add, 4 weight regs x 4 accumulators", 4, plain_4_4},
    {"and+popcnt+add, 8 weight regs x 1 accumulator", 8, plain_8_1},
    {"and+popcnt+add, 8 weight regs x 2 accumulators", 8, plain_8_2},
    {"and+popcnt+add, 6 weight regs x 4 accumulators", 6, plain_6_4},
    {"Harley-Seal CSA (VPTERNLOG), 16 inputs, 1 weight reg", 1, hs_1},
    {"Harley-Seal CSA (VPTERNLOG), 16 inputs, 2 weight regs", 2, hs_2},
    {"Harley-Seal CSA (VPTERNLOG), 16 inputs, 4 weight regs", 4, hs_4},
};
#define NVARIANTS (int)(sizeof(VARIANTS) / sizeof(VARIANTS[0]))

/* Physical cores among the CPUs this process may run on (SMT siblings share one core's pipes). */
static int physical_cores(void) {
  cpu_set_t allowed;
  int ids[CPU_SETSIZE], count = 0;
  if (sched_getaffinity(0, sizeof allowed, &allowed)) return omp_get_num_procs();
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    char path[128];
    int core = cpu, package = 0, seen = 0;
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
    FILE *f = fopen(path, "r");
    if (f) { if (fscanf(f, "%d", &core) != 1) core = cpu; fclose(f); }
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
    f = fopen(path, "r");
    if (f) { if (fscanf(f, "%d", &package) != 1) package = 0; fclose(f); }
    for (int i = 0; i < count; i++) seen |= ids[i] == package * 65536 + core;
    if (!seen) ids[count++] = package * 65536 + core;
  }
  return count;
}

int main(int argc, char **argv) {
  const char *cpu = argc > 1 ? argv[1] : "unknown"; /* LLVM cpu name, for the table */
  const Uarch *uarch = NULL;
  for (size_t i = 0; i < sizeof(TABLE) / sizeof(TABLE[0]); i++)
    if (!strcmp(TABLE[i].cpu, cpu)) uarch = &TABLE[i];
  int threads = omp_get_max_threads();
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  omp_set_num_threads(threads);
  static double clock[MAX_THREADS], instr_rate[MAX_THREADS][4], best_s[MAX_THREADS][NVARIANTS];
  uint64_t checksum[NVARIANTS] = {0}, expected = 0;

#pragma omp parallel
  {
    int t = omp_get_thread_num();
    uint64_t *a = aligned_alloc(64, WORDS * sizeof(uint64_t));
    uint64_t *w = aligned_alloc(64, 8 * MAX_WEIGHTS * sizeof(uint64_t));
    for (int i = 0; i < WORDS; i++) a[i] = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1 + t);
    for (int i = 0; i < 8 * MAX_WEIGHTS; i++) w[i] = 0xC2B2AE3D27D4EB4Full * (uint64_t)(i + 7);
    for (int v = 0; v < NVARIANTS; v++) best_s[t][v] = 1e30;
    /* Every measurement is the best of many short windows, all threads running the same loop at
     * once: on a shared machine a window that lost the CPU only reads slow, never fast. */
    for (int attempt = 0; attempt < TRIES; attempt++) {
#pragma omp barrier
      double hz = clock_hz();
      if (hz > clock[t]) clock[t] = hz;
      double rates[4] = {rate_and(), rate_add(), rate_ternlog(), rate_popcnt()};
      for (int k = 0; k < 4; k++)
        if (rates[k] > instr_rate[t][k]) instr_rate[t][k] = rates[k];
      for (int v = 0; v < NVARIANTS; v++) {
        long chunk = CHUNK / VARIANTS[v].weights;
#pragma omp barrier
        for (int window = 0; window < WINDOWS; window++) {
          double start = now();
          uint64_t sum = VARIANTS[v].run(a, w, chunk);
          double seconds = now() - start;
          if (seconds < best_s[t][v]) best_s[t][v] = seconds;
          if (t == 0) checksum[v] = sum; /* thread 0's sums are checked below */
        }
      }
    }
    if (t == 0) { /* scalar reference for thread 0's data */
      for (int v = 0; v < NVARIANTS; v++) {
        uint64_t ref = 0;
        for (int r = 0; r < VARIANTS[v].weights; r++)
          for (int i = 0; i < WORDS; i++) ref += (uint64_t)__builtin_popcountll(a[i] & w[(8 * r) + (i % 8)]);
        ref *= (uint64_t)(CHUNK / VARIANTS[v].weights);
        if (ref != checksum[v]) {
          fprintf(stderr, "popcount_roofline: %s computed %llu, expected %llu\n", VARIANTS[v].name,
                  (unsigned long long)checksum[v], (unsigned long long)ref);
          exit(1);
        }
        expected += ref;
      }
    }
    free(a);
    free(w);
  }

  /* 512-bit ops per cycle per core: the table's, or what this CPU was measured to do where more */
  double instr[4] = {0}, variant_rate[NVARIANTS] = {0};
  for (int t = 0; t < threads; t++) {
    for (int k = 0; k < 4; k++)
      if (instr_rate[t][k] / clock[t] > instr[k]) instr[k] = instr_rate[t][k] / clock[t];
    for (int v = 0; v < NVARIANTS; v++)
      variant_rate[v] += (double)(CHUNK / VARIANTS[v].weights) * VARIANTS[v].weights * VECTORS * 512.0 / best_s[t][v];
  }
  double simple = uarch ? uarch->simple : 0, popcnt = uarch ? uarch->popcnt : 0;
  for (int k = 0; k < 3; k++)
    if (instr[k] > simple) simple = instr[k];
  if (instr[3] > popcnt) popcnt = instr[3];
  /* Cycles per 512 binary MACs, for each mix: 3 vector ops (a popcount takes a vector pipe slot
   * too) over the simple-op rate, the mix's popcounts over the popcount rate, 3 macro-ops over
   * the dispatch width. Loads are left out: a register-blocked kernel loads 1/R vectors per
   * 512 MACs, which no table entry's load ports make the limit, and a bound assumes the best. */
  double dispatch = uarch ? 3.0 / uarch->dispatch : 0;
  double plain_cycles = fmax(fmax(3.0 / simple, 1.0 / popcnt), dispatch);
  double hs_cycles = fmax(fmax(3.0 / simple, (1.0 / 16) / popcnt), dispatch);
  double cycles = fmin(plain_cycles, hs_cycles);
  /* The threads run on at most this many cores; each core's best clock counts once. */
  int cores = physical_cores();
  if (cores > threads) cores = threads;
  double hz_sum = 0;
  for (int t = 0; t < threads; t++) hz_sum += clock[t];
  double bound = cores * 512.0 * (hz_sum / threads) / cycles;
  int best = 0;
  for (int v = 1; v < NVARIANTS; v++)
    if (variant_rate[v] > variant_rate[best]) best = v;

  printf("{\"threads\": %d, \"physical_cores\": %d, \"llvm_cpu\": \"%s\", \"table_entry\": %s, ", threads, cores,
         cpu, uarch ? "true" : "false");
  printf("\"source\": \"%s\", ", uarch ? uarch->source : "");
  printf("\"table\": [");
  for (size_t i = 0; i < sizeof(TABLE) / sizeof(TABLE[0]); i++)
    printf("%s{\"cpu\": \"%s\", \"simple_zmm\": %.2f, \"vpopcntq_zmm\": %.2f, \"dispatch\": %.2f}", i ? ", " : "",
           TABLE[i].cpu, TABLE[i].simple, TABLE[i].popcnt, TABLE[i].dispatch);
  printf("], ");
  printf("\"clock_hz_mean\": %.6e, ", hz_sum / threads);
  printf("\"table_per_cycle\": {\"simple_zmm\": %.2f, \"vpopcntq_zmm\": %.2f, \"dispatch\": %.2f}, ",
         uarch ? uarch->simple : 0, uarch ? uarch->popcnt : 0, uarch ? uarch->dispatch : 0);
  printf("\"bound_zmm_per_cycle\": {\"simple\": %.3f, \"vpopcntq\": %.3f}, ", simple, popcnt);
  printf("\"measured_zmm_per_cycle\": {\"vpandq\": %.3f, \"vpaddq\": %.3f, \"vpternlogq\": %.3f, \"vpopcntq\": %.3f}, ",
         instr[0], instr[1], instr[2], instr[3]);
  printf("\"cycles_per_512_macs\": {\"plain\": %.4f, \"harley_seal\": %.4f}, ", plain_cycles, hs_cycles);
  printf("\"bound_binary_macs_per_s\": %.6e, ", bound);
  printf("\"variants\": {");
  for (int v = 0; v < NVARIANTS; v++)
    printf("%s\"%s\": %.6e", v ? ", " : "", VARIANTS[v].name, variant_rate[v]);
  printf("}, \"best_variant\": \"%s\", \"best_binary_macs_per_s\": %.6e, \"checksum\": %llu}\n",
         VARIANTS[best].name, variant_rate[best], (unsigned long long)expected);
  return 0;
}
