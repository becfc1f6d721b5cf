//! `prrnet-train` as a user runs it: Ctrl-C finishes the step, writes a checkpoint and exits
//! cleanly; `--resume` continues from it with the run's recorded settings and refuses others;
//! a second run on a folder in use, or a new run over an old one, is refused;
//! a bad dataset path, a folder without a run or settings no run can use are an error
//! message.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A path in the temporary folder for this test process, with nothing there yet.
fn scratch(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("prrnet-train-cli-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&p).ok();
    p
}

fn train_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prrnet-train"))
}

const SMALL: [&str; 12] = [
    "--size",
    "32",
    "--batch",
    "8",
    "--builtin-train",
    "64",
    "--builtin-val",
    "16",
    "--device",
    "cpu",
    "--workers",
    "1",
];

#[test]
fn ctrl_c_writes_a_checkpoint_and_resume_continues() {
    let out = scratch("ctrl-c");
    let child = train_cmd()
        .args(SMALL)
        .args(["--epochs", "100000", "--out"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first epoch has produced a checkpoint, then interrupt.
    let start = Instant::now();
    while !out.join("last.safetensors").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // While it runs, a second run on the folder stops at once (the folder is locked).
    let o = train_cmd()
        .args(["--device", "cpu", "--resume"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("in use by another prrnet-train run"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("interrupt") && err.contains("stopped after step"),
        "{err}"
    );
    let step: u64 = err
        .split("stopped after step ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("step number");
    // A flag that contradicts the run's recorded settings is refused, naming it.
    let o = train_cmd()
        .args(["--batch", "16", "--precision", "bf16", "--resume"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains(
                "--batch 16 (the run has 8), --precision \"bf16\" (the run has \"fp32\")"
            ),
        "{err}"
    );
    // Resume (the settings from the run's config.json, only the free ones given) and stop
    // two steps later.
    let o = train_cmd()
        .args(["--device", "cpu", "--workers", "1", "--max-steps"])
        .arg((step + 2).to_string())
        .arg("--resume")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert!(
        err.contains(&format!("stopped after step {}", step + 2)),
        "{err}"
    );
    std::fs::remove_dir_all(&out).ok();
}

/// A new run never writes over an old one's checkpoints, nor into a folder another run holds:
/// the default folder moves on to `runs/prrnet-train-2`, and an explicit `--out` holding a run
/// is refused, pointing at `--resume`.
#[test]
fn a_new_run_never_overwrites_an_old_one() {
    let cwd = scratch("again");
    std::fs::create_dir_all(&cwd).unwrap();
    let fresh = |extra: &[&str]| {
        let o = train_cmd()
            .current_dir(&cwd)
            .args(SMALL)
            .args(["--max-steps", "1"])
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // A folder that another run holds (its lock, taken here) but that has no checkpoint yet:
    // an explicit --out is refused, the default moves on.
    std::fs::create_dir_all(cwd.join("runs/prrnet-train")).unwrap();
    let held = std::fs::File::create(cwd.join("runs/prrnet-train/train.lock")).unwrap();
    held.try_lock().unwrap();
    let (ok, err) = fresh(&["--out", "runs/prrnet-train"]);
    assert!(
        !ok && err.contains("in use by another prrnet-train run"),
        "{err}"
    );
    let (ok, err) = fresh(&[]);
    assert!(
        ok && err.contains("continue with --resume runs/prrnet-train-2"),
        "{err}"
    );
    drop(held);
    std::fs::remove_dir_all(cwd.join("runs")).unwrap();
    for folder in ["runs/prrnet-train", "runs/prrnet-train-2"] {
        let (ok, err) = fresh(&[]);
        assert!(ok, "{err}");
        assert!(
            err.contains(&format!("continue with --resume {folder}")),
            "{err}"
        );
        assert!(cwd.join(folder).join("last.safetensors").is_file());
    }
    let first = cwd.join("runs/prrnet-train/last.safetensors");
    let before = std::fs::read(&first).unwrap();
    let (ok, err) = fresh(&["--seed", "9", "--out", "runs/prrnet-train"]);
    assert!(
        !ok && err.contains("already holds a training run (last.safetensors)")
            && err.contains("--resume runs/prrnet-train"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&first).unwrap(),
        before,
        "the old run was touched"
    );
    std::fs::remove_dir_all(&cwd).ok();
}

#[test]
fn resuming_a_folder_without_a_run_is_an_error_that_creates_nothing() {
    let dir = scratch("no-run");
    let o = train_cmd().arg("--resume").arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cannot resume") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!dir.exists(), "a failed resume created {}", dir.display());
}

#[test]
fn settings_no_run_can_use_are_refused_before_anything_is_written() {
    let dir = scratch("bad-settings");
    for (args, says) in [
        (&["--batch", "0"][..], "--batch must be at least 1"),
        (&["--epochs", "0"], "--epochs must be at least 1"),
        (&["--lr", "nan"], "--lr must be a positive number, not NaN"),
        (
            &["--lr=-1e-3"],
            "--lr must be a positive number, not -0.001",
        ),
        (
            &["--lr-frozen", "0"],
            "--lr-frozen must be a positive number, not 0",
        ),
        (
            &["--lambda", "inf"],
            "--lambda must be a number ≥ 0, not inf",
        ),
        (
            &["--self-blend", "2"],
            "--self-blend is a probability (0 to 1), not 2",
        ),
        (
            &["--freeze-epochs", "2"],
            "--freeze-epochs needs --backbone",
        ),
        // Found only once the network is built, still before the output folder is made.
        (
            &["--backbone", "/nonexistent/hrnet_w30.safetensors"],
            "/nonexistent/hrnet_w30.safetensors",
        ),
        (
            &["--val-fraction", "10"],
            "--val-fraction is a fraction (0 to 1), not 10",
        ),
    ] {
        let o = train_cmd()
            .args(["--device", "cpu", "--out"])
            .arg(&dir)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{args:?}: {err}");
        assert!(!dir.exists(), "{args:?} created {}", dir.display());
    }
}

/// A folder dataset of `videos` procedural scenes at 32×32: `real/vK/0.png` and, with
/// `fakes`, their self-blended `fake/vK/0.png`.
fn write_folder(root: &std::path::Path, videos: usize, fakes: bool) {
    use prrnet::data::{procedural, sbi};
    let s = 32;
    let save = |path: std::path::PathBuf, rgb: &[f32]| {
        let bytes: Vec<u8> = rgb.iter().map(|v| (v * 255.0).round() as u8).collect();
        image::RgbImage::from_raw(s as u32, s as u32, bytes)
            .unwrap()
            .save(path)
            .unwrap();
    };
    let mut rng = prrnet::rng::Rng::new(3);
    for k in 0..videos {
        for d in ["real", "fake"] {
            std::fs::create_dir_all(root.join(d).join(format!("v{k}"))).unwrap();
        }
        let scene = procedural::scene(&mut rng, s);
        save(root.join(format!("real/v{k}/0.png")), &scene);
        if fakes {
            let (fake, _) = sbi::self_blend(&scene, s, &mut rng, &sbi::SbiParams::builtin());
            save(root.join(format!("fake/v{k}/0.png")), &fake);
        }
    }
}

/// `prrnet-train ARGS --data ROOT/data --out ROOT/out` on the CPU with one loader thread: whether
/// it succeeded, and its stderr.
fn train_on_folder(root: &std::path::Path, args: &[&str]) -> (bool, String) {
    let o = train_cmd()
        .args([
            "--size",
            "32",
            "--batch",
            "4",
            "--device",
            "cpu",
            "--workers",
            "1",
        ])
        .args(args)
        .arg("--data")
        .arg(root.join("data"))
        .arg("--out")
        .arg(root.join("out"))
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A broken file in a folder dataset is met every epoch (and by every validation); it is
/// reported once, and counted at the end.
#[test]
fn a_broken_file_is_reported_once_over_epochs() {
    let dir = scratch("broken");
    write_folder(&dir.join("data"), 8, true);
    std::fs::write(dir.join("data/real/v0/broken.png"), b"not a png").unwrap();
    let (ok, err) = train_on_folder(&dir, &["--epochs", "3", "--val-fraction", "0.25"]);
    assert!(ok, "{err}");
    assert_eq!(err.matches("broken.png").count(), 1, "{err}");
    assert!(err.contains("1 files could not be used"), "{err}");
    assert!(!err.contains("warning"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Every file unreadable: the first epoch says so and the run fails, instead of "finishing"
/// having learnt nothing.
#[test]
fn a_training_set_of_unreadable_files_fails() {
    let dir = scratch("unreadable");
    write_folder(&dir.join("data"), 8, true);
    for k in 0..8 {
        for d in ["real", "fake"] {
            std::fs::write(dir.join(format!("data/{d}/v{k}/0.png")), b"not a png").unwrap();
        }
    }
    let (ok, err) = train_on_folder(&dir, &["--epochs", "2", "--val-fraction", "0.25"]);
    assert!(!ok, "{err}");
    assert!(err.contains("epoch 1 read no training sample"), "{err}");
    assert!(!err.contains("epoch 1 done"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Reals only and no self-blending: the run says its classifier cannot learn.
#[test]
fn a_training_set_of_one_class_is_warned_about() {
    let dir = scratch("reals-only");
    write_folder(&dir.join("data"), 8, false);
    let (ok, err) = train_on_folder(&dir, &["--max-steps", "1"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: the training set has no fakes and --self-blend is 0"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_missing_dataset_is_an_error_message() {
    let o = train_cmd()
        .args(SMALL)
        .args(["--data", "/nonexistent/dataset", "--out"])
        .arg(std::env::temp_dir().join("prrnet-train-cli-missing"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("error:") && !err.contains("panicked"),
        "{err}"
    );
}
