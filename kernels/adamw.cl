// adamw.cl: the optimizer's kernels; their contract is documented in femto/optim.py.

#include "reduce.h"

__kernel void adamw_update(__global float* param, __global float* m, __global float* v,
                           __global const float* grad, __global const float* grad_sumsq, int N,
                           float lr, float beta1, float beta2, float eps, float weight_decay,
                           float grad_clip, float grad_divisor, int step) {
    // The bias corrections are the same for every element, but a per-item pow() is not hoisted by
    // every compiler (PoCL spends most of the kernel in it): one work-item per group computes them.
    __local float corrections[3];
    if (get_local_id(0) == 0) {
        corrections[0] = 1.0f - pow(beta1, (float)step);
        corrections[1] = 1.0f - pow(beta2, (float)step);
        // clip_grad_norm_'s coefficient on the gradients divided by grad_divisor, as in csrc/adamw.c
        float grad_scale = 1.0f / grad_divisor;
        if (grad_sumsq != 0 && grad_clip > 0.0f) {
            const float clip = grad_clip / (sqrt(grad_sumsq[0]) / grad_divisor + 1e-6f);
            if (clip < 1.0f) grad_scale *= clip;
        }
        corrections[2] = grad_scale;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const int i = get_global_id(0);  // the return comes after the barrier every work-item must reach
    if (i >= N) return;
    const float correction1 = corrections[0], correction2 = corrections[1];
    const float grad_scale = corrections[2];
    // PyTorch's AdamW order: decoupled decay first, then the bias-corrected Adam step
    const float g = grad[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi / correction1;
    const float vhat = vi / correction2;
    param[i] = param[i] * (1.0f - lr * weight_decay) - lr * mhat / (sqrt(vhat) + eps);
}

// pass 1: work-group k of a fixed number G sums the squares of chunk k of inp into partial[k];
// fixed chunks in a fixed order make the gradient norm independent of the device
__kernel void sum_squares_partial(__global float* partial, __global const float* inp, int N) {
    __local float buf[LOCAL_MAX];
    const int k = get_group_id(0), G = get_num_groups(0);
    const int lid = get_local_id(0), L = get_local_size(0);
    const int chunk = (N + G - 1) / G;
    const int lo = k * chunk, hi = min(lo + chunk, N);
    float acc = 0.0f;
    for (int i = lo + lid; i < hi; i += L) acc += inp[i] * inp[i];
    acc = block_sum(acc, buf);
    if (lid == 0) partial[k] = acc;
}

// pass 2: one work-group adds the G partial sums
__kernel void sum_squares(__global float* out, __global const float* partial, int G) {
    __local float buf[LOCAL_MAX];
    const int lid = get_local_id(0), L = get_local_size(0);
    float acc = 0.0f;
    for (int k = lid; k < G; k += L) acc += partial[k];
    acc = block_sum(acc, buf);
    if (lid == 0) out[0] += acc;  // accumulates, like csrc/adamw.c
}
