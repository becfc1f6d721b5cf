// cuda-emu, device side: what a kernel under kernels/ needs in order to compile as C++ and run on
// the CPU, one fiber per CUDA thread (see tools/cuda-emu/README.md).
//
// Every build of a kernel file includes this header first (`-include emu.h`). It replaces the
// CUDA keywords and built-ins the kernels use: thread and block indices, __syncthreads, warp
// shuffles, the float intrinsics, BF16 conversions, WMMA fragments (nvcuda::wmma) and, through
// `emu::mma_*` and `emu::cp_async*`, the two inline-PTX families of relation_tc.cu.
//
// Shared memory: a `__shared__` array becomes a `static thread_local` one. Blocks of one launch
// run one after another on the launching host thread, so each block sees its own contents (and
// launches from other host threads see theirs). Dynamic shared memory (`extern __shared__ T x[]`)
// is rewritten by the build script into `T* x = (T*)::emu::dyn_smem();`, a per-block area that
// starts poisoned (0xFF bytes, a NaN in every float) and ends at a guard page.
#pragma once

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local

namespace emu {

struct dim3 {
    unsigned x, y, z;
};

// The running fiber's indices, set by the scheduler before every switch into a fiber.
extern thread_local dim3 t_thread, t_block, t_bdim, t_gdim;

// Block-wide barrier (every live thread of the block must reach it).
void syncthreads();

// A warp collective: every lane named in `mask` calls it with its own `data`; when all of them
// have arrived, `fn(lanes, mask)` runs once with lanes[i] = lane i's data (null for lanes not
// taking part), then every participant continues. Lanes that name different masks or different
// functions are an error, as are lanes in the mask that have exited.
typedef void (*CollectiveFn)(void* const* lanes, unsigned mask);
void warp_collective(unsigned mask, CollectiveFn fn, void* data);

// Stop the kernel with an error message (reported by cuLaunchKernel).
[[noreturn]] void fail(const char* fmt, ...);

// This block's dynamic shared memory.
void* dyn_smem();

// cp.async emulation: the copy's source is read at issue, its destination written only when a
// cp_async_wait releases its group, so a read before the wait sees the poisoned old contents.
void cp_async(void* dst, const void* src, unsigned bytes);
void cp_async_commit();
void cp_async_wait(int pending);

// ---- shuffles ------------------------------------------------------------------------------
enum ShflKind { SHFL_XOR, SHFL_DOWN, SHFL_UP, SHFL_IDX };
struct ShflData {
    uint64_t v, out;
    int kind, arg, width;
};
void shfl_collective(void* const* lanes, unsigned mask);

template <class T>
inline T shfl(unsigned mask, T v, ShflKind kind, int arg, int width) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 64 bits");
    ShflData d{};
    memcpy(&d.v, &v, sizeof(T));
    d.kind = kind;
    d.arg = arg;
    d.width = width;
    warp_collective(mask, shfl_collective, &d);
    T r;
    memcpy(&r, &d.out, sizeof(T));
    return r;
}

struct VoteData {
    int pred;
    unsigned out;
};
void ballot_collective(void* const* lanes, unsigned mask);
void syncwarp_collective(void* const* lanes, unsigned mask);

// ---- float helpers -------------------------------------------------------------------------
inline uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
// Round to the nearest value with a 10-bit mantissa, ties away from zero (cvt.rna.tf32.f32).
inline float round_tf32(float x) {
    if (!std::isfinite(x)) return x;
    return from_bits((bits(x) + 0x1000u) & 0xffffe000u);
}
// What the tensor cores read of a TF32 operand: the low 13 mantissa bits are ignored.
inline float trunc_tf32(float x) { return from_bits(bits(x) & 0xffffe000u); }
// Round to nearest even bfloat16, kept as its 16 bits.
inline uint16_t bf16_bits_rn(float x) {
    uint32_t u = bits(x);
    if (std::isnan(x)) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// mma.sync.m16n8k8 TF32 and m16n8k16 BF16 with f32 accumulators (fragment layouts of the PTX
// ISA, reassembled from the 32 lanes by a warp collective).
void mma_m16n8k8_tf32(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                      unsigned b0, unsigned b1);
void mma_m16n8k16_bf16(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                       unsigned b0, unsigned b1);

// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: lane l names row l % 8 of matrix
// l / 8 (16 bytes; lanes from 8·num on are ignored). Register m of lane T receives matrix m's
// b16 elements (T/4, 2(T%4)) and (T/4, 2(T%4) + 1), the first in the low half; with .trans
// (2(T%4), T/4) and (2(T%4) + 1, T/4).
void ldmatrix(unsigned* r, int num, bool trans, const void* row);

}  // namespace emu

#define threadIdx (::emu::t_thread)
#define blockIdx (::emu::t_block)
#define blockDim (::emu::t_bdim)
#define gridDim (::emu::t_gdim)
#define warpSize 32
#define __syncthreads() ::emu::syncthreads()

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    int dummy = 0;
    ::emu::warp_collective(mask, ::emu::syncwarp_collective, &dummy);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return ::emu::shfl(mask, v, ::emu::SHFL_XOR, lane_mask, width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::emu::shfl(mask, v, ::emu::SHFL_DOWN, (int)delta, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::emu::shfl(mask, v, ::emu::SHFL_UP, (int)delta, width);
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return ::emu::shfl(mask, v, ::emu::SHFL_IDX, src, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    ::emu::VoteData d{pred, 0};
    ::emu::warp_collective(mask, ::emu::ballot_collective, &d);
    return d.out;
}

// ---- arithmetic built-ins (the build uses -ffp-contract=off: no fused multiply-adds) --------
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline unsigned __float_as_uint(float f) { return ::emu::bits(f); }
inline float __uint_as_float(unsigned u) { return ::emu::from_bits(u); }
inline int __float_as_int(float f) { return (int)::emu::bits(f); }
inline float __int_as_float(int i) { return ::emu::from_bits((uint32_t)i); }
// Atomics: threads switch only at barriers and warp collectives, and blocks run one after
// another, so any read-modify-write is atomic here; an atomic builtin (relaxed) says so to
// ThreadSanitizer in race mode.
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }
inline size_t __cvta_generic_to_global(const void* p) { return (size_t)p; }

// CUDA's global min/max overloads (mixed signedness goes unsigned, as in CUDA).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

struct __align__(8) float2 {
    float x, y;
};
struct __align__(16) float4 {
    float x, y, z, w;
};
struct __align__(8) int2 {
    int x, y;
};
struct __align__(16) int4 {
    int x, y, z, w;
};
struct __align__(16) uint4 {
    unsigned x, y, z, w;
};
struct __align__(8) uint2 {
    unsigned x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }

// ---- BF16 ----------------------------------------------------------------------------------
struct __nv_bfloat16 {
    uint16_t b;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : b(::emu::bf16_bits_rn(f)) {}
    operator float() const { return ::emu::from_bits((uint32_t)b << 16); }
};
struct __align__(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;  // x in the low half
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return (float)h; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)};
}

// ---- WMMA ----------------------------------------------------------------------------------
// A fragment holds its whole tile in every lane (num_elements = rows × cols, row-major). The
// kernels may only apply the same element-wise operation to every `x[e]` (CUDA leaves the
// element-to-lane map unspecified), so per-lane copies behave as the distributed original.
// load/store/mma are warp collectives: they run once, when the whole warp has arrived, which
// also makes every lane's earlier shared-memory writes visible, as the `_sync` contract says.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

inline float __float_to_tf32(float x) { return ::emu::round_tf32(x); }

template <class T>
struct storage_of {
    typedef T type;
};
template <>
struct storage_of<precision::tf32> {
    typedef float type;
};

template <class Use, int M, int N, int K>
struct shape_of;
template <int M, int N, int K>
struct shape_of<matrix_a, M, N, K> {
    static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct shape_of<matrix_b, M, N, K> {
    static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct shape_of<accumulator, M, N, K> {
    static constexpr int rows = M, cols = N;
};

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    typedef typename storage_of<T>::type element_type;
    static constexpr int rows = shape_of<Use, M, N, K>::rows;
    static constexpr int cols = shape_of<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols;
    static constexpr bool col_layout = std::is_same<Layout, col_major>::value;
    element_type x[num_elements];
};

template <class F, class E>
struct MemData {
    F* frag;
    E* ptr;
    unsigned ldm;
    bool col;
};

// load/store_matrix_sync require a 256-bit aligned pointer and a leading dimension that is a
// multiple of 16 bytes (CUDA C++ Programming Guide, "Warp Matrix Functions").
template <class E>
inline void check_wmma_pointer(const char* what, E* p, unsigned ldm) {
    if (reinterpret_cast<uintptr_t>(p) % 32)
        ::emu::fail("wmma::%s: pointer %p is not 32-byte aligned", what, (const void*)p);
    if ((ldm * sizeof(E)) % 16)
        ::emu::fail("wmma::%s: ldm %u is not a multiple of 16 bytes", what, ldm);
}

// The lanes' shared MemData: every lane must pass the same pointer and ldm.
template <class D>
const D* agreed(void* const* lanes, const char* what) {
    const D* first = nullptr;
    for (int l = 0; l < 32; ++l) {
        auto* d = static_cast<const D*>(lanes[l]);
        if (!d) continue;
        if (!first) first = d;
        if (d->ptr != first->ptr || d->ldm != first->ldm)
            ::emu::fail("wmma::%s: lane %d passes another pointer or ldm than the first lane", what, l);
    }
    check_wmma_pointer(what, first->ptr, first->ldm);
    return first;
}

template <class F, class E>
void load_collective(void* const* lanes, unsigned) {
    agreed<MemData<F, E>>(lanes, "load_matrix_sync");
    for (int l = 0; l < 32; ++l) {
        auto* d = static_cast<const MemData<F, E>*>(lanes[l]);
        if (!d) continue;
        for (int r = 0; r < F::rows; ++r)
            for (int c = 0; c < F::cols; ++c)
                d->frag->x[r * F::cols + c] =
                    d->col ? d->ptr[(size_t)c * d->ldm + r] : d->ptr[(size_t)r * d->ldm + c];
    }
}

template <class F, class E>
void store_collective(void* const* lanes, unsigned) {
    const MemData<F, E>* first = agreed<MemData<F, E>>(lanes, "store_matrix_sync");
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c) {
            E v = first->frag->x[r * F::cols + c];
            if (first->col)
                first->ptr[(size_t)c * first->ldm + r] = v;
            else
                first->ptr[(size_t)r * first->ldm + c] = v;
        }
}

template <class Use, int M, int N, int K, class T, class L, class E>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const E* p, unsigned ldm) {
    typedef fragment<Use, M, N, K, T, L> F;
    MemData<F, const E> d{&f, p, ldm, F::col_layout};
    ::emu::warp_collective(0xffffffffu, load_collective<F, const E>, &d);
}
template <int M, int N, int K, class E>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const E* p, unsigned ldm,
                             layout_t layout) {
    typedef fragment<accumulator, M, N, K, float> F;
    MemData<F, const E> d{&f, p, ldm, layout == mem_col_major};
    ::emu::warp_collective(0xffffffffu, load_collective<F, const E>, &d);
}
template <int M, int N, int K, class E>
inline void store_matrix_sync(E* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                              layout_t layout) {
    typedef fragment<accumulator, M, N, K, float> F;
    MemData<const F, E> d{&f, p, ldm, layout == mem_col_major};
    ::emu::warp_collective(0xffffffffu, store_collective<const F, E>, &d);
}
template <class Use, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
    for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}

template <class T>
inline float mma_operand(T v) {
    return (float)v;
}
template <>
inline float mma_operand<float>(float v) {
    return ::emu::trunc_tf32(v);
}

template <class FD, class FA, class FB, class FC>
struct MmaData {
    FD* d;
    const FA* a;
    const FB* b;
    const FC* c;
};

template <class FD, class FA, class FB, class FC>
void mma_collective(void* const* lanes, unsigned) {
    const MmaData<FD, FA, FB, FC>* lead = nullptr;
    for (int l = 0; l < 32 && !lead; ++l) lead = static_cast<const MmaData<FD, FA, FB, FC>*>(lanes[l]);
    constexpr int M = FA::rows, K = FA::cols, N = FB::cols;
    float out[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float acc = lead->c->x[i * N + j];
            for (int k = 0; k < K; ++k)
                acc += mma_operand(lead->a->x[i * K + k]) * mma_operand(lead->b->x[k * N + j]);
            out[i * N + j] = acc;
        }
    for (int l = 0; l < 32; ++l) {
        auto* d = static_cast<const MmaData<FD, FA, FB, FC>*>(lanes[l]);
        if (d) memcpy(d->d->x, out, sizeof(out));
    }
}

template <int M, int N, int K, class TA, class LA, class TB, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
    typedef fragment<accumulator, M, N, K, float> FD;
    typedef fragment<matrix_a, M, N, K, TA, LA> FA;
    typedef fragment<matrix_b, M, N, K, TB, LB> FB;
    MmaData<FD, FA, FB, FD> data{&d, &a, &b, &c};
    ::emu::warp_collective(0xffffffffu, mma_collective<FD, FA, FB, FD>, &data);
}

}  // namespace wmma
}  // namespace nvcuda
