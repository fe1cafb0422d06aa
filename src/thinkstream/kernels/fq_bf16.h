/* AVX512_BF16 arithmetic for fq_attention.c over bfloat16 caches (included from there in the
 * build made with -mavx512bf16 only, kernels/attention.py: where the CPU has avx512_bf16).
 * vdpbf16ps multiplies two pairs of bfloat16 values per 32-bit lane and adds both products
 * to that lane's float32 sum: twice the multiply-adds of a float32 FMA per instruction.
 *
 *   scores  s[r, j] += (q[r, 2i] k[j, 2i] + q[r, 2i+1] k[j, 2i+1])  for 16 keys j a vector:
 *           K as words (k[j, 2i], k[j, 2i+1]), the 32-bit words of the bf16 rows transposed
 *           (kt2 (d/2, BK)); q's word (q[r, 2i], q[r, 2i+1]) broadcast;
 *   values  acc[r, c] += (p[r, 2m] v[2m, c] + p[r, 2m+1] v[2m+1, c])  for 16 dims c a vector:
 *           V as words (v[2m, c], v[2m+1, c]), the rows of two keys interleaved (vt2 (BK/2, d));
 *           P's word (p[r, 2m], p[r, 2m+1]) broadcast.
 *
 * q (pre-scaled by scale log2(e)) and P are rounded to bfloat16 (round to nearest even,
 * vcvtneps2bf16); the scores, the online softmax, its sums and the output accumulators stay
 * float32. The first value of a pair is the word's low half (vdpbf16ps pairs halves alike).
 * Needs d a multiple of 32 (whole 64-byte rows); fq_attention.c widens other sizes. */

typedef uint32_t bf2;  /* two bfloat16 values, the first in the low half */

INLINE __m512bh as_bh(__m512i x) { return (__m512bh)x; }

/* dst[i] = (src[2i], src[2i+1]) rounded to bfloat16, i < n / 2; n a multiple of 32 */
INLINE void round_pairs(const float *src, bf2 *dst, int n) {
    for (int c = 0; c < n; c += 32) {
        __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + c + 16), _mm512_loadu_ps(src + c));
        _mm512_storeu_si512(dst + c / 2, (__m512i)b);
    }
}

/* One block's keys and values: krows[j], vrows[j] the bf16 rows of key j < nk (d values).
 * kt2[i * BK + j] = (k[j, 2i], k[j, 2i+1]) (zeros for j >= nk); vt2[m * d + c] =
 * (v[2m, c], v[2m+1, c]) for m < (nk + 1) / 2 (v[nk, c] = 0 when nk is odd). */
static void pack_block(const uint16_t *const *krows, const uint16_t *const *vrows, int nk, int d,
                       bf2 *kt2, bf2 *vt2) {
    for (int j0 = 0; j0 < BK; j0 += TK) {  /* a bf16 row of d values is d/2 32-bit words */
        const float *rows[TK];
        for (int j = 0; j < TK; j++) rows[j] = j0 + j < nk ? (const float *)krows[j0 + j] : NULL;
        for (int c = 0; c < d / 2; c += 16) transpose16(rows, c, (float *)kt2 + (int64_t)c * BK + j0, BK);
    }
    /* the qwords of a 32-value row reordered so that unpacking words within each 128-bit lane
     * gives dims 0-15 (lo) and 16-31 (hi) in order: lane i takes qwords i and i + 4 */
    const __m512i order = _mm512_set_epi64(7, 3, 6, 2, 5, 1, 4, 0);
    for (int m = 0; m < (nk + 1) / 2; m++) {
        const uint16_t *a = vrows[2 * m], *b = 2 * m + 1 < nk ? vrows[2 * m + 1] : NULL;
        bf2 *dst = vt2 + (int64_t)m * d;
        for (int c = 0; c < d; c += 32) {
            __m512i x = _mm512_permutexvar_epi64(order, _mm512_loadu_si512(a + c));
            __m512i y = b ? _mm512_permutexvar_epi64(order, _mm512_loadu_si512(b + c)) : _mm512_setzero_si512();
            _mm512_storeu_si512(dst + c, _mm512_unpacklo_epi16(x, y));
            _mm512_storeu_si512(dst + c + 16, _mm512_unpackhi_epi16(x, y));
        }
    }
}

/* s (R, BK) = q2 (R rows of d/2 words) . kt2 (d/2, BK): RS rows x CS key vectors a time */
INLINE void scores_dp(const bf2 *q2, int d, const bf2 *kt2, const int R, float *s) {
    for (int k0 = 0; k0 < BK; k0 += 16 * CS) {
        __m512 acc[RS][CS];
        for (int r = 0; r < R; r++)
            for (int t = 0; t < CS; t++) acc[r][t] = _mm512_setzero_ps();
        for (int i = 0; i < d / 2; i++) {
            __m512bh k[CS];
            for (int t = 0; t < CS; t++) k[t] = as_bh(_mm512_loadu_si512(kt2 + (int64_t)i * BK + k0 + 16 * t));
            for (int r = 0; r < R; r++) {
                __m512bh q = as_bh(_mm512_set1_epi32((int)q2[(int64_t)r * (d / 2) + i]));
                for (int t = 0; t < CS; t++) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], q, k[t]);
            }
        }
        for (int r = 0; r < R; r++)
            for (int t = 0; t < CS; t++) _mm512_storeu_ps(s + r * BK + k0 + 16 * t, acc[r][t]);
    }
}

/* acc (R rows, stride d) columns c0 .. c0 + 16 C = acc * corr + p2 (R, BK/2 words) . vt2
 * (np pairs of keys) */
INLINE void values_dp(const bf2 *p2, const bf2 *vt2, int d, int c0, int np, const int R, const int C,
                      const float *corr, float *acc) {
    __m512 x[RS][CD];
    for (int r = 0; r < R; r++) {
        __m512 cr = _mm512_set1_ps(corr[r]);
        for (int u = 0; u < C; u++) x[r][u] = _mm512_mul_ps(_mm512_loadu_ps(acc + (int64_t)r * d + c0 + 16 * u), cr);
    }
    for (int m = 0; m < np; m++) {
        __m512bh v[CD];
        for (int u = 0; u < C; u++) v[u] = as_bh(_mm512_loadu_si512(vt2 + (int64_t)m * d + c0 + 16 * u));
        for (int r = 0; r < R; r++) {
            __m512bh pm = as_bh(_mm512_set1_epi32((int)p2[r * (BK / 2) + m]));
            for (int u = 0; u < C; u++) x[r][u] = _mm512_dpbf16_ps(x[r][u], pm, v[u]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int u = 0; u < C; u++) _mm512_storeu_ps(acc + (int64_t)r * d + c0 + 16 * u, x[r][u]);
}
