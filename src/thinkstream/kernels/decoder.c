/* The decoder stack of a GGUF model in one native call, for steps of a few rows (decode,
 * a short chunk, a verification of draft tokens): llama.cpp's shape of a step, where the
 * eager path spends a third of a batch-1 step on op dispatch between the matmuls.
 *
 *   for each layer:
 *       h = rmsnorm(x) ; qkv = h Wqkv^T (+ b)                  GGUF kernel (gguf_matmul)
 *       q, k = rmsnorm per head (q/k norm, optional) ; rotate (RoPE, table per layer)
 *       k, v -> the layer's cache at the step's slots (bfloat16 caches: rounded to
 *               nearest even) ; o = attention(q)   (fq_attention)
 *       a = o Wo^T ; a = rmsnorm(a) (sandwich norm, optional) ; x += a
 *       h = rmsnorm(x) ; g, u = h Wgu^T ; m = act(g) * u ; d = m Wd^T (; rmsnorm) ; x += d
 *
 * The same arithmetic as the eager layers (models/layers.py) in float32, up to summation
 * order: norms accumulate in double, SiLU / GELU-tanh take a vectorised exp of ~1 ulp. Attention runs per group of
 * the step (a decode batch, a chunk, a padded batch of chunks, a fresh prompt), each group's
 * queries gathered from and scattered to their packed rows. The matmul and attention
 * kernels are the ones the eager path calls (their libraries' entry points are passed in
 * as function pointers), so this file holds only the glue and the elementwise ops.
 * Built per instruction set like gguf_matmul.c (kernels/native.py): only so that the
 * elementwise loops vectorise to the CPU's width; no intrinsics. */
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "kernels_common.h"
#ifdef _OPENMP
#include <omp.h>
#endif

typedef int (*matmul_fn)(int type, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                         const float *x, int64_t m, int64_t ldx, float *y, int64_t ldy, int threads);
typedef int (*attention_fn)(const float *q, float *out, int64_t b, int64_t nq, int64_t h, int64_t kvh,
                            int64_t d, const void *kc, const void *vc, int bf16, const int64_t *slots,
                            int64_t slot_b_stride, int64_t length, const uint8_t *mask, int64_t mask_b,
                            int64_t mask_q, float scale, int part, int parts);  /* fq_attention_part */
typedef int (*attention_keys_fn)(const float *q, int64_t b, int64_t nq, int64_t h, int64_t kvh, int64_t d,
                                 const void *kc, const void *vc, int bf16, const int64_t *slots,
                                 int64_t slot_b_stride, int64_t length, const uint8_t *mask, int64_t mask_b,
                                 int64_t mask_q, float scale, int64_t seg_lo, int64_t seg_hi,
                                 float *partial);  /* fq_attention_keys */
typedef void (*attention_merge_fn)(const float *partial, float *out, int64_t nrows, int64_t d, int64_t nseg,
                                   int64_t r_lo, int64_t r_hi);  /* fq_attention_merge */

/* One GGUF matrix of a (fused) projection: output columns col .. col + rows. */
typedef struct {
    int64_t qtype;
    const uint8_t *w;
    int64_t row_bytes, rows, col;
} td_part;

typedef struct {
    td_part parts[3];
    int64_t nparts, k, n;  /* input and output features */
    const float *bias;     /* (n,) or NULL */
} td_linear;

typedef struct {
    const float *attn_norm, *mlp_norm, *post_attn_norm, *post_mlp_norm, *q_norm, *k_norm;
    td_linear qkv, o, gate_up, down;
    void *k_cache, *v_cache;  /* (slots, kv_heads, head_dim) float32, or bfloat16 (kv_bf16) */
    int64_t rope;             /* index of the step's RoPE table */
    int64_t sliding;          /* 1: the sliding-window mask */
} td_layer;

typedef struct {
    int64_t hidden, heads, kv_heads, head_dim, inter, gelu, num_layers;
    double eps, scale;
    const td_layer *layers;
    matmul_fn matmul;
    attention_fn attention;
    double *timers;   /* NULL, or seconds added per part: [0] matmuls, [1] attention */
    int64_t clock_id; /* the clock of the timers (CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID) */
    int64_t kv_bf16;  /* 1: the caches hold bfloat16 (keys / values rounded when stored) */
    attention_keys_fn attention_keys;    /* NULL: a lone sequence's keys are never split */
    attention_merge_fn attention_merge;
} td_model;

static double now(const td_model *M) {
    struct timespec ts;
    clock_gettime((clockid_t)M->clock_id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One attention group of a step: b sequences x nq queries over their context. Query i
 * (row-major over b, nq) is packed row index[i] of the step (index NULL: rows start ..
 * start + b * nq); only queries with real[i] nonzero keep their output (real NULL: all; a
 * padded batch's filler queries are not). */
typedef struct {
    int64_t b, nq, start;
    const int64_t *index;
    const uint8_t *real;
    const int64_t *slots;         /* (b, length) context slots, row stride slot_b_stride */
    int64_t slot_b_stride, length;
    const uint8_t *mask[2];       /* (b, nq, length) bool: [0] full, [1] sliding (or NULL) */
    int64_t mask_b[2], mask_q[2];
} td_group;

/* One step of t packed rows; its groups cover every row once. */
typedef struct {
    int64_t t, ngroups;
    const float *cos[2], *sin[2]; /* (t, head_dim / 2) per RoPE table */
    const int64_t *slot_mapping;  /* (t,) cache slot of each row's key / value */
    const td_group *groups;
} td_step;

static void rmsnorm(const float *x, float *y, int64_t n, const float *w, double eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

/* The threads of one step: one OpenMP region for the whole stack (a region per kernel call
 * would wake sleeping workers ~250 times a step), synchronised by a barrier that spins
 * briefly and then yields the core (a shared machine may have descheduled the other
 * thread). Thread 0 runs the elementwise work; matmuls split their weight rows, attention
 * its sequences (with fewer sequences than threads: each sequence's queries, or for decode
 * rows the (sequence, key/value head) pairs). */
typedef struct {
    atomic_int count, gen, rc;
} td_barrier;

typedef struct {
    int tid, nt;
    td_barrier *bar;
} td_team;

static void sync_team(const td_team *T) {
    if (T->nt == 1) return;
    td_barrier *b = T->bar;
    int g = atomic_load_explicit(&b->gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == T->nt - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->gen, 1, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->gen, memory_order_acquire) == g; spins++) {
        if (spins > 2000) sched_yield();
#if defined(__x86_64__) || defined(__i386__)
        else __builtin_ia32_pause();
#endif
    }
}

static void fail(const td_team *T, int rc) {
    int zero = 0;
    atomic_compare_exchange_strong(&T->bar->rc, &zero, rc);
}

/* this thread's share [*a, *b) of n items */
static void share(const td_team *T, int64_t n, int64_t *a, int64_t *b) {
    *a = n * T->tid / T->nt;
    *b = n * (T->tid + 1) / T->nt;
}

static int64_t query_split(int64_t nq, int64_t base, double target) {
    double done = 0.0;  /* work of queries 0 .. i-1; query i goes left of the cut if most of it is */
    for (int64_t i = 0; i < nq; i++) {
        if (done + 0.5 * (double)(base + i) >= target) return i;
        done += (double)(base + i);
    }
    return nq;
}

/* this thread's share [*a, *b) of a sequence's nq queries over length keys, balanced by the
 * keys each sees when the queries end the context causally (query i: length - nq + i + 1;
 * later queries cost more: an even split of a 512-token prompt gives one thread 3x the
 * other's work). Each query's output is the same whichever thread computes it. */
static void share_queries(const td_team *T, int64_t nq, int64_t length, int64_t *a, int64_t *b) {
    int64_t base = length - nq + 1 > 1 ? length - nq + 1 : 1;
    double total = (double)nq * (double)base + 0.5 * (double)nq * (double)(nq - 1);
    *a = T->tid == 0 ? 0 : query_split(nq, base, total * T->tid / T->nt);
    *b = T->tid == T->nt - 1 ? nq : query_split(nq, base, total * (T->tid + 1) / T->nt);
}

static void linear(const td_model *M, const td_team *T, const td_linear *L, const float *x, int64_t m,
                   int64_t ldx, float *y) {
    double t0 = M->timers && T->tid == 0 ? now(M) : 0.0;
    for (int64_t p = 0; p < L->nparts; p++) {
        const td_part *P = &L->parts[p];
        int64_t a, b;
        share(T, P->rows, &a, &b);
        if (a < b && M->matmul((int)P->qtype, P->w + a * P->row_bytes, P->row_bytes, b - a, L->k, x, m, ldx,
                               y + P->col + a, L->n, 1))
            fail(T, -3);
        if (L->bias)  /* the columns this thread wrote */
            for (int64_t r = 0; r < m; r++)
                for (int64_t j = P->col + a; j < P->col + b; j++) y[r * L->n + j] += L->bias[j];
    }
    sync_team(T);
    if (M->timers && T->tid == 0) M->timers[0] += now(M) - t0;
}

/* rotate the two halves of each of ``heads`` head vectors of row r (models/layers.apply_rope) */
static void rope(float *row, int64_t heads, int64_t d, const float *c, const float *s) {
    int64_t half = d / 2;
    for (int64_t h = 0; h < heads; h++, row += d)
        for (int64_t i = 0; i < half; i++) {
            float a = row[i], b = row[i + half];
            row[i] = a * c[i] - b * s[i];
            row[i + half] = b * c[i] + a * s[i];
        }
}

/* 2 / 1 / 0: the AVX-512 / AVX2 / portable build (kernels/decoder.py builds the one this CPU
 * runs, like gguf_matmul.c, so the elementwise loops vectorise to its width). */
int td_isa(void) { return BUILD_ISA; }

#if defined(__GNUC__) && !defined(__clang__)
#define VECTOR_SELECTS __attribute__((optimize("no-trapping-math")))  /* the clamps vectorise */
#else
#define VECTOR_SELECTS
#endif

/* e^x in float32 without libm or branches, so the activation loops vectorise (a prefill of
 * 512 rows spent ~80 ms of 1.3 s in libm's expf): 2^k p(r) with k = round(x log2 e) (the
 * 1.5 * 2^23 rounding trick), r = x - k ln 2 (ln 2 in two parts) and Cephes' expf
 * polynomial; relative error <= 1.4 ulp over [-87, 88], where x is clamped (e^x stays a
 * normal float; a nan becomes -87, and g / (1 + e) stays nan through g). */
VECTOR_SELECTS static inline float exp_v(float x) {
    x = x > -87.0f ? x : -87.0f;
    x = x < 88.0f ? x : 88.0f;
    float t = x * 1.44269504088896341f + 12582912.0f;  /* k + 1.5 * 2^23, rounded */
    float k = t - 12582912.0f;
    int32_t ki;
    memcpy(&ki, &t, 4);
    ki -= 0x4B400000;  /* the integer k, from t's mantissa */
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = (ki + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* g[j] = act(g[j]) * u[j] for j < n: SiLU g / (1 + e^-g), or GELU-tanh 0.5 g (1 + tanh(v))
 * with tanh(v) = 1 - 2 / (1 + e^2v) (models/layers.py's activations). */
VECTOR_SELECTS static void act_mul(float *restrict g, const float *restrict u, int64_t n, int gelu) {
    if (gelu)
        for (int64_t j = 0; j < n; j++) {
            float x = g[j], v = 0.7978845608028654f * (x + 0.044715f * x * x * x);
            g[j] = 0.5f * x * (2.0f - 2.0f / (1.0f + exp_v(2.0f * v))) * u[j];
        }
    else
        for (int64_t j = 0; j < n; j++) g[j] = g[j] / (1.0f + exp_v(-g[j])) * u[j];
}

/* float32 -> bfloat16, rounded to nearest even (a NaN stays a quiet NaN): the rounding of
 * torch's .to(torch.bfloat16), which the eager layers' cache write does. Branch-free, so
 * the store loop vectorises. */
VECTOR_SELECTS static void store_bf16(uint16_t *restrict dst, const float *restrict src, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        dst[i] = (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : r);
    }
}

/* one row's key or value heads (n floats) into the cache at ``slot`` in its dtype */
static void store_kv(const td_model *M, void *cache, int64_t slot, const float *src, int64_t n) {
    if (M->kv_bf16)
        store_bf16((uint16_t *)cache + slot * n, src, n);
    else
        memcpy((float *)cache + slot * n, src, sizeof(float) * n);
}

/* Whether a group of fewer sequences than threads splits its keys between them (then
 * ``partial`` holds its segments: nseg x b*nq*heads x (head_dim + 2) floats) */
static int group_splits_keys(const td_model *M, const td_group *G, int nt) {
    return M->attention_keys && G->b < nt && fq_split_keys(G->b * M->kv_heads, G->nq, G->length, nt);
}

static void attend(const td_model *M, const td_team *T, const td_layer *L, const td_step *S,
                   const float *q, float *o, float *qpad, float *opad, float *partial) {
    int64_t nh = M->heads, kvh = M->kv_heads, d = M->head_dim, qs = nh * d;
    double t0 = M->timers && T->tid == 0 ? now(M) : 0.0;
    for (int64_t gi = 0; gi < S->ngroups; gi++) {
        const td_group *G = &S->groups[gi];
        int64_t n = G->b * G->nq, a, b;
        int w = L->sliding && G->mask[1] ? 1 : 0;
        if (G->index && T->tid == 0)  /* gather the group's queries (padded) */
            for (int64_t i = 0; i < n; i++) memcpy(qpad + i * qs, q + G->index[i] * qs, sizeof(float) * qs);
        if (G->index) sync_team(T);
        const float *qg = G->index ? qpad : q + G->start * qs;
        float *og = G->index ? opad : o + G->start * qs;
        if (G->b >= T->nt) {
            share(T, G->b, &a, &b);  /* this thread's sequences */
            if (a < b && M->attention(qg + a * G->nq * qs, og + a * G->nq * qs, b - a, G->nq, nh, kvh, d,
                                      L->k_cache, L->v_cache, (int)M->kv_bf16, G->slots + a * G->slot_b_stride,
                                      G->slot_b_stride, G->length, G->mask[w] + a * G->mask_b[w],
                                      G->mask_b[w], G->mask_q[w], (float)M->scale, 0, 1))
                fail(T, -4);
        } else if (group_splits_keys(M, G, T->nt)) {  /* a lone sequence's keys: segments each, merged */
            int64_t nseg = (G->length + FQ_SEG - 1) / FQ_SEG, nrows = G->b * G->nq * nh;
            if (M->attention_keys(qg, G->b, G->nq, nh, kvh, d, L->k_cache, L->v_cache, (int)M->kv_bf16, G->slots,
                                  G->slot_b_stride, G->length, G->mask[w], G->mask_b[w], G->mask_q[w],
                                  (float)M->scale, fq_seg_share(G->length, T->tid, T->nt),
                                  fq_seg_share(G->length, T->tid + 1, T->nt), partial))
                fail(T, -4);
            sync_team(T);
            share(T, nrows, &a, &b);
            M->attention_merge(partial, og, nrows, d, nseg, a, b);
        } else if (G->nq < 2) {  /* a few decode rows: the (sequence, key/value head) pairs split */
            if (M->attention(qg, og, G->b, G->nq, nh, kvh, d, L->k_cache, L->v_cache, (int)M->kv_bf16, G->slots,
                             G->slot_b_stride, G->length, G->mask[w], G->mask_b[w], G->mask_q[w],
                             (float)M->scale, T->tid, T->nt))
                fail(T, -4);
        } else {  /* fewer sequences than threads: each one's queries split between them */
            share_queries(T, G->nq, G->length, &a, &b);
            for (int64_t s = 0; a < b && s < G->b; s++) {
                int64_t row = s * G->nq + a;
                if (M->attention(qg + row * qs, og + row * qs, 1, b - a, nh, kvh, d, L->k_cache,
                                 L->v_cache, (int)M->kv_bf16, G->slots + s * G->slot_b_stride, G->slot_b_stride,
                                 G->length, G->mask[w] + s * G->mask_b[w] + a * G->mask_q[w],
                                 G->mask_b[w], G->mask_q[w], (float)M->scale, 0, 1))
                    fail(T, -4);
            }
        }
        sync_team(T);
        if (G->index && T->tid == 0)  /* scatter the real outputs */
            for (int64_t i = 0; i < n; i++)
                if (!G->real || G->real[i]) memcpy(o + G->index[i] * qs, opad + i * qs, sizeof(float) * qs);
    }
    if (M->timers && T->tid == 0) M->timers[1] += now(M) - t0;
}

static void layer_forward(const td_model *M, const td_team *T, const td_layer *L, const td_step *S,
                          float *x, float *h, float *qkv, float *q, float *o, float *gu, float *qpad,
                          float *opad, float *partial) {
    int64_t t = S->t, H = M->hidden, nh = M->heads, kvh = M->kv_heads, d = M->head_dim, I = M->inter;
    int64_t qs = nh * d, kvs = kvh * d, nqkv = qs + 2 * kvs, a, b;
    if (T->tid == 0)
        for (int64_t r = 0; r < t; r++) rmsnorm(x + r * H, h + r * H, H, L->attn_norm, M->eps);
    sync_team(T);
    linear(M, T, &L->qkv, h, t, H, qkv);
    if (T->tid == 0)
        for (int64_t r = 0; r < t; r++) {
            float *row = qkv + r * nqkv;
            if (L->q_norm)
                for (int64_t j = 0; j < nh; j++) rmsnorm(row + j * d, row + j * d, d, L->q_norm, M->eps);
            if (L->k_norm)
                for (int64_t j = 0; j < kvh; j++) rmsnorm(row + qs + j * d, row + qs + j * d, d, L->k_norm, M->eps);
            rope(row, nh + kvh, d, S->cos[L->rope] + r * (d / 2), S->sin[L->rope] + r * (d / 2));
            int64_t slot = S->slot_mapping[r];
            store_kv(M, L->k_cache, slot, row + qs, kvs);
            store_kv(M, L->v_cache, slot, row + qs + kvs, kvs);
            memcpy(q + r * qs, row, sizeof(float) * qs);
        }
    sync_team(T);
    attend(M, T, L, S, q, o, qpad, opad, partial);
    sync_team(T);  /* the scattered outputs */
    linear(M, T, &L->o, o, t, qs, h);
    if (T->tid == 0)
        for (int64_t r = 0; r < t; r++) {
            if (L->post_attn_norm) rmsnorm(h + r * H, h + r * H, H, L->post_attn_norm, M->eps);
            for (int64_t j = 0; j < H; j++) x[r * H + j] += h[r * H + j];
            rmsnorm(x + r * H, h + r * H, H, L->mlp_norm, M->eps);
        }
    sync_team(T);
    linear(M, T, &L->gate_up, h, t, H, gu);
    share(T, I, &a, &b);  /* the activation, over this thread's columns */
    for (int64_t r = 0; r < t; r++) {
        float *g = gu + r * 2 * I;
        act_mul(g + a, g + I + a, b - a, (int)M->gelu);
    }
    sync_team(T);
    linear(M, T, &L->down, gu, t, 2 * I, h);
    if (T->tid == 0)
        for (int64_t r = 0; r < t; r++) {
            if (L->post_mlp_norm) rmsnorm(h + r * H, h + r * H, H, L->post_mlp_norm, M->eps);
            for (int64_t j = 0; j < H; j++) x[r * H + j] += h[r * H + j];
        }
    sync_team(T);
}

/* x (t, hidden) float32, the embedded inputs, becomes the last layer's output (before the
 * final norm), computed by ``threads`` threads. Returns 0; -1 for bad shapes, -2 when out of memory, -3 / -4 when a matmul /
 * the attention kernel refuses its arguments. */
int td_forward(const td_model *M, const td_step *S, float *x, int threads) {
    int64_t t = S->t, H = M->hidden, d = M->head_dim;
    int64_t qs = M->heads * d, nqkv = qs + 2 * M->kv_heads * d, covered = 0, padded = 0, split = 0;
    if (threads < 1) threads = 1;
    if (t <= 0 || d % 2 || M->heads % M->kv_heads || S->ngroups < 1) return -1;
    for (int64_t gi = 0; gi < S->ngroups; gi++) {
        const td_group *G = &S->groups[gi];
        int64_t n = G->b * G->nq;
        if (G->b < 1 || G->nq < 1 || (!G->index && (G->start < 0 || G->start + n > t))) return -1;
        if (G->index) {
            for (int64_t i = 0; i < n; i++)
                if (G->index[i] < 0 || G->index[i] >= t) return -1;
            padded = n > padded ? n : padded;
        }
        for (int64_t i = 0; i < n; i++) covered += !G->real || G->real[i];
        if (group_splits_keys(M, G, threads)) {
            int64_t need = (G->length + FQ_SEG - 1) / FQ_SEG * n * M->heads * (d + 2);
            split = need > split ? need : split;
        }
    }
    if (covered != t) return -1; /* every row's output written exactly once */
    size_t floats = (size_t)t * (size_t)(H + nqkv + 2 * qs + 2 * M->inter) + (size_t)(2 * padded * qs)
                    + (size_t)split;
    float *buf = malloc(sizeof(float) * floats);
    if (!buf) return -2;
    float *h = buf, *qkv = h + t * H, *q = qkv + t * nqkv, *o = q + t * qs, *gu = o + t * qs;
    float *qpad = gu + t * 2 * M->inter, *opad = qpad + padded * qs, *partial = opad + padded * qs;
    td_barrier bar;
    atomic_init(&bar.count, 0);
    atomic_init(&bar.gen, 0);
    atomic_init(&bar.rc, 0);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        td_team T = {omp_get_thread_num(), omp_get_num_threads(), &bar};
#else
    {
        td_team T = {0, 1, &bar};
#endif
        for (int64_t l = 0; l < M->num_layers; l++)
            layer_forward(M, &T, &M->layers[l], S, x, h, qkv, q, o, gu, qpad, opad, partial);
    }
    int rc = atomic_load(&bar.rc);
    free(buf);
    return rc;
}
