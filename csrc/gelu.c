/* gelu.c: GELU, tanh approximation; shapes in femto/ops/gelu.py. */
#include <math.h>

#include "femto.h"
#include "vecmath.h"

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

/* 0.5 x (1 + tanh u) == x * sigmoid(2u): one vectorisable exp, and no 1 + tanh cancellation for
 * negative x, where the tanh form loses all relative precision. */
/* Elements go 16 at a time as vec16, then one at a time; both paths do the same float operations,
 * so the result does not depend on where a thread's chunk starts. */
static inline vec16 gelu16(vec16 x) {
    vec16 u = GELU_SCALE * (x + 0.044715f * x * x * x);
    return x / (1.0f + vec16_expf(-2.0f * u));
}

static inline float gelu1(float x) {
    float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    return x / (1.0f + vec_expf(-2.0f * u));
}

/* d/dx [x s(2u)] = s + x s (1 - s) 2 du/dx, with s = sigmoid(2u) = (1 + tanh u) / 2 */
static inline vec16 gelu_grad16(vec16 x) {
    vec16 u = GELU_SCALE * (x + 0.044715f * x * x * x);
    vec16 s = 1.0f / (1.0f + vec16_expf(-2.0f * u));
    return s + 2.0f * x * s * (1.0f - s) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
}

static inline float gelu_grad1(float x) {
    float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    float s = 1.0f / (1.0f + vec_expf(-2.0f * u));
    return s + 2.0f * x * s * (1.0f - s) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
}

void gelu_forward(float* out, const float* inp, size_t N) {
    size_t nblocks = N / 16;
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t i = 0; i < nblocks; i++) vec16_store(out + 16 * i, gelu16(vec16_load(inp + 16 * i)));
    for (size_t i = 16 * nblocks; i < N; i++) out[i] = gelu1(inp[i]);
}

void gelu_backward(float* dinp, const float* dout, const float* inp, size_t N, int accumulate) {
    size_t nblocks = N / 16;
    /* without accumulate, dinp may hold anything (a fresh buffer): it is written, never read */
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t i = 0; i < nblocks; i++) {
        vec16 g = gelu_grad16(vec16_load(inp + 16 * i)) * vec16_load(dout + 16 * i);
        if (accumulate) g = vec16_load(dinp + 16 * i) + g;
        vec16_store(dinp + 16 * i, g);
    }
    for (size_t i = 16 * nblocks; i < N; i++) {
        float g = gelu_grad1(inp[i]) * dout[i];
        dinp[i] = accumulate ? dinp[i] + g : g;
    }
}
