// conv_gather.cuh: reading the im2col matrix of a k×k convolution straight from channels-last x
// (conv_implicit.cu, conv_wgrad.cu). A[m, kg] = x[b, oy·s + ky − p, ox·s + kx − p, ci] with
// m = (b·Ho + oy)·Wo + ox and kg = (ky·k + kx)·Cin + ci (0 outside the image).
#pragma once

#include "common.cuh"

// One K column of the GEMM: kg = (ky·k + kx)·Cin + ci; ok = kg < K.
struct Tap {
    int ky, kx, ci;
    bool ok;
};

__device__ __forceinline__ Tap tap_of(int kg, int kdim, int cin, int k) {
    Tap t;
    t.ok = kg < kdim;
    const int kidx = kg / cin;
    t.ci = kg - kidx * cin;
    t.ky = kidx / k;
    t.kx = kidx - t.ky * k;
    return t;
}

// A[m, kg] for the pixel (rowb, iy0, ix0) and tap t: x[b, iy, ix, ci], 0 outside.
__device__ __forceinline__ float gather_a(const float* __restrict__ x, int rowb, int iy0, int ix0,
                                          const Tap& t, int h, int w, int cin) {
    if (rowb < 0 || !t.ok) return 0.0f;
    const int iy = iy0 + t.ky, ix = ix0 + t.kx;
    if (iy < 0 || iy >= h || ix < 0 || ix >= w) return 0.0f;
    return __ldg(x + ((i64)(rowb + iy) * w + ix) * cin + t.ci);
}
