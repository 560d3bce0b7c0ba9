/* femto.h: every C kernel's prototype, and nothing else. build_ffi.py strips the '#' lines and feeds the
 * rest to cffi's cdef, so this file is the single source of truth for the kernel ABI. Each op's shapes are
 * written once, in the docstring of femto/ops/<op>.py (optimizer kernels: femto/optim.py).
 * The femto_* functions are the runtime's own (threads.c), compiled once; every other function is a
 * kernel, compiled once per CPU path and dispatched at run time (build_ffi.py generates the dispatch). */
#ifndef FEMTO_H
#define FEMTO_H
#include <stddef.h>
#include <stdint.h>

/* threads.c */
void femto_set_num_threads(int n);
int femto_get_num_threads(void);
/* 1 when the kernels were built with OpenMP, 0 for the serial build */
int femto_openmp_enabled(void);

/* matmul.c: out = inp @ weight^T + bias (nn.Linear layout); bias, dinp, dweight, dbias may be NULL.
 * Backward kernels accumulate (+=) into their gradients, except where an `accumulate` flag is 0: then
 * that gradient is overwritten (=), every element of it, so the graph can hand a fresh gradient
 * buffer uninitialised instead of zeroing it first (femto/graph.py, Op.fresh_grad_of). */
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    size_t N, size_t C, size_t OC);
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, size_t N, size_t C, size_t OC, int accumulate_dinp);

/* embedding.c */
void embedding_forward(float* out, const int32_t* ids, const float* weight, size_t N, size_t C);
void embedding_backward(float* dweight, const float* dout, const int32_t* ids, size_t N, size_t V,
                        size_t C);

/* add.c: out[i] = a[i] + b[i % M] (M == N is a plain add; M < N broadcasts b over rows) */
void add_forward(float* out, const float* a, const float* b, size_t N, size_t M);
void add_backward(float* da, float* db, const float* dout, size_t N, size_t M);

/* layernorm.c */
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, size_t N, size_t C);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        size_t N, size_t C);

/* gelu.c: backward overwrites dinp when accumulate is 0 (see matmul.c above) */
void gelu_forward(float* out, const float* inp, size_t N);
void gelu_backward(float* dinp, const float* dout, const float* inp, size_t N, int accumulate);

/* attention.c: causal multi-head self-attention over a fused qkv; backward overwrites dqkv when
 * accumulate is 0 (see matmul.c above) */
void attention_forward(float* out, float* att, const float* qkv, size_t B, size_t T, size_t C,
                       size_t NH);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                        const float* out, size_t B, size_t T, size_t C, size_t NH, int accumulate);
/* generation with a key/value cache: forward only, it never runs under autograd. The new tokens'
 * first position comes from the device (positions[0]), so a captured decode step replays at any
 * position without new arguments. Keys and values of all T new tokens are stored; outputs are
 * computed for queries first .. T-1 only (out is (B, T - first, C)): generation needs the last. */
void attention_cached_forward(float* out, float* kcache, float* vcache, const float* qkv,
                              const int32_t* positions, size_t B, size_t T, size_t C, size_t NH,
                              size_t TMAX, size_t first);

/* dropout.c: the keep mask is a hash of (seed, i), recomputed in backward instead of stored. The
 * seed is seeds[site], read on the device: a model keeps one per dropout site in one buffer, written
 * once per step, so a captured step replays with new masks. */
void dropout_forward(float* out, const float* inp, const int32_t* seeds, size_t N, float p,
                     int site);
void dropout_backward(float* dinp, const float* dout, const int32_t* seeds, size_t N, float p,
                      int site);

/* crossentropy.c: fused log-softmax + cross-entropy, mean over the N rows */
void crossentropy_forward(float* loss, float* logsumexp, const float* logits,
                          const int32_t* targets, size_t N, size_t V);
void crossentropy_backward(float* dlogits, const float* dloss, const float* logits,
                           const int32_t* targets, const float* logsumexp, size_t N, size_t V);

/* adamw.c: optimizer kernels (femto/optim.py). grad_sumsq holds the sum of squares of every gradient
 * (from sum_squares, which accumulates), or is NULL for no clipping: the clip factor is computed on the
 * device, so a step never reads the gradient norm back. */
void adamw_update(float* param, float* m, float* v, const float* grad, const float* grad_sumsq,
                  size_t N, float lr, float beta1, float beta2, float eps, float weight_decay,
                  float grad_clip, float grad_divisor, int step);
void sum_squares(float* out, const float* inp, size_t N);

/* nonfinite.c: flag[0] = 1 if any of inp's N elements is NaN or +-inf, else flag is left as it is
 * (so one zeroed flag collects several buffers); shapes in femto/ops/nonfinite.py. */
void nonfinite_forward(float* flag, const float* inp, size_t N);

#endif
