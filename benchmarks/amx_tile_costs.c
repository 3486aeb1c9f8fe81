/* Where an AMX conv tile's time goes, in plain C: the register tile of schedules/amx.py (2 rows x 2
 * weight blocks: 4 accumulator tiles of 14 pixels, 2 A tiles of 14 pixels x 64 channels read 256
 * bytes apart, 2 B tiles of 64 channels x 16 outputs from 1.2 MB of weights, so from L2), over
 * ResNet-18 2x's 28x28x256 reduction (36 steps of 64 channels), then what the template adds per
 * tile, one stage at a time:
 *   loop        the reduction alone (4 tile loads + 4 tdpbusd a step), configuration loaded once
 *   config      + ldtilecfg per tile (as the init intrinsic did until 2026-12-03)
 *   stores      + the 4 accumulator tiles stored to a local tile (the store intrinsic)
 *   write-back  + the local tile read back and written to an int32 NHWC output of 800 KB (the
 *               layer's, 224 tiles), as the standalone kernel's write-back does
 *   checked     write-back, the per-tile ldtilecfg replaced by what the init intrinsic does now:
 *               read the configuration back (sttilecfg), load it only where it differs
 * One core; best of TRIES runs of each. Prints one JSON object.
 * Build: gcc -O2 -mavx512f -mamx-tile -mamx-int8 amx_tile_costs.c -o amx_tile_costs (an AMX CPU). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define STEPS 36
#define WEIGHT_SETS 16
#define TILES 224
#define PIXELS 14
#define RUNS (TILES * 40)
#define TRIES 5

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tile_config;

static uint8_t A[STEPS][2][16 * 256] __attribute__((aligned(64)));
static int8_t W[WEIGHT_SETS][STEPS][2][1024] __attribute__((aligned(64)));
static int32_t out[TILES][2][PIXELS][256] __attribute__((aligned(64)));
static int32_t local[2][PIXELS][32] __attribute__((aligned(64)));

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* Seconds for RUNS tiles with the first `stages` per-tile stages (0: the loop alone; 4: the first
 * three with the configuration checked instead of loaded). */
static double run(int stages, const tile_config *config) {
  _tile_loadconfig(config);
  double t = now();
  for (int n = 0; n < RUNS; n++) {
    int w = n % WEIGHT_SETS, tile = n % TILES;
    if (stages >= 1 && stages <= 3) _tile_loadconfig(config);
    if (stages == 4) {
      tile_config current __attribute__((aligned(64)));
      _tile_storeconfig(&current);
      if (_mm512_cmpneq_epi64_mask(_mm512_load_si512(&current), _mm512_loadu_si512(config))) _tile_loadconfig(config);
    }
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int s = 0; s < STEPS; s++) {
      _tile_loadd(4, A[s][0], 256); _tile_loadd(5, A[s][1], 256);
      _tile_loadd(6, W[w][s][0], 64); _tile_loadd(7, W[w][s][1], 64);
      _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
    }
    if (stages >= 2) {
      _tile_stored(0, &local[0][0][0], 128); _tile_stored(1, &local[0][0][16], 128);
      _tile_stored(2, &local[1][0][0], 128); _tile_stored(3, &local[1][0][16], 128);
    }
    if (stages >= 3)
      for (int r = 0; r < 2; r++)
        for (int p = 0; p < PIXELS; p++) {
          __m512i lo = _mm512_load_si512(&local[r][p][0]), hi = _mm512_load_si512(&local[r][p][16]);
          _mm512_store_si512(&out[tile][r][p][(n % 8) * 32], lo);
          _mm512_store_si512(&out[tile][r][p][(n % 8) * 32 + 16], hi);
        }
  }
  return now() - t;
}

int main(void) {
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */)) {
    fprintf(stderr, "no AMX tile state from the OS\n");
    return 1;
  }
  tile_config config;
  memset(&config, 0, sizeof config);
  config.palette = 1;
  for (int i = 0; i < 8; i++) config.colsb[i] = 64, config.rows[i] = i < 6 ? PIXELS : 16;
  const char *names[] = {"loop", "config", "stores", "write-back", "checked"};
  double macs = (double)RUNS * STEPS * 4 * PIXELS * 16 * 64;
  printf("{\n  \"macs_per_tile\": %.0f,\n  \"stages\": {\n", macs / RUNS);
  for (int stages = 0; stages < 5; stages++) {
    double best = 1e30;
    for (int k = 0; k < TRIES; k++) {
      double seconds = run(stages, &config);
      if (seconds < best) best = seconds;
    }
    printf("    \"%s\": {\"gmac_per_s\": %.0f, \"ns_per_tile\": %.0f}%s\n", names[stages], macs / best / 1e9,
           best / RUNS * 1e9, stages == 4 ? "" : ",");
  }
  printf("  }\n}\n");
  _tile_release();
  return 0;
}
