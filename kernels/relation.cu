// relation.cu: the fused relation map of SPEC §4.1, never materialising N×N.
//
// Forward, per image b and row i (f: [B, N, C] channels-last, N = H·W):
//   q_i = f_i / max(‖f_i‖, 1e-12)                                   (relation_normalize)
//   e_ij = exp(q_i·q_j − 1)  (fixed shift: s_ij ≤ 1),  l_i = Σ_j e_ij,
//   P_ib = Σ_{j∈b} e_ij / (l_i·|b|)   for the n×n adaptive bins b    (relation_forward)
// relation_forward: one 256-thread block per (32-row tile of i, image); it loops over 32-column
// tiles of j: the 32×32 score tile is a small GEMM over C in 32-wide chunks staged in shared
// memory, exponentiated into a shared tile, then added into the row sums and the per-(row, bin)
// f64 accumulators (each accumulator owned by one thread: deterministic, no atomics).
// Dynamic shared memory: 32·n²·8 bytes.
//
// Backward, given G = ∂L/∂P (relation_backward_rows, then relation_backward):
//   D_i = Σ_b P_ib G_ib,  gt_ib = G_ib/|b|,  g_ij = Σ_{b∋j} gt_ib,
//   R_ij = e_ij / l_i (recomputed),  dS_ij = R_ij (g_ij − D_i),
//   dq_i = Σ_j (dS_ij + dS_ji) q_j   (dS_ji uses row j's l_j, D_j, gt_j and pixel i's bins),
//   df_i += (dq_i − q_i (q_i·dq_i)) / ‖f_i‖   (below the 1e-12 floor: dq_i / 1e-12).
// relation_backward: one 256-thread block per (16-row tile of i, image) owns dq for its rows
// (f64 accumulators in shared memory) and loops over 32-column tiles of j: deterministic, no
// atomics, each output row written by exactly one block.
// Dynamic shared memory: 16·C·8 + (16 + 32)·n²·4 + 4·(H + W)·4 bytes.
//
// Memory traffic: forward reads q O(N²·C/32) times from L2 (once per tile pair), writes
// N·(n² + 1); backward additionally reads q once more per tile pair for dq.
#include "common.cuh"

#define KC 32          // channels per staged chunk
#define THREADS 256
#define FWD_TI 32
#define FWD_TJ 32
#define BWD_TI 16
#define BWD_TJ 32
#define MAX_SIDE 16

// norms: [B·N], q: [B·N, C]. One warp per pixel, f64 sum of squares.
extern "C" __global__ void relation_normalize(const float* __restrict__ f, int pixels, int c,
                                              float* __restrict__ q, float* __restrict__ norms) {
    const int lane = threadIdx.x & 31;
    const i64 p = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (p >= pixels) return;
    const float* fp = f + p * c;
    double ss = 0.0;
    for (int ch = lane; ch < c; ch += 32) {
        double v = (double)fp[ch];
        ss += v * v;
    }
    ss = warp_sum(ss);
    float nrm = (float)sqrt(ss);
    float inv = 1.0f / fmaxf(nrm, 1e-12f);
    for (int ch = lane; ch < c; ch += 32) q[p * c + ch] = fp[ch] * inv;
    if (lane == 0) norms[p] = nrm;
}

// Score tile: s[r][cc] = q_{i0+ri} · q_{j0+cj} for an (TI × TJ) tile, each thread owning
// RPT × CPT entries at rows ti.., columns tj... Rows/columns past N read zeros.
template <int TI, int TJ, int RPT, int CPT>
__device__ __forceinline__ void score_tile(const float* __restrict__ qb, int npix, int c, int i0,
                                           int j0, float (*sI)[KC + 1], float (*sJ)[KC + 1],
                                           int ti, int tj, float acc[RPT][CPT]) {
#pragma unroll
    for (int a = 0; a < RPT; ++a)
#pragma unroll
        for (int b = 0; b < CPT; ++b) acc[a][b] = 0.0f;
    for (int k0 = 0; k0 < c; k0 += KC) {
        for (int e = threadIdx.x; e < TI * KC; e += THREADS) {
            int r = e / KC, k = e % KC, i = i0 + r;
            sI[r][k] = (i < npix && k0 + k < c) ? qb[(i64)i * c + k0 + k] : 0.0f;
        }
        for (int e = threadIdx.x; e < TJ * KC; e += THREADS) {
            int r = e / KC, k = e % KC, j = j0 + r;
            sJ[r][k] = (j < npix && k0 + k < c) ? qb[(i64)j * c + k0 + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < KC; ++k) {
            float av[RPT], bv[CPT];
#pragma unroll
            for (int a = 0; a < RPT; ++a) av[a] = sI[ti + a][k];
#pragma unroll
            for (int b = 0; b < CPT; ++b) bv[b] = sJ[tj + b][k];
#pragma unroll
            for (int a = 0; a < RPT; ++a)
#pragma unroll
                for (int b = 0; b < CPT; ++b) acc[a][b] += av[a] * bv[b];
        }
        __syncthreads();
    }
}

// q: [B, N, C] (normalised), lsum: [B, N], p: [B, N, n, n].
extern "C" __global__ void __launch_bounds__(THREADS) relation_forward(const float* __restrict__ q, int npix, int c, int h, int w, int n,
                     float* __restrict__ lsum, float* __restrict__ p) {
    __shared__ float sI[FWD_TI][KC + 1];
    __shared__ float sJ[FWD_TJ][KC + 1];
    __shared__ float E[FWD_TI][FWD_TJ + 1];
    __shared__ double lacc[FWD_TI];
    __shared__ int ylo[MAX_SIDE], yhi[MAX_SIDE], xlo[MAX_SIDE], xhi[MAX_SIDE];
    extern __shared__ double bacc[];  // [FWD_TI][n·n]

    const int b = blockIdx.y, i0 = blockIdx.x * FWD_TI, nb = n * n;
    const float* qb = q + (i64)b * npix * c;
    const int t = threadIdx.x;
    if (t < n) {
        ylo[t] = adaptive_start(t, h, n);
        yhi[t] = adaptive_end(t, h, n);
        xlo[t] = adaptive_start(t, w, n);
        xhi[t] = adaptive_end(t, w, n);
    }
    if (t < FWD_TI) lacc[t] = 0.0;
    for (int k = t; k < FWD_TI * nb; k += THREADS) bacc[k] = 0.0;
    __syncthreads();

    const int ti = (t / 16) * 2, tj = (t % 16) * 2;
    for (int j0 = 0; j0 < npix; j0 += FWD_TJ) {
        float s[2][2];
        score_tile<FWD_TI, FWD_TJ, 2, 2>(qb, npix, c, i0, j0, sI, sJ, ti, tj, s);
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int bb = 0; bb < 2; ++bb) {
                int i = i0 + ti + a, j = j0 + tj + bb;
                E[ti + a][tj + bb] = (i < npix && j < npix) ? expf(s[a][bb] - 1.0f) : 0.0f;
            }
        __syncthreads();
        const int jend = min(j0 + FWD_TJ, npix);
        if (t < FWD_TI) {
            double l = lacc[t];
            for (int jj = 0; jj < jend - j0; ++jj) l += (double)E[t][jj];
            lacc[t] = l;
        }
        const int yfirst = j0 / w, ylast = (jend - 1) / w;
        for (int k = t; k < FWD_TI * nb; k += THREADS) {
            const int r = k / nb, bin = k % nb, v = bin / n, u = bin % n;
            const int y0 = max(ylo[v], yfirst), y1 = min(yhi[v], ylast + 1);
            double sum = 0.0;
            for (int y = y0; y < y1; ++y) {
                const int js = max(y * w + xlo[u], j0), je = min(y * w + xhi[u], jend);
                for (int j = js; j < je; ++j) sum += (double)E[r][j - j0];
            }
            bacc[k] += sum;
        }
        __syncthreads();
    }
    for (int k = t; k < FWD_TI * nb; k += THREADS) {
        const int r = k / nb, bin = k % nb, i = i0 + r;
        if (i >= npix) continue;
        const int v = bin / n, u = bin % n;
        const double size = (double)((yhi[v] - ylo[v]) * (xhi[u] - xlo[u]));
        p[((i64)b * npix + i) * nb + bin] = (float)(bacc[k] / (lacc[r] * size));
    }
    if (t < FWD_TI && i0 + t < npix) lsum[(i64)b * npix + i0 + t] = (float)lacc[t];
}

// Per row (b, i): D_i = Σ_b P_ib G_ib (f64, rounded once) and gt_ib = G_ib / |b|.
// p, dp, gt: [B·N, n·n]; d: [B·N]. One thread per row.
extern "C" __global__ void relation_backward_rows(const float* __restrict__ p,
                                                  const float* __restrict__ dp, int rows, int h,
                                                  int w, int n, float* __restrict__ d,
                                                  float* __restrict__ gt) {
    const i64 row = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    const int nb = n * n;
    double acc = 0.0;
    for (int v = 0; v < n; ++v) {
        const int sy = adaptive_end(v, h, n) - adaptive_start(v, h, n);
        for (int u = 0; u < n; ++u) {
            const int sx = adaptive_end(u, w, n) - adaptive_start(u, w, n);
            const i64 k = row * nb + v * n + u;
            const float g = dp[k];
            acc += (double)p[k] * (double)g;
            gt[k] = g / (float)(sy * sx);
        }
    }
    d[row] = (float)acc;
}

// g_ij = Σ_{v ∈ vf..=vl, u ∈ uf..=ul} gt[v·n + u] (the bins containing pixel j), in (v, u) order.
__device__ __forceinline__ float bin_gather(const float* gtrow, int n, int vf, int vl, int uf,
                                            int ul) {
    float g = 0.0f;
    for (int v = vf; v <= vl; ++v)
        for (int u = uf; u <= ul; ++u) g += gtrow[v * n + u];
    return g;
}

// q: [B, N, C] normalised; norms, lsum, d: [B, N]; gt: [B, N, n·n]; df: [B, N, C] (+=).
extern "C" __global__ void __launch_bounds__(THREADS) relation_backward(const float* __restrict__ q, const float* __restrict__ norms,
                      const float* __restrict__ lsum, const float* __restrict__ dvec,
                      const float* __restrict__ gt, int npix, int c, int h, int w, int n,
                      float* __restrict__ df) {
    __shared__ float sI[BWD_TI][KC + 1];
    __shared__ float sJ[BWD_TJ][KC + 1];
    __shared__ float Wt[BWD_TI][BWD_TJ + 1];
    __shared__ float lI[BWD_TI], dI[BWD_TI], lJ[BWD_TJ], dJ[BWD_TJ];
    extern __shared__ double dyn[];
    const int nb = n * n;
    double* dq = dyn;                                   // [BWD_TI][C]
    float* gtI = (float*)(dq + BWD_TI * c);             // [BWD_TI][nb]
    float* gtJ = gtI + BWD_TI * nb;                     // [BWD_TJ][nb]
    int* vfirst = (int*)(gtJ + BWD_TJ * nb);            // [h]
    int* vlast = vfirst + h;                            // [h]
    int* ufirst = vlast + h;                            // [w]
    int* ulast = ufirst + w;                            // [w]

    const int b = blockIdx.y, i0 = blockIdx.x * BWD_TI, t = threadIdx.x;
    const i64 base = (i64)b * npix;
    const float* qb = q + base * c;
    for (int y = t; y < h; y += THREADS) adaptive_bins_of(y, h, n, &vfirst[y], &vlast[y]);
    for (int x = t; x < w; x += THREADS) adaptive_bins_of(x, w, n, &ufirst[x], &ulast[x]);
    for (int k = t; k < BWD_TI * c; k += THREADS) dq[k] = 0.0;
    for (int k = t; k < BWD_TI * nb; k += THREADS) {
        const int r = k / nb, i = i0 + r;
        gtI[k] = i < npix ? gt[(base + i) * nb + k % nb] : 0.0f;
    }
    if (t < BWD_TI) {
        const int i = i0 + t;
        lI[t] = i < npix ? lsum[base + i] : 1.0f;
        dI[t] = i < npix ? dvec[base + i] : 0.0f;
    }
    __syncthreads();

    const int ti = t / 16, tj = (t % 16) * 2;
    const int iy = (i0 + ti) / w, ix = (i0 + ti) % w;  // pixel i's position (valid when i < N)
    for (int j0 = 0; j0 < npix; j0 += BWD_TJ) {
        const int jn = min(BWD_TJ, npix - j0);
        for (int k = t; k < BWD_TJ * nb; k += THREADS) {
            const int r = k / nb;
            gtJ[k] = r < jn ? gt[(base + j0 + r) * nb + k % nb] : 0.0f;
        }
        if (t < BWD_TJ) {
            lJ[t] = t < jn ? lsum[base + j0 + t] : 1.0f;
            dJ[t] = t < jn ? dvec[base + j0 + t] : 0.0f;
        }
        float s[1][2];
        score_tile<BWD_TI, BWD_TJ, 1, 2>(qb, npix, c, i0, j0, sI, sJ, ti, tj, s);
        // (score_tile ends with a barrier, so gtJ, lJ and dJ are visible here.)
#pragma unroll
        for (int bb = 0; bb < 2; ++bb) {
            const int i = i0 + ti, jj = tj + bb, j = j0 + jj;
            float wv = 0.0f;
            if (i < npix && j < npix) {
                const float e = expf(s[0][bb] - 1.0f);
                const int jy = j / w, jx = j % w;
                const float gij = bin_gather(gtI + ti * nb, n, vfirst[jy], vlast[jy],
                                             ufirst[jx], ulast[jx]);
                const float gji = bin_gather(gtJ + jj * nb, n, vfirst[iy], vlast[iy],
                                             ufirst[ix], ulast[ix]);
                const float rij = e * (1.0f / lI[ti]);
                const float rji = e * (1.0f / lJ[jj]);
                wv = rij * (gij - dI[ti]) + rji * (gji - dJ[jj]);
            }
            Wt[ti][jj] = wv;
        }
        __syncthreads();
        // dq[r, ch] += Σ_jj Wt[r, jj] · q[j0 + jj, ch]
        for (int k = t; k < BWD_TI * c; k += THREADS) {
            const int r = k / c, ch = k % c;
            const float* qj = qb + (i64)j0 * c + ch;
            float part = 0.0f;
            for (int jj = 0; jj < jn; ++jj) part += Wt[r][jj] * qj[(i64)jj * c];
            dq[k] += (double)part;
        }
        __syncthreads();
    }

    // Normalisation backward, one warp per row.
    const int lane = t & 31, warp = t >> 5;
    for (int r = warp; r < BWD_TI; r += THREADS / 32) {
        const int i = i0 + r;
        if (i >= npix) continue;  // uniform per warp
        const float* qi = qb + (i64)i * c;
        float* dfi = df + (base + i) * c;
        const double* dqi = dq + r * c;
        double dot = 0.0;
        for (int ch = lane; ch < c; ch += 32) dot += (double)qi[ch] * (double)(float)dqi[ch];
        const float dotf = (float)warp_sum(dot);
        const float nrm = norms[base + i];
        if (nrm > 1e-12f) {
            const float inv = 1.0f / nrm;
            for (int ch = lane; ch < c; ch += 32)
                dfi[ch] += ((float)dqi[ch] - qi[ch] * dotf) * inv;
        } else {
            for (int ch = lane; ch < c; ch += 32) dfi[ch] += (float)dqi[ch] / 1e-12f;
        }
    }
}
