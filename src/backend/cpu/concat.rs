//! Channel concatenation of channels-last tensors: `[rows, src_c]` into columns
//! `offset..offset+src_c` of `[rows, dst_c]`, and its backward.

use rayon::prelude::*;

use super::{check_len, disjoint, CpuBackend};
use crate::tensor::Tensor;

pub fn forward(
    be: &CpuBackend,
    rows: usize,
    src: Tensor,
    src_c: usize,
    dst: Tensor,
    dst_c: usize,
    offset: usize,
) {
    check_len("concat src", src, rows * src_c);
    check_len("concat dst", dst, rows * dst_c);
    assert!(offset + src_c <= dst_c, "concat: channels out of range");
    disjoint(&[dst], &[src]);
    let s = be.r(src);
    be.w(dst)
        .par_chunks_mut(dst_c)
        .with_min_len(256)
        .enumerate()
        .for_each(|(r, row)| {
            row[offset..offset + src_c].copy_from_slice(&s[r * src_c..(r + 1) * src_c])
        });
}

pub fn backward(
    be: &CpuBackend,
    rows: usize,
    d_dst: Tensor,
    dst_c: usize,
    offset: usize,
    d_src: Tensor,
    src_c: usize,
) {
    check_len("concat d_src", d_src, rows * src_c);
    check_len("concat d_dst", d_dst, rows * dst_c);
    disjoint(&[d_src], &[d_dst]);
    let g = be.r(d_dst);
    be.w(d_src)
        .par_chunks_mut(src_c)
        .with_min_len(256)
        .enumerate()
        .for_each(|(r, row)| {
            for (d, v) in row
                .iter_mut()
                .zip(&g[r * dst_c + offset..r * dst_c + offset + src_c])
            {
                *d += v;
            }
        });
}
