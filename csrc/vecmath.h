/* vecmath.h: small inline helpers that let GCC vectorise the non-matmul kernels without -ffast-math.
 * Reductions keep 8 partial sums combined in a fixed order, so the result does not depend on the
 * thread count or the vector width, and exp is a branch-free Cephes-style expf that loops can
 * vectorise (glibc's expf cannot be). It is not a general libm: accuracy is about 2 ulp. */
#ifndef FEMTO_VECMATH_H
#define FEMTO_VECMATH_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* below this many elements of work a kernel runs on one thread: a parallel region costs more */
#define FEMTO_PARALLEL_MIN 32768

/* the sum of 8 partial sums in one fixed pairwise order (lane j with lane j+4, then pairs): every
 * 8-lane reduction ends here, so none depends on the thread count or the vector width */
static inline float vec_combine8(const float acc[8]) {
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* sum of a[i] * b[i]; 8 lanes, then vec_combine8 */
static inline float vec_dot(const float* restrict a, const float* restrict b, size_t n) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    float s = vec_combine8(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* sum of a[i] */
static inline float vec_sum(const float* restrict a, size_t n) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; j++) acc[j] += a[i + j];
    float s = vec_combine8(acc);
    for (; i < n; i++) s += a[i];
    return s;
}

/* largest a[i] (n >= 1); a NaN anywhere makes the result NaN, as a serial scan's would */
static inline float vec_max(const float* restrict a, size_t n) {
    float m[8];
    for (size_t j = 0; j < 8; j++) m[j] = a[0];
    int nan = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; j++) {
            float x = a[i + j];
            m[j] = x > m[j] ? x : m[j];
            nan |= x != x;
        }
    float r = m[0];
    for (size_t j = 1; j < 8; j++) r = m[j] > r ? m[j] : r;
    for (; i < n; i++) {
        r = a[i] > r ? a[i] : r;
        nan |= a[i] != a[i];
    }
    return nan ? NAN : r;
}

/* Cephes expf's core, written once for a float and for a vec16 x (the same operations in the same
 * order, so both give the same bits): n = round(x / ln 2) by the 1.5 * 2^23 trick, exact for
 * |n| < 2^22; r = x - n ln 2, with ln 2 split in two for exactness; p = e^r by the polynomial. The
 * caller scales p by 2^n. Only for x in [-87.33, 88.37]. */
#define FEMTO_EXPF_CORE(x, n, p)                                          \
    do {                                                                  \
        n = ((x) * 1.44269504088896341f + 12582912.0f) - 12582912.0f;    \
        __auto_type r_ = (x) - n * 0.693359375f - n * -2.12194440e-4f;    \
        p = r_ * 1.9875691500e-4f + 1.3981999507e-3f;                     \
        p = p * r_ + 8.3334519073e-3f;                                    \
        p = p * r_ + 4.1665795894e-2f;                                    \
        p = p * r_ + 1.6666665459e-1f;                                    \
        p = p * r_ + 5.0000001201e-1f;                                    \
        p = p * r_ * r_ + r_ + 1.0f;                                      \
    } while (0)

/* e^x for float x: Cephes expf's range reduction and polynomial, written without branches.
 * Results below 2^-126 flush to 0, x above 88.376 gives +inf, NaN stays NaN. */
static inline float vec_expf(float x) {
    const float hi = 88.3762626647949f, lo = -87.3365478515625f;
    /* Out-of-range x (and NaN) run the core on 0 and are replaced below: the core never sees NaN
     * or inf, and never makes a subnormal, whose multiply costs a microcode assist (~100 cycles). */
    float xc = x >= lo && x <= hi ? x : 0.0f;
    float n, p;
    FEMTO_EXPF_CORE(xc, n, p);
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)n + 127) << 23};
    float y = p * scale.f;
    y = x < lo ? 0.0f : y;
    y = x > hi ? INFINITY : y;
    return x != x ? x : y;
}

/* 16 floats as one GCC/Clang generic vector: a zmm register with AVX-512, two ymm with AVX2, smaller
 * pieces elsewhere. Loops written in it run 16 lanes wide whatever vector width GCC's auto-vectoriser
 * prefers (256 bits on most AVX-512 parts); each lane computes exactly what the scalar helper would. */
/* Without AVX-512, GCC warns that passing vec16 by value differs from what AVX-512 code would do;
 * these helpers are static inline, so that calling convention never crosses a file boundary. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vec16 __attribute__((vector_size(64)));
typedef int32_t vec16i __attribute__((vector_size(64)));

static inline vec16 vec16_load(const float* p) {
    vec16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void vec16_store(float* p, vec16 v) { memcpy(p, &v, sizeof v); }

/* 8 floats, and 8 doubles (what 8 floats widen to) */
typedef float vec8f __attribute__((vector_size(32)));
typedef double vec8d __attribute__((vector_size(64)));

static inline vec8f vec8f_load(const float* p) {
    vec8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline vec16 vec16_splat(float x) { return (vec16){0.0f} + x; }

/* lane i: a[i] where mask[i] is all ones (a comparison's true), else b[i] */
static inline vec16 vec16_select(vec16i mask, vec16 a, vec16 b) {
    return (vec16)((mask & (vec16i)a) | (~mask & (vec16i)b));
}

typedef float vec4f __attribute__((vector_size(16)));
typedef int32_t vec8i __attribute__((vector_size(32)));
typedef int32_t vec4i __attribute__((vector_size(16)));

/* the sum of the 16 lanes as a fixed pairwise tree: short dependency chains, same order always.
 * Halving in registers (lane i + lane i+8, then +4, +2, +1) instead of through memory keeps it a
 * handful of shuffles, which matters when it runs once per softmax row. */
static inline float vec16_sum(vec16 v) {
    vec8f h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
              __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    vec4f q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    return (q[0] + q[2]) + (q[1] + q[3]);
}

/* the largest of the 16 lanes (NaN lanes are the caller's business: see softmax_row) */
static inline float vec16_max(vec16 v) {
    vec8f a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
    vec8f b = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    vec8i ma = a > b;
    vec8f h = (vec8f)((ma & (vec8i)a) | (~ma & (vec8i)b));
    vec4f c = __builtin_shufflevector(h, h, 0, 1, 2, 3), d = __builtin_shufflevector(h, h, 4, 5, 6, 7);
    vec4i mc = c > d;
    vec4f q = (vec4f)((mc & (vec4i)c) | (~mc & (vec4i)d));
    float x = q[0] > q[2] ? q[0] : q[2], y = q[1] > q[3] ? q[1] : q[3];
    return x > y ? x : y;
}

/* e^x for x already in [-87.33, 88.37] (or NaN, which stays NaN): vec_expf's range reduction and
 * polynomial without its range handling, for callers that clamp (gelu.c) or select around it */
static inline vec16 vec16_expf_in_range(vec16 x) {
    vec16 n, p;
    FEMTO_EXPF_CORE(x, n, p);
    vec16i e = (__builtin_convertvector(n, vec16i) + 127) << 23;
    return p * (vec16)e;
}

/* vec_expf on 16 lanes, operation for operation, so both give the same bits */
static inline vec16 vec16_expf(vec16 x) {
    const vec16 hi = vec16_splat(88.3762626647949f), lo = vec16_splat(-87.3365478515625f);
    vec16 xc = vec16_select((x >= lo) & (x <= hi), x, vec16_splat(0.0f));
    vec16 y = vec16_expf_in_range(xc);
    y = vec16_select(x < lo, vec16_splat(0.0f), y);
    y = vec16_select(x > hi, vec16_splat(INFINITY), y);
    return vec16_select(x != x, x, y);
}

#endif
