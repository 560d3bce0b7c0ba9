/* matmul.c: linear layer, out = inp @ weight^T + bias; shapes in femto/ops/matmul.py. */
#include "femto.h"

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    size_t N, size_t C, size_t OC) {
#pragma omp parallel for collapse(2) schedule(static)
    for (size_t n = 0; n < N; n++) {
        for (size_t o = 0; o < OC; o++) {
            const float* x = inp + n * C;
            const float* w = weight + o * C;
            float acc = bias ? bias[o] : 0.0f;
            for (size_t c = 0; c < C; c++) acc += x[c] * w[c];
            out[n * OC + o] = acc;
        }
    }
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, size_t N, size_t C, size_t OC) {
    /* Two passes so that every gradient row has exactly one owning thread (no races, no atomics). */
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (size_t n = 0; n < N; n++) {
            float* dx = dinp + n * C;
            for (size_t o = 0; o < OC; o++) {
                float g = dout[n * OC + o];
                const float* w = weight + o * C;
                for (size_t c = 0; c < C; c++) dx[c] += g * w[c];
            }
        }
    }
    if (dweight || dbias) {
#pragma omp parallel for schedule(static)
        for (size_t o = 0; o < OC; o++) {
            float bias_sum = 0.0f;
            for (size_t n = 0; n < N; n++) {
                float g = dout[n * OC + o];
                bias_sum += g;
                if (dweight) {
                    const float* x = inp + n * C;
                    float* dw = dweight + o * C;
                    for (size_t c = 0; c < C; c++) dw[c] += g * x[c];
                }
            }
            if (dbias) dbias[o] += bias_sum;
        }
    }
}
