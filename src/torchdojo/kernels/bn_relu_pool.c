/* BatchNorm2d (batch statistics) -> ReLU -> 2x2 max-pool, fused, for float32 NHWC (channels_last) tensors.
 *
 * torchdojo/fusion.py explains the maths and calls these through ctypes. The training step makes one pass
 * over the full-resolution activation x forward (statistics and window maxima together) and one backward
 * (dx), where PyTorch's separate BN, ReLU and max-pool make about twelve.
 *
 * Layout: x, dx are (N, H, W, C); every pooled tensor is (N, H/2, W/2, C) (floor, as MaxPool2d(2)); per-channel
 * vectors have C entries. A window's maximum is the first maximum in the order top left, top right, bottom
 * left, bottom right, and NaN wins, as torch's max_pool2d picks it; the backward finds it again from x, so
 * no index tensor is kept.
 * Vectorisation: every inner loop runs over channels with float data only (no narrower types, which would
 * make the compiler pick 64-lane vectors that a 32-channel layer never fills).
 * Sums: float over one row of windows (at most 2*W values), added into double per thread; per-thread partials
 * are added in thread order, so results are the same from run to run for a given thread count (torch shares
 * the same OpenMP runtime and thread count). The statistics accumulate x minus a per-channel shift (x's first
 * pixel), so the variance keeps its precision when the mean is large.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

/* Adds the nt per-thread partials (`size` doubles each) into the first, in thread order, so the totals do not
 * depend on timing. */
static void add_partials(double *part, int nt, long size) {
    for (int t = 1; t < nt; t++)
        for (long i = 0; i < size; i++) part[i] += part[(size_t)t * size + i];
}

/* Per-thread scratch: 2*C doubles of partial sums, then 2*C floats of row sums. */
static void *scratch(int nt, long C) { return calloc((size_t)nt, 2 * C * (sizeof(double) + sizeof(float))); }

/* Adds float row sums (fs, fq) into the thread's double partials (s, q), then clears them. */
static void flush(double *restrict s, double *restrict q, float *restrict fs, float *restrict fq, long C) {
    for (long c = 0; c < C; c++) {
        s[c] += fs[c];
        q[c] += fq[c];
        fs[c] = 0.f;
        fq[c] = 0.f;
    }
}

/* Sums of (x - shift) and its square over `len` pixels starting at p (pixel stride C), into fs, fq. */
static void sum_pixels(const float *restrict p, long len, long C, const float *restrict shift, float *restrict fs,
                       float *restrict fq) {
    for (long i = 0; i < len; i++, p += C) {
#pragma omp simd
        for (long c = 0; c < C; c++) {
            float v = p[c] - shift[c];
            fs[c] += v;
            fq[c] += v * v;
        }
    }
}

/* Forward pass over x: mean and biased variance per channel, each window's maximum and, when `code` is not
 * NULL, where it is (0 top left, 1 top right, 2 bottom left, 3 bottom right). Returns 0, or -1 when out of
 * memory. */
static inline __attribute__((always_inline)) int stats_pool(const float *restrict x, long N, long H, long W,
                                                            long C, float *restrict mean, float *restrict var,
                                                            float *restrict pooled, int32_t *restrict code,
                                                            const int want_code) {
    const long H2 = H / 2, W2 = W / 2;
    const int nt = omp_get_max_threads();
    char *mem = scratch(nt, C);
    if (!mem) return -1;
    double *part = (double *)mem;
    const float *restrict shift = x; /* the first pixel */
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        double *restrict s = part + (size_t)t * 2 * C, *restrict q = s + C;
        float *restrict fs = (float *)(part + (size_t)nt * 2 * C) + (size_t)t * 2 * C, *restrict fq = fs + C;
#pragma omp for collapse(2) schedule(static)
        for (long n = 0; n < N; n++) {
            for (long h2 = 0; h2 < H2; h2++) {
                const float *restrict row = x + (n * H + 2 * h2) * W * C;
                float *restrict out = pooled + (n * H2 + h2) * W2 * C;
                int32_t *restrict kout = want_code ? code + (n * H2 + h2) * W2 * C : NULL;
                for (long w2 = 0; w2 < W2; w2++) {
                    const float *restrict a = row + 2 * w2 * C;
                    const float *restrict b = a + C, *restrict c2 = a + W * C, *restrict d = c2 + C;
                    float *restrict o = out + w2 * C;
#pragma omp simd
                    for (long c = 0; c < C; c++) {
                        float va = a[c], vb = b[c], vc = c2[c], vd = d[c];
                        float sa = va - shift[c], sb = vb - shift[c], sc = vc - shift[c], sd = vd - shift[c];
                        fs[c] += (sa + sb) + (sc + sd);
                        fq[c] += (sa * sa + sb * sb) + (sc * sc + sd * sd);
                        float m = va;
                        int i = 0, t;
                        t = (vb > m) | (vb != vb); m = t ? vb : m; i = t ? 1 : i;
                        t = (vc > m) | (vc != vc); m = t ? vc : m; i = t ? 2 : i;
                        t = (vd > m) | (vd != vd); m = t ? vd : m; i = t ? 3 : i;
                        o[c] = m;
                        if (want_code) kout[w2 * C + c] = i;
                    }
                }
                if (W & 1) { /* the last column, pooled away but part of the statistics */
                    sum_pixels(row + (W - 1) * C, 1, C, shift, fs, fq);
                    sum_pixels(row + (2 * W - 1) * C, 1, C, shift, fs, fq);
                }
                flush(s, q, fs, fq, C);
            }
        }
        if (H & 1) { /* the last row of each image */
#pragma omp for schedule(static)
            for (long n = 0; n < N; n++) {
                sum_pixels(x + (n * H + H - 1) * W * C, W, C, shift, fs, fq);
                flush(s, q, fs, fq, C);
            }
        }
    }
    add_partials(part, nt, 2 * C);
    const double count = (double)N * H * W;
    for (long c = 0; c < C; c++) {
        double mu = part[c] / count, v = part[C + c] / count - mu * mu;
        mean[c] = (float)(mu + shift[c]);
        var[c] = (float)(v > 0 ? v : 0);
    }
    free(mem);
    return 0;
}

int brp_stats_pool(const float *restrict x, long N, long H, long W, long C, float *restrict mean,
                   float *restrict var, float *restrict pooled, int32_t *restrict code) {
    return code ? stats_pool(x, N, H, W, C, mean, var, pooled, code, 1)
                : stats_pool(x, N, H, W, C, mean, var, pooled, NULL, 0);
}

/* y = max(pooled * alpha + beta, 0) per channel, over P = N * H2 * W2 positions. NaN stays NaN. */
void brp_affine_relu(const float *restrict pooled, long P, long C, const float *restrict alpha,
                     const float *restrict beta, float *restrict y) {
#pragma omp parallel for schedule(static)
    for (long p = 0; p < P; p++) {
        const float *restrict in = pooled + p * C;
        float *restrict out = y + p * C;
#pragma omp simd
        for (long c = 0; c < C; c++) {
            float z = in[c] * alpha[c] + beta[c];
            out[c] = (z > 0.f) | (z != z) ? z : 0.f;
        }
    }
}

/* Backward, step 1: with G = g where y > 0 (the ReLU's backward), sg = sum(G) and sgx = sum(G * xhat) per
 * channel, xhat = (pooled - mean) * invstd: BN's bias and weight gradients; and gs = alpha * G, the gradient
 * each window's maximum receives. P = N * H2 positions of W2 windows each. Returns 0, or -1 (memory). */
int brp_grad_sums(const float *restrict g, const float *restrict y, const float *restrict pooled, long P,
                  long W2, long C, const float *restrict mean, const float *restrict invstd,
                  const float *restrict alpha, float *restrict sg, float *restrict sgx, float *restrict gs) {
    const int nt = omp_get_max_threads();
    char *mem = scratch(nt, C);
    if (!mem) return -1;
    double *part = (double *)mem;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        double *restrict s = part + (size_t)t * 2 * C, *restrict q = s + C;
        float *restrict fs = (float *)(part + (size_t)nt * 2 * C) + (size_t)t * 2 * C, *restrict fq = fs + C;
#pragma omp for schedule(static)
        for (long p = 0; p < P; p++) {
            for (long w2 = 0; w2 < W2; w2++) {
                const long off = (p * W2 + w2) * C;
                const float *restrict gp = g + off, *restrict yp = y + off, *restrict xp = pooled + off;
                float *restrict op = gs + off;
#pragma omp simd
                for (long c = 0; c < C; c++) {
                    float gg = yp[c] > 0.f ? gp[c] : 0.f;
                    fs[c] += gg;
                    fq[c] += gg * ((xp[c] - mean[c]) * invstd[c]);
                    op[c] = alpha[c] * gg;
                }
            }
            flush(s, q, fs, fq, C);
        }
    }
    add_partials(part, nt, 2 * C);
    for (long c = 0; c < C; c++) {
        sg[c] = (float)part[c];
        sgx[c] = (float)part[C + c];
    }
    free(mem);
    return 0;
}

/* dx = a * (x - mean) + b over `len` pixels starting at p (pixel stride C). */
static void affine_pixels(const float *restrict p, long len, long C, const float *restrict a,
                          const float *restrict mean, const float *restrict b, float *restrict d) {
    for (long i = 0; i < len; i++, p += C, d += C) {
#pragma omp simd
        for (long c = 0; c < C; c++) d[c] = a[c] * (p[c] - mean[c]) + b[c];
    }
}

/* Backward, step 2: dx = a * (x - mean) + b everywhere, plus gs at each window's maximum (found again as the
 * forward found it). */
void brp_dx(const float *restrict x, const float *restrict gs, long N, long H, long W, long C,
            const float *restrict mean, const float *restrict a, const float *restrict b, float *restrict dx) {
    const long H2 = H / 2, W2 = W / 2;
#pragma omp parallel
    {
#pragma omp for collapse(2) schedule(static)
        for (long n = 0; n < N; n++) {
            for (long h2 = 0; h2 < H2; h2++) {
                const long off = (n * H + 2 * h2) * W * C;
                const float *restrict row = x + off;
                float *restrict drow = dx + off;
                const float *restrict grow = gs + (n * H2 + h2) * W2 * C;
                for (long w2 = 0; w2 < W2; w2++) {
                    const float *restrict pa = row + 2 * w2 * C;
                    const float *restrict pb = pa + C, *restrict pc = pa + W * C, *restrict pd = pc + C;
                    float *restrict da = drow + 2 * w2 * C;
                    float *restrict db = da + C, *restrict dc = da + W * C, *restrict dd = dc + C;
                    const float *restrict gp = grow + w2 * C;
#pragma omp simd
                    for (long c = 0; c < C; c++) {
                        float va = pa[c], vb = pb[c], vc = pc[c], vd = pd[c], gc = gp[c];
                        /* the gradient moves to each later value that wins, as the forward's max did */
                        float ga = gc, gb = 0.f, gcc = 0.f, gd = 0.f, m = va;
                        int t = (vb > m) | (vb != vb);
                        m = t ? vb : m; gb = t ? gc : 0.f; ga = t ? 0.f : ga;
                        t = (vc > m) | (vc != vc);
                        m = t ? vc : m; gcc = t ? gc : 0.f; ga = t ? 0.f : ga; gb = t ? 0.f : gb;
                        t = (vd > m) | (vd != vd);
                        gd = t ? gc : 0.f; ga = t ? 0.f : ga; gb = t ? 0.f : gb; gcc = t ? 0.f : gcc;
                        float ac = a[c], mc = mean[c], bc = b[c];
                        da[c] = ac * (va - mc) + bc + ga;
                        db[c] = ac * (vb - mc) + bc + gb;
                        dc[c] = ac * (vc - mc) + bc + gcc;
                        dd[c] = ac * (vd - mc) + bc + gd;
                    }
                }
                if (W & 1) { /* the last column */
                    affine_pixels(row + (W - 1) * C, 1, C, a, mean, b, drow + (W - 1) * C);
                    affine_pixels(row + (2 * W - 1) * C, 1, C, a, mean, b, drow + (2 * W - 1) * C);
                }
            }
        }
        if (H & 1) { /* the last row of each image */
#pragma omp for schedule(static)
            for (long n = 0; n < N; n++) {
                const long off = (n * H + H - 1) * W * C;
                affine_pixels(x + off, W, C, a, mean, b, dx + off);
            }
        }
    }
}

/* --- The stem: a stride-1 convolution whose input needs no gradient, then the fused block ---------------------
 * The convolution's weight gradient is sum_p dx[p, o] * U[p, j] over output positions p, U the input patches
 * (j = (ci * KH + kh) * KW + kw, the order of weight.reshape(Cout, J)). dx is a * (x - mean) + b plus the
 * scattered pooled gradient, and x - mean = W (U - mean of U), so the dense part needs only the patches'
 * Gram matrix (J x J) and sums, and the scattered part only the patches at each window's maximum: dx, and the
 * full-resolution x itself, are never needed in the backward. `up` is the conv's input already zero-padded,
 * (N, Hp, Wp, Cin); the output is Ho = Hp - KH + 1 by Wo = Wp - KW + 1. */

/* Offsets (in floats, from a patch's top-left corner in up) of the J patch elements. */
static void patch_offsets(long Wp, long Cin, long KH, long KW, long *restrict off) {
    for (long ci = 0; ci < Cin; ci++)
        for (long kh = 0; kh < KH; kh++)
            for (long kw = 0; kw < KW; kw++) *off++ = (kh * Wp + kw) * Cin + ci;
}

/* Per-thread scratch of the stem kernels: `size` doubles of partial sums and `floats` floats each, and the J patch
 * offsets. Returns 0, or -1 when out of memory (with nothing left allocated). */
struct stem_scratch {
    double *part;
    float *rows;
    long *off;
};

static void stem_free(struct stem_scratch *s) {
    free(s->part);
    free(s->rows);
    free(s->off);
}

static int stem_alloc(struct stem_scratch *s, int nt, long size, long floats, long Wp, long Cin, long KH, long KW) {
    s->part = calloc((size_t)nt * size, sizeof(double));
    s->rows = calloc((size_t)nt * floats, sizeof(float));
    s->off = malloc((size_t)(Cin * KH * KW) * sizeof(long));
    if (!s->part || !s->rows || !s->off) {
        stem_free(s);
        return -1;
    }
    patch_offsets(Wp, Cin, KH, KW, s->off);
    return 0;
}

/* Gram matrix (J x J) and sums (J) of the patches minus `shift` (per input channel) over all N * Ho * Wo output
 * positions. Vectorised over the positions of an output row: float sums per image, added into double.
 * Returns 0, or -1 (memory). */
int brp_stem_gram(const float *restrict up, long N, long Hp, long Wp, long Cin, long KH, long KW,
                  const float *restrict shift, double *restrict gram, double *restrict sums) {
    const long Ho = Hp - KH + 1, Wo = Wp - KW + 1, J = Cin * KH * KW, npair = J * (J + 1) / 2;
    const long Wv = (Wo + 15) / 16 * 16; /* a row's positions, padded to whole 16-lane vectors (zeros) */
    const long size = J * J + J, scratch_size = (npair + J) * Wv + J * Wv;
    const int nt = omp_get_max_threads();
    struct stem_scratch sc;
    if (stem_alloc(&sc, nt, size, scratch_size, Wp, Cin, KH, KW)) return -1;
    double *part = sc.part;
    float *rows = sc.rows;
    const long *off = sc.off;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        double *restrict dp = part + (size_t)t * size;
        float *restrict acc = rows + (size_t)t * scratch_size; /* per pair (i <= k), then per i: Wv slots */
        float *restrict A = acc + (npair + J) * Wv;            /* A[j * Wv + w]: element j of position w's patch */
#pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            for (long h = 0; h < Ho; h++) {
                const float *restrict row = up + (n * Hp + h) * Wp * Cin;
                for (long j = 0; j < J; j++) { /* lanes Wo..Wv stay 0 */
                    const float *restrict src = row + off[j];
                    const float sh = shift[j / (KH * KW)];
                    float *restrict aj = A + j * Wv;
                    if (Cin == 1) {
#pragma omp simd
                        for (long w = 0; w < Wo; w++) aj[w] = src[w] - sh;
                    } else {
                        for (long w = 0; w < Wo; w++) aj[w] = src[w * Cin] - sh;
                    }
                }
                float *restrict a = acc;
                for (long i = 0; i < J; i++) {
                    const float *restrict ai = A + i * Wv;
                    for (long k = i; k < J; k++, a += Wv) {
                        const float *restrict ak = A + k * Wv;
                        for (long w0 = 0; w0 < Wv; w0 += 16) {
#pragma omp simd
                            for (long w = w0; w < w0 + 16; w++) a[w] += ai[w] * ak[w];
                        }
                    }
                }
                for (long i = 0; i < J; i++, a += Wv) {
                    const float *restrict ai = A + i * Wv;
                    for (long w0 = 0; w0 < Wv; w0 += 16) {
#pragma omp simd
                        for (long w = w0; w < w0 + 16; w++) a[w] += ai[w];
                    }
                }
            }
            float *restrict a = acc; /* image done: into double */
            for (long i = 0; i < J; i++)
                for (long k = i; k < J; k++, a += Wv) {
                    double s = 0;
                    for (long w = 0; w < Wo; w++) s += a[w];
                    dp[i * J + k] += s;
                }
            for (long i = 0; i < J; i++, a += Wv) {
                double s = 0;
                for (long w = 0; w < Wo; w++) s += a[w];
                dp[J * J + i] += s;
            }
            for (long i = 0; i < (npair + J) * Wv; i++) acc[i] = 0.f;
        }
    }
    add_partials(part, nt, size);
    for (long i = 0; i < J; i++)
        for (long k = i; k < J; k++) gram[i * J + k] = gram[k * J + i] = part[i * J + k];
    for (long i = 0; i < J; i++) sums[i] = part[J * J + i];
    stem_free(&sc);
    return 0;
}

/* One block of `nb` output channels of one window (nb is OB or the tail): acc[j * C + o] += the gradient at the
 * window's maximum times that position's patch. */
#define OB 16
static inline __attribute__((always_inline)) void sparse_block(const float *restrict g, const int32_t *restrict kc,
                                                               const float *restrict pk, long J, long C, long nb,
                                                               float *restrict acc) {
    float m0[OB], m1[OB], m2[OB], m3[OB];
#pragma omp simd
    for (long o = 0; o < nb; o++) {
        const int k = kc[o];
        const float gg = g[o];
        m0[o] = k == 0 ? gg : 0.f;
        m1[o] = k == 1 ? gg : 0.f;
        m2[o] = k == 2 ? gg : 0.f;
        m3[o] = k == 3 ? gg : 0.f;
    }
    for (long j = 0; j < J; j++) {
        const float p0 = pk[j], p1 = pk[J + j], p2 = pk[2 * J + j], p3 = pk[3 * J + j];
        float *restrict a = acc + j * C;
#pragma omp simd
        for (long o = 0; o < nb; o++) a[o] += (m0[o] * p0 + m1[o] * p1) + (m2[o] * p2 + m3[o] * p3);
    }
}

/* sparse_block for a 3x3 kernel on one input channel, over a row of W2 windows: the 9 sums stay in registers.
 * r points at the row's top-left padded input value; the window w2 reads the 4x4 values from r + 2 * w2. */
static inline __attribute__((always_inline)) void sparse_row_3x3(const float *restrict r, long Wp, long W2,
                                                                 const float *restrict g, const int32_t *restrict kc,
                                                                 long C, long nb, double *restrict dp) {
    float acc[9][OB] = {{0}};
    for (long w2 = 0; w2 < W2; w2++, r += 2, g += C, kc += C) {
        float v[4][4];
        for (int i = 0; i < 4; i++)
            for (int k = 0; k < 4; k++) v[i][k] = r[i * Wp + k];
        float m0[OB], m1[OB], m2[OB], m3[OB];
#pragma omp simd
        for (long o = 0; o < nb; o++) {
            const int k = kc[o];
            const float gg = g[o];
            m0[o] = k == 0 ? gg : 0.f;
            m1[o] = k == 1 ? gg : 0.f;
            m2[o] = k == 2 ? gg : 0.f;
            m3[o] = k == 3 ? gg : 0.f;
        }
        for (int kh = 0; kh < 3; kh++)
            for (int kw = 0; kw < 3; kw++) {
                const float p0 = v[kh][kw], p1 = v[kh][kw + 1], p2 = v[kh + 1][kw], p3 = v[kh + 1][kw + 1];
#pragma omp simd
                for (long o = 0; o < nb; o++)
                    acc[kh * 3 + kw][o] += (m0[o] * p0 + m1[o] * p1) + (m2[o] * p2 + m3[o] * p3);
            }
    }
    for (int j = 0; j < 9; j++)
        for (long o = 0; o < nb; o++) dp[j * C + o] += acc[j][o];
}

/* dw[o * J + j] = sum over windows of gs[window, o] * U[the window's maximum in channel o, j]: the weight gradient
 * from the pooled maxima. gs and code are (N, Ho/2, Wo/2, C), code as brp_stats_pool writes it. Returns 0, or
 * -1 (memory). */
int brp_stem_sparse(const float *restrict up, const float *restrict gs, const int32_t *restrict code, long N,
                    long Hp, long Wp, long Cin, long KH, long KW, long C, float *restrict dw) {
    const long Ho = Hp - KH + 1, Wo = Wp - KW + 1, H2 = Ho / 2, W2 = Wo / 2;
    const long J = Cin * KH * KW, size = J * C, scratch_size = size + 4 * J;
    const long corner[4] = {0, Cin, Wp * Cin, (Wp + 1) * Cin}; /* the window's 4 positions */
    const int nt = omp_get_max_threads();
    struct stem_scratch sc;
    if (stem_alloc(&sc, nt, size, scratch_size, Wp, Cin, KH, KW)) return -1;
    double *part = sc.part;
    float *rows = sc.rows;
    const long *off = sc.off;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        double *restrict dp = part + (size_t)t * size;
        float *restrict acc = rows + (size_t)t * scratch_size; /* acc[j * C + o] */
        float *restrict pk = acc + size;                       /* the patches at the window's 4 positions */
#pragma omp for collapse(2) schedule(static)
        for (long n = 0; n < N; n++) {
            for (long h2 = 0; h2 < H2; h2++) {
                const float *restrict row = up + (n * Hp + 2 * h2) * Wp * Cin;
                if (Cin == 1 && KH == 3 && KW == 3) {
                    const long goff = (n * H2 + h2) * W2 * C;
                    long o = 0;
                    for (; o + OB <= C; o += OB)
                        sparse_row_3x3(row, Wp, W2, gs + goff + o, code + goff + o, C, OB, dp + o);
                    if (o < C) sparse_row_3x3(row, Wp, W2, gs + goff + o, code + goff + o, C, C - o, dp + o);
                    continue;
                }
                for (long w2 = 0; w2 < W2; w2++) {
                    const float *restrict win = row + 2 * w2 * Cin;
                    for (int k = 0; k < 4; k++)
                        for (long j = 0; j < J; j++) pk[k * J + j] = win[corner[k] + off[j]];
                    const long goff = ((n * H2 + h2) * W2 + w2) * C;
                    long o = 0;
                    for (; o + OB <= C; o += OB) sparse_block(gs + goff + o, code + goff + o, pk, J, C, OB, acc + o);
                    if (o < C) sparse_block(gs + goff + o, code + goff + o, pk, J, C, C - o, acc + o);
                }
                for (long i = 0; i < size; i++) {
                    dp[i] += acc[i];
                    acc[i] = 0.f;
                }
            }
        }
    }
    add_partials(part, nt, size);
    for (long o = 0; o < C; o++)
        for (long j = 0; j < J; j++) dw[o * J + j] = (float)part[j * C + o];
    stem_free(&sc);
    return 0;
}
