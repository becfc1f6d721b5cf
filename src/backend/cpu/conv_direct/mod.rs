//! Stride-1 k×k convolutions computed directly from a zero-padded copy: no column matrix, no
//! GEMM packing. AVX-512 or AVX2 with FMA ([`Isa`]); elsewhere `conv.rs` keeps im2col + GEMM.
//!
//! x: [B, H, W, Cin], w: [Cout, k, k, Cin], y: [B, Ho, Wo, Cout] (as in `conv.rs`).
//!
//! Why: im2col copies every input value k² times (for W30's 30-channel branch in runs of 120
//! bytes, one `memcpy` each) and the GEMM then packs the copy again; at 75×75×30 the copies and
//! the GEMM's thread hand-offs took as long as the multiply-adds. Here each output pixel reads
//! the padded input in place.
//!
//! Layout. `xp` [nb, Hp, Wp, Cin] is x with a zero border (Hp = H + 2·pad, Wp = W + 2·pad), so
//! output (oy, ox) reads xp[oy + ky, ox + kx] for every tap without bounds checks, and for a
//! fixed ky its k taps are the k·Cin consecutive floats from xp[oy + ky, ox]. The weights are
//! repacked once per call into tiles of up to 64 output channels, `[ky][kx][ci][lanes]`, zero
//! beyond Cout, so one tap and input channel is one to four 16-wide vectors.
//!
//! Kernel. A block of up to 24 / V (at most 12) consecutive output pixels of one row × one
//! tile of V ≤ 4 vectors keeps up to 24 accumulators of the 32 registers; per input value: V
//! weight loads, one broadcast per pixel, one fused multiply-add per accumulator. The sums run
//! over (ky, kx, ci) in that order, in f32 with FMA. In AVX2 (16 registers of 8 lanes) a
//! vector is two registers, tiles are one vector and blocks 6 pixels (12 registers of
//! accumulators); every lane's sum is the same, so both give the same bits.
//!
//! The data gradient of a stride-1 convolution is the same convolution of dy padded by
//! k − 1 − pad, with the kernel turned 180° and Cin, Cout swapped: [`backward_data`] packs the
//! weights that way and runs the same kernel, adding into dx. The weight gradient
//! ([`backward_weights`]) swaps the roles: register blocks of up to 24 / V (at most 12) input
//! channels × the tile's V vectors of dy, summed over pixels.
//!
//! Which shapes run here is measured, not assumed: see [`suits`] and [`suits_backward`].

use rayon::prelude::*;

use super::elementwise::BiasAct;
pub use super::simd::Isa;
use crate::backend::ConvShape;

/// Rows of an AVX-512 register block of four vectors (24 accumulators; thinner tiles take up
/// to 2·P, see [`Isa::block_rows`]): output pixels forward, input channels in the weight
/// gradient.
const P: usize = 6;
/// Lanes of one vector of a tile (one AVX-512 register, two AVX2 ones).
const L: usize = 16;
/// Most vectors of output channels per tile, on any instruction set.
const MAX_V: usize = 4;

/// The tiles and register blocks of this file's kernels on each instruction set: AVX-512 has
/// 32 registers, one per vector of a tile; AVX2 16, two per vector.
impl Isa {
    /// Most vectors per tile. AVX2: one, in blocks of 6 pixels (12 accumulator registers, 2
    /// of weights, 1 broadcast). Two vectors in blocks of 3 pixels need 17 registers: the
    /// compiler kept some accumulators on the stack, and that kernel ran slower than im2col +
    /// GEMM (75×75×30 forward at batch 4: 5.4 ms against 4.1 ms on an AMD EPYC, 2 threads);
    /// in blocks of 2 pixels it measured the same as one vector in blocks of 6.
    fn max_v(self) -> usize {
        match self {
            Isa::Avx512 => MAX_V,
            Isa::Avx2 => 1,
        }
    }

    /// Most rows of a register block of `v` vectors (output pixels forward, input channels in
    /// the weight gradient). AVX-512: rows·v accumulators, at most 24 of the 32 registers, at
    /// most 12 rows; thin tiles take taller blocks: at 30 channels (two vectors) 12 rows
    /// instead of 6 load the shared vectors half as often per multiply-add and halve the
    /// per-block work (criterion, 75×75×30 at batch 4: forward 1.41 → 1.27 ms, backward 3.04 →
    /// 2.77 ms). AVX2: 2·rows accumulator registers of its one vector, 12 of the 16.
    fn block_rows(self, v: usize) -> usize {
        match self {
            Isa::Avx512 => (MAX_V * P / v).min(2 * P),
            Isa::Avx2 => P,
        }
    }

    /// The output channels split into tiles of at most `max_v` vectors: (first channel,
    /// vectors).
    fn tiles(self, cout: usize) -> Vec<(usize, usize)> {
        let (vectors, most) = (cout.div_ceil(L), self.max_v());
        (0..vectors.div_ceil(most))
            .map(|t| (t * most * L, most.min(vectors - t * most)))
            .collect()
    }
}

/// Bytes of one tile's weights a pass over a row's pixel blocks may read: with the input rows
/// and the output row they stay in L1 (48 KiB on the Xeon measured). See [`Direct::run`].
const PASS_WEIGHT_BYTES: usize = 36 * 1024;
/// Sizes that cut the work into pieces: fixed by the shape alone (never by the thread count),
/// so results do not depend on the machine's cores.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most floats of the padded copy per chunk of images.
    pub pad_floats: usize,
    /// Floats of one band of the weight gradient: its rows of the padded input and of dy
    /// (within L2, as every (tap, channel) pass of the band reads them again).
    pub band_floats: usize,
    /// Most floats of the weight gradient's per-band partials computed at once.
    pub partial_floats: usize,
}

/// The limits the backend uses: a 64 MB padded copy, 1 MB bands, 4 MB of partials.
pub const LIMITS: Limits = Limits {
    pad_floats: 16 << 20,
    band_floats: 256 << 10,
    partial_floats: 1 << 20,
};

/// The instruction set the forward of `s` runs on here, if it runs here on this machine:
/// stride 1, a real kernel, rows of at least two full AVX-512 register blocks, AVX-512 or
/// AVX2. Narrower rows spend much of their time in partial blocks and per-row overhead: the
/// relation convolutions (5×5 and 3×3 maps, one task per 3-pixel row) took 96 → 167 ms of the
/// W30 step's `bwd.pr_heads` here (AVX-512), and the 10×10×240 forward at batch 4 ran 18%
/// slower than im2col + GEMM; 19×19×120 ran 12% faster. (On AVX2 the 10×10×240 forward
/// measured no better either.)
pub fn suits(s: &ConvShape) -> Option<Isa> {
    (s.stride == 1 && s.k > 1 && s.pad < s.k && s.wo >= 2 * P)
        .then(Isa::detect)
        .flatten()
}

/// Most channels on the narrower side (in or out) for the backward to run here. Measured with
/// `cargo bench --bench cpu_ops` (2 threads, data + weight gradient against im2col + GEMM):
/// 75×75×30 at batch 1 −28%, 38×38×60 at batch 4 −11%, 75×75 from 256 to 30 channels −35%
/// (im2col's GEMM over 30 channels is thin and its column matrix of 2304 values per pixel
/// costs more to write and fold back than the products), but 19×19×120 +10% and 10×10×240
/// +40%: with many channels on both sides, im2col copies long runs cheaply and the GEMM's
/// packed operands use the caches better than these kernels.
const MAX_BACKWARD_CHANNELS: usize = 64;

/// Whether the backward of `s` runs here: as [`suits`], with at most
/// `MAX_BACKWARD_CHANNELS` channels on one side.
pub fn suits_backward(s: &ConvShape) -> Option<Isa> {
    suits(s).filter(|_| s.cin.min(s.cout) <= MAX_BACKWARD_CHANNELS)
}

/// One stride-1 convolution as the kernel sees it: `y (+)= conv(xp, taps)` where xp is
/// already padded.
struct Direct<'a> {
    isa: Isa,
    /// Images in the chunk.
    nb: usize,
    /// Padded input [nb, hp, wp, cin].
    xp: &'a [f32],
    hp: usize,
    wp: usize,
    cin: usize,
    k: usize,
    /// Output [nb, ho, wo, cout].
    ho: usize,
    wo: usize,
    cout: usize,
    /// Packed weights: per tile, [ky][kx][ci][v·16].
    packed: &'a [f32],
    accumulate: bool,
    /// The epilogue applied to each finished output row, and where the chunk's output
    /// starts in the whole output (for the residual).
    act: Option<&'a BiasAct<'a>>,
    y_at: usize,
}

/// Packed weights for `channels` output channels of `taps` taps each, zero beyond the last
/// channel: `fill(c0, valid, lanes, tile)` writes one tile ([taps][lanes], channels
/// c0 .. c0 + valid), the tiles in parallel.
fn pack(
    isa: Isa,
    channels: usize,
    taps: usize,
    fill: impl Fn(usize, usize, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let tiles = isa.tiles(channels);
    let mut packed = vec![0f32; packed_len(&tiles, taps)];
    tile_parts(&mut packed, &tiles, taps)
        .into_par_iter()
        .for_each(|(c0, v, part)| fill(c0, (channels - c0).min(v * L), v * L, part));
    packed
}

/// Floats of a packed buffer of `taps` rows per tile.
fn packed_len(tiles: &[(usize, usize)], taps: usize) -> usize {
    tiles.iter().map(|&(_, v)| v * L * taps).sum()
}

/// A packed buffer cut into its tiles' parts ([taps][v·16] each): (first channel, vectors,
/// part).
fn tile_parts<'a>(
    buf: &'a mut [f32],
    tiles: &[(usize, usize)],
    taps: usize,
) -> Vec<(usize, usize, &'a mut [f32])> {
    let mut rest = buf;
    let mut parts = Vec::new();
    for &(c0, v) in tiles {
        let (part, tail) = rest.split_at_mut(v * L * taps);
        parts.push((c0, v, part));
        rest = tail;
    }
    parts
}

/// The forward's weights: lane l of tap t = (ky, kx, ci) is w[c0 + l, t]. A transpose,
/// in runs of 64 taps so the tile rows being written stay in L1.
fn pack_forward(isa: Isa, w: &[f32], cout: usize, taps: usize) -> Vec<f32> {
    pack(isa, cout, taps, |c0, valid, lanes, tile| {
        for t0 in (0..taps).step_by(64) {
            let t1 = (t0 + 64).min(taps);
            for l in 0..valid {
                let src = &w[(c0 + l) * taps..][t0..t1];
                for (t, v) in (t0..t1).zip(src) {
                    tile[t * lanes + l] = *v;
                }
            }
        }
    })
}

/// The data gradient's weights: input channel ci's tap (ky, kx, co) is
/// w[co, k−1−ky, k−1−kx, ci], so a tile row is a run of w.
fn pack_rotated(isa: Isa, w: &[f32], cout: usize, k: usize, cin: usize) -> Vec<f32> {
    pack(isa, cin, k * k * cout, |c0, valid, lanes, tile| {
        for (t, row) in tile.chunks_exact_mut(lanes).enumerate() {
            let (ky, kx, co) = (t / (k * cout), t / cout % k, t % cout);
            let src = ((co * k + (k - 1 - ky)) * k + (k - 1 - kx)) * cin + c0;
            row[..valid].copy_from_slice(&w[src..src + valid]);
        }
    })
}

/// `xp` [nb, h + 2·pad, w + 2·pad, c] = `x` [nb, h, w, c] with a zero border of `pad`.
fn pad_into(x: &[f32], nb: usize, h: usize, w: usize, c: usize, pad: usize, xp: &mut [f32]) {
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    xp[..nb * hp * wp * c]
        .par_chunks_mut(wp * c)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, py) = (row / hp, row % hp);
            if py < pad || py >= pad + h {
                out.fill(0.0);
                return;
            }
            let src = &x[((b * h) + py - pad) * w * c..][..w * c];
            out[..pad * c].fill(0.0);
            out[pad * c..(pad + w) * c].copy_from_slice(src);
            out[(pad + w) * c..].fill(0.0);
        });
}

impl Direct<'_> {
    /// One task per output row (W30's smallest maps still give 40 rows at batch 4); a task
    /// runs every channel tile over the row's pixel blocks, in passes over groups of taps
    /// whose weights fit in L1 beside the rows. With all of a 120-channel map's taps in one
    /// pass, each pixel block read the tile's 276 KB of weights from L2; in passes of one tap,
    /// a row's blocks share one pass's 30 KB (criterion side by side, 19×19×120 and 38×38×60
    /// at batch 4: 9% and 6% faster forward).
    fn run(&self, y: &mut [f32]) {
        let tiles = self.isa.tiles(self.cout);
        let taps = self.k * self.k * self.cin;
        let row_len = self.wo * self.cout;
        y[..self.nb * self.ho * row_len]
            .par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(row, y_row)| {
                let (b, oy) = (row / self.ho, row % self.ho);
                let x_row = &self.xp[(b * self.hp + oy) * self.wp * self.cin..];
                let mut w_off = 0;
                for &(co0, v) in &tiles {
                    let w = &self.packed[w_off..w_off + v * L * taps];
                    w_off += v * L * taps;
                    // Taps per pass: all of them where the tile's weights fit beside the
                    // rows, else as many as do (at least one); the passes add into y.
                    let kk = self.k * self.k;
                    let per_pass = (PASS_WEIGHT_BYTES / (self.cin * v * L * 4)).clamp(1, kk);
                    for t0 in (0..kk).step_by(per_pass) {
                        for (ox0, ox1) in even_blocks(self.wo, self.isa.block_rows(v)) {
                            let block = Block {
                                x: &x_row[ox0 * self.cin..],
                                x_rs: self.wp * self.cin,
                                cin: self.cin,
                                k: self.k,
                                taps: t0..(t0 + per_pass).min(kk),
                                w,
                                cols: (self.cout - co0).min(v * L),
                                pixels: ox1 - ox0,
                                y_ps: self.cout,
                                accumulate: self.accumulate || t0 > 0,
                            };
                            block.run(self.isa, v, &mut y_row[ox0 * self.cout + co0..]);
                        }
                    }
                }
                // The row is final and still in L1.
                if let Some(a) = self.act {
                    a.apply(y_row, self.y_at + row * row_len);
                }
            });
    }
}

/// `0..len` cut into the fewest blocks of at most `most`, as even as possible (19 pixels by 6:
/// 4 + 5 + 5 + 5, not 6 + 6 + 6 + 1, whose 1-row block would run at a fraction of the rate):
/// the blocks' (start, end).
fn even_blocks(len: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = len.div_ceil(most);
    (0..count).map(move |i| (i * len / count, (i + 1) * len / count))
}

/// `avx512::$kernel::<V, N>($block, $out)` (or `avx2::…`) for the run-time instruction set,
/// v ≤ `isa.max_v()` and n ≤ `isa.block_rows(v)`: one instance per pair, so the kernels'
/// accumulators are fixed-size arrays that stay in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! register_block {
    ($isa:expr, $kernel:ident, $block:expr, $v:expr, $n:expr, $out:expr) => {
        match $isa {
            Isa::Avx512 => register_block!(@v avx512, $kernel, $block, $v, $n, $out;
                1 => [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
                2 => [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
                3 => [1, 2, 3, 4, 5, 6, 7, 8],
                4 => [1, 2, 3, 4, 5, 6]),
            Isa::Avx2 => register_block!(@v avx2, $kernel, $block, $v, $n, $out;
                1 => [1, 2, 3, 4, 5, 6]),
        }
    };
    (@v $module:ident, $kernel:ident, $block:expr, $v:expr, $n:expr, $out:expr;
        $($vv:literal => [$($nn:literal),*]),*) => {
        match ($v, $n) {
            $($(($vv, $nn) => $module::$kernel::<$vv, $nn>($block, $out),)*)*
            _ => unreachable!("a register block has 1 to max_v vectors and at most block_rows(v) rows"),
        }
    };
}

/// One register block: `pixels` ≤ `isa.block_rows(v)` consecutive outputs of a row × one
/// channel tile of `v` vectors.
struct Block<'a> {
    /// Padded input at (row oy, pixel ox0), channel 0; rows `x_rs` floats apart.
    x: &'a [f32],
    x_rs: usize,
    cin: usize,
    k: usize,
    /// The taps (ky·k + kx) this pass adds.
    taps: std::ops::Range<usize>,
    /// The tile's packed weights, [ky][kx][ci][v·16].
    w: &'a [f32],
    /// Valid channels of the tile (≤ v·16).
    cols: usize,
    pixels: usize,
    /// Floats from one output pixel to the next.
    y_ps: usize,
    /// `y +=` instead of `y =`.
    accumulate: bool,
}

impl Block<'_> {
    fn run(&self, isa: Isa, v: usize, y: &mut [f32]) {
        // Every read and write below stays inside these slices.
        let kc = self.k * self.cin;
        assert!((1..=isa.max_v()).contains(&v) && (1..=isa.block_rows(v)).contains(&self.pixels));
        assert!(self.taps.end <= self.k * self.k);
        assert!((self.k - 1) * self.x_rs + (self.pixels - 1) * self.cin + kc <= self.x.len());
        assert!(self.w.len() == self.k * kc * v * L && self.cols <= v * L);
        assert!((self.pixels - 1) * self.y_ps + self.cols <= y.len());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has `isa` (asserted where the call began); the bounds are asserted
        // above.
        unsafe {
            register_block!(isa, block, self, v, self.pixels, y)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("conv_direct runs on x86_64 only");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Images per chunk so the padded copy stays within `lim.pad_floats`.
fn images_per_chunk(lim: &Limits, b: usize, hp: usize, wp: usize, c: usize) -> usize {
    (lim.pad_floats / (hp * wp * c).max(1)).clamp(1, b)
}

/// Floats of workspace the padded copy of `s`'s input (forward) or of its dy (data
/// gradient) needs.
pub fn workspace_len(lim: &Limits, s: &ConvShape) -> usize {
    let fwd = padded_len(lim, s.b, s.h, s.w, s.cin, s.pad);
    let bwd = padded_len(lim, s.b, s.ho, s.wo, s.cout, s.k - 1 - s.pad);
    fwd.max(bwd)
}

fn padded_len(lim: &Limits, b: usize, h: usize, w: usize, c: usize, pad: usize) -> usize {
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    images_per_chunk(lim, b, hp, wp, c) * hp * wp * c
}

/// `y (+)= conv(x, taps)` over a batch, a chunk of images at a time, for a stride-1
/// convolution from an [h, w, cin] map padded by `pad` to a [ho, wo, cout] one.
#[allow(clippy::too_many_arguments)]
fn convolve(
    isa: Isa,
    lim: &Limits,
    (b, h, w, cin, pad): (usize, usize, usize, usize, usize),
    (k, ho, wo, cout): (usize, usize, usize, usize),
    x: &[f32],
    packed: &[f32],
    accumulate: bool,
    act: Option<&BiasAct>,
    y: &mut [f32],
    work: &mut [f32],
) {
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let chunk = images_per_chunk(lim, b, hp, wp, cin);
    let (xi, yi) = (h * w * cin, ho * wo * cout);
    for b0 in (0..b).step_by(chunk) {
        let nb = chunk.min(b - b0);
        pad_into(&x[b0 * xi..], nb, h, w, cin, pad, work);
        Direct {
            isa,
            nb,
            xp: &work[..nb * hp * wp * cin],
            hp,
            wp,
            cin,
            k,
            ho,
            wo,
            cout,
            packed,
            accumulate,
            act,
            y_at: b0 * yi,
        }
        .run(&mut y[b0 * yi..(b0 + nb) * yi]);
    }
}

/// `y = conv(x, w)`, then the epilogue `act` row by row, for a shape that [`suits`] this
/// path, on `isa` (which this CPU must have); `work` holds at least [`workspace_len`] floats.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    isa: Isa,
    lim: &Limits,
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    act: Option<&BiasAct>,
    y: &mut [f32],
    work: &mut [f32],
) {
    assert!(isa.available(), "this CPU has no {isa:?}");
    let packed = pack_forward(isa, w, s.cout, s.col_k());
    convolve(
        isa,
        lim,
        (s.b, s.h, s.w, s.cin, s.pad),
        (s.k, s.ho, s.wo, s.cout),
        x,
        &packed,
        false,
        act,
        y,
        work,
    );
}

/// `dx += ∂L/∂x` given dy: the convolution of dy padded by k − 1 − pad with the kernel turned
/// 180° and its channels swapped (`w'[ci, ky, kx, co] = w[co, k−1−ky, k−1−kx, ci]`), on
/// `isa`.
pub fn backward_data(
    isa: Isa,
    lim: &Limits,
    s: &ConvShape,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    work: &mut [f32],
) {
    assert!(isa.available(), "this CPU has no {isa:?}");
    let packed = pack_rotated(isa, w, s.cout, s.k, s.cin);
    convolve(
        isa,
        lim,
        (s.b, s.ho, s.wo, s.cout, s.k - 1 - s.pad),
        (s.k, s.h, s.w, s.cin),
        dy,
        &packed,
        true,
        None,
        dx,
        work,
    );
}

/// `dw += ∂L/∂w` given dy, without a column matrix:
/// `dW[co, ky, kx, ci] = Σ_(b, oy, ox) dy[b, oy, ox, co] · xp[b, oy + ky, ox + kx, ci]`.
///
/// The output rows are cut into bands of a size set by the shape alone; per band, every
/// (channel tile, tap) is a task computing its rows of a partial gradient in the packed
/// layout of [`pack_forward`] (register blocks of up to 24 / V input channels × the tile's
/// vectors, summed over the band's pixels in order, a row at a time). The partials are added
/// into dw band after band, so the result does not depend on the thread count.
///
/// The bands run side by side, up to `lim.partial_floats` of partials at a time: one band
/// alone has only k² tasks per tile, and 9 tasks on 2 threads left one idle for a ninth of
/// the time.
pub fn backward_weights(
    isa: Isa,
    lim: &Limits,
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    work: &mut [f32],
) {
    let (hp, wp) = (s.h + 2 * s.pad, s.w + 2 * s.pad);
    let chunk = images_per_chunk(lim, s.b, hp, wp, s.cin);
    let (xi, yi) = (s.h * s.w * s.cin, s.ho * s.wo * s.cout);
    let taps = s.col_k();
    assert!(isa.available(), "this CPU has no {isa:?}");
    let band_rows = (lim.band_floats / (wp * s.cin + s.wo * s.cout)).max(1);
    let tiles = isa.tiles(s.cout);
    let band_len = packed_len(&tiles, taps);
    let most_bands = (chunk * s.ho).div_ceil(band_rows);
    let bands_at_once = (lim.partial_floats / band_len).clamp(1, most_bands);
    let mut partials = vec![0f32; band_len * bands_at_once];
    for b0 in (0..s.b).step_by(chunk) {
        let nb = chunk.min(s.b - b0);
        let xp = &mut work[..nb * hp * wp * s.cin];
        pad_into(&x[b0 * xi..], nb, s.h, s.w, s.cin, s.pad, xp);
        let xp = &*xp;
        let dy = &dy[b0 * yi..(b0 + nb) * yi];
        // As many bands as `band_rows` asks for, of even sizes (75 rows = 37 + 38, not
        // 57 + 18), so that bands running side by side take as long as each other.
        let rows = nb * s.ho;
        let bands: Vec<_> = even_blocks(rows, band_rows)
            .map(|(r0, r1)| r0..r1)
            .collect();
        for group in bands.chunks(bands_at_once) {
            // One task per (band, tile, tap): its rows of the band's partial.
            let mut tasks = Vec::new();
            for (rows, partial) in group.iter().zip(partials.chunks_mut(band_len)) {
                partial.fill(0.0);
                for (c0, v, tile) in tile_parts(partial, &tiles, taps) {
                    let valid = (s.cout - c0).min(v * L);
                    for (tap, out) in tile.chunks_mut(s.cin * v * L).enumerate() {
                        tasks.push((rows.clone(), c0, valid, v, tap, out));
                    }
                }
            }
            tasks
                .into_par_iter()
                .for_each(|(rows, c0, valid, v, tap, out)| {
                    // Row by row, every input-channel block in turn: one output row of dy and
                    // its input rows stay in L1 while the blocks sweep them (a block summing
                    // the whole band at once streamed it from L2 once per block). The sums keep
                    // their order: pixels, then rows.
                    for row in rows {
                        // 30 input channels of two vectors: 10 + 10 + 10.
                        for (ci0, ci1) in even_blocks(s.cin, isa.block_rows(v)) {
                            let block = WgradBlock {
                                xp,
                                dy,
                                s,
                                hp,
                                wp,
                                row,
                                tap: (tap / s.k, tap % s.k),
                                ci0,
                                nci: ci1 - ci0,
                                c0,
                                cols: valid,
                            };
                            block.run(isa, v, &mut out[ci0 * v * L..]);
                        }
                    }
                });
            for partial in partials.chunks(band_len).take(group.len()) {
                add_unpacked(&tiles, partial, s.cout, taps, dw);
            }
        }
    }
}

/// `dw[co, t] += partial` at tile row t, lane co − c0 (the inverse of [`pack_forward`]'s
/// layout for `tiles`).
fn add_unpacked(
    tiles: &[(usize, usize)],
    partial: &[f32],
    cout: usize,
    taps: usize,
    dw: &mut [f32],
) {
    let mut off = 0;
    for &(c0, v) in tiles {
        let lanes = v * L;
        let tile = &partial[off..off + lanes * taps];
        off += lanes * taps;
        let valid = (cout - c0).min(lanes);
        dw[c0 * taps..(c0 + valid) * taps]
            .par_chunks_mut(taps)
            .enumerate()
            .for_each(|(l, row)| {
                for (t, d) in row.iter_mut().enumerate() {
                    *d += tile[t * lanes + l];
                }
            });
    }
}

/// One register block of the weight gradient: input channels ci0 .. ci0 + nci of tap
/// (ky, kx) × one tile of output channels, summed over one output row `row` (b·Ho + oy).
struct WgradBlock<'a> {
    xp: &'a [f32],
    dy: &'a [f32],
    s: &'a ConvShape,
    hp: usize,
    wp: usize,
    row: usize,
    tap: (usize, usize),
    ci0: usize,
    nci: usize,
    /// First output channel of the tile, and how many of its lanes are channels.
    c0: usize,
    cols: usize,
}

impl WgradBlock<'_> {
    /// Adds into `out` rows 0 .. nci, `v`·16 lanes each.
    fn run(&self, isa: Isa, v: usize, out: &mut [f32]) {
        let s = self.s;
        let (ky, kx) = self.tap;
        assert!((1..=isa.max_v()).contains(&v) && (1..=isa.block_rows(v)).contains(&self.nci));
        assert!(self.cols <= v * L && self.c0 + self.cols <= s.cout);
        assert!(out.len() >= self.nci * v * L);
        assert!(self.ci0 + self.nci <= s.cin && ky < s.k && kx < s.k);
        // The row's last pixel, in x and in dy, is inside the slices.
        let (img, oy) = (self.row / s.ho, self.row % s.ho);
        assert!(
            ((img * self.hp + oy + ky) * self.wp + s.wo - 1 + kx) * s.cin + s.cin <= self.xp.len()
        );
        assert!((self.row * s.wo + s.wo - 1) * s.cout + self.c0 + self.cols <= self.dy.len());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has `isa` (asserted where the call began); the bounds are asserted
        // above.
        unsafe {
            register_block!(isa, wgrad, self, v, self.nci, out)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("conv_direct runs on x86_64 only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv_naive::{check_on_every_isa, same_bits};
    use crate::rng::Rng;

    /// Forward, data gradient and weight gradient against the f64 sums, over shapes that
    /// reach every part: several channel tiles (cout 70, cin 70 in the data gradient), the
    /// last tile partly filled, pixel blocks of every width (rows of 1, 5, 7, 13, 17 and 23
    /// pixels: blocks of up to 6 pixels for wide tiles, up to 12 for thin ones), pad
    /// 0, 1 and 2, k = 3 and 5, image chunks and weight-gradient bands that split the batch
    /// (small limits), and bands that end inside an image. The gradients are added to
    /// non-zero starting values. On every instruction set this CPU has; where it has both,
    /// they give the same bits (each lane sums the same terms in the same order).
    #[test]
    fn direct_passes_match_the_plain_sums() {
        let cases = [
            (ConvShape::new(2, 7, 13, 3, 5, 3, 1, 1), LIMITS),
            (ConvShape::new(3, 5, 7, 70, 20, 3, 1, 1), LIMITS),
            (ConvShape::new(1, 6, 5, 9, 70, 3, 1, 0), LIMITS),
            (ConvShape::new(2, 9, 1, 4, 33, 3, 1, 1), LIMITS),
            (ConvShape::new(3, 8, 8, 6, 17, 5, 1, 2), LIMITS),
            // Wide blocks of thin tiles: 23 = 11 + 12 pixels of two vectors forward (one in
            // the data gradient), 17 = 8 + 9 of one vector forward (two in the data gradient).
            (ConvShape::new(1, 4, 23, 5, 30, 3, 1, 1), LIMITS),
            (ConvShape::new(2, 3, 17, 30, 9, 3, 1, 1), LIMITS),
            (
                ConvShape::new(3, 6, 9, 7, 18, 3, 1, 1),
                Limits {
                    pad_floats: 500,
                    band_floats: 300,
                    // Two bands' partials at a time: several groups per chunk.
                    partial_floats: 5000,
                },
            ),
        ];
        for (s, lim) in cases {
            let mut work = vec![f32::NAN; workspace_len(&lim, &s)];
            let mut passes = |isa,
                              x: &[f32],
                              w: &[f32],
                              dy: &[f32],
                              y: &mut [f32],
                              dx: &mut [f32],
                              dw: &mut [f32]| {
                forward(isa, &lim, &s, x, w, None, y, &mut work);
                backward_data(isa, &lim, &s, w, dy, dx, &mut work);
                backward_weights(isa, &lim, &s, x, dy, dw, &mut work);
            };
            if !check_on_every_isa("direct_passes_match_the_plain_sums", &s, &mut passes) {
                return;
            }
        }
    }

    /// The work is cut by the shape alone: one thread and the default pool give the same bits.
    #[test]
    fn direct_weight_gradient_is_deterministic() {
        let Some(isa) = Isa::detect() else {
            eprintln!(
                "SKIPPED direct_weight_gradient_is_deterministic: this CPU has no AVX2 or AVX-512"
            );
            return;
        };
        let s = ConvShape::new(4, 30, 30, 16, 24, 3, 1, 1);
        let mut rng = Rng::new(3);
        let x = rng.vec(s.x_len(), |r| r.normal());
        let dy = rng.vec(s.y_len(), |r| r.normal());
        let lim = Limits {
            pad_floats: LIMITS.pad_floats,
            band_floats: 4096,
            partial_floats: LIMITS.partial_floats,
        };
        let mut work = vec![0.0; workspace_len(&lim, &s)];
        let mut run = |lim: &Limits| {
            let mut dw = vec![0.0; s.w_len()];
            backward_weights(isa, lim, &s, &x, &dy, &mut dw, &mut work);
            dw
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        // One band's partials at a time: the bands one after the other.
        let one_band = Limits {
            partial_floats: 1,
            ..lim
        };
        let runs = [one.install(|| run(&lim)), run(&lim), run(&one_band)];
        for other in &runs[1..] {
            assert!(same_bits(&runs[0], other));
        }
    }
}
