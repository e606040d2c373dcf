/* The column model's transfer function in float32, shared by the native kernels (rk4exp.c,
 * ros2.c): exp_f and column_rate, the one C definition of
 * colenv.models.column.transfer.rate_function. Included by each kernel; needs <math.h>,
 * <stdint.h> and <string.h> first. */
#ifndef COLENV_COLUMN_RATE_H
#define COLENV_COLUMN_RATE_H

#define TINY 1e-30f
#define EXP_CAP 60.0f
#define Q_SERIES_BELOW 0.1f

/* exp(x) for x in [-87, 88] (Cephes expf: range reduction plus a degree-6 polynomial). NaN in,
 * NaN out (its polynomial is NaN whatever the scale). Vectorises, unlike libm's expf. */
static inline float exp_f(float x) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    float fx = floorf(x * 1.44269504088896341f + 0.5f);
    x = x - fx * 0.693359375f;
    x = x + fx * 2.12194440e-4f;
    float z = x * x;
    float y = 1.9875691500e-4f;
    y = y * x + 1.3981999507e-3f;
    y = y * x + 8.3334519073e-3f;
    y = y * x + 4.1665795894e-2f;
    y = y * x + 1.6666665459e-1f;
    y = y * x + 5.0000001201e-1f;
    y = y * z + x + 1.0f;
    int32_t n = (int32_t)(fx == fx ? fx : 0.0f); /* NaN: y is NaN already; no UB conversion */
    uint32_t bits = (uint32_t)(n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

/* phi = g((v - a) da - db) / d, g(u) = u / (1 - exp(-u)) as relu(u) + q, q = w / expm1(w),
 * w = |u| clamped to [TINY, EXP_CAP], q by its series below Q_SERIES_BELOW (colenv.models.column.integrators._rate_q);
 * then the soft ceiling max_rate tanh(phi / max_rate) when saturate. With slope (not NULL) also
 * dphi / d(v - a) from the same intermediates (colenv.models.column.integrators._rate_slope): g'(u) = [u > 0] +
 * sign(u) q (1 - w - q) / w, by its series 1/2 + u/6 - u^3/180 for w < 1e-2; times da / d, and
 * (1 - tanh^2) under the ceiling. saturate and slope are constants where this is inlined. */
static inline __attribute__((always_inline)) float column_rate(float x, float da, float db,
                                                               float inv_d, float max_rate,
                                                               const int saturate, float *slope) {
    float u = x * da - db;
    float w = u < 0.0f ? -u : u;
    w = w < TINY ? TINY : w; /* NaN stays NaN (comparisons are false) */
    w = w > EXP_CAP ? EXP_CAP : w;
    float series =
        1.0f + w * (-0.5f + w * (1.0f / 12.0f + w * w * (-1.0f / 720.0f + w * w * (1.0f / 30240.0f))));
    float q = w < Q_SERIES_BELOW ? series : w / (exp_f(w) - 1.0f);
    float relu = u > 0.0f ? u : 0.0f;
    float phi = (relu + q) * inv_d;
    float s = 0.0f;
    if (slope) {
        float sgn = u > 0.0f ? 1.0f : (u < 0.0f ? -1.0f : 0.0f);
        float exact = (u > 0.0f ? 1.0f : 0.0f) + sgn * q * (1.0f - w - q) / w;
        float gs = 0.5f + u * (1.0f / 6.0f) - u * u * u * (1.0f / 180.0f);
        s = (w < 1e-2f ? gs : exact) * (da * inv_d);
        s = u != u ? u : s;
    }
    if (saturate) {
        float z = phi * (1.0f / max_rate);
        /* tanh(z) = 1 - 2 / (exp(2 z) + 1) for z >= 0 (phi > 0); series where that cancels */
        float e2 = exp_f(2.0f * (z < 30.0f ? z : 30.0f));
        float th = z < 0.01f ? z * (1.0f - z * z * (1.0f / 3.0f - z * z * (2.0f / 15.0f)))
                             : 1.0f - 2.0f / (e2 + 1.0f);
        th = z != z ? z : th;
        phi = max_rate * th;
        s = s * (1.0f - th * th);
    }
    if (slope) *slope = s;
    return phi;
}

#endif
