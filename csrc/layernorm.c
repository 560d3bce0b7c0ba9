/* layernorm.c: layer normalisation over the last axis (eps 1e-5); shapes in femto/ops/layernorm.py. */
#include <math.h>

#include "femto.h"

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, size_t N, size_t C) {
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const float* x = inp + n * C;
        float m = 0.0f;
        for (size_t c = 0; c < C; c++) m += x[c];
        m /= (float)C;
        /* two-pass variance: E[(x-m)^2] does not cancel catastrophically like E[x^2]-m^2 */
        float var = 0.0f;
        for (size_t c = 0; c < C; c++) {
            float d = x[c] - m;
            var += d * d;
        }
        var /= (float)C;
        float s = 1.0f / sqrtf(var + 1e-5f);
        float* y = out + n * C;
        for (size_t c = 0; c < C; c++) {
            float norm = (x[c] - m) * s;
            y[c] = norm * weight[c] + (bias ? bias[c] : 0.0f);
        }
        mean[n] = m;
        rstd[n] = s;
    }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        size_t N, size_t C) {
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (size_t n = 0; n < N; n++) {
            const float* x = inp + n * C;
            const float* g = dout + n * C;
            float m = mean[n], s = rstd[n];
            float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
            for (size_t c = 0; c < C; c++) {
                float norm = (x[c] - m) * s;
                float dnorm = weight[c] * g[c];
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * norm;
            }
            dnorm_mean /= (float)C;
            dnorm_norm_mean /= (float)C;
            float* dx = dinp + n * C;
            for (size_t c = 0; c < C; c++) {
                float norm = (x[c] - m) * s;
                float dnorm = weight[c] * g[c];
                dx[c] += s * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
            }
        }
    }
    if (dweight || dbias) {
        /* parameter gradients sum over rows: threads own columns so no two write the same element */
#pragma omp parallel for schedule(static)
        for (size_t c = 0; c < C; c++) {
            float dw = 0.0f, db = 0.0f;
            for (size_t n = 0; n < N; n++) {
                float g = dout[n * C + c];
                dw += (inp[n * C + c] - mean[n]) * rstd[n] * g;
                db += g;
            }
            if (dweight) dweight[c] += dw;
            if (dbias) dbias[c] += db;
        }
    }
}
