//! Adam (PyTorch semantics, no weight decay):
//! `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`,
//! `p ← p − (lr / (1−β1ᵗ)) · m / (sqrt(v) / sqrt(1−β2ᵗ) + ε)`.

use rayon::prelude::*;

use super::{check_len, CpuBackend, PAR_MIN};
use crate::backend::AdamArgs;
use crate::tensor::Tensor;

pub fn step(be: &CpuBackend, param: Tensor, grad: Tensor, m: Tensor, v: Tensor, a: &AdamArgs) {
    for t in [grad, m, v] {
        check_len("adam", t, param.len);
    }
    let bc1 = 1.0 - (a.beta1 as f64).powi(a.step as i32);
    let bc2 = 1.0 - (a.beta2 as f64).powi(a.step as i32);
    let step_size = (a.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let (b1, b2, eps) = (a.beta1, a.beta2, a.eps);
    let g = be.r(grad);
    be.w(param)
        .par_iter_mut()
        .with_min_len(PAR_MIN)
        .zip(be.w(m).par_iter_mut().zip(be.w(v).par_iter_mut()))
        .zip(g.par_iter())
        .for_each(|((p, (m, v)), g)| {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
        });
}
