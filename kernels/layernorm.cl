// layernorm.cl: layer normalisation over the last axis (eps 1e-5); shapes in femto/ops/layernorm.py.
// Row kernels run one work-group per row (local size a power of two <= 256, set by the launcher);
// there is no early return because every work-item must reach the barriers.
// inv_c is 1/C rounded once on the host: OpenCL's single-precision `/` may be off by 2.5 ulp (NVIDIA's
// is), so x / 1 need not be x, and at C = 1 the centred terms and dnorm - mean(dnorm) must cancel to 0.

#include "reduce.h"

__kernel void layernorm_forward(__global float* out, __global float* mean, __global float* rstd,
                                __global const float* inp, __global const float* weight,
                                __global const float* bias, int N, int C, float inv_c) {
    __local float buf[LOCAL_MAX];
    const int n = get_group_id(0), lid = get_local_id(0), L = get_local_size(0);
    __global const float* x = inp + n * C;
    float acc = 0.0f;
    for (int c = lid; c < C; c += L) acc += x[c];
    const float m = block_sum(acc, buf) * inv_c;
    // two-pass variance: E[(x-m)^2] does not cancel catastrophically like E[x^2]-m^2
    acc = 0.0f;
    for (int c = lid; c < C; c += L) {
        const float d = x[c] - m;
        acc += d * d;
    }
    const float s = rsqrt(block_sum(acc, buf) * inv_c + 1e-5f);
    __global float* y = out + n * C;
    for (int c = lid; c < C; c += L) y[c] = (x[c] - m) * s * weight[c] + (bias ? bias[c] : 0.0f);
    if (lid == 0) {
        mean[n] = m;
        rstd[n] = s;
    }
}

__kernel void layernorm_backward_dinp(__global float* dinp, __global const float* dout,
                                      __global const float* inp, __global const float* weight,
                                      __global const float* mean, __global const float* rstd, int N,
                                      int C, float inv_c) {
    __local float buf[LOCAL_MAX];
    const int n = get_group_id(0), lid = get_local_id(0), L = get_local_size(0);
    __global const float* x = inp + n * C;
    __global const float* g = dout + n * C;
    const float m = mean[n], s = rstd[n];
    float dnorm_sum = 0.0f, dnorm_norm_sum = 0.0f;
    for (int c = lid; c < C; c += L) {
        const float dnorm = weight[c] * g[c];
        dnorm_sum += dnorm;
        dnorm_norm_sum += dnorm * (x[c] - m) * s;
    }
    const float dnorm_mean = block_sum(dnorm_sum, buf) * inv_c;
    const float dnorm_norm_mean = block_sum(dnorm_norm_sum, buf) * inv_c;
    __global float* dx = dinp + n * C;
    for (int c = lid; c < C; c += L) {
        const float norm = (x[c] - m) * s;
        const float dnorm = weight[c] * g[c];
        dx[c] += s * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
    }
}

// first pass of the parameter gradients, split over rows: work-item (c, s) sums column c over the R
// rows of split s, dweight's terms into partial[s * C + c] and dbias's into partial[(S + s) * C + c]
__kernel void layernorm_backward_dparams(__global float* partial, __global const float* dout,
                                         __global const float* inp, __global const float* mean,
                                         __global const float* rstd, int N, int C, int R) {
    const int c = get_global_id(0), s = get_global_id(1), S = get_global_size(1);
    if (c >= C) return;
    const int end = min(N, (s + 1) * R);
    float dw = 0.0f, db = 0.0f;
    for (int n = s * R; n < end; n++) {
        const float g = dout[n * C + c];
        dw += (inp[n * C + c] - mean[n]) * rstd[n] * g;
        db += g;
    }
    partial[s * C + c] = dw;
    partial[(S + s) * C + c] = db;
}

// second pass: dweight and dbias (either may be NULL) += their S partials
__kernel void layernorm_backward_dparams_sum(__global float* dweight, __global float* dbias,
                                             __global const float* partial, int C, int S) {
    if (dweight) add_partials(dweight, partial, C, S);
    if (dbias) add_partials(dbias, partial + S * C, C, S);
}
