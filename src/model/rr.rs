//! The Region-wise Relation module (SPEC §5). Shapes for batch B:
//!
//! ```text
//! regions [2B,320] → fm.fc1 → h1 [2B,128] → fm.bn (+ReLU) → h1b → fm.fc2 → ab [2B,128]
//! ab → metrics (cos, euc, inn per group) → z [B,3G] → cls.fc1 → c1 [B,16] → ReLU
//!    → cls.fc2 → logit [B] → sigmoid → score [B]
//! ```

use super::layers::{BnParams, Builder, Ctx, Linear};
use crate::backend::{BatchNormGrads, BatchNormTensors, NormShape};
use crate::config::{Config, BN_EPS, BN_MOMENTUM, CLS_HIDDEN, FM_C, UPD_C};
use crate::error::Result;
use crate::tensor::Tensor;

pub struct RrModule {
    pub b: usize,
    pub groups: usize,
    pub fc1: Linear,
    pub h1: Tensor,
    pub bn: BnParams,
    pub bn_mean: Tensor,
    pub bn_rstd: Tensor,
    pub h1b: Tensor,
    pub fc2: Linear,
    pub ab: Tensor,
    pub z: Tensor,
    pub cls1: Linear,
    pub c1: Tensor,
    pub cls2: Linear,
    pub logit: Tensor,
    pub score: Tensor,
}

impl RrModule {
    pub fn new(bd: &mut Builder, cfg: &Config, b: usize) -> RrModule {
        let g = cfg.groups;
        RrModule {
            b,
            groups: g,
            fc1: bd.linear("rr.fm.fc1", UPD_C, FM_C),
            h1: bd.act(2 * b * FM_C),
            bn: bd.bn("rr.fm.bn", FM_C),
            bn_mean: bd.act(FM_C),
            bn_rstd: bd.act(FM_C),
            h1b: bd.act(2 * b * FM_C),
            fc2: bd.linear("rr.fm.fc2", FM_C, FM_C),
            ab: bd.act(2 * b * FM_C),
            z: bd.act(b * 3 * g),
            cls1: bd.linear("rr.cls.fc1", 3 * g, CLS_HIDDEN),
            c1: bd.act(b * CLS_HIDDEN),
            cls2: bd.linear("rr.cls.fc2", CLS_HIDDEN, 1),
            logit: bd.act(b),
            score: bd.act(b),
        }
    }

    fn norm(&self, train: bool) -> (NormShape, BatchNormTensors) {
        (
            NormShape {
                rows: 2 * self.b,
                c: FM_C,
                eps: BN_EPS,
                momentum: BN_MOMENTUM,
                train,
            },
            BatchNormTensors {
                x: self.h1,
                gamma: self.bn.gamma,
                beta: self.bn.beta,
                running_mean: self.bn.running_mean,
                running_var: self.bn.running_var,
                save_mean: self.bn_mean,
                save_rstd: self.bn_rstd,
                residual: None,
                relu: true,
                y: self.h1b,
            },
        )
    }

    pub fn forward(&self, cx: &Ctx, regions: Tensor) -> Result<()> {
        let be = cx.be;
        let b = self.b;
        self.fc1.forward(cx, 2 * b, regions, self.h1)?;
        let (ns, nt) = self.norm(cx.bn_train);
        be.batchnorm(&ns, &nt)?;
        self.fc2.forward(cx, 2 * b, self.h1b, self.ab)?;
        be.region_metrics(b, FM_C, self.groups, self.ab, self.z)?;
        self.cls1.forward(cx, b, self.z, self.c1)?;
        be.relu_inplace(self.c1)?;
        self.cls2.forward(cx, b, self.c1, self.logit)?;
        be.sigmoid(self.logit, self.score)
    }

    /// Backward from the gradient of `logit`, producing the gradient of `regions`.
    pub fn backward(&self, cx: &Ctx, regions: Tensor) -> Result<()> {
        let be = cx.be;
        let b = self.b;
        self.cls2
            .backward(cx, b, self.c1, self.logit, Some(cx.ga(self.c1)))?;
        be.relu_backward_inplace(self.c1, cx.ga(self.c1))?;
        self.cls1
            .backward(cx, b, self.z, self.c1, Some(cx.ga(self.z)))?;
        be.region_metrics_backward(b, FM_C, self.groups, self.ab, cx.ga(self.z), cx.ga(self.ab))?;
        self.fc2
            .backward(cx, 2 * b, self.h1b, self.ab, Some(cx.ga(self.h1b)))?;
        let (ns, nt) = self.norm(cx.bn_train);
        be.batchnorm_backward(
            &ns,
            &nt,
            &BatchNormGrads {
                dy: cx.ga(self.h1b),
                dx: Some(cx.ga(self.h1)),
                dgamma: cx.gp(self.bn.gamma),
                dbeta: cx.gp(self.bn.beta),
                dresidual: None,
            },
        )?;
        self.fc1
            .backward(cx, 2 * b, regions, self.h1, Some(cx.ga(regions)))
    }
}
