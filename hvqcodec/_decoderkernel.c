/* Decoder kernels of the torch-free runtime (docs/DESIGN.md section 8): the operations of the autoencoder's
 * decoder (HierarchicalVQVAE.decode) that plain numpy runs slowly, in float32 on channels-last (H, W, C) arrays.
 * benchmarks/numpy_decoder.py runs the rest (the matmuls in BLAS, the 2x2 upsamplings, the code lookups) in numpy.
 *
 * - depthwise_layernorm: a ConvNeXt block's depthwise 7x7 convolution (zero padding 3) + bias, and the LayerNorm
 *   over channels that follows it. Fused: each position is normalised as soon as its C sums are done, while they
 *   are in L1, instead of a second pass over the band (and numpy's padded copy of the input is not needed: the
 *   taps outside the image are skipped).
 * - bias_gelu: the block's first Linear's bias + exact GELU (erf form), in place on its (positions, 4C) output.
 *   Fused: the bias is one more add on a value already in a register; numpy needed two dozen passes over the
 *   table for the same thing.
 * - conv3x3: the post-filter's 3x3 convolutions (zero padding 1) + bias, optionally GELU. Fused: GELU runs on the
 *   sums in registers before they are stored, so the full-resolution 32-channel tables are written once.
 *
 * Every kernel computes a band of rows (the convolutions: first_row, and rows = the output's first dimension),
 * so Python threads can share an image's rows; the GIL is released while they run.
 *
 * Vector paths: the kernels are written once (the "vector template" at the end of this file) for vectors of
 * LANES floats with GCC/Clang vector extensions, and this file includes itself to compile them for AVX-512 (16
 * lanes), AVX2 + FMA (8) and the compiler's baseline (4: SSE2 on x86-64, NEON on arm64). GCC emulates vectors
 * wider than the instruction set through memory (AVX2 ran 16-float code 2-5x slower than 8-float code), so each
 * instruction set gets its own width. The best build this CPU runs is chosen at import (__builtin_cpu_supports).
 * A vector path needs the vectorised channel count to be a multiple of LANES (all widths of the shipped models
 * are multiples of 16); other shapes, and compilers without vector extensions, take the plain C loops, which are
 * also the reference the tests hold the vector paths to.
 *
 * Arrays come in through the buffer protocol (float32, C-contiguous, shapes checked): a wrong argument is a
 * Python exception, never a crash. The module is optional: without it the numpy decoder runs plain numpy.
 */
#ifndef VECTOR_TEMPLATE

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#define HAVE_VECTORS 1
#else
#define INLINE static inline
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_X86_TARGETS 1
#include <immintrin.h>
#endif

/* ---------------------------------------------------------------------------------------------------------------
 * What each kernel is asked to do
 * ------------------------------------------------------------------------------------------------------------- */

typedef struct {
    const float *x;           /* (height, width, channels) */
    const float *kernel;      /* (7, 7, channels) */
    const float *bias;        /* (channels) */
    const float *norm_weight; /* (channels), or NULL: no affine after the normalisation */
    const float *norm_bias;   /* (channels), or NULL */
    float eps;
    float *out;               /* (rows, width, channels): output rows first_row .. first_row + rows - 1 */
    ptrdiff_t height, width, channels, first_row, rows;
} Depthwise;

typedef struct {
    float *x;                       /* (rows, columns), in place */
    const float *bias;              /* (columns), or NULL */
    ptrdiff_t columns, start, stop; /* rows start .. stop - 1 */
} BiasGelu;

typedef struct {
    const float *x;      /* (height, width, inputs) */
    const float *weight; /* (3, 3, inputs, outputs) */
    const float *bias;   /* (outputs) */
    float *out;          /* (rows, width, outputs): output rows first_row .. first_row + rows - 1 */
    ptrdiff_t height, width, inputs, outputs, first_row, rows;
    int gelu;
} Conv3x3;

INLINE ptrdiff_t max_index(ptrdiff_t a, ptrdiff_t b) { return a > b ? a : b; }
INLINE ptrdiff_t min_index(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }

/* The taps of a size x size kernel (size odd, centred) that land inside an extent for output index y:
 * [*first, *stop). */
INLINE void taps_inside(ptrdiff_t y, ptrdiff_t extent, int size, ptrdiff_t *first, ptrdiff_t *stop) {
    const ptrdiff_t half = size / 2;
    *first = max_index(0, half - y);
    *stop = min_index(size, extent + half - y);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Plain C: any shape, any compiler
 * ------------------------------------------------------------------------------------------------------------- */

static float gelu_exact(float x) { return 0.5f * x * erfcf(-x * 0.70710678118654752f); }

/* LayerNorm over one position's channels, in place (two passes: the mean, then the variance about it). */
static void normalise_plain(float *v, const Depthwise *a) {
    const ptrdiff_t C = a->channels;
    float sum = 0.0f, squares = 0.0f;
    for (ptrdiff_t c = 0; c < C; c++) sum += v[c];
    const float mean = sum / (float)C;
    for (ptrdiff_t c = 0; c < C; c++) squares += (v[c] - mean) * (v[c] - mean);
    const float scale = 1.0f / sqrtf(squares / (float)C + a->eps);
    for (ptrdiff_t c = 0; c < C; c++) {
        const float n = (v[c] - mean) * scale;
        v[c] = a->norm_weight ? n * a->norm_weight[c] + a->norm_bias[c] : n;
    }
}

static void depthwise_rows_plain(const Depthwise *a) {
    const ptrdiff_t W = a->width, C = a->channels;
    for (ptrdiff_t r = 0; r < a->rows; r++) {
        const ptrdiff_t y = a->first_row + r;
        ptrdiff_t i0, i1;
        taps_inside(y, a->height, 7, &i0, &i1);
        for (ptrdiff_t x = 0; x < W; x++) {
            float *sums = a->out + (r * W + x) * C;
            ptrdiff_t j0, j1;
            taps_inside(x, W, 7, &j0, &j1);
            memcpy(sums, a->bias, (size_t)C * sizeof(float));
            for (ptrdiff_t i = i0; i < i1; i++)
                for (ptrdiff_t j = j0; j < j1; j++) {
                    const float *in = a->x + ((y + i - 3) * W + x + j - 3) * C, *k = a->kernel + (i * 7 + j) * C;
                    for (ptrdiff_t c = 0; c < C; c++) sums[c] += in[c] * k[c];
                }
            normalise_plain(sums, a);
        }
    }
}

static void bias_gelu_rows_plain(const BiasGelu *a) {
    for (ptrdiff_t r = a->start; r < a->stop; r++) {
        float *row = a->x + r * a->columns;
        for (ptrdiff_t c = 0; c < a->columns; c++) row[c] = gelu_exact(row[c] + (a->bias ? a->bias[c] : 0.0f));
    }
}

/* Always 1 (done): the vector builds' conv3x3_rows return 0 when out of memory. */
static int conv3x3_rows_plain(const Conv3x3 *a) {
    const ptrdiff_t W = a->width, I = a->inputs, O = a->outputs;
    for (ptrdiff_t r = 0; r < a->rows; r++) {
        const ptrdiff_t y = a->first_row + r;
        ptrdiff_t i0, i1;
        taps_inside(y, a->height, 3, &i0, &i1);
        for (ptrdiff_t x = 0; x < W; x++) {
            float *sums = a->out + (r * W + x) * O;
            ptrdiff_t j0, j1;
            taps_inside(x, W, 3, &j0, &j1);
            memcpy(sums, a->bias, (size_t)O * sizeof(float));
            for (ptrdiff_t i = i0; i < i1; i++)
                for (ptrdiff_t j = j0; j < j1; j++) {
                    const float *in = a->x + ((y + i - 1) * W + x + j - 1) * I;
                    const float *w = a->weight + (i * 3 + j) * I * O;
                    for (ptrdiff_t c = 0; c < I; c++)
                        for (ptrdiff_t o = 0; o < O; o++) sums[o] += in[c] * w[c * O + o];
                }
            if (a->gelu)
                for (ptrdiff_t o = 0; o < O; o++) sums[o] = gelu_exact(sums[o]);
        }
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------------------------
 * The vector builds: the template at the end of this file, once per instruction set. Its parameters: LANES
 * (floats a vector), NAME (the suffix of its functions), TARGET (the instruction set of its entry points; the
 * helpers are inlined into them and compiled for it too), and how many positions a block keeps in registers:
 * DEPTHWISE_BLOCK (sums + the 7 taps of a kernel row + an input), CONV_BLOCK (x 2 vectors of outputs, + 2
 * weights + an input) and NARROW_BLOCK (x 3 outputs, + 3 weights + an input), sized to each register file.
 * ------------------------------------------------------------------------------------------------------------- */
#ifdef HAVE_VECTORS
#define VECTOR_TEMPLATE

#ifdef HAVE_X86_TARGETS
/* AVX-512: 32 registers of 16 floats. */
#define LANES 16
#define NAME(name) name##_avx512
#define TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))
#define DEPTHWISE_BLOCK 16
#define CONV_BLOCK 12
#define NARROW_BLOCK 4
#include "_decoderkernel.c"

/* AVX2 + FMA: 16 registers of 8 floats. */
#define LANES 8
#define NAME(name) name##_avx2
#define TARGET __attribute__((target("avx2,fma")))
#define DEPTHWISE_BLOCK 6
#define CONV_BLOCK 6
#define NARROW_BLOCK 3
#include "_decoderkernel.c"
#endif

/* The compiler's baseline: 16 registers of 4 floats on x86-64 (SSE2), 32 on arm64 (NEON). */
#define LANES 4
#define NAME(name) name##_baseline
#define TARGET
#define DEPTHWISE_BLOCK 4
#define CONV_BLOCK 4
#define NARROW_BLOCK 2
#include "_decoderkernel.c"

#undef VECTOR_TEMPLATE
#endif /* HAVE_VECTORS */

/* ---------------------------------------------------------------------------------------------------------------
 * Choosing a build
 * ------------------------------------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    void (*depthwise_rows)(const Depthwise *);
    void (*bias_gelu_rows)(const BiasGelu *);
    int (*conv3x3_rows)(const Conv3x3 *);
} Path;

static const Path paths[] = {
#ifdef HAVE_X86_TARGETS
    {"avx512", depthwise_rows_avx512, bias_gelu_rows_avx512, conv3x3_rows_avx512},
    {"avx2", depthwise_rows_avx2, bias_gelu_rows_avx2, conv3x3_rows_avx2},
#endif
#ifdef HAVE_VECTORS
    {"baseline", depthwise_rows_baseline, bias_gelu_rows_baseline, conv3x3_rows_baseline},
#endif
    {"plain", depthwise_rows_plain, bias_gelu_rows_plain, conv3x3_rows_plain},
};
#define PATH_COUNT ((int)(sizeof(paths) / sizeof(paths[0])))

static int cpu_runs(const Path *path) {
#ifdef HAVE_X86_TARGETS
    __builtin_cpu_init();
    if (!strcmp(path->name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!strcmp(path->name, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    (void)path;
    return 1;
}

static const Path *current_path = NULL; /* set at import: the first of `paths` this CPU runs */

/* ---------------------------------------------------------------------------------------------------------------
 * A ConvNeXt block's MLP in bfloat16 on AMX tiles (x86-64 Linux, GCC >= 11 or Clang >= 12; used where the CPU has
 * AMX-BF16 and AVX512-BF16 and Linux grants this process the tiles' state):
 *
 *   out = residual + gelu(y @ fc1 + fc1_bias) @ fc2 + fc2_bias
 *
 * y and the hidden activations rounded to bfloat16 (nearest even), the products summed in float32: what torch's
 * bfloat16 decoder does on the same CPUs (its oneDNN matmuls run on these tiles too). Fused, 32 positions at a
 * time: their hidden (32 x 4C) stays in cache between the two Linears and the GELU (gelu_rounded; in three
 * passes, the exact bias_gelu_rows_avx512), where the float32 path writes and rereads a band's whole hidden table.
 *
 * The weights are packed once (pack_weight): for each block of 16 columns and each block of 32 rows, a 16 x
 * 64-byte tile whose row r holds, for each of the 16 columns, the pair of rows (2r, 2r + 1) of that block. The
 * block's channels C must be a multiple of 32 (every ConvNeXt block of the shipped decoders: C = 32, 64, 96, 128).
 * ------------------------------------------------------------------------------------------------------------- */

#define TILE_ROWS 32    /* positions per block: two tiles of 16 */
#define TILE_DEPTH 32   /* bfloat16 values in a tile row (64 bytes) */
#define TILE_COLUMNS 16 /* float32 columns in an accumulator tile (64 bytes); two tiles side by side */

static int amx_ready = 0; /* set at import */

/* A weight (K, N) float32 -> bfloat16 tiles (round to nearest even; a NaN stays a NaN). */
static uint16_t to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7fffu + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

static float from_bf16(uint16_t value) {
    const uint32_t bits = (uint32_t)value << 16;
    float result;
    memcpy(&result, &bits, 4);
    return result;
}

/* remainder: pack what rounding to bfloat16 left of each value (w - bf16(w), itself rounded to bfloat16): the
 * low half of a split weight (the three-pass matmuls below). */
static void pack_weight(const float *weight, uint16_t *packed, ptrdiff_t K, ptrdiff_t N, int remainder) {
    const ptrdiff_t depth_blocks = K / TILE_DEPTH;
    for (ptrdiff_t block = 0; block < N / TILE_COLUMNS; block++)
        for (ptrdiff_t d = 0; d < depth_blocks; d++) {
            uint16_t *tile = packed + (block * depth_blocks + d) * 16 * TILE_DEPTH;
            for (ptrdiff_t r = 0; r < 16; r++)
                for (ptrdiff_t c = 0; c < TILE_COLUMNS; c++)
                    for (ptrdiff_t p = 0; p < 2; p++)
                    {
                        const float w = weight[(d * TILE_DEPTH + 2 * r + p) * N + block * TILE_COLUMNS + c];
                        tile[r * TILE_DEPTH + c * 2 + p] =
                            remainder ? to_bf16(w - from_bf16(to_bf16(w))) : to_bf16(w);
                    }
        }
}

typedef struct {
    const float *y;        /* (positions, C): the block's normalised input */
    const uint16_t *fc1;   /* packed (C, 4C) */
    const float *fc1_bias; /* (4C) */
    const uint16_t *fc2;   /* packed (4C, C) */
    const float *fc2_bias; /* (C) */
    const float *residual; /* (positions, C) */
    float *out;            /* (positions, C); may be residual itself */
    ptrdiff_t positions, channels;
    /* For three passes (NULL: one): the weights' remainders (pack_weight's), so that each product is
     * hi(y) hi(w) + hi(y) lo(w) + lo(y) hi(w) with hi, lo the bfloat16 halves of a split float32: about 16
     * significant bits where one pass has 8 (the encoder's float32 path, which picks codes from these). */
    const uint16_t *fc1_remainder, *fc2_remainder;
} Mlp;

#include "_amx.h"
#if defined(HAVE_X86_TARGETS) && defined(HAVE_AMX)
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16,avx512bw,avx512vl,avx512dq,avx2,fma")))

/* Tiles 0-3 accumulate a 32 x 32 block of an output, 4-5 hold 32 rows of its input (32 bfloat16 each), 6-7 two
 * column blocks of its weight (16 rows of 16 pairs): configure_tiles (_amx.h). */

/* GELU in place on `count` floats (a multiple of 16) to within 5e-5 of the exact one, for the one-pass bfloat16
 * paths, whose results are next rounded to bfloat16 (8 significant bits) or summed into an RGB correction: x Phi(x)
 * with Phi(x) = 1/2 + x P(x^2) for |x| <= 4.5 (P of degree 8, fitted to Phi on Chebyshev nodes, weighted by x^2 as
 * the GELU's error is), x clamped to that range beyond (Phi(4.5) = 1 - 3.4e-6). A third of the exact kernel's
 * operations (no division, no exponential): the exact GELU was about 60% of a fused MLP's time. */
AMX_TARGET static void gelu_rounded(float *x, ptrdiff_t count) {
    static const float c[9] = {0.398668826f,     -0.0659173578f, 0.00954919215f, -0.00102819549f, 8.0062935e-05f,
                               -4.33633886e-06f, 1.53420558e-07f, -3.16422e-09f, 2.87058138e-11f};
    const __m512 low = _mm512_set1_ps(-4.5f), high = _mm512_set1_ps(4.5f), half = _mm512_set1_ps(0.5f),
                 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
    for (ptrdiff_t k = 0; k < count; k += 16) {
        const __m512 v = _mm512_loadu_ps(x + k), clamped = _mm512_min_ps(_mm512_max_ps(v, low), high);
        const __m512 square = _mm512_mul_ps(clamped, clamped);
        __m512 p = _mm512_set1_ps(c[8]);
        for (int i = 7; i >= 0; i--) p = _mm512_fmadd_ps(p, square, _mm512_set1_ps(c[i]));
        const __m512 phi = _mm512_min_ps(_mm512_max_ps(_mm512_fmadd_ps(clamped, p, half), zero), one);
        _mm512_storeu_ps(x + k, _mm512_mul_ps(v, phi));
    }
}

/* `count` floats (a multiple of 32) -> bfloat16 (nearest even) in `out`, and what that rounding left (rounded to
 * bfloat16) in `remainder` unless NULL. */
AMX_TARGET static void round_span(const float *in, ptrdiff_t count, uint16_t *out, uint16_t *remainder) {
    for (ptrdiff_t k = 0; k < count; k += 32) {
        const __m512 low = _mm512_loadu_ps(in + k), high = _mm512_loadu_ps(in + k + 16);
        const __m512bh pair = _mm512_cvtne2ps_pbh(high, low);
        _mm512_storeu_si512((void *)(out + k), (__m512i)pair);
        if (remainder) { /* x - float(bf16(x)), each half converted back (bfloat16 -> float32: a 16-bit shift) */
            const __m512 low_back = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(low)), 16));
            const __m512 high_back = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(high)), 16));
            const __m512bh rest = _mm512_cvtne2ps_pbh(_mm512_sub_ps(high, high_back), _mm512_sub_ps(low, low_back));
            _mm512_storeu_si512((void *)(remainder + k), (__m512i)rest);
        }
    }
}

/* `rows` rows of K floats (stride K) -> round_span's, the rest of their 32 rows zeros; K a multiple of 32. */
AMX_TARGET static void round_rows(const float *in, ptrdiff_t rows, ptrdiff_t K, uint16_t *out, uint16_t *remainder) {
    round_span(in, rows * K, out, remainder);
    memset(out + rows * K, 0, (size_t)((TILE_ROWS - rows) * K) * sizeof(uint16_t));
    if (remainder) memset(remainder + rows * K, 0, (size_t)((TILE_ROWS - rows) * K) * sizeof(uint16_t));
}

/* The accumulators 0-3 (a 32 x 32 block of an output) start from 16 copies of the bias (`bias_rows`, stride N
 * floats) at columns [column, column + 32); store_accumulators writes them to `out` (stride N floats). */
AMX_TARGET static void start_accumulators(const float *bias_rows, ptrdiff_t column, ptrdiff_t N) {
    _tile_loadd(0, bias_rows + column, N * 4);
    _tile_loadd(1, bias_rows + column + TILE_COLUMNS, N * 4);
    _tile_loadd(2, bias_rows + column, N * 4);
    _tile_loadd(3, bias_rows + column + TILE_COLUMNS, N * 4);
}

AMX_TARGET static void store_accumulators(float *out, ptrdiff_t column, ptrdiff_t N) {
    _tile_stored(0, out + column, N * 4);
    _tile_stored(1, out + column + TILE_COLUMNS, N * 4);
    _tile_stored(2, out + 16 * N + column, N * 4);
    _tile_stored(3, out + 16 * N + column + TILE_COLUMNS, N * 4);
}

/* The accumulators += 32 rows of bfloat16 input (rows 0-15 from `in`, 16-31 from in + 16 stride; `depths` blocks
 * of 32 consecutive values each) @ the matching depth blocks of a packed weight's two column tiles from `column`:
 * its blocks first_depth .. first_depth + depths - 1 of `depth_blocks`. */
AMX_TARGET static void accumulate(const uint16_t *in, ptrdiff_t stride, const uint16_t *packed,
                                  ptrdiff_t depth_blocks, ptrdiff_t column, ptrdiff_t first_depth, ptrdiff_t depths) {
    const ptrdiff_t tile_bytes = 16 * 64;
    const uint8_t *weight0 =
        (const uint8_t *)packed + ((column / TILE_COLUMNS) * depth_blocks + first_depth) * tile_bytes;
    const uint8_t *weight1 = weight0 + depth_blocks * tile_bytes;
    for (ptrdiff_t d = 0; d < depths; d++) {
        _tile_loadd(4, in + d * TILE_DEPTH, stride * 2);
        _tile_loadd(5, in + 16 * stride + d * TILE_DEPTH, stride * 2);
        _tile_loadd(6, weight0 + d * tile_bytes, 64);
        _tile_loadd(7, weight1 + d * tile_bytes, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
}

/* out (32 x N, stride N floats) = the 32 bfloat16 rows of `in` (stride K) @ the packed (K, N) weight, plus
 * bias_rows (16 copies of the bias, stride N): the accumulators start from them. N a multiple of 32. With
 * remainders (in_rest and packed_rest not NULL), the three passes of a split product (Mlp's comment). */
AMX_TARGET static void matmul_block(const uint16_t *in, const uint16_t *in_rest, const uint16_t *packed,
                                    const uint16_t *packed_rest, const float *bias_rows, float *out, ptrdiff_t K,
                                    ptrdiff_t N) {
    const ptrdiff_t depths = K / TILE_DEPTH;
    for (ptrdiff_t column = 0; column < N; column += 2 * TILE_COLUMNS) {
        start_accumulators(bias_rows, column, N);
        if (packed_rest) {  /* the small terms first */
            accumulate(in_rest, K, packed, depths, column, 0, depths);
            accumulate(in, K, packed_rest, depths, column, 0, depths);
        }
        accumulate(in, K, packed, depths, column, 0, depths);
        store_accumulators(out, column, N);
    }
}

/* 0 when out of memory. */
AMX_TARGET static int mlp_amx(const Mlp *a) {
    const ptrdiff_t C = a->channels, H = 4 * C;
    /* In one allocation: the block's input and hidden rows in bfloat16, 16 copies of each bias, the hidden and
     * the output rows in float32. Every part is a multiple of 64 bytes (C is a multiple of 16). */
    const int split = a->fc1_remainder != NULL; /* three passes; rows and their remainders side by side */
    const size_t input_bf16 = (size_t)(TILE_ROWS * C) * 2 * (1 + split),
                 hidden_bf16 = (size_t)(TILE_ROWS * H) * 2 * (1 + split),
                 bias1 = (size_t)(16 * H) * 4, bias2 = (size_t)(16 * C) * 4, hidden = (size_t)(TILE_ROWS * H) * 4,
                 output = (size_t)(TILE_ROWS * C) * 4;
    char *memory = aligned_alloc(64, input_bf16 + hidden_bf16 + bias1 + bias2 + hidden + output);
    if (!memory) return 0;
    uint16_t *input_rows = (uint16_t *)memory, *hidden_rows = (uint16_t *)(memory + input_bf16);
    uint16_t *input_rest = split ? input_rows + TILE_ROWS * C : NULL;
    uint16_t *hidden_rest = split ? hidden_rows + TILE_ROWS * H : NULL;
    float *bias1_rows = (float *)(memory + input_bf16 + hidden_bf16), *bias2_rows = bias1_rows + 16 * H;
    float *hidden_block = bias2_rows + 16 * C, *output_block = hidden_block + TILE_ROWS * H;
    for (ptrdiff_t r = 0; r < 16; r++) {
        memcpy(bias1_rows + r * H, a->fc1_bias, (size_t)H * sizeof(float));
        memcpy(bias2_rows + r * C, a->fc2_bias, (size_t)C * sizeof(float));
    }
    configure_tiles();
    for (ptrdiff_t position = 0; position < a->positions; position += TILE_ROWS) {
        const ptrdiff_t rows = min_index(TILE_ROWS, a->positions - position);
        round_rows(a->y + position * C, rows, C, input_rows, input_rest);
        matmul_block(input_rows, input_rest, a->fc1, a->fc1_remainder, bias1_rows, hidden_block, C, H);
        if (split) { /* the encoder's: exact */
            const BiasGelu gelu = {hidden_block, NULL, H, 0, rows};
            bias_gelu_rows_avx512(&gelu);
        } else {
            gelu_rounded(hidden_block, rows * H);
        }
        round_rows(hidden_block, rows, H, hidden_rows, hidden_rest);
        matmul_block(hidden_rows, hidden_rest, a->fc2, a->fc2_remainder, bias2_rows, output_block, H, C);
        const float *residual = a->residual + position * C;
        float *out = a->out + position * C;
        for (ptrdiff_t k = 0; k < rows * C; k += 16)
            _mm512_storeu_ps(out + k, _mm512_add_ps(_mm512_loadu_ps(residual + k), _mm512_load_ps(output_block + k)));
    }
    _tile_release();
    free(memory);
    return 1;
}

/* A 3x3 convolution (zero padding 1) + bias, then GELU if asked, Cin and Cout multiples of 32 (the post-filter's
 * middle layers): for 32 positions of an output row, the nine taps' inputs are tiles read straight from three
 * rows of the input in bfloat16 (positions x - 1 + j of the rows y - 1 + i: consecutive positions, Cin values
 * each), each times its tap's block of the packed (9 Cin, Cout) weight (rows (i, j, cin)); no im2col copy. The
 * input rows are rounded to bfloat16 once each, into a ring of three rows with a zero column on each side. */
typedef struct {
    const float *x;         /* (height, width, inputs) */
    const uint16_t *packed; /* pack_weight of the (9 inputs, columns) matrix */
    const float *bias;      /* (columns) */
    float *out;             /* (rows, width, outputs): output rows first_row .. first_row + rows - 1 */
    ptrdiff_t height, width, inputs, outputs, first_row, rows;
    int gelu;
    ptrdiff_t columns;      /* the outputs zero-padded to a multiple of 32 (the last layer's 3) */
} Conv3x3Tiles;

/* The first `count` positions of a block of 32 outputs (stride `columns`) into out (stride `outputs`). */
AMX_TARGET static void store_outputs(const float *block, ptrdiff_t count, ptrdiff_t columns, float *out,
                                     ptrdiff_t outputs) {
    if (columns == outputs) {
        memcpy(out, block, (size_t)(count * outputs) * sizeof(float));
        return;
    }
    for (ptrdiff_t k = 0; k < count; k++) memcpy(out + k * outputs, block + k * columns, (size_t)outputs * sizeof(float));
}

/* 0 when out of memory. */
AMX_TARGET static int conv3x3_amx(const Conv3x3Tiles *a) {
    const ptrdiff_t W = a->width, I = a->inputs, O = a->columns, input_blocks = I / TILE_DEPTH;
    const ptrdiff_t ring_width = (W + TILE_ROWS - 1) / TILE_ROWS * TILE_ROWS + 2;
    const size_t ring_row = (size_t)(ring_width * I) * 2, bias_rows = (size_t)(16 * O) * 4,
                 block = (size_t)(TILE_ROWS * O) * 4;
    char *memory = aligned_alloc(64, 3 * ring_row + bias_rows + block);
    if (!memory) return 0;
    memset(memory, 0, 3 * ring_row);
    uint16_t *ring = (uint16_t *)memory;
    float *bias_block = (float *)(memory + 3 * ring_row), *out_block = bias_block + 16 * O;
    for (ptrdiff_t r = 0; r < 16; r++) memcpy(bias_block + r * O, a->bias, (size_t)O * sizeof(float));

    /* Input row y in its ring slot (y mod 3) from column 1; rows outside the input are zeros. */
#define RING_SLOT(y) (ring + (((y) % 3 + 3) % 3) * ring_width * I)
#define FILL_ROW(y)                                                                                                 \
    ((y) < 0 || (y) >= a->height ? (void)memset(RING_SLOT(y), 0, ring_row)                                          \
                                 : round_span(a->x + (y) * W * I, W * I, RING_SLOT(y) + I, NULL))

    configure_tiles();
    FILL_ROW(a->first_row - 1);
    FILL_ROW(a->first_row);
    for (ptrdiff_t r = 0; r < a->rows; r++) {
        const ptrdiff_t y = a->first_row + r;
        FILL_ROW(y + 1);
        for (ptrdiff_t x0 = 0; x0 < W; x0 += TILE_ROWS) {
            for (ptrdiff_t column = 0; column < O; column += 2 * TILE_COLUMNS) {
                start_accumulators(bias_block, column, O);
                for (int i = 0; i < 3; i++)
                    for (int j = 0; j < 3; j++)
                        accumulate(RING_SLOT(y - 1 + i) + (x0 + j) * I, I, a->packed, 9 * input_blocks, column,
                                   (i * 3 + j) * input_blocks, input_blocks);
                store_accumulators(out_block, column, O);
            }
            const ptrdiff_t count = min_index(TILE_ROWS, W - x0);
            if (a->gelu) gelu_rounded(out_block, count * O);
            store_outputs(out_block, count, O, a->out + (r * W + x0) * a->outputs, a->outputs);
        }
    }
#undef FILL_ROW
#undef RING_SLOT
    _tile_release();
    free(memory);
    return 1;
}

/* LayerNorm over channels (no affine: folded into the next product) then a 2x2 stride-2 transposed convolution, as
 * one (C, N) product in bfloat16 (N: its 4 O columns (i, j, o), zero-padded to a multiple of 32), for input rows
 * first_row .. first_row + rows - 1: each position's four output pixels (2y + i, 2x + j) written to `out`. 32
 * positions at a time, normalised in float32, rounded to bfloat16 (with the remainders where packed_rest is given:
 * the three passes), times the tiles, plus the bias; where numpy took a normalised copy, a float32 matmul and a
 * transposing copy of the whole grid (a fifth of a 1024 x 1024 tile's decode). */
typedef struct {
    const float *x;                       /* (height, width, C) */
    const uint16_t *packed, *packed_rest; /* pack_weight of the (C, N) matrix; its remainders, or NULL */
    const float *bias;                    /* (N) */
    float *out;                           /* (2 height, 2 width, O) */
    ptrdiff_t width, channels, columns, outputs, first_row, rows;
    float eps;
} Upsample;

/* `rows` rows of C floats (a multiple of 16), each (x - mean) / sqrt(variance + eps), into out. */
AMX_TARGET static void normalise_rows(const float *in, ptrdiff_t rows, ptrdiff_t C, float eps, float *out) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *row = in + r * C;
        __m512 sum = _mm512_setzero_ps();
        for (ptrdiff_t k = 0; k < C; k += 16) sum = _mm512_add_ps(sum, _mm512_loadu_ps(row + k));
        const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / (float)C);
        __m512 squares = _mm512_setzero_ps();
        for (ptrdiff_t k = 0; k < C; k += 16) {
            const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(row + k), mean);
            squares = _mm512_fmadd_ps(d, d, squares);
        }
        const __m512 scale = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(squares) / (float)C + eps));
        for (ptrdiff_t k = 0; k < C; k += 16)
            _mm512_storeu_ps(out + r * C + k, _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(row + k), mean), scale));
    }
}

/* 0 when out of memory. */
AMX_TARGET static int upsample_amx(const Upsample *a) {
    const ptrdiff_t W = a->width, C = a->channels, N = a->columns, O = a->outputs;
    const int split = a->packed_rest != NULL;
    const size_t normed = (size_t)(TILE_ROWS * C) * 4, input_bf16 = (size_t)(TILE_ROWS * C) * 2 * (1 + split),
                 bias_rows = (size_t)(16 * N) * 4, block = (size_t)(TILE_ROWS * N) * 4;
    char *memory = aligned_alloc(64, normed + input_bf16 + bias_rows + block);
    if (!memory) return 0;
    float *normed_rows = (float *)memory;
    uint16_t *input_rows = (uint16_t *)(memory + normed), *input_rest = split ? input_rows + TILE_ROWS * C : NULL;
    float *bias_block = (float *)(memory + normed + input_bf16), *out_block = bias_block + 16 * N;
    for (ptrdiff_t r = 0; r < 16; r++) memcpy(bias_block + r * N, a->bias, (size_t)N * sizeof(float));
    configure_tiles();
    const ptrdiff_t first = a->first_row * W, positions = a->rows * W;
    for (ptrdiff_t p = 0; p < positions; p += TILE_ROWS) {
        const ptrdiff_t count = min_index(TILE_ROWS, positions - p);
        normalise_rows(a->x + (first + p) * C, count, C, a->eps, normed_rows);
        round_rows(normed_rows, count, C, input_rows, input_rest);
        matmul_block(input_rows, input_rest, a->packed, a->packed_rest, bias_block, out_block, C, N);
        for (ptrdiff_t k = 0; k < count; k++) {
            const ptrdiff_t y = (first + p + k) / W, x = (first + p + k) % W;
            for (int i = 0; i < 2; i++)
                memcpy(a->out + ((2 * y + i) * 2 * W + 2 * x) * O, out_block + k * N + i * 2 * O,
                       (size_t)(2 * O) * sizeof(float));
        }
    }
    _tile_release();
    free(memory);
    return 1;
}

/* Whether the CPU has AMX-BF16 (with its tiles), AVX512-BF16 and the avx512 build's instructions, and Linux lets
 * this process use the tiles (their state is opt-in per process: arch_prctl(ARCH_REQ_XCOMP_PERM,
 * XFEATURE_XTILEDATA)). */
static int amx_usable(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) || !(eax >> 5 & 1)) return 0;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("fma"))
        return 0;
    return amx_tiles_permitted(AMX_FEATURE_BF16);
}
#endif /* HAVE_AMX */

/* ---------------------------------------------------------------------------------------------------------------
 * PNG's row filters for the decoded picture (imageio.encode_png): each row filtered five ways (none, sub, up,
 * average, Paeth) and the one with the least sum of |filtered byte as signed| kept, libpng's heuristic, which
 * Pillow's encoder uses too; the filter type byte first. In numpy this took longer than the deflate after it.
 * ------------------------------------------------------------------------------------------------------------- */

INLINE uint8_t paeth(int a, int b, int c) {
    const int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    return (uint8_t)(pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
}

/* One filter's bytes for positions [from, to) of a row: x the row, a the bytes a pixel to the left, b the row
 * above, c the row above a pixel to the left; returns the sum of |byte as signed|. Branch-free, so that the
 * compiler vectorises it. */
#define PNG_FILTER_LOOP(expression)                                                                               \
    for (ptrdiff_t i = from; i < to; i++) {                                                                       \
        const int x = row[i], a = left[i], b = up[i], c = up_left[i];                                             \
        (void)a, (void)b, (void)c;                                                                                \
        const uint8_t v = (uint8_t)(x - (expression));                                                            \
        target[i] = v;                                                                                            \
        score += abs((int8_t)v);                                                                                  \
    }

static int png_filter_none(const uint8_t *row, const uint8_t *left, const uint8_t *up, const uint8_t *up_left,
                           uint8_t *target, ptrdiff_t from, ptrdiff_t to) {
    int score = 0;
    PNG_FILTER_LOOP(0)
    return score;
}
static int png_filter_sub(const uint8_t *row, const uint8_t *left, const uint8_t *up, const uint8_t *up_left,
                          uint8_t *target, ptrdiff_t from, ptrdiff_t to) {
    int score = 0;
    PNG_FILTER_LOOP(a)
    return score;
}
static int png_filter_up(const uint8_t *row, const uint8_t *left, const uint8_t *up, const uint8_t *up_left,
                         uint8_t *target, ptrdiff_t from, ptrdiff_t to) {
    int score = 0;
    PNG_FILTER_LOOP(b)
    return score;
}
static int png_filter_average(const uint8_t *row, const uint8_t *left, const uint8_t *up, const uint8_t *up_left,
                              uint8_t *target, ptrdiff_t from, ptrdiff_t to) {
    int score = 0;
    PNG_FILTER_LOOP((a + b) >> 1)
    return score;
}
static int png_filter_paeth(const uint8_t *row, const uint8_t *left, const uint8_t *up, const uint8_t *up_left,
                            uint8_t *target, ptrdiff_t from, ptrdiff_t to) {
    int score = 0;
    PNG_FILTER_LOOP(paeth(a, b, c))
    return score;
}
#undef PNG_FILTER_LOOP

/* Rows [first, stop) of `in` (rows of `width` bytes, `pixel` bytes a pixel) -> `out` (rows of width + 1 bytes);
 * `work`: 7 * width + 2 * pixel bytes. */
static void png_filter_rows(const uint8_t *in, ptrdiff_t width, int pixel, ptrdiff_t first, ptrdiff_t stop,
                            uint8_t *out, uint8_t *work) {
    typedef int (*Filter)(const uint8_t *, const uint8_t *, const uint8_t *, const uint8_t *, uint8_t *, ptrdiff_t,
                          ptrdiff_t);
    static const Filter filters[5] = {png_filter_none, png_filter_sub, png_filter_up, png_filter_average,
                                      png_filter_paeth};
    /* The row above and the row itself with `pixel` zero bytes in front (the bytes left of the first pixel). */
    uint8_t *candidates = work, *above = work + 5 * width, *current = above + width + pixel;
    memset(above, 0, (size_t)(2 * (width + pixel)));
    if (first > 0) memcpy(above + pixel, in + (first - 1) * width, (size_t)width);
    for (ptrdiff_t r = first; r < stop; r++) {
        memcpy(current + pixel, in + r * width, (size_t)width);
        const uint8_t *row = current + pixel, *left = current, *up = above + pixel, *up_left = above;
        int best = 0, best_score = 0;
        for (int f = 0; f < 5; f++) {
            const int score = filters[f](row, left, up, up_left, candidates + f * width, 0, width);
            if (f == 0 || score < best_score) best = f, best_score = score;
        }
        uint8_t *target = out + r * (width + 1);
        target[0] = (uint8_t)best;
        memcpy(target + 1, candidates + best * width, (size_t)width);
        uint8_t *swap = above;
        above = current;
        current = swap;
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * Python glue
 * ------------------------------------------------------------------------------------------------------------- */

static int is_native_float32(const char *format) {
    if (!format) return 0;
    if (*format == '@' || *format == '=') format++;
#if PY_LITTLE_ENDIAN
    else if (*format == '<') format++;
#else
    else if (*format == '>') format++;
#endif
    return !strcmp(format, "f");
}

/* A C-contiguous float32 buffer of ndim dimensions (writable if asked) from obj; else ValueError naming it. */
static int get_floats(PyObject *obj, const char *name, int ndim, int writable, Py_buffer *view) {
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: not a C-contiguous%s float32 array", name, writable ? " writable" : "");
        return 0;
    }
    if (view->itemsize != 4 || !is_native_float32(view->format) || view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: a C-contiguous float32 array of %d dimensions is needed", name, ndim);
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

/* As get_floats for a 1-D array of `length` floats; None gives a NULL view->buf when optional. */
static int get_vector(PyObject *obj, const char *name, Py_ssize_t length, int optional, Py_buffer *view) {
    if (optional && obj == Py_None) {
        view->obj = NULL;
        view->buf = NULL;
        return 1;
    }
    if (!get_floats(obj, name, 1, 0, view)) return 0;
    if (view->shape[0] != length) {
        PyErr_Format(PyExc_ValueError, "%s: %zd values needed, not %zd", name, length, view->shape[0]);
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

static void release_all(Py_buffer *views, int count) {
    for (int k = 0; k < count; k++)
        if (views[k].obj) PyBuffer_Release(&views[k]);
}

/* The end of every kernel call: the views released, then NULL (an exception is set) unless ok, MemoryError unless
 * done (a kernel's allocation failed), else None. */
static PyObject *finish_call(Py_buffer *views, int count, int ok, int done) {
    release_all(views, count);
    if (!ok) return NULL;
    if (!done) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static int overlap(const Py_buffer *a, const Py_buffer *b) {
    const char *a0 = a->buf, *b0 = b->buf;
    return a0 < b0 + b->len && b0 < a0 + a->len;
}

/* 1 if an output does not share memory with an input (`what`), else 0 with ValueError. */
static int apart(const Py_buffer *out, const Py_buffer *input, const char *what) {
    if (!overlap(out, input)) return 1;
    PyErr_Format(PyExc_ValueError, "out: must not share memory with %s", what);
    return 0;
}

/* Output rows first_row .. first_row + out_rows - 1 exist in an input of `height` rows. */
static int check_rows(Py_ssize_t first_row, Py_ssize_t out_rows, Py_ssize_t height, const char *kernel) {
    if (first_row < 0 || first_row + out_rows > height) {
        PyErr_Format(PyExc_ValueError, "%s: output rows %zd .. %zd are outside the input's %zd rows", kernel,
                     first_row, first_row + out_rows - 1, height);
        return 0;
    }
    return 1;
}

static PyObject *py_depthwise_layernorm(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *x, *kernel, *bias, *out, *norm_weight, *norm_bias;
    Py_ssize_t first_row;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOOnOOf", &x, &kernel, &bias, &out, &first_row, &norm_weight, &norm_bias, &eps))
        return NULL;
    if ((norm_weight == Py_None) != (norm_bias == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "depthwise_layernorm: give both norm_weight and norm_bias, or neither");
        return NULL;
    }
    Py_buffer views[6] = {{0}};
    enum { X, KERNEL, BIAS, OUT, NORM_WEIGHT, NORM_BIAS };
    if (!get_floats(x, "x", 3, 0, &views[X])) return NULL;
    const Py_ssize_t H = views[X].shape[0], W = views[X].shape[1], C = views[X].shape[2];
    int ok = get_floats(kernel, "kernel", 3, 0, &views[KERNEL]) && get_vector(bias, "bias", C, 0, &views[BIAS]) &&
             get_floats(out, "out", 3, 1, &views[OUT]) &&
             get_vector(norm_weight, "norm_weight", C, 1, &views[NORM_WEIGHT]) &&
             get_vector(norm_bias, "norm_bias", C, 1, &views[NORM_BIAS]);
    if (ok && (views[KERNEL].shape[0] != 7 || views[KERNEL].shape[1] != 7 || views[KERNEL].shape[2] != C)) {
        PyErr_Format(PyExc_ValueError, "kernel: shape (7, 7, %zd) needed", C);
        ok = 0;
    }
    if (ok && (views[OUT].shape[1] != W || views[OUT].shape[2] != C)) {
        PyErr_Format(PyExc_ValueError, "out: shape (rows, %zd, %zd) needed", W, C);
        ok = 0;
    }
    ok = ok && apart(&views[OUT], &views[X], "x");
    ok = ok && check_rows(first_row, views[OUT].shape[0], H, "depthwise_layernorm");
    if (ok && !(eps > 0.0f)) {
        PyErr_SetString(PyExc_ValueError, "eps: must be positive");
        ok = 0;
    }
    if (ok) {
        const Depthwise a = {views[X].buf, views[KERNEL].buf, views[BIAS].buf, views[NORM_WEIGHT].buf,
                             views[NORM_BIAS].buf, eps, views[OUT].buf, H, W, C, first_row, views[OUT].shape[0]};
        Py_BEGIN_ALLOW_THREADS
        current_path->depthwise_rows(&a);
        Py_END_ALLOW_THREADS
    }
    return finish_call(views, 6, ok, 1);
}

static PyObject *py_bias_gelu(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *x, *bias;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "OOnn", &x, &bias, &start, &stop)) return NULL;
    Py_buffer views[2] = {{0}};
    if (!get_floats(x, "x", 2, 1, &views[0])) return NULL;
    const Py_ssize_t rows = views[0].shape[0], columns = views[0].shape[1];
    int ok = get_vector(bias, "bias", columns, 1, &views[1]);
    if (ok && (start < 0 || stop > rows || start > stop)) {
        PyErr_Format(PyExc_ValueError, "bias_gelu: rows %zd .. %zd are not a range of x's %zd rows", start, stop - 1,
                     rows);
        ok = 0;
    }
    if (ok) {
        const BiasGelu a = {views[0].buf, views[1].buf, columns, start, stop};
        Py_BEGIN_ALLOW_THREADS
        current_path->bias_gelu_rows(&a);
        Py_END_ALLOW_THREADS
    }
    return finish_call(views, 2, ok, 1);
}

static PyObject *py_conv3x3(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *x, *weight, *bias, *out;
    Py_ssize_t first_row;
    int gelu;
    if (!PyArg_ParseTuple(args, "OOOOnp", &x, &weight, &bias, &out, &first_row, &gelu)) return NULL;
    Py_buffer views[4] = {{0}};
    enum { X, WEIGHT, BIAS, OUT };
    if (!get_floats(x, "x", 3, 0, &views[X])) return NULL;
    const Py_ssize_t H = views[X].shape[0], W = views[X].shape[1], I = views[X].shape[2];
    int ok = get_floats(weight, "weight", 4, 0, &views[WEIGHT]);
    const Py_ssize_t O = ok ? views[WEIGHT].shape[3] : 0;
    ok = ok && get_vector(bias, "bias", O, 0, &views[BIAS]) && get_floats(out, "out", 3, 1, &views[OUT]);
    if (ok && (views[WEIGHT].shape[0] != 3 || views[WEIGHT].shape[1] != 3 || views[WEIGHT].shape[2] != I)) {
        PyErr_Format(PyExc_ValueError, "weight: shape (3, 3, %zd, outputs) needed", I);
        ok = 0;
    }
    if (ok && (views[OUT].shape[1] != W || views[OUT].shape[2] != O)) {
        PyErr_Format(PyExc_ValueError, "out: shape (rows, %zd, %zd) needed", W, O);
        ok = 0;
    }
    ok = ok && apart(&views[OUT], &views[X], "x");
    ok = ok && check_rows(first_row, views[OUT].shape[0], H, "conv3x3");
    int done = 1;
    if (ok) {
        const Conv3x3 a = {views[X].buf, views[WEIGHT].buf, views[BIAS].buf, views[OUT].buf, H, W, I, O, first_row,
                           views[OUT].shape[0], gelu};
        Py_BEGIN_ALLOW_THREADS
        done = current_path->conv3x3_rows(&a);
        Py_END_ALLOW_THREADS
    }
    return finish_call(views, 4, ok, done);
}

/* A C-contiguous 1-D uint16 buffer of `length` values (a packed weight), else ValueError naming it. */
static int get_packed(PyObject *obj, const char *name, Py_ssize_t length, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: not a C-contiguous array", name);
        return 0;
    }
    const char *format = view->format ? view->format : "";
    if (*format == '@' || *format == '=' || *format == '<') format++;
    if (view->itemsize != 2 || strcmp(format, "H") || view->ndim != 1 || view->shape[0] != length) {
        PyErr_Format(PyExc_ValueError, "%s: %zd packed uint16 values are needed (pack_bf16)", name, length);
        PyBuffer_Release(view);
        view->obj = NULL;
        return 0;
    }
    return 1;
}

static int bf16_shape_ok(Py_ssize_t K, Py_ssize_t N) {
    if (K <= 0 || N <= 0 || K % TILE_DEPTH || N % (2 * TILE_COLUMNS)) {
        PyErr_Format(PyExc_ValueError, "weight: (K, N) with K and N multiples of 32 is needed, not (%zd, %zd)", K, N);
        return 0;
    }
    return 1;
}

static PyObject *py_pack_bf16(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *weight, *packed;
    int remainder = 0;
    if (!PyArg_ParseTuple(args, "OO|p", &weight, &packed, &remainder)) return NULL;
    Py_buffer views[2] = {{0}};
    if (!get_floats(weight, "weight", 2, 0, &views[0])) return NULL;
    const Py_ssize_t K = views[0].shape[0], N = views[0].shape[1];
    int ok = bf16_shape_ok(K, N);
    if (ok && PyObject_GetBuffer(packed, &views[1], PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) ok = 0;
    if (ok && views[1].len != K * N * 2) {
        PyErr_Format(PyExc_ValueError, "packed: %zd bytes are needed", K * N * 2);
        ok = 0;
    }
    if (ok) pack_weight(views[0].buf, views[1].buf, K, N, remainder);
    return finish_call(views, 2, ok, 1);
}

/* Whether the bfloat16 tile kernels run here; else RuntimeError naming `kernel`. */
static int tiles_ready(const char *kernel) {
    if (!amx_ready) PyErr_Format(PyExc_RuntimeError, "%s: this CPU (or OS) has no AMX bfloat16 tiles", kernel);
    return amx_ready;
}

static PyObject *py_mlp_bf16(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *y, *fc1, *fc1_bias, *fc2, *fc2_bias, *residual, *out, *fc1_rest = Py_None, *fc2_rest = Py_None;
    if (!PyArg_ParseTuple(args, "OOOOOOO|OO", &y, &fc1, &fc1_bias, &fc2, &fc2_bias, &residual, &out, &fc1_rest,
                          &fc2_rest))
        return NULL;
    if ((fc1_rest == Py_None) != (fc2_rest == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "mlp_bf16: give both weights' remainders, or neither");
        return NULL;
    }
    if (!tiles_ready("mlp_bf16")) return NULL;
    Py_buffer views[9] = {{0}};
    enum { Y, FC1, FC1_BIAS, FC2, FC2_BIAS, RESIDUAL, OUT, FC1_REST, FC2_REST };
    if (!get_floats(y, "y", 2, 0, &views[Y])) return NULL;
    const Py_ssize_t P = views[Y].shape[0], C = views[Y].shape[1];
    int ok = bf16_shape_ok(C, 4 * C) && get_packed(fc1, "fc1", 4 * C * C, &views[FC1]) &&
             get_vector(fc1_bias, "fc1_bias", 4 * C, 0, &views[FC1_BIAS]) &&
             get_packed(fc2, "fc2", 4 * C * C, &views[FC2]) &&
             get_vector(fc2_bias, "fc2_bias", C, 0, &views[FC2_BIAS]) &&
             get_floats(residual, "residual", 2, 0, &views[RESIDUAL]) && get_floats(out, "out", 2, 1, &views[OUT]) &&
             (fc1_rest == Py_None || (get_packed(fc1_rest, "fc1_rest", 4 * C * C, &views[FC1_REST]) &&
                                      get_packed(fc2_rest, "fc2_rest", 4 * C * C, &views[FC2_REST])));
    if (ok && (views[RESIDUAL].shape[0] != P || views[RESIDUAL].shape[1] != C || views[OUT].shape[0] != P ||
               views[OUT].shape[1] != C)) {
        PyErr_Format(PyExc_ValueError, "residual, out: shape (%zd, %zd) needed, as y", P, C);
        ok = 0;
    }
    if (ok && (overlap(&views[OUT], &views[Y]) ||
               (overlap(&views[OUT], &views[RESIDUAL]) && views[OUT].buf != views[RESIDUAL].buf))) {
        PyErr_SetString(PyExc_ValueError, "out: must not share memory with y, and be residual or apart from it");
        ok = 0;
    }
    int done = 1;
#ifdef HAVE_AMX
    if (ok) {
        const Mlp a = {views[Y].buf, views[FC1].buf, views[FC1_BIAS].buf, views[FC2].buf, views[FC2_BIAS].buf,
                       views[RESIDUAL].buf, views[OUT].buf, P, C, views[FC1_REST].obj ? views[FC1_REST].buf : NULL,
                       views[FC2_REST].obj ? views[FC2_REST].buf : NULL};
        Py_BEGIN_ALLOW_THREADS
        done = mlp_amx(&a);
        Py_END_ALLOW_THREADS
    }
#endif
    return finish_call(views, 9, ok, done);
}

static PyObject *py_conv3x3_bf16(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *x, *packed, *bias, *out;
    Py_ssize_t first_row;
    int gelu;
    if (!PyArg_ParseTuple(args, "OOOOnp", &x, &packed, &bias, &out, &first_row, &gelu)) return NULL;
    if (!tiles_ready("conv3x3_bf16")) return NULL;
    Py_buffer views[4] = {{0}};
    enum { X, PACKED, BIAS, OUT };
    if (!get_floats(x, "x", 3, 0, &views[X])) return NULL;
    const Py_ssize_t H = views[X].shape[0], W = views[X].shape[1], I = views[X].shape[2];
    int ok = get_floats(out, "out", 3, 1, &views[OUT]) && get_floats(bias, "bias", 1, 0, &views[BIAS]);
    const Py_ssize_t O = ok ? views[OUT].shape[2] : 0, N = ok ? views[BIAS].shape[0] : 0;
    if (ok && I % TILE_DEPTH) {
        PyErr_Format(PyExc_ValueError, "x: a multiple of %d channels is needed, not %zd", TILE_DEPTH, I);
        ok = 0;
    }
    if (ok && (O < 1 || O > N || N - O >= 2 * TILE_COLUMNS)) {
        PyErr_Format(PyExc_ValueError, "out: %zd outputs do not match the bias's %zd (padded) columns", O, N);
        ok = 0;
    }
    ok = ok && bf16_shape_ok(9 * I, N) && get_packed(packed, "packed", 9 * I * N, &views[PACKED]);
    if (ok && views[OUT].shape[1] != W) {
        PyErr_Format(PyExc_ValueError, "out: shape (rows, %zd, outputs) needed", W);
        ok = 0;
    }
    ok = ok && apart(&views[OUT], &views[X], "x");
    ok = ok && check_rows(first_row, views[OUT].shape[0], H, "conv3x3_bf16");
    int done = 1;
#ifdef HAVE_AMX
    if (ok) {
        const Conv3x3Tiles a = {views[X].buf, views[PACKED].buf, views[BIAS].buf, views[OUT].buf, H, W, I, O,
                                first_row, views[OUT].shape[0], gelu, N};
        Py_BEGIN_ALLOW_THREADS
        done = conv3x3_amx(&a);
        Py_END_ALLOW_THREADS
    }
#endif
    return finish_call(views, 4, ok, done);
}

static PyObject *py_upsample_bf16(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *x, *packed, *packed_rest, *bias, *out;
    Py_ssize_t first_row, rows;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOOOnnf", &x, &packed, &packed_rest, &bias, &out, &first_row, &rows, &eps))
        return NULL;
    if (!tiles_ready("upsample_bf16")) return NULL;
    Py_buffer views[5] = {{0}};
    enum { X, PACKED, REST, BIAS, OUT };
    if (!get_floats(x, "x", 3, 0, &views[X])) return NULL;
    const Py_ssize_t H = views[X].shape[0], W = views[X].shape[1], C = views[X].shape[2];
    int ok = get_floats(out, "out", 3, 1, &views[OUT]) && get_floats(bias, "bias", 1, 0, &views[BIAS]);
    const Py_ssize_t O = ok ? views[OUT].shape[2] : 0, N = ok ? views[BIAS].shape[0] : 0;
    if (ok && (views[OUT].shape[0] != 2 * H || views[OUT].shape[1] != 2 * W || N < 4 * O)) {
        PyErr_Format(PyExc_ValueError, "out: shape (%zd, %zd, outputs) with 4 * outputs <= %zd columns needed",
                     2 * H, 2 * W, N);
        ok = 0;
    }
    ok = ok && bf16_shape_ok(C, N) && get_packed(packed, "packed", C * N, &views[PACKED]) &&
         (packed_rest == Py_None || get_packed(packed_rest, "packed_rest", C * N, &views[REST]));
    ok = ok && apart(&views[OUT], &views[X], "x");
    if (ok && (first_row < 0 || rows < 0 || first_row + rows > H)) {
        PyErr_Format(PyExc_ValueError, "upsample_bf16: rows %zd .. %zd are outside the input's %zd rows", first_row,
                     first_row + rows - 1, H);
        ok = 0;
    }
    int done = 1;
#ifdef HAVE_AMX
    if (ok) {
        const Upsample a = {views[X].buf, views[PACKED].buf, views[REST].obj ? views[REST].buf : NULL,
                            views[BIAS].buf, views[OUT].buf, W, C, N, O, first_row, rows, eps};
        Py_BEGIN_ALLOW_THREADS
        done = upsample_amx(&a);
        Py_END_ALLOW_THREADS
    }
#endif
    return finish_call(views, 5, ok, done);
}

static PyObject *py_png_filter(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *image, *out;
    int pixel;
    Py_ssize_t first, stop;
    if (!PyArg_ParseTuple(args, "OiOnn", &image, &pixel, &out, &first, &stop)) return NULL;
    Py_buffer views[2] = {{0}};
    if (PyObject_GetBuffer(image, &views[0], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    int ok = 1;
    if (views[0].itemsize != 1 || views[0].ndim != 2) {
        PyErr_SetString(PyExc_ValueError, "image: a C-contiguous 2-D array of bytes (rows) is needed");
        ok = 0;
    }
    const Py_ssize_t rows = ok ? views[0].shape[0] : 0, width = ok ? views[0].shape[1] : 0;
    if (ok && (pixel < 1 || pixel > 8 || width % pixel)) {
        PyErr_Format(PyExc_ValueError, "pixel: 1-8 bytes dividing the row's %zd, not %d", width, pixel);
        ok = 0;
    }
    if (ok && PyObject_GetBuffer(out, &views[1], PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) ok = 0;
    if (ok && views[1].len != rows * (width + 1)) {
        PyErr_Format(PyExc_ValueError, "out: %zd bytes are needed", rows * (width + 1));
        ok = 0;
    }
    if (ok && (first < 0 || stop > rows || first > stop)) {
        PyErr_Format(PyExc_ValueError, "rows %zd .. %zd are not a range of the image's %zd", first, stop - 1, rows);
        ok = 0;
    }
    ok = ok && apart(&views[1], &views[0], "the image");
    uint8_t *work = NULL;
    if (ok && !(work = malloc((size_t)(7 * width + 2 * pixel)))) {
        PyErr_NoMemory();
        ok = 0;
    }
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        png_filter_rows(views[0].buf, width, pixel, first, stop, views[1].buf, work);
        Py_END_ALLOW_THREADS
    }
    free(work);
    return finish_call(views, 2, ok, 1);
}

static PyObject *py_bf16_available(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    return PyBool_FromLong(amx_ready);
}

static PyObject *py_paths(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    PyObject *names = PyList_New(0);
    if (!names) return NULL;
    for (int k = 0; k < PATH_COUNT; k++) {
        if (!cpu_runs(&paths[k])) continue;
        PyObject *name = PyUnicode_FromString(paths[k].name);
        if (!name || PyList_Append(names, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    return names;
}

static PyObject *py_path(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    return PyUnicode_FromString(current_path->name);
}

static PyObject *py_use_path(PyObject *Py_UNUSED(self), PyObject *name) {
    const char *wanted = PyUnicode_AsUTF8(name);
    if (!wanted) return NULL;
    for (int k = 0; k < PATH_COUNT; k++)
        if (!strcmp(paths[k].name, wanted) && cpu_runs(&paths[k])) {
            const char *previous = current_path->name;
            current_path = &paths[k];
            return PyUnicode_FromString(previous);
        }
    PyErr_Format(PyExc_ValueError, "no build %R of the kernels runs on this CPU", name);
    return NULL;
}

static PyMethodDef methods[] = {
    {"depthwise_layernorm", py_depthwise_layernorm, METH_VARARGS,
     "depthwise_layernorm(x, kernel, bias, out, first_row, norm_weight, norm_bias, eps): depthwise 7x7 conv + bias, "
     "then LayerNorm over channels, for out's rows."},
    {"bias_gelu", py_bias_gelu, METH_VARARGS,
     "bias_gelu(x, bias, start, stop): x[start:stop] = gelu(x[start:stop] + bias), in place."},
    {"conv3x3", py_conv3x3, METH_VARARGS,
     "conv3x3(x, weight, bias, out, first_row, gelu): 3x3 conv + bias (then GELU) for out's rows."},
    {"pack_bf16", py_pack_bf16, METH_VARARGS,
     "pack_bf16(weight, packed): a (K, N) float32 weight -> bfloat16 tiles, written into packed (K * N uint16)."},
    {"mlp_bf16", py_mlp_bf16, METH_VARARGS,
     "mlp_bf16(y, fc1, fc1_bias, fc2, fc2_bias, residual, out): out = residual + gelu(y @ fc1 + fc1_bias) @ fc2 + "
     "fc2_bias, the Linears in bfloat16 on AMX tiles."},
    {"conv3x3_bf16", py_conv3x3_bf16, METH_VARARGS,
     "conv3x3_bf16(x, packed, bias, out, first_row, gelu): conv3x3 with inputs and outputs multiples of 32, in "
     "bfloat16 on AMX tiles (packed: pack_bf16 of the (9 inputs, outputs) matrix)."},
    {"upsample_bf16", py_upsample_bf16, METH_VARARGS,
     "upsample_bf16(x, packed, packed_rest, bias, out, first_row, rows, eps): LayerNorm, then a 2x2 stride-2 "
     "transposed conv (packed: pack_bf16 of its (C, N) matrix, columns (i, j, o) zero-padded) in bfloat16 on AMX "
     "tiles, for input rows first_row .. first_row + rows - 1."},
    {"png_filter", py_png_filter, METH_VARARGS,
     "png_filter(image, pixel, out, first, stop): PNG's adaptive row filters for rows first .. stop - 1 of a (rows, "
     "bytes) image into out (rows, bytes + 1)."},
    {"bf16_available", py_bf16_available, METH_NOARGS, "Whether this CPU and OS run mlp_bf16 (AMX tiles)."},
    {"paths", py_paths, METH_NOARGS, "The builds of the kernels this CPU runs, best first."},
    {"path", py_path, METH_NOARGS, "The build in use."},
    {"_use_path", py_use_path, METH_O, "Use another build (tests, measurements); returns the previous one's name."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_decoderkernel", "Decoder kernels of the torch-free runtime (hvqcodec/decoderkernel.py).",
    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__decoderkernel(void) {
#ifdef HAVE_AMX
    amx_ready = amx_usable();
#endif
    for (int k = 0; k < PATH_COUNT && !current_path; k++)
        if (cpu_runs(&paths[k])) current_path = &paths[k];
    return PyModule_Create(&module);
}

#else /* VECTOR_TEMPLATE */
/* ---------------------------------------------------------------------------------------------------------------
 * The vector template: the kernels for vectors of LANES floats (included above once per instruction set, with
 * LANES, NAME, TARGET, DEPTHWISE_BLOCK, CONV_BLOCK and NARROW_BLOCK defined; they are undefined at the end).
 * Each function's name below stands for its copy in this build (the #defines just below).
 * ------------------------------------------------------------------------------------------------------------- */
#define vec NAME(vec)
#define vec_bits NAME(vec_bits)
#define vec_unaligned NAME(vec_unaligned)
#define load NAME(load)
#define store NAME(store)
#define splat NAME(splat)
#define choose NAME(choose)
#define vmax NAME(vmax)
#define vabs NAME(vabs)
#define reciprocal NAME(reciprocal)
#define sum_lanes NAME(sum_lanes)
#define exp_vec NAME(exp_vec)
#define gelu_vec NAME(gelu_vec)
#define bias_gelu_span NAME(bias_gelu_span)
#define depthwise_inner NAME(depthwise_inner)
#define depthwise_clipped NAME(depthwise_clipped)
#define normalise NAME(normalise)
#define depthwise_rows_vector NAME(depthwise_rows_vector)
#define conv3x3_wide_block NAME(conv3x3_wide_block)
#define conv3x3_wide_positions NAME(conv3x3_wide_positions)
#define conv3x3_rows_wide NAME(conv3x3_rows_wide)
#define conv3x3_narrow_block NAME(conv3x3_narrow_block)
#define conv3x3_narrow_positions NAME(conv3x3_narrow_positions)
#define conv3x3_rows_narrow NAME(conv3x3_rows_narrow)
#define UNROLL _Pragma("GCC unroll 32")
/* The helpers are compiled for the build's instruction set too (they are inlined into its entry points anyway;
 * this way GCC does not warn that vectors passed by value would change the baseline's calling convention). */
#define VECTOR_INLINE TARGET INLINE

typedef float vec __attribute__((vector_size(4 * LANES)));
typedef int32_t vec_bits __attribute__((vector_size(4 * LANES)));
typedef float vec_unaligned __attribute__((vector_size(4 * LANES), aligned(4)));

VECTOR_INLINE vec load(const float *p) { return *(const vec_unaligned *)p; }
VECTOR_INLINE void store(float *p, vec v) { *(vec_unaligned *)p = v; }
VECTOR_INLINE vec splat(float x) { return (vec){0} + x; }
/* a where mask is set, else b (a comparison's lanes are all ones or all zeros). */
VECTOR_INLINE vec choose(vec_bits mask, vec a, vec b) { return (vec)((mask & (vec_bits)a) | (~mask & (vec_bits)b)); }
VECTOR_INLINE vec vmax(vec a, vec b) { return choose(a > b, a, b); }
VECTOR_INLINE vec vabs(vec a) { return (vec)((vec_bits)a & 0x7fffffff); }

/* 1 / d for d >= 1 (GELU's 2 + z), to a few units in the last place: on AVX-512 and AVX2 the CPU's reciprocal
 * estimate (14 and 12 bits) and one Newton step, r (2 - d r): the division's throughput bounded GELU there (it
 * ran 1.2-1.5x faster without); elsewhere the division. */
VECTOR_INLINE vec reciprocal(vec d) {
#if defined(HAVE_X86_TARGETS) && LANES == 16
    const vec r = (vec)_mm512_rcp14_ps((__m512)d);
    return r * (2.0f - d * r);
#elif defined(HAVE_X86_TARGETS) && LANES == 8
    const vec r = (vec)_mm256_rcp_ps((__m256)d);
    return r * (2.0f - d * r);
#else
    return 1.0f / d;
#endif
}

/* The sum of a vector's lanes, by halves (on x86 with the shuffles GCC did not find for generic code: it went
 * through memory, and the LayerNorm then took a third of the depthwise kernel's time). */
VECTOR_INLINE float sum_lanes(vec v) {
#if defined(HAVE_X86_TARGETS) && LANES == 16
    return _mm512_reduce_add_ps((__m512)v);
#elif defined(HAVE_X86_TARGETS) && LANES == 8
    const __m128 halves = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    const __m128 quarters = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    return _mm_cvtss_f32(_mm_add_ss(quarters, _mm_shuffle_ps(quarters, quarters, 1)));
#elif LANES == 4
    return (v[0] + v[2]) + (v[1] + v[3]);
#else
#error "sum_lanes: no reduction for this LANES"
#endif
}

/* exp(a) to about 1 ulp for a in [-80, 0] (what GELU asks; up to 88 would do), and 0 below -80: GELU's term is
 * then under 1e-34, and where it went on to denormal numbers (as exp near -87 times GELU's u does) the CPU slows
 * down a hundredfold (GELU after a conv of large values measured 10x slower).
 * exp(a) = 2^n exp(r), n = round(a / ln 2), |r| <= ln(2) / 2 (ln 2 in two parts, so r is exact in float32),
 * exp(r) by its Taylor series to r^7 (relative truncation error under 6e-9), 2^n put in the exponent bits. */
VECTOR_INLINE vec exp_vec(vec a) {
    const float rounder = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits */
    const vec_bits above_floor = a > -80.0f;
    a = vmax(a, splat(-80.0f));
    const vec shifted = a * 1.44269504088896341f + rounder;
    const vec n = shifted - rounder;
    vec r = a - n * 0.693145751953125f;  /* ln 2's first 16 bits: n times it is exact */
    r = r - n * 1.42860682030941723e-6f; /* the rest of ln 2 */
    vec p = splat(1.0f / 5040);
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const vec_bits two_to_n = ((vec_bits)shifted - (vec_bits)splat(rounder) + 127) << 23;
    return (vec)(above_floor & (vec_bits)(p * (vec)two_to_n));
}

/* Exact GELU, x Phi(x) = x erfc(-x / sqrt 2) / 2, as max(x, 0) - |x| erfc(z) / 2 with z = |x| / sqrt 2 >= 0
 * (no branch on the sign). erfc(z) = 2u exp(-z^2 + Q(u)), u = 1 / (2 + z) in (0, 1/2]: Q is smooth there (it
 * tends to -log(2 sqrt(pi)) as z grows), and the degree-7 polynomial below was fitted for this kernel (weighted
 * least squares on Chebyshev nodes for z in [0, 10], weighted by the size of the GELU term |x| erfc(z) / 2).
 * With these float32 coefficients in exact arithmetic, |GELU error| < 2e-8 for every x; in float32 the results
 * are within a few roundings of the true values (tests/test_decoderkernel.py). */
VECTOR_INLINE vec gelu_vec(vec x) {
    const vec magnitude = vabs(x);
    const vec u = reciprocal(magnitude * 0.70710678118654752f + 2.0f);
    vec q = splat(-17.7359524f);
    q = q * u + 33.9992981f;
    q = q * u - 18.9822998f;
    q = q * u - 0.837940216f;
    q = q * u + 1.49436641f;
    q = q * u + 1.28765726f;
    q = q * u + 2.02084303f;
    q = q * u - 1.26624191f;
    const vec half_erfc = u * exp_vec(q - 0.5f * x * x);
    return vmax(x, splat(0.0f)) - magnitude * half_erfc;
}

/* GELU in place on count floats, bias[0 .. count) added first (bias may be NULL); the last count % LANES go
 * through a padded copy, so every value takes the same vector code. */
VECTOR_INLINE void bias_gelu_span(float *x, const float *bias, ptrdiff_t count) {
    ptrdiff_t k = 0;
    for (; k + LANES <= count; k += LANES) store(x + k, gelu_vec(bias ? load(x + k) + load(bias + k) : load(x + k)));
    if (k < count) {
        float values[LANES] = {0}, biases[LANES] = {0};
        memcpy(values, x + k, (size_t)(count - k) * sizeof(float));
        if (bias) memcpy(biases, bias + k, (size_t)(count - k) * sizeof(float));
        store(values, gelu_vec(load(values) + load(biases)));
        memcpy(x + k, values, (size_t)(count - k) * sizeof(float));
    }
}

TARGET static void NAME(bias_gelu_rows)(const BiasGelu *a) {
    for (ptrdiff_t r = a->start; r < a->stop; r++) bias_gelu_span(a->x + r * a->columns, a->bias, a->columns);
}

/* --- depthwise 7x7 + LayerNorm --- */

/* Channels [c, c + LANES) of `count` consecutive positions of output row y from column x0, all 7 tap columns
 * inside the image, kernel rows [i0, i1): each input vector is loaded once and multiplied by the taps of the
 * (up to 7) positions it reaches, the kernel row's 7 taps held in registers. */
VECTOR_INLINE void depthwise_inner(const Depthwise *a, ptrdiff_t y, ptrdiff_t x0, const int count, ptrdiff_t c,
                            ptrdiff_t i0, ptrdiff_t i1, float *out_row) {
    const ptrdiff_t W = a->width, C = a->channels;
    vec sums[DEPTHWISE_BLOCK];
    UNROLL for (int p = 0; p < count; p++) sums[p] = load(a->bias + c);
    for (ptrdiff_t i = i0; i < i1; i++) {
        const float *in = a->x + ((y + i - 3) * W + x0 - 3) * C + c;
        vec taps[7];
        UNROLL for (int j = 0; j < 7; j++) taps[j] = load(a->kernel + (i * 7 + j) * C + c);
        UNROLL for (int t = 0; t < count + 6; t++) {
            const vec input = load(in + t * C);
            UNROLL for (int j = 0; j < 7; j++)
                if (t - j >= 0 && t - j < count) sums[t - j] += input * taps[j];
        }
    }
    UNROLL for (int p = 0; p < count; p++) store(out_row + (x0 + p) * C + c, sums[p]);
}

/* Channels [c, c + LANES) of position x of output row y near the left or right edge: tap columns clipped. */
VECTOR_INLINE void depthwise_clipped(const Depthwise *a, ptrdiff_t y, ptrdiff_t x, ptrdiff_t c, ptrdiff_t i0,
                              ptrdiff_t i1, float *out_row) {
    const ptrdiff_t W = a->width, C = a->channels;
    ptrdiff_t j0, j1;
    taps_inside(x, W, 7, &j0, &j1);
    vec sum = load(a->bias + c);
    for (ptrdiff_t i = i0; i < i1; i++)
        for (ptrdiff_t j = j0; j < j1; j++)
            sum += load(a->x + ((y + i - 3) * W + x + j - 3) * C + c) * load(a->kernel + (i * 7 + j) * C + c);
    store(out_row + x * C + c, sum);
}

/* LayerNorm over the channels of one position, in place (as normalise_plain, LANES channels at a time). */
VECTOR_INLINE void normalise(float *v, const Depthwise *a) {
    const ptrdiff_t C = a->channels;
    vec sum = {0}, squares = {0};
    for (ptrdiff_t c = 0; c < C; c += LANES) sum += load(v + c);
    const vec mean = splat(sum_lanes(sum) / (float)C);
    for (ptrdiff_t c = 0; c < C; c += LANES) {
        const vec d = load(v + c) - mean;
        squares += d * d;
    }
    const vec scale = splat(1.0f / sqrtf(sum_lanes(squares) / (float)C + a->eps));
    for (ptrdiff_t c = 0; c < C; c += LANES) {
        const vec n = (load(v + c) - mean) * scale;
        store(v + c, a->norm_weight ? n * load(a->norm_weight + c) + load(a->norm_bias + c) : n);
    }
}

/* Output rows: each position's channels, then its LayerNorm while they are in L1. Inside, DEPTHWISE_BLOCK
 * positions at a time, then 4, then 1; the 3 positions at each edge one at a time with their columns clipped. */
VECTOR_INLINE void depthwise_rows_vector(const Depthwise *a) {
    const ptrdiff_t W = a->width, C = a->channels;
    const ptrdiff_t inner_first = min_index(3, W), inner_stop = max_index(inner_first, W - 3);
    for (ptrdiff_t r = 0; r < a->rows; r++) {
        const ptrdiff_t y = a->first_row + r;
        float *out_row = a->out + r * W * C;
        ptrdiff_t i0, i1, x = 0;
        taps_inside(y, a->height, 7, &i0, &i1);
        for (; x < inner_first; x++) {
            for (ptrdiff_t c = 0; c < C; c += LANES) depthwise_clipped(a, y, x, c, i0, i1, out_row);
            normalise(out_row + x * C, a);
        }
        for (; x + DEPTHWISE_BLOCK <= inner_stop; x += DEPTHWISE_BLOCK) {
            for (ptrdiff_t c = 0; c < C; c += LANES) depthwise_inner(a, y, x, DEPTHWISE_BLOCK, c, i0, i1, out_row);
            for (int p = 0; p < DEPTHWISE_BLOCK; p++) normalise(out_row + (x + p) * C, a);
        }
        for (; x + 4 <= inner_stop; x += 4) {
            for (ptrdiff_t c = 0; c < C; c += LANES) depthwise_inner(a, y, x, 4, c, i0, i1, out_row);
            for (int p = 0; p < 4; p++) normalise(out_row + (x + p) * C, a);
        }
        for (; x < W; x++) {
            for (ptrdiff_t c = 0; c < C; c += LANES) depthwise_clipped(a, y, x, c, i0, i1, out_row);
            normalise(out_row + x * C, a);
        }
    }
}

TARGET static void NAME(depthwise_rows)(const Depthwise *a) {
    if (a->channels % LANES == 0)
        depthwise_rows_vector(a);
    else
        depthwise_rows_plain(a);
}

/* --- 3x3 convolution --- */

/* Outputs [o, o + vectors * LANES) of `count` consecutive positions of output row y from column x0, kernel rows
 * [i0, i1) and columns [j0, j1) inside the image for all of them: per input channel and tap, `vectors` weight
 * vectors times each position's input, broadcast; GELU on the sums if asked, then stored. */
VECTOR_INLINE void conv3x3_wide_block(const Conv3x3 *a, ptrdiff_t y, ptrdiff_t x0, const int count, const int vectors,
                               ptrdiff_t o, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, float *out_row) {
    const ptrdiff_t W = a->width, I = a->inputs, O = a->outputs;
    vec sums[CONV_BLOCK][2];
    UNROLL for (int p = 0; p < count; p++)
        UNROLL for (int v = 0; v < vectors; v++) sums[p][v] = load(a->bias + o + v * LANES);
    for (ptrdiff_t i = i0; i < i1; i++)
        for (ptrdiff_t j = j0; j < j1; j++) {
            const float *in = a->x + ((y + i - 1) * W + x0 + j - 1) * I;
            const float *w = a->weight + (i * 3 + j) * I * O + o;
            for (ptrdiff_t c = 0; c < I; c++) {
                vec weights[2];
                UNROLL for (int v = 0; v < vectors; v++) weights[v] = load(w + c * O + v * LANES);
                UNROLL for (int p = 0; p < count; p++) {
                    const float input = in[p * I + c];
                    UNROLL for (int v = 0; v < vectors; v++) sums[p][v] += input * weights[v];
                }
            }
        }
    if (a->gelu)
        UNROLL for (int p = 0; p < count; p++)
            UNROLL for (int v = 0; v < vectors; v++) sums[p][v] = gelu_vec(sums[p][v]);
    UNROLL for (int p = 0; p < count; p++)
        UNROLL for (int v = 0; v < vectors; v++) store(out_row + (x0 + p) * O + o + v * LANES, sums[p][v]);
}

/* All outputs of `count` positions: two vectors at a time, then one if a vector is left. */
VECTOR_INLINE void conv3x3_wide_positions(const Conv3x3 *a, ptrdiff_t y, ptrdiff_t x0, const int count, ptrdiff_t i0,
                                   ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, float *out_row) {
    ptrdiff_t o = 0;
    for (; o + 2 * LANES <= a->outputs; o += 2 * LANES)
        conv3x3_wide_block(a, y, x0, count, 2, o, i0, i1, j0, j1, out_row);
    if (o < a->outputs) conv3x3_wide_block(a, y, x0, count, 1, o, i0, i1, j0, j1, out_row);
}

/* Outputs a multiple of LANES (the post-filter's 3 -> 32 and 32 -> 32): the outputs vectorised; inside,
 * CONV_BLOCK positions at a time, then 4, then 1; the edge columns one at a time with their taps clipped. */
VECTOR_INLINE void conv3x3_rows_wide(const Conv3x3 *a) {
    const ptrdiff_t W = a->width;
    const ptrdiff_t inner_first = min_index(1, W), inner_stop = max_index(inner_first, W - 1);
    for (ptrdiff_t r = 0; r < a->rows; r++) {
        const ptrdiff_t y = a->first_row + r;
        float *out_row = a->out + r * W * a->outputs;
        ptrdiff_t i0, i1, j0, j1, x = 0;
        taps_inside(y, a->height, 3, &i0, &i1);
        for (; x < inner_first; x++) {
            taps_inside(x, W, 3, &j0, &j1);
            conv3x3_wide_positions(a, y, x, 1, i0, i1, j0, j1, out_row);
        }
        for (; x + CONV_BLOCK <= inner_stop; x += CONV_BLOCK)
            conv3x3_wide_positions(a, y, x, CONV_BLOCK, i0, i1, 0, 3, out_row);
        for (; x + 4 <= inner_stop; x += 4) conv3x3_wide_positions(a, y, x, 4, i0, i1, 0, 3, out_row);
        for (; x < W; x++) {
            taps_inside(x, W, 3, &j0, &j1);
            conv3x3_wide_positions(a, y, x, 1, i0, i1, j0, j1, out_row);
        }
    }
}

/* `outputs` outputs from o of `count` consecutive positions from x0 (taps as conv3x3_wide_block), each a dot
 * product over (tap, input channel) with the input channels vectorised; transposed: the weight as
 * (outputs, 3, 3, inputs). Each input vector is loaded once for all `outputs`, each weight vector once for all
 * `count` positions. */
VECTOR_INLINE void conv3x3_narrow_block(const Conv3x3 *a, const float *transposed, ptrdiff_t y, ptrdiff_t x0,
                                 const int count, const int outputs, ptrdiff_t o, ptrdiff_t i0, ptrdiff_t i1,
                                 ptrdiff_t j0, ptrdiff_t j1, float *out_row) {
    const ptrdiff_t W = a->width, I = a->inputs, O = a->outputs;
    vec sums[NARROW_BLOCK][3];
    UNROLL for (int p = 0; p < count; p++)
        UNROLL for (int k = 0; k < outputs; k++) sums[p][k] = (vec){0};
    for (ptrdiff_t i = i0; i < i1; i++)
        for (ptrdiff_t j = j0; j < j1; j++) {
            const float *in = a->x + ((y + i - 1) * W + x0 + j - 1) * I;
            const float *w = transposed + (o * 9 + i * 3 + j) * I;
            for (ptrdiff_t c = 0; c < I; c += LANES) {
                vec weights[3];
                UNROLL for (int k = 0; k < outputs; k++) weights[k] = load(w + k * 9 * I + c);
                UNROLL for (int p = 0; p < count; p++) {
                    const vec input = load(in + p * I + c);
                    UNROLL for (int k = 0; k < outputs; k++) sums[p][k] += input * weights[k];
                }
            }
        }
    UNROLL for (int p = 0; p < count; p++)
        UNROLL for (int k = 0; k < outputs; k++) out_row[(x0 + p) * O + o + k] = sum_lanes(sums[p][k]) + a->bias[o + k];
}

/* All outputs of `count` positions: three at a time (RGB), then one at a time. */
VECTOR_INLINE void conv3x3_narrow_positions(const Conv3x3 *a, const float *transposed, ptrdiff_t y, ptrdiff_t x0,
                                     const int count, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1,
                                     float *out_row) {
    ptrdiff_t o = 0;
    for (; o + 3 <= a->outputs; o += 3)
        conv3x3_narrow_block(a, transposed, y, x0, count, 3, o, i0, i1, j0, j1, out_row);
    for (; o < a->outputs; o++) conv3x3_narrow_block(a, transposed, y, x0, count, 1, o, i0, i1, j0, j1, out_row);
}

/* Few outputs, inputs a multiple of LANES (the post-filter's last conv, 32 -> 3): NARROW_BLOCK positions at a
 * time inside, the edge columns one at a time; GELU (if asked) over each finished row. */
VECTOR_INLINE void conv3x3_rows_narrow(const Conv3x3 *a, const float *transposed) {
    const ptrdiff_t W = a->width, O = a->outputs;
    const ptrdiff_t inner_first = min_index(1, W), inner_stop = max_index(inner_first, W - 1);
    for (ptrdiff_t r = 0; r < a->rows; r++) {
        const ptrdiff_t y = a->first_row + r;
        float *out_row = a->out + r * W * O;
        ptrdiff_t i0, i1, j0, j1, x = 0;
        taps_inside(y, a->height, 3, &i0, &i1);
        for (; x < inner_first; x++) {
            taps_inside(x, W, 3, &j0, &j1);
            conv3x3_narrow_positions(a, transposed, y, x, 1, i0, i1, j0, j1, out_row);
        }
        for (; x + NARROW_BLOCK <= inner_stop; x += NARROW_BLOCK)
            conv3x3_narrow_positions(a, transposed, y, x, NARROW_BLOCK, i0, i1, 0, 3, out_row);
        for (; x < W; x++) {
            taps_inside(x, W, 3, &j0, &j1);
            conv3x3_narrow_positions(a, transposed, y, x, 1, i0, i1, j0, j1, out_row);
        }
        if (a->gelu) bias_gelu_span(out_row, NULL, W * O);
    }
}

/* Outputs a multiple of LANES: the wide form; else inputs a multiple of LANES: the narrow form (the weight
 * transposed first); else plain C. 0 when out of memory. */
TARGET static int NAME(conv3x3_rows)(const Conv3x3 *a) {
    if (a->outputs % LANES == 0) {
        conv3x3_rows_wide(a);
        return 1;
    }
    if (a->inputs % LANES != 0) return conv3x3_rows_plain(a);
    const ptrdiff_t I = a->inputs, O = a->outputs;
    float *transposed = malloc((size_t)(9 * I * O) * sizeof(float));
    if (!transposed) return 0;
    for (ptrdiff_t tap = 0; tap < 9; tap++)
        for (ptrdiff_t c = 0; c < I; c++)
            for (ptrdiff_t o = 0; o < O; o++) transposed[(o * 9 + tap) * I + c] = a->weight[(tap * I + c) * O + o];
    conv3x3_rows_narrow(a, transposed);
    free(transposed);
    return 1;
}

/* The template's parameters and names, ready for the next build. */
#undef vec
#undef vec_bits
#undef vec_unaligned
#undef load
#undef store
#undef splat
#undef choose
#undef vmax
#undef vabs
#undef reciprocal
#undef sum_lanes
#undef exp_vec
#undef gelu_vec
#undef bias_gelu_span
#undef depthwise_inner
#undef depthwise_clipped
#undef normalise
#undef depthwise_rows_vector
#undef conv3x3_wide_block
#undef conv3x3_wide_positions
#undef conv3x3_rows_wide
#undef conv3x3_narrow_block
#undef conv3x3_narrow_positions
#undef conv3x3_rows_narrow
#undef UNROLL
#undef VECTOR_INLINE
#undef LANES
#undef NAME
#undef TARGET
#undef DEPTHWISE_BLOCK
#undef CONV_BLOCK
#undef NARROW_BLOCK
#endif /* VECTOR_TEMPLATE */
