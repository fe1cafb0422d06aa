/* GGUF-native linear layers: y = x W^T with W kept as the GGUF file stores it (ggml's
 * quantized blocks), decoded on the fly, one weight row at a time, and dotted with every
 * row of x. Decode at small batch is bound by weight bytes: a Q4_1 row is 5/32 of its
 * float32 size, so reading the blocks as stored is the win. By default (gguf_matmul) the
 * arithmetic stays float32 (x float32, sums float32), so the result is the dequantized
 * float32 model's up to summation order; gguf_matmul_ex's ``act`` 16 / 8 rounds x per
 * 32-value block to int16 / int8 first and takes integer dot products (gguf_simd.h).
 *
 *   for each weight row n (split across OpenMP threads):
 *       w = decode(row n)             SIMD builds: 32 values at a time in registers
 *                                     (portable: K floats into a buffer in L1/L2)
 *       for each row r of x:  y[r, n] = dot(w, x[r])   (AVX-512: up to 12 rows a pass; else four)
 *
 * That is load-bound beyond a few x rows; there the float32 product is a register-blocked
 * GEMM instead (gguf_gemm.h: weight panels decoded once into L1, x transposed once).
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
 * One source, built three times by thinkstream/kernels/gguf.py: -mavx512f (AVX-512, plus
 * -mavx512vnni on CPUs with VNNI), -mavx2 -mfma (AVX2) and with no flags (portable). The
 * SIMD builds use gguf_simd.h's intrinsics; the portable one plain loops the compiler
 * vectorises (GCC vector extensions for the dot products); gguf_isa() says which build
 * this is, gguf_vnni() whether it has VNNI. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "kernels_common.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
       T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14 };  /* ggml's type ids */

int gguf_isa(void) { return BUILD_ISA; }

int gguf_vnni(void) {
#if defined(__AVX512VNNI__)
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

/* dot(w, x_r) for r < ROWS (a constant after inlining); k is a multiple of 32. */
static inline __attribute__((always_inline)) void dot_rows_n(const float *w, const float *x, int64_t ldx,
                                                             const int rows, int64_t k, float *out, int64_t ldy) {
    v16 a[4] = {{0}}, b[4] = {{0}};
    for (int64_t c = 0; c < k; c += 32) {
        v16 w0 = ld(w + c), w1 = ld(w + c + 16);
        for (int r = 0; r < rows; r++) {
            a[r] += w0 * ld(x + r * ldx + c);
            b[r] += w1 * ld(x + r * ldx + c + 16);
        }
    }
    for (int r = 0; r < rows; r++) out[r * ldy] = hsum(a[r] + b[r]);
}

/* dot(w, x_r) for r < rows (1..4): one loop per row count. */
static inline void dot_rows(const float *w, const float *x, int64_t ldx, int rows, int64_t k,
                            float *out, int64_t ldy) {
    switch (rows) {
    case 4: dot_rows_n(w, x, ldx, 4, k, out, ldy); break;
    case 3: dot_rows_n(w, x, ldx, 3, k, out, ldy); break;
    case 2: dot_rows_n(w, x, ldx, 2, k, out, ldy); break;
    default: dot_rows_n(w, x, ldx, 1, k, out, ldy); break;
    }
}

/* ---- activations: float32 rows, or quantized per 32-value block -------------------- */

enum { F32 = 0, I16 = 1, I8 = 2, DEQ = 3 };  /* the modes of gguf_simd.h */

/* The x rows a pass reads: float rows (F32) or their quantized blocks (I16 / I8; row r's
 * block b: values q + r * k + 32 b, scale s[r * nb + b], sum of the float values
 * sum[r * nb + b]). */
typedef struct {
    const float *x;
    int64_t ldx;
    const int16_t *q16;
    const int8_t *q8;
    const float *s, *sum;
    int64_t k, nb;
    float *dq;  /* DEQ: column c's float goes to dq[c - dq0] */
    int64_t dq0;
} xrows;

/* x rows -> per 32-value block: values rounded to nearest into [-qmax, qmax] (int16 when
 * qmax = 32767, else int8), the scale max|x| / qmax and the float sum of the block. A block
 * of zeros gets scale 0; inf / nan in a block makes its scale and sum non-finite, so the
 * products are nan as in float32. */
static void quantize_x(const float *x, int64_t m, int64_t ldx, int64_t k, int qmax,
                       int16_t *q16, int8_t *q8, float *s, float *sum) {
    int64_t nb = k / 32;
    for (int64_t r = 0; r < m; r++)
        for (int64_t b = 0; b < nb; b++) {
            const float *v = x + r * ldx + 32 * b;
            float mx = 0.0f, t = 0.0f;
            for (int j = 0; j < 32; j++) {
                float u = v[j] < 0 ? -v[j] : v[j];
                mx = u > mx ? u : mx;
                t += v[j];
            }
            int finite = mx <= 3.4e38f && t == t;
            double inv = (finite && mx > 0.0f) ? (double)qmax / (double)mx : 0.0;
            s[r * nb + b] = finite ? (float)((double)mx / qmax) : mx + t;  /* inf / nan */
            sum[r * nb + b] = t;
            for (int j = 0; j < 32; j++) {
                int qi = finite ? (int)__builtin_rint((double)v[j] * inv) : 0;
                if (q16) q16[r * k + 32 * b + j] = (int16_t)qi;
                else q8[r * k + 32 * b + j] = (int8_t)qi;
            }
        }
}

#if defined(__AVX2__)
#include "gguf_simd.h"
#include "gguf_gemm.h"
#endif

/* Weight rows n0..n1 against every row of X; ``buf`` holds K floats (portable path). */
static void rows_range(int mode, int type, deq_fn fn, int values, int bytes, const uint8_t *w,
                       int64_t row_bytes, int64_t n0, int64_t n1, int64_t k, const xrows *X,
                       int64_t m, float *y, int64_t ldy, float *buf) {
#if defined(__AVX2__)
    rows_fn simd = simd_rows(mode, type);
    (void)fn; (void)buf; (void)values; (void)bytes;
    if (m <= (mode == F32 && ROWS8 ? 12 : 4)) {  /* one pass: the rows' loop in the kernel */
        if (m > 0) simd(w, row_bytes, n0, n1, k, X, (int)m, y, ldy);
        return;
    }
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t r = 0, step; r < m; r += step) {
            /* rows this pass: up to 12 in one (5-7 and 9-11 too: the weights decoded once,
             * not twice as 4 / 8 + the rest; a 6-row verification step cost what 8 did) */
            step = mode == F32 && ROWS8 && m - r > 4 ? (m - r > 8 ? 12 : 8) : 4;
            xrows G = *X;  /* rows r.. */
            G.x += r * X->ldx;
            if (mode != F32) {
                G.q16 += mode == I16 ? r * k : 0;
                G.q8 += mode == I8 ? r * k : 0;
                G.s += r * X->nb;
                G.sum += r * X->nb;
            }
            simd(w, row_bytes, n, n + 1, k, &G, m - r < step ? (int)(m - r) : (int)step, y + r * ldy, ldy);
        }
    }
#else
    (void)type; (void)mode;
    for (int64_t n = n0; n < n1; n++) {
        deq_row(fn, values, bytes, w + n * row_bytes, k, buf);
        for (int64_t r = 0; r < m; r += 4) {
            int rows = m - r < 4 ? (int)(m - r) : 4;
            dot_rows(buf, X->x + r * X->ldx, X->ldx, rows, k, y + r * ldy + n, ldy);
        }
    }
#endif
}

/* The computation gguf_matmul_ex runs for ``act``, m rows and the weights' type. act 16:
 * int16 activations where they are faster than float32, for one row, and for two with the
 * 4- and 5-bit 32-value types (measured on Zen 4 with SmolLM2's shapes: 0.7-0.9x float32's
 * time at one row, ~0.9x at two for those types, 1.0-1.2x at two for Q8_0 / K types and at
 * four rows for all: each row costs a product, a conversion and an FMA per block against
 * float32's two FMAs), float32 above. act 8: int8 for any m. The portable build: float32. */
static int act_mode(int act, int64_t m, int type) {
#if defined(__AVX2__)
    int small = type == T_Q4_0 || type == T_Q4_1 || type == T_Q5_0 || type == T_Q5_1;
    if (act == 8) return I8;
    if (act == 16 && (m == 1 || (m == 2 && small))) return I16;
#else
    (void)act; (void)m; (void)type;
#endif
    return F32;
}

/* x rows from which the float32 product runs as a GEMM (gguf_gemm.h) rather than as dot
 * products: measured on Zen 4 with SmolLM2's shapes, 1 thread (docs/benchmarks.md). */
#define GEMM_MIN_ROWS 13

/* Whether gguf_matmul_path's float32 product takes the GEMM: ``path`` 0 by row count, 1 the
 * dot products, 2 the GEMM (where built: AVX2 / AVX-512). */
static int use_gemm(int path, int mode, int64_t m) {
#if defined(__AVX2__)
    return mode == F32 && (path == 2 || (path == 0 && m >= GEMM_MIN_ROWS));
#else
    (void)path; (void)mode; (void)m;
    return 0;
#endif
}

/* y[r, n] = sum_c x[r, c] W[n, c] for r < m, n < n_rows. W: n_rows rows of row_bytes bytes
 * (k values each, k a multiple of the type's block); x: m rows, stride ldx floats; y:
 * stride ldy floats. ``act`` chooses the activations' precision: 0 or 32 float32 (the
 * dequantized model's arithmetic up to summation order), 16 int16 per 32-value block for
 * few rows (relative error ~1e-5 of the block's largest |x|; act_mode), 8 int8 per block
 * (llama.cpp's Q8 activations, ~250x coarser). The portable build always computes in
 * float32. The float32 product runs as dot products for few rows and as a GEMM
 * (gguf_gemm.h) for many (``path`` 0: by GEMM_MIN_ROWS; 1 / 2 force the dot products / the
 * GEMM, the tests' and benchmarks' handle; the portable build has only the dot products).
 * Returns 0, -1 for an unsupported type / shape / act / path, -2 when memory runs out. */
int gguf_matmul_path(int type, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                     const float *x, int64_t m, int64_t ldx, float *y, int64_t ldy, int threads, int act,
                     int path) {
    int values, bytes;
    deq_fn fn;
    if (!block_info(type, &values, &bytes, &fn) || k % values || k / values * bytes != row_bytes
        || (act != 0 && act != 8 && act != 16 && act != 32) || path < 0 || path > 2)
        return -1;
    int mode = act_mode(act, m, type);
#if defined(__AVX2__)
    if (use_gemm(path, mode, m) && m > 0)
        return gemm(type, w, row_bytes, n_rows, k, x, m, ldx, y, ldy, threads);
#else
    (void)use_gemm;
#endif
    int64_t nb = k / 32;
    xrows X = {x, ldx, NULL, NULL, NULL, NULL, k, nb};
    void *qbuf = NULL;
    if (mode != F32 && m > 0) {  /* the quantized rows, once per call, shared by the threads */
        size_t qbytes = (size_t)(m * k * (mode == I16 ? 2 : 1) + 63) / 64 * 64;
        qbuf = aligned_alloc(64, qbytes + (size_t)(2 * m * nb * 4 + 63) / 64 * 64);
        if (qbuf == NULL) return -2;
        float *s = (float *)((char *)qbuf + qbytes);
        X.q16 = mode == I16 ? (int16_t *)qbuf : NULL;
        X.q8 = mode == I8 ? (int8_t *)qbuf : NULL;
        X.s = s;
        X.sum = s + m * nb;
        quantize_x(x, m, ldx, k, mode == I16 ? 32767 : 127, (int16_t *)X.q16, (int8_t *)X.q8, s, s + m * nb);
    }
    int failed = 0;
    if (threads < 1) threads = 1;
    if (threads > n_rows / 16) threads = n_rows / 16 > 1 ? (int)(n_rows / 16) : 1;
#ifdef _OPENMP
    if (threads > 1) {
#pragma omp parallel num_threads(threads)
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            int64_t per = (n_rows + nt - 1) / nt, n0 = t * per, n1 = n0 + per < n_rows ? n0 + per : n_rows;
            float *buf = aligned_alloc(64, (size_t)((k * 4 + 63) / 64 * 64));
            if (buf == NULL) {
#pragma omp atomic write
                failed = 1;
            } else {
                if (n0 < n1) rows_range(mode, type, fn, values, bytes, w, row_bytes, n0, n1, k, &X, m, y, ldy, buf);
                free(buf);
            }
        }
        free(qbuf);
        return failed ? -2 : 0;
    }
#endif
    float *buf = aligned_alloc(64, (size_t)((k * 4 + 63) / 64 * 64));
    if (buf == NULL) {
        failed = 1;
    } else {
        rows_range(mode, type, fn, values, bytes, w, row_bytes, 0, n_rows, k, &X, m, y, ldy, buf);
        free(buf);
    }
    free(qbuf);
    return failed ? -2 : 0;
}

/* gguf_matmul_path choosing the float32 product's path by row count. */
int gguf_matmul_ex(int type, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                   const float *x, int64_t m, int64_t ldx, float *y, int64_t ldy, int threads, int act) {
    return gguf_matmul_path(type, w, row_bytes, n_rows, k, x, m, ldx, y, ldy, threads, act, 0);
}

/* gguf_matmul_ex with float32 / int16 / int8 activations: the entry points other kernels
 * call through a pointer (kernels/decoder.c), one per ``quantization`` setting. */
int gguf_matmul(int type, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                const float *x, int64_t m, int64_t ldx, float *y, int64_t ldy, int threads) {
    return gguf_matmul_ex(type, w, row_bytes, n_rows, k, x, m, ldx, y, ldy, threads, 32);
}

int gguf_matmul_i16(int type, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                    const float *x, int64_t m, int64_t ldx, float *y, int64_t ldy, int threads) {
    return gguf_matmul_ex(type, w, row_bytes, n_rows, k, x, m, ldx, y, ldy, threads, 16);
}

int gguf_matmul_i8(int type, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                   const float *x, int64_t m, int64_t ldx, float *y, int64_t ldy, int threads) {
    return gguf_matmul_ex(type, w, row_bytes, n_rows, k, x, m, ldx, y, ldy, threads, 8);
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
