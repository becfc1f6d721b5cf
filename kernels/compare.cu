// compare.cu: how far one output is from another, for the kernel tuner's check that every
// candidate computes what the trusted one computes (src/backend/cuda/tune_check.rs).
//
// compare_partial: a (the candidate's output), b (the reference's), base (the output's
// contents before either ran, when the call accumulates into it; null when it overwrites),
// all [n] floats. Block k writes partial[7·k ..]: Σ d², Σ s², Σ b², max |d|, max |s|, max |b|
// and the count of positions where exactly one of a, b is finite, with d = a − b and
// s = b − base (the reference's own contribution; b itself without a base). Non-finite
// positions are left out of the sums and maxima: a NaN in both is agreement, a NaN in one is
// counted.
// Launch: 1-D grid-stride, 256 threads per block (a fixed grid: the host sums the blocks in
// order, so the result depends only on n). f64 sums; the block's lanes combine in a fixed tree.
#include "common.cuh"

#define COMPARE_THREADS 256
#define COMPARE_VALUES 7

__device__ __forceinline__ double warp_max(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

extern "C" __global__ void __launch_bounds__(COMPARE_THREADS) compare_partial(const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ base, i64 n, double* __restrict__ partial) {
    double dd = 0.0, ss = 0.0, bb = 0.0, dmax = 0.0, smax = 0.0, bmax = 0.0, odd = 0.0;
    GRID_STRIDE(i, n) {
        const float av = a[i], bv = b[i];
        const bool af = isfinite(av), bf = isfinite(bv);
        if (af != bf) odd += 1.0;
        if (!af || !bf) continue;
        const double d = (double)av - (double)bv;
        const double s = base ? (double)bv - (double)base[i] : (double)bv;
        dd += d * d;
        ss += s * s;
        bb += (double)bv * (double)bv;
        dmax = fmax(dmax, fabs(d));
        smax = fmax(smax, fabs(s));
        bmax = fmax(bmax, fabs((double)bv));
    }
    double v[COMPARE_VALUES] = {warp_sum(dd),   warp_sum(ss),   warp_sum(bb),  warp_max(dmax),
                                warp_max(smax), warp_max(bmax), warp_sum(odd)};
    __shared__ double red[COMPARE_VALUES][COMPARE_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0)
        for (int k = 0; k < COMPARE_VALUES; ++k) red[k][warp] = v[k];
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int k = 0; k < COMPARE_VALUES; ++k) {
        double t = red[k][0];
        for (int w = 1; w < COMPARE_THREADS / 32; ++w)
            t = (k >= 3 && k <= 5) ? fmax(t, red[k][w]) : t + red[k][w];
        partial[(i64)blockIdx.x * COMPARE_VALUES + k] = t;
    }
}
