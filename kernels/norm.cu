// norm.cu: BatchNorm over x: [rows, C] (channels-last maps and 1-D batches), fused with an
// optional residual add and ReLU:  y = relu?(γ·(x − μ)·rstd + β + residual?).
// Train: μ = mean, σ² = biased variance (f64), rstd = 1/sqrt(σ² + eps), from ONE pass over x:
//   with the shift K = x[0, c] (the channel's first value), s1 = Σ(x − K) and s2 = Σ(x − K)²
//   in f64; μ = K + s1/n, σ² = s2/n − (s1/n)² (clamped at 0). x − K and its square are exact
//   in f64 (an f32 difference has ≤ 25 significant bits), and K is one of the channel's own
//   values, so s1/n is a few σ at most and the subtraction loses only a few of f64's 53 bits:
//   the f32 results match the CPU's two-pass reference (cpu/norm.rs). A shift far from the
//   data is what breaks the textbook one-pass formula; tests/gpu_parity.rs has such a case.
//   Both the partials and the finalize are deterministic (reduce.cuh).
//   running_mean ← (1−m)·running_mean + m·μ, running_var ← (1−m)·running_var + m·σ²·rows/(rows−1).
// Eval: μ = running_mean, rstd = 1/sqrt(running_var + eps) (f32).
// Backward (dpre = dy·(y > 0 when relu)): sum_d = Σ dpre, sum_dx = Σ dpre·x̂ (f64);
//   dγ += sum_dx, dβ += sum_d, dresidual += dpre,
//   dx += γ·rstd·(dpre − sum_d/rows − x̂·sum_dx/rows) (train) or γ·rstd·dpre (eval).
// Every per-channel reduction is the deterministic two-stage reduction of reduce.cuh.
// Launch: *_partial block (32, 8) × grid (ceil(C/32), chunks); the reducing *_finalize one warp
// per channel (block 256, grid ceil(C/8)), bn_eval_finalize one thread per channel; bn_apply /
// bn_backward_apply 1-D grid-stride.
// Memory traffic: train forward reads x twice (statistics, apply) and writes y once; backward
// reads x, y, dy twice and writes dx (and dresidual) once.
#include "reduce.cuh"

// (x − K, (x − K)²) with K = x[0, ch], in f64.
struct ShiftedMoments {
    const float* x;
    int c;
    __device__ void operator()(int r, int ch, double* out) const {
        const double d = (double)x[(i64)r * c + ch] - (double)x[ch];
        out[0] = d;
        out[1] = d * d;
    }
};

struct BackValue {
    const float* x;
    const float* y;
    const float* dy;
    const float* mean;
    const float* rstd;
    int c;
    int relu;
    __device__ void operator()(int r, int ch, double* out) const {
        i64 i = (i64)r * c + ch;
        float d = (relu && y[i] <= 0.0f) ? 0.0f : dy[i];
        float xhat = (x[i] - mean[ch]) * rstd[ch];
        out[0] = (double)d;
        out[1] = (double)d * (double)xhat;
    }
};

// partial: [2, chunks, C] doubles: Σ(x − K) and Σ(x − K)² per chunk, K = x[0, ch].
extern "C" __global__ void bn_moments_partial(const float* __restrict__ x, int rows, int c,
                                              int rows_per_chunk, double* __restrict__ partial) {
    column_partials<2>(ShiftedMoments{x, c}, rows, c, rows_per_chunk, partial);
}

extern "C" __global__ void bn_train_finalize(const double* __restrict__ partial, int chunks,
                                             int rows, int c, const float* __restrict__ x,
                                             float eps, float momentum,
                                             float* __restrict__ running_mean,
                                             float* __restrict__ running_var,
                                             float* __restrict__ save_mean,
                                             float* __restrict__ save_rstd) {
    const int ch = finalize_column(c), lane = threadIdx.x & 31;
    if (ch < 0) return;
    const double s1 = column_total_warp(partial, 0, chunks, c, ch, lane);
    const double s2 = column_total_warp(partial, 1, chunks, c, ch, lane);
    if (lane != 0) return;
    const double m1 = s1 / (double)rows;
    double var = s2 / (double)rows - m1 * m1;
    if (var < 0.0) var = 0.0;  // rounding, when every value is the same
    const double mean = (rows > 0 ? (double)x[ch] : 0.0) + m1;  // x is empty when rows = 0
    double unbiased = rows > 1 ? var * (double)rows / (double)(rows - 1) : var;
    double mom = (double)momentum;
    running_mean[ch] = (float)((1.0 - mom) * (double)running_mean[ch] + mom * mean);
    running_var[ch] = (float)((1.0 - mom) * (double)running_var[ch] + mom * unbiased);
    save_mean[ch] = (float)mean;
    save_rstd[ch] = (float)(1.0 / sqrt(var + (double)eps));
}

extern "C" __global__ void bn_eval_finalize(const float* __restrict__ running_mean,
                                            const float* __restrict__ running_var, float eps,
                                            int c, float* __restrict__ save_mean,
                                            float* __restrict__ save_rstd) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    save_mean[ch] = running_mean[ch];
    save_rstd[ch] = 1.0f / sqrtf(running_var[ch] + eps);
}

// residual may be null.
extern "C" __global__ void bn_apply(const float* __restrict__ x, const float* __restrict__ mean,
                                    const float* __restrict__ rstd,
                                    const float* __restrict__ gamma,
                                    const float* __restrict__ beta,
                                    const float* __restrict__ residual, int relu, int c,
                                    float* __restrict__ y, i64 total) {
    GRID_STRIDE(i, total) {
        int ch = (int)(i % c);
        float v = (x[i] - mean[ch]) * rstd[ch] * gamma[ch] + beta[ch];
        if (residual) v += residual[i];
        if (relu && v < 0.0f) v = 0.0f;  // NaN stays NaN, as on the CPU
        y[i] = v;
    }
}

// partial: [2, chunks, C] doubles: Σ dpre and Σ dpre·x̂.
extern "C" __global__ void bn_backward_partial(const float* __restrict__ x,
                                               const float* __restrict__ y,
                                               const float* __restrict__ dy,
                                               const float* __restrict__ mean,
                                               const float* __restrict__ rstd, int relu, int rows,
                                               int c, int rows_per_chunk,
                                               double* __restrict__ partial) {
    column_partials<2>(BackValue{x, y, dy, mean, rstd, c, relu}, rows, c, rows_per_chunk,
                       partial);
}

// sums64: [2, C] (Σ dpre, Σ dpre·x̂); dgamma, dbeta may be null.
extern "C" __global__ void bn_backward_finalize(const double* __restrict__ partial, int chunks,
                                                int c, double* __restrict__ sums64,
                                                float* __restrict__ dgamma,
                                                float* __restrict__ dbeta) {
    const int ch = finalize_column(c), lane = threadIdx.x & 31;
    if (ch < 0) return;
    const double sd = column_total_warp(partial, 0, chunks, c, ch, lane);
    const double sdx = column_total_warp(partial, 1, chunks, c, ch, lane);
    if (lane != 0) return;
    sums64[ch] = sd;
    sums64[c + ch] = sdx;
    if (dgamma) dgamma[ch] += (float)sdx;
    if (dbeta) dbeta[ch] += (float)sd;
}

// dx, dresidual may be null; sums64 is read only when train != 0.
extern "C" __global__ void bn_backward_apply(const float* __restrict__ x,
                                             const float* __restrict__ y,
                                             const float* __restrict__ dy,
                                             const float* __restrict__ mean,
                                             const float* __restrict__ rstd,
                                             const float* __restrict__ gamma,
                                             const double* __restrict__ sums64, int relu,
                                             int train, int rows, int c, float* dx,
                                             float* dresidual, i64 total) {
    const double inv_m = 1.0 / (double)rows;
    GRID_STRIDE(i, total) {
        int ch = (int)(i % c);
        float d = (relu && y[i] <= 0.0f) ? 0.0f : dy[i];
        if (dresidual) dresidual[i] += d;
        if (dx) {
            float k = gamma[ch] * rstd[ch];
            if (train) {
                float mean_d = (float)(sums64[ch] * inv_m);
                float mean_dx = (float)(sums64[c + ch] * inv_m);
                float xhat = (x[i] - mean[ch]) * rstd[ch];
                dx[i] += k * (d - mean_d - xhat * mean_dx);
            } else {
                dx[i] += k * d;
            }
        }
    }
}
