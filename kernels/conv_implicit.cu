// conv_implicit.cu: implicit-GEMM convolution forward over channels-last activations, with the
// folded-BatchNorm epilogue fused in. Host side: src/backend/cuda/conv_implicit.rs (dispatch,
// fallback to im2col + cuBLAS). Index arithmetic mirrored by reference/emulate_conv_implicit.py.
//
// ---- the GEMM view ---------------------------------------------------------------------------
//   x [B, H, W, Cin] (NHWC), w [Cout, k, k, Cin] (OHWI), y [B, Ho, Wo, Cout] (NHWC).
//   M = B·Ho·Wo output pixels (m = (b·Ho + oy)·Wo + ox), N = Cout, K = k·k·Cin with the K index
//   kg = (ky·k + kx)·Cin + ci, the order of OHWI: w is a row-major [N, K] matrix and y a
//   row-major [M, N] matrix, y = A·wᵀ with
//     A[m, kg] = x[b, oy·s + ky − p, ox·s + kx − p, ci]   (0 outside the image).
//   A is never materialised: each K-chunk of a block's A tile is gathered from x while it is
//   staged into shared memory. im2col wrote and re-read A (k²/s² times the input) through DRAM;
//   here x is read from L2/L1 (neighbouring output pixels share input pixels) and A only exists
//   tile by tile in shared memory.
//   Epilogue (fused): y = relu?(acc + bias?[n] + residual?[m, n]) with relu(t) = t < 0 ? 0 : t
//   (NaN stays NaN), in the order of kernels/elementwise.cu `bias_act_inplace`. residual may be
//   y itself (each element is read before it is written, by the same thread): the backward of
//   a stride-1 convolution uses that to accumulate dx += conv(dy, flipped w) (conv.cu
//   `conv_flip_weights`, src/backend/cuda/conv_implicit.rs `conv2d_backward`).
//
// ---- shared by both versions -------------------------------------------------------------------
// Per block, a pixel table in shared memory (BM entries): rowb = b·H (−1 past M), iy0 = oy·s − p,
// ix0 = ox·s − p, so the gather needs no division by Ho/Wo inside the K loop. Staging mapping:
// thread t owns ONE K column kl = t mod BK of the chunk and the rows r0 + (T/BK)·j, r0 = t / BK;
// its tap (ky, kx, ci) is decoded once per chunk, and consecutive threads read consecutive ci of
// one pixel (coalesced when Cin ≥ BK; any Cin works, e.g. the stem's 3). The same mapping stages
// the weight tile: consecutive threads read consecutive kg of one output channel.
// Software pipeline (both versions): chunk c + 1 is loaded from global memory into registers
// while chunk c is computed from shared memory; 2 barriers per chunk. Every tail (M, N, K not
// multiples of the tile) is handled by zero-filling the staged tiles and masking the stores.
// 64-bit arithmetic for every global offset (((b·H + iy)·W + ix)·Cin + ci, m·Cout + n, n·K + kg).
//
// ---- simt (Fp32): exact f32 FMA, f32 accumulation ----------------------------------------------
//   Block 256 threads, output tile BM × BN = 64 × 64, K-chunks of BK = 16, each thread a 4 × 4
//   register block (rows 4·ty.., columns 4·tx.., tx = t mod 16, ty = t / 16). A and B tiles are
//   stored k-major (As[BK][BM + 4], Bs[BK][BN + 4]) so the inner loop reads one float4 of A
//   (broadcast within a half-warp) and one float4 of B per k: 2 LDS.128 per 16 FMA. Each output
//   sums its K terms in ascending kg order with fmaf: deterministic. Grid (⌈M/64⌉, ⌈N/64⌉).
//   Shared memory: 2 × 16 × 68 × 4 + 768 = 9.5 KB (static).
//
// ---- tc (Tf32, Bf16): WMMA tensor cores, f32 accumulation ----------------------------------------
//   Block 128 threads (4 warps, 2 × 2), tile BM × BN = 64 × 64, BK = 32; warp (wm, wn) owns the
//   32 × 32 sub-tile at (32·wm, 32·wn) as 2 × 2 accumulator fragments 16 × 16. Operands are
//   rounded when staged: TF32 by wmma::__float_to_tf32 (round to nearest, stored as f32),
//   BF16 by __float2bfloat16_rn. As [BM][LDA] row-major (m × k), Bs [BN][LDA] (n × k, read as a
//   col-major K × N matrix_b); LDA = 36 floats (TF32) / 40 bf16 (BF16): multiples of 16 bytes
//   as WMMA requires, rows offset by 4 banks. wmma k-steps: 4 × k8 (TF32) / 2 × k16 (BF16).
//   Staging by VEC ∈ {1, 2, 4} consecutive K columns per load (conv_implicit_{tf32,bf16}{,_v2,
//   _v4}; the host takes the widest VEC with VEC | Cin and x, w VEC·4-byte aligned): VEC | Cin
//   keeps the VEC columns in one tap, so each is one float2/float4 load of x (and of w) and one
//   8-, 4- or 2-byte shared store, with the tap decoded once per VEC columns. Thread t owns
//   columns VEC·(t mod 32/VEC).. and rows t / (32/VEC) + (128·VEC/32)·j.
//   Epilogue: the accumulators go through a shared staging tile Cs [BM][BN + 4] f32 that aliases
//   As/Bs (a barrier first), then each thread writes elements t, t + 128, … of the 64 × 64 tile
//   (a warp writes 32 consecutive channels of one pixel: coalesced) with the fused epilogue.
//   Shared memory: max(128 × 36 × 4, 64 × 68 × 4) + 768 = 19.2 KB (TF32), 18.2 KB (BF16).
//   Grid (⌈M/64⌉, ⌈N/64⌉). Deterministic (fixed k order per fragment).
//
// ---- conv_phase_*: the data gradient of a strided convolution -----------------------------------
//   The same kernels (template flag PHASE) on another GEMM: dx += Σ dy ⊛ w split by the phase
//   (iy mod s, ix mod s) of the dx pixel, one phase per blockIdx.z, each phase a stride-1
//   gather from dy over only the taps that reach it (conv_gather.cuh `PhaseTaps`: M = B·Hp·Wp
//   pixels of that phase, K = taps·Cout, the flipped weights of conv.cu `conv_flip_weights`).
//   The pixel table also holds each row's dx pixel index, where the epilogue stores (residual =
//   dx accumulates). This replaces cuBLAS dcol = dy · w and `col2im_add` for stride 2: no column
//   matrix (k² values per input pixel) goes through DRAM. Grid (⌈B·⌈H/s⌉·⌈W/s⌉ / 64⌉,
//   ⌈Cin/64⌉, s²); the blocks past a smaller phase's M return at once.
#include <cuda_bf16.h>
#include <mma.h>

#include "common.cuh"
#include "conv_gather.cuh"
#include "wmma_ops.cuh"

using namespace nvcuda;

// ---- shared helpers -------------------------------------------------------------------------

// The pixel table of the block's BM output rows starting at m0 (see the header).
template <int BM>
__device__ __forceinline__ void pixel_table(int m0, int mtotal, int ho, int wo, int h, int stride,
                                            int pad, int* rowb, int* iy0, int* ix0) {
    for (int i = threadIdx.x; i < BM; i += blockDim.x) {
        const int m = m0 + i;
        if (m < mtotal) {
            const int ox = m % wo;
            const int t = m / wo;
            const int oy = t % ho;
            const int b = t / ho;
            rowb[i] = b * h;
            iy0[i] = oy * stride - pad;
            ix0[i] = ox * stride - pad;
        } else {
            rowb[i] = -1;
            iy0[i] = 0;
            ix0[i] = 0;
        }
    }
}

// The pixel table of phase f's BM pixels of dx starting at m0 (conv_gather.cuh, PhaseTaps):
// rowb = b·Ho (dy's rows), (iy0, ix0) = (a, c), and out = the pixel's index in dx,
// (b·H + py + s·a)·W + px + s·c.
template <int BM>
__device__ __forceinline__ void phase_table(int m0, int mtotal, const PhaseTaps& f, int hdy,
                                            int hx, int wx, int* rowb, int* iy0, int* ix0,
                                            int* out) {
    for (int i = threadIdx.x; i < BM; i += blockDim.x) {
        const int m = m0 + i;
        if (m < mtotal) {
            const int c = m % f.wp;
            const int t = m / f.wp;
            const int a = t % f.hp;
            const int b = t / f.hp;
            rowb[i] = b * hdy;
            iy0[i] = a;
            ix0[i] = c;
            out[i] = (b * hx + f.py + f.s * a) * wx + f.px + f.s * c;
        } else {
            rowb[i] = -1;
            iy0[i] = 0;
            ix0[i] = 0;
            out[i] = 0;
        }
    }
}

// Where a block's GEMM comes from. Forward (PHASE false): the arguments as named, M = mtotal.
// Data gradient of a strided convolution (PHASE true, the `conv_phase_*` kernels): x = dy,
// wt = the flipped weights, (h, w, cin) = dy's, (ho, wo, cout) = dx's, `mtotal` = the batch,
// and blockIdx.z the phase; M = B·Hp·Wp of that phase. Fills the pixel table (out: the PHASE
// table of dx pixel indices) and returns this block's (M, K); M ≤ m0 means nothing to do.
template <bool PHASE, int BM>
__device__ __forceinline__ int2 block_geometry(int m0, int mtotal, int h, int cin, int ho, int wo,
                                               int k, int stride, int pad, PhaseTaps& f,
                                               int* rowb, int* iy0, int* ix0, int* out) {
    if constexpr (PHASE) {
        f = phase_taps(blockIdx.z, stride, k, pad, cin, ho, wo);
        const int mt = mtotal * f.hp * f.wp;
        if (m0 < mt) phase_table<BM>(m0, mt, f, h, ho, wo, rowb, iy0, ix0, out);
        return make_int2(mt, f.kdim);
    } else {
        pixel_table<BM>(m0, mtotal, ho, wo, h, stride, pad, rowb, iy0, ix0);
        return make_int2(mtotal, k * k * cin);
    }
}

// w[n, t.wk] (a row of wdim = k·k·Cin), 0 past N or K.
__device__ __forceinline__ float gather_w(const float* __restrict__ wt, int n, int cout,
                                          const Tap& t, int wdim) {
    if (!t.ok || n >= cout) return 0.0f;
    return __ldg(wt + (i64)n * wdim + t.wk);
}

// =============================================================================================
// simt: exact f32
// =============================================================================================

namespace simt {
constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;
constexpr int TM = 4, TN = 4;           // register block per thread
constexpr int LDA = BM + 4, LDB = BN + 4;  // k-major tiles, rows 16-byte aligned
constexpr int ROWS = THREADS / BK;      // 16 staged rows per step
constexpr int A_PER = BM / ROWS;        // 4 A elements per thread and chunk
constexpr int B_PER = BN / ROWS;        // 4 B elements per thread and chunk
static_assert(THREADS % BK == 0 && BM % ROWS == 0 && BN % ROWS == 0, "staging mapping");
static_assert((BM / TM) * (BN / TN) == THREADS, "one register block per thread");
static_assert(BN / TN == 16, "tx = t mod 16");
static_assert(TM == 4 && TN == 4, "fma_4x4 (conv_gather.cuh)");
}  // namespace simt

template <bool PHASE>
__device__ __forceinline__ void conv_simt(const float* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias, const float* residual, float* y, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    using namespace simt;
    __shared__ __align__(16) float As[BK][LDA];
    __shared__ __align__(16) float Bs[BK][LDB];
    __shared__ int s_rowb[BM], s_iy0[BM], s_ix0[BM], s_out[PHASE ? BM : 1];

    const int tid = threadIdx.x;
    const int wdim = k * k * cin;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    PhaseTaps f;
    const int2 mk = block_geometry<PHASE, BM>(m0, mtotal, h, cin, ho, wo, k, stride, pad, f,
                                              s_rowb, s_iy0, s_ix0, s_out);
    const int mt = mk.x, kdim = mk.y;
    if (PHASE && m0 >= mt) return;  // a phase with fewer pixels than the grid has (whole block)
    __syncthreads();

    const int kl = tid % BK, r0 = tid / BK;  // staging: K column and first row
    const int tx = tid % 16, ty = tid / 16;  // compute: columns 4·tx.., rows 4·ty..
    float ra[A_PER], rb[B_PER];
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    auto load = [&](int k0) {
        const int kg = k0 + kl;
        Tap t;
        if constexpr (PHASE) t = phase_tap(f, kg);
        else t = tap_of(kg, kdim, cin, k);
#pragma unroll
        for (int j = 0; j < A_PER; ++j) {
            const int ml = r0 + ROWS * j;
            ra[j] = gather_a(x, s_rowb[ml], s_iy0[ml], s_ix0[ml], t, h, w, cin);
        }
#pragma unroll
        for (int j = 0; j < B_PER; ++j) rb[j] = gather_w(wt, n0 + r0 + ROWS * j, cout, t, wdim);
    };

    chunk_pipeline(
        (kdim + BK - 1) / BK, [&](int c) { load(c * BK); },
        [&] {
#pragma unroll
            for (int j = 0; j < A_PER; ++j) As[kl][r0 + ROWS * j] = ra[j];
#pragma unroll
            for (int j = 0; j < B_PER; ++j) Bs[kl][r0 + ROWS * j] = rb[j];
        },
        [&] {
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) fma_4x4(acc, &As[kk][ty * TM], &Bs[kk][tx * TN]);
        });

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int ml = ty * TM + i, m = m0 + ml;
        if (m >= mt) continue;
        const i64 pix = PHASE ? s_out[ml] : m;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int n = n0 + tx * TN + j;
            if (n >= cout) continue;
            const i64 idx = pix * cout + n;
            y[idx] = epilogue(acc[i][j], bias, residual, idx, n, relu);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) conv_implicit_simt(const float* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias, const float* residual, float* y, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    conv_simt<false>(x, wt, bias, residual, y, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

// The data gradient of a strided convolution, one phase per blockIdx.z (block_geometry):
// `batch` in the place of mtotal, (h, w, cin) = dy's, (ho, wo, cout) = dx's.
extern "C" __global__ void __launch_bounds__(256) conv_phase_simt(const float* __restrict__ dy, const float* __restrict__ wf, const float* __restrict__ bias, const float* residual, float* dx, int batch, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    conv_simt<true>(dy, wf, bias, residual, dx, batch, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

// =============================================================================================
// tc: WMMA tensor cores (TF32 / BF16 operands, f32 accumulation)
// =============================================================================================

namespace tc {
constexpr int BM = 64, BN = 64, BK = 32, THREADS = 128;
constexpr int LDC = BN + 4;          // staging tile pitch (floats), multiple of 4
static_assert(THREADS == 128 && BM == 64 && BN == 64, "4 warps of 32 × 32");

// Staging of VEC consecutive K columns per load (VEC | Cin, so they share one tap, and the
// addresses are VEC·4-byte aligned: the host checks x and w), the same mapping for the A and
// B tiles (BM = BN rows of BK columns). VEC = 1 is one K column per lane, rows warp + 4·j.
static_assert(BM == BN, "the same mapping stages A and B");
template <int VEC>
using Stage = StageMap<BK, BM, THREADS, VEC>;

template <class Op, int VEC, bool PHASE>
__device__ __forceinline__ void conv_tc(const float* __restrict__ x, const float* __restrict__ wt,
                                        const float* __restrict__ bias, const float* residual,
                                        float* y, int mtotal, int h, int w, int cin, int ho,
                                        int wo, int cout, int k, int stride, int pad, int relu) {
    typedef typename Op::T T;
    constexpr int LDA = Op::LDA;
    constexpr int AB_BYTES = (BM + BN) * LDA * (int)sizeof(T);
    constexpr int C_BYTES = BM * LDC * (int)sizeof(float);
    static_assert((16 * LDA * (int)sizeof(T)) % 32 == 0, "fragment rows 32-byte aligned");
    static_assert((BM * LDA * (int)sizeof(T)) % 32 == 0, "Bs 32-byte aligned");
    static_assert((16 * LDC * 4) % 32 == 0, "staging rows 32-byte aligned");
    __shared__ __align__(128) unsigned char smem[cmax(AB_BYTES, C_BYTES)];
    __shared__ int s_rowb[BM], s_iy0[BM], s_ix0[BM], s_out[PHASE ? BM : 1];
    T* As = reinterpret_cast<T*>(smem);  // [BM][LDA]
    T* Bs = As + BM * LDA;               // [BN][LDA]
    float* Cs = reinterpret_cast<float*>(smem);  // [BM][LDC], after the main loop

    const int tid = threadIdx.x, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int wdim = k * k * cin;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    PhaseTaps f;
    const int2 mk = block_geometry<PHASE, BM>(m0, mtotal, h, cin, ho, wo, k, stride, pad, f,
                                              s_rowb, s_iy0, s_ix0, s_out);
    const int mt = mk.x, kdim = mk.y;
    if (PHASE && m0 >= mt) return;  // a phase with fewer pixels than the grid has (whole block)
    __syncthreads();

    Acc32<Op> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    // Staging: K columns kc.. kc + VEC − 1 (kc = VEC · (tid mod CV)), rows r0 + RS·j.
    typedef Stage<VEC> S;
    const int kc = (tid % S::CV) * VEC, r0 = tid / S::CV;
    float ra[S::PER][VEC], rb[S::PER][VEC];
    auto load = [&](int k0) {
        const int kg = k0 + kc;
        Tap t;
        if constexpr (PHASE) t = phase_tap(f, kg);
        else t = tap_of(kg, kdim, cin, k);
#pragma unroll
        for (int j = 0; j < S::PER; ++j) {
            const int ml = r0 + S::RS * j;
            const int rowb = s_rowb[ml], iy = s_iy0[ml] + t.ky, ix = s_ix0[ml] + t.kx;
            const bool ok = rowb >= 0 && t.ok && iy >= 0 && iy < h && ix >= 0 && ix < w;
            load_vec<VEC>(x + (ok ? ((i64)(rowb + iy) * w + ix) * cin + t.ci : 0), ok, ra[j]);
            const int n = n0 + r0 + S::RS * j;
            const bool okw = t.ok && n < cout;
            load_vec<VEC>(wt + (okw ? (i64)n * wdim + (PHASE ? t.wk : kg) : 0), okw, rb[j]);
        }
    };

    chunk_pipeline(
        (kdim + BK - 1) / BK, [&](int c) { load(c * BK); },
        [&] {
#pragma unroll
            for (int j = 0; j < S::PER; ++j) {
                store_vec<Op, VEC>(As + (r0 + S::RS * j) * LDA + kc, ra[j]);
                store_vec<Op, VEC>(Bs + (r0 + S::RS * j) * LDA + kc, rb[j]);
            }
        },
        [&] {
#pragma unroll
            for (int kk = 0; kk < BK; kk += Op::K)
                mma_32x32<Op, wmma::row_major, wmma::col_major>(
                    acc, As + wm * 32 * LDA + kk, 16 * LDA, LDA, Bs + wn * 32 * LDA + kk, 16 * LDA,
                    LDA);
        });

    __syncthreads();  // Cs aliases As/Bs: every warp is done with its last chunk
    store_32x32<Op>(Cs + wm * 32 * LDC + wn * 32, LDC, acc);
    __syncthreads();
    for (int e = tid; e < BM * BN; e += THREADS) {
        const int ml = e / BN, nl = e - (e / BN) * BN;
        const int m = m0 + ml, n = n0 + nl;
        if (m < mt && n < cout) {
            const i64 idx = (PHASE ? (i64)s_out[ml] : (i64)m) * cout + n;
            y[idx] = epilogue(Cs[ml * LDC + nl], bias, residual, idx, n, relu);
        }
    }
}
}  // namespace tc

// _v2 / _v4: VEC = 2 / 4 (Cin a multiple of VEC; x and w VEC·4-byte aligned).
extern "C" __global__ void __launch_bounds__(128) conv_implicit_tf32(const float* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias, const float* residual, float* y, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpTf32, 1, false>(x, wt, bias, residual, y, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

extern "C" __global__ void __launch_bounds__(128) conv_implicit_tf32_v2(const float* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias, const float* residual, float* y, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpTf32, 2, false>(x, wt, bias, residual, y, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

extern "C" __global__ void __launch_bounds__(128) conv_implicit_tf32_v4(const float* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias, const float* residual, float* y, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpTf32, 4, false>(x, wt, bias, residual, y, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

extern "C" __global__ void __launch_bounds__(128) conv_implicit_bf16(const float* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias, const float* residual, float* y, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpBf16, 1, false>(x, wt, bias, residual, y, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

extern "C" __global__ void __launch_bounds__(128) conv_implicit_bf16_v2(const float* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias, const float* residual, float* y, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpBf16, 2, false>(x, wt, bias, residual, y, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

extern "C" __global__ void __launch_bounds__(128) conv_implicit_bf16_v4(const float* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias, const float* residual, float* y, int mtotal, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpBf16, 4, false>(x, wt, bias, residual, y, mtotal, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

// The data gradient of a strided convolution on the tensor cores (see conv_phase_simt).
extern "C" __global__ void __launch_bounds__(128) conv_phase_tf32(const float* __restrict__ dy, const float* __restrict__ wf, const float* __restrict__ bias, const float* residual, float* dx, int batch, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpTf32, 1, true>(dy, wf, bias, residual, dx, batch, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

extern "C" __global__ void __launch_bounds__(128) conv_phase_tf32_v2(const float* __restrict__ dy, const float* __restrict__ wf, const float* __restrict__ bias, const float* residual, float* dx, int batch, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpTf32, 2, true>(dy, wf, bias, residual, dx, batch, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

extern "C" __global__ void __launch_bounds__(128) conv_phase_tf32_v4(const float* __restrict__ dy, const float* __restrict__ wf, const float* __restrict__ bias, const float* residual, float* dx, int batch, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpTf32, 4, true>(dy, wf, bias, residual, dx, batch, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

extern "C" __global__ void __launch_bounds__(128) conv_phase_bf16(const float* __restrict__ dy, const float* __restrict__ wf, const float* __restrict__ bias, const float* residual, float* dx, int batch, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpBf16, 1, true>(dy, wf, bias, residual, dx, batch, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

extern "C" __global__ void __launch_bounds__(128) conv_phase_bf16_v2(const float* __restrict__ dy, const float* __restrict__ wf, const float* __restrict__ bias, const float* residual, float* dx, int batch, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpBf16, 2, true>(dy, wf, bias, residual, dx, batch, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}

extern "C" __global__ void __launch_bounds__(128) conv_phase_bf16_v4(const float* __restrict__ dy, const float* __restrict__ wf, const float* __restrict__ bias, const float* residual, float* dx, int batch, int h, int w, int cin, int ho, int wo, int cout, int k, int stride, int pad, int relu) {
    tc::conv_tc<OpBf16, 4, true>(dy, wf, bias, residual, dx, batch, h, w, cin, ho, wo, cout, k, stride, pad, relu);
}
