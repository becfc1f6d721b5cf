//! Training: exact resume (whole epochs and mid-epoch), checkpoint pairs, the NaN stop that keeps
//! the last good checkpoint, and that the built-in default actually learns.

use std::path::{Path, PathBuf};

use prrnet::backend::cpu::CpuBackend;
use prrnet::data::dataset;
use prrnet::data::loader::LoaderOptions;
use prrnet::data::sbi::SbiParams;
use prrnet::io::tensors::TensorFile;
use prrnet::model::PrrNet;
use prrnet::train::{
    self, state, DataSource, LoaderSource, Outcome, Schedule, TrainBatch, TrainOptions,
};
use prrnet::{Config, Error, Result};

const BATCH: usize = 8;

fn cfg() -> Config {
    Config {
        size: 32,
        ..Config::preset("tiny").unwrap()
    }
}

fn source(seed: u64) -> LoaderSource {
    let (tr, va) = dataset::builtin(48, 16, seed);
    let opts = LoaderOptions {
        size: 32,
        batch: BATCH,
        seed,
        workers: 2,
        sbi: Some(SbiParams::builtin()),
        drop_last: true,
        fresh_generated: true,
        ..LoaderOptions::default()
    };
    LoaderSource::new(
        tr,
        va,
        opts,
        LoaderOptions::eval(32, BATCH, Some(SbiParams::builtin())),
    )
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("prrnet-train-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

fn new_net() -> PrrNet {
    let mut net = PrrNet::new(&cfg(), Box::new(CpuBackend::new()), BATCH, true).unwrap();
    net.init_weights(3).unwrap();
    net
}

fn params(net: &PrrNet) -> Vec<Vec<f32>> {
    net.entries()
        .iter()
        .map(|e| net.read(e.tensor).unwrap())
        .collect()
}

fn opts(out: &Path, epochs: usize, resume: bool, max_steps: Option<u64>) -> TrainOptions {
    TrainOptions {
        out: out.to_path_buf(),
        schedule: Schedule::from_scratch(epochs, 1e-3),
        seed: 7,
        resume,
        max_steps,
        profile_window: None,
    }
}

/// Two epochs in `dir` stopped after 3 updates, then resumed by a freshly built network: the
/// parameters at the end.
fn stop_after_3_then_resume(src: &dyn DataSource, dir: &Path) -> Vec<Vec<f32>> {
    let mut net = new_net();
    let o = train::train(&mut net, src, &opts(dir, 2, false, Some(3))).unwrap();
    assert_eq!(o, Outcome::StepLimit { global_step: 3 });
    let mut net = PrrNet::new(&cfg(), Box::new(CpuBackend::new()), BATCH, true).unwrap();
    train::train(&mut net, src, &opts(dir, 2, true, None)).unwrap();
    params(&net)
}

#[test]
fn resume_is_exact() {
    let src = source(1);
    // Two epochs straight.
    let a = tmpdir("straight");
    let mut net = new_net();
    train::train(&mut net, &src, &opts(&a, 2, false, None)).unwrap();
    let straight = params(&net);
    // One epoch, then resume for the second.
    let b = tmpdir("split");
    let mut net = new_net();
    train::train(&mut net, &src, &opts(&b, 1, false, None)).unwrap();
    // As if a crash came after epoch 2's log line but before its checkpoint: the resumed run
    // does epoch 2 again and the log keeps one line for it, the new one.
    let log_b = b.join("metrics.jsonl");
    let mut log = std::fs::read_to_string(&log_b).unwrap();
    log.push_str("{\"epoch\":1,\"loss\":99.0}\n");
    std::fs::write(&log_b, log).unwrap();
    let mut net = PrrNet::new(&cfg(), Box::new(CpuBackend::new()), BATCH, true).unwrap();
    train::train(&mut net, &src, &opts(&b, 2, true, None)).unwrap();
    assert!(
        params(&net) == straight,
        "1 + resume 1 epochs differ from 2 straight"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log_b)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let epochs: Vec<u64> = lines.iter().map(|v| v["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, [0, 1]);
    assert_ne!(lines[1]["loss"].as_f64(), Some(99.0));
    // Stopped mid-epoch (step 3 of 6 in epoch 1), then resumed.
    let c = tmpdir("mid");
    assert!(
        stop_after_3_then_resume(&src, &c) == straight,
        "mid-epoch resume differs"
    );
    // The run wrote everything it promises.
    for f in [
        "last.safetensors",
        "last.optim.safetensors",
        "best.safetensors",
        "best.optim.safetensors",
        "metrics.jsonl",
        "loss.png",
        "roc.png",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    // No temporary files left behind by the atomic writes.
    for d in [&a, &b, &c] {
        for e in std::fs::read_dir(d).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(!name.contains(".tmp-"), "temporary file left: {name}");
        }
        std::fs::remove_dir_all(d).ok();
    }
}

/// Training progress at `steps` updates, in `epoch` after `step_in_epoch` of its steps.
fn progress(epoch: usize, step_in_epoch: usize, steps: u64) -> state::TrainState {
    state::TrainState {
        epoch,
        step_in_epoch,
        global_step: steps,
        adam_steps: steps,
        best_auc: None,
        seed: 7,
    }
}

#[test]
fn checkpoint_pairs_must_match() {
    let d = tmpdir("pairs");
    let net = new_net();
    let mut st = state::TrainState {
        best_auc: Some(0.7),
        ..progress(1, 0, 6)
    };
    state::save(&net, &d, "a", &st).unwrap();
    st.global_step = 9;
    state::save(&net, &d, "b", &st).unwrap();
    // An optimizer file from another step is refused.
    std::fs::copy(d.join("b.optim.safetensors"), d.join("a.optim.safetensors")).unwrap();
    let mut net2 = new_net();
    let e = state::load(&mut net2, &d, "a").err().map(|e| e.to_string());
    assert!(e.unwrap().contains("does not belong"));
    // A damaged moment (NaN) in an otherwise matching pair is refused too; the intact pair loads.
    let optim_path = d.join("b.optim.safetensors");
    let intact = TensorFile::read(&optim_path).unwrap();
    let mut damaged = intact.clone();
    damaged.tensors.get_mut("adam.v").unwrap().data[5] = f32::NAN;
    damaged.write(&optim_path).unwrap();
    let e = state::load(&mut net2, &d, "b").err().map(|e| e.to_string());
    assert!(e.unwrap().contains("Adam moments hold non-finite"));
    intact.write(&optim_path).unwrap();
    assert_eq!(state::load(&mut net2, &d, "b").unwrap().global_step, 9);
    std::fs::remove_dir_all(&d).ok();
}

/// A checkpoint write that fails part way (here the model file cannot be created; a full disk
/// alike) leaves the previous pair whole and loadable, and no temporary file behind.
#[test]
fn a_failed_save_keeps_the_previous_pair() {
    let d = tmpdir("failed-save");
    let net = new_net();
    let mut st = progress(0, 3, 3);
    state::save(&net, &d, "last", &st).unwrap();
    let blocker = d.join(format!(".last.safetensors.tmp-{}", std::process::id()));
    std::fs::create_dir(&blocker).unwrap();
    st.global_step = 4;
    st.step_in_epoch = 4;
    assert!(state::save(&net, &d, "last", &st).is_err());
    std::fs::remove_dir(&blocker).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["last.optim.safetensors", "last.safetensors"]);
    let mut net2 = new_net();
    assert_eq!(state::load(&mut net2, &d, "last").unwrap().global_step, 3);
    state::save(&net, &d, "last", &st).unwrap();
    assert_eq!(state::load(&mut net2, &d, "last").unwrap().global_step, 4);
    std::fs::remove_dir_all(&d).ok();
}

/// A source whose training batch `index` of `epoch` (counted from the epoch's start, whatever
/// a resume skips) is `alter(epoch, index, batch)`.
struct Altered<F> {
    inner: LoaderSource,
    alter: F,
}

impl<F: Fn(usize, usize, TrainBatch) -> TrainBatch> DataSource for Altered<F> {
    fn train_batches(
        &self,
        epoch: usize,
        skip: usize,
    ) -> Box<dyn Iterator<Item = Result<TrainBatch>> + '_> {
        Box::new(
            self.inner
                .train_batches(epoch, skip)
                .enumerate()
                .map(move |(k, b)| Ok((self.alter)(epoch, skip + k, b?))),
        )
    }
    fn train_steps(&self) -> usize {
        self.inner.train_steps()
    }
    fn val_batches(&self) -> Box<dyn Iterator<Item = Result<TrainBatch>> + '_> {
        self.inner.val_batches()
    }
    fn skipped(&self) -> Vec<(PathBuf, String)> {
        self.inner.skipped()
    }
}

/// The first `m` samples of a batch.
fn first(b: TrainBatch, m: usize) -> TrainBatch {
    let per_image = b.image.len() / b.len();
    let per_mask = b.mask.len() / b.len();
    TrainBatch {
        image: b.image[..m * per_image].to_vec(),
        mask: b.mask[..m * per_mask].to_vec(),
        mask_weight: b.mask_weight[..m].to_vec(),
        label: b.label[..m].to_vec(),
        video: b.video[..m].to_vec(),
    }
}

/// Short and empty training batches (unreadable files) train, and a run stopped after them
/// resumes exactly: an empty batch is a step of the epoch without an update.
#[test]
fn short_and_empty_batches_train_and_resume_exactly() {
    // Epoch 0 lost files: batch 1 keeps 5 of its samples, batch 2 none (as when every file of
    // it is unreadable).
    let src = Altered {
        inner: source(1),
        alter: |epoch, index, b| match (epoch, index) {
            (0, 1) => first(b, 5),
            (0, 2) => first(b, 0),
            _ => b,
        },
    };
    let a = tmpdir("holed-straight");
    let mut net = new_net();
    train::train(&mut net, &src, &opts(&a, 2, false, None)).unwrap();
    let straight = params(&net);
    assert_ne!(straight, params(&new_net()));
    // Updates 1 (batch 0), 2 (batch 1, short), none (batch 2), 3 (batch 3): stop, resume.
    let b = tmpdir("holed-mid");
    assert!(
        stop_after_3_then_resume(&src, &b) == straight,
        "resume after an empty batch differs"
    );
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let d = tmpdir("nan");
    // Batch 2 of epoch 1 carries a NaN pixel.
    let src = Altered {
        inner: source(2),
        alter: |epoch, index, mut b: TrainBatch| {
            if (epoch, index) == (1, 2) {
                b.image[0] = f32::NAN;
            }
            b
        },
    };
    let mut net = new_net();
    train::train(&mut net, &src, &opts(&d, 1, false, None)).unwrap();
    let good = std::fs::read(d.join("last.safetensors")).unwrap();
    let mut net = PrrNet::new(&cfg(), Box::new(CpuBackend::new()), BATCH, true).unwrap();
    let err = train::train(&mut net, &src, &opts(&d, 2, true, None)).unwrap_err();
    match &err {
        Error::Numeric(msg) => assert!(msg.contains("epoch 2 step 3"), "{msg}"),
        other => panic!("expected a numeric error, got {other}"),
    }
    assert_eq!(std::fs::read(d.join("last.safetensors")).unwrap(), good);
    std::fs::remove_dir_all(&d).ok();
}
