//! The region-wise relation metrics (SPEC §5), per group g of `d/G` channels:
//! cosine distance `1 − a·b / (max(‖a‖,1e-8)·max(‖b‖,1e-8))`, Euclidean distance
//! `sqrt(‖a−b‖² + 1e-12)` and inner product `a·b`.
//! ab: [2B, d] (rows 0..B = a, B..2B = b) → z: [B, 3G] = [cos (G), euc (G), inn (G)].

use super::{check_len, disjoint, CpuBackend};
use crate::tensor::Tensor;

pub const NORM_EPS: f64 = 1e-8;
pub const EUC_EPS: f64 = 1e-12;

struct Stats {
    dot: f64,
    na: f64,
    nb: f64,
    dist2: f64,
}

fn stats(a: &[f32], b: &[f32]) -> Stats {
    let (mut dot, mut aa, mut bb, mut dd) = (0f64, 0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        dot += x * y;
        aa += x * x;
        bb += y * y;
        dd += (x - y) * (x - y);
    }
    Stats {
        dot,
        na: aa.sqrt(),
        nb: bb.sqrt(),
        dist2: dd,
    }
}

pub fn forward(be: &CpuBackend, b: usize, d: usize, groups: usize, ab: Tensor, z: Tensor) {
    assert!(d.is_multiple_of(groups), "region: groups must divide d");
    check_len("region ab", ab, 2 * b * d);
    check_len("region z", z, b * 3 * groups);
    disjoint(&[z], &[ab]);
    let (x, zs) = (be.r(ab), be.w(z));
    let dg = d / groups;
    for bi in 0..b {
        for g in 0..groups {
            let a = &x[bi * d + g * dg..bi * d + (g + 1) * dg];
            let bv = &x[(b + bi) * d + g * dg..(b + bi) * d + (g + 1) * dg];
            let st = stats(a, bv);
            let zr = &mut zs[bi * 3 * groups..(bi + 1) * 3 * groups];
            zr[g] = (1.0 - st.dot / (st.na.max(NORM_EPS) * st.nb.max(NORM_EPS))) as f32;
            zr[groups + g] = (st.dist2 + EUC_EPS).sqrt() as f32;
            zr[2 * groups + g] = st.dot as f32;
        }
    }
}

pub fn backward(
    be: &CpuBackend,
    b: usize,
    d: usize,
    groups: usize,
    ab: Tensor,
    dz: Tensor,
    dab: Tensor,
) {
    check_len("region ab", ab, 2 * b * d);
    check_len("region dz", dz, b * 3 * groups);
    check_len("region dab", dab, 2 * b * d);
    disjoint(&[dab], &[ab, dz]);
    let (x, dzs, dx) = (be.r(ab), be.r(dz), be.w(dab));
    let dg = d / groups;
    for bi in 0..b {
        for g in 0..groups {
            let (ra, rb) = (bi * d + g * dg, (b + bi) * d + g * dg);
            let st = stats(&x[ra..ra + dg], &x[rb..rb + dg]);
            let gz = &dzs[bi * 3 * groups..(bi + 1) * 3 * groups];
            let (gcos, geuc, ginn) = (
                gz[g] as f64,
                gz[groups + g] as f64,
                gz[2 * groups + g] as f64,
            );
            let (na, nb) = (st.na.max(NORM_EPS), st.nb.max(NORM_EPS));
            let cosv = st.dot / (na * nb);
            let euc = (st.dist2 + EUC_EPS).sqrt();
            // ∂(a·b/(na·nb))/∂a = b/(na·nb) − cos·a/‖a‖² (the second term only above the floor).
            let ka = if st.na > NORM_EPS {
                cosv / (st.na * st.na)
            } else {
                0.0
            };
            let kb = if st.nb > NORM_EPS {
                cosv / (st.nb * st.nb)
            } else {
                0.0
            };
            for k in 0..dg {
                let (av, bv) = (x[ra + k] as f64, x[rb + k] as f64);
                let da = -gcos * (bv / (na * nb) - ka * av) + geuc * (av - bv) / euc + ginn * bv;
                let db = -gcos * (av / (na * nb) - kb * bv) - geuc * (av - bv) / euc + ginn * av;
                dx[ra + k] += da as f32;
                dx[rb + k] += db as f32;
            }
        }
    }
}
