/* dropout.c: inverted dropout with a counter-based mask; shapes in femto/ops/dropout.py. */
#include "femto.h"
#include "vecmath.h"

/* A hash of (seed, i) instead of a sequential RNG: the mask is the same for any thread count and on
 * OpenCL (kernels/dropout.cl uses the same function), and backward recomputes it instead of storing it. */
static inline float dropout_uniform(uint32_t seed, uint32_t i) {
    uint32_t x = i * 0x9E3779B9u ^ (seed * 0x85EBCA6Bu + 0x632BE59Bu);
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return (float)(x >> 8) * (1.0f / 16777216.0f);
}

void dropout_forward(float* out, const float* inp, const int32_t* seeds, size_t N, float p,
                     int site) {
    uint32_t seed = (uint32_t)seeds[site];
    float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t i = 0; i < N; i++) {
        out[i] = dropout_uniform(seed, (uint32_t)i) < p ? 0.0f : inp[i] * keep_scale;
    }
}

void dropout_backward(float* dinp, const float* dout, const int32_t* seeds, size_t N, float p,
                      int site) {
    uint32_t seed = (uint32_t)seeds[site];
    float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t i = 0; i < N; i++) {
        /* a select, not a branch, so the loop vectorises */
        dinp[i] += dropout_uniform(seed, (uint32_t)i) < p ? 0.0f : dout[i] * keep_scale;
    }
}
