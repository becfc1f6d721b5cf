//! The GPU bundle's run script (scripts/gpu-run.sh) when a process it starts dies: the
//! results of everything else must still come.
//!
//! - A kernel that stops its process while it is measured: the whole-network benchmark fails,
//!   runs again without that kernel, and the report says which kernel was left out and why.
//!   The script runs as the bundle runs it (`run.sh` beside `bin/prrnet` and
//!   `scripts/perf-report.py`), on the tiny network. `PRRNET_TEST_TUNE_STOP=halo` stands in for
//!   a fault: every measurement fails right after a halo kernel's run, as a kernel fault would.
//!   In a training step that happens twice, once for the forward and once for the data
//!   gradient (two kernel families), so the script's two reruns are both needed; the second
//!   one succeeds. It needs a CUDA device (cuda-emu in scripts/test-emu.sh); without one it
//!   prints a skip message and passes, and `PRRNET_REQUIRE_GPU=1` makes it fail instead.
//! - A test executable that crashes: the tests it never started run in a second process.
//!
//! Not in the GPU bundle (it runs the script the bundle is made of).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A bundle laid out as scripts/gpu-bundle.sh makes it, in `dir/bundle`: `run.sh` and an empty
/// `bin/` (the caller adds the executables).
fn bundle_in(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(bundle.join("bin")).unwrap();
    std::fs::copy(root.join("scripts/gpu-run.sh"), bundle.join("run.sh")).unwrap();
    bundle
}

/// `run.sh LOGDIR phase` in `bundle` with `env` added; its summary (stdout).
fn run_script(bundle: &Path, logs: &Path, phase: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new("bash")
        .arg(bundle.join("run.sh"))
        .arg(logs)
        .arg(phase)
        .envs(env.iter().copied())
        .env_remove("PRRNET_TUNE_JOURNAL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "run.sh failed");
    stdout
}

/// The summary lists each step of `rows` (name, status).
fn assert_rows(summary: &str, rows: &[(&str, &str)]) {
    for (name, status) in rows {
        assert!(
            summary
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([*name, *status])),
            "summary row {name} {status}"
        );
    }
}

#[test]
fn a_kernel_that_stops_the_benchmark_is_left_out_of_its_rerun() {
    if common::open_gpu("a_kernel_that_stops_the_benchmark_is_left_out_of_its_rerun").is_none() {
        return;
    }
    let dir = common::tmp_dir("bundle-rerun");
    let bundle = bundle_in(&dir);
    std::fs::create_dir_all(bundle.join("scripts")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/perf-report.py"),
        bundle.join("scripts/perf-report.py"),
    )
    .unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_prrnet"), bundle.join("bin/prrnet")).unwrap();
    let logs = dir.join("logs");
    let summary = run_script(
        &bundle,
        &logs,
        "perf",
        &[
            ("PRRNET_GPU_BUDGET_S", "600"),
            ("PRRNET_PERF_PRESET", "tiny"),
            ("PRRNET_PERF_SIZE", "64"),
            ("PRRNET_PERF_BATCH", "2"),
            ("PRRNET_PERF_ITERS", "1"),
            (
                "PRRNET_GPU_ONLY",
                "^(conv_im2col_)?prrnet_bench_tiny_train_bf16",
            ),
            ("PRRNET_TEST_TUNE_STOP", "halo"),
            ("PRRNET_TUNE_MIN_GFLOP", "0"),
        ],
    );

    let step = |suffix: &str| logs.join(format!("prrnet_bench_tiny_train_bf16{suffix}.log"));
    for (suffix, family) in [
        ("", "conv forward bf16"),
        ("_rerun1", "conv backward_data bf16"),
    ] {
        let log = read(&step(suffix));
        assert!(
            log.contains("injected fault: kernel halo"),
            "{suffix}: {family}: {log}"
        );
    }
    let last = read(&step("_rerun2"));
    let record: serde_json::Value = last
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|r: &serde_json::Value| r.get("ms_median").is_some())
        .unwrap_or_else(|| panic!("the second rerun printed no result: {last}"));
    let choices = record["kernel_choices"].as_array().unwrap();
    let mut quarantined = std::collections::BTreeSet::new();
    for c in choices {
        assert_ne!(c["chosen"], "halo", "{c}");
        for r in c["rejected"].as_array().unwrap() {
            let reason = r["reason"].as_str().unwrap();
            assert!(r["path"] == "halo" && reason.contains("quarantined"), "{c}");
            quarantined.insert(c["pass"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        quarantined.into_iter().collect::<Vec<_>>(),
        ["backward_data", "forward"],
        "halo left out of both families it stopped"
    );
    assert!(
        !logs
            .join("conv_im2col_prrnet_bench_tiny_train_bf16.log")
            .exists(),
        "the fallback to the old kernels ran although the rerun succeeded"
    );
    let journal = read(&logs.join("tune-journal.tsv"));
    let begins = journal.lines().filter(|l| l.starts_with("begin\t")).count();
    let ends = journal.lines().filter(|l| l.starts_with("end\t")).count();
    assert_eq!(begins, ends + 2, "two turns left open:\n{journal}");
    let tables = read(&logs.join("PERFORMANCE-tables.md"));
    assert!(tables.contains("halo: quarantined"), "{tables}");
    assert_rows(
        &summary,
        &[
            ("prrnet_bench_tiny_train_bf16", "FAIL"),
            ("prrnet_bench_tiny_train_bf16_rerun1", "FAIL"),
            ("prrnet_bench_tiny_train_bf16_rerun2", "ok"),
        ],
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A test executable whose process dies mid-run (a crash; a hang that runs out of time is
/// handled the same way): the tests it never started run again in a process of their own, and
/// the one in flight is named, not run again. A shell script stands in for the libtest
/// executable (`--list`, `--exact NAMES`, `test NAME ... ok` lines); no GPU is needed.
#[test]
fn tests_after_a_crash_run_again_in_a_process_of_their_own() {
    let dir = common::tmp_dir("bundle-rest");
    let bundle = bundle_in(&dir);
    let fake = bundle.join("bin/gpu_fake");
    std::fs::write(
        &fake,
        r#"#!/usr/bin/env bash
# Tests alpha, beta, gamma, delta; beta kills the process.
all=(alpha beta gamma delta)
run=()
exact=0
while [ $# -gt 0 ]; do
    case "$1" in
        --list) for t in "${all[@]}"; do echo "$t: test"; done; echo; echo "4 tests"; exit 0 ;;
        --test-threads) shift ;;
        --exact) exact=1 ;;
        --*) ;;
        *) [ "$exact" = 1 ] && run+=("$1") ;;
    esac
    shift
done
[ ${#run[@]} -eq 0 ] && run=("${all[@]}")
echo "running ${#run[@]} tests"
for t in "${run[@]}"; do
    printf 'test %s ... ' "$t"
    echo "output of $t"
    [ "$t" = beta ] && kill -SEGV $$
    echo ok
done
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let logs = dir.join("logs");
    let summary = run_script(
        &bundle,
        &logs,
        "tests",
        &[
            ("PRRNET_GPU_BUDGET_S", "120"),
            ("PRRNET_GPU_ONLY", "^gpu_fake"),
        ],
    );
    let first = read(&logs.join("gpu_fake.log"));
    assert!(
        first.contains("test alpha ... output of alpha\nok"),
        "{first}"
    );
    let rest = read(&logs.join("gpu_fake_rest.log"));
    assert!(
        rest.lines()
            .next()
            .is_some_and(|l| l.ends_with("--exact delta gamma")),
        "{rest}"
    );
    for t in ["gamma", "delta"] {
        assert!(
            rest.contains(&format!("test {t} ... output of {t}\nok")),
            "{rest}"
        );
    }
    assert!(
        !rest.contains("test alpha") && !rest.contains("test beta"),
        "{rest}"
    );
    assert!(
        rest.contains("not run again: beta (in flight when gpu_fake stopped)"),
        "{rest}"
    );
    assert_rows(&summary, &[("gpu_fake", "FAIL"), ("gpu_fake_rest", "ok")]);
    std::fs::remove_dir_all(&dir).ok();
}
