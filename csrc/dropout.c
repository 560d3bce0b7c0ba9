/* dropout.c: inverted dropout with a counter-based mask; shapes in femto/ops/dropout.py. */
#include "femto.h"
#include "vecmath.h"
#include "dropout_hash.h" /* the mask's hash, shared with kernels/dropout.cl */

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
