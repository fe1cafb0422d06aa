/* The vector layer of fq_attention.c (included from there): 16 float lanes as one zmm
 * (AVX-512), two ymm (AVX2) or a plain array (portable), a base-2 exponential, bfloat16
 * widening and a 16 x 16 transpose. Each build sees one of the three (its -m flags). */

/* ---- 16 float lanes: one zmm, two ymm, or a plain array ------------------------------ */
/* v_exp2(y): 2^y for y <= 0 (the shifted base-2 scores): 2^n times the degree-6 Taylor
 * polynomial of e^(f ln 2), n = round(y), |f| <= 1/2. Relative error at most 2.3e-7 for
 * y in [-100, 0] (30 M evenly spaced points against exp2 in double); -inf and anything
 * below about -126 (AVX2) / -149 (AVX-512) give 0, and 0 gives exactly 1. */
#define EXP2_POLY(FMA, SET1, f) \
    FMA(FMA(FMA(FMA(FMA(FMA(SET1(1.5403530393381606e-4f), f, SET1(1.3333558146428441e-3f)), f, \
    SET1(9.618129107628477e-3f)), f, SET1(5.5504108664821576e-2f)), f, SET1(0.2402265069591007f)), \
    f, SET1(0.6931471805599453f)), f, SET1(1.0f))
#if defined(__AVX512F__)
typedef struct { __m512 a; } v16;
INLINE v16 v_load(const float *p) { return (v16){_mm512_loadu_ps(p)}; }
INLINE void v_store(float *p, v16 x) { _mm512_storeu_ps(p, x.a); }
INLINE v16 v_set1(float f) { return (v16){_mm512_set1_ps(f)}; }
INLINE v16 v_fma(v16 a, v16 b, v16 c) { return (v16){_mm512_fmadd_ps(a.a, b.a, c.a)}; }
INLINE v16 v_mul(v16 a, v16 b) { return (v16){_mm512_mul_ps(a.a, b.a)}; }
INLINE v16 v_add(v16 a, v16 b) { return (v16){_mm512_add_ps(a.a, b.a)}; }
INLINE v16 v_sub(v16 a, v16 b) { return (v16){_mm512_sub_ps(a.a, b.a)}; }
INLINE v16 v_max(v16 a, v16 b) { return (v16){_mm512_max_ps(a.a, b.a)}; }
INLINE float v_hmax(v16 a) { return _mm512_reduce_max_ps(a.a); }
INLINE float v_hsum(v16 a) { return _mm512_reduce_add_ps(a.a); }
INLINE v16 v_exp2(v16 y) {
    __m512 t = _mm512_max_ps(y.a, _mm512_set1_ps(-160.0f));  /* 2^-160 rounds to 0 below */
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    return (v16){_mm512_scalef_ps(EXP2_POLY(_mm512_fmadd_ps, _mm512_set1_ps, f), n)};
}
#elif defined(__AVX2__)
typedef struct { __m256 a, b; } v16;
INLINE v16 v_load(const float *p) { return (v16){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
INLINE void v_store(float *p, v16 x) { _mm256_storeu_ps(p, x.a); _mm256_storeu_ps(p + 8, x.b); }
INLINE v16 v_set1(float f) { return (v16){_mm256_set1_ps(f), _mm256_set1_ps(f)}; }
INLINE v16 v_fma(v16 a, v16 b, v16 c) {
    return (v16){_mm256_fmadd_ps(a.a, b.a, c.a), _mm256_fmadd_ps(a.b, b.b, c.b)};
}
INLINE v16 v_mul(v16 a, v16 b) { return (v16){_mm256_mul_ps(a.a, b.a), _mm256_mul_ps(a.b, b.b)}; }
INLINE v16 v_add(v16 a, v16 b) { return (v16){_mm256_add_ps(a.a, b.a), _mm256_add_ps(a.b, b.b)}; }
INLINE v16 v_sub(v16 a, v16 b) { return (v16){_mm256_sub_ps(a.a, b.a), _mm256_sub_ps(a.b, b.b)}; }
INLINE v16 v_max(v16 a, v16 b) { return (v16){_mm256_max_ps(a.a, b.a), _mm256_max_ps(a.b, b.b)}; }
INLINE float h8max(__m256 x) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}
INLINE float h8sum(__m256 x) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
INLINE float v_hmax(v16 x) { return h8max(_mm256_max_ps(x.a, x.b)); }
INLINE float v_hsum(v16 x) { return h8sum(_mm256_add_ps(x.a, x.b)); }
INLINE __m256 exp2_8(__m256 y) {
    __m256 t = _mm256_max_ps(y, _mm256_set1_ps(-126.0f));
    __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 p = EXP2_POLY(_mm256_fmadd_ps, _mm256_set1_ps, _mm256_sub_ps(t, n));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 r = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    /* t at the clamp: the true value is below 2^-126 (a masked key gives -inf): 0 */
    return _mm256_and_ps(r, _mm256_cmp_ps(t, _mm256_set1_ps(-126.0f), _CMP_GT_OQ));
}
INLINE v16 v_exp2(v16 y) { return (v16){exp2_8(y.a), exp2_8(y.b)}; }
#else
typedef struct { float a[16]; } v16;
INLINE v16 v_load(const float *p) { v16 r; memcpy(r.a, p, sizeof r.a); return r; }
INLINE void v_store(float *p, v16 x) { memcpy(p, x.a, sizeof x.a); }
INLINE v16 v_set1(float f) { v16 r; for (int i = 0; i < 16; i++) r.a[i] = f; return r; }
INLINE v16 v_fma(v16 a, v16 b, v16 c) { for (int i = 0; i < 16; i++) c.a[i] += a.a[i] * b.a[i]; return c; }
INLINE v16 v_mul(v16 a, v16 b) { for (int i = 0; i < 16; i++) a.a[i] *= b.a[i]; return a; }
INLINE v16 v_add(v16 a, v16 b) { for (int i = 0; i < 16; i++) a.a[i] += b.a[i]; return a; }
INLINE v16 v_sub(v16 a, v16 b) { for (int i = 0; i < 16; i++) a.a[i] -= b.a[i]; return a; }
INLINE v16 v_max(v16 a, v16 b) { for (int i = 0; i < 16; i++) a.a[i] = b.a[i] > a.a[i] ? b.a[i] : a.a[i]; return a; }
INLINE float v_hmax(v16 x) { float m = x.a[0]; for (int i = 1; i < 16; i++) m = x.a[i] > m ? x.a[i] : m; return m; }
INLINE float v_hsum(v16 x) { float s = 0; for (int i = 0; i < 16; i++) s += x.a[i]; return s; }
INLINE v16 v_exp2(v16 y) { for (int i = 0; i < 16; i++) y.a[i] = exp2f(y.a[i]); return y; }
#endif

/* ---- one block's keys and values as float32: K^T (d, BK), V (BK, d) ------------------- */
/* dst[c] = src[c] widened (bfloat16 is the top half of a float32), d a multiple of 16 */
static void widen_bf16(const uint16_t *src, float *dst, int d) {
    for (int c = 0; c < d; c += 16) {
#if defined(__AVX512F__)
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + c)));
        _mm512_storeu_ps(dst + c, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
#elif defined(__AVX2__)
        for (int h = 0; h < 16; h += 8) {
            __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + c + h)));
            _mm256_storeu_ps(dst + c + h, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
#else
        for (int i = 0; i < 16; i++) {
            uint32_t u = (uint32_t)src[c + i] << 16;
            memcpy(dst + c + i, &u, 4);
        }
#endif
    }
}

/* kt[i * ld + j] = rows[j][c + i] for i, j < 16 (rows[j] NULL: zeros): a 16 x 16 transpose */
#if defined(__AVX512F__)
static inline void transpose16(const float *const *rows, int c, float *kt, int ld) {
    __m512 r[16], t[16];  /* in registers: pairs, then quads, then 128-bit lanes */
    for (int j = 0; j < 16; j++) r[j] = rows[j] ? _mm512_loadu_ps(rows[j] + c) : _mm512_setzero_ps();
    for (int j = 0; j < 16; j += 2) {
        t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
        t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
    }
    for (int j = 0; j < 16; j += 4) {  /* r[j + i]: column (4 lane + i) of rows j .. j+3 */
        __m512d a = _mm512_castps_pd(t[j]), b = _mm512_castps_pd(t[j + 2]);
        __m512d e = _mm512_castps_pd(t[j + 1]), f = _mm512_castps_pd(t[j + 3]);
        r[j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(e, f));
        r[j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(e, f));
    }
    for (int i = 0; i < 4; i++) {
        __m512 va = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x44), vb = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xEE);
        __m512 wa = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x44), wb = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xEE);
        _mm512_storeu_ps(kt + (int64_t)i * ld, _mm512_shuffle_f32x4(va, wa, 0x88));
        _mm512_storeu_ps(kt + (int64_t)(4 + i) * ld, _mm512_shuffle_f32x4(va, wa, 0xDD));
        _mm512_storeu_ps(kt + (int64_t)(8 + i) * ld, _mm512_shuffle_f32x4(vb, wb, 0x88));
        _mm512_storeu_ps(kt + (int64_t)(12 + i) * ld, _mm512_shuffle_f32x4(vb, wb, 0xDD));
    }
}
#elif defined(__AVX2__)
static inline void transpose16(const float *const *rows, int c, float *kt, int ld) {
    for (int half = 0; half < 2; half++)  /* two 8 x 8 transposes per 8 keys */
        for (int cb = 0; cb < 16; cb += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) {
                const float *p = rows[8 * half + j];
                r[j] = p ? _mm256_loadu_ps(p + c + cb) : _mm256_setzero_ps();
            }
            transpose8x8(r);
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(kt + (int64_t)(cb + i) * ld + 8 * half, r[i]);
        }
}
#else
static inline void transpose16(const float *const *rows, int c, float *kt, int ld) {
    for (int j = 0; j < 16; j++)
        for (int i = 0; i < 16; i++) kt[(int64_t)i * ld + j] = rows[j] ? rows[j][c + i] : 0.0f;
}
#endif
