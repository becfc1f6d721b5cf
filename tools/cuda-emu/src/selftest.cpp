// cuda-emu self-test: the emulator's own semantics, checked before any kernel trusts it.
// build.py compiles this against the library and runs it; a failure fails the build.
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <string>
#include <vector>

#include "emu.h"
#include "emu_sched.h"
// The kernels' own wrappers (their PRRNET_CUDA_EMU branches): mma_bf16, ldsm, movmatrix_trans,
// bf16_pair.
#include "mma_sync.cuh"

using emu::dim3;

static int failures = 0;
#define CHECK(cond, ...)                          \
    do {                                          \
        if (!(cond)) {                            \
            fprintf(stderr, "selftest: FAILED: "); \
            fprintf(stderr, __VA_ARGS__);         \
            fprintf(stderr, "\n");                \
            ++failures;                           \
        }                                         \
    } while (0)

// The f32 C/D fragment of mma.sync m16n8k*: lane (g, t) = 4g + t holds rows g, g + 8 and
// columns 2t, 2t + 1 of the 16×8 matrix.
static void c_load(float (&d)[4], const float (&C)[16][8], int l) {
    const int g = l / 4, t = l % 4;
    d[0] = C[g][2 * t];
    d[1] = C[g][2 * t + 1];
    d[2] = C[g + 8][2 * t];
    d[3] = C[g + 8][2 * t + 1];
}
static void c_store(float (&D)[16][8], const float (&d)[4], int l) {
    const int g = l / 4, t = l % 4;
    D[g][2 * t] = d[0];
    D[g][2 * t + 1] = d[1];
    D[g + 8][2 * t] = d[2];
    D[g + 8][2 * t + 1] = d[3];
}

static std::string launch(unsigned blocks, unsigned threads, size_t smem, std::function<void()> body) {
    return emu::run_kernel("selftest", dim3{blocks, 1, 1}, dim3{threads, 1, 1}, smem, body);
}

int main() {
    // A barrier orders every thread's write before every thread's read.
    {
        std::vector<int> out(256);
        std::string e = launch(2, 128, 0, [&] {
            __shared__ int s[128];
            s[threadIdx.x] = (int)(threadIdx.x + 1000 * blockIdx.x);
            __syncthreads();
            out[blockIdx.x * 128 + threadIdx.x] = s[127 - threadIdx.x];
        });
        CHECK(e.empty(), "barrier kernel: %s", e.c_str());
        bool ok = true;
        for (int b = 0; b < 2; ++b)
            for (int t = 0; t < 128; ++t) ok &= out[b * 128 + t] == 127 - t + 1000 * b;
        CHECK(ok, "barrier: a thread read a value written after the barrier");
    }
    // Half a warp at __syncthreads, the other half at a full-warp shuffle: neither can
    // complete, a deadlock, reported as an error.
    {
        std::string e = launch(1, 64, 0, [&] {
            if (threadIdx.x < 16) {
                __syncthreads();
            } else {
                int v = __shfl_xor_sync(0xffffffffu, 1, 1);
                (void)v;
                __syncthreads();
            }
        });
        CHECK(e.find("deadlock") != std::string::npos, "divergent barrier not reported: '%s'", e.c_str());
    }
    // Shuffles: xor butterfly, down with out-of-range lanes keeping their own value, idx.
    {
        std::vector<float> sum(64), down(64), idx(64);
        std::string e = launch(1, 64, 0, [&] {
            float v = (float)threadIdx.x;
            float s = v;
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            sum[threadIdx.x] = s;
            down[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 4);
            idx[threadIdx.x] = __shfl_sync(0xffffffffu, v, 3);
        });
        CHECK(e.empty(), "shuffle kernel: %s", e.c_str());
        for (int t = 0; t < 64; ++t) {
            const int w = t / 32 * 32, l = t % 32;
            const float want_sum = (float)(32 * w + 31 * 32 / 2);
            CHECK(sum[t] == want_sum, "xor sum lane %d: %g, want %g", t, sum[t], want_sum);
            CHECK(down[t] == (l + 4 < 32 ? t + 4 : t), "shfl_down lane %d: %g", t, down[t]);
            CHECK(idx[t] == w + 3, "shfl idx lane %d: %g", t, idx[t]);
        }
    }
    // A collective whose mask names an exited lane is an error.
    {
        std::string e = launch(1, 32, 0, [&] {
            if (threadIdx.x == 5) return;
            int v = __shfl_xor_sync(0xffffffffu, 1, 1);
            (void)v;
        });
        CHECK(e.find("exited") != std::string::npos, "shuffle with an exited lane not reported: '%s'",
              e.c_str());
    }
    // cp.async: the destination changes only at the wait that retires its group.
    {
        std::vector<float> src(4, 7.0f), seen(2);
        std::string e = launch(1, 1, 64, [&] {
            float* d = static_cast<float*>(emu::dyn_smem());
            emu::cp_async(d, src.data(), 16);
            emu::cp_async_commit();
            emu::cp_async_wait(1);
            seen[0] = d[0];  // still the poison: one group may remain in flight
            emu::cp_async_wait(0);
            seen[1] = d[0];
        });
        CHECK(e.empty(), "cp.async kernel: %s", e.c_str());
        CHECK(seen[0] != seen[0], "cp.async landed before its wait (read %g)", seen[0]);
        CHECK(seen[1] == 7.0f, "cp.async did not land at wait_group 0 (read %g)", seen[1]);
    }
    // mma.sync m16n8k8 TF32 with the PTX ISA fragment layout: D = A·B + C.
    {
        float A[16][8], B[8][8], C[16][8], D[16][8];
        for (int i = 0; i < 16; ++i)
            for (int k = 0; k < 8; ++k) A[i][k] = (float)((i * 3 + k * 5) % 7 - 3);
        for (int k = 0; k < 8; ++k)
            for (int j = 0; j < 8; ++j) B[k][j] = (float)((k * 2 + j * 7) % 5 - 2);
        for (int i = 0; i < 16; ++i)
            for (int j = 0; j < 8; ++j) C[i][j] = (float)(i - j);
        std::string e = launch(1, 32, 0, [&] {
            const int l = threadIdx.x, g = l / 4, t = l % 4;
            float d[4];
            c_load(d, C, l);
            emu::mma_m16n8k8_tf32(d, __float_as_uint(A[g][t]), __float_as_uint(A[g + 8][t]),
                                  __float_as_uint(A[g][t + 4]), __float_as_uint(A[g + 8][t + 4]),
                                  __float_as_uint(B[t][g]), __float_as_uint(B[t + 4][g]));
            c_store(D, d, l);
        });
        CHECK(e.empty(), "mma kernel: %s", e.c_str());
        for (int i = 0; i < 16; ++i)
            for (int j = 0; j < 8; ++j) {
                float want = C[i][j];
                for (int k = 0; k < 8; ++k) want += A[i][k] * B[k][j];
                CHECK(D[i][j] == want, "mma D[%d][%d] = %g, want %g", i, j, D[i][j], want);
            }
    }
    // ldmatrix .x4 and .x4.trans: a 16×16 b16 matrix X[r][c] = r·16 + c (as raw bits) in 16-byte
    // rows; lane l names row (l % 8) + 8·((l / 8) % 2), columns 8·(l / 16).. (matrix l / 8).
    // Plain: register m of lane T holds X[8·(m % 2) + T/4][8·(m / 2) + 2(T%4) + {0, 1}], the
    // m16n8k16 A fragment; trans: X[8·(m % 2) + 2(T%4) + {0, 1}][8·(m / 2) + T/4].
    {
        alignas(16) uint16_t X[16][16];
        for (int r = 0; r < 16; ++r)
            for (int c = 0; c < 16; ++c) X[r][c] = (uint16_t)(r * 16 + c);
        unsigned got[2][32][4];
        std::string e = launch(1, 32, 0, [&] {
            const int l = threadIdx.x;
            const uint16_t* row = &X[(l % 8) + 8 * ((l / 8) % 2)][8 * (l / 16)];
            emu::ldmatrix(got[0][l], 4, false, row);
            emu::ldmatrix(got[1][l], 4, true, row);
        });
        CHECK(e.empty(), "ldmatrix kernel: %s", e.c_str());
        for (int l = 0; l < 32; ++l)
            for (int m = 0; m < 4; ++m) {
                const int r0 = 8 * (m % 2), c0 = 8 * (m / 2), g = l / 4, t = l % 4;
                const unsigned plain = X[r0 + g][c0 + 2 * t] | (X[r0 + g][c0 + 2 * t + 1] << 16);
                const unsigned trans =
                    X[r0 + 2 * t][c0 + g] | ((unsigned)X[r0 + 2 * t + 1][c0 + g] << 16);
                CHECK(got[0][l][m] == plain, "ldmatrix lane %d reg %d = %08x, want %08x", l, m,
                      got[0][l][m], plain);
                CHECK(got[1][l][m] == trans, "ldmatrix.trans lane %d reg %d = %08x, want %08x", l,
                      m, got[1][l][m], trans);
            }
    }
    // mma.sync m16n8k16 BF16 through the kernels' wrapper, fragments packed by bf16_pair (the
    // smaller index in the low half). PTX ISA: A register j of lane (g, t) = 4g + t holds row
    // g + 8·(j % 2), columns 2t + 8·(j / 2) + {0, 1}; B register j holds rows (k)
    // 2t + 8j + {0, 1} of column g; C and D as for TF32. Small integers: exact in BF16.
    {
        float A[16][16], B[16][8], C[16][8], D[16][8];
        for (int i = 0; i < 16; ++i)
            for (int k = 0; k < 16; ++k) A[i][k] = (float)((i * 5 + k * 3) % 9 - 4);
        for (int k = 0; k < 16; ++k)
            for (int j = 0; j < 8; ++j) B[k][j] = (float)((k * 3 + j * 2) % 7 - 3);
        for (int i = 0; i < 16; ++i)
            for (int j = 0; j < 8; ++j) C[i][j] = (float)(2 * i - j);
        std::string e = launch(1, 32, 0, [&] {
            const int l = threadIdx.x, g = l / 4, t = l % 4;
            unsigned a[4], b[2];
            for (int j = 0; j < 4; ++j) {
                const int r = g + 8 * (j % 2), c = 2 * t + 8 * (j / 2);
                a[j] = bf16_pair(A[r][c], A[r][c + 1]);
            }
            for (int j = 0; j < 2; ++j) b[j] = bf16_pair(B[2 * t + 8 * j][g], B[2 * t + 8 * j + 1][g]);
            float d[4];
            c_load(d, C, l);
            mma_bf16(d, a, b[0], b[1]);
            c_store(D, d, l);
        });
        CHECK(e.empty(), "mma bf16 kernel: %s", e.c_str());
        for (int i = 0; i < 16; ++i)
            for (int j = 0; j < 8; ++j) {
                float want = C[i][j];
                for (int k = 0; k < 16; ++k) want += A[i][k] * B[k][j];
                CHECK(D[i][j] == want, "mma bf16 D[%d][%d] = %g, want %g", i, j, D[i][j], want);
            }
    }
    // ldmatrix .x2.trans through the kernels' wrapper: only lanes 0–15 name rows (matrix l / 8,
    // row l % 8); lanes 16–31 pass other rows, which must not matter. Rows are scattered (a
    // permutation of 32 rows), so every lane's own address counts.
    {
        alignas(16) static uint16_t pool[32][8];
        for (int r = 0; r < 32; ++r)
            for (int c = 0; c < 8; ++c) pool[r][c] = (uint16_t)(r * 8 + c + 1);
        auto row_of = [](int l) { return (l * 13 + 5) % 32; };
        unsigned got[32][2];
        std::string e = launch(1, 32, 0, [&] {
            const int l = threadIdx.x;
            ldsm<2, true>(got[l], pool[l < 16 ? row_of(l) : (l * 7) % 32]);
        });
        CHECK(e.empty(), "ldmatrix x2 kernel: %s", e.c_str());
        for (int l = 0; l < 32; ++l)
            for (int m = 0; m < 2; ++m) {
                const int g = l / 4, t = l % 4;
                const unsigned want = pool[row_of(8 * m + 2 * t)][g] |
                                      ((unsigned)pool[row_of(8 * m + 2 * t + 1)][g] << 16);
                CHECK(got[l][m] == want, "ldmatrix.x2.trans lane %d reg %d = %08x, want %08x", l,
                      m, got[l][m], want);
            }
    }
    // movmatrix.trans through the kernels' wrapper (two shuffles here): lane (g, t) holds row g,
    // columns 2t, 2t + 1 of an 8×8 b16 matrix and receives rows 2t, 2t + 1 of column g, which
    // is also what storing the fragment and reading it back with ldmatrix .x1.trans gives.
    {
        uint16_t X[8][8];
        for (int r = 0; r < 8; ++r)
            for (int c = 0; c < 8; ++c) X[r][c] = (uint16_t)(0x100 * r + c + 7);
        alignas(16) static uint16_t S[8][8];
        unsigned got[32], via[32];
        std::string e = launch(1, 32, 0, [&] {
            const int l = threadIdx.x, g = l / 4, t = l % 4;
            got[l] = movmatrix_trans(X[g][2 * t] | ((unsigned)X[g][2 * t + 1] << 16));
            S[g][2 * t] = X[g][2 * t];
            S[g][2 * t + 1] = X[g][2 * t + 1];
            __syncwarp();
            unsigned r[1];
            emu::ldmatrix(r, 1, true, S[l % 8]);
            via[l] = r[0];
        });
        CHECK(e.empty(), "movmatrix kernel: %s", e.c_str());
        for (int l = 0; l < 32; ++l) {
            const int g = l / 4, t = l % 4;
            const unsigned want = X[2 * t][g] | ((unsigned)X[2 * t + 1][g] << 16);
            CHECK(got[l] == want, "movmatrix lane %d = %08x, want %08x", l, got[l], want);
            CHECK(via[l] == want, "ldmatrix.x1.trans lane %d = %08x, want %08x", l, via[l], want);
        }
    }
    // The run order between synchronisation points (PRRNET_EMU_ORDER): thread order, its
    // reverse, or a shuffle that is neither, differs from round to round and from block to
    // block, and is the same in a second launch (repeatable).
    {
        const char* v = getenv("PRRNET_EMU_ORDER");
        const std::string mode = v ? v : "";
        auto order = [] {
            std::vector<int> seen;
            std::string e = launch(2, 64, 0, [&] {
                seen.push_back((int)(blockIdx.x * 64 + threadIdx.x));
                __syncthreads();
                seen.push_back((int)(blockIdx.x * 64 + threadIdx.x));
            });
            CHECK(e.empty(), "order kernel: %s", e.c_str());
            return seen;
        };
        const std::vector<int> a = order(), b = order();
        CHECK(a.size() == 256, "order: %zu thread phases ran, want 256", a.size());
        std::vector<std::vector<int>> phase(4);  // (block, round)
        for (size_t k = 0; k < a.size(); ++k) phase[k / 64].push_back(a[k] % 64);
        for (auto& ph : phase) {
            std::vector<int> sorted = ph;
            std::sort(sorted.begin(), sorted.end());
            bool perm = sorted.size() == 64;
            for (int t = 0; perm && t < 64; ++t) perm = sorted[t] == t;
            CHECK(perm, "order: a phase did not run every thread exactly once");
            const bool fwd = std::is_sorted(ph.begin(), ph.end());
            const bool rev = std::is_sorted(ph.rbegin(), ph.rend());
            if (mode.empty()) CHECK(fwd, "order: not thread order");
            if (mode == "reverse") CHECK(rev, "order: not reverse thread order");
            if (mode.rfind("shuffle", 0) == 0) CHECK(!fwd && !rev, "order: shuffle is not shuffled");
        }
        if (mode.rfind("shuffle", 0) == 0) {
            CHECK(phase[0] != phase[1] && phase[0] != phase[2], "order: shuffle repeats itself");
            CHECK(a == b, "order: shuffle differs between two launches");
        }
    }
    // Warp skew (shuffled order only): warps drift apart by whole collectives. Four warps take
    // 16 shuffle steps each; lane 0 of each logs its step. In thread order and its reverse the
    // warps stay in lockstep (never two steps apart); shuffled, some warp gets ahead by two or
    // more, yet no thread misses a step.
    {
        const char* v = getenv("PRRNET_EMU_ORDER");
        const std::string mode = v ? v : "";
        std::vector<int> log;  // warp * 100 + step, in execution order
        std::string e = launch(1, 128, 0, [&] {
            int x = (int)threadIdx.x;
            for (int step = 0; step < 16; ++step) {
                if (threadIdx.x % 32 == 0) log.push_back((int)(threadIdx.x / 32) * 100 + step);
                x += __shfl_xor_sync(0xffffffffu, x, 1);
            }
        });
        CHECK(e.empty(), "skew kernel: %s", e.c_str());
        CHECK(log.size() == 64, "skew: %zu steps logged, want 64", log.size());
        int done[4] = {-1, -1, -1, -1}, widest = 0;
        for (int entry : log) {
            done[entry / 100] = entry % 100;
            const int lo = *std::min_element(done, done + 4), hi = *std::max_element(done, done + 4);
            widest = std::max(widest, hi - lo);
        }
        if (mode.rfind("shuffle", 0) == 0)
            CHECK(widest >= 2, "skew: the warps never drifted apart (widest gap %d)", widest);
        else
            CHECK(widest <= 1, "skew: warps drifted apart without the shuffled order (gap %d)", widest);
    }
    if (failures) {
        fprintf(stderr, "cuda-emu selftest: %d failure(s)\n", failures);
        return 1;
    }
    printf("cuda-emu selftest: ok\n");
    return 0;
}
