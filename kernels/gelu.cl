// gelu.cl: GELU, tanh approximation; shapes in femto/ops/gelu.py.

#define GELU_SCALE 0.7978845608028654f  // sqrt(2 / pi)

// 0.5 x (1 + tanh u) == x * sigmoid(2u): the tanh form cancels 1 + tanh u for negative x and loses
// all relative precision there (GELU(-1e12) came out as -3e4). Where e^(-2u) overflows to inf, the
// sigmoid is 0, as it should be.
__kernel void gelu_forward(__global float* out, __global const float* inp, int N) {
    const int i = get_global_id(0);
    if (i >= N) return;
    const float x = inp[i];
    const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    out[i] = x / (1.0f + exp(-2.0f * u));
}

// d/dx [x s(2u)] = s + x s (1 - s) 2 du/dx, with s = sigmoid(2u) = (1 + tanh u) / 2
__kernel void gelu_backward(__global float* dinp, __global const float* dout,
                            __global const float* inp, int N, int accumulate) {
    const int i = get_global_id(0);
    if (i >= N) return;
    const float x = inp[i];
    const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    const float s = 1.0f / (1.0f + exp(-2.0f * u));
    const float local_grad =
        s + 2.0f * x * s * (1.0f - s) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    // accumulate 0: dinp is a fresh buffer to overwrite, never read (femto.h)
    const float g = local_grad * dout[i];
    dinp[i] = accumulate ? dinp[i] + g : g;
}
