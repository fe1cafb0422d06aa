/* Fused attention for a few queries over a paged KV cache: scores, softmax and the value
 * product in one pass over the keys, without writing the scores out (the online softmax of
 * flash attention, FlashAttention-2's loop order: a running max m, sum l and output acc per
 * query row, rescaled when m grows). For decode rows and short chunks after a long context,
 * where the unfused path (gather, matmul, masked_fill, softmax, matmul) writes and rereads an
 * (H, Q, L) score tensor and pays a dozen op dispatches per layer.
 *
 *   for each sequence b, its key/value heads h0 .. h1 (threads: runs of (b, h) pairs):
 *     rows = the G query heads of h x the nq queries of b, q pre-scaled by scale * log2(e)
 *     for each block of BK = 64 keys (slots[b, t0 .. t0+63]) some row sees:
 *       the next block's slot rows prefetched (all heads' parts: one contiguous read)
 *       for each head h: K^T (D, 64) as float32 (bfloat16 widened), V rows read in place
 *         for each group of RS rows:
 *           S = Q K^T       (RS x 64: a register-blocked GEMM, RS rows x 16 CS keys at a time)
 *           per row: masked keys -inf; m' = max(m, max s); p = 2^(s - m') (base 2: the
 *                    scale folded log2(e) in); c = 2^(m - m') (1, no exp, when no m grew);
 *                    l = l c + sum p;  m = m'
 *           acc = acc c + P V (RS rows x 16 CD dims of acc in registers; p broadcast)
 *     out_r = acc / l
 *
 * The keys go in segments of FQ_SEG (512, kernels_common.h), each from a fresh (m, l, acc)
 * that is then merged into the row's total (``merge``, left to right): the same arithmetic
 * whether one thread runs every segment or threads each run some (``fq_attention_keys``
 * writes a range of segments' partials, ``fq_attention_merge`` merges them), so a lone
 * sequence's long context can be split between threads (FlashDecoding's split-K) and its
 * rows still equal a batch's or one thread's bit for bit.
 *
 * One softmax update and one rescale of the accumulators per 64 keys (the first version did
 * them per 16 keys: as much work as the 128 multiply-adds per row and tile) and RS rows
 * sharing each key and value load (10 loads per 24 FMAs on AVX-512). At 54 rows x 4,096 keys
 * it runs at ~67% of the core's FMA peak with the keys cold in cache, ~80% warm
 * (docs/benchmarks.md, Zen 4). float32 arithmetic throughout (q, keys, values, sums), but for
 * bfloat16 caches in the build with AVX512_BF16 (fq_bf16.h: the scores and the value product
 * as vdpbf16ps dot products of bfloat16 pairs, q and P rounded to bfloat16; the softmax and
 * every sum float32), where the head size is a multiple of 32; elsewhere bfloat16 is widened.
 * Built like gguf_matmul.c: one source, three builds (AVX-512 / AVX2 / portable) chosen by
 * thinkstream/kernels/attention.py; fq_simd.h holds the vector layer. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "kernels_common.h"
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
#define INLINE static inline __attribute__((always_inline))
#include "fq_simd.h"
#if defined(__AVX512BF16__)
#include "fq_bf16.h"
#define BF16_DOT 1
#else
#define BF16_DOT 0
#endif

int fq_isa(void) { return BUILD_ISA; }
int fq_bf16_dot(void) { return BF16_DOT; }  /* 1: bfloat16 caches use vdpbf16ps (fq_bf16.h) */

typedef struct {  /* where a sequence's keys and values lie */
    const void *kc, *vc;  /* caches (num_slots, KVH, d) */
    int bf16, dot;  /* bfloat16 caches; their dot-product path (fq_bf16.h) */
    int64_t slot_stride;  /* elements */
    const int64_t *slots;  /* this sequence's, (length,) */
} kv_src;

/* Keys slots[t0 .. t0+nk) of the head at head_off (elements) -> kt (d, BK) float32, zero
 * past nk; vrows[j]: value row j as float32, in the cache (float32) or widened into vt
 * (BK, d) (bfloat16); kb (TK, d): scratch for the widened bfloat16 keys. The dot-product
 * path packs kt and vt as fq_bf16.h's kt2 (d/2, BK) and vt2 (BK/2, d) words instead. */
static void load_block(const kv_src *src, int64_t head_off, int64_t t0, int nk, int d, float *kt,
                       float *vt, const float **vrows, float *kb) {
#if BF16_DOT
    if (src->dot) {
        const uint16_t *krows[BK], *vr[BK];
        for (int j = 0; j < nk; j++) {
            int64_t off = src->slots[t0 + j] * src->slot_stride + head_off;
            krows[j] = (const uint16_t *)src->kc + off;
            vr[j] = (const uint16_t *)src->vc + off;
        }
        pack_block(krows, vr, nk, d, (bf2 *)kt, (bf2 *)vt);
        return;
    }
#endif
    for (int j0 = 0; j0 < BK; j0 += TK) {
        const float *rows[TK];
        for (int j = 0; j < TK; j++) {
            rows[j] = NULL;
            if (j0 + j >= nk) continue;
            int64_t off = src->slots[t0 + j0 + j] * src->slot_stride + head_off;
            if (src->bf16) {
                float *vrow = vt + (int64_t)(j0 + j) * d;
                widen_bf16((const uint16_t *)src->vc + off, vrow, d);
                widen_bf16((const uint16_t *)src->kc + off, kb + (int64_t)j * d, d);
                rows[j] = kb + (int64_t)j * d;
                vrows[j0 + j] = vrow;
            } else {
                rows[j] = (const float *)src->kc + off;
                vrows[j0 + j] = (const float *)src->vc + off;
            }
        }
        for (int c = 0; c < d; c += 16) transpose16(rows, c, kt + (int64_t)c * BK + j0, BK);
    }
}

INLINE int64_t elt_bytes(const kv_src *src) { return src->bf16 ? 2 : 4; }

/* the cache lines of slots[t0 .. t0+nk), ``span`` bytes from byte ``off`` of each slot row,
 * on their way to L2 while a block computes (inlined: GCC drops calls to a function whose
 * only effects are prefetches) */
INLINE void prefetch_block(const kv_src *src, int64_t off, int64_t span, int64_t t0, int nk) {
    int64_t elt = elt_bytes(src);
    for (int j = 0; j < nk; j++) {
        int64_t at = (src->slots[t0 + j] * src->slot_stride) * elt + off;
        for (int64_t b = 0; b < span; b += 64) {
            __builtin_prefetch((const char *)src->kc + at + b, 0, 2);
            __builtin_prefetch((const char *)src->vc + at + b, 0, 2);
        }
    }
}

/* ---- the rows of one head against one block -------------------------------------------- */
typedef struct {  /* one thread's scratch */
    float *kt, *vt, *kb;  /* (d, BK), (BK, d), (TK, d) */
    const float **vrows;  /* (BK,) the block's value rows */
    float *s;  /* (RS, BK) one group's scores, then probabilities */
    uint32_t *p2;  /* (RS, BK/2) the probabilities as bfloat16 pairs (the dot-product path) */
    uint8_t *vis;  /* (rows,) the block's keys each row sees: 0 none, 1 some, 2 all */
} scratch;

typedef struct {  /* the running state of one head's rows */
    float *qs, *acc, *m, *lv;  /* (rows, d) queries x scale log2(e), (rows, d) outputs,
                                  (rows,) running max, (rows, 16) running sums per lane:
                                  the current segment's */
    uint32_t *q2;  /* (rows, d/2) qs as bfloat16 pairs (the dot-product path) */
    float *tm, *tl, *tacc;  /* (rows,), (rows,), (rows, d): the total of the segments so far */
} rows_state;

/* Where a call writes its segments' partials instead of outputs (NULL: outputs). Segment s
 * of output row R ((b * nq + i) * h + head) at partial + (s * nrows + R) * (d + 2): its
 * max m, sum l and unnormalised output (d). */
typedef struct {
    int64_t lo, hi;  /* the segments computed */
    float *partial;
    int64_t nrows;
} seg_out;

/* (m, l, acc) of one row += a segment's partial (ms, ls, as): the log-sum-exp merge of two
 * softmax states. One compiled copy (noinline) serves every path, so the sums are the same
 * bits whoever merges. An empty segment (ms = -inf) changes nothing; into an empty total
 * the segment is copied (one segment: the single pass's result exactly). */
static __attribute__((noinline)) void merge(float *m, float *l, float *acc, float ms, float ls,
                                            const float *as, int d) {
    if (ms == -INFINITY) return;
    if (*m == -INFINITY) {
        *m = ms;
        *l = ls;
        memcpy(acc, as, sizeof(float) * (size_t)d);
        return;
    }
    float top = ms > *m ? ms : *m, c = exp2f(*m - top), cs = exp2f(ms - top);
    *l = fmaf(ls, cs, *l * c);
    v16 vc = v_set1(c), vs = v_set1(cs);
    for (int k = 0; k < d; k += 16) v_store(acc + k, v_fma(v_load(as + k), vs, v_mul(v_load(acc + k), vc)));
    *m = top;
}

/* out (d) = the normalised total: acc / l (0 for a row that saw no key) */
static void finish(float *out, float m, float l, const float *acc, int d) {
    float inv = m != -INFINITY && l > 0.0f ? 1.0f / l : 0.0f;
    for (int c = 0; c < d; c++) out[c] = m != -INFINITY ? acc[c] * inv : 0.0f;
}

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

/* The online-softmax update of R rows (interleaved by the compiler): scores s (R, BK) ->
 * probabilities in place; m, lv (R, 16) updated; corr[r]: the factor for row r's
 * accumulators, 2^(m_old - m_new) (1 when the max did not grow). mk[r]: row r's mask at
 * the block; vis[r]: block_vis of it. */
INLINE void softmax(float *s, const uint8_t *const *mk, const uint8_t *vis, int nk, const int R,
                    float *m, float *lv, float *corr) {
    float top[RS], shift[16] = {0}, c16[16];
    int grew = 0;
    for (int r = 0; r < R; r++) {
        float *sr = s + r * BK;
        if (vis[r] != 2)
            for (int j = 0; j < BK; j++)
                if (j >= nk || !mk[r][j]) sr[j] = -INFINITY;
        v16 mx = v_load(sr);
        for (int t = 16; t < BK; t += 16) mx = v_max(mx, v_load(sr + t));
        float bmax = v_hmax(mx);
        top[r] = bmax > m[r] ? bmax : m[r];
        shift[r] = top[r] == -INFINITY ? 0.0f : m[r] - top[r];  /* m -inf: 2^-inf = 0 */
        grew |= shift[r] != 0.0f;
    }
    if (!grew)  /* the common case past the first blocks: no row's max grew */
        for (int r = 0; r < R; r++) c16[r] = 1.0f;
    else
#if defined(__AVX2__)
        v_store(c16, v_exp2(v_load(shift)));
#else
        for (int r = 0; r < R; r++) c16[r] = exp2f(shift[r]);
#endif
    for (int r = 0; r < R; r++) {
        float *sr = s + r * BK;
        corr[r] = c16[r];
        if (top[r] == -INFINITY) {  /* nothing visible yet: p = 0, acc unchanged */
            memset(sr, 0, sizeof(float) * BK);
            continue;
        }
        v16 sum = v_set1(0.0f), mr = v_set1(top[r]);
        for (int t = 0; t < BK; t += 16) {
            v16 p = v_exp2(v_sub(v_load(sr + t), mr));
            v_store(sr + t, p);
            sum = v_add(sum, p);
        }
        v_store(lv + r * 16, v_fma(v_load(lv + r * 16), v_set1(c16[r]), sum));
        m[r] = top[r];
    }
}

/* acc (R rows, stride d) columns c0 .. c0 + 16 C = acc * corr + p (R, BK) . V (nk rows) */
INLINE void values(const float *p, const float *const *vrows, int d, int c0, int nk, const int R,
                   const int C, const float *corr, float *acc) {
    v16 x[RS][CD];
    for (int r = 0; r < R; r++) {
        v16 cr = v_set1(corr[r]);
        for (int u = 0; u < C; u++) x[r][u] = v_mul(v_load(acc + (int64_t)r * d + c0 + 16 * u), cr);
    }
    for (int j = 0; j < nk; j++) {
        v16 v[CD];
        for (int u = 0; u < C; u++) v[u] = v_load(vrows[j] + c0 + 16 * u);
        for (int r = 0; r < R; r++) {
            v16 pj = v_set1(p[r * BK + j]);
            for (int u = 0; u < C; u++) x[r][u] = v_fma(pj, v[u], x[r][u]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int u = 0; u < C; u++) v_store(acc + (int64_t)r * d + c0 + 16 * u, x[r][u]);
}

/* Rows r0 .. r0+R-1 (R <= RS, a constant after inlining) of one head against its block;
 * ``dot``: the block is packed for the dot-product path. */
INLINE void group(const scratch *w, const rows_state *st, const uint8_t *const *mrows, int r0,
                  const int R, int64_t t0, int nk, int d, int dot) {
    (void)dot;  /* the builds without AVX512_BF16 have no dot-product path */
    int any = 0;
    const uint8_t *mk[RS];
    for (int r = 0; r < R; r++) {
        any |= w->vis[r0 + r];
        mk[r] = mrows[r0 + r] + t0;
    }
    if (!any) return;
    int kend = (nk + 16 * CS - 1) / (16 * CS) * (16 * CS);
#if BF16_DOT
    if (dot)
        scores_dp(st->q2 + (int64_t)r0 * (d / 2), d, (const bf2 *)w->kt, R, w->s);
    else
#endif
        scores(st->qs + (int64_t)r0 * d, d, w->kt, kend, R, w->s);
    float corr[RS];
    softmax(w->s, mk, w->vis + r0, nk, R, st->m + r0, st->lv + (int64_t)r0 * 16, corr);
    float *acc = st->acc + (int64_t)r0 * d;
    int c0 = 0;
#if BF16_DOT
    if (dot) {
        for (int r = 0; r < R; r++) round_pairs(w->s + r * BK, w->p2 + r * (BK / 2), BK);
        const bf2 *vt2 = (const bf2 *)w->vt;
        for (; c0 + 16 * CD <= d; c0 += 16 * CD) values_dp(w->p2, vt2, d, c0, (nk + 1) / 2, R, CD, corr, acc);
        for (; c0 < d; c0 += 16) values_dp(w->p2, vt2, d, c0, (nk + 1) / 2, R, 1, corr, acc);
        return;
    }
#endif
    for (; c0 + 16 * CD <= d; c0 += 16 * CD) values(w->s, w->vrows, d, c0, nk, R, CD, corr, acc);
    for (; c0 < d; c0 += 16) values(w->s, w->vrows, d, c0, nk, R, 1, corr, acc);
}

static void group_any(const scratch *w, const rows_state *st, const uint8_t *const *mrows, int r0,
                      int R, int64_t t0, int nk, int d, int dot) {
    switch (R) {
#if RS >= 6
    case 6: group(w, st, mrows, r0, 6, t0, nk, d, dot); break;
#endif
#if RS >= 5
    case 5: group(w, st, mrows, r0, 5, t0, nk, d, dot); break;
#endif
    case 4: group(w, st, mrows, r0, 4, t0, nk, d, dot); break;
    case 3: group(w, st, mrows, r0, 3, t0, nk, d, dot); break;
    case 2: group(w, st, mrows, r0, 2, t0, nk, d, dot); break;
    default: group(w, st, mrows, r0, 1, t0, nk, d, dot); break;
    }
}

/* One block of keys t0 .. min(t0 + BK, k1) for the rows of key/value heads h0 .. h0+nh-1
 * (``attend``); the next block up to ``end`` is prefetched. */
static void attend_block(const uint8_t *const *mrows, int rows, int nh, const kv_src *src, int64_t h0,
                         int64_t t0, int64_t k1, int64_t end, int d, const scratch *w, const rows_state *st) {
    {
        int64_t length = end;
        int nk = k1 - t0 < BK ? (int)(k1 - t0) : BK, any = 0;
        for (int r = 0; r < rows; r++) {  /* a chunk's G heads of one query share its mask row */
            w->vis[r] = r > 0 && mrows[r] == mrows[r - 1] ? w->vis[r - 1] : block_vis(mrows[r] + t0, nk);
            any |= w->vis[r];
        }
        /* the next block's slot rows (all nh heads' parts) are prefetched a slice before each
         * group (all at once, they would stall on the core's outstanding-miss limit); after
         * a block no row sees (a window's start, a prompt's later keys) none is */
        int64_t next = length - t0 - BK;
        int pk = next <= 0 ? 0 : next < BK ? (int)next : BK, calls = nh * ((rows + RS - 1) / RS), call = 0;
        int64_t elt = elt_bytes(src), span = nh * d * elt;
        for (int i = 0; i < nh && any; i++) {
            rows_state hs = {st->qs + (int64_t)i * rows * d, st->acc + (int64_t)i * rows * d,
                             st->m + i * rows, st->lv + (int64_t)i * rows * 16,
                             st->q2 + (int64_t)i * rows * (d / 2), NULL, NULL, NULL};
            load_block(src, (h0 + i) * d, t0, nk, d, w->kt, w->vt, w->vrows, w->kb);
            for (int r0 = 0; r0 < rows; r0 += RS, call++) {
                int j0 = pk * call / calls, j1 = pk * (call + 1) / calls;
                prefetch_block(src, h0 * d * elt, span, t0 + BK + j0, j1 - j0);
                group_any(w, &hs, mrows, r0, rows - r0 < RS ? rows - r0 : RS, t0, nk, d, src->dot);
            }
        }
    }
}

/* One sequence, key/value heads h0 .. h0+nh-1 together (each block's slot rows are read
 * once for all of them): ``rows`` query rows per head (head i's at i * stride in qrows /
 * orows), their mask rows (the same for every head). With ``so``, only its segments, their
 * partials to prows (laid out as orows, at segment 0; so->nrows * (d + 2) floats apart). */
static void attend(const float *const *qrows, float *const *orows, const uint8_t *const *mrows,
                   int stride, int rows, int nh, const kv_src *src, int64_t h0, int64_t length,
                   int d, float qscale, const scratch *w, const rows_state *st, const seg_out *so,
                   float *const *prows) {
    for (int i = 0; i < nh; i++)
        for (int r = 0; r < rows; r++) {
            const float *qr = qrows[i * stride + r];
            float *qs = st->qs + ((int64_t)i * rows + r) * d;
            for (int c = 0; c < d; c++) qs[c] = qr[c] * qscale;
#if BF16_DOT
            if (src->dot) round_pairs(qs, st->q2 + ((int64_t)i * rows + r) * (d / 2), d);
#endif
            st->tm[i * rows + r] = -INFINITY;
        }
    int64_t all = (int64_t)nh * rows, nseg = (length + FQ_SEG - 1) / FQ_SEG;
    int64_t s_lo = so ? so->lo : 0, s_hi = so ? (so->hi < nseg ? so->hi : nseg) : nseg;
    int64_t end = s_hi * FQ_SEG < length ? s_hi * FQ_SEG : length;  /* the last key computed */
    for (int64_t sg = s_lo; sg < s_hi; sg++) {
        for (int64_t k = 0; k < all; k++) st->m[k] = -INFINITY;
        memset(st->lv, 0, sizeof(float) * 16 * (size_t)all);
        memset(st->acc, 0, sizeof(float) * (size_t)all * d);
        int64_t k1 = (sg + 1) * FQ_SEG < length ? (sg + 1) * FQ_SEG : length;
        for (int64_t t0 = sg * FQ_SEG; t0 < k1; t0 += BK)
            attend_block(mrows, rows, nh, src, h0, t0, k1, end, d, w, st);
        for (int i = 0; i < nh; i++)
            for (int r = 0; r < rows; r++) {
                int64_t k = (int64_t)i * rows + r;
                float l = v_hsum(v_load(st->lv + k * 16));
                if (so) {
                    float *rec = prows[i * stride + r] + sg * so->nrows * (d + 2);
                    rec[0] = st->m[k];
                    rec[1] = l;
                    memcpy(rec + 2, st->acc + k * d, sizeof(float) * (size_t)d);
                } else {
                    merge(st->tm + k, st->tl + k, st->tacc + k * d, st->m[k], l, st->acc + k * d, d);
                }
            }
    }
    if (so) return;
    for (int i = 0; i < nh; i++)
        for (int r = 0; r < rows; r++) {
            int64_t k = (int64_t)i * rows + r;
            finish(orows[i * stride + r], st->tm[k], st->tl[k], st->tacc + k * d, d);
        }
}

/* Query rows per pass over the keys: a prompt's thousands of rows in chunks whose queries and
 * accumulators (nh heads x rows x d, twice) stay within ~384 KB of L2 (else every key block
 * would stream them from memory); a multiple of RS, at least RS. */
static int64_t rows_per_pass(int64_t rows, int64_t kvh, int64_t d) {
    int64_t fit = (384 << 10) / (kvh * d * 8) / RS * RS;
    fit = fit < RS ? RS : fit;
    return rows < fit ? rows : fit;
}

/* The (sequence, key/value head) pairs p .. p1 on the calling thread; with ``so``, only its
 * segments, as partials. Returns 0, or -2 when out of memory. */
static int attend_pairs(const float *q, float *out, int64_t nq, int64_t h, int64_t kvh, int64_t d,
                        const void *kc, const void *vc, int bf16, const int64_t *slots,
                        int64_t slot_b_stride, int64_t length, const uint8_t *mask, int64_t mask_b,
                        int64_t mask_q, float scale, int64_t p, int64_t p1, const seg_out *so) {
    int64_t g = h / kvh, rows = g * nq, chunk = rows_per_pass(rows, kvh, d),
            all = kvh * chunk;  /* state rows: every head of a pass */
    size_t floats = (size_t)((2 * BK + TK) * d + RS * BK + 2 * all * d + 17 * all)
                    + (size_t)(RS * BK / 2 + all * d / 2)  /* p2, q2 */
                    + (size_t)(all * (d + 2));  /* tacc, tm, tl */
    float *buf = aligned_alloc(64, (floats * 4 + 63) / 64 * 64);
    const float **qrows = malloc(sizeof(float *) * (size_t)(kvh * rows)), **vrows = malloc(sizeof(float *) * BK);
    float **orows = malloc(sizeof(float *) * (size_t)(kvh * rows));
    float **prows = malloc(sizeof(float *) * (size_t)(kvh * rows));
    const uint8_t **mrows = malloc(sizeof(uint8_t *) * (size_t)rows);
    uint8_t *vis = malloc((size_t)chunk);
    int rc = 0;
    if (!buf || !qrows || !vrows || !orows || !prows || !mrows || !vis) {
        rc = -2;
    } else {
        scratch w = {.kt = buf, .vrows = vrows, .vis = vis};
        w.vt = w.kt + BK * d;
        w.kb = w.vt + BK * d;
        w.s = w.kb + TK * d;
        rows_state st = {.qs = w.s + RS * BK};
        st.acc = st.qs + all * d;
        st.lv = st.acc + all * d;
        st.m = st.lv + 16 * all;
        w.p2 = (uint32_t *)(st.m + all);
        st.q2 = w.p2 + RS * BK / 2;
        st.tacc = (float *)(st.q2 + all * d / 2);
        st.tm = st.tacc + all * d;
        st.tl = st.tm + all;
        while (p < p1) {
            int64_t b = p / kvh, h0 = p % kvh, nh = kvh - h0 < p1 - p ? kvh - h0 : p1 - p;
            for (int64_t i = 0; i < nq; i++) {
                mrows[i * g] = mask + b * mask_b + i * mask_q;
                for (int64_t gi = 0; gi < g; gi++) mrows[i * g + gi] = mrows[i * g];
                for (int64_t hk = 0; hk < nh; hk++)
                    for (int64_t gi = 0; gi < g; gi++) {
                        int64_t r = hk * rows + i * g + gi, off = ((b * nq + i) * h + (h0 + hk) * g + gi) * d;
                        qrows[r] = q + off;
                        orows[r] = out ? out + off : NULL;
                        if (so) prows[r] = so->partial + off / d * (d + 2);
                    }
            }
            kv_src src = {kc, vc, bf16, BF16_DOT && bf16 && d % 32 == 0, kvh * d, slots + b * slot_b_stride};
            for (int64_t r0 = 0; r0 < rows; r0 += chunk)
                attend(qrows + r0, orows + r0, mrows + r0, (int)rows, (int)(rows - r0 < chunk ? rows - r0 : chunk),
                       (int)nh, &src, h0, length, (int)d, scale * 1.4426950408889634f, &w, &st, so,
                       prows + r0);
            p += nh;
        }
    }
    free(buf);
    free(qrows);
    free(vrows);
    free(orows);
    free(prows);
    free(mrows);
    free(vis);
    return rc;
}

static int bad_shapes(int64_t b_count, int64_t nq, int64_t h, int64_t kvh, int64_t d, int64_t length) {
    return kvh <= 0 || h <= 0 || h % kvh || d <= 0 || d % 16 || length < 0 || nq < 0 || b_count < 0;
}

/* Segments seg_lo .. seg_hi of every (sequence, key/value head) pair, as partials: segment s
 * of output row R = (b * nq + i) * h + head at partial + (s * B * nq * h + R) * (d + 2) (its
 * max, sum and unnormalised output). Arguments as fq_attention's. Returns 0, -1 on bad shapes,
 * -2 when out of memory. */
int fq_attention_keys(const float *q, int64_t b_count, int64_t nq, int64_t h, int64_t kvh, int64_t d,
                      const void *kc, const void *vc, int bf16, const int64_t *slots, int64_t slot_b_stride,
                      int64_t length, const uint8_t *mask, int64_t mask_b, int64_t mask_q, float scale,
                      int64_t seg_lo, int64_t seg_hi, float *partial) {
    if (bad_shapes(b_count, nq, h, kvh, d, length) || seg_lo < 0) return -1;
    if (nq == 0 || b_count == 0 || seg_lo >= seg_hi) return 0;
    seg_out so = {seg_lo, seg_hi, partial, b_count * nq * h};
    return attend_pairs(q, NULL, nq, h, kvh, d, kc, vc, bf16, slots, slot_b_stride, length, mask, mask_b,
                        mask_q, scale, 0, b_count * kvh, &so);
}

/* Output rows r_lo .. r_hi (of nrows, each d floats) from their nseg segments' partials
 * (fq_attention_keys' layout), merged left to right as a single call merges them. */
void fq_attention_merge(const float *partial, float *out, int64_t nrows, int64_t d, int64_t nseg,
                        int64_t r_lo, int64_t r_hi) {
    for (int64_t r = r_lo; r < r_hi; r++) {  /* the row's output holds its running total */
        float m = -INFINITY, l = 0.0f, *acc = out + r * d;
        for (int64_t sg = 0; sg < nseg; sg++) {
            const float *rec = partial + (sg * nrows + r) * (d + 2);
            merge(&m, &l, acc, rec[0], rec[1], rec + 2, (int)d);
        }
        finish(acc, m, l, acc, (int)d);  /* in place, element by element */
    }
}

/* q, out: (B, nq, H, d) float32 contiguous. slots: (B, L) int64, row stride slot_b_stride.
 * mask: uint8, element (b, i, j) at b * mask_b + i * mask_q + j (nonzero: visible).
 * Caches: (num_slots, KVH, d), float32 (bf16 == 0) or bfloat16. d a multiple of 16.
 * Threads take contiguous runs of the (sequence, key/value head) pairs.
 * Returns 0 (at once when there are no rows), -1 on bad shapes (kvh or h <= 0, h not a
 * multiple of kvh, d not a positive multiple of 16, negative counts), -2 when out of memory. */
int fq_attention(const float *q, float *out, int64_t b_count, int64_t nq, int64_t h, int64_t kvh,
                 int64_t d, const void *kc, const void *vc, int bf16, const int64_t *slots,
                 int64_t slot_b_stride, int64_t length, const uint8_t *mask, int64_t mask_b,
                 int64_t mask_q, float scale, int threads) {
    if (bad_shapes(b_count, nq, h, kvh, d, length)) return -1;
    int64_t pairs = b_count * kvh;
    if (nq == 0 || pairs == 0) return 0;
    int failed = 0;
    if (threads < 1) threads = 1;
    if (fq_split_keys(pairs, nq, length, threads)) {  /* a segment range each, then the merge */
        int64_t nseg = (length + FQ_SEG - 1) / FQ_SEG, nrows = b_count * nq * h;
        float *partial = malloc(sizeof(float) * (size_t)(nseg * nrows * (d + 2)));
        if (!partial) return -2;
#pragma omp parallel num_threads(threads)
        {
            int t = 0, nt = 1;
#ifdef _OPENMP
            t = omp_get_thread_num();
            nt = omp_get_num_threads();
#endif
            if (fq_attention_keys(q, b_count, nq, h, kvh, d, kc, vc, bf16, slots, slot_b_stride, length, mask,
                                  mask_b, mask_q, scale, fq_seg_share(length, t, nt),
                                  fq_seg_share(length, t + 1, nt), partial)) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp barrier
            fq_attention_merge(partial, out, nrows, d, nseg, nrows * t / nt, nrows * (t + 1) / nt);
        }
        free(partial);
        return failed ? -2 : 0;
    }
    if (threads > pairs) threads = (int)pairs;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        if (attend_pairs(q, out, nq, h, kvh, d, kc, vc, bf16, slots, slot_b_stride, length, mask, mask_b,
                         mask_q, scale, pairs * t / nt, pairs * (t + 1) / nt, NULL)) {
#pragma omp atomic write
            failed = 1;
        }
    }
    return failed ? -2 : 0;
}

/* fq_attention's share ``part`` of ``parts`` on the calling thread (a caller running its own
 * threads, kernels/decoder.c: each computes its part of the (sequence, key/value head)
 * pairs; every pair's output is the same whichever part computes it). */
int fq_attention_part(const float *q, float *out, int64_t b_count, int64_t nq, int64_t h, int64_t kvh,
                      int64_t d, const void *kc, const void *vc, int bf16, const int64_t *slots,
                      int64_t slot_b_stride, int64_t length, const uint8_t *mask, int64_t mask_b,
                      int64_t mask_q, float scale, int part, int parts) {
    if (bad_shapes(b_count, nq, h, kvh, d, length) || parts < 1 || part < 0 || part >= parts) return -1;
    int64_t pairs = b_count * kvh, p = pairs * part / parts, p1 = pairs * (part + 1) / parts;
    if (nq == 0 || p >= p1) return 0;
    return attend_pairs(q, out, nq, h, kvh, d, kc, vc, bf16, slots, slot_b_stride, length, mask, mask_b,
                        mask_q, scale, p, p1, NULL);
}
