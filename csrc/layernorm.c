/* layernorm.c: layer normalisation over the last axis (eps 1e-5); shapes in femto/ops/layernorm.py. */
#include <math.h>

#include "femto.h"
#include "vecmath.h"

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, size_t N, size_t C) {
#pragma omp parallel for schedule(static) if (N * C >= FEMTO_PARALLEL_MIN)
    for (size_t n = 0; n < N; n++) {
        const float* restrict x = inp + n * C;
        float m = vec_sum(x, C) / (float)C;
        /* two-pass variance: E[(x-m)^2] does not cancel catastrophically like E[x^2]-m^2;
         * 8 partial sums in a fixed order let it vectorise */
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        size_t c = 0;
        for (; c + 8 <= C; c += 8)
            for (size_t j = 0; j < 8; j++) acc[j] += (x[c + j] - m) * (x[c + j] - m);
        float var = vec_combine8(acc);
        for (; c < C; c++) var += (x[c] - m) * (x[c] - m);
        var /= (float)C;
        float s = 1.0f / sqrtf(var + 1e-5f);
        float* restrict y = out + n * C;
        if (bias) {
            for (size_t i = 0; i < C; i++) y[i] = (x[i] - m) * s * weight[i] + bias[i];
        } else {
            for (size_t i = 0; i < C; i++) y[i] = (x[i] - m) * s * weight[i];
        }
        mean[n] = m;
        rstd[n] = s;
    }
}

/* dinp row n += the layer norm's input gradient for that row */
static inline void dinp_row(float* restrict dx, const float* restrict g, const float* restrict x,
                            const float* restrict weight, float m, float s, size_t C) {
    float a1[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    float a2[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    size_t c = 0;
    for (; c + 8 <= C; c += 8)
        for (size_t j = 0; j < 8; j++) {
            float dnorm = weight[c + j] * g[c + j];
            a1[j] += dnorm;
            a2[j] += dnorm * ((x[c + j] - m) * s);
        }
    float dnorm_mean = vec_combine8(a1);
    float dnorm_norm_mean = vec_combine8(a2);
    for (; c < C; c++) {
        float dnorm = weight[c] * g[c];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * ((x[c] - m) * s);
    }
    dnorm_mean /= (float)C;
    dnorm_norm_mean /= (float)C;
    for (size_t i = 0; i < C; i++) {
        float norm = (x[i] - m) * s;
        float dnorm = weight[i] * g[i];
        dx[i] += s * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
    }
}

/* The parameter gradients sum over rows. Up to LN_FUSED_MAX_C channels, one pass does everything:
 * LN_ROW_CHUNKS fixed blocks of rows (whatever the thread count) each sum their rows in order into a
 * partial on the caller's stack while they write dinp, and the partials are added in block order, so
 * x and dout are read once and the bits do not depend on threads. Wider rows fall back to two passes,
 * the second with a thread per block of LN_COLUMN_BLOCK columns. */
#define LN_ROW_CHUNKS 16
#define LN_FUSED_MAX_C 512
#define LN_COLUMN_BLOCK 16

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        size_t N, size_t C) {
    const int params = dweight || dbias;
    if (params && C <= LN_FUSED_MAX_C) {
        float partial[LN_ROW_CHUNKS][2][LN_FUSED_MAX_C]; /* [chunk][dweight, dbias][channel] */
        size_t chunk = (N + LN_ROW_CHUNKS - 1) / LN_ROW_CHUNKS;
#pragma omp parallel for schedule(static) if (N * C >= FEMTO_PARALLEL_MIN)
        for (size_t k = 0; k < LN_ROW_CHUNKS; k++) {
            float* restrict pw = partial[k][0];
            float* restrict pb = partial[k][1];
            for (size_t i = 0; i < C; i++) pw[i] = pb[i] = 0.0f;
            size_t lo = k * chunk < N ? k * chunk : N, hi = lo + chunk < N ? lo + chunk : N;
            for (size_t n = lo; n < hi; n++) {
                const float* restrict x = inp + n * C;
                const float* restrict g = dout + n * C;
                float m = mean[n], s = rstd[n];
                if (dinp) dinp_row(dinp + n * C, g, x, weight, m, s, C);
                for (size_t i = 0; i < C; i++) {
                    pw[i] += (x[i] - m) * s * g[i];
                    pb[i] += g[i];
                }
            }
        }
        for (size_t i = 0; i < C; i++) {
            float w = 0.0f, b = 0.0f;
            for (size_t k = 0; k < LN_ROW_CHUNKS; k++) {
                w += partial[k][0][i];
                b += partial[k][1][i];
            }
            if (dweight) dweight[i] += w;
            if (dbias) dbias[i] += b;
        }
        return;
    }
    if (dinp) {
#pragma omp parallel for schedule(static) if (N * C >= FEMTO_PARALLEL_MIN)
        for (size_t n = 0; n < N; n++)
            dinp_row(dinp + n * C, dout + n * C, inp + n * C, weight, mean[n], rstd[n], C);
    }
    if (params) {
        /* parameter gradients sum over rows: a thread owns a block of columns and walks the rows in
         * order, so row segments vectorise and no two threads write the same element */
        size_t nblocks = (C + LN_COLUMN_BLOCK - 1) / LN_COLUMN_BLOCK;
#pragma omp parallel for schedule(static) if (N * C >= FEMTO_PARALLEL_MIN && nblocks > 1)
        for (size_t cb = 0; cb < nblocks; cb++) {
            size_t c0 = cb * LN_COLUMN_BLOCK;
            size_t width = C - c0 < LN_COLUMN_BLOCK ? C - c0 : LN_COLUMN_BLOCK;
            float dw[LN_COLUMN_BLOCK], db[LN_COLUMN_BLOCK];
            for (size_t j = 0; j < width; j++) dw[j] = db[j] = 0.0f;
            for (size_t n = 0; n < N; n++) {
                const float* restrict x = inp + n * C + c0;
                const float* restrict g = dout + n * C + c0;
                float m = mean[n], s = rstd[n];
                for (size_t j = 0; j < width; j++) {
                    dw[j] += (x[j] - m) * s * g[j];
                    db[j] += g[j];
                }
            }
            for (size_t j = 0; j < width; j++) {
                if (dweight) dweight[c0 + j] += dw[j];
                if (dbias) dbias[c0 + j] += db[j];
            }
        }
    }
}
