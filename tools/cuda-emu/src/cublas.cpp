// cuda-emu: the cuBLAS calls prrnet makes (handle, stream, math mode, workspace, GemmEx), as a
// plain column-major GEMM on the CPU. Inputs are rounded the way the compute type says (TF32:
// 10-bit mantissa; BF16: bfloat16), products are summed in double, so results sit within the
// tolerances a real cuBLAS is held to. Like every other stream operation, a GEMM on a capturing
// stream is recorded into the graph.
#include <stdio.h>
#include <string.h>

#include <functional>
#include <vector>

#include "emu.h"

typedef int CUresult;
CUresult emu_submit(void* stream, std::function<CUresult()> op);

namespace {

enum : int {
    STATUS_OK = 0,
    STATUS_INVALID_VALUE = 7,
    STATUS_NOT_SUPPORTED = 15,
};
enum : int { R_32F = 0, R_16BF = 14 };
enum : int { COMPUTE_32F = 68, COMPUTE_32F_PEDANTIC = 69, COMPUTE_32F_FAST_16BF = 75,
             COMPUTE_32F_FAST_TF32 = 77 };
enum : int { TF32_TENSOR_OP_MATH = 3 };

struct Handle {
    void* stream = nullptr;
    int math = 0;
};

float load(const void* p, int type, size_t i) {
    if (type == R_16BF) {
        uint16_t b;
        memcpy(&b, static_cast<const char*>(p) + 2 * i, 2);
        return emu::from_bits((uint32_t)b << 16);
    }
    return static_cast<const float*>(p)[i];
}

// op(X)[r][c] for an (rows × cols) operand stored column-major with leading dimension ld.
std::vector<float> pack(const void* x, int type, int trans, int rows, int cols, int ld, int compute) {
    std::vector<float> out((size_t)rows * cols);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            const size_t i = trans ? (size_t)r * ld + c : (size_t)c * ld + r;
            float v = load(x, type, i);
            if (compute == COMPUTE_32F_FAST_TF32) v = emu::round_tf32(v);
            if (compute == COMPUTE_32F_FAST_16BF) v = emu::from_bits((uint32_t)emu::bf16_bits_rn(v) << 16);
            out[(size_t)r * cols + c] = v;
        }
    return out;
}

}  // namespace

#define API extern "C" __attribute__((visibility("default")))

API int cublasCreate_v2(void** h) {
    *h = new Handle;
    return STATUS_OK;
}
API int cublasDestroy_v2(void* h) {
    delete static_cast<Handle*>(h);
    return STATUS_OK;
}
API int cublasSetStream_v2(void* h, void* s) {
    static_cast<Handle*>(h)->stream = s;
    return STATUS_OK;
}
API int cublasGetStream_v2(void* h, void** s) {
    *s = static_cast<Handle*>(h)->stream;
    return STATUS_OK;
}
API int cublasSetMathMode(void* h, int mode) {
    static_cast<Handle*>(h)->math = mode;
    return STATUS_OK;
}
API int cublasGetMathMode(void* h, int* mode) {
    *mode = static_cast<Handle*>(h)->math;
    return STATUS_OK;
}
API int cublasSetWorkspace_v2(void*, void*, size_t) { return STATUS_OK; }
API int cublasGetVersion_v2(void*, int* v) {
    *v = 130000;
    return STATUS_OK;
}

API int cublasGemmEx(void* hp, int transa, int transb, int m, int n, int k, const void* alpha,
                     const void* A, int atype, int lda, const void* B, int btype, int ldb,
                     const void* beta, void* C, int ctype, int ldc, int compute, int /*algo*/) {
    Handle* h = static_cast<Handle*>(hp);
    if (m < 0 || n < 0 || k < 0) return STATUS_INVALID_VALUE;
    if ((atype != R_32F && atype != R_16BF) || (btype != R_32F && btype != R_16BF) ||
        (ctype != R_32F && ctype != R_16BF)) {
        fprintf(stderr, "cuda-emu: cublasGemmEx with data types %d/%d/%d is not emulated\n", atype,
                btype, ctype);
        return STATUS_NOT_SUPPORTED;
    }
    if (compute != COMPUTE_32F && compute != COMPUTE_32F_PEDANTIC && compute != COMPUTE_32F_FAST_16BF &&
        compute != COMPUTE_32F_FAST_TF32) {
        fprintf(stderr, "cuda-emu: cublasGemmEx compute type %d is not emulated\n", compute);
        return STATUS_NOT_SUPPORTED;
    }
    if (lda < (transa ? k : m) || ldb < (transb ? n : k) || ldc < m) {
        fprintf(stderr, "cuda-emu: cublasGemmEx leading dimensions too small (m=%d n=%d k=%d lda=%d "
                "ldb=%d ldc=%d)\n", m, n, k, lda, ldb, ldc);
        return STATUS_INVALID_VALUE;
    }
    const int eff = (compute == COMPUTE_32F && h->math == TF32_TENSOR_OP_MATH) ? COMPUTE_32F_FAST_TF32
                                                                                : compute;
    const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
    auto op = [=]() -> CUresult {
        std::vector<float> pa = pack(A, atype, transa, m, k, lda, eff);  // [m][k]
        std::vector<float> pb = pack(B, btype, !transb, n, k, ldb, eff);  // [n][k]
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) {
                const float* x = &pa[(size_t)i * k];
                const float* y = &pb[(size_t)j * k];
                double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                int kk = 0;
                for (; kk + 4 <= k; kk += 4) {
                    s0 += (double)x[kk] * y[kk];
                    s1 += (double)x[kk + 1] * y[kk + 1];
                    s2 += (double)x[kk + 2] * y[kk + 2];
                    s3 += (double)x[kk + 3] * y[kk + 3];
                }
                for (; kk < k; ++kk) s0 += (double)x[kk] * y[kk];
                double v = a * ((s0 + s1) + (s2 + s3));
                const size_t ci = (size_t)j * ldc + i;
                if (b != 0.0f) v += (double)b * load(C, ctype, ci);  // beta = 0: C is not read
                if (ctype == R_16BF) {
                    uint16_t bb = emu::bf16_bits_rn((float)v);
                    memcpy(static_cast<char*>(C) + 2 * ci, &bb, 2);
                } else {
                    static_cast<float*>(C)[ci] = (float)v;
                }
            }
        return 0;
    };
    return emu_submit(h->stream, op) == 0 ? STATUS_OK : 13;  // 13: CUBLAS_STATUS_EXECUTION_FAILED
}
