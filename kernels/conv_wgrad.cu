// conv_wgrad.cu: the weight gradient of a k×k convolution as an implicit GEMM on tensor cores
// (TF32 / BF16 operands, f32 accumulation) or, for Fp32, exact f32 on the CUDA cores (the simt
// kernels at the end), split over the output pixels. Host side: src/backend/cuda/conv_wgrad.rs.
// Replaces im2col + a cuBLAS GEMM over the written column matrix (k²/s² times the input,
// written and read back through DRAM).
//
// ---- the GEMM view ---------------------------------------------------------------------------
//   dw[co, kg] += Σ_m dy[m, co] · A[m, kg],   m = (b·Ho + oy)·Wo + ox over all B·Ho·Wo pixels,
//   A the im2col matrix (conv_gather.cuh), gathered from x while it is staged: a GEMM
//   C [Cout × K] = dyᵀ [Cout × M] · A [M × K] whose reduction runs over the pixels. Outputs are
//   few (Cout·K, a few thousand to half a million) and M is large (360 000 at 75×75, batch 64),
//   so the pixels are split into `splits` contiguous slices of `mper` (a multiple of BK): block
//   (x, y, z) computes the 64 × 64 output tile (co0 = 64·x, kg0 = 64·y) over slice z and writes
//   it to part [splits][Cout][K]; conv_wgrad_reduce then adds the slices into dw in ascending z.
//   Fixed slices and a fixed order: deterministic run to run (for a given shape).
//
// ---- conv_wgrad_{tf32,bf16} ------------------------------------------------------------------
//   Block 128 threads (4 warps, 2 × 2), output tile BM × BN = 64 (co) × 64 (kg), chunks of
//   BK = 32 pixels; warp (wm, wn) owns the 32 × 32 sub-tile (32·wm, 32·wn) as 2 × 2 WMMA
//   accumulators. Staged tiles, pixel-major (the chunk's pixel is the WMMA k):
//     Ds [BK][LDD]: Ds[r][co] = dy[m0 + r, co0 + co], read as the col-major matrix_a (co × m);
//     As [BK][LDB]: As[r][kg] = A[m0 + r, kg0 + kg], the row-major matrix_b (m × kg).
//   LDD = LDB = 72 (BF16, 144-byte rows) / 68 (TF32, 272-byte rows): WMMA's pitch rules, and
//   every fragment pointer 32-byte aligned. Staging by VEC ∈ {1, 2, 4} consecutive columns
//   (conv_wgrad_{tf32,bf16}{,_v2,_v4}; the host takes the widest VEC dividing Cin and Cout with
//   x and dy VEC·4-byte aligned): thread t owns columns VEC·(t mod 64/VEC).. of both tiles (its
//   kg's tap decoded once per block) and pixels t / (64/VEC) + (2·VEC)·j of each chunk, walked
//   from the chunk's first pixel without divisions; consecutive threads read consecutive
//   channels of dy (co) and of x (ci): coalesced, one float2/float4 load per group. Software pipeline as conv_implicit.cu: chunk c + 1 is
//   gathered into registers while chunk c is computed; 2 barriers per chunk. Epilogue through a
//   staging tile Cs [64][68] f32 aliasing Ds/As, masked to Cout × K.
//   Shared memory: max(2 × 32 × 72 × 2, 64 × 68 × 4) = 17.4 KB (BF16), 17.4 KB (TF32).
#include <cuda_bf16.h>
#include <mma.h>

#include "common.cuh"
#include "conv_gather.cuh"
#include "wmma_ops.cuh"

using namespace nvcuda;

namespace wgrad {
constexpr int BM = 64, BN = 64, BK = 32, THREADS = 128;
constexpr int LDC = BN + 4;  // staging tile pitch (floats)
static_assert(BM == BN && BN == 64 && THREADS == 128, "4 warps of 32 × 32");

// Staging of VEC consecutive columns per load (VEC | Cin and VEC | Cout, x and dy VEC·4-byte
// aligned: the host checks): BK pixel rows of BN (= BM) columns, for the dy and the A tiles.
template <int VEC>
using Stage = StageMap<BN, BK, THREADS, VEC>;

template <class Op>
struct Pitch {
    // WMMA: ldm a multiple of 8 (16-bit) / 4 (32-bit) elements; 16-row k-steps 32-byte aligned.
    static constexpr int LD = Op::IS_TF32 ? BN + 4 : BN + 8;
};

// A staging walk's current output pixel: image, row, column.
struct Pixel {
    int b, oy, ox;
};

// One thread's share of a chunk (StageMap S): from output pixel m on, every S::RS-th pixel
// below mend, VEC channels co.. of dy into rd and VEC columns of the im2col matrix (tap, from
// x) into ra; zeros where out of range. The pixels are walked with a carry loop, no divisions
// after the first.
template <class S, int VEC>
__device__ __forceinline__ void stage_pixels(const float* __restrict__ x,
                                             const float* __restrict__ dy, int m, int mend,
                                             int co, bool co_ok, const Tap& tap, int h, int w,
                                             int cin, int ho, int wo, int cout, int stride,
                                             int pad, float (&rd)[S::PER][VEC],
                                             float (&ra)[S::PER][VEC]) {
    Pixel p;
    {
        const int q = m / wo;
        p.ox = m - q * wo;
        p.b = q / ho;
        p.oy = q - p.b * ho;
    }
#pragma unroll
    for (int j = 0; j < S::PER; ++j) {
        const bool ok = m < mend;
        const bool okd = ok && co_ok;
        load_vec<VEC>(dy + (okd ? (i64)m * cout + co : 0), okd, rd[j]);
        const int iy = p.oy * stride - pad + tap.ky, ix = p.ox * stride - pad + tap.kx;
        const bool oka = ok && tap.ok && iy >= 0 && iy < h && ix >= 0 && ix < w;
        load_vec<VEC>(x + (oka ? ((i64)(p.b * h + iy) * w + ix) * cin + tap.ci : 0), oka, ra[j]);
        m += S::RS;
        p.ox += S::RS;
        while (p.ox >= wo) {
            p.ox -= wo;
            if (++p.oy == ho) {
                p.oy = 0;
                ++p.b;
            }
        }
    }
}

template <class Op, int VEC>
__device__ __forceinline__ void wgrad_tc(const float* __restrict__ x, const float* __restrict__ dy,
                                         float* __restrict__ part, int mtotal, int h, int w,
                                         int cin, int ho, int wo, int cout, int k, int stride,
                                         int pad, int mper) {
    typedef typename Op::T T;
    constexpr int LD = Pitch<Op>::LD;
    constexpr int TILE_BYTES = BK * LD * (int)sizeof(T);
    constexpr int C_BYTES = BM * LDC * (int)sizeof(float);
    static_assert((Op::K * LD * (int)sizeof(T)) % 32 == 0, "k-step rows 32-byte aligned");
    static_assert(TILE_BYTES % 32 == 0, "As 32-byte aligned");
    __shared__ __align__(128) unsigned char smem[cmax(2 * TILE_BYTES, C_BYTES)];
    T* Ds = reinterpret_cast<T*>(smem);                // [BK][LD]: dy, pixel-major
    T* As = reinterpret_cast<T*>(smem + TILE_BYTES);   // [BK][LD]: im2col, pixel-major
    float* Cs = reinterpret_cast<float*>(smem);        // [BM][LDC], after the main loop

    const int tid = threadIdx.x, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int kdim = k * k * cin;
    const int co0 = blockIdx.x * BM, kg0 = blockIdx.y * BN;
    const int mbeg = blockIdx.z * mper, mend = min(mtotal, mbeg + mper);

    // Staging: columns cl.. cl + VEC − 1 of both tiles, pixels r0 + RS·j of each chunk.
    typedef Stage<VEC> S;
    const int cl = (tid % S::CV) * VEC, r0 = tid / S::CV;
    const int co = co0 + cl, kg = kg0 + cl;
    const Tap tap = tap_of(kg, kdim, cin, k);
    const bool co_ok = co < cout;  // VEC | Cout: the whole group

    Acc32<Op> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    float rd[S::PER][VEC], ra[S::PER][VEC];
    auto load = [&](int m0) {
        stage_pixels<S, VEC>(x, dy, m0 + r0, mend, co, co_ok, tap, h, w, cin, ho, wo, cout,
                             stride, pad, rd, ra);
    };

    chunk_pipeline(
        mend > mbeg ? (mend - mbeg + BK - 1) / BK : 0, [&](int c) { load(mbeg + c * BK); },
        [&] {
#pragma unroll
            for (int j = 0; j < S::PER; ++j) {
                store_vec<Op, VEC>(Ds + (r0 + S::RS * j) * LD + cl, rd[j]);
                store_vec<Op, VEC>(As + (r0 + S::RS * j) * LD + cl, ra[j]);
            }
        },
        [&] {
#pragma unroll
            for (int kk = 0; kk < BK; kk += Op::K)
                mma_32x32<Op, wmma::col_major, wmma::row_major>(
                    acc, Ds + kk * LD + wm * 32, 16, LD, As + kk * LD + wn * 32, 16, LD);
        });

    __syncthreads();  // Cs aliases Ds/As: every warp is done with its last chunk
    store_32x32<Op>(Cs + wm * 32 * LDC + wn * 32, LDC, acc);
    __syncthreads();
    float* dst = part + (i64)blockIdx.z * cout * kdim;
    for (int e = tid; e < BM * BN; e += THREADS) {
        const int ml = e / BN, nl = e - (e / BN) * BN;
        const int o = co0 + ml, g = kg0 + nl;
        if (o < cout && g < kdim) dst[(i64)o * kdim + g] = Cs[ml * LDC + nl];
    }
}
// ---- simt: exact f32 (precision Fp32) ------------------------------------------------------
// The same slices, tiles and staging walk on the CUDA cores: 256 threads, chunks of BK_SIMT =
// 16 pixels, each thread a 4 × 4 register block (co rows 4·ty.., kg columns 4·tx..,
// tx = t mod 16, ty = t / 16). Ds / As [16][68] f32, pixel-major: per pixel one float4 of Ds
// (broadcast within a half-warp) and one of As, 16 fmaf. Each output sums its slice's pixels in
// ascending order: deterministic, and the reduction order the tc kernels use across slices.
constexpr int BK_SIMT = 16, THREADS_SIMT = 256, LD_SIMT = BN + 4;

template <int VEC>
__device__ __forceinline__ void wgrad_simt(const float* __restrict__ x,
                                           const float* __restrict__ dy, float* __restrict__ part,
                                           int mtotal, int h, int w, int cin, int ho, int wo,
                                           int cout, int k, int stride, int pad, int mper) {
    __shared__ __align__(16) float Ds[BK_SIMT][LD_SIMT];  // dy, pixel-major
    __shared__ __align__(16) float As[BK_SIMT][LD_SIMT];  // im2col, pixel-major

    const int tid = threadIdx.x;
    const int kdim = k * k * cin;
    const int co0 = blockIdx.x * BM, kg0 = blockIdx.y * BN;
    const int mbeg = blockIdx.z * mper, mend = min(mtotal, mbeg + mper);

    typedef StageMap<BN, BK_SIMT, THREADS_SIMT, VEC> S;
    const int cl = (tid % S::CV) * VEC, r0 = tid / S::CV;
    const int co = co0 + cl, kg = kg0 + cl;
    const Tap tap = tap_of(kg, kdim, cin, k);
    const bool co_ok = co < cout;  // VEC | Cout: the whole group
    const int tx = tid % 16, ty = tid / 16;

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    float rd[S::PER][VEC], ra[S::PER][VEC];
    auto load = [&](int m0) {
        stage_pixels<S, VEC>(x, dy, m0 + r0, mend, co, co_ok, tap, h, w, cin, ho, wo, cout,
                             stride, pad, rd, ra);
    };

    chunk_pipeline(
        mend > mbeg ? (mend - mbeg + BK_SIMT - 1) / BK_SIMT : 0,
        [&](int c) { load(mbeg + c * BK_SIMT); },
        [&] {
#pragma unroll
            for (int j = 0; j < S::PER; ++j)
#pragma unroll
                for (int v = 0; v < VEC; ++v) {
                    Ds[r0 + S::RS * j][cl + v] = rd[j][v];
                    As[r0 + S::RS * j][cl + v] = ra[j][v];
                }
        },
        [&] {
#pragma unroll
            for (int kk = 0; kk < BK_SIMT; ++kk) fma_4x4(acc, &Ds[kk][ty * 4], &As[kk][tx * 4]);
        });

    float* dst = part + (i64)blockIdx.z * cout * kdim;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int o = co0 + ty * 4 + i;
        if (o >= cout) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int g = kg0 + tx * 4 + j;
            if (g < kdim) dst[(i64)o * kdim + g] = acc[i][j];
        }
    }
}
}  // namespace wgrad

// part: [splits][Cout][K] (K = k·k·Cin); grid (⌈Cout/64⌉, ⌈K/64⌉, splits), 128 threads.
// _v2 / _v4: VEC = 2 / 4.
extern "C" __global__ void __launch_bounds__(128) conv_wgrad_tf32(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ part, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int mper) {
    wgrad::wgrad_tc<OpTf32, 1>(x, dy, part, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, mper);
}

extern "C" __global__ void __launch_bounds__(128) conv_wgrad_tf32_v2(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ part, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int mper) {
    wgrad::wgrad_tc<OpTf32, 2>(x, dy, part, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, mper);
}

extern "C" __global__ void __launch_bounds__(128) conv_wgrad_tf32_v4(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ part, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int mper) {
    wgrad::wgrad_tc<OpTf32, 4>(x, dy, part, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, mper);
}

extern "C" __global__ void __launch_bounds__(128) conv_wgrad_bf16(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ part, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int mper) {
    wgrad::wgrad_tc<OpBf16, 1>(x, dy, part, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, mper);
}

extern "C" __global__ void __launch_bounds__(128) conv_wgrad_bf16_v2(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ part, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int mper) {
    wgrad::wgrad_tc<OpBf16, 2>(x, dy, part, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, mper);
}

extern "C" __global__ void __launch_bounds__(128) conv_wgrad_bf16_v4(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ part, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int mper) {
    wgrad::wgrad_tc<OpBf16, 4>(x, dy, part, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, mper);
}

// The exact-f32 twins (256 threads, the same grid and part layout).
extern "C" __global__ void __launch_bounds__(256) conv_wgrad_simt(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ part, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int mper) {
    wgrad::wgrad_simt<1>(x, dy, part, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, mper);
}

extern "C" __global__ void __launch_bounds__(256) conv_wgrad_simt_v2(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ part, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int mper) {
    wgrad::wgrad_simt<2>(x, dy, part, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, mper);
}

extern "C" __global__ void __launch_bounds__(256) conv_wgrad_simt_v4(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ part, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int mper) {
    wgrad::wgrad_simt<4>(x, dy, part, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, mper);
}

// dw[i] += Σ_{z < splits} part[z·len + i], z ascending (one thread per element; grid-stride).
extern "C" __global__ void conv_wgrad_reduce(const float* __restrict__ part, float* __restrict__ dw, int splits, i64 len) {
    GRID_STRIDE(i, len) {
        float s = 0.0f;
        for (int z = 0; z < splits; ++z) s += part[(i64)z * len + i];
        dw[i] += s;
    }
}
