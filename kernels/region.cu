// region.cu: the region-wise relation metrics (SPEC §5), per sample b and group g of d/G channels:
//   cos = 1 − a·b / (max(‖a‖,1e-8)·max(‖b‖,1e-8)),  euc = sqrt(‖a−b‖² + 1e-12),  inn = a·b
//   ab: [2B, d] (rows 0..B = a, B..2B = b) → z: [B, 3G] = [cos (G), euc (G), inn (G)]; f64 sums.
// Backward: da, db from the closed forms (see src/backend/cpu/region.rs), added into dab.
// Launch: one 128-thread block per (b, g) (grid (G, B)); block reductions in a fixed order.
// Memory traffic: reads 2·d/G floats per block (twice in the backward), writes 3 (or 2·d/G).
#include "common.cuh"

#define NORM_EPS 1e-8
#define EUC_EPS 1e-12

struct Stats {
    double dot, na, nb, dist2;
};

__device__ __forceinline__ Stats group_stats(const float* a, const float* bv, int dg,
                                             double* scratch) {
    double dot = 0.0, aa = 0.0, bb = 0.0, dd = 0.0;
    for (int k = threadIdx.x; k < dg; k += blockDim.x) {
        double x = (double)a[k], y = (double)bv[k];
        dot += x * y;
        aa += x * x;
        bb += y * y;
        dd += (x - y) * (x - y);
    }
    Stats s;
    s.dot = block_sum(dot, scratch);
    s.na = sqrt(block_sum(aa, scratch));
    s.nb = sqrt(block_sum(bb, scratch));
    s.dist2 = block_sum(dd, scratch);
    return s;
}

extern "C" __global__ void region_forward(const float* __restrict__ ab, int batch, int d,
                                          int groups, float* __restrict__ z) {
    __shared__ double scratch[32];
    const int g = blockIdx.x, b = blockIdx.y, dg = d / groups;
    const float* a = ab + (i64)b * d + g * dg;
    const float* bv = ab + ((i64)batch + b) * d + g * dg;
    Stats st = group_stats(a, bv, dg, scratch);
    if (threadIdx.x == 0) {
        float* zr = z + (i64)b * 3 * groups;
        zr[g] = (float)(1.0 - st.dot / (fmax(st.na, NORM_EPS) * fmax(st.nb, NORM_EPS)));
        zr[groups + g] = (float)sqrt(st.dist2 + EUC_EPS);
        zr[2 * groups + g] = (float)st.dot;
    }
}

extern "C" __global__ void region_backward(const float* __restrict__ ab,
                                           const float* __restrict__ dz, int batch, int d,
                                           int groups, float* __restrict__ dab) {
    __shared__ double scratch[32];
    const int g = blockIdx.x, b = blockIdx.y, dg = d / groups;
    const i64 ra = (i64)b * d + g * dg, rb = ((i64)batch + b) * d + g * dg;
    Stats st = group_stats(ab + ra, ab + rb, dg, scratch);
    const float* gz = dz + (i64)b * 3 * groups;
    const double gcos = gz[g], geuc = gz[groups + g], ginn = gz[2 * groups + g];
    const double na = fmax(st.na, NORM_EPS), nb = fmax(st.nb, NORM_EPS);
    const double cosv = st.dot / (na * nb);
    const double euc = sqrt(st.dist2 + EUC_EPS);
    const double ka = st.na > NORM_EPS ? cosv / (st.na * st.na) : 0.0;
    const double kb = st.nb > NORM_EPS ? cosv / (st.nb * st.nb) : 0.0;
    for (int k = threadIdx.x; k < dg; k += blockDim.x) {
        double av = (double)ab[ra + k], bv = (double)ab[rb + k];
        double da = -gcos * (bv / (na * nb) - ka * av) + geuc * (av - bv) / euc + ginn * bv;
        double db = -gcos * (av / (na * nb) - kb * bv) - geuc * (av - bv) / euc + ginn * av;
        dab[ra + k] += (float)da;
        dab[rb + k] += (float)db;
    }
}
