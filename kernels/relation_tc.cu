// relation_tc.cu: the fused relation map of SPEC §4.1 on tensor cores (TF32 or BF16 inputs,
// f32 accumulation), forward and backward, never materialising N×N. Twin of relation.cu (the
// exact f32 SIMT version, "simt") and of src/backend/cpu/relation.rs. Host side:
// src/backend/cuda/relation_tc.rs (which mirrors the shared-memory layouts and tile sizes).
//
// Notation (per image b): N = h·w pixels, C channels, n×n adaptive bins (nb = n², overlapping
// when n ∤ h or n ∤ w; h, w ≥ n so a position lies in one bin or two neighbours).
//   q_i = f_i / max(‖f_i‖, 1e-12),  s_ij = q_i·q_j ≤ 1,  e_ij = exp(s_ij − 1) (fixed shift),
//   l_i = Σ_j e_ij,  P_ib = Σ_{j∈b} e_ij / (l_i·|b|);
//   backward (G = ∂L/∂P, D_i = Σ_b P_ib G_ib, gt_ib = G_ib/|b|, g_ij = Σ_{b∋j} gt_ib):
//   M_ij = dS_ij + dS_ji = e_ij (g_ij − D_i)/l_i + e_ij (g_ji − D_j)/l_j   (e symmetric),
//   dq_i = Σ_j M_ij q_j,  df_i += (dq_i − q_i (q_i·dq_i)) / ‖f_i‖.
//
// ---- operands -----------------------------------------------------------------------------
// relation_tc_normalize_{tf32,bf16}: f [B, N, C] → qop [B, Np, Cp] with Np = N rounded up to
// 128, Cp = C rounded up to 32, zero beyond N and C: the GEMM loops then need no bounds checks
// and zero rows/channels add nothing. TF32: f32 words rounded with cvt.rna.tf32.f32 (so the MMA
// sees exactly the rounded value); BF16: 2-byte values (half the traffic). The exact f32 q is
// never stored: the normalisation backward recomputes it from f and the same norm, bitwise as
// relation_normalize does. v2 also gets pixbins [Np]: every pixel's bins packed in a word
// (vfirst | vlast << 8 | ufirst << 16 | ulast << 24; NO_BINS beyond N).
//
// ---- v1: WMMA, everything through shared memory (the simple one) --------------------------
// Forward: block = 128 threads (4 warps) × 128 rows i, grid (⌈N/128⌉, B). Per 64-column tile j:
//   S [128 × 64] = Q_I·Q_Jᵀ with wmma 16×16×8 (TF32) / 16×16×16 (BF16); each warp owns 32 rows
//   × 64 columns (2 × 4 fragments); Q_I and Q_J staged in 32-channel chunks. S is stored
//   transposed (Et [64][132]) so that the epilogue, one thread per row, walks its row across
//   consecutive banks: the columns' bin classes (class = (vclass, uclass), 2n − 1 per side)
//   are the same for every row, so a run of one class is summed in a register and added to its
//   1, 2 or 4 bins in bacc [nb][128] (f32, each entry owned by one thread). Row sums alike.
//   Shared memory: 18.4 + 9.2 + 33.8 KB (TF32; BF16 10.2 + 5.1 + 33.8) + 512·nb bytes.
// Backward: block = 128 threads × 32 rows i, grid (⌈N/32⌉, B). dq [32][Cp + 4] f32 lives in
//   shared memory for the whole block. Per 64-column tile j: S [32 × 64] (warps 2 × 2, 16 × 32
//   each); M [32 × 64] from S and the gt / D / l / bin tables of the row and column tiles,
//   rounded to the operand type; then dq += M·Q_J chunk by chunk (Q_J staged again), each warp
//   one 16×16 output fragment per 32-channel chunk, loaded from and stored back to shared
//   memory. Finally the normalisation backward, one warp per row.
//
// ---- v2: mma.sync from registers, cp.async pipeline, register epilogues ---------------------
// Fragments of mma.sync m16n8k8 (TF32) / m16n8k16 (BF16) are loaded from shared memory with
// 32-bit loads whose pitches (36 words TF32, 20 words BF16) make every fragment load
// conflict-free. One linear sequence of 32-channel chunks per block runs through a 3-stage
// cp.async pipeline (wait → barrier → issue the chunk two ahead → compute), across tile
// boundaries, so loads overlap the epilogues.
// Forward: block = 256 threads (8 warps, 4 × 2) × 128 rows i, 128-column tiles j, grid
//   (⌈N/128⌉, B). Warp (wr, wc) accumulates S for rows 32·wr.. and columns 64·wc.. (2 × 8
//   m16n8 tiles, 64 registers). Epilogue per column tile, in registers: e = exp(s − 1) (0 for
//   j ≥ N), row sums, and the bin sums as a second MMA, bacc [rows × 8·NBT] += E · Mem with Mem
//   the 0/1 membership [j ∈ bin] built from pixbins in registers. The score accumulators are
//   the A operand as they stand: BF16 packs the pairs of two adjacent n8 tiles (the C layout of
//   m16n8 is the A layout of m16n8k16); TF32 permutes k inside each n8 tile (k = t ↔ column 2t,
//   k = t + 4 ↔ column 2t + 1) and builds the B fragment with the same permutation. NBT ∈
//   {2, 4, 8} tiles of 8 bins (n ≤ 8). The two column warps of a row are combined at the end
//   through shared memory (fixed order). Shared memory: 3 × 256 × 36 × 4 = 108 KB (TF32) or
//   3 × 256 × 40 × 2 = 60 KB (BF16); 1 block (8 warps) per SM.
// Backward: block = 128 threads (4 warps, 2 × 2) × 64 rows i, 64-column tiles j, grid
//   (⌈N/64⌉, B). Per column tile the pipeline streams Cp/32 chunks of (Q_I, Q_J) for S, then
//   Cp/32 chunks of Q_J for dq. Warp (wr, wc) turns its S tile (32 × 32) into M in registers
//   (gathering g_ij, g_ji from gt through L1 with the packed bins), which is directly the A
//   operand of dq += M·Q_J (k = j; the same k permutation for TF32). dq [64][Cp + 8] f32 in
//   shared memory (pitch ≡ 8 mod 32: conflict-free float2 accumulator accesses); both column
//   warps of a row add into it, in two halves per chunk separated by a barrier, each element
//   receiving its two contributions in a fixed order. Shared memory: 256·(Cp + 8) bytes +
//   3 × 128 × 36 × 4 (TF32) or 3 × 128 × 40 × 2 (BF16): 176 KB / 152 KB at C = 450.
//
// ---- v3 (BF16): v2's forward with ldmatrix fragments; a backward with dq in registers -------
// Described at `namespace v3` below: 8 warps × 64 rows, Q_I resident and Q_J double-buffered
// whole in shared memory, M through shared memory, every fragment by ldmatrix(.trans).
//
// ---- sym (relation_sym.cu) ------------------------------------------------------------------
// A BF16 forward that computes each unordered pair of 128-row tiles once, for both of its row
// tiles (the column side through movmatrix-transposed fragments), with fixed-point cross-block
// sums; its backward is v3's. The staging and fragment helpers it shares with v2/v3 live in
// relation_mma.cuh.
//
// ---- all --------------------------------------------------------------------------------
// The backward computes M = dS + dSᵀ from one recomputed score tile (s_ij = s_ji), so
//   ∂L/∂q = dS·Q + dSᵀ·Q is ONE pass with one GEMM per tile pair, and each block owns its rows'
//   dq: no cross-block reduction, no atomics, deterministic run to run.
// Accumulation: f32 in the MMAs, row sums and bins; run sums in f32 (v1). The division
//   P = bins / (l·|b|) in f32. Every output row is written by exactly one thread.
// Precision (f64 emulation of these numerics, relative L2 vs exact): TF32 P ≈ 5e-5, df ≈
//   5e-4; BF16 P ≈ 4e-4, df ≈ 4e-3 (the dq GEMM's rounded M and q dominate).
// Memory traffic per image (operand bytes e, tile BM × BN): forward ⌈N/BM⌉·⌈N/BN⌉·(BM + BN)·Cp·e
//   from L2 (v2: 256 rows per 128×128 tile pair), backward with Q_J read twice per pair; writes
//   N·(nb + 1) floats forward.
#include "common.cuh"
#include "mma_sync.cuh"
#include "relation_mma.cuh"
#include "relation_tc.cuh"

#include <mma.h>

using namespace nvcuda;

// =============================================================================================
// Normalisation: one warp per row of the padded operand copy.
// =============================================================================================

// f: [B, N, C] → qop: [B, Np, Cp] operand copy (rows ≥ N and channels ≥ C zero), norms: [B, N]
// (‖f_i‖; skipped when null), pixbins: [Np] (the packed bins of every pixel, `pack_bins`;
// skipped when null). q = f · (1 / max(‖f‖, 1e-12)) exactly as relation_normalize computes it.
template <class Op>
__device__ __forceinline__ void normalize_tc(const float* __restrict__ f, int batch, int npix,
                                             int npad, int c, int cpad, int h, int w, int n,
                                             typename Op::T* __restrict__ qop,
                                             float* __restrict__ norms,
                                             unsigned* __restrict__ pixbins) {
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (i64)batch * npad) return;
    const int b = (int)(row / npad), i = (int)(row % npad);
    if (b == 0 && lane == 0 && pixbins != nullptr)
        pixbins[i] = i < npix ? pack_bins(i, h, w, n) : NO_BINS;
    typename Op::T* dst = qop + row * cpad;
    if (i >= npix) {
        for (int ch = lane; ch < cpad; ch += 32) dst[ch] = Op::from_float(0.0f);
        return;
    }
    const float* fp = f + ((i64)b * npix + i) * c;
    double ss = 0.0;
    for (int ch = lane; ch < c; ch += 32) {
        const double v = (double)fp[ch];
        ss += v * v;
    }
    ss = warp_sum(ss);
    const float nrm = (float)sqrt(ss);
    const float inv = 1.0f / fmaxf(nrm, 1e-12f);
    for (int ch = lane; ch < cpad; ch += 32) dst[ch] = Op::from_float(ch < c ? fp[ch] * inv : 0.0f);
    if (lane == 0 && norms != nullptr) norms[(i64)b * npix + i] = nrm;
}

extern "C" __global__ void relation_tc_normalize_tf32(const float* __restrict__ f, int batch, int npix, int npad, int c, int cpad, int h, int w, int n, float* __restrict__ qop, float* __restrict__ norms, unsigned* __restrict__ pixbins) {
    normalize_tc<OpTf32>(f, batch, npix, npad, c, cpad, h, w, n, qop, norms, pixbins);
}

extern "C" __global__ void relation_tc_normalize_f32(const float* __restrict__ f, int batch, int npix, int npad, int c, int cpad, int h, int w, int n, float* __restrict__ qop, float* __restrict__ norms, unsigned* __restrict__ pixbins) {
    normalize_tc<OpTf32x3>(f, batch, npix, npad, c, cpad, h, w, n, qop, norms, pixbins);
}

extern "C" __global__ void relation_tc_normalize_bf16(const float* __restrict__ f, int batch, int npix, int npad, int c, int cpad, int h, int w, int n, __nv_bfloat16* __restrict__ qop, float* __restrict__ norms, unsigned* __restrict__ pixbins) {
    normalize_tc<OpBf16>(f, batch, npix, npad, c, cpad, h, w, n, qop, norms, pixbins);
}

// =============================================================================================
// v1: WMMA (nvcuda::wmma 16×16×8 TF32 / 16×16×16 BF16), every tile through shared memory.
// =============================================================================================

namespace v1 {

constexpr int THREADS = 128;  // 4 warps
constexpr int KC = 32;        // channels per staged chunk (Cp is a multiple of it)
// Forward tiles.
constexpr int F_BM = 128;  // rows i per block: one epilogue thread per row
constexpr int F_BN = 64;   // columns j per tile
constexpr int LDE = F_BM + 4;  // E tile stored transposed, [F_BN][LDE] floats
// Backward tiles.
constexpr int B_BM = 32;
constexpr int B_BN = 64;
constexpr int LDS = B_BN + 4;  // S tile [B_BM][LDS] floats
constexpr int LDM = B_BN + 8;  // M tile [B_BM][LDM] operands (a multiple of 8 for BF16)

static_assert(F_BM == THREADS, "one forward epilogue thread per row");
static_assert(F_BM / 32 == THREADS / 32, "each warp owns 32 forward rows");

template <class Op>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Op::K, typename Op::Frag, wmma::row_major>;
template <class Op>
using FragBc = wmma::fragment<wmma::matrix_b, 16, 16, Op::K, typename Op::Frag, wmma::col_major>;
template <class Op>
using FragBr = wmma::fragment<wmma::matrix_b, 16, 16, Op::K, typename Op::Frag, wmma::row_major>;
template <class Op>
using FragC = wmma::fragment<wmma::accumulator, 16, 16, Op::K, float>;

// TF32 fragments must hold TF32 values; the operands in memory already are (rounded when
// written), so this is a no-op in value, kept because the WMMA API asks for it. BF16: nothing.
template <class Op, class F>
__device__ __forceinline__ void fix(F& frag) {
    if constexpr (Op::IS_TF32) {
#pragma unroll
        for (int e = 0; e < frag.num_elements; ++e) frag.x[e] = wmma::__float_to_tf32(frag.x[e]);
    }
}

// Copy rows × KC operands (global row stride `ld`, starting at column k0) into shared memory
// (row stride LDA), 16 bytes per thread and step. The padded operand copy needs no bounds checks.
template <class Op>
__device__ __forceinline__ void stage(typename Op::T* __restrict__ dst,
                                      const typename Op::T* __restrict__ src, int rows, int ld,
                                      int k0) {
    constexpr int PER = 16 / (int)sizeof(typename Op::T);  // elements per 16 bytes
    constexpr int VPR = KC / PER;                          // vectors per row
    for (int v = threadIdx.x; v < rows * VPR; v += THREADS) {
        const int r = v / VPR, cc = (v % VPR) * PER;
        *reinterpret_cast<uint4*>(dst + r * Op::LDA + cc) =
            *reinterpret_cast<const uint4*>(src + (i64)r * ld + k0 + cc);
    }
}

// ---- forward ----------------------------------------------------------------------------------
// Shared memory (bytes, each part 128-aligned): sI [F_BM][LDA] T | sJ [F_BN][LDA] T |
// Et [F_BN][LDE] f32 | cls [F_BN] int | bacc [n²][F_BM] f32. relation_tc.rs mirrors this.
template <class Op>
__device__ __forceinline__ void forward(const typename Op::T* __restrict__ qop, int npix,
                                        int npad, int cpad, int h, int w, int n,
                                        float* __restrict__ lsum, float* __restrict__ p) {
    using T = typename Op::T;
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int SZ_I = align128(F_BM * Op::LDA * (int)sizeof(T));
    constexpr int SZ_J = align128(F_BN * Op::LDA * (int)sizeof(T));
    constexpr int SZ_E = align128(F_BN * LDE * 4);
    constexpr int SZ_C = align128(F_BN * 4);
    T* sI = reinterpret_cast<T*>(smem);
    T* sJ = reinterpret_cast<T*>(smem + SZ_I);
    float* Et = reinterpret_cast<float*>(smem + SZ_I + SZ_J);
    int* cls = reinterpret_cast<int*>(smem + SZ_I + SZ_J + SZ_E);
    float* bacc = reinterpret_cast<float*>(smem + SZ_I + SZ_J + SZ_E + SZ_C);

    const int b = blockIdx.y, i0 = blockIdx.x * F_BM, t = threadIdx.x, warp = t >> 5;
    const int nb = n * n, cs = 2 * n - 1;
    const T* qb = qop + (i64)b * npad * cpad;
    for (int k = t; k < nb * F_BM; k += THREADS) bacc[k] = 0.0f;
    float l = 0.0f;  // row t's Σ_j e_ij

    for (int j0 = 0; j0 < npix; j0 += F_BN) {
        // S[i0 + r, j0 + jj] = Q_I · Q_Jᵀ; warp w owns rows 32w..32w+31, all 64 columns.
        FragC<Op> acc[2][4];
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int c4 = 0; c4 < 4; ++c4) wmma::fill_fragment(acc[a][c4], 0.0f);
        for (int k0 = 0; k0 < cpad; k0 += KC) {
            stage<Op>(sI, qb + (i64)i0 * cpad, F_BM, cpad, k0);
            stage<Op>(sJ, qb + (i64)j0 * cpad, F_BN, cpad, k0);
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < KC; kk += Op::K) {
                FragA<Op> fa[2];
                FragBc<Op> fb[4];
#pragma unroll
                for (int a = 0; a < 2; ++a) {
                    wmma::load_matrix_sync(fa[a], sI + (warp * 32 + a * 16) * Op::LDA + kk, Op::LDA);
                    fix<Op>(fa[a]);
                }
#pragma unroll
                for (int c4 = 0; c4 < 4; ++c4) {
                    // B(k, jj) = Q_J[jj][k]: column-major with leading dimension LDA.
                    wmma::load_matrix_sync(fb[c4], sJ + (c4 * 16) * Op::LDA + kk, Op::LDA);
                    fix<Op>(fb[c4]);
                }
#pragma unroll
                for (int a = 0; a < 2; ++a)
#pragma unroll
                    for (int c4 = 0; c4 < 4; ++c4) wmma::mma_sync(acc[a][c4], fa[a], fb[c4], acc[a][c4]);
            }
            __syncthreads();
        }
        // Et[jj][r] = S[r][jj] (transposed, so that the row walk below reads consecutive rows).
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int c4 = 0; c4 < 4; ++c4)
                wmma::store_matrix_sync(Et + (c4 * 16) * LDE + warp * 32 + a * 16, acc[a][c4], LDE,
                                        wmma::mem_col_major);
        if (t < F_BN) cls[t] = pixel_class(j0 + t, npix, h, w, n);
        __syncthreads();
        // Row walk: thread t owns row t; the columns' class sequence is the same for every row
        // (uniform branches). A run of one class is summed, then added to its 1, 2 or 4 bins.
        {
            int cur = cls[0];
            float run = 0.0f;
            for (int jj = 0; jj < F_BN; ++jj) {
                const int k = cls[jj];
                if (k != cur) {
                    if (cur >= 0) {
                        add_to_bins(bacc, F_BM, t, cur, n, cs, run);
                        l += run;
                    }
                    run = 0.0f;
                    cur = k;
                }
                if (k >= 0) run += expf(Et[jj * LDE + t] - 1.0f);
            }
            if (cur >= 0) {
                add_to_bins(bacc, F_BM, t, cur, n, cs, run);
                l += run;
            }
        }
        __syncthreads();
    }
    const int i = i0 + t;
    if (i < npix) {
        float* prow = p + ((i64)b * npix + i) * nb;
        for (int bin = 0; bin < nb; ++bin) {
            const int v = bin / n, u = bin - v * n;
            prow[bin] = bacc[bin * F_BM + t] / (l * (float)bin_size(v, u, h, w, n));
        }
        lsum[(i64)b * npix + i] = l;
    }
}

// ---- backward ---------------------------------------------------------------------------------
// Shared memory (bytes, each part 128-aligned): dq [B_BM][Cp + 4] f32 | sI [B_BM][LDA] T |
// sJ [B_BN][LDA] T | St [B_BM][LDS] f32 | Mt [B_BM][LDM] T | gtI [B_BM][ldg] f32 |
// gtJ [B_BN][ldg] f32 | lI, dI [B_BM], lJ, dJ [B_BN] f32 | binsI [B_BM][4], binsJ [B_BN][4] int,
// with ldg = n² | 1 (odd: conflict-free column reads). relation_tc.rs mirrors this.
template <class Op>
__device__ __forceinline__ void backward(const typename Op::T* __restrict__ qop,
                                         const float* __restrict__ f,
                                         const float* __restrict__ qnorm,
                                         const float* __restrict__ norms,
                                         const float* __restrict__ lsum,
                                         const float* __restrict__ dvec,
                                         const float* __restrict__ gt, int npix, int npad, int c,
                                         int cpad, int h, int w, int n, float* __restrict__ df) {
    using T = typename Op::T;
    extern __shared__ __align__(128) unsigned char smem[];
    const int nb = n * n, ldg = nb | 1, ldq = cpad + 4;
    constexpr int SZ_I = align128(B_BM * Op::LDA * (int)sizeof(T));
    constexpr int SZ_J = align128(B_BN * Op::LDA * (int)sizeof(T));
    constexpr int SZ_S = align128(B_BM * LDS * 4);
    constexpr int SZ_M = align128(B_BM * LDM * (int)sizeof(T));
    const int sz_q = align128(B_BM * ldq * 4);
    const int sz_gi = align128(B_BM * ldg * 4), sz_gj = align128(B_BN * ldg * 4);
    constexpr int SZ_V = align128((2 * B_BM + 2 * B_BN) * 4);
    unsigned char* ptr = smem;
    float* dq = reinterpret_cast<float*>(ptr);
    ptr += sz_q;
    T* sI = reinterpret_cast<T*>(ptr);
    ptr += SZ_I;
    T* sJ = reinterpret_cast<T*>(ptr);
    ptr += SZ_J;
    float* St = reinterpret_cast<float*>(ptr);
    ptr += SZ_S;
    T* Mt = reinterpret_cast<T*>(ptr);
    ptr += SZ_M;
    float* gtI = reinterpret_cast<float*>(ptr);
    ptr += sz_gi;
    float* gtJ = reinterpret_cast<float*>(ptr);
    ptr += sz_gj;
    float* lI = reinterpret_cast<float*>(ptr);
    float* dI = lI + B_BM;
    float* lJ = dI + B_BM;
    float* dJ = lJ + B_BN;
    ptr += SZ_V;
    int* binsI = reinterpret_cast<int*>(ptr);  // [B_BM][4]: vfirst, vlast, ufirst, ulast
    int* binsJ = binsI + 4 * B_BM;             // [B_BN][4]

    const int b = blockIdx.y, i0 = blockIdx.x * B_BM, t = threadIdx.x, warp = t >> 5;
    const i64 base = (i64)b * npix;
    const T* qb = qop + (i64)b * npad * cpad;
    for (int k = t; k < B_BM * ldq; k += THREADS) dq[k] = 0.0f;
    for (int k = t; k < B_BM * nb; k += THREADS) {
        const int r = k / nb, bin = k - r * nb, i = i0 + r;
        gtI[r * ldg + bin] = i < npix ? gt[(base + i) * nb + bin] : 0.0f;
    }
    if (t < B_BM) {
        const int i = i0 + t;
        lI[t] = i < npix ? lsum[base + i] : 1.0f;
        dI[t] = i < npix ? dvec[base + i] : 0.0f;
        pixel_bins(i < npix ? i : 0, h, w, n, binsI + 4 * t);
    }
    // S warp tiling: rows 16·(warp & 1), columns 32·(warp >> 1) + {0, 16}.
    // dq warp tiling per channel chunk: rows 16·(warp & 1), channels c0 + 16·(warp >> 1).
    const int rb = (warp & 1) * 16, cb = (warp >> 1);
    for (int j0 = 0; j0 < npix; j0 += B_BN) {
        for (int k = t; k < B_BN * nb; k += THREADS) {
            const int r = k / nb, bin = k - r * nb, j = j0 + r;
            gtJ[r * ldg + bin] = j < npix ? gt[(base + j) * nb + bin] : 0.0f;
        }
        if (t < B_BN) {
            const int j = j0 + t;
            lJ[t] = j < npix ? lsum[base + j] : 1.0f;
            dJ[t] = j < npix ? dvec[base + j] : 0.0f;
            pixel_bins(j < npix ? j : 0, h, w, n, binsJ + 4 * t);
        }
        FragC<Op> acc[2];
        wmma::fill_fragment(acc[0], 0.0f);
        wmma::fill_fragment(acc[1], 0.0f);
        for (int k0 = 0; k0 < cpad; k0 += KC) {
            stage<Op>(sI, qb + (i64)i0 * cpad, B_BM, cpad, k0);
            stage<Op>(sJ, qb + (i64)j0 * cpad, B_BN, cpad, k0);
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < KC; kk += Op::K) {
                FragA<Op> fa;
                wmma::load_matrix_sync(fa, sI + rb * Op::LDA + kk, Op::LDA);
                fix<Op>(fa);
#pragma unroll
                for (int x = 0; x < 2; ++x) {
                    FragBc<Op> fb;
                    wmma::load_matrix_sync(fb, sJ + (cb * 32 + x * 16) * Op::LDA + kk, Op::LDA);
                    fix<Op>(fb);
                    wmma::mma_sync(acc[x], fa, fb, acc[x]);
                }
            }
            __syncthreads();
        }
#pragma unroll
        for (int x = 0; x < 2; ++x)
            wmma::store_matrix_sync(St + rb * LDS + cb * 32 + x * 16, acc[x], LDS,
                                    wmma::mem_row_major);
        __syncthreads();
        // M_ij = dS_ij + dS_ji = e_ij (g_ij − D_i) / l_i + e_ij (g_ji − D_j) / l_j; 0 outside N.
        for (int e = t; e < B_BM * B_BN; e += THREADS) {
            const int r = e / B_BN, jj = e - r * B_BN;
            float m = 0.0f;
            if (i0 + r < npix && j0 + jj < npix) {
                const float ex = expf(St[r * LDS + jj] - 1.0f);
                const int* bj = binsJ + 4 * jj;
                const int* bi = binsI + 4 * r;
                const float gij = bins_sum(gtI + r * ldg, n, bj[0], bj[1], bj[2], bj[3]);
                const float gji = bins_sum(gtJ + jj * ldg, n, bi[0], bi[1], bi[2], bi[3]);
                m = ex * (1.0f / lI[r]) * (gij - dI[r]) + ex * (1.0f / lJ[jj]) * (gji - dJ[jj]);
            }
            Mt[r * LDM + jj] = Op::from_float(m);
        }
        __syncthreads();
        // dq[I, :] += M · Q_J, channel chunk by channel chunk (Q_J staged again).
        for (int c0 = 0; c0 < cpad; c0 += KC) {
            stage<Op>(sJ, qb + (i64)j0 * cpad, B_BN, cpad, c0);
            __syncthreads();
            FragC<Op> d;
            float* dqp = dq + rb * ldq + c0 + cb * 16;
            wmma::load_matrix_sync(d, dqp, ldq, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < B_BN; kk += Op::K) {
                FragA<Op> fa;
                FragBr<Op> fb;
                wmma::load_matrix_sync(fa, Mt + rb * LDM + kk, LDM);
                fix<Op>(fa);
                // B(k = jj, ch) = Q_J[jj][ch]: row-major with leading dimension LDA.
                wmma::load_matrix_sync(fb, sJ + kk * Op::LDA + cb * 16, Op::LDA);
                fix<Op>(fb);
                wmma::mma_sync(d, fa, fb, d);
            }
            wmma::store_matrix_sync(dqp, d, ldq, wmma::mem_row_major);
            __syncthreads();
        }
    }
    // Normalisation backward, one warp per row (the last loop iteration ended with a barrier).
    const int lane = t & 31;
    for (int r = warp; r < B_BM; r += THREADS / 32) {
        const int i = i0 + r;
        if (i >= npix) continue;  // uniform per warp
        norm_backward_row(f + (base + i) * c, dq + r * ldq, c, qnorm[base + i], norms[base + i],
                          df + (base + i) * c, lane);
    }
}

}  // namespace v1

extern "C" __global__ void __launch_bounds__(128) relation_tc_v1_forward_tf32(const float* __restrict__ qop, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v1::forward<OpTf32>(qop, npix, npad, cpad, h, w, n, lsum, p);
}

extern "C" __global__ void __launch_bounds__(128) relation_tc_v1_forward_bf16(const __nv_bfloat16* __restrict__ qop, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v1::forward<OpBf16>(qop, npix, npad, cpad, h, w, n, lsum, p);
}

extern "C" __global__ void __launch_bounds__(128) relation_tc_v1_backward_tf32(const float* __restrict__ qop, const float* __restrict__ f, const float* __restrict__ qnorm, const float* __restrict__ norms, const float* __restrict__ lsum, const float* __restrict__ dvec, const float* __restrict__ gt, int npix, int npad, int c, int cpad, int h, int w, int n, float* __restrict__ df) {
    v1::backward<OpTf32>(qop, f, qnorm, norms, lsum, dvec, gt, npix, npad, c, cpad, h, w, n, df);
}

extern "C" __global__ void __launch_bounds__(128) relation_tc_v1_backward_bf16(const __nv_bfloat16* __restrict__ qop, const float* __restrict__ f, const float* __restrict__ qnorm, const float* __restrict__ norms, const float* __restrict__ lsum, const float* __restrict__ dvec, const float* __restrict__ gt, int npix, int npad, int c, int cpad, int h, int w, int n, float* __restrict__ df) {
    v1::backward<OpBf16>(qop, f, qnorm, norms, lsum, dvec, gt, npix, npad, c, cpad, h, w, n, df);
}

// =============================================================================================
// v2: mma.sync (m16n8k8 TF32 / m16n8k16 BF16) from registers, a 3-stage cp.async pipeline that
// runs across tile boundaries, and register-resident epilogues.
// =============================================================================================

namespace v2 {

// ---- forward ----------------------------------------------------------------------------------
// 256 threads (8 warps, 4 × 2), a 128 × 128 (i × j) tile per step; warp (wr, wc) owns rows
// 32·wr.. (2 m16 tiles) and columns 64·wc.. (8 n8 tiles) of the scores. Shared memory:
// STAGES × { Q_I chunk [128][LDA], Q_J chunk [128][LDA] }; at the end it is reused to combine the
// two column warps of each row. NBT: 8-bin tiles of the bin accumulators (n² ≤ 8·NBT).
constexpr int F_THREADS = 256;
constexpr int F_BM = 128;
constexpr int F_BN = 128;

template <class Op, int NBT, bool LDSM = false>
__device__ __forceinline__ void forward(const typename Op::T* __restrict__ qop,
                                        const unsigned* __restrict__ pixbins, int npix,
                                        int npad, int cpad, int h, int w, int n,
                                        float* __restrict__ lsum, float* __restrict__ p) {
    using T = typename Op::T;
    constexpr int STAGE = (F_BM + F_BN) * Op::LDA;  // elements per stage
    constexpr int KSTEP = Op::IS_TF32 ? 8 : 16;
    extern __shared__ __align__(128) unsigned char smem[];
    T* stages = reinterpret_cast<T*>(smem);

    const int b = blockIdx.y, i0 = blockIdx.x * F_BM, t = threadIdx.x;
    const int warp = t >> 5, lane = t & 31, g = lane >> 2, tq = lane & 3;
    const int wr = warp >> 1, wc = warp & 1;
    const int nb = n * n;
    const T* qb = qop + (i64)b * npad * cpad;
    const int nk = cpad / KC, nj = (npix + F_BN - 1) / F_BN, total = nj * nk;

    unsigned bvu[NBT];
    bin_codes<NBT>(n, g, bvu);
    float acc[2][8][4];
    float bacc[2][NBT][4];
    float lrow[2][2] = {};
    zero(acc);
    zero(bacc);

    auto load = [&](int u) {
        const int jt = u / nk, kc = u - jt * nk;
        T* sI = stages + (u % STAGES) * STAGE;
        T* sJ = sI + F_BM * Op::LDA;
        stage_async<Op, F_THREADS>(sI, qb + (i64)i0 * cpad, F_BM, cpad, kc * KC);
        stage_async<Op, F_THREADS>(sJ, qb + (i64)jt * F_BN * cpad, F_BN, cpad, kc * KC);
    };
    pipeline(total, load, [&](int u) {
        const T* sI = stages + (u % STAGES) * STAGE;
        const T* sJ = sI + F_BM * Op::LDA;
#pragma unroll
        for (int k0 = 0; k0 < KC; k0 += KSTEP)
            score_kstep<Op, LDSM>(sI, sJ, k0, wr, wc, g, tq, lane, acc);
        const int jt = u / nk;
        if (u - jt * nk != nk - 1) return;

        // Epilogue of column tile jt, in registers: e = exp(s − 1) (0 beyond N), row sums, and
        // the bin sums as a second MMA: bacc[r][bin] += Σ_j e[r][j] · [j ∈ bin].
        const int jw = jt * F_BN + wc * 64;
#pragma unroll
        for (int x = 0; x < 8; ++x) {
            const int j = jw + x * 8 + 2 * tq;
            const bool v0 = j < npix, v1 = j + 1 < npix;
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                float* c = acc[m][x];
                c[0] = v0 ? __expf(c[0] - 1.0f) : 0.0f;
                c[1] = v1 ? __expf(c[1] - 1.0f) : 0.0f;
                c[2] = v0 ? __expf(c[2] - 1.0f) : 0.0f;
                c[3] = v1 ? __expf(c[3] - 1.0f) : 0.0f;
                lrow[m][0] += c[0] + c[1];
                lrow[m][1] += c[2] + c[3];
            }
        }
        if constexpr (Op::IS_TF32) {
            row_bins_tf32<Op, NBT>(acc, bacc, pixbins, jw, bvu, tq);
        } else {
#pragma unroll
            for (int y = 0; y < 4; ++y) {
                unsigned a[2][4];
                bf16_pairs(acc, y, a);
                row_bins_bf16<NBT>(a, bacc, pixbins, jw + 16 * y + 2 * tq, bvu);
            }
        }
        zero(acc);
    });
    // The stages are free (the pipeline's last barrier): reuse them to combine the two column
    // warps.

    // Row sums over the quad; column warp 1's partials to shared memory for column warp 0.
    constexpr int RLD = NBT * 8 + 1;
    float* red = reinterpret_cast<float*>(smem);  // [F_BM][RLD]
    v2::stage_row_partials<NBT>(lrow, bacc, red, wr, wc, g, tq);
    if (wc == 0) {
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int rl = wr * 32 + m * 16 + g + 8 * hh, i = i0 + rl;
                if (i >= npix) continue;
                const float l = lrow[m][hh] + red[rl * RLD + NBT * 8];
                float* prow = p + ((i64)b * npix + i) * nb;
#pragma unroll
                for (int bt = 0; bt < NBT; ++bt)
#pragma unroll
                    for (int q = 0; q < 2; ++q) {
                        const int bin = bt * 8 + 2 * tq + q;
                        if (bin >= nb) continue;
                        const int v = bin / n, uu = bin - v * n;
                        const float s = bacc[m][bt][2 * hh + q] + red[rl * RLD + bt * 8 + 2 * tq + q];
                        prow[bin] = s / (l * (float)bin_size(v, uu, h, w, n));
                    }
                if (tq == 0) lsum[(i64)b * npix + i] = l;
            }
    }
}

// ---- backward ---------------------------------------------------------------------------------
// 128 threads (4 warps, 2 × 2), 64 rows i per block, 64-column tiles j. Per column tile the
// pipeline streams Cp/KC chunks of (Q_I, Q_J) for the scores, then Cp/KC chunks of Q_J for
// dq += M · Q_J. Warp (wr, wc) owns score rows 32·wr.. and columns 32·wc..; it turns its scores
// into M = dS + dSᵀ in registers, which are directly the A fragments of the dq MMA (k = j).
// dq [64][Cp + 8] f32 lives in shared memory; both column warps of a row add into it, in two
// halves per chunk separated by a barrier (wc 0 owns n-tiles 0–1 first, wc 1 owns 2–3; then
// they swap), so every element receives its two contributions in a fixed order.
constexpr int B_THREADS = 128;
constexpr int B_BM = 64;
constexpr int B_BN = 64;

template <class Op>
__device__ __forceinline__ void backward(const typename Op::T* __restrict__ qop,
                                         const unsigned* __restrict__ pixbins,
                                         const float* __restrict__ f,
                                         const float* __restrict__ qnorm,
                                         const float* __restrict__ norms,
                                         const float* __restrict__ lsum,
                                         const float* __restrict__ dvec,
                                         const float* __restrict__ gt, int npix, int npad, int c,
                                         int cpad, int n, float* __restrict__ df) {
    using T = typename Op::T;
    constexpr int STAGE = (B_BM + B_BN) * Op::LDA;
    constexpr int KSTEP = Op::IS_TF32 ? 8 : 16;
    extern __shared__ __align__(128) unsigned char smem[];
    const int ldq = cpad + 8;  // ≡ 8 (mod 32): conflict-free float2 accumulator accesses
    float* dq = reinterpret_cast<float*>(smem);
    T* stages = reinterpret_cast<T*>(smem + (size_t)B_BM * ldq * 4);

    const int b = blockIdx.y, i0 = blockIdx.x * B_BM, t = threadIdx.x;
    const int warp = t >> 5, lane = t & 31, g = lane >> 2, tq = lane & 3;
    const int wr = warp >> 1, wc = warp & 1;
    const int nb = n * n;
    const i64 base = (i64)b * npix;
    const T* qb = qop + (i64)b * npad * cpad;
    const int nk = cpad / KC, nj = (npix + B_BN - 1) / B_BN, total = nj * 2 * nk;

    for (int k = t; k < B_BM * ldq; k += B_THREADS) dq[k] = 0.0f;

    // This thread's four score rows: (m, hh) ↔ row 32·wr + 16·m + g + 8·hh.
    unsigned pkI[2][2];
    float invlI[2][2], dI[2][2];
    const float* gtI[2][2];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int i = i0 + wr * 32 + m * 16 + g + 8 * hh;
            const bool ok = i < npix;
            pkI[m][hh] = __ldg(pixbins + i);  // i < Np: NO_BINS beyond N
            invlI[m][hh] = ok ? 1.0f / lsum[base + i] : 0.0f;
            dI[m][hh] = ok ? dvec[base + i] : 0.0f;
            gtI[m][hh] = gt + (base + (ok ? i : 0)) * nb;
        }

    float acc[2][4][4];
    zero(acc);
    // M as A fragments: TF32 one per (m, score n-tile), BF16 one per (m, pair of n-tiles).
    constexpr int MK = Op::IS_TF32 ? 4 : 2;
    unsigned mf[2][MK][4];
    [[maybe_unused]] unsigned mfl[2][MK][4];  // 3×TF32: the low parts of M

    auto load = [&](int u) {
        const int jt = u / (2 * nk), r = u - jt * 2 * nk;
        T* sI = stages + (u % STAGES) * STAGE;
        T* sJ = sI + B_BM * Op::LDA;
        if (r < nk) {
            stage_async<Op, B_THREADS>(sI, qb + (i64)i0 * cpad, B_BM, cpad, r * KC);
            stage_async<Op, B_THREADS>(sJ, qb + (i64)jt * B_BN * cpad, B_BN, cpad, r * KC);
        } else {
            stage_async<Op, B_THREADS>(sJ, qb + (i64)jt * B_BN * cpad, B_BN, cpad, (r - nk) * KC);
        }
    };
    pipeline(total, load, [&](int u) {
        const T* sI = stages + (u % STAGES) * STAGE;
        const T* sJ = sI + B_BM * Op::LDA;
        const int jt = u / (2 * nk), r = u - jt * 2 * nk;
        if (r < nk) {
            // Scores: rows 32·wr.., columns 32·wc.. of this column tile.
#pragma unroll
            for (int k0 = 0; k0 < KC; k0 += KSTEP) {
                unsigned a[2][4];
                [[maybe_unused]] unsigned al[2][4];
                frag_a<Op>(sI, wr * 32, k0, g, tq, a[0]);
                frag_a<Op>(sI, wr * 32 + 16, k0, g, tq, a[1]);
                if constexpr (Op::SPLIT) {
                    split_frag(a[0], a[0], al[0]);
                    split_frag(a[1], a[1], al[1]);
                }
#pragma unroll
                for (int x = 0; x < 4; ++x) {
                    unsigned b0, b1;
                    frag_b<Op>(sJ, wc * 32 + x * 8, k0, g, tq, b0, b1);
                    if constexpr (Op::SPLIT) {
                        unsigned bh0, bh1, bl0, bl1;
                        split_tf32(__uint_as_float(b0), bh0, bl0);
                        split_tf32(__uint_as_float(b1), bh1, bl1);
                        mma_x3(acc[0][x], a[0], al[0], bh0, bh1, bl0, bl1);
                        mma_x3(acc[1][x], a[1], al[1], bh0, bh1, bl0, bl1);
                    } else {
                        mma<Op>(acc[0][x], a[0], b0, b1);
                        mma<Op>(acc[1][x], a[1], b0, b1);
                    }
                }
            }
            if (r != nk - 1) return;
            // M_ij = e_ij (g_ij − D_i) / l_i + e_ij (g_ji − D_j) / l_j (0 outside N), with
            // g_ij = Σ_{bins b ∋ j} gt_ib: the accumulator (m, x, e) is row 32·wr + 16·m + g
            // + 8·(e / 2), column 32·wc + 8·x + 2·tq + e % 2.
#pragma unroll
            for (int x = 0; x < 4; ++x)
#pragma unroll
                for (int q = 0; q < 2; ++q) {
                    const int j = jt * B_BN + wc * 32 + x * 8 + 2 * tq + q;
                    const bool okj = j < npix;
                    const unsigned pkJ = __ldg(pixbins + j);
                    const float invlJ = okj ? 1.0f / lsum[base + j] : 0.0f;
                    const float dJ = okj ? dvec[base + j] : 0.0f;
                    const float* gtJ = gt + (base + (okj ? j : 0)) * nb;
#pragma unroll
                    for (int m = 0; m < 2; ++m)
#pragma unroll
                        for (int hh = 0; hh < 2; ++hh) {
                            float& v = acc[m][x][2 * hh + q];
                            float mv = 0.0f;
                            if (okj && pkI[m][hh] != NO_BINS) {
                                const float ex = __expf(v - 1.0f);
                                const float gij = bins_sum_packed(gtI[m][hh], n, pkJ);
                                const float gji = bins_sum_packed(gtJ, n, pkI[m][hh]);
                                mv = ex * invlI[m][hh] * (gij - dI[m][hh]) +
                                     ex * invlJ * (gji - dJ);
                            }
                            v = mv;
                        }
                }
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                if constexpr (Op::IS_TF32) {
                    // k permuted as in the forward: k = t ↔ column 2t, k = t + 4 ↔ 2t + 1.
#pragma unroll
                    for (int x = 0; x < 4; ++x) {
                        if constexpr (Op::SPLIT) {
                            split_tf32(acc[m][x][0], mf[m][x][0], mfl[m][x][0]);
                            split_tf32(acc[m][x][2], mf[m][x][1], mfl[m][x][1]);
                            split_tf32(acc[m][x][1], mf[m][x][2], mfl[m][x][2]);
                            split_tf32(acc[m][x][3], mf[m][x][3], mfl[m][x][3]);
                        } else {
                            mf[m][x][0] = tf32_bits(acc[m][x][0]);
                            mf[m][x][1] = tf32_bits(acc[m][x][2]);
                            mf[m][x][2] = tf32_bits(acc[m][x][1]);
                            mf[m][x][3] = tf32_bits(acc[m][x][3]);
                        }
                    }
                } else {
#pragma unroll
                    for (int y = 0; y < 2; ++y) {
                        mf[m][y][0] = bf16_pair(acc[m][2 * y][0], acc[m][2 * y][1]);
                        mf[m][y][1] = bf16_pair(acc[m][2 * y][2], acc[m][2 * y][3]);
                        mf[m][y][2] = bf16_pair(acc[m][2 * y + 1][0], acc[m][2 * y + 1][1]);
                        mf[m][y][3] = bf16_pair(acc[m][2 * y + 1][2], acc[m][2 * y + 1][3]);
                    }
                }
            }
            zero(acc);
            return;
        }
        // dq[rows, cc·KC + 8·ct + 0..7] += M · Q_J[:, same channels] for ct in this warp's half.
        const int cc = r - nk;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            if (half == 1) __syncthreads();
            const int ct0 = ((wc + half) & 1) * 2;  // wc 0: 0 then 2; wc 1: 2 then 0
            float d[2][2][4];
#pragma unroll
            for (int m = 0; m < 2; ++m)
#pragma unroll
                for (int z = 0; z < 2; ++z) {
                    const int row = wr * 32 + m * 16 + g, col = cc * KC + (ct0 + z) * 8 + 2 * tq;
                    const float2 lo = *reinterpret_cast<const float2*>(dq + row * ldq + col);
                    const float2 hi = *reinterpret_cast<const float2*>(dq + (row + 8) * ldq + col);
                    d[m][z][0] = lo.x;
                    d[m][z][1] = lo.y;
                    d[m][z][2] = hi.x;
                    d[m][z][3] = hi.y;
                }
            constexpr int L = Op::LDA;
            if constexpr (Op::IS_TF32) {
                // k step x: rows (j) 32·wc + 8·x + 2·tq (k = tq) and + 1 (k = tq + 4).
#pragma unroll
                for (int x = 0; x < 4; ++x) {
                    const int jl = wc * 32 + x * 8 + 2 * tq;
#pragma unroll
                    for (int z = 0; z < 2; ++z) {
                        const int ch = (ct0 + z) * 8 + g;
                        const unsigned b0 = ld32(sJ + jl * L + ch);
                        const unsigned b1 = ld32(sJ + (jl + 1) * L + ch);
                        if constexpr (Op::SPLIT) {
                            unsigned bh0, bh1, bl0, bl1;
                            split_tf32(__uint_as_float(b0), bh0, bl0);
                            split_tf32(__uint_as_float(b1), bh1, bl1);
                            mma_x3(d[0][z], mf[0][x], mfl[0][x], bh0, bh1, bl0, bl1);
                            mma_x3(d[1][z], mf[1][x], mfl[1][x], bh0, bh1, bl0, bl1);
                        } else {
                            mma_tf32(d[0][z], mf[0][x], b0, b1);
                            mma_tf32(d[1][z], mf[1][x], b0, b1);
                        }
                    }
                }
            } else {
                // k step y: rows 32·wc + 16·y + 2·tq, + 1 (b0) and + 8, + 9 (b1).
#pragma unroll
                for (int y = 0; y < 2; ++y) {
                    const int jl = wc * 32 + y * 16 + 2 * tq;
#pragma unroll
                    for (int z = 0; z < 2; ++z) {
                        const int ch = (ct0 + z) * 8 + g;
                        const unsigned b0 = ld16(sJ + jl * L + ch) | (ld16(sJ + (jl + 1) * L + ch) << 16);
                        const unsigned b1 = ld16(sJ + (jl + 8) * L + ch) | (ld16(sJ + (jl + 9) * L + ch) << 16);
                        mma_bf16(d[0][z], mf[0][y], b0, b1);
                        mma_bf16(d[1][z], mf[1][y], b0, b1);
                    }
                }
            }
#pragma unroll
            for (int m = 0; m < 2; ++m)
#pragma unroll
                for (int z = 0; z < 2; ++z) {
                    const int row = wr * 32 + m * 16 + g, col = cc * KC + (ct0 + z) * 8 + 2 * tq;
                    *reinterpret_cast<float2*>(dq + row * ldq + col) = make_float2(d[m][z][0], d[m][z][1]);
                    *reinterpret_cast<float2*>(dq + (row + 8) * ldq + col) = make_float2(d[m][z][2], d[m][z][3]);
                }
        }
    });
    // Normalisation backward, one warp per row (dq is complete: the pipeline's last barrier).
    for (int rr = warp; rr < B_BM; rr += B_THREADS / 32) {
        const int i = i0 + rr;
        if (i >= npix) continue;  // uniform per warp
        norm_backward_row(f + (base + i) * c, dq + rr * ldq, c, qnorm[base + i], norms[base + i],
                          df + (base + i) * c, lane);
    }
}

}  // namespace v2

// =============================================================================================
// v3 (BF16): the v2 forward with ldmatrix fragment loads, and a backward that keeps dq in
// registers.
// =============================================================================================
//
// Why a new backward: v2's keeps dq [64][Cp] in shared memory and adds every 32-channel chunk's
// product into it (a load and a store per accumulator per chunk, two barriers per chunk), with
// 4 warps per SM and each B fragment assembled from four 16-bit loads; on the H100 it ran at
// about 5% of the tensor-core rate. Here:
//
// Block = 256 threads (8 warps) × 64 rows i, grid (⌈N/64⌉, B); 64-column tiles j.
//   Shared memory: Q_I [64][Cp + 8] bf16 (loaded once), Q_J [2][64][Cp + 8] bf16 (double
//   buffer: tile jt + 1 is copied with cp.async while tile jt is computed), M [64][72] bf16,
//   gt of the row tile [64][nb] and of the column tile [2][64][nb] f32, the column tile's packed
//   bins, l and D [2][3][64]. Row pitches ≡ 16 bytes (mod 128) or ≡ 80: every ldmatrix phase
//   (8 rows of 16 bytes) is conflict-free.
// Per column tile jt:
//   1. S [64 × 64] = Q_I·Q_Jᵀ: warp (wr, wc) = (warp / 4, warp % 4) owns rows 32·wr.., columns
//      16·wc.. (2 m16 × 2 n8 accumulators); per k16 step 2 ldmatrix.x4 for A, 1 for B.
//   2. M = dS + dSᵀ in registers (as v2, with g_ij, g_ji gathered from the gt tables in shared
//      memory), rounded to BF16 and stored to M [64][72]. Barrier.
//   3. dq [64 × Cp] += M·Q_J: warp (wr, wn) = (warp / 4, warp % 4) owns rows 32·wr.. and
//      channels wn·Cp/4.. (Cp/32 ≤ 15 n8 tiles, 2 × 15 × 4 = 120 f32 registers): per k16 step
//      (4 per tile) 2 ldmatrix.x4 for A (M) and one ldmatrix.x4.trans per two n8 tiles of B
//      (Q_J read as [k = j][n = channel]).
//   One barrier at the top of the next tile (its data landed; everyone is done with M and with
//   the buffer the next copy overwrites).
// Finally dq goes through shared memory (f32 [64][Cp + 8], over the Q_J buffers) to the
// normalisation backward, one warp per row.
// Each dq element sums its column tiles in order, each tile's 64 products in the MMA's fixed
// order: deterministic, no atomics. Cp ≤ 480 (C ≤ 480; the host falls back to v2 above).
namespace v3 {

constexpr int THREADS = 256;
constexpr int BM = 64;
constexpr int BN = 64;
constexpr int MAX_NT = 15;  // dq n8 tiles per warp: Cp / 32
constexpr int LDM = BN + 8;  // M row pitch (bf16): 144 bytes

// Byte offsets of the shared-memory regions (host: src/backend/cuda/relation_tc.rs `v3`).
struct Smem {
    int qi, qj, m, gti, gtj, col;
    __device__ Smem(int cpad, int nb) {
        const int ldq = cpad + 8;
        qi = 0;
        qj = qi + align128(BM * ldq * 2);
        m = qj + align128(2 * BN * ldq * 2);
        gti = m + align128(BM * LDM * 2);
        gtj = gti + align128(BM * nb * 4);
        col = gtj + align128(2 * BN * nb * 4);  // then 2 · 3 · BN words
    }
};

__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
#ifdef PRRNET_CUDA_EMU
    ::emu::cp_async(dst, src, 4);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    const size_t g = __cvta_generic_to_global(src);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(g) : "memory");
#endif
}

__device__ __forceinline__ void backward_bf16(
    const __nv_bfloat16* __restrict__ qop, const unsigned* __restrict__ pixbins,
    const float* __restrict__ f, const float* __restrict__ qnorm, const float* __restrict__ norms,
    const float* __restrict__ lsum, const float* __restrict__ dvec, const float* __restrict__ gt,
    int npix, int npad, int c, int cpad, int n, float* __restrict__ df) {
    typedef __nv_bfloat16 T;
    extern __shared__ __align__(128) unsigned char smem[];
    const int nb = n * n, ldq = cpad + 8, nt = cpad / 32;
    const Smem L(cpad, nb);
    T* qi = reinterpret_cast<T*>(smem + L.qi);
    T* qj = reinterpret_cast<T*>(smem + L.qj);  // [2][BN][ldq]
    T* ms = reinterpret_cast<T*>(smem + L.m);
    float* gti = reinterpret_cast<float*>(smem + L.gti);
    float* gtj = reinterpret_cast<float*>(smem + L.gtj);  // [2][BN][nb]
    unsigned char* col = smem + L.col;                  // [2] × {pixbins, l, D} [BN]

    const int b = blockIdx.y, i0 = blockIdx.x * BM, t = threadIdx.x;
    const int warp = t >> 5, lane = t & 31, g = lane >> 2, tq = lane & 3;
    const int wr = warp >> 2, wc = warp & 3;
    const i64 base = (i64)b * npix;
    const T* qb = qop + (i64)b * npad * cpad;
    const int nj = (npix + BN - 1) / BN;
    const int vpr = cpad / 8;  // 16-byte vectors per operand row

    // 64 operand rows from row0 into dst (pitch ldq), 16 bytes per cp.async.
    static_assert(BM == BN, "one row count for both tiles");
    auto copy_rows = [&](T* dst, int row0) {
        for (int v = t; v < BN * vpr; v += THREADS) {
            const int r = v / vpr, cc = (v - r * vpr) * 8;
            cp_async16(dst + r * ldq + cc, qb + (i64)(row0 + r) * cpad + cc);
        }
    };
    // Copies of column tile jt into buffer `buf` (rows beyond N: operand rows are zero up to
    // Np ≥ 64·nj; gt, l and D are not copied and never read).
    auto load_j = [&](int jt, int buf) {
        const int j0 = jt * BN;
        copy_rows(qj + buf * BN * ldq, j0);
        const int rows = min(BN, npix - j0);
        float* gd = gtj + buf * BN * nb;
        const float* gs = gt + (base + j0) * nb;
        for (int e = t; e < rows * nb; e += THREADS) cp_async4(gd + e, gs + e);
        // Thread t < 3·BN copies word t of {pixbins, l, D} [BN] (every pixbins entry: j < Np).
        unsigned char* cb = col + buf * 3 * BN * 4;
        const int part = t / BN, r = t - part * BN;
        if (part == 0) cp_async4(cb + t * 4, pixbins + j0 + r);
        else if (part == 1 && r < rows) cp_async4(cb + t * 4, lsum + base + j0 + r);
        else if (part == 2 && r < rows) cp_async4(cb + t * 4, dvec + base + j0 + r);
    };

    // The row tile: operands and gt rows (i < N).
    copy_rows(qi, i0);
    {
        const int rows = min(BM, npix - i0);
        const float* gs = gt + (base + i0) * nb;
        for (int e = t; e < rows * nb; e += THREADS) cp_async4(gti + e, gs + e);
    }
    load_j(0, 0);
    cp_async_commit();

    // This thread's four score rows: (m, hh) ↔ local row 32·wr + 16·m + g + 8·hh.
    bool okI[2][2];
    unsigned pkI[2][2];
    float invlI[2][2], dI[2][2];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int i = i0 + wr * 32 + m * 16 + g + 8 * hh;
            okI[m][hh] = i < npix;
            pkI[m][hh] = __ldg(pixbins + i);  // i < Np
            invlI[m][hh] = okI[m][hh] ? 1.0f / lsum[base + i] : 0.0f;
            dI[m][hh] = okI[m][hh] ? dvec[base + i] : 0.0f;
        }

    float dq[2][MAX_NT][4];
    v2::zero(dq);
    const int cw0 = wc * (cpad / 4);  // this warp's first dq channel

    for (int jt = 0; jt < nj; ++jt) {
        const int buf = jt & 1;
        cp_async_wait<0>();
        __syncthreads();  // tile jt landed; M and buffer buf ^ 1 are free
        if (jt + 1 < nj) load_j(jt + 1, buf ^ 1);
        cp_async_commit();
        const T* sj = qj + buf * BN * ldq;
        const float* gtJ = gtj + buf * BN * nb;
        const unsigned* pkJs = reinterpret_cast<const unsigned*>(col + buf * 3 * BN * 4);
        const float* lJs = reinterpret_cast<const float*>(pkJs + BN);
        const float* dJs = lJs + BN;

        // 1. Scores: rows 32·wr.., columns 16·wc.. of the tile.
        float acc[2][2][4];
        v2::zero(acc);
        for (int k0 = 0; k0 < cpad; k0 += 16) {
            unsigned a0[4], a1[4], bb[4];
            v2::ldsm_a(qi, ldq, wr * 32, k0, lane, a0);
            v2::ldsm_a(qi, ldq, wr * 32 + 16, k0, lane, a1);
            v2::ldsm_b2(sj, ldq, wc * 16, k0, lane, bb);
            mma_bf16(acc[0][0], a0, bb[0], bb[1]);
            mma_bf16(acc[1][0], a1, bb[0], bb[1]);
            mma_bf16(acc[0][1], a0, bb[2], bb[3]);
            mma_bf16(acc[1][1], a1, bb[2], bb[3]);
        }

        // 2. M_ij = e_ij (g_ij − D_i) / l_i + e_ij (g_ji − D_j) / l_j (0 outside N); the
        // accumulator (m, x, e) is row 32·wr + 16·m + g + 8·(e / 2), column 16·wc + 8·x + 2·tq
        // + e % 2.
#pragma unroll
        for (int x = 0; x < 2; ++x) {
            float mv[2][2][2];  // [m][hh][q]
#pragma unroll
            for (int q = 0; q < 2; ++q) {
                const int jl = wc * 16 + x * 8 + 2 * tq + q;
                const bool okj = jt * BN + jl < npix;
                const unsigned pkJ = pkJs[jl];
                const float invlJ = okj ? 1.0f / lJs[jl] : 0.0f;
                const float dJ = okj ? dJs[jl] : 0.0f;
#pragma unroll
                for (int m = 0; m < 2; ++m)
#pragma unroll
                    for (int hh = 0; hh < 2; ++hh) {
                        float v = 0.0f;
                        if (okj && okI[m][hh]) {
                            const int il = wr * 32 + m * 16 + g + 8 * hh;
                            const float ex = __expf(acc[m][x][2 * hh + q] - 1.0f);
                            const float gij = bins_sum(gti + il * nb, n, pkJ & 0xFF,
                                                       (pkJ >> 8) & 0xFF, (pkJ >> 16) & 0xFF,
                                                       pkJ >> 24);
                            const unsigned pi = pkI[m][hh];
                            const float gji = bins_sum(gtJ + jl * nb, n, pi & 0xFF,
                                                       (pi >> 8) & 0xFF, (pi >> 16) & 0xFF,
                                                       pi >> 24);
                            v = ex * invlI[m][hh] * (gij - dI[m][hh]) + ex * invlJ * (gji - dJ);
                        }
                        mv[m][hh][q] = v;
                    }
            }
#pragma unroll
            for (int m = 0; m < 2; ++m)
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    const int il = wr * 32 + m * 16 + g + 8 * hh;
                    *reinterpret_cast<unsigned*>(ms + il * LDM + wc * 16 + x * 8 + 2 * tq) =
                        bf16_pair(mv[m][hh][0], mv[m][hh][1]);
                }
        }
        __syncthreads();  // M complete

        // 3. dq[rows 32·wr.., channels cw0..] += M[rows, 0..64) · Q_J[0..64, channels].
#pragma unroll
        for (int k0 = 0; k0 < BN; k0 += 16) {
            unsigned a0[4], a1[4];
            v2::ldsm_a(ms, LDM, wr * 32, k0, lane, a0);
            v2::ldsm_a(ms, LDM, wr * 32 + 16, k0, lane, a1);
#pragma unroll
            for (int x = 0; x < MAX_NT; x += 2) {
                if (x + 1 < nt) {
                    unsigned bb[4];
                    v2::ldsm_bt2(sj, ldq, k0, cw0 + x * 8, lane, bb);
                    mma_bf16(dq[0][x], a0, bb[0], bb[1]);
                    mma_bf16(dq[1][x], a1, bb[0], bb[1]);
                    mma_bf16(dq[0][x + 1], a0, bb[2], bb[3]);
                    mma_bf16(dq[1][x + 1], a1, bb[2], bb[3]);
                } else if (x < nt) {
                    unsigned bb[2];
                    v2::ldsm_bt1(sj, ldq, k0, cw0 + x * 8, lane, bb);
                    mma_bf16(dq[0][x], a0, bb[0], bb[1]);
                    mma_bf16(dq[1][x], a1, bb[0], bb[1]);
                }
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with Q_J: its bytes become dq [BM][ldq] f32

    float* dqs = reinterpret_cast<float*>(qj);
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int x = 0; x < MAX_NT; ++x) {
            if (x >= nt) continue;
            const int row = wr * 32 + m * 16 + g, ch = cw0 + x * 8 + 2 * tq;
            *reinterpret_cast<float2*>(dqs + row * ldq + ch) = make_float2(dq[m][x][0], dq[m][x][1]);
            *reinterpret_cast<float2*>(dqs + (row + 8) * ldq + ch) = make_float2(dq[m][x][2], dq[m][x][3]);
        }
    __syncthreads();
    // Normalisation backward, one warp per row.
    for (int rr = warp; rr < BM; rr += THREADS / 32) {
        const int i = i0 + rr;
        if (i >= npix) continue;  // uniform per warp
        norm_backward_row(f + (base + i) * c, dqs + rr * ldq, c, qnorm[base + i], norms[base + i],
                          df + (base + i) * c, lane);
    }
}

}  // namespace v3

extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_v2_forward_tf32_b2(const float* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpTf32, 2>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_v2_forward_tf32_b4(const float* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpTf32, 4>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_v2_forward_tf32_b8(const float* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpTf32, 8>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_v2_forward_bf16_b2(const __nv_bfloat16* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpBf16, 2>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_v2_forward_bf16_b4(const __nv_bfloat16* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpBf16, 4>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_v2_forward_bf16_b8(const __nv_bfloat16* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpBf16, 8>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}

extern "C" __global__ void __launch_bounds__(128, 1) relation_tc_v2_backward_tf32(const float* __restrict__ qop, const unsigned* __restrict__ pixbins, const float* __restrict__ f, const float* __restrict__ qnorm, const float* __restrict__ norms, const float* __restrict__ lsum, const float* __restrict__ dvec, const float* __restrict__ gt, int npix, int npad, int c, int cpad, int n, float* __restrict__ df) {
    v2::backward<OpTf32>(qop, pixbins, f, qnorm, norms, lsum, dvec, gt, npix, npad, c, cpad, n, df);
}
extern "C" __global__ void __launch_bounds__(128, 1) relation_tc_v2_backward_bf16(const __nv_bfloat16* __restrict__ qop, const unsigned* __restrict__ pixbins, const float* __restrict__ f, const float* __restrict__ qnorm, const float* __restrict__ norms, const float* __restrict__ lsum, const float* __restrict__ dvec, const float* __restrict__ gt, int npix, int npad, int c, int cpad, int n, float* __restrict__ df) {
    v2::backward<OpBf16>(qop, pixbins, f, qnorm, norms, lsum, dvec, gt, npix, npad, c, cpad, n, df);
}

extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_v3_forward_bf16_b2(const __nv_bfloat16* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpBf16, 2, true>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_v3_forward_bf16_b4(const __nv_bfloat16* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpBf16, 4, true>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_v3_forward_bf16_b8(const __nv_bfloat16* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpBf16, 8, true>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_v3_backward_bf16(const __nv_bfloat16* __restrict__ qop, const unsigned* __restrict__ pixbins, const float* __restrict__ f, const float* __restrict__ qnorm, const float* __restrict__ norms, const float* __restrict__ lsum, const float* __restrict__ dvec, const float* __restrict__ gt, int npix, int npad, int c, int cpad, int n, float* __restrict__ df) {
    v3::backward_bf16(qop, pixbins, f, qnorm, norms, lsum, dvec, gt, npix, npad, c, cpad, n, df);
}

// split: v2's tiles and pipeline in 3×TF32 (fp32-accurate products, the operand copy exact f32).
extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_split_forward_b2(const float* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpTf32x3, 2>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_split_forward_b4(const float* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpTf32x3, 4>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_tc_split_forward_b8(const float* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int h, int w, int n, float* __restrict__ lsum, float* __restrict__ p) {
    v2::forward<OpTf32x3, 8>(qop, pixbins, npix, npad, cpad, h, w, n, lsum, p);
}
extern "C" __global__ void __launch_bounds__(128, 1) relation_tc_split_backward(const float* __restrict__ qop, const unsigned* __restrict__ pixbins, const float* __restrict__ f, const float* __restrict__ qnorm, const float* __restrict__ norms, const float* __restrict__ lsum, const float* __restrict__ dvec, const float* __restrict__ gt, int npix, int npad, int c, int cpad, int n, float* __restrict__ df) {
    v2::backward<OpTf32x3>(qop, pixbins, f, qnorm, norms, lsum, dvec, gt, npix, npad, c, cpad, n, df);
}
