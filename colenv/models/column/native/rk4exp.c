/* rk4exp for the column network on CPU, trials in vector lanes, and its discrete adjoint.
 *
 * The same scheme as colenv.models.column.integrators._make_rk4exp_chunk: classical RK4 on (v, a), the synaptic
 * filter r integrated exactly against the quadratic through the stage rates, piecewise-constant
 * drive per grid interval; and the same adjoint as colenv.models.column.integrators._make_rk4exp_chunk_backward.
 * What makes it faster than the torch graphs (docs/profiling.md):
 *
 *  - the weight product follows W's structure: dense 8 x 8 blocks within columns plus a few
 *    inter-column entries (855 of 10,816 nonzero on the parity network). Each column's block
 *    is a fixed 8 x 8 product (eight independent sums, no data-dependent loop, its eight inputs
 *    loaded once), the other entries a CSR by target (by source for the adjoint's W^T
 *    product), instead of the dense [P, P] matrix; where P is not a multiple of 8 the CSR
 *    holds every nonzero;
 *  - trials are processed in tiles of BT with the batch innermost ([P][BT] per array): every
 *    update is a vector operation over the tile, the tile's state stays in cache for the whole
 *    trial and nothing is recomputed between stages. Trials enter and leave the tile (drive in,
 *    states out) through in-register BT x BT transposes.
 *
 * colenv_rk4exp_forward integrates (optionally storing every stage's rates and slopes; with
 * noise, each step is followed by its given increment on v, the splitting scheme of the torch
 * fast SDE path);
 * colenv_rk4exp_backward runs the adjoint over the same intervals from those stores; the weight
 * gradient is a product of the stores done by the caller (colenv.models.column.native._Adjoint).
 * With gating (Problem.gated) the tiles are the *_gated_* variants of the same code (a
 * compile-time flag): the slow gating variable S joins RK4 on (v, a), and w_slow_t's product
 * runs over its CSR; the ungated tiles compile to the code they had before.
 *
 * Built on first use by colenv.models.column.native (cc -O3 -march=native -ffp-contract=fast, i.e. fused
 * multiply-adds; no -ffast-math: NaN and inf must propagate exactly as in torch so that
 * runaways are caught by the same checks) and called
 * through ctypes. Float32 only. Arithmetic differs from the torch path only in rounding order
 * and in exp (a Cephes-style polynomial, about 1 ulp).
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
    const int32_t *row_ptr; /* [P + 1]: CSR of W by target population */
    const int32_t *col;     /* [nnz]: source population of each nonzero */
    const float *val;       /* [nnz]: its weight (w_t[source, target]) */
    const float *kappa;     /* [P] */
    float h, da, db, inv_d, inv_tau_m, inv_tau_a, e_r, w0, wm, w1, max_rate;
    float *out; /* [n_int + 1, B, 3P]; row 0 is written too (= y0) */
    /* Stores (forward; NULL: none) and the adjoint (backward). A store is [n_tiles][P][N] with
     * N = n_int * n_sub * 4 * BT: tile t, population j, stage st (in step order), lane b at
     * (t P + j) N + st BT + b, so that each tile's weight gradient is one product ps gdvs^T
     * over its stages and lanes (padded lanes carry a zero gradient). */
    float *ps;                /* rates phi of every stage */
    float *ss;                /* their slopes dphi / d(v - a) */
    const int32_t *row_ptr_s; /* [P + 1]: CSR of W by source population */
    const int32_t *col_s;     /* [nnz]: target population of each nonzero */
    const float *val_s;       /* [nnz]: its weight (w_t[source, target]) */
    const float *g_states;    /* [n_int, B, 3P]: loss gradient of the states at interval ends */
    float *adj;               /* [B, 3P]: adjoint after the last interval in, before the first out */
    float *gdvs;              /* gradient of each stage's dv (layout of ps) */
    float *g_drive;           /* [n_int, B, P] */
    /* With n_blk > 0 (P = 8 n_blk), W's diagonal 8 x 8 blocks (one per column) are dense here
     * and the CSRs above hold only the entries outside them. */
    int32_t n_blk;
    const float *blk;   /* [n_blk][8 target][8 source] */
    const float *blk_s; /* [n_blk][8 source][8 target] */
    /* SDE (NULL: none): [n_int, n_sub, B, P] increments added to v after each step (forward
     * only: a kick does not depend on the state, so the adjoint recursion is unchanged). */
    const float *noise;
    /* Slow gating (gated = 0: off, and none of the fields below is read). S [P] is a fourth
     * state block, y = [v, a, r, S] (4P per trial in y0, out, g_states and adj); per stage
     * dv += (S inv_g) @ w_slow_t and dS = gamma (1 - S) phi - S inv_tau_g, RK4 like v and a.
     * w_slow_t's nonzeros as CSRs by target (forward) and by source (the adjoint). */
    int32_t gated;
    float inv_tau_g, gamma, inv_g; /* 1 / tau_S, gamma, 1 / (gamma tau_S) */
    const int32_t *row_ptr_g;      /* [P + 1]: CSR of w_slow_t by target */
    const int32_t *col_g;          /* [nnz]: source population */
    const float *val_g;            /* [nnz]: w_slow_t[source, target] */
    const int32_t *row_ptr_gs;     /* [P + 1]: CSR of w_slow_t by source */
    const int32_t *col_gs;         /* [nnz]: target population */
    const float *val_gs;           /* [nnz]: w_slow_t[source, target] */
    float *sgs; /* store (layout of ps): every stage's S input (forward writes, adjoint reads) */
} Problem;

#include "column_rate.h"

/* The rate of x = v - a and (slope not NULL) its slope with this problem's constants
 * (column_rate.h); saturate and slope are constants where this is inlined. */
static inline __attribute__((always_inline)) float rate_slope(float x, const Problem *p,
                                                              const int saturate, float *slope) {
    return column_rate(x, p->da, p->db, p->inv_d, p->max_rate, saturate, slope);
}

static inline __attribute__((always_inline)) float rate(float x, const Problem *p,
                                                        const int saturate) {
    return rate_slope(x, p, saturate, NULL);
}

/* Scratch arrays of one tile, each [P][BT]: state, two stage-input buffers (stage s reads one
 * and writes the other, so no array is read and written in the same loop), rates, drive and
 * the running RK4 sums. */
enum { V, A, R, X1V, X1A, X2V, X2A, PHI, SLP, DRV, KV1, KV23, KA1, KA23, PR1, PR23, N_ARR };
/* Gated tiles only (after the others: an ungated tile's arrays are laid out as without gating):
 * S, its two stage-input buffers, its RK4 sums and the stage's S inv_g (the slow product's
 * input). */
enum { SG = N_ARR, X1S, X2S, KS1, KS23, SRD, N_ARR_G };
/* Scratch arrays of one tile in backward, each [P][BT]: the adjoint (lv, la, lr), the four
 * stages' dv and da gradients, their state gradients, and the interval's drive gradient. */
enum { LV, LA, LR, GDV1, GDV2, GDV3, GDV4, GDA1, GDA2, GDA3, GDA4, GV1, GV2, GV3, GV4, GA1, GA2,
       GA3, GA4, GDRV, N_BARR };
/* Gated backward only: S's adjoint, the stages' dS gradients and their S-input gradients. */
enum { LS = N_BARR, GDS1, GDS2, GDS3, GDS4, GS1, GS2, GS3, GS4, N_BARR_G };

typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x16 __attribute__((vector_size(64)));

#define VT float
#define BT 1
#define SUFFIX 1
#include "rk4exp_tile.h"
#undef VT
#undef BT
#undef SUFFIX
#define VT f32x8
#define BT 8
#define SUFFIX 8
#include "rk4exp_tile.h"
#undef VT
#undef BT
#undef SUFFIX
#define VT f32x16
#define BT 16
#define SUFFIX 16
#include "rk4exp_tile.h"
#undef VT
#undef BT
#undef SUFFIX

/* Tile width: one lane for one trial, 8 lanes up to 8 trials, else tiles of 16 (the last one
 * padded). */
static int tile_width(int B) { return B <= 1 ? 1 : B <= 8 ? 8 : 16; }

typedef struct {
    const Problem *p;
    int id;
    int backward;
    int failed;
} Worker;

static void *work(void *arg) {
    Worker *w = (Worker *)arg;
    const Problem *p = w->p;
    const int BT = tile_width(p->B);
    const size_t n_arr = w->backward ? (p->gated ? N_BARR_G : N_BARR) : (p->gated ? N_ARR_G : N_ARR);
    float *buf = (float *)aligned_alloc(64, (n_arr * p->P * BT * sizeof(float) + 63) / 64 * 64);
    if (!buf) {
        w->failed = 1;
        return NULL;
    }
    const int n_tiles = (p->B + BT - 1) / BT;
    for (int t = w->id; t < n_tiles; t += p->n_threads) {
        const int b0 = t * BT, nb = p->B - b0 < BT ? p->B - b0 : BT;
        if (w->backward && p->gated) {
            switch (BT) {
            case 1: btile_gated_1(p, t, b0, nb, buf); break;
            case 8: btile_gated_8(p, t, b0, nb, buf); break;
            default: btile_gated_16(p, t, b0, nb, buf); break;
            }
        } else if (w->backward) {
            switch (BT) {
            case 1: btile_1(p, t, b0, nb, buf); break;
            case 8: btile_8(p, t, b0, nb, buf); break;
            default: btile_16(p, t, b0, nb, buf); break;
            }
        } else if (p->gated) {
            switch (BT) {
            case 1: tile_gated_1(p, t, b0, nb, buf); break;
            case 8: tile_gated_8(p, t, b0, nb, buf); break;
            default: tile_gated_16(p, t, b0, nb, buf); break;
            }
        } else {
            switch (BT) {
            case 1: tile_1(p, t, b0, nb, buf); break;
            case 8: tile_8(p, t, b0, nb, buf); break;
            default: tile_16(p, t, b0, nb, buf); break;
            }
        }
    }
    free(buf);
    return NULL;
}

/* Runs the tiles on n_threads threads (the calling one included). Returns 0 on success, 1 if
 * scratch memory could not be allocated. */
static int run(const Problem *p, int backward) {
    int nt = p->n_threads < 1 ? 1 : p->n_threads;
    Worker workers[64];
    pthread_t threads[64];
    if (nt > 64) nt = 64;
    Problem q = *p;
    q.n_threads = nt;
    for (int i = 0; i < nt; i++) workers[i] = (Worker){&q, i, backward, 0};
    int started = 1;
    for (int i = 1; i < nt; i++) {
        if (pthread_create(&threads[i], NULL, work, &workers[i])) break;
        started++;
    }
    for (int i = started; i < nt; i++) work(&workers[i]); /* threads that did not start */
    work(&workers[0]);
    for (int i = 1; i < started; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < nt; i++)
        if (workers[i].failed) return 1;
    return 0;
}

/* States of all intervals into out; with ps/ss set, also every stage's rates and slopes. */
int colenv_rk4exp_forward(const Problem *p) { return run(p, 0); }

/* The adjoint over the same intervals (needs ss of a forward with stores). */
int colenv_rk4exp_backward(const Problem *p) { return run(p, 1); }
