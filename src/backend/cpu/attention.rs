//! The region feature extractor's attention pooling (SPEC §4.2):
//! `F_man = Σ_i M_i f_i / (Σ_i M_i + 1e-6)`, `F_ori = Σ_i (1−M_i) f_i / (Σ_i (1−M_i) + 1e-6)`.
//! f: [B, N, C], m: [B, N], out: [2B, C] (rows 0..B man, B..2B ori).
//!
//! Backward, with Z_m, Z_o the two denominators and g_m, g_o the output gradients:
//! `df_i += M_i g_m / Z_m + (1−M_i) g_o / Z_o`,
//! `dM_i += g_m·(f_i − F_man)/Z_m − g_o·(f_i − F_ori)/Z_o`.

use rayon::prelude::*;

use super::{check_len, disjoint, CpuBackend};
use crate::tensor::Tensor;

pub const EPS: f64 = 1e-6;

pub fn forward(be: &CpuBackend, b: usize, n: usize, c: usize, f: Tensor, m: Tensor, out: Tensor) {
    check_len("attention f", f, b * n * c);
    check_len("attention m", m, b * n);
    check_len("attention out", out, 2 * b * c);
    disjoint(&[out], &[f, m]);
    let (fs, ms) = (be.r(f), be.r(m));
    let rows: Vec<(Vec<f32>, Vec<f32>)> = (0..b)
        .into_par_iter()
        .map(|bi| {
            let (mut man, mut ori) = (vec![0f64; c], vec![0f64; c]);
            let (mut zm, mut zo) = (EPS, EPS);
            for i in 0..n {
                let mi = ms[bi * n + i] as f64;
                zm += mi;
                zo += 1.0 - mi;
                for (ch, v) in fs[(bi * n + i) * c..(bi * n + i + 1) * c]
                    .iter()
                    .enumerate()
                {
                    man[ch] += mi * *v as f64;
                    ori[ch] += (1.0 - mi) * *v as f64;
                }
            }
            (
                man.iter().map(|v| (v / zm) as f32).collect(),
                ori.iter().map(|v| (v / zo) as f32).collect(),
            )
        })
        .collect();
    let o = be.w(out);
    for (bi, (man, ori)) in rows.into_iter().enumerate() {
        o[bi * c..(bi + 1) * c].copy_from_slice(&man);
        o[(b + bi) * c..(b + bi + 1) * c].copy_from_slice(&ori);
    }
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    be: &CpuBackend,
    b: usize,
    n: usize,
    c: usize,
    f: Tensor,
    m: Tensor,
    out: Tensor,
    dout: Tensor,
    df: Tensor,
    dm: Tensor,
) {
    check_len("attention df", df, b * n * c);
    check_len("attention dm", dm, b * n);
    check_len("attention dout", dout, 2 * b * c);
    disjoint(&[df, dm], &[f, m, out, dout]);
    disjoint(&[df], &[dm]);
    let (fs, ms, os, gs) = (be.r(f), be.r(m), be.r(out), be.r(dout));
    be.w(df)
        .par_chunks_mut(n * c)
        .zip(be.w(dm).par_chunks_mut(n))
        .enumerate()
        .for_each(|(bi, (dfb, dmb))| {
            let mb = &ms[bi * n..(bi + 1) * n];
            let zm = (mb.iter().map(|v| *v as f64).sum::<f64>() + EPS) as f32;
            let zo = (mb.iter().map(|v| 1.0 - *v as f64).sum::<f64>() + EPS) as f32;
            let (gm, go) = (
                &gs[bi * c..(bi + 1) * c],
                &gs[(b + bi) * c..(b + bi + 1) * c],
            );
            let (fm, fo) = (
                &os[bi * c..(bi + 1) * c],
                &os[(b + bi) * c..(b + bi + 1) * c],
            );
            for i in 0..n {
                let fi = &fs[(bi * n + i) * c..(bi * n + i + 1) * c];
                let (wm, wo) = (mb[i] / zm, (1.0 - mb[i]) / zo);
                let mut acc = 0f64;
                for ch in 0..c {
                    dfb[i * c + ch] += wm * gm[ch] + wo * go[ch];
                    acc += (gm[ch] * (fi[ch] - fm[ch])) as f64 / zm as f64
                        - (go[ch] * (fi[ch] - fo[ch])) as f64 / zo as f64;
                }
                dmb[i] += acc as f32;
            }
        });
}
