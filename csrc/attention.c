/* attention.c: causal multi-head self-attention over a fused qkv; shapes in femto/ops/attention.py. */
#include <math.h>
#include <string.h>

#include "femto.h"
#include "vecmath.h"

/* y += a * x over n floats: the per-head building block, vectorised over the head size */
static inline void axpy(float* restrict y, float a, const float* restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* Scores and dP take 16 keys at a time from a transposed copy of their head slice on the stack
 * (HS x 16), so the dot products run across keys in vector lanes with no horizontal sums; a head
 * size above ATT_PACK_HS (the stack tile's limit) takes the plain per-key dot product instead. */
#define ATT_TILE 16
#define ATT_PACK_HS 128

/* s[j] = q . x[j] for the 16 keys of a tile; xt is the tile transposed, (HS, ATT_TILE). GCC's vector
 * extension keeps the 16 sums in two registers (auto-vectorisation spilled them to the stack). */
typedef float v8f __attribute__((vector_size(32)));

static inline void tile_dots(float* restrict s, const float* restrict q, const float* restrict xt,
                             size_t HS) {
    v8f acc0 = {0.0f}, acc1 = {0.0f};
    for (size_t i = 0; i < HS; i++) {
        v8f x0, x1;
        memcpy(&x0, xt + i * ATT_TILE, sizeof x0);
        memcpy(&x1, xt + i * ATT_TILE + 8, sizeof x1);
        acc0 += q[i] * x0;
        acc1 += q[i] * x1;
    }
    memcpy(s, &acc0, sizeof acc0);
    memcpy(s + 8, &acc1, sizeof acc1);
}

/* y[i] += sum_j w[j] * x[j * stride + i] for i < HS, summed over j in order. Sixteen columns at a
 * time stay in registers across the j loop, instead of a load-add-store chain through y per row. */
static inline void weighted_rows(float* restrict y, const float* restrict w, const float* x,
                                 size_t stride, size_t n, size_t HS) {
    size_t i0 = 0;
    for (; i0 + 16 <= HS; i0 += 16) {
        v8f acc0 = {0.0f}, acc1 = {0.0f};
        for (size_t j = 0; j < n; j++) {
            v8f x0, x1;
            memcpy(&x0, x + j * stride + i0, sizeof x0);
            memcpy(&x1, x + j * stride + i0 + 8, sizeof x1);
            acc0 += w[j] * x0;
            acc1 += w[j] * x1;
        }
        v8f y0, y1;
        memcpy(&y0, y + i0, sizeof y0);
        memcpy(&y1, y + i0 + 8, sizeof y1);
        y0 += acc0;
        y1 += acc1;
        memcpy(y + i0, &y0, sizeof y0);
        memcpy(y + i0 + 8, &y1, sizeof y1);
    }
    for (; i0 < HS; i0++) {
        float acc = 0.0f;
        for (size_t j = 0; j < n; j++) acc += w[j] * x[j * stride + i0];
        y[i0] += acc;
    }
}

/* rows t0 .. t0+n-1 of one head's k or v (stride 3C apart), transposed into xt; missing keys are 0 */
static inline void pack_tile(float* restrict xt, const float* restrict x, size_t stride, size_t n,
                             size_t HS) {
    for (size_t j = 0; j < ATT_TILE; j++)
        for (size_t i = 0; i < HS; i++) xt[i * ATT_TILE + j] = j < n ? x[j * stride + i] : 0.0f;
}

/* s[j] = q . x[j] for j < n, whichever way fits the head size */
static inline void key_dots(float* restrict s, const float* restrict q, const float* xt,
                            const float* x, size_t stride, size_t n, size_t HS) {
    if (HS <= ATT_PACK_HS) {
        tile_dots(s, q, xt, HS);
    } else {
        for (size_t j = 0; j < n; j++) s[j] = vec_dot(q, x + j * stride, HS);
    }
}

void attention_forward(float* out, float* att, const float* qkv, size_t B, size_t T, size_t C,
                       size_t NH) {
    size_t HS = C / NH;
    float scale = 1.0f / sqrtf((float)HS);
    size_t work = B * NH * T * T * HS;
    /* one thread owns a (batch, head): it packs each key tile once for every query that uses it */
#pragma omp parallel for collapse(2) schedule(static) if (work >= FEMTO_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++) {
        for (size_t h = 0; h < NH; h++) {
            const float* qs = qkv + b * T * 3 * C + h * HS;  // q of position t at qs + t * 3C
            float* att_bh = att + (b * NH + h) * T * T;     // this head's (T, T) probabilities
            float kt[ATT_PACK_HS * ATT_TILE];
            float s[ATT_TILE];
            /* pass 1: raw scores q_t . k_t2 for t2 <= t, written into the rows of att */
            for (size_t t0 = 0; t0 < T; t0 += ATT_TILE) {
                size_t n = T - t0 < ATT_TILE ? T - t0 : ATT_TILE;
                const float* k0 = qs + t0 * 3 * C + C;
                if (HS <= ATT_PACK_HS) pack_tile(kt, k0, 3 * C, n, HS);
                for (size_t t = t0; t < T; t++) {
                    key_dots(s, qs + t * 3 * C, kt, k0, 3 * C, n, HS);
                    size_t last = t - t0 + 1 < n ? t - t0 + 1 : n;  // keys t2 <= t only
                    float* p = att_bh + t * T + t0;
                    for (size_t j = 0; j < last; j++) p[j] = s[j] * scale;
                }
            }
            /* pass 2: softmax over each row, then the weighted sum of values */
            for (size_t t = 0; t < T; t++) {
                float* p = att_bh + t * T;
                /* subtracting the row max keeps exp() finite for any score */
                float maxval = vec_max(p, t + 1);
                for (size_t t2 = 0; t2 <= t; t2++) p[t2] = vec_expf(p[t2] - maxval);
                float inv = 1.0f / vec_sum(p, t + 1);
                for (size_t t2 = 0; t2 <= t; t2++) p[t2] *= inv;
                for (size_t t2 = t + 1; t2 < T; t2++) p[t2] = 0.0f;
                float* o = out + (b * T + t) * C + h * HS;
                for (size_t i = 0; i < HS; i++) o[i] = 0.0f;
                weighted_rows(o, p, qs + 2 * C, 3 * C, t + 1, HS);
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
            size_t base = b * T * 3 * C + h * HS;  // q of position t at qkv + base + t * 3C
            const float* qs = qkv + base;
            float* dqs = dqkv + base;
            float vt[ATT_PACK_HS * ATT_TILE];
            float dp[ATT_TILE];
            for (size_t t0 = 0; t0 < T; t0 += ATT_TILE) {
                size_t n = T - t0 < ATT_TILE ? T - t0 : ATT_TILE;
                const float* v0 = qs + t0 * 3 * C + 2 * C;
                if (HS <= ATT_PACK_HS) pack_tile(vt, v0, 3 * C, n, HS);
                for (size_t t = t0; t < T; t++) {
                    const float* q = qs + t * 3 * C;
                    const float* g = dout + (b * T + t) * C + h * HS;
                    const float* p = att + ((b * NH + h) * T + t) * T + t0;
                    float* dq = dqs + t * 3 * C;
                    float rowdot = vec_dot(g, out + (b * T + t) * C + h * HS, HS);
                    key_dots(dp, g, vt, v0, 3 * C, n, HS);  // dp[j] = dout_t . v_(t0+j)
                    size_t last = t - t0 + 1 < n ? t - t0 + 1 : n;
                    float ds[ATT_TILE];
                    for (size_t j = 0; j < last; j++) ds[j] = p[j] * (dp[j] - rowdot) * scale;
                    weighted_rows(dq, ds, qs + t0 * 3 * C + C, 3 * C, last, HS);
                    for (size_t j = 0; j < last; j++) {
                        size_t row = (t0 + j) * 3 * C;
                        axpy(dqs + row + C, ds[j], q, HS);
                        axpy(dqs + row + 2 * C, p[j], g, HS);
                    }
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
    /* online softmax over tiles of 16 keys (running max and sum, as in FlashAttention): no scratch
     * row of scores, and each tile's exps and weighted sum of values vectorise */
#pragma omp parallel for collapse(3) schedule(static) if (work >= FEMTO_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++) {
        for (size_t h = 0; h < NH; h++) {
            for (size_t t = 0; t < T; t++) {
                const float* q = qkv + (b * T + t) * 3 * C + h * HS;
                const float* keys = kcache + (b * NH + h) * TMAX * HS;    // (TMAX, HS)
                const float* values = vcache + (b * NH + h) * TMAX * HS;  // (TMAX, HS)
                float* restrict o = out + (b * T + t) * C + h * HS;
                float kt[ATT_PACK_HS * ATT_TILE];
                float w[ATT_TILE];
                for (size_t i = 0; i < HS; i++) o[i] = 0.0f;
                float maxval = -INFINITY, sum = 0.0f;
                size_t nkeys = pos + t + 1;
                for (size_t j0 = 0; j0 < nkeys; j0 += ATT_TILE) {
                    size_t n = nkeys - j0 < ATT_TILE ? nkeys - j0 : ATT_TILE;
                    const float* k0 = keys + j0 * HS;
                    if (HS <= ATT_PACK_HS) pack_tile(kt, k0, HS, n, HS);
                    key_dots(w, q, kt, k0, HS, n, HS);
                    for (size_t j = 0; j < n; j++) w[j] *= scale;
                    float tilemax = vec_max(w, n);
                    float newmax = tilemax > maxval ? tilemax : maxval;
                    float correction = vec_expf(maxval - newmax);  // 0 for the first tile
                    for (size_t j = 0; j < n; j++) w[j] = vec_expf(w[j] - newmax);
                    sum = sum * correction + vec_sum(w, n);
                    for (size_t i = 0; i < HS; i++) o[i] *= correction;
                    weighted_rows(o, w, values + j0 * HS, HS, n, HS);
                    maxval = newmax;
                }
                float inv = 1.0f / sum;
                for (size_t i = 0; i < HS; i++) o[i] *= inv;
            }
        }
    }
}
