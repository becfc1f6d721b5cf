// conv_gather.cuh: reading the im2col matrix of a k×k convolution straight from channels-last x
// (conv_implicit.cu, conv_wgrad.cu): A[m, kg] = x[b, oy·s + ky − p, ox·s + kx − p, ci] with
// m = (b·Ho + oy)·Wo + ox and kg = (ky·k + kx)·Cin + ci (0 outside the image); the staging
// helpers and the fused epilogue (also conv_halo.cu).
#pragma once

#include <cuda_bf16.h>

#include "common.cuh"

// One K column of the GEMM: kg = (ky·k + kx)·Cin + ci; ok = kg < K. (ky, kx) is the offset of
// the input pixel from the pixel table's (iy0, ix0); wk the column of the weight row that
// multiplies it (kg itself here; see PhaseTaps for the data gradient of a strided convolution).
struct Tap {
    int ky, kx, ci, wk;
    bool ok;
};

__device__ __forceinline__ Tap tap_of(int kg, int kdim, int cin, int k) {
    Tap t;
    t.ok = kg < kdim;
    const int kidx = kg / cin;
    t.ci = kg - kidx * cin;
    t.ky = kidx / k;
    t.kx = kidx - t.ky * k;
    t.wk = kg;
    return t;
}

// ---- the data gradient of a strided convolution, one output phase at a time ----------------
// dx[b, iy, ix, ci] = Σ dy[b, oy, ox, co] · w[co, ky, kx, ci] over iy = s·oy − p + ky (likewise
// x). The pixels of dx with iy ≡ py, ix ≡ px (mod s), the phase (py, px), see only the taps with
// ky ≡ py + p and kx ≡ px + p (mod s): for iy = py + s·a, oy = a + (py + p − ky)/s exactly. So
// each phase is a stride-1 gather from dy with ⌈(k − ky0)/s⌉ × ⌈(k − kx0)/s⌉ taps, and no
// product with an inserted zero is ever formed (the zero-dilated transposed convolution would
// spend (s² − 1)/s² of its products on zeros). One phase's GEMM: M = B·Hp·Wp pixels of dx
// (m = (b·Hp + a)·Wp + c), N = Cin, K = taps·Cout with kg = tap·Cout + co, and
// B[n, kg] = wf[n, k−1−ky, k−1−kx, co], the flipped weights of conv_flip_weights ([Cin, k, k,
// Cout]); A[m, kg] = dy[b, a + (py + p − ky)/s, c + (px + p − kx)/s, co], 0 outside dy.
struct PhaseTaps {
    int s, k, cout;          // stride, kernel size, channels of dy (the forward's Cout)
    int py, px, cy, cx;      // the phase, and py + p, px + p
    int ky0, kx0, ny, nx;    // first tap (ky0 ≡ cy mod s) and tap counts per direction
    int hp, wp;              // rows and columns of dx in this phase
    int kdim;                // ny·nx·Cout: this phase's K
};

// Phase z = py·s + px of the data gradient of a k×k, stride s, padding p convolution whose
// input (dx) is hx × wx and output (dy) has `cout` channels.
__device__ __forceinline__ PhaseTaps phase_taps(int z, int s, int k, int p, int cout, int hx,
                                                int wx) {
    PhaseTaps f;
    f.s = s, f.k = k, f.cout = cout;
    f.py = z / s, f.px = z - (z / s) * s;
    f.cy = f.py + p, f.cx = f.px + p;
    f.ky0 = f.cy % s, f.kx0 = f.cx % s;
    f.ny = f.ky0 < k ? (k - f.ky0 + s - 1) / s : 0;
    f.nx = f.kx0 < k ? (k - f.kx0 + s - 1) / s : 0;
    f.hp = f.py < hx ? (hx - f.py + s - 1) / s : 0;
    f.wp = f.px < wx ? (wx - f.px + s - 1) / s : 0;
    f.kdim = f.ny * f.nx * cout;
    return f;
}

// K column kg of phase f (only called when f.kdim > 0, so f.nx > 0). The dy offsets are exact
// divisions: cy − ky ≡ 0 (mod s).
__device__ __forceinline__ Tap phase_tap(const PhaseTaps& f, int kg) {
    Tap t;
    t.ok = kg < f.kdim;
    const int tap = kg / f.cout;
    t.ci = kg - tap * f.cout;
    const int jy = tap / f.nx, jx = tap - (tap / f.nx) * f.nx;
    const int ky = f.ky0 + f.s * jy, kx = f.kx0 + f.s * jx;
    t.ky = (f.cy - ky) / f.s;
    t.kx = (f.cx - kx) / f.s;
    t.wk = ((f.k - 1 - ky) * f.k + (f.k - 1 - kx)) * f.cout + t.ci;
    return t;
}

// A[m, kg] for the pixel (rowb, iy0, ix0) and tap t: x[b, iy, ix, ci], 0 outside.
__device__ __forceinline__ float gather_a(const float* __restrict__ x, int rowb, int iy0, int ix0,
                                          const Tap& t, int h, int w, int cin) {
    if (rowb < 0 || !t.ok) return 0.0f;
    const int iy = iy0 + t.ky, ix = ix0 + t.kx;
    if (iy < 0 || iy >= h || ix < 0 || ix >= w) return 0.0f;
    return __ldg(x + ((i64)(rowb + iy) * w + ix) * cin + t.ci);
}

// ---- staging VEC consecutive K columns at once (conv_implicit.cu, conv_wgrad.cu) ----------

// Which part of a ROWS × COLS tile a thread of THREADS stages, VEC consecutive columns per load:
// CV threads per row, RS rows per step, PER rows per thread; thread t owns columns
// VEC·(t mod CV).. and rows t / CV + RS·j.
template <int COLS, int ROWS, int THREADS, int VEC>
struct StageMap {
    static_assert(VEC == 1 || VEC == 2 || VEC == 4, "VEC: 1, 2 or 4 floats");
    static constexpr int CV = COLS / VEC;
    static constexpr int RS = THREADS / CV;
    static constexpr int PER = ROWS / RS;
    static_assert(COLS % VEC == 0 && THREADS % CV == 0 && ROWS % RS == 0, "whole rows");
};

// VEC floats from `p` (VEC·4-byte aligned), zero when !ok.
template <int VEC>
__device__ __forceinline__ void load_vec(const float* __restrict__ p, bool ok, float (&v)[VEC]) {
    if constexpr (VEC == 4) {
        const float4 t = ok ? __ldg(reinterpret_cast<const float4*>(p)) : make_float4(0, 0, 0, 0);
        v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
    } else if constexpr (VEC == 2) {
        const float2 t = ok ? __ldg(reinterpret_cast<const float2*>(p)) : make_float2(0, 0);
        v[0] = t.x, v[1] = t.y;
    } else {
        v[0] = ok ? __ldg(p) : 0.0f;
    }
}

// VEC rounded operands to shared memory in one store (dst is VEC·sizeof(T)-byte aligned).
template <class Op, int VEC>
__device__ __forceinline__ void store_vec(typename Op::T* dst, const float (&v)[VEC]) {
    if constexpr (Op::IS_TF32) {
        if constexpr (VEC == 4)
            *reinterpret_cast<float4*>(dst) = make_float4(Op::from_float(v[0]), Op::from_float(v[1]),
                                                          Op::from_float(v[2]), Op::from_float(v[3]));
        else if constexpr (VEC == 2)
            *reinterpret_cast<float2*>(dst) = make_float2(Op::from_float(v[0]), Op::from_float(v[1]));
        else
            dst[0] = Op::from_float(v[0]);
    } else {
        if constexpr (VEC == 1) {
            dst[0] = Op::from_float(v[0]);
        } else {
            unsigned u[VEC / 2];
#pragma unroll
            for (int i = 0; i < VEC / 2; ++i) {
                const __nv_bfloat162 p = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
                u[i] = *reinterpret_cast<const unsigned*>(&p);
            }
            if constexpr (VEC == 4)
                *reinterpret_cast<uint2*>(dst) = make_uint2(u[0], u[1]);
            else
                *reinterpret_cast<unsigned*>(dst) = u[0];
        }
    }
}

// The fused epilogue of the convolution kernels (conv_implicit.cu, conv_halo.cu):
// relu?(acc + bias?[n] + residual?[idx]), as bias_act_inplace (NaN stays NaN). `residual` may
// be the output itself: each element is read before the same thread writes it.
__device__ __forceinline__ float epilogue(float acc, const float* __restrict__ bias,
                                          const float* residual, i64 idx, int n, int relu) {
    float t = acc;
    if (bias != nullptr) t = t + bias[n];
    if (residual != nullptr) t = t + residual[idx];
    return (relu && t < 0.0f) ? 0.0f : t;
}

// The software pipeline of the convolution kernels (conv_implicit.cu, conv_wgrad.cu): chunk
// c + 1 is loaded from global memory into registers (load(c + 1)) while chunk c, staged into
// shared memory by store(), is computed (compute()); 2 barriers per chunk.
template <class Load, class Store, class Compute>
__device__ __forceinline__ void chunk_pipeline(int nchunks, Load load, Store store,
                                               Compute compute) {
    if (nchunks > 0) load(0);
    for (int c = 0; c < nchunks; ++c) {
        __syncthreads();  // every thread is done reading the previous chunk
        store();
        __syncthreads();
        if (c + 1 < nchunks) load(c + 1);  // in flight while this chunk is computed
        compute();
    }
}

// One k step of the simt kernels' 4 × 4 register block: acc[i][j] += a[i]·b[j] (fmaf), a and b
// the thread's four rows and columns, read as one float4 each from k-major shared tiles.
__device__ __forceinline__ void fma_4x4(float (&acc)[4][4], const float* a, const float* b) {
    const float4 a4 = *reinterpret_cast<const float4*>(a);
    const float4 b4 = *reinterpret_cast<const float4*>(b);
    const float av[4] = {a4.x, a4.y, a4.z, a4.w};
    const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
}

// The larger of two byte counts (shared-memory arrays that alias).
__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }
