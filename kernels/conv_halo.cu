// conv_halo.cu: 3×3 stride-1 convolution forward on tensor cores, reading its input from a
// halo tile in shared memory, with the folded-BatchNorm epilogue fused (conv_gather.cuh
// `epilogue`). Host side: src/backend/cuda/conv_halo.rs. CPU twin: src/backend/cpu/conv.rs.
//
// Why: conv_implicit.cu gathers the im2col matrix tile by tile from global memory, so each
// input value is fetched (and rounded) once per tap: 9 times for a 3×3 convolution, 389 MB
// through L1/L2 for one W30 branch-0 convolution at batch 64 whose input is 43 MB. Here a block
// owns a TH × TW patch of output pixels of one image; per chunk of KS input channels (the MMA's
// k: 16 BF16 values, 8 TF32) it stages the (TH + 2) × (TW + 2) input patch once, and every tap
// reads its A fragments straight out of that patch with ldmatrix, each lane pointing at the
// input pixel its fragment row needs. Input read from global memory: (TH+2)(TW+2) / (TH·TW) =
// 1.41× instead of 9×.
//
// ---- geometry ---------------------------------------------------------------------------------
//   x [B, H, W, Cin] NHWC, y [B, Ho, Wo, Cout] NHWC, 3×3 taps, stride 1, padding p ≤ 2,
//   Ho = H + 2p − 2, Wo = W + 2p − 2. GEMM view per block: rows = the 128 patch pixels
//   (r = py·TW + px), columns = output channels n0..n0 + BN, K = 9 taps × Cin.
//   Block: 128 threads (4 warps), patch TH × TW = 8 × 16 at (oy0, ox0) of image b, BN = 32 or
//   64 output channels; grid (B·⌈Ho/8⌉·⌈Wo/16⌉, ⌈Cout/BN⌉). Warp w owns patch rows 32w..32w+31
//   (2 m16 tiles, each one output row of 16 pixels) × BN columns (BN/8 n8 tiles).
// Shared memory (dynamic), every operand row 48 bytes (KS values + padding: any 8 consecutive
// rows fall into 8 distinct 16-byte bank groups, so every ldmatrix phase is conflict-free):
//   halo [2][HP = 10 × 18][48 B]: input pixel (oy0 − p + hy, ox0 − p + hx), channels
//     c0..c0 + KS of chunk c; 0 outside the image and past Cin;
//   wt [2][9][BN][48 B]: w[n0 + n, tap, c0 + kk] from the packed copy (conv_halo_pack_*).
//   BF16: 17.3 + 27.6 KB (BN 32) or 55.3 KB (BN 64); f32 operands (TF32, 3×TF32) the same bytes
//   (KS = 8). After the main loop the same memory holds the C tile [128][BN + 4] f32.
// Per chunk c (one barrier): the halo of chunk c, loaded into registers during chunk c − 1,
//   is rounded and stored (store_vec); wt of chunk c (cp.async, issued during chunk c − 1)
//   is waited for; barrier; wt of chunk c + 1 is issued and the halo of chunk c + 1 loaded into
//   registers; then 9 taps × one k-step: per warp 2 + BN/16 ldmatrix.x4 and 2·BN/8 MMAs
//   (×3 for 3×TF32).
// Fragments by ldmatrix work for both operand widths: an 8 × 8 b16 matrix is 8 rows of 16
//   bytes, i.e. 8 × 8 BF16 or 8 × 4 f32; lane T receives the 32-bit word (T/4, T%4), which is
//   the m16n8k16 BF16 and the m16n8k8 TF32 fragment element alike. A: matrices (rows 0–7,
//   bytes 0–15), (8–15, 0–15), (0–7, 16–31), (8–15, 16–31) = a0..a3; B ([n][k] rows): (n 0–7,
//   bytes 0–15), (0–7, 16–31), (8–15, 0–15), (8–15, 16–31) = b0, b1 of two n8 tiles.
// Epilogue: accumulators → C tile → y = relu?(acc + bias? + residual?), each thread writing
//   consecutive channels of one pixel (coalesced); residual may be y (the data gradient's
//   accumulation dx += conv(dy, flipped w)).
// Deterministic: every output sums its taps and chunks in a fixed order.
//
// ---- the packed weights ---------------------------------------------------------------------
// conv_halo_pack_{bf16,tf32,f32}: wp [⌈Cin/KS⌉][9][Np][KS] (Np = Cout rounded up to BN) from
//   w [Cout][3][3][Cin] (OHWI), rounded as the operand type says (TF32 round-to-nearest; f32 for
//   3×TF32 exact), 0 past Cout and Cin. With flip = 1 it packs the weights of the transposed
//   convolution instead (the data gradient dx = conv(dy, wᵗ, pad 2 − p)): the packed (n, tap,
//   ch) is w[ch, 8 − tap, n] of the original w [Cout'][3][3][Cin'] (n < Cin', ch < Cout'), so
//   no flipped copy is written first.
#include <cuda_bf16.h>

#include "common.cuh"
#include "conv_gather.cuh"
#include "mma_sync.cuh"
#include "wmma_ops.cuh"

namespace halo {

constexpr int THREADS = 128;
constexpr int TH = 8, TW = 16;               // output patch
constexpr int HH = TH + 2, HW = TW + 2;      // input patch (3×3 taps)
constexpr int HP = HH * HW;                  // 180 input pixels
constexpr int ROWB = 48;                     // bytes per operand row in shared memory
constexpr int TAPS = 9;
static_assert(TH * TW == 32 * (THREADS / 32), "each warp owns 32 patch pixels");
static_assert(TW == 16, "an m16 tile is one output row of the patch");

// Values per chunk (the MMA's k) and bytes per value of each operand type.
template <class Op>
struct Chunk {
    static constexpr int KS = Op::IS_TF32 ? 8 : 16;
    static constexpr int BYTES = KS * (int)sizeof(typename Op::T);  // 32: two 16-byte halves
    static_assert(BYTES == 32, "a chunk row is 32 bytes");
};

constexpr int HALO_BYTES = 2 * HP * ROWB;  // both stages

// ---- packing ----------------------------------------------------------------------------------
template <class Op>
__device__ __forceinline__ void pack(const float* __restrict__ w, int cout, int cin, int npad,
                                     int flip, typename Op::T* __restrict__ wp, i64 total) {
    constexpr int KS = Chunk<Op>::KS;
    GRID_STRIDE(e, total) {
        // e = ((c·9 + tap)·Np + n)·KS + kk
        const int kk = (int)(e % KS);
        i64 r = e / KS;
        const int n = (int)(r % npad);
        r /= npad;
        const int tap = (int)(r % TAPS);
        const int ch = (int)(r / TAPS) * KS + kk;
        float v = 0.0f;
        if (!flip && n < cout && ch < cin) v = __ldg(w + ((i64)n * TAPS + tap) * cin + ch);
        // Transposed: this conv's (cout, cin) are the original's (cin, cout).
        if (flip && n < cout && ch < cin) v = __ldg(w + ((i64)ch * TAPS + (TAPS - 1 - tap)) * cout + n);
        wp[e] = Op::from_float(v);
    }
}

// ---- the convolution -------------------------------------------------------------------------
template <class Op, int BN, int VEC>
__device__ __forceinline__ void conv(const float* __restrict__ x,
                                     const typename Op::T* __restrict__ wp,
                                     const float* __restrict__ bias, const float* residual,
                                     float* y, int h, int w, int cin, int ho, int wo, int cout,
                                     int pad, int npad, int relu) {
    typedef typename Op::T T;
    constexpr int KS = Chunk<Op>::KS;
    constexpr int NT = BN / 8;                 // n8 tiles per warp
    constexpr int VPP = KS / VEC;              // staging vectors per halo pixel
    constexpr int HPER = (HP * VPP + THREADS - 1) / THREADS;  // halo vectors per thread
    constexpr int LDC = BN + 4;                // C tile pitch (floats)
    static_assert(BN == 32 || BN == 64, "BN: 32 or 64");
    static_assert(KS % VEC == 0, "a staging vector stays inside one chunk");
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* halo_s = smem;                    // [2][HP][ROWB]
    unsigned char* wt_s = smem + HALO_BYTES;         // [2][TAPS][BN][ROWB]
    float* cs = reinterpret_cast<float*>(smem);      // [TH·TW][LDC], after the main loop

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int tiles_x = (wo + TW - 1) / TW, tiles_y = (ho + TH - 1) / TH;
    const int txi = blockIdx.x % tiles_x, tyb = blockIdx.x / tiles_x;
    const int b = tyb / tiles_y, oy0 = (tyb % tiles_y) * TH, ox0 = txi * TW;
    const int n0 = blockIdx.y * BN;
    const int nchunks = (cin + KS - 1) / KS;

    // ---- staging --------------------------------------------------------------------------
    float hreg[HPER][VEC];
    auto load_halo = [&](int c) {
        const int c0 = c * KS;
#pragma unroll
        for (int j = 0; j < HPER; ++j) {
            const int v = tid + j * THREADS;
            const int p = v / VPP, kk = (v - p * VPP) * VEC;
            const int hy = p / HW, hx = p - hy * HW;
            const int iy = oy0 - pad + hy, ix = ox0 - pad + hx;
            const bool ok = v < HP * VPP && iy >= 0 && iy < h && ix >= 0 && ix < w && c0 + kk < cin;
            load_vec<VEC>(x + (ok ? (((i64)b * h + iy) * w + ix) * cin + c0 + kk : 0), ok, hreg[j]);
        }
    };
    auto store_halo = [&](int stage) {
        unsigned char* dst = halo_s + stage * HP * ROWB;
#pragma unroll
        for (int j = 0; j < HPER; ++j) {
            const int v = tid + j * THREADS;
            if (v >= HP * VPP) continue;
            const int p = v / VPP, kk = (v - p * VPP) * VEC;
            store_vec<Op, VEC>(reinterpret_cast<T*>(dst + p * ROWB) + kk, hreg[j]);
        }
    };
    // The chunk's weights: TAPS × BN rows of 32 bytes, two cp.async of 16 bytes each.
    auto issue_wt = [&](int c, int stage) {
        unsigned char* dst = wt_s + stage * TAPS * BN * ROWB;
        const T* src = wp + ((i64)c * TAPS * npad + n0) * KS;
        for (int q = tid; q < TAPS * BN * 2; q += THREADS) {
            const int row = q >> 1, half = q & 1;  // row = tap·BN + n
            const int tap = row / BN, n = row - tap * BN;
            cp_async16(dst + row * ROWB + 16 * half,
                       reinterpret_cast<const unsigned char*>(src + ((i64)tap * npad + n) * KS) +
                           16 * half);
        }
    };

    // ---- fragment addresses ----------------------------------------------------------------
    // A: lane l reads row (l & 7) + 8·((l >> 3) & 1) of its m16 tile, bytes 16·(l >> 4)..
    // The tile's pixel (py, px) at tap (ky, kx) is halo pixel (py + ky)·HW + px + kx.
    const int mi = lane >> 3;
    int a_off[2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
        const int r = warp * 32 + mt * 16 + (lane & 7) + 8 * (mi & 1);
        const int py = r / TW, px = r - py * TW;
        a_off[mt] = (py * HW + px) * ROWB + 16 * (mi >> 1);
    }
    // B: lane l reads row n = (l & 7) + 8·(l >> 4) of its 16-column pair, bytes 16·(mi & 1)...
    const int b_off = ((lane & 7) + 8 * (mi >> 1)) * ROWB + 16 * (mi & 1);

    float acc[2][NT][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;

    if (nchunks > 0) {
        load_halo(0);
        issue_wt(0, 0);
    }
    cp_async_commit();
    for (int c = 0; c < nchunks; ++c) {
        const int st = c & 1;
        store_halo(st);
        cp_async_wait<0>();  // this chunk's weights
        __syncthreads();     // halo and weights of chunk c visible; everyone is done with c − 1
        if (c + 1 < nchunks) {
            issue_wt(c + 1, st ^ 1);
            load_halo(c + 1);  // in flight while chunk c is computed
        }
        cp_async_commit();
        const unsigned char* hs = halo_s + st * HP * ROWB;
        const unsigned char* ws = wt_s + st * TAPS * BN * ROWB;
#pragma unroll 1
        for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
            for (int kx = 0; kx < 3; ++kx) {
                const int shift = (ky * HW + kx) * ROWB;
                unsigned a[2][4];
                ldsm<4, false>(a[0], hs + a_off[0] + shift);
                ldsm<4, false>(a[1], hs + a_off[1] + shift);
                [[maybe_unused]] unsigned al[2][4];
                if constexpr (Op::SPLIT) {
                    split_frag(a[0], a[0], al[0]);
                    split_frag(a[1], a[1], al[1]);
                }
                const unsigned char* wtap = ws + (ky * 3 + kx) * BN * ROWB + b_off;
#pragma unroll
                for (int q = 0; q < NT / 2; ++q) {
                    unsigned bb[4];
                    ldsm<4, false>(bb, wtap + q * 16 * ROWB);
#pragma unroll
                    for (int z = 0; z < 2; ++z) {
                        const int nt = 2 * q + z;
                        const unsigned b0 = bb[2 * z], b1 = bb[2 * z + 1];
#pragma unroll
                        for (int mt = 0; mt < 2; ++mt) {
                            if constexpr (Op::SPLIT) {
                                unsigned bh0, bh1, bl0, bl1;
                                split_tf32(__uint_as_float(b0), bh0, bl0);
                                split_tf32(__uint_as_float(b1), bh1, bl1);
                                mma_x3(acc[mt][nt], a[mt], al[mt], bh0, bh1, bl0, bl1);
                            } else if constexpr (Op::IS_TF32) {
                                mma_tf32(acc[mt][nt], a[mt], b0, b1);
                            } else {
                                mma_bf16(acc[mt][nt], a[mt], b0, b1);
                            }
                        }
                    }
                }
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the C tile aliases the operands: everyone is done with the last chunk

    // ---- epilogue ---------------------------------------------------------------------------
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = warp * 32 + mt * 16 + g + 8 * (e >> 1);
                cs[r * LDC + nt * 8 + 2 * t4 + (e & 1)] = acc[mt][nt][e];
            }
    __syncthreads();
    for (int e = tid; e < TH * TW * BN; e += THREADS) {
        const int r = e / BN, nl = e - r * BN;
        const int py = r / TW, px = r - py * TW;
        const int oy = oy0 + py, ox = ox0 + px, n = n0 + nl;
        if (oy < ho && ox < wo && n < cout) {
            const i64 idx = (((i64)b * ho + oy) * wo + ox) * cout + n;
            y[idx] = epilogue(cs[r * LDC + nl], bias, residual, idx, n, relu);
        }
    }
}

}  // namespace halo

// wp [⌈Cin/KS⌉][9][Np][KS] from w (see the header; `total` = its element count).
extern "C" __global__ void conv_halo_pack_bf16(const float* __restrict__ w, int cout, int cin, int npad, int flip, __nv_bfloat16* __restrict__ wp, i64 total) {
    halo::pack<OpBf16>(w, cout, cin, npad, flip, wp, total);
}
extern "C" __global__ void conv_halo_pack_tf32(const float* __restrict__ w, int cout, int cin, int npad, int flip, float* __restrict__ wp, i64 total) {
    halo::pack<OpTf32>(w, cout, cin, npad, flip, wp, total);
}
extern "C" __global__ void conv_halo_pack_f32(const float* __restrict__ w, int cout, int cin, int npad, int flip, float* __restrict__ wp, i64 total) {
    halo::pack<OpTf32x3>(w, cout, cin, npad, flip, wp, total);
}

// conv_halo_{bf16,tf32,x3}_n{32,64}_v{2,4}: operand type (x3: 3×TF32), BN, staging vector
// (VEC | Cin, x VEC·4-byte aligned; odd channel counts stay on conv_implicit.cu, whose
// one-float staging costs 231–255 registers here). Dynamic shared memory: conv_halo.rs
// `smem_bytes`.
extern "C" __global__ void __launch_bounds__(128) conv_halo_bf16_n32_v2(const float* __restrict__ x, const __nv_bfloat16* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpBf16, 32, 2>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
extern "C" __global__ void __launch_bounds__(128) conv_halo_bf16_n32_v4(const float* __restrict__ x, const __nv_bfloat16* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpBf16, 32, 4>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
extern "C" __global__ void __launch_bounds__(128) conv_halo_bf16_n64_v2(const float* __restrict__ x, const __nv_bfloat16* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpBf16, 64, 2>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
extern "C" __global__ void __launch_bounds__(128) conv_halo_bf16_n64_v4(const float* __restrict__ x, const __nv_bfloat16* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpBf16, 64, 4>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
extern "C" __global__ void __launch_bounds__(128) conv_halo_tf32_n32_v2(const float* __restrict__ x, const float* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpTf32, 32, 2>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
extern "C" __global__ void __launch_bounds__(128) conv_halo_tf32_n32_v4(const float* __restrict__ x, const float* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpTf32, 32, 4>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
extern "C" __global__ void __launch_bounds__(128) conv_halo_tf32_n64_v2(const float* __restrict__ x, const float* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpTf32, 64, 2>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
extern "C" __global__ void __launch_bounds__(128) conv_halo_tf32_n64_v4(const float* __restrict__ x, const float* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpTf32, 64, 4>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
extern "C" __global__ void __launch_bounds__(128) conv_halo_x3_n32_v2(const float* __restrict__ x, const float* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpTf32x3, 32, 2>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
extern "C" __global__ void __launch_bounds__(128) conv_halo_x3_n32_v4(const float* __restrict__ x, const float* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpTf32x3, 32, 4>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
extern "C" __global__ void __launch_bounds__(128) conv_halo_x3_n64_v2(const float* __restrict__ x, const float* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpTf32x3, 64, 2>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
extern "C" __global__ void __launch_bounds__(128) conv_halo_x3_n64_v4(const float* __restrict__ x, const float* __restrict__ wp, const float* __restrict__ bias, const float* residual, float* y, int h, int w, int cin, int ho, int wo, int cout, int pad, int npad, int relu) {
    halo::conv<OpTf32x3, 64, 4>(x, wp, bias, residual, y, h, w, cin, ho, wo, cout, pad, npad, relu);
}
