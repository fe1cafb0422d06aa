/* Fused attention for a few queries over a paged KV cache: scores, softmax and the value
 * product in one pass over the keys, without writing the scores out (the online softmax of
 * flash attention, FlashAttention-2's loop order: a running max m, sum l and output acc per
 * query row, rescaled when m grows). For decode rows and short chunks after a long context,
 * where the unfused path (gather, matmul, masked_fill, softmax, matmul) writes and rereads an
 * (H, Q, L) score tensor and pays a dozen op dispatches per layer.
 *
 *   for each (sequence b, key/value head h):              (OpenMP over these pairs)
 *     rows = the G query heads of h x the nq queries of b, q pre-scaled by scale * log2(e)
 *     for each block of BK = 64 keys (slots[b, t0 .. t0+63]) some row sees:
 *       K^T (D, 64) and V (64, D) copied as float32 (bfloat16 caches widened)
 *       for each group of RS rows:
 *         S = Q K^T        (RS x 64: a register-blocked GEMM, RS rows x 16 CS keys at a time)
 *         per row: masked keys -inf; m' = max(m, max s); p = 2^(s - m') (base 2: the scale
 *                  folded log2(e) in); c = 2^(m - m') (1, no exp, when m did not grow);
 *                  l = l c + sum p;  m = m'
 *         acc = acc c + P V  (RS rows x 16 CD dims of acc in registers; p broadcast, V loaded)
 *     out_r = acc / l
 *
 * One softmax update and one rescale of the accumulators per 64 keys (the first version did
 * them per 16 keys: as much work as the 128 multiply-adds per row and tile) and RS rows
 * sharing each key and value load: at 54 rows x 4,096 keys it runs near the FMA peak.
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

#define TK 16  /* keys per transposed tile (one vector of 16 lanes) */
#define BK 64  /* keys per block: one softmax update per row and block */
/* Register blocking (in 16-lane vectors): RS rows x CS key vectors of scores, RS rows x CD
 * head-dimension vectors of the output. AVX-512: 24 accumulators of its 32 registers;
 * AVX2 (two ymm per 16 lanes, 16 registers): 8. */
#if defined(__AVX512F__)
#define RS 6
#define CS 4
#define CD 4
#else
#define RS 4
#define CS 1
#define CD 1
#endif
#ifndef PF_HINT
#define PF_HINT 2
#endif
#ifndef PF_AHEAD
#define PF_AHEAD 1
#endif
#define INLINE static inline __attribute__((always_inline))

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
/* v_exp2(y): 2^y for y <= 0 (the shifted base-2 scores): 2^n times the degree-6 Taylor
 * polynomial of e^(f ln 2), |f| <= 1/2: relative error < 3e-7 (tests/unit/
 * test_fused_attention.py); -inf -> 0. */
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
            __m256 r[8], t[8], u[8];
            for (int j = 0; j < 8; j++) {
                const float *p = rows[8 * half + j];
                r[j] = p ? _mm256_loadu_ps(p + c + cb) : _mm256_setzero_ps();
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
                _mm256_storeu_ps(kt + (int64_t)(cb + i) * ld + 8 * half, _mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
                _mm256_storeu_ps(kt + (int64_t)(cb + 4 + i) * ld + 8 * half, _mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
            }
        }
}
#else
static inline void transpose16(const float *const *rows, int c, float *kt, int ld) {
    for (int j = 0; j < 16; j++)
        for (int i = 0; i < 16; i++) kt[(int64_t)i * ld + j] = rows[j] ? rows[j][c + i] : 0.0f;
}
#endif

typedef struct {  /* where a (sequence, key/value head)'s keys and values lie */
    const void *kc, *vc;  /* caches (num_slots, KVH, d) */
    int bf16;
    int64_t slot_stride, head_off;  /* elements */
    const int64_t *slots;  /* this sequence's, (length,) */
} kv_src;

/* keys slots[t0 .. t0+nk) -> kt (d, BK), vt (BK, d), float32, zero past nk; kb: (TK, d)
 * scratch for the widened bfloat16 keys */
static void load_block(const kv_src *src, int64_t t0, int nk, int d, float *kt, float *vt, float *kb) {
    for (int j0 = 0; j0 < BK; j0 += TK) {
        const float *rows[TK];
        for (int j = 0; j < TK; j++) {
            float *vrow = vt + (int64_t)(j0 + j) * d;
            rows[j] = NULL;
            if (j0 + j >= nk) {
                memset(vrow, 0, sizeof(float) * d);
                continue;
            }
            int64_t off = src->slots[t0 + j0 + j] * src->slot_stride + src->head_off;
            if (src->bf16) {
                widen_bf16((const uint16_t *)src->vc + off, vrow, d);
                widen_bf16((const uint16_t *)src->kc + off, kb + (int64_t)j * d, d);
                rows[j] = kb + (int64_t)j * d;
            } else {
                memcpy(vrow, (const float *)src->vc + off, sizeof(float) * d);
                rows[j] = (const float *)src->kc + off;
            }
        }
        for (int c = 0; c < d; c += 16) transpose16(rows, c, kt + (int64_t)c * BK + j0, BK);
    }
}

/* the cache lines of keys and values slots[t0 .. t0+nk), on their way while a block computes */
static void prefetch_block(const kv_src *src, int64_t t0, int nk, int d) {
    int64_t elt = src->bf16 ? 2 : 4;
    for (int j = 0; j < nk; j++) {
        int64_t off = (src->slots[t0 + j] * src->slot_stride + src->head_off) * elt;
        for (int64_t b = 0; b < d * elt; b += 64) {
            __builtin_prefetch((const char *)src->kc + off + b, 0, PF_HINT);
            __builtin_prefetch((const char *)src->vc + off + b, 0, PF_HINT);
        }
    }
}

/* ---- the rows against one block -------------------------------------------------------- */
typedef struct {  /* one thread's scratch for one (sequence, key/value head) */
    float *kt, *vt, *kb;  /* (d, BK), (BK, d), (TK, d) */
    float *qs, *acc, *m, *lv;  /* (rows, d) scaled queries, (rows, d) outputs, (rows,) running
                                  max, (rows, 16) running sums per lane */
    float *s;  /* (RS, BK) one group's scores, then probabilities */
    uint8_t *vis;  /* (rows,) the block's keys each row sees: 0 none, 1 some, 2 all */
} scratch;

static const uint64_t ALL_VISIBLE = 0x0101010101010101ull;

/* 0 if none of mk[0 .. nk) (bool bytes) is set, 2 if all are and nk == BK, else 1 */
static int block_vis(const uint8_t *mk, int nk) {
    uint64_t every = ALL_VISIBLE, any = 0;
    int j = 0;
    for (; j + 8 <= nk; j += 8) {
        uint64_t w;
        memcpy(&w, mk + j, 8);
        every &= w;
        any |= w;
    }
    int some = any != 0, all = every == ALL_VISIBLE && nk == BK;
    for (; j < nk; j++) some |= mk[j];
    return !some ? 0 : all ? 2 : 1;
}

/* s (R, BK) = qs (R rows, row stride d) . kt (d, BK), the key vectors up to ``kend`` */
INLINE void scores(const float *qs, int d, const float *kt, int kend, const int R, float *s) {
    for (int k0 = 0; k0 < kend; k0 += 16 * CS) {
        v16 acc[RS][CS];
        for (int r = 0; r < R; r++)
            for (int t = 0; t < CS; t++) acc[r][t] = v_set1(0.0f);
        for (int c = 0; c < d; c++) {
            v16 k[CS];
            for (int t = 0; t < CS; t++) k[t] = v_load(kt + (int64_t)c * BK + k0 + 16 * t);
            for (int r = 0; r < R; r++) {
                v16 q = v_set1(qs[(int64_t)r * d + c]);
                for (int t = 0; t < CS; t++) acc[r][t] = v_fma(q, k[t], acc[r][t]);
            }
        }
        for (int r = 0; r < R; r++)
            for (int t = 0; t < CS; t++) v_store(s + r * BK + k0 + 16 * t, acc[r][t]);
    }
}

/* One row's online-softmax update: scores s (BK,) -> probabilities in place; m, lv (16,)
 * updated. Returns the factor for the row's accumulators. mk: the row's mask at the block. */
static float softmax_row(float *s, const uint8_t *mk, int vis, int nk, float *m, float *lv) {
    if (vis != 2)
        for (int j = 0; j < BK; j++)
            if (j >= nk || !mk[j]) s[j] = -INFINITY;
    v16 mx = v_load(s);
    for (int t = 16; t < BK; t += 16) mx = v_max(mx, v_load(s + t));
    float bmax = v_hmax(mx), mold = *m, mnew = bmax > mold ? bmax : mold;
    if (mnew == -INFINITY) {  /* nothing visible yet: p = 0, acc unchanged */
        memset(s, 0, sizeof(float) * BK);
        return 1.0f;
    }
    v16 sum = v_set1(0.0f), top = v_set1(mnew);
    for (int t = 0; t < BK; t += 16) {
        v16 p = v_exp2(v_sub(v_load(s + t), top));
        v_store(s + t, p);
        sum = v_add(sum, p);
    }
    float corr = mnew == mold ? 1.0f : exp2f(mold - mnew);  /* mold -inf: 0 */
    v_store(lv, v_fma(v_load(lv), v_set1(corr), sum));
    *m = mnew;
    return corr;
}

/* acc (R rows, stride d) columns c0 .. c0 + 16 C = acc * corr + p (R, BK) . vt (nk, d) */
INLINE void values(const float *p, const float *vt, int d, int c0, int nk, const int R, const int C,
                   const float *corr, float *acc) {
    v16 x[RS][CD];
    for (int r = 0; r < R; r++) {
        v16 cr = v_set1(corr[r]);
        for (int u = 0; u < C; u++) x[r][u] = v_mul(v_load(acc + (int64_t)r * d + c0 + 16 * u), cr);
    }
    for (int j = 0; j < nk; j++) {
        v16 v[CD];
        for (int u = 0; u < C; u++) v[u] = v_load(vt + (int64_t)j * d + c0 + 16 * u);
        for (int r = 0; r < R; r++) {
            v16 pj = v_set1(p[r * BK + j]);
            for (int u = 0; u < C; u++) x[r][u] = v_fma(pj, v[u], x[r][u]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int u = 0; u < C; u++) v_store(acc + (int64_t)r * d + c0 + 16 * u, x[r][u]);
}

/* Rows r0 .. r0+R-1 (R <= RS, a constant after inlining) against the loaded block. */
INLINE void group(const scratch *w, const uint8_t *const *mrows, int r0, const int R, int64_t t0,
                  int nk, int d) {
    int any = 0;
    for (int r = 0; r < R; r++) any |= w->vis[r0 + r];
    if (!any) return;
    int kend = (nk + 16 * CS - 1) / (16 * CS) * (16 * CS);
    scores(w->qs + (int64_t)r0 * d, d, w->kt, kend, R, w->s);
    float corr[RS];
    for (int r = 0; r < R; r++)
        corr[r] = softmax_row(w->s + r * BK, mrows[r0 + r] + t0, w->vis[r0 + r], nk, w->m + r0 + r,
                              w->lv + (int64_t)(r0 + r) * 16);
    float *acc = w->acc + (int64_t)r0 * d;
    int c0 = 0;
    for (; c0 + 16 * CD <= d; c0 += 16 * CD) values(w->s, w->vt, d, c0, nk, R, CD, corr, acc);
    for (; c0 < d; c0 += 16) values(w->s, w->vt, d, c0, nk, R, 1, corr, acc);
}

static void group_any(const scratch *w, const uint8_t *const *mrows, int r0, int R, int64_t t0,
                      int nk, int d) {
    switch (R) {
#if RS >= 6
    case 6: group(w, mrows, r0, 6, t0, nk, d); break;
    case 5: group(w, mrows, r0, 5, t0, nk, d); break;
#endif
    case 4: group(w, mrows, r0, 4, t0, nk, d); break;
    case 3: group(w, mrows, r0, 3, t0, nk, d); break;
    case 2: group(w, mrows, r0, 2, t0, nk, d); break;
    default: group(w, mrows, r0, 1, t0, nk, d); break;
    }
}

/* One (sequence, kv head): ``rows`` query rows (pointers into q / out), their mask rows. */
static void attend_head(const float *const *qrows, float *const *orows, const uint8_t *const *mrows,
                        int rows, const kv_src *src, int64_t length, int d, float qscale,
                        const scratch *w) {
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < d; c++) w->qs[(int64_t)r * d + c] = qrows[r][c] * qscale;
        w->m[r] = -INFINITY;
    }
    memset(w->lv, 0, sizeof(float) * 16 * (size_t)rows);
    memset(w->acc, 0, sizeof(float) * (size_t)rows * d);
    for (int64_t t0 = 0; t0 < length; t0 += BK) {
        int nk = length - t0 < BK ? (int)(length - t0) : BK, any = 0;
        for (int r = 0; r < rows; r++) {  /* a chunk's G heads of one query share its mask row */
            w->vis[r] = r > 0 && mrows[r] == mrows[r - 1] ? w->vis[r - 1] : block_vis(mrows[r] + t0, nk);
            any |= w->vis[r];
        }
        if (t0 + PF_AHEAD * BK < length)
            prefetch_block(src, t0 + PF_AHEAD * BK, length - t0 - PF_AHEAD * BK < BK ? (int)(length - t0 - PF_AHEAD * BK) : BK, d);
        if (!any) continue;
        load_block(src, t0, nk, d, w->kt, w->vt, w->kb);
        for (int r0 = 0; r0 < rows; r0 += RS) group_any(w, mrows, r0, rows - r0 < RS ? rows - r0 : RS, t0, nk, d);
    }
    for (int r = 0; r < rows; r++) {
        float l = v_hsum(v_load(w->lv + (int64_t)r * 16)), inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int c = 0; c < d; c++) orows[r][c] = w->acc[(int64_t)r * d + c] * inv;
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
        size_t floats = (size_t)((2 * BK + TK) * d + 2 * rows * d + 17 * rows + RS * BK);
        float *buf = aligned_alloc(64, (floats * 4 + 63) / 64 * 64);
        const float **qrows = malloc(sizeof(float *) * (size_t)rows);
        float **orows = malloc(sizeof(float *) * (size_t)rows);
        const uint8_t **mrows = malloc(sizeof(uint8_t *) * (size_t)rows);
        uint8_t *vis = malloc((size_t)rows);
        if (!buf || !qrows || !orows || !mrows || !vis) {
#pragma omp atomic write
            failed = 1;
        } else {
            scratch w = {.kt = buf, .vis = vis};
            w.vt = w.kt + BK * d;
            w.kb = w.vt + BK * d;
            w.qs = w.kb + TK * d;
            w.acc = w.qs + rows * d;
            w.lv = w.acc + rows * d;
            w.m = w.lv + 16 * rows;
            w.s = w.m + rows;
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
                kv_src src = {kc, vc, bf16, kvh * d, hk * d, slots + b * slot_b_stride};
                attend_head(qrows, orows, mrows, (int)rows, &src, length, (int)d,
                            scale * 1.4426950408889634f, &w);
            }
        }
        free(buf);
        free(qrows);
        free(orows);
        free(mrows);
        free(vis);
    }
    return failed ? -2 : 0;
}
