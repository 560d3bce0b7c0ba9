/* gelu.c: GELU, tanh approximation; shapes in femto/ops/gelu.py. */
/* -std=c11 turns FMA contraction off; GELU and its exp polynomial are chains of a * b + c that run
 * about 1.4x faster fused (each rounding once). Only this file and attention.c (its softmax exp) opt
 * in: elsewhere exact cancellations (a layer norm over one channel) rely on unfused rounding. Set before the includes, so the inline
 * helpers compiled into this file are contracted too. */
#pragma GCC optimize("fp-contract=fast")
#include <math.h>
#include <string.h>

#include "femto.h"
#include "vecmath.h"

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

/* e^x with x clamped to [-80, 80]: past that, 1 + e^x is 1 or so large that the GELU and its
 * gradient are x (or 1) and 0 to float precision, so the clamp changes nothing visible. It replaces
 * vec16_expf's range and NaN selects with two (a NaN passes through the clamp and stays NaN), about a
 * fifth of GELU's work, and keeps e^x far from the subnormals whose arithmetic costs a microcode assist. */
static inline vec16 gelu_exp16(vec16 x) {
    const vec16 hi = vec16_splat(80.0f), lo = vec16_splat(-80.0f);
    x = vec16_select(x < lo, lo, x);
    x = vec16_select(x > hi, hi, x);
    return vec16_expf_in_range(x);
}

/* 0.5 x (1 + tanh u) == x * sigmoid(2u): one vectorisable exp, and no 1 + tanh cancellation for
 * negative x, where the tanh form loses all relative precision. */
/* Where the clamp engaged for very negative x, the result is set to its true value 0: x / (1 + e^80)
 * would leave x * 2e-35, visible for |x| beyond about 1e20 (and x^3 in the gradient, beyond 1e9). */
static inline vec16 gelu16(vec16 x) {
    vec16 u = GELU_SCALE * (x + 0.044715f * x * x * x);
    vec16 t = -2.0f * u;
    return vec16_select(t > 80.0f, vec16_splat(0.0f), x / (1.0f + gelu_exp16(t)));
}

/* d/dx [x s(2u)] = s + x s (1 - s) 2 du/dx, with s = sigmoid(2u) = (1 + tanh u) / 2 */
static inline vec16 gelu_grad16(vec16 x) {
    vec16 u = GELU_SCALE * (x + 0.044715f * x * x * x);
    vec16 t = -2.0f * u;
    vec16 s = vec16_select(t > 80.0f, vec16_splat(0.0f), 1.0f / (1.0f + gelu_exp16(t)));
    return s + 2.0f * x * s * (1.0f - s) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
}

/* n < 16 elements of p into a zero-padded vector, and back: the tail runs the same vector code as
 * the rest, so an element's result does not depend on where a thread's chunk ends */
static inline vec16 load_tail(const float* p, size_t n) {
    float buf[16] = {0.0f};
    memcpy(buf, p, n * sizeof(float));
    return vec16_load(buf);
}

static inline void store_tail(float* p, vec16 v, size_t n) {
    float buf[16];
    vec16_store(buf, v);
    memcpy(p, buf, n * sizeof(float));
}

void gelu_forward(float* out, const float* inp, size_t N) {
    size_t nblocks = N / 16, tail = N % 16;
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t i = 0; i < nblocks; i++) vec16_store(out + 16 * i, gelu16(vec16_load(inp + 16 * i)));
    if (tail) store_tail(out + 16 * nblocks, gelu16(load_tail(inp + 16 * nblocks, tail)), tail);
}

void gelu_backward(float* dinp, const float* dout, const float* inp, size_t N, int accumulate) {
    size_t nblocks = N / 16, tail = N % 16;
    /* without accumulate, dinp may hold anything (a fresh buffer): it is written, never read */
#pragma omp parallel for schedule(static) if (N >= FEMTO_PARALLEL_MIN)
    for (size_t i = 0; i < nblocks; i++) {
        vec16 g = gelu_grad16(vec16_load(inp + 16 * i)) * vec16_load(dout + 16 * i);
        if (accumulate) g = vec16_load(dinp + 16 * i) + g;
        vec16_store(dinp + 16 * i, g);
    }
    if (tail) {
        size_t i = 16 * nblocks;
        vec16 g = gelu_grad16(load_tail(inp + i, tail)) * load_tail(dout + i, tail);
        if (accumulate) g = load_tail(dinp + i, tail) + g;
        store_tail(dinp + i, g, tail);
    }
}
