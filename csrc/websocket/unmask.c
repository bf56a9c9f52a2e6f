/* unmask.c: the client-to-server mask (RFC 6455 5.3), removed a word at a
 * time while the payload is copied out of the read buffer: 16 bytes per
 * step with SSE2, 8 otherwise, then the tail byte by byte. */
#include "websocket.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

void
ws_unmask_copy(uint8_t *dst, const uint8_t *src, size_t n,
               const uint8_t mask[4], size_t offset)
{
    /* the mask as it lines up with src[0], repeated over 16 bytes */
    uint8_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = mask[(offset + (size_t)i) & 3];
    size_t i = 0;
#ifdef __SSE2__
    if (n >= 16) {
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

/* Unmasks text into dst and validates it on the way, a piece small enough
 * to stay in the L1 cache at a time (the validator reads what the unmasking
 * just wrote): 0, or -1 at the first piece with invalid UTF-8. */
int
ws_unmask_copy_text(uint8_t *dst, const uint8_t *src, size_t n,
                    const uint8_t mask[4], size_t offset, ws_utf8 *u)
{
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
