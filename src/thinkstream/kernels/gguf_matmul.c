/* GGUF-native linear layers: y = x W^T with W kept as the GGUF file stores it (ggml's
 * quantized blocks), dequantized on the fly, one weight row at a time, into a float32 row
 * in L1, then dotted with every row of x. Decode at small batch is bound by weight bytes:
 * a Q4_1 row is 5/32 of its float32 size, so reading the blocks as stored is the win; the
 * arithmetic stays float32 (x float32, sums float32), so the result is the dequantized
 * float32 model's up to summation order.
 *
 *   for each weight row n (split across OpenMP threads):
 *       w = dequantize(row n)                 K floats, stays in L1/L2
 *       for each row r of x:  y[r, n] = dot(w, x[r])   (four rows at a time)
 *
 * Block formats (little-endian, "half" = IEEE float16), as ggml defines them:
 *   Q4_0  32 values, 18 B: d, qs[16]           v = d * (q - 8), q = 4 bits
 *   Q4_1  32 values, 20 B: d, m, qs[16]        v = d * q + m
 *   Q5_0  32 values, 22 B: d, qh[4], qs[16]    v = d * (q - 16), q = 4 bits + 1 from qh
 *   Q5_1  32 values, 24 B: d, m, qh[4], qs[16] v = d * q + m
 *   Q8_0  32 values, 34 B: d, int8 qs[32]      v = d * q
 *   Q4_K 256 values, 144 B: d, dmin, scales[12] (8 x 6-bit scale + 6-bit min), qs[128]
 *   Q5_K 256 values, 176 B: as Q4_K plus qh[32] (the fifth bit)
 *   Q6_K 256 values, 210 B: ql[128], qh[64], int8 scales[16], d;  v = d * sc * (q - 32)
 * In the 32-value types value j < 16 is the low nibble of qs[j], value j + 16 the high one.
 *
 * One source, built three times by thinkstream/kernels/gguf.py: -mavx512f (AVX-512),
 * -mavx2 -mfma (AVX2) and with no flags (portable). The loops are written so the compiler
 * vectorises them for the target (GCC vector extensions for the dot products, plain loops
 * over 16/32 lanes for the dequantization); gguf_isa() says which build this is. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
       T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14 };  /* ggml's type ids */

int gguf_isa(void) {
#if defined(__AVX512F__)
    return 2;
#elif defined(__AVX2__)
    return 1;
#else
    return 0;
#endif
}

int gguf_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static inline float half_to_float(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);  /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  /* subnormal half: normalise */
        exp = 113;
        while (!(man & 0x400)) { man <<= 1; exp--; }
        bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* ---- one block -> float32 ------------------------------------------------------------ */

static inline void deq_q4(const uint8_t *qs, float d, float m, float *out) {
    for (int j = 0; j < 16; j++) {
        out[j] = (float)(qs[j] & 15) * d + m;
        out[j + 16] = (float)(qs[j] >> 4) * d + m;
    }
}

static inline void deq_q5(const uint8_t *qh4, const uint8_t *qs, float d, float m, float *out) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 15) | (int)(((qh >> j) & 1) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        out[j] = (float)lo * d + m;
        out[j + 16] = (float)hi * d + m;
    }
}

static void deq_block_q4_0(const uint8_t *b, float *out) {
    float d = half_to_float(b);
    deq_q4(b + 2, d, -8.0f * d, out);
}

static void deq_block_q4_1(const uint8_t *b, float *out) {
    deq_q4(b + 4, half_to_float(b), half_to_float(b + 2), out);
}

static void deq_block_q5_0(const uint8_t *b, float *out) {
    float d = half_to_float(b);
    deq_q5(b + 2, b + 6, d, -16.0f * d, out);
}

static void deq_block_q5_1(const uint8_t *b, float *out) {
    deq_q5(b + 4, b + 8, half_to_float(b), half_to_float(b + 2), out);
}

static void deq_block_q8_0(const uint8_t *b, float *out) {
    float d = half_to_float(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) out[j] = (float)qs[j] * d;
}

/* The j-th (0..7) 6-bit scale and min of a Q4_K / Q5_K super-block. */
static inline void scale_min_k4(int j, const uint8_t *s, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static void deq_block_q4_k(const uint8_t *b, float *out) {
    float d = half_to_float(b), dmin = half_to_float(b + 2);
    const uint8_t *scales = b + 4, *qs = b + 16;
    for (int g = 0; g < 4; g++, qs += 32, out += 64) {  /* 64 values: 2 sub-blocks */
        int sc0, m0, sc1, m1;
        scale_min_k4(2 * g, scales, &sc0, &m0);
        scale_min_k4(2 * g + 1, scales, &sc1, &m1);
        float d0 = d * (float)sc0, n0 = dmin * (float)m0, d1 = d * (float)sc1, n1 = dmin * (float)m1;
        for (int l = 0; l < 32; l++) {
            out[l] = d0 * (float)(qs[l] & 15) - n0;
            out[l + 32] = d1 * (float)(qs[l] >> 4) - n1;
        }
    }
}

static void deq_block_q5_k(const uint8_t *b, float *out) {
    float d = half_to_float(b), dmin = half_to_float(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + 48;
    for (int g = 0; g < 4; g++, qs += 32, out += 64) {
        int sc0, m0, sc1, m1;
        scale_min_k4(2 * g, scales, &sc0, &m0);
        scale_min_k4(2 * g + 1, scales, &sc1, &m1);
        float d0 = d * (float)sc0, n0 = dmin * (float)m0, d1 = d * (float)sc1, n1 = dmin * (float)m1;
        for (int l = 0; l < 32; l++) {
            int lo = (qs[l] & 15) | (((qh[l] >> (2 * g)) & 1) << 4);
            int hi = (qs[l] >> 4) | (((qh[l] >> (2 * g + 1)) & 1) << 4);
            out[l] = d0 * (float)lo - n0;
            out[l + 32] = d1 * (float)hi - n1;
        }
    }
}

static void deq_block_q6_k(const uint8_t *b, float *out) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = half_to_float(b + 208);
    for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, out += 128) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            out[l] = d * (float)sc[is] * (float)q1;
            out[l + 32] = d * (float)sc[is + 2] * (float)q2;
            out[l + 64] = d * (float)sc[is + 4] * (float)q3;
            out[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
    }
}

typedef void (*deq_fn)(const uint8_t *, float *);

/* values and bytes per block, and the block decoder, of a type (0 if unsupported). */
static int block_info(int type, int *values, int *bytes, deq_fn *fn) {
    switch (type) {
    case T_Q4_0: *values = 32; *bytes = 18; *fn = deq_block_q4_0; return 1;
    case T_Q4_1: *values = 32; *bytes = 20; *fn = deq_block_q4_1; return 1;
    case T_Q5_0: *values = 32; *bytes = 22; *fn = deq_block_q5_0; return 1;
    case T_Q5_1: *values = 32; *bytes = 24; *fn = deq_block_q5_1; return 1;
    case T_Q8_0: *values = 32; *bytes = 34; *fn = deq_block_q8_0; return 1;
    case T_Q4_K: *values = 256; *bytes = 144; *fn = deq_block_q4_k; return 1;
    case T_Q5_K: *values = 256; *bytes = 176; *fn = deq_block_q5_k; return 1;
    case T_Q6_K: *values = 256; *bytes = 210; *fn = deq_block_q6_k; return 1;
    default: return 0;
    }
}

int gguf_supports(int type) {
    int v, b;
    deq_fn f;
    return block_info(type, &v, &b, &f);
}

static void deq_row(deq_fn fn, int values, int bytes, const uint8_t *row, int64_t k, float *out) {
    for (int64_t c = 0; c < k; c += values, row += bytes) fn(row, out + c);
}

/* ---- dot products: 16 float lanes (one zmm, two ymm or four xmm), two chains ---------- */

typedef float v16 __attribute__((vector_size(64)));

static inline v16 ld(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float hsum(v16 v) {
    float s = 0.0f;
    for (int l = 0; l < 16; l++) s += v[l];
    return s;
}

/* dot(w, x_r) for r < rows (1..4); k is a multiple of 32. */
static inline void dot_rows(const float *w, const float *x, int64_t ldx, int rows, int64_t k,
                            float *out, int64_t ldy) {
    v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
    switch (rows) {
    case 4:
        for (int64_t c = 0; c < k; c += 32) {
            v16 w0 = ld(w + c), w1 = ld(w + c + 16);
            a0 += w0 * ld(x0 + c); b0 += w1 * ld(x0 + c + 16);
            a1 += w0 * ld(x1 + c); b1 += w1 * ld(x1 + c + 16);
            a2 += w0 * ld(x2 + c); b2 += w1 * ld(x2 + c + 16);
            a3 += w0 * ld(x3 + c); b3 += w1 * ld(x3 + c + 16);
        }
        break;
    case 3:
        for (int64_t c = 0; c < k; c += 32) {
            v16 w0 = ld(w + c), w1 = ld(w + c + 16);
            a0 += w0 * ld(x0 + c); b0 += w1 * ld(x0 + c + 16);
            a1 += w0 * ld(x1 + c); b1 += w1 * ld(x1 + c + 16);
            a2 += w0 * ld(x2 + c); b2 += w1 * ld(x2 + c + 16);
        }
        break;
    case 2:
        for (int64_t c = 0; c < k; c += 32) {
            v16 w0 = ld(w + c), w1 = ld(w + c + 16);
            a0 += w0 * ld(x0 + c); b0 += w1 * ld(x0 + c + 16);
            a1 += w0 * ld(x1 + c); b1 += w1 * ld(x1 + c + 16);
        }
        break;
    default:
        for (int64_t c = 0; c < k; c += 32) {
            a0 += ld(w + c) * ld(x0 + c);
            b0 += ld(w + c + 16) * ld(x0 + c + 16);
        }
    }
    out[0] = hsum(a0 + b0);
    if (rows > 1) out[ldy] = hsum(a1 + b1);
    if (rows > 2) out[2 * ldy] = hsum(a2 + b2);
    if (rows > 3) out[3 * ldy] = hsum(a3 + b3);
}

#if defined(__AVX2__)
/* ---- SIMD rows: each 32-value chunk dequantized into registers, never stored --------- *
 * A chunk arrives as two 16-byte vectors of small signed integers q (values 0..15 and
 * 16..31 of the chunk) with a scale and an offset per half: w = q * s + o (one FMA), then
 * acc[r] += w * x[r] for up to four rows of x (two accumulators per row). */
#if defined(__AVX512F__)
typedef __m512 vec;
#define VZERO _mm512_setzero_ps()
static inline float vsum(vec a, vec b) { return _mm512_reduce_add_ps(_mm512_add_ps(a, b)); }
#else
typedef __m256 vec;
#define VZERO _mm256_setzero_ps()
static inline float vsum(vec a, vec b) {
    __m256 s = _mm256_add_ps(a, b);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
#endif

#define INLINE static inline __attribute__((always_inline))

INLINE void chunk(__m128i q0, __m128i q1, float s0, float o0, float s1, float o1,
                  const float *x, int64_t ldx, const int rows, vec acc[4][2]) {
#if defined(__AVX512F__)
    __m512 w0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), _mm512_set1_ps(s0), _mm512_set1_ps(o0));
    __m512 w1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), _mm512_set1_ps(s1), _mm512_set1_ps(o1));
    for (int r = 0; r < rows; r++) {
        acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + r * ldx), acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + r * ldx + 16), acc[r][1]);
    }
#else
    __m256 vs0 = _mm256_set1_ps(s0), vo0 = _mm256_set1_ps(o0);
    __m256 vs1 = _mm256_set1_ps(s1), vo1 = _mm256_set1_ps(o1);
    __m256 w0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)), vs0, vo0);
    __m256 w1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8))), vs0, vo0);
    __m256 w2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)), vs1, vo1);
    __m256 w3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8))), vs1, vo1);
    for (int r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        acc[r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), acc[r][1]);
        acc[r][0] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), acc[r][1]);
    }
#endif
}

#define LOAD16(p) _mm_loadu_si128((const __m128i *)(p))
#define NIB_LO(v) _mm_and_si128((v), _mm_set1_epi8(15))
#define NIB_HI(v) _mm_and_si128(_mm_srli_epi16((v), 4), _mm_set1_epi8(15))

/* 0x10 in byte j where bit (first + j) of the 32-bit qh is set, j < 16 (Q5_0 / Q5_1). */
INLINE __m128i bit5(uint32_t qh, int first) {
    __m128i idx = first ? _mm_setr_epi8(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3)
                        : _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    __m128i sel = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
    __m128i b = _mm_shuffle_epi8(_mm_set1_epi32((int)qh), idx);
    return _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(b, sel), sel), _mm_set1_epi8(16));
}

/* 0x10 in each byte of h whose bit ``mask`` is set (Q5_K). */
INLINE __m128i bit5k(__m128i h, int mask) {
    __m128i m = _mm_set1_epi8((char)mask);
    return _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(h, m), m), _mm_set1_epi8(16));
}

INLINE void blk_q4(const uint8_t *qs, float d, float m, const float *x, int64_t ldx, const int rows, vec acc[4][2]) {
    __m128i v = LOAD16(qs);
    chunk(NIB_LO(v), NIB_HI(v), d, m, d, m, x, ldx, rows, acc);
}

INLINE void blk_q5(const uint8_t *qh4, const uint8_t *qs, float d, float m, const float *x, int64_t ldx,
                   const int rows, vec acc[4][2]) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    __m128i v = LOAD16(qs);
    chunk(_mm_or_si128(NIB_LO(v), bit5(qh, 0)), _mm_or_si128(NIB_HI(v), bit5(qh, 1)), d, m, d, m,
          x, ldx, rows, acc);
}

INLINE void blk_q4_k(const uint8_t *b, const float *x, int64_t ldx, const int rows, vec acc[4][2], int five) {
    float d = half_to_float(b), dmin = half_to_float(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = five ? b + 48 : b + 16;
    __m128i h0 = _mm_setzero_si128(), h1 = _mm_setzero_si128();
    if (five) { h0 = LOAD16(qh); h1 = LOAD16(qh + 16); }
    for (int g = 0; g < 4; g++, qs += 32, x += 64) {
        int sc0, m0, sc1, m1;
        scale_min_k4(2 * g, scales, &sc0, &m0);
        scale_min_k4(2 * g + 1, scales, &sc1, &m1);
        float d0 = d * (float)sc0, n0 = -dmin * (float)m0, d1 = d * (float)sc1, n1 = -dmin * (float)m1;
        __m128i va = LOAD16(qs), vb = LOAD16(qs + 16);
        __m128i a0 = NIB_LO(va), b0 = NIB_LO(vb), a1 = NIB_HI(va), b1 = NIB_HI(vb);
        if (five) {
            a0 = _mm_or_si128(a0, bit5k(h0, 1 << (2 * g)));
            b0 = _mm_or_si128(b0, bit5k(h1, 1 << (2 * g)));
            a1 = _mm_or_si128(a1, bit5k(h0, 2 << (2 * g)));
            b1 = _mm_or_si128(b1, bit5k(h1, 2 << (2 * g)));
        }
        chunk(a0, b0, d0, n0, d0, n0, x, ldx, rows, acc);
        chunk(a1, b1, d1, n1, d1, n1, x + 32, ldx, rows, acc);
    }
}

INLINE void blk_q6_k(const uint8_t *b, const float *x, int64_t ldx, const int rows, vec acc[4][2]) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = half_to_float(b + 208);
    __m128i m30 = _mm_set1_epi8(0x30);
    for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, x += 128) {
        __m128i l0 = LOAD16(ql), l1 = LOAD16(ql + 16), l2 = LOAD16(ql + 32), l3 = LOAD16(ql + 48);
        __m128i h0 = LOAD16(qh), h1 = LOAD16(qh + 16);
        float s[8];
        for (int j = 0; j < 8; j++) s[j] = d * (float)sc[j];
        chunk(_mm_or_si128(NIB_LO(l0), _mm_and_si128(_mm_slli_epi16(h0, 4), m30)),
              _mm_or_si128(NIB_LO(l1), _mm_and_si128(_mm_slli_epi16(h1, 4), m30)),
              s[0], -32 * s[0], s[1], -32 * s[1], x, ldx, rows, acc);
        chunk(_mm_or_si128(NIB_LO(l2), _mm_and_si128(_mm_slli_epi16(h0, 2), m30)),
              _mm_or_si128(NIB_LO(l3), _mm_and_si128(_mm_slli_epi16(h1, 2), m30)),
              s[2], -32 * s[2], s[3], -32 * s[3], x + 32, ldx, rows, acc);
        chunk(_mm_or_si128(NIB_HI(l0), _mm_and_si128(h0, m30)),
              _mm_or_si128(NIB_HI(l1), _mm_and_si128(h1, m30)),
              s[4], -32 * s[4], s[5], -32 * s[5], x + 64, ldx, rows, acc);
        chunk(_mm_or_si128(NIB_HI(l2), _mm_and_si128(_mm_srli_epi16(h0, 2), m30)),
              _mm_or_si128(NIB_HI(l3), _mm_and_si128(_mm_srli_epi16(h1, 2), m30)),
              s[6], -32 * s[6], s[7], -32 * s[7], x + 96, ldx, rows, acc);
    }
}

/* One block of any type at x (its first value's column). */
INLINE void blk(int type, const uint8_t *b, const float *x, int64_t ldx, const int rows, vec acc[4][2]) {
    switch (type) {
    case T_Q4_0: { float d = half_to_float(b); blk_q4(b + 2, d, -8.0f * d, x, ldx, rows, acc); break; }
    case T_Q4_1: blk_q4(b + 4, half_to_float(b), half_to_float(b + 2), x, ldx, rows, acc); break;
    case T_Q5_0: { float d = half_to_float(b); blk_q5(b + 2, b + 6, d, -16.0f * d, x, ldx, rows, acc); break; }
    case T_Q5_1: blk_q5(b + 4, b + 8, half_to_float(b), half_to_float(b + 2), x, ldx, rows, acc); break;
    case T_Q8_0: {
        float d = half_to_float(b);
        chunk(LOAD16(b + 2), LOAD16(b + 18), d, 0.0f, d, 0.0f, x, ldx, rows, acc);
        break;
    }
    case T_Q4_K: blk_q4_k(b, x, ldx, rows, acc, 0); break;
    case T_Q5_K: blk_q4_k(b, x, ldx, rows, acc, 1); break;
    default: blk_q6_k(b, x, ldx, rows, acc); break;
    }
}

/* y[r * ldy] = dot(row, x[r]) for r < rows; the type and row count are constants after
 * inlining, so each (type, rows) pair is its own loop. */
INLINE void row_dot(int type, int values, int bytes, const uint8_t *row, int64_t k, const float *x,
                    int64_t ldx, const int rows, float *y, int64_t ldy) {
    vec acc[4][2];
    for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = VZERO;
    for (int64_t c = 0; c < k; c += values, row += bytes) blk(type, row, x + c, ldx, rows, acc);
    for (int r = 0; r < rows; r++) y[r * ldy] = vsum(acc[r][0], acc[r][1]);
}

#define ROWS_OF(TYPE)                                                                          \
    static void rows_##TYPE(int values, int bytes, const uint8_t *row, int64_t k, const float *x, \
                            int64_t ldx, int rows, float *y, int64_t ldy) {                    \
        switch (rows) {                                                                        \
        case 4: row_dot(TYPE, values, bytes, row, k, x, ldx, 4, y, ldy); break;                \
        case 3: row_dot(TYPE, values, bytes, row, k, x, ldx, 3, y, ldy); break;                \
        case 2: row_dot(TYPE, values, bytes, row, k, x, ldx, 2, y, ldy); break;                \
        default: row_dot(TYPE, values, bytes, row, k, x, ldx, 1, y, ldy); break;               \
        }                                                                                      \
    }
ROWS_OF(T_Q4_0) ROWS_OF(T_Q4_1) ROWS_OF(T_Q5_0) ROWS_OF(T_Q5_1) ROWS_OF(T_Q8_0)
ROWS_OF(T_Q4_K) ROWS_OF(T_Q5_K) ROWS_OF(T_Q6_K)

typedef void (*rows_fn)(int, int, const uint8_t *, int64_t, const float *, int64_t, int, float *, int64_t);

static rows_fn simd_rows(int type) {
    switch (type) {
    case T_Q4_0: return rows_T_Q4_0;
    case T_Q4_1: return rows_T_Q4_1;
    case T_Q5_0: return rows_T_Q5_0;
    case T_Q5_1: return rows_T_Q5_1;
    case T_Q8_0: return rows_T_Q8_0;
    case T_Q4_K: return rows_T_Q4_K;
    case T_Q5_K: return rows_T_Q5_K;
    default: return rows_T_Q6_K;
    }
}
#endif

/* Weight rows n0..n1 against every row of x; ``buf`` holds K floats (portable path). */
static void rows_range(int type, deq_fn fn, int values, int bytes, const uint8_t *w,
                       int64_t row_bytes, int64_t n0, int64_t n1, int64_t k, const float *x,
                       int64_t m, int64_t ldx, float *y, int64_t ldy, float *buf) {
#if defined(__AVX2__)
    rows_fn simd = simd_rows(type);
    (void)fn; (void)buf;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t r = 0; r < m; r += 4)
            simd(values, bytes, w + n * row_bytes, k, x + r * ldx, ldx,
                 m - r < 4 ? (int)(m - r) : 4, y + r * ldy + n, ldy);
#else
    (void)type;
    for (int64_t n = n0; n < n1; n++) {
        deq_row(fn, values, bytes, w + n * row_bytes, k, buf);
        for (int64_t r = 0; r < m; r += 4) {
            int rows = m - r < 4 ? (int)(m - r) : 4;
            dot_rows(buf, x + r * ldx, ldx, rows, k, y + r * ldy + n, ldy);
        }
    }
#endif
}

/* y[r, n] = sum_c x[r, c] W[n, c] for r < m, n < n_rows. W: n_rows rows of row_bytes bytes
 * (k values each, k a multiple of the type's block); x: m rows, stride ldx floats; y:
 * stride ldy floats. Returns 0, or -1 for an unsupported type / shape. */
int gguf_matmul(int type, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                const float *x, int64_t m, int64_t ldx, float *y, int64_t ldy, int threads) {
    int values, bytes;
    deq_fn fn;
    if (!block_info(type, &values, &bytes, &fn) || k % values || k / values * bytes != row_bytes)
        return -1;
    if (threads < 1) threads = 1;
    if (threads > n_rows / 16) threads = n_rows / 16 > 1 ? (int)(n_rows / 16) : 1;
#ifdef _OPENMP
    if (threads > 1) {
        int failed = 0;
#pragma omp parallel num_threads(threads)
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            int64_t per = (n_rows + nt - 1) / nt, n0 = t * per, n1 = n0 + per < n_rows ? n0 + per : n_rows;
            float *buf = aligned_alloc(64, (size_t)((k * 4 + 63) / 64 * 64));
            if (buf == NULL) {
#pragma omp atomic write
                failed = 1;
            } else {
                if (n0 < n1) rows_range(type, fn, values, bytes, w, row_bytes, n0, n1, k, x, m, ldx, y, ldy, buf);
                free(buf);
            }
        }
        return failed ? -2 : 0;
    }
#endif
    float *buf = aligned_alloc(64, (size_t)((k * 4 + 63) / 64 * 64));
    if (buf == NULL) return -2;
    rows_range(type, fn, values, bytes, w, row_bytes, 0, n_rows, k, x, m, ldx, y, ldy, buf);
    free(buf);
    return 0;
}

/* out (n_rows, k) float32 = the dequantized rows (the dense copy, and the tests' check). */
int gguf_dequantize(int type, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                    float *out) {
    int values, bytes;
    deq_fn fn;
    if (!block_info(type, &values, &bytes, &fn) || k % values || k / values * bytes != row_bytes)
        return -1;
    for (int64_t n = 0; n < n_rows; n++) deq_row(fn, values, bytes, w + n * row_bytes, k, out + n * k);
    return 0;
}
