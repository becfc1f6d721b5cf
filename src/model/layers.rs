//! Building blocks shared by the backbone and the heads: the plan builder (one arena each for
//! parameters, BatchNorm statistics and activations), the parameter registry that checkpoints
//! read and write, and the conv + BatchNorm (+ residual) (+ ReLU) unit.

use crate::backend::{Backend, BatchNormGrads, BatchNormTensors, ConvShape, NormShape};
use crate::config::{BN_EPS, BN_MOMENTUM};
use crate::error::Result;
use crate::tensor::{Arena, BufId, Tensor};

/// How a parameter is initialised (SPEC §8) and laid out in PyTorch files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// `[cout, k, k, cin]` here, `[cout, cin, k, k]` in files; Kaiming-normal (fan_out, ReLU).
    ConvWeight {
        cout: usize,
        cin: usize,
        k: usize,
    },
    /// Conv bias: PyTorch's default U(±1/sqrt(fan_in)).
    ConvBias {
        fan_in: usize,
    },
    /// `[out, in]`, PyTorch's default U(±1/sqrt(in)).
    LinearWeight {
        out: usize,
        inp: usize,
    },
    LinearBias {
        fan_in: usize,
    },
    BnWeight,
    BnBias,
    RunningMean,
    RunningVar,
}

/// One named tensor of the model's state.
#[derive(Clone, Debug)]
pub struct ParamEntry {
    pub name: String,
    pub tensor: Tensor,
    pub kind: ParamKind,
    /// Trainable (in the parameter arena) or a BatchNorm running statistic (state arena).
    pub trainable: bool,
}

impl ParamEntry {
    /// The shape this entry has in PyTorch files.
    pub fn torch_shape(&self) -> Vec<usize> {
        match self.kind {
            ParamKind::ConvWeight { cout, cin, k } => vec![cout, cin, k, k],
            ParamKind::LinearWeight { out, inp } => vec![out, inp],
            _ => vec![self.tensor.len],
        }
    }
}

/// Collects every tensor the model needs while it is being built; the backend then allocates
/// one buffer per arena.
pub struct Builder {
    pub params: Arena,
    pub state: Arena,
    pub acts: Arena,
    pub entries: Vec<ParamEntry>,
    /// Inference-only plans: the arena of BatchNorm-folded convolution weights and biases.
    /// Its units never run backward, so a conv output may share memory with the unit's output.
    pub folded: Option<Arena>,
    /// Every activation handed out, in order (the reuse planner's allocation identities).
    pub act_log: Vec<Tensor>,
    /// Assigned offsets for the first `offsets.len()` activations (a reuse plan); later ones
    /// are bump-allocated after the planned region.
    pub remap: Option<Vec<usize>>,
}

impl Builder {
    pub fn new(params: BufId, state: BufId, acts: BufId) -> Builder {
        Builder {
            params: Arena::new(params),
            state: Arena::new(state),
            acts: Arena::new(acts),
            entries: Vec::new(),
            folded: None,
            act_log: Vec::new(),
            remap: None,
        }
    }
    /// Place the first activations at planned offsets inside `[0, region)` (see
    /// `model::memplan`); the rest follow the region.
    pub fn with_remap(mut self, offsets: Vec<usize>, region: usize) -> Builder {
        self.acts.used = region;
        self.remap = Some(offsets);
        self
    }
    /// Plan for inference only, with folded weights in buffer `folded`.
    pub fn inference(mut self, folded: BufId) -> Builder {
        self.folded = Some(Arena::new(folded));
        self
    }
    pub fn param(&mut self, name: String, len: usize, kind: ParamKind) -> Tensor {
        let trainable = !matches!(kind, ParamKind::RunningMean | ParamKind::RunningVar);
        let tensor = if trainable {
            self.params.take(len)
        } else {
            self.state.take(len)
        };
        self.entries.push(ParamEntry {
            name,
            tensor,
            kind,
            trainable,
        });
        tensor
    }
    pub fn act(&mut self, len: usize) -> Tensor {
        let i = self.act_log.len();
        let t = match self.remap.as_ref().and_then(|o| o.get(i)) {
            Some(&off) => Tensor::new(self.acts.buf, off, len),
            None => self.acts.take(len),
        };
        self.act_log.push(t);
        t
    }
    pub fn conv_weight(&mut self, name: String, cout: usize, cin: usize, k: usize) -> Tensor {
        self.param(
            name,
            cout * k * k * cin,
            ParamKind::ConvWeight { cout, cin, k },
        )
    }
    pub fn bn(&mut self, prefix: &str, c: usize) -> BnParams {
        BnParams {
            gamma: self.param(format!("{prefix}.weight"), c, ParamKind::BnWeight),
            beta: self.param(format!("{prefix}.bias"), c, ParamKind::BnBias),
            running_mean: self.param(format!("{prefix}.running_mean"), c, ParamKind::RunningMean),
            running_var: self.param(format!("{prefix}.running_var"), c, ParamKind::RunningVar),
        }
    }
    /// A 1×1 convolution with bias: computed as a linear layer over pixels, stored and
    /// initialised as a convolution (`[out, in, 1, 1]` in files).
    pub fn conv1x1(&mut self, prefix: &str, inp: usize, out: usize) -> Linear {
        Linear {
            inp,
            out,
            w: self.conv_weight(format!("{prefix}.weight"), out, inp, 1),
            b: self.param(
                format!("{prefix}.bias"),
                out,
                ParamKind::ConvBias { fan_in: inp },
            ),
        }
    }

    pub fn linear(&mut self, prefix: &str, inp: usize, out: usize) -> Linear {
        Linear {
            inp,
            out,
            w: self.param(
                format!("{prefix}.weight"),
                out * inp,
                ParamKind::LinearWeight { out, inp },
            ),
            b: self.param(
                format!("{prefix}.bias"),
                out,
                ParamKind::LinearBias { fan_in: inp },
            ),
        }
    }
}

/// What one forward or backward pass runs with.
pub struct Ctx<'a> {
    pub be: &'a dyn Backend,
    /// BatchNorm uses batch statistics (and updates running ones) in this part of the network.
    pub bn_train: bool,
    /// Gradient arena mirroring the activations.
    pub dacts: Option<BufId>,
    /// Gradient arena mirroring the parameters; `None` when parameter gradients are not wanted.
    pub dparams: Option<BufId>,
    /// Conv + BatchNorm units run with their folded weights (inference plans, eval mode).
    pub folded: bool,
}

impl Ctx<'_> {
    /// Gradient of an activation.
    pub fn ga(&self, t: Tensor) -> Tensor {
        t.in_buf(self.dacts.expect("backward pass without a gradient arena"))
    }
    /// Gradient of a parameter, when parameter gradients are computed.
    pub fn gp(&self, t: Tensor) -> Option<Tensor> {
        self.dparams.map(|b| t.in_buf(b))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct BnParams {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
}

/// A linear layer `y = x·wᵀ + b`.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub inp: usize,
    pub out: usize,
    pub w: Tensor,
    pub b: Tensor,
}

impl Linear {
    pub fn forward(&self, cx: &Ctx, rows: usize, x: Tensor, y: Tensor) -> Result<()> {
        cx.be
            .linear(rows, self.inp, self.out, x, self.w, Some(self.b), y)
    }
    /// `dx` is `None` when the input's gradient is not needed.
    pub fn backward(
        &self,
        cx: &Ctx,
        rows: usize,
        x: Tensor,
        y: Tensor,
        dx: Option<Tensor>,
    ) -> Result<()> {
        cx.be.linear_backward(
            rows,
            self.inp,
            self.out,
            x,
            self.w,
            cx.ga(y),
            dx,
            cx.gp(self.w),
            cx.gp(self.b),
        )
    }
}

/// conv (no bias) → BatchNorm → (+ residual) → (ReLU), the unit HRNet is made of.
#[derive(Clone, Debug)]
pub struct ConvBn {
    pub shape: ConvShape,
    pub w: Tensor,
    pub bn: BnParams,
    pub relu: bool,
    /// Conv output (BatchNorm input), kept for backward.
    pub z: Tensor,
    pub save_mean: Tensor,
    pub save_rstd: Tensor,
    /// The unit's output.
    pub y: Tensor,
    /// Inference plans: the BatchNorm-folded weight `[cout, k, k, cin]` and bias `[cout]`
    /// (see [`ConvBn::fold`]); then `z` is `y` (the conv writes the output, the bias epilogue
    /// finishes it in place).
    pub folded: Option<(Tensor, Tensor)>,
}

impl ConvBn {
    /// `conv_name`/`bn_name` are the full parameter prefixes (e.g. `backbone.conv1`, `backbone.bn1`).
    pub fn new(
        bd: &mut Builder,
        conv_name: &str,
        bn_name: &str,
        shape: ConvShape,
        relu: bool,
    ) -> ConvBn {
        let w = bd.conv_weight(
            format!("{conv_name}.weight"),
            shape.cout,
            shape.cin,
            shape.k,
        );
        let bn = bd.bn(bn_name, shape.cout);
        if let Some(fa) = bd.folded.as_mut() {
            let folded = Some((fa.take(shape.w_len()), fa.take(shape.cout)));
            let y = bd.act(shape.y_len());
            return ConvBn {
                shape,
                w,
                bn,
                relu,
                z: y,
                save_mean: bd.act(shape.cout),
                save_rstd: bd.act(shape.cout),
                y,
                folded,
            };
        }
        ConvBn {
            shape,
            w,
            bn,
            relu,
            z: bd.act(shape.y_len()),
            save_mean: bd.act(shape.cout),
            save_rstd: bd.act(shape.cout),
            y: bd.act(shape.y_len()),
            folded: None,
        }
    }

    /// Fold the eval-mode BatchNorm into the convolution (inference plans):
    /// `BN(conv(x, w)) = conv(x, w·s) + (β − μ·s)` with `s = γ / sqrt(σ² + ε)` per output
    /// channel. Computed on the host in f64 from the current parameters and running statistics;
    /// run again whenever they change.
    pub fn fold(&self, be: &dyn Backend) -> Result<()> {
        let Some((fw, fb)) = self.folded else {
            return Err(crate::error::Error::Config(
                "this network was not planned for inference; it has no folded weights".into(),
            ));
        };
        let read = |t: Tensor| -> Result<Vec<f32>> {
            let mut v = vec![0.0; t.len];
            be.download(t, &mut v)?;
            Ok(v)
        };
        let w = read(self.w)?;
        let (gamma, beta) = (read(self.bn.gamma)?, read(self.bn.beta)?);
        let (mean, var) = (read(self.bn.running_mean)?, read(self.bn.running_var)?);
        let per_out = self.shape.k * self.shape.k * self.shape.cin;
        let scale: Vec<f64> = (0..self.shape.cout)
            .map(|c| gamma[c] as f64 / (var[c] as f64 + BN_EPS as f64).sqrt())
            .collect();
        let w_folded: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, &v)| (v as f64 * scale[i / per_out]) as f32)
            .collect();
        let b_folded: Vec<f32> = (0..self.shape.cout)
            .map(|c| (beta[c] as f64 - mean[c] as f64 * scale[c]) as f32)
            .collect();
        be.upload(fw, &w_folded)?;
        be.upload(fb, &b_folded)
    }

    fn norm_shape(&self, train: bool) -> NormShape {
        NormShape {
            rows: self.shape.b * self.shape.ho * self.shape.wo,
            c: self.shape.cout,
            eps: BN_EPS,
            momentum: BN_MOMENTUM,
            train,
        }
    }

    fn bn_tensors(&self, residual: Option<Tensor>) -> BatchNormTensors {
        BatchNormTensors {
            x: self.z,
            gamma: self.bn.gamma,
            beta: self.bn.beta,
            running_mean: self.bn.running_mean,
            running_var: self.bn.running_var,
            save_mean: self.save_mean,
            save_rstd: self.save_rstd,
            residual,
            relu: self.relu,
            y: self.y,
        }
    }

    pub fn forward(&self, cx: &Ctx, x: Tensor, residual: Option<Tensor>) -> Result<()> {
        if let (true, Some((fw, fb))) = (cx.folded, self.folded) {
            return cx
                .be
                .conv2d_bias_act(&self.shape, x, fw, fb, residual, self.relu, self.y);
        }
        // In an inference plan z is y: the unfolded BatchNorm would read what it writes.
        assert!(
            self.folded.is_none(),
            "an inference plan must run its conv + BatchNorm units folded"
        );
        cx.be.conv2d(&self.shape, x, self.w, None, self.z)?;
        cx.be
            .batchnorm(&self.norm_shape(cx.bn_train), &self.bn_tensors(residual))
    }

    /// Gradient of `y` → gradients of `x` (when `want_dx`), of the residual, and of the parameters.
    pub fn backward(
        &self,
        cx: &Ctx,
        x: Tensor,
        residual: Option<Tensor>,
        want_dx: bool,
    ) -> Result<()> {
        cx.be.batchnorm_backward(
            &self.norm_shape(cx.bn_train),
            &self.bn_tensors(residual),
            &BatchNormGrads {
                dy: cx.ga(self.y),
                dx: Some(cx.ga(self.z)),
                dgamma: cx.gp(self.bn.gamma),
                dbeta: cx.gp(self.bn.beta),
                dresidual: residual.map(|r| cx.ga(r)),
            },
        )?;
        cx.be.conv2d_backward(
            &self.shape,
            x,
            self.w,
            cx.ga(self.z),
            want_dx.then(|| cx.ga(x)),
            cx.gp(self.w),
            None,
        )
    }
}
