//! The `prrnet detect` run: inputs are decoded and resized on worker threads (rayon), a
//! bounded channel of prepared chunks keeps decoding ahead of the network without holding
//! more than a few batches in memory, the network runs full batches, and the records come
//! out in input order. A failed input becomes an error record; the run goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use rayon::prelude::*;

use super::inputs::{picture_names, Source, SourceKind};
use super::records::{Outcome, Record, RecordWriter};
use super::render;
use super::Detector;
use crate::error::{Error, Result};
use crate::imageio::{decode_file, DecodeLimits};
use crate::progress::RunProgress;

/// Where the per-input pictures go.
#[derive(Clone, Debug, Default)]
pub struct PictureDirs {
    /// The mask at the original size, as an 8-bit grey PNG.
    pub masks: Option<PathBuf>,
    /// The heat-map of the mask over the image.
    pub overlay: Option<PathBuf>,
}

/// Counts of a finished run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub counted: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub fake: usize,
    pub seconds: f64,
}

impl Summary {
    /// Scored images per second of wall time (decoding included).
    pub fn images_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.succeeded as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Whether the run counts as a success: something was scored, and with `strict` nothing
    /// failed.
    pub fn ok(&self, strict: bool) -> bool {
        self.succeeded > 0 && !(strict && self.failed > 0)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} inputs: {} scored ({} fake, {} real), {} failed; {:.2} s, {:.1} images/s",
            self.counted,
            self.succeeded,
            self.fake,
            self.succeeded - self.fake,
            self.failed,
            self.seconds,
            self.images_per_s()
        )
    }
}

/// An input ready for the network.
struct Prepared {
    input: Vec<f32>,
    width: u32,
    height: u32,
    /// The original pixels, kept only when an overlay is wanted.
    rgb: Option<Vec<u8>>,
}

struct Loaded {
    index: usize,
    label: String,
    /// File name of the input's pictures.
    picture: String,
    result: std::result::Result<Prepared, String>,
}

/// The message of a per-input error, without the path the record already names.
fn message(e: Error) -> String {
    match e {
        Error::File { msg, .. } => msg,
        Error::Io { source, .. } => source.to_string(),
        e => e.to_string(),
    }
}

/// Decode (a decoder's panic is an error: `imageio::decode_bytes`) and preprocess one input.
fn load(det: &Detector, path: &Path, keep_rgb: bool) -> std::result::Result<Prepared, String> {
    let img = decode_file(path, DecodeLimits::default()).map_err(message)?;
    let input = det.preprocess(&img);
    Ok(Prepared {
        input,
        width: img.width(),
        height: img.height(),
        rgb: keep_rgb.then(|| img.to_rgb8().into_raw()),
    })
}

/// Write the pictures of one scored input.
fn pictures(dirs: &PictureDirs, name: &str, p: Prepared, mask: &[f32], side: usize) -> Result<()> {
    if dirs.masks.is_none() && dirs.overlay.is_none() {
        return Ok(());
    }
    let m8 = render::mask_to_u8(mask, side, p.width, p.height);
    if let Some(dir) = &dirs.overlay {
        let mut rgb = p.rgb.expect("image kept for the overlay");
        render::blend_heatmap(&mut rgb, &m8);
        render::save_rgb(&dir.join(name), rgb, p.width, p.height)?;
    }
    if let Some(dir) = &dirs.masks {
        render::save_gray(&dir.join(name), m8, p.width, p.height)?;
    }
    Ok(())
}

/// Score every input with `det`, writing one record per input to `out` (in input order) and
/// the pictures `dirs` asks for; with `progress`, a long run reports how far it is on stderr
/// (`crate::progress`).
pub fn run(
    det: &Detector,
    sources: Vec<Source>,
    out: &mut RecordWriter,
    dirs: &PictureDirs,
    progress: bool,
) -> Result<Summary> {
    for d in [&dirs.masks, &dirs.overlay].into_iter().flatten() {
        crate::io::create_folder(d)?;
    }
    let start = Instant::now();
    let batch = det.batch();
    let keep_rgb = dirs.overlay.is_some();
    let labels: Vec<&str> = sources.iter().map(|s| s.label.as_str()).collect();
    let names = picture_names(&labels);
    let mut summary = Summary {
        counted: sources.len(),
        ..Summary::default()
    };
    // Two chunks in flight: one being decoded while the network works on the previous one.
    let (tx, rx) = mpsc::sync_channel::<Vec<Loaded>>(2);
    let result = std::thread::scope(|scope| {
        let (sources, names) = (&sources, &names);
        scope.spawn(move || {
            for (c, chunk) in sources.chunks(batch).enumerate() {
                let loaded: Vec<Loaded> = chunk
                    .par_iter()
                    .enumerate()
                    .map(|(i, s)| Loaded {
                        index: c * batch + i,
                        label: s.label.clone(),
                        picture: names[c * batch + i].clone(),
                        result: match &s.kind {
                            SourceKind::File(p) => load(det, p, keep_rgb),
                            SourceKind::Failed(m) => Err(m.clone()),
                        },
                    })
                    .collect();
                if tx.send(loaded).is_err() {
                    break; // the consumer stopped on an error
                }
            }
        });
        let mut progress = progress.then(|| RunProgress::new("prrnet detect", sources.len()));
        let r = consume(det, rx, out, dirs, &mut summary, progress.as_mut());
        if let Some(p) = &mut progress {
            p.finish();
        }
        r
    });
    result?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Records finished out of order wait here until every earlier input is written.
struct InOrder {
    next: usize,
    done: BTreeMap<usize, Record>,
}

impl InOrder {
    fn push(&mut self, index: usize, r: Record, out: &mut RecordWriter) -> Result<()> {
        self.done.insert(index, r);
        while let Some(r) = self.done.remove(&self.next) {
            out.write(&r)?;
            self.next += 1;
        }
        Ok(())
    }
}

fn consume(
    det: &Detector,
    rx: mpsc::Receiver<Vec<Loaded>>,
    out: &mut RecordWriter,
    dirs: &PictureDirs,
    summary: &mut Summary,
    mut progress: Option<&mut RunProgress>,
) -> Result<()> {
    let batch = det.batch();
    let mut order = InOrder {
        next: 0,
        done: BTreeMap::new(),
    };
    let mut pending: Vec<Loaded> = Vec::new();
    let mut record = |index: usize, r: Record, out: &mut RecordWriter| -> Result<()> {
        match &r.outcome {
            Outcome::Scored { fake, .. } => {
                summary.succeeded += 1;
                summary.fake += usize::from(*fake);
            }
            Outcome::Failed(_) => summary.failed += 1,
        }
        if let Some(p) = progress.as_deref_mut() {
            p.update(summary.succeeded + summary.failed, summary.failed);
        }
        order.push(index, r, out)
    };
    // The batch whose forward is in flight: its detections come back when the next batch is
    // submitted (or at the end), so its records and pictures are made while the network works
    // on the next one.
    let mut stream = det.batch_stream();
    let mut in_flight: Vec<Loaded> = Vec::new();
    let mut finished = false;
    while !finished {
        match rx.recv() {
            Ok(chunk) => {
                for l in chunk {
                    match l.result {
                        Ok(_) => pending.push(l),
                        Err(e) => record(
                            l.index,
                            Record {
                                path: l.label,
                                outcome: Outcome::Failed(e),
                            },
                            out,
                        )?,
                    }
                }
            }
            Err(_) => finished = true,
        }
        // Full batches while decoding goes on; whatever is left at the end.
        while pending.len() >= batch || (finished && !pending.is_empty()) {
            let take = pending.len().min(batch);
            let items: Vec<_> = pending.drain(..take).collect();
            let inputs: Vec<&[f32]> = items
                .iter()
                .map(|l| l.result.as_ref().map_or(&[][..], |p| p.input.as_slice()))
                .collect();
            let done = stream.submit(&inputs)?;
            let previous = std::mem::replace(&mut in_flight, items);
            if let Some(dets) = done {
                for (index, r) in scored_records(dirs, previous, dets) {
                    record(index, r, out)?;
                }
            }
        }
        out.flush()?;
    }
    if let Some(dets) = stream.finish()? {
        for (index, r) in scored_records(dirs, std::mem::take(&mut in_flight), dets) {
            record(index, r, out)?;
        }
        out.flush()?;
    }
    Ok(())
}

/// The records (and pictures) of one scored batch, in parallel; `(input index, record)`.
fn scored_records(
    dirs: &PictureDirs,
    items: Vec<Loaded>,
    dets: Vec<super::Detection>,
) -> Vec<(usize, Record)> {
    items
        .into_par_iter()
        .zip(dets)
        .map(|(l, d)| {
            let Loaded {
                index,
                label,
                picture,
                result,
            } = l;
            let p = result.expect("only prepared inputs are scored");
            // Finite weights and pixels give a finite score; anything else is a fault to report,
            // not a verdict (NaN ≥ threshold is false: "real").
            let outcome = if !d.score.is_finite() {
                Outcome::Failed(format!("the network gave a non-finite score ({})", d.score))
            } else {
                match pictures(dirs, &picture, p, &d.mask, d.mask_side) {
                    Ok(()) => Outcome::Scored {
                        score: d.score,
                        fake: d.fake,
                        mask_fraction: d.mask_fraction,
                    },
                    Err(e) => Outcome::Failed(format!("cannot write picture: {e}")),
                }
            };
            (
                index,
                Record {
                    path: label,
                    outcome,
                },
            )
        })
        .collect()
}
