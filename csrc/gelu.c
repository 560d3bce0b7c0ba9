/* gelu.c: GELU, tanh approximation; shapes in femto/ops/gelu.py. */
#include <math.h>

#include "femto.h"

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

void gelu_forward(float* out, const float* inp, size_t N) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        float cube = 0.044715f * x * x * x;
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + cube)));
    }
}

void gelu_backward(float* dinp, const float* dout, const float* inp, size_t N) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        float cube = 0.044715f * x * x * x;
        float tanh_out = tanhf(GELU_SCALE * (x + cube));
        float sech2 = 1.0f - tanh_out * tanh_out;
        float local = 0.5f * (1.0f + tanh_out) +
                      0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += local * dout[i];
    }
}
