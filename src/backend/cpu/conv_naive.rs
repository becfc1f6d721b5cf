//! Test oracle of the hand-written convolution kernels (`conv_direct`, `conv_small`): the
//! three passes written out in f64, and the check of a kernel family against them on every
//! instruction set the CPU has.

use super::simd::Isa;
use crate::backend::ConvShape;
use crate::rng::Rng;

/// The three passes written out in f64 over the unpadded tensors.
pub struct Naive<'a> {
    pub s: &'a ConvShape,
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub dy: &'a [f32],
}

impl Naive<'_> {
    /// Calls `f(b, oy, ox, ky, kx, iy, ix)` for every tap that lands inside the input.
    fn taps(&self, mut f: impl FnMut(usize, usize, usize, usize, usize, usize, usize)) {
        let s = self.s;
        for b in 0..s.b {
            for oy in 0..s.ho {
                for ox in 0..s.wo {
                    for ky in 0..s.k {
                        for kx in 0..s.k {
                            let (iy, ix) = (oy * s.stride + ky, ox * s.stride + kx);
                            if iy < s.pad || ix < s.pad || iy - s.pad >= s.h || ix - s.pad >= s.w {
                                continue;
                            }
                            f(b, oy, ox, ky, kx, iy - s.pad, ix - s.pad);
                        }
                    }
                }
            }
        }
    }

    /// (y, ∂L/∂x, ∂L/∂w) for the upstream gradient `dy`.
    pub fn passes(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let s = self.s;
        let (mut y, mut dx, mut dw) = (
            vec![0f64; s.y_len()],
            vec![0f64; s.x_len()],
            vec![0f64; s.w_len()],
        );
        self.taps(|b, oy, ox, ky, kx, iy, ix| {
            let yo = ((b * s.ho + oy) * s.wo + ox) * s.cout;
            let xo = ((b * s.h + iy) * s.w + ix) * s.cin;
            for co in 0..s.cout {
                let wo = ((co * s.k + ky) * s.k + kx) * s.cin;
                for ci in 0..s.cin {
                    let (xv, wv, g) = (
                        self.x[xo + ci] as f64,
                        self.w[wo + ci] as f64,
                        self.dy[yo + co] as f64,
                    );
                    y[yo + co] += xv * wv;
                    dx[xo + ci] += g * wv;
                    dw[wo + ci] += g * xv;
                }
            }
        });
        (y, dx, dw)
    }
}

/// `got` == `start + want` within 2e-5 of the largest |want| (and at least 2e-5).
pub fn assert_close(what: &str, got: &[f32], start: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    for (i, ((g, s0), w)) in got.iter().zip(start).zip(want).enumerate() {
        let w = *s0 as f64 + w;
        assert!(
            (*g as f64 - w).abs() <= 2e-5 * scale,
            "{what}[{i}] = {g}, want {w}"
        );
    }
}

/// Whether every value has the same bits.
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The instruction sets this CPU can run the kernels on, widest first.
pub fn isas() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|i| i.available())
        .collect()
}

/// The three passes of one kernel family on one instruction set: `passes(isa, x, w, dy, y,
/// dx, dw)` writes y and adds the gradients into dx and dw.
pub type Passes<'a> =
    &'a mut dyn FnMut(Isa, &[f32], &[f32], &[f32], &mut [f32], &mut [f32], &mut [f32]);

/// Checks `passes` on random non-zero data of shape `s` against the f64 sums (y poisoned with
/// NaN first, the gradients added to non-zero values) on every instruction set this CPU has,
/// and that they all give the same bits (each lane sums the same terms in the same order with
/// the same fused multiply-adds). False, after a SKIPPED line naming `test`, where the CPU has
/// none.
pub fn check_on_every_isa(test: &str, s: &ConvShape, passes: Passes) -> bool {
    let isas = isas();
    if isas.is_empty() {
        eprintln!("SKIPPED {test}: this CPU has no AVX2 or AVX-512");
        return false;
    }
    let mut rng = Rng::new(s.x_len() as u64 + 7 * s.y_len() as u64);
    let x = rng.vec(s.x_len(), |r| r.normal());
    let w = rng.vec(s.w_len(), |r| r.normal());
    let dy = rng.vec(s.y_len(), |r| r.normal());
    let dx0 = rng.vec(s.x_len(), |r| r.normal());
    let dw0 = rng.vec(s.w_len(), |r| r.normal());
    let (y_want, dx_want, dw_want) = Naive {
        s,
        x: &x,
        w: &w,
        dy: &dy,
    }
    .passes();
    let mut first: Option<[Vec<f32>; 3]> = None;
    for &isa in &isas {
        let what = format!("{isa:?} {s:?}");
        let (mut y, mut dx, mut dw) = (vec![f32::NAN; s.y_len()], dx0.clone(), dw0.clone());
        passes(isa, &x, &w, &dy, &mut y, &mut dx, &mut dw);
        assert_close(&format!("{what} y"), &y, &vec![0.0; y.len()], &y_want);
        assert_close(&format!("{what} dx"), &dx, &dx0, &dx_want);
        assert_close(&format!("{what} dw"), &dw, &dw0, &dw_want);
        let got = [y, dx, dw];
        match &first {
            None => first = Some(got),
            Some(want) => {
                for (g, w) in got.iter().zip(want) {
                    assert!(same_bits(g, w), "{what}: not the bits of {:?}", isas[0]);
                }
            }
        }
    }
    true
}
