/* crossentropy.c: fused log-softmax + cross-entropy, mean over rows; shapes in femto/ops/crossentropy.py. */
#include <math.h>

#include "femto.h"
#include "vecmath.h"

void crossentropy_forward(float* loss, float* logsumexp, const float* logits,
                          const int32_t* targets, size_t N, size_t V) {
#pragma omp parallel for schedule(static) if (N * V >= FEMTO_PARALLEL_MIN)
    for (size_t n = 0; n < N; n++) {
        const float* restrict z = logits + n * V;
        float maxval = vec_max(z, V);
        /* 8 partial sums in a fixed order, so the exp loop vectorises */
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        size_t v = 0;
        for (; v + 8 <= V; v += 8)
            for (size_t j = 0; j < 8; j++) acc[j] += vec_expf(z[v + j] - maxval);
        float sum = vec_combine8(acc);
        for (; v < V; v++) sum += vec_expf(z[v] - maxval);
        logsumexp[n] = maxval + logf(sum);
    }
    /* the mean is summed serially in row order, so the loss is bit-identical for any thread count */
    double total = 0.0;
    for (size_t n = 0; n < N; n++) total += logsumexp[n] - logits[n * V + (size_t)targets[n]];
    loss[0] = (float)(total / (double)N);
}

void crossentropy_backward(float* dlogits, const float* dloss, const float* logits,
                           const int32_t* targets, const float* logsumexp, size_t N, size_t V) {
    float scale = dloss[0] / (float)N;
#pragma omp parallel for schedule(static) if (N * V >= FEMTO_PARALLEL_MIN)
    for (size_t n = 0; n < N; n++) {
        const float* restrict z = logits + n * V;
        float* restrict dz = dlogits + n * V;
        float lse = logsumexp[n];
        for (size_t v = 0; v < V; v++) dz[v] += vec_expf(z[v] - lse) * scale;
        dz[targets[n]] -= scale;
    }
}
