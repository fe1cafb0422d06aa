/* What the native kernels share (gguf_matmul.c, fq_attention.c, decoder.c include it). */
#ifndef THINKSTREAM_KERNELS_COMMON_H
#define THINKSTREAM_KERNELS_COMMON_H

/* The instruction set a build was compiled for, as each library's *_isa() reports it:
 * 2 AVX-512, 1 AVX2, 0 portable (kernels/native.py builds each source per set). */
#if defined(__AVX512F__)
#define BUILD_ISA 2
#elif defined(__AVX2__)
#define BUILD_ISA 1
#else
#define BUILD_ISA 0
#endif

/* Attention's key segments (fq_attention.c; decoder.c splits a lone sequence's keys by them):
 * each row's softmax runs over the keys in segments of FQ_SEG, each from a fresh state, and
 * the segments' partials are merged left to right, by every path. So a row's output does not
 * depend on which thread computed which segment (vLLM's paged attention v2 and
 * FlashDecoding partition the keys the same way, 512 per partition). */
#define FQ_SEG 512

/* Whether attention over ``length`` keys for ``pairs`` (sequence, key/value head) pairs of
 * ``nq`` queries each should split the keys between ``threads`` threads (a segment range
 * each, then a merge) rather than the pairs or the queries: when the pairs cannot give every
 * thread the same work, the queries are few (each thread would read every key for a share
 * of them) and there are enough segments. */
static inline int fq_split_keys(long long pairs, long long nq, long long length, int threads) {
    long long nseg = (length + FQ_SEG - 1) / FQ_SEG;
    return threads > 1 && pairs % threads != 0 && pairs < 4LL * threads && nq <= 64 && nseg >= threads;
}

/* The first segment of thread t's share (of nt) of ``length`` keys: the cut at t/nt of the
 * keys, rounded to a segment (the last segment may be short). */
static inline long long fq_seg_share(long long length, long long t, long long nt) {
    long long nseg = (length + FQ_SEG - 1) / FQ_SEG, s = (length * t / nt + FQ_SEG / 2) / FQ_SEG;
    return t >= nt ? nseg : s < nseg ? s : nseg;
}

#if defined(__AVX2__)
#include <immintrin.h>
/* r[0 .. 8): eight rows of eight floats, replaced by the rows of their transpose (in
 * registers: unpack pairs, shuffle quads, swap 128-bit halves). */
static inline __attribute__((always_inline)) void transpose8x8(__m256 r[8]) {
    __m256 t[8], q[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        q[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        q[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        q[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        q[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(q[j], q[j + 4], 0x20);
        r[j + 4] = _mm256_permute2f128_ps(q[j], q[j + 4], 0x31);
    }
}
#endif

#endif
