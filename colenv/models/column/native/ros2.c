/* ROS2 (two-stage Rosenbrock-W, Verwer, Spee, Blom & Hundsdorfer 1999) for the column
 * network on CPU: the forward of colenv.models.column.rosenbrock (no gradient; a rollout that
 * needs one runs the torch path with autograd).
 *
 * Per step of h, from y = (v, a) with rates p = phi(v - a) and slopes s = phi'(v - a):
 *     M_v = (1 + gamma h / tau_m) I - gamma h W_blk diag(s)    per column (8 x 8, LU, pivoting)
 *     m_a = 1 + gamma h (1 + kappa s) / tau_a                  per population
 *     k1 = M^-1 F(y),  k2 = M^-1 (F(y + h k1) - 2 k1),  y' = y + h (3/2 k1 + 1/2 k2)
 *     r' = e_r r + w0 p + w1 phi(v' - a')                     (exact filter, linear rate)
 * then, for SDE rollouts, v += the step's given increment (and p is recomputed).
 *
 * Trials run one at a time per thread (scalar code; the 8 x 8 solves dominate and pivot per
 * trial). Built together with rk4exp.c by colenv.models.column.native (same flags: fused
 * multiply-adds, no -ffast-math so NaN and inf propagate as in torch). Float32.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t B, P, n_int, n_sub, n_threads;
    const float *y0;        /* [B, 3P] */
    const float *drive;     /* [n_int, B, P]: drive of grid interval k */
    const float *blk;       /* [P / 8][8 target][8 source]: within-column weights */
    const int32_t *row_ptr; /* [P + 1]: CSR by target of the entries outside the blocks */
    const int32_t *col;     /* [nnz]: source population */
    const float *val;       /* [nnz]: weight w_t[source, target] */
    const float *kappa;     /* [P] */
    const float *noise;     /* [n_int, n_sub, B, P] kicks on v, or NULL */
    float h, gh, da, db, inv_d, inv_tau_m, inv_tau_a, e_r, w0, w1, max_rate, diag_v;
    float *out; /* [n_int + 1, B, 3P]; row 0 = y0 */
} Ros2Problem;

#include "column_rate.h"

/* phi(x) and (slope not NULL) dphi/dx with this problem's constants (column_rate.h, as
 * rk4exp.c); the soft ceiling where max_rate > 0. */
static inline float rate_slope(float x, const Ros2Problem *p, float *slope) {
    return column_rate(x, p->da, p->db, p->inv_d, p->max_rate, p->max_rate > 0.0f, slope);
}

/* In-place LU with partial pivoting of an 8 x 8 row-major matrix; piv[i] = row swapped in. A
 * zero pivot is left as is (the solve then gives inf/NaN, which the rollout's checks report). */
static void lu8(float *m, int *piv) {
    for (int k = 0; k < 8; k++) {
        int best = k;
        float big = fabsf(m[k * 8 + k]);
        for (int i = k + 1; i < 8; i++) {
            float x = fabsf(m[i * 8 + k]);
            if (x > big) big = x, best = i;
        }
        piv[k] = best;
        if (best != k)
            for (int j = 0; j < 8; j++) {
                float t = m[k * 8 + j];
                m[k * 8 + j] = m[best * 8 + j];
                m[best * 8 + j] = t;
            }
        const float inv = 1.0f / m[k * 8 + k];
        for (int i = k + 1; i < 8; i++) {
            const float l = m[i * 8 + k] * inv;
            m[i * 8 + k] = l;
            for (int j = k + 1; j < 8; j++) m[i * 8 + j] -= l * m[k * 8 + j];
        }
    }
}

/* x <- M^-1 x for the factors of lu8 (P M = L U: whole rows were swapped, so every swap is
 * applied to x before the forward substitution). */
static void solve8(const float *m, const int *piv, float *x) {
    for (int k = 0; k < 8; k++)
        if (piv[k] != k) {
            float t = x[k];
            x[k] = x[piv[k]];
            x[piv[k]] = t;
        }
    for (int k = 0; k < 8; k++)
        for (int i = k + 1; i < 8; i++) x[i] -= m[i * 8 + k] * x[k];
    for (int i = 7; i >= 0; i--) {
        float acc = x[i];
        for (int j = i + 1; j < 8; j++) acc -= m[i * 8 + j] * x[j];
        x[i] = acc / m[i * 8 + i];
    }
}

/* dv = W p + drive - v / tau_m, da = (kappa p - a) / tau_a */
static void drift(const Ros2Problem *q, const float *v, const float *a, const float *p,
                  const float *drv, float *dv, float *da) {
    const int P = q->P, n_blk = P / 8;
    for (int c = 0; c < n_blk; c++) {
        const float *b = q->blk + c * 64;
        const float *pc = p + c * 8;
        for (int i = 0; i < 8; i++) {
            float acc = 0.0f;
            for (int j = 0; j < 8; j++) acc += b[i * 8 + j] * pc[j];
            dv[c * 8 + i] = acc;
        }
    }
    for (int i = 0; i < P; i++) {
        float acc = dv[i];
        for (int e = q->row_ptr[i]; e < q->row_ptr[i + 1]; e++) acc += q->val[e] * p[q->col[e]];
        dv[i] = acc + drv[i] - v[i] * q->inv_tau_m;
        da[i] = (q->kappa[i] * p[i] - a[i]) * q->inv_tau_a;
    }
}

static void trial(const Ros2Problem *q, int b, float *buf, int *piv) {
    const int P = q->P, B = q->B, n_blk = P / 8;
    float *v = buf, *a = v + P, *r = a + P, *p = r + P, *s = p + P, *ma = s + P;
    float *kv1 = ma + P, *ka1 = kv1 + P, *v2 = ka1 + P, *a2 = v2 + P, *p2 = a2 + P;
    float *dv = p2 + P, *da = dv + P, *lu = da + P; /* lu: n_blk * 64 */
    const size_t S = 3 * (size_t)P;
    memcpy(v, q->y0 + b * S, 3 * P * sizeof(float));
    memcpy(q->out + b * S, v, 3 * P * sizeof(float));
    for (int i = 0; i < P; i++) p[i] = rate_slope(v[i] - a[i], q, NULL);
    const float h = q->h, gh = q->gh;
    for (int k = 0; k < q->n_int; k++) {
        const float *drv = q->drive + ((size_t)k * B + b) * P;
        for (int st = 0; st < q->n_sub; st++) {
            for (int i = 0; i < P; i++) {
                rate_slope(v[i] - a[i], q, &s[i]);
                ma[i] = 1.0f + gh * q->inv_tau_a * (1.0f + q->kappa[i] * s[i]);
            }
            for (int c = 0; c < n_blk; c++) {
                float *m = lu + c * 64;
                const float *w = q->blk + c * 64;
                for (int i = 0; i < 8; i++)
                    for (int j = 0; j < 8; j++)
                        m[i * 8 + j] = (i == j ? q->diag_v : 0.0f) - gh * w[i * 8 + j] * s[c * 8 + j];
                lu8(m, piv + c * 8);
            }
            drift(q, v, a, p, drv, dv, da);
            for (int c = 0; c < n_blk; c++) solve8(lu + c * 64, piv + c * 8, dv + c * 8);
            for (int i = 0; i < P; i++) {
                kv1[i] = dv[i];
                ka1[i] = da[i] / ma[i];
                v2[i] = v[i] + h * kv1[i];
                a2[i] = a[i] + h * ka1[i];
                p2[i] = rate_slope(v2[i] - a2[i], q, NULL);
            }
            drift(q, v2, a2, p2, drv, dv, da);
            for (int i = 0; i < P; i++) dv[i] -= 2.0f * kv1[i];
            for (int c = 0; c < n_blk; c++) solve8(lu + c * 64, piv + c * 8, dv + c * 8);
            for (int i = 0; i < P; i++) {
                const float ka2 = (da[i] - 2.0f * ka1[i]) / ma[i];
                v[i] = v[i] + h * (1.5f * kv1[i] + 0.5f * dv[i]);
                a[i] = a[i] + h * (1.5f * ka1[i] + 0.5f * ka2);
                const float pe = rate_slope(v[i] - a[i], q, NULL);
                r[i] = q->e_r * r[i] + q->w0 * p[i] + q->w1 * pe;
                p[i] = pe;
            }
            if (q->noise) {
                const float *kick = q->noise + (((size_t)k * q->n_sub + st) * B + b) * P;
                for (int i = 0; i < P; i++) {
                    v[i] += kick[i];
                    p[i] = rate_slope(v[i] - a[i], q, NULL);
                }
            }
        }
        memcpy(q->out + ((size_t)(k + 1) * B + b) * S, v, 3 * P * sizeof(float));
    }
}

typedef struct {
    const Ros2Problem *q;
    int id, n, failed;
} Ros2Worker;

static void *ros2_work(void *arg) {
    Ros2Worker *w = (Ros2Worker *)arg;
    const Ros2Problem *q = w->q;
    const int P = q->P;
    float *buf = (float *)malloc((14 * (size_t)P + (size_t)(P / 8) * 64) * sizeof(float));
    int *piv = (int *)malloc((size_t)P * sizeof(int));
    if (!buf || !piv) {
        free(buf);
        free(piv);
        w->failed = 1;
        return NULL;
    }
    for (int b = w->id; b < q->B; b += w->n) trial(q, b, buf, piv);
    free(buf);
    free(piv);
    return NULL;
}

/* States of all intervals into out. Returns 0, or 1 if scratch memory could not be had. */
int colenv_ros2_forward(const Ros2Problem *q) {
    int nt = q->n_threads < 1 ? 1 : q->n_threads;
    if (nt > 64) nt = 64;
    if (nt > q->B) nt = q->B;
    Ros2Worker workers[64];
    pthread_t threads[64];
    for (int i = 0; i < nt; i++) workers[i] = (Ros2Worker){q, i, nt, 0};
    int started = 1;
    for (int i = 1; i < nt; i++) {
        if (pthread_create(&threads[i], NULL, ros2_work, &workers[i])) break;
        started++;
    }
    for (int i = started; i < nt; i++) ros2_work(&workers[i]);
    ros2_work(&workers[0]);
    for (int i = 1; i < started; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < nt; i++)
        if (workers[i].failed) return 1;
    return 0;
}
