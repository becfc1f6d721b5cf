//! Procedural "natural-looking" scenes: the built-in dataset's real images, made from a seed
//! with no files. A scene is layered value noise coloured through a random palette, a smooth
//! gradient, a few soft blobs, a face-like central ellipse with its own texture and a few darker
//! features (eyes, mouth), and Gaussian sensor noise.
//!
//! Coordinates are relative to the image side, so one seed gives the same scene (up to
//! sampling) at every size. Cost is a few passes over the pixels: well under a millisecond at
//! 64×64 and a few milliseconds at 299×299.

use crate::rng::Rng;

/// A random RGB colour with moderate saturation.
fn colour(rng: &mut Rng) -> [f32; 3] {
    let base = rng.range(0.15, 0.85) as f32;
    let spread = rng.range(0.05, 0.35) as f32;
    let mut c = [0f32; 3];
    for v in c.iter_mut() {
        *v = (base + spread * (rng.range(-1.0, 1.0) as f32)).clamp(0.0, 1.0);
    }
    c
}

/// A skin-like colour (warm, varied in tone), so the central region looks like a face crop.
fn skin(rng: &mut Rng) -> [f32; 3] {
    let l = rng.range(0.35, 0.9) as f32;
    let warm = rng.range(0.05, 0.2) as f32;
    [
        (l + warm).min(1.0),
        l * rng.range(0.78, 0.92) as f32,
        l * rng.range(0.6, 0.82) as f32,
    ]
}

fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// Fractal value noise over `[0,1)²`, sampled on a `size × size` grid, roughly in [0, 1].
/// `cells` is the lattice size of the first octave; each further octave doubles it and halves
/// the amplitude.
pub fn fractal_noise(rng: &mut Rng, size: usize, cells: usize, octaves: usize) -> Vec<f32> {
    let mut out = vec![0f32; size * size];
    let mut amp = 1.0f32;
    let mut total = 0.0f32;
    let mut g = cells.max(1);
    // Per-axis sample positions are shared by rows and columns: precompute them once per octave.
    let mut idx = vec![0usize; size];
    let mut frac = vec![0f32; size];
    for _ in 0..octaves {
        let n = g + 1;
        let lattice: Vec<f32> = (0..n * n).map(|_| rng.uniform() as f32).collect();
        for (i, (ix, fx)) in idx.iter_mut().zip(frac.iter_mut()).enumerate() {
            let x = (i as f32 + 0.5) / size as f32 * g as f32;
            let x0 = (x.floor() as usize).min(g - 1);
            *ix = x0;
            *fx = smooth(x - x0 as f32);
        }
        for y in 0..size {
            let (y0, fy) = (idx[y], frac[y]);
            let r0 = &lattice[y0 * n..y0 * n + n];
            let r1 = &lattice[(y0 + 1) * n..(y0 + 1) * n + n];
            let row = &mut out[y * size..(y + 1) * size];
            for x in 0..size {
                let (x0, fx) = (idx[x], frac[x]);
                let a = r0[x0] + (r0[x0 + 1] - r0[x0]) * fx;
                let b = r1[x0] + (r1[x0 + 1] - r1[x0]) * fx;
                row[x] += amp * (a + (b - a) * fy);
            }
        }
        total += amp;
        amp *= 0.5;
        g *= 2;
    }
    let inv = 1.0 / total;
    out.iter_mut().for_each(|v| *v *= inv);
    out
}

/// Soft ellipse coverage in [0, 1] at pixel centre `(x, y)` (relative coordinates).
struct Ellipse {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    cos: f32,
    sin: f32,
    /// Width of the soft edge, relative to the radius.
    soft: f32,
}

impl Ellipse {
    fn random(rng: &mut Rng, cx: f32, cy: f32, r: (f64, f64)) -> Ellipse {
        let a = rng.range(0.0, std::f64::consts::PI) as f32;
        Ellipse {
            cx,
            cy,
            rx: rng.range(r.0, r.1) as f32,
            ry: rng.range(r.0, r.1) as f32,
            cos: a.cos(),
            sin: a.sin(),
            soft: rng.range(0.1, 0.5) as f32,
        }
    }
    fn coverage(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.cos + dy * self.sin) / self.rx;
        let v = (-dx * self.sin + dy * self.cos) / self.ry;
        let d = (u * u + v * v).sqrt();
        (((1.0 - d) / self.soft) + 0.5).clamp(0.0, 1.0)
    }
}

fn mix(dst: &mut [f32], c: [f32; 3], a: f32) {
    for k in 0..3 {
        dst[k] += (c[k] - dst[k]) * a;
    }
}

/// One procedural scene: RGB `[size, size, 3]` in [0, 1], a pure function of the generator's
/// state.
pub fn scene(rng: &mut Rng, size: usize) -> Vec<f32> {
    let np = size * size;
    let inv = 1.0 / size as f32;
    let mut img = vec![0f32; np * 3];

    // Background: a fractal field mapped through a three-colour palette, plus a linear gradient.
    let pal = [colour(rng), colour(rng), colour(rng)];
    let cells = 2 + rng.below(4);
    let field = fractal_noise(rng, size, cells, 4);
    let contrast = rng.range(1.2, 2.5) as f32;
    let gdir = rng.range(0.0, 2.0 * std::f64::consts::PI) as f32;
    let (gx, gy) = (gdir.cos(), gdir.sin());
    let gamp = rng.range(0.0, 0.3) as f32;
    for p in 0..np {
        let t = ((field[p] - 0.5) * contrast + 0.5).clamp(0.0, 1.0);
        let (c0, c1, u) = if t < 0.5 {
            (pal[0], pal[1], t * 2.0)
        } else {
            (pal[1], pal[2], t * 2.0 - 1.0)
        };
        let (x, y) = ((p % size) as f32 * inv - 0.5, (p / size) as f32 * inv - 0.5);
        let g = gamp * (x * gx + y * gy);
        for k in 0..3 {
            img[p * 3 + k] = c0[k] + (c1[k] - c0[k]) * u + g;
        }
    }

    // Soft blobs anywhere in the frame.
    let blobs = 2 + rng.below(4);
    for _ in 0..blobs {
        let (cx, cy) = (rng.range(0.0, 1.0) as f32, rng.range(0.0, 1.0) as f32);
        let e = Ellipse::random(rng, cx, cy, (0.05, 0.3));
        let c = colour(rng);
        let alpha = rng.range(0.3, 0.9) as f32;
        paint(&mut img, size, &e, |_, _| c, alpha);
    }

    // The face-like central region: skin colour modulated by its own finer texture, with
    // darker features at eye and mouth positions.
    let face = Ellipse {
        cx: 0.5 + rng.range(-0.05, 0.05) as f32,
        cy: 0.5 + rng.range(-0.05, 0.05) as f32,
        rx: rng.range(0.22, 0.32) as f32,
        ry: rng.range(0.3, 0.4) as f32,
        cos: 1.0,
        sin: 0.0,
        soft: rng.range(0.05, 0.2) as f32,
    };
    let sk = skin(rng);
    let tcells = 4 + rng.below(5);
    let tex = fractal_noise(rng, size, tcells, 3);
    let tamp = rng.range(0.1, 0.35) as f32;
    paint(
        &mut img,
        size,
        &face,
        |x, y| {
            let px = ((x * size as f32) as usize).min(size - 1);
            let py = ((y * size as f32) as usize).min(size - 1);
            let m = 1.0 + tamp * (tex[py * size + px] - 0.5) * 2.0;
            [sk[0] * m, sk[1] * m, sk[2] * m]
        },
        1.0,
    );
    let dark = rng.range(0.2, 0.6) as f32;
    let feat = [sk[0] * dark, sk[1] * dark, sk[2] * dark];
    let eye_dx = face.rx * rng.range(0.3, 0.45) as f32;
    let eye_y = face.cy - face.ry * rng.range(0.15, 0.3) as f32;
    let eye_r = face.rx * rng.range(0.1, 0.18) as f32;
    for side in [-1.0f32, 1.0] {
        let e = Ellipse {
            cx: face.cx + side * eye_dx,
            cy: eye_y,
            rx: eye_r * 1.4,
            ry: eye_r * 0.8,
            cos: 1.0,
            sin: 0.0,
            soft: 0.4,
        };
        paint(&mut img, size, &e, |_, _| feat, 0.8);
    }
    let mouth = Ellipse {
        cx: face.cx,
        cy: face.cy + face.ry * rng.range(0.4, 0.55) as f32,
        rx: face.rx * rng.range(0.25, 0.45) as f32,
        ry: face.ry * rng.range(0.05, 0.1) as f32,
        cos: 1.0,
        sin: 0.0,
        soft: 0.5,
    };
    paint(&mut img, size, &mouth, |_, _| feat, 0.7);

    // Sensor noise: approximately normal (sum of four 16-bit uniforms, variance-matched), one
    // generator call per value.
    let sigma = rng.range(0.005, 0.03) as f32;
    let scale = sigma * 3.0f32.sqrt() / 65536.0;
    for v in img.iter_mut() {
        let r = rng.next_u64();
        let sum = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
        // Each uniform has variance 1/12 (in units of 65536): four of them 1/3.
        *v += (sum as f32 - 2.0 * 65535.0) * scale;
    }
    img.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    img
}

/// Alpha-blend `colour(x, y)` into `img` with coverage `e` × `alpha`, only over the ellipse's
/// bounding box.
fn paint(
    img: &mut [f32],
    size: usize,
    e: &Ellipse,
    colour: impl Fn(f32, f32) -> [f32; 3],
    alpha: f32,
) {
    let r = e.rx.max(e.ry) * (1.0 + e.soft);
    let lo = |c: f32| (((c - r) * size as f32).floor().max(0.0) as usize).min(size);
    let hi = |c: f32| (((c + r) * size as f32).ceil().max(0.0) as usize).min(size);
    let inv = 1.0 / size as f32;
    for py in lo(e.cy)..hi(e.cy) {
        let y = (py as f32 + 0.5) * inv;
        for px in lo(e.cx)..hi(e.cx) {
            let x = (px as f32 + 0.5) * inv;
            let a = e.coverage(x, y) * alpha;
            if a > 0.0 {
                let p = (py * size + px) * 3;
                mix(&mut img[p..p + 3], colour(x, y), a);
            }
        }
    }
}
