//! Batches made on worker threads ahead of the compute.
//!
//! Determinism: the batch order and every batch's content are a pure function of (samples,
//! `seed`, `epoch`, the options) — never of the worker count or of timing. The epoch's order is
//! a Fisher–Yates shuffle with `Rng::new(seed ^ epoch·φ)`; every sample draws its augmentation
//! and blending from its own `Rng` seeded by (seed, epoch, sample index); batch `b` is made by
//! worker `b mod workers` and delivered in order through that worker's bounded channel
//! (`std::sync::mpsc::sync_channel`), so at most `prefetch` batches per worker wait ready.
//!
//! A sample whose image cannot be read or decoded is skipped (its batch is one shorter), counted
//! and recorded with the reason ([`Loader::skipped`]; the trainer and `prrnet eval` print each
//! file once). A mask file that cannot be read keeps the sample without a localisation label
//! (mask weight 0), recorded the same way.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::dataset::{Sample, Source};
use super::procedural;
use super::sbi::{self, SbiParams};
use crate::error::{Error, Result};
use crate::imageio::{self, DecodeLimits};
use crate::rng::Rng;

/// How the loader makes batches.
#[derive(Clone, Debug)]
pub struct LoaderOptions {
    /// Image side S.
    pub size: usize,
    /// Batch size B.
    pub batch: usize,
    /// Shuffle the order each epoch (else dataset order).
    pub shuffle: bool,
    pub seed: u64,
    pub epoch: u64,
    /// Worker threads; 0 = available cores.
    pub workers: usize,
    /// Ready batches each worker may hold ahead of the consumer (≥ 1).
    pub prefetch: usize,
    /// Self-blending ranges, used for [`Source::SelfBlend`] samples and on-the-fly blending
    /// (`SbiParams::sbi()` when `None`). When `Some`, every sample that is not blended here
    /// also gets JPEG re-compression with the same probability and quality range, so that the
    /// JPEG is no shortcut between real and blended images.
    pub sbi: Option<SbiParams>,
    /// Probability that a real sample is replaced by its self-blended fake (label 1, with the
    /// blend mask) — training from real images only, or mixed with a dataset's fakes.
    pub self_blend_fraction: f32,
    /// Drop the last batch when it would be short.
    pub drop_last: bool,
    /// Random horizontal flip (p ½) of image and mask.
    pub flip: bool,
    /// Give generated samples ([`Source::Procedural`], [`Source::SelfBlend`]) new content every
    /// epoch (their seeds mixed with the epoch): endless data for the built-in training set.
    /// Keep `false` for validation.
    pub fresh_generated: bool,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            size: 64,
            batch: 32,
            shuffle: true,
            seed: 0,
            epoch: 0,
            workers: 0,
            prefetch: 2,
            sbi: None,
            self_blend_fraction: 0.0,
            drop_last: false,
            flip: true,
            fresh_generated: false,
        }
    }
}

impl LoaderOptions {
    /// Validation settings: dataset order, no augmentation, no on-the-fly blending, fixed
    /// generated content, nothing dropped.
    pub fn eval(size: usize, batch: usize, sbi: Option<SbiParams>) -> LoaderOptions {
        LoaderOptions {
            size,
            batch,
            shuffle: false,
            flip: false,
            sbi,
            self_blend_fraction: 0.0,
            drop_last: false,
            fresh_generated: false,
            ..LoaderOptions::default()
        }
    }
}

/// One batch, ready for the network.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchData {
    /// `[B, 3, S, S]`, ImageNet-normalised.
    pub image: Vec<f32>,
    /// `[B, 1, S, S]` in [0, 1] (all zero for reals and for fakes without a mask).
    pub mask: Vec<f32>,
    /// `[B]`: 1 when the mask is a label (reals, fakes with a mask, blended fakes), else 0.
    pub mask_weight: Vec<f32>,
    /// `[B]`: 1 = fake.
    pub label: Vec<f32>,
    /// Video id per sample.
    pub video: Vec<String>,
    /// Index of each sample in the dataset.
    pub index: Vec<usize>,
    /// Side S.
    pub size: usize,
}

impl BatchData {
    pub fn len(&self) -> usize {
        self.label.len()
    }
    pub fn is_empty(&self) -> bool {
        self.label.is_empty()
    }
}

/// One prepared sample: RGB `[S, S, 3]` in [0, 1], mask `[S, S]`, mask weight, label.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub rgb: Vec<f32>,
    pub mask: Vec<f32>,
    pub mask_weight: f32,
    pub label: f32,
}

/// A reason a sample could not be made: the file and why.
type Skip = (PathBuf, String);

fn mix(a: u64, b: u64) -> u64 {
    Rng::new(a ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

/// The seed of sample `index`'s augmentation in `epoch`.
pub fn sample_seed(seed: u64, epoch: u64, index: usize) -> u64 {
    mix(mix(seed, epoch.wrapping_add(0x1000)), index as u64)
}

/// The epoch's sample order.
pub fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
    }
    order
}

/// Pixels of a source at side `size`.
fn render(
    source: &Source,
    size: usize,
    sbi_p: &SbiParams,
    reseed: Option<u64>,
) -> std::result::Result<(Vec<f32>, Option<Vec<f32>>), Skip> {
    let re = |s: u64| reseed.map_or(s, |e| mix(s, e.wrapping_add(0x2000)));
    match source {
        Source::File(p) => {
            let img = imageio::decode_file(p, DecodeLimits::default())
                .map_err(|e| (p.clone(), reason(e)))?;
            Ok((imageio::rgb_resized(&img, size), None))
        }
        Source::Procedural { seed } => {
            Ok((procedural::scene(&mut Rng::new(re(*seed)), size), None))
        }
        Source::SelfBlend { base, seed } => {
            let (rgb, _) = render(base, size, sbi_p, reseed)?;
            let (fake, mask) = sbi::self_blend(&rgb, size, &mut Rng::new(re(*seed)), sbi_p);
            Ok((fake, Some(mask)))
        }
    }
}

fn reason(e: Error) -> String {
    match e {
        Error::File { msg, .. } => msg,
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Make one sample (decode or generate, resize, blend, augment) — what a worker does. `Err`
/// when the image is unreadable; the second value reports an unreadable mask file.
pub fn prepare(
    sample: &Sample,
    index: usize,
    opts: &LoaderOptions,
) -> std::result::Result<(Prepared, Option<Skip>), Skip> {
    let s = opts.size;
    let default_p;
    let sbi_p = match &opts.sbi {
        Some(p) => p,
        None => {
            default_p = SbiParams::sbi();
            &default_p
        }
    };
    let mut rng = Rng::new(sample_seed(opts.seed, opts.epoch, index));
    let reseed = opts.fresh_generated.then_some(opts.epoch);
    let (mut rgb, generated) = render(&sample.source, s, sbi_p, reseed)?;
    let mut label = sample.label;
    let mut mask_note = None;
    let (mut mask, mut weight) = match generated {
        Some(m) => (m, 1.0),
        None if label < 0.5 => (vec![0f32; s * s], 1.0),
        None => match &sample.mask {
            Some(mp) => match imageio::decode_file(mp, DecodeLimits::default()) {
                Ok(img) => (imageio::mask_resized(&img, s), 1.0),
                Err(e) => {
                    mask_note = Some((mp.clone(), format!("mask: {}", reason(e))));
                    (vec![0f32; s * s], 0.0)
                }
            },
            None => (vec![0f32; s * s], 0.0),
        },
    };
    // On-the-fly self-blending of reals (always drawn, so the stream does not depend on it).
    let blend_draw = rng.uniform();
    let blend_seed = rng.next_u64();
    let jpeg_seed = rng.next_u64();
    let flip = rng.uniform() < 0.5;
    let mut blended = generated_is_blend(&sample.source);
    if label < 0.5 && (blend_draw as f32) < opts.self_blend_fraction {
        let (f, m) = sbi::self_blend(&rgb, s, &mut Rng::new(blend_seed), sbi_p);
        rgb = f;
        mask = m;
        weight = 1.0;
        label = 1.0;
        blended = true;
    }
    if opts.sbi.is_some() && !blended {
        if let Some(q) = sbi::draw_jpeg(&mut Rng::new(jpeg_seed), sbi_p) {
            rgb = sbi::jpeg_roundtrip(&rgb, s, q);
        }
    }
    if opts.flip && flip {
        for y in 0..s {
            for x in 0..s / 2 {
                let (a, b) = (y * s + x, y * s + s - 1 - x);
                for k in 0..3 {
                    rgb.swap(a * 3 + k, b * 3 + k);
                }
                mask.swap(a, b);
            }
        }
    }
    Ok((
        Prepared {
            rgb,
            mask,
            mask_weight: weight,
            label,
        },
        mask_note,
    ))
}

fn generated_is_blend(s: &Source) -> bool {
    matches!(s, Source::SelfBlend { .. })
}

/// Assemble the batch of dataset indices `idx` (skipped samples left out).
pub fn make_batch(
    samples: &[Sample],
    idx: &[usize],
    opts: &LoaderOptions,
    skipped: &Mutex<Vec<(usize, PathBuf, String)>>,
) -> BatchData {
    let s = opts.size;
    let np = s * s;
    let mut b = BatchData {
        image: Vec::with_capacity(idx.len() * 3 * np),
        mask: Vec::with_capacity(idx.len() * np),
        mask_weight: Vec::with_capacity(idx.len()),
        label: Vec::with_capacity(idx.len()),
        video: Vec::with_capacity(idx.len()),
        index: Vec::with_capacity(idx.len()),
        size: s,
    };
    for &i in idx {
        let sample = &samples[i];
        let report = |path: PathBuf, why: String| {
            skipped.lock().unwrap().push((i, path, why));
        };
        match prepare(sample, i, opts) {
            Ok((p, note)) => {
                if let Some((path, why)) = note {
                    report(path, why);
                }
                b.image.extend(imageio::normalise_chw(&p.rgb, s));
                b.mask.extend(p.mask);
                b.mask_weight.push(p.mask_weight);
                b.label.push(p.label);
                b.video.push(sample.video.clone());
                b.index.push(i);
            }
            Err((path, why)) => report(path, why),
        }
    }
    b
}

/// An epoch of batches, made ahead on worker threads; iterate it for `Result<BatchData>`.
pub struct Loader {
    receivers: Vec<Receiver<BatchData>>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    n_batches: usize,
    stop: Arc<AtomicBool>,
    skipped: Arc<Mutex<Vec<(usize, PathBuf, String)>>>,
}

impl Loader {
    /// Start the workers for one epoch of `samples`.
    pub fn new(samples: Arc<Vec<Sample>>, opts: LoaderOptions) -> Result<Loader> {
        if opts.size == 0 || opts.batch == 0 {
            return Err(Error::Config(
                "loader: size and batch must be positive".into(),
            ));
        }
        let order = epoch_order(samples.len(), opts.shuffle, opts.seed, opts.epoch);
        let mut batches: Vec<Vec<usize>> = order.chunks(opts.batch).map(|c| c.to_vec()).collect();
        if opts.drop_last && batches.last().is_some_and(|b| b.len() < opts.batch) {
            batches.pop();
        }
        let n_batches = batches.len();
        let workers = if opts.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.workers
        }
        .clamp(1, n_batches.max(1));
        let batches = Arc::new(batches);
        let stop = Arc::new(AtomicBool::new(false));
        let skipped = Arc::new(Mutex::new(Vec::new()));
        let opts = Arc::new(opts);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel::<BatchData>(opts.prefetch.max(1));
            receivers.push(rx);
            let (samples, batches, stop, skipped, opts) = (
                samples.clone(),
                batches.clone(),
                stop.clone(),
                skipped.clone(),
                opts.clone(),
            );
            let h = std::thread::Builder::new()
                .name(format!("prrnet-loader-{w}"))
                .spawn(move || {
                    let mut b = w;
                    while b < batches.len() && !stop.load(Ordering::Relaxed) {
                        let data = make_batch(&samples, &batches[b], &opts, &skipped);
                        if tx.send(data).is_err() {
                            return;
                        }
                        b += workers;
                    }
                })
                .map_err(|e| Error::Other(format!("cannot start a loader thread: {e}")))?;
            handles.push(h);
        }
        Ok(Loader {
            receivers,
            workers: handles,
            next: 0,
            n_batches,
            stop,
            skipped,
        })
    }

    /// Batches in this epoch (including ones that may come out short or empty after skips).
    pub fn len(&self) -> usize {
        self.n_batches
    }
    pub fn is_empty(&self) -> bool {
        self.n_batches == 0
    }

    /// Files skipped so far (path, reason), in dataset-index order.
    pub fn skipped(&self) -> Vec<(PathBuf, String)> {
        let mut v = self.skipped.lock().unwrap().clone();
        v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        v.into_iter().map(|(_, p, r)| (p, r)).collect()
    }

    /// Number of files skipped so far.
    pub fn skipped_count(&self) -> usize {
        self.skipped.lock().unwrap().len()
    }
}

impl Iterator for Loader {
    type Item = Result<BatchData>;
    fn next(&mut self) -> Option<Result<BatchData>> {
        if self.next >= self.n_batches {
            return None;
        }
        let w = self.next % self.receivers.len();
        self.next += 1;
        Some(
            self.receivers[w]
                .recv()
                .map_err(|_| Error::Other("a data loader thread stopped unexpectedly".into())),
        )
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers unblocks workers waiting to send.
        self.receivers.clear();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
