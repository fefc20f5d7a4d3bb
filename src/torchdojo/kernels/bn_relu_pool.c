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

/* Adds the nt per-thread partials (each 2*C doubles: sums, then second sums) into the first, in thread order,
 * so the totals do not depend on timing. */
static void add_partials(double *part, int nt, long C) {
    for (int t = 1; t < nt; t++)
        for (long i = 0; i < 2 * C; i++) part[i] += part[(size_t)t * 2 * C + i];
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

/* Forward pass over x: mean and biased variance per channel, and each window's maximum. Returns 0, or -1 when
 * out of memory. */
int brp_stats_pool(const float *restrict x, long N, long H, long W, long C, float *restrict mean,
                   float *restrict var, float *restrict pooled) {
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
                        m = (vb > m) | (vb != vb) ? vb : m;
                        m = (vc > m) | (vc != vc) ? vc : m;
                        m = (vd > m) | (vd != vd) ? vd : m;
                        o[c] = m;
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
    add_partials(part, nt, C);
    const double count = (double)N * H * W;
    for (long c = 0; c < C; c++) {
        double mu = part[c] / count, v = part[C + c] / count - mu * mu;
        mean[c] = (float)(mu + shift[c]);
        var[c] = (float)(v > 0 ? v : 0);
    }
    free(mem);
    return 0;
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
    add_partials(part, nt, C);
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
