//! The HRNet backbone (SPEC §2), structured and named exactly like timm's `hrnet_w30`, with the
//! fuse layers' upsampling done by size (nearest resize to the target branch's exact size).
//!
//! Every activation is channels-last `[B, h, w, C]`. Forward runs in timm's order; backward runs
//! the exact reverse, each unit adding its input gradients into the shared gradient arena.

use super::layers::{Builder, ConvBn, Ctx};
use crate::backend::{ConvShape, ResizeShape, SumShape, SumTerm};
use crate::config::Config;
use crate::error::Result;
use crate::tensor::Tensor;

/// 1×1 → 3×3 → 1×1 with expansion 4 and an optional projection shortcut.
pub struct Bottleneck {
    c1: ConvBn,
    c2: ConvBn,
    c3: ConvBn,
    down: Option<ConvBn>,
}

impl Bottleneck {
    fn new(bd: &mut Builder, p: &str, b: usize, side: usize, cin: usize, width: usize) -> Self {
        let cout = width * 4;
        let s1 = ConvShape::new(b, side, side, cin, width, 1, 1, 0);
        let s2 = ConvShape::new(b, side, side, width, width, 3, 1, 1);
        let s3 = ConvShape::new(b, side, side, width, cout, 1, 1, 0);
        let c1 = ConvBn::new(bd, &format!("{p}.conv1"), &format!("{p}.bn1"), s1, true);
        let c2 = ConvBn::new(bd, &format!("{p}.conv2"), &format!("{p}.bn2"), s2, true);
        let down = (cin != cout).then(|| {
            let sd = ConvShape::new(b, side, side, cin, cout, 1, 1, 0);
            ConvBn::new(
                bd,
                &format!("{p}.downsample.0"),
                &format!("{p}.downsample.1"),
                sd,
                false,
            )
        });
        let c3 = ConvBn::new(bd, &format!("{p}.conv3"), &format!("{p}.bn3"), s3, true);
        Bottleneck { c1, c2, c3, down }
    }
    fn shortcut(&self, x: Tensor) -> Tensor {
        self.down.as_ref().map_or(x, |d| d.y)
    }
    fn forward(&self, cx: &Ctx, x: Tensor) -> Result<()> {
        self.c1.forward(cx, x, None)?;
        self.c2.forward(cx, self.c1.y, None)?;
        if let Some(d) = &self.down {
            d.forward(cx, x, None)?;
        }
        self.c3.forward(cx, self.c2.y, Some(self.shortcut(x)))
    }
    fn backward(&self, cx: &Ctx, x: Tensor, want_dx: bool) -> Result<()> {
        self.c3
            .backward(cx, self.c2.y, Some(self.shortcut(x)), true)?;
        self.c2.backward(cx, self.c1.y, None, true)?;
        self.c1.backward(cx, x, None, want_dx)?;
        if let Some(d) = &self.down {
            d.backward(cx, x, None, want_dx)?;
        }
        Ok(())
    }
    fn y(&self) -> Tensor {
        self.c3.y
    }
}

/// 3×3 → 3×3 with an identity shortcut.
pub struct BasicBlock {
    c1: ConvBn,
    c2: ConvBn,
}

impl BasicBlock {
    fn new(bd: &mut Builder, p: &str, b: usize, side: usize, c: usize) -> Self {
        let s = ConvShape::new(b, side, side, c, c, 3, 1, 1);
        BasicBlock {
            c1: ConvBn::new(bd, &format!("{p}.conv1"), &format!("{p}.bn1"), s, true),
            c2: ConvBn::new(bd, &format!("{p}.conv2"), &format!("{p}.bn2"), s, true),
        }
    }
    fn forward(&self, cx: &Ctx, x: Tensor) -> Result<()> {
        self.c1.forward(cx, x, None)?;
        self.c2.forward(cx, self.c1.y, Some(x))
    }
    fn backward(&self, cx: &Ctx, x: Tensor) -> Result<()> {
        self.c2.backward(cx, self.c1.y, Some(x), true)?;
        self.c1.backward(cx, x, None, true)
    }
}

/// One term `j` of fuse output `i`.
enum FuseTerm {
    /// `j == i`: the branch itself.
    Identity,
    /// `j > i`: 1×1 conv + BN at branch j, then nearest resize to branch i's size.
    Up {
        cb: Box<ConvBn>,
        resize: ResizeShape,
    },
    /// `j < i`: `i − j` stride-2 3×3 conv + BN steps (ReLU on all but the last).
    Down(Vec<ConvBn>),
}

/// One multi-resolution module: parallel branches of BasicBlocks, then the fuse layers.
pub struct HrModule {
    /// NVTX range names: the parameter prefix (`backbone.stage3.1`), and with ` backward`.
    range_fwd: std::ffi::CString,
    range_bwd: std::ffi::CString,
    branches: Vec<Vec<BasicBlock>>,
    fuse: Vec<Vec<FuseTerm>>,
    /// Fuse outputs `y_i = relu(Σ_j term_ij)`, of shape `out_shapes[i]`.
    outs: Vec<Tensor>,
    out_shapes: Vec<SumShape>,
}

impl HrModule {
    fn new(
        bd: &mut Builder,
        p: &str,
        b: usize,
        sides: &[usize],
        widths: &[usize],
        blocks: usize,
    ) -> Self {
        let nb = widths.len();
        let branches = (0..nb)
            .map(|i| {
                (0..blocks)
                    .map(|k| {
                        BasicBlock::new(
                            bd,
                            &format!("{p}.branches.{i}.{k}"),
                            b,
                            sides[i],
                            widths[i],
                        )
                    })
                    .collect()
            })
            .collect();
        let mut fuse = Vec::new();
        let mut outs = Vec::new();
        for i in 0..nb {
            let mut terms = Vec::new();
            for j in 0..nb {
                let q = format!("{p}.fuse_layers.{i}.{j}");
                terms.push(if j == i {
                    FuseTerm::Identity
                } else if j > i {
                    let s = ConvShape::new(b, sides[j], sides[j], widths[j], widths[i], 1, 1, 0);
                    let cb = ConvBn::new(bd, &format!("{q}.0"), &format!("{q}.1"), s, false);
                    let resize = ResizeShape {
                        b,
                        c: widths[i],
                        hi: sides[j],
                        wi: sides[j],
                        ho: sides[i],
                        wo: sides[i],
                    };
                    FuseTerm::Up {
                        cb: Box::new(cb),
                        resize,
                    }
                } else {
                    let steps = i - j;
                    let chain = (0..steps)
                        .map(|k| {
                            let last = k == steps - 1;
                            let cout = if last { widths[i] } else { widths[j] };
                            let s = ConvShape::new(
                                b,
                                sides[j + k],
                                sides[j + k],
                                widths[j],
                                cout,
                                3,
                                2,
                                1,
                            );
                            ConvBn::new(bd, &format!("{q}.{k}.0"), &format!("{q}.{k}.1"), s, !last)
                        })
                        .collect();
                    FuseTerm::Down(chain)
                });
            }
            fuse.push(terms);
            outs.push(bd.act(b * sides[i] * sides[i] * widths[i]));
        }
        HrModule {
            range_fwd: std::ffi::CString::new(p).expect("no NUL in names"),
            range_bwd: std::ffi::CString::new(format!("{p} backward")).expect("no NUL in names"),
            branches,
            fuse,
            outs,
            out_shapes: (0..nb)
                .map(|i| SumShape {
                    b,
                    c: widths[i],
                    ho: sides[i],
                    wo: sides[i],
                })
                .collect(),
        }
    }

    fn branch_out(&self, i: usize, xs: &[Tensor]) -> Tensor {
        self.branches[i].last().map_or(xs[i], |blk| blk.c2.y)
    }

    fn forward(&self, cx: &Ctx, xs: &[Tensor]) -> Result<()> {
        let _range = crate::trace::range(self.range_fwd.as_c_str());
        for (i, br) in self.branches.iter().enumerate() {
            let mut x = xs[i];
            for blk in br {
                blk.forward(cx, x)?;
                x = blk.c2.y;
            }
        }
        let bo: Vec<Tensor> = (0..xs.len()).map(|i| self.branch_out(i, xs)).collect();
        for (i, terms) in self.fuse.iter().enumerate() {
            let s = &self.out_shapes[i];
            let mut sum = Vec::with_capacity(terms.len());
            for (j, term) in terms.iter().enumerate() {
                let (x, hi, wi) = match term {
                    FuseTerm::Identity => (bo[j], s.ho, s.wo),
                    FuseTerm::Up { cb, resize } => {
                        cb.forward(cx, bo[j], None)?;
                        (cb.y, resize.hi, resize.wi)
                    }
                    FuseTerm::Down(chain) => {
                        let mut x = bo[j];
                        for cb in chain {
                            cb.forward(cx, x, None)?;
                            x = cb.y;
                        }
                        (x, s.ho, s.wo)
                    }
                };
                sum.push(SumTerm { x, hi, wi });
            }
            // y_i = relu(Σ_j term_ij), summed in order j = 0, 1, … (as timm does), in one pass.
            cx.be.fuse_sum_relu(s, &sum, self.outs[i])?;
        }
        Ok(())
    }

    fn backward(&self, cx: &Ctx, xs: &[Tensor]) -> Result<()> {
        let _range = crate::trace::range(self.range_bwd.as_c_str());
        let bo: Vec<Tensor> = (0..xs.len()).map(|i| self.branch_out(i, xs)).collect();
        for (i, terms) in self.fuse.iter().enumerate().rev() {
            let y = self.outs[i];
            let dy = cx.ga(y);
            cx.be.relu_backward_inplace(y, dy)?;
            for (j, term) in terms.iter().enumerate().rev() {
                match term {
                    FuseTerm::Identity => cx.be.add_inplace(cx.ga(bo[j]), dy)?,
                    FuseTerm::Up { cb, resize } => {
                        cx.be.resize_nearest_backward(resize, dy, cx.ga(cb.y))?;
                        cb.backward(cx, bo[j], None, true)?;
                    }
                    FuseTerm::Down(chain) => {
                        cx.be.add_inplace(cx.ga(chain.last().unwrap().y), dy)?;
                        for (k, cb) in chain.iter().enumerate().rev() {
                            let x = if k == 0 { bo[j] } else { chain[k - 1].y };
                            cb.backward(cx, x, None, true)?;
                        }
                    }
                }
            }
        }
        for (i, br) in self.branches.iter().enumerate().rev() {
            for (k, blk) in br.iter().enumerate().rev() {
                let x = if k == 0 { xs[i] } else { br[k - 1].c2.y };
                blk.backward(cx, x)?;
            }
        }
        Ok(())
    }
}

/// A transition entry: identity (same branch, same width) or a chain of conv + BN + ReLU.
enum Transition {
    Identity,
    Convs { src: usize, chain: Vec<ConvBn> },
}

pub struct HrNet {
    /// NHWC input image `[B, S, S, 3]`.
    pub input: Tensor,
    stem1: ConvBn,
    stem2: ConvBn,
    layer1: Vec<Bottleneck>,
    transitions: Vec<Vec<Transition>>,
    /// stage2, stage3, stage4; each a list of modules.
    stages: Vec<Vec<HrModule>>,
    /// The stage inputs (after each transition).
    stage_inputs: Vec<Vec<Tensor>>,
    pub sides: [usize; 4],
    pub widths: [usize; 4],
}

impl HrNet {
    pub fn new(bd: &mut Builder, cfg: &Config, b: usize) -> HrNet {
        let a = cfg.arch();
        let s = cfg.size;
        let sides = cfg.branch_sides();
        let p = "backbone";
        let input = bd.act(b * s * s * 3);
        let sh1 = ConvShape::new(b, s, s, 3, a.stem, 3, 2, 1);
        let stem1 = ConvBn::new(bd, &format!("{p}.conv1"), &format!("{p}.bn1"), sh1, true);
        let sh2 = ConvShape::new(b, sh1.ho, sh1.wo, a.stem, a.stem, 3, 2, 1);
        let stem2 = ConvBn::new(bd, &format!("{p}.conv2"), &format!("{p}.bn2"), sh2, true);
        assert_eq!(sh2.ho, sides[0]);
        let mut cin = a.stem;
        let layer1 = (0..a.layer1_blocks)
            .map(|k| {
                let blk = Bottleneck::new(
                    bd,
                    &format!("{p}.layer1.{k}"),
                    b,
                    sides[0],
                    cin,
                    a.layer1_width,
                );
                cin = a.layer1_width * 4;
                blk
            })
            .collect();
        let mut prev_widths = vec![cin];
        let mut transitions = Vec::new();
        let mut stages = Vec::new();
        let mut stage_inputs = Vec::new();
        // Tensors standing for the previous stage's outputs while building.
        let mut prev_outs: Vec<Tensor> = vec![Tensor::new(bd.acts.buf, 0, 0)];
        for (si, &nmod) in a.modules.iter().enumerate() {
            let nb = si + 2;
            let widths = &a.widths[..nb];
            let t = format!("{p}.transition{}", si + 1);
            let mut trans = Vec::new();
            let mut inputs = Vec::new();
            for i in 0..nb {
                if i < prev_widths.len() {
                    if prev_widths[i] == widths[i] {
                        trans.push(Transition::Identity);
                        inputs.push(prev_outs[i]);
                    } else {
                        let sh = ConvShape::new(
                            b,
                            sides[i],
                            sides[i],
                            prev_widths[i],
                            widths[i],
                            3,
                            1,
                            1,
                        );
                        let cb =
                            ConvBn::new(bd, &format!("{t}.{i}.0"), &format!("{t}.{i}.1"), sh, true);
                        inputs.push(cb.y);
                        trans.push(Transition::Convs {
                            src: i,
                            chain: vec![cb],
                        });
                    }
                } else {
                    // New branch(es) from the lowest-resolution previous branch.
                    let src = prev_widths.len() - 1;
                    let steps = i + 1 - prev_widths.len();
                    let chain: Vec<ConvBn> = (0..steps)
                        .map(|k| {
                            let cin = prev_widths[src];
                            let cout = if k == steps - 1 { widths[i] } else { cin };
                            let side = sides[src + k];
                            let sh = ConvShape::new(b, side, side, cin, cout, 3, 2, 1);
                            ConvBn::new(
                                bd,
                                &format!("{t}.{i}.{k}.0"),
                                &format!("{t}.{i}.{k}.1"),
                                sh,
                                true,
                            )
                        })
                        .collect();
                    inputs.push(chain.last().unwrap().y);
                    trans.push(Transition::Convs { src, chain });
                }
            }
            let mut mods = Vec::new();
            let mut xs = inputs.clone();
            for m in 0..nmod {
                let md = HrModule::new(
                    bd,
                    &format!("{p}.stage{}.{m}", si + 2),
                    b,
                    &sides[..nb],
                    widths,
                    a.blocks,
                );
                xs = md.outs.clone();
                mods.push(md);
            }
            transitions.push(trans);
            stage_inputs.push(inputs);
            stages.push(mods);
            prev_widths = widths.to_vec();
            prev_outs = xs;
        }
        HrNet {
            input,
            stem1,
            stem2,
            layer1,
            transitions,
            stages,
            stage_inputs,
            sides,
            widths: a.widths,
        }
    }

    fn layer1_out(&self) -> Tensor {
        self.layer1.last().map_or(self.stem2.y, |b| b.y())
    }

    /// Outputs of the previous stage (`si` = 0 → layer1's single output).
    fn prev_outs(&self, si: usize) -> Vec<Tensor> {
        if si == 0 {
            vec![self.layer1_out()]
        } else {
            self.stage_outs(si - 1)
        }
    }

    /// The outputs of stage `si` (0 = stage2).
    fn stage_outs(&self, si: usize) -> Vec<Tensor> {
        self.stages[si]
            .last()
            .map_or_else(|| self.stage_inputs[si].clone(), |m| m.outs.clone())
    }

    /// Every multi-resolution module's outputs, named like the parameters
    /// (`backbone.stage{S}.{m}`), in forward order: for debugging and comparisons.
    pub fn module_outputs(&self) -> Vec<(String, Vec<Tensor>)> {
        let mut v = Vec::new();
        for (si, mods) in self.stages.iter().enumerate() {
            for (m, md) in mods.iter().enumerate() {
                v.push((format!("backbone.stage{}.{m}", si + 2), md.outs.clone()));
            }
        }
        v
    }

    /// The four branch maps `x0..x3` of stage4.
    /// Every conv + BatchNorm unit of the backbone (for BatchNorm folding).
    pub fn conv_bns(&self) -> Vec<&ConvBn> {
        let mut v = vec![&self.stem1, &self.stem2];
        for blk in &self.layer1 {
            v.extend([&blk.c1, &blk.c2, &blk.c3]);
            v.extend(blk.down.iter());
        }
        for t in self.transitions.iter().flatten() {
            if let Transition::Convs { chain, .. } = t {
                v.extend(chain.iter());
            }
        }
        for m in self.stages.iter().flatten() {
            for blk in m.branches.iter().flatten() {
                v.extend([&blk.c1, &blk.c2]);
            }
            for term in m.fuse.iter().flatten() {
                match term {
                    FuseTerm::Identity => {}
                    FuseTerm::Up { cb, .. } => v.push(cb),
                    FuseTerm::Down(chain) => v.extend(chain.iter()),
                }
            }
        }
        v
    }

    pub fn outputs(&self) -> Vec<Tensor> {
        self.stage_outs(self.stages.len() - 1)
    }

    pub fn forward(&self, cx: &Ctx) -> Result<()> {
        {
            let _range = crate::trace::range(c"backbone.stem+layer1");
            self.stem1.forward(cx, self.input, None)?;
            self.stem2.forward(cx, self.stem1.y, None)?;
            let mut x = self.stem2.y;
            for blk in &self.layer1 {
                blk.forward(cx, x)?;
                x = blk.y();
            }
        }
        for si in 0..self.stages.len() {
            let prev = self.prev_outs(si);
            for t in &self.transitions[si] {
                if let Transition::Convs { src, chain } = t {
                    let mut x = prev[*src];
                    for cb in chain {
                        cb.forward(cx, x, None)?;
                        x = cb.y;
                    }
                }
            }
            let mut xs = self.stage_inputs[si].clone();
            for m in &self.stages[si] {
                m.forward(cx, &xs)?;
                xs = m.outs.clone();
            }
        }
        Ok(())
    }

    /// Backward from the gradients of [`HrNet::outputs`]; `want_dinput` also produces the
    /// gradient of the input image.
    pub fn backward(&self, cx: &Ctx, want_dinput: bool) -> Result<()> {
        for si in (0..self.stages.len()).rev() {
            let mods = &self.stages[si];
            for (m, md) in mods.iter().enumerate().rev() {
                let xs = if m == 0 {
                    self.stage_inputs[si].clone()
                } else {
                    mods[m - 1].outs.clone()
                };
                md.backward(cx, &xs)?;
            }
            let prev = self.prev_outs(si);
            for t in self.transitions[si].iter().rev() {
                if let Transition::Convs { src, chain } = t {
                    for (k, cb) in chain.iter().enumerate().rev() {
                        let x = if k == 0 { prev[*src] } else { chain[k - 1].y };
                        cb.backward(cx, x, None, true)?;
                    }
                }
            }
        }
        let _range = crate::trace::range(c"backbone.stem+layer1 backward");
        for (k, blk) in self.layer1.iter().enumerate().rev() {
            let x = if k == 0 {
                self.stem2.y
            } else {
                self.layer1[k - 1].y()
            };
            blk.backward(cx, x, true)?;
        }
        self.stem2.backward(cx, self.stem1.y, None, true)?;
        self.stem1.backward(cx, self.input, None, want_dinput)
    }
}
