//! The fused relation map and its backward against a naive dense N×N implementation of
//! SPEC §4.1 in f64 (normalise, full score matrix, row softmax, adaptive pooling of each row
//! viewed as an H×W map); the dense backward is the f64 central difference of the dense forward.

mod common;

use common::*;
use prrnet::backend::cpu::CpuBackend;
use prrnet::backend::{adaptive_bin, RelationShape};
use prrnet::rng::Rng;
use prrnet::Backend;

/// Dense reference: f [N, C] (one image) → P [N, n, n], in f64.
fn dense_relation(f: &[f64], h: usize, w: usize, c: usize, n: usize) -> Vec<f64> {
    let np = h * w;
    let q: Vec<f64> = (0..np)
        .flat_map(|i| {
            let row = &f[i * c..(i + 1) * c];
            let nrm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            row.iter().map(move |v| v / nrm).collect::<Vec<_>>()
        })
        .collect();
    let mut p = vec![0f64; np * n * n];
    for i in 0..np {
        // The full row of scores and its softmax (max-shifted, the textbook way).
        let s: Vec<f64> = (0..np)
            .map(|j| (0..c).map(|k| q[i * c + k] * q[j * c + k]).sum())
            .collect();
        let mx = s.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
        let z: f64 = e.iter().sum();
        for v in 0..n {
            let (y0, y1) = adaptive_bin(v, h, n);
            for u in 0..n {
                let (x0, x1) = adaptive_bin(u, w, n);
                let mut acc = 0.0;
                for y in y0..y1 {
                    for x in x0..x1 {
                        acc += e[y * w + x] / z;
                    }
                }
                p[(i * n + v) * n + u] = acc / ((y1 - y0) * (x1 - x0)) as f64;
            }
        }
    }
    p
}

fn case(b: usize, h: usize, w: usize, c: usize, n: usize, seed: u64) {
    let np = h * w;
    let s = RelationShape { b, h, w, c, n };
    let mut rng = Rng::new(seed);
    let f = randn(&mut rng, b * np * c, 1.0);
    let g = randn(&mut rng, b * np * n * n, 1.0);
    let mut be = CpuBackend::new();
    let ft = put(&mut be, &f);
    let norms = put(&mut be, &vec![f32::NAN; b * np]);
    let lsum = put(&mut be, &vec![f32::NAN; b * np]);
    let p = put(&mut be, &vec![f32::NAN; b * np * n * n]);
    let gt = put(&mut be, &g);
    let df = put(&mut be, &vec![0.0; b * np * c]);
    be.relation(&s, ft, norms, lsum, p).unwrap();
    be.relation_backward(&s, ft, norms, lsum, p, gt, df)
        .unwrap();
    let (p_fused, df_fused) = (get(&be, p), get(&be, df));
    for bi in 0..b {
        let fb: Vec<f64> = f[bi * np * c..(bi + 1) * np * c]
            .iter()
            .map(|v| *v as f64)
            .collect();
        let gb = &g[bi * np * n * n..(bi + 1) * np * n * n];
        let want = dense_relation(&fb, h, w, c, n);
        let got: Vec<f64> = p_fused[bi * np * n * n..(bi + 1) * np * n * n]
            .iter()
            .map(|v| *v as f64)
            .collect();
        let err = rel_l2_f64(&got, &want);
        assert!(err < 1e-5, "forward {h}x{w} n={n}: rel err {err:.2e}");
        // Dense backward by f64 central differences on a sample of coordinates.
        let loss = |fv: &[f64]| -> f64 {
            dense_relation(fv, h, w, c, n)
                .iter()
                .zip(gb)
                .map(|(p, g)| p * *g as f64)
                .sum()
        };
        let mut num = Vec::new();
        let mut ana = Vec::new();
        let mut x = fb.clone();
        for k in 0..40 {
            let idx = (k * 7919 + 13) % (np * c);
            let hstep = 1e-5;
            let o = x[idx];
            x[idx] = o + hstep;
            let lp = loss(&x);
            x[idx] = o - hstep;
            let lm = loss(&x);
            x[idx] = o;
            num.push((lp - lm) / (2.0 * hstep));
            ana.push(df_fused[bi * np * c + idx] as f64);
        }
        let err = rel_l2_f64(&ana, &num);
        assert!(err < 1e-4, "backward {h}x{w} n={n}: rel err {err:.2e}");
    }
}

#[test]
fn matches_dense_divisible_bins() {
    case(2, 10, 10, 16, 5, 1);
}

#[test]
fn matches_dense_overlapping_bins() {
    case(1, 13, 13, 8, 4, 2);
    case(1, 16, 16, 12, 5, 3);
    case(1, 11, 7, 6, 3, 4);
}

#[test]
fn matches_dense_across_several_tiles() {
    // N > 512 (the CPU tile): several pixel tiles, so the symmetric (transposed) halves and
    // a short last tile are exercised.
    case(1, 24, 24, 6, 5, 5);
    case(1, 23, 27, 5, 4, 6);
    // Three tiles (an odd count: each round leaves one tile to its diagonal pair), two
    // images in one group.
    case(2, 33, 40, 4, 5, 7);
}

#[test]
fn rows_are_distributions() {
    // Σ_b P_ib·|b| counts each pixel once per bin containing it; for divisible bins it is 1.
    let (h, w, c, n) = (10, 10, 6, 5);
    let s = RelationShape { b: 1, h, w, c, n };
    let mut rng = Rng::new(9);
    let mut be = CpuBackend::new();
    let f = put(&mut be, &randn(&mut rng, h * w * c, 1.0));
    let norms = put(&mut be, &vec![0.0; h * w]);
    let lsum = put(&mut be, &vec![0.0; h * w]);
    let p = put(&mut be, &vec![0.0; h * w * n * n]);
    be.relation(&s, f, norms, lsum, p).unwrap();
    let pv = get(&be, p);
    for i in 0..h * w {
        let total: f64 = pv[i * n * n..(i + 1) * n * n]
            .iter()
            .map(|v| *v as f64 * 4.0)
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "row {i}: {total}");
    }
}
