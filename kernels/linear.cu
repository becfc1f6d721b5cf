// linear.cu: the non-GEMM parts of fully connected layers and convolutions (the GEMMs are
// cuBLAS calls made by the host).
//   bias_add:   y[r, j] += bias[j]                     y: [rows, n]
//   bias_grad:  db[j] += Σ_r dy[r, j]  (f64, two-stage deterministic reduction, reduce.cuh)
// Launch: bias_add 1-D grid-stride; bias_grad_partial block (32, 8) × grid (ceil(n/32), chunks),
// bias_grad_finalize one warp per column (block 256, grid ⌈n/8⌉).
// Memory traffic: bias_add reads/writes y once; bias_grad reads dy once plus chunks·n doubles.
#include "reduce.cuh"

extern "C" __global__ void bias_add(float* __restrict__ y, const float* __restrict__ bias, int n,
                                    i64 total) {
    GRID_STRIDE(i, total) y[i] += bias[i % n];
}

struct DyValue {
    const float* dy;
    int n;
    __device__ void operator()(int r, int c, double* out) const {
        out[0] = (double)dy[(i64)r * n + c];
    }
};

extern "C" __global__ void bias_grad_partial(const float* __restrict__ dy, int rows, int n,
                                             int rows_per_chunk, double* __restrict__ partial) {
    column_partials<1>(DyValue{dy, n}, rows, n, rows_per_chunk, partial);
}

extern "C" __global__ void bias_grad_finalize(const double* __restrict__ partial, int chunks,
                                              int n, float* __restrict__ db) {
    const int j = finalize_column(n), lane = threadIdx.x & 31;
    if (j < 0) return;
    const double s = column_total_warp(partial, 0, chunks, n, j, lane);
    if (lane == 0) db[j] += (float)s;
}
