/* One tile of trials, BT lanes held in the vector type VT (a GCC/Clang vector extension, or
 * plain float for one lane): included by rk4exp.c once per tile width with VT, BT and SUFFIX
 * defined. Arrays are [P] of VT (population-major, the tile's trials in the lanes). */
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

/* Stage s (0..3, a constant after inlining) of one RK4 step: rates of the stage input (cv, ca),
 * the slopes dv = W phi - (v / tau_m - drive) and da = kappa / tau_a phi - a / tau_a, their
 * running RK4 sums, and the next stage's input (nv, na), or for s = 3 the step's result (v, a
 * and the r filter). Stage s reads one stage-input buffer and writes the other. */
static inline __attribute__((always_inline)) void CAT(stage_, SUFFIX)(const Problem *p,
                                                                     float *const *arr,
                                                                     const int s) {
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

    if (c.max_rate > 0.0f) {
        for (int j = 0; j < P * BT; j++) phif[j] = rate(cvf[j] - caf[j], &c, 1);
    } else {
        for (int j = 0; j < P * BT; j++) phif[j] = rate(cvf[j] - caf[j], &c, 0);
    }
    for (int t = 0; t < P; t++) {
        VT acc = phi[0] * 0.0f;
        for (int e = c.row_ptr[t]; e < c.row_ptr[t + 1]; e++) acc += c.val[e] * phi[c.col[e]];
        const VT dv = acc - (cv[t] * inv_m - drv[t]);
        const VT dA = (c.kappa[t] * inv_a) * phi[t] - ca[t] * inv_a;
        if (s == 0) {
            kv1[t] = dv;
            ka1[t] = dA;
            pr1[t] = phi[t];
        } else if (s == 1) {
            kv23[t] = dv;
            ka23[t] = dA;
            pr23[t] = phi[t];
        } else if (s == 2) {
            kv23[t] += dv;
            ka23[t] += dA;
            pr23[t] += phi[t];
        }
        if (s < 3) {
            nv[t] = v[t] + c_next * dv;
            na[t] = a[t] + c_next * dA;
        } else {
            v[t] = v[t] + h6 * (kv1[t] + 2.0f * kv23[t] + dv);
            a[t] = a[t] + h6 * (ka1[t] + 2.0f * ka23[t] + dA);
            r[t] = c.e_r * r[t] + c.w0 * pr1[t] + c.wm * pr23[t] + c.w1 * phi[t];
        }
    }
}

/* Trials [b0, b0 + nb) (nb <= BT; lanes >= nb repeat trial b0 and are not written). */
static void CAT(tile_, SUFFIX)(const Problem *p, int b0, int nb, float *buf) {
    const int P = p->P, B = p->B, S = 3 * P;
    float *arr[N_ARR];
    for (int i = 0; i < N_ARR; i++) arr[i] = buf + (size_t)i * P * BT;
    float *v = arr[V], *a = arr[A], *r = arr[R], *drv = arr[DRV];

    for (int b = 0; b < BT; b++) {
        const float *y = p->y0 + (size_t)(b0 + (b < nb ? b : 0)) * S;
        for (int pp = 0; pp < P; pp++) {
            v[pp * BT + b] = y[pp];
            a[pp * BT + b] = y[P + pp];
            r[pp * BT + b] = y[2 * P + pp];
        }
    }
    for (int b = 0; b < nb; b++)
        memcpy(p->out + (size_t)(b0 + b) * S, p->y0 + (size_t)(b0 + b) * S, S * sizeof(float));

    for (int k = 0; k < p->n_int; k++) {
        const float *d = p->drive + (size_t)k * B * P;
        for (int b = 0; b < BT; b++) {
            const float *db_ = d + (size_t)(b0 + (b < nb ? b : 0)) * P;
            for (int pp = 0; pp < P; pp++) drv[pp * BT + b] = db_[pp];
        }
        for (int i = 0; i < p->n_sub; i++) {
            CAT(stage_, SUFFIX)(p, arr, 0);
            CAT(stage_, SUFFIX)(p, arr, 1);
            CAT(stage_, SUFFIX)(p, arr, 2);
            CAT(stage_, SUFFIX)(p, arr, 3);
        }
        float *row = p->out + (size_t)(k + 1) * B * S;
        for (int b = 0; b < nb; b++) {
            float *y = row + (size_t)(b0 + b) * S;
            for (int pp = 0; pp < P; pp++) {
                y[pp] = v[pp * BT + b];
                y[P + pp] = a[pp * BT + b];
                y[2 * P + pp] = r[pp * BT + b];
            }
        }
    }
}
