/* adamw.c: the optimizer's kernels; their contract is documented in femto/optim.py. */
#include <math.h>

#include "femto.h"
#include "vecmath.h"

void adamw_update(float* param, float* m, float* v, const float* grad, const float* grad_sumsq,
                  size_t N, float lr, float beta1, float beta2, float eps, float weight_decay,
                  float grad_clip, float grad_divisor, int step) {
    /* torch.nn.utils.clip_grad_norm_'s coefficient, min(1, clip / (norm + 1e-6)), on the gradients
     * after dividing them by grad_divisor (the number of accumulated micro-batches) */
    float grad_scale = 1.0f / grad_divisor;
    if (grad_sumsq && grad_clip > 0.0f) {
        float norm = sqrtf(grad_sumsq[0]) / grad_divisor;
        float clip = grad_clip / (norm + 1e-6f);
        if (clip < 1.0f) grad_scale *= clip;
    }
    /* PyTorch's AdamW order: decoupled decay first, then the bias-corrected Adam step. The bias
     * corrections are folded into two per-call factors, leaving one sqrt and one divide per element
     * (each about ten cycles per vector: they, not memory, bound this loop). */
    float correction1 = 1.0f - powf(beta1, (float)step);
    float correction2 = 1.0f - powf(beta2, (float)step);
    float step_size = lr / correction1;
    float inv_correction2 = 1.0f / correction2;
    float decay = 1.0f - lr * weight_decay;
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t i = 0; i < N; i++) {
        float g = grad[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = param[i] * decay - step_size * mi / (sqrtf(vi * inv_correction2) + eps);
    }
}

#define SUM_SQUARES_CHUNKS 64

void sum_squares(float* out, const float* inp, size_t N) {
    /* fixed chunks summed in a fixed order: the gradient norm does not depend on the thread count.
     * It accumulates, so one buffer collects the squared norm of every parameter's gradient. */
    double partial[SUM_SQUARES_CHUNKS];
    size_t chunk = (N + SUM_SQUARES_CHUNKS - 1) / SUM_SQUARES_CHUNKS;
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t k = 0; k < SUM_SQUARES_CHUNKS; k++) {
        size_t lo = k * chunk, hi = lo + chunk < N ? lo + chunk : N;
        /* in double, 4 vectors of 8 running sums: one sum would chain every add on the last
         * (4 cycles each); the lanes combine in a fixed order */
        vec8d acc[4] = {{0.0}, {0.0}, {0.0}, {0.0}};
        size_t i = lo;
        for (; i + 32 <= hi; i += 32)
            for (int a = 0; a < 4; a++) {
                vec8d x = __builtin_convertvector(vec8f_load(inp + i + 8 * a), vec8d);
                acc[a] += x * x;
            }
        vec8d total = (acc[0] + acc[2]) + (acc[1] + acc[3]);
        double sum = ((total[0] + total[4]) + (total[1] + total[5])) +
                     ((total[2] + total[6]) + (total[3] + total[7]));
        for (; i < hi; i++) sum += (double)inp[i] * inp[i];
        partial[k] = sum;
    }
    double total = 0.0;
    for (size_t k = 0; k < SUM_SQUARES_CHUNKS; k++) total += partial[k];
    out[0] += (float)total;
}
