// attention.cl: causal multi-head self-attention over a fused qkv; shapes in femto/ops/attention.py.
// Row kernels run one work-group per (b, h, t) score row, reducing with work-group trees (local size
// a power of two <= 256, set by the launcher); they have no early return because of the barriers.
// Index notes: qkv row (b, t) holds q | k | v, each NH heads of HS; att is (B, NH, T, T).

#include "reduce.h"

static float dot(__global const float* a, __global const float* b, int n) {
    float acc = 0.0f;
    for (int i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

// Softmax over the scores in p[0..len), scaled in place; returns nothing, leaves p normalised.
// Each work-item only touches its own entries (stride L), so only the two reductions synchronise.
static void softmax_row(__global float* p, int len, __local float* buf) {
    const int lid = get_local_id(0), L = get_local_size(0);
    float maxval = -INFINITY;
    for (int j = lid; j < len; j += L) maxval = fmax(maxval, p[j]);
    maxval = block_max(maxval, buf);
    // subtracting the row max keeps exp() finite for any score
    float sum = 0.0f;
    for (int j = lid; j < len; j += L) {
        const float e = exp(p[j] - maxval);
        p[j] = e;
        sum += e;
    }
    const float inv = 1.0f / block_sum(sum, buf);
    for (int j = lid; j < len; j += L) p[j] *= inv;
}

__kernel void attention_forward(__global float* out, __global float* att,
                                __global const float* qkv, int B, int T, int C, int NH) {
    __local float buf[LOCAL_MAX];
    const int row = get_group_id(0), lid = get_local_id(0), L = get_local_size(0);
    const int t = row % T, h = (row / T) % NH, b = row / (T * NH);
    const int HS = C / NH;
    const float scale = 1.0f / sqrt((float)HS);
    __global const float* q = qkv + (b * T + t) * 3 * C + h * HS;
    __global float* p = att + row * T;  // row t of this head's (T, T) matrix
    for (int t2 = lid; t2 < T; t2 += L) {
        p[t2] = t2 <= t ? dot(q, qkv + (b * T + t2) * 3 * C + C + h * HS, HS) * scale : 0.0f;
    }
    softmax_row(p, t + 1, buf);
    barrier(CLK_GLOBAL_MEM_FENCE);  // every work-item now reads the whole probability row
    for (int i = lid; i < HS; i += L) {
        float acc = 0.0f;
        for (int t2 = 0; t2 <= t; t2++) acc += p[t2] * qkv[(b * T + t2) * 3 * C + 2 * C + h * HS + i];
        out[(b * T + t) * C + h * HS + i] = acc;
    }
}

// Backward pass 1, one work-group per row (b, h, t):
// dscores[t, t2] = att[t, t2] * (dout_t . v_t2 - dout_t . out_t) / sqrt(HS), zero above the diagonal.
// The softmax backward's row sum, sum_j p_j dp_j, equals dout_t . out_t (the FlashAttention-2 identity).
__kernel void attention_backward_dscores(__global float* dscores, __global const float* dout,
                                         __global const float* qkv, __global const float* att,
                                         __global const float* out, int B, int T, int C, int NH) {
    __local float buf[LOCAL_MAX];
    const int row = get_group_id(0), lid = get_local_id(0), L = get_local_size(0);
    const int t = row % T, h = (row / T) % NH, b = row / (T * NH);
    const int HS = C / NH;
    const float scale = 1.0f / sqrt((float)HS);
    __global const float* g = dout + (b * T + t) * C + h * HS;
    __global const float* o = out + (b * T + t) * C + h * HS;
    float acc = 0.0f;
    for (int i = lid; i < HS; i += L) acc += g[i] * o[i];
    const float rowdot = block_sum(acc, buf);
    for (int t2 = lid; t2 < T; t2 += L) {
        float ds = 0.0f;
        if (t2 <= t) {
            const float dp = dot(g, qkv + (b * T + t2) * 3 * C + 2 * C + h * HS, HS);
            ds = att[row * T + t2] * (dp - rowdot) * scale;
        }
        dscores[row * T + t2] = ds;
    }
}

// Backward pass 2, a gather per element (b, t, h, i) of dq: sum over keys t2 <= t of dscores * k.
__kernel void attention_backward_dq(__global float* dqkv, __global const float* dscores,
                                    __global const float* qkv, int B, int T, int C, int NH,
                                    int accumulate) {
    const int idx = get_global_id(0);  // element (b, t, c) of a (B, T, C) tensor, c = h * HS + i
    if (idx >= B * T * C) return;
    const int c = idx % C, t = (idx / C) % T, b = idx / (T * C);
    const int HS = C / NH, h = c / HS;
    __global const float* ds = dscores + ((b * NH + h) * T + t) * T;
    float acc = 0.0f;
    for (int t2 = 0; t2 <= t; t2++) acc += ds[t2] * qkv[(b * T + t2) * 3 * C + C + c];
    __global float* dq = dqkv + (b * T + t) * 3 * C + c;
    *dq = accumulate ? *dq + acc : acc;  // without accumulate dqkv is a fresh, unset buffer
}

// Backward pass 3, a gather per element (b, t2, h, i) of dk and dv over the queries t >= t2 that
// attended to key t2: dk += dscores[t, t2] * q_t, dv += att[t, t2] * dout_t.
__kernel void attention_backward_dkv(__global float* dqkv, __global const float* dscores,
                                     __global const float* dout, __global const float* qkv,
                                     __global const float* att, int B, int T, int C, int NH,
                                     int accumulate) {
    const int idx = get_global_id(0);  // element (b, t2, c) of a (B, T, C) tensor
    if (idx >= B * T * C) return;
    const int c = idx % C, t2 = (idx / C) % T, b = idx / (T * C);
    const int HS = C / NH, h = c / HS;
    const int head = (b * NH + h) * T * T;
    float dk = 0.0f, dv = 0.0f;
    for (int t = t2; t < T; t++) {
        dk += dscores[head + t * T + t2] * qkv[(b * T + t) * 3 * C + c];
        dv += att[head + t * T + t2] * dout[(b * T + t) * C + c];
    }
    __global float* d = dqkv + (b * T + t2) * 3 * C + c;
    d[C] = accumulate ? d[C] + dk : dk;
    d[2 * C] = accumulate ? d[2 * C] + dv : dv;
}

// Cached generation, pass 1: copy this call's keys and values into slots pos..pos+T-1 of the caches
// (B, NH, TMAX, HS). pos is positions[0], read on the device so a captured step replays anywhere.
__kernel void attention_cache_store(__global float* kcache, __global float* vcache,
                                    __global const float* qkv, __global const int* positions,
                                    int B, int T, int C, int NH, int TMAX) {
    const int idx = get_global_id(0);  // element (b, t, c) of a (B, T, C) tensor
    if (idx >= B * T * C) return;
    const int pos = positions[0];
    const int c = idx % C, t = (idx / C) % T, b = idx / (T * C);
    const int HS = C / NH, h = c / HS, i = c % HS;
    const int slot = ((b * NH + h) * TMAX + pos + t) * HS + i;
    kcache[slot] = qkv[(b * T + t) * 3 * C + C + c];
    vcache[slot] = qkv[(b * T + t) * 3 * C + 2 * C + c];
}

// Cached generation, pass 2, one work-group per row (b, h, t) for queries t = first .. T-1: query t at
// position pos + t attends to cache slots 0..pos+t; `scores` (B, NH, T, TMAX) is scratch for the
// probability row.
__kernel void attention_cached_forward(__global float* out, __global float* scores,
                                       __global const float* kcache, __global const float* vcache,
                                       __global const float* qkv, __global const int* positions,
                                       int B, int T, int C, int NH, int TMAX, int first) {
    __local float buf[LOCAL_MAX];
    const int pos = positions[0];
    const int row = get_group_id(0), lid = get_local_id(0), L = get_local_size(0);
    const int TQ = T - first;  // queries first .. T-1; output rows 0 .. TQ-1
    const int tq = row % TQ, t = first + tq, bh = row / TQ, h = bh % NH, b = bh / NH;
    const int HS = C / NH, len = pos + t + 1;
    const float scale = 1.0f / sqrt((float)HS);
    __global const float* q = qkv + (b * T + t) * 3 * C + h * HS;
    __global const float* keys = kcache + bh * TMAX * HS;
    __global const float* values = vcache + bh * TMAX * HS;
    __global float* p = scores + row * TMAX;
    for (int j = lid; j < len; j += L) p[j] = dot(q, keys + j * HS, HS) * scale;
    softmax_row(p, len, buf);
    barrier(CLK_GLOBAL_MEM_FENCE);
    for (int i = lid; i < HS; i += L) {
        float acc = 0.0f;
        for (int j = 0; j < len; j++) acc += p[j] * values[j * HS + i];
        out[(b * TQ + tq) * C + h * HS + i] = acc;
    }
}
