// reduce.cuh: deterministic two-stage column reductions over a row-major [rows, cols] matrix.
//
// Stage 1 (`column_partials`): block (32, 8), grid (ceil(cols/32), chunks); block (bx, chunk)
// sums rows [chunk·rows_per_chunk, …) of columns bx·32 + tx in f64, the 8 row lanes combined in a
// fixed order, and writes `NV` partial sums per column to partial[(v·chunks + chunk)·cols + col].
// Stage 2 (`column_total_warp`): one warp per column; lane l adds chunks l, l + 32, … in order,
// then the lanes combine in warp_sum's fixed shuffle tree. (One thread per column adding
// ~1000 chunks in a dependent chain took 75 µs per BatchNorm on the H100 at 75×75, batch 64.)
// No atomics: the result depends only on the shape, never on scheduling.
#pragma once

#include "common.cuh"

#define COLSUM_TX 32
#define COLSUM_TY 8

// `f(row, col, out)` writes NV values for element (row, col) into out[0..NV).
template <int NV, typename F>
__device__ __forceinline__ void column_partials(F f, int rows, int cols, int rows_per_chunk,
                                                double* __restrict__ partial) {
    __shared__ double red[NV][COLSUM_TY][COLSUM_TX];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int col = blockIdx.x * COLSUM_TX + tx;
    const int chunk = blockIdx.y, chunks = gridDim.y;
    const int r0 = chunk * rows_per_chunk;
    int r1 = r0 + rows_per_chunk;
    if (r1 > rows) r1 = rows;
    double acc[NV];
#pragma unroll
    for (int v = 0; v < NV; ++v) acc[v] = 0.0;
    if (col < cols) {
        for (int r = r0 + ty; r < r1; r += COLSUM_TY) {
            double val[NV];
            f(r, col, val);
#pragma unroll
            for (int v = 0; v < NV; ++v) acc[v] += val[v];
        }
    }
#pragma unroll
    for (int v = 0; v < NV; ++v) red[v][ty][tx] = acc[v];
    __syncthreads();
    if (ty == 0 && col < cols) {
#pragma unroll
        for (int v = 0; v < NV; ++v) {
            double s = 0.0;
            for (int k = 0; k < COLSUM_TY; ++k) s += red[v][k][tx];
            partial[((i64)v * chunks + chunk) * cols + col] = s;
        }
    }
}

// Sum of the chunk partials of value `v`, column `col`, by the whole warp (every lane gets the
// same value).
__device__ __forceinline__ double column_total_warp(const double* __restrict__ partial, int v,
                                                    int chunks, int cols, int col, int lane) {
    double s = 0.0;
    for (int k = lane; k < chunks; k += 32) s += partial[((i64)v * chunks + k) * cols + col];
    return warp_sum(s);
}

// The column of this warp in a finalize launch of COLUMNS_PER_BLOCK warps per block (−1 past
// `cols`; uniform across the warp, so a warp past the end can return before any shuffle).
#define COLUMNS_PER_BLOCK 8
__device__ __forceinline__ int finalize_column(int cols) {
    const int col = blockIdx.x * COLUMNS_PER_BLOCK + (threadIdx.x >> 5);
    return col < cols ? col : -1;
}
