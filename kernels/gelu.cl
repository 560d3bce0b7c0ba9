// gelu.cl: GELU, tanh approximation; shapes in femto/ops/gelu.py.

#define GELU_SCALE 0.7978845608028654f  // sqrt(2 / pi)

__kernel void gelu_forward(__global float* out, __global const float* inp, int N) {
    const int i = get_global_id(0);
    if (i >= N) return;
    const float x = inp[i];
    const float cube = 0.044715f * x * x * x;
    out[i] = 0.5f * x * (1.0f + tanh(GELU_SCALE * (x + cube)));
}

__kernel void gelu_backward(__global float* dinp, __global const float* dout,
                            __global const float* inp, int N, int accumulate) {
    const int i = get_global_id(0);
    if (i >= N) return;
    const float x = inp[i];
    const float cube = 0.044715f * x * x * x;
    const float tanh_out = tanh(GELU_SCALE * (x + cube));
    const float sech2 = 1.0f - tanh_out * tanh_out;
    const float local_grad = 0.5f * (1.0f + tanh_out) +
                             0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    // accumulate 0: dinp is a fresh buffer to overwrite, never read (femto.h)
    const float g = local_grad * dout[i];
    dinp[i] = accumulate ? dinp[i] + g : g;
}
