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
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
} Layer;

typedef struct {
    int channels, codebook_size, taps, causal_blocks, exp_max, gate_half;
    const float *tap_tables;   /* (taps * (K + 1), 2C) */
    const float *masked_bias;  /* (2C) */
    const float *masked_scale; /* (2C) */
    const float *tanh_table;   /* (2 * gate_half + 1) */
    const float *sigmoid_table;
    const double *exp_table;   /* (exp_max + 1) */
    Layer layers[MAX_LAYERS];  /* block0.in, block0.out, block1.in, ..., head */
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

/* Adds int16 conditioning (2C) to pre. */
INLINE void add_conditioning(float *restrict pre, const int16_t *restrict row, int n) {
    for (int o = 0; o < n; o++) pre[o] += (float)row[o];
}

/* One position's working rows. */
typedef struct {
    float *pre, *h, *x, *wide;
} Work;

HOT static int run_positions(const Level *level, const int64_t *canvas, const int64_t *neighbours,
                             const int64_t *upper, const int16_t *const *cond, Py_ssize_t count, double *out,
                             double scale) {
    const int C = level->channels, C2 = 2 * C, K = level->codebook_size, taps = level->taps;
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
    const float *rows[64];
    for (Py_ssize_t first = 0; first < count; first += 2) {
        const Py_ssize_t positions[2] = {first, first + 1 < count ? first + 1 : first};
        for (int g = 0; g < 2; g++) {
            const Py_ssize_t p = positions[g];
            float *pre = work[g].pre;
            /* The masked convolution: a sum of one precomputed row per causal tap. */
            for (int t = 0; t < taps; t++)
                rows[t] = level->tap_tables + ((size_t)t * (K + 1) + (size_t)canvas[neighbours[p * taps + t]]) * C2;
            for (int o0 = 0; o0 + LANES <= C2; o0 += LANES) {
                float acc[LANES];
                add_rows(acc, rows, taps, (size_t)o0);
                for (int j = 0; j < LANES; j++)
                    pre[o0 + j] = clampf(floorf((acc[j] + level->masked_bias[o0 + j]) * level->masked_scale[o0 + j]),
                                         ACT_MAX);
            }
            for (int o = C2 - C2 % LANES; o < C2; o++) {
                float acc = 0.0f;
                for (int t = 0; t < taps; t++) acc += rows[t][o];
                pre[o] = clampf(floorf((acc + level->masked_bias[o]) * level->masked_scale[o]), ACT_MAX);
            }
            if (cond) add_conditioning(pre, cond[0] + (size_t)upper[p] * C2, C2);
            gate(level, pre, NULL, work[g].h);
        }
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
        frequencies_row(level, work[0].wide, out + (size_t)positions[0] * K, scale);
        frequencies_row(level, work[1].wide, positions[1] != positions[0] ? out + (size_t)positions[1] * K : spare,
                        scale);
    }
    free(buffer);
    return 1;
}

static void free_level(PyObject *capsule) {
    free(PyCapsule_GetPointer(capsule, "hvqcodec.level"));
}

static int address(PyObject *object, const void **target) {
    unsigned long long value = PyLong_AsUnsignedLongLong(object);
    if (PyErr_Occurred()) return 0;
    *target = (const void *)(uintptr_t)value;
    return 1;
}

/* level(channels, codebook_size, taps, causal_blocks, exp_max, gate_half, tap_tables, masked_bias, masked_scale,
 *       tanh_table, sigmoid_table, exp_table, layers) -> capsule; layers: ((inputs, outputs, weight,
 *       bias_and_half, inv_scale, input_scale), ...) for block0.in, block0.out, ..., head. */
static PyObject *make_level(PyObject *Py_UNUSED(self), PyObject *args) {
    Level level;
    PyObject *addresses[6], *layers;
    memset(&level, 0, sizeof(level));
    if (!PyArg_ParseTuple(args, "iiiiiiOOOOOOO!", &level.channels, &level.codebook_size, &level.taps,
                          &level.causal_blocks, &level.exp_max, &level.gate_half, &addresses[0], &addresses[1],
                          &addresses[2], &addresses[3], &addresses[4], &addresses[5], &PyTuple_Type, &layers))
        return NULL;
    const void **targets[6] = {(const void **)&level.tap_tables, (const void **)&level.masked_bias,
                               (const void **)&level.masked_scale, (const void **)&level.tanh_table,
                               (const void **)&level.sigmoid_table, (const void **)&level.exp_table};
    for (int i = 0; i < 6; i++)
        if (!address(addresses[i], targets[i])) return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(layers);
    if (count != 2 * level.causal_blocks + 1 || count > MAX_LAYERS || level.channels <= 0 || level.taps <= 0 ||
        level.taps > 64 || level.codebook_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "inconsistent level prior shape");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Layer *layer = &level.layers[i];
        PyObject *weight, *bias, *scale;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(layers, i), "iiOOOf", &layer->inputs, &layer->outputs, &weight,
                              &bias, &scale, &layer->input_scale))
            return NULL;
        if (!address(weight, (const void **)&layer->weight) || !address(bias, (const void **)&layer->bias_and_half) ||
            !address(scale, (const void **)&layer->inv_scale))
            return NULL;
        int expected_out = i == count - 1 ? level.codebook_size : (i % 2 ? level.channels : 2 * level.channels);
        if (layer->inputs != level.channels || layer->outputs != expected_out) {
            PyErr_SetString(PyExc_ValueError, "layer shape does not match the level prior");
            return NULL;
        }
    }
    Level *stored = malloc(sizeof(Level));
    if (!stored) return PyErr_NoMemory();
    *stored = level;
    PyObject *capsule = PyCapsule_New(stored, "hvqcodec.level", free_level);
    if (!capsule) free(stored);
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
    done = run_positions(level, canvas, neighbours, upper, cond_tables, count, (double *)out, scale);
    Py_END_ALLOW_THREADS
    if (!done) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"level", make_level, METH_VARARGS, "Prepare a level prior's tables (addresses of contiguous tensors)."},
    {"frequencies", frequencies, METH_VARARGS, "Integer frequencies of a batch of positions (see intprior.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stepkernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__stepkernel(void) { return PyModule_Create(&module); }
