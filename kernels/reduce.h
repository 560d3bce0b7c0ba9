// reduce.h: work-group tree reductions shared by the row kernels (attention, crossentropy, layernorm,
// adamw's sum_squares). The local size is a power of two <= LOCAL_MAX, set by the launcher in
// femto/backend/opencl.py; every work-item must reach these barriers, so callers never return early.
#ifndef FEMTO_REDUCE_H
#define FEMTO_REDUCE_H

#define LOCAL_MAX 256

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

#endif
