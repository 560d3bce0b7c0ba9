// crossentropy.cl: fused log-softmax + cross-entropy, mean over rows; shapes in
// femto/ops/crossentropy.py. Reductions are work-group trees (local size a power of two <= 256).

#include "reduce.h"

// one work-group per row n: logsumexp[n] = log(sum_v exp(logits[n, v]))
__kernel void crossentropy_forward(__global float* logsumexp, __global const float* logits, int N,
                                   int V) {
    __local float buf[LOCAL_MAX];
    const int n = get_group_id(0), lid = get_local_id(0), L = get_local_size(0);
    __global const float* z = logits + n * V;
    float maxval = -INFINITY;
    for (int v = lid; v < V; v += L) maxval = fmax(maxval, z[v]);
    maxval = block_max(maxval, buf);
    // subtracting the row max keeps exp() finite for any logit
    float sum = 0.0f;
    for (int v = lid; v < V; v += L) sum += exp(z[v] - maxval);
    sum = block_sum(sum, buf);
    if (lid == 0) logsumexp[n] = maxval + log(sum);
}

// a single work-group: loss[0] = mean over rows of logsumexp[n] - logits[n, targets[n]],
// summed in a fixed tree order so the loss does not depend on timing
__kernel void crossentropy_loss(__global float* loss, __global const float* logsumexp,
                                __global const float* logits, __global const int* targets, int N,
                                int V) {
    __local float buf[LOCAL_MAX];
    const int lid = get_local_id(0), L = get_local_size(0);
    float acc = 0.0f;
    for (int n = lid; n < N; n += L) acc += logsumexp[n] - logits[n * V + targets[n]];
    acc = block_sum(acc, buf);
    if (lid == 0) loss[0] = acc / (float)N;
}

__kernel void crossentropy_backward(__global float* dlogits, __global const float* dloss,
                                    __global const float* logits, __global const int* targets,
                                    __global const float* logsumexp, int N, int V) {
    const int i = get_global_id(0);  // element (n, v) of dlogits
    if (i >= N * V) return;
    const int n = i / V, v = i % V;
    const float scale = dloss[0] / (float)N;
    const float p = exp(logits[i] - logsumexp[n]);
    dlogits[i] += v == targets[n] ? (p - 1.0f) * scale : p * scale;
}
