//! Inference for services and for `prrnet detect`: open a checkpoint once on a device, then
//! score batches of decoded images from any number of threads.
//!
//! A [`Detector`] plans the network for a fixed batch size and input side when it is opened.
//! A call with more images than the batch runs several batches; a call with fewer pads the
//! last batch with zero images, whose results are discarded. In evaluation mode every
//! BatchNorm uses its running statistics, so an image's result does not depend on which other
//! images share its batch.
//!
//! ```no_run
//! use std::path::Path;
//! use prrnet::detect::{Detector, DetectorOptions};
//! use prrnet::imageio::{decode_file, DecodeLimits};
//! use prrnet::DeviceRequest;
//!
//! # fn main() -> prrnet::Result<()> {
//! let detector = Detector::open(
//!     Path::new("prrnet.safetensors"),
//!     DeviceRequest::Auto,
//!     DetectorOptions { batch: 8, ..DetectorOptions::default() },
//! )?;
//! let image = decode_file(Path::new("face.jpg"), DecodeLimits::default())?;
//! let d = &detector.detect(&[image])?[0];
//! println!(
//!     "score {:.3} → {}, {:.1}% of the face looks manipulated",
//!     d.score,
//!     if d.fake { "fake" } else { "real" },
//!     100.0 * d.mask_fraction
//! );
//! # Ok(())
//! # }
//! ```

pub mod inputs;
pub mod pipeline;
pub mod records;
pub mod render;

use std::path::Path;
use std::sync::Mutex;

use image::DynamicImage;
use rayon::prelude::*;

pub use crate::backend::Precision;
use crate::backend::{self, DeviceRequest};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::io::{checkpoint, dump, tensors::TensorFile};
use crate::model::{Mode, PrrNet};

/// How a [`Detector`] is opened.
#[derive(Clone, Debug)]
pub struct DetectorOptions {
    /// Images per forward pass (the model is planned for exactly this many).
    pub batch: usize,
    /// Input side S; default: the checkpoint's configuration.
    pub size: Option<usize>,
    /// Model preset for a bare state dict (no configuration metadata); wins over the metadata.
    pub preset: Option<String>,
    /// Relation bins per side, overriding the checkpoint's.
    pub n: Option<usize>,
    /// Metric groups G, overriding the checkpoint's.
    pub groups: Option<usize>,
    pub precision: Precision,
    /// An image is called fake when its score is at least this.
    pub threshold: f32,
    /// Bracket these forward batches (0-based) for an attached profiler.
    pub profile_window: Option<crate::profile::ProfileWindow>,
    /// Replay the forward as a recorded CUDA graph (on GPUs; ignored on the CPU). When
    /// recording fails the detector warns once and runs ordinary forwards.
    pub graphs: bool,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            batch: 16,
            size: None,
            preset: None,
            n: None,
            groups: None,
            precision: Precision::Fp32,
            threshold: 0.5,
            profile_window: None,
            graphs: true,
        }
    }
}

/// The result for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// Inconsistency score `s = sigmoid(t)` (SPEC §5). Finite for the finite weights a
    /// checkpoint must hold; were it not, `prrnet detect` writes an error record instead.
    pub score: f32,
    /// `score ≥ threshold`.
    pub fake: bool,
    /// Fraction of mask pixels with `M ≥ 0.5`.
    pub mask_fraction: f32,
    /// The manipulation mask `M` (SPEC §4.2), `[mask_side, mask_side]` row-major, at the
    /// feature resolution of the resized input.
    pub mask: Vec<f32>,
    pub mask_side: usize,
}

/// A loaded network, ready to score images; `Send + Sync`, so one instance can serve several
/// threads (forward passes are serialised, preprocessing is not).
pub struct Detector {
    net: Mutex<PrrNet>,
    /// The profiler window and the number of forward batches run so far.
    profiling: Mutex<(crate::profile::Profiling, u64)>,
    cfg: Config,
    batch: usize,
    threshold: f32,
    device: String,
    /// Forward through the recorded graph (cleared when recording fails).
    graphs: std::sync::atomic::AtomicBool,
}

impl Detector {
    /// Load `weights` (a checkpoint; for a bare state dict, `opts.preset` says which model) onto
    /// `device`, planned for `opts.batch` images of the configured side.
    pub fn open(weights: &Path, device: DeviceRequest, opts: DetectorOptions) -> Result<Detector> {
        if opts.batch == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        if !opts.threshold.is_finite() {
            return Err(Error::Config(format!(
                "threshold {} is not a finite number",
                opts.threshold
            )));
        }
        let file = TensorFile::read(weights)?;
        let cfg = dump::resolve_config(
            &file,
            opts.preset.as_deref(),
            opts.n,
            opts.groups,
            opts.size,
        )?;
        let be = backend::open(device)?;
        be.set_precision(opts.precision)?;
        let device = be.name();
        let net = PrrNet::new_inference(&cfg, be, opts.batch)?;
        checkpoint::load_file(&net, &file, weights)?;
        Ok(Detector {
            net: Mutex::new(net),
            profiling: Mutex::new((crate::profile::Profiling::new(opts.profile_window), 0)),
            cfg,
            batch: opts.batch,
            threshold: opts.threshold,
            device,
            graphs: std::sync::atomic::AtomicBool::new(opts.graphs),
        })
    }

    /// Close an open profiler window (a run that ended inside it).
    pub fn finish_profiling(&self) -> Result<()> {
        let net = self.net.lock().unwrap_or_else(|p| p.into_inner());
        let mut prof = self.profiling.lock().unwrap_or_else(|p| p.into_inner());
        prof.0.finish(net.backend())
    }

    /// The model configuration (preset, n, G, input side).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The device the network runs on, in words.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Side of the mask `M` (the stride-4 feature map).
    pub fn mask_side(&self) -> usize {
        self.cfg.feature_side()
    }

    /// One decoded image → the network input `[3, S, S]` (resized, ImageNet-normalised).
    /// Callers that decode on their own worker threads can run this there and pass the result
    /// to [`Detector::detect_preprocessed`].
    pub fn preprocess(&self, image: &DynamicImage) -> Vec<f32> {
        crate::imageio::preprocess(image, self.cfg.size)
    }

    /// Score decoded images (any colour type or bit depth); one [`Detection`] per image, in order.
    /// Untrusted files are best decoded by [`crate::imageio::decode_file`] or
    /// [`crate::imageio::decode_bytes`]: size and allocation limits, a decoder's panic as an
    /// error, the EXIF orientation applied.
    pub fn detect(&self, images: &[DynamicImage]) -> Result<Vec<Detection>> {
        let inputs: Vec<Vec<f32>> = images.par_iter().map(|im| self.preprocess(im)).collect();
        self.detect_preprocessed(&inputs)
    }

    /// Score inputs already made by [`Detector::preprocess`] (each `[3, S, S]`).
    pub fn detect_preprocessed<T: AsRef<[f32]> + Sync>(
        &self,
        inputs: &[T],
    ) -> Result<Vec<Detection>> {
        let mut out = Vec::with_capacity(inputs.len());
        let mut stream = self.batch_stream();
        for chunk in inputs.chunks(self.batch) {
            if let Some(done) = stream.submit(chunk)? {
                out.extend(done);
            }
        }
        if let Some(done) = stream.finish()? {
            out.extend(done);
        }
        Ok(out)
    }

    /// A pipeline of batches through this detector: each [`BatchStream::submit`] stages and
    /// uploads its batch while the network still works on the one before (on a GPU, the host
    /// side of batch k + 1 overlaps the forward of batch k). The stream holds the network until
    /// it is dropped; other threads' calls wait for it.
    pub fn batch_stream(&self) -> BatchStream<'_> {
        BatchStream {
            det: self,
            net: self.net.lock().unwrap_or_else(|p| p.into_inner()),
            in_flight: None,
        }
    }

    fn detections(&self, scores: &[f32], masks: &[f32], count: usize) -> Vec<Detection> {
        let side = self.mask_side();
        let np = side * side;
        (0..count)
            .map(|i| {
                let mask = masks[i * np..(i + 1) * np].to_vec();
                let on = mask.iter().filter(|&&m| m >= 0.5).count();
                let score = scores[i];
                Detection {
                    score,
                    fake: score >= self.threshold,
                    mask_fraction: on as f32 / np as f32,
                    mask,
                    mask_side: side,
                }
            })
            .collect()
    }
}

/// Batches in flight through a [`Detector`] (see [`Detector::batch_stream`]).
pub struct BatchStream<'a> {
    det: &'a Detector,
    net: std::sync::MutexGuard<'a, PrrNet>,
    /// How many real images the forward in flight holds.
    in_flight: Option<usize>,
}

impl BatchStream<'_> {
    /// Start scoring `inputs` (at most the detector's batch, each `[3, S, S]` from
    /// [`Detector::preprocess`]; the batch is padded with zero images). Returns the detections
    /// of the batch submitted before this one, if any.
    pub fn submit<T: AsRef<[f32]> + Sync>(
        &mut self,
        inputs: &[T],
    ) -> Result<Option<Vec<Detection>>> {
        // Stage and upload first: the copy is ordered after the forward in flight, which has
        // already read its input, and before this batch's forward.
        self.net.set_images(inputs)?;
        let done = self.finish()?;
        {
            let mut prof = self.det.profiling.lock().unwrap_or_else(|p| p.into_inner());
            let i = prof.1;
            prof.0.before(self.net.backend(), i)?;
            prof.1 += 1;
        }
        use std::sync::atomic::Ordering::Relaxed;
        if self.det.graphs.load(Relaxed) {
            if let Err(e) = self.net.forward_graph() {
                self.det.graphs.store(false, Relaxed);
                crate::progress::eprint_line(&format!(
                    "warning: CUDA graph replay unavailable ({e}); running plain forwards"
                ));
                self.net.forward(Mode::EVAL)?;
            }
        } else {
            self.net.forward(Mode::EVAL)?;
        }
        self.in_flight = Some(inputs.len());
        Ok(done)
    }

    /// Wait for the batch in flight and return its detections (`None` when there is none).
    pub fn finish(&mut self) -> Result<Option<Vec<Detection>>> {
        let Some(count) = self.in_flight.take() else {
            return Ok(None);
        };
        let scores = self.net.read(self.net.rr.score)?;
        let masks = self.net.read(self.net.pr.mask_prob)?;
        Ok(Some(self.det.detections(&scores, &masks, count)))
    }
}

/// Compile-time check: one detector can be shared between threads.
#[allow(dead_code)]
fn detector_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Detector>();
}
