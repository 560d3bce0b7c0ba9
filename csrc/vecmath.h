/* vecmath.h: small inline helpers that let GCC vectorise the non-matmul kernels without -ffast-math.
 * Reductions keep 8 partial sums combined in a fixed order, so the result does not depend on the
 * thread count or the vector width, and exp is a branch-free Cephes-style expf that loops can
 * vectorise (glibc's expf cannot be). It is not a general libm: accuracy is about 2 ulp. */
#ifndef FEMTO_VECMATH_H
#define FEMTO_VECMATH_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* below this many elements of work a kernel runs on one thread: a parallel region costs more */
#define FEMTO_PARALLEL_MIN 32768

/* sum of a[i] * b[i]; 8 lanes, then a fixed pairwise combine */
static inline float vec_dot(const float* restrict a, const float* restrict b, size_t n) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* sum of a[i] */
static inline float vec_sum(const float* restrict a, size_t n) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; j++) acc[j] += a[i + j];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
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

/* e^x for float x: Cephes expf's range reduction and polynomial, written without branches.
 * Results below 2^-126 flush to 0, x above 88.376 gives +inf, NaN stays NaN. */
static inline float vec_expf(float x) {
    const float hi = 88.3762626647949f, lo = -87.3365478515625f;
    float xc = x > lo ? x : lo; /* NaN-safe clamp: the core below never sees NaN or inf */
    xc = xc < hi ? xc : hi;
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick, exact for |n| < 2^22 */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f - n * -2.12194440e-4f; /* ln 2 split in two for exactness */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)n + 127) << 23};
    float y = p * scale.f;
    y = x < lo ? 0.0f : y;
    y = x > hi ? INFINITY : y;
    return x != x ? x : y;
}

#endif
