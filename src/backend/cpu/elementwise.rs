//! Fill, copy, add, ReLU and sigmoid over flat tensors.

use rayon::prelude::*;

use super::{check_len, disjoint, CpuBackend, PAR_MIN};
use crate::tensor::Tensor;

pub fn fill(be: &CpuBackend, t: Tensor, value: f32) {
    be.w(t)
        .par_chunks_mut(PAR_MIN)
        .for_each(|c| fill_streaming(c, value));
}

/// `v = value` over a slice, with non-temporal stores where AVX-512 is present: the gradient
/// arenas zeroed before each backward are far larger than the caches, and ordinary stores
/// first read every line they fill.
fn fill_streaming(v: &mut [f32], value: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(v: &mut [f32], value: f32) {
            use std::arch::x86_64::*;
            // The unaligned head and tail by plain stores, the 64-byte-aligned middle streamed.
            let (head, mid, tail) = v.align_to_mut::<__m512>();
            head.fill(value);
            tail.fill(value);
            let x = _mm512_set1_ps(value);
            for m in mid {
                _mm512_stream_ps(m as *mut __m512 as *mut f32, x);
            }
            // Order the streamed stores before whatever the caller does next.
            _mm_sfence();
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; `align_to_mut` views only the 64-byte-aligned
            // middle as `__m512` (16 plain f32 each, any bit pattern valid).
            return unsafe { avx512(v, value) };
        }
    }
    v.fill(value);
}

pub fn copy(be: &CpuBackend, src: Tensor, dst: Tensor) {
    check_len("copy", dst, src.len);
    disjoint(&[dst], &[src]);
    be.w(dst)
        .par_iter_mut()
        .with_min_len(PAR_MIN)
        .zip(be.r(src).par_iter())
        .for_each(|(d, s)| *d = *s);
}

pub fn add_inplace(be: &CpuBackend, dst: Tensor, src: Tensor) {
    check_len("add_inplace", dst, src.len);
    disjoint(&[dst], &[src]);
    be.w(dst)
        .par_iter_mut()
        .with_min_len(PAR_MIN)
        .zip(be.r(src).par_iter())
        .for_each(|(d, s)| *d += *s);
}

/// `max(v, 0)`. NaN stays NaN (as in PyTorch), so a diverging run is noticed.
#[inline(always)]
pub(crate) fn relu_value(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// [`relu_value`] over a slice.
#[inline]
pub(crate) fn relu_slice(v: &mut [f32]) {
    for v in v {
        *v = relu_value(*v);
    }
}

pub fn relu_inplace(be: &CpuBackend, x: Tensor) {
    be.w(x).par_chunks_mut(PAR_MIN).for_each(relu_slice);
}

/// `y = relu?(y + bias + residual?)` over `[rows, c]`.
pub fn bias_act_inplace(
    be: &CpuBackend,
    rows: usize,
    c: usize,
    y: Tensor,
    bias: Tensor,
    residual: Option<Tensor>,
    relu: bool,
) {
    check_len("bias_act y", y, rows * c);
    check_len("bias_act bias", bias, c);
    if let Some(r) = residual {
        check_len("bias_act residual", r, rows * c);
        disjoint(&[y], &[r]);
    }
    disjoint(&[y], &[bias]);
    if rows == 0 || c == 0 {
        return;
    }
    let bias = be.r(bias);
    let res = residual.map(|r| be.r(r));
    be.w(y)
        .par_chunks_mut(c)
        .with_min_len((PAR_MIN / c).max(1))
        .enumerate()
        .for_each(|(r, row)| {
            // Whole-row passes, the options decided once per row: the loops vectorise.
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
            if let Some(res) = res {
                for (v, t) in row.iter_mut().zip(&res[r * c..(r + 1) * c]) {
                    *v += t;
                }
            }
            if relu {
                relu_slice(row);
            }
        });
}

pub fn relu_backward_inplace(be: &CpuBackend, y: Tensor, dy: Tensor) {
    check_len("relu_backward", dy, y.len);
    disjoint(&[dy], &[y]);
    be.w(dy)
        .par_iter_mut()
        .with_min_len(PAR_MIN)
        .zip(be.r(y).par_iter())
        .for_each(|(d, y)| {
            if *y <= 0.0 {
                *d = 0.0
            }
        });
}

pub fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub fn sigmoid(be: &CpuBackend, x: Tensor, y: Tensor) {
    check_len("sigmoid", y, x.len);
    disjoint(&[y], &[x]);
    be.w(y)
        .par_iter_mut()
        .with_min_len(PAR_MIN)
        .zip(be.r(x).par_iter())
        .for_each(|(y, x)| *y = sigmoid_f32(*x));
}

pub fn sigmoid_backward(be: &CpuBackend, y: Tensor, dy: Tensor, dx: Tensor) {
    check_len("sigmoid_backward", dy, y.len);
    check_len("sigmoid_backward", dx, y.len);
    disjoint(&[dx], &[y, dy]);
    be.w(dx)
        .par_iter_mut()
        .with_min_len(PAR_MIN)
        .zip(be.r(y).par_iter().zip(be.r(dy).par_iter()))
        .for_each(|(dx, (y, dy))| *dx += dy * y * (1.0 - y));
}
