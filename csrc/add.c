/* add.c: elementwise add with b broadcast over rows; shapes in femto/ops/add.py. */
#include "femto.h"

void add_forward(float* out, const float* a, const float* b, size_t N, size_t M) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) out[i] = a[i] + b[i % M];
}

void add_backward(float* da, float* db, const float* dout, size_t N, size_t M) {
    if (da) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < N; i++) da[i] += dout[i];
    }
    if (db) {
        /* each element of b owns the sum over the rows it was broadcast to */
        size_t rows = N / M;
#pragma omp parallel for schedule(static)
        for (size_t j = 0; j < M; j++) {
            float acc = 0.0f;
            for (size_t r = 0; r < rows; r++) acc += dout[r * M + j];
            db[j] += acc;
        }
    }
}
