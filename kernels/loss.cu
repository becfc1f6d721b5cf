// loss.cu: weighted binary cross-entropy on logits (SPEC §7), stable form
//   BCE(x, t) = max(x, 0) − x·t + ln(1 + exp(−|x|)),
//   loss[0] = scale · Σ_r weight[r] · Σ_c BCE(x[r,c], t[r,c])   (f64; rows with weight 0 skipped)
//   dx[r,c] += scale·weight[r] · (sigmoid(x[r,c]) − t[r,c])
// x, target: [rows, cols], weight: [rows].
// Launch: bce_forward one 1024-thread block (a single fixed-order reduction, deterministic);
// bce_backward 1-D grid-stride.
// Memory traffic: reads x and target once; the backward also reads/writes dx once.
#include "common.cuh"

extern "C" __global__ void bce_forward(const float* __restrict__ x,
                                       const float* __restrict__ target,
                                       const float* __restrict__ weight, int rows, int cols,
                                       float scale, float* __restrict__ loss) {
    __shared__ double scratch[32];
    const i64 total = (i64)rows * cols;
    double acc = 0.0;
    for (i64 i = threadIdx.x; i < total; i += blockDim.x) {
        float w = weight[i / cols];
        if (w == 0.0f) continue;
        double xv = (double)x[i], t = (double)target[i];
        acc += (double)w * (fmax(xv, 0.0) - xv * t + log1p(exp(-fabs(xv))));
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) loss[0] = (float)(acc * (double)scale);
}

extern "C" __global__ void bce_backward(const float* __restrict__ x,
                                        const float* __restrict__ target,
                                        const float* __restrict__ weight, int cols, float scale,
                                        float* __restrict__ dx, i64 total) {
    GRID_STRIDE(i, total) {
        float k = scale * weight[i / cols];
        if (k == 0.0f) continue;
        float sig = 1.0f / (1.0f + expf(-x[i]));
        dx[i] += k * (sig - target[i]);
    }
}
