// relation_sym.cu: the symmetric forward of the fused relation map (SPEC §4.1), the "sym"
// version, in BF16, TF32 and 3×TF32 (fp32) with f32 accumulation. Host side:
// src/backend/cuda/relation_tc.rs; its backward is v3's (BF16), v2's (TF32) or split's (fp32),
// all in relation_tc.cu, whose notation this file uses.
//
// The scores are symmetric (s_ij = q_i·q_j = s_ji), so one score tile S_IJ = Q_I·Q_Jᵀ serves two
// row tiles: rows I take its row sums and bin sums over the columns J (as v2/v3 do), rows J take
// its column sums and bin sums over the rows I. Only the tiles with J "after" I are computed,
// which halves the GEMM and the exponentials of v3's forward.
//
// Tiles: T = Np / 128 row tiles per image (the operand copy's rows are padded to 128). Block
// (I, b) computes S_IJ for J = (I + d) mod T, d = 0 .. ⌊T/2⌋, where for even T the d = T/2 tile
// belongs to the blocks I < T/2 only: every unordered pair {I, J} exactly once, and every block
// ⌊T/2⌋ or ⌊T/2⌋ + 1 tiles (balanced). d = 0 is the diagonal tile, which its row side covers whole.
//
// Column side: for the rows j of J, Σ_{i ∈ I} e_ij·[i ∈ bin] and Σ_{i ∈ I} e_ij, i.e. Eᵀ·Mem_I,
// one more MMA per 8 slots whose A operand is Eᵀ. BF16: the score accumulators rounded to BF16
// pairs are 8×8 fragments (lane: row g, columns 2t, 2t + 1), and movmatrix transposes each in
// registers: the m16n8k16 A fragment of Eᵀ over columns c0..c0+15 and rows r0..r0+15 is
// (a0, a1, a2, a3) = the transposes of E's blocks (rows 0–7, columns 0–7), (0–7, 8–15),
// (8–15, 0–7), (8–15, 8–15). Mem_I [rows × 8·NBT slots] is the 0/1 membership of the block's own
// rows: slots 0 .. n²−1 the bins, slot n² every valid row (the column sums). So 8·NBT ≥ n² + 1:
// with NBT = SLOT_TILES = 4, n ≤ 5. TF32 (m16n8k8, no 32-bit movmatrix): the fragments of Eᵀ
// gathered by shuffles, `transpose_tf32`; 3×TF32 splits the gathered e into hi + lo, two MMAs
// against the exact membership.
//
// Cross-block sums: a row receives its own block's row side and other blocks' column sides.
// They are added into acc [B, N, n² + 1] (bins, then l) as 64-bit fixed point, value · 2³², with
// atomicAdd. Integer addition is associative, so the totals do not depend on the order the
// blocks run in: deterministic run to run. Every partial is 0 or at least e⁻² (e_ij ≥ e⁻² since
// s_ij ≥ −1), and v · 2³² of an f32 v ≥ 2⁻⁹ is an integer, so the conversion is exact and the
// totals are the exact sums of the f32 partials (a sum of at most 2³¹ entries of at most 1 fits
// in 64 bits). Extra memory 8·(n² + 1) bytes per pixel: O(N·n²), no N×N.
// relation_sym_finalize divides: P_ib = acc_ib / (l_i·|b|), l_i = acc_i,n² (as f32, like v2).
//
// Per 128×128 tile and warp (rows 32·wr.., columns 64·wc.., warps 4 × 2, as v2/v3): the score
// MMAs (BF16: 480 at Cp = 480, ldmatrix fragments as v3; TF32: 960, fragments as v2; 3×TF32:
// 2880, as split), the row side's bin MMAs, and for an off-diagonal tile the column side's
// (BF16 2·4·NBT and 32 movmatrix; TF32 4·4·NBT and 128 shuffles). The four row warps'
// column partials meet in shared memory (one buffer each, summed in a fixed order); then the
// block adds 128 × (n² + 1) values into acc (zero partials skipped: a bin no row of I lies in).
// Shared memory: the 3-stage pipeline of v3 / v2 (60 KB BF16, 108 KB TF32) + 4 × 128 × CP
// floats (CP = col_pitch: 24 at n ≤ 3, 40 at n = 4, 5).
#include "common.cuh"
#include "mma_sync.cuh"
#include "relation_mma.cuh"
#include "relation_tc.cuh"

namespace sym {

typedef unsigned long long u64;

constexpr int THREADS = 256;
constexpr int BM = 128;  // rows and columns of a score tile
// 8-slot tiles of the bin accumulators: n² + 1 ≤ 32 slots, n ≤ 5 (W30's n). One instantiation per
// precision: each is about 1.4 MB of cubin per architecture, and n = 6, 7 would need twice the
// tiles (and more registers); those run on v3 / v2 / split.
constexpr int SLOT_TILES = 4;
constexpr float FIXED_ONE = 4294967296.0f;  // 2³²: the fixed-point scale of acc

// Column-partial row pitch in floats: the 8-slot tiles that hold a slot (n² + 1 of them), made
// ≡ 8 or 24 mod 32 so that the float2 stores of a half-warp (4 columns × 4 slot pairs) hit 32
// distinct banks.
__device__ __forceinline__ int col_pitch(int slots) {
    const int cp = (slots + 7) / 8 * 8;
    return (cp & 15) == 0 ? cp + 8 : cp;
}

__device__ __forceinline__ u64 to_fixed(float v) { return (u64)(v * FIXED_ONE); }

// Whether a row with packed bins `pk` counts in slot `slot` (bin `bvu`; slot nb: every row < N).
__device__ __forceinline__ bool in_slot(unsigned pk, int slot, int nb, unsigned bvu) {
    return slot == nb ? pk != NO_BINS : in_bin(pk, bvu);
}

// The column side's accumulators of columns col0 + (g | g + 8), slots bt·8 + 2t, +1 (the
// m16n8 C layout) → a row warp's buffer `cw` [BM][cp].
// Slot tiles at or beyond `used` hold no slot (their sums are 0) and are not stored.
template <int NBT>
__device__ __forceinline__ void store_cols(float* __restrict__ cw, int cp, int used, int col0,
                                           const float (&cacc)[NBT][4], int g, int tq) {
    float* c = cw + (col0 + g) * cp + 2 * tq;
#pragma unroll
    for (int bt = 0; bt < NBT; ++bt) {
        if (bt >= used) break;
        *reinterpret_cast<float2*>(c + bt * 8) = make_float2(cacc[bt][0], cacc[bt][1]);
        *reinterpret_cast<float2*>(c + 8 * cp + bt * 8) = make_float2(cacc[bt][2], cacc[bt][3]);
    }
}

// TF32 / 3×TF32 column side: Eᵀ's m16n8k8 A fragment over 16 columns (score n-tiles e0 = 2y,
// e1 = 2y + 1) and the 8 rows 8h + 0..7 of an m16 tile (k = t ↔ row t, k = t + 4 ↔ row t + 4):
// a0 = E[t][g], a1 = E[t][8 + g], a2 = E[t + 4][g], a3 = E[t + 4][8 + g]. E[r][c] of an n-tile
// lives in lane 4r + c/2, register 2h + c % 2: two shuffles per value (both registers of the
// source lane), each lane keeping the one of its column's parity.
__device__ __forceinline__ void transpose_tf32(const float (&e0)[4], const float (&e1)[4], int h,
                                               int g, int tq, float (&a)[4]) {
    const int src = 4 * tq + (g >> 1);
    const bool odd = g & 1;
    const float x00 = __shfl_sync(0xffffffffu, e0[2 * h], src);
    const float x01 = __shfl_sync(0xffffffffu, e0[2 * h + 1], src);
    const float x10 = __shfl_sync(0xffffffffu, e1[2 * h], src);
    const float x11 = __shfl_sync(0xffffffffu, e1[2 * h + 1], src);
    const float y00 = __shfl_sync(0xffffffffu, e0[2 * h], src + 16);
    const float y01 = __shfl_sync(0xffffffffu, e0[2 * h + 1], src + 16);
    const float y10 = __shfl_sync(0xffffffffu, e1[2 * h], src + 16);
    const float y11 = __shfl_sync(0xffffffffu, e1[2 * h + 1], src + 16);
    a[0] = odd ? x01 : x00;
    a[1] = odd ? x11 : x10;
    a[2] = odd ? y01 : y00;
    a[3] = odd ? y11 : y10;
}

template <class Op>
__device__ __forceinline__ void forward(const typename Op::T* __restrict__ qop,
                                        const unsigned* __restrict__ pixbins, int npix,
                                        int npad, int cpad, int n, u64* __restrict__ acc) {
    using T = typename Op::T;
    constexpr int NBT = SLOT_TILES;
    constexpr int KC = v2::KC, STAGES = v2::STAGES;
    constexpr int KSTEP = Op::IS_TF32 ? 8 : 16;
    constexpr int STAGE = 2 * BM * Op::LDA;  // elements per stage: Q_I and Q_J chunks
    extern __shared__ __align__(128) unsigned char smem[];
    T* stages = reinterpret_cast<T*>(smem);
    float* cred = reinterpret_cast<float*>(smem + STAGES * STAGE * sizeof(T));  // [4][BM][CP]

    const int b = blockIdx.y, ti = blockIdx.x, t = threadIdx.x;
    const int ntiles = npad / BM, half = ntiles / 2;
    const int nd = ((ntiles & 1) || ti < half) ? half + 1 : half;
    const int i0 = ti * BM;
    const int warp = t >> 5, lane = t & 31, g = lane >> 2, tq = lane & 3;
    const int wr = warp >> 1, wc = warp & 1;
    const int nb = n * n, slots = nb + 1;
    const int used = (slots + 7) / 8;              // slot tiles that hold a slot
    const int CP = col_pitch(slots), CBUF = BM * CP;  // column partials: [4][BM][CP] floats
    const T* qb = qop + (i64)b * npad * cpad;
    u64* accb = acc + (i64)b * npix * slots;
    const int nk = cpad / KC, total = nd * nk;
    constexpr unsigned ONE = 0x3F80u;       // BF16 1.0
    constexpr unsigned ONE_F32 = 0x3F800000u;

    // The bin of slot g of each 8-slot tile; none for the column-sum slot n² and the unused ones.
    unsigned bvu[NBT];
    v2::bin_codes<NBT>(n, g, bvu);
    // BF16: Mem_I as the column side's B fragments: k = the warp's rows 16m + (2t, 2t + 1 | +8),
    // n = slot g of tile bt; slot n² is 1 for every row < N. (TF32 builds them where used.)
    unsigned memi[2][NBT][2];
#pragma unroll
    for (int m = 0; m < (Op::IS_TF32 ? 0 : 2); ++m) {
        const int r = i0 + wr * 32 + m * 16 + 2 * tq;
        const unsigned pk[4] = {__ldg(pixbins + r), __ldg(pixbins + r + 1),
                                __ldg(pixbins + r + 8), __ldg(pixbins + r + 9)};
#pragma unroll
        for (int bt = 0; bt < NBT; ++bt) {
            unsigned bit[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) bit[e] = in_slot(pk[e], bt * 8 + g, nb, bvu[bt]) ? ONE : 0u;
            memi[m][bt][0] = bit[0] | (bit[1] << 16);
            memi[m][bt][1] = bit[2] | (bit[3] << 16);
        }
    }

    float sacc[2][8][4];  // the score tile, then e
    float bacc[2][NBT][4];
    float lrow[2][2] = {};
    v2::zero(sacc);
    v2::zero(bacc);

    auto col_tile = [&](int d) { return ti + d < ntiles ? ti + d : ti + d - ntiles; };
    auto load = [&](int u) {
        const int d = u / nk, kc = u - d * nk;
        T* sI = stages + (u % STAGES) * STAGE;
        T* sJ = sI + BM * Op::LDA;
        v2::stage_async<Op, THREADS>(sI, qb + (i64)i0 * cpad, BM, cpad, kc * KC);
        v2::stage_async<Op, THREADS>(sJ, qb + (i64)col_tile(d) * BM * cpad, BM, cpad, kc * KC);
    };
    v2::pipeline(total, load, [&](int u) {
        const T* sI = stages + (u % STAGES) * STAGE;
        const T* sJ = sI + BM * Op::LDA;
#pragma unroll
        for (int k0 = 0; k0 < KC; k0 += KSTEP)
            v2::score_kstep<Op, !Op::IS_TF32>(sI, sJ, k0, wr, wc, g, tq, lane, sacc);
        const int d = u / nk;
        if (u - d * nk != nk - 1) return;

        // ---- epilogue of tile (I, J) -------------------------------------------------------
        const int tj = col_tile(d);
        const bool offdiag = tj != ti;  // the same for the whole block
        const int jw = tj * BM + wc * 64;
        // e = exp(s − 1); 0 for a column j ≥ N and (for the column side) a row i ≥ N.
#pragma unroll
        for (int m = 0; m < 2; ++m) {
            const int ra = i0 + wr * 32 + m * 16 + g;
            const bool va = ra < npix, vb = ra + 8 < npix;
#pragma unroll
            for (int x = 0; x < 8; ++x) {
                const int j = jw + x * 8 + 2 * tq;
                const bool v0 = j < npix, v1 = j + 1 < npix;
                float* c = sacc[m][x];
                c[0] = va && v0 ? __expf(c[0] - 1.0f) : 0.0f;
                c[1] = va && v1 ? __expf(c[1] - 1.0f) : 0.0f;
                c[2] = vb && v0 ? __expf(c[2] - 1.0f) : 0.0f;
                c[3] = vb && v1 ? __expf(c[3] - 1.0f) : 0.0f;
                lrow[m][0] += c[0] + c[1];
                lrow[m][1] += c[2] + c[3];
            }
        }
        if constexpr (Op::IS_TF32) {
            // Column side first (it reads the exact e; the row side rounds them in place): per
            // 16 columns and 8 rows, Eᵀ's A fragment by shuffles, the membership of rows t and
            // t + 4 as B (1.0f or 0), e rounded to TF32 or split (3×TF32: e_lo·Mem + e_hi·Mem,
            // the 0/1 membership being exact).
            if (offdiag) {
#pragma unroll
                for (int y = 0; y < 4; ++y) {
                    float cacc[NBT][4] = {};  // [slot tile][m16n8 C fragment]
#pragma unroll
                    for (int m = 0; m < 2; ++m)
#pragma unroll
                        for (int h = 0; h < 2; ++h) {
                            float ev[4];
                            transpose_tf32(sacc[m][2 * y], sacc[m][2 * y + 1], h, g, tq, ev);
                            const int r = i0 + wr * 32 + m * 16 + h * 8 + tq;
                            const unsigned pk0 = __ldg(pixbins + r), pk1 = __ldg(pixbins + r + 4);
                            unsigned ah[4];
                            [[maybe_unused]] unsigned al[4];
#pragma unroll
                            for (int e = 0; e < 4; ++e) {
                                if constexpr (Op::SPLIT) {
                                    split_tf32(ev[e], ah[e], al[e]);
                                } else {
                                    ah[e] = tf32_bits(ev[e]);
                                }
                            }
#pragma unroll
                            for (int bt = 0; bt < NBT; ++bt) {
                                const int slot = bt * 8 + g;
                                const unsigned b0 = in_slot(pk0, slot, nb, bvu[bt]) ? ONE_F32 : 0u;
                                const unsigned b1 = in_slot(pk1, slot, nb, bvu[bt]) ? ONE_F32 : 0u;
                                if constexpr (Op::SPLIT) mma_tf32(cacc[bt], al, b0, b1);
                                mma_tf32(cacc[bt], ah, b0, b1);
                            }
                        }
                    store_cols<NBT>(cred + wr * CBUF, CP, used, wc * 64 + y * 16, cacc, g, tq);
                }
            }
            // Row side, as v2's (rounds e in place).
            v2::row_bins_tf32<Op, NBT>(sacc, bacc, pixbins, jw, bvu, tq);
        } else {
            // BF16, per pair of score n-tiles (2y, 2y + 1: 16 columns): the row side's bin MMA (the
            // accumulators packed in BF16 pairs are the A fragment, as v2) and the column side's
            // (their transposes are Eᵀ's A fragment).
#pragma unroll
            for (int y = 0; y < 4; ++y) {
                unsigned a[2][4];
                v2::bf16_pairs(sacc, y, a);
                v2::row_bins_bf16<NBT>(a, bacc, pixbins, jw + 16 * y + 2 * tq, bvu);
                if (!offdiag) continue;
                // Column side of columns 64·wc + 16y .. +15 over the warp's 32 rows (two k16 steps).
                float cacc[NBT][4] = {};  // [slot tile][m16n8 C fragment]
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    const unsigned at[4] = {movmatrix_trans(a[m][0]), movmatrix_trans(a[m][2]),
                                            movmatrix_trans(a[m][1]), movmatrix_trans(a[m][3])};
#pragma unroll
                    for (int bt = 0; bt < NBT; ++bt)
                        mma_bf16(cacc[bt], at, memi[m][bt][0], memi[m][bt][1]);
                }
                store_cols<NBT>(cred + wr * CBUF, CP, used, wc * 64 + y * 16, cacc, g, tq);
            }
        }
        v2::zero(sacc);
        if (offdiag) {
            __syncthreads();  // all four row warps' column partials are in cred
            const int j0 = tj * BM;
            for (int e = t; e < BM * slots; e += THREADS) {
                const int col = e / slots, s = e - col * slots;
                if (j0 + col >= npix) continue;
                const float* c = cred + col * CP + s;
                const float v = ((c[0] + c[CBUF]) + c[2 * CBUF]) + c[3 * CBUF];
                if (v != 0.0f) atomicAdd(accb + (i64)(j0 + col) * slots + s, to_fixed(v));
            }
            __syncthreads();  // cred is free for the next tile
        }
    });
    // The stages are free (the pipeline's last barrier): reuse them to combine the two column
    // warps.

    // Row sums over the quad; column warp 1's partials to shared memory for column warp 0.
    constexpr int RLD = NBT * 8 + 1;
    float* red = reinterpret_cast<float*>(smem);  // [BM][RLD]
    v2::stage_row_partials<NBT>(lrow, bacc, red, wr, wc, g, tq);
    if (wc == 0) {
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
                const int rl = wr * 32 + m * 16 + g + 8 * hh, i = i0 + rl;
                if (i >= npix) continue;
                u64* arow = accb + (i64)i * slots;
                if (tq == 0) atomicAdd(arow + nb, to_fixed(lrow[m][hh] + red[rl * RLD + NBT * 8]));
#pragma unroll
                for (int bt = 0; bt < NBT; ++bt)
#pragma unroll
                    for (int q = 0; q < 2; ++q) {
                        const int bin = bt * 8 + 2 * tq + q;
                        if (bin >= nb) continue;
                        const float v = bacc[m][bt][2 * hh + q] + red[rl * RLD + bin];
                        if (v != 0.0f) atomicAdd(arow + bin, to_fixed(v));
                    }
            }
    }
}

}  // namespace sym

// acc [B·N, n² + 1] fixed point → lsum [B·N], p [B·N, n²]: P_ib = bin_ib / (l_i·|b|).
extern "C" __global__ void relation_sym_finalize(const unsigned long long* __restrict__ acc,
                                                 int rows, int h, int w, int n,
                                                 float* __restrict__ lsum, float* __restrict__ p) {
    const i64 r = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const int nb = n * n;
    const unsigned long long* a = acc + r * (nb + 1);
    constexpr double INV = 1.0 / 4294967296.0;
    const float l = (float)((double)a[nb] * INV);
    for (int bin = 0; bin < nb; ++bin) {
        const int v = bin / n, u = bin - v * n;
        const float s = (float)((double)a[bin] * INV);
        p[r * nb + bin] = s / (l * (float)bin_size(v, u, h, w, n));
    }
    lsum[r] = l;
}

extern "C" __global__ void __launch_bounds__(256, 1) relation_sym_forward_bf16(const __nv_bfloat16* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int n, unsigned long long* __restrict__ acc) {
    sym::forward<OpBf16>(qop, pixbins, npix, npad, cpad, n, acc);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_sym_forward_tf32(const float* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int n, unsigned long long* __restrict__ acc) {
    sym::forward<OpTf32>(qop, pixbins, npix, npad, cpad, n, acc);
}
extern "C" __global__ void __launch_bounds__(256, 1) relation_sym_forward_f32(const float* __restrict__ qop, const unsigned* __restrict__ pixbins, int npix, int npad, int cpad, int n, unsigned long long* __restrict__ acc) {
    sym::forward<OpTf32x3>(qop, pixbins, npix, npad, cpad, n, acc);
}
