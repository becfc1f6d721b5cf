// relation_mma.cuh: the mma.sync fragment helpers of the relation kernels (relation_tc.cu's v2,
// v3 and split; relation_sym.cu): the 32-channel cp.async staging of operand rows, the
// multi-stage pipeline that drives it, and the fragment loads from it (32-bit loads or
// ldmatrix), in namespace v2 where they began.
#pragma once

#include "common.cuh"
#include "mma_sync.cuh"
#include "relation_tc.cuh"
#include "wmma_ops.cuh"

namespace v2 {

constexpr int KC = 32;      // channels per pipeline chunk
constexpr int STAGES = 3;   // chunks in flight

// BF16 fragments by ldmatrix from a tile with row pitch `ld` elements (rows 16-byte aligned).
// A of m16n8k16 (rows r0.., k0..) from a row-major [row][k] tile: a0..a3 are the 8×8 matrices
// (rows +0, k +0), (+8, +0), (+0, +8), (+8, +8).
__device__ __forceinline__ void ldsm_a(const __nv_bfloat16* s, int ld, int r0, int k0, int lane,
                                       unsigned (&a)[4]) {
    const int m = lane >> 3;
    ldsm<4, false>(a, s + (r0 + (lane & 7) + 8 * (m & 1)) * ld + k0 + 8 * (m >> 1));
}
// B of two n8 tiles (n0.., n0 + 8..; k0..) from an [n][k] tile: b[0], b[1] of the first,
// b[2], b[3] of the second.
__device__ __forceinline__ void ldsm_b2(const __nv_bfloat16* s, int ld, int n0, int k0, int lane,
                                        unsigned (&b)[4]) {
    const int m = lane >> 3;
    ldsm<4, false>(b, s + (n0 + (lane & 7) + 8 * (m >> 1)) * ld + k0 + 8 * (m & 1));
}
// The same from a [k][n] tile (transposed load): rows k0.., columns n0...
__device__ __forceinline__ void ldsm_bt2(const __nv_bfloat16* s, int ld, int k0, int n0, int lane,
                                         unsigned (&b)[4]) {
    const int m = lane >> 3;
    ldsm<4, true>(b, s + (k0 + (lane & 7) + 8 * (m & 1)) * ld + n0 + 8 * (m >> 1));
}
// B of one n8 tile from a [k][n] tile (lanes 16–31 repeat lanes 0–15's addresses, unused).
__device__ __forceinline__ void ldsm_bt1(const __nv_bfloat16* s, int ld, int k0, int n0, int lane,
                                         unsigned (&b)[2]) {
    ldsm<2, true>(b, s + (k0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * ld + n0);
}

// Copy `rows` rows × KC operands (global row stride `ld`, from column k0) into shared memory
// (row stride Op::LDA) with 16-byte cp.async, `threads` threads.
template <class Op, int THREADS>
__device__ __forceinline__ void stage_async(typename Op::T* __restrict__ dst,
                                            const typename Op::T* __restrict__ src, int rows,
                                            int ld, int k0) {
    constexpr int PER = 16 / (int)sizeof(typename Op::T);
    constexpr int VPR = KC / PER;
    for (int v = threadIdx.x; v < rows * VPR; v += THREADS) {
        const int r = v / VPR, cc = (v % VPR) * PER;
        cp_async16(dst + r * Op::LDA + cc, src + (i64)r * ld + k0 + cc);
    }
}

// The STAGES-deep cp.async pipeline over `total` chunks: `load(u)` issues chunk u's copies
// STAGES − 1 chunks ahead of `body(u)`, which uses them. The one barrier per chunk both makes
// chunk u visible and tells every thread that all are done with chunk u − 1's stage, which the
// copies issued right after it overwrite. On return every copy has landed and the block has
// passed a barrier: the caller may reuse the stages.
template <class Load, class Body>
__device__ __forceinline__ void pipeline(int total, const Load& load, const Body& body) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < total) load(s);
        cp_async_commit();
    }
    for (int u = 0; u < total; ++u) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (u + STAGES - 1 < total) load(u + STAGES - 1);
        cp_async_commit();
        body(u);
    }
    cp_async_wait<0>();
    __syncthreads();
}

// The bin (v, u) of column g of each 8-bin tile, packed v | u << 8 (for the membership
// fragments); 0xFFFF where no bin (bin ≥ n²).
template <int NBT>
__device__ __forceinline__ void bin_codes(int n, int g, unsigned (&bvu)[NBT]) {
#pragma unroll
    for (int bt = 0; bt < NBT; ++bt) {
        const int bin = bt * 8 + g, v = bin / n;
        bvu[bt] = bin < n * n ? (unsigned)v | ((unsigned)(bin - v * n) << 8) : 0xFFFFu;
    }
}

// Zero an array of MMA accumulator fragments.
template <int A, int B>
__device__ __forceinline__ void zero(float (&x)[A][B][4]) {
#pragma unroll
    for (int a = 0; a < A; ++a)
#pragma unroll
        for (int b = 0; b < B; ++b)
#pragma unroll
            for (int e = 0; e < 4; ++e) x[a][b][e] = 0.0f;
}

// Per k-step of one chunk: the A fragment of rows r0..r0+15 and the B fragment of columns
// c0..c0+7 (both stored [row][k] with pitch LDA, k from k0).
template <class Op>
__device__ __forceinline__ void frag_a(const typename Op::T* s, int r0, int k0, int g, int t,
                                       unsigned (&a)[4]) {
    constexpr int L = Op::LDA;
    if constexpr (Op::IS_TF32) {
        a[0] = ld32(s + (r0 + g) * L + k0 + t);
        a[1] = ld32(s + (r0 + g + 8) * L + k0 + t);
        a[2] = ld32(s + (r0 + g) * L + k0 + t + 4);
        a[3] = ld32(s + (r0 + g + 8) * L + k0 + t + 4);
    } else {
        a[0] = ld32(s + (r0 + g) * L + k0 + 2 * t);
        a[1] = ld32(s + (r0 + g + 8) * L + k0 + 2 * t);
        a[2] = ld32(s + (r0 + g) * L + k0 + 2 * t + 8);
        a[3] = ld32(s + (r0 + g + 8) * L + k0 + 2 * t + 8);
    }
}
template <class Op>
__device__ __forceinline__ void frag_b(const typename Op::T* s, int c0, int k0, int g, int t,
                                       unsigned& b0, unsigned& b1) {
    constexpr int L = Op::LDA;
    if constexpr (Op::IS_TF32) {
        b0 = ld32(s + (c0 + g) * L + k0 + t);
        b1 = ld32(s + (c0 + g) * L + k0 + t + 4);
    } else {
        b0 = ld32(s + (c0 + g) * L + k0 + 2 * t);
        b1 = ld32(s + (c0 + g) * L + k0 + 2 * t + 8);
    }
}
template <class Op>
__device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                    unsigned b1) {
    if constexpr (Op::IS_TF32) {
        mma_tf32(d, a, b0, b1);
    } else {
        mma_bf16(d, a, b0, b1);
    }
}

// ---- the 128 × 128 forward tile (v2/v3/split and sym): 8 warps, 4 row × 2 column warps; warp
// (wr, wc) owns score rows 32·wr.. (2 m16 tiles) and columns 64·wc.. (8 n8 tiles) ------------

// One k-step (8 channels TF32, 16 BF16) of the warp's scores: acc += Q_I·Q_Jᵀ from the staged
// chunks sI (rows i) and sJ (rows j), [row][k] with pitch Op::LDA. 3×TF32 splits every fragment
// once per k-step (A: 8 values, B: 16 per warp for 48 MMAs); LDSM (BF16 only) loads by
// ldmatrix, one per A fragment and per two B fragments (6 loads per 16 MMAs instead of 24).
template <class Op, bool LDSM>
__device__ __forceinline__ void score_kstep(const typename Op::T* sI, const typename Op::T* sJ,
                                            int k0, int wr, int wc, int g, int tq, int lane,
                                            float (&acc)[2][8][4]) {
    unsigned a[2][4];
    if constexpr (Op::SPLIT) {
        unsigned al[2][4];
        frag_a<Op>(sI, wr * 32, k0, g, tq, a[0]);
        frag_a<Op>(sI, wr * 32 + 16, k0, g, tq, a[1]);
        split_frag(a[0], a[0], al[0]);
        split_frag(a[1], a[1], al[1]);
#pragma unroll
        for (int x = 0; x < 8; ++x) {
            unsigned b0, b1, bh0, bh1, bl0, bl1;
            frag_b<Op>(sJ, wc * 64 + x * 8, k0, g, tq, b0, b1);
            split_tf32(__uint_as_float(b0), bh0, bl0);
            split_tf32(__uint_as_float(b1), bh1, bl1);
            mma_x3(acc[0][x], a[0], al[0], bh0, bh1, bl0, bl1);
            mma_x3(acc[1][x], a[1], al[1], bh0, bh1, bl0, bl1);
        }
    } else if constexpr (LDSM) {
        static_assert(!Op::IS_TF32, "ldmatrix fragments are BF16 only");
        ldsm_a(sI, Op::LDA, wr * 32, k0, lane, a[0]);
        ldsm_a(sI, Op::LDA, wr * 32 + 16, k0, lane, a[1]);
#pragma unroll
        for (int x = 0; x < 8; x += 2) {
            unsigned bb[4];
            ldsm_b2(sJ, Op::LDA, wc * 64 + x * 8, k0, lane, bb);
            mma<Op>(acc[0][x], a[0], bb[0], bb[1]);
            mma<Op>(acc[1][x], a[1], bb[0], bb[1]);
            mma<Op>(acc[0][x + 1], a[0], bb[2], bb[3]);
            mma<Op>(acc[1][x + 1], a[1], bb[2], bb[3]);
        }
    } else {
        frag_a<Op>(sI, wr * 32, k0, g, tq, a[0]);
        frag_a<Op>(sI, wr * 32 + 16, k0, g, tq, a[1]);
#pragma unroll
        for (int x = 0; x < 8; ++x) {
            unsigned b0, b1;
            frag_b<Op>(sJ, wc * 64 + x * 8, k0, g, tq, b0, b1);
            mma<Op>(acc[0][x], a[0], b0, b1);
            mma<Op>(acc[1][x], a[1], b0, b1);
        }
    }
}

// TF32 / 3×TF32 row side of a tile: bacc[r][bin] += Σ_j e[r][j]·[j ∈ bin] over the warp's
// columns jw.., one k8 step per score n-tile, with k permuted so that the accumulator registers
// are the A fragment: k = t ↔ column 2t, k = t + 4 ↔ column 2t + 1 (a0 = c0, a1 = c2, a2 = c1,
// a3 = c3), rounded to TF32 in place (3×TF32: e split, hi in place and lo in a second MMA; the
// 0/1 membership is exact). bvu[bt]: the bin of slot g of tile bt (in_bin).
template <class Op, int NBT>
__device__ __forceinline__ void row_bins_tf32(float (&acc)[2][8][4], float (&bacc)[2][NBT][4],
                                              const unsigned* __restrict__ pixbins, int jw,
                                              const unsigned (&bvu)[NBT], int tq) {
#pragma unroll
    for (int x = 0; x < 8; ++x) {
        const int j = jw + x * 8 + 2 * tq;
        const unsigned pk0 = __ldg(pixbins + j), pk1 = __ldg(pixbins + j + 1);
        [[maybe_unused]] unsigned lo[2][4];
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                if constexpr (Op::SPLIT) {
                    unsigned hi;
                    split_tf32(acc[m][x][e], hi, lo[m][e]);
                    acc[m][x][e] = __uint_as_float(hi);
                } else {
                    acc[m][x][e] = __uint_as_float(tf32_bits(acc[m][x][e]));
                }
            }
#pragma unroll
        for (int bt = 0; bt < NBT; ++bt) {
            const unsigned b0 = in_bin(pk0, bvu[bt]) ? 0x3F800000u : 0u;
            const unsigned b1 = in_bin(pk1, bvu[bt]) ? 0x3F800000u : 0u;
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                if constexpr (Op::SPLIT)
                    mma_tf32(bacc[m][bt], lo[m][0], lo[m][2], lo[m][1], lo[m][3], b0, b1);
                mma_tf32(bacc[m][bt], __float_as_uint(acc[m][x][0]),
                         __float_as_uint(acc[m][x][2]), __float_as_uint(acc[m][x][1]),
                         __float_as_uint(acc[m][x][3]), b0, b1);
            }
        }
    }
}

// BF16: the accumulators of score n-tiles 2y, 2y + 1 packed in pairs, which are exactly the
// m16n8k16 A fragment over those 16 columns (columns 2t, 2t+1 | 2t+8, 2t+9).
__device__ __forceinline__ void bf16_pairs(const float (&acc)[2][8][4], int y,
                                           unsigned (&a)[2][4]) {
#pragma unroll
    for (int m = 0; m < 2; ++m) {
        a[m][0] = bf16_pair(acc[m][2 * y][0], acc[m][2 * y][1]);
        a[m][1] = bf16_pair(acc[m][2 * y][2], acc[m][2 * y][3]);
        a[m][2] = bf16_pair(acc[m][2 * y + 1][0], acc[m][2 * y + 1][1]);
        a[m][3] = bf16_pair(acc[m][2 * y + 1][2], acc[m][2 * y + 1][3]);
    }
}

// BF16 row side of 16 columns: bacc += E·Mem, one k16 step, A = bf16_pairs, columns
// ja.. (= jw + 16y + 2t).
template <int NBT>
__device__ __forceinline__ void row_bins_bf16(const unsigned (&a)[2][4], float (&bacc)[2][NBT][4],
                                              const unsigned* __restrict__ pixbins, int ja,
                                              const unsigned (&bvu)[NBT]) {
    const int jb = ja + 8;
    const unsigned pa0 = __ldg(pixbins + ja), pa1 = __ldg(pixbins + ja + 1);
    const unsigned pb0 = __ldg(pixbins + jb), pb1 = __ldg(pixbins + jb + 1);
#pragma unroll
    for (int bt = 0; bt < NBT; ++bt) {
        const unsigned one = 0x3F80u;  // BF16 1.0
        const unsigned b0 = (in_bin(pa0, bvu[bt]) ? one : 0u) |
                            ((in_bin(pa1, bvu[bt]) ? one : 0u) << 16);
        const unsigned b1 = (in_bin(pb0, bvu[bt]) ? one : 0u) |
                            ((in_bin(pb1, bvu[bt]) ? one : 0u) << 16);
        mma_bf16(bacc[0][bt], a[0], b0, b1);
        mma_bf16(bacc[1][bt], a[1], b0, b1);
    }
}

// The end of a 128-row forward block (v2/v3/split and sym; 8 warps, 4 row × 2 column warps, each
// row warp's rows 32·wr + 16m + g (+8 for hh = 1)): every row's sum over its quad (a fixed
// butterfly, so every lane holds it), then column warp 1's row sums and bin sums into
// red [128][8·NBT + 1] (shared memory; the row sum at 8·NBT) and a barrier, after which column
// warp 0 adds them to its own in a fixed order. Every thread of the block must call it.
template <int NBT>
__device__ __forceinline__ void stage_row_partials(float (&lrow)[2][2],
                                                   const float (&bacc)[2][NBT][4], float* red,
                                                   int wr, int wc, int g, int tq) {
    constexpr int RLD = NBT * 8 + 1;
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            float l = lrow[m][hh];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            lrow[m][hh] = l;
        }
    if (wc == 1) {
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int rl = wr * 32 + m * 16 + g + 8 * hh;
                if (tq == 0) red[rl * RLD + NBT * 8] = lrow[m][hh];
#pragma unroll
                for (int bt = 0; bt < NBT; ++bt) {
                    red[rl * RLD + bt * 8 + 2 * tq] = bacc[m][bt][2 * hh];
                    red[rl * RLD + bt * 8 + 2 * tq + 1] = bacc[m][bt][2 * hh + 1];
                }
            }
    }
    __syncthreads();
}

}  // namespace v2
