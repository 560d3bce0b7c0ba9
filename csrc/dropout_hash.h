/* dropout_hash.h: the dropout mask's hash, the one definition csrc/dropout.c and kernels/dropout.cl
 * both include (kernels/dropout_hash.h is a link to this file, found through the OpenCL build's
 * -I kernels/), so CPU and OpenCL drop the same elements bit for bit.
 *
 * A hash of (seed, i) instead of a sequential RNG: the mask is the same for any thread count and on
 * every backend, and backward recomputes it instead of storing it. Valid C99 and OpenCL C 1.2. */
#ifndef FEMTO_DROPOUT_HASH_H
#define FEMTO_DROPOUT_HASH_H

#ifdef __OPENCL_VERSION__
typedef uint dropout_u32;
#else
#include <stdint.h>
typedef uint32_t dropout_u32;
#endif

/* uniform in [0, 1) from the top 24 bits: element i is dropped when this is below p */
static inline float dropout_uniform(dropout_u32 seed, dropout_u32 i) {
    dropout_u32 x = i * 0x9E3779B9u ^ (seed * 0x85EBCA6Bu + 0x632BE59Bu);
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return (float)(x >> 8) * (1.0f / 16777216.0f);
}

#endif
