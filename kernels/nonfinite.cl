// nonfinite.cl: the divergence guard's test for NaN and infinity; shapes in femto/ops/nonfinite.py.

// one work-item per element; every one that finds a NaN or an infinity writes the same 1.0f, so
// the racing stores agree and no atomics are needed. The flag is set, never cleared.
__kernel void nonfinite_forward(__global float* flag, __global const float* inp, int N) {
    const int i = get_global_id(0);
    if (i >= N) return;
    if ((as_uint(inp[i]) & 0x7f800000u) == 0x7f800000u) flag[0] = 1.0f;
}
