/* BatchNorm2d (batch statistics) -> ReLU -> 2x2 max-pool, fused, for float32 NHWC (channels_last) tensors.
 *
 * torchdojo/fusion.py explains the maths and calls these through ctypes. The training step makes one pass
 * over the full-resolution activation x forward (statistics and window maxima together) and one backward
 * (dx), where PyTorch's separate BN, ReLU and max-pool make about twelve.
 *
 * Layout: x, dx are (N, H, W, C); every pooled tensor is (N, H/2, W/2, C) (floor, as MaxPool2d(2)); per-channel
 * vectors have C entries. `code` is the position of each window's maximum: 0 (top left), 1, 2, 3 (bottom
 * right), the first maximum in that order and NaN wins, as torch's max_pool2d picks it.
 * Threads: OpenMP with static schedules and per-thread partial sums added in thread order, so results are the
 * same from run to run for a given thread count (torch shares the same OpenMP runtime and thread count).
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

/* Forward pass over x: mean and biased variance per channel (double accumulation), each window's maximum
 * and its position. Returns 0, or -1 when out of memory. */
int brp_stats_pool(const float *restrict x, long N, long H, long W, long C, float *restrict mean,
                   float *restrict var, float *restrict pooled, uint8_t *restrict code) {
    const long H2 = H / 2, W2 = W / 2;
    const int nt = omp_get_max_threads();
    double *part = calloc((size_t)nt * 2 * C, sizeof(double));
    if (!part) return -1;
#pragma omp parallel num_threads(nt)
    {
        double *restrict s = part + (size_t)omp_get_thread_num() * 2 * C, *restrict q = s + C;
#pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            for (long h2 = 0; h2 < H2; h2++) {
                for (long w2 = 0; w2 < W2; w2++) {
                    const float *restrict a = x + ((n * H + 2 * h2) * W + 2 * w2) * C;
                    const float *restrict b = a + C, *restrict c2 = a + W * C, *restrict d = c2 + C;
                    float *restrict out = pooled + ((n * H2 + h2) * W2 + w2) * C;
                    uint8_t *restrict k = code + ((n * H2 + h2) * W2 + w2) * C;
#pragma omp simd
                    for (long c = 0; c < C; c++) {
                        float va = a[c], vb = b[c], vc = c2[c], vd = d[c];
                        s[c] += (double)va + (double)vb + (double)vc + (double)vd;
                        q[c] += (double)va * va + (double)vb * vb + (double)vc * vc + (double)vd * vd;
                        float m = va;
                        int i = 0, t;
                        t = (vb > m) | (vb != vb); m = t ? vb : m; i = t ? 1 : i;
                        t = (vc > m) | (vc != vc); m = t ? vc : m; i = t ? 2 : i;
                        t = (vd > m) | (vd != vd); m = t ? vd : m; i = t ? 3 : i;
                        out[c] = m;
                        k[c] = (uint8_t)i;
                    }
                }
                if (W & 1) { /* the last column, pooled away but part of the statistics */
                    for (long r = 2 * h2; r < 2 * h2 + 2; r++) {
                        const float *restrict p = x + ((n * H + r) * W + W - 1) * C;
#pragma omp simd
                        for (long c = 0; c < C; c++) { s[c] += p[c]; q[c] += (double)p[c] * p[c]; }
                    }
                }
            }
            if (H & 1) { /* the last row */
                const float *restrict p = x + ((n * H + H - 1) * W) * C;
                for (long w = 0; w < W; w++, p += C) {
#pragma omp simd
                    for (long c = 0; c < C; c++) { s[c] += p[c]; q[c] += (double)p[c] * p[c]; }
                }
            }
        }
    }
    add_partials(part, nt, C);
    const double count = (double)N * H * W;
    for (long c = 0; c < C; c++) {
        double mu = part[c] / count, v = part[C + c] / count - mu * mu;
        mean[c] = (float)mu;
        var[c] = (float)(v > 0 ? v : 0);
    }
    free(part);
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
 * channel, xhat = (pooled - mean) * invstd: BN's bias and weight gradients. Returns 0, or -1 (memory). */
int brp_grad_sums(const float *restrict g, const float *restrict y, const float *restrict pooled, long P,
                  long C, const float *restrict mean, const float *restrict invstd, float *restrict sg,
                  float *restrict sgx) {
    const int nt = omp_get_max_threads();
    double *part = calloc((size_t)nt * 2 * C, sizeof(double));
    if (!part) return -1;
#pragma omp parallel num_threads(nt)
    {
        double *restrict s = part + (size_t)omp_get_thread_num() * 2 * C, *restrict q = s + C;
#pragma omp for schedule(static)
        for (long p = 0; p < P; p++) {
            const float *restrict gp = g + p * C, *restrict yp = y + p * C, *restrict xp = pooled + p * C;
#pragma omp simd
            for (long c = 0; c < C; c++) {
                float gg = yp[c] > 0.f ? gp[c] : 0.f;
                s[c] += gg;
                q[c] += (double)gg * ((xp[c] - mean[c]) * invstd[c]);
            }
        }
    }
    add_partials(part, nt, C);
    for (long c = 0; c < C; c++) {
        sg[c] = (float)part[c];
        sgx[c] = (float)part[C + c];
    }
    free(part);
    return 0;
}

/* Backward, step 2: dx = a * (x - mean) + b everywhere, plus alpha * G at each window's maximum. */
void brp_dx(const float *restrict x, const float *restrict g, const float *restrict y,
            const uint8_t *restrict code, long N, long H, long W, long C, const float *restrict alpha,
            const float *restrict mean, const float *restrict a, const float *restrict b, float *restrict dx) {
    const long H2 = H / 2, W2 = W / 2;
#pragma omp parallel for schedule(static)
    for (long n = 0; n < N; n++) {
        for (long h = 0; h < H; h++) {
            for (long w = 0; w < W; w++) {
                const long off = ((n * H + h) * W + w) * C;
                const float *restrict xp = x + off;
                float *restrict dp = dx + off;
                if (h < 2 * H2 && w < 2 * W2) {
                    const long poff = ((n * H2 + h / 2) * W2 + w / 2) * C;
                    const float *restrict gp = g + poff, *restrict yp = y + poff;
                    const uint8_t *restrict kp = code + poff;
                    const int want = (int)((h & 1) * 2 + (w & 1));
#pragma omp simd
                    for (long c = 0; c < C; c++) {
                        float sparse = ((int)kp[c] == want) & (yp[c] > 0.f) ? alpha[c] * gp[c] : 0.f;
                        dp[c] = a[c] * (xp[c] - mean[c]) + b[c] + sparse;
                    }
                } else {
#pragma omp simd
                    for (long c = 0; c < C; c++) dp[c] = a[c] * (xp[c] - mean[c]) + b[c];
                }
            }
        }
    }
}
