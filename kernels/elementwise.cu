// elementwise.cu: flat elementwise operations over `n` floats (any layout).
//   fill: t = value; copy: dst = src; add_inplace: dst += src; relu_inplace: x = max(x, 0);
//   relu_backward_inplace: dy *= (y > 0); sigmoid: y = 1 / (1 + exp(−x));
//   sigmoid_backward: dx += dy · y · (1 − y);
//   bias_act_inplace: y[r, c] = relu?(y[r, c] + bias[c] + residual?[r, c]) (the epilogue of a
//   convolution with BatchNorm folded in; residual may be null).
// Launch: 1-D grid-stride, 256 threads per block, grid capped by the host.
// Memory traffic: one read per input and one read/write per output element (bandwidth bound).
#include "common.cuh"

extern "C" __global__ void fill(float* __restrict__ t, i64 n, float value) {
    GRID_STRIDE(i, n) t[i] = value;
}

extern "C" __global__ void copy(const float* __restrict__ src, float* __restrict__ dst, i64 n) {
    GRID_STRIDE(i, n) dst[i] = src[i];
}

extern "C" __global__ void add_inplace(float* __restrict__ dst, const float* __restrict__ src,
                                       i64 n) {
    GRID_STRIDE(i, n) dst[i] += src[i];
}

extern "C" __global__ void relu_inplace(float* __restrict__ x, i64 n) {
    GRID_STRIDE(i, n) x[i] = x[i] < 0.0f ? 0.0f : x[i];  // NaN stays NaN, as on the CPU
}

extern "C" __global__ void relu_backward_inplace(const float* __restrict__ y,
                                                 float* __restrict__ dy, i64 n) {
    GRID_STRIDE(i, n) {
        if (y[i] <= 0.0f) dy[i] = 0.0f;
    }
}

extern "C" __global__ void sigmoid(const float* __restrict__ x, float* __restrict__ y, i64 n) {
    GRID_STRIDE(i, n) y[i] = 1.0f / (1.0f + expf(-x[i]));
}

extern "C" __global__ void sigmoid_backward(const float* __restrict__ y,
                                            const float* __restrict__ dy,
                                            float* __restrict__ dx, i64 n) {
    GRID_STRIDE(i, n) {
        float v = y[i];
        dx[i] += dy[i] * v * (1.0f - v);
    }
}

extern "C" __global__ void bias_act_inplace(float* __restrict__ y, const float* __restrict__ bias,
                                            const float* __restrict__ residual, i64 n, int c,
                                            int relu) {
    GRID_STRIDE(i, n) {
        float t = y[i] + bias[i % c];
        if (residual) t += residual[i];
        y[i] = (relu && t < 0.0f) ? 0.0f : t;  // NaN stays NaN
    }
}
