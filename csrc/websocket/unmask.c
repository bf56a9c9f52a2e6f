/* unmask.c: the client-to-server mask (RFC 6455 5.3), removed a word at a
 * time while the payload is copied out of the read buffer: 32 bytes per
 * step with AVX2 (when the CPU has it: ws_simd_level()), 16 with SSE2, 8
 * otherwise, then the tail byte by byte.  Text is unmasked and validated
 * in one pass by ws_unmask_copy_text() (utf8.c). */
#include "websocket.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define WS_HAVE_AVX2_PATH 1
#endif

#ifdef WS_HAVE_AVX2_PATH
/* Whole 32-byte words of src[0..n) with m (32 bytes, lined up with
 * src[0]): the bytes done. */
__attribute__((target("avx2"))) static size_t
unmask_avx2(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t *m)
{
    __m256i vm = _mm256_loadu_si256((const __m256i *)m);
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(src + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(src + i + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(src + i + 96));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(a, vm));
        _mm256_storeu_si256((__m256i *)(dst + i + 32), _mm256_xor_si256(b, vm));
        _mm256_storeu_si256((__m256i *)(dst + i + 64), _mm256_xor_si256(c, vm));
        _mm256_storeu_si256((__m256i *)(dst + i + 96), _mm256_xor_si256(d, vm));
    }
    for (; i + 32 <= n; i += 32) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(a, vm));
    }
    return i;
}
#endif

void
ws_unmask_copy(uint8_t *dst, const uint8_t *src, size_t n,
               const uint8_t mask[4], size_t offset)
{
    /* the mask as it lines up with src[0], repeated over 32 bytes */
    uint8_t m[32];
    for (int i = 0; i < 4; i++)
        m[i] = mask[(offset + (size_t)i) & 3];
    for (int i = 4; i < 32; i += 4)
        memcpy(m + i, m, 4);
    size_t i = 0;
#ifdef WS_HAVE_AVX2_PATH
    if (n >= 64 && ws_simd_level() >= WS_SIMD_AVX2)
        i = unmask_avx2(dst, src, n, m);
#endif
#ifdef __SSE2__
    if (n - i >= 16) {
        __m128i vm = _mm_loadu_si128((const __m128i *)m);
        for (; i + 64 <= n; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
            __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
            _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(a, vm));
            _mm_storeu_si128((__m128i *)(dst + i + 16), _mm_xor_si128(b, vm));
            _mm_storeu_si128((__m128i *)(dst + i + 32), _mm_xor_si128(c, vm));
            _mm_storeu_si128((__m128i *)(dst + i + 48), _mm_xor_si128(d, vm));
        }
        for (; i + 16 <= n; i += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
            _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(a, vm));
        }
    }
#endif
    uint64_t m64;
    memcpy(&m64, m, 8);
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= m64;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ m[i & 7];
}
