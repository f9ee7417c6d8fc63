/* The level priors' step function (IntLevelPrior.frequencies) for 8-bit tables, position by position in C.
 *
 * Why: a decoding step is a wavefront of a few dozen to a few hundred positions, and the torch version spends
 * most of its time in the fixed cost of some 90 small operations per step (about 0.9 ms on a 2-core AVX2 CPU,
 * plus about 8 us per position). Here a step is one call.
 *
 * Exactness: the same operations on the same values as the torch version (hvqcodec/intprior.py), in float32
 * (products, sums and power-of-two scalings of integers below 2^24: exact in any order, fused or not) and
 * float64 (the frequencies), so the integers are identical: tests/test_stepkernel.py compares every position
 * with the torch version on random and saturated tables, and the shipped models' release files decode through
 * it to the same pictures (tests/test_shipped.py). The module is optional: without it (no C compiler at
 * install) the torch version runs.
 *
 * No numpy or torch C API: the Python side passes the addresses of contiguous tensors it keeps alive.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_amx.h"
#include "_rangecoder.h"

#define ACT_BITS 10
#define ACT_MAX 32767.0f
#define NARROW_MAX 127.0f
#define FREQ_TOTAL (1 << 20)
#define MAX_LAYERS 16

/* Functions cloned for x86-64-v3 (AVX2, FMA) where the compiler and loader can pick a clone at run time;
 * elsewhere compiled for the baseline. FMA contraction changes nothing here: every product and sum is exact. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && !defined(HVQ_NO_CLONES)
#define HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define HOT
#endif
/* The helpers are inlined into each clone of run_positions, so they are compiled for its instruction set too. */
#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

typedef struct {
    int inputs, outputs;
    const float *weight;        /* (inputs, outputs) */
    const float *bias_and_half; /* (outputs) bias plus the rounding offset of the shift */
    const float *inv_scale;     /* (outputs) 2^-shift */
    float input_scale;          /* 2^-input_shift: the input rounded to 8 bits; 0 for none */
    uint8_t *packed;            /* the int8 path: weight as int8, (outputs / 16, padded_quads, 16, 4); else NULL */
    int padded_quads;           /* inputs / 4 rounded up to whole AMX depth steps (16 quads), zero weights past them */
    int32_t *correction;        /* the int8 path: 128 * the sum of each output's weights (see product_int8) */
} Layer;

typedef struct Level {
    int channels, codebook_size, taps, causal_blocks, exp_max, gate_half;
    const float *tap_tables;   /* (taps * (K + 1), 2C) */
    const float *masked_bias;  /* (2C) */
    const float *masked_scale; /* (2C) */
    const float *tanh_table;   /* (2 * gate_half + 1) */
    const float *sigmoid_table;
    const double *exp_table;   /* (exp_max + 1) */
    int int8;                  /* whether run_positions_int8 computes the products (int8_supported, shapes) */
    void (*frequencies_row)(const struct Level *, const float *, double *, double); /* the float32 path's */
    Layer layers[MAX_LAYERS];  /* block0.in, block0.out, block1.in, ..., head */
    /* The masked convolution as a layer on AMX tiles (hvqcodec 0.23): its (taps * C, 2C) weight, inputs tap-major,
     * with masked_bias and masked_scale; the code embedding rounded to its 8 bits + 128, (K + 1, C), code K (off
     * the grid) all 128 (zero). Used where masked_amx (the int8 path on AMX tiles); else the tap tables. */
    Layer masked;
    const uint8_t *embedding_bytes;
    int masked_amx;
} Level;

INLINE float clampf(float x, float limit) {
    return x < -limit ? -limit : (x > limit ? limit : x);
}

/* Outputs are computed LANES at a time with their sums in registers; the shipped models' widths are multiples
 * of LANES, and what is left over (small test models) goes one output at a time. */
#define LANES 32

/* Eight float32 sums in one register: GCC and Clang vector extensions (two SSE registers in the baseline
 * clone, one AVX register in the x86-64-v3 one); other compilers get the plain loops. */
#if defined(__GNUC__)
typedef float vec8 __attribute__((vector_size(32)));
typedef float vec8_unaligned __attribute__((vector_size(32), aligned(4)));
#define LOAD8(p) (*(const vec8_unaligned *)(p))
#define STORE8(p, v) (*(vec8_unaligned *)(p) = (v))
#define HAVE_VEC8 1
#endif

/* sums (LANES) = the sum over rows of rows[r][offset:offset + LANES]: the LANES sums stay in registers. */
INLINE void add_rows(float *restrict sums, const float *const *rows, int count, size_t offset) {
#ifdef HAVE_VEC8
    vec8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (int r = 0; r < count; r++) {
        const float *row = rows[r] + offset;
        a0 += LOAD8(row); a1 += LOAD8(row + 8); a2 += LOAD8(row + 16); a3 += LOAD8(row + 24);
    }
    STORE8(sums, a0); STORE8(sums + 8, a1); STORE8(sums + 16, a2); STORE8(sums + 24, a3);
#else
    for (int j = 0; j < LANES; j++) sums[j] = 0.0f;
    for (int r = 0; r < count; r++)
        for (int j = 0; j < LANES; j++) sums[j] += rows[r][offset + j];
#endif
}

/* For two positions at once (each weight row is loaded once for both: the weights, about 220 KB, come from
 * the L2 cache, whose bandwidth bounds this loop): acc (O) = bias + x (I) @ W (I, O), times 2^-shift, floored
 * and clamped, as IntNetwork.product. */
INLINE void product(const Layer *layer, const float *restrict x0, const float *restrict x1, float *restrict out0,
                    float *restrict out1) {
    const int O = layer->outputs, I = layer->inputs;
    for (int o0 = 0; o0 + LANES <= O; o0 += LANES) {
        float acc0[LANES], acc1[LANES];
#ifdef HAVE_VEC8
        const float *bias = layer->bias_and_half + o0;
        vec8 a0 = LOAD8(bias), a1 = LOAD8(bias + 8), a2 = LOAD8(bias + 16), a3 = LOAD8(bias + 24);
        vec8 b0 = a0, b1 = a1, b2 = a2, b3 = a3;
        for (int i = 0; i < I; i++) {
            const float xa = x0[i], xb = x1[i];
            const float *w = layer->weight + (size_t)i * O + o0;
            const vec8 w0 = LOAD8(w), w1 = LOAD8(w + 8), w2 = LOAD8(w + 16), w3 = LOAD8(w + 24);
            a0 += xa * w0; a1 += xa * w1; a2 += xa * w2; a3 += xa * w3;
            b0 += xb * w0; b1 += xb * w1; b2 += xb * w2; b3 += xb * w3;
        }
        STORE8(acc0, a0); STORE8(acc0 + 8, a1); STORE8(acc0 + 16, a2); STORE8(acc0 + 24, a3);
        STORE8(acc1, b0); STORE8(acc1 + 8, b1); STORE8(acc1 + 16, b2); STORE8(acc1 + 24, b3);
#else
        for (int j = 0; j < LANES; j++) acc0[j] = acc1[j] = layer->bias_and_half[o0 + j];
        for (int i = 0; i < I; i++)
            for (int j = 0; j < LANES; j++) {
                const float w = layer->weight[(size_t)i * O + o0 + j];
                acc0[j] += x0[i] * w;
                acc1[j] += x1[i] * w;
            }
#endif
        for (int j = 0; j < LANES; j++) {
            out0[o0 + j] = clampf(floorf(acc0[j] * layer->inv_scale[o0 + j]), ACT_MAX);
            out1[o0 + j] = clampf(floorf(acc1[j] * layer->inv_scale[o0 + j]), ACT_MAX);
        }
    }
    for (int o = O - O % LANES; o < O; o++) { /* outputs beyond the last whole block (small test models) */
        float acc0 = layer->bias_and_half[o], acc1 = acc0;
        for (int i = 0; i < I; i++) {
            acc0 += x0[i] * layer->weight[(size_t)i * O + o];
            acc1 += x1[i] * layer->weight[(size_t)i * O + o];
        }
        out0[o] = clampf(floorf(acc0 * layer->inv_scale[o]), ACT_MAX);
        out1[o] = clampf(floorf(acc1 * layer->inv_scale[o]), ACT_MAX);
    }
}

/* IntNetwork.layer_input: x itself, or x rounded (half to even) to 8 bits with the layer's scale. */
INLINE void layer_input(const Layer *layer, const float *restrict x, float *restrict out, int n) {
    const float scale = layer->input_scale;
    if (scale == 0.0f) {
        memcpy(out, x, sizeof(float) * (size_t)n);
        return;
    }
    for (int i = 0; i < n; i++) out[i] = clampf(nearbyintf(x[i] * scale), NARROW_MAX);
}

/* IntNetwork.gate: tanh(a) * sigmoid(b) for the halves a, b of x (2C), as the input of `into` (rounded to its
 * 8 bits) or, with no such layer, on the activation grid. The tables' widened ends are their clamped ends. */
INLINE void gate(const Level *level, const float *restrict x, const Layer *into, float *restrict out) {
    const int C = level->channels, half = level->gate_half;
    const float scale = into && into->input_scale != 0.0f ? into->input_scale / (float)(1 << ACT_BITS) : 0.0f;
    const float *restrict tanh_table = level->tanh_table + half, *restrict sigmoid_table = level->sigmoid_table + half;
    const float limit = (float)half;
    for (int c = 0; c < C; c++) {
        const int a = (int)clampf(x[c], limit), b = (int)clampf(x[C + c], limit);
        out[c] = tanh_table[a] * sigmoid_table[b];
    }
    if (scale != 0.0f) {
        for (int c = 0; c < C; c++) out[c] = clampf(nearbyintf(out[c] * scale), NARROW_MAX);
    } else {
        for (int c = 0; c < C; c++)
            out[c] = floorf((out[c] + (float)(1 << (ACT_BITS - 1))) * (1.0f / (1 << ACT_BITS)));
    }
}

/* logits_to_frequencies for one row (temperature 1), in float64 as the torch version. Sums of integers are
 * exact in any order, so they run in LANES partial sums (the last, partial block into the first of them). */
INLINE void frequencies_row(const Level *level, const float *restrict logits, double *restrict freq, double scale) {
    const int K = level->codebook_size, whole = K - K % LANES;
    float top = logits[0];
    if (whole) {
        float peaks[LANES];
        for (int j = 0; j < LANES; j++) peaks[j] = logits[j];
        for (int k = LANES; k < whole; k += LANES)
            for (int j = 0; j < LANES; j++) peaks[j] = logits[k + j] > peaks[j] ? logits[k + j] : peaks[j];
        for (int j = 0; j < LANES; j++) top = peaks[j] > top ? peaks[j] : top;
    }
    for (int k = whole; k < K; k++) top = logits[k] > top ? logits[k] : top;
    int most_probable = 0; /* the first code at the maximum, as argmax */
    while (logits[most_probable] != top) most_probable++;
    const float cap = (float)level->exp_max;
    double sums[LANES] = {0};
    for (int k = 0; k < whole; k += LANES)
        for (int j = 0; j < LANES; j++) {
            const float d = top - logits[k + j];
            const double w = level->exp_table[(int)(d < cap ? d : cap)];
            freq[k + j] = w;
            sums[j] += w;
        }
    for (int k = whole; k < K; k++) {
        const float d = top - logits[k];
        freq[k] = level->exp_table[(int)(d < cap ? d : cap)];
        sums[0] += freq[k];
    }
    double total = 0.0;
    for (int j = 0; j < LANES; j++) total += sums[j];
    const double numerator = (double)(FREQ_TOTAL - K);
    for (int j = 0; j < LANES; j++) sums[j] = 0.0;
    for (int k = 0; k < whole; k += LANES)
        for (int j = 0; j < LANES; j++) {
            const double f = floor(freq[k + j] * numerator / total) + 1.0;
            freq[k + j] = f;
            sums[j] += f;
        }
    for (int k = whole; k < K; k++) {
        freq[k] = floor(freq[k] * numerator / total) + 1.0;
        sums[0] += freq[k];
    }
    double sum = 0.0;
    for (int j = 0; j < LANES; j++) sum += sums[j];
    freq[most_probable] += (double)FREQ_TOTAL - sum;
    if (scale != 1.0) /* a power of two (the coder's probabilities: 2^-20): exact */
        for (int k = 0; k < K; k++) freq[k] *= scale;
}

static void frequencies_row_plain(const Level *level, const float *logits, double *freq, double scale) {
    frequencies_row(level, logits, freq, scale);
}

#if defined(__GNUC__) && defined(__x86_64__)
/* frequencies_row with AVX2: the same float32 and float64 operations on each code (the maximum, the exp table's
 * weights and their sum, floor(w * numerator / total) + 1 and its sum: sums of integers below 2^53, exact in any
 * order), four float64 at a time (the scalar loops took about half the float32 path's step time); the most
 * probable code's share and the scale as there (the scale is a power of two, so scaling before adding the
 * remainder gives the same float64). Both paths use it (an AVX-512 version measured no faster). */
__attribute__((target("avx2,fma"))) static void frequencies_row_avx2(const Level *level, const float *restrict logits,
                                                                     double *restrict freq, double scale) {
    const int K = level->codebook_size, whole = K - K % 8;
    float top = logits[0];
    if (whole) {
        __m256 peak = _mm256_loadu_ps(logits);
        for (int k = 8; k < whole; k += 8) peak = _mm256_max_ps(peak, _mm256_loadu_ps(logits + k));
        float peaks[8];
        _mm256_storeu_ps(peaks, peak);
        for (int j = 0; j < 8; j++) top = peaks[j] > top ? peaks[j] : top;
    }
    for (int k = whole; k < K; k++) top = logits[k] > top ? logits[k] : top;
    const __m256 top8 = _mm256_set1_ps(top);
    int most_probable = -1; /* the first code at the maximum, as argmax */
    for (int k = 0; k < whole && most_probable < 0; k += 8) {
        const int equal = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(logits + k), top8, _CMP_EQ_OQ));
        if (equal) most_probable = k + __builtin_ctz((unsigned)equal);
    }
    if (most_probable < 0) {
        most_probable = whole;
        while (logits[most_probable] != top) most_probable++;
    }
    const float cap = (float)level->exp_max;
    const __m128 top4 = _mm_set1_ps(top), cap4 = _mm_set1_ps(cap);
    __m256d sums = _mm256_setzero_pd();
    for (int k = 0; k < whole; k += 4) {
        const __m128i index = _mm_cvttps_epi32(_mm_min_ps(_mm_sub_ps(top4, _mm_loadu_ps(logits + k)), cap4));
        const __m256d w = _mm256_i32gather_pd(level->exp_table, index, 8);
        _mm256_storeu_pd(freq + k, w);
        sums = _mm256_add_pd(sums, w);
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, sums);
    double total = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (int k = whole; k < K; k++) {
        const float d = top - logits[k];
        freq[k] = level->exp_table[(int)(d < cap ? d : cap)];
        total += freq[k];
    }
    const double numerator = (double)(FREQ_TOTAL - K);
    const __m256d numerator4 = _mm256_set1_pd(numerator), total4 = _mm256_set1_pd(total);
    const __m256d one = _mm256_set1_pd(1.0), scale4 = _mm256_set1_pd(scale);
    sums = _mm256_setzero_pd();
    for (int k = 0; k < whole; k += 4) {
        __m256d f = _mm256_div_pd(_mm256_mul_pd(_mm256_loadu_pd(freq + k), numerator4), total4);
        f = _mm256_add_pd(_mm256_round_pd(f, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), one);
        sums = _mm256_add_pd(sums, f);
        _mm256_storeu_pd(freq + k, _mm256_mul_pd(f, scale4));
    }
    _mm256_storeu_pd(lanes, sums);
    double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (int k = whole; k < K; k++) {
        const double f = floor(freq[k] * numerator / total) + 1.0;
        sum += f;
        freq[k] = f * scale;
    }
    freq[most_probable] += ((double)FREQ_TOTAL - sum) * scale;
}
#endif

/* The float32 path's frequency rows: AVX2 where the CPU has it, else the plain loops. */
static void choose_frequencies_row(Level *level) {
    level->frequencies_row = frequencies_row_plain;
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level->frequencies_row = frequencies_row_avx2;
#endif
}

/* Adds int16 conditioning (2C) to pre. */
INLINE void add_conditioning(float *restrict pre, const int16_t *restrict row, int n) {
    for (int o = 0; o < n; o++) pre[o] += (float)row[o];
}

/* A position's first activations h (C): the masked convolution (a sum of one precomputed row per causal tap),
 * its scaling, the first conditioning and the gate; pre (2C) is scratch. Shared by both paths (inlined into
 * each, so compiled for its instruction set). */
INLINE void first_activations(const Level *level, const int64_t *canvas, const int64_t *neighbours,
                              const int64_t *upper, const int16_t *const *cond, Py_ssize_t p, float *restrict pre,
                              float *restrict h) {
    const int C2 = 2 * level->channels, K = level->codebook_size, taps = level->taps;
    const float *rows[64];
    for (int t = 0; t < taps; t++)
        rows[t] = level->tap_tables + ((size_t)t * (K + 1) + (size_t)canvas[neighbours[p * taps + t]]) * C2;
    for (int o0 = 0; o0 + LANES <= C2; o0 += LANES) {
        float acc[LANES];
        add_rows(acc, rows, taps, (size_t)o0);
        for (int j = 0; j < LANES; j++)
            pre[o0 + j] = clampf(floorf((acc[j] + level->masked_bias[o0 + j]) * level->masked_scale[o0 + j]), ACT_MAX);
    }
    for (int o = C2 - C2 % LANES; o < C2; o++) {
        float acc = 0.0f;
        for (int t = 0; t < taps; t++) acc += rows[t][o];
        pre[o] = clampf(floorf((acc + level->masked_bias[o]) * level->masked_scale[o]), ACT_MAX);
    }
    if (cond) add_conditioning(pre, cond[0] + (size_t)upper[p] * C2, C2);
    gate(level, pre, NULL, h);
}

/* Whether the step function prefetches the next positions' rows (prefetch_position); off only to measure it
 * (`_prefetch(False)`, benchmarks/step_kernel.py --baseline no-prefetch). */
static int prefetching = 1;

/* Asks for the rows first_activations and add_conditioning will read for position p: its causal taps' rows of the
 * tap tables and its conditioning rows. They sit at scattered places in tables of megabytes (a wavefront visits
 * positions along a diagonal, which no hardware prefetcher follows), so a group's loads are issued while the
 * group before it computes. A hint only: nothing read or computed changes. */
INLINE void prefetch_position(const Level *level, const int64_t *canvas, const int64_t *neighbours,
                              const int64_t *upper, const int16_t *const *cond, Py_ssize_t p, int tap_rows) {
#if defined(__GNUC__)
    const int C2 = 2 * level->channels, K = level->codebook_size, taps = tap_rows ? level->taps : 0;
    const size_t row_bytes = sizeof(float) * (size_t)C2, cond_bytes = sizeof(int16_t) * (size_t)C2;
    for (int t = 0; t < taps; t++) {
        const char *row = (const char *)(level->tap_tables +
                                         ((size_t)t * (K + 1) + (size_t)canvas[neighbours[p * taps + t]]) * C2);
        for (size_t offset = 0; offset < row_bytes; offset += 64) __builtin_prefetch(row + offset);
    }
    if (cond)
        for (int b = 0; b <= level->causal_blocks; b++) {
            const char *row = (const char *)(cond[b] + (size_t)upper[p] * C2);
            for (size_t offset = 0; offset < cond_bytes; offset += 64) __builtin_prefetch(row + offset);
        }
#endif
}

/* Where the int8 step function can hand each position's frequency row instead of writing a (count, K) table
 * (hvqcodec 0.24): emit(sink, position, row) gets the exact integer frequencies (K float64, summing to 2^20) of
 * the positions in order, one row at a time in cache; it returns 0 to stop the run (which then returns
 * SINK_STOPPED). The range coder's loops (decode_level, encode_level, candidate_frequencies) are sinks. */
typedef struct Sink {
    int (*emit)(struct Sink *sink, Py_ssize_t position, const double *row);
} Sink;
#define SINK_STOPPED (-1)

/* One position's working rows. */
typedef struct {
    float *pre, *h, *x, *wide;
} Work;

HOT static int run_positions(const Level *level, const int64_t *canvas, const int64_t *neighbours,
                             const int64_t *upper, const int16_t *const *cond, Py_ssize_t count, double *out,
                             double scale) {
    const int C = level->channels, C2 = 2 * C, K = level->codebook_size;
    const Layer *head = &level->layers[2 * level->causal_blocks];
    const int widest = K > C2 ? K : C2;
    const size_t per_position = (size_t)(C2 + C + C + widest);
    /* Two positions' rows, and a frequency row for the second position of an odd count's last pair. */
    float *buffer = malloc(sizeof(float) * 2 * per_position + sizeof(double) * (size_t)K);
    if (!buffer) return 0;
    Work work[2];
    for (int g = 0; g < 2; g++) {
        float *base = buffer + g * per_position;
        work[g] = (Work){base, base + C2, base + C2 + C, base + C2 + 2 * C};
    }
    double *spare = (double *)(buffer + 2 * per_position);
    for (Py_ssize_t first = 0; first < count; first += 2) {
        const Py_ssize_t positions[2] = {first, first + 1 < count ? first + 1 : first};
        for (Py_ssize_t next = first + 2; prefetching && next < count && next < first + 4; next++)
            prefetch_position(level, canvas, neighbours, upper, cond, next, 1);
        for (int g = 0; g < 2; g++)
            first_activations(level, canvas, neighbours, upper, cond, positions[g], work[g].pre, work[g].h);
        for (int b = 0; b < level->causal_blocks; b++) {
            const Layer *in = &level->layers[2 * b], *out_layer = &level->layers[2 * b + 1];
            for (int g = 0; g < 2; g++) layer_input(in, work[g].h, work[g].x, C);
            product(in, work[0].x, work[1].x, work[0].pre, work[1].pre);
            for (int g = 0; g < 2; g++) {
                if (cond) add_conditioning(work[g].pre, cond[b + 1] + (size_t)upper[positions[g]] * C2, C2);
                gate(level, work[g].pre, out_layer, work[g].x);
            }
            product(out_layer, work[0].x, work[1].x, work[0].wide, work[1].wide);
            for (int g = 0; g < 2; g++)
                for (int c = 0; c < C; c++) work[g].h[c] = clampf(work[g].h[c] + work[g].wide[c], ACT_MAX);
        }
        for (int g = 0; g < 2; g++) layer_input(head, work[g].h, work[g].x, C);
        product(head, work[0].x, work[1].x, work[0].wide, work[1].wide);
        level->frequencies_row(level, work[0].wide, out + (size_t)positions[0] * K, scale);
        level->frequencies_row(level, work[1].wide,
                               positions[1] != positions[0] ? out + (size_t)positions[1] * K : spare, scale);
    }
    free(buffer);
    return 1;
}

/* The int8 path (hvqcodec 0.18): on CPUs with AVX-512 VNNI, each product is computed from int8 weights with
 * vpdpbusd, four 8-bit inputs times four weights summed into each of 16 int32 lanes per instruction, for four
 * positions per pass over the weights (a quarter of the float32 weights' bytes, and four times the products per
 * instruction). Every layer input is an integer in [-127, 127] (IntNetwork.layer_input rounds it to 8 bits)
 * and every weight one in [-128, 127], so the int32 sums are exact, as the float32 ones are; the result then
 * goes through the same float32 operations (plus the bias, times 2^-shift, floor, clamp): the same integers.
 * vpdpbusd multiplies unsigned by signed bytes, so the inputs go in as x + 128 and 128 * sum(w) comes off. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(HVQ_NO_INT8)
#define HAVE_INT8_PATH 1
#define INT8_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")))
#define GROUP 4        /* positions per pass over the weights: 16 of the 32 vector registers hold their sums */
#define MAX_QUADS 576  /* inputs / 4 at most: 9 taps of 256 channels (a 3x3 convolution's columns) */

static int int8_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
}

/* Whether a layer can take the int8 path: whole quads of inputs, whole blocks of 16 outputs, integer weights
 * in int8's range (the shipped format's; anything else keeps the float32 path). */
static int int8_layer_fits(const Layer *layer) {
    if (layer->inputs % 4 || layer->outputs % 16 || layer->inputs / 4 > MAX_QUADS || layer->input_scale == 0.0f)
        return 0;
    for (size_t k = 0; k < (size_t)layer->inputs * layer->outputs; k++) {
        const float w = layer->weight[k];
        if (w != floorf(w) || w < -128.0f || w > 127.0f) return 0;
    }
    return 1;
}

/* Packs a layer's weights for product_int8 and product_tiles: block b of 16 outputs, quad q of inputs at
 * (b * padded_quads + q) * 64, output j's four weights at j * 4 (an AMX int8 weight tile is 16 such quads); the
 * quads past the inputs hold zeros. */
static int int8_pack(Layer *layer) {
    const int I = layer->inputs, O = layer->outputs;
    const int padded_quads = (I / 4 + 15) / 16 * 16;
    layer->padded_quads = padded_quads;
    layer->packed = calloc((size_t)padded_quads * 4 * O, 1);
    layer->correction = malloc(sizeof(int32_t) * (size_t)O);
    if (!layer->packed || !layer->correction) return 0;
    for (int o = 0; o < O; o++) {
        int32_t sum = 0;
        for (int i = 0; i < I; i++) {
            const int w = (int)layer->weight[(size_t)i * O + o];
            layer->packed[((size_t)(o / 16) * padded_quads + i / 4) * 64 + (o % 16) * 4 + i % 4] = (uint8_t)(int8_t)w;
            sum += w;
        }
        layer->correction[o] = 128 * sum;
    }
    return 1;
}

/* bias + sums, times 2^-shift, floored and clamped: IntNetwork.product's last steps on 16 outputs. */
INT8_TARGET static inline void int8_finish(const Layer *layer, int o, __m512i sums, float *out) {
    __m512 acc = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums, _mm512_loadu_si512(layer->correction + o)));
    acc = _mm512_mul_ps(_mm512_add_ps(acc, _mm512_loadu_ps(layer->bias_and_half + o)),
                        _mm512_loadu_ps(layer->inv_scale + o));
    acc = _mm512_roundscale_ps(acc, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    acc = _mm512_min_ps(_mm512_max_ps(acc, _mm512_set1_ps(-ACT_MAX)), _mm512_set1_ps(ACT_MAX));
    _mm512_storeu_ps(out + o, acc);
}

/* out[g] (O) = the layer's product of the inputs xq[g] (I / 4 words of four bytes, each input + 128) for GROUP
 * positions. */
INT8_TARGET static void product_quads(const Layer *layer, const uint32_t (*xq)[MAX_QUADS], float *const *out) {
    const int O = layer->outputs, quads = layer->inputs / 4, blocks = O / 16, stride = layer->padded_quads;
    int b = 0;
    for (; b + 4 <= blocks; b += 4) { /* 64 outputs: 4 blocks x GROUP positions of sums in registers */
        __m512i s[GROUP][4];
        for (int g = 0; g < GROUP; g++)
            for (int k = 0; k < 4; k++) s[g][k] = _mm512_setzero_si512();
        const uint8_t *w = layer->packed + (size_t)b * stride * 64;
        for (int q = 0; q < quads; q++) {
            const __m512i w0 = _mm512_loadu_si512(w + (size_t)q * 64);
            const __m512i w1 = _mm512_loadu_si512(w + (size_t)(stride + q) * 64);
            const __m512i w2 = _mm512_loadu_si512(w + (size_t)(2 * stride + q) * 64);
            const __m512i w3 = _mm512_loadu_si512(w + (size_t)(3 * stride + q) * 64);
            for (int g = 0; g < GROUP; g++) {
                const __m512i xb = _mm512_set1_epi32((int)xq[g][q]);
                s[g][0] = _mm512_dpbusd_epi32(s[g][0], xb, w0);
                s[g][1] = _mm512_dpbusd_epi32(s[g][1], xb, w1);
                s[g][2] = _mm512_dpbusd_epi32(s[g][2], xb, w2);
                s[g][3] = _mm512_dpbusd_epi32(s[g][3], xb, w3);
            }
        }
        for (int g = 0; g < GROUP; g++)
            for (int k = 0; k < 4; k++) int8_finish(layer, 16 * (b + k), s[g][k], out[g]);
    }
    for (; b < blocks; b++) { /* the last blocks of 16 (widths that are not multiples of 64) */
        __m512i s[GROUP];
        for (int g = 0; g < GROUP; g++) s[g] = _mm512_setzero_si512();
        const uint8_t *w = layer->packed + (size_t)b * stride * 64;
        for (int q = 0; q < quads; q++) {
            const __m512i w0 = _mm512_loadu_si512(w + (size_t)q * 64);
            for (int g = 0; g < GROUP; g++) s[g] = _mm512_dpbusd_epi32(s[g], _mm512_set1_epi32((int)xq[g][q]), w0);
        }
        for (int g = 0; g < GROUP; g++) int8_finish(layer, 16 * b, s[g], out[g]);
    }
}

/* out[g] (O) = the layer's product of x[g] (I, 8-bit integers as floats) for GROUP positions. */
INT8_TARGET static void product_int8(const Layer *layer, float *const *x, float *const *out) {
    const int quads = layer->inputs / 4;
    uint32_t xq[GROUP][MAX_QUADS];
    for (int g = 0; g < GROUP; g++)
        for (int q = 0; q < quads; q++) {
            uint32_t word = 0;
            for (int k = 0; k < 4; k++) word |= (uint32_t)(uint8_t)((int)x[g][4 * q + k] + 128) << (8 * k);
            xq[g][q] = word;
        }
    product_quads(layer, (const uint32_t (*)[MAX_QUADS])xq, out);
}

/* Where the CPU has AMX-INT8 tiles (hvqcodec 0.23), the products take them instead: 16 positions a pass, each
 * tile product 16 positions x 64 inputs (bytes, + 128) times 64 inputs x 16 outputs (the packed weights' 16 quads,
 * exactly the layout above), summed into int32 tiles: the same exact sums as vpdpbusd's, then the same
 * int8_finish, so the same integers (tests/test_stepkernel.py compares both paths position by position). A
 * matrix unit's product of 16 x 64 by 64 x 16 bytes takes about as long as 16 vpdpbusd, which do a sixteenth of
 * its work; the positions' other steps (first activations, gates, frequencies) are as before. */
#define MAX_GROUP 16
#if defined(HAVE_AMX)
#define HAVE_AMX_INT8 1
#define AMX_INT8_TARGET \
    __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")))
static int amx_int8_ready = 0;   /* set at import (amx_tiles_permitted) */
static int amx_int8_enabled = 1; /* off only to compare the paths (`_amx(False)`) */

/* sums (16, O) int32 = 16 rows of `in` (stride bytes apart; each the layer's inputs + 128, then anything up to
 * the padded quads, whose weights are zero) @ the layer's packed weights. Tiles 0-3: four blocks of 16 outputs,
 * 4: the inputs of one depth step, 5-7: weights. */
AMX_INT8_TARGET static void product_tiles(const Layer *layer, const uint8_t *in, size_t stride, int32_t *sums) {
    const int O = layer->outputs, blocks = O / 16, steps = layer->padded_quads / 16;
    const size_t tile_bytes = 16 * 64, block_bytes = (size_t)layer->padded_quads * 64, out_stride = 4 * (size_t)O;
    int b = 0;
    for (; b + 4 <= blocks; b += 4) {
        const uint8_t *w = layer->packed + (size_t)b * block_bytes;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int d = 0; d < steps; d++) {
            const uint8_t *step = w + (size_t)d * tile_bytes;
            _tile_loadd(4, in + (size_t)d * 64, stride);
            _tile_loadd(5, step, 64);
            _tile_loadd(6, step + block_bytes, 64);
            _tile_loadd(7, step + 2 * block_bytes, 64);
            _tile_dpbusd(0, 4, 5);
            _tile_dpbusd(1, 4, 6);
            _tile_dpbusd(2, 4, 7);
            _tile_loadd(5, step + 3 * block_bytes, 64);
            _tile_dpbusd(3, 4, 5);
        }
        _tile_stored(0, sums + 16 * b, out_stride);
        _tile_stored(1, sums + 16 * (b + 1), out_stride);
        _tile_stored(2, sums + 16 * (b + 2), out_stride);
        _tile_stored(3, sums + 16 * (b + 3), out_stride);
    }
    for (; b < blocks; b++) {
        const uint8_t *w = layer->packed + (size_t)b * block_bytes;
        _tile_zero(0);
        for (int d = 0; d < steps; d++) {
            _tile_loadd(4, in + (size_t)d * 64, stride);
            _tile_loadd(5, w + (size_t)d * tile_bytes, 64);
            _tile_dpbusd(0, 4, 5);
        }
        _tile_stored(0, sums + 16 * b, out_stride);
    }
}

AMX_INT8_TARGET static void start_tiles(void) { configure_tiles(); }
AMX_INT8_TARGET static void release_tiles(void) { _tile_release(); }
#endif

/* How a kernel call computes its products: `group` positions a pass, on AMX tiles (with their scratch rows) or
 * with product_quads. */
typedef struct {
    int group, amx;
    uint8_t *bytes; /* AMX: MAX_GROUP rows of MAX_QUADS * 4 bytes (the inputs + 128) */
    int32_t *sums;  /* AMX: MAX_GROUP rows of the widest layer's outputs */
} Products;

static int products_start(Products *p, const Level *level, int layers) {
    memset(p, 0, sizeof *p);
    p->group = GROUP;
#ifdef HAVE_AMX_INT8
    if (amx_int8_ready && amx_int8_enabled) {
        int widest = level->masked_amx ? level->masked.outputs : 0;
        for (int i = 0; i < layers; i++)
            widest = level->layers[i].outputs > widest ? level->layers[i].outputs : widest;
        p->bytes = calloc((size_t)MAX_GROUP * MAX_QUADS * 4, 1);
        p->sums = malloc(sizeof(int32_t) * MAX_GROUP * (size_t)widest);
        if (!p->bytes || !p->sums) {
            free(p->bytes);
            free(p->sums);
            return 0;
        }
        p->amx = 1;
        p->group = MAX_GROUP;
        start_tiles();
    }
#else
    (void)level;
    (void)layers;
#endif
    return 1;
}

static void products_end(Products *p) {
#ifdef HAVE_AMX_INT8
    if (p->amx) release_tiles();
#endif
    free(p->bytes);
    free(p->sums);
}

/* out[g] (O) for the first `rows` of p->group positions = the layer's product of the inputs xq[g] (I / 4 words of
 * four bytes, each input + 128; MAX_QUADS words a row). product_quads computes all GROUP rows (the callers pad a
 * last group by repeating a position). */
INT8_TARGET static void product_bytes(Products *p, const Layer *layer, const uint32_t (*xq)[MAX_QUADS],
                                      float *const *out, int rows) {
#ifdef HAVE_AMX_INT8
    if (p->amx) {
        product_tiles(layer, (const uint8_t *)xq, sizeof(uint32_t) * MAX_QUADS, p->sums);
        for (int g = 0; g < rows; g++)
            for (int o = 0; o < layer->outputs; o += 16)
                int8_finish(layer, o, _mm512_loadu_si512(p->sums + (size_t)g * layer->outputs + o), out[g]);
        return;
    }
#endif
    (void)rows;
    product_quads(layer, xq, out);
}

/* As product_bytes for inputs x[g] (I, 8-bit integers as floats). */
INT8_TARGET static void product_rows(Products *p, const Layer *layer, float *const *x, float *const *out, int rows) {
    if (!p->amx) {
        product_int8(layer, x, out);
        return;
    }
    uint32_t(*xq)[MAX_QUADS] = (uint32_t(*)[MAX_QUADS])p->bytes;
    const int I = layer->inputs;
    for (int g = 0; g < rows; g++) {
        uint8_t *row = (uint8_t *)xq[g];
        for (int i = 0; i < I; i++) row[i] = (uint8_t)((int)x[g][i] + 128);
    }
    product_bytes(p, layer, (const uint32_t (*)[MAX_QUADS])xq, out, rows);
}

/* first_activations for `active` positions at once with the masked convolution on AMX tiles: each position's
 * causal neighbours' embedding bytes side by side (tap-major, as the packed layer's inputs), one product for all,
 * then its conditioning and the gate, into h[g]; pre[g] (2C) is scratch. The same integers as the tap tables'
 * sums: both are the exact integer sums of the same products, then the same float32 steps. */
INT8_TARGET static void first_activations_tiles(Products *p, const Level *level, const int64_t *canvas,
                                                const int64_t *neighbours, const int64_t *upper,
                                                const int16_t *const *cond, const Py_ssize_t *positions, int active,
                                                float *const *pre, float *const *h) {
    const int C = level->channels, C2 = 2 * C, taps = level->taps;
    const size_t stride = sizeof(uint32_t) * MAX_QUADS;
    for (int g = 0; g < active; g++) {
        uint8_t *row = p->bytes + (size_t)g * stride;
        const int64_t *near = neighbours + positions[g] * taps;
        for (int t = 0; t < taps; t++) {
            const uint8_t *source = level->embedding_bytes + (size_t)canvas[near[t]] * C;
            for (int k = 0; k < C; k += 16) _mm_storeu_si128((__m128i *)(row + t * C + k), _mm_loadu_si128((const __m128i *)(source + k)));
        }
    }
    product_bytes(p, &level->masked, (const uint32_t (*)[MAX_QUADS])p->bytes, pre, active);
    for (int g = 0; g < active; g++) {
        if (cond) add_conditioning(pre[g], cond[0] + (size_t)upper[positions[g]] * C2, C2);
        gate(level, pre[g], NULL, h[g]);
    }
}

/* run_positions with the int8 products, p.group positions at a time (the same steps, in the same order). With
 * `given` (count, C) instead of a canvas, each position's first activations are given rather than computed by the
 * masked convolution and the first gate: a refinement stage's group head (IntStagePrior.group_head), the same
 * gated blocks and head with no causal taps or conditioning. The last group of product_quads's path repeats its
 * first position where positions run out; on AMX it is short (`active` positions). */
INT8_TARGET static int run_positions_int8(const Level *level, const int64_t *canvas, const int64_t *neighbours,
                                          const int64_t *upper, const int16_t *const *cond, const float *given,
                                          Py_ssize_t count, double *out, double scale, Sink *sink) {
    const int C = level->channels, C2 = 2 * C, K = level->codebook_size;
    const Layer *head = &level->layers[2 * level->causal_blocks];
    const int widest = K > C2 ? K : C2;
    const size_t per_position = (size_t)(C2 + C + C + widest);
    Products p;
    if (!products_start(&p, level, 2 * level->causal_blocks + 1)) return 0;
    const int group = p.group;
    float *buffer = malloc(sizeof(float) * group * per_position + sizeof(double) * (size_t)K);
    if (!buffer) {
        products_end(&p);
        return 0;
    }
    Work work[MAX_GROUP];
    float *pre[MAX_GROUP], *h[MAX_GROUP], *x[MAX_GROUP], *wide[MAX_GROUP];
    for (int g = 0; g < group; g++) {
        float *base = buffer + g * per_position;
        work[g] = (Work){base, base + C2, base + C2 + C, base + C2 + 2 * C};
        pre[g] = work[g].pre, h[g] = work[g].h, x[g] = work[g].x, wide[g] = work[g].wide;
    }
    double *spare = (double *)(buffer + group * per_position);
    const int masked_tiles = p.amx && level->masked_amx && !given; /* the first activations as one product */
    for (Py_ssize_t first = 0; first < count; first += group) {
        Py_ssize_t positions[MAX_GROUP];
        const int rows = count - first < group ? (int)(count - first) : group, active = p.amx ? rows : group;
        for (int g = 0; g < group; g++) positions[g] = first + g < count ? first + g : first;
        for (int g = 0; g < active && given; g++) memcpy(work[g].h, given + (size_t)positions[g] * C, sizeof(float) * C);
        for (Py_ssize_t next = first + group; !given && prefetching && next < count && next < first + 2 * group; next++)
            prefetch_position(level, canvas, neighbours, upper, cond, next, !masked_tiles);
        if (masked_tiles)
            first_activations_tiles(&p, level, canvas, neighbours, upper, cond, positions, active, pre, h);
        for (int g = 0; g < active && !given && !masked_tiles; g++)
            first_activations(level, canvas, neighbours, upper, cond, positions[g], pre[g], work[g].h);
        for (int b = 0; b < level->causal_blocks; b++) {
            const Layer *in = &level->layers[2 * b], *out_layer = &level->layers[2 * b + 1];
            for (int g = 0; g < active; g++) layer_input(in, work[g].h, x[g], C);
            product_rows(&p, in, x, pre, active);
            for (int g = 0; g < active; g++) {
                if (cond) add_conditioning(pre[g], cond[b + 1] + (size_t)upper[positions[g]] * C2, C2);
                gate(level, pre[g], out_layer, x[g]);
            }
            product_rows(&p, out_layer, x, wide, active);
            for (int g = 0; g < active; g++)
                for (int c = 0; c < C; c++) work[g].h[c] = clampf(work[g].h[c] + wide[g][c], ACT_MAX);
        }
        for (int g = 0; g < active; g++) layer_input(head, work[g].h, x[g], C);
        product_rows(&p, head, x, wide, active);
        if (sink) { /* each row to the sink, in order, from one row in cache (the last group's padding: none) */
            for (int g = 0; g < rows; g++) {
                frequencies_row_avx2(level, wide[g], spare, 1.0);
                if (!sink->emit(sink, positions[g], spare)) {
                    free(buffer);
                    products_end(&p);
                    return SINK_STOPPED;
                }
            }
            continue;
        }
        for (int g = 0; g < active; g++) /* a repeated position (the last group's padding) writes to spare */
            frequencies_row_avx2(level, wide[g],
                                 g == 0 || positions[g] != first ? out + (size_t)positions[g] * K : spare, scale);
    }
    free(buffer);
    products_end(&p);
    return 1;
}
/* The conditioning stacks' 3x3 gated blocks (IntNetwork.conv3x3_block) on the int8 path: x + out(gate(in(the 3x3
 * neighbourhood of x rounded to 8 bits))), clamped, for positions start..stop-1 of an h x w grid, in place. `grid`
 * (h + 2, w + 2, C) holds every position's rounded input + 128 (conv_grid), zero (128) around the edge, so that
 * rows of x can be replaced while others still read the block's input. The same integers as the torch version:
 * the 9C inputs in its tap-major order, exact int32 sums, then the same float32 steps as the step function. */
INT8_TARGET static int conv_positions_int8(const Level *level, int block, const uint8_t *grid, float *x, int w,
                                           Py_ssize_t start, Py_ssize_t stop) {
    const int C = level->channels, C2 = 2 * C;
    const Layer *in = &level->layers[2 * block], *out_layer = &level->layers[2 * block + 1];
    Products p;
    if (!products_start(&p, level, 2 * level->causal_blocks)) return 0;
    const int group = p.group;
    float *buffer = malloc(sizeof(float) * group * (size_t)(C2 + 2 * C));
    uint32_t(*xq)[MAX_QUADS] = calloc((size_t)group * MAX_QUADS, sizeof(uint32_t));
    if (!buffer || !xq) {
        free(buffer);
        free(xq);
        products_end(&p);
        return 0;
    }
    float *pre[MAX_GROUP], *gated[MAX_GROUP], *wide[MAX_GROUP];
    for (int g = 0; g < group; g++) {
        pre[g] = buffer + (size_t)g * (C2 + 2 * C);
        gated[g] = pre[g] + C2;
        wide[g] = gated[g] + C;
    }
    const size_t row_bytes = (size_t)(w + 2) * C;
    for (Py_ssize_t first = start; first < stop; first += group) {
        Py_ssize_t positions[MAX_GROUP];
        const int rows = stop - first < group ? (int)(stop - first) : group, active = p.amx ? rows : group;
        for (int g = 0; g < active; g++) {
            positions[g] = first + g < stop ? first + g : first;
            const Py_ssize_t r = positions[g] / w, c = positions[g] % w;
            uint8_t *column = (uint8_t *)xq[g];
            for (int dy = 0; dy < 3; dy++) /* taps (dy, dx) in raster order, C bytes each: the tap-major columns */
                memcpy(column + (size_t)dy * 3 * C, grid + (size_t)(r + dy) * row_bytes + (size_t)c * C, (size_t)3 * C);
        }
        product_bytes(&p, in, (const uint32_t (*)[MAX_QUADS])xq, pre, active);
        for (int g = 0; g < active; g++) gate(level, pre[g], out_layer, gated[g]);
        product_rows(&p, out_layer, gated, wide, active);
        for (int g = 0; g < active; g++) { /* all reads of x before any write (the padding repeats a position) */
            const float *row = x + (size_t)positions[g] * C;
            for (int c = 0; c < C; c++) wide[g][c] = clampf(row[c] + wide[g][c], ACT_MAX);
        }
        for (int g = 0; g < active; g++) memcpy(x + (size_t)positions[g] * C, wide[g], sizeof(float) * C);
    }
    free(buffer);
    free(xq);
    products_end(&p);
    return 1;
}

/* Rows start..stop-1 of x (rows, I) float32 on the activation grid through one layer on its own
 * (IntNetwork.linear: the input rounded to the layer's 8 bits, the exact product, bias, 2^-shift, floor, clamp),
 * written as int16 (rows, O): the values are integers within +-32767, so int16 holds them exactly. */
INT8_TARGET static int linear_rows_int8(const Level *level, int index, const float *x, Py_ssize_t start,
                                        Py_ssize_t stop, int16_t *out) {
    const Layer *layer = &level->layers[index];
    const int I = layer->inputs, O = layer->outputs;
    Products p;
    if (!products_start(&p, level, level->causal_blocks)) return 0;
    const int group = p.group;
    float *buffer = malloc(sizeof(float) * group * (size_t)(I + O));
    if (!buffer) {
        products_end(&p);
        return 0;
    }
    float *in[MAX_GROUP], *result[MAX_GROUP];
    for (int g = 0; g < group; g++) {
        in[g] = buffer + (size_t)g * (I + O);
        result[g] = in[g] + I;
    }
    for (Py_ssize_t first = start; first < stop; first += group) {
        const int rows = stop - first < group ? (int)(stop - first) : group, active = p.amx ? rows : group;
        for (int g = 0; g < active; g++) /* the last group repeats its first row where rows run out */
            layer_input(layer, x + (size_t)(first + g < stop ? first + g : first) * I, in[g], I);
        product_rows(&p, layer, in, result, active);
        for (int g = 0; g < rows; g++) {
            int16_t *row = out + (size_t)(first + g) * O;
            for (int o = 0; o < O; o++) row[o] = (int16_t)result[g][o];
        }
    }
    free(buffer);
    products_end(&p);
    return 1;
}
#else
static int int8_supported(void) { return 0; }
#define MAX_QUADS 576 /* (the shape checks of the int8-only kernels, which refuse anyway) */
#endif

static void free_level(PyObject *capsule) {
    /* Level priors and head networks are "hvqcodec.level" capsules, conv stacks "hvqcodec.convs", row-wise layers
     * "hvqcodec.linears" (their layers differ, so none is taken for another). */
    Level *level = PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule));
    for (int i = 0; i < MAX_LAYERS; i++) {
        free(level->layers[i].packed);
        free(level->layers[i].correction);
    }
    free(level->masked.packed);
    free(level->masked.correction);
    free(level);
}

static int address(PyObject *object, const void **target) {
    unsigned long long value = PyLong_AsUnsignedLongLong(object);
    if (PyErr_Occurred()) return 0;
    *target = (const void *)(uintptr_t)value;
    return 1;
}

/* One layer's (inputs, outputs, weight, bias_and_half, inv_scale, input_scale) tuple into `layer`. */
static int parse_layer(PyObject *item, Layer *layer) {
    PyObject *weight, *bias, *scale;
    if (!PyArg_ParseTuple(item, "iiOOOf", &layer->inputs, &layer->outputs, &weight, &bias, &scale,
                          &layer->input_scale))
        return 0;
    return address(weight, (const void **)&layer->weight) && address(bias, (const void **)&layer->bias_and_half) &&
           address(scale, (const void **)&layer->inv_scale);
}

/* A copy of `level` in a capsule named `name`, its first `count` layers packed for the int8 path where `want_int8`,
 * the CPU and every layer allow it (level->int8 then says whether they were). */
static PyObject *level_capsule(const Level *level, const char *name, Py_ssize_t count, int want_int8) {
    Level *stored = malloc(sizeof(Level));
    if (!stored) return PyErr_NoMemory();
    *stored = *level;
    PyObject *capsule = PyCapsule_New(stored, name, free_level);
    if (!capsule) {
        free(stored);
        return NULL;
    }
#ifdef HAVE_INT8_PATH
    if (want_int8 && int8_supported()) {
        stored->int8 = 1;
        for (Py_ssize_t i = 0; i < count; i++) stored->int8 &= int8_layer_fits(&stored->layers[i]);
        for (Py_ssize_t i = 0; stored->int8 && i < count; i++)
            if (!int8_pack(&stored->layers[i])) {
                Py_DECREF(capsule);
                return PyErr_NoMemory();
            }
    }
#else
    (void)count;
    (void)want_int8;
#endif
    return capsule;
}

/* level_capsule for the kernels that exist on the int8 path only (conv stacks, row-wise layers): ValueError with
 * `refusal` where the CPU or the layers do not allow it, so that the caller runs the torch version. */
static PyObject *int8_only_capsule(const Level *level, const char *name, Py_ssize_t count, const char *refusal) {
    PyObject *capsule = level_capsule(level, name, count, 1);
    if (!capsule) return NULL;
    if (!((const Level *)PyCapsule_GetPointer(capsule, name))->int8) {
        Py_DECREF(capsule);
        PyErr_SetString(PyExc_ValueError, refusal);
        return NULL;
    }
    return capsule;
}

/* level(channels, codebook_size, taps, causal_blocks, exp_max, gate_half, tap_tables, masked_bias, masked_scale,
 *       tanh_table, sigmoid_table, exp_table, layers[, int8]) -> capsule; layers: ((inputs, outputs, weight,
 *       bias_and_half, inv_scale, input_scale), ...) for block0.in, block0.out, ..., head; int8: take the int8
 *       path where the CPU and the layers' shapes allow (uses_int8 says whether it did). */
static PyObject *make_level(PyObject *Py_UNUSED(self), PyObject *args) {
    Level level;
    PyObject *addresses[6], *layers;
    memset(&level, 0, sizeof(level));
    int want_int8 = 0;
    PyObject *masked = Py_None, *embedding = Py_None;
    if (!PyArg_ParseTuple(args, "iiiiiiOOOOOOO!|pOO", &level.channels, &level.codebook_size, &level.taps,
                          &level.causal_blocks, &level.exp_max, &level.gate_half, &addresses[0], &addresses[1],
                          &addresses[2], &addresses[3], &addresses[4], &addresses[5], &PyTuple_Type, &layers,
                          &want_int8, &masked, &embedding))
        return NULL;
    const void **targets[6] = {(const void **)&level.tap_tables, (const void **)&level.masked_bias,
                               (const void **)&level.masked_scale, (const void **)&level.tanh_table,
                               (const void **)&level.sigmoid_table, (const void **)&level.exp_table};
    for (int i = 0; i < 6; i++)
        if (!address(addresses[i], targets[i])) return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(layers);
    if (count != 2 * level.causal_blocks + 1 || count > MAX_LAYERS || level.channels <= 0 || level.taps < 0 ||
        level.taps > 64 || level.codebook_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "inconsistent level prior shape");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Layer *layer = &level.layers[i];
        if (!parse_layer(PyTuple_GET_ITEM(layers, i), layer)) return NULL;
        int expected_out = i == count - 1 ? level.codebook_size : (i % 2 ? level.channels : 2 * level.channels);
        if (layer->inputs != level.channels || layer->outputs != expected_out) {
            PyErr_SetString(PyExc_ValueError, "layer shape does not match the level prior");
            return NULL;
        }
    }
    choose_frequencies_row(&level);
    PyObject *capsule = level_capsule(&level, "hvqcodec.level", count, want_int8);
    if (!capsule || masked == Py_None || embedding == Py_None) return capsule;
    /* The masked convolution on AMX tiles: where the products take them and the layer fits the int8 format. */
    Level *stored = PyCapsule_GetPointer(capsule, "hvqcodec.level");
    Layer *layer = &stored->masked;
    if (!parse_layer(masked, layer) || !address(embedding, (const void **)&stored->embedding_bytes)) {
        Py_DECREF(capsule);
        return NULL;
    }
    if (layer->inputs != level.taps * level.channels || layer->outputs != 2 * level.channels) {
        Py_DECREF(capsule);
        PyErr_SetString(PyExc_ValueError, "the masked layer's shape does not match the level prior");
        return NULL;
    }
#ifdef HAVE_AMX_INT8
    if (stored->int8 && amx_int8_ready && level.channels % 16 == 0 && int8_layer_fits(layer)) {
        if (!int8_pack(layer)) {
            Py_DECREF(capsule);
            return PyErr_NoMemory();
        }
        stored->masked_amx = 1;
    }
#endif
    return capsule;
}

/* frequencies(level, canvas, neighbours, upper, cond, count, out[, scale]): out (count, K) float64 frequencies
 * (times scale: 2^-20 gives the range coder's probabilities); cond a tuple of causal_blocks + 1 addresses of
 * int16 (rows, 2C) tables, or None. Runs without the GIL. */
static PyObject *frequencies(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *canvas_address, *neighbours_address, *upper_address, *cond_addresses, *out_address;
    Py_ssize_t count;
    double scale = 1.0;
    if (!PyArg_ParseTuple(args, "OOOOOnO|d", &capsule, &canvas_address, &neighbours_address, &upper_address,
                          &cond_addresses, &count, &out_address, &scale))
        return NULL;
    const Level *level = PyCapsule_GetPointer(capsule, "hvqcodec.level");
    if (!level) return NULL;
    if (!level->taps) {
        PyErr_SetString(PyExc_ValueError, "a head network has no causal taps: heads() runs it");
        return NULL;
    }
    const void *canvas, *neighbours, *upper, *out;
    if (!address(canvas_address, &canvas) || !address(neighbours_address, &neighbours) ||
        !address(upper_address, &upper) || !address(out_address, &out))
        return NULL;
    const int16_t *cond[MAX_LAYERS];
    const int16_t *const *cond_tables = NULL;
    if (cond_addresses != Py_None) {
        if (!PyTuple_Check(cond_addresses) || PyTuple_GET_SIZE(cond_addresses) != level->causal_blocks + 1) {
            PyErr_SetString(PyExc_ValueError, "one conditioning table per gated unit expected");
            return NULL;
        }
        for (int i = 0; i <= level->causal_blocks; i++)
            if (!address(PyTuple_GET_ITEM(cond_addresses, i), (const void **)&cond[i])) return NULL;
        cond_tables = cond;
    }
    int done;
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_INT8_PATH
    if (level->int8)
        done = run_positions_int8(level, canvas, neighbours, upper, cond_tables, NULL, count, (double *)out, scale, NULL);
    else
#endif
        done = run_positions(level, canvas, neighbours, upper, cond_tables, count, (double *)out, scale);
    Py_END_ALLOW_THREADS
    if (!done) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* heads(level, given, count, out[, scale]): out (count, K) float64 frequencies (times scale) of a head network (a
 * level made with taps 0: gated blocks and a head, no masked convolution) for `given` (count, C) float32
 * activations. The int8 path only. Runs without the GIL. */
static PyObject *heads(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *given_address, *out_address;
    Py_ssize_t count;
    double scale = 1.0;
    if (!PyArg_ParseTuple(args, "OOnO|d", &capsule, &given_address, &count, &out_address, &scale)) return NULL;
    const Level *level = PyCapsule_GetPointer(capsule, "hvqcodec.level");
    if (!level) return NULL;
    if (level->taps || !level->int8) {
        PyErr_SetString(PyExc_ValueError, "heads() runs head networks (taps 0) on the int8 path only");
        return NULL;
    }
    const void *given, *out;
    if (!address(given_address, &given) || !address(out_address, &out)) return NULL;
    int done = 0;
#ifdef HAVE_INT8_PATH
    Py_BEGIN_ALLOW_THREADS
    done = run_positions_int8(level, NULL, NULL, NULL, NULL, (const float *)given, count, (double *)out, scale, NULL);
    Py_END_ALLOW_THREADS
#endif
    if (!done) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* The k smallest of each row of a float32 (rows, columns) table, ascending, the lower column first among equal
 * values (the encoder's nearest-codeword candidates: torch.topk(largest=False) takes about ten times as long on
 * a 24,576 x 512 table). Most values fail the first comparison with the row's k-th smallest so far. */
/* Inserts value v of column c into the ascending best[0..count-1] (count grows by one if below k), after equals. */
INLINE void insert_sorted(float *restrict best, int64_t *restrict where, int slot, float v, int64_t c) {
    while (slot > 0 && v < best[slot - 1]) {
        best[slot] = best[slot - 1];
        where[slot] = where[slot - 1];
        slot--;
    }
    best[slot] = v;
    where[slot] = c;
}

HOT static void smallest_rows(const float *restrict table, Py_ssize_t rows, Py_ssize_t columns, int k,
                              float *restrict values, int64_t *restrict indices) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        const float *restrict row = table + r * columns;
        float *restrict best = values + r * k;
        int64_t *restrict where = indices + r * k;
        for (int c = 0; c < k; c++) insert_sorted(best, where, c, row[c], c);
        float worst = best[k - 1];
        Py_ssize_t c = k;
#ifdef HAVE_VEC8
        /* Eight columns at a time while none of them is below the k-th smallest so far (most of a row). */
        typedef int veci8 __attribute__((vector_size(32)));
        typedef long long vecl4 __attribute__((vector_size(32)));
        for (; c + 8 <= columns; c += 8) {
            const vec8 threshold = {worst, worst, worst, worst, worst, worst, worst, worst};
            const veci8 below = LOAD8(row + c) < threshold;
            const vecl4 any = (vecl4)below;
            if (!(any[0] | any[1] | any[2] | any[3])) continue;
            for (int j = 0; j < 8; j++)
                if (row[c + j] < worst) {
                    insert_sorted(best, where, k - 1, row[c + j], c + j);
                    worst = best[k - 1];
                }
        }
#endif
        for (; c < columns; c++) {
            const float v = row[c];
            if (v < worst) { /* rare after the first few columns */
                insert_sorted(best, where, k - 1, v, c);
                worst = best[k - 1];
            }
        }
    }
}

/* smallest(table, rows, columns, k, values, indices): addresses of float32 (rows, columns), float32 (rows, k)
 * and int64 (rows, k); k <= columns. Runs without the GIL. */
static PyObject *smallest(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *table_address, *values_address, *indices_address;
    Py_ssize_t rows, columns;
    int k;
    if (!PyArg_ParseTuple(args, "OnniOO", &table_address, &rows, &columns, &k, &values_address, &indices_address))
        return NULL;
    if (k < 1 || k > columns || rows < 0) {
        PyErr_SetString(PyExc_ValueError, "smallest: need 1 <= k <= columns");
        return NULL;
    }
    const void *table, *values, *indices;
    if (!address(table_address, &table) || !address(values_address, &values) ||
        !address(indices_address, &indices))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    smallest_rows(table, rows, columns, k, (float *)values, (int64_t *)indices);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* The encoder's code search (hvqcodec 0.24): each row's `k` codes of least cost ((x . -2c) + |x|^2) + |c|^2
 * (+ lambdas * bits(c) where bits is given), the order of npencoder.distances' float32 sums, the products summed in
 * registers, four rows and 32 codes at a time (the codebook, 64 KB for 512 codes of 32 values, stays in cache),
 * each row's costs then ranked by smallest_rows in cache. numpy wrote and reread a (1024, K) float32 table per
 * chunk several times, and its matmul is slow for this shape: a 1024 x 1024 tile's bottom candidates took 0.16 s.
 * The products' order differs from a BLAS's, as BLASes differ from each other: costs within float32 rounding, the
 * same codes but for exact near-ties. */
typedef float vec16 __attribute__((vector_size(64)));
typedef float vec16_unaligned __attribute__((vector_size(64), aligned(4)));
#define NEAREST_ROWS 4

#define SELECT_MAX_CODES 2048

/* A row's k smallest values, ascending, the lower column first among equals, found as npencoder.smallest finds
 * them: a threshold no higher than the k-th smallest (the k-th smallest of the minima of K / 8 groups of
 * columns, column j in group j mod K / 8: k groups hold a value at or below it), then only the values at or
 * below it (about k + 1 of them, in the groups whose minimum is) ranked by (value, column). smallest_rows' running insertion mispredicted a branch for most of
 * its comparisons here. 0 (nothing written) for shapes it does not take or a row with NaNs. */
INLINE int select_smallest(const float *row, int K, int k, float *best, int64_t *where) {
    const int groups = K / 8;
    if (K % 8 || groups < k || K > SELECT_MAX_CODES) return 0;
    float minima[SELECT_MAX_CODES / 8], ranked[SELECT_MAX_CODES];
    int64_t columns[SELECT_MAX_CODES];
    for (int g = 0; g < groups; g++) minima[g] = row[g];
    for (int j = 1; j < 8; j++)
        for (int g = 0; g < groups; g++) minima[g] = row[j * groups + g] < minima[g] ? row[j * groups + g] : minima[g];
    float kth[64] = {0};
    if (k > 64) return 0;
    for (int g = 0; g < k; g++) { /* the k smallest minima, ascending */
        int slot = g;
        while (slot > 0 && minima[g] < kth[slot - 1]) { kth[slot] = kth[slot - 1]; slot--; }
        kth[slot] = minima[g];
    }
    for (int g = k; g < groups; g++)
        if (minima[g] < kth[k - 1]) {
            int slot = k - 1;
            while (slot > 0 && minima[g] < kth[slot - 1]) { kth[slot] = kth[slot - 1]; slot--; }
            kth[slot] = minima[g];
        }
    const float threshold = kth[k - 1];
    int count = 0;
    for (int g = 0; g < groups; g++) { /* only groups whose minimum is at or below it hold such values */
        if (!(minima[g] <= threshold)) continue;
        for (int j = 0; j < 8; j++) {
            const int c = j * groups + g;
            const float v = row[c];
            if (!(v <= threshold)) continue;
            /* insertion by (value, column) */
            int slot = count++;
            while (slot > 0 && (v < ranked[slot - 1] || (v == ranked[slot - 1] && c < columns[slot - 1]))) {
                ranked[slot] = ranked[slot - 1];
                columns[slot] = columns[slot - 1];
                slot--;
            }
            ranked[slot] = v;
            columns[slot] = c;
        }
    }
    if (count < k) return 0; /* NaNs */
    for (int j = 0; j < k; j++) {
        best[j] = ranked[j];
        where[j] = columns[j];
    }
    return 1;
}

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && !defined(HVQ_NO_CLONES)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void nearest_rows(const float *rows, Py_ssize_t count, int D, const float *minus2t, const float *norms,
                         const float *bits, float lambdas, int K, int k, float *table, float *costs,
                         int64_t *indices) {
    for (Py_ssize_t r0 = 0; r0 < count; r0 += NEAREST_ROWS) {
        const int n = count - r0 < NEAREST_ROWS ? (int)(count - r0) : NEAREST_ROWS;
        const float *x[NEAREST_ROWS];
        float squares[NEAREST_ROWS];
        for (int r = 0; r < NEAREST_ROWS; r++) { /* past the last row: the first again, its results unused */
            x[r] = rows + (size_t)(r0 + (r < n ? r : 0)) * D;
            float sum = 0.0f;
            for (int d = 0; d < D; d++) sum += x[r][d] * x[r][d];
            squares[r] = sum;
        }
        int j0 = 0;
        for (; j0 + 32 <= K; j0 += 32) {
            vec16 a[NEAREST_ROWS][2] = {{{0}}};
            for (int d = 0; d < D; d++) {
                const vec16 w0 = *(const vec16_unaligned *)(minus2t + (size_t)d * K + j0);
                const vec16 w1 = *(const vec16_unaligned *)(minus2t + (size_t)d * K + j0 + 16);
                for (int r = 0; r < NEAREST_ROWS; r++) {
                    a[r][0] += x[r][d] * w0;
                    a[r][1] += x[r][d] * w1;
                }
            }
            for (int r = 0; r < n; r++)
                for (int h = 0; h < 2; h++) {
                    vec16 t = a[r][h] + squares[r];
                    t += *(const vec16_unaligned *)(norms + j0 + 16 * h);
                    if (bits) {
                        const vec16 b = *(const vec16_unaligned *)(bits + j0 + 16 * h);
                        const vec16 weighted = lambdas * b;
                        t += weighted;
                    }
                    *(vec16_unaligned *)(table + (size_t)r * K + j0 + 16 * h) = t;
                }
        }
        for (; j0 < K; j0++) /* codebooks of other sizes: one code at a time */
            for (int r = 0; r < n; r++) {
                float dot = 0.0f;
                for (int d = 0; d < D; d++) dot += x[r][d] * minus2t[(size_t)d * K + j0];
                float t = dot + squares[r];
                t += norms[j0];
                if (bits) t += lambdas * bits[j0];
                table[(size_t)r * K + j0] = t;
            }
        for (int r = 0; r < n; r++)
            if (!select_smallest(table + (size_t)r * K, K, k, costs + (size_t)(r0 + r) * k,
                                 indices + (size_t)(r0 + r) * k))
                smallest_rows(table + (size_t)r * K, 1, K, k, costs + (size_t)(r0 + r) * k,
                              indices + (size_t)(r0 + r) * k);
    }
}

/* nearest_codes(rows, count, D, minus2t, norms, bits, lambdas, K, k, costs, indices): addresses of float32 (count,
 * D) rows, (D, K) -2 c^T, (K) |c|^2, (K) bits or None; out float32 (count, k) costs and int64 (count, k) codes,
 * least first, the lower code first among equal costs. Runs without the GIL. */
static PyObject *nearest_codes(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *rows_address, *minus2t_address, *norms_address, *bits_address, *costs_address, *indices_address;
    Py_ssize_t count;
    int D, K, k;
    float lambdas;
    if (!PyArg_ParseTuple(args, "OniOOOfiiOO", &rows_address, &count, &D, &minus2t_address, &norms_address,
                          &bits_address, &lambdas, &K, &k, &costs_address, &indices_address))
        return NULL;
    if (k < 1 || k > K || count < 0 || D < 1) {
        PyErr_SetString(PyExc_ValueError, "nearest_codes: need 1 <= k <= K and D >= 1");
        return NULL;
    }
    const void *rows, *minus2t, *norms, *bits = NULL, *costs, *indices;
    if (!address(rows_address, &rows) || !address(minus2t_address, &minus2t) || !address(norms_address, &norms) ||
        (bits_address != Py_None && !address(bits_address, &bits)) || !address(costs_address, &costs) ||
        !address(indices_address, &indices))
        return NULL;
    float *table = malloc(sizeof(float) * NEAREST_ROWS * (size_t)K);
    if (!table) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    nearest_rows(rows, count, D, minus2t, norms, bits, lambdas, K, k, table, (float *)costs, (int64_t *)indices);
    Py_END_ALLOW_THREADS
    free(table);
    Py_RETURN_NONE;
}

/* convs(channels, blocks, gate_half, tanh_table, sigmoid_table, layers) -> capsule: the 3x3 gated blocks of a
 * conditioning stack (layers: block0.in with its weight in tap-major order (9C, 2C), block0.out (C, C), ...), on
 * the int8 path only (ValueError where the CPU or the shapes do not allow it: the torch version runs). */
static PyObject *make_convs(PyObject *Py_UNUSED(self), PyObject *args) {
    Level level;
    PyObject *tanh_address, *sigmoid_address, *layers;
    memset(&level, 0, sizeof(level));
    if (!PyArg_ParseTuple(args, "iiiOOO!", &level.channels, &level.causal_blocks, &level.gate_half, &tanh_address,
                          &sigmoid_address, &PyTuple_Type, &layers))
        return NULL;
    if (!address(tanh_address, (const void **)&level.tanh_table) ||
        !address(sigmoid_address, (const void **)&level.sigmoid_table))
        return NULL;
    const Py_ssize_t count = PyTuple_GET_SIZE(layers);
    const int C = level.channels;
    if (count != 2 * level.causal_blocks || count > MAX_LAYERS || C <= 0 || C % 16 || 9 * C / 4 > MAX_QUADS) {
        PyErr_SetString(PyExc_ValueError, "convs: unsupported stack shape");
        return NULL;
    }
    level.taps = 9;
    for (Py_ssize_t i = 0; i < count; i++) {
        Layer *layer = &level.layers[i];
        if (!parse_layer(PyTuple_GET_ITEM(layers, i), layer)) return NULL;
        if (layer->inputs != (i % 2 ? C : 9 * C) || layer->outputs != (i % 2 ? C : 2 * C)) {
            PyErr_SetString(PyExc_ValueError, "convs: layer shape does not match the stack");
            return NULL;
        }
    }
    return int8_only_capsule(&level, "hvqcodec.convs", count, "convs: the int8 path is not available for this stack");
}

/* out[k] = x[k] rounded to 8 bits with scale (half to even, as IntNetwork.layer_input) + 128: in a clone for
 * x86-64-v3 the rounding is one instruction, not a libm call per value. */
HOT static void round_to_bytes(const float *restrict x, uint8_t *restrict out, size_t n, float scale) {
    for (size_t k = 0; k < n; k++) out[k] = (uint8_t)((int)clampf(nearbyintf(x[k] * scale), NARROW_MAX) + 128);
}

/* conv_grid(stack, block, x, h, w, grid): grid (h + 2, w + 2, C) uint8 = x (h * w, C) float32 rounded to the block's
 * input 8 bits (half to even, as IntNetwork.layer_input) + 128, with 128 (zero) around the edge. */
static PyObject *conv_grid(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *x_address, *grid_address;
    int block, h, w;
    if (!PyArg_ParseTuple(args, "OiOiiO", &capsule, &block, &x_address, &h, &w, &grid_address)) return NULL;
    const Level *level = PyCapsule_GetPointer(capsule, "hvqcodec.convs");
    if (!level) return NULL;
    if (level->taps != 9 || block < 0 || block >= level->causal_blocks || h < 1 || w < 1) {
        PyErr_SetString(PyExc_ValueError, "conv_grid: not a conv stack, or no such block");
        return NULL;
    }
    const void *x_void, *grid_void;
    if (!address(x_address, &x_void) || !address(grid_address, &grid_void)) return NULL;
    const float *x = x_void;
    uint8_t *grid = (uint8_t *)grid_void;
    const int C = level->channels;
    const float scale = level->layers[2 * block].input_scale;
    const size_t row_bytes = (size_t)(w + 2) * C;
    Py_BEGIN_ALLOW_THREADS
    memset(grid, 128, row_bytes);
    memset(grid + (size_t)(h + 1) * row_bytes, 128, row_bytes);
    for (int r = 0; r < h; r++) {
        uint8_t *line = grid + (size_t)(r + 1) * row_bytes;
        memset(line, 128, (size_t)C);
        memset(line + (size_t)(w + 1) * C, 128, (size_t)C);
        round_to_bytes(x + (size_t)r * w * C, line + C, (size_t)w * C, scale);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* conv_block(stack, block, grid, x, h, w, start, stop): positions start..stop-1 of x (h * w, C) float32 through
 * the block, in place, reading their neighbourhoods from grid (conv_grid). Runs without the GIL. */
static PyObject *conv_block(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *grid_address, *x_address;
    int block, h, w;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "OiOOiinn", &capsule, &block, &grid_address, &x_address, &h, &w, &start, &stop))
        return NULL;
    const Level *level = PyCapsule_GetPointer(capsule, "hvqcodec.convs");
    if (!level) return NULL;
    if (level->taps != 9 || !level->int8 || block < 0 || block >= level->causal_blocks || start < 0 ||
        stop > (Py_ssize_t)h * w || start > stop) {
        PyErr_SetString(PyExc_ValueError, "conv_block: not an int8 conv stack, no such block, or out of range");
        return NULL;
    }
    const void *grid, *x;
    if (!address(grid_address, &grid) || !address(x_address, &x)) return NULL;
    int done = 0;
#ifdef HAVE_INT8_PATH
    Py_BEGIN_ALLOW_THREADS
    done = conv_positions_int8(level, block, grid, (float *)x, w, start, stop);
    Py_END_ALLOW_THREADS
#endif
    if (!done) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* linears(layers) -> capsule: layers applied to each row on their own (layers: (inputs, outputs, weight,
 * bias_and_half, inv_scale, input_scale) each, as for level()), on the int8 path only (ValueError elsewhere: the
 * torch version runs). */
static PyObject *make_linears(PyObject *Py_UNUSED(self), PyObject *args) {
    Level level;
    PyObject *layers;
    memset(&level, 0, sizeof(level));
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &layers)) return NULL;
    const Py_ssize_t count = PyTuple_GET_SIZE(layers);
    if (count < 1 || count > MAX_LAYERS) {
        PyErr_SetString(PyExc_ValueError, "linears: 1 to 16 layers");
        return NULL;
    }
    level.causal_blocks = (int)count; /* here: how many layers */
    for (Py_ssize_t i = 0; i < count; i++)
        if (!parse_layer(PyTuple_GET_ITEM(layers, i), &level.layers[i])) return NULL;
    return int8_only_capsule(&level, "hvqcodec.linears", count,
                             "linears: the int8 path is not available for these layers");
}

/* linear_rows(linears, layer, x, start, stop, out): rows start..stop-1 of out (rows, O) int16 = layer `layer` of
 * x's rows (rows, I) float32 on the activation grid (linear_rows_int8). Runs without the GIL. */
static PyObject *linear_rows(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *x_address, *out_address;
    int layer;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "OiOnnO", &capsule, &layer, &x_address, &start, &stop, &out_address)) return NULL;
    const Level *level = PyCapsule_GetPointer(capsule, "hvqcodec.linears");
    if (!level) return NULL;
    if (layer < 0 || layer >= level->causal_blocks || start < 0 || start > stop) {
        PyErr_SetString(PyExc_ValueError, "linear_rows: no such layer, or rows out of range");
        return NULL;
    }
    const void *x, *out;
    if (!address(x_address, &x) || !address(out_address, &out)) return NULL;
    int done = 0;
#ifdef HAVE_INT8_PATH
    Py_BEGIN_ALLOW_THREADS
    done = linear_rows_int8(level, layer, x, start, stop, (int16_t *)out);
    Py_END_ALLOW_THREADS
#endif
    if (!done) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_int8_supported(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    return PyBool_FromLong(int8_supported());
}

static PyObject *uses_int8(PyObject *Py_UNUSED(self), PyObject *capsule) {
    const Level *level = PyCapsule_GetPointer(capsule, "hvqcodec.level");
    if (!level) return NULL;
    return PyBool_FromLong(level->int8);
}

static PyObject *uses_masked_tiles(PyObject *Py_UNUSED(self), PyObject *capsule) {
    const Level *level = PyCapsule_GetPointer(capsule, "hvqcodec.level");
    if (!level) return NULL;
    return PyBool_FromLong(level->masked_amx);
}

static PyObject *set_prefetch(PyObject *Py_UNUSED(self), PyObject *flag) {
    const int previous = prefetching, value = PyObject_IsTrue(flag);
    if (value < 0) return NULL;
    prefetching = value;
    return PyBool_FromLong(previous);
}

/* _amx(flag) -> the previous setting: whether kernels take AMX tiles where the CPU has them (off only to compare
 * the paths: tests, benchmarks/step_kernel.py). amx_int8() says whether they do. */
static PyObject *set_amx(PyObject *Py_UNUSED(self), PyObject *flag) {
    const int value = PyObject_IsTrue(flag);
    if (value < 0) return NULL;
#ifdef HAVE_AMX_INT8
    const int previous = amx_int8_enabled;
    amx_int8_enabled = value;
    return PyBool_FromLong(previous);
#else
    Py_RETURN_FALSE;
#endif
}

static PyObject *py_amx_int8(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
#ifdef HAVE_AMX_INT8
    return PyBool_FromLong(amx_int8_ready && amx_int8_enabled);
#else
    Py_RETURN_FALSE;
#endif
}

/* --- Range coding in C (hvqcodec 0.24) -------------------------------------------------------------------------
 * The streams constriction writes and reads (its queue range coder with Categorical(perfect=False) models: the same
 * words, `_rangecoder.h`), coded here from the exact frequency rows: a level's wavefronts decode and encode in one C
 * call (the step function's rows go straight to the coder, never into a (positions, K) table), and a refinement
 * stage's rows are coded without constriction's per-call set-up. tests/test_rangecoder.py compares both coders word
 * for word and symbol for symbol. */

#define EXHAUSTED_BITS_MAX 96.0 /* as rangecoding.EXHAUSTED_BITS_MAX */

typedef struct {
    rc_decoder coder;
    uint32_t *words;       /* the stream's words (a copy) */
    double bits_after_end; /* information decoded once every word was read */
} StreamDecoder;

typedef struct {
    rc_encoder coder;
} StreamEncoder;

static void free_stream_decoder(PyObject *capsule) {
    StreamDecoder *d = PyCapsule_GetPointer(capsule, "hvqcodec.streamdecoder");
    free(d->words);
    free(d);
}

static void free_stream_encoder(PyObject *capsule) {
    StreamEncoder *e = PyCapsule_GetPointer(capsule, "hvqcodec.streamencoder");
    rc_encoder_free(&e->coder);
    free(e);
}

/* The left end of symbol s's interval, for cum = the frequencies of the codes before it (rc_quantise's). */
INLINE uint32_t interval_start(uint32_t cum, uint32_t s, uint32_t K) {
    return (uint32_t)(((uint64_t)cum * ((uint64_t)RC_ONE - K)) >> RC_ROW_BITS) + s;
}

/* Decodes one symbol from an exact frequency row (K values summing to 2^20). 0 where the stream is corrupt: a
 * quantile no interval holds (garbage), or more than EXHAUSTED_BITS_MAX bits decoded past the stream's end (a
 * finished stream is padded with zeros, and garbage would otherwise decode at full cost). */
static int decode_symbol(StreamDecoder *d, const double *row, uint32_t K, int64_t *symbol) {
    const int exhausted = rc_decoder_maybe_exhausted(&d->coder);
    const uint32_t q = rc_decoder_quantile(&d->coder);
    if (q >= RC_ONE) return 0;
    uint32_t cum = 0, s = 0;
    for (; s + 16 <= K; s += 16) { /* whole blocks of 16 codes below the quantile first */
        uint32_t block = 0;
        for (int j = 0; j < 16; j++) block += (uint32_t)row[s + j];
        if (q < interval_start(cum + block, s + 16, K)) break;
        cum += block;
    }
    for (; s + 1 < K; s++) {
        const uint32_t next = cum + (uint32_t)row[s];
        if (q < interval_start(next, s + 1, K)) break;
        cum = next;
    }
    uint32_t left, prob;
    rc_quantise(cum, (uint32_t)row[s], s, K, &left, &prob);
    rc_decoder_consume(&d->coder, left, prob);
    if (exhausted) {
        d->bits_after_end += -log2(row[s] / FREQ_TOTAL);
        if (d->bits_after_end > EXHAUSTED_BITS_MAX) return 0;
    }
    *symbol = s;
    return 1;
}

/* The sum of an exact frequency row's first `count` entries (what the range coder needs below a code): integers
 * summing to at most 2^20, so float64 adds them exactly in any order, here in four partial sums. */
INLINE uint32_t frequencies_below(const double *row, int64_t count) {
    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t k = 0;
    for (; k + 4 <= count; k += 4)
        for (int j = 0; j < 4; j++) sums[j] += row[k + j];
    for (; k < count; k++) sums[0] += row[k];
    return (uint32_t)((sums[0] + sums[1]) + (sums[2] + sums[3]));
}

/* Appends symbol s of an exact frequency row to an encoder; its information (bits) is added to *bits. */
INLINE int encode_symbol(StreamEncoder *e, const double *row, uint32_t K, int64_t s, double *bits) {
    const uint32_t cum = frequencies_below(row, s);
    const uint32_t freq = (uint32_t)row[s];
    uint32_t left, prob;
    rc_quantise(cum, freq, (uint32_t)s, K, &left, &prob);
    *bits += -log2((double)freq / FREQ_TOTAL);
    return rc_encode(&e->coder, left, prob);
}

#ifdef HAVE_INT8_PATH
typedef struct {
    Sink sink;
    int64_t *canvas;
    const int64_t *centres, *tiles; /* from the run's first position */
    StreamDecoder **streams;
    uint32_t K;
} DecodeSink;

static int decode_emit(Sink *sink, Py_ssize_t p, const double *row) {
    DecodeSink *d = (DecodeSink *)sink;
    int64_t symbol;
    if (!decode_symbol(d->streams[d->tiles[p]], row, d->K, &symbol)) return 0;
    d->canvas[d->centres[p]] = symbol; /* no position of this wavefront reads it */
    return 1;
}

typedef struct {
    Sink sink;
    const int64_t *symbols;
    StreamEncoder *stream;
    uint32_t K;
    double bits;
    int out_of_memory;
} EncodeSink;

static int encode_emit(Sink *sink, Py_ssize_t p, const double *row) {
    EncodeSink *e = (EncodeSink *)sink;
    if (e->symbols[p] < 0 || e->symbols[p] >= e->K) return 0;
    if (!encode_symbol(e->stream, row, e->K, e->symbols[p], &e->bits)) {
        e->out_of_memory = 1;
        return 0;
    }
    return 1;
}

typedef struct {
    Sink sink;
    const int64_t *candidates; /* (count, per_position) */
    double *out;               /* (count, per_position) probabilities */
    uint32_t *cums;            /* (count, per_position) frequencies below each candidate, or NULL */
    int per_position;
    uint32_t K;
} CandidateSink;

#define CUM_BLOCK 16
#define CUM_BLOCKS_MAX 256 /* codebooks of up to 4096 codes take the blocks; larger ones sum code by code */

static int candidate_emit(Sink *sink, Py_ssize_t p, const double *row) {
    CandidateSink *c = (CandidateSink *)sink;
    const uint32_t K = c->K;
    const int blocked = c->cums && K <= CUM_BLOCK * CUM_BLOCKS_MAX;
    double below[CUM_BLOCKS_MAX + 1]; /* the frequencies below each block of CUM_BLOCK codes (exact integers) */
    if (blocked) {
        below[0] = 0.0;
        const uint32_t blocks = K / CUM_BLOCK;
        for (uint32_t b = 0; b < blocks; b++) {
            double sum = 0.0;
            for (int j = 0; j < CUM_BLOCK; j++) sum += row[b * CUM_BLOCK + j];
            below[b + 1] = below[b] + sum;
        }
    }
    for (int m = 0; m < c->per_position; m++) {
        const int64_t code = c->candidates[p * c->per_position + m];
        if (code < 0 || code >= K) return 0;
        c->out[p * c->per_position + m] = row[code] * (1.0 / FREQ_TOTAL);
        if (c->cums) { /* the blocks below the candidate's, then its block's codes before it */
            const int64_t first = blocked ? code - code % CUM_BLOCK : 0;
            c->cums[p * c->per_position + m] = (blocked ? (uint32_t)below[code / CUM_BLOCK] : 0u) +
                                               frequencies_below(row + first, code - first);
        }
    }
    return 1;
}

typedef struct {
    Sink sink;
    const int64_t *symbols;
    uint32_t *cums, *freqs;
    uint32_t K;
} SymbolSink;

static int symbol_emit(Sink *sink, Py_ssize_t p, const double *row) {
    SymbolSink *c = (SymbolSink *)sink;
    const int64_t s = c->symbols[p];
    if (s < 0 || s >= c->K) return 0;
    c->cums[p] = frequencies_below(row, s);
    c->freqs[p] = (uint32_t)row[s];
    return 1;
}
#endif

/* The step function's arguments shared by the sinks' entry points: a level capsule on the int8 path and the
 * addresses of its state's canvas, neighbours, upper rows and conditioning tables. */
typedef struct {
    const Level *level;
    const void *canvas, *neighbours, *upper;
    const int16_t *cond[MAX_LAYERS];
    const int16_t *const *cond_tables;
} StepArgs;

static int step_args(PyObject *capsule, PyObject *canvas, PyObject *neighbours, PyObject *upper, PyObject *cond,
                     StepArgs *a) {
    a->level = PyCapsule_GetPointer(capsule, "hvqcodec.level");
    if (!a->level) return 0;
    if (!a->level->taps || !a->level->int8) {
        PyErr_SetString(PyExc_ValueError, "the range coder's loops run level priors on the int8 path only");
        return 0;
    }
    if (!address(canvas, &a->canvas) || !address(neighbours, &a->neighbours) || !address(upper, &a->upper))
        return 0;
    a->cond_tables = NULL;
    if (cond != Py_None) {
        if (!PyTuple_Check(cond) || PyTuple_GET_SIZE(cond) != a->level->causal_blocks + 1) {
            PyErr_SetString(PyExc_ValueError, "one conditioning table per gated unit expected");
            return 0;
        }
        for (int i = 0; i <= a->level->causal_blocks; i++)
            if (!address(PyTuple_GET_ITEM(cond, i), (const void **)&a->cond[i])) return 0;
        a->cond_tables = a->cond;
    }
    return 1;
}

static const char *CORRUPT = "stream ends before its codes do (truncated or corrupt)";

#ifdef HAVE_INT8_PATH
/* Runs the step function over `count` positions into a sink, without the GIL: None, or NULL with ValueError
 * (`refusal`) where the sink stopped it, MemoryError where an allocation failed. */
static PyObject *sink_call(const StepArgs *a, Py_ssize_t count, Sink *sink, const char *refusal) {
    int done;
    Py_BEGIN_ALLOW_THREADS
    done = run_positions_int8(a->level, a->canvas, a->neighbours, a->upper, a->cond_tables, NULL, count, NULL, 1.0,
                              sink);
    Py_END_ALLOW_THREADS
    if (done == SINK_STOPPED) {
        PyErr_SetString(PyExc_ValueError, refusal);
        return NULL;
    }
    if (!done) return PyErr_NoMemory();
    Py_RETURN_NONE;
}
#endif

/* stream_decoder(data) -> capsule: a range decoder over a stream's bytes (little-endian 32-bit words). */
static PyObject *stream_decoder(PyObject *Py_UNUSED(self), PyObject *args) {
    const unsigned char *data;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "y#", &data, &length)) return NULL;
    if (length % 4) {
        PyErr_SetString(PyExc_ValueError, "range-coded stream length is not a multiple of 4");
        return NULL;
    }
    StreamDecoder *d = calloc(1, sizeof *d);
    const size_t count = (size_t)length / 4;
    if (!d || !(d->words = malloc(sizeof(uint32_t) * (count ? count : 1)))) {
        free(d);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < count; i++) {
        const unsigned char *b = data + 4 * i;
        d->words[i] = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    }
    rc_decoder_init(&d->coder, d->words, count);
    PyObject *capsule = PyCapsule_New(d, "hvqcodec.streamdecoder", free_stream_decoder);
    if (!capsule) {
        free(d->words);
        free(d);
    }
    return capsule;
}

/* stream_encoder() -> capsule: an empty range encoder. */
static PyObject *stream_encoder(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    StreamEncoder *e = malloc(sizeof *e);
    if (!e) return PyErr_NoMemory();
    rc_encoder_init(&e->coder);
    PyObject *capsule = PyCapsule_New(e, "hvqcodec.streamencoder", free_stream_encoder);
    if (!capsule) free(e);
    return capsule;
}

/* stream_bytes(encoder) -> bytes: the words so far, finished as constriction's get_compressed() finishes them
 * (little-endian; the encoder may go on). */
static PyObject *stream_bytes(PyObject *Py_UNUSED(self), PyObject *capsule) {
    StreamEncoder *e = PyCapsule_GetPointer(capsule, "hvqcodec.streamencoder");
    if (!e) return NULL;
    const uint32_t *words;
    const size_t count = rc_encoder_finish(&e->coder, &words);
    if (count == (size_t)-1) return PyErr_NoMemory();
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 * count));
    if (!result) return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    for (size_t i = 0; i < count; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char)(words[i] >> (8 * j));
    return result;
}

/* A buffer for one exact frequency row of K codes, for the coders of probability rows (`caller` names them in the
 * error): NULL with ValueError for a K out of range, MemoryError where it cannot be had. */
static double *frequency_row(Py_ssize_t K, const char *caller) {
    if (K < 1 || K > 65536) {
        PyErr_Format(PyExc_ValueError, "%s: 1 to 65536 codes a row", caller);
        return NULL;
    }
    double *row = malloc(sizeof(double) * (size_t)K);
    if (!row) PyErr_NoMemory();
    return row;
}

/* Probabilities (exact frequencies / 2^20) -> the frequencies. */
INLINE void as_frequencies(const double *probabilities, Py_ssize_t K, double *row) {
    for (Py_ssize_t k = 0; k < K; k++) row[k] = probabilities[k] * FREQ_TOTAL;
}

/* decode_rows(decoder, rows, count, K, out): out (count,) int64 symbols decoded with the probability rows (count,
 * K) float64 (exact frequencies / 2^20). ValueError for a corrupt or truncated stream. */
static PyObject *decode_rows(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *rows_address, *out_address;
    Py_ssize_t count, K;
    if (!PyArg_ParseTuple(args, "OOnnO", &capsule, &rows_address, &count, &K, &out_address)) return NULL;
    StreamDecoder *d = PyCapsule_GetPointer(capsule, "hvqcodec.streamdecoder");
    const void *rows, *out;
    if (!d || !address(rows_address, &rows) || !address(out_address, &out)) return NULL;
    double *row = frequency_row(K, "decode_rows");
    if (!row) return NULL;
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = 0; p < count && ok; p++) {
        as_frequencies((const double *)rows + (size_t)p * K, K, row);
        ok = decode_symbol(d, row, (uint32_t)K, (int64_t *)out + p);
    }
    Py_END_ALLOW_THREADS
    free(row);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, CORRUPT);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* encode_rows(encoder, symbols, rows, count, K) -> bits: appends symbols (count,) int64 with their probability
 * rows (count, K) float64 (exact frequencies / 2^20); returns their information. */
static PyObject *encode_rows(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *symbols_address, *rows_address;
    Py_ssize_t count, K;
    if (!PyArg_ParseTuple(args, "OOOnn", &capsule, &symbols_address, &rows_address, &count, &K)) return NULL;
    StreamEncoder *e = PyCapsule_GetPointer(capsule, "hvqcodec.streamencoder");
    const void *symbols, *rows;
    if (!e || !address(symbols_address, &symbols) || !address(rows_address, &rows)) return NULL;
    double *row = frequency_row(K, "encode_rows"), bits = 0.0;
    if (!row) return NULL;
    for (Py_ssize_t p = 0; p < count; p++)
        if (((const int64_t *)symbols)[p] < 0 || ((const int64_t *)symbols)[p] >= K) {
            free(row);
            PyErr_SetString(PyExc_ValueError, "encode_rows: a symbol outside its row");
            return NULL;
        }
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = 0; p < count && ok; p++) {
        as_frequencies((const double *)rows + (size_t)p * K, K, row);
        ok = encode_symbol(e, row, (uint32_t)K, ((const int64_t *)symbols)[p], &bits);
    }
    Py_END_ALLOW_THREADS
    free(row);
    if (!ok) return PyErr_NoMemory();
    return PyFloat_FromDouble(bits);
}

#if defined(HAVE_INT8_PATH) && defined(__linux__)
#define HAVE_FRONT_HELPER 1
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

/* A second thread for decode_level on one stream (a single tile's level, where the other core is free): for each
 * wavefront large enough, it computes the rows of the front's later positions into a table while this thread
 * computes and decodes the earlier ones, then decodes the helper's rows in order. A front's positions read only
 * earlier fronts' codes, all painted before the front is posted, so the split changes no row and no code. The
 * hand-overs spin (a front takes tens of microseconds; a sleeping thread's wake-up is of that order), then yield
 * the core, so that a third thread (the decoder's context path) still gets one. */
typedef struct {
    const Level *level;
    const int64_t *canvas, *neighbours, *upper;
    const int16_t *const *cond;
    int64_t first, count; /* the helper's positions of the posted front */
    double *rows;         /* (count, K) exact frequencies */
    _Atomic long posted, finished;
    _Atomic int quit;
    int failed;
    pthread_t thread;
} FrontHelper;

static void wait_for(_Atomic long *serial, long target, _Atomic int *quit) {
    for (long spins = 0; atomic_load_explicit(serial, memory_order_acquire) < target; spins++) {
        if (quit && atomic_load_explicit(quit, memory_order_acquire)) return;
        if (spins < 2000)
            _mm_pause();
        else
            sched_yield();
    }
}

static void *front_helper_main(void *argument) {
    FrontHelper *h = argument;
    for (long serial = 1;; serial++) {
        wait_for(&h->posted, serial, &h->quit);
        if (atomic_load_explicit(&h->posted, memory_order_acquire) < serial) return NULL; /* quit */
        const int taps = h->level->taps;
        if (run_positions_int8(h->level, h->canvas, h->neighbours + (size_t)h->first * taps, h->upper + h->first,
                               h->cond, NULL, h->count, h->rows, 1.0, NULL) != 1)
            h->failed = 1;
        atomic_store_explicit(&h->finished, serial, memory_order_release);
    }
}
#endif

/* Positions a front needs before decode_level shares it with the helper, and the share this thread keeps (it
 * also decodes every position). */
#define HELPER_MIN_POSITIONS 32
#define HELPER_MAIN_SHARE 0.45

#ifdef HAVE_INT8_PATH
/* decode_level(level, canvas, neighbours, upper, cond, centres, tiles, fronts, front_count, decoders[, threads]):
 * decodes every wavefront of a level's state (fronts: (front_count, 2) int64 [start, stop)), each position from
 * its tile's decoder (tiles: int64 per position, indexing the tuple of decoder capsules), painting each code onto
 * the canvas at its centre; the step function's rows go straight to the decoder; threads 2: with a FrontHelper.
 * ValueError for a corrupt stream. Runs without the GIL. */
static PyObject *decode_level(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *canvas, *neighbours, *upper, *cond, *centres_address, *tiles_address, *fronts_address, *decoders;
    Py_ssize_t front_count;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OOOOOOOOnO!|i", &capsule, &canvas, &neighbours, &upper, &cond, &centres_address,
                          &tiles_address, &fronts_address, &front_count, &PyTuple_Type, &decoders, &threads))
        return NULL;
    StepArgs a;
    const void *centres, *tiles, *fronts;
    if (!step_args(capsule, canvas, neighbours, upper, cond, &a) || !address(centres_address, &centres) ||
        !address(tiles_address, &tiles) || !address(fronts_address, &fronts))
        return NULL;
    const Py_ssize_t streams = PyTuple_GET_SIZE(decoders);
    StreamDecoder **coders = malloc(sizeof(StreamDecoder *) * (size_t)(streams ? streams : 1));
    if (!coders) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < streams; i++)
        if (!(coders[i] = PyCapsule_GetPointer(PyTuple_GET_ITEM(decoders, i), "hvqcodec.streamdecoder"))) {
            free(coders);
            return NULL;
        }
    const int64_t *bounds = fronts;
    const int taps = a.level->taps;
    const int K = a.level->codebook_size;
    DecodeSink sink = {{decode_emit}, (int64_t *)a.canvas, NULL, NULL, coders, (uint32_t)K};
    int done = 1;
#ifdef HAVE_FRONT_HELPER
    FrontHelper helper = {a.level, a.canvas, a.neighbours, a.upper, a.cond_tables, 0, 0, NULL, 0, 0, 0, 0};
    int helping = 0;
    if (threads > 1) {
        int64_t widest = 0;
        for (Py_ssize_t f = 0; f < front_count; f++)
            widest = bounds[2 * f + 1] - bounds[2 * f] > widest ? bounds[2 * f + 1] - bounds[2 * f] : widest;
        if (widest >= HELPER_MIN_POSITIONS && (helper.rows = malloc(sizeof(double) * (size_t)widest * K)) &&
            pthread_create(&helper.thread, NULL, front_helper_main, &helper) == 0)
            helping = 1;
    }
    long serial = 0;
#endif
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t f = 0; f < front_count && done == 1; f++) {
        const int64_t start = bounds[2 * f], stop = bounds[2 * f + 1];
        int64_t split = stop;
        sink.centres = (const int64_t *)centres + start;
        sink.tiles = (const int64_t *)tiles + start;
#ifdef HAVE_FRONT_HELPER
        if (helping && stop - start >= HELPER_MIN_POSITIONS) {
            split = start + (int64_t)((double)(stop - start) * HELPER_MAIN_SHARE);
            helper.first = split;
            helper.count = stop - split;
            atomic_store_explicit(&helper.posted, ++serial, memory_order_release);
        }
#endif
        done = run_positions_int8(a.level, a.canvas, (const int64_t *)a.neighbours + (size_t)start * taps,
                                  (const int64_t *)a.upper + start, a.cond_tables, NULL, split - start, NULL, 1.0,
                                  &sink.sink);
#ifdef HAVE_FRONT_HELPER
        if (split < stop) { /* the helper's rows, decoded in order once it is done */
            wait_for(&helper.finished, serial, NULL);
            if (helper.failed) done = 0;
            for (int64_t p = split; p < stop && done == 1; p++)
                if (!decode_emit(&sink.sink, p - start, helper.rows + (size_t)(p - split) * K)) done = SINK_STOPPED;
        }
#endif
    }
#ifdef HAVE_FRONT_HELPER
    if (helping) {
        atomic_store_explicit(&helper.quit, 1, memory_order_release);
        pthread_join(helper.thread, NULL);
    }
    free(helper.rows);
#endif
    Py_END_ALLOW_THREADS
    free(coders);
    if (done == SINK_STOPPED) {
        PyErr_SetString(PyExc_ValueError, CORRUPT);
        return NULL;
    }
    if (!done) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* encode_level(level, canvas, neighbours, upper, cond, symbols, count, encoder) -> bits: appends a level's known
 * codes (symbols: int64 in decoding order, painted onto the canvas already) to an encoder, each with the
 * frequencies the decoder will compute for it; returns their information. Runs without the GIL. */
static PyObject *encode_level(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *canvas, *neighbours, *upper, *cond, *symbols_address, *encoder;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "OOOOOOnO", &capsule, &canvas, &neighbours, &upper, &cond, &symbols_address,
                          &count, &encoder))
        return NULL;
    StepArgs a;
    const void *symbols;
    if (!step_args(capsule, canvas, neighbours, upper, cond, &a) || !address(symbols_address, &symbols)) return NULL;
    StreamEncoder *stream = PyCapsule_GetPointer(encoder, "hvqcodec.streamencoder");
    if (!stream) return NULL;
    EncodeSink sink = {{encode_emit}, symbols, stream, (uint32_t)a.level->codebook_size, 0.0, 0};
    PyObject *done = sink_call(&a, count, &sink.sink, "encode_level: a code outside the codebook");
    if (!done) return sink.out_of_memory ? PyErr_NoMemory() : NULL;
    Py_DECREF(done);
    return PyFloat_FromDouble(sink.bits);
}

/* candidate_frequencies(level, canvas, neighbours, upper, cond, count, candidates, per_position, out[, cums]): out
 * (count, per_position) float64 = the probabilities (exact frequencies / 2^20) of each position's candidate codes
 * (candidates: (count, per_position) int64), without writing the (count, K) table; cums (uint32, the same shape):
 * the frequencies below each (what its range coding needs besides its own). Runs without the GIL. */
static PyObject *candidate_frequencies(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *canvas, *neighbours, *upper, *cond, *candidates_address, *out_address, *cums_address = Py_None;
    Py_ssize_t count;
    int per_position;
    if (!PyArg_ParseTuple(args, "OOOOOnOiO|O", &capsule, &canvas, &neighbours, &upper, &cond, &count,
                          &candidates_address, &per_position, &out_address, &cums_address))
        return NULL;
    StepArgs a;
    const void *candidates, *out, *cums = NULL;
    if (!step_args(capsule, canvas, neighbours, upper, cond, &a) || !address(candidates_address, &candidates) ||
        !address(out_address, &out) || (cums_address != Py_None && !address(cums_address, &cums)))
        return NULL;
    CandidateSink sink = {{candidate_emit}, candidates, (double *)out, (uint32_t *)cums, per_position,
                          (uint32_t)a.level->codebook_size};
    return sink_call(&a, count, &sink.sink, "candidate_frequencies: a code outside the codebook");
}

/* symbol_frequencies(level, canvas, neighbours, upper, cond, count, symbols, cums, freqs): for each position its
 * code's (symbols: int64) frequency and the frequencies below it (uint32 each), as encode_level would code them.
 * Runs without the GIL. */
static PyObject *symbol_frequencies(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *canvas, *neighbours, *upper, *cond, *symbols_address, *cums_address, *freqs_address;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "OOOOOnOOO", &capsule, &canvas, &neighbours, &upper, &cond, &count, &symbols_address,
                          &cums_address, &freqs_address))
        return NULL;
    StepArgs a;
    const void *symbols, *cums, *freqs;
    if (!step_args(capsule, canvas, neighbours, upper, cond, &a) || !address(symbols_address, &symbols) ||
        !address(cums_address, &cums) || !address(freqs_address, &freqs))
        return NULL;
    SymbolSink sink = {{symbol_emit}, symbols, (uint32_t *)cums, (uint32_t *)freqs, (uint32_t)a.level->codebook_size};
    return sink_call(&a, count, &sink.sink, "symbol_frequencies: a code outside the codebook");
}
#else
/* Without the int8 path the level loops do not exist: the Python loops (rangecoding) code the levels. */
static PyObject *needs_int8_path(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    PyErr_SetString(PyExc_ValueError, "the range coder's level loops need the int8 path");
    return NULL;
}
#define decode_level needs_int8_path
#define encode_level needs_int8_path
#define candidate_frequencies needs_int8_path
#define symbol_frequencies needs_int8_path
#endif

/* encode_counts(encoder, symbols, cums, freqs, count, K) -> bits: appends codes (int64) of rows of K codes summing to
 * 2^20, each given by its frequency and the frequencies below it (uint32), to an encoder; their information. */
static PyObject *encode_counts(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *capsule, *symbols_address, *cums_address, *freqs_address;
    Py_ssize_t count, K;
    if (!PyArg_ParseTuple(args, "OOOOnn", &capsule, &symbols_address, &cums_address, &freqs_address, &count, &K))
        return NULL;
    StreamEncoder *e = PyCapsule_GetPointer(capsule, "hvqcodec.streamencoder");
    const void *symbols_void, *cums_void, *freqs_void;
    if (!e || !address(symbols_address, &symbols_void) || !address(cums_address, &cums_void) ||
        !address(freqs_address, &freqs_void))
        return NULL;
    const int64_t *symbols = symbols_void;
    const uint32_t *cums = cums_void, *freqs = freqs_void;
    for (Py_ssize_t p = 0; p < count; p++)
        if (symbols[p] < 0 || symbols[p] >= K || freqs[p] < 1 || (uint64_t)cums[p] + freqs[p] > FREQ_TOTAL) {
            PyErr_SetString(PyExc_ValueError, "encode_counts: a code outside its row");
            return NULL;
        }
    double bits = 0.0;
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = 0; p < count && ok; p++) {
        uint32_t left, prob;
        rc_quantise(cums[p], freqs[p], (uint32_t)symbols[p], (uint32_t)K, &left, &prob);
        bits += -log2((double)freqs[p] / FREQ_TOTAL);
        ok = rc_encode(&e->coder, left, prob);
    }
    Py_END_ALLOW_THREADS
    if (!ok) return PyErr_NoMemory();
    return PyFloat_FromDouble(bits);
}

static PyMethodDef methods[] = {
    {"int8_supported", py_int8_supported, METH_NOARGS, "Whether this CPU runs the int8 path (AVX-512 VNNI)."},
    {"uses_int8", uses_int8, METH_O, "Whether a level's products take the int8 path."},
    {"uses_masked_tiles", uses_masked_tiles, METH_O,
     "Whether a level's masked convolution is one product on AMX tiles (while they are on), not tap tables."},
    {"amx_int8", py_amx_int8, METH_NOARGS, "Whether the int8 path's products run on AMX tiles."},
    {"_amx", set_amx, METH_O, "Turn the AMX tiles on or off (to compare the paths); the old setting."},
    {"_prefetch", set_prefetch, METH_O, "Turn the step function's prefetching on or off (to measure it); the old setting."},
    {"smallest", smallest, METH_VARARGS, "The k smallest values of each row of a float32 table, and their columns."},
    {"nearest_codes", nearest_codes, METH_VARARGS, "Each row's k codes of least squared distance (+ bits)."},
    {"convs", make_convs, METH_VARARGS, "Prepare a conditioning stack's 3x3 gated blocks (int8 path only)."},
    {"conv_grid", conv_grid, METH_VARARGS, "A block's inputs rounded to 8 bits, + 128, on a zero-padded grid."},
    {"conv_block", conv_block, METH_VARARGS, "Positions of a grid through one 3x3 gated block, in place."},
    {"linears", make_linears, METH_VARARGS, "Prepare layers applied to each row on its own (int8 path only)."},
    {"linear_rows", linear_rows, METH_VARARGS, "Rows through one of those layers, written as int16."},
    {"heads", heads, METH_VARARGS, "Integer frequencies of a head network for given activations (see intprior.py)."},
    {"level", make_level, METH_VARARGS, "Prepare a level prior's tables (addresses of contiguous tensors)."},
    {"frequencies", frequencies, METH_VARARGS, "Integer frequencies of a batch of positions (see intprior.py)."},
    {"stream_decoder", stream_decoder, METH_VARARGS, "A range decoder over a stream's bytes (constriction's format)."},
    {"stream_encoder", stream_encoder, METH_NOARGS, "An empty range encoder (constriction's format)."},
    {"stream_bytes", stream_bytes, METH_O, "An encoder's stream so far, finished, as bytes."},
    {"decode_rows", decode_rows, METH_VARARGS, "Symbols decoded with probability rows."},
    {"encode_rows", encode_rows, METH_VARARGS, "Symbols encoded with probability rows; their bits."},
    {"decode_level", decode_level, METH_VARARGS, "Every wavefront of a level decoded, codes painted."},
    {"encode_level", encode_level, METH_VARARGS, "A level's known codes encoded; their bits."},
    {"candidate_frequencies", candidate_frequencies, METH_VARARGS, "Probabilities of each position's candidates."},
    {"symbol_frequencies", symbol_frequencies, METH_VARARGS, "Each position's code's frequency and those below it."},
    {"encode_counts", encode_counts, METH_VARARGS, "Codes encoded from their frequencies and those below them."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stepkernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__stepkernel(void) {
#ifdef HAVE_AMX_INT8
    amx_int8_ready = int8_supported() && amx_tiles_permitted(AMX_FEATURE_INT8);
#endif
    return PyModule_Create(&module);
}
