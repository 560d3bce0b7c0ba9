// matmul.cl: linear layer, out = inp @ weight^T + bias; shapes in femto/ops/matmul.py.
// Every pass is one tiled product through local memory, so dinp, dweight and out each have one owner
// per element (no float atomics in OpenCL 1.2). Launch geometry: femto/backend/opencl.py.

#include "reduce.h"

// The tile shape comes from -D build options (femto/backend/opencl.py: MATMUL_DEFAULT, or the matmul
// tuner's choice per device and shape class): TILE is the side of a work-group's square output tile,
// TK the K step (local memory holds A (TILE x TK) and B (TK x TILE)), and each work-item keeps
// WPT x WPT outputs in registers, strided by RTS.
#if !defined(TILE) || !defined(TK) || !defined(WPT)
#error "TILE, TK and WPT come from the build options (femto/backend/opencl.py)"
#endif
#if TILE % WPT != 0 || TK < 1
#error "TILE must be a multiple of WPT and TK at least 1"
#endif
#define RTS (TILE / WPT)   // local size is (RTS, RTS)

// out[i * N + j] = (accumulate ? out[i * N + j] : bias[j] or 0) + sum_k A(i, k) * B(k, j)
// for i < M, j < N, where A(i, k) = a[i * a_si + k * a_sk] and B(k, j) = b[k * b_sk + j * b_sj].
// No early return: every work-item of the group must reach the barriers; bounds are checked per load.
static void gemm_tile(__global float* out, __global const float* a, __global const float* b,
                      __global const float* bias, int M, int N, int K, int a_si, int a_sk,
                      int b_sk, int b_sj, int accumulate, __local float* at, __local float* bt) {
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int j0 = get_group_id(0) * TILE, i0 = get_group_id(1) * TILE;
    const int lid = ly * RTS + lx;
    float acc[WPT][WPT];
    for (int wi = 0; wi < WPT; wi++)
        for (int wj = 0; wj < WPT; wj++) acc[wi][wj] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TK) {
        // neighbouring work-items load neighbouring addresses whichever way A and B are laid out;
        // A is stored transposed so the inner loop reads both tiles along rows of local memory
        for (int e = lid; e < TILE * TK; e += RTS * RTS) {
            int r = a_sk == 1 ? e / TK : e % TILE;   // at[c][r] = A(i0 + r, k0 + c)
            int c = a_sk == 1 ? e % TK : e / TILE;
            int i = i0 + r, k = k0 + c;
            at[c * TILE + r] = (i < M && k < K) ? a[i * a_si + k * a_sk] : 0.0f;
            r = b_sj == 1 ? e / TILE : e % TK;       // bt[r][c] = B(k0 + r, j0 + c)
            c = b_sj == 1 ? e % TILE : e / TK;
            k = k0 + r;
            int j = j0 + c;
            bt[r * TILE + c] = (k < K && j < N) ? b[k * b_sk + j * b_sj] : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < TK; k++) {
            float bv[WPT], av[WPT];
            for (int wj = 0; wj < WPT; wj++) bv[wj] = bt[k * TILE + lx + wj * RTS];
            for (int wi = 0; wi < WPT; wi++) av[wi] = at[k * TILE + ly + wi * RTS];
            for (int wi = 0; wi < WPT; wi++)
                for (int wj = 0; wj < WPT; wj++) acc[wi][wj] += av[wi] * bv[wj];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int wi = 0; wi < WPT; wi++) {
        int i = i0 + ly + wi * RTS;
        if (i >= M) continue;
        for (int wj = 0; wj < WPT; wj++) {
            int j = j0 + lx + wj * RTS;
            if (j >= N) continue;
            float base = accumulate ? out[i * N + j] : (bias ? bias[j] : 0.0f);
            out[i * N + j] = base + acc[wi][wj];
        }
    }
}
__kernel void matmul_forward(__global float* out, __global const float* inp,
                             __global const float* weight, __global const float* bias, int N, int C,
                             int OC) {
    __local float at[TK * TILE], bt[TK * TILE];
    // (N, OC) = inp (N, C) @ weight^T, where weight is (OC, C)
    gemm_tile(out, inp, weight, bias, N, OC, C, C, 1, 1, C, 0, at, bt);
}

__kernel void matmul_backward_dinp(__global float* dinp, __global const float* dout,
                                   __global const float* weight, int N, int C, int OC,
                                   int accumulate) {
    __local float at[TK * TILE], bt[TK * TILE];
    // (N, C) (+)= dout (N, OC) @ weight (OC, C); accumulate 0 overwrites a fresh dinp
    gemm_tile(dinp, dout, weight, 0, N, C, OC, OC, 1, C, 1, accumulate, at, bt);
}

// split-K: work-group (x, y, s) computes its tile of dout[rows of s]^T @ inp[rows of s], R rows a split,
// into dst + s * OC * C: with one split dst is dweight (accumulate 1), else the partials for
// matmul_backward_sum (accumulate 0), so small weights still give every compute unit a tile
__kernel void matmul_backward_dweight(__global float* dst, __global const float* dout,
                                      __global const float* inp, int N, int C, int OC, int R,
                                      int accumulate) {
    __local float at[TK * TILE], bt[TK * TILE];
    const int s = get_group_id(2), n0 = s * R;
    // (OC, C) (+)= dout^T (OC, rows) @ inp (rows, C)
    gemm_tile(dst + s * OC * C, dout + n0 * OC, inp + n0 * C, 0, OC, C, min(R, N - n0), 1, OC, C,
              1, accumulate, at, bt);
}

// first pass of dbias: partial[s * OC + o] = column o of dout (N, OC) summed over the rows of split s
__kernel void matmul_backward_dbias(__global float* partial, __global const float* dout, int N,
                                    int OC, int R) {
    column_partials(partial, dout, N, OC, R);
}

// second pass of dweight and dbias: dst (M) += the S partials
__kernel void matmul_backward_sum(__global float* dst, __global const float* partial, int M, int S) {
    add_partials(dst, partial, M, S);
}
