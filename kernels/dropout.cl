// dropout.cl: inverted dropout with a counter-based mask; shapes in femto/ops/dropout.py.

// The same hash of (seed, i) as csrc/dropout.c, bit for bit, so CPU and OpenCL drop the same elements.
static float dropout_uniform(uint seed, uint i) {
    uint x = i * 0x9E3779B9u ^ (seed * 0x85EBCA6Bu + 0x632BE59Bu);
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return (float)(x >> 8) * (1.0f / 16777216.0f);
}

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
