/* add.c: elementwise add with b broadcast over rows; shapes in femto/ops/add.py. */
#include "femto.h"
#include "vecmath.h"

void add_forward(float* out, const float* a, const float* b, size_t N, size_t M) {
    if (M == N) {
        /* the plain (residual) add is one row: split it over elements, or one thread does it all */
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
        for (size_t i = 0; i < N; i++) out[i] = a[i] + b[i];
        return;
    }
    /* rows of M: the inner loop is a plain vector add, with no i % M per element */
    size_t rows = N / M;
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        float* restrict o = out + r * M;
        const float* restrict x = a + r * M;
        for (size_t j = 0; j < M; j++) o[j] = x[j] + b[j];
    }
}

#define ADD_COLUMN_BLOCK 256

void add_backward(float* da, float* db, const float* dout, size_t N, size_t M) {
    if (da) {
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
        for (size_t i = 0; i < N; i++) da[i] += dout[i];
    }
    if (db) {
        /* each block of b's elements has one owner, which sums the rows in order: contiguous row
         * segments vectorise, and no two threads write the same element of db */
        size_t rows = N / M;
        size_t nblocks = (M + ADD_COLUMN_BLOCK - 1) / ADD_COLUMN_BLOCK;
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN && nblocks > 1)
        for (size_t cb = 0; cb < nblocks; cb++) {
            size_t j0 = cb * ADD_COLUMN_BLOCK;
            size_t width = M - j0 < ADD_COLUMN_BLOCK ? M - j0 : ADD_COLUMN_BLOCK;
            float acc[ADD_COLUMN_BLOCK];
            for (size_t j = 0; j < width; j++) acc[j] = 0.0f;
            for (size_t r = 0; r < rows; r++) {
                const float* restrict g = dout + r * M + j0;
                for (size_t j = 0; j < width; j++) acc[j] += g[j];
            }
            for (size_t j = 0; j < width; j++) db[j0 + j] += acc[j];
        }
    }
}
