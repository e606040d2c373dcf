/* One tile of trials, BT lanes held in the vector type VT (a GCC/Clang vector extension, or
 * plain float for one lane): included by rk4exp.c once per tile width with VT, BT and SUFFIX
 * defined. Arrays are [P] of VT (population-major, the tile's trials in the lanes). */
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

#if BT > 1
/* One round of an in-register transpose: swaps the off-diagonal k x k blocks of every 2k x 2k
 * block of BT vectors (one two-input shuffle per output vector; k a constant after inlining). */
static inline __attribute__((always_inline)) void CAT(transpose_round_, SUFFIX)(VT *r,
                                                                               const int k) {
    typedef int32_t IT __attribute__((vector_size(sizeof(VT))));
    IT lo, hi;
#pragma GCC unroll 16
    for (int j = 0; j < BT; j++) {
        lo[j] = (j & k) ? BT + j - k : j;
        hi[j] = (j & k) ? BT + j : j + k;
    }
#pragma GCC unroll 16
    for (int i = 0; i < BT; i++) {
        if (i & k) continue;
        const VT x = r[i], y = r[i + k];
        r[i] = __builtin_shuffle(x, y, lo);
        r[i + k] = __builtin_shuffle(x, y, hi);
    }
}

/* r[i][j] -> r[j][i] for BT vectors of BT lanes. */
static inline __attribute__((always_inline)) void CAT(transpose_, SUFFIX)(VT *r) {
#if BT == 16
    CAT(transpose_round_, SUFFIX)(r, 8);
#endif
    CAT(transpose_round_, SUFFIX)(r, 4);
    CAT(transpose_round_, SUFFIX)(r, 2);
    CAT(transpose_round_, SUFFIX)(r, 1);
}
#endif

/* Lanes to rows: dst[b * stride + i] = lanes[i * BT + b] for i < n, b < nb. */
static inline void CAT(to_rows_, SUFFIX)(const float *restrict lanes, int n, float *restrict dst,
                                         size_t stride, int nb) {
    int i0 = 0;
#if BT > 1
    for (; i0 + BT <= n; i0 += BT) {
        VT r[BT];
        for (int i = 0; i < BT; i++) r[i] = ((const VT *)lanes)[i0 + i];
        CAT(transpose_, SUFFIX)(r);
        for (int b = 0; b < nb; b++) memcpy(dst + b * stride + i0, &r[b], sizeof(VT));
    }
#endif
    for (int b = 0; b < nb; b++)
        for (int i = i0; i < n; i++) dst[b * stride + i] = lanes[i * BT + b];
}

/* Rows to lanes: lanes[i * BT + b] = src[b * stride + i] (add: +=) for i < n; lanes b >= nb
 * take row 0 (pad_zero: 0). */
static inline void CAT(from_rows_, SUFFIX)(const float *restrict src, size_t stride, int nb,
                                           int n, float *restrict lanes, int add, int pad_zero) {
    int i0 = 0;
#if BT > 1
    for (; i0 + BT <= n; i0 += BT) {
        VT r[BT];
        for (int b = 0; b < BT; b++) {
            if (b < nb || !pad_zero)
                memcpy(&r[b], src + (b < nb ? b : 0) * stride + i0, sizeof(VT));
            else
                r[b] = r[0] * 0.0f;
        }
        CAT(transpose_, SUFFIX)(r);
        VT *l = (VT *)lanes + i0;
        for (int i = 0; i < BT; i++) l[i] = add ? l[i] + r[i] : r[i];
    }
#endif
    for (int b = 0; b < BT; b++)
        for (int i = i0; i < n; i++) {
            const float x = b < nb ? src[b * stride + i] : pad_zero ? 0.0f : src[i];
            lanes[i * BT + b] = add ? lanes[i * BT + b] + x : x;
        }
}

/* Stage s (0..3, a constant after inlining) of one RK4 step: rates of the stage input (cv, ca),
 * the slopes dv = W phi - (v / tau_m - drive) and da = kappa / tau_a phi - a / tau_a, their
 * running RK4 sums, and the next stage's input (nv, na), or for s = 3 the step's result (v, a
 * and the r filter). Stage s reads one stage-input buffer and writes the other. With gated (a
 * constant: the ungated code has none of it) also S: dv += (cS inv_g) @ w_slow_t and
 * dS = gamma (1 - cS) phi - cS / tau_S, RK4 like a; with store, cS goes to sgb. */
static inline __attribute__((always_inline)) void CAT(stage_, SUFFIX)(
    const Problem *p, float *const *arr, const int s, const int store, float *psb, float *ssb,
    size_t N, const int gated, float *sgb) {
    const Problem c = *p; /* constants in locals: the loops below store through pointers */
    const int P = c.P;
    VT *restrict v = (VT *)arr[V], *restrict a = (VT *)arr[A], *restrict r = (VT *)arr[R];
    const float *restrict cvf = s == 0 ? arr[V] : s == 2 ? arr[X2V] : arr[X1V];
    const float *restrict caf = s == 0 ? arr[A] : s == 2 ? arr[X2A] : arr[X1A];
    const VT *restrict cv = (const VT *)cvf, *restrict ca = (const VT *)caf;
    VT *restrict nv = (VT *)(s == 1 ? arr[X2V] : arr[X1V]);
    VT *restrict na = (VT *)(s == 1 ? arr[X2A] : arr[X1A]);
    float *restrict phif = arr[PHI];
    const VT *restrict phi = (const VT *)phif, *restrict drv = (const VT *)arr[DRV];
    VT *restrict kv1 = (VT *)arr[KV1], *restrict kv23 = (VT *)arr[KV23];
    VT *restrict ka1 = (VT *)arr[KA1], *restrict ka23 = (VT *)arr[KA23];
    VT *restrict pr1 = (VT *)arr[PR1], *restrict pr23 = (VT *)arr[PR23];
    const float inv_m = c.inv_tau_m, inv_a = c.inv_tau_a;
    const float c_next = s == 2 ? c.h : 0.5f * c.h, h6 = c.h / 6.0f;
    /* gated only (NULL otherwise, never dereferenced) */
    VT *restrict sg = gated ? (VT *)arr[SG] : NULL;
    const VT *restrict cs =
        gated ? (const VT *)(s == 0 ? arr[SG] : s == 2 ? arr[X2S] : arr[X1S]) : NULL;
    VT *restrict ns = gated ? (VT *)(s == 1 ? arr[X2S] : arr[X1S]) : NULL;
    VT *restrict ks1 = gated ? (VT *)arr[KS1] : NULL, *restrict ks23 = gated ? (VT *)arr[KS23] : NULL;
    VT *restrict srd = gated ? (VT *)arr[SRD] : NULL;

    if (store) { /* rates and slopes, into the [P][N] stores too (psb, ssb: this stage's slot) */
        float *restrict slf = arr[SLP];
        if (c.max_rate > 0.0f) {
            for (int j = 0; j < P * BT; j++) phif[j] = rate_slope(cvf[j] - caf[j], &c, 1, &slf[j]);
        } else {
            for (int j = 0; j < P * BT; j++) phif[j] = rate_slope(cvf[j] - caf[j], &c, 0, &slf[j]);
        }
        for (int j = 0; j < P; j++) {
            *(VT *)(psb + j * N) = phi[j];
            *(VT *)(ssb + j * N) = ((const VT *)slf)[j];
        }
    } else if (c.max_rate > 0.0f) {
        for (int j = 0; j < P * BT; j++) phif[j] = rate(cvf[j] - caf[j], &c, 1);
    } else {
        for (int j = 0; j < P * BT; j++) phif[j] = rate(cvf[j] - caf[j], &c, 0);
    }
    if (gated) { /* the slow product's input S inv_g; the stage's S into its store */
        for (int j = 0; j < P; j++) srd[j] = cs[j] * c.inv_g;
        if (store)
            for (int j = 0; j < P; j++) *(VT *)(sgb + j * N) = cs[j];
    }
    /* Target t's update from its input acc = (W phi)[t]: the slopes, their RK4 sums, the next
     * stage input or (s = 3) the step. */
#define UPDATE(t, acc)                                                                          \
    do {                                                                                        \
        const VT dv = (acc) - (cv[t] * inv_m - drv[t]);                                         \
        const VT dA = (c.kappa[t] * inv_a) * phi[t] - ca[t] * inv_a;                            \
        if (s == 0) {                                                                           \
            kv1[t] = dv;                                                                        \
            ka1[t] = dA;                                                                        \
            pr1[t] = phi[t];                                                                    \
        } else if (s == 1) {                                                                    \
            kv23[t] = dv;                                                                       \
            ka23[t] = dA;                                                                       \
            pr23[t] = phi[t];                                                                   \
        } else if (s == 2) {                                                                    \
            kv23[t] += dv;                                                                      \
            ka23[t] += dA;                                                                      \
            pr23[t] += phi[t];                                                                  \
        }                                                                                       \
        if (s < 3) {                                                                            \
            nv[t] = v[t] + c_next * dv;                                                         \
            na[t] = a[t] + c_next * dA;                                                         \
        } else {                                                                                \
            v[t] = v[t] + h6 * (kv1[t] + 2.0f * kv23[t] + dv);                                  \
            a[t] = a[t] + h6 * (ka1[t] + 2.0f * ka23[t] + dA);                                  \
            r[t] = c.e_r * r[t] + c.w0 * pr1[t] + c.wm * pr23[t] + c.w1 * phi[t];               \
        }                                                                                       \
    } while (0)
    /* gated: the slow product (W_slow^T (S inv_g))[t] into acc, then S's slope and update */
#define SLOW(t, acc)                                                                            \
    do {                                                                                        \
        for (int e = c.row_ptr_g[t]; e < c.row_ptr_g[t + 1]; e++)                               \
            acc += c.val_g[e] * srd[c.col_g[e]];                                                \
    } while (0)
#define SUPDATE(t)                                                                              \
    do {                                                                                        \
        const VT dS = (c.gamma * phi[t]) * (1.0f - cs[t]) - cs[t] * c.inv_tau_g;                \
        if (s == 0) {                                                                           \
            ks1[t] = dS;                                                                        \
        } else if (s == 1) {                                                                    \
            ks23[t] = dS;                                                                       \
        } else if (s == 2) {                                                                    \
            ks23[t] += dS;                                                                      \
        }                                                                                       \
        if (s < 3) {                                                                            \
            ns[t] = sg[t] + c_next * dS;                                                        \
        } else {                                                                                \
            sg[t] = sg[t] + h6 * (ks1[t] + 2.0f * ks23[t] + dS);                                \
        }                                                                                       \
    } while (0)
    if (c.n_blk > 0) { /* per column: its dense 8 x 8 block (eight independent sums), the rest */
        for (int bk = 0; bk < c.n_blk; bk++) {
            const VT *ph = phi + 8 * bk;
            const float *wb = c.blk + 64 * bk;
            VT x[8];
            for (int i = 0; i < 8; i++) x[i] = ph[i];
            for (int tt = 0; tt < 8; tt++) {
                const int t = 8 * bk + tt;
                VT acc = wb[8 * tt] * x[0];
                for (int i = 1; i < 8; i++) acc += wb[8 * tt + i] * x[i];
                for (int e = c.row_ptr[t]; e < c.row_ptr[t + 1]; e++)
                    acc += c.val[e] * phi[c.col[e]];
                if (gated) SLOW(t, acc);
                UPDATE(t, acc);
                if (gated) SUPDATE(t);
            }
        }
    } else {
        for (int t = 0; t < P; t++) {
            VT acc = phi[0] * 0.0f;
            for (int e = c.row_ptr[t]; e < c.row_ptr[t + 1]; e++) acc += c.val[e] * phi[c.col[e]];
            if (gated) SLOW(t, acc);
            UPDATE(t, acc);
            if (gated) SUPDATE(t);
        }
    }
#undef UPDATE
#undef SLOW
#undef SUPDATE
}

/* Trials [b0, b0 + nb) of tile t_idx (nb <= BT; lanes >= nb repeat trial b0 and are not
 * written to out; the stores hold them). gated: a constant (see tile_ and tile_gated_). */
static inline __attribute__((always_inline)) void CAT(tile_body_, SUFFIX)(
    const Problem *p, int t_idx, int b0, int nb, float *buf, const int gated) {
    const int P = p->P, B = p->B, S = (gated ? 4 : 3) * P;
    float *arr[N_ARR_G];
    for (int i = 0; i < N_ARR_G; i++) arr[i] = i < (gated ? N_ARR_G : N_ARR) ? buf + (size_t)i * P * BT : NULL;
    float *v = arr[V], *a = arr[A], *r = arr[R], *drv = arr[DRV], *sgf = arr[SG];
    const size_t n_stages = (size_t)p->n_int * p->n_sub * 4;
    const size_t N = n_stages * BT; /* a store row: one population of this tile */

    for (int b = 0; b < BT; b++) {
        const float *y = p->y0 + (size_t)(b0 + (b < nb ? b : 0)) * S;
        for (int pp = 0; pp < P; pp++) {
            v[pp * BT + b] = y[pp];
            a[pp * BT + b] = y[P + pp];
            r[pp * BT + b] = y[2 * P + pp];
            if (gated) sgf[pp * BT + b] = y[3 * P + pp];
        }
    }
    for (int b = 0; b < nb; b++)
        memcpy(p->out + (size_t)(b0 + b) * S, p->y0 + (size_t)(b0 + b) * S, S * sizeof(float));

    for (int k = 0; k < p->n_int; k++) {
        const float *d = p->drive + (size_t)k * B * P;
        CAT(from_rows_, SUFFIX)(d + (size_t)b0 * P, P, nb, P, drv, 0, 0);
        for (int i = 0; i < p->n_sub; i++) {
            if (p->ps) {
                const size_t at = (size_t)t_idx * P * N + ((size_t)k * p->n_sub + i) * 4 * BT;
                float *psb = p->ps + at, *ssb = p->ss + at;
                float *sgb = gated ? p->sgs + at : psb; /* ungated: never written */
                CAT(stage_, SUFFIX)(p, arr, 0, 1, psb, ssb, N, gated, sgb);
                CAT(stage_, SUFFIX)(p, arr, 1, 1, psb + BT, ssb + BT, N, gated, sgb + BT);
                CAT(stage_, SUFFIX)(p, arr, 2, 1, psb + 2 * BT, ssb + 2 * BT, N, gated, sgb + 2 * BT);
                CAT(stage_, SUFFIX)(p, arr, 3, 1, psb + 3 * BT, ssb + 3 * BT, N, gated, sgb + 3 * BT);
            } else {
                CAT(stage_, SUFFIX)(p, arr, 0, 0, NULL, NULL, 0, gated, NULL);
                CAT(stage_, SUFFIX)(p, arr, 1, 0, NULL, NULL, 0, gated, NULL);
                CAT(stage_, SUFFIX)(p, arr, 2, 0, NULL, NULL, 0, gated, NULL);
                CAT(stage_, SUFFIX)(p, arr, 3, 0, NULL, NULL, 0, gated, NULL);
            }
            if (p->noise) /* the step's noise increments on v (padded lanes: none) */
                CAT(from_rows_, SUFFIX)(p->noise + (((size_t)k * p->n_sub + i) * B + b0) * P, P,
                                        nb, P, v, 1, 1);
        }
        /* v, a, r are consecutive [P][BT] arrays: one [3P][BT] block to the trials' rows */
        float *dst = p->out + (size_t)(k + 1) * B * S + (size_t)b0 * S;
        CAT(to_rows_, SUFFIX)(v, 3 * P, dst, S, nb);
        if (gated) CAT(to_rows_, SUFFIX)(sgf, P, dst + 3 * P, S, nb);
    }
}

static void CAT(tile_, SUFFIX)(const Problem *p, int t_idx, int b0, int nb, float *buf) {
    CAT(tile_body_, SUFFIX)(p, t_idx, b0, nb, buf, 0);
}

static void CAT(tile_gated_, SUFFIX)(const Problem *p, int t_idx, int b0, int nb, float *buf) {
    CAT(tile_body_, SUFFIX)(p, t_idx, b0, nb, buf, 1);
}

/* Backward stage q of a step: gp = W^T gdv + wr lr + kappa / tau_a gda (W^T through the CSR
 * by source), gu = s gp, then the state gradients gv = gu - gdv / tau_m, ga = -gu - gda / tau_a
 * (colenv.models.column.integrators._make_rk4exp_chunk_backward's stage()). sb: this stage's slopes in the store.
 * With gated (a constant) also S: gp += gamma (1 - cS) gdS, and S's gradient
 * gs = inv_g (W_slow^T gdv) - gdS (1 / tau_S + gamma phi), from the stage's phi (pb) and cS (gb)
 * in the stores. */
static inline __attribute__((always_inline)) void CAT(bstage_, SUFFIX)(
    const Problem *c, const VT *restrict gdv, const VT *restrict gda, const VT *restrict lr,
    const float wr, const float *restrict sb, size_t N, VT *restrict gv, VT *restrict ga,
    const int gated, const VT *restrict gds, const float *restrict pb, const float *restrict gb,
    VT *restrict gs) {
    const int P = c->P;
    const float inv_m = c->inv_tau_m, inv_a = c->inv_tau_a;
    /* The rest of source j's gradient from its input acc = (W^T gdv)[j]. */
#define BUPDATE(j, acc)                                                                         \
    do {                                                                                        \
        const VT gp = (acc) - (-(wr * lr[j]) - (c->kappa[j] * inv_a) * gda[j]);                \
        const VT gu = *(const VT *)(sb + (j) * N) * gp;                                         \
        gv[j] = gu - gdv[j] * inv_m;                                                            \
        ga[j] = -gu - gda[j] * inv_a;                                                           \
    } while (0)
#define BUPDATE_G(j, acc)                                                                       \
    do {                                                                                        \
        const VT cS = *(const VT *)(gb + (j) * N), ph = *(const VT *)(pb + (j) * N);            \
        const VT gp = (acc) - (-(wr * lr[j]) - (c->kappa[j] * inv_a) * gda[j] -                \
                               (c->gamma * (1.0f - cS)) * gds[j]);                              \
        const VT gu = *(const VT *)(sb + (j) * N) * gp;                                         \
        gv[j] = gu - gdv[j] * inv_m;                                                            \
        ga[j] = -gu - gda[j] * inv_a;                                                           \
        VT accg = gdv[0] * 0.0f;                                                                \
        for (int e = c->row_ptr_gs[j]; e < c->row_ptr_gs[j + 1]; e++)                           \
            accg += c->val_gs[e] * gdv[c->col_gs[e]];                                           \
        gs[j] = c->inv_g * accg - gds[j] * (c->inv_tau_g + c->gamma * ph);                      \
    } while (0)
    if (c->n_blk > 0) { /* per column: its dense 8 x 8 block of W^T, then the rest */
        for (int bk = 0; bk < c->n_blk; bk++) {
            const float *wb = c->blk_s + 64 * bk;
            VT x[8];
            for (int i = 0; i < 8; i++) x[i] = gdv[8 * bk + i];
            for (int jj = 0; jj < 8; jj++) {
                const int j = 8 * bk + jj;
                VT acc = wb[8 * jj] * x[0];
                for (int i = 1; i < 8; i++) acc += wb[8 * jj + i] * x[i];
                for (int e = c->row_ptr_s[j]; e < c->row_ptr_s[j + 1]; e++)
                    acc += c->val_s[e] * gdv[c->col_s[e]];
                if (gated)
                    BUPDATE_G(j, acc);
                else
                    BUPDATE(j, acc);
            }
        }
    } else {
        for (int j = 0; j < P; j++) {
            VT acc = gdv[0] * 0.0f;
            for (int e = c->row_ptr_s[j]; e < c->row_ptr_s[j + 1]; e++)
                acc += c->val_s[e] * gdv[c->col_s[e]];
            if (gated)
                BUPDATE_G(j, acc);
            else
                BUPDATE(j, acc);
        }
    }
#undef BUPDATE
#undef BUPDATE_G
}

/* The discrete adjoint of run_tile over this call's intervals, for trials [b0, b0 + nb) of tile
 * t_idx: reads ss (from a forward with stores over the same intervals), g_states and adj, writes
 * gdvs (layout of ps), g_drive and adj (colenv.models.column.integrators._make_rk4exp_chunk_backward).
 * gated (a constant) also reads ps and sgs and carries S's adjoint ls. */
static inline __attribute__((always_inline)) void CAT(btile_body_, SUFFIX)(
    const Problem *p, int t_idx, int b0, int nb, float *buf, const int gated) {
    const Problem c = *p;
    const int P = c.P, B = c.B, S = (gated ? 4 : 3) * P;
    const size_t n_stages = (size_t)c.n_int * c.n_sub * 4;
    const size_t N = n_stages * BT; /* a store row: one population of this tile */
    VT *arr[N_BARR_G];
    for (int i = 0; i < N_BARR_G; i++)
        arr[i] = i < (gated ? N_BARR_G : N_BARR) ? (VT *)(buf + (size_t)i * P * BT) : NULL;
    VT *restrict lv = arr[LV], *restrict la = arr[LA], *restrict lr = arr[LR];
    VT *restrict gdv[4] = {arr[GDV1], arr[GDV2], arr[GDV3], arr[GDV4]};
    VT *restrict gda[4] = {arr[GDA1], arr[GDA2], arr[GDA3], arr[GDA4]};
    VT *restrict gv[4] = {arr[GV1], arr[GV2], arr[GV3], arr[GV4]};
    VT *restrict ga[4] = {arr[GA1], arr[GA2], arr[GA3], arr[GA4]};
    VT *restrict ls = arr[LS];
    VT *restrict gds[4] = {arr[GDS1], arr[GDS2], arr[GDS3], arr[GDS4]};
    VT *restrict gs[4] = {arr[GS1], arr[GS2], arr[GS3], arr[GS4]};
    VT *restrict gdrv = arr[GDRV];
    float *lvf = (float *)lv, *laf = (float *)la, *lrf = (float *)lr, *gdrvf = (float *)gdrv;
    float *lsf = (float *)ls;
    const float h = c.h, h2 = 0.5f * c.h, h6 = c.h / 6.0f, h3 = 2.0f * (c.h / 6.0f);
    const float wr[4] = {c.w0, c.wm, c.wm, c.w1};

    for (int b = 0; b < BT; b++) { /* padded lanes: zero adjoint, so zero gradients */
        const float *y = c.adj + (size_t)(b0 + b) * S;
        for (int j = 0; j < P; j++) {
            lvf[j * BT + b] = b < nb ? y[j] : 0.0f;
            laf[j * BT + b] = b < nb ? y[P + j] : 0.0f;
            lrf[j * BT + b] = b < nb ? y[2 * P + j] : 0.0f;
            if (gated) lsf[j * BT + b] = b < nb ? y[3 * P + j] : 0.0f;
        }
    }
    for (int k = c.n_int - 1; k >= 0; k--) {
        const float *g = c.g_states + (size_t)k * B * S;
        CAT(from_rows_, SUFFIX)(g + (size_t)b0 * S, S, nb, 3 * P, lvf, 1, 1); /* lv, la, lr */
        if (gated) CAT(from_rows_, SUFFIX)(g + (size_t)b0 * S + 3 * P, S, nb, P, lsf, 1, 1);
        for (int j = 0; j < P; j++) gdrv[j] = lv[j] * 0.0f;
        for (int i = c.n_sub - 1; i >= 0; i--) {
            const size_t at = (size_t)t_idx * P * N + ((size_t)k * c.n_sub + i) * 4 * BT;
            const float *sb = c.ss + at;
            const float *pb = gated ? c.ps + at : sb, *gb = gated ? c.sgs + at : sb;
            for (int j = 0; j < P; j++) {
                gdv[3][j] = h6 * lv[j];
                gda[3][j] = h6 * la[j];
                if (gated) gds[3][j] = h6 * ls[j];
            }
            CAT(bstage_, SUFFIX)(&c, gdv[3], gda[3], lr, wr[3], sb + 3 * BT, N, gv[3], ga[3],
                                 gated, gds[3], pb + 3 * BT, gb + 3 * BT, gs[3]);
            for (int j = 0; j < P; j++) {
                gdv[2][j] = h3 * lv[j] + h * gv[3][j];
                gda[2][j] = h3 * la[j] + h * ga[3][j];
                if (gated) gds[2][j] = h3 * ls[j] + h * gs[3][j];
            }
            CAT(bstage_, SUFFIX)(&c, gdv[2], gda[2], lr, wr[2], sb + 2 * BT, N, gv[2], ga[2],
                                 gated, gds[2], pb + 2 * BT, gb + 2 * BT, gs[2]);
            for (int j = 0; j < P; j++) {
                gdv[1][j] = h3 * lv[j] + h2 * gv[2][j];
                gda[1][j] = h3 * la[j] + h2 * ga[2][j];
                if (gated) gds[1][j] = h3 * ls[j] + h2 * gs[2][j];
            }
            CAT(bstage_, SUFFIX)(&c, gdv[1], gda[1], lr, wr[1], sb + BT, N, gv[1], ga[1],
                                 gated, gds[1], pb + BT, gb + BT, gs[1]);
            for (int j = 0; j < P; j++) {
                gdv[0][j] = h6 * lv[j] + h2 * gv[1][j];
                gda[0][j] = h6 * la[j] + h2 * ga[1][j];
                if (gated) gds[0][j] = h6 * ls[j] + h2 * gs[1][j];
            }
            CAT(bstage_, SUFFIX)(&c, gdv[0], gda[0], lr, wr[0], sb, N, gv[0], ga[0],
                                 gated, gds[0], pb, gb, gs[0]);
            for (int j = 0; j < P; j++) {
                lv[j] = lv[j] + gv[0][j] + gv[1][j] + gv[2][j] + gv[3][j];
                la[j] = la[j] + ga[0][j] + ga[1][j] + ga[2][j] + ga[3][j];
                if (gated) ls[j] = ls[j] + gs[0][j] + gs[1][j] + gs[2][j] + gs[3][j];
                lr[j] = c.e_r * lr[j];
                gdrv[j] += gdv[0][j] + gdv[1][j] + gdv[2][j] + gdv[3][j];
                float *gd = c.gdvs + at + j * N;
                for (int q = 0; q < 4; q++) *(VT *)(gd + q * BT) = gdv[q][j];
            }
        }
        float *gdr = c.g_drive + (size_t)k * B * P;
        CAT(to_rows_, SUFFIX)(gdrvf, P, gdr + (size_t)b0 * P, P, nb);
    }
    for (int b = 0; b < nb; b++) {
        float *y = c.adj + (size_t)(b0 + b) * S;
        for (int j = 0; j < P; j++) {
            y[j] = lvf[j * BT + b];
            y[P + j] = laf[j * BT + b];
            y[2 * P + j] = lrf[j * BT + b];
            if (gated) y[3 * P + j] = lsf[j * BT + b];
        }
    }
}

static void CAT(btile_, SUFFIX)(const Problem *p, int t_idx, int b0, int nb, float *buf) {
    CAT(btile_body_, SUFFIX)(p, t_idx, b0, nb, buf, 0);
}

static void CAT(btile_gated_, SUFFIX)(const Problem *p, int t_idx, int b0, int nb, float *buf) {
    CAT(btile_body_, SUFFIX)(p, t_idx, b0, nb, buf, 1);
}
