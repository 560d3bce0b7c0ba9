// add.cl: elementwise add with b broadcast over rows; shapes in femto/ops/add.py.

__kernel void add_forward(__global float* out, __global const float* a, __global const float* b,
                          int N, int M) {
    const int i = get_global_id(0);
    if (i >= N) return;
    out[i] = a[i] + b[i % M];
}

__kernel void add_backward_da(__global float* da, __global const float* dout, int N, int M) {
    const int i = get_global_id(0);
    if (i >= N) return;
    da[i] += dout[i];
}

// each element j of b owns the sum over the N / M rows it was broadcast to
__kernel void add_backward_db(__global float* db, __global const float* dout, int N, int M) {
    const int j = get_global_id(0);
    if (j >= M) return;
    const int rows = N / M;
    float acc = 0.0f;
    for (int r = 0; r < rows; r++) acc += dout[r * M + j];
    db[j] += acc;
}
