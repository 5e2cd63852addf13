/*
 * Fused per-strip kernels of the streaming engine, loaded by contextual_loss.engine.kernels.native.
 * Each entry point is one OpenMP parallel region per strip: on a shared machine every region
 * waits for all its threads to get a time slice, so fewer regions hold up better under load.
 *
 * The eager engine turns a strip of affinities u (rows x M, written by one GEMM) into the row
 * statistics and the running column maximum with about ten elementwise passes over the strip,
 * each of which streams the whole strip through memory. These kernels do the same work row by
 * row while the row is in cache: the strip is read once from memory in the forward pass and
 * read and written once in the backward pass. The arithmetic is the eager engine's (the same
 * operations with the same rounding for t and a, compiled with -ffp-contract=off); only the
 * exponential (a polynomial here, about 1 ulp in float32) and the order of summation differ.
 * Row sums are accumulated in double.
 *
 * Forward, per row i (Mechrez et al., ECCV 2018; notation of docs/streaming.md):
 *   umax_i = max_k u_ik, k(i) its first index, m_i = beta_i - umax_i (clamped at 0 if asked),
 *   s_i = 1 / ((m_i + eps) h), t_ik = (u_ik - umax_i) s_i,
 *   L_i = log1p(sum_{k != k(i)} exp(t_ik)), a_ik = t_ik - L_i = log CX_ik,
 *   best_j = max_i a_ij, the first row winning ties (across strips and calls: greater, or equal with a
 *   smaller row).
 * Backward, per recomputed row: a_ik = t_ik - L_i as above (a_{i,k(i)} = -L_i), p = exp(a),
 *   the row entropy H_i = -sum_k p_ik a_ik, and the strip's gradient G written over u: p, with the
 *   row's best-match entries replaced by the given values and gamma_i = -h (gamma_base_i + H_i)
 *   added at k(i) (the maths and its derivation: kernels/base.py and docs/streaming.md).
 *
 * Threads take rows in small chunks as they become free. Each row's statistics are computed by one
 * thread alone, and the per-thread column maxima are merged with ties going to the smallest row,
 * so the results do not depend on scheduling or on the number of threads (bit-identical run to run).
 * Exponentials of arguments below `lowest` are 0, as in the eager exp_without_underflow.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Columns summed in the compute type before the partial sum is added to the double total. */
#define BLOCK 256
/* Rows handed to a thread at a time. */
#define ROW_CHUNK 4
/* Entries of work per thread below which fewer threads are used (PyTorch's grain size): a small
 * strip is not worth waking a thread for, and on a loaded machine every woken thread may wait for
 * a time slice. The results do not depend on the number of threads. */
#define GRAIN 32768

/* The threads worth using for a strip of rows x m entries: at most `threads`, one per GRAIN
 * entries, and at most one per ROW_CHUNK rows. */
static inline int strip_threads(int threads, int64_t rows, int64_t m) {
    int64_t by_work = rows * m / GRAIN, by_rows = (rows + ROW_CHUNK - 1) / ROW_CHUNK;
    int64_t n = threads < by_work ? threads : by_work;
    n = n < by_rows ? n : by_rows;
    return n < 1 ? 1 : (int)n;
}

int64_t cl_abi_version(void) { return 4; }

int cl_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static inline int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int thread_count(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* exp(t) for t >= log(smallest normal float): Cody-Waite reduction by ln 2, then a degree-7
 * polynomial for exp(r), |r| <= ln(2) / 2 (the classic Cephes expf coefficients). */
static inline float exp_f32(float t) {
    float n = __builtin_rintf(t * 1.44269504088896341f);
    float r = fmaf(n, -0.693359375f, t);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p * r, r, r) + 1.0f;
    union {
        float f;
        int32_t i;
    } two_n;
    two_n.i = ((int32_t)n + 127) << 23;
    return p * two_n.f;
}

static inline double exp_f64(double t) { return exp(t); }

#define T float
#define SUFFIX f32
#include "strip_kernels_body.h"
#undef T
#undef SUFFIX

#define T double
#define SUFFIX f64
#include "strip_kernels_body.h"
#undef T
#undef SUFFIX
