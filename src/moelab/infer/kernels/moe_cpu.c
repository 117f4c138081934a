/* The inference engine's CPU kernels, fp32 (why they exist, how they are built and loaded:
 * moelab/infer/cpu_kernel.py):
 *
 * - moe_cpu_experts_f32: the routed experts of one MoE layer in one call,
 *   y[n] = sum_k w[n,k] * down_e(silu(gate_e(x[n])) * up_e(x[n])),  e = ids[n,k];
 * - moe_cpu_topk_f32: the router's k best experts per token;
 * - moe_cpu_rms_norm_f32: RMSNorm of rows (or of groups within rows);
 * - moe_cpu_qk_rope_f32: attention's per-token work after the QKV projection (QK-norm, clip,
 *   RoPE, k and v into the KV cache).
 *
 * Experts: the weights stay in the model's layout (gate_up: E x 2I x D, down: E x D x I, each
 * row an output feature, contiguous along the input). Few tokens per expert: dot products along
 * contiguous rows of both operands, a tile of MR token rows x VL/MR weight rows keeping VL vector
 * accumulators, folded into one vector of VL sums by a shuffle tree. Many tokens: token-major,
 * VL tokens per vector times a broadcast weight (no reductions), tokens transposed in and
 * outputs out in VL x VL register blocks. Nothing is copied or packed: tokens are read in place
 * through a per-expert list, outputs land in their (token, slot) row of a scratch buffer, and
 * the weighted sum over slots runs in slot order, as the model's combine does.
 *
 * Shapes: N tokens, K slots per token, D hidden, I expert hidden, E experts, S = N*K.
 * Needs D % VL == 0 and I % VL == 0 (the caller checks; moe_cpu_vector_width says VL).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define VL 16
#else
#define VL 8
#endif
#define MR 4

typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));

#if defined(__clang__)
#define SHUF(u, v, ...) __builtin_shufflevector(u, v, __VA_ARGS__)
#else
#define SHUF(u, v, ...) __builtin_shuffle(u, v, (vi){__VA_ARGS__})
#endif

/* Shuffle-tree masks. Before a level each vector holds G accumulators' partial sums in G blocks
 * of L lanes; P takes the first half of every block of the pair (u, v), Q the second half, so
 * P + Q holds 2G accumulators in blocks of L/2, in order. After the last level lane j is acc j. */
#if VL == 16
#define P1 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define Q1 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define P2 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27
#define Q2 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31
#define P3 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29
#define Q3 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31
#define P4 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define Q4 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#else
#define P1 0, 1, 2, 3, 8, 9, 10, 11
#define Q1 4, 5, 6, 7, 12, 13, 14, 15
#define P2 0, 1, 4, 5, 8, 9, 12, 13
#define Q2 2, 3, 6, 7, 10, 11, 14, 15
#define P3 0, 2, 4, 6, 8, 10, 12, 14
#define Q3 1, 3, 5, 7, 9, 11, 13, 15
#endif

/* Transpose masks: stage b swaps the off-diagonal b x b blocks of every 2b x 2b block, so after
 * stages VL/2 .. 1 lane l of vector i holds what lane i of vector l held. */
#if VL == 16
#define TLO8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define THI8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define TLO4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define THI4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define TLO2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define THI2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define TLO1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define THI1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
#else
#define TLO4 0, 1, 2, 3, 8, 9, 10, 11
#define THI4 4, 5, 6, 7, 12, 13, 14, 15
#define TLO2 0, 1, 8, 9, 4, 5, 12, 13
#define THI2 2, 3, 10, 11, 6, 7, 14, 15
#define TLO1 0, 8, 2, 10, 4, 12, 6, 14
#define THI1 1, 9, 3, 11, 5, 13, 7, 15
#endif

static inline vf loadu(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline vf reduce_lanes(const vf a[VL]) {
    vf b[VL / 2], c[VL / 4];
    for (int i = 0; i < VL / 2; i++) b[i] = SHUF(a[2 * i], a[2 * i + 1], P1) + SHUF(a[2 * i], a[2 * i + 1], Q1);
    for (int i = 0; i < VL / 4; i++) c[i] = SHUF(b[2 * i], b[2 * i + 1], P2) + SHUF(b[2 * i], b[2 * i + 1], Q2);
#if VL == 16
    vf d[2];
    for (int i = 0; i < 2; i++) d[i] = SHUF(c[2 * i], c[2 * i + 1], P3) + SHUF(c[2 * i], c[2 * i + 1], Q3);
    return SHUF(d[0], d[1], P4) + SHUF(d[0], d[1], Q4);
#else
    return SHUF(c[0], c[1], P3) + SHUF(c[0], c[1], Q3);
#endif
}

/* e^x in float, within about 1 ulp: x = n ln2 + r, |r| <= ln2/2, e^r by Cephes' expf polynomial,
 * 2^n from the exponent bits. Written out (not libm's expf) so the SiLU loop vectorizes; x is
 * clamped to where 2^n stays a normal float, which moves silu(g) by less than 1e-36. */
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = x * 1.44269504088896341f + magic;
    int32_t n;
    memcpy(&n, &t, sizeof n);
    n -= 0x4B400000; /* the bits of magic */
    t -= magic;
    float r = x - t * 0.693359375f; /* ln2 in two parts: exact product, then the rest */
    r = r + t * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = (n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline void storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* r[i][l] <- r[l][i]: a VL x VL block transposed in registers, log2(VL) rounds of shuffles. */
static inline void transpose_block(vf r[VL]) {
#define TSTAGE(b)                                                                                  \
    for (int i = 0; i < VL; i++)                                                                   \
        if (!(i & (b))) {                                                                          \
            const vf lo = SHUF(r[i], r[i + (b)], TLO##b), hi = SHUF(r[i], r[i + (b)], THI##b);     \
            r[i] = lo;                                                                             \
            r[i + (b)] = hi;                                                                       \
        }
#if VL == 16
    TSTAGE(8)
#endif
    TSTAGE(4)
    TSTAGE(2)
    TSTAGE(1)
#undef TSTAGE
}

/* out[m*nr + j] = dot(a[m][0:len], w[j*len : (j+1)*len]) for m < mr, j < nr, mr*nr = VL.
 * Called with constant (mr, nr) only, so each use is unrolled into its own register tile. */
static inline __attribute__((always_inline)) void tile_dots(const int mr, const int nr,
                                                            const float *const *a, const float *w,
                                                            int64_t len, float out[VL]) {
    vf acc[VL];
    for (int t = 0; t < VL; t++) acc[t] = (vf){0};
    for (int64_t k = 0; k < len; k += VL) {
        vf av[VL], wv[VL];
        for (int m = 0; m < mr; m++) av[m] = loadu(a[m] + k);
        for (int j = 0; j < nr; j++) wv[j] = loadu(w + j * len + k);
        for (int m = 0; m < mr; m++)
            for (int j = 0; j < nr; j++) acc[m * nr + j] += av[m] * wv[j];
    }
    vf s = reduce_lanes(acc);
    memcpy(out, &s, sizeof s);
}

/* out_rows[r][0:n_out] = in_rows[r] . w^T for r < M; w is n_out x len, row-major.
 * Blocks of VL weight rows outside (each read once per call); inside, MR rows at a time share
 * every weight load (an MR x VL/MR tile), and the last M % MR rows go one by one (1 x VL). */
static void rows_times_wt(const float *const *in_rows, float *const *out_rows, int64_t M,
                          const float *w, int64_t n_out, int64_t len) {
    float out[VL];
    const int64_t full = M - M % MR;
    for (int64_t j0 = 0; j0 < n_out; j0 += VL) {
        for (int64_t m0 = 0; m0 < full; m0 += MR)
            for (int64_t jj = 0; jj < VL; jj += VL / MR) {
                tile_dots(MR, VL / MR, in_rows + m0, w + (j0 + jj) * len, len, out);
                for (int m = 0; m < MR; m++)
                    for (int j = 0; j < VL / MR; j++) out_rows[m0 + m][j0 + jj + j] = out[m * (VL / MR) + j];
            }
        for (int64_t m = full; m < M; m++) {
            tile_dots(1, VL, in_rows + m, w + j0 * len, len, out);
            memcpy(out_rows[m] + j0, out, sizeof out);
        }
    }
}

/* outT[j*ld + t*VL + l] = sum_k w[j*len + k] * inT[k*ld + t*VL + l] for j < rj, t < v, l < VL:
 * rj weight rows times v vectors of tokens, rj*v <= 32 accumulators, no reduction needed. */
static inline __attribute__((always_inline)) void tile_cols(const int v, const int rj,
                                                            const float *w, int64_t len,
                                                            const float *inT, int64_t ld,
                                                            float *outT) {
    vf acc[32];
    for (int t = 0; t < v * rj; t++) acc[t] = (vf){0};
    for (int64_t k = 0; k < len; k++) {
        vf xv[VL];
        for (int t = 0; t < v; t++) xv[t] = loadu(inT + k * ld + t * VL);
        for (int j = 0; j < rj; j++) {
            const float wjk = w[j * len + k];
            for (int t = 0; t < v; t++) acc[j * v + t] += xv[t] * wjk;
        }
    }
    for (int j = 0; j < rj; j++)
        for (int t = 0; t < v; t++) memcpy(outT + j * ld + t * VL, &acc[j * v + t], sizeof(vf));
}

/* outT (n_out x ld) = w (n_out x len) . inT (len x ld), ld a multiple of VL: the token-major
 * form, each vector holds VL tokens. Blocks of up to 4 token vectors times as many weight rows
 * as fill VL accumulators; with AVX-512's 32 registers, 4 x 6 (24 accumulators: 10% faster
 * than 4 x 4 on a 512-token tiny-olmoe layer). */
static void wt_times_cols(const float *w, int64_t n_out, int64_t len, const float *inT,
                          int64_t ld, float *outT) {
    for (int64_t m0 = 0; m0 < ld;) {
        const int64_t left = (ld - m0) / VL;
        if (left >= 4 && VL == 16) { /* 24 of the 32 vector registers as accumulators */
            int64_t j0 = 0;
            for (; j0 + 6 <= n_out; j0 += 6)
                tile_cols(4, 6, w + j0 * len, len, inT + m0, ld, outT + j0 * ld + m0);
            for (; j0 + 2 <= n_out; j0 += 2)
                tile_cols(4, 2, w + j0 * len, len, inT + m0, ld, outT + j0 * ld + m0);
            m0 += 4 * VL;
        } else if (left >= 2) {
            for (int64_t j0 = 0; j0 < n_out; j0 += VL / 2)
                tile_cols(2, VL / 2, w + j0 * len, len, inT + m0, ld, outT + j0 * ld + m0);
            m0 += 2 * VL;
        } else {
            for (int64_t j0 = 0; j0 < n_out; j0 += VL)
                tile_cols(1, VL, w + j0 * len, len, inT + m0, ld, outT + j0 * ld + m0);
            m0 += VL;
        }
    }
}

/* One expert's M token rows, row-major (dot products; few tokens). ws: 3*I*M floats. */
static void expert_rows(const float *const *x_rows, float *const *y_rows, int64_t M,
                        const float *gate_up, const float *down, int64_t D, int64_t I, float *ws,
                        const float **in_rows, float **out_rows) {
    float *gu = ws, *act = ws + M * 2 * I;
    for (int64_t r = 0; r < M; r++) out_rows[r] = gu + r * 2 * I;
    rows_times_wt(x_rows, out_rows, M, gate_up, 2 * I, D);
    for (int64_t r = 0; r < M; r++) {
        const float *g = gu + r * 2 * I, *u = g + I;
        float *a = act + r * I;
#pragma omp simd
        for (int64_t i = 0; i < I; i++) a[i] = g[i] / (1.0f + exp_f32(-g[i])) * u[i];
        in_rows[r] = a;
    }
    rows_times_wt(in_rows, y_rows, M, down, D, I);
}

/* The same, token-major (many tokens): transpose the M rows in, (D + 3I + D) * Mp floats of ws
 * with Mp = M rounded up to VL (zero padding), transpose the outputs back out. */
static void expert_cols(const float *const *x_rows, float *const *y_rows, int64_t M,
                        const float *gate_up, const float *down, int64_t D, int64_t I, float *ws) {
    const int64_t Mp = (M + VL - 1) / VL * VL;
    float *xT = ws, *guT = xT + D * Mp, *actT = guT + 2 * I * Mp, *yT = actT + I * Mp;
    for (int64_t m0 = 0; m0 < Mp; m0 += VL)
        for (int64_t d0 = 0; d0 < D; d0 += VL) {
            vf r[VL];
            for (int i = 0; i < VL; i++) r[i] = m0 + i < M ? loadu(x_rows[m0 + i] + d0) : (vf){0};
            transpose_block(r);
            for (int j = 0; j < VL; j++) storeu(xT + (d0 + j) * Mp + m0, r[j]);
        }
    wt_times_cols(gate_up, 2 * I, D, xT, Mp, guT);
    const float *gT = guT, *uT = guT + I * Mp;
#pragma omp simd
    for (int64_t i = 0; i < I * Mp; i++) actT[i] = gT[i] / (1.0f + exp_f32(-gT[i])) * uT[i];
    wt_times_cols(down, D, I, actT, Mp, yT);
    for (int64_t m0 = 0; m0 < M; m0 += VL)
        for (int64_t d0 = 0; d0 < D; d0 += VL) {
            vf r[VL];
            for (int j = 0; j < VL; j++) r[j] = loadu(yT + (d0 + j) * Mp + m0);
            transpose_block(r);
            for (int i = 0; i < VL && m0 + i < M; i++) storeu(y_rows[m0 + i] + d0, r[i]);
        }
}

int moe_cpu_vector_width(void) { return VL; }

/* Returns 0, or -1 when an expert id is out of range (nothing written to y), -2 out of memory. */
int moe_cpu_experts_f32(const float *x, const int64_t *ids, const float *w, const float *gate_up,
                        const float *down, float *y, float *scratch, int64_t N, int64_t K,
                        int64_t D, int64_t I, int64_t E, int threads, int64_t chunk,
                        int64_t cols_min) {
    const int64_t S = N * K;
    for (int64_t s = 0; s < S; s++)
        if (ids[s] < 0 || ids[s] >= E) return -1;
    /* Counting sort of the assignments by expert (stable: slot order within an expert). */
    int64_t *offsets = calloc((size_t)E + 1, sizeof(int64_t));
    int64_t *order = malloc((size_t)(S > 0 ? S : 1) * sizeof(int64_t));
    if (!offsets || !order) {
        free(offsets);
        free(order);
        return -2;
    }
    for (int64_t s = 0; s < S; s++) offsets[ids[s] + 1]++;
    for (int64_t e = 0; e < E; e++) offsets[e + 1] += offsets[e];
    int64_t n_items = 0;
    for (int64_t e = 0; e < E; e++) n_items += (offsets[e + 1] - offsets[e] + chunk - 1) / chunk;
    int64_t *cursor = malloc((size_t)E * sizeof(int64_t));
    int64_t *items = malloc((size_t)(n_items > 0 ? n_items : 1) * 2 * sizeof(int64_t));
    if (!cursor || !items) {
        free(offsets);
        free(order);
        free(cursor);
        free(items);
        return -2;
    }
    memcpy(cursor, offsets, (size_t)E * sizeof(int64_t));
    for (int64_t s = 0; s < S; s++) order[cursor[ids[s]]++] = s;
    /* Work items: (expert, first position in order) of at most `chunk` assignments each. */
    int64_t it = 0;
    for (int64_t e = 0; e < E; e++)
        for (int64_t p = offsets[e]; p < offsets[e + 1]; p += chunk) {
            items[2 * it] = e;
            items[2 * it + 1] = p;
            it++;
        }
    int failed = 0;

#pragma omp parallel num_threads(threads)
    {
        const int64_t chunk_p = (chunk + VL - 1) / VL * VL;
        float *ws = malloc((size_t)chunk_p * (2 * D + 3 * I) * sizeof(float));
        const float **in_rows = malloc((size_t)chunk * sizeof(float *));
        float **out_rows = malloc((size_t)chunk * sizeof(float *));
        const float **x_rows = malloc((size_t)chunk * sizeof(float *));
        float **y_rows = malloc((size_t)chunk * sizeof(float *));
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_items; t++) {
            if (!ws || !in_rows || !out_rows || !x_rows || !y_rows) { /* every thread still runs
                                                                         the loop (OpenMP rule) */
#pragma omp atomic write
                failed = 1;
                continue;
            }
            const int64_t e = items[2 * t], p0 = items[2 * t + 1];
            const int64_t end = offsets[e + 1] < p0 + chunk ? offsets[e + 1] : p0 + chunk;
            const int64_t M = end - p0;
            for (int64_t r = 0; r < M; r++) {
                x_rows[r] = x + (order[p0 + r] / K) * D;
                y_rows[r] = scratch + order[p0 + r] * D;
            }
            const float *wg = gate_up + e * 2 * I * D, *wd = down + e * D * I;
            if (M >= cols_min)
                expert_cols(x_rows, y_rows, M, wg, wd, D, I, ws);
            else
                expert_rows(x_rows, y_rows, M, wg, wd, D, I, ws, in_rows, out_rows);
        }
        free(ws);
        free(in_rows);
        free(out_rows);
        free(x_rows);
        free(y_rows);
    }
    free(offsets);
    free(order);
    free(cursor);
    free(items);
    if (failed) return -2;

    /* The weighted sum over slots, k ascending. */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *out = y + n * D;
        const float *wk = w + n * K;
        for (int64_t d = 0; d < D; d++) out[d] = wk[0] * scratch[(n * K) * D + d];
        for (int64_t k = 1; k < K; k++) {
            const float *row = scratch + (n * K + k) * D;
            for (int64_t d = 0; d < D; d++) out[d] += wk[k] * row[d];
        }
    }
    return 0;
}

/* The k largest of each row of scores (N x E), largest first, the lower index first among
 * equals; NaN is never picked over a number. One pass per row keeping a sorted list of k:
 * at E <= a few hundred and k <= 8 this is a few compares per score, where a general top-k
 * (partial sort, nth_element) branches and allocates per row. */
int64_t moe_cpu_topk_f32(const float *scores, int64_t N, int64_t E, int64_t k, int64_t *out,
                         int threads) {
    int64_t short_rows = 0; /* rows with fewer than k numbers (NaN), reported to the caller */
#pragma omp parallel for num_threads(threads) schedule(static) if (N * E > 32768) \
    reduction(+ : short_rows)
    for (int64_t n = 0; n < N; n++) {
        const float *row = scores + n * E;
        float best[64];
        int64_t *ids = out + n * k;
        int64_t filled = 0;
        for (int64_t e = 0; e < E; e++) {
            const float v = row[e];
            if (filled == k && !(v > best[k - 1])) continue;
            if (filled < k && v != v) continue; /* NaN */
            int64_t pos = filled < k ? filled++ : k - 1;
            while (pos > 0 && v > best[pos - 1]) {
                best[pos] = best[pos - 1];
                ids[pos] = ids[pos - 1];
                pos--;
            }
            best[pos] = v;
            ids[pos] = e;
        }
        for (int64_t j = filled; j < k; j++) ids[j] = -1; /* fewer than k numbers in the row */
        short_rows += filled < k;
    }
    return short_rows;
}

/* RMSNorm of `groups` vectors of d floats per row: out = x / sqrt(mean(x^2) + eps) * w[g], in the
 * model's order (x times the inverse root, then times the weight). Rows are ld_x apart in x and
 * ld_out apart in out, so a slice of a fused projection goes in without a copy. */
/* o = p / sqrt(mean(p^2) + eps) * w over n floats (o may be p). */
static void rms_row(const float *p, float *o, int64_t n, const float *w, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < n; i++) ss += p[i] * p[i];
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) o[i] = p[i] * inv * w[i];
}

void moe_cpu_rms_norm_f32(const float *x, int64_t rows, int64_t ld_x, int64_t groups, int64_t d,
                          const float *w, float eps, float *out, int64_t ld_out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * groups * d > 65536)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < groups; g++)
            rms_row(x + r * ld_x + g * d, out + r * ld_out + g * d, d, w + g * d, eps);
}

static void clamp_all(float *x, int64_t n, float c) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) x[i] = x[i] < -c ? -c : (x[i] > c ? c : x[i]);
}

/* RoPE of one head in place: x*cos + rotate_half(x)*sin, the model's formula. */
static void rope_head(float *x, int64_t d, const float *c, const float *s) {
    const int64_t h = d / 2;
    for (int64_t i = 0; i < h; i++) {
        const float a = x[i], b = x[i + h];
        x[i] = a * c[i] - b * s[i];
        x[i + h] = b * c[i + h] + a * s[i + h];
    }
}

/* Everything attention does to a token's fused projection before the dot products: the
 * QK-norm (norm 0: none; 1: per head, weights wq (H x d) and wk (Kh x d); 2: all q heads
 * together with wq (H*d), all k heads with wk (Kh*d)), the clip (clip < 0: none; before a
 * per-head norm, after a whole one, as the model does), RoPE at the token's position pos[n]
 * (tables cos, sin: one row of d per position), then q to q_out (N x H x d) and k, v straight
 * into the KV cache: token n's (2Kh x d) block at kv + kv_off[n]. Row n of qkv (at qkv +
 * n*ld) holds q (H*d), k (Kh*d), v (Kh*d). */
void moe_cpu_qk_rope_f32(const float *qkv, int64_t N, int64_t ld, int64_t H, int64_t Kh,
                         int64_t d, int norm, const float *wq, const float *wk, float eps,
                         float clip, const float *cos_t, const float *sin_t, const int64_t *pos,
                         float *q_out, float *kv, const int64_t *kv_off, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (N > 64)
    for (int64_t n = 0; n < N; n++) {
        const float *src = qkv + n * ld;
        float *q = q_out + n * H * d, *k = kv + kv_off[n]; /* v follows k */
        memcpy(q, src, (size_t)(H * d) * sizeof(float));
        memcpy(k, src + H * d, (size_t)(2 * Kh * d) * sizeof(float)); /* k then v */
        if (norm == 2) {
            rms_row(q, q, H * d, wq, eps);
            rms_row(k, k, Kh * d, wk, eps);
        }
        if (clip >= 0.0f) {
            clamp_all(q, H * d, clip);
            clamp_all(k, 2 * Kh * d, clip); /* k and v */
        }
        if (norm == 1) {
            for (int64_t h = 0; h < H; h++) rms_row(q + h * d, q + h * d, d, wq + h * d, eps);
            for (int64_t h = 0; h < Kh; h++) rms_row(k + h * d, k + h * d, d, wk + h * d, eps);
        }
        const float *c = cos_t + pos[n] * d, *s = sin_t + pos[n] * d;
        for (int64_t h = 0; h < H; h++) rope_head(q + h * d, d, c, s);
        for (int64_t h = 0; h < Kh; h++) rope_head(k + h * d, d, c, s);
    }
}
