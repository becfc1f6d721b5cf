//! The trainer's [`DataSource`] over the data loader: training batches per epoch (shuffled,
//! augmented; shorter, even empty, where files could not be read), validation in fixed order,
//! and the files skipped on the way.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::trainer::{DataSource, TrainBatch};
use crate::data::dataset::Sample;
use crate::data::loader::{BatchData, Loader, LoaderOptions};
use crate::error::Result;

pub struct LoaderSource {
    pub train: Arc<Vec<Sample>>,
    pub val: Arc<Vec<Sample>>,
    /// Options for training epochs (`epoch` is set per call).
    pub train_opts: LoaderOptions,
    pub val_opts: LoaderOptions,
    skipped: Arc<Mutex<Skipped>>,
}

/// The files skipped so far, in the order first met, each once.
#[derive(Default)]
struct Skipped {
    list: Vec<(PathBuf, String)>,
    known: HashSet<(PathBuf, String)>,
}

impl LoaderSource {
    pub fn new(
        train: Vec<Sample>,
        val: Vec<Sample>,
        train_opts: LoaderOptions,
        val_opts: LoaderOptions,
    ) -> LoaderSource {
        LoaderSource {
            train: Arc::new(train),
            val: Arc::new(val),
            train_opts,
            val_opts,
            skipped: Arc::default(),
        }
    }
}

fn convert(b: BatchData) -> TrainBatch {
    TrainBatch {
        image: b.image,
        mask: b.mask,
        mask_weight: b.mask_weight,
        label: b.label,
        video: b.video,
    }
}

/// Iterates a loader, adding the files it skipped to the source's list after every batch and
/// printing each one the first time any epoch meets it (a broken file is met every epoch).
struct Recording {
    loader: Loader,
    skip: usize,
    sink: Arc<Mutex<Skipped>>,
    /// The loader's skip count when last recorded.
    recorded: usize,
}

impl Recording {
    fn new(loader: Loader, skip: usize, sink: Arc<Mutex<Skipped>>) -> Recording {
        Recording {
            loader,
            skip,
            sink,
            recorded: 0,
        }
    }

    fn record_skipped(&mut self) {
        let count = self.loader.skipped_count();
        if count == self.recorded {
            return;
        }
        self.recorded = count;
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        for s in self.loader.skipped() {
            if sink.known.insert(s.clone()) {
                crate::progress::eprint_line(&format!("skipped {}: {}", s.0.display(), s.1));
                sink.list.push(s);
            }
        }
    }
}

impl Iterator for Recording {
    type Item = Result<TrainBatch>;
    fn next(&mut self) -> Option<Result<TrainBatch>> {
        loop {
            let batch = self.loader.next();
            self.record_skipped();
            match batch {
                None => return None,
                Some(_) if self.skip > 0 => self.skip -= 1,
                Some(r) => return Some(r.map(convert)),
            }
        }
    }
}

impl DataSource for LoaderSource {
    fn train_batches(
        &self,
        epoch: usize,
        skip: usize,
    ) -> Box<dyn Iterator<Item = Result<TrainBatch>> + '_> {
        let opts = LoaderOptions {
            epoch: epoch as u64,
            drop_last: true,
            ..self.train_opts.clone()
        };
        match Loader::new(self.train.clone(), opts) {
            Ok(loader) => Box::new(Recording::new(loader, skip, self.skipped.clone())),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn train_steps(&self) -> usize {
        self.train.len() / self.train_opts.batch
    }

    fn val_batches(&self) -> Box<dyn Iterator<Item = Result<TrainBatch>> + '_> {
        match Loader::new(self.val.clone(), self.val_opts.clone()) {
            Ok(loader) => Box::new(Recording::new(loader, 0, self.skipped.clone())),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn skipped(&self) -> Vec<(PathBuf, String)> {
        self.skipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .clone()
    }
}
