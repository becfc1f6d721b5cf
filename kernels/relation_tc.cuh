// relation_tc.cuh: bin geometry helpers of relation_tc.cu (operand types: wmma_ops.cuh).
#pragma once

#include <cuda_bf16.h>
#include <mma.h>

#include "common.cuh"
#include "wmma_ops.cuh"

__host__ __device__ constexpr int align128(int bytes) { return (bytes + 127) & ~127; }

// ---- bin geometry (SPEC §6, h ≥ n and w ≥ n: a position lies in one bin or two neighbours) ----
//
// Along a side, position p has class `first` when it lies in bin `first` alone and `n + first`
// when it lies in bins `first` and `first + 1`: 2n − 1 classes per side, (2n − 1)² per pixel.

// Class of pixel j (−1 when j ≥ npix): vclass · (2n − 1) + uclass.
__device__ __forceinline__ int pixel_class(int j, int npix, int h, int w, int n) {
    if (j >= npix) return -1;
    const int y = j / w, x = j - y * w;
    int vf, vl, uf, ul;
    adaptive_bins_of(y, h, n, &vf, &vl);
    adaptive_bins_of(x, w, n, &uf, &ul);
    const int vc = vf == vl ? vf : n + vf, uc = uf == ul ? uf : n + uf;
    return vc * (2 * n - 1) + uc;
}

// The bins of pixel j: out = {vfirst, vlast, ufirst, ulast}.
__device__ __forceinline__ void pixel_bins(int j, int h, int w, int n, int* out) {
    const int y = j / w, x = j - y * w;
    adaptive_bins_of(y, h, n, &out[0], &out[1]);
    adaptive_bins_of(x, w, n, &out[2], &out[3]);
}

// The bins of pixel j packed in one word: vfirst | vlast << 8 | ufirst << 16 | ulast << 24.
// NO_BINS (vfirst = ufirst = 255 > vlast = ulast = 0) is in no bin: pixels beyond N.
constexpr unsigned NO_BINS = 0x00FF00FFu;

__device__ __forceinline__ unsigned pack_bins(int j, int h, int w, int n) {
    int b[4];
    pixel_bins(j, h, w, n, b);
    return (unsigned)b[0] | ((unsigned)b[1] << 8) | ((unsigned)b[2] << 16) | ((unsigned)b[3] << 24);
}

// Whether bin `vu` (v | u << 8) contains the pixel with packed bins `pk`.
__device__ __forceinline__ bool in_bin(unsigned pk, unsigned vu) {
    const unsigned v = vu & 0xFF, u = vu >> 8;
    return v >= (pk & 0xFF) && v <= ((pk >> 8) & 0xFF) && u >= ((pk >> 16) & 0xFF) &&
           u <= (pk >> 24);
}

// Σ row[v·n + u] over the bins in `pk`, in (v, u) order (0 for NO_BINS).
__device__ __forceinline__ float bins_sum_packed(const float* __restrict__ row, int n, unsigned pk) {
    const int vf = pk & 0xFF, vl = (pk >> 8) & 0xFF, uf = (pk >> 16) & 0xFF, ul = pk >> 24;
    float g = 0.0f;
    for (int v = vf; v <= vl; ++v)
        for (int u = uf; u <= ul; ++u) g += __ldg(row + v * n + u);
    return g;
}

// acc[bin · stride + r] += v for the 1, 2 or 4 bins of class `cls` (cs = 2n − 1).
__device__ __forceinline__ void add_to_bins(float* acc, int stride, int r, int cls, int n, int cs,
                                            float v) {
    const int vc = cls / cs, uc = cls - vc * cs;
    const int v0 = vc < n ? vc : vc - n, v1 = vc < n ? vc : vc - n + 1;
    const int u0 = uc < n ? uc : uc - n, u1 = uc < n ? uc : uc - n + 1;
    for (int y = v0; y <= v1; ++y)
        for (int x = u0; x <= u1; ++x) acc[(y * n + x) * stride + r] += v;
}

// Σ_{v ∈ vf..=vl, u ∈ uf..=ul} row[v·n + u], in (v, u) order.
__device__ __forceinline__ float bins_sum(const float* row, int n, int vf, int vl, int uf,
                                          int ul) {
    float g = 0.0f;
    for (int v = vf; v <= vl; ++v)
        for (int u = uf; u <= ul; ++u) g += row[v * n + u];
    return g;
}

// |b| for bin (v, u).
__device__ __forceinline__ int bin_size(int v, int u, int h, int w, int n) {
    return (adaptive_end(v, h, n) - adaptive_start(v, h, n)) *
           (adaptive_end(u, w, n) - adaptive_start(u, w, n));
}

// Normalisation backward of one row, one warp: q = f · (1 / max(qn, 1e-12)) (bitwise as the
// normalisation kernels compute it), df += (dq − q (q·dq)) / ‖f‖ (below 1e-12: dq / 1e-12).
__device__ __forceinline__ void norm_backward_row(const float* __restrict__ fi,
                                                  const float* __restrict__ dqi, int c, float qn,
                                                  float nrm, float* __restrict__ dfi, int lane) {
    const float invq = 1.0f / fmaxf(qn, 1e-12f);
    double dot = 0.0;
    for (int ch = lane; ch < c; ch += 32) dot += (double)(fi[ch] * invq) * (double)dqi[ch];
    const float dotf = (float)warp_sum(dot);
    if (nrm > 1e-12f) {
        const float inv = 1.0f / nrm;
        for (int ch = lane; ch < c; ch += 32) dfi[ch] += (dqi[ch] - (fi[ch] * invq) * dotf) * inv;
    } else {
        for (int ch = lane; ch < c; ch += 32) dfi[ch] += dqi[ch] / 1e-12f;
    }
}
