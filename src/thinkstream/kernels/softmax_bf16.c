/* Row softmax over bfloat16, in place: the attention scores of a short chunk over a long
 * context (attention/few_query.py), where torch's softmax costs about as much as the
 * two matmuls around it. Per row, three passes over the row:
 *
 *   max m  ->  e = exp(x - m) into a float32 scratch row, summed  ->  x = bf16(e / sum)
 *
 * One rounding to bfloat16 at the end, as torch's softmax does (float accumulation).
 * exp(y), y <= 0: 2^t with t = y log2(e) split as n + f (n = round(t), |f| <= 1/2),
 * 2^f = e^(f ln 2) by its Taylor polynomial to degree 5 (relative error < 3e-6, far below
 * bfloat16's 2^-9), scaled by 2^n (vscalefps). y = -inf (a masked key) gives exactly 0.
 *
 * Built by thinkstream/kernels/native.py with the system C compiler; AVX-512 code is
 * selected per function (target attributes), so the file builds for any x86-64 and
 * softmax_bf16_isa() tells the caller what this CPU runs. */
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <math.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

int softmax_bf16_isa(void) {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl")))
        return 0;
    return __builtin_cpu_supports("avx512bf16") ? 2 : 1;
}

/* The mask of the lanes in use when ``left`` columns remain: all 16, or the row's tail. */
static inline __mmask16 lanes(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

AVX512 static inline __m512 load_bf16(const uint16_t *p, __mmask16 k) {
    __m256i h = _mm256_maskz_loadu_epi16(k, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AVX512 static inline __m512 exp_nonpositive(__m512 y) {
    __m512 t = _mm512_max_ps(_mm512_mul_ps(y, _mm512_set1_ps(1.4426950408889634f)),
                             _mm512_set1_ps(-160.0f));  /* 2^-160 rounds to 0 */
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 z = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.6931471805599453f));
    __m512 p = _mm512_set1_ps(1.0f / 120);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* Passes 1 and 2 of a row: its max, then exp(x - max) into scratch; returns 1 / sum. */
AVX512 static inline float exp_row(const uint16_t *row, int64_t cols, float *scratch) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (int64_t c = 0; c < cols; c += 16) {
        __mmask16 k = lanes(cols - c);
        m = _mm512_mask_max_ps(m, k, m, load_bf16(row + c, k));
    }
    __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    __m512 s = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 16) {
        __mmask16 k = lanes(cols - c);
        __m512 e = exp_nonpositive(_mm512_sub_ps(load_bf16(row + c, k), mx));
        s = _mm512_mask_add_ps(s, k, s, e);
        _mm512_mask_storeu_ps(scratch + c, k, e);
    }
    return 1.0f / _mm512_reduce_add_ps(s);
}

/* float32 -> bfloat16, round to nearest even (finite inputs), without AVX512_BF16. */
AVX512 static inline __m256i to_bf16(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
}

AVX512_BF16 static inline __m256i to_bf16_native(__m512 x) {
    return (__m256i)_mm512_cvtneps_pbh(x);
}

/* The exported kernels, one per instruction set: pass 3 (scale and round) differs only
 * in the conversion to bfloat16. */
#define SOFTMAX_ROWS(NAME, TARGET, CONVERT)                                                \
    TARGET void NAME(uint16_t *x, int64_t rows, int64_t cols, int64_t stride,              \
                     float *scratch) {                                                     \
        for (int64_t r = 0; r < rows; r++) {                                               \
            uint16_t *row = x + r * stride;                                                \
            __m512 inv = _mm512_set1_ps(exp_row(row, cols, scratch));                      \
            for (int64_t c = 0; c < cols; c += 16) {                                       \
                __mmask16 k = lanes(cols - c);                                             \
                __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, scratch + c), inv);      \
                _mm256_mask_storeu_epi16(row + c, k, CONVERT(p));                          \
            }                                                                              \
        }                                                                                  \
    }

SOFTMAX_ROWS(softmax_bf16_avx512, AVX512, to_bf16)
SOFTMAX_ROWS(softmax_bf16_avx512bf16, AVX512_BF16, to_bf16_native)

#else  /* not x86-64 with GCC or Clang: nothing here runs; the caller keeps torch's softmax */
int softmax_bf16_isa(void) { return 0; }
void softmax_bf16_avx512(uint16_t *x, int64_t rows, int64_t cols, int64_t stride,
                         float *scratch) { (void)x; (void)rows; (void)cols; (void)stride; (void)scratch; }
void softmax_bf16_avx512bf16(uint16_t *x, int64_t rows, int64_t cols, int64_t stride,
                             float *scratch) { (void)x; (void)rows; (void)cols; (void)stride; (void)scratch; }
#endif
