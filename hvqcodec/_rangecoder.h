/* rangecoder.h -- range coder bit-exactly compatible with constriction 0.5.0's
 * stream.queue.RangeEncoder / RangeDecoder used with
 * stream.model.Categorical(perfect=False) and float64 probability rows.
 *
 * Parameters (constriction's DefaultRangeEncoder/Decoder): 32-bit words,
 * 64-bit state (lower, range), PRECISION = 24 (probabilities sum to 2^24).
 *
 * Quantisation.  A row has K codes with integer freq[k] >= 1 summing to 2^20,
 * given to constriction as freq/2^20 (exact float64, row sum exactly 1.0).
 * Categorical(perfect=False) without a fixed table is constriction's "lazy"
 * model: scale = (2^24 - K) / sum(row), and symbol s gets
 *     left(s)  = trunc(sum(row[:s]) * scale) + s
 *     right(s) = trunc(sum(row[:s+1]) * scale) + s + 1   (2^24 for s = K-1)
 * Every value here is exactly representable in float64 (products < 2^44),
 * so with cum(s) = freq[0] + ... + freq[s-1]:
 *     left(s) = floor(cum(s) * (2^24 - K) / 2^20) + s,   prob = left(s+1) - left(s)
 * (the last symbol's formula gives 2^24 too, so no special case).  The "+s"
 * leak makes prob >= 1 even for freq = 0; with freq >= 1 it is >= 16.
 *
 * Encoder.  State lower = 0, range = 2^64 - 1.  Per symbol:
 *     scale = range >> 24; range = scale*prob; lower += scale*left (mod 2^64).
 * When range < 2^32 the top word of lower is settled, except that a later
 * carry may still propagate into it: range <<= 32, lower <<= 32 and the old
 * top word is emitted, unless lower + range wraps mod 2^64 ("inverted"): then
 * it is held back, with a count of further held words (all 0xFFFFFFFF, which
 * become 0 after a carry).  Once lower + range no longer wraps, the held
 * words are written (+1 if lower wrapped, i.e. a carry arrived).
 * Finishing (get_compressed): nothing if no symbol was ever encoded; otherwise
 * held words, then point = lower + 2^32 - 1 (a value inside the interval whose
 * low 32 bits can be dropped), its top word, and one extra 0 word if the top
 * word of lower + range equals it (so that the zero padding stays inside).
 * Finishing does not change the encoder; encoding can continue afterwards.
 *
 * Decoder.  point = the first two words (a missing word reads as 0), lower = 0,
 * range = 2^64 - 1.  quantile = (point - lower) / (range >> 24); the symbol is
 * the s with left(s) <= quantile < left(s) + prob(s).  Then lower/range are
 * updated as in the encoder and, on a renormalisation, point = point << 32 |
 * next word (0 once the words have run out).  quantile >= 2^24 is possible
 * only for the first symbol of garbage data (words 0xFFFFFFFF, >= 0xFF000000);
 * constriction raises an error there (InvalidData), rc_decoder_quantile
 * returns that value so the caller can detect it.
 * maybe_exhausted: all words read and (nothing decoded yet, i.e. range still
 * 2^64 - 1, or point - lower < 2^33 - 1).
 */
#ifndef RANGECODER_H
#define RANGECODER_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define RC_PRECISION 24
#define RC_ONE (UINT32_C(1) << RC_PRECISION)
#define RC_ROW_BITS 20 /* our rows sum to 2^20 */

/* (cum, freq) of `symbol` in a row of K codes summing to 2^20 ->
 * constriction's 24-bit (left cumulative, probability). */
static inline void rc_quantise(uint32_t cum, uint32_t freq, uint32_t symbol,
                               uint32_t K, uint32_t *left, uint32_t *prob)
{
    uint64_t free_weight = (uint64_t)RC_ONE - K;
    uint32_t l = (uint32_t)(((uint64_t)cum * free_weight) >> RC_ROW_BITS) + symbol;
    uint32_t r = (uint32_t)(((uint64_t)(cum + freq) * free_weight) >> RC_ROW_BITS) + symbol + 1;
    *left = l;
    *prob = r - l;
}

/* ---------------------------------------------------------------- encoder */

typedef struct {
    uint32_t *words;     /* settled words */
    size_t len, cap;
    uint64_t lower, range;
    size_t num_inverted; /* 0: normal; else number of held-back words */
    uint32_t first_inverted;
} rc_encoder;

static inline void rc_encoder_init(rc_encoder *e)
{
    e->words = NULL;
    e->len = e->cap = 0;
    e->lower = 0;
    e->range = UINT64_MAX;
    e->num_inverted = 0;
    e->first_inverted = 0;
}

static inline void rc_encoder_free(rc_encoder *e)
{
    free(e->words);
    rc_encoder_init(e);
}

static inline int rc__push(rc_encoder *e, uint32_t w)
{
    if (e->len == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 256;
        uint32_t *p = (uint32_t *)realloc(e->words, cap * sizeof *p);
        if (!p)
            return 0;
        e->words = p;
        e->cap = cap;
    }
    e->words[e->len++] = w;
    return 1;
}

/* Writes the held-back words: first (+1 on carry), then n-1 copies of the rest. */
static inline int rc__flush_inverted(rc_encoder *e, int carry)
{
    uint32_t rest = carry ? 0 : UINT32_MAX;
    if (!rc__push(e, e->first_inverted + (carry ? 1u : 0u)))
        return 0;
    for (size_t i = 1; i < e->num_inverted; i++)
        if (!rc__push(e, rest))
            return 0;
    e->num_inverted = 0;
    return 1;
}

/* Encodes one symbol given its (left, prob) from rc_quantise. 0 = out of memory. */
static inline int rc_encode(rc_encoder *e, uint32_t left, uint32_t prob)
{
    uint64_t scale = e->range >> RC_PRECISION;
    uint64_t new_lower = e->lower + scale * left;
    e->range = scale * prob;
    if (e->num_inverted && new_lower + e->range > new_lower) {
        /* the pending carry is decided: it arrived iff lower wrapped */
        if (!rc__flush_inverted(e, new_lower < e->lower))
            return 0;
    }
    e->lower = new_lower;
    if (e->range < (UINT64_C(1) << 32)) {
        uint32_t top = (uint32_t)(e->lower >> 32);
        e->range <<= 32;
        e->lower <<= 32;
        if (e->num_inverted) {
            e->num_inverted++;             /* still undecided: hold this one too */
        } else if (e->lower + e->range > e->lower) {
            if (!rc__push(e, top))         /* common case: word is settled */
                return 0;
        } else {
            e->num_inverted = 1;           /* a later carry could change `top` */
            e->first_inverted = top;
        }
    }
    return 1;
}

/* The compressed words exactly as constriction's get_compressed() returns them.
 * *out stays valid until the next rc_encode/rc_encoder_free; the encoder is
 * left unchanged (more symbols may follow).  Returns the word count, or
 * (size_t)-1 when out of memory. */
static inline size_t rc_encoder_finish(rc_encoder *e, const uint32_t **out)
{
    size_t bulk = e->len, total;
    size_t held = e->num_inverted;
    uint32_t first = e->first_inverted;
    int ok = 1;
    if (e->range != UINT64_MAX) { /* range == 2^64-1 only before the first symbol */
        uint64_t point = e->lower + (UINT64_C(1) << 32) - 1;
        uint32_t point_word = (uint32_t)(point >> 32);
        uint32_t upper_word = (uint32_t)((e->lower + e->range) >> 32);
        if (held)
            ok = rc__flush_inverted(e, point < e->lower);
        ok = ok && rc__push(e, point_word);
        if (ok && upper_word == point_word)
            ok = rc__push(e, 0);
    }
    total = e->len;
    e->len = bulk;  /* undo the seal, like constriction's EncoderGuard */
    e->num_inverted = held;
    e->first_inverted = first;
    *out = e->words;
    return ok ? total : (size_t)-1;
}

/* ---------------------------------------------------------------- decoder */

typedef struct {
    const uint32_t *words;
    size_t count, pos;
    uint64_t lower, range, point;
} rc_decoder;

static inline void rc_decoder_init(rc_decoder *d, const uint32_t *words, size_t count)
{
    d->words = words;
    d->count = count;
    d->pos = 0;
    d->lower = 0;
    d->range = UINT64_MAX;
    d->point = 0;
    for (int i = 0; i < 2; i++) /* missing words read as 0 */
        d->point = (d->point << 32) | (d->pos < count ? words[d->pos++] : 0u);
}

/* The 24-bit point to look the next symbol up with.  A value >= RC_ONE means
 * invalid data (constriction's decode raises); only possible for the first
 * symbol. */
static inline uint32_t rc_decoder_quantile(const rc_decoder *d)
{
    uint64_t q = (d->point - d->lower) / (d->range >> RC_PRECISION);
    return (uint32_t)q; /* q <= 2^24 + 1 always, so this cannot truncate */
}

/* Advances past the symbol with (left, prob) that contains the quantile. */
static inline void rc_decoder_consume(rc_decoder *d, uint32_t left, uint32_t prob)
{
    uint64_t scale = d->range >> RC_PRECISION;
    d->lower += scale * left;
    d->range = scale * prob;
    if (d->range < (UINT64_C(1) << 32)) {
        d->lower <<= 32;
        d->range <<= 32;
        d->point <<= 32;
        if (d->pos < d->count)
            d->point |= d->words[d->pos++];
    }
}

/* constriction's RangeDecoder.maybe_exhausted(). */
static inline int rc_decoder_maybe_exhausted(const rc_decoder *d)
{
    return d->pos >= d->count &&
           (d->range == UINT64_MAX || d->point - d->lower < (UINT64_C(1) << 33) - 1);
}

#endif /* RANGECODER_H */
