/* attention.c: causal multi-head self-attention over a fused qkv; shapes in femto/ops/attention.py. */
#include <math.h>
#include <string.h>

#include "femto.h"
#include "vecmath.h"

/* y += a * x over n floats: the per-head building block, vectorised over the head size */
static inline void axpy(float* restrict y, float a, const float* restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

void attention_forward(float* out, float* att, const float* qkv, size_t B, size_t T, size_t C,
                       size_t NH) {
    size_t HS = C / NH;
    float scale = 1.0f / sqrtf((float)HS);
    size_t work = B * NH * T * T * HS;
#pragma omp parallel for collapse(3) schedule(static) if (work >= FEMTO_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++) {
        for (size_t h = 0; h < NH; h++) {
            for (size_t t = 0; t < T; t++) {
                const float* q = qkv + (b * T + t) * 3 * C + h * HS;
                float* p = att + ((b * NH + h) * T + t) * T;  // row t of this head's (T, T) matrix
                for (size_t t2 = 0; t2 <= t; t2++) {
                    const float* k = qkv + (b * T + t2) * 3 * C + C + h * HS;
                    p[t2] = vec_dot(q, k, HS) * scale;
                }
                /* subtracting the row max keeps exp() finite for any score */
                float maxval = vec_max(p, t + 1);
                for (size_t t2 = 0; t2 <= t; t2++) p[t2] = vec_expf(p[t2] - maxval);
                float inv = 1.0f / vec_sum(p, t + 1);
                for (size_t t2 = 0; t2 <= t; t2++) p[t2] *= inv;
                for (size_t t2 = t + 1; t2 < T; t2++) p[t2] = 0.0f;
                float* o = out + (b * T + t) * C + h * HS;
                for (size_t i = 0; i < HS; i++) o[i] = 0.0f;
                for (size_t t2 = 0; t2 <= t; t2++)
                    axpy(o, p[t2], qkv + (b * T + t2) * 3 * C + 2 * C + h * HS, HS);
            }
        }
    }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                        const float* out, size_t B, size_t T, size_t C, size_t NH) {
    size_t HS = C / NH;
    float scale = 1.0f / sqrtf((float)HS);
    size_t work = B * NH * T * T * HS;
    /* One thread owns a whole (batch, head): dk and dv of a position gather from every later query,
     * so splitting over t would race. The softmax backward's row sum, sum_j p_j * dp_j, equals
     * dot(dout_t, out_t), which saves a scratch row (the FlashAttention-2 identity). */
#pragma omp parallel for collapse(2) schedule(static) if (work >= FEMTO_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++) {
        for (size_t h = 0; h < NH; h++) {
            for (size_t t = 0; t < T; t++) {
                const float* q = qkv + (b * T + t) * 3 * C + h * HS;
                const float* g = dout + (b * T + t) * C + h * HS;
                const float* p = att + ((b * NH + h) * T + t) * T;
                float* dq = dqkv + (b * T + t) * 3 * C + h * HS;
                float rowdot = vec_dot(g, out + (b * T + t) * C + h * HS, HS);
                for (size_t t2 = 0; t2 <= t; t2++) {
                    size_t row = (b * T + t2) * 3 * C + h * HS;
                    float dp = vec_dot(g, qkv + row + 2 * C, HS);
                    float ds = p[t2] * (dp - rowdot) * scale;
                    axpy(dq, ds, qkv + row + C, HS);
                    axpy(dqkv + row + C, ds, q, HS);
                    axpy(dqkv + row + 2 * C, p[t2], g, HS);
                }
            }
        }
    }
}

void attention_cached_forward(float* out, float* kcache, float* vcache, const float* qkv, size_t B,
                              size_t T, size_t C, size_t NH, size_t pos, size_t TMAX) {
    size_t HS = C / NH;
    float scale = 1.0f / sqrtf((float)HS);
    size_t work = B * NH * T * (pos + T) * HS;
    for (size_t b = 0; b < B; b++) {
        for (size_t h = 0; h < NH; h++) {
            for (size_t t = 0; t < T; t++) {
                const float* src = qkv + (b * T + t) * 3 * C + h * HS;
                size_t slot = ((b * NH + h) * TMAX + pos + t) * HS;
                memcpy(kcache + slot, src + C, HS * sizeof(float));
                memcpy(vcache + slot, src + 2 * C, HS * sizeof(float));
            }
        }
    }
    /* online softmax (running max and sum): no scratch row of scores is needed */
#pragma omp parallel for collapse(3) schedule(static) if (work >= FEMTO_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++) {
        for (size_t h = 0; h < NH; h++) {
            for (size_t t = 0; t < T; t++) {
                const float* q = qkv + (b * T + t) * 3 * C + h * HS;
                const float* keys = kcache + (b * NH + h) * TMAX * HS;
                const float* values = vcache + (b * NH + h) * TMAX * HS;
                float* restrict o = out + (b * T + t) * C + h * HS;
                for (size_t i = 0; i < HS; i++) o[i] = 0.0f;
                float maxval = -INFINITY, sum = 0.0f;
                for (size_t j = 0; j <= pos + t; j++) {
                    float s = vec_dot(q, keys + j * HS, HS) * scale;
                    float newmax = s > maxval ? s : maxval;
                    float correction = expf(maxval - newmax);
                    float w = expf(s - newmax);
                    sum = sum * correction + w;
                    for (size_t i = 0; i < HS; i++) o[i] = o[i] * correction + w * values[j * HS + i];
                    maxval = newmax;
                }
                for (size_t i = 0; i < HS; i++) o[i] /= sum;
            }
        }
    }
}
