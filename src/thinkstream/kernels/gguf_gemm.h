/* The GEMM of gguf_matmul.c for many x rows (AVX2 and AVX-512 builds, float32 arithmetic;
 * included from there after gguf_simd.h). The dot kernel pays, per 32 weights and x row,
 * two loads of x beside its two FMAs, and is load-bound beyond a few rows; here a block of
 * weights is decoded once per call into L1 and reused from registers, the classic
 * register-blocked GEMM (Goto & van de Geijn, "Anatomy of High-Performance Matrix
 * Multiplication", 2008) computing C^T = W x^T:
 *
 *   xt = x^T in blocks of G_MB rows: (K, G_MB) each, zero-filled past m      once per call
 *   for each panel of G_MR weight rows (split across OpenMP threads):
 *       wb = the panel decoded (gguf_simd.h's DEQ mode), laid out per K-chunk
 *            of G_KC columns as (G_MR, G_KC) rows: a fixed offset per weight row
 *       for each block of x rows:
 *           acc (G_MR x 2 vectors) += wb[i, c] (broadcast) * xt[c, 0 .. G_MB)   for c < K
 *           y[r, n + i] = acc[i][r]                                 (a transpose per tile)
 *
 * AVX-512: G_MR 12 weight rows x 32 x rows = 24 zmm accumulators, two of x and one
 * broadcast (the inner loop is 2 loads, 12 broadcasts and 24 FMAs: FMA-bound, ~100 GFLOP/s
 * on one Zen 4 core; 12 rather than 14 divides SmolLM2's 576 / 960 / 3,072 / 49,152 rows:
 * 1-2% faster there, 6% for the 576-row down projection at 512 x rows); AVX2: 6 x 16 = 12
 * ymm accumulators. A block of fewer rows takes a narrower tile (pick_tile: 24, 16 or 8
 * rows on AVX-512), so the cost grows with the rows in steps of 8. x blocks go in
 * groups whose xt slice stays within G_XT_BYTES, each group decoding the panels again. */

#if defined(__AVX512F__)
#define G_VW 16
#define G_MR 12
#define VLOAD _mm512_load_ps
#define VSTORE _mm512_store_ps
#define VFMA _mm512_fmadd_ps
#define VSET1 _mm512_set1_ps
typedef __m256 hvec;  /* half a vector: the tile of at most G_VW / 2 rows */
#define HLOAD _mm256_load_ps
#define HSTORE _mm256_store_ps
#define HFMA _mm256_fmadd_ps
#define HSET1 _mm256_set1_ps
#define HZERO _mm256_setzero_ps()
#else
#define G_VW 8
#define G_MR 6
#define VLOAD _mm256_load_ps
#define VSTORE _mm256_store_ps
#define VFMA _mm256_fmadd_ps
#define VSET1 _mm256_set1_ps
typedef __m128 hvec;
#define HLOAD _mm_load_ps
#define HSTORE _mm_store_ps
#define HFMA _mm_fmadd_ps
#define HSET1 _mm_set1_ps
#define HZERO _mm_setzero_ps()
#endif
#define G_MB (2 * G_VW)  /* x rows per block */
#define G_KC 256         /* columns per chunk of a decoded panel (a multiple of every block) */
/* x^T bytes a group of blocks may hold: 4 MB, so prefill chunks of 512 decode each panel
 * once (measured on Zen 4 at 512 rows, K 1536: 256 KB groups, re-decoding a panel per 32
 * rows, took 1.12x the time of one group; the x^T stream comes from L2 / L3 either way) */
#ifndef G_XT_BYTES
#define G_XT_BYTES (4 << 20)
#endif

/* out[j * ldo + i] = x[i * ldx + j] for i, j < 8 (kernels_common.h's register transpose). */
static inline void transpose8(const float *x, int64_t ldx, float *out, int64_t ldo) {
    __m256 r[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(x + i * ldx);
    transpose8x8(r);
    for (int j = 0; j < 8; j++) _mm256_storeu_ps(out + j * ldo, r[j]);
}

/* x rows 0..rows (rows <= G_MB, stride ldx) -> xt (k, G_MB), zero past rows; k is a
 * multiple of 32. Eight rows at a time through transpose8 (scalar, row by row, this took
 * ~3% of a 512-row prefill), the last rows % 8 one by one. */
static void pack_xt(const float *x, int64_t ldx, int64_t rows, int64_t k, float *xt) {
    if (rows < G_MB) memset(xt, 0, sizeof(float) * (size_t)(k * G_MB));
    int64_t r8 = rows / 8 * 8;
    for (int64_t r0 = 0; r0 < r8; r0 += 8)
        for (int64_t c = 0; c < k; c += 8) transpose8(x + r0 * ldx + c, ldx, xt + c * G_MB + r0, G_MB);
    for (int64_t r = r8; r < rows; r++)
        for (int64_t c = 0; c < k; c++) xt[c * G_MB + r] = x[r * ldx + c];
}

/* deq_panel's decode of nr rows for one ``type`` (a constant after inlining, so blk's
 * switch folds away: one loop per type rather than a switch per block). */
INLINE void deq_rows(const int type, const int values, const int bytes, const uint8_t *w,
                     int64_t row_bytes, int nr, int64_t k, float *wb) {
    xrows X;
    memset(&X, 0, sizeof X);
    for (int i = 0; i < nr; i++) {
        const uint8_t *row = w + i * row_bytes;
        for (int64_t c = 0; c < k; c += values, row += bytes) {
            X.dq = wb + (c / G_KC * G_MR + i) * G_KC + c % G_KC;
            X.dq0 = c;
            blk(DEQ, type, row, &X, c, 0, 0, NULL);
        }
    }
}

/* nr (<= G_MR) weight rows -> wb: chunk j's row i at wb + (j G_MR + i) G_KC; rows past nr 0. */
static void deq_panel(int type, const uint8_t *w, int64_t row_bytes, int nr, int64_t k, float *wb) {
    switch (type) {
    case T_Q4_0: deq_rows(T_Q4_0, 32, 18, w, row_bytes, nr, k, wb); break;
    case T_Q4_1: deq_rows(T_Q4_1, 32, 20, w, row_bytes, nr, k, wb); break;
    case T_Q5_0: deq_rows(T_Q5_0, 32, 22, w, row_bytes, nr, k, wb); break;
    case T_Q5_1: deq_rows(T_Q5_1, 32, 24, w, row_bytes, nr, k, wb); break;
    case T_Q8_0: deq_rows(T_Q8_0, 32, 34, w, row_bytes, nr, k, wb); break;
    case T_Q4_K: deq_rows(T_Q4_K, 256, 144, w, row_bytes, nr, k, wb); break;
    case T_Q5_K: deq_rows(T_Q5_K, 256, 176, w, row_bytes, nr, k, wb); break;
    default: deq_rows(T_Q6_K, 256, 210, w, row_bytes, nr, k, wb); break;
    }
    for (int i = nr; i < G_MR; i++)
        for (int64_t j = 0; j < (k + G_KC - 1) / G_KC; j++)
            memset(wb + (j * G_MR + i) * G_KC, 0, sizeof(float) * G_KC);
}

/* tile (G_MR, G_MB) = the panel wb times one block xt, over k columns; nv (1 or 2, a
 * constant) vectors of x rows. */
INLINE void gemm_tile(const int nv, const float *wb, const float *xt, int64_t k, float *tile) {
    vec acc[G_MR][2];
    for (int i = 0; i < G_MR; i++) acc[i][0] = acc[i][1] = VZERO;
    for (int64_t c0 = 0; c0 < k; c0 += G_KC) {
        const float *p = wb + c0 / G_KC * (G_MR * G_KC), *xp = xt + c0 * G_MB;
        int64_t len = k - c0 < G_KC ? k - c0 : G_KC;
        for (int64_t j = 0; j < len; j++, p++, xp += G_MB) {
            vec x0 = VLOAD(xp), x1 = nv > 1 ? VLOAD(xp + G_VW) : VZERO;
#pragma GCC unroll 16
            for (int i = 0; i < G_MR; i++) {
                vec b = VSET1(p[i * G_KC]);
                acc[i][0] = VFMA(b, x0, acc[i][0]);
                if (nv > 1) acc[i][1] = VFMA(b, x1, acc[i][1]);
            }
        }
    }
    for (int i = 0; i < G_MR; i++) {
        VSTORE(tile + i * G_MB, acc[i][0]);
        if (nv > 1) VSTORE(tile + i * G_MB + G_VW, acc[i][1]);
    }
}

/* gemm_tile for a block of at most G_VW / 2 rows: half vectors (Zen 4 runs two 256-bit
 * FMAs a cycle against one 512-bit, so 8 rows cost half of 16). */
static void gemm_tile_half(const float *wb, const float *xt, int64_t k, float *tile) {
    hvec acc[G_MR];
    for (int i = 0; i < G_MR; i++) acc[i] = HZERO;
    for (int64_t c0 = 0; c0 < k; c0 += G_KC) {
        const float *p = wb + c0 / G_KC * (G_MR * G_KC), *xp = xt + c0 * G_MB;
        int64_t len = k - c0 < G_KC ? k - c0 : G_KC;
        for (int64_t j = 0; j < len; j++, p++, xp += G_MB) {
            hvec x0 = HLOAD(xp);
#pragma GCC unroll 16
            for (int i = 0; i < G_MR; i++) acc[i] = HFMA(HSET1(p[i * G_KC]), x0, acc[i]);
        }
    }
    for (int i = 0; i < G_MR; i++) HSTORE(tile + i * G_MB, acc[i]);
}

static void gemm_tile1(const float *wb, const float *xt, int64_t k, float *tile) { gemm_tile(1, wb, xt, k, tile); }
#if defined(__AVX512F__)
/* A block of 17..24 rows (AVX-512): the one-vector tile for the first 16, the half-vector
 * tile for the rest (rows 16.. of xt and of the tile: the same strides), so 24 rows cost
 * 3/4 of 32. Two passes over the panel measured as fast as one fused zmm + ymm tile (Zen 4,
 * SmolLM2's linears at 24 rows: 79-81 vs 83-84 ms against 94 for the two-vector tile). */
static void gemm_tile_24(const float *wb, const float *xt, int64_t k, float *tile) {
    gemm_tile(1, wb, xt, k, tile);
    gemm_tile_half(wb, xt + G_VW, k, tile + G_VW);
}
#endif
static void gemm_tile2(const float *wb, const float *xt, int64_t k, float *tile) { gemm_tile(2, wb, xt, k, tile); }

typedef void (*tile_fn)(const float *wb, const float *xt, int64_t k, float *tile);

/* The tile for a block of ``rows`` (1..G_MB) x rows: the narrowest that holds them, so the
 * FMAs grow with the rows in steps of 8 (AVX-512: tiles of 8 / 16 / 24 / 32 rows; AVX2:
 * blocks of 16 rows, tiles of 4 / 8 / 16, where 4 rows in 128-bit FMAs cost what 8 do).
 * Finer steps would not pay on Zen 4: a 128-bit FMA takes a 256-bit one's slot. Every
 * tile computes each output as the same chain of FMAs over the columns, so a row's result
 * is bit-identical whichever tile and block it falls in (tests/unit/test_gguf_gemm.py). */
static tile_fn pick_tile(int64_t rows) {
#if defined(__AVX512F__)
    if (rows > G_VW + G_VW / 2) return gemm_tile2;
    if (rows > G_VW) return gemm_tile_24;
#else
    if (rows > G_VW) return gemm_tile2;
#endif
    return rows > G_VW / 2 ? gemm_tile1 : gemm_tile_half;
}

/* Weight rows n0..n1 against the m rows packed in xt; ``wb`` holds a decoded panel. */
static void gemm_range(int type, const uint8_t *w, int64_t row_bytes, int64_t n0, int64_t n1, int64_t k,
                       const float *xt, int64_t m, float *y, int64_t ldy, float *wb) {
    float tile[G_MR * G_MB] __attribute__((aligned(64)));
    int64_t nblk = (m + G_MB - 1) / G_MB, group = G_XT_BYTES / (k * G_MB * 4);
    if (group < 1) group = 1;
    for (int64_t b0 = 0; b0 < nblk; b0 += group) {
        int64_t b1 = b0 + group < nblk ? b0 + group : nblk;
        for (int64_t n = n0; n < n1; n += G_MR) {
            int nr = n1 - n < G_MR ? (int)(n1 - n) : G_MR;
            deq_panel(type, w + n * row_bytes, row_bytes, nr, k, wb);
            for (int64_t b = b0; b < b1; b++) {
                int64_t r0 = b * G_MB, rows = m - r0 < G_MB ? m - r0 : G_MB;
                pick_tile(rows)(wb, xt + b * k * G_MB, k, tile);
                for (int64_t r = 0; r < rows; r++)
                    for (int i = 0; i < nr; i++) y[(r0 + r) * ldy + n + i] = tile[i * G_MB + r];
            }
        }
    }
}

/* gguf_matmul's float32 product by the GEMM (the checks done by the caller): x packed once,
 * then the weight panels split across ``threads``. Returns 0, or -2 when out of memory. */
static int gemm(int type, const uint8_t *w, int64_t row_bytes, int64_t n_rows,
                int64_t k, const float *x, int64_t m, int64_t ldx, float *y, int64_t ldy, int threads) {
    int64_t nblk = (m + G_MB - 1) / G_MB, panels = (n_rows + G_MR - 1) / G_MR;
    size_t wbytes = sizeof(float) * (size_t)((k + G_KC - 1) / G_KC * G_MR * G_KC);
    float *xt = aligned_alloc(64, sizeof(float) * (size_t)(nblk * k * G_MB));
    if (xt == NULL) return -2;
    for (int64_t b = 0; b < nblk; b++)
        pack_xt(x + b * G_MB * ldx, ldx, m - b * G_MB < G_MB ? m - b * G_MB : G_MB, k, xt + b * k * G_MB);
    int failed = 0;
    if (threads > panels) threads = (int)panels;
    if (threads < 1) threads = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
#ifdef _OPENMP
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        int t = 0, nt = 1;
#endif
        int64_t per = (panels + nt - 1) / nt * G_MR, n0 = t * per, n1 = n0 + per < n_rows ? n0 + per : n_rows;
        float *wb = aligned_alloc(64, wbytes);
        if (wb == NULL) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        } else {
            if (n0 < n1) gemm_range(type, w, row_bytes, n0, n1, k, xt, m, y, ldy, wb);
            free(wb);
        }
    }
    free(xt);
    return failed ? -2 : 0;
}
