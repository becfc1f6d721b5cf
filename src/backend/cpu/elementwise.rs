//! Fill, copy, add, ReLU and sigmoid over flat tensors.

use rayon::prelude::*;

use super::norm::{period, tile};
use super::simd::simd_fn;
use super::{check_len, disjoint, CpuBackend, PAR_MIN};
use crate::tensor::Tensor;

pub fn fill(be: &CpuBackend, t: Tensor, value: f32) {
    be.w(t)
        .par_chunks_mut(PAR_MIN)
        .for_each(|c| fill_streaming(c, value));
}

/// `v = value` over a slice, with non-temporal stores (AVX-512's where present, else SSE's,
/// which every x86-64 has): the gradient arenas zeroed before each backward are far larger
/// than the caches, and ordinary stores first read every line they fill.
fn fill_streaming(v: &mut [f32], value: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(v: &mut [f32], value: f32) {
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
        /// The same with 16-byte SSE stores.
        fn sse(v: &mut [f32], value: f32) {
            // SAFETY: `align_to_mut` views only the 16-byte-aligned middle as `__m128` (4
            // plain f32 each, any bit pattern valid); SSE is part of x86-64.
            unsafe {
                let (head, mid, tail) = v.align_to_mut::<__m128>();
                head.fill(value);
                tail.fill(value);
                let x = _mm_set1_ps(value);
                for m in mid {
                    _mm_stream_ps(m as *mut __m128 as *mut f32, x);
                }
                _mm_sfence();
            }
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; `align_to_mut` views only the 64-byte-aligned
            // middle as `__m512` (16 plain f32 each, any bit pattern valid).
            return unsafe { avx512(v, value) };
        }
        sse(v, value)
    }
    #[cfg(not(target_arch = "x86_64"))]
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
    if rows == 0 || c == 0 {
        return;
    }
    let act = BiasAct::new(be, y, bias, residual, relu);
    act.apply_parallel(be.w(y), 0);
}

/// What follows a convolution: `y = relu?(y + bias + residual?)` per output row of C values,
/// applied by the convolution paths to each piece of output they have just written, while it
/// is still in cache, or as a pass of its own.
pub(crate) struct BiasAct<'a> {
    /// The bias tiled over one period of whole rows and whole vectors (`norm::period`), so
    /// the loops run over full vectors whatever C is.
    bias: Vec<f32>,
    /// The whole output's residual, indexed like the output.
    residual: Option<&'a [f32]>,
    relu: bool,
}

impl<'a> BiasAct<'a> {
    /// The epilogue of output `y` (rows of `bias.len` values), its lengths checked.
    pub fn new(
        be: &'a CpuBackend,
        y: Tensor,
        bias: Tensor,
        residual: Option<Tensor>,
        relu: bool,
    ) -> BiasAct<'a> {
        assert!(
            bias.len > 0 && y.len.is_multiple_of(bias.len),
            "bias_act: {} outputs are not rows of {} channels",
            y.len,
            bias.len
        );
        disjoint(&[y], &[bias]);
        if let Some(r) = residual {
            check_len("bias_act residual", r, y.len);
            disjoint(&[y], &[r]);
        }
        BiasAct {
            bias: tile(be.r(bias), period(bias.len)),
            residual: residual.map(|r| be.r(r)),
            relu,
        }
    }

    /// Over `y`, whole rows of the output starting at its element `at`.
    pub fn apply(&self, y: &mut [f32], at: usize) {
        let residual = self.residual.map(|r| &r[at..at + y.len()]);
        bias_act_periods(y, &self.bias, residual, self.relu);
    }

    /// Over `y` (whole rows of the output starting at its element `at`) in parallel blocks,
    /// as a pass of its own.
    pub fn apply_parallel(&self, y: &mut [f32], at: usize) {
        let block = (PAR_MIN / self.bias.len()).max(1) * self.bias.len();
        y.par_chunks_mut(block)
            .enumerate()
            .for_each(|(i, part)| self.apply(part, at + i * block));
    }
}

simd_fn! {
    /// `y = relu?(y + bias + residual?)` over whole rows, one period at a time (`bias`: tiled
    /// over one period). One pass: a pass per option re-read what the previous had just
    /// stored, and 30-value rows left most of each vector loop to scalar tails.
    fn bias_act_periods(y: &mut [f32], bias: &[f32], residual: Option<&[f32]>, relu: bool) {
        let n = bias.len();
        match residual {
            Some(res) => {
                for (ys, rs) in y.chunks_mut(n).zip(res.chunks(n)) {
                    let (rs, bs) = (&rs[..ys.len()], &bias[..ys.len()]);
                    for ((v, b), r) in ys.iter_mut().zip(bs).zip(rs) {
                        let t = *v + b + r;
                        *v = if relu { relu_value(t) } else { t };
                    }
                }
            }
            None => {
                for ys in y.chunks_mut(n) {
                    let bs = &bias[..ys.len()];
                    for (v, b) in ys.iter_mut().zip(bs) {
                        let t = *v + b;
                        *v = if relu { relu_value(t) } else { t };
                    }
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Streamed or not, every value of the slice is written and nothing around it: slices
    /// starting at every offset within a 64-byte line, shorter and longer than one line.
    #[test]
    fn fill_streaming_writes_exactly_the_slice() {
        let mut buf = vec![-1.0f32; 256];
        for start in 0..17 {
            for len in [0, 1, 3, 4, 15, 16, 17, 33, 100, 200] {
                buf.fill(-1.0);
                fill_streaming(&mut buf[start..start + len], 2.5);
                for (i, v) in buf.iter().enumerate() {
                    let want = if (start..start + len).contains(&i) {
                        2.5
                    } else {
                        -1.0
                    };
                    assert_eq!(*v, want, "start {start}, len {len}, index {i}");
                }
            }
        }
    }
}
