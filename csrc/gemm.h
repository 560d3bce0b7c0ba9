/* gemm.h: matmul.c's register-blocked GEMM, shared with kernels that run many small products on one
 * thread each (attention's per-head scores, weighted sums and their gradients). Internal to the C
 * kernels: build_ffi.py feeds only femto.h to cffi, so nothing here is part of the Python ABI. */
#ifndef FEMTO_GEMM_H
#define FEMTO_GEMM_H
#include <stddef.h>

/* C (M, N) = [bias +] A (M, K) @ B (K, N), or C += A @ B when accumulate. */
typedef struct {
    size_t M, N, K;
    const float* a; /* A(i,k) = a[i*lda + k] when a_rowmajor, else a[k*lda + i] */
    size_t lda;
    int a_rowmajor;
    const float* b; /* B(k,j) = b[k*ldb + j] when b_rowmajor, else b[j*ldb + k] */
    size_t ldb;
    int b_rowmajor;
    float* c;
    size_t ldc;
    const float* bias; /* (N), only without accumulate; NULL means zero */
    int accumulate;
    /* (M) or NULL; column-major A only: a_rowsum[i] += sum over k of A(i,k), taken while A's tiles
     * are packed (the bias gradient of dweight = dout^T @ inp rides on that product's reads of dout).
     * Each KC block's partial sum is added in block order, so the bits do not depend on threads. */
    float* a_rowsum;
} gemm_args;

/* The whole product on the calling thread (no parallel region): callers that already split work
 * across threads, one small product per thread, use this. Same operation order as matmul's GEMM. */
void femto_gemm_serial(const gemm_args* g);

#endif
