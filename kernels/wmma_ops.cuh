// wmma_ops.cuh: the tensor-core operand types shared by the WMMA / mma.sync kernels
// (relation_tc.cu, conv_implicit.cu, conv_wgrad.cu).
#pragma once

#include <cuda_bf16.h>
#include <mma.h>

// A tensor-core operand staged in shared memory: TF32 values stored as f32 (rounded to nearest,
// ties away, by cvt.rna.tf32.f32, so the low 13 mantissa bits are zero) or BF16 (round to
// nearest even). LDA: the row pitch of a 32-element chunk, rows 16-byte aligned and 4 banks
// apart.

struct OpTf32 {
    typedef float T;
    typedef nvcuda::wmma::precision::tf32 Frag;
    static constexpr bool IS_TF32 = true;
    static constexpr bool SPLIT = false;
    static constexpr int K = 8;     // WMMA k for TF32
    static constexpr int LDA = 36;  // 144-byte rows
    __device__ __forceinline__ static float from_float(float x) {
        return nvcuda::wmma::__float_to_tf32(x);
    }
};

struct OpBf16 {
    typedef __nv_bfloat16 T;
    typedef __nv_bfloat16 Frag;
    static constexpr bool IS_TF32 = false;
    static constexpr bool SPLIT = false;
    static constexpr int K = 16;    // WMMA k for BF16
    static constexpr int LDA = 40;  // 80-byte rows
    __device__ __forceinline__ static __nv_bfloat16 from_float(float x) {
        return __float2bfloat16_rn(x);
    }
};

// fp32-accurate products on the TF32 tensor cores ("3×TF32"): the operand stays exact f32 in
// memory and in shared memory; each fragment value x is split when loaded into hi = tf32(x) and
// lo = tf32(x − hi) (|x − hi − lo| ≲ 2⁻²² |x|), and a·b becomes hi·hi + hi·lo + lo·hi, three
// TF32 MMAs with f32 accumulation (the dropped lo·lo is below 2⁻²² of the product). Used by
// relation_tc.cu's `split` version (mma.sync only: no WMMA fragments of this type exist).
struct OpTf32x3 {
    typedef float T;
    static constexpr bool IS_TF32 = true;
    static constexpr bool SPLIT = true;
    static constexpr int K = 8;
    static constexpr int LDA = 36;
    __device__ __forceinline__ static float from_float(float x) { return x; }
};

// ---- a warp's 32 × 32 output tile as 2 × 2 WMMA 16 × 16 accumulators (conv_implicit.cu,
// conv_wgrad.cu) ----------------------------------------------------------------------------

template <class Op>
using Acc32 = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, Op::K, float>;

// One k-step: acc[i][j] += A_i · B_j with A_i the 16 × K fragment at a + i·a_step (layout LA,
// pitch lda) and B_j the K × 16 fragment at b + j·b_step (layout LB, pitch ldb).
template <class Op, class LA, class LB>
__device__ __forceinline__ void mma_32x32(Acc32<Op> (&acc)[2][2], const typename Op::T* a,
                                          int a_step, int lda, const typename Op::T* b,
                                          int b_step, int ldb) {
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, Op::K, typename Op::Frag, LA> fa[2];
    wmma::fragment<wmma::matrix_b, 16, 16, Op::K, typename Op::Frag, LB> fb[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(fa[i], a + i * a_step, lda);
        wmma::load_matrix_sync(fb[i], b + i * b_step, ldb);
        if constexpr (Op::IS_TF32) {
            // Already TF32 values (rounded when staged); the API asks for the conversion.
#pragma unroll
            for (int e = 0; e < fa[i].num_elements; ++e)
                fa[i].x[e] = wmma::__float_to_tf32(fa[i].x[e]);
#pragma unroll
            for (int e = 0; e < fb[i].num_elements; ++e)
                fb[i].x[e] = wmma::__float_to_tf32(fb[i].x[e]);
        }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
}

// The tile to row-major f32 at c (pitch ldc): fragment (i, j) at c + 16·i·ldc + 16·j.
template <class Op>
__device__ __forceinline__ void store_32x32(float* c, int ldc, const Acc32<Op> (&acc)[2][2]) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            nvcuda::wmma::store_matrix_sync(c + 16 * i * ldc + 16 * j, acc[i][j], ldc,
                                            nvcuda::wmma::mem_row_major);
}
