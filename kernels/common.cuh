// common.cuh: index helpers shared by every kernel file.
//
// The resampling index rules are exactly those of `nearest_src`, `bilinear_taps` and
// `adaptive_bin` in src/backend/mod.rs (SPEC §6), evaluated in float32 with explicit
// round-to-nearest intrinsics so that nvcc never contracts them into an FMA (which would move
// a source index across an integer boundary and break parity with the CPU backend).
#pragma once

#include <stdint.h>

typedef long long i64;

// Grid-stride loop over [0, n).
#define GRID_STRIDE(i, n)                                                                \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)(n);               \
         i += (i64)blockDim.x * gridDim.x)

// ---- SPEC §6 index rules ---------------------------------------------------------------

// Nearest: src = min(floor(dst · (float)in / out), in − 1); identity and exact 2× special cases.
__device__ __forceinline__ int nearest_src(int dst, int in, int out) {
    if (in == out) return dst;
    if (out == 2 * in) return dst >> 1;
    float scale = __fdiv_rn((float)in, (float)out);
    int s = (int)floorf(__fmul_rn((float)dst, scale));
    return s < in - 1 ? s : in - 1;
}

// Bilinear (align_corners = False) taps of output `dst`: x0, x1 and weights w0 = 1 − frac, w1 = frac.
__device__ __forceinline__ void bilinear_taps(int dst, int in, int out, int* x0, int* x1,
                                              float* w0, float* w1) {
    float scale = __fdiv_rn((float)in, (float)out);
    float src = __fsub_rn(__fmul_rn(__fadd_rn((float)dst, 0.5f), scale), 0.5f);
    src = fmaxf(src, 0.0f);
    int a = (int)src;  // src >= 0: truncation == floor (as `src as usize`)
    if (a > in - 1) a = in - 1;
    int b = a + 1 < in - 1 ? a + 1 : in - 1;
    float frac = __fsub_rn(src, (float)a);
    *x0 = a;
    *x1 = b;
    *w0 = __fsub_rn(1.0f, frac);
    *w1 = frac;
}

// Adaptive average pooling bin `u` of `n` along a side of length `len`: [start, end).
__device__ __forceinline__ int adaptive_start(int u, int len, int n) { return (u * len) / n; }
__device__ __forceinline__ int adaptive_end(int u, int len, int n) {
    return ((u + 1) * len + n - 1) / n;
}

// The bins (of `n` along `len`) containing position `i`: first..=last (contiguous, because
// bins are ordered and overlap only their neighbours).
__device__ __forceinline__ void adaptive_bins_of(int i, int len, int n, int* first, int* last) {
    int u = (i * n) / len;  // always contains i
    int lo = u, hi = u;
    while (lo > 0 && adaptive_end(lo - 1, len, n) > i) --lo;
    while (hi + 1 < n && adaptive_start(hi + 1, len, n) <= i) ++hi;
    *first = lo;
    *last = hi;
}

// ---- warp reductions (fixed shuffle tree: deterministic) ---------------------------------

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum of `v` over a block of `blockDim.x` threads (a multiple of 32, at most 1024), in a fixed
// order. Every thread gets the result. `scratch` holds at least 32 doubles.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double t = lane < warps ? scratch[lane] : 0.0;
    return warp_sum(t);
}
