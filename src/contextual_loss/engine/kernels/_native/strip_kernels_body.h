/*
 * The kernels of strip_kernels.c for one compute type: included once with T = float,
 * SUFFIX = f32 and once with T = double, SUFFIX = f64.
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(name) CAT(name, SUFFIX)

/* First index of a value known to be in the row: blocks of 64 are tested with vector compares. */
static int64_t NAME(first_index)(const T *row, int64_t m, T value) {
    int64_t j0 = 0;
    for (; j0 + 64 <= m; j0 += 64) {
        int hit = 0;
#pragma omp simd reduction(| : hit)
        for (int64_t j = j0; j < j0 + 64; j++) hit |= row[j] == value;
        if (hit) break;
    }
    while (row[j0] != value) j0++;
    return j0;
}

/* sum over j != skip of exp((row_j - shift) * scale), arguments below `lowest` counting 0. */
static double NAME(exp_sum)(const T *row, int64_t m, T shift, T scale, int64_t skip, T lowest, const T *next) {
    double total = 0.0;
    for (int64_t j0 = 0; j0 < m; j0 += BLOCK) {
        int64_t j1 = j0 + BLOCK < m ? j0 + BLOCK : m;
        if (next != NULL)
            for (int64_t j = j0; j < j1; j += 64 / (int64_t)sizeof(T)) __builtin_prefetch(next + j, 0, 2);
        T part = 0;
#pragma omp simd reduction(+ : part)
        for (int64_t j = j0; j < j1; j++) {
            T t = (row[j] - shift) * scale;
            T e = NAME(exp)(t < lowest ? lowest : t);
            part += (j == skip || t < lowest) ? (T)0 : e;
        }
        total += (double)part;
    }
    return total;
}

/* Maximum of a row. */
static T NAME(row_max)(const T *row, int64_t m) {
    T mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < m; j++) mx = row[j] > mx ? row[j] : mx;
    return mx;
}

/* Maxima of a row's blocks of `block` columns (the last may be shorter) into out. */
static void NAME(block_maxima)(const T *row, int64_t m, int64_t block, T *out) {
    for (int64_t j0 = 0, b = 0; j0 < m; j0 += block, b++) {
        int64_t j1 = j0 + block < m ? j0 + block : m;
        T part = -INFINITY;
#pragma omp simd reduction(max : part)
        for (int64_t j = j0; j < j1; j++) part = row[j] > part ? row[j] : part;
        out[b] = part;
    }
}

/* The row statistics of one row of maximum mx; returns its log-normaliser L and sets the other outputs.
 * `next` (or NULL) is the row this thread most likely takes next: it is prefetched into L2 during the
 * exponential pass, whose arithmetic would otherwise leave the memory bus idle. */
static T NAME(row_stats)(const T *row, int64_t m, T mx, T base, int clamp, T h, T eps, T lowest, T *umax,
                         int64_t *argmin, T *scale, uint8_t *clamped, const T *next) {
    int64_t k = NAME(first_index)(row, m, mx);
    T m_raw = base - mx;
    T m_i = clamp && m_raw < 0 ? (T)0 : m_raw;
    T s = (T)1 / ((m_i + eps) * h);
    *umax = mx;
    *argmin = k;
    *scale = s;
    if (clamped != NULL) *clamped = clamp && m_raw < 0;
    return (T)log1p(NAME(exp_sum)(row, m, mx, s, k, lowest, next));
}

/* Running maximum of a_ij = (u_ij - umax) s - L over the rows given to this thread. */
static void NAME(column_update)(const T *row, int64_t m, T mx, T s, T L, int32_t local, T *col_best,
                                int32_t *col_row) {
    for (int64_t j = 0; j < m; j++) {
        T a = (row[j] - mx) * s - L;
        if (a > col_best[j]) {
            col_best[j] = a;
            col_row[j] = local;
        }
    }
}

/*
 * Forward pass over one strip of `rows` x `m` affinities u (row-major, contiguous).
 * Writes umax, argmin, scale, log_norm (and clamped unless NULL) for each row. With write_a,
 * u is overwritten with a = log CX; otherwise, if best and index are given, the running column
 * maximum best (m) and its first row index (m, offset by row0) are updated: a column takes a
 * row's value if it is greater, or equal with a smaller row index, so the result does not depend
 * on the order in which rows are processed (the first row overall wins ties).
 * Deferral (floor != NULL): a row whose maximum exceeds floor[i] is left for later: only its umax
 * and its maxima over blocks of `block` columns (block_max, rows x ceil(m / block)) are written,
 * and deferred[i] = 1 (0 for the other rows). With only != NULL, rows with only[i] == 0 are skipped.
 * Returns the number of deferred rows, or -1 if the per-thread column buffers could not be allocated.
 */
int NAME(cl_forward_strip)(int64_t rows, int64_t m, T *u, const T *base, int clamp, double h, double eps,
                           double lowest, T *umax, int64_t *argmin, T *scale, T *log_norm, uint8_t *clamped,
                           int write_a, T *best, int64_t *index, int64_t row0, int threads, const T *floor,
                           uint8_t *deferred, T *block_max, int64_t block, const uint8_t *only) {
    int update = best != NULL && index != NULL && !write_a;
    int64_t blocks = floor != NULL ? (m + block - 1) / block : 0;
    int64_t deferred_rows = 0;
    threads = strip_threads(threads, rows, m);
    T *col_best = NULL;
    int32_t *col_row = NULL;
    if (update) {
        col_best = malloc(sizeof(T) * (size_t)m * (size_t)threads);
        col_row = malloc(sizeof(int32_t) * (size_t)m * (size_t)threads);
        if (col_best == NULL || col_row == NULL) {
            free(col_best);
            free(col_row);
            return -1;
        }
    }
#pragma omp parallel num_threads(threads)
    {
        int tid = thread_id(), nt = thread_count();
        int64_t mine_deferred = 0;
        T *mine = update ? col_best + (size_t)tid * (size_t)m : NULL;
        int32_t *mine_row = update ? col_row + (size_t)tid * (size_t)m : NULL;
        for (int64_t j = 0; update && j < m; j++) {
            mine[j] = -INFINITY;
            mine_row[j] = 0;
        }
        /* Dynamic chunks: a thread whose core is taken away (shared machines) holds up no one. Each
         * thread still visits its rows in increasing order, so its column maxima keep their first row. */
#pragma omp for schedule(dynamic, ROW_CHUNK) nowait
        for (int64_t i = 0; i < rows; i++) {
            if (only != NULL && !only[i]) continue;
            T *row = u + i * m;
            T mx = NAME(row_max)(row, m);
            if (floor != NULL) {
                deferred[i] = mx > floor[i];
                if (deferred[i]) { /* the row is in cache: its block maxima cost little now */
                    NAME(block_maxima)(row, m, block, block_max + i * blocks);
                    umax[i] = mx;
                    mine_deferred++;
                    continue;
                }
            }
            T L = NAME(row_stats)(row, m, mx, base[i], clamp, (T)h, (T)eps, (T)lowest, umax + i, argmin + i,
                                  scale + i, clamped == NULL ? NULL : clamped + i, i + 1 < rows ? row + m : NULL);
            log_norm[i] = L;
            if (write_a) {
                T s = scale[i];
                for (int64_t j = 0; j < m; j++) row[j] = (row[j] - mx) * s - L;
            } else if (update) {
                NAME(column_update)(row, m, mx, scale[i], L, (int32_t)i, mine, mine_row);
            }
        }
        if (mine_deferred != 0) {
#pragma omp atomic
            deferred_rows += mine_deferred;
        }
        if (update) {
#pragma omp barrier
            int64_t c0 = m * tid / nt, c1 = m * (tid + 1) / nt;
            for (int64_t j = c0; j < c1; j++) {
                /* This strip's maximum, the smallest row winning ties (whichever thread saw it), then
                 * greater than the running maximum, or equal with a smaller row: the first row overall wins. */
                T value = -INFINITY;
                int32_t row = INT32_MAX;
                for (int t = 0; t < nt; t++) {
                    T theirs = col_best[(size_t)t * (size_t)m + j];
                    int32_t their_row = col_row[(size_t)t * (size_t)m + j];
                    if (theirs > value || (theirs == value && their_row < row)) {
                        value = theirs;
                        row = their_row;
                    }
                }
                if (value > best[j] || (value == best[j] && value > -INFINITY && row0 + row < index[j])) {
                    best[j] = value;
                    index[j] = row0 + row;
                }
            }
        }
    }
    free(col_best);
    free(col_row);
    return (int)deferred_rows;
}

/* First position e in [0, q) with rows_sorted[e] >= row (rows_sorted non-decreasing). */
static int64_t NAME(lower_bound)(const int64_t *rows_sorted, int64_t q, int64_t row) {
    int64_t lo = 0, hi = q;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (rows_sorted[mid] < row)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/*
 * Backward pass over one recomputed strip of affinities u (rows x m), overwritten with the strip's
 * gradient G per unit of the row scale (see kernels/base.py), row by row in one parallel loop:
 *   a_ik = (u_ik - umax_i) s_i - L_i as in the forward pass (a = -L_i at k(i)), p_ik = exp(a_ik),
 *   H_i = -sum_k p_ik a_ik, gamma_i = -h (gamma_base_i + H_i) (0 where clamped_i);
 *   G_ik = p_ik, then G at the row's best-match entries (arg_rows, arg_cols) = arg_values, then
 *   G_{i k(i)} += gamma_i.
 * The q best-match entries are sorted by row (arg_rows non-decreasing), so each row's thread finds
 * its own entries and no step waits for another row. Returns 0, or 2 if arg_rows is not sorted.
 */
int NAME(cl_backward_strip)(int64_t rows, int64_t m, T *u, const T *umax, const T *scale, const int64_t *argmin,
                            const T *log_norm, const uint8_t *clamped, const T *gamma_base, double h, double lowest,
                            int64_t q, const int64_t *arg_rows, const int64_t *arg_cols, const T *arg_values,
                            int threads) {
    for (int64_t e = 1; e < q; e++)
        if (arg_rows[e] < arg_rows[e - 1]) return 2;
    T low = (T)lowest, minus_h = (T)(-h);
    threads = strip_threads(threads, rows, m);
#pragma omp parallel for schedule(dynamic, ROW_CHUNK) num_threads(threads)
    for (int64_t i = 0; i < rows; i++) {
        T *row = u + i * m;
        T mx = umax[i], s = scale[i], L = log_norm[i];
        int64_t k = argmin[i];
        double total = 0.0;
        const T *next = i + 1 < rows ? row + m : NULL;
        for (int64_t j0 = 0; j0 < m; j0 += BLOCK) {
            int64_t j1 = j0 + BLOCK < m ? j0 + BLOCK : m;
            if (next != NULL)
                for (int64_t j = j0; j < j1; j += 64 / (int64_t)sizeof(T)) __builtin_prefetch(next + j, 1, 2);
            T part = 0;
#pragma omp simd reduction(+ : part)
            for (int64_t j = j0; j < j1; j++) {
                T a = (j == k ? (T)0 : (row[j] - mx) * s) - L;
                T p = a < low ? (T)0 : NAME(exp)(a < low ? low : a);
                part += p * a;
                row[j] = p;
            }
            total += (double)part;
        }
        T entropy = (T)(-total);
        T gamma = (clamped != NULL && clamped[i]) ? (T)0 : (gamma_base[i] + entropy) * minus_h;
        for (int64_t e = NAME(lower_bound)(arg_rows, q, i); e < q && arg_rows[e] == i; e++)
            row[arg_cols[e]] = arg_values[e];
        row[k] += gamma;
    }
    return 0;
}

#undef NAME
#undef CAT
#undef CAT_
