// conv.cu: the data movement of k×k convolutions over channels-last activations; the GEMMs
// (y = col · wᵀ, dw += dyᵀ · col, dcol = dy · w) are cuBLAS calls made by the host.
//   im2col:      col[(b, oy, ox), (ky, kx, ci)] = x[b, oy·s + ky − p, ox·s + kx − p, ci] (0 outside)
//   col2im_add:  dx[b, iy, ix, ci] += Σ_{ky, kx: iy = oy·s+ky−p, ix = ox·s+kx−p} dcol[(b, oy, ox), (ky, kx, ci)]
// exactly the column order of src/backend/cpu/conv.rs. col2im is a gather over input pixels
// (each thread owns one dx element, taps added in (ky, kx) order): deterministic, race-free.
// x: [nb, H, W, Cin], col: [nb·Ho·Wo, k·k·Cin].
// Launch: 1-D grid-stride, 256 threads per block.
// Memory traffic: im2col writes nb·Ho·Wo·k²·Cin floats and reads x about k²/s² times (cached);
// col2im reads the same column matrix once and dx once.
#include "common.cuh"

extern "C" __global__ void im2col(const float* __restrict__ x, float* __restrict__ col, int h,
                                  int w, int cin, int ho, int wo, int k, int stride, int pad,
                                  i64 total) {
    const int kk = k * k * cin;
    GRID_STRIDE(i, total) {
        i64 row = i / kk;
        int rem = (int)(i - row * kk);
        int kidx = rem / cin, ci = rem - kidx * cin;
        int ky = kidx / k, kx = kidx - ky * k;
        int ox = (int)(row % wo);
        i64 t = row / wo;
        int oy = (int)(t % ho);
        i64 b = t / ho;
        int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
        float v = 0.0f;
        if (iy >= 0 && iy < h && ix >= 0 && ix < w) v = x[((b * h + iy) * w + ix) * cin + ci];
        col[i] = v;
    }
}

extern "C" __global__ void col2im_add(const float* __restrict__ dcol, float* __restrict__ dx,
                                      int h, int w, int cin, int ho, int wo, int k, int stride,
                                      int pad, i64 total) {
    const int kk = k * k * cin;
    GRID_STRIDE(i, total) {
        int ci = (int)(i % cin);
        i64 t = i / cin;
        int ix = (int)(t % w);
        t /= w;
        int iy = (int)(t % h);
        i64 b = t / h;
        float acc = dx[i];
        const int ty = iy + pad, tx = ix + pad;
        for (int ky = 0; ky < k; ++ky) {
            if (ty < ky || (ty - ky) % stride != 0) continue;
            int oy = (ty - ky) / stride;
            if (oy >= ho) continue;
            for (int kx = 0; kx < k; ++kx) {
                if (tx < kx || (tx - kx) % stride != 0) continue;
                int ox = (tx - kx) / stride;
                if (ox >= wo) continue;
                acc += dcol[((b * ho + oy) * wo + ox) * kk + (ky * k + kx) * cin + ci];
            }
        }
        dx[i] = acc;
    }
}

// The weights of the transposed convolution that gives dx for a stride-1 convolution:
//   wt[ci, ky, kx, co] = w[co, k−1−ky, k−1−kx, ci]      (w: OHWI [Cout, k, k, Cin])
// so that dx += conv(dy, wt, stride 1, pad k−1−p) runs on the implicit-GEMM forward kernels
// (src/backend/cuda/conv_implicit.rs `conv2d_backward`). total = Cout·k·k·Cin.
extern "C" __global__ void conv_flip_weights(const float* __restrict__ w, float* __restrict__ wt,
                                             int cout, int k, int cin, i64 total) {
    GRID_STRIDE(i, total) {
        const int co = (int)(i % cout);
        i64 t = i / cout;
        const int kx = (int)(t % k);
        t /= k;
        const int ky = (int)(t % k);
        const i64 ci = t / k;
        wt[i] = w[(((i64)co * k + (k - 1 - ky)) * k + (k - 1 - kx)) * cin + ci];
    }
}
