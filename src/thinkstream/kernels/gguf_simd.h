/* The SIMD rows of gguf_matmul.c (AVX2 and AVX-512 builds; included from there, after the
 * block formats). Each 32-value chunk of a weight row is decoded into registers, never
 * stored: two 16-byte vectors of small integers q (values 0..15 and 16..31 of the chunk), an
 * integer zero point z, a scale per half s0 / s1 and an offset o, w = (q - z) * s + o. It
 * is then dotted with up to four rows of x in one of three modes:
 *
 *   F32  x float32 as given: w in float32 (one FMA), acc += w * x.  The dequantized
 *        model's arithmetic, up to summation order.
 *   I16  x per 32-value block as int16 (x ~= qx * sx, |qx| <= 32767, rounded to nearest)
 *        with the exact float sum of the block: acc += float(sum (q - z) * qx) * (s * sx)
 *        (vpmaddwd, one conversion per block), plus o * sum(x) for the offsets.  Relative
 *        error about 1e-5 of the block's largest |x|: opt-in (on SmolLM2 it moves logits
 *        by up to 2e-2, over the 1e-3 the exact path keeps).
 *   DEQ  no x: the F32 floats stored to a buffer (the GEMM's decode, gguf_gemm.h).
 *   I8   as I16 with int8 (|qx| <= 127; llama.cpp's Q8 activations): u8 x s8 products
 *        (vpdpbusd with AVX512_VNNI, else vpmaddubsw + vpmaddwd), 32 values per 256-bit
 *        register.  About 250x I16's error: opt-in.
 *
 * Two accumulator chains per row (h = 0 / 1 alternates between chunks), reduced at the
 * row's end; the offset sums go to a scalar per row. The AVX2 build's F32 mode decodes
 * Q4_0 / Q4_1 / Q4_K / Q8_0 straight into int32 lanes instead (vpmovzxbd / vpmovsxbd from
 * memory: fewer shuffles on a core without AVX-512; same values, same order) and takes
 * Q4_0 / Q4_1 weight rows in pairs at one or two x rows (docs/benchmarks.md, Zen 3). */

#define INLINE static inline __attribute__((always_inline))

/* the sum of the 16 lanes of two 256-bit vectors */
static inline float hsum8(__m256 a, __m256 b) {
    __m256 s = _mm256_add_ps(a, b);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

#if defined(__AVX512F__)
typedef __m512 vec;
#define VZERO _mm512_setzero_ps()
static inline float vsum(vec a, vec b) { return _mm512_reduce_add_ps(_mm512_add_ps(a, b)); }
#else
typedef __m256 vec;
#define VZERO _mm256_setzero_ps()
static inline float vsum(vec a, vec b) { return hsum8(a, b); }
#endif

/* F32 takes up to twelve x rows a pass where 32 vector registers hold their 24
 * accumulators (AVX-512; the 12-row loop keeps all in registers, x read from memory by the
 * FMAs): the weights are decoded once for 9-12 rows instead of twice (8 + the rest: 0.87x
 * of that at 9 rows, 0.96x at 12, SmolLM2's linears on Zen 4). */
#if defined(__AVX512F__)
#define ROWS8 1
#else
#define ROWS8 0
#endif

typedef struct {
    vec f[ROWS8 ? 12 : 4][2];  /* F32 */
    __m256 b[4][2];  /* I16, I8 */
    float off[4][2]; /* I16, I8: the offsets' sum(x) terms (two chains, as f) */
} accs;

/* u8 x s8 -> 8 int32 lanes, each the sum of four neighbouring products. */
INLINE __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* I16: 32 weights as int16 (w0 values 0..15, w1 16..31) against ``rows`` rows of X's
 * block at column c. 256-bit registers in both builds: on Zen 4 a 512-bit vpmaddwd /
 * vpmovsxbw costs two 256-bit ones, and the 512-bit form needs a lane insert more. */
INLINE void dot16(__m256i w0, __m256i w1, float s0, float s1, float o, const xrows *X, int64_t c,
                  const int rows, const int h, accs *A, const int split) {
    const int64_t blk = c >> 5;
    for (int r = 0; r < rows; r++) {
        const int16_t *xq = X->q16 + r * X->k + c;
        __m256i p0 = _mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i *)xq));
        __m256i p1 = _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i *)(xq + 16)));
        float sx = X->s[r * X->nb + blk];
        if (!split) {
            A->b[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(p0, p1)),
                                         _mm256_set1_ps(s0 * sx), A->b[r][h]);
        } else {
            A->b[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(s0 * sx), A->b[r][0]);
            A->b[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(s1 * sx), A->b[r][1]);
        }
        A->off[r][h] += o * X->sum[r * X->nb + blk];
    }
}

#if !defined(__AVX512F__)
/* F32 (AVX2) from weights already in int32 lanes: i0..i3 values 0-7, 8-15, 16-23, 24-31
 * (i0, i1 under s0, i2, i3 under s1), w = q * s + o; chunk_f32 and the blocks widened from
 * memory (blk_q4_f32, ...) all accumulate through it. */
INLINE void chunk_f32_v(__m256i i0, __m256i i1, __m256i i2, __m256i i3, __m256 vs0, __m256 vs1, __m256 vo,
                        const xrows *X, int64_t c, const int rows, accs *A) {
    __m256 w0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), vs0, vo);
    __m256 w1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), vs0, vo);
    __m256 w2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i2), vs1, vo);
    __m256 w3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i3), vs1, vo);
    for (int r = 0; r < rows; r++) {
        const float *xr = X->x + r * X->ldx + c;
        A->f[r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), A->f[r][0]);
        A->f[r][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), A->f[r][1]);
        A->f[r][0] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xr + 16), A->f[r][0]);
        A->f[r][1] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xr + 24), A->f[r][1]);
    }
}
#endif

/* F32: the chunk as floats, w = q * s + o (q already less its zero point). */
INLINE void chunk_f32(__m128i q0, __m128i q1, float s0, float s1, float o, const xrows *X, int64_t c,
                      const int rows, accs *A) {
#if defined(__AVX512F__)
    __m512 w0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), _mm512_set1_ps(s0), _mm512_set1_ps(o));
    __m512 w1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), _mm512_set1_ps(s1), _mm512_set1_ps(o));
    for (int r = 0; r < rows; r++) {
        const float *xr = X->x + r * X->ldx + c;
        A->f[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), A->f[r][0]);
        A->f[r][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), A->f[r][1]);
    }
#else
    chunk_f32_v(_mm256_cvtepi8_epi32(q0), _mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8)),
                _mm256_cvtepi8_epi32(q1), _mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8)),
                _mm256_set1_ps(s0), _mm256_set1_ps(s1), _mm256_set1_ps(o), X, c, rows, A);
#endif
}

#if !defined(__AVX512F__)
INLINE void chunk_f32_i32(__m256i i0, __m256i i1, __m256i i2, __m256i i3, float s0, float s1, float o,
                          const xrows *X, int64_t c, const int rows, accs *A) {
    chunk_f32_v(i0, i1, i2, i3, _mm256_set1_ps(s0), _mm256_set1_ps(s1), _mm256_set1_ps(o), X, c, rows, A);
}

/* 8 bytes at p zero- / sign-extended to int32 lanes (one vpmovzxbd / vpmovsxbd from memory). */
#define LOADU8_32(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p)))
#define LOADS8_32(p) _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p)))
#endif

#if !defined(__AVX512F__)
/* The half at p, broadcast as float (vpbroadcastw + vcvtph2ps: no scalar round trip). */
INLINE __m256 bcast_half(const uint8_t *p) {
    int16_t h;
    memcpy(&h, p, 2);
    return _mm256_cvtph_ps(_mm_set1_epi16(h));
}

/* F32 Q4_0 (m == NULL: offset -8 d, exact) / Q4_1 (d at dm, m at dm + 2) block: the nibbles
 * widened straight from memory to int32 lanes (bytes 0-7: values 0-7 and 16-23). */
INLINE void blk_q4_f32(const uint8_t *dm, int one, const uint8_t *qs, const xrows *X, int64_t c,
                       const int rows, accs *A) {
    __m256 vs, vo;
    if (one) {  /* d and m: both halves converted at once, then each spread */
        float two;
        memcpy(&two, dm, 4);
        __m256 b = _mm256_cvtph_ps(_mm_castps_si128(_mm_set1_ps(two)));
        vs = _mm256_permute_ps(b, 0x00);
        vo = _mm256_permute_ps(b, 0x55);
    } else {
        vs = bcast_half(dm);
        vo = _mm256_mul_ps(vs, _mm256_set1_ps(-8.0f));
    }
    __m256i t0 = LOADU8_32(qs), t1 = LOADU8_32(qs + 8), k15 = _mm256_set1_epi32(15);
    chunk_f32_v(_mm256_and_si256(t0, k15), _mm256_and_si256(t1, k15), _mm256_srli_epi32(t0, 4),
                _mm256_srli_epi32(t1, 4), vs, vs, vo, X, c, rows, A);
}
#endif

/* I8. Weights q >= 0 under one scale (kind 0): u8 q against s8 x, the zero point moved
 * into the offset (z * s exact: z is 0, 8, 16 or 32); else (Q8_0, Q6_K's two scales)
 * |q - z| against x with q - z's sign. */
INLINE void chunk_i8(__m128i q0, __m128i q1, int z, float s0, float s1, float o, const xrows *X,
                     int64_t c, const int rows, const int h, accs *A, const int kind) {
    const int64_t blk = c >> 5;
    __m256i w = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
    if (kind == 0) {
        o -= (float)z * s0;
        for (int r = 0; r < rows; r++) {
            __m256i xr = _mm256_loadu_si256((const __m256i *)(X->q8 + r * X->k + c));
            A->b[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(w, xr)),
                                         _mm256_set1_ps(s0 * X->s[r * X->nb + blk]), A->b[r][h]);
            A->off[r][h] += o * X->sum[r * X->nb + blk];
        }
        return;
    }
    w = _mm256_sub_epi8(w, _mm256_set1_epi8((char)z));
    __m256i u = _mm256_sign_epi8(w, w);
    __m256 sw = kind == 2 ? _mm256_blend_ps(_mm256_set1_ps(s0), _mm256_set1_ps(s1), 0xf0) : _mm256_set1_ps(s0);
    for (int r = 0; r < rows; r++) {
        __m256i xs = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(X->q8 + r * X->k + c)), w);
        __m256 sc = _mm256_mul_ps(sw, _mm256_set1_ps(X->s[r * X->nb + blk]));
        A->b[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(u, xs)), sc, A->b[r][h]);
        A->off[r][h] += o * X->sum[r * X->nb + blk];
    }
}

/* DEQ (the GEMM's decode, gguf_gemm.h): the chunk as floats, w = q * s + o as F32 computes
 * them, stored at X->dq + (c - X->dq0). */
INLINE void chunk_deq(__m128i q0, __m128i q1, float s0, float s1, float o, const xrows *X, int64_t c) {
    float *out = X->dq + (c - X->dq0);
#if defined(__AVX512F__)
    _mm512_storeu_ps(out, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), _mm512_set1_ps(s0), _mm512_set1_ps(o)));
    _mm512_storeu_ps(out + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), _mm512_set1_ps(s1), _mm512_set1_ps(o)));
#else
    __m256 vs0 = _mm256_set1_ps(s0), vs1 = _mm256_set1_ps(s1), vo = _mm256_set1_ps(o);
    _mm256_storeu_ps(out, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)), vs0, vo));
    _mm256_storeu_ps(out + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8))), vs0, vo));
    _mm256_storeu_ps(out + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)), vs1, vo));
    _mm256_storeu_ps(out + 24, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8))), vs1, vo));
#endif
}

/* One chunk at column c (a multiple of 32) against ``rows`` rows of X: its integers q (less
 * the zero point z), scales s0 / s1 (values 0..15 / 16..31) and offset o. ``kind`` (a
 * constant): 0 q >= 0 under one scale (s0 == s1), 1 signed q (Q8_0), 2 two scales (Q6_K). */
INLINE void chunk(const int mode, __m128i q0, __m128i q1, int z, float s0, float s1, float o,
                  const xrows *X, int64_t c, const int rows, const int h, accs *A, const int kind) {
    const __m128i zz = _mm_set1_epi8((char)z);
    if (mode == DEQ)
        chunk_deq(_mm_sub_epi8(q0, zz), _mm_sub_epi8(q1, zz), s0, s1, o, X, c);
    else if (mode == F32)
        chunk_f32(_mm_sub_epi8(q0, zz), _mm_sub_epi8(q1, zz), s0, s1, o, X, c, rows, A);
    else if (mode == I16)
        dot16(_mm256_cvtepi8_epi16(_mm_sub_epi8(q0, zz)), _mm256_cvtepi8_epi16(_mm_sub_epi8(q1, zz)),
              s0, s1, o, X, c, rows, h, A, kind == 2);
    else
        chunk_i8(q0, q1, z, s0, s1, o, X, c, rows, h, A, kind);
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

INLINE void blk_q4(const int mode, const uint8_t *qs, int z, float d, float m, const xrows *X,
                   int64_t c, const int rows, const int h, accs *A) {
    if (mode == I16) {  /* nibbles split in 16-bit lanes: no byte masks, no widening */
        __m256i v = _mm256_cvtepu8_epi16(LOAD16(qs)), zz = _mm256_set1_epi16((short)z);
        dot16(_mm256_sub_epi16(_mm256_and_si256(v, _mm256_set1_epi16(15)), zz),
              _mm256_sub_epi16(_mm256_srli_epi16(v, 4), zz), d, d, m, X, c, rows, h, A, 0);
        return;
    }
    __m128i v = LOAD16(qs);
    chunk(mode, NIB_LO(v), NIB_HI(v), z, d, d, m, X, c, rows, h, A, 0);
}

INLINE void blk_q5(const int mode, const uint8_t *qh4, const uint8_t *qs, int z, float d, float m,
                   const xrows *X, int64_t c, const int rows, const int h, accs *A) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    __m128i v = LOAD16(qs);
    chunk(mode, _mm_or_si128(NIB_LO(v), bit5(qh, 0)), _mm_or_si128(NIB_HI(v), bit5(qh, 1)), z, d, d, m,
          X, c, rows, h, A, 0);
}

INLINE void blk_q4_k(const int mode, const uint8_t *b, const xrows *X, int64_t c, const int rows,
                     accs *A, int five) {
    float d = half_to_float(b), dmin = half_to_float(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = five ? b + 48 : b + 16;
    __m128i h0 = _mm_setzero_si128(), h1 = _mm_setzero_si128();
    if (five) { h0 = LOAD16(qh); h1 = LOAD16(qh + 16); }
    for (int g = 0; g < 4; g++, qs += 32, c += 64) {
        int sc0, m0, sc1, m1;
        scale_min_k4(2 * g, scales, &sc0, &m0);
        scale_min_k4(2 * g + 1, scales, &sc1, &m1);
        float d0 = d * (float)sc0, n0 = -dmin * (float)m0, d1 = d * (float)sc1, n1 = -dmin * (float)m1;
#if !defined(__AVX512F__)
        if (mode == F32 && !five) {  /* as blk_q4's */
            __m256i t0 = LOADU8_32(qs), t1 = LOADU8_32(qs + 8), t2 = LOADU8_32(qs + 16),
                    t3 = LOADU8_32(qs + 24), k15 = _mm256_set1_epi32(15);
            chunk_f32_i32(_mm256_and_si256(t0, k15), _mm256_and_si256(t1, k15), _mm256_and_si256(t2, k15),
                          _mm256_and_si256(t3, k15), d0, d0, n0, X, c, rows, A);
            chunk_f32_i32(_mm256_srli_epi32(t0, 4), _mm256_srli_epi32(t1, 4), _mm256_srli_epi32(t2, 4),
                          _mm256_srli_epi32(t3, 4), d1, d1, n1, X, c + 32, rows, A);
            continue;
        }
#endif
        __m128i va = LOAD16(qs), vb = LOAD16(qs + 16);
        __m128i a0 = NIB_LO(va), b0 = NIB_LO(vb), a1 = NIB_HI(va), b1 = NIB_HI(vb);
        if (five) {
            a0 = _mm_or_si128(a0, bit5k(h0, 1 << (2 * g)));
            b0 = _mm_or_si128(b0, bit5k(h1, 1 << (2 * g)));
            a1 = _mm_or_si128(a1, bit5k(h0, 2 << (2 * g)));
            b1 = _mm_or_si128(b1, bit5k(h1, 2 << (2 * g)));
        }
        chunk(mode, a0, b0, 0, d0, d0, n0, X, c, rows, 0, A, 0);
        chunk(mode, a1, b1, 0, d1, d1, n1, X, c + 32, rows, 1, A, 0);
    }
}

INLINE void blk_q6_k(const int mode, const uint8_t *b, const xrows *X, int64_t c, const int rows, accs *A) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = half_to_float(b + 208);
    __m128i m30 = _mm_set1_epi8(0x30);
    for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, c += 128) {
        __m128i l0 = LOAD16(ql), l1 = LOAD16(ql + 16), l2 = LOAD16(ql + 32), l3 = LOAD16(ql + 48);
        __m128i h0 = LOAD16(qh), h1 = LOAD16(qh + 16);
        float s[8];
        for (int j = 0; j < 8; j++) s[j] = d * (float)sc[j];
        chunk(mode, _mm_or_si128(NIB_LO(l0), _mm_and_si128(_mm_slli_epi16(h0, 4), m30)),
              _mm_or_si128(NIB_LO(l1), _mm_and_si128(_mm_slli_epi16(h1, 4), m30)),
              32, s[0], s[1], 0.0f, X, c, rows, 0, A, 2);
        chunk(mode, _mm_or_si128(NIB_LO(l2), _mm_and_si128(_mm_slli_epi16(h0, 2), m30)),
              _mm_or_si128(NIB_LO(l3), _mm_and_si128(_mm_slli_epi16(h1, 2), m30)),
              32, s[2], s[3], 0.0f, X, c + 32, rows, 1, A, 2);
        chunk(mode, _mm_or_si128(NIB_HI(l0), _mm_and_si128(h0, m30)),
              _mm_or_si128(NIB_HI(l1), _mm_and_si128(h1, m30)),
              32, s[4], s[5], 0.0f, X, c + 64, rows, 0, A, 2);
        chunk(mode, _mm_or_si128(NIB_HI(l2), _mm_and_si128(_mm_srli_epi16(h0, 2), m30)),
              _mm_or_si128(NIB_HI(l3), _mm_and_si128(_mm_srli_epi16(h1, 2), m30)),
              32, s[6], s[7], 0.0f, X, c + 96, rows, 1, A, 2);
    }
}

/* One block of any type whose first value is column c. */
INLINE void blk(const int mode, int type, const uint8_t *b, const xrows *X, int64_t c, const int rows,
                const int h, accs *A) {
#if !defined(__AVX512F__)
    if (mode == F32 && (type == T_Q4_0 || type == T_Q4_1)) {
        blk_q4_f32(b, type == T_Q4_1, b + (type == T_Q4_1 ? 4 : 2), X, c, rows, A);
        return;
    }
    if (mode == F32 && type == T_Q8_0) {  /* int8 -> int32 straight from memory */
        __m256 vs = bcast_half(b);
        chunk_f32_v(LOADS8_32(b + 2), LOADS8_32(b + 10), LOADS8_32(b + 18), LOADS8_32(b + 26), vs, vs,
                    _mm256_setzero_ps(), X, c, rows, A);
        return;
    }
#endif
    switch (type) {
    case T_Q4_0: blk_q4(mode, b + 2, 8, half_to_float(b), 0.0f, X, c, rows, h, A); break;
    case T_Q4_1: blk_q4(mode, b + 4, 0, half_to_float(b), half_to_float(b + 2), X, c, rows, h, A); break;
    case T_Q5_0: blk_q5(mode, b + 2, b + 6, 16, half_to_float(b), 0.0f, X, c, rows, h, A); break;
    case T_Q5_1: blk_q5(mode, b + 4, b + 8, 0, half_to_float(b), half_to_float(b + 2), X, c, rows, h, A); break;
    case T_Q8_0: {
        float d = half_to_float(b);
        chunk(mode, LOAD16(b + 2), LOAD16(b + 18), 0, d, d, 0.0f, X, c, rows, h, A, 1);
        break;
    }
    case T_Q4_K: blk_q4_k(mode, b, X, c, rows, A, 0); break;
    case T_Q5_K: blk_q4_k(mode, b, X, c, rows, A, 1); break;
    default: blk_q6_k(mode, b, X, c, rows, A); break;
    }
}

/* y[r * ldy] = dot(row, x[r]) for r < rows; mode, type and rows are constants after
 * inlining, so each triple is its own loop (I16 runs for at most two rows: act_mode). */
INLINE void row_dot(const int mode, const int type, int values, int bytes, const uint8_t *row, int64_t k,
                    const xrows *X, const int rows, float *y, int64_t ldy) {
    accs A;
    for (int r = 0; r < rows; r++) A.f[r][0] = A.f[r][1] = VZERO;
    for (int r = 0; r < rows && r < 4; r++) {
        A.b[r][0] = A.b[r][1] = _mm256_setzero_ps();
        A.off[r][0] = A.off[r][1] = 0.0f;
    }
    int64_t c = 0;
    (void)values; (void)bytes;  /* the type's, as constants: */
    values = type == T_Q4_K || type == T_Q5_K || type == T_Q6_K ? 256 : 32;
    bytes = type == T_Q4_0 ? 18 : type == T_Q4_1 ? 20 : type == T_Q5_0 ? 22 : type == T_Q5_1 ? 24
          : type == T_Q8_0 ? 34 : type == T_Q4_K ? 144 : type == T_Q5_K ? 176 : 210;
    if (values == 32 && mode != F32)  /* two blocks a step: the int modes' two chains */
        for (; c + 64 <= k; c += 64, row += 2 * bytes) {
            blk(mode, type, row, X, c, rows, 0, &A);
            blk(mode, type, row + bytes, X, c + 32, rows, 1, &A);
        }
    for (; c < k; c += values, row += bytes) blk(mode, type, row, X, c, rows, 0, &A);
    for (int r = 0; r < rows; r++)
        y[r * ldy] = mode == F32 ? vsum(A.f[r][0], A.f[r][1])
                                 : hsum8(A.b[r][0], A.b[r][1]) + (A.off[r][0] + A.off[r][1]);
}

#if !defined(__AVX512F__)
/* F32 (AVX2), one or two x rows: row_dot of weight rows a and b = a + row_bytes in one pass
 * (y[r * ldy] and y[r * ldy + 1]): each row's chunks and chains exactly as alone, the x
 * loads shared and twice the independent chains. */
INLINE void row_dot_pair(const int type, const uint8_t *a, int64_t row_bytes, int64_t k, const xrows *X,
                         const int rows, float *y, int64_t ldy) {
    accs A, B;
    for (int r = 0; r < rows; r++) A.f[r][0] = A.f[r][1] = B.f[r][0] = B.f[r][1] = VZERO;
    const int values = type == T_Q4_K || type == T_Q5_K || type == T_Q6_K ? 256 : 32;
    const int bytes = type == T_Q4_0 ? 18 : type == T_Q4_1 ? 20 : type == T_Q5_0 ? 22 : type == T_Q5_1 ? 24
                    : type == T_Q8_0 ? 34 : type == T_Q4_K ? 144 : type == T_Q5_K ? 176 : 210;
    const uint8_t *b = a + row_bytes;
    for (int64_t c = 0; c < k; c += values, a += bytes, b += bytes) {
        blk(F32, type, a, X, c, rows, 0, &A);
        blk(F32, type, b, X, c, rows, 0, &B);
    }
    for (int r = 0; r < rows; r++) {
        y[r * ldy] = vsum(A.f[r][0], A.f[r][1]);
        y[r * ldy + 1] = vsum(B.f[r][0], B.f[r][1]);
    }
}
#define PAIRS 1
#else
#define PAIRS 0
#define row_dot_pair(...) ((void)0)
#endif

/* row_dot for weight rows n0..n1 (row n at w + n row_bytes, its results at y + n): the loop
 * inside one call, so a row costs no call, no dispatch and no copy of X; AVX2's F32 for one
 * or two x rows takes the weight rows in pairs (row_dot_pair). */
INLINE void rows_n(const int mode, const int type, const uint8_t *w, int64_t row_bytes, int64_t n0,
                   int64_t n1, int64_t k, const xrows *X, const int rows, float *y, int64_t ldy) {
    int64_t n = n0;
    if (PAIRS && mode == F32 && rows <= 2 && (type == T_Q4_0 || type == T_Q4_1))
        for (; n + 2 <= n1; n += 2) row_dot_pair(type, w + n * row_bytes, row_bytes, k, X, rows, y + n, ldy);
    for (; n < n1; n++) row_dot(mode, type, 0, 0, w + n * row_bytes, k, X, rows, y + n, ldy);
}

#define RN(MODE, TYPE, R) rows_n(MODE, TYPE, w, row_bytes, n0, n1, k, X, R, y, ldy)
#define ROWS_OF(MODE, TYPE)                                                                          \
    static void rows_##MODE##_##TYPE(const uint8_t *w, int64_t row_bytes, int64_t n0, int64_t n1,    \
                                     int64_t k, const xrows *X, int rows, float *y, int64_t ldy) {   \
        switch (rows) {                                                                              \
        case 3: if (MODE != I16) RN(MODE, TYPE, 3); break;                                           \
        case 12: if (MODE == F32 && ROWS8) RN(MODE, TYPE, 12); break;                                \
        case 11: if (MODE == F32 && ROWS8) RN(MODE, TYPE, 11); break;                                \
        case 10: if (MODE == F32 && ROWS8) RN(MODE, TYPE, 10); break;                                \
        case 9: if (MODE == F32 && ROWS8) RN(MODE, TYPE, 9); break;                                  \
        case 8: if (MODE == F32 && ROWS8) RN(MODE, TYPE, 8); break;                                  \
        case 7: if (MODE == F32 && ROWS8) RN(MODE, TYPE, 7); break;                                  \
        case 6: if (MODE == F32 && ROWS8) RN(MODE, TYPE, 6); break;                                  \
        case 5: if (MODE == F32 && ROWS8) RN(MODE, TYPE, 5); break;                                  \
        case 4: if (MODE != I16) RN(MODE, TYPE, 4); break;                                           \
        case 2: RN(MODE, TYPE, 2); break;                                                            \
        default: RN(MODE, TYPE, 1); break;                                                           \
        }                                                                                            \
    }
#define ROWS_OF_MODE(MODE)                                                                           \
    ROWS_OF(MODE, T_Q4_0) ROWS_OF(MODE, T_Q4_1) ROWS_OF(MODE, T_Q5_0) ROWS_OF(MODE, T_Q5_1)          \
    ROWS_OF(MODE, T_Q8_0) ROWS_OF(MODE, T_Q4_K) ROWS_OF(MODE, T_Q5_K) ROWS_OF(MODE, T_Q6_K)          \
    static rows_fn simd_rows_##MODE(int type) {                                                      \
        switch (type) {                                                                              \
        case T_Q4_0: return rows_##MODE##_T_Q4_0;                                                    \
        case T_Q4_1: return rows_##MODE##_T_Q4_1;                                                    \
        case T_Q5_0: return rows_##MODE##_T_Q5_0;                                                    \
        case T_Q5_1: return rows_##MODE##_T_Q5_1;                                                    \
        case T_Q8_0: return rows_##MODE##_T_Q8_0;                                                    \
        case T_Q4_K: return rows_##MODE##_T_Q4_K;                                                    \
        case T_Q5_K: return rows_##MODE##_T_Q5_K;                                                    \
        default: return rows_##MODE##_T_Q6_K;                                                        \
        }                                                                                            \
    }

typedef void (*rows_fn)(const uint8_t *, int64_t, int64_t, int64_t, int64_t, const xrows *, int, float *, int64_t);
ROWS_OF_MODE(F32)
ROWS_OF_MODE(I16)
ROWS_OF_MODE(I8)

static rows_fn simd_rows(int mode, int type) {
    return mode == I16 ? simd_rows_I16(type) : mode == I8 ? simd_rows_I8(type) : simd_rows_F32(type);
}
