/* nonfinite.c: the divergence guard's NaN and infinity test; shapes in femto/ops/nonfinite.py. */
#include <stdint.h>
#include <string.h>

#include "femto.h"
#include "vecmath.h"

#define EXPONENT_BITS 0x7f800000u

void nonfinite_forward(float* flag, const float* inp, size_t N) {
    /* NaN and +-inf are exactly the floats whose exponent bits are all ones. Testing the bits, not
     * isfinite(), keeps the loop a plain integer OR that vectorizes, whatever the math flags. */
    uint32_t found = 0;
#pragma omp parallel for schedule(static) reduction(| : found) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t i = 0; i < N; i++) {
        uint32_t bits;
        memcpy(&bits, inp + i, sizeof bits);
        found |= (uint32_t)((bits & EXPONENT_BITS) == EXPONENT_BITS);
    }
    if (found) flag[0] = 1.0f; /* sets, never clears: one flag can collect several buffers */
}
