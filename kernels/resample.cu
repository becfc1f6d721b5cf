// resample.cu: nearest and bilinear (align_corners = False) resizing and adaptive average
// pooling, forward and backward, with exactly the index rules of src/backend/mod.rs
// (`nearest_src`, `bilinear_taps`, `adaptive_bin`; SPEC §6; helpers in common.cuh).
// x: [B, hi, wi, C] → y: [B, ho, wo, C], channels-last.
//   nearest:   y[b,oy,ox,c] (+)= x[b, src(oy), src(ox), c]
//   bilinear:  y = wy0·(wx0·x[y0,x0] + wx1·x[y0,x1]) + wy1·(wx0·x[y1,x0] + wx1·x[y1,x1])
//              (into / out of a channel slice of a wider tensor, see bilinear_forward)
//   fuse_sum_relu: y = relu(Σ_j nearest(x_j)), an HRNet fuse output
//   adaptive:  y[b,v,u,c] = mean of x over bin (v, u)  (f64 sum, as the CPU backend)
// Backward passes are gathers: one thread per input-gradient element walks the (contiguous,
// because every index rule is monotone) range of outputs that read it, in the same
// (oy, ox, tap) order as the CPU's scatter, and adds into dx: deterministic, race-free.
// Launch: 1-D grid-stride over output (forward) or input (backward) elements, 256 threads.
// Memory traffic: forward reads ≤ 4 (bilinear) or a bin of inputs per output element;
// backward reads every output gradient that depends on the element (channel-contiguous).
#include "common.cuh"

// Where flat element i of a channels-last [B, h, w, c] tensor sits.
struct Nhwc {
    i64 b;
    int y, x, ch;
};
__device__ __forceinline__ Nhwc nhwc_at(i64 i, int c, int h, int w) {
    Nhwc p;
    p.ch = (int)(i % c);
    i64 t = i / c;
    p.x = (int)(t % w);
    t /= w;
    p.y = (int)(t % h);
    p.b = t / h;
    return p;
}

// x[b, src(oy), src(ox), ch] for an input of hi × wi resized to ho × wo.
__device__ __forceinline__ float nearest_at(const float* __restrict__ x, int hi, int wi, i64 b,
                                            int oy, int ox, int ho, int wo, int c, int ch) {
    int iy = nearest_src(oy, hi, ho), ix = nearest_src(ox, wi, wo);
    return x[((b * hi + iy) * wi + ix) * c + ch];
}

extern "C" __global__ void nearest_forward(const float* __restrict__ x, float* __restrict__ y,
                                           int c, int hi, int wi, int ho, int wo,
                                           int accumulate, i64 total) {
    GRID_STRIDE(i, total) {
        const Nhwc p = nhwc_at(i, c, ho, wo);
        const int ch = p.ch, ox = p.x, oy = p.y;
        const i64 b = p.b;
        float v = nearest_at(x, hi, wi, b, oy, ox, ho, wo, c, ch);
        if (accumulate)
            y[i] += v;
        else
            y[i] = v;
    }
}

// An HRNet fuse output in one pass: y[b,oy,ox,c] = relu(t0 + t1 + …), t_j = x_j[b, src_j(oy),
// src_j(ox), c] with each term's own input size (nearest, as above; the identity at y's size),
// summed left to right from the first term and ReLU'd as relu_inplace: bit for bit the copy,
// adds and ReLU pass it replaces (the CPU twin: cpu/resample.rs `fuse_sum_relu`). Up to four
// terms (their pointers as arguments; the unused ones null, never read).
// Memory traffic: one read per term element used and one write of y (the sequence of passes
// read and wrote y once per term).
extern "C" __global__ void fuse_sum_relu(const float* __restrict__ x0,
                                         const float* __restrict__ x1,
                                         const float* __restrict__ x2,
                                         const float* __restrict__ x3, int hi0, int wi0, int hi1,
                                         int wi1, int hi2, int wi2, int hi3, int wi3, int nterms,
                                         float* __restrict__ y, int c, int ho, int wo, i64 total) {
    GRID_STRIDE(i, total) {
        const Nhwc p = nhwc_at(i, c, ho, wo);
        const int ch = p.ch, ox = p.x, oy = p.y;
        const i64 b = p.b;
        float acc = nearest_at(x0, hi0, wi0, b, oy, ox, ho, wo, c, ch);
        if (nterms > 1) acc += nearest_at(x1, hi1, wi1, b, oy, ox, ho, wo, c, ch);
        if (nterms > 2) acc += nearest_at(x2, hi2, wi2, b, oy, ox, ho, wo, c, ch);
        if (nterms > 3) acc += nearest_at(x3, hi3, wi3, b, oy, ox, ho, wo, c, ch);
        y[i] = acc < 0.0f ? 0.0f : acc;  // NaN stays NaN, as in relu_inplace
    }
}

// First output index whose nearest source is >= target (sources are monotone in the output).
__device__ __forceinline__ int nearest_first(int target, int in, int out) {
    int o = (int)(((i64)target * out) / in) - 2;
    if (o < 0) o = 0;
    while (o < out && nearest_src(o, in, out) < target) ++o;
    return o;
}

extern "C" __global__ void nearest_backward(const float* __restrict__ dy, float* __restrict__ dx,
                                            int c, int hi, int wi, int ho, int wo, i64 total) {
    GRID_STRIDE(i, total) {
        const Nhwc p = nhwc_at(i, c, hi, wi);
        const int ch = p.ch, ix = p.x, iy = p.y;
        const i64 b = p.b;
        float acc = dx[i];
        int ox0 = nearest_first(ix, wi, wo);
        for (int oy = nearest_first(iy, hi, ho); oy < ho && nearest_src(oy, hi, ho) == iy;
             ++oy) {
            for (int ox = ox0; ox < wo && nearest_src(ox, wi, wo) == ix; ++ox) {
                acc = __fadd_rn(acc, dy[((b * ho + oy) * wo + ox) * c + ch]);
            }
        }
        dx[i] = acc;
    }
}

// The bilinear passes take a channel slice of the wide side: y (forward) or dy (backward) is
// [B, ho, wo, yc] and the resize writes or reads its channels [yoff, yoff + c) (the feature
// aggregation upsamples straight into its concatenation); yc = c, yoff = 0 is the plain resize.
extern "C" __global__ void bilinear_forward(const float* __restrict__ x, float* __restrict__ y,
                                            int c, int hi, int wi, int ho, int wo, int yc,
                                            int yoff, i64 total) {
    GRID_STRIDE(i, total) {
        const Nhwc p = nhwc_at(i, c, ho, wo);
        const int ch = p.ch, ox = p.x, oy = p.y;
        const i64 b = p.b;
        int y0, y1, x0, x1;
        float wy0, wy1, wx0, wx1;
        bilinear_taps(oy, hi, ho, &y0, &y1, &wy0, &wy1);
        bilinear_taps(ox, wi, wo, &x0, &x1, &wx0, &wx1);
        const float* img = x + b * hi * wi * c + ch;
        float a = img[((i64)y0 * wi + x0) * c], bb = img[((i64)y0 * wi + x1) * c];
        float cc = img[((i64)y1 * wi + x0) * c], d = img[((i64)y1 * wi + x1) * c];
        float top = __fadd_rn(__fmul_rn(wx0, a), __fmul_rn(wx1, bb));
        float bot = __fadd_rn(__fmul_rn(wx0, cc), __fmul_rn(wx1, d));
        y[((b * ho + oy) * wo + ox) * yc + yoff + ch] =
            __fadd_rn(__fmul_rn(wy0, top), __fmul_rn(wy1, bot));
    }
}

// First output index whose first bilinear tap x0 is >= target (x0 is monotone in the output).
__device__ __forceinline__ int bilinear_first(int target, int in, int out) {
    int o = (int)floorf(((float)target + 0.5f) * (float)out / (float)in - 0.5f) - 2;
    if (o < 0) o = 0;
    int x0, x1;
    float w0, w1;
    while (o < out) {
        bilinear_taps(o, in, out, &x0, &x1, &w0, &w1);
        if (x0 >= target) break;
        ++o;
    }
    return o;
}

extern "C" __global__ void bilinear_backward(const float* __restrict__ dy,
                                             float* __restrict__ dx, int c, int hi, int wi,
                                             int ho, int wo, int yc, int yoff, i64 total) {
    GRID_STRIDE(i, total) {
        const Nhwc p = nhwc_at(i, c, hi, wi);
        const int ch = p.ch, ix = p.x, iy = p.y;
        const i64 b = p.b;
        float acc = dx[i];
        // Outputs whose taps can include (iy, ix): first tap in {i − 1, i}.
        const int oy_start = bilinear_first(iy - 1, hi, ho);
        const int ox_start = bilinear_first(ix - 1, wi, wo);
        for (int oy = oy_start; oy < ho; ++oy) {
            int y0, y1;
            float wy0, wy1;
            bilinear_taps(oy, hi, ho, &y0, &y1, &wy0, &wy1);
            if (y0 > iy) break;
            if (y0 != iy && y1 != iy) continue;
            for (int ox = ox_start; ox < wo; ++ox) {
                int x0, x1;
                float wx0, wx1;
                bilinear_taps(ox, wi, wo, &x0, &x1, &wx0, &wx1);
                if (x0 > ix) break;
                if (x0 != ix && x1 != ix) continue;
                float g = dy[((b * ho + oy) * wo + ox) * yc + yoff + ch];
                if (y0 == iy && x0 == ix) acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(wy0, wx0), g));
                if (y0 == iy && x1 == ix) acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(wy0, wx1), g));
                if (y1 == iy && x0 == ix) acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(wy1, wx0), g));
                if (y1 == iy && x1 == ix) acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(wy1, wx1), g));
            }
        }
        dx[i] = acc;
    }
}

extern "C" __global__ void adaptive_pool_forward(const float* __restrict__ x,
                                                 float* __restrict__ y, int c, int hi, int wi,
                                                 int ho, int wo, i64 total) {
    GRID_STRIDE(i, total) {
        const Nhwc p = nhwc_at(i, c, ho, wo);
        const int ch = p.ch, u = p.x, v = p.y;
        const i64 b = p.b;
        int y0 = adaptive_start(v, hi, ho), y1 = adaptive_end(v, hi, ho);
        int x0 = adaptive_start(u, wi, wo), x1 = adaptive_end(u, wi, wo);
        double acc = 0.0;
        for (int iy = y0; iy < y1; ++iy)
            for (int ix = x0; ix < x1; ++ix) acc += (double)x[((b * hi + iy) * wi + ix) * c + ch];
        double inv = 1.0 / (double)((y1 - y0) * (x1 - x0));
        y[i] = (float)(acc * inv);
    }
}

extern "C" __global__ void adaptive_pool_backward(const float* __restrict__ dy,
                                                  float* __restrict__ dx, int c, int hi, int wi,
                                                  int ho, int wo, i64 total) {
    GRID_STRIDE(i, total) {
        const Nhwc p = nhwc_at(i, c, hi, wi);
        const int ch = p.ch, ix = p.x, iy = p.y;
        const i64 b = p.b;
        int v0, v1, u0, u1;
        adaptive_bins_of(iy, hi, ho, &v0, &v1);
        adaptive_bins_of(ix, wi, wo, &u0, &u1);
        float acc = dx[i];
        for (int v = v0; v <= v1; ++v) {
            int sy = adaptive_end(v, hi, ho) - adaptive_start(v, hi, ho);
            for (int u = u0; u <= u1; ++u) {
                int sx = adaptive_end(u, wi, wo) - adaptive_start(u, wi, wo);
                float inv = 1.0f / (float)(sy * sx);
                acc = __fadd_rn(acc, __fmul_rn(dy[((b * ho + v) * wo + u) * c + ch], inv));
            }
        }
        dx[i] = acc;
    }
}
