//! `scripts/perf-report.py` on the committed H100 logs (docs/measurements/2026-11-27-h100/perf):
//! the per-stage floors of docs/PERFORMANCE.md are recomputed here from the printed GFLOP, GB
//! and measured peaks, so a unit slip in the report (it once printed compute floors 1000×
//! too small) fails a test instead of reaching the performance record.
//!
//! fp32 tables only: there every FLOP runs at the one fp32 rate, so the compute floor is
//! exactly GFLOP / (TFLOP/s) milliseconds, whatever the matrix-product share.

use std::path::Path;
use std::process::Command;

const LOGS: &str = "docs/measurements/2026-11-27-h100/perf";

fn report() -> String {
    report_of(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(LOGS),
        "committed",
    )
}

/// The report of the log folder `logs` (`tag` keeps concurrent tests' outputs apart).
fn report_of(logs: &Path, tag: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!(
        "prrnet-perf-report-{tag}-{}.md",
        std::process::id()
    ));
    let run = Command::new("python3")
        .current_dir(root)
        .arg("scripts/perf-report.py")
        .arg(logs)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("python3 must be installed to run scripts/perf-report.py");
    assert!(
        run.status.success(),
        "perf-report.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("perf-report.py wrote no tables");
    let _ = std::fs::remove_file(&out);
    text
}

/// The number after `label` in `line` (e.g. "fp32 " → 51.8 in "fp32 51.8 TFLOP/s").
fn number_after(line: &str, label: &str) -> f64 {
    let rest = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in {line}"))
        + label.len()..];
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("no number after `{label}` in {line}"))
}

fn cells(row: &str) -> Vec<&str> {
    row.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

fn close(what: &str, got: f64, want: f64) {
    // The table prints 3 decimals: allow that rounding plus 0.1%.
    assert!(
        (got - want).abs() <= 0.0006 + 1e-3 * want.abs(),
        "{what}: the report says {got}, the printed inputs give {want}"
    );
}

#[test]
fn fp32_floors_follow_from_the_printed_work_and_the_measured_peaks() {
    let text = report();
    let peaks = text
        .lines()
        .find(|l| l.starts_with("Measured peaks ("))
        .expect("the report names the measured peaks");
    let fp32_tflops = number_after(peaks, "fp32 ");
    let gbps = number_after(peaks, "memory ");
    assert!(fp32_tflops > 1.0 && gbps > 100.0, "peaks: {peaks}");

    let lines: Vec<&str> = text.lines().collect();
    let mut rows_checked = 0;
    for (k, line) in lines.iter().enumerate() {
        if !(line.starts_with("**w30") && line.contains(", fp32**")) {
            continue;
        }
        let header = lines[k + 2];
        assert!(
            header.contains("compute floor ms"),
            "unexpected table: {header}"
        );
        for row in lines[k + 4..].iter().take_while(|l| l.starts_with('|')) {
            let c = cells(row);
            if c[0] == "**step**" {
                continue;
            }
            let (gflop, gb): (f64, f64) = (c[1].parse().unwrap(), c[2].parse().unwrap());
            let (comp, memf, floor): (f64, f64, f64) = (
                c[3].parse().unwrap(),
                c[4].parse().unwrap(),
                c[5].parse().unwrap(),
            );
            let what = format!("{line} {}", c[0]);
            close(&format!("{what} compute floor"), comp, gflop / fp32_tflops);
            close(&format!("{what} memory floor"), memf, gb / gbps * 1e3);
            close(&format!("{what} floor"), floor, comp.max(memf));
            rows_checked += 1;
        }
    }
    // Inference and training at fp32: 6 + 14 stage rows.
    assert!(
        rows_checked >= 20,
        "only {rows_checked} fp32 stage rows found"
    );
    // The backbone forward at fp32 (1677 GFLOP at about 52 TFLOP/s) is compute-bound.
    let backbone = lines
        .iter()
        .find(|l| l.starts_with("| fwd.backbone |"))
        .unwrap();
    let c = cells(backbone);
    assert!(
        c[3].parse::<f64>().unwrap() > c[4].parse::<f64>().unwrap(),
        "{backbone}"
    );
}

#[test]
fn a_relation_version_override_run_gets_its_own_table() {
    // gpu-run.sh names a whole-network run under PRRNET_RELATION_VERSION=<v>
    // `relation_<v>_prrnet_bench_…`; its record must land in the override table beside the
    // default run, not among the relation-kernel benchmarks (whose logs also say "relation").
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(LOGS);
    let dir = std::env::temp_dir().join(format!("prrnet-perf-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let default_log = std::fs::read_to_string(dir.join("prrnet_bench_w30_train_fp32.log")).unwrap();
    // The same run, 10% slower, as if measured with the simt version.
    let slower = default_log.replace("\"ms_median\":2367.99", "\"ms_median\":2604.79");
    assert_ne!(
        slower, default_log,
        "the committed fp32 training log changed"
    );
    std::fs::write(
        dir.join("relation_simt_prrnet_bench_w30_train_fp32.log"),
        slower,
    )
    .unwrap();
    let text = report_of(&dir, "override");
    let _ = std::fs::remove_dir_all(&dir);
    let section = text
        .split("#### Relation version in the training step")
        .nth(1)
        .expect("the report has the relation-version section");
    let row = section
        .lines()
        .find(|l| l.starts_with("| w30 | 299 | 64 | fp32 | train |"))
        .unwrap_or_else(|| panic!("no override row in:{section}"));
    assert_eq!(
        cells(row)[5..],
        ["simt", "2367.99", "2604.79", "1.10×"],
        "{row}"
    );
    let benchmarks = text
        .split("#### Relation map benchmarks")
        .nth(1)
        .and_then(|t| t.split("#### Commands").next())
        .unwrap();
    assert!(
        !benchmarks.contains("relation_simt_prrnet_bench"),
        "the override run was listed among the relation benchmarks"
    );
}

#[test]
fn bench_conv_records_become_per_step_and_per_shape_tables() {
    let dir = std::env::temp_dir().join(format!("prrnet-perf-conv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // `mode` None: a record from before the field existed (a training step's).
    let rec = |mode: Option<&str>, kind: &str, algo: &str, shape: Option<&str>, ms: f64| {
        format!(
            "{{\"impl\":\"prrnet\",\"kind\":\"{kind}\",\"device\":\"test\",\"preset\":\"w30\",\
             \"size\":299,\"precision\":\"bf16\",{}\"algo\":\"{algo}\",\"pass\":\"forward\",\
             \"shape\":{},\"calls\":64,\"ms_median\":{ms},\"ms_min\":null,\"ms_max\":null,\
             \"tflops\":null}}",
            mode.map_or(String::new(), |m| format!("\"mode\":\"{m}\",")),
            shape.map_or("null".to_string(), |s| format!("\"{s}\""))
        )
    };
    let shape = "b64 75x75 30->30 k3 s1 p1";
    let train = [
        "$ prrnet bench-conv --precision bf16 --backward --json".to_string(),
        rec(None, "conv", "implicit", Some(shape), 0.4),
        rec(None, "conv", "halo", Some(shape), 0.2),
        rec(None, "conv_total", "implicit", None, 25.6),
        rec(None, "conv_total", "halo", None, 12.8),
    ];
    // The same shape and pass in the inference plan: rows of their own, not merged.
    let infer = [
        "$ prrnet bench-conv --precision bf16 --json".to_string(),
        rec(Some("infer"), "conv", "implicit", Some(shape), 0.3),
        rec(Some("infer"), "conv", "halo", Some(shape), 0.5),
        rec(Some("infer"), "conv_total", "implicit", None, 19.2),
        rec(Some("infer"), "conv_total", "halo", None, 32.0),
    ];
    std::fs::write(dir.join("prrnet_bench_conv_bf16.log"), train.join("\n")).unwrap();
    std::fs::write(
        dir.join("prrnet_bench_conv_infer_bf16.log"),
        infer.join("\n"),
    )
    .unwrap();
    let text = report_of(&dir, "conv");
    let _ = std::fs::remove_dir_all(&dir);
    let section = text
        .split("#### Convolution benchmarks")
        .nth(1)
        .and_then(|t| t.split("####").next())
        .expect("the report has the bench-conv section");
    let rows = |mode: &str| -> Vec<Vec<String>> {
        section
            .lines()
            .filter(|l| l.starts_with(&format!("| {mode} | bf16 |")))
            .map(|l| cells(l).into_iter().map(String::from).collect())
            .collect()
    };
    let quoted = format!("`{shape}`");
    let (t, i) = (rows("train"), rows("infer"));
    assert_eq!(t.len(), 2, "{section}");
    assert_eq!(t[0], ["train", "bf16", "forward", "64", "25.60", "12.80"]);
    assert_eq!(
        t[1],
        ["train", "bf16", "forward", &quoted, "64", "0.400", "0.200", "halo"]
    );
    assert_eq!(i.len(), 2, "{section}");
    assert_eq!(i[0], ["infer", "bf16", "forward", "64", "19.20", "32.00"]);
    assert_eq!(
        i[1],
        ["infer", "bf16", "forward", &quoted, "64", "0.300", "0.500", "implicit"]
    );
}

#[test]
fn kernel_choices_of_a_run_become_a_table() {
    let dir = std::env::temp_dir().join(format!("prrnet-perf-choices-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A `prrnet bench --json` record as bench.rs writes it, with two measured choices: one as
    // written before candidates were checked (no reference, nothing left out), one with a
    // candidate left out.
    let record = r#"{"impl":"prrnet","device":"test","preset":"w30","size":299,"batch":64,"precision":"bf16","mode":"infer","plan":"inference+graph","iters":10,"ms_median":80.0,"ms_min":79.0,"ms_max":81.0,"images_per_s":800.0,"peak_mem_bytes":1,"timer":"cuda-events","conv_algo":"auto","kernel_choices":[{"op":"conv","pass":"forward","shape":"b64 75x75 30->30 k3 s1 p1","precision":"bf16","epilogue":"bias+relu","chosen":"halo","paths":[{"path":"implicit","ms":0.428},{"path":"im2col","ms":0.61},{"path":"halo","ms":0.2}]},{"op":"relation","pass":"forward","shape":"b64 75x75 c450 n5","precision":"bf16","epilogue":"","chosen":"v3","paths":[{"path":"v2","ms":16.0},{"path":"v3","ms":14.0}],"reference":"v2","rejected":[{"path":"sym","reason":"differs from v2 by 3.10e-1 in the L2 norm"}]}]}"#;
    std::fs::write(
        dir.join("prrnet_bench_w30_infer_bf16.log"),
        format!("$ prrnet bench --json --precision bf16\n{record}\n"),
    )
    .unwrap();
    let text = report_of(&dir, "choices");
    let _ = std::fs::remove_dir_all(&dir);
    let section = text
        .split("#### Kernels chosen by measurement")
        .nth(1)
        .and_then(|t| t.split("####").next())
        .expect("the report has the kernel-choice section");
    assert!(
        section.contains("w30 299×299, batch 64, infer, bf16"),
        "{section}"
    );
    let row = |op: &str| -> Vec<String> {
        let line = section
            .lines()
            .find(|l| l.starts_with(&format!("| {op} |")))
            .unwrap_or_else(|| panic!("no {op} row in:{section}"));
        cells(line).into_iter().map(String::from).collect()
    };
    assert_eq!(
        row("conv"),
        [
            "conv",
            "forward",
            "`b64 75x75 30->30 k3 s1 p1`",
            "bias+relu",
            "halo",
            "implicit 0.428, im2col 0.610, halo 0.200",
            "—",
            "—"
        ]
    );
    assert_eq!(
        row("relation"),
        [
            "relation",
            "forward",
            "`b64 75x75 c450 n5`",
            "—",
            "v3",
            "v2 16.000, v3 14.000",
            "v2",
            "sym: differs from v2 by 3.10e-1 in the L2 norm"
        ]
    );
}

/// The report opens with the candidate kernels that runs left out (per kernel family, with
/// the number of shapes and the first reason) and the tuning journal's turns that never ended,
/// so the kernels that broke on a GPU are the first thing read.
#[test]
fn kernels_left_out_and_turns_that_never_ended_come_first() {
    let dir = std::env::temp_dir().join(format!("prrnet-perf-left-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let choice = |shape: &str, rejected: &str| {
        format!(
            r#"{{"op":"conv","pass":"forward","shape":"{shape}","precision":"bf16","epilogue":"","chosen":"implicit","paths":[{{"path":"implicit","ms":0.4}}],"reference":"implicit","rejected":[{rejected}]}}"#
        )
    };
    let quarantined = r#"{"path":"halo","reason":"quarantined: an earlier process stopped in its turn at conv forward b64 75x75 30->30 k3 s1 p1 bf16"}"#;
    let record = |mode: &str, choices: &[String]| {
        format!(
            r#"{{"impl":"prrnet","device":"test","preset":"w30","size":299,"batch":64,"precision":"bf16","mode":"{mode}","iters":5,"ms_median":80.0,"images_per_s":800.0,"kernel_choices":[{}]}}"#,
            choices.join(",")
        )
    };
    std::fs::write(
        dir.join("prrnet_bench_w30_infer_bf16_rerun1.log"),
        format!(
            "$ env PRRNET_TUNE_JOURNAL=j prrnet bench --json\n{}\n",
            record(
                "infer",
                &[
                    choice("b64 75x75 30->30 k3 s1 p1", quarantined),
                    choice("b64 38x38 60->60 k3 s1 p1", quarantined),
                    choice("b64 19x19 120->120 k3 s1 p1", ""),
                ]
            )
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("prrnet_bench_w30_train_bf16.log"),
        format!(
            "$ env PRRNET_TUNE_JOURNAL=j prrnet bench --train --json\n{}\n",
            record("train", &[choice("b64 38x38 60->60 k3 s1 p1", quarantined)])
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("tune-journal.tsv"),
        "# journal\n\
         begin\t1-1\t1\timplicit\tconv forward bf16\tconv forward b64 75x75 30->30 k3 s1 p1 bf16\n\
         end\t1-1\t1\n\
         begin\t1-1\t2\thalo\tconv forward bf16\tconv forward b64 75x75 30->30 k3 s1 p1 bf16\n\
         begin\t2-1\t1\tsym\trelation forward bf16\tpartial line",
    )
    .unwrap();
    let text = report_of(&dir, "left-out");
    let _ = std::fs::remove_dir_all(&dir);
    let first = text.split("#### ").nth(1).expect("a first section");
    assert!(first.starts_with("Kernels left out"), "{text}");
    let row = first
        .lines()
        .find(|l| l.starts_with("| `halo`"))
        .unwrap_or_else(|| panic!("no halo row in:\n{first}"));
    let c = cells(row);
    assert_eq!(c[1], "conv forward bf16");
    assert_eq!(c[2], "2", "two shapes: {row}");
    assert!(
        c[3].contains("rerun1") && c[3].contains("train_bf16.log"),
        "{row}"
    );
    assert!(c[4].starts_with("quarantined"), "{row}");
    assert_eq!(
        first.lines().filter(|l| l.starts_with("| `")).count(),
        1,
        "{first}"
    );
    assert!(
        first.contains("- `halo` in conv forward bf16, at `conv forward b64 75x75"),
        "{first}"
    );
    assert!(
        !first.contains("sym"),
        "a partial last line counts: {first}"
    );
    assert!(
        !first.contains("`implicit` in"),
        "an ended turn counts: {first}"
    );
}
