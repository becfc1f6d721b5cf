//! The whole network, written once against [`Backend`]: backbone → aggregation → PR → RR →
//! losses, forward and backward, with every tensor planned for one batch size and input side
//! and allocated once (parameters, BatchNorm statistics, activations, and — for training —
//! parameter gradients, activation gradients and Adam moments).

use super::hrnet::HrNet;
use super::layers::{Builder, Ctx, ParamEntry, ParamKind};
use super::pr::{Aggregation, PrModule};
use super::rr::RrModule;
use crate::backend::{AdamArgs, Backend, ResizeShape};
use crate::config::{Config, LAMBDA};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{BufId, Tensor};

/// A named array in PyTorch layout: name, shape, row-major data.
pub type NamedArray = (String, Vec<usize>, Vec<f32>);

/// How a forward/backward pass treats BatchNorm and the backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// BatchNorm with batch statistics (and running-stat updates).
    pub train_bn: bool,
    /// Backbone fixed: its BatchNorm in eval mode and no backbone gradients.
    pub frozen_backbone: bool,
}

impl Mode {
    pub const EVAL: Mode = Mode {
        train_bn: false,
        frozen_backbone: false,
    };
    pub const TRAIN: Mode = Mode {
        train_bn: true,
        frozen_backbone: false,
    };
}

/// Loss values read back after a forward pass with labels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Losses {
    pub loss: f32,
    pub loc: f32,
    pub cls: f32,
}

/// Inputs of one batch in PyTorch layouts.
pub struct Batch<'a> {
    /// `[B, 3, S, S]`, already normalised.
    pub image: &'a [f32],
    /// `[B, 1, S, S]` in [0, 1].
    pub mask: Option<&'a [f32]>,
    /// `[B]`, 1 = fake.
    pub label: Option<&'a [f32]>,
    /// `[B]`, 1 when the sample's mask counts for the localisation loss (default: all 1 when a
    /// mask is given).
    pub mask_weight: Option<&'a [f32]>,
}

struct Buffers {
    params: BufId,
    acts: BufId,
    grads: Option<GradBuffers>,
    /// Inference plans: BatchNorm-folded conv weights and biases.
    folded: Option<BufId>,
}

struct GradBuffers {
    dparams: BufId,
    dacts: BufId,
    adam_m: BufId,
    adam_v: BufId,
}

/// Loss-side tensors.
struct LossTensors {
    mask_in: Tensor,
    pool: ResizeShape,
    target: Tensor,
    label: Tensor,
    weight: Tensor,
    ones: Tensor,
    loss_loc: Tensor,
    loss_cls: Tensor,
}

pub struct PrrNet {
    pub cfg: Config,
    pub batch: usize,
    be: Box<dyn Backend>,
    bufs: Buffers,
    entries: Vec<ParamEntry>,
    params_len: usize,
    state_len: usize,
    acts_len: usize,
    /// Trainable parameters of the backbone occupy `[0, backbone_len)` of the parameter arena.
    backbone_len: usize,
    pub hrnet: HrNet,
    pub agg: Aggregation,
    pub pr: PrModule,
    pub rr: RrModule,
    /// Weight λ of the classification loss (SPEC §7; 0.1 by default).
    pub lambda: f32,
    lt: LossTensors,
    labelled: bool,
    loc_scale: f32,
    adam_steps: u64,
    /// Inference plans: whether the folded weights reflect the current parameters and
    /// statistics (every write through this object clears it; the next forward refolds).
    folded_fresh: std::cell::Cell<bool>,
    /// The recorded eval-mode forward ([`PrrNet::forward_graph`]).
    graph: Option<usize>,
    /// When set, every stage records timing markers (start, end) here; they are read once,
    /// by [`PrrNet::take_stage_times`].
    profile: Option<std::cell::RefCell<Vec<StageMarks>>>,
}

/// A stage's name and the backend markers around it.
type StageMarks = (&'static str, crate::backend::Marker, crate::backend::Marker);

struct Plan {
    hrnet: HrNet,
    agg: Aggregation,
    pr: PrModule,
    rr: RrModule,
    lt: LossTensors,
    bd: Builder,
    backbone_len: usize,
}

fn plan(
    cfg: &Config,
    b: usize,
    params: BufId,
    state: BufId,
    acts: BufId,
    folded: Option<BufId>,
    reuse: Option<&super::memplan::ReusePlan>,
) -> Plan {
    let mut bd = Builder::new(params, state, acts);
    if let Some(f) = folded {
        bd = bd.inference(f);
    }
    if let Some(r) = reuse {
        // The backbone asks for its activations first: they take the planned offsets.
        bd = bd.with_remap(r.offsets.clone(), r.region);
    }
    let hrnet = HrNet::new(&mut bd, cfg, b);
    let backbone_len = bd.params.used;
    let agg = Aggregation::new(&mut bd, cfg, b);
    let pr = PrModule::new(&mut bd, cfg, b);
    let rr = RrModule::new(&mut bd, cfg, b);
    let s = cfg.size;
    let h = cfg.feature_side();
    let lt = LossTensors {
        mask_in: bd.act(b * s * s),
        pool: ResizeShape {
            b,
            c: 1,
            hi: s,
            wi: s,
            ho: h,
            wo: h,
        },
        target: bd.act(b * h * h),
        label: bd.act(b),
        weight: bd.act(b),
        ones: bd.act(b),
        loss_loc: bd.act(1),
        loss_cls: bd.act(1),
    };
    Plan {
        hrnet,
        agg,
        pr,
        rr,
        lt,
        bd,
        backbone_len,
    }
}

impl PrrNet {
    /// Plan and allocate the network for `batch` images of `cfg.size`². `with_grads` also
    /// allocates what training needs (gradients and Adam moments).
    pub fn new(
        cfg: &Config,
        be: Box<dyn Backend>,
        batch: usize,
        with_grads: bool,
    ) -> Result<PrrNet> {
        Self::build(cfg, be, batch, with_grads, false)
    }

    /// The batch to plan for `inputs` images given at most `max` per forward pass: the inputs
    /// split into as few batches as `max` allows, each as full as the others. The network is
    /// planned for a fixed batch and a short last batch is padded with images whose results are
    /// thrown away, so 17 inputs at `max` 16 run as 9 + 8 (one padded slot), not 16 + 1 (fifteen).
    pub fn even_batch(inputs: usize, max: usize) -> usize {
        if inputs == 0 || max == 0 {
            return max;
        }
        inputs.div_ceil(inputs.div_ceil(max))
    }

    /// Plan and allocate the network for inference only (eval-mode BatchNorm, no backward):
    /// every backbone conv + BatchNorm unit runs as one convolution with folded weights and a
    /// bias/residual/ReLU epilogue, and its conv output shares memory with its output. Folding
    /// happens at the first forward after the parameters change ([`PrrNet::fold_batchnorm`]).
    pub fn new_inference(cfg: &Config, be: Box<dyn Backend>, batch: usize) -> Result<PrrNet> {
        Self::build(cfg, be, batch, false, true)
    }

    /// Whether this network was planned by [`PrrNet::new_inference`].
    pub fn is_inference(&self) -> bool {
        self.bufs.folded.is_some()
    }

    fn build(
        cfg: &Config,
        mut be: Box<dyn Backend>,
        batch: usize,
        with_grads: bool,
        inference: bool,
    ) -> Result<PrrNet> {
        cfg.validate()?;
        if batch == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        // Pass 1 sizes the arenas; pass 2 builds the same plan over the real buffers.
        let reuse = if inference {
            Some(super::memplan::backbone_reuse(cfg, batch)?)
        } else {
            None
        };
        let dry = plan(
            cfg,
            batch,
            BufId(0),
            BufId(1),
            BufId(2),
            inference.then_some(BufId(3)),
            reuse.as_ref(),
        );
        let (pl, sl, al) = (dry.bd.params.used, dry.bd.state.used, dry.bd.acts.used);
        let fl = dry.bd.folded.as_ref().map_or(0, |a| a.used);
        let name = be.name();
        let oom = |e: Error, what: &str, bytes: usize| match e {
            Error::OutOfMemory(_) | Error::Device(_) => Error::OutOfMemory(format!(
                "{what} for batch {batch} at {}×{} needs {:.1} MiB on {name}: {e}",
                cfg.size,
                cfg.size,
                bytes as f64 / (1 << 20) as f64
            )),
            e => e,
        };
        let params = be.alloc(pl).map_err(|e| oom(e, "parameters", pl * 4))?;
        let state = be
            .alloc(sl)
            .map_err(|e| oom(e, "BatchNorm statistics", sl * 4))?;
        let acts = be.alloc(al).map_err(|e| oom(e, "activations", al * 4))?;
        let grads = if with_grads {
            Some(GradBuffers {
                dparams: be
                    .alloc(pl)
                    .map_err(|e| oom(e, "parameter gradients", pl * 4))?,
                dacts: be
                    .alloc(al)
                    .map_err(|e| oom(e, "activation gradients", al * 4))?,
                adam_m: be.alloc(pl).map_err(|e| oom(e, "Adam moments", pl * 4))?,
                adam_v: be.alloc(pl).map_err(|e| oom(e, "Adam moments", pl * 4))?,
            })
        } else {
            None
        };
        let folded = if inference {
            Some(be.alloc(fl).map_err(|e| oom(e, "folded weights", fl * 4))?)
        } else {
            None
        };
        let p = plan(cfg, batch, params, state, acts, folded, reuse.as_ref());
        let net = PrrNet {
            cfg: cfg.clone(),
            batch,
            be,
            bufs: Buffers {
                params,
                acts,
                grads,
                folded,
            },
            entries: p.bd.entries,
            params_len: pl,
            state_len: sl,
            acts_len: al,
            backbone_len: p.backbone_len,
            hrnet: p.hrnet,
            agg: p.agg,
            pr: p.pr,
            rr: p.rr,
            lt: p.lt,
            lambda: LAMBDA,
            labelled: false,
            loc_scale: 0.0,
            adam_steps: 0,
            folded_fresh: std::cell::Cell::new(false),
            graph: None,
            profile: None,
        };
        net.be.fill(net.lt.ones, 1.0)?;
        Ok(net)
    }

    pub fn backend(&self) -> &dyn Backend {
        self.be.as_ref()
    }

    /// Every named parameter and running statistic, in a fixed order (backbone first).
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    pub fn entry(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Sizes (in f32 elements) of the parameter, state and activation arenas.
    pub fn arena_sizes(&self) -> (usize, usize, usize) {
        (self.params_len, self.state_len, self.acts_len)
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.trainable)
            .map(|e| e.tensor.len)
            .sum()
    }

    /// Initialise every parameter per SPEC §8 from `seed`: convolutions Kaiming-normal (fan_out,
    /// ReLU), conv/linear biases and linear weights PyTorch's default uniform, BatchNorm 1/0,
    /// running statistics 0/1.
    pub fn init_weights(&mut self, seed: u64) -> Result<()> {
        self.folded_fresh.set(false);
        let mut rng = Rng::new(seed);
        for e in &self.entries {
            let n = e.tensor.len;
            let data: Vec<f32> = match e.kind {
                ParamKind::ConvWeight { cout, k, .. } => {
                    let std = (2.0 / (cout * k * k) as f64).sqrt();
                    rng.vec(n, |r| r.normal() * std)
                }
                ParamKind::ConvBias { fan_in } | ParamKind::LinearBias { fan_in } => {
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    rng.vec(n, |r| r.range(-bound, bound))
                }
                ParamKind::LinearWeight { inp, .. } => {
                    let bound = 1.0 / (inp as f64).sqrt();
                    rng.vec(n, |r| r.range(-bound, bound))
                }
                ParamKind::BnWeight | ParamKind::RunningVar => vec![1.0; n],
                ParamKind::BnBias | ParamKind::RunningMean => vec![0.0; n],
            };
            self.be.upload(e.tensor, &data)?;
        }
        self.adam_steps = 0;
        if let Some(g) = &self.bufs.grads {
            self.be
                .fill(Tensor::new(g.adam_m, 0, self.params_len), 0.0)?;
            self.be
                .fill(Tensor::new(g.adam_v, 0, self.params_len), 0.0)?;
        }
        Ok(())
    }

    /// Read a tensor back to the host.
    pub fn read(&self, t: Tensor) -> Result<Vec<f32>> {
        let mut v = vec![0.0; t.len];
        self.be.download(t, &mut v)?;
        Ok(v)
    }

    pub fn write(&self, t: Tensor, data: &[f32]) -> Result<()> {
        self.folded_fresh.set(false);
        self.be.upload(t, data)
    }

    /// The gradient of an activation or parameter tensor (after [`PrrNet::backward`]).
    pub fn grad_of(&self, t: Tensor) -> Result<Tensor> {
        let g = self
            .bufs
            .grads
            .as_ref()
            .ok_or_else(|| Error::Config("model was built without gradients".into()))?;
        if t.buf == self.bufs.params {
            Ok(t.in_buf(g.dparams))
        } else if t.buf == self.bufs.acts {
            Ok(t.in_buf(g.dacts))
        } else {
            Err(Error::Other(format!("{t:?} has no gradient")))
        }
    }

    /// Upload unlabelled images, each `[3, S, S]` (PyTorch layout), into the first slots of the
    /// batch; the slots after them get zero images. The inference path: no copy of the whole
    /// batch on the host, and, on a GPU, the upload runs in stream order (it may still be in
    /// flight, behind an earlier forward, when this returns).
    pub fn set_images<T: AsRef<[f32]> + Sync>(&mut self, images: &[T]) -> Result<()> {
        let (b, s) = (self.batch, self.cfg.size);
        if images.len() > b {
            return Err(Error::Config(format!(
                "{} images for a batch of {b}",
                images.len()
            )));
        }
        for (i, x) in images.iter().enumerate() {
            if x.as_ref().len() != 3 * s * s {
                return Err(Error::Config(format!(
                    "image {i} has {} values, expected [3, {s}, {s}]",
                    x.as_ref().len()
                )));
            }
        }
        self.upload_images(images)?;
        self.labelled = false;
        Ok(())
    }

    /// The input tensor `[B, S, S, 3]` from per-image `[3, S, S]` slices (zero images after
    /// them), transposed straight into the staging area, one image per worker thread.
    fn upload_images<T: AsRef<[f32]> + Sync>(&self, images: &[T]) -> Result<()> {
        use rayon::prelude::*;
        let s = self.cfg.size;
        let one = 3 * s * s;
        self.be.upload_with(self.hrnet.input, &mut |dst| {
            dst.par_chunks_mut(one)
                .enumerate()
                .for_each(|(i, y)| match images.get(i) {
                    Some(x) => nchw_to_nhwc_into(x.as_ref(), 1, 3, s, s, y),
                    None => y.fill(0.0),
                })
        })
    }

    /// Upload one batch (PyTorch layouts, converted here to channels-last).
    pub fn set_input(&mut self, batch: &Batch) -> Result<()> {
        let (b, s) = (self.batch, self.cfg.size);
        if batch.image.len() != b * 3 * s * s {
            return Err(Error::Config(format!(
                "image batch has {} values, expected [{b}, 3, {s}, {s}]",
                batch.image.len()
            )));
        }
        let one = 3 * s * s;
        self.upload_images(&batch.image.chunks(one).collect::<Vec<_>>())?;
        self.labelled = batch.label.is_some();
        if let Some(label) = batch.label {
            if label.len() != b {
                return Err(Error::Config(format!(
                    "label has {} values, expected {b}",
                    label.len()
                )));
            }
            self.be.upload(self.lt.label, label)?;
            let weight = match (batch.mask, batch.mask_weight) {
                (None, _) => vec![0.0; b],
                (Some(_), Some(w)) => w.to_vec(),
                (Some(_), None) => vec![1.0; b],
            };
            if weight.len() != b {
                return Err(Error::Config(format!(
                    "mask_weight has {} values, expected {b}",
                    weight.len()
                )));
            }
            match batch.mask {
                Some(m) => {
                    if m.len() != b * s * s {
                        return Err(Error::Config(format!(
                            "mask has {} values, expected [{b}, 1, {s}, {s}]",
                            m.len()
                        )));
                    }
                    self.be.upload(self.lt.mask_in, m)?;
                }
                None => self.be.fill(self.lt.mask_in, 0.0)?,
            }
            self.be
                .adaptive_avg_pool(&self.lt.pool, self.lt.mask_in, self.lt.target)?;
            self.be.upload(self.lt.weight, &weight)?;
            let counted: f32 = weight.iter().sum();
            let np = self.pr.pixels as f32;
            self.loc_scale = if counted > 0.0 {
                1.0 / (counted * np)
            } else {
                0.0
            };
        }
        Ok(())
    }

    fn ctx(&self, mode: Mode, backbone: bool, grads: bool) -> Ctx<'_> {
        let g = self.bufs.grads.as_ref().filter(|_| grads);
        let frozen_part = backbone && mode.frozen_backbone;
        Ctx {
            be: self.be.as_ref(),
            bn_train: mode.train_bn && !frozen_part,
            dacts: g.map(|g| g.dacts),
            dparams: g.filter(|_| !frozen_part).map(|g| g.dparams),
            folded: self.is_inference(),
        }
    }

    /// One forward pass (and the losses, when the batch has labels).
    pub fn forward(&mut self, mode: Mode) -> Result<()> {
        if self.is_inference() {
            if mode.train_bn {
                return Err(Error::Config(
                    "an inference network runs BatchNorm with running statistics only \
                     (plan it with PrrNet::new to train)"
                        .into(),
                ));
            }
            self.ensure_folded()?;
        }
        let cb = self.ctx(mode, true, false);
        let ch = self.ctx(mode, false, false);
        self.stage(c"fwd.backbone", || self.hrnet.forward(&cb))?;
        let xs = self.hrnet.outputs();
        self.stage(c"fwd.aggregation", || self.agg.forward(&ch, &xs))?;
        self.stage(c"fwd.relation", || {
            self.pr.forward_relation(&ch, self.agg.f_in)
        })?;
        self.stage(c"fwd.pr_heads", || {
            self.pr.forward_heads(&ch, self.agg.f_in)
        })?;
        self.stage(c"fwd.rr", || self.rr.forward(&ch, self.pr.regions))?;
        if self.labelled {
            self.stage(c"fwd.losses", || self.forward_losses())?;
        }
        Ok(())
    }

    /// The eval-mode forward as a recorded device graph: the first call runs one ordinary
    /// forward (it sizes every workspace), then records the forward once; every call launches
    /// the recording, which reads the current input and parameters (the buffers never move).
    /// Losses, when the batch is labelled, run after it as ordinary operations. Where graphs are
    /// unavailable (the CPU) or stage profiling is on, this is [`PrrNet::forward`] in eval mode.
    pub fn forward_graph(&mut self) -> Result<()> {
        if !self.be.supports_graphs() || self.profile.is_some() {
            return self.forward(Mode::EVAL);
        }
        if self.is_inference() {
            self.ensure_folded()?;
        }
        let id = match self.graph {
            Some(id) => id,
            None => {
                let labelled = std::mem::replace(&mut self.labelled, false);
                let recorded = self.record_forward();
                self.labelled = labelled;
                let id = recorded?;
                self.graph = Some(id);
                id
            }
        };
        self.be.graph_launch(id)?;
        if self.labelled {
            self.stage(c"fwd.losses", || self.forward_losses())?;
        }
        Ok(())
    }

    /// Warm up, then record one unlabelled eval-mode forward; the capture is always ended,
    /// also when an operation inside it fails.
    fn record_forward(&mut self) -> Result<usize> {
        self.forward(Mode::EVAL)?;
        self.be.synchronize()?;
        self.be.graph_begin()?;
        let ran = self.forward(Mode::EVAL);
        let ended = self.be.graph_end();
        ran?;
        ended
    }

    /// Refold when a parameter or statistic changed since the last folding.
    fn ensure_folded(&self) -> Result<()> {
        if self.folded_fresh.get() {
            Ok(())
        } else {
            self.fold_batchnorm()
        }
    }

    /// Recompute the folded weights of every backbone conv + BatchNorm unit from the current
    /// parameters and running statistics (inference plans; forward does it when needed).
    pub fn fold_batchnorm(&self) -> Result<()> {
        for cb in self.hrnet.conv_bns() {
            cb.fold(self.be.as_ref())?;
        }
        self.folded_fresh.set(true);
        Ok(())
    }

    fn forward_losses(&self) -> Result<()> {
        {
            let b = self.batch;
            let be = self.be.as_ref();
            be.bce_with_logits(
                b,
                self.pr.pixels,
                self.pr.mask_logit,
                self.lt.target,
                self.lt.weight,
                self.loc_scale,
                self.lt.loss_loc,
            )?;
            be.bce_with_logits(
                b,
                1,
                self.rr.logit,
                self.lt.label,
                self.lt.ones,
                1.0 / b as f32,
                self.lt.loss_cls,
            )?;
        }
        Ok(())
    }

    /// The losses of the last forward pass (reads back two numbers).
    pub fn losses(&self) -> Result<Losses> {
        if !self.labelled {
            return Err(Error::Config("the batch has no labels".into()));
        }
        let loc = self.read(self.lt.loss_loc)?[0];
        let cls = self.read(self.lt.loss_cls)?[0];
        Ok(Losses {
            loss: loc + self.lambda * cls,
            loc,
            cls,
        })
    }

    /// Backward pass of `L = L_loc + λ·L_cls` after [`PrrNet::forward`] with the same `mode`.
    /// Overwrites all gradients. `want_input_grad` also computes `∂L/∂image`.
    pub fn backward(&mut self, mode: Mode, want_input_grad: bool) -> Result<()> {
        let g = self
            .bufs
            .grads
            .as_ref()
            .ok_or_else(|| Error::Config("model was built without gradients".into()))?;
        if !self.labelled {
            return Err(Error::Config("backward needs a labelled batch".into()));
        }
        let be = self.be.as_ref();
        be.fill(Tensor::new(g.dacts, 0, self.acts_len), 0.0)?;
        be.fill(Tensor::new(g.dparams, 0, self.params_len), 0.0)?;
        let cb = self.ctx(mode, true, true);
        let ch = self.ctx(mode, false, true);
        self.stage(c"bwd.losses", || self.backward_losses(&ch))?;
        self.stage(c"bwd.rr", || self.rr.backward(&ch, self.pr.regions))?;
        let backbone = !mode.frozen_backbone || want_input_grad;
        self.stage(c"bwd.pr_heads", || {
            self.pr.backward_heads(&ch, self.agg.f_in, backbone)
        })?;
        if backbone {
            self.stage(c"bwd.relation", || {
                self.pr.backward_relation(&ch, self.agg.f_in)
            })?;
            let xs = self.hrnet.outputs();
            self.stage(c"bwd.aggregation", || self.agg.backward(&ch, &xs))?;
            self.stage(c"bwd.backbone", || {
                self.hrnet.backward(&cb, want_input_grad)
            })?;
        }
        Ok(())
    }

    fn backward_losses(&self, ch: &Ctx) -> Result<()> {
        let be = self.be.as_ref();
        let b = self.batch;
        be.bce_with_logits_backward(
            b,
            self.pr.pixels,
            self.pr.mask_logit,
            self.lt.target,
            self.lt.weight,
            self.loc_scale,
            ch.ga(self.pr.mask_logit),
        )?;
        be.bce_with_logits_backward(
            b,
            1,
            self.rr.logit,
            self.lt.label,
            self.lt.ones,
            self.lambda / b as f32,
            ch.ga(self.rr.logit),
        )
    }

    /// Run one stage: an NVTX range, a stage hint to the backend (the cost model tallies by
    /// it), and with profiling on, timing markers before and after. The markers are enqueued
    /// like any operation (CUDA events on a GPU): nothing synchronises here.
    fn stage(&self, name: &'static std::ffi::CStr, f: impl FnOnce() -> Result<()>) -> Result<()> {
        // An NVTX range for Nsight timelines; free when no profiler is attached.
        let _range = crate::trace::range(name);
        let label = name.to_str().expect("stage names are ASCII");
        self.be.stage_hint(Some(label));
        let r = match &self.profile {
            None => f(),
            Some(log) => (|| {
                let start = self.be.timer_mark()?;
                f()?;
                let end = self.be.timer_mark()?;
                log.borrow_mut().push((label, start, end));
                Ok(())
            })(),
        };
        self.be.stage_hint(None);
        r
    }

    /// Turn per-stage timing on or off. On a GPU it records CUDA events around every stage
    /// (no synchronisation); on the CPU it reads the host clock.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(Default::default);
    }

    /// The stage timings recorded since the last call, in milliseconds of device time, in
    /// execution order. Waits for the last recorded stage to finish.
    pub fn take_stage_times(&self) -> Result<Vec<(&'static str, f64)>> {
        let Some(p) = self.profile.as_ref() else {
            return Ok(Vec::new());
        };
        let marks = std::mem::take(&mut *p.borrow_mut());
        marks
            .iter()
            .map(|(name, a, b)| Ok((*name, self.be.timer_elapsed_ms(a, b)?)))
            .collect()
    }

    /// The gradient of the loss w.r.t. the input image, `[B, 3, S, S]`.
    pub fn input_grad(&self) -> Result<Vec<f32>> {
        let s = self.cfg.size;
        let g = self.read(self.grad_of(self.hrnet.input)?)?;
        Ok(nhwc_to_nchw(&g, self.batch, s, s, 3))
    }

    /// One Adam step over all parameters, or only the heads when the backbone is frozen.
    pub fn adam_step(&mut self, lr: f32, frozen_backbone: bool) -> Result<()> {
        let g = self
            .bufs
            .grads
            .as_ref()
            .ok_or_else(|| Error::Config("model was built without gradients".into()))?;
        self.adam_steps += 1;
        let start = if frozen_backbone {
            self.backbone_len
        } else {
            0
        };
        let len = self.params_len - start;
        let r = |buf| Tensor::new(buf, start, len);
        let be = self.be.as_ref();
        let step = self.adam_steps;
        self.stage(c"optimizer", || {
            be.adam(
                r(self.bufs.params),
                r(g.dparams),
                r(g.adam_m),
                r(g.adam_v),
                &AdamArgs {
                    lr,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    step,
                },
            )
        })
    }

    pub fn adam_steps(&self) -> u64 {
        self.adam_steps
    }

    /// The Adam moment arenas `(m, v)`, each laid out like the parameter arena.
    pub fn adam_moments(&self) -> Result<(Tensor, Tensor)> {
        let g = self
            .bufs
            .grads
            .as_ref()
            .ok_or_else(|| Error::Config("model was built without gradients".into()))?;
        Ok((
            Tensor::new(g.adam_m, 0, self.params_len),
            Tensor::new(g.adam_v, 0, self.params_len),
        ))
    }

    /// Restore the optimizer's step count (with [`PrrNet::adam_moments`], a resumed run
    /// continues exactly).
    pub fn set_adam_steps(&mut self, steps: u64) {
        self.adam_steps = steps;
    }

    /// Score and mask of the last forward pass: `score [B]`, `mask [B, H·W]` (M).
    pub fn predictions(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.read(self.rr.score)?, self.read(self.pr.mask_prob)?))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.be.synchronize()
    }

    /// Named views of the head outputs as PyTorch-layout arrays (the debug dump's tensors).
    pub fn dump_outputs(&self) -> Result<Vec<NamedArray>> {
        let (b, h) = (self.batch, self.cfg.feature_side());
        let (n, np) = (self.cfg.n, h * h);
        let c_in = self.agg.c_in;
        let mut out = Vec::new();
        let mut map = |name: &str, t: Tensor, c: usize| -> Result<()> {
            let v = self.read(t)?;
            out.push((
                name.to_string(),
                vec![b, c, h, h],
                nhwc_to_nchw(&v, b, h, h, c),
            ));
            Ok(())
        };
        map("features", self.agg.f_in, c_in)?;
        map("f_rel", self.pr.conv2.y, crate::config::REL_C2)?;
        map("f_upd", self.pr.f_upd, crate::config::UPD_C)?;
        map("mask_logit", self.pr.mask_logit, 1)?;
        map("mask", self.pr.mask_prob, 1)?;
        out.push((
            "relation".into(),
            vec![b, np, n, n],
            self.read(self.pr.relation)?,
        ));
        let regions = self.read(self.pr.regions)?;
        let c = crate::config::UPD_C;
        out.push(("f_man".into(), vec![b, c], regions[..b * c].to_vec()));
        out.push(("f_ori".into(), vec![b, c], regions[b * c..].to_vec()));
        out.push(("logit".into(), vec![b], self.read(self.rr.logit)?));
        out.push(("score".into(), vec![b], self.read(self.rr.score)?));
        if self.labelled {
            let l = self.losses()?;
            out.push(("loss".into(), vec![1], vec![l.loss]));
            out.push(("loss_loc".into(), vec![1], vec![l.loc]));
            out.push(("loss_cls".into(), vec![1], vec![l.cls]));
        }
        Ok(out)
    }
}

/// `[B, C, H, W]` → `[B, H, W, C]`.
pub fn nchw_to_nhwc(x: &[f32], b: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    nchw_to_nhwc_into(x, b, c, h, w, &mut y);
    y
}

/// [`nchw_to_nhwc`] into a given `[b, h, w, c]` destination.
pub fn nchw_to_nhwc_into(x: &[f32], b: usize, c: usize, h: usize, w: usize, y: &mut [f32]) {
    assert_eq!(y.len(), x.len(), "nchw_to_nhwc: destination size");
    for bi in 0..b {
        for ci in 0..c {
            for p in 0..h * w {
                y[(bi * h * w + p) * c + ci] = x[(bi * c + ci) * h * w + p];
            }
        }
    }
}

/// `[B, H, W, C]` → `[B, C, H, W]`.
pub fn nhwc_to_nchw(x: &[f32], b: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for bi in 0..b {
        for p in 0..h * w {
            for ci in 0..c {
                y[(bi * c + ci) * h * w + p] = x[(bi * h * w + p) * c + ci];
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::PrrNet;

    #[test]
    fn even_batches_pad_less_than_one_slot_per_batch() {
        assert_eq!(PrrNet::even_batch(1, 16), 1);
        assert_eq!(PrrNet::even_batch(16, 16), 16);
        assert_eq!(PrrNet::even_batch(17, 16), 9);
        assert_eq!(PrrNet::even_batch(100, 16), 15);
        assert_eq!(PrrNet::even_batch(128, 64), 64);
        // No inputs, or a zero batch (refused when the detector opens): unchanged.
        assert_eq!(PrrNet::even_batch(0, 16), 16);
        assert_eq!(PrrNet::even_batch(5, 0), 0);
        for max in 1..40 {
            for n in 1..200 {
                let b = PrrNet::even_batch(n, max);
                let batches = n.div_ceil(b);
                assert!(b <= max && batches == n.div_ceil(max), "{n} {max}");
                assert!(batches * b - n < batches, "{n} {max}: {b}");
            }
        }
    }
}
