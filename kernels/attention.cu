// attention.cu: the region feature extractor's attention pooling (SPEC §4.2).
//   F_man[b] = Σ_i M_i f_i / (Σ_i M_i + 1e-6),  F_ori[b] = Σ_i (1−M_i) f_i / (Σ_i (1−M_i) + 1e-6)
//   f: [B, N, C], m: [B, N], out: [2B, C] (rows 0..B = F_man, B..2B = F_ori); sums in f64.
// Backward (Z_m, Z_o the denominators, g_m, g_o the output gradients):
//   df_i += M_i g_m / Z_m + (1−M_i) g_o / Z_o,
//   dM_i += Σ_c g_m·(f_i − F_man)/Z_m − g_o·(f_i − F_ori)/Z_o.
// Launch: attention_forward block (32, 8) × grid (ceil(C/32), B), 8 pixel lanes per channel
// combined in a fixed order; attention_denominators one 256-thread block per image;
// attention_backward one warp per pixel (8 per block), lanes over channels.
// Memory traffic: forward reads f once (and m once per channel block); backward reads f, df
// once and writes df, dm once.
#include "common.cuh"

#define ATT_EPS 1e-6

extern "C" __global__ void attention_forward(const float* __restrict__ f,
                                             const float* __restrict__ m, int n, int c,
                                             int batch, float* __restrict__ out) {
    __shared__ double red[4][8][32];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int ch = blockIdx.x * 32 + tx;
    const int b = blockIdx.y;
    double man = 0.0, ori = 0.0, zm = 0.0, zo = 0.0;
    for (int i = ty; i < n; i += 8) {
        double mi = (double)m[(i64)b * n + i];
        zm += mi;
        zo += 1.0 - mi;
        if (ch < c) {
            double v = (double)f[((i64)b * n + i) * c + ch];
            man += mi * v;
            ori += (1.0 - mi) * v;
        }
    }
    red[0][ty][tx] = man;
    red[1][ty][tx] = ori;
    red[2][ty][tx] = zm;
    red[3][ty][tx] = zo;
    __syncthreads();
    if (ty == 0 && ch < c) {
        double s[4] = {0.0, 0.0, 0.0, 0.0};
        for (int k = 0; k < 8; ++k)
            for (int q = 0; q < 4; ++q) s[q] += red[q][k][tx];
        out[(i64)b * c + ch] = (float)(s[0] / (s[2] + ATT_EPS));
        out[((i64)batch + b) * c + ch] = (float)(s[1] / (s[3] + ATT_EPS));
    }
}

// z: [B, 2] floats: (Σ M + 1e-6, Σ (1 − M) + 1e-6), each summed in f64 and rounded once.
extern "C" __global__ void attention_denominators(const float* __restrict__ m, int n,
                                                  float* __restrict__ z) {
    __shared__ double scratch[32];
    const int b = blockIdx.x;
    double sm = 0.0, so = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        double mi = (double)m[(i64)b * n + i];
        sm += mi;
        so += 1.0 - mi;
    }
    sm = block_sum(sm, scratch);
    so = block_sum(so, scratch);
    if (threadIdx.x == 0) {
        z[2 * b] = (float)(sm + ATT_EPS);
        z[2 * b + 1] = (float)(so + ATT_EPS);
    }
}

extern "C" __global__ void attention_backward(const float* __restrict__ f,
                                              const float* __restrict__ m,
                                              const float* __restrict__ out,
                                              const float* __restrict__ dout,
                                              const float* __restrict__ z, int batch, int n,
                                              int c, float* __restrict__ df,
                                              float* __restrict__ dm) {
    const int lane = threadIdx.x & 31;
    const i64 pix = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (pix >= (i64)batch * n) return;  // whole warps exit together
    const int b = (int)(pix / n);
    const float zm = z[2 * b], zo = z[2 * b + 1];
    const float mi = m[pix];
    const float wm = mi / zm, wo = (1.0f - mi) / zo;
    const float* gm = dout + (i64)b * c;
    const float* go = dout + ((i64)batch + b) * c;
    const float* fm = out + (i64)b * c;
    const float* fo = out + ((i64)batch + b) * c;
    const float* fi = f + pix * c;
    float* dfi = df + pix * c;
    double acc = 0.0;
    for (int ch = lane; ch < c; ch += 32) {
        dfi[ch] += wm * gm[ch] + wo * go[ch];
        acc += (double)(gm[ch] * (fi[ch] - fm[ch])) / (double)zm -
               (double)(go[ch] * (fi[ch] - fo[ch])) / (double)zo;
    }
    acc = warp_sum(acc);
    if (lane == 0) dm[pix] += (float)acc;
}
