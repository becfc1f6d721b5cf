// mma_sync.cuh: the inline-PTX tensor-core primitives shared by the mma.sync kernels
// (relation_tc.cu, conv_halo.cu): cp.async, mma.sync m16n8k8 TF32 / m16n8k16 BF16 (and the
// 3×TF32 split of OpTf32x3), ldmatrix, and small bit helpers.
// PRRNET_CUDA_EMU: tools/cuda-emu runs these kernels on the CPU; it emulates the inline-PTX
// families below from the PTX ISA's definitions.
#pragma once

#include <cuda_bf16.h>
#include <mma.h>

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
#ifdef PRRNET_CUDA_EMU
    ::emu::cp_async(smem_dst, gmem_src, 16);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem_dst);
    const size_t g = __cvta_generic_to_global(gmem_src);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(g) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef PRRNET_CUDA_EMU
    ::emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef PRRNET_CUDA_EMU
    ::emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// D += A·B, m16n8k8, TF32 inputs (bit patterns with zero low 13 bits), f32 accumulators.
// Fragments (g = lane / 4, t = lane % 4): a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);
// b0 (k = t, n = g), b1 (k = t+4, n = g); d0 (g, 2t), d1 (g, 2t+1), d2 (g+8, 2t), d3 (g+8, 2t+1).
__device__ __forceinline__ void mma_tf32(float (&d)[4], unsigned a0, unsigned a1, unsigned a2,
                                         unsigned a3, unsigned b0, unsigned b1) {
#ifdef PRRNET_CUDA_EMU
    ::emu::mma_m16n8k8_tf32(d, a0, a1, a2, a3, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ void mma_tf32(float (&d)[4], const unsigned (&a)[4],
                                         unsigned b0, unsigned b1) {
    mma_tf32(d, a[0], a[1], a[2], a[3], b0, b1);
}

// D += A·B in 3×TF32: A = ah + al, B = bh + bl (split_tf32): al·bh + ah·bl + ah·bh.
__device__ __forceinline__ void mma_x3(float (&d)[4], const unsigned (&ah)[4],
                                       const unsigned (&al)[4], unsigned bh0, unsigned bh1,
                                       unsigned bl0, unsigned bl1) {
    mma_tf32(d, al, bh0, bh1);
    mma_tf32(d, ah, bl0, bl1);
    mma_tf32(d, ah, bh0, bh1);
}

// D += A·B, m16n8k16, BF16 pairs (lower k in the low half), f32 accumulators.
// a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..2t+9), a3 (g+8, 2t+8..);
// b0 (k = 2t..2t+1, n = g), b1 (k = 2t+8..2t+9, n = g); d as for TF32.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4],
                                         unsigned b0, unsigned b1) {
#ifdef PRRNET_CUDA_EMU
    ::emu::mma_m16n8k16_bf16(d, a[0], a[1], a[2], a[3], b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// ldmatrix.sync.aligned.m8n8.x{NUM}[.trans].shared.b16: lane l passes the address of row l % 8
// of matrix l / 8 (16 bytes, 16-byte aligned); register m receives matrix m's elements
// (g, 2t..2t+1), with TRANS (2t..2t+1, g), the smaller column (row) in the low half.
template <int NUM, bool TRANS>
__device__ __forceinline__ void ldsm(unsigned (&r)[NUM], const void* row) {
#ifdef PRRNET_CUDA_EMU
    ::emu::ldmatrix(r, NUM, TRANS, row);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(row);
    if constexpr (NUM == 4 && TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
    } else if constexpr (NUM == 4) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
    } else {
        static_assert(NUM == 2 && TRANS, "ldsm: only x4, x4.trans and x2.trans are used");
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1])
                     : "r"(s));
    }
#endif
}

// movmatrix.sync.aligned.m8n8.trans.b16: the transpose of an 8×8 matrix of 16-bit values held
// in the fragment layout (lane l: row l / 4, columns 2(l % 4), 2(l % 4) + 1, the smaller column
// in the low half); lane l receives row l / 4 of the transpose in the same layout, i.e. the
// elements (2(l % 4), l / 4) and (2(l % 4) + 1, l / 4) of the input. What storing the fragment
// and reading it back with ldmatrix.trans gives, without the shared memory.
__device__ __forceinline__ unsigned movmatrix_trans(unsigned x) {
#ifdef PRRNET_CUDA_EMU
    // The same by two shuffles: input element (r, c) lives in lane 4r + c / 2, half c % 2.
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const unsigned a = __shfl_sync(0xffffffffu, x, 8 * t + (g >> 1));
    const unsigned b = __shfl_sync(0xffffffffu, x, 8 * t + 4 + (g >> 1));
    const unsigned sh = (g & 1) * 16;
    return ((a >> sh) & 0xFFFFu) | (((b >> sh) & 0xFFFFu) << 16);
#else
    unsigned d;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(x));
    return d;
#endif
}

__device__ __forceinline__ unsigned tf32_bits(float x) {
    return __float_as_uint(nvcuda::wmma::__float_to_tf32(x));
}
// 3×TF32 (OpTf32x3, wmma_ops.cuh): x = hi + lo + O(2⁻²² x) with hi = tf32(x) and
// lo = tf32(x − hi) (x − hi is exact in f32).
__device__ __forceinline__ void split_tf32(float x, unsigned& hi, unsigned& lo) {
    const float h = nvcuda::wmma::__float_to_tf32(x);
    hi = __float_as_uint(h);
    lo = tf32_bits(x - h);
}
// A fragment of f32 bit patterns split elementwise (hi may alias x).
__device__ __forceinline__ void split_frag(const unsigned (&x)[4], unsigned (&hi)[4],
                                           unsigned (&lo)[4]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        unsigned h, l;
        split_tf32(__uint_as_float(x[e]), h, l);
        hi[e] = h;
        lo[e] = l;
    }
}
// Two floats as a BF16 pair: `lo` in the low half (the smaller k).
__device__ __forceinline__ unsigned bf16_pair(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
}
__device__ __forceinline__ unsigned ld32(const void* p) {
    return *reinterpret_cast<const unsigned*>(p);
}
__device__ __forceinline__ unsigned ld16(const void* p) {
    return *reinterpret_cast<const unsigned short*>(p);
}
