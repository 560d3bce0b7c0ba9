// embedding.cl: row lookup in a table; shapes in femto/ops/embedding.py.

__kernel void embedding_forward(__global float* out, __global const int* ids,
                                __global const float* weight, int N, int C) {
    const int i = get_global_id(0);  // element (n, c) of out
    if (i >= N * C) return;
    const int n = i / C, c = i % C;
    out[i] = weight[ids[n] * C + c];
}

// A gather, not a scatter: work-item (c, g) owns column c of every table row v with v % G == g and
// walks all N ids in order, so repeated ids never race and rows sum in the same order as csrc/.
__kernel void embedding_backward(__global float* dweight, __global const float* dout,
                                 __global const int* ids, int N, int V, int C, int G) {
    const int c = get_global_id(0), g = get_global_id(1);
    if (c >= C || g >= G) return;
    for (int n = 0; n < N; n++) {
        const int v = ids[n];
        if (v % G == g) dweight[v * C + c] += dout[n * C + c];
    }
}
