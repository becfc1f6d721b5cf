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
    static constexpr int K = 16;    // WMMA k for BF16
    static constexpr int LDA = 40;  // 80-byte rows
    __device__ __forceinline__ static __nv_bfloat16 from_float(float x) {
        return __float2bfloat16_rn(x);
    }
};
