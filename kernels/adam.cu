// adam.cu: one Adam step (PyTorch semantics, no weight decay), per element:
//   m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;  p ← p − step_size · m / (sqrt(v) / bc2_sqrt + ε)
// with step_size = lr / (1 − β1ᵗ) and bc2_sqrt = sqrt(1 − β2ᵗ) computed on the host in f64
// exactly as the CPU backend does.
// Launch: 1-D grid-stride, 256 threads per block.
// Memory traffic: reads p, g, m, v; writes p, m, v (7 floats per element).
#include "common.cuh"

extern "C" __global__ void adam_step(float* __restrict__ p, const float* __restrict__ g,
                                     float* __restrict__ m, float* __restrict__ v, i64 n,
                                     float beta1, float beta2, float eps, float step_size,
                                     float bc2_sqrt) {
    GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}
