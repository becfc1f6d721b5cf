//! Dataset formats (folder, CSV, JSONL, DeepfakeBench JSON), the split by video, and the
//! built-in dataset.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prrnet::data::dataset::{
    builtin, load, load_deepfakebench, load_folder, load_manifest, split_by_video, Sample, Source,
    Split,
};
use prrnet::data::loader::{Loader, LoaderOptions};
use prrnet::rng::Rng;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("prrnet-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_img(path: &Path, w: u32, h: u32, value: Option<u8>, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut rng = Rng::new(seed);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        let v = |r: &mut Rng| value.unwrap_or((r.below(256)) as u8);
        image::Rgb([v(&mut rng), v(&mut rng), v(&mut rng)])
    });
    img.save(path).unwrap();
}

fn file(s: &Sample) -> &Path {
    match &s.source {
        Source::File(p) => p,
        other => panic!("not a file: {other:?}"),
    }
}

/// The samples' file paths relative to `root`, in order.
fn names_under(samples: &[Sample], root: &Path) -> Vec<String> {
    let rel = |x: &Sample| {
        file(x)
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    samples.iter().map(rel).collect()
}

#[test]
fn folder_with_real_fake_and_mirrored_masks() {
    let d = tmpdir("folder");
    write_img(&d.join("real/vid0/0001.png"), 20, 16, None, 1);
    write_img(&d.join("real/vid0/0002.jpg"), 20, 16, None, 2);
    write_img(&d.join("real/loose.png"), 12, 12, None, 3);
    write_img(&d.join("fake/vidA/0001.png"), 20, 16, None, 4);
    write_img(&d.join("fake/vidA/0002.png"), 20, 16, None, 5);
    write_img(&d.join("masks/vidA/0001.jpg"), 20, 16, Some(255), 6);
    std::fs::write(d.join("real/vid0/notes.txt"), "not an image").unwrap();
    let s = load_folder(&d).unwrap();
    assert_eq!(s.len(), 5);
    let names = names_under(&s, &d);
    assert_eq!(
        names,
        [
            "real/loose.png",
            "real/vid0/0001.png",
            "real/vid0/0002.jpg",
            "fake/vidA/0001.png",
            "fake/vidA/0002.png"
        ]
    );
    assert_eq!(
        s.iter().map(|x| x.label).collect::<Vec<_>>(),
        [0., 0., 0., 1., 1.]
    );
    assert_eq!(
        s.iter().map(|x| x.video.as_str()).collect::<Vec<_>>(),
        ["loose", "vid0", "vid0", "vidA", "vidA"]
    );
    assert_eq!(
        s[3].mask.as_deref(),
        Some(d.join("masks/vidA/0001.jpg").as_path())
    );
    assert_eq!(s[4].mask, None);
    assert!(s.iter().all(|x| x.split.is_none()));
    assert_eq!(load(&d).unwrap(), s);

    // Through the loader: the mask file becomes the mask, mask weights follow the rule.
    let opts = LoaderOptions {
        size: 8,
        batch: 8,
        shuffle: false,
        flip: false,
        workers: 1,
        ..LoaderOptions::default()
    };
    let b: Vec<_> = Loader::new(Arc::new(s), opts)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(b.len(), 1);
    let b = &b[0];
    assert_eq!(b.label, [0., 0., 0., 1., 1.]);
    assert_eq!(b.mask_weight, [1., 1., 1., 1., 0.]);
    assert_eq!(b.image.len(), 5 * 3 * 64);
    assert_eq!(b.mask.len(), 5 * 64);
    assert!(
        b.mask[3 * 64..4 * 64].iter().all(|&v| v > 0.95),
        "white mask file"
    );
    assert!(b.mask[..3 * 64].iter().all(|&v| v == 0.0));
    assert!(b.mask[4 * 64..].iter().all(|&v| v == 0.0));
    assert_eq!(b.video, ["loose", "vid0", "vid0", "vidA", "vidA"]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn folder_without_real_or_fake_is_an_error() {
    let d = tmpdir("empty");
    assert!(load_folder(&d).is_err());
    std::fs::create_dir_all(d.join("real")).unwrap();
    assert!(load_folder(&d).is_err(), "no images");
}

#[test]
fn csv_manifest_any_column_order_relative_paths() {
    let d = tmpdir("csv");
    std::fs::create_dir_all(d.join("frames")).unwrap();
    let csv = "label,path,split,mask,video\n\
               0,frames/a/1.png,train,,\n\
               fake,\"frames/b,c/2.png\",val,masks/2.png,vid-b\n\
               1,/abs/3.png,test,,v3\n\
               \n\
               # a comment\n\
               real,frames/4.png,,,\n";
    let m = d.join("list.csv");
    std::fs::write(&m, csv).unwrap();
    let s = load_manifest(&m).unwrap();
    assert_eq!(s.len(), 4);
    assert_eq!(file(&s[0]), d.join("frames/a/1.png"));
    assert_eq!(file(&s[1]), d.join("frames/b,c/2.png"));
    assert_eq!(file(&s[2]), Path::new("/abs/3.png"));
    assert_eq!(
        s.iter().map(|x| x.label).collect::<Vec<_>>(),
        [0., 1., 1., 0.]
    );
    assert_eq!(s[0].mask, None);
    assert_eq!(s[1].mask, Some(d.join("masks/2.png")));
    assert_eq!(
        s.iter().map(|x| x.video.as_str()).collect::<Vec<_>>(),
        ["a", "vid-b", "v3", "frames"],
        "video defaults to the parent folder"
    );
    assert_eq!(
        s.iter().map(|x| x.split).collect::<Vec<_>>(),
        [
            Some(Split::Train),
            Some(Split::Val),
            Some(Split::Test),
            None
        ]
    );
    assert_eq!(load(&m).unwrap(), s);

    std::fs::write(&m, "file,label\nx.png,0\n").unwrap();
    assert!(load_manifest(&m).is_err(), "no `path` column");
    std::fs::write(&m, "path,label\nx.png,\n").unwrap();
    assert!(load_manifest(&m).is_err(), "missing label");
}

#[test]
fn jsonl_manifest() {
    let d = tmpdir("jsonl");
    let m = d.join("list.jsonl");
    std::fs::write(
        &m,
        r#"{"path": "x/v1/0.png", "label": 0}
{"path": "x/v2/0.png", "label": 1, "mask": "m/0.png", "video": "two", "split": "validation"}

{"path": "x/v3/0.png", "label": "fake", "split": "train"}
"#,
    )
    .unwrap();
    let s = load_manifest(&m).unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(file(&s[0]), d.join("x/v1/0.png"));
    assert_eq!(s.iter().map(|x| x.label).collect::<Vec<_>>(), [0., 1., 1.]);
    assert_eq!(s[1].mask, Some(d.join("m/0.png")));
    assert_eq!(
        s.iter().map(|x| x.video.as_str()).collect::<Vec<_>>(),
        ["v1", "two", "v3"]
    );
    assert_eq!(
        s.iter().map(|x| x.split).collect::<Vec<_>>(),
        [None, Some(Split::Val), Some(Split::Train)]
    );
    assert_eq!(load(&m).unwrap(), s);
    std::fs::write(&m, "{\"label\": 0}\n").unwrap();
    assert!(load_manifest(&m).is_err(), "no path");
}

#[test]
fn deepfakebench_json() {
    let d = tmpdir("dfb");
    let j = d.join("FaceForensics++.json");
    std::fs::write(
        &j,
        r#"{"FaceForensics++": {
  "FF-real": {
    "train": {"c23": {"000": {"label": "FF-real", "frames": ["ff/real/000/0.png", "ff/real/000/1.png"]}}},
    "val":   {"c23": {"001": {"label": "FF-real", "frames": ["ff/real/001/0.png"]}}},
    "test":  {"c23": {"002": {"label": "FF-real", "frames": ["ff/real/002/0.png"]}}}
  },
  "FF-DF": {
    "train": {"c23": {"000_003": {"label": "FF-DF", "frames": ["ff/df/000_003/0.png"],
                                   "masks": ["ff/dfm/000_003/0.png"]}}},
    "test":  {"c23": {"002_006": {"frames": ["ff/df/002_006/0.png", "ff/df/002_006/1.png"]}}}
  }
}}"#,
    )
    .unwrap();
    let s = load_deepfakebench(&j, None).unwrap();
    assert_eq!(s.len(), 7);
    let by_video = |v: &str| s.iter().filter(|x| x.video == v).collect::<Vec<_>>();
    let r0 = by_video("000");
    assert_eq!(r0.len(), 2);
    assert!(r0
        .iter()
        .all(|x| x.label == 0.0 && x.split == Some(Split::Train)));
    assert_eq!(file(r0[0]), d.join("ff/real/000/0.png"));
    assert_eq!(by_video("001")[0].split, Some(Split::Val));
    assert_eq!(by_video("002")[0].split, Some(Split::Test));
    let f = by_video("000_003");
    assert_eq!((f[0].label, f[0].split), (1.0, Some(Split::Train)));
    assert_eq!(f[0].mask, Some(d.join("ff/dfm/000_003/0.png")));
    // No `label` field: the class name decides (FF-DF → fake).
    let t = by_video("002_006");
    assert_eq!(t.len(), 2);
    assert!(t
        .iter()
        .all(|x| x.label == 1.0 && x.split == Some(Split::Test) && x.mask.is_none()));
    // Root override for relative frame paths.
    let s2 = load_deepfakebench(&j, Some(Path::new("/data/dfb"))).unwrap();
    assert!(s2.iter().all(|x| file(x).starts_with("/data/dfb")));
    assert_eq!(load(&j).unwrap(), s);

    // The split: explicit train/val win, test left out because val exists.
    let (tr, va) = split_by_video(s, 0.5, 0);
    assert_eq!(tr.len(), 3);
    assert!(tr.iter().all(|x| x.split == Some(Split::Train)));
    assert_eq!(va.len(), 1);
    assert_eq!(va[0].video, "001");
}

fn synthetic(rng: &mut Rng, n_videos: usize) -> Vec<Sample> {
    let mut out = Vec::new();
    for v in 0..n_videos {
        let frames = 1 + rng.below(5);
        let label = (rng.uniform() < 0.4) as u8 as f32;
        for f in 0..frames {
            out.push(Sample {
                source: Source::File(PathBuf::from(format!("v{v}/{f}.png"))),
                label,
                mask: None,
                video: format!("v{v}"),
                split: None,
            });
        }
    }
    // Interleave videos so the split cannot rely on contiguity.
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i + 1));
    }
    out
}

#[test]
fn split_by_video_never_separates_a_video() {
    let mut seen_different = false;
    for seed in 0..60u64 {
        let mut rng = Rng::new(seed);
        let n_videos = 2 + rng.below(30);
        let samples = synthetic(&mut rng, n_videos);
        let frac = [0.1, 0.2, 0.5, 0.8][seed as usize % 4];
        let (tr, va) = split_by_video(samples.clone(), frac, seed);
        assert_eq!(tr.len() + va.len(), samples.len());
        let tv: HashSet<&str> = tr.iter().map(|s| s.video.as_str()).collect();
        let vv: HashSet<&str> = va.iter().map(|s| s.video.as_str()).collect();
        assert!(tv.is_disjoint(&vv), "seed {seed}: a video on both sides");
        assert!(!va.is_empty(), "seed {seed}: empty validation");
        // Deterministic for a seed; input order kept.
        assert_eq!(
            split_by_video(samples.clone(), frac, seed),
            (tr.clone(), va.clone())
        );
        let pos = |s: &Sample| samples.iter().position(|x| x == s).unwrap();
        assert!(tr.windows(2).all(|w| pos(&w[0]) <= pos(&w[1])));
        // Roughly the asked fraction of videos.
        let n_val = vv.len() as f64;
        let n_all = (tv.len() + vv.len()) as f64;
        assert!(
            (n_val / n_all - frac).abs() <= 0.5 / n_all * 2.0 + 0.26,
            "seed {seed}: {n_val}/{n_all} vs {frac}"
        );
        let (_, va2) = split_by_video(samples, frac, seed + 1000);
        seen_different |= va2 != va;
    }
    assert!(seen_different, "the seed never changes the split");
}

#[test]
fn split_from_manifest_wins() {
    let mk = |video: &str, split: Option<Split>, label: f32| Sample {
        source: Source::File(PathBuf::from(format!("{video}.png"))),
        label,
        mask: None,
        video: video.into(),
        split,
    };
    let s = vec![
        mk("a", Some(Split::Val), 0.),
        mk("b", Some(Split::Train), 1.),
        mk("c", Some(Split::Test), 1.),
        mk("a", None, 0.), // follows its video's named split
        mk("d", None, 0.),
        mk("e", None, 1.),
    ];
    for seed in 0..10 {
        let (tr, va) = split_by_video(s.clone(), 0.0, seed);
        let tv: Vec<&str> = tr.iter().map(|x| x.video.as_str()).collect();
        let vv: Vec<&str> = va.iter().map(|x| x.video.as_str()).collect();
        assert_eq!(tv, ["b", "d", "e"]);
        assert_eq!(vv, ["a", "a"], "test left out when val exists");
    }
    // Without any `val`, `test` is the validation set.
    let s2: Vec<Sample> = s.into_iter().filter(|x| x.video != "a").collect();
    let (_, va) = split_by_video(s2, 0.0, 0);
    assert_eq!(
        va.iter().map(|x| x.video.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
}

#[test]
fn builtin_dataset_pairs_and_held_out_validation() {
    let (tr, va) = builtin(100, 40, 7);
    assert_eq!((tr.len(), va.len()), (100, 40));
    for set in [&tr, &va] {
        let fakes = set.iter().filter(|s| s.label == 1.0).count();
        assert_eq!(fakes * 2, set.len());
        for pair in set.chunks(2) {
            assert_eq!(pair[0].video, pair[1].video);
            match (&pair[0].source, &pair[1].source) {
                (Source::Procedural { seed }, Source::SelfBlend { base, .. }) => {
                    assert_eq!(**base, Source::Procedural { seed: *seed })
                }
                other => panic!("unexpected pair {other:?}"),
            }
            assert!(pair[1].has_mask());
        }
    }
    let scenes = |set: &[Sample]| -> HashSet<Source> {
        set.iter()
            .filter(|s| s.label == 0.0)
            .map(|s| s.source.clone())
            .collect()
    };
    assert_eq!(scenes(&tr).len(), 50);
    assert!(scenes(&tr).is_disjoint(&scenes(&va)));
    let tv: HashSet<&str> = tr.iter().map(|s| s.video.as_str()).collect();
    assert!(va.iter().all(|s| !tv.contains(s.video.as_str())));
    assert_eq!(builtin(100, 40, 7), (tr.clone(), va));
    assert_ne!(builtin(100, 40, 8).0, tr);
}

/// Links to folders: one back up the tree (a cycle), one to the dataset root, one from `real/`
/// into `fake/`, and two to the same folder elsewhere. The walk ends, every image is listed
/// once (under the first link in name order), and none under the other class's label.
#[cfg(unix)]
#[test]
fn folder_links_are_followed_once_and_cycles_end() {
    let d = tmpdir("links");
    write_img(&d.join("real/vid0/0001.png"), 12, 12, None, 1);
    write_img(&d.join("fake/vidA/0001.png"), 12, 12, None, 2);
    write_img(&d.join("outside/vidB/0001.png"), 12, 12, None, 3);
    std::os::unix::fs::symlink(&d, d.join("real/vid0/up")).unwrap();
    std::os::unix::fs::symlink("..", d.join("fake/vidA/loop")).unwrap();
    std::os::unix::fs::symlink(d.join("outside/vidB"), d.join("fake/vidB")).unwrap();
    std::os::unix::fs::symlink(d.join("outside/vidB"), d.join("fake/vidC")).unwrap();
    std::os::unix::fs::symlink(d.join("fake/vidA"), d.join("real/alias")).unwrap();
    let s = load_folder(&d).unwrap();
    for x in &s {
        let fake = file(x).starts_with(d.join("fake"));
        assert_eq!(x.label, if fake { 1.0 } else { 0.0 }, "{x:?}");
    }
    assert_eq!(
        names_under(&s, &d),
        [
            "real/vid0/0001.png",
            "fake/vidA/0001.png",
            "fake/vidB/0001.png"
        ]
    );
}
