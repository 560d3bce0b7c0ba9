// reduce.h: work-group tree reductions shared by the row kernels (attention, crossentropy, layernorm,
// adamw's sum_squares). The local size is a power of two <= LOCAL_MAX, set by the launcher in
// femto/backend/opencl.py; every work-item must reach these barriers, so callers never return early.
#ifndef FEMTO_REDUCE_H
#define FEMTO_REDUCE_H

// the bound of every __local scratch array: femto/backend/opencl.py's REDUCE_LOCAL, as -DLOCAL_MAX
#ifndef LOCAL_MAX
#error "LOCAL_MAX comes from the build options (femto/backend/opencl.py)"
#endif

// tree sum over the work-group; every work-item gets the total
static float block_sum(float x, __local float* buf) {
    const int lid = get_local_id(0);
    buf[lid] = x;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = get_local_size(0) / 2; s > 0; s >>= 1) {
        if (lid < s) buf[lid] += buf[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float total = buf[0];
    barrier(CLK_LOCAL_MEM_FENCE);  // buf is reused by the next reduction
    return total;
}

// tree maximum over the work-group; every work-item gets it
static float block_max(float x, __local float* buf) {
    const int lid = get_local_id(0);
    buf[lid] = x;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = get_local_size(0) / 2; s > 0; s >>= 1) {
        if (lid < s) buf[lid] = fmax(buf[lid], buf[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float best = buf[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return best;
}

// The two passes of a split reduction over tokens (femto/backend/opencl.py's _splits picks the count
// S from the shapes alone): the first pass writes S partial sums side by side, partial[s * M + i]; the
// second adds them to dst[i] in the order s = 0, 1, ..., so a result never depends on scheduling.

// partial[s * M + m] = the sum of src[n * M + m] over the R rows n of chunk s (the last may be short)
static void column_partials(__global float* partial, __global const float* src, int N, int M,
                            int R) {
    const int m = get_global_id(0), s = get_global_id(1);
    if (m >= M) return;
    const int end = min(N, (s + 1) * R);
    float acc = 0.0f;
    for (int n = s * R; n < end; n++) acc += src[n * M + m];
    partial[s * M + m] = acc;
}

// dst[i] += partial[0 * M + i] + partial[1 * M + i] + ... + partial[(S - 1) * M + i]
static void add_partials(__global float* dst, __global const float* partial, int M, int S) {
    const int i = get_global_id(0);
    if (i >= M) return;
    float acc = 0.0f;
    for (int s = 0; s < S; s++) acc += partial[s * M + i];
    dst[i] += acc;
}

#endif
