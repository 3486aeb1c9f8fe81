/* The int8-dot roofline of one core: the highest rate, in multiply-accumulates per second, at which
 * each instruction mix the int8 conv kernels (schedules/int8_dot.py) use can run, measured with
 * register-only loops: no loads, no broadcasts, 8 (ymm) or 12 (zmm) independent accumulators, so
 * what is left is the instructions' own throughput. A kernel that also loads its operands cannot
 * beat these; benchmarks/int8_roofline.py compares the TVM kernels against them.
 *
 * Mixes (MACs per instruction group):
 *   avx2_int16   vpmaddubsw ymm + vpaddw ymm                      32  (int16 pair sums accumulated)
 *   avx2_widen4  4 x vpmaddubsw ymm + 3 x vpaddw + vpmaddwd + vpaddd  128 (pair sums widened every 4 steps)
 *   avx512_vnni  vpdpbusd zmm                                     64  (only where the CPU has AVX512-VNNI)
 *   avx_vnni     VEX-encoded vpdpbusd ymm                         32  (only where the CPU has AVX-VNNI)
 *   amx          tdpbusd on 16 x 64-byte tiles                  16384  (only where the CPU has AMX-INT8 and
 *                the OS grants its state; 4 accumulator tiles, the A and B tiles loaded once)
 * The clock is timed as a chain of dependent 64-bit IMULs (3 cycles each on every x86 core since
 * Sandy Bridge and Zen; a chain of ADDs with an immediate is not: Golden Cove and later fold them in
 * the renamer and it read 9.7 GHz on Emerald Rapids), best of several tries. Prints one JSON
 * object. Build: gcc -O2 int8_roofline.c -o int8_roofline */
#include <cpuid.h>
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ITERATIONS 100000000L
#define TRIES 5

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static double clock_ghz(void) {
  double best = 0;
  for (int k = 0; k < TRIES; k++) {
    long x = 3, n = ITERATIONS;
    double t = now();
    __asm__ volatile("1:\n imul %0, %0\n imul %0, %0\n imul %0, %0\n imul %0, %0\n dec %1\n jnz 1b\n"
                     : "+r"(x), "+r"(n));
    t = now() - t;
    if (12.0 * ITERATIONS / t / 1e9 > best) best = 12.0 * ITERATIONS / t / 1e9;
  }
  return best;
}

/* Seconds for ITERATIONS of 8 vpmaddubsw + 8 vpaddw (8 accumulators, operands in ymm8-11). */
static double avx2_int16(void) {
  long n = ITERATIONS;
  double t = now();
  __asm__ volatile(
      "vpxor %%ymm0,%%ymm0,%%ymm0\n vpxor %%ymm1,%%ymm1,%%ymm1\n vpxor %%ymm2,%%ymm2,%%ymm2\n"
      "vpxor %%ymm3,%%ymm3,%%ymm3\n vpxor %%ymm4,%%ymm4,%%ymm4\n vpxor %%ymm5,%%ymm5,%%ymm5\n"
      "vpxor %%ymm6,%%ymm6,%%ymm6\n vpxor %%ymm7,%%ymm7,%%ymm7\n"
      "1:\n"
      "vpmaddubsw %%ymm8,%%ymm10,%%ymm12\n vpaddw %%ymm12,%%ymm0,%%ymm0\n"
      "vpmaddubsw %%ymm8,%%ymm11,%%ymm13\n vpaddw %%ymm13,%%ymm1,%%ymm1\n"
      "vpmaddubsw %%ymm9,%%ymm10,%%ymm14\n vpaddw %%ymm14,%%ymm2,%%ymm2\n"
      "vpmaddubsw %%ymm9,%%ymm11,%%ymm15\n vpaddw %%ymm15,%%ymm3,%%ymm3\n"
      "vpmaddubsw %%ymm10,%%ymm8,%%ymm12\n vpaddw %%ymm12,%%ymm4,%%ymm4\n"
      "vpmaddubsw %%ymm11,%%ymm8,%%ymm13\n vpaddw %%ymm13,%%ymm5,%%ymm5\n"
      "vpmaddubsw %%ymm10,%%ymm9,%%ymm14\n vpaddw %%ymm14,%%ymm6,%%ymm6\n"
      "vpmaddubsw %%ymm11,%%ymm9,%%ymm15\n vpaddw %%ymm15,%%ymm7,%%ymm7\n"
      "dec %0\n jnz 1b\n"
      : "+r"(n)::"memory");
  return now() - t;
}

/* Seconds for ITERATIONS of 2 accumulators x (4 vpmaddubsw + 3 vpaddw + vpmaddwd + vpaddd), 4
 * groups interleaved (8 accumulator chains in all), ones in ymm7. */
static double avx2_widen4(void) {
  long n = ITERATIONS;
  double t = now();
#define GROUP(acc, t0, t1)                                                                         \
  "vpmaddubsw %%ymm8,%%ymm10," t0 "\n vpmaddubsw %%ymm9,%%ymm10," t1 "\n vpaddw " t1 "," t0 "," t0 \
  "\n vpmaddubsw %%ymm8,%%ymm11," t1 "\n vpaddw " t1 "," t0 "," t0 "\n vpmaddubsw %%ymm9,%%ymm11," t1 \
  "\n vpaddw " t1 "," t0 "," t0 "\n vpmaddwd %%ymm7," t0 "," t0 "\n vpaddd " t0 "," acc "," acc "\n"
  __asm__ volatile(
      "vpxor %%ymm0,%%ymm0,%%ymm0\n vpxor %%ymm1,%%ymm1,%%ymm1\n vpxor %%ymm2,%%ymm2,%%ymm2\n"
      "vpxor %%ymm3,%%ymm3,%%ymm3\n vpcmpeqw %%ymm7,%%ymm7,%%ymm7\n"
      "1:\n" GROUP("%%ymm0", "%%ymm12", "%%ymm13") GROUP("%%ymm1", "%%ymm14", "%%ymm15")
          GROUP("%%ymm2", "%%ymm4", "%%ymm5") GROUP("%%ymm3", "%%ymm6", "%%ymm12")
      "dec %0\n jnz 1b\n"
      : "+r"(n)::"memory");
#undef GROUP
  return now() - t;
}

/* Seconds for ITERATIONS of 12 vpdpbusd zmm (12 accumulators). */
__attribute__((target("avx512f,avx512vnni"))) static double avx512_vnni(void) {
  long n = ITERATIONS;
  double t = now();
  __asm__ volatile(
      "vpxord %%zmm0,%%zmm0,%%zmm0\n vpxord %%zmm1,%%zmm1,%%zmm1\n vpxord %%zmm2,%%zmm2,%%zmm2\n"
      "vpxord %%zmm3,%%zmm3,%%zmm3\n vpxord %%zmm4,%%zmm4,%%zmm4\n vpxord %%zmm5,%%zmm5,%%zmm5\n"
      "vpxord %%zmm6,%%zmm6,%%zmm6\n vpxord %%zmm7,%%zmm7,%%zmm7\n vpxord %%zmm20,%%zmm20,%%zmm20\n"
      "vpxord %%zmm21,%%zmm21,%%zmm21\n vpxord %%zmm22,%%zmm22,%%zmm22\n vpxord %%zmm23,%%zmm23,%%zmm23\n"
      "1:\n"
      "vpdpbusd %%zmm8,%%zmm10,%%zmm0\n vpdpbusd %%zmm8,%%zmm11,%%zmm1\n vpdpbusd %%zmm9,%%zmm10,%%zmm2\n"
      "vpdpbusd %%zmm9,%%zmm11,%%zmm3\n vpdpbusd %%zmm10,%%zmm8,%%zmm4\n vpdpbusd %%zmm11,%%zmm8,%%zmm5\n"
      "vpdpbusd %%zmm10,%%zmm9,%%zmm6\n vpdpbusd %%zmm11,%%zmm9,%%zmm7\n vpdpbusd %%zmm8,%%zmm8,%%zmm20\n"
      "vpdpbusd %%zmm9,%%zmm9,%%zmm21\n vpdpbusd %%zmm10,%%zmm10,%%zmm22\n vpdpbusd %%zmm11,%%zmm11,%%zmm23\n"
      "dec %0\n jnz 1b\n"
      : "+r"(n)::"memory");
  return now() - t;
}

/* Seconds for ITERATIONS of 12 VEX-encoded vpdpbusd ymm (12 accumulators). */
__attribute__((target("avxvnni"))) static double avx_vnni(void) {
  long n = ITERATIONS;
  double t = now();
  __asm__ volatile(
      "vpxor %%ymm0,%%ymm0,%%ymm0\n vpxor %%ymm1,%%ymm1,%%ymm1\n vpxor %%ymm2,%%ymm2,%%ymm2\n"
      "vpxor %%ymm3,%%ymm3,%%ymm3\n vpxor %%ymm4,%%ymm4,%%ymm4\n vpxor %%ymm5,%%ymm5,%%ymm5\n"
      "vpxor %%ymm6,%%ymm6,%%ymm6\n vpxor %%ymm7,%%ymm7,%%ymm7\n vpxor %%ymm12,%%ymm12,%%ymm12\n"
      "vpxor %%ymm13,%%ymm13,%%ymm13\n vpxor %%ymm14,%%ymm14,%%ymm14\n vpxor %%ymm15,%%ymm15,%%ymm15\n"
      "1:\n"
      "%{vex%} vpdpbusd %%ymm8,%%ymm10,%%ymm0\n %{vex%} vpdpbusd %%ymm8,%%ymm11,%%ymm1\n"
      "%{vex%} vpdpbusd %%ymm9,%%ymm10,%%ymm2\n %{vex%} vpdpbusd %%ymm9,%%ymm11,%%ymm3\n"
      "%{vex%} vpdpbusd %%ymm10,%%ymm8,%%ymm4\n %{vex%} vpdpbusd %%ymm11,%%ymm8,%%ymm5\n"
      "%{vex%} vpdpbusd %%ymm10,%%ymm9,%%ymm6\n %{vex%} vpdpbusd %%ymm11,%%ymm9,%%ymm7\n"
      "%{vex%} vpdpbusd %%ymm8,%%ymm8,%%ymm12\n %{vex%} vpdpbusd %%ymm9,%%ymm9,%%ymm13\n"
      "%{vex%} vpdpbusd %%ymm10,%%ymm10,%%ymm14\n %{vex%} vpdpbusd %%ymm11,%%ymm11,%%ymm15\n"
      "dec %0\n jnz 1b\n"
      : "+r"(n)::"memory");
  return now() - t;
}

/* AMX-INT8 in CPUID (leaf 7: EDX bits 24 tile, 25 int8) and its tile state granted by Linux. */
static int amx_usable(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25))) return 0;
  return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}

#define AMX_ITERATIONS (ITERATIONS / 100)

/* Seconds for AMX_ITERATIONS of 4 tdpbusd into 4 accumulator tiles (16 x 16 int32) from A tiles 4, 5
 * (16 x 64 uint8) and B tiles 6, 7 (16 x 64 int8). */
__attribute__((target("amx-tile,amx-int8"))) static double amx(void) {
  struct {
    unsigned char palette, start_row, reserved[14];
    unsigned short colsb[16];
    unsigned char rows[16];
  } config;
  memset(&config, 0, sizeof config);
  config.palette = 1;
  for (int i = 0; i < 8; i++) config.colsb[i] = 64, config.rows[i] = 16;
  _tile_loadconfig(&config);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
  long n = AMX_ITERATIONS;
  double t = now();
  for (long i = 0; i < n; i++) {
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(1, 4, 7);
    _tile_dpbusd(2, 5, 6);
    _tile_dpbusd(3, 5, 7);
  }
  t = now() - t;
  _tile_release();
  return t;
}

static double best_rate(double (*loop)(void), double macs_per_iteration) {
  double best = 0;
  for (int k = 0; k < TRIES; k++) {
    double rate = macs_per_iteration * (loop == amx ? AMX_ITERATIONS : ITERATIONS) / loop();
    if (rate > best) best = rate;
  }
  return best;
}

static void report(const char *name, double rate, double ghz, int last) {
  printf("    \"%s\": {\"gmac_per_s\": %.1f, \"mac_per_cycle\": %.2f}%s\n", name, rate / 1e9, rate / (ghz * 1e9),
         last ? "" : ",");
}

int main(void) {
  __builtin_cpu_init();
  int vnni = __builtin_cpu_supports("avx512vnni"), avxvnni = __builtin_cpu_supports("avxvnni"), tiles = amx_usable();
  double ghz = clock_ghz();
  printf("{\n  \"clock_ghz\": %.3f,\n  \"tries\": %d,\n  \"mixes\": {\n", ghz, TRIES);
  report("avx2_int16", best_rate(avx2_int16, 8 * 32), ghz, 0);
  report("avx2_widen4", best_rate(avx2_widen4, 4 * 128), ghz, !vnni && !avxvnni && !tiles);
  if (vnni) report("avx512_vnni", best_rate(avx512_vnni, 12 * 64), ghz, !avxvnni && !tiles);
  if (avxvnni) report("avx_vnni", best_rate(avx_vnni, 12 * 32), ghz, !tiles);
  if (tiles) report("amx", best_rate(amx, 4 * 16 * 16 * 64), ghz, 1);
  printf("  }\n}\n");
  return 0;
}
