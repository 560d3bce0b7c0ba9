/* gelu.c: GELU, tanh approximation; shapes in femto/ops/gelu.py. */
#include <math.h>

#include "femto.h"
#include "vecmath.h"

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

/* 0.5 x (1 + tanh u) == x * sigmoid(2u): one vectorisable exp, and no 1 + tanh cancellation for
 * negative x, where the tanh form loses all relative precision. */

void gelu_forward(float* out, const float* inp, size_t N) {
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + vec_expf(-2.0f * u));
    }
}

void gelu_backward(float* dinp, const float* dout, const float* inp, size_t N) {
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        float s = 1.0f / (1.0f + vec_expf(-2.0f * u)); /* sigmoid(2u) = (1 + tanh u) / 2 */
        /* d/dx [x s(2u)] = s + x s (1 - s) 2 du/dx */
        float local = s + 2.0f * x * s * (1.0f - s) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += local * dout[i];
    }
}
