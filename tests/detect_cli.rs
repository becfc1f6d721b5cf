//! `prrnet detect` end to end: every input kind (grey, RGBA, 16-bit, JPEG, corrupt,
//! truncated, a 100000×100000 header, a non-image file, an empty folder), the JSONL and CSV
//! records, mask and overlay PNGs at the original sizes with collision-free names, manifests,
//! paths on standard input, `--strict`, `--threshold`, batching, bare state dicts, and
//! agreement with the library.

mod common;

use common::{noise, rgb_image, tiny_checkpoint, tmp_dir};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

use image::{DynamicImage, ImageBuffer, Luma, Rgb, Rgba};
use prrnet::detect::inputs::{output_name, parse_csv};
use prrnet::detect::{render, Detector, DetectorOptions};
use prrnet::imageio::{decode_file, DecodeLimits};
use prrnet::io::tensors::TensorFile;
use prrnet::DeviceRequest;
use serde_json::Value;

fn prrnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prrnet"))
}

fn png_bytes(img: &DynamicImage) -> Vec<u8> {
    let mut v = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png)
        .unwrap();
    v
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A well-formed PNG whose header claims 100000×100000 RGB pixels (30 GB decoded).
fn huge_header_png() -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    // A stored (uncompressed) zlib stream of a few zero bytes: the start of row 0.
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x04, 0x00, 0xFB, 0xFF, 0, 0, 0, 0],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

/// Original sizes of the images that must be scored, by file name relative to the folder.
fn write_inputs(dir: &Path) -> BTreeMap<String, (u32, u32)> {
    let mut ok = BTreeMap::new();
    let mut put = |name: &str, img: DynamicImage, fmt: image::ImageFormat| {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        img.save_with_format(&p, fmt).unwrap();
        ok.insert(name.to_string(), (img.width(), img.height()));
    };
    put(
        "grey.png",
        DynamicImage::ImageLuma8(ImageBuffer::from_fn(40, 30, |x, y| {
            Luma([noise(1, x, y, 0)])
        })),
        image::ImageFormat::Png,
    );
    put(
        "rgba.png",
        DynamicImage::ImageRgba8(ImageBuffer::from_fn(50, 70, |x, y| {
            Rgba([noise(2, x, y, 0), noise(2, x, y, 1), noise(2, x, y, 2), 128])
        })),
        image::ImageFormat::Png,
    );
    put(
        "rgb16.png",
        DynamicImage::ImageRgb16(ImageBuffer::from_fn(33, 45, |x, y| {
            Rgb([
                noise(3, x, y, 0) as u16 * 257,
                noise(3, x, y, 1) as u16 * 255,
                noise(3, x, y, 2) as u16 * 3,
            ])
        })),
        image::ImageFormat::Png,
    );
    put("photo.jpg", rgb_image(4, 80, 64), image::ImageFormat::Jpeg);
    // Same base name in two folders, and a name with a comma (CSV quoting).
    put(
        "sub1/face.png",
        rgb_image(5, 64, 64),
        image::ImageFormat::Png,
    );
    put(
        "sub2/face.png",
        rgb_image(6, 64, 64),
        image::ImageFormat::Png,
    );
    put(
        "odd, name.png",
        rgb_image(7, 61, 59),
        image::ImageFormat::Png,
    );

    // Inputs that must fail, each with an image extension so the folder search picks them up.
    let mut state = 0x1234_5678u32;
    let junk: Vec<u8> = (0..4000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    std::fs::write(dir.join("corrupt.jpg"), junk).unwrap();
    let full = png_bytes(&rgb_image(8, 64, 64));
    std::fs::write(dir.join("truncated.png"), &full[..full.len() / 2]).unwrap();
    std::fs::write(dir.join("huge.png"), huge_header_png()).unwrap();
    // A JPEG cut inside its header (the decoder's message ends with a newline).
    let jpeg = std::fs::read(dir.join("photo.jpg")).unwrap();
    std::fs::write(dir.join("truncated.jpg"), &jpeg[..40]).unwrap();
    // Not an image extension: not an input at all.
    std::fs::write(dir.join("notes.md"), "not an image").unwrap();
    ok
}

const FAILING: [&str; 4] = ["corrupt.jpg", "truncated.png", "truncated.jpg", "huge.png"];

fn run(args: &[&str], extra: &[&Path]) -> Output {
    let mut c = prrnet();
    c.arg("detect")
        .args(extra)
        .args(args)
        .args(["--device", "cpu"]);
    c.output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn jsonl(path: &Path) -> Vec<serde_json::Map<String, Value>> {
    records(&std::fs::read_to_string(path).unwrap())
}

/// JSONL records, one object per line.
fn records(text: &str) -> Vec<serde_json::Map<String, Value>> {
    text.lines()
        .map(|l| match serde_json::from_str::<Value>(l).unwrap() {
            Value::Object(m) => m,
            v => panic!("record is not an object: {v}"),
        })
        .collect()
}

fn keys(m: &serde_json::Map<String, Value>) -> Vec<&str> {
    let mut k: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
    k.sort();
    k
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Scores by path from JSONL records.
fn scores(recs: &[serde_json::Map<String, Value>]) -> BTreeMap<String, f32> {
    recs.iter()
        .filter_map(|r| {
            Some((
                r["path"].as_str()?.to_string(),
                r.get("score")?.as_f64()? as f32,
            ))
        })
        .collect()
}

#[test]
fn folder_of_every_input_kind() {
    let root = tmp_dir("detect-cli-folder");
    let w = tiny_checkpoint(&root, 21);
    let imgs = root.join("imgs");
    let ok = write_inputs(&imgs);
    let (out, masks, overlay) = (
        root.join("recs.jsonl"),
        root.join("masks"),
        root.join("overlay"),
    );
    let o = run(
        &[
            "--weights",
            s(&w),
            "--batch",
            "2",
            "--out",
            s(&out),
            "--masks",
            s(&masks),
            "--overlay",
            s(&overlay),
        ],
        &[&imgs],
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("11 inputs") && err.contains("7 scored") && err.contains("4 failed"),
        "summary: {err}"
    );
    assert!(err.contains("images/s"), "{err}");

    let recs = jsonl(&out);
    assert_eq!(recs.len(), ok.len() + FAILING.len(), "{recs:?}");
    let prefix = format!("{}/", imgs.display());
    let det = Detector::open(
        &w,
        DeviceRequest::Cpu,
        DetectorOptions {
            batch: 3,
            ..DetectorOptions::default()
        },
    )
    .unwrap();
    let mut seen = BTreeSet::new();
    for r in &recs {
        let path = r["path"].as_str().unwrap();
        let rel = path.strip_prefix(&prefix).expect("path under the folder");
        seen.insert(rel.to_string());
        if FAILING.contains(&rel) {
            assert_eq!(keys(r), ["error", "path"], "{r:?}");
            let msg = r["error"].as_str().unwrap();
            assert!(!msg.is_empty());
            // One line, no trailing whitespace (some decoders end their messages with '\n').
            assert_eq!(msg, msg.trim(), "{r:?}");
            assert!(!msg.contains('\n'), "{r:?}");
            continue;
        }
        assert_eq!(
            keys(r),
            ["mask_fraction", "path", "score", "verdict"],
            "{r:?}"
        );
        let score = r["score"].as_f64().unwrap() as f32;
        let frac = r["mask_fraction"].as_f64().unwrap() as f32;
        assert!((0.0..=1.0).contains(&score) && (0.0..=1.0).contains(&frac));
        let verdict = r["verdict"].as_str().unwrap();
        assert_eq!(verdict, if score >= 0.5 { "fake" } else { "real" });

        // The library, on the same file, gives the same result.
        let img = decode_file(Path::new(path), DecodeLimits::default()).unwrap();
        let d = det.detect(std::slice::from_ref(&img)).unwrap().remove(0);
        assert!(
            (d.score - score).abs() <= 1e-6,
            "{path}: {score} vs {}",
            d.score
        );
        assert!((d.mask_fraction - frac).abs() <= 1e-6);

        // Mask and overlay at the original size, named after the path inside the folder.
        let (w0, h0) = ok[rel];
        let name = output_name(rel);
        let m = image::open(masks.join(&name)).unwrap();
        assert_eq!((m.width(), m.height()), (w0, h0), "{rel}");
        assert!(
            matches!(m, DynamicImage::ImageLuma8(_)),
            "{rel}: mask is 8-bit grey"
        );
        let expect = render::mask_to_u8(&d.mask, d.mask_side, w0, h0);
        let got = m.into_luma8().into_raw();
        let worst = got
            .iter()
            .zip(&expect)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(
            worst <= 1,
            "{rel}: mask PNG differs from the library's mask by {worst}"
        );
        let ov = image::open(overlay.join(&name)).unwrap();
        assert_eq!((ov.width(), ov.height()), (w0, h0), "{rel}");
    }
    let want: BTreeSet<String> = ok
        .keys()
        .cloned()
        .chain(FAILING.iter().map(|s| s.to_string()))
        .collect();
    assert_eq!(seen, want);
    // One picture per scored input: same base names do not collide.
    for d in [&masks, &overlay] {
        let n = std::fs::read_dir(d).unwrap().count();
        assert_eq!(n, ok.len(), "{}", d.display());
    }
    // The oversized header is refused by the limits, not by running out of memory.
    let huge = recs
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("huge.png"))
        .unwrap();
    let msg = huge["error"].as_str().unwrap().to_lowercase();
    assert!(msg.contains("limit"), "{msg}");

    // --strict: the same run fails because some inputs failed; the records are still written.
    let out2 = root.join("strict.jsonl");
    let o = run(
        &[
            "--weights",
            s(&w),
            "--batch",
            "4",
            "--strict",
            "--out",
            s(&out2),
        ],
        &[&imgs],
    );
    assert!(!o.status.success(), "--strict with failures must fail");
    let recs2 = jsonl(&out2);
    assert_eq!(recs2.len(), recs.len());
    // Batch 4 instead of 2: the same scores.
    let (a, b) = (scores(&recs), scores(&recs2));
    assert_eq!(a.len(), ok.len());
    for (p, x) in &a {
        assert!((x - b[p]).abs() <= 1e-6, "{p}: {x} vs {}", b[p]);
    }
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn csv_records() {
    let root = tmp_dir("detect-cli-csv");
    let w = tiny_checkpoint(&root, 22);
    let imgs = root.join("imgs");
    let ok = write_inputs(&imgs);
    let out = root.join("recs.csv");
    let o = run(
        &["--weights", s(&w), "--batch", "3", "--out", s(&out)],
        &[&imgs],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        text.lines().next().unwrap(),
        "path,score,verdict,mask_fraction,error"
    );
    let rows = parse_csv(&text);
    assert_eq!(rows.len(), 1 + ok.len() + FAILING.len());
    let mut comma = false;
    for r in &rows[1..] {
        assert_eq!(r.len(), 5, "{r:?}");
        let rel = Path::new(&r[0]).strip_prefix(&imgs).unwrap();
        let rel = rel.to_str().unwrap();
        comma |= rel == "odd, name.png";
        if FAILING.contains(&rel) {
            assert!(r[1].is_empty() && r[2].is_empty() && r[3].is_empty());
            assert!(!r[4].is_empty());
        } else {
            let score: f32 = r[1].parse().unwrap();
            let frac: f32 = r[3].parse().unwrap();
            assert!((0.0..=1.0).contains(&frac));
            assert_eq!(r[2], if score >= 0.5 { "fake" } else { "real" });
            assert!(r[4].is_empty());
        }
    }
    assert!(comma, "the path with a comma reads back whole");
    // The same scores as JSON lines.
    let j = root.join("recs.jsonl");
    let o = run(
        &["--weights", s(&w), "--batch", "3", "--out", s(&j)],
        &[&imgs],
    );
    assert!(o.status.success());
    let js = scores(&jsonl(&j));
    for r in &rows[1..] {
        if !r[1].is_empty() {
            assert_eq!(r[1].parse::<f32>().unwrap(), js[&r[0]]);
        }
    }
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn empty_folder_and_nothing_scored_fail() {
    let root = tmp_dir("detect-cli-empty");
    let w = tiny_checkpoint(&root, 23);
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = root.join("recs.jsonl");
    let o = run(&["--weights", s(&w), "--out", s(&out)], &[&empty]);
    assert!(!o.status.success(), "an empty folder scores nothing");
    assert!(stderr(&o).contains("no input was scored"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "");
    // Only failures: also non-zero, but every input has its record.
    let bad = root.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("x.png"), b"\x89PNG\r\n\x1a\nnope").unwrap();
    let missing = root.join("missing.jpg");
    let o = run(&["--weights", s(&w), "--out", s(&out)], &[&bad, &missing]);
    assert!(!o.status.success());
    let recs = jsonl(&out);
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r.contains_key("error")));
    assert_eq!(recs[1]["path"].as_str().unwrap(), s(&missing));
    // A file where the masks folder should go: said in words, before any work.
    let o = run(&["--weights", s(&w), "--masks", s(&out)], &[&missing]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("recs.jsonl: is a file, but a folder is needed"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn manifests_resolve_relative_paths() {
    let root = tmp_dir("detect-cli-manifest");
    let w = tiny_checkpoint(&root, 24);
    let imgs = root.join("imgs");
    write_inputs(&imgs);
    let lists = root.join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    std::fs::write(
        lists.join("a.txt"),
        "# a comment\n../imgs/grey.png\n\n../imgs/sub1/face.png\n../imgs/nope.png\n",
    )
    .unwrap();
    std::fs::write(
        lists.join("b.csv"),
        "label,path\n1,../imgs/sub2/face.png\n0,\"../imgs/odd, name.png\"\n",
    )
    .unwrap();
    std::fs::write(
        lists.join("c.jsonl"),
        "{\"path\": \"../imgs/photo.jpg\", \"label\": 1}\n{\"label\": 0}\nnot json\n",
    )
    .unwrap();
    let out = root.join("recs.jsonl");
    let o = run(
        &["--weights", s(&w), "--batch", "2", "--out", s(&out)],
        &[
            &lists.join("a.txt"),
            &lists.join("b.csv"),
            &lists.join("c.jsonl"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = jsonl(&out);
    let paths: Vec<&str> = recs.iter().map(|r| r["path"].as_str().unwrap()).collect();
    let l = |p: &str| lists.join(p).display().to_string();
    assert_eq!(
        paths,
        vec![
            l("../imgs/grey.png"),
            l("../imgs/sub1/face.png"),
            l("../imgs/nope.png"),
            l("../imgs/sub2/face.png"),
            l("../imgs/odd, name.png"),
            l("../imgs/photo.jpg"),
            format!("{}:2", lists.join("c.jsonl").display()),
            format!("{}:3", lists.join("c.jsonl").display()),
        ]
    );
    let failed: Vec<bool> = recs.iter().map(|r| r.contains_key("error")).collect();
    assert_eq!(
        failed,
        [false, false, true, false, false, false, true, true]
    );

    // The same files through the folder: the same scores.
    let out2 = root.join("folder.jsonl");
    let o = run(&["--weights", s(&w), "--out", s(&out2)], &[&imgs]);
    assert!(o.status.success());
    let by_folder = scores(&jsonl(&out2));
    for r in &recs {
        if let Some(x) = r.get("score") {
            let p = r["path"].as_str().unwrap().replace("lists/../", "");
            assert!((x.as_f64().unwrap() as f32 - by_folder[&p]).abs() <= 1e-6);
        }
    }

    // `-`: paths on standard input, relative to the working folder, like a `.txt` manifest.
    let mut c = prrnet();
    c.current_dir(&root)
        .args(["detect", "-", "--device", "cpu", "--weights", s(&w)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"imgs/grey.png\n# a comment\n\nimgs/nope.png\n",
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let recs = records(&text);
    assert_eq!(recs.len(), 2, "{text}");
    assert_eq!(recs[0]["path"], "imgs/grey.png");
    let grey = imgs.join("grey.png").display().to_string();
    assert!((recs[0]["score"].as_f64().unwrap() as f32 - by_folder[&grey]).abs() <= 1e-6);
    assert_eq!(recs[1]["path"], "imgs/nope.png");
    assert!(recs[1]["error"].is_string() && !recs[1].contains_key("score"));
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn threshold_changes_the_verdict() {
    let root = tmp_dir("detect-cli-thr");
    let w = tiny_checkpoint(&root, 25);
    let img = root.join("x.png");
    rgb_image(31, 70, 70).save(&img).unwrap();
    let verdict = |thr: Option<String>| {
        let out = root.join("r.jsonl");
        let mut args = vec!["--weights", s(&w), "--out", s(&out)];
        let t;
        if let Some(x) = thr {
            t = x;
            args.extend(["--threshold", t.as_str()]);
        }
        let o = run(&args, &[&img]);
        assert!(o.status.success(), "{}", stderr(&o));
        // One input: the network is planned for one image, not padded to the default 16.
        assert!(stderr(&o).contains(", batch 1, on "), "{}", stderr(&o));
        let r = jsonl(&out).remove(0);
        (
            r["score"].as_f64().unwrap() as f32,
            r["verdict"].as_str().unwrap().to_string(),
        )
    };
    let (score, v) = verdict(None);
    assert_eq!(v, if score >= 0.5 { "fake" } else { "real" });
    assert_eq!(verdict(Some(format!("{score}"))).1, "fake");
    assert_eq!(verdict(Some(format!("{}", score.next_up()))).1, "real");
    assert_eq!(verdict(Some("0".into())).1, "fake");
    std::fs::remove_dir_all(root).ok();
}

/// Weights that are finite but so large that the score overflows to NaN: the record is an
/// error, not a verdict (NaN compares below every threshold, so it would read "real").
#[test]
fn non_finite_score_is_an_error_record() {
    let root = tmp_dir("detect-cli-nan");
    let w = tiny_checkpoint(&root, 27);
    let img = root.join("x.png");
    rgb_image(33, 64, 64).save(&img).unwrap();
    let mut f = TensorFile::read(&w).unwrap();
    for (key, big) in [("rr.cls.fc1.weight", 3e38f32), ("rr.cls.fc2.weight", 3e38)] {
        let a = f.tensors.get_mut(key).unwrap();
        for (i, v) in a.data.iter_mut().enumerate() {
            *v = if i % 2 == 0 { big } else { -big };
        }
    }
    let huge = root.join("huge.safetensors");
    f.write(&huge).unwrap();
    let out = root.join("r.jsonl");
    let o = run(&["--weights", s(&huge), "--out", s(&out)], &[&img]);
    assert!(!o.status.success(), "nothing was scored");
    let r = jsonl(&out).remove(0);
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("non-finite score"), "{e}");
    assert!(!r.contains_key("verdict"));
    std::fs::remove_dir_all(root).ok();
}

/// `prrnet detect … | head -1`: when the reader closes the pipe, the command ends quietly by
/// SIGPIPE, like other Unix tools (no panic, no "Broken pipe" error).
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let root = tmp_dir("detect-cli-pipe");
    let w = tiny_checkpoint(&root, 28);
    let img = root.join("x.png");
    rgb_image(34, 32, 32).save(&img).unwrap();
    // Far more records than a pipe's buffer holds, so writes go on after the reader is gone.
    let manifest = root.join("many.txt");
    std::fs::write(&manifest, "x.png\n".repeat(3000)).unwrap();
    let mut child = prrnet()
        .args([
            "detect",
            "--device",
            "cpu",
            "--size",
            "32",
            "--weights",
            s(&w),
            s(&manifest),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.signal(), Some(13), "{:?}: {err}", o.status);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn bare_state_dict_precision_and_stdout() {
    let root = tmp_dir("detect-cli-bare");
    let w = tiny_checkpoint(&root, 26);
    let img = root.join("x.png");
    rgb_image(32, 64, 64).save(&img).unwrap();
    let mut f = TensorFile::read(&w).unwrap();
    f.metadata.clear();
    let bare = root.join("bare.safetensors");
    f.write(&bare).unwrap();

    let o = run(&["--weights", s(&bare)], &[&img]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--preset"), "{}", stderr(&o));
    // Records go to stdout by default.
    let o = run(&["--weights", s(&bare), "--preset", "tiny"], &[&img]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = String::from_utf8(o.stdout).unwrap();
    let with_meta = run(&["--weights", s(&w)], &[&img]);
    assert_eq!(line, String::from_utf8(with_meta.stdout).unwrap());
    let r: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(r["path"].as_str().unwrap(), s(&img));

    for p in ["bf16", "tf32"] {
        let o = run(&["--weights", s(&w), "--precision", p], &[&img]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(p) && e.contains("fp32"), "{e}");
    }
    std::fs::remove_dir_all(root).ok();
}

/// Throughput of `detect` over a folder of 64 JPEGs against the pure forward of `bench`, for
/// the tiny preset at 64×64 (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn throughput_against_pure_forward() {
    let root = tmp_dir("detect-cli-speed");
    let w = tiny_checkpoint(&root, 27);
    let imgs = root.join("jpegs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..64 {
        rgb_image(100 + i, 256, 256)
            .save_with_format(imgs.join(format!("{i:03}.jpg")), image::ImageFormat::Jpeg)
            .unwrap();
    }
    // Decoding and preprocessing alone, on one thread.
    let t = std::time::Instant::now();
    for i in 0..64 {
        let img = decode_file(&imgs.join(format!("{i:03}.jpg")), DecodeLimits::default()).unwrap();
        std::hint::black_box(prrnet::imageio::preprocess(&img, 64));
    }
    eprintln!(
        "decode + preprocess: {:.2} ms per image on one thread",
        t.elapsed().as_secs_f64() * 1e3 / 64.0
    );
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let o = run(
            &["--weights", s(&w), "--batch", "16", "--out", "/dev/null"],
            &[&imgs],
        );
        assert!(o.status.success());
        eprintln!(
            "detect (process wall {:.2} s): {}",
            t.elapsed().as_secs_f64(),
            stderr(&o).lines().last().unwrap()
        );
    }
    // 256 inputs (the folder four times): start-up and the pipeline's fill weigh less.
    let o = run(
        &["--weights", s(&w), "--batch", "16", "--out", "/dev/null"],
        &[&imgs, &imgs, &imgs, &imgs],
    );
    eprintln!("detect x4: {}", stderr(&o).lines().last().unwrap());
    let o = prrnet()
        .args([
            "bench", "--device", "cpu", "--preset", "tiny", "--batch", "16", "--iters", "20",
        ])
        .output()
        .unwrap();
    eprintln!(
        "bench: {}",
        String::from_utf8_lossy(&o.stdout).lines().next().unwrap()
    );
    std::fs::remove_dir_all(root).ok();
}
