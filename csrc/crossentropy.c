/* crossentropy.c: fused log-softmax + cross-entropy, mean over rows; shapes in femto/ops/crossentropy.py. */
#include <math.h>

#include "femto.h"

void crossentropy_forward(float* loss, float* logsumexp, const float* logits,
                          const int32_t* targets, size_t N, size_t V) {
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const float* z = logits + n * V;
        float maxval = -INFINITY;
        for (size_t v = 0; v < V; v++) maxval = z[v] > maxval ? z[v] : maxval;
        float sum = 0.0f;
        for (size_t v = 0; v < V; v++) sum += expf(z[v] - maxval);
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
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const float* z = logits + n * V;
        float* dz = dlogits + n * V;
        float lse = logsumexp[n];
        for (size_t v = 0; v < V; v++) dz[v] += expf(z[v] - lse) * scale;
        dz[targets[n]] -= scale;
    }
}
