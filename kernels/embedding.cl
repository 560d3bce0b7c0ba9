// embedding.cl: row lookup in a table; shapes in femto/ops/embedding.py.

#include "reduce.h"

__kernel void embedding_forward(__global float* out, __global const int* ids,
                                __global const float* weight, int N, int C) {
    const int i = get_global_id(0);  // element (n, c) of out
    if (i >= N * C) return;
    const int n = i / C, c = i % C;
    out[i] = weight[ids[n] * C + c];
}

// A gather, not a scatter: work-item (c, g, s) owns column c of every table row v with v % G == g in
// dst + s * V * C and walks the R ids of split s in order, so repeated ids never race and the sum
// order is fixed. One split (accumulate 1) adds into dweight itself; several write partials (each
// work-item first zeroes the rows it owns) that embedding_backward_sum adds up.
__kernel void embedding_backward(__global float* dst, __global const float* dout,
                                 __global const int* ids, int N, int V, int C, int G, int R,
                                 int accumulate) {
    const int c = get_global_id(0), g = get_global_id(1), s = get_global_id(2);
    if (c >= C || g >= G) return;
    __global float* d = dst + s * V * C;
    if (!accumulate)
        for (int v = g; v < V; v += G) d[v * C + c] = 0.0f;
    const int end = min(N, (s + 1) * R);
    for (int n = s * R; n < end; n++) {
        const int v = ids[n];
        if (v % G == g) d[v * C + c] += dout[n * C + c];
    }
}

// second pass: dweight (V * C) += the S partials
__kernel void embedding_backward_sum(__global float* dweight, __global const float* partial, int M,
                                     int S) {
    add_partials(dweight, partial, M, S);
}
