/* EXPRB2 (exponential Rosenbrock-Euler with the onset restart) for the column network on CPU,
 * and its discrete adjoint: the scheme of colenv.models.column.exprb, float32, one trial at a
 * time per thread.
 *
 * One step of h from y = (v, a, r[, S]) (P populations each) under the drive d:
 *     x = v - a,  p = phi(x),  s = phi'(x)                      (column_rate.h)
 *     F = ( p W + d - v / tau_m [+ (S inv_g) Wslow],  (kappa p - a) / tau_a,  (p - r) / tau_s
 *           [, gamma (1 - S) p - S / tau_g] )
 *     J z, the exact Jacobian of F at y applied to z = (zv, za, zr[, zS]), q = s (zv - za):
 *         ( q W - zv / tau_m [+ (zS inv_g) Wslow],  (kappa q - za) / tau_a,  (q - zr) / tau_s
 *           [, gamma (1 - S) q - (1 / tau_g + gamma p) zS] )
 *     y' = y + h phi1(h J) F, by the truncated Taylor series with scaling (Al-Mohy & Higham
 *     2011, SIAM J Sci Comput 33:488): N >= ||D^-1 J D||_1 (column sums of the balanced
 *     Jacobian, as exprb._Drift.norm_bound: see plan below), (m, s*) minimising
 *     m ceil(h N / theta_m) over m = 1..55 (smallest m of equal cost; theta from the caller,
 *     colenv.models.column.exprb.THETA_SINGLE), c = h / s*, u = 0,
 *     s* substeps of
 *         t_1 = c (J u + F),  t_j = (c / j) J t_{j-1} (j = 2..m),  u += t_1 + ... + t_j
 *     where the series stops early at the first j with ||t_{j-1}||_inf + ||t_j||_inf <=
 *     2^-24 ||u + t_1 + ... + t_j||_inf; y' = y + u.
 * A rollout makes n_sub steps of h per grid interval with the interval's drive; on an interval
 * flagged fine (the onset restart) every step of h is `refine` steps of h / refine. SDE: after
 * each step of h (after its `refine` steps on a fine interval) v += the given increment.
 *
 * The adjoint (colenv_exprb2_backward) is reverse mode of exactly that arithmetic with (m, s*)
 * and the early stops as constants: per trial from the last interval, the interval is
 * recomputed from its stored grid state keeping every step's y_n, p, s, each substep's u_i and
 * series terms t_j (a growing per-thread buffer: memory is one interval's terms), then walked
 * backwards. It needs phi'' (rate_second below; the torch path gets it from autograd's double
 * backward). Weight gradients are accumulated per thread and summed at the end.
 *
 * The weight products run over the dense weights, rows padded to a multiple of 8 floats (the
 * vector width), each row restricted to the 8-float chunks holding its nonzeros (by source for
 * J, by target, a transposed copy, for the adjoint: every product is a sum of row axpys, no
 * horizontal sums); the weight gradients likewise over the rows' spans of the caller's grad
 * patterns (the connectivity masks; everywhere without one). Built
 * together with rk4exp.c by colenv.models.column.native (same flags: fused multiply-adds, no
 * -ffast-math so that NaN and inf propagate as in torch).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "column_rate.h"

#define EXPRB2_M_MAX 55
#define EXPRB2_S_MAX (1 << 20) /* more substeps than this: the state is set to NaN (runaway) */
#define LANE 8

typedef struct {
    int32_t B, P, n_int, n_sub, refine, n_threads, gated;
    const float *y0;       /* [B, nv P], nv = 3 (v, a, r) or 4 gated (v, a, r, S) */
    const float *drive;    /* [n_int, B, P] */
    const float *w_t;      /* [P source, P target], contiguous */
    const float *w_slow_t; /* [P source, P target] (gated) */
    const float *kappa;    /* [P] */
    const float *noise;    /* [n_int, n_sub, B, P] kicks on v, or NULL */
    const uint8_t *fine;   /* [n_int]: 1 where the interval's steps are refined */
    const float *theta;    /* [55] */
    float h, h_fine, da, db, inv_d, max_rate, inv_tau_m, inv_tau_a, inv_tau_s, inv_tau_g, gamma,
        inv_g, tol;
    float *out;            /* forward: [n_int + 1, B, nv P]; row 0 = y0 */
    const float *states;   /* backward: the forward's states [n_int + 1, B, nv P] */
    const float *g_states; /* backward: their loss gradients, same shape */
    float *g_y0;           /* [B, nv P] */
    float *g_drive;        /* [n_int, B, P] or NULL */
    float *g_w;            /* [P, P] or NULL */
    float *g_ws;           /* [P, P] or NULL (gated) */
    float *g_kappa;        /* [P] or NULL */
    const uint8_t *grad_pattern;      /* [P, P] or NULL: W's gradient is needed on these
                                         entries only (formed over each row's span of them;
                                         the caller zeroes the rest); NULL: everywhere */
    const uint8_t *slow_grad_pattern; /* the same for Ws */
    int64_t *counts;       /* NULL or [2]: steps and J applications of the forward, all
                              trials (a diagnostic of the cost) */
} Exprb2Problem;

/* What every trial shares: padded weights, row spans, norm bounds, constants. */
typedef struct {
    const Exprb2Problem *q;
    int P, PP, nv, S; /* S = nv PP: padded state size */
    float *W, *Ws;    /* [P source][PP target] */
    float *WT, *WsT;  /* [P target][PP source]: the adjoint's products */
    int *lo, *hi;     /* [P]: each row's nonzero span in W, in multiples of LANE */
    int *los, *his;   /* the same for Ws */
    int *lot, *hit, *lost, *hist; /* for WT, WsT */
    int *glo, *ghi, *gslo, *gshi; /* where W's, Ws's gradients are formed (grad patterns) */
    float *R;         /* [PP]: sum_tgt |W[i, tgt]| + |kappa_i| / tau_a (plan adds r's balanced term) */
    float *RS;        /* [PP]: sum_tgt |Ws[i, tgt]| inv_g */
    float *kappa;     /* [PP] */
    int saturate;
} Shared;

/* Per-thread scratch. */
typedef struct {
    float *y, *F, *u, *acc, *ta, *tb, *q, *p, *s, *gS, *dS;
    /* backward */
    float *ybar, *ubar, *tbar, *obar, *zbar, *Fbar, *pbar, *sbar, *Sbar, *dbar, *s2, *kbar;
    float *gW, *gWs;
    /* growing stores of one interval */
    float *fs;
    size_t nf, capf;
    int32_t *is;
    size_t ni, capi;
    size_t *offs; /* per step: float offset, int offset */
    size_t noff, capoff;
    size_t *sub; /* step_back: each substep's first stored float */
    size_t capsub;
    int failed;
    int64_t steps, jmvs, bad; /* bad: steps whose plan failed (norm not finite, or a runaway) */
} Work;

static int grow(void **buf, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 1024;
    while (n < need) n *= 2;
    void *b = realloc(*buf, n * elem);
    if (!b) return 1;
    *buf = b;
    *cap = n;
    return 0;
}

/* phi'' = d^2 phi / dx^2 at x (with phi and phi' from column_rate): g(u) = relu(u) + q(w),
 * u = da x - db, w = |u|, q = w / expm1(w); g''(u) = q''(w) = -(q' (w + 2 q) + q) / w with
 * q' = q (1 - w - q) / w, by its series 1/6 - u^2/60 + u^4/1008 - u^6/21600 + u^8/532224
 * below w = 0.5 (the closed form cancels there; the first omitted term is < 4e-8 relative);
 * psi = g / d, psi'' = g'' da^2 / d; under the ceiling phi = M tanh(psi / M):
 * phi'' = (1 - th^2) (psi'' - 2 th psi'^2 / M). */
static inline float rate_second(float x, float da, float db, float inv_d, float max_rate,
                                int saturate) {
    float u = x * da - db;
    float w = u < 0.0f ? -u : u;
    w = w < TINY ? TINY : w;
    w = w > EXP_CAP ? EXP_CAP : w;
    float g2;
    if (w < 0.5f) {
        float u2 = u * u;
        g2 = 1.0f / 6.0f +
             u2 * (-1.0f / 60.0f + u2 * (1.0f / 1008.0f + u2 * (-1.0f / 21600.0f + u2 * (1.0f / 532224.0f))));
    } else {
        float q = w / (exp_f(w) - 1.0f); /* w >= 0.5 > Q_SERIES_BELOW: column_rate's branch */
        float qp = q * (1.0f - w - q) / w;
        g2 = -(qp * (w + 2.0f * q) + q) / w;
    }
    float psi2 = g2 * (da * da * inv_d);
    if (u != u) psi2 = u;
    if (!saturate) return psi2;
    float s0;
    float psi = column_rate(x, da, db, inv_d, 0.0f, 0, &s0);
    float z = psi * (1.0f / max_rate);
    float e2 = exp_f(2.0f * (z < 30.0f ? z : 30.0f));
    float th = z < 0.01f ? z * (1.0f - z * z * (1.0f / 3.0f - z * z * (2.0f / 15.0f)))
                         : 1.0f - 2.0f / (e2 + 1.0f);
    th = z != z ? z : th;
    return (1.0f - th * th) * (psi2 - 2.0f * th * s0 * s0 * (1.0f / max_rate));
}

/* For tests: phi, phi' and phi'' at n points (max_rate <= 0: no ceiling). */
void colenv_exprb2_rate(int32_t n, const float *x, float da, float db, float inv_d,
                        float max_rate, float *p, float *s, float *s2) {
    const int sat = max_rate > 0.0f;
    for (int i = 0; i < n; i++) {
        p[i] = column_rate(x[i], da, db, inv_d, max_rate, sat, &s[i]);
        s2[i] = rate_second(x[i], da, db, inv_d, max_rate, sat);
    }
}

/* o += a * row over the chunks [lo, hi) */
static inline void axpy_span(float *restrict o, float a, const float *restrict row, int lo,
                             int hi) {
    for (int k = lo; k < hi; k += LANE)
        for (int l = 0; l < LANE; l++) o[k + l] += a * row[k + l];
}

/* |x| as bits: order-preserving for non-negative floats (NaN sorts above inf, so a NaN term
 * never passes the early-termination test, as in torch). */
static inline uint32_t abits(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b & 0x7fffffffu;
}

static inline float bits_f(uint32_t b) {
    float x;
    memcpy(&x, &b, sizeof x);
    return x;
}

/* o = J z at the linearisation (s, gS = gamma (1 - S), dS = 1 / tau_g + gamma p). */
static void jmv(const Shared *sh, const float *s, const float *gS, const float *dS,
                const float *restrict z, float *restrict o, float *restrict q) {
    const Exprb2Problem *pr = sh->q;
    const int P = sh->P, PP = sh->PP;
    const float *zv = z, *za = z + PP, *zr = z + 2 * PP;
    float *ov = o, *oa = o + PP, *orr = o + 2 * PP;
    const float itm = pr->inv_tau_m, ita = pr->inv_tau_a, its = pr->inv_tau_s;
    for (int i = 0; i < PP; i++) {
        float qi = s[i] * (zv[i] - za[i]);
        q[i] = qi;
        ov[i] = -zv[i] * itm;
        oa[i] = (sh->kappa[i] * qi - za[i]) * ita;
        orr[i] = (qi - zr[i]) * its;
    }
    for (int j = 0; j < P; j++) axpy_span(ov, q[j], sh->W + (size_t)j * PP, sh->lo[j], sh->hi[j]);
    if (pr->gated) {
        const float *zS = z + 3 * PP;
        float *oS = o + 3 * PP;
        for (int i = 0; i < PP; i++) oS[i] = gS[i] * q[i] - dS[i] * zS[i];
        for (int j = 0; j < P; j++)
            axpy_span(ov, zS[j] * pr->inv_g, sh->Ws + (size_t)j * PP, sh->los[j], sh->his[j]);
    }
}

/* Rates, slopes and F at y under the drive d (d padded into w->q as scratch is not needed:
 * d is read for i < P only). */
static void drift(const Shared *sh, Work *w, const float *y, const float *d) {
    const Exprb2Problem *pr = sh->q;
    const int P = sh->P, PP = sh->PP;
    const float *v = y, *a = y + PP, *r = y + 2 * PP;
    float *p = w->p, *s = w->s, *F = w->F;
    for (int i = 0; i < P; i++)
        p[i] = column_rate(v[i] - a[i], pr->da, pr->db, pr->inv_d, pr->max_rate, sh->saturate,
                           &s[i]);
    for (int i = 0; i < PP; i++) F[i] = (i < P ? d[i] : 0.0f) - v[i] * pr->inv_tau_m;
    for (int j = 0; j < P; j++) axpy_span(F, p[j], sh->W + (size_t)j * PP, sh->lo[j], sh->hi[j]);
    for (int i = 0; i < PP; i++) {
        F[PP + i] = (sh->kappa[i] * p[i] - a[i]) * pr->inv_tau_a;
        F[2 * PP + i] = (p[i] - r[i]) * pr->inv_tau_s;
    }
    if (pr->gated) {
        const float *S = y + 3 * PP;
        for (int j = 0; j < P; j++)
            axpy_span(F, S[j] * pr->inv_g, sh->Ws + (size_t)j * PP, sh->los[j], sh->his[j]);
        for (int i = 0; i < PP; i++) {
            w->gS[i] = pr->gamma * (1.0f - S[i]);
            w->dS[i] = pr->inv_tau_g + pr->gamma * p[i];
            F[3 * PP + i] = i < P ? w->gS[i] * p[i] - S[i] * pr->inv_tau_g : 0.0f;
        }
    }
}

/* (m, s*) for this step; returns 0, or 1 when h N is not finite or needs > EXPRB2_S_MAX
 * substeps. */
static int plan(const Shared *sh, const Work *w, const float *y, float h, int *m_out,
                long *s_out) {
    const Exprb2Problem *pr = sh->q;
    const int P = sh->P, PP = sh->PP;
    /* ||D^-1 J D||_1 with the torch path's balancing (exprb._Drift.norm_bound): r scaled by
     * the largest slope, S by sigma = sqrt(A / B) (A: the largest entry v -> S, B: the largest
     * column sum S -> v) */
    float top = 1.0f, into_max = 0.0f, rs_max = 0.0f;
    for (int i = 0; i < P; i++) {
        float as = fabsf(w->s[i]);
        if (as != as) return 1; /* NaN slope (torch's max propagates NaN too) */
        top = as > top ? as : top;
        if (pr->gated) {
            float into = pr->gamma * fabsf(1.0f - y[3 * PP + i]) * as;
            if (into != into) return 1;
            into_max = into > into_max ? into : into_max;
            rs_max = sh->RS[i] > rs_max ? sh->RS[i] : rs_max;
        }
    }
    float sigma = 1.0f;
    if (pr->gated)
        sigma = sqrtf((into_max > 1e-30f ? into_max : 1e-30f) / (rs_max > 1e-30f ? rs_max : 1e-30f));
    float colmax = 0.0f, colS = 0.0f;
    for (int i = 0; i < P; i++) {
        float as = fabsf(w->s[i]);
        float col = as * sh->R[i] + as / top * pr->inv_tau_s;
        if (pr->gated) col = col + pr->gamma * fabsf(1.0f - y[3 * PP + i]) * as / sigma;
        colmax = col > colmax ? col : colmax;
        if (pr->gated) {
            float cs = sigma * sh->RS[i] + fabsf(pr->inv_tau_g + pr->gamma * w->p[i]);
            if (cs != cs) return 1;
            colS = cs > colS ? cs : colS;
        }
        if (col != col) return 1; /* NaN weights */
    }
    float norm = colmax + (pr->inv_tau_m > pr->inv_tau_a ? pr->inv_tau_m : pr->inv_tau_a);
    norm = norm > pr->inv_tau_s ? norm : pr->inv_tau_s;
    if (pr->gated) norm = norm > colS ? norm : colS;
    double hn = (double)(norm * h);
    if (!(hn <= 3.0e38)) return 1; /* NaN or inf */
    if (hn < 0.0) hn = 0.0;
    int best_m = 1;
    double best_cost = INFINITY, best_s = 1.0;
    for (int m = 1; m <= EXPRB2_M_MAX && m < best_cost; m++) { /* cost >= m: none cheaper */
        double sm = ceil(hn / (double)pr->theta[m - 1]);
        if (sm < 1.0) sm = 1.0;
        double cost = m * sm;
        if (cost < best_cost) best_cost = cost, best_m = m, best_s = sm;
    }
    if (best_s > EXPRB2_S_MAX) return 1;
    *m_out = best_m;
    *s_out = (long)best_s;
    return 0;
}

/* The record of one step in the stores: ints [s*, m_0 .. m_{s*-1}], floats [c, y_n, p, s,
 * then per substep i: (u_i if i > 0), t_1 .. t_{m_i - 1}]. */

/* One step of h on w->y. With rec, the step's record is appended to the stores. Returns 1 on
 * an out-of-memory failure. */
static int step(const Shared *sh, Work *w, const float *d, float h, int rec) {
    const Exprb2Problem *pr = sh->q;
    const int PP = sh->PP, S = sh->S;
    float *y = w->y;
    drift(sh, w, y, d);
    int m;
    long ns;
    if (plan(sh, w, y, h, &m, &ns)) {
        for (int i = 0; i < S; i++) y[i] = NAN;
        w->bad++;
        m = 0, ns = 0; /* recorded as a step without substeps (its adjoint is then NaN-free
                          only in the identity part; the state is NaN anyway) */
        if (!rec) return 0;
    }
    const float c = h / (float)ns;
    size_t fbase = 0, ibase = 0;
    if (rec) {
        if (grow((void **)&w->offs, &w->capoff, w->noff + 2, sizeof(size_t)) ||
            grow((void **)&w->is, &w->capi, w->ni + 1 + (size_t)ns, sizeof(int32_t)) ||
            grow((void **)&w->fs, &w->capf, w->nf + 1 + (size_t)S + 2 * PP, sizeof(float)))
            return 1;
        fbase = w->nf, ibase = w->ni;
        w->offs[w->noff++] = fbase;
        w->offs[w->noff++] = ibase;
        w->is[w->ni++] = (int32_t)ns;
        float *f = w->fs + fbase;
        f[0] = c;
        memcpy(f + 1, y, (size_t)S * sizeof(float));
        memcpy(f + 1 + S, w->p, (size_t)PP * sizeof(float));
        memcpy(f + 1 + S + PP, w->s, (size_t)PP * sizeof(float));
        w->nf += 1 + (size_t)S + 2 * PP;
        if (ns == 0) return 0;
    }
    float *u = w->u, *acc = w->acc;
    memset(u, 0, (size_t)S * sizeof(float));
    const float tol = pr->tol;
    for (long i = 0; i < ns; i++) {
        float *t, *prevt;
        size_t tpos = 0;
        if (rec) {
            if (grow((void **)&w->fs, &w->capf, w->nf + (size_t)(m + 1) * S, sizeof(float)))
                return 1;
            if (i > 0) {
                memcpy(w->fs + w->nf, u, (size_t)S * sizeof(float));
                w->nf += S;
            }
            tpos = w->nf;
            t = w->fs + tpos;
        } else {
            t = w->ta;
        }
        /* t_1 = c (J u + F) */
        if (i == 0) {
            for (int k = 0; k < S; k++) t[k] = c * w->F[k];
        } else {
            jmv(sh, w->s, w->gS, w->dS, u, t, w->q);
            w->jmvs++;
            for (int k = 0; k < S; k++) t[k] = c * (t[k] + w->F[k]);
        }
        uint32_t prev = 0;
        for (int k = 0; k < S; k++) {
            acc[k] = t[k];
            uint32_t b = abits(t[k]);
            prev = b > prev ? b : prev;
        }
        int used = 1;
        for (int j = 2; j <= m; j++) {
            prevt = t;
            t = rec ? prevt + S : (prevt == w->ta ? w->tb : w->ta);
            jmv(sh, w->s, w->gS, w->dS, prevt, t, w->q);
            w->jmvs++;
            const float cj = c / (float)j;
            uint32_t cur = 0, un = 0;
            for (int k = 0; k < S; k++) {
                float tk = cj * t[k];
                t[k] = tk;
                float ak = acc[k] + tk;
                acc[k] = ak;
                uint32_t b = abits(tk), e = abits(u[k] + ak);
                cur = b > cur ? b : cur;
                un = e > un ? e : un;
            }
            used = j;
            if (bits_f(prev) + bits_f(cur) <= tol * bits_f(un)) break;
            prev = cur;
        }
        for (int k = 0; k < S; k++) u[k] += acc[k];
        if (rec) {
            w->is[w->ni++] = used;
            w->nf = tpos + (size_t)(used - 1) * S; /* keep t_1 .. t_{used-1} */
        }
    }
    for (int k = 0; k < S; k++) y[k] += u[k];
    w->steps++;
    return 0;
}

/* zbar = J^T-adjoint of the J application with input z and output adjoint o; accumulates the
 * parameters' adjoints (s, p, S, W, Ws) of the step. */
static void jadj(const Shared *sh, Work *w, const float *s, const float *gS, const float *dS,
                 const float *z, const float *restrict o, float *restrict zbar) {
    const Exprb2Problem *pr = sh->q;
    const int P = sh->P, PP = sh->PP;
    const float *zv = z, *za = z + PP;
    const float *ov = o, *oa = o + PP, *orr = o + 2 * PP;
    float *q = w->q;
    for (int i = 0; i < PP; i++) q[i] = s[i] * (zv[i] - za[i]);
    float *qbar = zbar + 2 * PP; /* scratch until zbar_r is written last */
    for (int i = 0; i < PP; i++)
        qbar[i] = sh->kappa[i] * oa[i] * pr->inv_tau_a + orr[i] * pr->inv_tau_s;
    if (pr->gated) {
        const float *oS = o + 3 * PP;
        for (int i = 0; i < PP; i++) qbar[i] += gS[i] * oS[i];
    }
    /* qbar += W ov (by target: rows of W^T), W's adjoint += q (outer) ov on its rows' spans */
    for (int t = 0; t < P; t++)
        axpy_span(qbar, ov[t], sh->WT + (size_t)t * PP, sh->lot[t], sh->hit[t]);
    if (w->gW)
        for (int j = 0; j < P; j++)
            axpy_span(w->gW + (size_t)j * PP, q[j], ov, sh->glo[j], sh->ghi[j]);
    for (int i = 0; i < PP; i++) {
        w->sbar[i] += qbar[i] * (zv[i] - za[i]);
        zbar[i] = s[i] * qbar[i] - ov[i] * pr->inv_tau_m;
        zbar[PP + i] = -s[i] * qbar[i] - oa[i] * pr->inv_tau_a;
    }
    for (int i = 0; i < PP; i++) zbar[2 * PP + i] = -orr[i] * pr->inv_tau_s;
    if (pr->g_kappa)
        for (int i = 0; i < PP; i++) w->kbar[i] += q[i] * oa[i] * pr->inv_tau_a;
    if (pr->gated) {
        const float *zS = z + 3 * PP, *oS = o + 3 * PP;
        float *zSbar = zbar + 3 * PP;
        memset(zSbar, 0, (size_t)PP * sizeof(float));
        for (int t = 0; t < P; t++)
            axpy_span(zSbar, ov[t], sh->WsT + (size_t)t * PP, sh->lost[t], sh->hist[t]);
        for (int i = 0; i < PP; i++) zSbar[i] = zSbar[i] * pr->inv_g - dS[i] * oS[i];
        for (int i = P; i < PP; i++) zSbar[i] = 0.0f;
        if (w->gWs)
            for (int j = 0; j < P; j++)
                axpy_span(w->gWs + (size_t)j * PP, zS[j] * pr->inv_g, ov, sh->gslo[j],
                          sh->gshi[j]);
        for (int i = 0; i < PP; i++) {
            w->Sbar[i] -= pr->gamma * q[i] * oS[i];
            w->pbar[i] -= pr->gamma * zS[i] * oS[i];
        }
    }
}

/* The adjoint of the step recorded at (fo, io): w->ybar holds dL/dy_{n+1} on entry and
 * dL/dy_n on return; the drive's adjoint is added to w->dbar. */
static int step_back(const Shared *sh, Work *w, size_t fo, size_t io) {
    const Exprb2Problem *pr = sh->q;
    const int P = sh->P, PP = sh->PP, S = sh->S;
    const float *f = w->fs + fo;
    const int32_t *ms = w->is + io + 1;
    const long ns = w->is[io];
    const float c = f[0];
    const float *y = f + 1, *p = f + 1 + S, *s = f + 1 + S + PP;
    float *ybar = w->ybar, *ubar = w->ubar, *tbar = w->tbar, *obar = w->obar, *zbar = w->zbar;
    float *Fbar = w->Fbar;
    memset(Fbar, 0, (size_t)S * sizeof(float));
    memset(w->pbar, 0, (size_t)PP * sizeof(float));
    memset(w->sbar, 0, (size_t)PP * sizeof(float));
    if (pr->gated) {
        memset(w->Sbar, 0, (size_t)PP * sizeof(float));
        for (int i = 0; i < PP; i++) {
            w->gS[i] = pr->gamma * (1.0f - y[3 * PP + i]);
            w->dS[i] = pr->inv_tau_g + pr->gamma * p[i];
        }
    }
    if (ns == 0) { /* a step that failed its plan (NaN state): its gradient is NaN too */
        for (int k = 0; k < S; k++) ybar[k] = NAN;
        return 0;
    }
    memcpy(ubar, ybar, (size_t)S * sizeof(float));
    /* where each substep's stored vectors start (u_i, then t_1 ..): found from the front */
    if (grow((void **)&w->sub, &w->capsub, (size_t)ns, sizeof(size_t))) return 1;
    size_t pos = fo + 1 + (size_t)S + 2 * PP;
    size_t *starts = w->sub;
    for (long i = 0; i < ns; i++) {
        starts[i] = pos;
        pos += (size_t)(i > 0) * S + (size_t)(ms[i] - 1) * S;
    }
    for (long i = ns - 1; i >= 0; i--) {
        const int m = ms[i];
        const float *base = w->fs + starts[i];
        const float *ui = i > 0 ? base : NULL;
        const float *t1 = base + (i > 0 ? S : 0); /* t_j at t1 + (j - 1) S */
        memcpy(tbar, ubar, (size_t)S * sizeof(float));
        for (int j = m; j >= 2; j--) {
            const float cj = c / (float)j;
            for (int k = 0; k < S; k++) obar[k] = cj * tbar[k];
            jadj(sh, w, s, w->gS, w->dS, t1 + (size_t)(j - 2) * S, obar, zbar);
            for (int k = 0; k < S; k++) tbar[k] = ubar[k] + zbar[k];
        }
        for (int k = 0; k < S; k++) {
            obar[k] = c * tbar[k];
            Fbar[k] += obar[k];
        }
        if (ui) {
            jadj(sh, w, s, w->gS, w->dS, ui, obar, zbar);
            for (int k = 0; k < S; k++) ubar[k] += zbar[k];
        }
    }
    /* F's adjoint */
    const float *Fv = Fbar, *Fa = Fbar + PP, *Fr = Fbar + 2 * PP;
    float *pbar = w->pbar;
    for (int i = 0; i < PP; i++) {
        pbar[i] += sh->kappa[i] * Fa[i] * pr->inv_tau_a + Fr[i] * pr->inv_tau_s;
        w->dbar[i] += Fv[i];
    }
    if (pr->g_kappa)
        for (int i = 0; i < PP; i++) w->kbar[i] += p[i] * Fa[i] * pr->inv_tau_a;
    for (int t = 0; t < P; t++)
        axpy_span(pbar, Fv[t], sh->WT + (size_t)t * PP, sh->lot[t], sh->hit[t]);
    if (w->gW)
        for (int j = 0; j < P; j++)
            axpy_span(w->gW + (size_t)j * PP, p[j], Fv, sh->glo[j], sh->ghi[j]);
    float *vbar = ybar, *abar = ybar + PP, *rbar = ybar + 2 * PP;
    if (pr->gated) {
        const float *FS = Fbar + 3 * PP, *Sy = y + 3 * PP;
        float *Sbar = w->Sbar;
        for (int i = 0; i < PP; i++) {
            pbar[i] += w->gS[i] * FS[i];
            Sbar[i] += -pr->gamma * p[i] * FS[i] - FS[i] * pr->inv_tau_g;
        }
        float *tmp = w->q; /* free here */
        memset(tmp, 0, (size_t)PP * sizeof(float));
        for (int t = 0; t < P; t++)
            axpy_span(tmp, Fv[t], sh->WsT + (size_t)t * PP, sh->lost[t], sh->hist[t]);
        for (int i = 0; i < PP; i++) Sbar[i] += tmp[i] * pr->inv_g;
        if (w->gWs)
            for (int j = 0; j < P; j++)
                axpy_span(w->gWs + (size_t)j * PP, Sy[j] * pr->inv_g, Fv, sh->gslo[j],
                          sh->gshi[j]);
        for (int i = 0; i < P; i++) ybar[3 * PP + i] += Sbar[i];
    }
    for (int i = 0; i < P; i++) {
        const float s2 = rate_second(y[i] - y[PP + i], pr->da, pr->db, pr->inv_d, pr->max_rate,
                                     sh->saturate);
        const float xbar = pbar[i] * s[i] + w->sbar[i] * s2;
        vbar[i] += xbar - Fv[i] * pr->inv_tau_m;
        abar[i] += -xbar - Fa[i] * pr->inv_tau_a;
        rbar[i] += -Fr[i] * pr->inv_tau_s;
    }
    return 0;
}

static void load(const Shared *sh, float *y, const float *src) {
    const int P = sh->P, PP = sh->PP;
    memset(y, 0, (size_t)sh->S * sizeof(float));
    for (int v = 0; v < sh->nv; v++) memcpy(y + v * PP, src + v * P, (size_t)P * sizeof(float));
}

static void save(const Shared *sh, float *dst, const float *y) {
    const int P = sh->P, PP = sh->PP;
    for (int v = 0; v < sh->nv; v++) memcpy(dst + v * P, y + v * PP, (size_t)P * sizeof(float));
}

static void add_unpadded(const Shared *sh, float *y, const float *src) {
    const int P = sh->P, PP = sh->PP;
    for (int v = 0; v < sh->nv; v++)
        for (int i = 0; i < P; i++) y[v * PP + i] += src[v * P + i];
}

/* The steps of grid interval k from w->y (recorded with rec). */
static int interval(const Shared *sh, Work *w, int b, int k, int rec) {
    const Exprb2Problem *pr = sh->q;
    const int P = sh->P, B = pr->B;
    const float *d = pr->drive + ((size_t)k * B + b) * P;
    const int fine = pr->fine && pr->fine[k];
    const int nr = fine ? pr->refine : 1;
    const float h = fine ? pr->h_fine : pr->h;
    for (int i = 0; i < pr->n_sub; i++) {
        for (int r = 0; r < nr; r++)
            if (step(sh, w, d, h, rec)) return 1;
        if (pr->noise) {
            const float *kick = pr->noise + (((size_t)k * pr->n_sub + i) * B + b) * P;
            for (int j = 0; j < P; j++) w->y[j] += kick[j];
        }
    }
    return 0;
}

static int trial_forward(const Shared *sh, Work *w, int b) {
    const Exprb2Problem *pr = sh->q;
    const size_t row = (size_t)sh->nv * sh->P, B = pr->B;
    load(sh, w->y, pr->y0 + b * row);
    memcpy(pr->out + b * row, pr->y0 + b * row, row * sizeof(float));
    for (int k = 0; k < pr->n_int; k++) {
        if (interval(sh, w, b, k, 0)) return 1;
        save(sh, pr->out + ((size_t)(k + 1) * B + b) * row, w->y);
    }
    return 0;
}

static int trial_backward(const Shared *sh, Work *w, int b) {
    const Exprb2Problem *pr = sh->q;
    const int P = sh->P, PP = sh->PP;
    const size_t row = (size_t)sh->nv * P, B = pr->B;
    memset(w->ybar, 0, (size_t)sh->S * sizeof(float));
    for (int k = pr->n_int - 1; k >= 0; k--) {
        add_unpadded(sh, w->ybar, pr->g_states + ((size_t)(k + 1) * B + b) * row);
        load(sh, w->y, pr->states + ((size_t)k * B + b) * row);
        w->nf = w->ni = w->noff = 0;
        if (interval(sh, w, b, k, 1)) return 1;
        memset(w->dbar, 0, (size_t)PP * sizeof(float));
        for (size_t st = w->noff / 2; st-- > 0;)
            if (step_back(sh, w, w->offs[2 * st], w->offs[2 * st + 1])) return 1;
        if (pr->g_drive)
            memcpy(pr->g_drive + ((size_t)k * B + b) * P, w->dbar, (size_t)P * sizeof(float));
    }
    add_unpadded(sh, w->ybar, pr->g_states + b * row);
    save(sh, pr->g_y0 + b * row, w->ybar);
    return 0;
}

typedef struct {
    const Shared *sh;
    int id, n, backward, failed;
    Work w;
} Exprb2Worker;

static void work_free(Work *w) {
    free(w->y);
    free(w->gW);
    free(w->gWs);
    free(w->fs);
    free(w->is);
    free(w->offs);
    free(w->sub);
}

static int work_init(const Shared *sh, Work *w, int backward) {
    memset(w, 0, sizeof *w);
    const size_t S = sh->S, PP = sh->PP;
    const size_t n = 12 * S + 11 * PP;
    float *m = (float *)calloc(n, sizeof(float));
    if (!m) return 1;
    float **vecs[] = {&w->y, &w->F, &w->u, &w->acc, &w->ta, &w->tb,
                      &w->ybar, &w->ubar, &w->tbar, &w->obar, &w->zbar, &w->Fbar};
    for (size_t i = 0; i < 12; i++) *vecs[i] = m + i * S;
    float **small[] = {&w->q, &w->p, &w->s, &w->gS, &w->dS, &w->pbar,
                       &w->sbar, &w->Sbar, &w->dbar, &w->s2, &w->kbar};
    for (size_t i = 0; i < 11; i++) *small[i] = m + 12 * S + i * PP;
    const Exprb2Problem *pr = sh->q;
    if (backward && pr->g_w && !(w->gW = (float *)calloc((size_t)sh->P * PP, sizeof(float))))
        return 1;
    if (backward && pr->gated && pr->g_ws &&
        !(w->gWs = (float *)calloc((size_t)sh->P * PP, sizeof(float))))
        return 1;
    return 0;
}

static void *exprb2_work(void *arg) {
    Exprb2Worker *wk = (Exprb2Worker *)arg;
    const Shared *sh = wk->sh;
    for (int b = wk->id; b < sh->q->B && !wk->failed; b += wk->n)
        wk->failed = wk->backward ? trial_backward(sh, &wk->w, b) : trial_forward(sh, &wk->w, b);
    return NULL;
}

static void shared_free(Shared *sh) {
    free(sh->W);
    free(sh->lo);
}

/* Each row's span [lo, hi) of nonzeros of the P x PP matrix W (or of pattern, if given: a
 * P x P byte mask), widened to multiples of LANE. */
static void spans(const float *W, const uint8_t *pattern, int P, int PP, int *lo, int *hi) {
    for (int j = 0; j < P; j++) {
        int first = -1, last = -1;
        for (int i = 0; i < P; i++)
            if (pattern ? pattern[(size_t)j * P + i] != 0 : W[(size_t)j * PP + i] != 0.0f) {
                if (first < 0) first = i;
                last = i;
            }
        lo[j] = first < 0 ? 0 : first / LANE * LANE;
        hi[j] = first < 0 ? 0 : (last / LANE + 1) * LANE;
    }
}

static void transpose(const float *W, int P, int PP, float *WT) {
    for (int j = 0; j < P; j++)
        for (int i = 0; i < P; i++) WT[(size_t)i * PP + j] = W[(size_t)j * PP + i];
}

static int shared_init(Shared *sh, const Exprb2Problem *pr) {
    memset(sh, 0, sizeof *sh);
    const int P = pr->P, PP = (P + LANE - 1) / LANE * LANE;
    sh->q = pr, sh->P = P, sh->PP = PP, sh->nv = pr->gated ? 4 : 3, sh->S = sh->nv * PP;
    sh->saturate = pr->max_rate > 0.0f;
    const size_t nW = (size_t)P * PP;
    float *m = (float *)calloc(4 * nW + 3 * (size_t)PP, sizeof(float));
    int *ints = (int *)calloc(12 * (size_t)P, sizeof(int));
    if (!m || !ints) {
        free(m);
        free(ints);
        return 1;
    }
    sh->W = m, sh->Ws = m + nW, sh->WT = m + 2 * nW, sh->WsT = m + 3 * nW;
    sh->R = m + 4 * nW, sh->RS = sh->R + PP, sh->kappa = sh->RS + PP;
    int **idx[] = {&sh->lo, &sh->hi, &sh->los, &sh->his, &sh->lot, &sh->hit,
                   &sh->lost, &sh->hist, &sh->glo, &sh->ghi, &sh->gslo, &sh->gshi};
    for (int i = 0; i < 12; i++) *idx[i] = ints + i * P;
    for (int j = 0; j < P; j++) {
        memcpy(sh->W + (size_t)j * PP, pr->w_t + (size_t)j * P, (size_t)P * sizeof(float));
        if (pr->gated)
            memcpy(sh->Ws + (size_t)j * PP, pr->w_slow_t + (size_t)j * P, (size_t)P * sizeof(float));
        sh->kappa[j] = pr->kappa[j];
    }
    transpose(sh->W, P, PP, sh->WT);
    transpose(sh->Ws, P, PP, sh->WsT);
    spans(sh->W, NULL, P, PP, sh->lo, sh->hi);
    spans(sh->Ws, NULL, P, PP, sh->los, sh->his);
    spans(sh->WT, NULL, P, PP, sh->lot, sh->hit);
    spans(sh->WsT, NULL, P, PP, sh->lost, sh->hist);
    for (int j = 0; j < P; j++) { /* gradients: everywhere unless a pattern says where */
        sh->glo[j] = sh->gslo[j] = 0;
        sh->ghi[j] = sh->gshi[j] = PP;
    }
    if (pr->grad_pattern) spans(NULL, pr->grad_pattern, P, PP, sh->glo, sh->ghi);
    if (pr->slow_grad_pattern) spans(NULL, pr->slow_grad_pattern, P, PP, sh->gslo, sh->gshi);
    for (int j = 0; j < P; j++) {
        float sw = 0.0f, ss = 0.0f;
        for (int i = 0; i < P; i++) {
            sw += fabsf(sh->W[(size_t)j * PP + i]);
            ss += fabsf(sh->Ws[(size_t)j * PP + i]);
        }
        sh->R[j] = sw + fabsf(sh->kappa[j]) * pr->inv_tau_a;
        sh->RS[j] = ss * pr->inv_g;
    }
    return 0;
}

static int run(const Exprb2Problem *pr, int backward) {
    Shared sh;
    if (shared_init(&sh, pr)) return 1;
    int nt = pr->n_threads < 1 ? 1 : pr->n_threads;
    if (nt > 64) nt = 64;
    if (nt > pr->B) nt = pr->B;
    if (nt < 1) nt = 1;
    Exprb2Worker *workers = (Exprb2Worker *)calloc((size_t)nt, sizeof(Exprb2Worker));
    pthread_t threads[64];
    int failed = !workers;
    for (int i = 0; i < nt && !failed; i++) {
        workers[i].sh = &sh, workers[i].id = i, workers[i].n = nt;
        workers[i].backward = backward;
        if (work_init(&sh, &workers[i].w, backward)) failed = 1;
    }
    if (!failed) {
        int started = 1;
        for (int i = 1; i < nt; i++) {
            if (pthread_create(&threads[i], NULL, exprb2_work, &workers[i])) break;
            started++;
        }
        for (int i = started; i < nt; i++) exprb2_work(&workers[i]);
        exprb2_work(&workers[0]);
        for (int i = 1; i < started; i++) pthread_join(threads[i], NULL);
        for (int i = 0; i < nt; i++) failed |= workers[i].failed;
    }
    if (!failed && backward) {
        const int P = sh.P, PP = sh.PP;
        float *outs[2] = {pr->g_w, pr->gated ? pr->g_ws : NULL};
        for (int g = 0; g < 2; g++) {
            if (!outs[g]) continue;
            memset(outs[g], 0, (size_t)P * P * sizeof(float));
            for (int i = 0; i < nt; i++) {
                const float *acc = g ? workers[i].w.gWs : workers[i].w.gW;
                for (int j = 0; j < P; j++)
                    for (int t = 0; t < P; t++) outs[g][(size_t)j * P + t] += acc[(size_t)j * PP + t];
            }
        }
    }
    if (!failed && backward && pr->g_kappa)
        for (int j = 0; j < sh.P; j++) {
            float acc = 0.0f;
            for (int i = 0; i < nt; i++) acc += workers[i].w.kbar[j];
            pr->g_kappa[j] = acc;
        }
    if (!failed && pr->counts && !backward) {
        pr->counts[0] = pr->counts[1] = 0;
        for (int i = 0; i < nt; i++) {
            pr->counts[0] += workers[i].w.steps;
            pr->counts[1] += workers[i].w.jmvs;
        }
    }
    if (!failed)
        for (int i = 0; i < nt; i++)
            if (workers[i].w.bad) failed = 2;
    if (workers)
        for (int i = 0; i < nt; i++) work_free(&workers[i].w);
    free(workers);
    shared_free(&sh);
    return failed;
}

/* States of every grid point into out. Returns 0; 1 if scratch memory could not be had; 2 if a
 * step's norm bound was not finite or needed more than EXPRB2_S_MAX substeps (that trial's
 * states are NaN from there on). */
int colenv_exprb2_forward(const Exprb2Problem *pr) { return run(pr, 0); }

/* The adjoint: g_y0, g_drive, g_w, g_ws, g_kappa from g_states and the forward's states
 * (kappa enters F and J; the norm bound's |kappa| only picks (m, s*)). Returns as
 * colenv_exprb2_forward. */
int colenv_exprb2_backward(const Exprb2Problem *pr) { return run(pr, 1); }
