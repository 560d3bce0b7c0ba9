/* attention.c: causal multi-head self-attention over a fused qkv; shapes in femto/ops/attention.py. */
/* FMA contraction on, as in gelu.c: the softmax's exp polynomial is a chain of a * b + c */
#pragma GCC optimize("fp-contract=fast")
#include <math.h>
#include <string.h>

#include "femto.h"
#include "gemm.h"
#include "vecmath.h"

/* Three algorithms, one per entry point (HS = C / NH; head h of position t has its query at
 * qkv[(b*T + t)*3C + h*HS ..], its key C further and its value 2C further):
 *   attention_forward   qkv (B, T, 3C) -> out (B, T, C) and att (B, NH, T, T), the probabilities
 *                       backward reads: blocked causal softmax per (batch, head), attend_head.
 *   attention_backward  dout (B, T, C), qkv, att, out -> dqkv (B, T, 3C), same blocking.
 *   attention_cached_forward  T new tokens at positions[0] .. into kcache/vcache (B, NH, TMAX, HS),
 *                       out (B, T - first, C) for queries first .. T-1: attend_head on a fresh
 *                       short window, else an online softmax over key tiles (no (T, T) scratch).
 * Every output element is owned by one thread, one (batch, head), so products may overwrite it
 * where it is written first (see each gemm_args) and need no zero-fill beforehand.
 *
 * Training attention runs per (batch, head) as small products through matmul.c's GEMM micro-kernel:
 * ATT_QB queries at a time against the keys they can see (0 .. the block's last query), so the
 * causal mask wastes at most one triangle of ATT_QB x ATT_QB per block. The backward's dP and dS
 * live in an ATT_QB x ATT_KB scratch on the stack, so no (T, T) buffer beyond att is needed. */
#define ATT_QB 24
#define ATT_KB 128
/* the longest fresh window attention_cached_forward gives a (T, T) probability scratch on the stack
 * (64 KiB); past it, the online softmax needs none */
#define CACHED_FRESH_T_MAX 128

/* Row t of the probabilities, in place: p[j] = softmax_j(scale * p[j]) over keys j <= t, and 0 for
 * the masked keys j > t. Keys go 16 at a time (vec16) up to the 16-key group holding key t, masked
 * with -inf (whose exp is 0), so short rows never fall into scalar tail loops; only a row whose
 * length T is not a multiple of 16 has a scalar tail. The lanes' max and sum combine in a fixed
 * order, so the row does not depend on the thread count. A NaN score needs no test of its own: its
 * exp is NaN, and the sum spreads that to the whole row, as a serial softmax would. */
static inline void softmax_row(float* p, size_t t, size_t T, float scale) {
    size_t n = (t + 16) / 16 * 16;
    n = n < T ? n : T;
    size_t nv = n / 16 * 16; /* keys in whole vectors; n - nv scalar tail keys */
    const vec16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const vec16 neginf = vec16_splat(-INFINITY);
    /* the max of the raw scores: scale > 0 and rounding is monotonic, so scale * max is the max of
     * the scaled scores, bit for bit. Subtracting it keeps exp() finite for any score. The mask is
     * applied in registers: storing -inf first would stall the vector loads behind scalar stores. */
    vec16 vmax = neginf;
    for (size_t j = 0; j < nv; j += 16) {
        vec16 x = vec16_select(lane + (int32_t)(j - t) <= 0, vec16_load(p + j), neginf);
        vmax = vec16_select(x > vmax, x, vmax);
    }
    float maxval = vec16_max(vmax);
    for (size_t j = nv; j <= t; j++) maxval = p[j] > maxval ? p[j] : maxval;
    maxval *= scale;
    vec16 vsum = vec16_splat(0.0f);
    for (size_t j = 0; j < nv; j += 16) {
        vec16 x = vec16_select(lane + (int32_t)(j - t) <= 0, vec16_load(p + j), neginf);
        vec16 e = vec16_expf(x * scale - maxval);
        vec16_store(p + j, e);
        vsum += e;
    }
    float sum = vec16_sum(vsum);
    for (size_t j = nv; j <= t; j++) {
        p[j] = vec_expf(p[j] * scale - maxval);
        sum += p[j];
    }
    float inv = 1.0f / sum;
    for (size_t j = 0; j < nv; j += 16) vec16_store(p + j, vec16_load(p + j) * inv);
    for (size_t j = nv; j <= t; j++) p[j] *= inv;
    for (size_t j = (t + 1 > nv ? t + 1 : nv); j < T; j++) p[j] = 0.0f;
}

/* p[j] = exp(p[j] * scale - shift) for j < n, 16 keys at a time (vec16_expf and vec_expf give the
 * same bits, so the scalar tail changes nothing but speed) */
static inline void exp_shifted(float* p, size_t n, float scale, float shift) {
    size_t j = 0;
    for (; j + 16 <= n; j += 16) vec16_store(p + j, vec16_expf(vec16_load(p + j) * scale - shift));
    for (; j < n; j++) p[j] = vec_expf(p[j] * scale - shift);
}

/* One (batch, head) of causal attention: q, k, v rows 3C apart (position t at q + t * 3C), its (T, T)
 * probabilities into att_bh, output rows C apart. Run serially by the thread that owns the head. */
static void attend_head(float* out, float* att_bh, const float* q, const float* k, const float* v,
                        size_t T, size_t C, size_t HS, float scale) {
    for (size_t r0 = 0; r0 < T; r0 += ATT_QB) {
        size_t r1 = T - r0 < ATT_QB ? T : r0 + ATT_QB, rn = r1 - r0;
        /* raw scores (rn, r1) = q rows r0..r1-1 (rn, HS) @ k^T (HS, r1): keys 0 .. r1-1, the
         * ones the block's last query sees. Overwritten, not accumulated: softmax_row then
         * rewrites each row whole (zeros past the query's own key), so att_bh needs no zeroing. */
        const gemm_args scores = {
            .M = rn, .N = r1, .K = HS,
            .a = q + r0 * 3 * C, .lda = 3 * C, .a_rowmajor = 1,
            .b = k, .ldb = 3 * C, .b_rowmajor = 0, /* B(k,j) = k row j: k^T */
            .c = att_bh + r0 * T, .ldc = T,
            .bias = NULL, .accumulate = 0,
        };
        femto_gemm_serial(&scores);
        for (size_t t = r0; t < r1; t++) softmax_row(att_bh + t * T, t, T, scale);
        /* out rows (rn, HS) = P (rn, r1) @ v (r1, HS); P is zero past each query's own position.
         * Overwritten: each output row belongs to this block alone, so out needs no zeroing. */
        const gemm_args values = {
            .M = rn, .N = HS, .K = r1,
            .a = att_bh + r0 * T, .lda = T, .a_rowmajor = 1,
            .b = v, .ldb = 3 * C, .b_rowmajor = 1,
            .c = out + r0 * C, .ldc = C,
            .bias = NULL, .accumulate = 0,
        };
        femto_gemm_serial(&values);
    }
}

void attention_forward(float* out, float* att, const float* qkv, size_t B, size_t T, size_t C,
                       size_t NH) {
    size_t HS = C / NH;
    float scale = 1.0f / sqrtf((float)HS);
    size_t work = B * NH * T * T * HS;
    (void)work; /* read only by the OpenMP pragma */
    /* one thread owns a (batch, head): its products run serially, in the same order at any count */
#pragma omp parallel for collapse(2) schedule(static) if (work >= FEMTO_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++) {
        for (size_t h = 0; h < NH; h++) {
            const float* q = qkv + b * T * 3 * C + h * HS;
            attend_head(out + b * T * C + h * HS, att + (b * NH + h) * T * T, q, q + C, q + 2 * C, T,
                        C, HS, scale);
        }
    }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                        const float* out, size_t B, size_t T, size_t C, size_t NH, int accumulate) {
    size_t HS = C / NH;
    float scale = 1.0f / sqrtf((float)HS);
    size_t work = B * NH * T * T * HS;
    (void)work; /* read only by the OpenMP pragma */
    /* One thread owns a whole (batch, head): dk and dv of a position gather from every later query,
     * so splitting over t would race. The softmax backward's row sum, sum_j p_j * dp_j, equals
     * dot(dout_t, out_t), which saves a pass over the row (the FlashAttention-2 identity).
     * Without accumulate, each row of dq, dk and dv is overwritten by its first product instead of
     * added into zeros (same bits, no zero-fill): dq rows by their first key chunk, and key rows
     * [r0, r1) by query block r0, the first that sees them. */
#pragma omp parallel for collapse(2) schedule(static) if (work >= FEMTO_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++) {
        for (size_t h = 0; h < NH; h++) {
            size_t base = b * T * 3 * C + h * HS;  // q of position t at qkv + base + t * 3C
            const float* q = qkv + base;
            const float* k = q + C;
            const float* v = q + 2 * C;
            float* dq = dqkv + base;
            float* dk = dq + C;
            float* dv = dq + 2 * C;
            const float* att_bh = att + (b * NH + h) * T * T;
            float ds[ATT_QB * ATT_KB]; /* dP, then dS in place: (rn, kn), rows ATT_KB apart */
            float rowdot[ATT_QB];
            for (size_t r0 = 0; r0 < T; r0 += ATT_QB) {
                size_t r1 = T - r0 < ATT_QB ? T : r0 + ATT_QB, rn = r1 - r0;
                const float* g = dout + (b * T + r0) * C + h * HS;  // dout rows r0.., C apart
                for (size_t i = 0; i < rn; i++)
                    rowdot[i] = vec_dot(g + i * C, out + (b * T + r0 + i) * C + h * HS, HS);
                for (size_t k0 = 0; k0 < r1; k0 += ATT_KB) {
                    size_t kn = r1 - k0 < ATT_KB ? r1 - k0 : ATT_KB;
                    const float* p = att_bh + r0 * T + k0;  // P rows r0.., keys k0..
                    /* dP (rn, kn) = dout rows (rn, HS) @ v_keys^T (HS, kn), overwriting the
                     * scratch: ds is private to this tile */
                    const gemm_args dp = {
                        .M = rn, .N = kn, .K = HS,
                        .a = g, .lda = C, .a_rowmajor = 1,
                        .b = v + k0 * 3 * C, .ldb = 3 * C, .b_rowmajor = 0,
                        .c = ds, .ldc = ATT_KB,
                        .bias = NULL, .accumulate = 0,
                    };
                    femto_gemm_serial(&dp);
                    /* dS = P * (dP - rowdot) * scale, zero where the mask hid the key */
                    for (size_t i = 0; i < rn; i++) {
                        size_t t = r0 + i;
                        size_t last = t + 1 <= k0 ? 0 : (t + 1 - k0 < kn ? t + 1 - k0 : kn);
                        float* d = ds + i * ATT_KB;
                        const float* pr = p + i * T;
                        for (size_t j = 0; j < last; j++) d[j] = pr[j] * (d[j] - rowdot[i]) * scale;
                        for (size_t j = last; j < kn; j++) d[j] = 0.0f;
                    }
                    /* dq rows += dS @ k_keys; dk_keys += dS^T @ q rows; dv_keys += P^T @ dout rows */
                    /* dq rows (rn, HS) = dS (rn, kn) @ k_keys (kn, HS): the first key chunk
                     * (k0 == 0) overwrites, later chunks add; only these query rows write them */
                    const gemm_args dqa = {
                        .M = rn, .N = HS, .K = kn,
                        .a = ds, .lda = ATT_KB, .a_rowmajor = 1,
                        .b = k + k0 * 3 * C, .ldb = 3 * C, .b_rowmajor = 1,
                        .c = dq + r0 * 3 * C, .ldc = 3 * C,
                        .bias = NULL, .accumulate = accumulate || k0 > 0,
                    };
                    femto_gemm_serial(&dqa);
                    /* key rows [k0, split) were seen by an earlier query block; [split, k0 + kn)
                     * are seen first here */
                    size_t split = r0 > k0 ? (r0 < k0 + kn ? r0 : k0 + kn) : k0;
                    for (int fresh = 0; fresh < 2; fresh++) {
                        size_t j0 = fresh ? split : k0, j1 = fresh ? k0 + kn : split;
                        if (j0 == j1) continue;
                        int acc = accumulate || !fresh;
                        /* key rows j0..j1-1: dk (j1-j0, HS) (+)= dS^T (j1-j0, rn) @ q rows
                         * (rn, HS) and dv (+)= P^T @ dout rows. Query blocks run in order and
                         * key row j is first seen by the block holding query j, so overwriting
                         * the fresh rows there (acc 0) and adding everywhere after is exact. */
                        const gemm_args dka = {
                            .M = j1 - j0, .N = HS, .K = rn,
                            .a = ds + (j0 - k0), .lda = ATT_KB, .a_rowmajor = 0, /* dS^T */
                            .b = q + r0 * 3 * C, .ldb = 3 * C, .b_rowmajor = 1,
                            .c = dk + j0 * 3 * C, .ldc = 3 * C,
                            .bias = NULL, .accumulate = acc,
                        };
                        femto_gemm_serial(&dka);
                        const gemm_args dva = {
                            .M = j1 - j0, .N = HS, .K = rn,
                            .a = p + (j0 - k0), .lda = T, .a_rowmajor = 0, /* P^T */
                            .b = g, .ldb = C, .b_rowmajor = 1,
                            .c = dv + j0 * 3 * C, .ldc = 3 * C,
                            .bias = NULL, .accumulate = acc,
                        };
                        femto_gemm_serial(&dva);
                    }
                }
            }
        }
    }
}

void attention_cached_forward(float* out, float* kcache, float* vcache, const float* qkv,
                              const int32_t* positions, size_t B, size_t T, size_t C, size_t NH,
                              size_t TMAX, size_t first) {
    if (T == 0) return; /* nothing new: positions holds no element to read */
    size_t pos = (size_t)positions[0];
    size_t HS = C / NH;
    size_t TQ = T - first; /* queries computed: first .. T-1, output rows 0 .. TQ-1 */
    float scale = 1.0f / sqrtf((float)HS);
    size_t work = B * NH * TQ * (pos + T) * HS;
    (void)work; /* read only by the OpenMP pragma */
    for (size_t b = 0; b < B; b++) {
        for (size_t h = 0; h < NH; h++) {
            for (size_t t = 0; t < T; t++) {
                const float* src = qkv + (b * T + t) * 3 * C + h * HS;
                size_t slot = ((b * NH + h) * TMAX + pos + t) * HS;
                memcpy(kcache + slot, src + C, HS * sizeof(float));
                memcpy(vcache + slot, src + 2 * C, HS * sizeof(float));
            }
        }
    }
    /* A fresh window (pos 0) is plain causal attention over the new tokens: attention_forward's
     * blocked softmax (whole vectorised rows, one pass) beats the online one below by about 1.7x at
     * small T, for a (T, T) probability scratch per head, on the stack while it stays small (a heap
     * block that size would be mapped and faulted in afresh on every call). */
    if (pos == 0 && first == 0 && T <= CACHED_FRESH_T_MAX) {
#pragma omp parallel for collapse(2) schedule(static) if (work >= FEMTO_PARALLEL_MIN)
        for (size_t b = 0; b < B; b++) {
            for (size_t h = 0; h < NH; h++) {
                float att_bh[T * T];
                const float* q = qkv + b * T * 3 * C + h * HS;
                attend_head(out + b * T * C + h * HS, att_bh, q, q + C, q + 2 * C, T, C, HS, scale);
            }
        }
        return;
    }
    /* The same blocked products as attention_forward, but keys come ATT_KB at a time with an online
     * softmax (running max and sum per query, as in FlashAttention), so the scratch stays one
     * ATT_QB x ATT_KB tile however long the cache is, and no probabilities are kept. */
#pragma omp parallel for collapse(2) schedule(static) if (work >= FEMTO_PARALLEL_MIN)
    for (size_t b = 0; b < B; b++) {
        for (size_t h = 0; h < NH; h++) {
            const float* q = qkv + b * T * 3 * C + h * HS;               // query t at q + t * 3C
            const float* keys = kcache + (b * NH + h) * TMAX * HS;    // (TMAX, HS)
            const float* values = vcache + (b * NH + h) * TMAX * HS;  // (TMAX, HS)
            float s[ATT_QB * ATT_KB]; /* scores, then unnormalised probabilities, rows ATT_KB apart */
            float maxval[ATT_QB], sum[ATT_QB];
            for (size_t r0 = first; r0 < T; r0 += ATT_QB) {
                size_t r1 = T - r0 < ATT_QB ? T : r0 + ATT_QB, rn = r1 - r0;
                float* o = out + (b * TQ + r0 - first) * C + h * HS;  // output rows, C apart
                for (size_t i = 0; i < rn; i++) {
                    maxval[i] = -INFINITY;
                    sum[i] = 0.0f;
                    for (size_t c = 0; c < HS; c++) o[i * C + c] = 0.0f;
                }
                size_t nkeys = pos + r1;
                for (size_t k0 = 0; k0 < nkeys; k0 += ATT_KB) {
                    size_t kn = nkeys - k0 < ATT_KB ? nkeys - k0 : ATT_KB;
                    /* scores (rn, kn) = q rows (rn, HS) @ keys k0.. ^T (HS, kn), overwriting the
                     * tile scratch s */
                    const gemm_args scores = {
                        .M = rn, .N = kn, .K = HS,
                        .a = q + r0 * 3 * C, .lda = 3 * C, .a_rowmajor = 1,
                        .b = keys + k0 * HS, .ldb = HS, .b_rowmajor = 0,
                        .c = s, .ldc = ATT_KB,
                        .bias = NULL, .accumulate = 0,
                    };
                    femto_gemm_serial(&scores);
                    for (size_t i = 0; i < rn; i++) {
                        size_t seen = pos + r0 + i + 1;  // query r0+i sees keys 0 .. seen-1
                        size_t last = seen <= k0 ? 0 : (seen - k0 < kn ? seen - k0 : kn);
                        float* p = s + i * ATT_KB;
                        if (last > 0) {
                            float tilemax = vec_max(p, last) * scale;
                            float newmax = tilemax != tilemax || tilemax > maxval[i] ? tilemax
                                                                                     : maxval[i];
                            float correction = vec_expf(maxval[i] - newmax);  // 0 on the first tile
                            exp_shifted(p, last, scale, newmax);
                            sum[i] = sum[i] * correction + vec_sum(p, last);
                            for (size_t c = 0; c < HS; c++) o[i * C + c] *= correction;
                            maxval[i] = newmax;
                        }
                        for (size_t j = last; j < kn; j++) p[j] = 0.0f;
                    }
                    /* output rows (rn, HS) += P (rn, kn) @ values (kn, HS): always added, into
                     * the rows zeroed above and rescaled by each tile's correction */
                    const gemm_args weighted = {
                        .M = rn, .N = HS, .K = kn,
                        .a = s, .lda = ATT_KB, .a_rowmajor = 1,
                        .b = values + k0 * HS, .ldb = HS, .b_rowmajor = 1,
                        .c = o, .ldc = C,
                        .bias = NULL, .accumulate = 1,
                    };
                    femto_gemm_serial(&weighted);
                }
                for (size_t i = 0; i < rn; i++) {
                    float inv = 1.0f / sum[i];
                    for (size_t c = 0; c < HS; c++) o[i * C + c] *= inv;
                }
            }
        }
    }
}
