/* embedding.c: row lookup in a table; shapes in femto/ops/embedding.py. */
#include <string.h>

#include "femto.h"
#include "vecmath.h"

void embedding_forward(float* out, const int32_t* ids, const float* weight, size_t N, size_t C) {
#pragma omp parallel for schedule(static) if (N * C >= FEMTO_PARALLEL_MIN)
    for (size_t n = 0; n < N; n++) {
        memcpy(out + n * C, weight + (size_t)ids[n] * C, C * sizeof(float));
    }
}

void embedding_backward(float* dweight, const float* dout, const int32_t* ids, size_t N, size_t V,
                        size_t C) {
    /* Repeated ids add into the same table row, so threads split the columns, never the rows: each
     * column block has one owner, and rows are summed in id order whatever the thread count. */
    (void)V;
    const size_t block = 16;
    size_t nblocks = (C + block - 1) / block;
#pragma omp parallel for schedule(static) if (N * C >= FEMTO_PARALLEL_MIN)
    for (size_t cb = 0; cb < nblocks; cb++) {
        size_t c0 = cb * block;
        size_t c1 = c0 + block < C ? c0 + block : C;
        for (size_t n = 0; n < N; n++) {
            float* dw = dweight + (size_t)ids[n] * C;
            const float* g = dout + n * C;
            for (size_t c = c0; c < c1; c++) dw[c] += g[c];
        }
    }
}
