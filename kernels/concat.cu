// concat.cu: channel concatenation of channels-last tensors.
//   forward:  dst[r, offset + c] = src[r, c]        src: [rows, src_c], dst: [rows, dst_c]
//   backward: d_src[r, c] += d_dst[r, offset + c]
// Launch: 1-D grid-stride over rows·src_c elements, 256 threads per block.
// Memory traffic: rows·src_c reads and writes (plus a read of d_src for the backward).
#include "common.cuh"

extern "C" __global__ void concat_forward(const float* __restrict__ src, int src_c,
                                          float* __restrict__ dst, int dst_c, int offset,
                                          i64 n) {
    GRID_STRIDE(i, n) {
        i64 r = i / src_c;
        int c = (int)(i - r * src_c);
        dst[r * dst_c + offset + c] = src[i];
    }
}

extern "C" __global__ void concat_backward(const float* __restrict__ d_dst, int dst_c,
                                           int offset, float* __restrict__ d_src, int src_c,
                                           i64 n) {
    GRID_STRIDE(i, n) {
        i64 r = i / src_c;
        int c = (int)(i - r * src_c);
        d_src[i] += d_dst[r * dst_c + offset + c];
    }
}
