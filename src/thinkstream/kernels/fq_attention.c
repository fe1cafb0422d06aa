/* Fused attention for a few queries over a paged KV cache: scores, softmax and the value
 * product in one pass over the keys, without writing the scores out (the online softmax of
 * flash attention: a running max m, sum l and output acc per query row, rescaled when m
 * grows). For decode rows and short chunks after a long context, where the unfused path
 * (gather, matmul, masked_fill, softmax, matmul) writes and rereads an (H, Q, L) score
 * tensor and pays a dozen op dispatches per layer.
 *
 *   for each (sequence b, key/value head h):              (OpenMP over these pairs)
 *     rows = the G query heads of h x the nq queries of b
 *     for each tile of TK = 16 keys (slots[b, t0 .. t0+15]):
 *       K^T tile (D, 16) and V tile (16, D) copied as float32 (bfloat16 caches widened)
 *       for each row r:  s = scale * q_r K^T, masked keys -inf      (16 scores, vectors)
 *                        m' = max(m, max s);  p = exp(s - m')
 *                        l = l e^(m - m') + sum p;  acc = acc e^(m - m') + p V;  m = m'
 *     out_r = acc / l
 *
 * float32 arithmetic throughout (q, keys, values, sums). Built like gguf_matmul.c: one
 * source, three builds (AVX-512 / AVX2 / portable) chosen by thinkstream/kernels/attention.py. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define TK 16
/* query rows per pass over a tile: their scores and outputs live in registers (12 x 16
 * lanes fit AVX-512's 32 registers; 4 fit AVX2's 16 as two halves each). A chunk's 16 queries
 * x 3 heads per key/value head run as 4 passes of 12 instead of 12 of 4: 27% less time at
 * 4,096 keys (fewer loads of each key and value per multiply-add). */
#if defined(__AVX512F__)
#define RMAX 12
#else
#define RMAX 4
#endif

int fq_isa(void) {
#if defined(__AVX512F__)
    return 2;
#elif defined(__AVX2__)
    return 1;
#else
    return 0;
#endif
}

/* ---- 16 float lanes: one zmm, two ymm, or a plain array ------------------------------ */
#if defined(__AVX512F__)
typedef struct { __m512 a; } v16;
static inline v16 v_load(const float *p) { return (v16){_mm512_loadu_ps(p)}; }
static inline void v_store(float *p, v16 x) { _mm512_storeu_ps(p, x.a); }
static inline v16 v_set1(float f) { return (v16){_mm512_set1_ps(f)}; }
static inline v16 v_fma(v16 a, v16 b, v16 c) { return (v16){_mm512_fmadd_ps(a.a, b.a, c.a)}; }
static inline v16 v_mul(v16 a, v16 b) { return (v16){_mm512_mul_ps(a.a, b.a)}; }
static inline v16 v_sub(v16 a, v16 b) { return (v16){_mm512_sub_ps(a.a, b.a)}; }
static inline float v_hmax(v16 a) { return _mm512_reduce_max_ps(a.a); }
static inline float v_hsum(v16 a) { return _mm512_reduce_add_ps(a.a); }
/* exp(y) for y <= 0 (the shifted scores), relative error < 3e-6; -inf -> 0 */
static inline v16 v_exp(v16 y) {
    __m512 t = _mm512_max_ps(_mm512_mul_ps(y.a, _mm512_set1_ps(1.4426950408889634f)), _mm512_set1_ps(-160.0f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 z = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.6931471805599453f));
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f));
    return (v16){_mm512_scalef_ps(p, n)};
}
#elif defined(__AVX2__)
typedef struct { __m256 a, b; } v16;
static inline v16 v_load(const float *p) { return (v16){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline void v_store(float *p, v16 x) { _mm256_storeu_ps(p, x.a); _mm256_storeu_ps(p + 8, x.b); }
static inline v16 v_set1(float f) { return (v16){_mm256_set1_ps(f), _mm256_set1_ps(f)}; }
static inline v16 v_fma(v16 a, v16 b, v16 c) {
    return (v16){_mm256_fmadd_ps(a.a, b.a, c.a), _mm256_fmadd_ps(a.b, b.b, c.b)};
}
static inline v16 v_mul(v16 a, v16 b) { return (v16){_mm256_mul_ps(a.a, b.a), _mm256_mul_ps(a.b, b.b)}; }
static inline v16 v_sub(v16 a, v16 b) { return (v16){_mm256_sub_ps(a.a, b.a), _mm256_sub_ps(a.b, b.b)}; }
static inline float h8max(__m256 x) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}
static inline float h8sum(__m256 x) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
static inline float v_hmax(v16 x) { return h8max(_mm256_max_ps(x.a, x.b)); }
static inline float v_hsum(v16 x) { return h8sum(_mm256_add_ps(x.a, x.b)); }
static inline __m256 exp8(__m256 y) {
    __m256 t = _mm256_max_ps(_mm256_mul_ps(y, _mm256_set1_ps(1.4426950408889634f)), _mm256_set1_ps(-126.0f));
    __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 z = _mm256_mul_ps(_mm256_sub_ps(t, n), _mm256_set1_ps(0.6931471805599453f));
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 r = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    /* t at the clamp: the true value is below 2^-126 (a masked key gives -inf): 0 */
    return _mm256_and_ps(r, _mm256_cmp_ps(t, _mm256_set1_ps(-126.0f), _CMP_GT_OQ));
}
static inline v16 v_exp(v16 y) { return (v16){exp8(y.a), exp8(y.b)}; }
#else
typedef struct { float a[16]; } v16;
static inline v16 v_load(const float *p) { v16 r; memcpy(r.a, p, sizeof r.a); return r; }
static inline void v_store(float *p, v16 x) { memcpy(p, x.a, sizeof x.a); }
static inline v16 v_set1(float f) { v16 r; for (int i = 0; i < 16; i++) r.a[i] = f; return r; }
static inline v16 v_fma(v16 a, v16 b, v16 c) { for (int i = 0; i < 16; i++) c.a[i] += a.a[i] * b.a[i]; return c; }
static inline v16 v_mul(v16 a, v16 b) { for (int i = 0; i < 16; i++) a.a[i] *= b.a[i]; return a; }
static inline v16 v_sub(v16 a, v16 b) { for (int i = 0; i < 16; i++) a.a[i] -= b.a[i]; return a; }
static inline float v_hmax(v16 x) { float m = x.a[0]; for (int i = 1; i < 16; i++) m = x.a[i] > m ? x.a[i] : m; return m; }
static inline float v_hsum(v16 x) { float s = 0; for (int i = 0; i < 16; i++) s += x.a[i]; return s; }
static inline v16 v_exp(v16 y) { for (int i = 0; i < 16; i++) y.a[i] = expf(y.a[i]); return y; }
#endif

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#if defined(__AVX512F__)
/* kt[c * TK + j] = rows[j][c] for c < 16, j < 16 (rows[j] NULL: zeros): a 16 x 16 transpose
 * in registers (pairs, then quads, then 128-bit lanes). */
static inline void transpose_block(const float *const *rows, float *kt) {
    __m512 r[16], t[16];
    for (int j = 0; j < 16; j++) r[j] = rows[j] ? _mm512_loadu_ps(rows[j]) : _mm512_setzero_ps();
    for (int j = 0; j < 16; j += 2) {
        t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
        t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
    }
    for (int j = 0; j < 16; j += 4) {  /* r[j + i]: column (4 lane + i) of rows j .. j+3 */
        __m512d a = _mm512_castps_pd(t[j]), b = _mm512_castps_pd(t[j + 2]);
        __m512d c = _mm512_castps_pd(t[j + 1]), e = _mm512_castps_pd(t[j + 3]);
        r[j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, e));
        r[j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, e));
    }
    for (int i = 0; i < 4; i++) {
        __m512 va = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x44), vb = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xEE);
        __m512 wa = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x44), wb = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xEE);
        _mm512_storeu_ps(kt + (int64_t)i * TK, _mm512_shuffle_f32x4(va, wa, 0x88));
        _mm512_storeu_ps(kt + (int64_t)(4 + i) * TK, _mm512_shuffle_f32x4(va, wa, 0xDD));
        _mm512_storeu_ps(kt + (int64_t)(8 + i) * TK, _mm512_shuffle_f32x4(vb, wb, 0x88));
        _mm512_storeu_ps(kt + (int64_t)(12 + i) * TK, _mm512_shuffle_f32x4(vb, wb, 0xDD));
    }
}
#elif defined(__AVX2__)
/* the same with two 8 x 8 transposes per 16 x 16 block (keys 0..7, then 8..15) */
static inline void transpose_block(const float *const *rows, float *kt) {
    for (int half = 0; half < 2; half++)
        for (int cb = 0; cb < 16; cb += 8) {
            __m256 r[8], t[8], u[8];
            for (int j = 0; j < 8; j++) {
                const float *p = rows[8 * half + j];
                r[j] = p ? _mm256_loadu_ps(p + cb) : _mm256_setzero_ps();
            }
            for (int j = 0; j < 8; j += 2) {
                t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
                t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
            }
            for (int j = 0; j < 8; j += 4) {
                u[j] = _mm256_shuffle_ps(t[j], t[j + 2], 0x44);
                u[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], 0xEE);
                u[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0x44);
                u[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0xEE);
            }
            for (int i = 0; i < 4; i++) {
                _mm256_storeu_ps(kt + (int64_t)(cb + i) * TK + 8 * half, _mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
                _mm256_storeu_ps(kt + (int64_t)(cb + 4 + i) * TK + 8 * half, _mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
            }
        }
}
#endif

/* keys slots[0..nk) of head h -> kt (d, TK) transposed, vt (TK, d); float32; padded with 0 */
static void load_tile(const void *kc, const void *vc, int bf16, int64_t slot_stride, int64_t head_off,
                      const int64_t *slots, int nk, int d, float *kt, float *vt) {
#if defined(__AVX2__)
    if (!bf16) {  /* float32 cache: keys transposed in registers, 16 columns at a time */
        const float *rows[TK];
        for (int j = 0; j < TK; j++) {
            float *vrow = vt + (int64_t)j * d;
            rows[j] = j < nk ? (const float *)kc + slots[j] * slot_stride + head_off : NULL;
            if (j < nk) memcpy(vrow, (const float *)vc + slots[j] * slot_stride + head_off, sizeof(float) * d);
            else memset(vrow, 0, sizeof(float) * d);
        }
        for (int c = 0; c < d; c += 16) {
            const float *cols[TK];
            for (int j = 0; j < TK; j++) cols[j] = rows[j] ? rows[j] + c : NULL;
            transpose_block(cols, kt + (int64_t)c * TK);
        }
        return;
    }
#endif
    float kb[TK * 256];  /* the keys as rows (d <= 256 here; longer heads go through kt directly) */
    int direct = d > 256;
    for (int j = 0; j < TK; j++) {
        float *vrow = vt + (int64_t)j * d, *krow = direct ? NULL : kb + (int64_t)j * d;
        if (j >= nk) {
            memset(vrow, 0, sizeof(float) * d);
            if (direct) for (int c = 0; c < d; c++) kt[(int64_t)c * TK + j] = 0.0f;
            else memset(krow, 0, sizeof(float) * d);
            continue;
        }
        int64_t off = slots[j] * slot_stride + head_off;
        if (bf16) {
            const uint16_t *kr = (const uint16_t *)kc + off, *vr = (const uint16_t *)vc + off;
            for (int c = 0; c < d; c++) vrow[c] = bf16_to_float(vr[c]);
            if (direct) for (int c = 0; c < d; c++) kt[(int64_t)c * TK + j] = bf16_to_float(kr[c]);
            else for (int c = 0; c < d; c++) krow[c] = bf16_to_float(kr[c]);
        } else {
            const float *kr = (const float *)kc + off, *vr = (const float *)vc + off;
            memcpy(vrow, vr, sizeof(float) * d);
            if (direct) for (int c = 0; c < d; c++) kt[(int64_t)c * TK + j] = kr[c];
            else memcpy(krow, kr, sizeof(float) * d);
        }
    }
    if (!direct)
        for (int c = 0; c < d; c++)
            for (int j = 0; j < TK; j++) kt[(int64_t)c * TK + j] = kb[(int64_t)j * d + c];
}

static const uint64_t ALL_VISIBLE = 0x0101010101010101ull;

/* Is every one of the 16 mask bytes at mk (bool: 0 or 1) set? */
static inline int tile_visible(const uint8_t *mk) {
    uint64_t a, b;
    memcpy(&a, mk, 8);
    memcpy(&b, mk + 8, 8);
    return a == ALL_VISIBLE && b == ALL_VISIBLE;
}

/* Rows r0 .. r0+R-1 (R <= RMAX, a constant after inlining) against one tile of nk keys. */
static inline __attribute__((always_inline)) void tile_rows(
        const float *const *qrows, const uint8_t *const *mrows, int r0, const int R, int64_t t0,
        int nk, int d, float scale, const float *kt, const float *vt, float *acc, float *m, float *l) {
    v16 sc[RMAX];
    for (int r = 0; r < R; r++) sc[r] = v_set1(0.0f);
    for (int c = 0; c < d; c++) {
        v16 k = v_load(kt + (int64_t)c * TK);
        for (int r = 0; r < R; r++) sc[r] = v_fma(v_set1(qrows[r0 + r][c]), k, sc[r]);
    }
    float p[RMAX][TK], corr[RMAX];
    for (int r = 0; r < R; r++) {
        v16 sv = v_mul(sc[r], v_set1(scale));
        const uint8_t *mk = mrows[r0 + r] + t0;
        if (nk < TK || !tile_visible(mk)) {
            float s[TK];
            v_store(s, sv);
            for (int j = 0; j < TK; j++)
                if (j >= nk || !mk[j]) s[j] = -INFINITY;
            sv = v_load(s);
        }
        float tmax = v_hmax(sv), mold = m[r0 + r];
        float mnew = tmax > mold ? tmax : mold;
        if (mnew == -INFINITY) {  /* nothing visible yet: p = 0, acc unchanged */
            corr[r] = 1.0f;
            memset(p[r], 0, sizeof p[r]);
            continue;
        }
        corr[r] = mold == -INFINITY ? 0.0f : expf(mold - mnew);
        v16 e = v_exp(v_sub(sv, v_set1(mnew)));
        v_store(p[r], e);
        l[r0 + r] = l[r0 + r] * corr[r] + v_hsum(e);
        m[r0 + r] = mnew;
    }
    for (int c = 0; c < d; c += 16) {
        v16 x[RMAX];
        for (int r = 0; r < R; r++) x[r] = v_mul(v_load(acc + (int64_t)(r0 + r) * d + c), v_set1(corr[r]));
        for (int j = 0; j < nk; j++) {
            v16 v = v_load(vt + (int64_t)j * d + c);
            for (int r = 0; r < R; r++) x[r] = v_fma(v_set1(p[r][j]), v, x[r]);
        }
        for (int r = 0; r < R; r++) v_store(acc + (int64_t)(r0 + r) * d + c, x[r]);
    }
}

/* One (sequence, kv head): ``rows`` query rows (pointers into q / out), their mask rows. */
static void attend_head(const float *const *qrows, float *const *orows, const uint8_t *const *mrows,
                        int rows, const void *kc, const void *vc, int bf16, int64_t slot_stride,
                        int64_t head_off, const int64_t *slots, int64_t length, int d, float scale,
                        float *kt, float *vt, float *acc, float *m, float *l) {
    for (int r = 0; r < rows; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    memset(acc, 0, sizeof(float) * (size_t)rows * d);
    for (int64_t t0 = 0; t0 < length; t0 += TK) {
        int nk = length - t0 < TK ? (int)(length - t0) : TK;
        load_tile(kc, vc, bf16, slot_stride, head_off, slots + t0, nk, d, kt, vt);
        int r0 = 0;
#if RMAX >= 12
        for (; r0 + 12 <= rows; r0 += 12) tile_rows(qrows, mrows, r0, 12, t0, nk, d, scale, kt, vt, acc, m, l);
        if (rows - r0 >= 8) { tile_rows(qrows, mrows, r0, 8, t0, nk, d, scale, kt, vt, acc, m, l); r0 += 8; }
#endif
        for (; r0 + 4 <= rows; r0 += 4) tile_rows(qrows, mrows, r0, 4, t0, nk, d, scale, kt, vt, acc, m, l);
        switch (rows - r0) {
        case 3: tile_rows(qrows, mrows, r0, 3, t0, nk, d, scale, kt, vt, acc, m, l); break;
        case 2: tile_rows(qrows, mrows, r0, 2, t0, nk, d, scale, kt, vt, acc, m, l); break;
        case 1: tile_rows(qrows, mrows, r0, 1, t0, nk, d, scale, kt, vt, acc, m, l); break;
        default: break;
        }
    }
    for (int r = 0; r < rows; r++) {
        float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        for (int c = 0; c < d; c++) orows[r][c] = acc[(int64_t)r * d + c] * inv;
    }
}

/* q, out: (B, nq, H, d) float32 contiguous. slots: (B, L) int64, row stride slot_b_stride.
 * mask: uint8, element (b, i, j) at b * mask_b + i * mask_q + j (nonzero: visible).
 * Caches: (num_slots, KVH, d), float32 (bf16 == 0) or bfloat16. d a multiple of 16.
 * Returns 0, -1 on bad shapes, -2 when out of memory. */
int fq_attention(const float *q, float *out, int64_t b_count, int64_t nq, int64_t h, int64_t kvh,
                 int64_t d, const void *kc, const void *vc, int bf16, const int64_t *slots,
                 int64_t slot_b_stride, int64_t length, const uint8_t *mask, int64_t mask_b,
                 int64_t mask_q, float scale, int threads) {
    if (d % 16 || h % kvh || d <= 0 || length < 0) return -1;
    int64_t g = h / kvh, rows = g * nq, pairs = b_count * kvh;
    int failed = 0;
    if (threads < 1) threads = 1;
    if (threads > pairs) threads = (int)(pairs > 0 ? pairs : 1);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        size_t floats = (size_t)(2 * TK * d + rows * d + 2 * rows);
        float *buf = aligned_alloc(64, (floats * 4 + 63) / 64 * 64);
        const float **qrows = malloc(sizeof(float *) * (size_t)rows);
        float **orows = malloc(sizeof(float *) * (size_t)rows);
        const uint8_t **mrows = malloc(sizeof(uint8_t *) * (size_t)rows);
        if (!buf || !qrows || !orows || !mrows) {
#pragma omp atomic write
            failed = 1;
        } else {
            float *kt = buf, *vt = kt + TK * d, *acc = vt + TK * d, *m = acc + rows * d, *l = m + rows;
#pragma omp for schedule(static)
            for (int64_t pair = 0; pair < pairs; pair++) {
                int64_t b = pair / kvh, hk = pair % kvh;
                for (int64_t i = 0; i < nq; i++)
                    for (int64_t gi = 0; gi < g; gi++) {
                        int64_t r = i * g + gi, off = ((b * nq + i) * h + hk * g + gi) * d;
                        qrows[r] = q + off;
                        orows[r] = out + off;
                        mrows[r] = mask + b * mask_b + i * mask_q;
                    }
                attend_head(qrows, orows, mrows, (int)rows, kc, vc, bf16, kvh * d, hk * d,
                            slots + b * slot_b_stride, length, (int)d, scale, kt, vt, acc, m, l);
            }
        }
        free(buf);
        free(qrows);
        free(orows);
        free(mrows);
    }
    return failed ? -2 : 0;
}
