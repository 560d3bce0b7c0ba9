/* matmul.c: linear layer, out = inp @ weight^T + bias, and its backward; shapes in femto/ops/matmul.py.
 * Forward, dinp and dweight all run through one GEMM: each thread packs the B panels it needs,
 * A is read in place (row-major) or packed a tile at a time (column-major), and an MR x NR tile of C
 * lives in registers (AVX-512, else AVX2+FMA, else portable C: build_ffi.py compiles this file once
 * per CPU path, and the extension picks one at load time). Each element of C is owned by one thread and sees the same operation
 * sequence whatever the thread count, so results are bit-identical at 1 and 2 threads. */
#include "femto.h"
#include "gemm.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

/* VW floats per vector; a register tile is MR rows by NVMAX vectors (NR columns). MR x NVMAX
 * accumulators plus NVMAX B vectors and one broadcast must fit the register file (32 zmm, 16 ymm). */
#if defined(__AVX512F__)
#define VW 16
#define MR 12
typedef __m512 vf;
static inline vf v_zero(void) { return _mm512_setzero_ps(); }
static inline vf v_load(const float* p) { return _mm512_loadu_ps(p); }
static inline void v_store(float* p, vf x) { _mm512_storeu_ps(p, x); }
static inline vf v_bcast(const float* p) { return _mm512_set1_ps(*p); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
/* n in 1..VW: the first n lanes; the masked forms never touch memory past them. */
static inline __mmask16 lanes_mask(int n) { return (__mmask16)((1u << n) - 1u); }
static inline vf v_loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(lanes_mask(n), p); }
static inline void v_storen(float* p, vf x, int n) { _mm512_mask_storeu_ps(p, lanes_mask(n), x); }
#elif defined(__AVX2__) && defined(__FMA__)
#define VW 8
#define MR 6
typedef __m256 vf;
static const int lane_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
static inline __m256i lanes_mask(int n) {
    return _mm256_loadu_si256((const __m256i*)(lane_table + 8 - n));
}
static inline vf v_zero(void) { return _mm256_setzero_ps(); }
static inline vf v_load(const float* p) { return _mm256_loadu_ps(p); }
static inline void v_store(float* p, vf x) { _mm256_storeu_ps(p, x); }
static inline vf v_bcast(const float* p) { return _mm256_broadcast_ss(p); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf v_loadn(const float* p, int n) { return _mm256_maskload_ps(p, lanes_mask(n)); }
static inline void v_storen(float* p, vf x, int n) { _mm256_maskstore_ps(p, lanes_mask(n), x); }
#else
/* Portable C: a "vector" is a small array the compiler may vectorise; a*b+c rounds twice (no FMA). */
#define VW 8
#define MR 4
typedef struct {
    float x[VW];
} vf;
static inline vf v_zero(void) {
    vf r;
    for (int i = 0; i < VW; i++) r.x[i] = 0.0f;
    return r;
}
static inline vf v_loadn(const float* p, int n) {
    vf r = v_zero();
    for (int i = 0; i < n; i++) r.x[i] = p[i];
    return r;
}
static inline vf v_load(const float* p) { return v_loadn(p, VW); }
static inline void v_storen(float* p, vf x, int n) {
    for (int i = 0; i < n; i++) p[i] = x.x[i];
}
static inline void v_store(float* p, vf x) { v_storen(p, x, VW); }
static inline vf v_bcast(const float* p) {
    vf r;
    for (int i = 0; i < VW; i++) r.x[i] = *p;
    return r;
}
static inline vf v_fma(vf a, vf b, vf c) {
    for (int i = 0; i < VW; i++) c.x[i] += a.x[i] * b.x[i];
    return c;
}
static inline vf v_add(vf a, vf b) {
    for (int i = 0; i < VW; i++) a.x[i] += b.x[i];
    return a;
}
#endif

#define NVMAX 2
#define NR (NVMAX * VW)
/* Each thread packs KC x NC floats of B (128 KiB) on its own stack: KC bounds the K-reduction block (the
 * same blocks at any thread count), NC the columns packed at once. */
#define KC 256
#define NC 128
/* rows of A per pass over a chunk's B panels (a multiple of every MR): MC x KC floats stay in L2 */
#define MC 48
/* Below this many multiply-adds a parallel region costs more than it saves. */
#define SERIAL_MACS 65536
/* Forward products of at most GEMV_ROWS rows skip the GEMM for dot products, GEMV_OB outputs at a time */
#define GEMV_ROWS 4
#define GEMV_OB 8

/* One register tile: C[0:mr, 0:nv*VW] = init + A[0:mr, 0:kc] @ Bpanel, storing `lanes` lanes of the
 * last vector. A(r,k) is a[r*lda + k] (row-major, read in place) or a[k*MR + r] (packed); the panel
 * is pb[k*nv*VW + j], zero past the last column. init is a row of zeros or the bias (init_rs 0), or
 * C itself (init_rs ldc). */
static inline __attribute__((always_inline)) void tile(const int mr, const int nv, const int a_rowmajor,
                                                       size_t kc, const float* a, size_t lda,
                                                       const float* pb, float* c, size_t ldc, int lanes,
                                                       const float* init, size_t init_rs) {
    vf acc[MR][NVMAX];
    /* masked stores cost a microcoded sequence on AMD's Zen: only a partial last vector uses them */
    const int full = lanes == VW;
    for (int r = 0; r < mr; r++) {
        for (int v = 0; v < nv - 1; v++) acc[r][v] = v_load(init + r * init_rs + v * VW);
        const float* last = init + r * init_rs + (nv - 1) * VW;
        acc[r][nv - 1] = full ? v_load(last) : v_loadn(last, lanes);
    }
    const size_t pbs = (size_t)nv * VW;
    /* kc >= 1 always; a do-while spares GCC the zero-trip path that would keep acc in memory */
    size_t k = 0;
    do {
        vf b[NVMAX];
        for (int v = 0; v < nv; v++) b[v] = v_load(pb + k * pbs + v * VW);
        for (int r = 0; r < mr; r++) {
            vf ar = v_bcast(a_rowmajor ? a + r * lda + k : a + k * MR + r);
            for (int v = 0; v < nv; v++) acc[r][v] = v_fma(ar, b[v], acc[r][v]);
        }
    } while (++k < kc);
    for (int r = 0; r < mr; r++) {
        for (int v = 0; v < nv - 1; v++) v_store(c + r * ldc + v * VW, acc[r][v]);
        float* last = c + r * ldc + (nv - 1) * VW;
        if (full)
            v_store(last, acc[r][nv - 1]);
        else
            v_storen(last, acc[r][nv - 1], lanes);
    }
}

typedef void (*tile_fn)(size_t kc, const float* a, size_t lda, const float* pb, float* c, size_t ldc,
                        int lanes, const float* init, size_t init_rs);

/* One specialised copy of tile() per (rows, vectors, A layout), so edge tiles keep full speed. */
#define TILE_DEF(R, V, L)                                                                               \
    static void tile_##R##_##V##_##L(size_t kc, const float* a, size_t lda, const float* pb, float* c,  \
                                     size_t ldc, int lanes, const float* init, size_t init_rs) {       \
        tile(R, V, L, kc, a, lda, pb, c, ldc, lanes, init, init_rs);                                    \
    }
#define TILE_ROWS(R) TILE_DEF(R, 1, 0) TILE_DEF(R, 2, 0) TILE_DEF(R, 1, 1) TILE_DEF(R, 2, 1)
#define TILE_ENTRY(R) {{tile_##R##_1_0, tile_##R##_2_0}, {tile_##R##_1_1, tile_##R##_2_1}},
TILE_ROWS(1)
TILE_ROWS(2)
TILE_ROWS(3)
TILE_ROWS(4)
#if MR > 4
TILE_ROWS(5)
TILE_ROWS(6)
#endif
#if MR > 6
TILE_ROWS(7)
TILE_ROWS(8)
TILE_ROWS(9)
TILE_ROWS(10)
TILE_ROWS(11)
TILE_ROWS(12)
#endif
/* tiles[mr - 1][a_rowmajor][nv - 1] */
static const tile_fn tiles[MR][2][NVMAX] = {
    TILE_ENTRY(1) TILE_ENTRY(2) TILE_ENTRY(3) TILE_ENTRY(4)
#if MR > 4
    TILE_ENTRY(5) TILE_ENTRY(6)
#endif
#if MR > 6
    TILE_ENTRY(7) TILE_ENTRY(8) TILE_ENTRY(9) TILE_ENTRY(10) TILE_ENTRY(11) TILE_ENTRY(12)
#endif
};


static const float zeros[NR]; /* the initial C of a product without bias */

static size_t min_sz(size_t x, size_t y) { return x < y ? x : y; }

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define SIMD_TRANSPOSE
/* dst[k*ldd + j] = src[j*lds + k] for an 8 x 8 block, in registers (unpack, shuffle, permute). */
static inline void transpose8x8(const float* src, size_t lds, float* dst, size_t ldd) {
    __m256 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
    }
}
#endif

/* Packs B[pc:pc+kc, j0:j0+w] (w <= NR) as dst[k*W + j], W = w rounded up to VW, zero past w. */
static void pack_panel(float* dst, const gemm_args* g, size_t pc, size_t kc, size_t j0, size_t w) {
    const size_t nv = (w + VW - 1) / VW, W = nv * VW;
    if (g->b_rowmajor) {
        const int last = (int)(w - (nv - 1) * VW);
        for (size_t k = 0; k < kc; k++) {
            const float* src = g->b + (pc + k) * g->ldb + j0;
            float* d = dst + k * W;
            for (size_t v = 0; v + 1 < nv; v++) v_store(d + v * VW, v_load(src + v * VW));
            v_store(d + (nv - 1) * VW, v_loadn(src + (nv - 1) * VW, last));
        }
    } else {
        /* B is the transpose of a row-major (N, K) matrix: each source row becomes a strided column. */
        const float* src = g->b + j0 * g->ldb + pc;
        size_t j = 0;
#if defined(SIMD_TRANSPOSE)
        for (; j + 8 <= w; j += 8) {
            size_t k = 0;
            for (; k + 8 <= kc; k += 8) transpose8x8(src + j * g->ldb + k, g->ldb, dst + k * W + j, W);
            for (; k < kc; k++)
                for (size_t jj = j; jj < j + 8; jj++) dst[k * W + jj] = src[jj * g->ldb + k];
        }
#endif
        for (; j < w; j++)
            for (size_t k = 0; k < kc; k++) dst[k * W + j] = src[j * g->ldb + k];
        for (; j < W; j++)
            for (size_t k = 0; k < kc; k++) dst[k * W + j] = 0.0f;
    }
}

/* Column-major A (dout^T) has a row stride of OC floats, a page apart for the lm_head: the tile's
 * kc x mr block is copied into rows of MR (dst[k*MR + r]) so the tile streams it instead. With
 * `rowsum` (the first column chunk of the one thread per row block that sums), the copy also adds
 * each row's sum over this K block to g->a_rowsum. A full vector is read and written where the rows
 * allow (dst has VW floats of slack): masked stores are slow on AMD's Zen. */
static void pack_a_tile(float* dst, const gemm_args* g, const float* a_k, size_t kc, size_t i,
                        size_t mr, int rowsum) {
    const int full = i + VW <= g->M;
    vf sum = v_zero();
    for (size_t k = 0; k < kc; k++) {
        const float* src = a_k + k * g->lda + i;
        const vf x = full ? v_load(src) : v_loadn(src, (int)mr);
        v_store(dst + k * MR, x);
        if (rowsum) sum = v_add(sum, x);
    }
    if (rowsum) {
        float* rs = g->a_rowsum + i;
        v_storen(rs, v_add(v_loadn(rs, (int)mr), sum), (int)mr);
    }
}

/* Splits the (M, N) output over nthreads as a tm x tn grid of tile-aligned blocks. Short products (the
 * dweight of a small layer) minimise the busiest thread's cost: its multiply-adds plus packing its B
 * columns (every thread packs the panels it uses). Weights are in multiply-add lanes per element. */
static void choose_grid(const gemm_args* g, int nthreads, int* tm_out, int* tn_out) {
    const size_t mt = (g->M + MR - 1) / MR, np = (g->N + NR - 1) / NR;
    const size_t pack_cost = g->b_rowmajor ? 2 : 8; /* a transposed B packs 8 x 8 blocks */
    size_t best = (size_t)-1;
    *tm_out = nthreads;
    *tn_out = 1;
    /* Tall products split rows only: threads then read disjoint rows of A, and never write neighbouring
     * columns of one C row, which would share a cache line where a row does not start on one. */
    if (mt >= (size_t)(4 * nthreads)) return;
    for (int tm = nthreads; tm >= 1; tm--) {
        if (nthreads % tm) continue;
        const int tn = nthreads / tm;
        size_t worst = 0;
        for (int ti = 0; ti < tm; ti++) {
            const size_t r0 = min_sz(g->M, mt * ti / tm * MR);
            const size_t r1 = min_sz(g->M, mt * (ti + 1) / tm * MR);
            for (int tj = 0; tj < tn; tj++) {
                const size_t c0 = min_sz(g->N, np * tj / tn * NR);
                const size_t c1 = min_sz(g->N, np * (tj + 1) / tn * NR);
                const size_t lanes = (c1 - c0 + VW - 1) / VW * VW;
                const size_t cost = (r1 - r0) * lanes + (r1 > r0 ? pack_cost * lanes : 0);
                if (cost > worst) worst = cost;
            }
        }
        if (worst < best) {
            best = worst;
            *tm_out = tm;
            *tn_out = tn;
        }
    }
}

/* One thread's block of C: rows [i0, i1), column panels [p0, p1). It packs its own B panels, KC rows
 * and NC columns at a time, so threads never wait on each other inside the product. Within a chunk,
 * MC rows at a time, each B panel (KC x NR, 16 KiB with AVX2) stays in L1 while the block's A tiles
 * stream past it from L2: a B panel is the larger operand of a tile, so it is the one kept close. */
static void gemm_block(const gemm_args* g, size_t i0, size_t i1, size_t p0, size_t p1, int rowsum) {
    _Alignas(64) float pb[KC * NC];      /* packed B: up to NC/NR panels of KC x NR */
    _Alignas(64) float pa[KC * MC + VW]; /* column-major A, MC/MR packed tiles of KC x MR (+ slack) */
    for (size_t pc = 0; pc < g->K; pc += KC) {
        const size_t kc = min_sz(KC, g->K - pc);
        for (size_t q0 = p0; q0 < p1; q0 += NC / NR) {
            const size_t q1 = min_sz(p1, q0 + NC / NR);
            for (size_t p = q0; p < q1; p++)
                pack_panel(pb + (p - q0) * kc * NR, g, pc, kc, p * NR, min_sz(NR, g->N - p * NR));
            const float* a_k = g->a + (g->a_rowmajor ? pc : pc * g->lda);
            for (size_t ic = i0; ic < i1; ic += MC) {
                const size_t ie = min_sz(i1, ic + MC);
                if (!g->a_rowmajor)
                    for (size_t i = ic; i < ie; i += MR)
                        pack_a_tile(pa + (i - ic) * kc, g, a_k, kc, i, min_sz(MR, ie - i),
                                    rowsum && q0 == p0);
                for (size_t p = q0; p < q1; p++) {
                    const size_t j = p * NR, w = min_sz(NR, g->N - j), nv = (w + VW - 1) / VW;
                    const float* bp = pb + (p - q0) * kc * NR;
                    for (size_t i = ic; i < ie; i += MR) {
                        const size_t mr = min_sz(MR, ie - i);
                        const float* a = g->a_rowmajor ? a_k + i * g->lda : pa + (i - ic) * kc;
                        float* c = g->c + i * g->ldc + j;
                        const float* init = c;
                        size_t init_rs = g->ldc;
                        if (pc == 0 && !g->accumulate) {
                            init = g->bias ? g->bias + j : zeros;
                            init_rs = 0;
                        }
                        tiles[mr - 1][g->a_rowmajor][nv - 1](kc, a, g->lda, bp, c, g->ldc,
                                                             (int)(w - (nv - 1) * VW), init, init_rs);
                    }
                }
            }
        }
    }
}

/* The K == 0 product: C = bias (or 0), or C unchanged when accumulating. Returns 1 when handled. */
static int gemm_trivial(const gemm_args* g) {
    if (g->M == 0 || g->N == 0) return 1;
    if (g->K != 0) return 0;
    if (!g->accumulate)
        for (size_t i = 0; i < g->M; i++)
            for (size_t j = 0; j < g->N; j++) g->c[i * g->ldc + j] = g->bias ? g->bias[j] : 0.0f;
    return 1;
}

void femto_gemm_serial(const gemm_args* g) {
    if (gemm_trivial(g)) return;
    gemm_block(g, 0, g->M, 0, (g->N + NR - 1) / NR, g->a_rowsum != NULL && !g->a_rowmajor);
}

static void gemm(const gemm_args* g) {
    const size_t M = g->M, N = g->N, K = g->K;
    if (gemm_trivial(g)) return;
    const int serial = (double)M * (double)N * (double)K < SERIAL_MACS;
    (void)serial;
#pragma omp parallel if (!serial)
    {
        int tid = 0, nthreads = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nthreads = omp_get_num_threads();
#endif
        int tm, tn;
        choose_grid(g, nthreads, &tm, &tn);
        const int ti = tid / tn, tj = tid % tn;
        const size_t mt = (M + MR - 1) / MR, np = (N + NR - 1) / NR;
        const size_t i0 = min_sz(M, mt * ti / tm * MR), i1 = min_sz(M, mt * (ti + 1) / tm * MR);
        const size_t p0 = np * tj / tn, p1 = np * (tj + 1) / tn;
        /* row sums of A: owned by the one thread per row block whose columns start at panel 0 */
        const int rowsum = g->a_rowsum != NULL && !g->a_rowmajor && p0 == 0;
        if (i0 < i1 && p0 < p1) gemm_block(g, i0, i1, p0, p1, rowsum);
    }
}

/* The sum of a vector's lanes as a fixed pairwise tree (the same order at any thread count). */
static inline float lanes_sum(vf x) {
    float a[VW];
    v_store(a, x);
    for (int w = VW / 2; w > 0; w /= 2)
        for (int i = 0; i < w; i++) a[i] += a[i + w];
    return a[0];
}

/* GEMV_OB outputs of one input row: dot products of x (C) with weight rows o0.., both contiguous */
static inline void gemv_block(float* out, const float* x, const float* weight, const float* bias,
                              size_t C, size_t o0, size_t on) {
    vf acc[GEMV_OB];
    for (int u = 0; u < GEMV_OB; u++) acc[u] = v_zero();
    const float* w = weight + o0 * C;
    size_t k = 0;
    if (on == GEMV_OB) { /* constant trip counts: the accumulators stay in registers */
        for (; k + VW <= C; k += VW) {
            const vf xv = v_load(x + k);
            for (int u = 0; u < GEMV_OB; u++) acc[u] = v_fma(xv, v_load(w + u * C + k), acc[u]);
        }
    } else {
        for (; k + VW <= C; k += VW) {
            const vf xv = v_load(x + k);
            for (size_t u = 0; u < on; u++) acc[u] = v_fma(xv, v_load(w + u * C + k), acc[u]);
        }
    }
    if (k < C) {
        const int lanes = (int)(C - k);
        const vf xv = v_loadn(x + k, lanes);
        for (size_t u = 0; u < on; u++) acc[u] = v_fma(xv, v_loadn(w + u * C + k, lanes), acc[u]);
    }
    for (size_t u = 0; u < on; u++) out[o0 + u] = (bias ? bias[o0 + u] : 0.0f) + lanes_sum(acc[u]);
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, size_t N,
                    size_t C, size_t OC) {
    if (N <= GEMV_ROWS) {
        /* A few rows (generation's one-token steps): the weights are read once, in place, where the
         * GEMM would first pack (transpose) all of them to use each column N times. */
        const size_t nblocks = (OC + GEMV_OB - 1) / GEMV_OB;
#pragma omp parallel for schedule(static) if (N * C * OC >= SERIAL_MACS)
        for (size_t b = 0; b < nblocks; b++) {
            const size_t o0 = b * GEMV_OB, on = min_sz(GEMV_OB, OC - o0);
            for (size_t r = 0; r < N; r++)
                gemv_block(out + r * OC, inp + r * C, weight, bias, C, o0, on);
        }
        return;
    }
    /* out (N, OC) = inp (N, C) @ weight^T, weight read as B(c, o) = weight[o*C + c] */
    const gemm_args g = {
        .M = N, .N = OC, .K = C,
        .a = inp, .lda = C, .a_rowmajor = 1,
        .b = weight, .ldb = C, .b_rowmajor = 0,
        .c = out, .ldc = OC,
        .bias = bias, .accumulate = 0,
    };
    gemm(&g);
}

/* dbias[o] += sum over n of dout[n, o]: each thread owns whole vectors of columns, summed in row
 * order. */
static void column_sums(float* dbias, const float* dout, size_t N, size_t OC) {
    const size_t nvec = (OC + VW - 1) / VW;
#pragma omp parallel for schedule(static) if (N * OC >= SERIAL_MACS)
    for (size_t v = 0; v < nvec; v++) {
        const size_t o = v * VW;
        const int lanes = (int)min_sz(VW, OC - o);
        vf acc = v_zero();
        for (size_t n = 0; n < N; n++) acc = v_add(acc, v_loadn(dout + n * OC + o, lanes));
        v_storen(dbias + o, v_add(v_loadn(dbias + o, lanes), acc), lanes);
    }
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, size_t N, size_t C, size_t OC, int accumulate_dinp) {
    if (dinp) {
        /* dinp (N, C) (+)= dout (N, OC) @ weight (OC, C); overwriting gives the same bits as adding
         * into zeros (0 + x == x), so a fresh gradient skips its zero-fill at no cost in accuracy */
        const gemm_args g = {
            .M = N, .N = C, .K = OC,
            .a = dout, .lda = OC, .a_rowmajor = 1,
            .b = weight, .ldb = C, .b_rowmajor = 1,
            .c = dinp, .ldc = C,
            .bias = NULL, .accumulate = accumulate_dinp != 0,
        };
        gemm(&g);
    }
    if (dweight && C > 0) {
        /* dweight (OC, C) += dout^T (OC, N) @ inp (N, C); dout^T is dout read column-major */
        /* dbias (the column sums of dout) comes from the same product: its packing of dout^T sums
         * the rows it copies, so dout is read once for both */
        const gemm_args g = {
            .M = OC, .N = C, .K = N,
            .a = dout, .lda = OC, .a_rowmajor = 0,
            .b = inp, .ldb = C, .b_rowmajor = 1,
            .c = dweight, .ldc = C,
            .bias = NULL, .accumulate = 1,
            .a_rowsum = dbias,
        };
        gemm(&g);
    } else if (dbias) {
        column_sums(dbias, dout, N, OC);
    }
}
