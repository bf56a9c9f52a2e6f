/* utf8.c: UTF-8 validation of text messages (RFC 3629 as RFC 6455 8.1
 * requires), incremental so that a message split over frames, or over
 * reads, is checked as its bytes come and rejected in the first chunk that
 * holds a byte that cannot be valid, not at its end.
 *
 * Three layers: a scalar state machine (the reference, and what finishes a
 * sequence cut by a chunk boundary), runs of ASCII skipped 16 bytes (SSE2)
 * or 8 at a time, and on CPUs with SSSE3 or AVX2 (checked once, at run
 * time: ws_simd_level()) the table-lookup algorithm of Keiser and Lemire
 * ("Validating UTF-8 in less than one instruction per byte", 2021) over 16-
 * or 32-byte blocks: three nibble lookups classify each pair of adjacent
 * bytes, and 3rd/4th bytes of a sequence are checked against their lead 2
 * and 3 bytes back.  With AVX2, text frames are unmasked and validated in
 * the same pass (ws_unmask_copy_text). */
#include "websocket.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define WS_HAVE_SIMD_PATHS 1
#endif

#define HIGH_BITS 0x8080808080808080ULL

/* The length of the ASCII run at the start of p[0..n). */
static inline size_t
ascii_run(const uint8_t *p, size_t n)
{
    size_t i = 0;
#ifdef __SSE2__
    for (; i + 64 <= n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(p + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(p + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(p + i + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(p + i + 48));
        __m128i o = _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d));
        if (_mm_movemask_epi8(o))
            break;
    }
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(p + i));
        if (_mm_movemask_epi8(a))
            break;
    }
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w & HIGH_BITS)
            break;
    }
    while (i < n && p[i] < 0x80)
        i++;
    return i;
}

/* The state machine over p[*pos..n): stops at the end, or (boundary) as
 * soon as it is between sequences after at least one non-ASCII byte.
 * 0, or -1 at an impossible byte. */
static int
scalar(ws_utf8 *u, const uint8_t *p, size_t n, size_t *pos, int boundary)
{
    size_t i = *pos;
    unsigned need = u->need, lo = u->lo, hi = u->hi;
    int rc = 0;
    while (i < n) {
        if (need == 0) {
            if (boundary && i > *pos)
                break;
            i += ascii_run(p + i, n - i);
            if (i == n)
                break;
            u->ascii = 0;
            uint8_t b = p[i++];
            if (b < 0xC2 || b > 0xF4) {
                rc = -1; /* a continuation, an overlong C0/C1, past U+10FFFF */
                break;
            }
            lo = 0x80;
            hi = 0xBF;
            if (b < 0xE0) {
                need = 1;
            }
            else if (b < 0xF0) {
                need = 2;
                if (b == 0xE0)
                    lo = 0xA0;     /* no overlong 3-byte forms */
                else if (b == 0xED)
                    hi = 0x9F;     /* no surrogates */
            }
            else {
                need = 3;
                if (b == 0xF0)
                    lo = 0x90;     /* no overlong 4-byte forms */
                else if (b == 0xF4)
                    hi = 0x8F;     /* nothing past U+10FFFF */
            }
        }
        else {
            uint8_t b = p[i++];
            if (b < lo || b > hi) {
                rc = -1;
                break;
            }
            need--;
            lo = 0x80;
            hi = 0xBF;
        }
    }
    u->need = (uint8_t)need;
    u->lo = (uint8_t)lo;
    u->hi = (uint8_t)hi;
    *pos = i;
    return rc;
}

#ifdef WS_HAVE_SIMD_PATHS
/* error classes of a pair of adjacent bytes (first, second) */
#define TOO_SHORT (1 << 0)   /* a lead then a lead or ASCII */
#define TOO_LONG (1 << 1)    /* ASCII then a continuation */
#define OVERLONG_3 (1 << 2)  /* E0 80..9F */
#define TOO_LARGE (1 << 3)   /* F4 90..BF */
#define SURROGATE (1 << 4)   /* ED A0..BF */
#define OVERLONG_2 (1 << 5)  /* C0/C1 then a continuation */
#define TOO_LARGE_1000 (1 << 6) /* F5..FF 80..8F */
#define OVERLONG_4 (1 << 6)  /* F0 80..8F */
#define TWO_CONTS (1 << 7)   /* a continuation then a continuation */
#define CARRY (TOO_SHORT | TOO_LONG | TWO_CONTS)

/* The three lookup tables, by nibble: the classes the high nibble of the
 * first byte allows, the low nibble of the first byte, the high nibble of
 * the second; a pair is wrong in the classes all three have.  (16 values
 * each, for _mm_setr_epi8 and, twice over, _mm256_setr_epi8.) */
#define TABLE_BYTE_1_HIGH \
    (char)(TOO_LONG), (char)(TOO_LONG), (char)(TOO_LONG), (char)(TOO_LONG), \
    (char)(TOO_LONG), (char)(TOO_LONG), (char)(TOO_LONG), (char)(TOO_LONG), \
    (char)(TWO_CONTS), (char)(TWO_CONTS), (char)(TWO_CONTS), (char)(TWO_CONTS), \
    (char)(TOO_SHORT | OVERLONG_2), \
    (char)(TOO_SHORT), \
    (char)(TOO_SHORT | OVERLONG_3 | SURROGATE), \
    (char)(TOO_SHORT | TOO_LARGE | TOO_LARGE_1000 | OVERLONG_4)
#define TABLE_BYTE_1_LOW \
    (char)(CARRY | OVERLONG_3 | OVERLONG_2 | OVERLONG_4), \
    (char)(CARRY | OVERLONG_2), \
    (char)(CARRY), \
    (char)(CARRY), \
    (char)(CARRY | TOO_LARGE), \
    (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), \
    (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), \
    (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), \
    (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), \
    (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), \
    (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), \
    (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), \
    (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), \
    (char)(CARRY | TOO_LARGE | TOO_LARGE_1000 | SURROGATE), \
    (char)(CARRY | TOO_LARGE | TOO_LARGE_1000), \
    (char)(CARRY | TOO_LARGE | TOO_LARGE_1000)
#define TABLE_BYTE_2_HIGH \
    (char)(TOO_SHORT), (char)(TOO_SHORT), (char)(TOO_SHORT), (char)(TOO_SHORT), \
    (char)(TOO_SHORT), (char)(TOO_SHORT), (char)(TOO_SHORT), (char)(TOO_SHORT), \
    (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE_1000 | OVERLONG_4), \
    (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE), \
    (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE), \
    (char)(TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE), \
    (char)(TOO_SHORT), (char)(TOO_SHORT), (char)(TOO_SHORT), (char)(TOO_SHORT)
/* the last bytes of a block: a lead there wants bytes of the next block
 * (what exceeds these); 16 values, the end of a 16-byte block */
#define TABLE_INCOMPLETE_MAX_16 \
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, \
    (char)(0xF0 - 1), (char)(0xE0 - 1), (char)(0xC0 - 1)

/* Validates whole 16-byte blocks of p[0..n) that start at a sequence
 * boundary: the bytes covered (a multiple of 16; a sequence cut at its end
 * is for the caller to finish), *ok = 0 at a block with an error. */
__attribute__((target("ssse3"))) static size_t
blocks_ssse3(const uint8_t *p, size_t n, int *ok, int *ascii)
{
    const __m128i byte_1_high = _mm_setr_epi8(TABLE_BYTE_1_HIGH);
    const __m128i byte_1_low = _mm_setr_epi8(TABLE_BYTE_1_LOW);
    const __m128i byte_2_high = _mm_setr_epi8(TABLE_BYTE_2_HIGH);
    const __m128i incomplete_max = _mm_setr_epi8(TABLE_INCOMPLETE_MAX_16);
    const __m128i nibble = _mm_set1_epi8(0x0F);
    const __m128i third = _mm_set1_epi8((char)(0xE0 - 0x80));
    const __m128i fourth = _mm_set1_epi8((char)(0xF0 - 0x80));
    const __m128i high = _mm_set1_epi8((char)0x80);
    const __m128i zero = _mm_setzero_si128();
    __m128i prev = zero, prev_incomplete = zero, error = zero;
    int nonascii = 0, in_ascii = 1;
    size_t i = 0;
    while (i + 16 <= n) {
        /* in a run of ASCII, 64 bytes a step: only a sequence it cut
         * short can be wrong */
        if (in_ascii && i + 64 <= n) {
            __m128i a = _mm_loadu_si128((const __m128i *)(p + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(p + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(p + i + 32));
            __m128i d = _mm_loadu_si128((const __m128i *)(p + i + 48));
            if (!_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(a, b),
                                                _mm_or_si128(c, d)))) {
                error = _mm_or_si128(error, prev_incomplete);
                prev_incomplete = prev = zero;
                i += 64;
                continue;
            }
        }
        __m128i in = _mm_loadu_si128((const __m128i *)(p + i));
        in_ascii = _mm_movemask_epi8(in) == 0;
        if (in_ascii) {
            error = _mm_or_si128(error, prev_incomplete);
            prev_incomplete = zero;
        }
        else {
            nonascii = 1;
            __m128i prev1 = _mm_alignr_epi8(in, prev, 15);
            __m128i sc = _mm_and_si128(
                _mm_and_si128(
                    _mm_shuffle_epi8(byte_1_high,
                                     _mm_and_si128(_mm_srli_epi16(prev1, 4), nibble)),
                    _mm_shuffle_epi8(byte_1_low, _mm_and_si128(prev1, nibble))),
                _mm_shuffle_epi8(byte_2_high,
                                 _mm_and_si128(_mm_srli_epi16(in, 4), nibble)));
            __m128i prev2 = _mm_alignr_epi8(in, prev, 14);
            __m128i prev3 = _mm_alignr_epi8(in, prev, 13);
            __m128i must23 = _mm_or_si128(_mm_subs_epu8(prev2, third),
                                          _mm_subs_epu8(prev3, fourth));
            error = _mm_or_si128(error, _mm_xor_si128(_mm_and_si128(must23, high), sc));
            prev_incomplete = _mm_subs_epu8(in, incomplete_max);
        }
        prev = in;
        i += 16;
    }
    /* errors are gathered over the chunk (a few KiB: see frame.c) and
     * looked at once */
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(error, zero)) != 0xFFFF)
        *ok = 0;
    if (nonascii)
        *ascii = 0;
    return i;
}

/* The same method 32 bytes a step with AVX2, fused with the unmasking for
 * text frames: each 64 bytes are loaded once, unmasked, stored to dst and
 * validated while they are in registers (no second pass over dst).  Two
 * 32-byte blocks at a time: when neither has a byte >= 0x80 only a sequence
 * cut at the end of the previous block can be wrong; otherwise both are
 * classified.  A pshufb looks up within each 16-byte lane, which is what
 * the tables want; the bytes 1, 2 and 3 back (which cross the lanes and
 * the blocks) come from vperm2i128 + vpalignr. */
#define AVX2 __attribute__((target("avx2")))
#define ALWAYS_INLINE inline __attribute__((always_inline))

typedef struct {
    __m256i byte_1_high, byte_1_low, byte_2_high, incomplete_max;
    __m256i nibble, third, fourth, high;
} avx2_tables;

static ALWAYS_INLINE AVX2 void
avx2_tables_init(avx2_tables *t)
{
    t->byte_1_high = _mm256_setr_epi8(TABLE_BYTE_1_HIGH, TABLE_BYTE_1_HIGH);
    t->byte_1_low = _mm256_setr_epi8(TABLE_BYTE_1_LOW, TABLE_BYTE_1_LOW);
    t->byte_2_high = _mm256_setr_epi8(TABLE_BYTE_2_HIGH, TABLE_BYTE_2_HIGH);
    /* only the last lane's last 3 bytes end the block */
    t->incomplete_max = _mm256_setr_epi8(
        -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        TABLE_INCOMPLETE_MAX_16);
    t->nibble = _mm256_set1_epi8(0x0F);
    t->third = _mm256_set1_epi8((char)(0xE0 - 0x80));
    t->fourth = _mm256_set1_epi8((char)(0xF0 - 0x80));
    t->high = _mm256_set1_epi8((char)0x80);
}

/* The error bits of the 32 bytes `in`, the block before being `prev`: a
 * byte is nonzero where a pair is wrong or where a 3rd/4th byte of a
 * sequence is missing or one is there uncalled for. */
static ALWAYS_INLINE AVX2 __m256i
avx2_block_errors(__m256i in, __m256i prev, const avx2_tables *t)
{
    /* [prev's high lane, in's low lane]: the bytes before each lane */
    __m256i before = _mm256_permute2x128_si256(prev, in, 0x21);
    __m256i prev1 = _mm256_alignr_epi8(in, before, 15);
    __m256i prev2 = _mm256_alignr_epi8(in, before, 14);
    __m256i prev3 = _mm256_alignr_epi8(in, before, 13);
    __m256i c1 = _mm256_shuffle_epi8(
        t->byte_1_high, _mm256_and_si256(_mm256_srli_epi16(prev1, 4), t->nibble));
    __m256i c2 = _mm256_shuffle_epi8(t->byte_1_low,
                                     _mm256_and_si256(prev1, t->nibble));
    __m256i c3 = _mm256_shuffle_epi8(
        t->byte_2_high, _mm256_and_si256(_mm256_srli_epi16(in, 4), t->nibble));
    __m256i sc = _mm256_and_si256(_mm256_and_si256(c1, c2), c3);
    /* 0x80 where the byte 2 back is E0.. or the byte 3 back is F0..: this
     * byte must be a continuation (TWO_CONTS is what sc says for it) */
    __m256i must23 = _mm256_or_si256(_mm256_subs_epu8(prev2, t->third),
                                     _mm256_subs_epu8(prev3, t->fourth));
    return _mm256_xor_si256(_mm256_and_si256(must23, t->high), sc);
}

/* Whole 32-byte blocks of src[0..n), which starts at a sequence boundary:
 * unmasked with m (32 bytes lined up with src[0]) into dst when `unmask`;
 * the bytes covered (a multiple of 32, a sequence cut at the end for the
 * caller to finish), *ok = 0 at an error (looked at every 4 KiB, so that
 * garbage stops the work early), *ascii = 0 at a byte >= 0x80. */
static ALWAYS_INLINE AVX2 size_t
blocks_avx2_impl(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t *m,
                 int unmask, int *ok, int *ascii)
{
    avx2_tables t;
    avx2_tables_init(&t);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i vm = unmask ? _mm256_loadu_si256((const __m256i *)m) : zero;
    __m256i prev = zero, prev_incomplete = zero, error = zero;
    int nonascii = 0;
    size_t i = 0;
    while (n - i >= 64) {
        size_t end = n - i > 4096 ? i + 4096 : n;
        for (; i + 64 <= end; i += 64) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
            __m256i b = _mm256_loadu_si256((const __m256i *)(src + i + 32));
            if (unmask) {
                a = _mm256_xor_si256(a, vm);
                b = _mm256_xor_si256(b, vm);
                _mm256_storeu_si256((__m256i *)(dst + i), a);
                _mm256_storeu_si256((__m256i *)(dst + i + 32), b);
            }
            if (!_mm256_movemask_epi8(_mm256_or_si256(a, b))) {
                error = _mm256_or_si256(error, prev_incomplete);
                prev_incomplete = zero;
            }
            else {
                nonascii = 1;
                error = _mm256_or_si256(
                    error, _mm256_or_si256(avx2_block_errors(a, prev, &t),
                                           avx2_block_errors(b, a, &t)));
                prev_incomplete = _mm256_subs_epu8(b, t.incomplete_max);
            }
            prev = b;
        }
        if (!_mm256_testz_si256(error, error)) {
            *ok = 0;
            return i;
        }
    }
    if (n - i >= 32) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        if (unmask) {
            a = _mm256_xor_si256(a, vm);
            _mm256_storeu_si256((__m256i *)(dst + i), a);
        }
        if (!_mm256_movemask_epi8(a)) {
            error = _mm256_or_si256(error, prev_incomplete);
        }
        else {
            nonascii = 1;
            error = _mm256_or_si256(error, avx2_block_errors(a, prev, &t));
        }
        i += 32;
    }
    if (!_mm256_testz_si256(error, error))
        *ok = 0;
    if (nonascii)
        *ascii = 0;
    return i;
}

AVX2 static size_t
blocks_avx2(const uint8_t *p, size_t n, int *ok, int *ascii)
{
    return blocks_avx2_impl(NULL, p, n, NULL, 0, ok, ascii);
}

AVX2 static size_t
blocks_avx2_unmask(uint8_t *dst, const uint8_t *src, size_t n,
                   const uint8_t *m, int *ok, int *ascii)
{
    return blocks_avx2_impl(dst, src, n, m, 1, ok, ascii);
}

/* Blocks covering p[..end) were validated (done bytes of them): how far
 * back from end the lead of a sequence they cut short is (0: none), for
 * the state machine to go on from. */
static size_t
cut_back(const uint8_t *end, size_t done)
{
    for (size_t k = 1; k <= 3 && k <= done; k++) {
        uint8_t b = end[-(ptrdiff_t)k];
        if (b < 0x80)
            return 0;
        if (b >= 0xC0) {
            size_t len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
            return len > k ? k : 0;
        }
    }
    return 0;
}

static int
simd_detect(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        return WS_SIMD_AVX2;
    if (__builtin_cpu_supports("ssse3"))
        return WS_SIMD_SSSE3;
    return WS_SIMD_SCALAR;
}
#else
static int
simd_detect(void)
{
    return WS_SIMD_SCALAR;
}
#endif

static int simd_level = -1;

int
ws_simd_level(void)
{
    int level = __atomic_load_n(&simd_level, __ATOMIC_RELAXED);
    if (level < 0) {
        level = simd_detect();
        __atomic_store_n(&simd_level, level, __ATOMIC_RELAXED);
    }
    return level;
}

int
ws_simd_limit(int level)
{
    int best = simd_detect();
    if (level > best)
        level = best;
    if (level < WS_SIMD_SCALAR)
        level = WS_SIMD_SCALAR;
    __atomic_store_n(&simd_level, level, __ATOMIC_RELAXED);
    return level;
}

int
ws_utf8_feed(ws_utf8 *u, const uint8_t *p, size_t n)
{
    size_t i = 0;
#ifdef WS_HAVE_SIMD_PATHS
    int level;
    if (n >= 64 && (level = ws_simd_level()) > WS_SIMD_SCALAR) {
        /* finish a sequence the last chunk cut */
        if (u->need && scalar(u, p, n, &i, 1) < 0)
            return -1;
        if (u->need == 0 && n - i >= 32) {
            int ok = 1, ascii = 1;
            size_t done = level >= WS_SIMD_AVX2
                ? blocks_avx2(p + i, n - i, &ok, &ascii)
                : blocks_ssse3(p + i, n - i, &ok, &ascii);
            if (!ok)
                return -1;
            if (!ascii)
                u->ascii = 0;
            /* a sequence cut at the end of the blocks: the state machine
             * goes on from its lead byte */
            i += done;
            i -= cut_back(p + i, done);
        }
    }
#endif
    return scalar(u, p, n, &i, 0);
}

int
ws_unmask_copy_text(uint8_t *dst, const uint8_t *src, size_t n,
                    const uint8_t mask[4], size_t offset, ws_utf8 *u)
{
#ifdef WS_HAVE_SIMD_PATHS
    if (n >= 64 && ws_simd_level() >= WS_SIMD_AVX2) {
        size_t i = 0;
        if (u->need) {
            /* the rest of a sequence the last chunk cut (n > 3: all here) */
            i = u->need;
            ws_unmask_copy(dst, src, i, mask, offset);
            size_t pos = 0;
            if (scalar(u, dst, i, &pos, 0) < 0)
                return -1;
        }
        uint8_t m[32];
        for (int k = 0; k < 32; k++)
            m[k] = mask[(offset + i + (size_t)k) & 3];
        int ok = 1, ascii = 1;
        size_t done = blocks_avx2_unmask(dst + i, src + i, n - i, m, &ok, &ascii);
        if (!ok)
            return -1;
        if (!ascii)
            u->ascii = 0;
        i += done;
        ws_unmask_copy(dst + i, src + i, n - i, mask, offset + i);
        i -= cut_back(dst + i, done);
        return scalar(u, dst, n, &i, 0);
    }
#endif
    /* two passes, a piece small enough to stay in the L1 cache at a time
     * (the validator reads what the unmasking just wrote) */
    const size_t piece = 16384; /* a multiple of 4: the mask lines up */
    size_t done = 0;
    while (done < n) {
        size_t k = n - done < piece ? n - done : piece;
        ws_unmask_copy(dst + done, src + done, k, mask, offset + done);
        if (ws_utf8_feed(u, dst + done, k) < 0)
            return -1;
        done += k;
    }
    return 0;
}

/* The state machine alone: what the fuzz harness checks the rest against. */
int
ws_utf8_valid_reference(const uint8_t *p, size_t n)
{
    ws_utf8 u;
    ws_utf8_init(&u);
    size_t i = 0;
    if (scalar(&u, p, n, &i, 0) < 0)
        return -1;
    return ws_utf8_end(&u);
}

int
ws_utf8_valid(const uint8_t *p, size_t n)
{
    ws_utf8 u;
    ws_utf8_init(&u);
    if (ws_utf8_feed(&u, p, n) < 0)
        return -1;
    return ws_utf8_end(&u);
}
