// dropout.cl: inverted dropout with a counter-based mask; shapes in femto/ops/dropout.py.

// dropout_uniform(seed, i): the hash csrc/dropout.c includes too, so both drop the same elements
#include "dropout_hash.h"

// The seed is seeds[site] (csrc/femto.h): one per dropout site, written once per step.
__kernel void dropout_forward(__global float* out, __global const float* inp,
                              __global const int* seeds, int N, float p, int site) {
    const int i = get_global_id(0);
    if (i >= N) return;
    const uint seed = (uint)seeds[site];
    const float keep_scale = 1.0f / (1.0f - p);
    out[i] = dropout_uniform(seed, (uint)i) < p ? 0.0f : inp[i] * keep_scale;
}

__kernel void dropout_backward(__global float* dinp, __global const float* dout,
                               __global const int* seeds, int N, float p, int site) {
    const int i = get_global_id(0);
    if (i >= N) return;
    const uint seed = (uint)seeds[site];
    const float keep_scale = 1.0f / (1.0f - p);
    if (dropout_uniform(seed, (uint)i) >= p) dinp[i] += dout[i] * keep_scale;
}
