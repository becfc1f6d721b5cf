//! Feature aggregation (SPEC §3) and the Pixel-wise Relation module with the region feature
//! extractor (SPEC §4). Shapes for batch B, feature map H×W (N = H·W), C_in channels:
//!
//! ```text
//! x0..x3 [B,h_k,w_k,C_k] → up_k (bilinear to H×W, written into F_in) → F_in [B,N,C_in]
//! F_in → relation → P [B·N, n, n, 1] → rel.conv1 (3×3, +b, ReLU) → r1 [B·N, n−2, n−2, 32]
//!      → rel.conv2 ((n−2)×(n−2), +b, ReLU) → F_rel [B,N,64]
//! F_in → proj (1×1, +b) → F_vis [B,N,256];  F_upd = [F_vis, F_rel] [B,N,320]
//! F_upd → mask (1×1, +b) → mask_logit [B,N] → sigmoid → M
//! (F_upd, M) → attention pooling → regions [2B, 320] (F_man rows, then F_ori rows)
//! ```

use super::layers::{Builder, Ctx, Linear, ParamKind};
use crate::backend::{ConvShape, RelationShape, ResizeShape};
use crate::config::{Config, REL_C1, REL_C2, UPD_C, VIS_C};
use crate::error::Result;
use crate::tensor::Tensor;

pub struct Aggregation {
    /// Branch k ≥ 1 resized to the first branch's side (`resizes[k − 1]`).
    pub resizes: Vec<ResizeShape>,
    pub widths: [usize; 4],
    pub f_in: Tensor,
    pub rows: usize,
    pub c_in: usize,
}

impl Aggregation {
    pub fn new(bd: &mut Builder, cfg: &Config, b: usize) -> Aggregation {
        let a = cfg.arch();
        let sides = cfg.branch_sides();
        let h = sides[0];
        let rows = b * h * h;
        let resizes = a
            .widths
            .iter()
            .zip(&sides)
            .skip(1)
            .map(|(&c, &side)| ResizeShape {
                b,
                c,
                hi: side,
                wi: side,
                ho: h,
                wo: h,
            })
            .collect();
        Aggregation {
            resizes,
            widths: a.widths,
            f_in: bd.act(rows * a.c_in()),
            rows,
            c_in: a.c_in(),
        }
    }

    fn offsets(&self) -> [usize; 4] {
        let w = self.widths;
        [0, w[0], w[0] + w[1], w[0] + w[1] + w[2]]
    }

    /// `F_in = [x0, up(x1), up(x2), up(x3)]`: each branch written once, straight into its
    /// channels of `F_in` (no upsampled copy in between).
    pub fn forward(&self, cx: &Ctx, xs: &[Tensor]) -> Result<()> {
        let off = self.offsets();
        cx.be
            .concat_channels(self.rows, xs[0], self.widths[0], self.f_in, self.c_in, 0)?;
        for k in 1..4 {
            cx.be.resize_bilinear_into(
                &self.resizes[k - 1],
                xs[k],
                self.f_in,
                self.c_in,
                off[k],
            )?;
        }
        Ok(())
    }

    pub fn backward(&self, cx: &Ctx, xs: &[Tensor]) -> Result<()> {
        let off = self.offsets();
        let df = cx.ga(self.f_in);
        cx.be.concat_channels_backward(
            self.rows,
            df,
            self.c_in,
            0,
            cx.ga(xs[0]),
            self.widths[0],
        )?;
        for k in 1..4 {
            cx.be.resize_bilinear_into_backward(
                &self.resizes[k - 1],
                df,
                self.c_in,
                off[k],
                cx.ga(xs[k]),
            )?;
        }
        Ok(())
    }
}

/// A convolution with bias followed by ReLU (the relation convolutions).
pub struct ConvRelu {
    pub shape: ConvShape,
    pub w: Tensor,
    pub b: Tensor,
    pub y: Tensor,
}

impl ConvRelu {
    fn new(bd: &mut Builder, name: &str, shape: ConvShape) -> ConvRelu {
        let w = bd.conv_weight(format!("{name}.weight"), shape.cout, shape.cin, shape.k);
        let b = bd.param(
            format!("{name}.bias"),
            shape.cout,
            ParamKind::ConvBias {
                fan_in: shape.cin * shape.k * shape.k,
            },
        );
        ConvRelu {
            shape,
            w,
            b,
            y: bd.act(shape.y_len()),
        }
    }
    fn forward(&self, cx: &Ctx, x: Tensor) -> Result<()> {
        // One pass where the backend fuses the epilogue (the GPU's implicit-GEMM kernels).
        cx.be
            .conv2d_bias_act(&self.shape, x, self.w, self.b, None, true, self.y)
    }
    fn backward(&self, cx: &Ctx, x: Tensor, dx: Option<Tensor>) -> Result<()> {
        let dy = cx.ga(self.y);
        cx.be.relu_backward_inplace(self.y, dy)?;
        cx.be
            .conv2d_backward(&self.shape, x, self.w, dy, dx, cx.gp(self.w), cx.gp(self.b))
    }
}

pub struct PrModule {
    pub rel: RelationShape,
    pub norms: Tensor,
    pub lsum: Tensor,
    /// `[B, N, n, n]`.
    pub relation: Tensor,
    pub conv1: ConvRelu,
    /// `[B, N, 64]`.
    pub conv2: ConvRelu,
    pub proj: Linear,
    pub f_vis: Tensor,
    pub f_upd: Tensor,
    pub mask: Linear,
    pub mask_logit: Tensor,
    pub mask_prob: Tensor,
    /// `[2B, 320]`: F_man rows then F_ori rows.
    pub regions: Tensor,
    pub b: usize,
    pub pixels: usize,
    pub c_in: usize,
}

impl PrModule {
    pub fn new(bd: &mut Builder, cfg: &Config, b: usize) -> PrModule {
        let h = cfg.feature_side();
        let n = cfg.n;
        let np = h * h;
        let c_in = cfg.arch().c_in();
        let rel = RelationShape {
            b,
            h,
            w: h,
            c: c_in,
            n,
        };
        let rows = b * np;
        let s1 = ConvShape::new(rows, n, n, 1, REL_C1, 3, 1, 0);
        let s2 = ConvShape::new(rows, n - 2, n - 2, REL_C1, REL_C2, n - 2, 1, 0);
        PrModule {
            rel,
            norms: bd.act(rows),
            lsum: bd.act(rows),
            relation: bd.act(rows * n * n),
            conv1: ConvRelu::new(bd, "pr.rel.conv1", s1),
            conv2: ConvRelu::new(bd, "pr.rel.conv2", s2),
            proj: bd.conv1x1("pr.proj", c_in, VIS_C),
            f_vis: bd.act(rows * VIS_C),
            f_upd: bd.act(rows * UPD_C),
            mask: bd.conv1x1("pr.mask", UPD_C, 1),
            mask_logit: bd.act(rows),
            mask_prob: bd.act(rows),
            regions: bd.act(2 * b * UPD_C),
            b,
            pixels: np,
            c_in,
        }
    }

    /// The fused relation map `F_in → P`.
    pub fn forward_relation(&self, cx: &Ctx, f_in: Tensor) -> Result<()> {
        cx.be
            .relation(&self.rel, f_in, self.norms, self.lsum, self.relation)
    }

    /// Everything after the relation map: relation convolutions, projection, mask, pooling.
    pub fn forward_heads(&self, cx: &Ctx, f_in: Tensor) -> Result<()> {
        let rows = self.b * self.pixels;
        let be = cx.be;
        self.conv1.forward(cx, self.relation)?;
        self.conv2.forward(cx, self.conv1.y)?;
        self.proj.forward(cx, rows, f_in, self.f_vis)?;
        be.concat_channels(rows, self.f_vis, VIS_C, self.f_upd, UPD_C, 0)?;
        be.concat_channels(rows, self.conv2.y, REL_C2, self.f_upd, UPD_C, VIS_C)?;
        self.mask.forward(cx, rows, self.f_upd, self.mask_logit)?;
        be.sigmoid(self.mask_logit, self.mask_prob)?;
        be.attention_pool(
            self.b,
            self.pixels,
            UPD_C,
            self.f_upd,
            self.mask_prob,
            self.regions,
        )
    }

    /// Backward of [`PrModule::forward_heads`] from the gradients of `regions` and
    /// `mask_logit`; `want_df_in` also produces the gradients of F_in (through the projection)
    /// and of P (only needed when the backbone trains or the input gradient is wanted).
    pub fn backward_heads(&self, cx: &Ctx, f_in: Tensor, want_df_in: bool) -> Result<()> {
        let rows = self.b * self.pixels;
        let be = cx.be;
        be.attention_pool_backward(
            self.b,
            self.pixels,
            UPD_C,
            self.f_upd,
            self.mask_prob,
            self.regions,
            cx.ga(self.regions),
            cx.ga(self.f_upd),
            cx.ga(self.mask_prob),
        )?;
        be.sigmoid_backward(
            self.mask_prob,
            cx.ga(self.mask_prob),
            cx.ga(self.mask_logit),
        )?;
        self.mask.backward(
            cx,
            rows,
            self.f_upd,
            self.mask_logit,
            Some(cx.ga(self.f_upd)),
        )?;
        let dupd = cx.ga(self.f_upd);
        be.concat_channels_backward(rows, dupd, UPD_C, 0, cx.ga(self.f_vis), VIS_C)?;
        be.concat_channels_backward(rows, dupd, UPD_C, VIS_C, cx.ga(self.conv2.y), REL_C2)?;
        let df_in = want_df_in.then(|| cx.ga(f_in));
        self.proj.backward(cx, rows, f_in, self.f_vis, df_in)?;
        self.conv2
            .backward(cx, self.conv1.y, Some(cx.ga(self.conv1.y)))?;
        self.conv1
            .backward(cx, self.relation, df_in.map(|_| cx.ga(self.relation)))
    }

    /// Backward of the relation map: `∂L/∂F_in += relation_backward(∂L/∂P)`.
    pub fn backward_relation(&self, cx: &Ctx, f_in: Tensor) -> Result<()> {
        cx.be.relation_backward(
            &self.rel,
            f_in,
            self.norms,
            self.lsum,
            self.relation,
            cx.ga(self.relation),
            cx.ga(f_in),
        )
    }
}
