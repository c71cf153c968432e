// CRC-32 (IEEE 802.3, reflected) by carry-less multiplication: the buffer is folded 64 bytes at a time into four
// 128-bit lanes, the lanes into one, then reduced to 32 bits by a Barrett reduction. The method is Intel's
// "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ Instruction" (2009); the constants are the
// powers x^k mod P(x) (bit-reflected) that the paper derives for P = 0x104C11DB7.
#include "CTapSupport.h"

#if defined(__x86_64__)
#include <immintrin.h>

int tap_crc32_fold_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
}

__attribute__((target("pclmul,sse4.1")))
uint32_t tap_crc32_fold(uint32_t state, const uint8_t *bytes, size_t length) {
    // x^(4*128+32), x^(4*128-32): folding across 512 bits.
    const __m128i fold4 = _mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL);
    // x^(128+32), x^(128-32): folding across 128 bits.
    const __m128i fold1 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL);
    // x^64 mod P: 64 to 32 bits.
    const __m128i fold64 = _mm_set_epi64x(0, 0x163cd6124LL);
    // Barrett reduction: P' (low) and mu' (high).
    const __m128i barrett = _mm_set_epi64x(0x1f7011641LL, 0x1db710641LL);
    const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);

    __m128i x0 = _mm_loadu_si128((const __m128i *)(bytes + 0));
    __m128i x1 = _mm_loadu_si128((const __m128i *)(bytes + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(bytes + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(bytes + 48));
    x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)state));
    bytes += 64;
    length -= 64;

#define TAP_FOLD(x, k, next) \
    _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128((x), (k), 0x00), _mm_clmulepi64_si128((x), (k), 0x11)), (next))

    while (length >= 64) {
        x0 = TAP_FOLD(x0, fold4, _mm_loadu_si128((const __m128i *)(bytes + 0)));
        x1 = TAP_FOLD(x1, fold4, _mm_loadu_si128((const __m128i *)(bytes + 16)));
        x2 = TAP_FOLD(x2, fold4, _mm_loadu_si128((const __m128i *)(bytes + 32)));
        x3 = TAP_FOLD(x3, fold4, _mm_loadu_si128((const __m128i *)(bytes + 48)));
        bytes += 64;
        length -= 64;
    }
    __m128i x = TAP_FOLD(x0, fold1, x1);
    x = TAP_FOLD(x, fold1, x2);
    x = TAP_FOLD(x, fold1, x3);
    while (length >= 16) {
        x = TAP_FOLD(x, fold1, _mm_loadu_si128((const __m128i *)bytes));
        bytes += 16;
        length -= 16;
    }
#undef TAP_FOLD

    // 128 -> 64 bits: the low half times x^(128-32) folded onto the high half.
    __m128i t = _mm_clmulepi64_si128(x, fold1, 0x10);
    x = _mm_xor_si128(_mm_srli_si128(x, 8), t);
    // 64 -> 32 bits.
    __m128i high = _mm_srli_si128(x, 4);
    x = _mm_clmulepi64_si128(_mm_and_si128(x, mask32), fold64, 0x00);
    x = _mm_xor_si128(x, high);
    // Barrett reduction to the 32-bit remainder.
    __m128i r = x;
    x = _mm_clmulepi64_si128(_mm_and_si128(x, mask32), barrett, 0x10);
    x = _mm_clmulepi64_si128(_mm_and_si128(x, mask32), barrett, 0x00);
    x = _mm_xor_si128(x, r);
    return (uint32_t)_mm_extract_epi32(x, 1);
}

#else

int tap_crc32_fold_available(void) { return 0; }

uint32_t tap_crc32_fold(uint32_t state, const uint8_t *bytes, size_t length) {
    (void)bytes;
    (void)length;
    return state;
}

#endif
