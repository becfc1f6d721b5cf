//! Datasets as lists of [`Sample`]s: a folder of `real/` and `fake/` trees, a CSV or JSONL
//! manifest, a DeepfakeBench dataset JSON, or the built-in procedural dataset; and the seeded
//! train/validation split by video.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::imageio::image_files;
use crate::rng::Rng;

/// Where a sample's pixels come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An image file.
    File(PathBuf),
    /// A procedural scene ([`super::procedural::scene`]) from `Rng::new(seed)`.
    Procedural { seed: u64 },
    /// A self-blended fake of `base`, the blend drawn from `Rng::new(seed)`; its mask is the
    /// blend mask (mask weight 1).
    SelfBlend { base: Box<Source>, seed: u64 },
}

/// A split named by a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    /// `train`, `val`/`valid`/`validation`/`dev`, `test` (any case); anything else is `None`.
    pub fn parse(s: &str) -> Option<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Split::Train),
            "val" | "valid" | "validation" | "dev" => Some(Split::Val),
            "test" | "testing" => Some(Split::Test),
            _ => None,
        }
    }
}

/// One training or validation example.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub source: Source,
    /// 1 = fake, 0 = real.
    pub label: f32,
    /// Forgery mask file (fakes). Reals never need one (their mask is all zero); a fake without
    /// one gets no localisation loss, except a [`Source::SelfBlend`], whose mask is generated.
    pub mask: Option<PathBuf>,
    /// Video (or identity) the frame belongs to; the split never separates one video.
    pub video: String,
    /// Split named by the dataset itself, if any.
    pub split: Option<Split>,
}

impl Sample {
    /// Whether the sample has a localisation label: reals (all-zero mask), fakes with a mask
    /// file, and self-blended fakes.
    pub fn has_mask(&self) -> bool {
        self.label < 0.5 || self.mask.is_some() || matches!(self.source, Source::SelfBlend { .. })
    }
    /// The file this sample reads, if any (the base of a self-blend).
    pub fn path(&self) -> Option<&Path> {
        let mut s = &self.source;
        loop {
            match s {
                Source::File(p) => return Some(p),
                Source::Procedural { .. } => return None,
                Source::SelfBlend { base, .. } => s = base,
            }
        }
    }
}

/// All image files under `dir`, recursively, sorted by path (`imageio::image_files`: hidden
/// entries skipped, links followed, each folder once, never into a `fences` folder).
fn walk_images(dir: &Path, fences: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let tree = image_files(dir, fences);
    if let Some((folder, e)) = tree.unreadable.into_iter().next() {
        return Err(Error::io(&folder, e));
    }
    let mut out = tree.files;
    out.sort();
    Ok(out)
}

/// Video id for a frame: its parent folder's name, or — for a file directly in the class
/// folder `root` — its own stem (each loose image its own "video").
fn video_of(path: &Path, root: &Path) -> String {
    match path.parent() {
        Some(p) if p != root => p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        _ => path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// A folder with `real/` and `fake/` image trees (either may be missing, not both) and an
/// optional `masks/` tree mirroring `fake/`: the mask of `fake/a/b.png` is `masks/a/b.*` with
/// any image extension. Video id = parent folder name (a file directly in `real/` or `fake/` is
/// its own video, named by its stem).
pub fn load_folder(root: &Path) -> Result<Vec<Sample>> {
    let real = root.join("real");
    let fake = root.join("fake");
    if !real.is_dir() && !fake.is_dir() {
        return Err(Error::file(
            root,
            "dataset folder needs a `real/` or `fake/` subfolder",
        ));
    }
    let mroot = root.join("masks");
    // Each class folder's search is fenced off from the others: a link from one into another
    // must not give an image a second label (or a mask a second role).
    let fences = |dir: &Path| -> Vec<PathBuf> {
        [&real, &fake, &mroot]
            .into_iter()
            .filter(|f| *f != dir && f.is_dir())
            .cloned()
            .collect()
    };
    let mut masks: HashMap<PathBuf, PathBuf> = HashMap::new();
    if mroot.is_dir() {
        for m in walk_images(&mroot, &fences(&mroot))? {
            if let Ok(rel) = m.strip_prefix(&mroot) {
                masks.entry(rel.with_extension("")).or_insert(m.clone());
            }
        }
    }
    let mut out = Vec::new();
    for (dir, label) in [(&real, 0.0f32), (&fake, 1.0)] {
        if !dir.is_dir() {
            continue;
        }
        for p in walk_images(dir, &fences(dir))? {
            let mask = if label > 0.5 {
                p.strip_prefix(dir)
                    .ok()
                    .and_then(|rel| masks.get(&rel.with_extension("")).cloned())
            } else {
                None
            };
            out.push(Sample {
                video: video_of(&p, dir),
                source: Source::File(p),
                label,
                mask,
                split: None,
            });
        }
    }
    if out.is_empty() {
        return Err(Error::file(root, "no image files under real/ or fake/"));
    }
    Ok(out)
}

/// A label value: `0`/`1` (any number, ≥ 0.5 is fake), `real`/`fake`, `true`/`false`,
/// or a DeepfakeBench-style class name (containing `real`, `original` or `pristine` → 0).
pub fn parse_label(s: &str) -> Option<f32> {
    let t = s.trim();
    if let Ok(v) = t.parse::<f64>() {
        return v.is_finite().then_some(if v >= 0.5 { 1.0 } else { 0.0 });
    }
    let l = t.to_ascii_lowercase();
    match l.as_str() {
        "" => None,
        "fake" | "true" | "manipulated" | "forged" | "yes" => Some(1.0),
        "false" | "no" => Some(0.0),
        _ if l.contains("real") || l.contains("original") || l.contains("pristine") => Some(0.0),
        _ => Some(1.0),
    }
}

fn json_label(v: &serde_json::Value) -> Option<f32> {
    match v {
        serde_json::Value::Number(n) => n.as_f64().map(|x| if x >= 0.5 { 1.0 } else { 0.0 }),
        serde_json::Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        serde_json::Value::String(s) => parse_label(s),
        _ => None,
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p.trim());
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Split one CSV line into fields (double quotes group, `""` is a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

struct Row {
    path: String,
    label: f32,
    mask: Option<String>,
    video: Option<String>,
    split: Option<Split>,
}

fn row_to_sample(base: &Path, r: Row) -> Sample {
    let path = resolve(base, &r.path);
    let video = r
        .video
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| video_of(&path, Path::new("")));
    Sample {
        source: Source::File(path),
        label: r.label,
        mask: r
            .mask
            .filter(|m| !m.trim().is_empty())
            .map(|m| resolve(base, &m)),
        video,
        split: r.split,
    }
}

/// A manifest: CSV (`.csv`, header row naming `path,label[,mask][,video][,split]` in any order)
/// or JSONL (`.jsonl`/`.ndjson`, one object per line with those keys). Relative paths are
/// relative to the manifest's folder; the video id defaults to the file's parent folder name.
pub fn load_manifest(path: &Path) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let rows = if ext == "jsonl" || ext == "ndjson" || text.trim_start().starts_with('{') {
        parse_jsonl(path, &text)?
    } else {
        parse_csv(path, &text)?
    };
    if rows.is_empty() {
        return Err(Error::file(path, "manifest lists no samples"));
    }
    Ok(rows.into_iter().map(|r| row_to_sample(&base, r)).collect())
}

fn parse_csv(path: &Path, text: &str) -> Result<Vec<Row>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let (_, header) = lines
        .next()
        .ok_or_else(|| Error::file(path, "empty manifest"))?;
    let cols: Vec<String> = csv_fields(header.trim_start_matches('\u{feff}'))
        .into_iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let col = |name: &str| cols.iter().position(|c| c == name);
    let (Some(ip), Some(il)) = (col("path"), col("label")) else {
        return Err(Error::file(
            path,
            format!("CSV header must name `path` and `label` columns (found {cols:?})"),
        ));
    };
    let (im, iv, is) = (col("mask"), col("video"), col("split"));
    let mut rows = Vec::new();
    for (n, line) in lines {
        let f = csv_fields(line);
        let get = |i: Option<usize>| i.and_then(|i| f.get(i)).cloned();
        let p = get(Some(ip)).unwrap_or_default();
        if p.is_empty() {
            return Err(Error::file(path, format!("line {}: empty path", n + 1)));
        }
        let label = get(Some(il))
            .as_deref()
            .and_then(parse_label)
            .ok_or_else(|| Error::file(path, format!("line {}: bad or missing label", n + 1)))?;
        rows.push(Row {
            path: p,
            label,
            mask: get(im),
            video: get(iv),
            split: get(is).as_deref().and_then(Split::parse),
        });
    }
    Ok(rows)
}

fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::file(path, format!("line {}: {e}", n + 1)))?;
        let s = |k: &str| match v.get(k) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(x)) => Some(x.to_string()),
            _ => None,
        };
        let p = s("path").ok_or_else(|| Error::file(path, format!("line {}: no `path`", n + 1)))?;
        let label = v
            .get("label")
            .and_then(json_label)
            .ok_or_else(|| Error::file(path, format!("line {}: bad or missing `label`", n + 1)))?;
        rows.push(Row {
            path: p,
            label,
            mask: s("mask"),
            video: s("video"),
            split: s("split").as_deref().and_then(Split::parse),
        });
    }
    Ok(rows)
}

/// A DeepfakeBench dataset JSON (`preprocessing/dataset_json/<name>.json`):
/// `{dataset: {label_name: {split: {compression: {video: {"label": …, "frames": [paths]}}}}}}`.
/// Read tolerantly: every object with a `frames` array is a video (its key the video id),
/// whatever the nesting depth; its split is the nearest enclosing key named train/val/test;
/// its label is its `label` field, else the nearest enclosing class name (`…real…` → 0, other
/// names → 1). An optional `masks` array parallel to `frames` gives mask files. Frame paths
/// that are relative are joined to `root` (default: the JSON file's folder).
pub fn load_deepfakebench(path: &Path, root: Option<&Path>) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("bad JSON: {e}")))?;
    let base = root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.parent().unwrap_or(Path::new("")).to_path_buf());
    let mut out = Vec::new();
    let mut ctx = Ctx::default();
    walk_dfb(&v, &base, &mut ctx, &mut out);
    if out.is_empty() {
        return Err(Error::file(
            path,
            "no videos with `frames` found in the JSON",
        ));
    }
    Ok(out)
}

#[derive(Clone, Default)]
struct Ctx {
    split: Option<Split>,
    class: Option<f32>,
}

fn walk_dfb(v: &serde_json::Value, base: &Path, ctx: &mut Ctx, out: &mut Vec<Sample>) {
    let serde_json::Value::Object(map) = v else {
        return;
    };
    // Sorted keys: the sample order does not depend on the JSON's key order.
    let keys: BTreeSet<&String> = map.keys().collect();
    for k in keys {
        let child = &map[k];
        let serde_json::Value::Object(obj) = child else {
            continue;
        };
        if let Some(serde_json::Value::Array(frames)) = obj.get("frames") {
            let label = obj
                .get("label")
                .and_then(json_label)
                .or(ctx.class)
                .unwrap_or(1.0);
            let masks: Vec<Option<String>> = match obj.get("masks") {
                Some(serde_json::Value::Array(m)) => {
                    m.iter().map(|x| x.as_str().map(str::to_string)).collect()
                }
                _ => Vec::new(),
            };
            for (i, f) in frames.iter().enumerate() {
                let Some(fp) = f.as_str() else { continue };
                let mask = masks
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|m| !m.is_empty())
                    .map(|m| resolve(base, &m));
                out.push(Sample {
                    source: Source::File(resolve(base, fp)),
                    label,
                    mask: if label > 0.5 { mask } else { None },
                    video: k.clone(),
                    split: ctx.split,
                });
            }
            continue;
        }
        let saved = ctx.clone();
        if let Some(s) = Split::parse(k) {
            ctx.split = Some(s);
        } else if ctx.split.is_none() {
            // Above the split level: a class name (e.g. `FF-real`, `FF-DF`) or the dataset name.
            // The dataset name is overridden by the class name one level down.
            ctx.class = parse_label(k);
        }
        walk_dfb(child, base, ctx, out);
        *ctx = saved;
    }
}

/// Any dataset: a folder (`real/`, `fake/`), a `.csv`/`.jsonl`/`.ndjson` manifest, or a `.json`
/// file (DeepfakeBench; a `.json` holding one object per line is read as JSONL).
pub fn load(path: &Path) -> Result<Vec<Sample>> {
    if path.is_dir() {
        return load_folder(path);
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext == "json" {
        match load_deepfakebench(path, None) {
            Ok(s) => Ok(s),
            Err(e) => load_manifest(path).map_err(|_| e),
        }
    } else {
        load_manifest(path)
    }
}

/// Split into (train, validation) without ever separating a video.
///
/// Samples whose split is named by the dataset keep it: `Train` → train, `Val` → validation,
/// `Test` → validation only when the dataset names no `Val` samples (otherwise test samples
/// are left out of both). Videos with no named split are assigned by a seeded shuffle, per
/// class (a video's class is its majority label), `round(val_fraction × videos)` of each class
/// to validation — at least one when the class has two or more videos and `val_fraction > 0`.
/// When that leaves validation empty although `val_fraction > 0` and there are two or more
/// unnamed videos, one video is held out. A video with some named frames takes the first named
/// split for its unnamed frames.
/// Both outputs keep the input order.
pub fn split_by_video(
    samples: Vec<Sample>,
    val_fraction: f64,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    let any_val = samples.iter().any(|s| s.split == Some(Split::Val));
    let mut named: HashMap<String, Split> = HashMap::new();
    // Per unnamed video: (count, fake count) for its class.
    let mut votes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for s in &samples {
        if let Some(sp) = s.split {
            named.entry(s.video.clone()).or_insert(sp);
        }
    }
    for s in &samples {
        if !named.contains_key(s.video.as_str()) {
            let e = votes.entry(s.video.clone()).or_default();
            e.0 += 1;
            e.1 += (s.label >= 0.5) as usize;
        }
    }
    let mut val_videos: BTreeSet<String> = BTreeSet::new();
    let mut rng = Rng::new(seed ^ 0x5eed_5917);
    let frac = val_fraction.clamp(0.0, 1.0);
    let mut spare: Vec<String> = Vec::new();
    for class in [false, true] {
        let mut vids: Vec<&str> = votes
            .iter()
            .filter(|(_, (n, f))| (2 * f > *n) == class)
            .map(|(v, _)| v.as_str())
            .collect();
        for i in (1..vids.len()).rev() {
            vids.swap(i, rng.below(i + 1));
        }
        let mut k = (frac * vids.len() as f64).round() as usize;
        if frac > 0.0 && k == 0 && vids.len() >= 2 {
            k = 1;
        }
        val_videos.extend(vids[..k.min(vids.len())].iter().map(|v| v.to_string()));
        spare.extend(vids.get(k).map(|v| v.to_string()));
    }
    if frac > 0.0 && val_videos.is_empty() && votes.len() >= 2 {
        // Each class has a single video: still hold one out.
        val_videos.extend(spare.into_iter().take(1));
    }
    let mut train = Vec::new();
    let mut val = Vec::new();
    for s in samples {
        let sp = s.split.or_else(|| named.get(s.video.as_str()).copied());
        let to_val = match sp {
            Some(Split::Train) => false,
            Some(Split::Val) => true,
            Some(Split::Test) if any_val => continue,
            Some(Split::Test) => true,
            None => val_videos.contains(&s.video),
        };
        if to_val {
            val.push(s)
        } else {
            train.push(s)
        }
    }
    (train, val)
}

fn mix(a: u64, b: u64) -> u64 {
    Rng::new(a ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

/// The built-in dataset: procedural real scenes and self-blended fakes made from them, in
/// real/fake pairs (one scene → one real and one fake, the pair one "video"), `n_train` and
/// `n_val` samples (rounded up to even). Training and validation scenes come from different
/// seed streams, so validation is held out. Load it with `SbiParams::builtin()` in the loader.
pub fn builtin(n_train: usize, n_val: usize, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    let make = |n: usize, stream: u64, tag: &str| {
        let mut out = Vec::with_capacity(n + 1);
        for k in 0..n.div_ceil(2) as u64 {
            let scene = mix(mix(seed, stream), k);
            let video = format!("{tag}-{k:06}");
            out.push(Sample {
                source: Source::Procedural { seed: scene },
                label: 0.0,
                mask: None,
                video: video.clone(),
                split: None,
            });
            out.push(Sample {
                source: Source::SelfBlend {
                    base: Box::new(Source::Procedural { seed: scene }),
                    seed: mix(scene, 0xB1E4D),
                },
                label: 1.0,
                mask: None,
                video,
                split: None,
            });
        }
        out
    };
    (make(n_train, 1, "train"), make(n_val, 2, "val"))
}
