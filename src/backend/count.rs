//! A counting backend: runs nothing, allocates nothing, and tallies for every operation its
//! arithmetic (FLOPs) and its minimum DRAM traffic (bytes) into the stage the model is in
//! ([`Backend::stage_hint`]). Building a [`crate::model::PrrNet`] over it and running one
//! step gives the per-stage cost model of `prrnet bench --breakdown` for any configuration
//! and batch, in milliseconds of CPU time.
//!
//! Conventions (docs/PERFORMANCE.md, "Floors"):
//! - **FLOPs**: 2 per multiply-add for convolutions, linear layers and the relation map's
//!   products; one per output element for elementwise work (a few for BatchNorm, BCE, Adam,
//!   resampling — immaterial next to the GEMMs, and those operations are bandwidth-bound).
//!   The relation map counts its matrix products only: `2·N²·C` per image forward (one
//!   `Q·Qᵀ`), `6·N²·C` backward (`Q·Qᵀ` recomputed, then `G·Q` and `Gᵀ·Q`); its `N²`
//!   exponentials and bin sums are left out (they run on the special-function units, not the
//!   tensor cores). A symmetric-tile kernel can skip half of each `Q·Qᵀ`; the count is for
//!   the dense algorithm.
//! - **Bytes**: f32 storage everywhere (4 bytes per element, whatever the GEMM precision):
//!   every input and weight read once, every output written once, and gradients that an
//!   operation adds into (`+=`, the trait's backward rule) read and written. Scratch that a
//!   backend materialises (im2col columns, the relation's normalised copy) is not counted: the
//!   floor is what an ideal fused kernel must move.
//! - Work outside any stage (the backward's zeroing of the gradient arenas, input upload side
//!   work) is tallied under [`OTHER`].

use std::sync::{Arc, Mutex};

use crate::backend::*;
use crate::error::Result;
use crate::tensor::{BufId, Tensor};

/// The tally name of work enqueued outside any stage.
pub const OTHER: &str = "other";

/// What one stage costs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageCost {
    pub stage: String,
    /// Floating-point operations.
    pub flop: f64,
    /// Of `flop`, those in matrix products (convolutions, linear layers, relation products):
    /// the part tensor cores can run.
    pub matmul_flop: f64,
    /// Minimum DRAM traffic in bytes.
    pub bytes: f64,
    /// Number of backend operations.
    pub ops: u64,
}

/// How often a step used one convolution shape (`prrnet bench-conv` times exactly these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvUse {
    pub shape: ConvShape,
    /// Forward calls (`conv2d`, `conv2d_bias_act`).
    pub forward: u32,
    /// Backward calls asking for the data gradient, and for the weight gradient.
    pub backward_data: u32,
    pub backward_weight: u32,
}

#[derive(Default)]
struct Tally {
    current: Option<&'static str>,
    /// In order of first appearance.
    stages: Vec<StageCost>,
    /// In order of first appearance.
    convs: Vec<ConvUse>,
}

/// The counting backend. Clone the [`CountBackend::costs`] handle before handing the backend
/// to a model; read it after the step.
pub struct CountBackend {
    bufs: Vec<usize>,
    tally: Arc<Mutex<Tally>>,
}

/// A handle on a [`CountBackend`]'s tallies that outlives the model owning the backend.
#[derive(Clone)]
pub struct CostHandle(Arc<Mutex<Tally>>);

impl CostHandle {
    /// The per-stage costs so far, in order of first appearance.
    pub fn stages(&self) -> Vec<StageCost> {
        self.0.lock().map(|t| t.stages.clone()).unwrap_or_default()
    }
    /// The convolution shapes used so far, each with its call counts, in order of first use.
    pub fn conv_uses(&self) -> Vec<ConvUse> {
        self.0.lock().map(|t| t.convs.clone()).unwrap_or_default()
    }
    /// Forget everything counted so far (e.g. the model's construction and input upload).
    pub fn reset(&self) {
        if let Ok(mut t) = self.0.lock() {
            t.stages.clear();
            t.convs.clear();
        }
    }
}

impl Default for CountBackend {
    fn default() -> Self {
        Self::new()
    }
}

const F: f64 = 4.0; // bytes per f32

impl CountBackend {
    pub fn new() -> Self {
        CountBackend {
            bufs: Vec::new(),
            tally: Arc::new(Mutex::new(Tally::default())),
        }
    }

    pub fn costs(&self) -> CostHandle {
        CostHandle(self.tally.clone())
    }

    fn add(&self, flop: f64, matmul_flop: f64, elems: f64) {
        let mut t = self.tally.lock().expect("count tally lock");
        let name = t.current.unwrap_or(OTHER);
        let i = match t.stages.iter().position(|s| s.stage == name) {
            Some(i) => i,
            None => {
                t.stages.push(StageCost {
                    stage: name.to_string(),
                    ..Default::default()
                });
                t.stages.len() - 1
            }
        };
        let s = &mut t.stages[i];
        s.flop += flop + matmul_flop;
        s.matmul_flop += matmul_flop;
        s.bytes += elems * F;
        s.ops += 1;
    }

    /// Count one use of convolution shape `s`: (forward, data gradient, weight gradient).
    fn conv_use(&self, s: &ConvShape, forward: bool, data: bool, weight: bool) {
        let mut t = self.tally.lock().expect("count tally lock");
        let i = match t.convs.iter().position(|c| c.shape == *s) {
            Some(i) => i,
            None => {
                t.convs.push(ConvUse {
                    shape: *s,
                    forward: 0,
                    backward_data: 0,
                    backward_weight: 0,
                });
                t.convs.len() - 1
            }
        };
        let c = &mut t.convs[i];
        c.forward += forward as u32;
        c.backward_data += data as u32;
        c.backward_weight += weight as u32;
    }

    fn check(&self, t: Tensor) -> Result<()> {
        match self.bufs.get(t.buf.0 as usize) {
            Some(&len) if t.off + t.len <= len => Ok(()),
            _ => Err(crate::error::Error::Other(format!(
                "count backend: tensor {t:?} lies outside its buffer"
            ))),
        }
    }
}

fn len(t: Option<Tensor>) -> f64 {
    t.map_or(0.0, |t| t.len as f64)
}

impl Backend for CountBackend {
    fn name(&self) -> String {
        "count (cost model, runs nothing)".into()
    }
    fn alloc(&mut self, len: usize) -> Result<BufId> {
        self.bufs.push(len);
        Ok(BufId(self.bufs.len() as u32 - 1))
    }
    fn allocated_bytes(&self) -> usize {
        0
    }
    fn upload(&self, dst: Tensor, _src: &[f32]) -> Result<()> {
        self.check(dst)
    }
    fn download(&self, src: Tensor, dst: &mut [f32]) -> Result<()> {
        self.check(src)?;
        dst.fill(0.0);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn is_host(&self) -> bool {
        true
    }
    fn set_precision(&self, _p: Precision) -> Result<()> {
        // Precision changes the arithmetic, not the counts.
        Ok(())
    }
    fn stage_hint(&self, stage: Option<&'static str>) {
        if let Ok(mut t) = self.tally.lock() {
            t.current = stage;
        }
    }

    fn fill(&self, t: Tensor, _value: f32) -> Result<()> {
        self.add(0.0, 0.0, t.len as f64);
        Ok(())
    }
    fn copy(&self, src: Tensor, dst: Tensor) -> Result<()> {
        self.add(0.0, 0.0, (src.len + dst.len) as f64);
        Ok(())
    }
    fn add_inplace(&self, dst: Tensor, src: Tensor) -> Result<()> {
        let n = dst.len as f64;
        self.add(n, 0.0, 2.0 * n + src.len as f64);
        Ok(())
    }
    fn relu_inplace(&self, x: Tensor) -> Result<()> {
        let n = x.len as f64;
        self.add(n, 0.0, 2.0 * n);
        Ok(())
    }
    fn relu_backward_inplace(&self, y: Tensor, dy: Tensor) -> Result<()> {
        let n = dy.len as f64;
        self.add(n, 0.0, y.len as f64 + 2.0 * n);
        Ok(())
    }
    fn bias_act_inplace(
        &self,
        rows: usize,
        c: usize,
        _y: Tensor,
        _bias: Tensor,
        residual: Option<Tensor>,
        relu: bool,
    ) -> Result<()> {
        let n = (rows * c) as f64;
        let per = 1.0 + if residual.is_some() { 1.0 } else { 0.0 } + if relu { 1.0 } else { 0.0 };
        self.add(per * n, 0.0, 2.0 * n + c as f64 + len(residual));
        Ok(())
    }
    fn sigmoid(&self, x: Tensor, y: Tensor) -> Result<()> {
        let n = y.len as f64;
        self.add(4.0 * n, 0.0, x.len as f64 + n);
        Ok(())
    }
    fn sigmoid_backward(&self, y: Tensor, dy: Tensor, dx: Tensor) -> Result<()> {
        let n = dx.len as f64;
        self.add(3.0 * n, 0.0, (y.len + dy.len) as f64 + 2.0 * n);
        Ok(())
    }

    fn conv2d(
        &self,
        s: &ConvShape,
        _x: Tensor,
        _w: Tensor,
        bias: Option<Tensor>,
        _y: Tensor,
    ) -> Result<()> {
        let bias_flop = if bias.is_some() {
            s.y_len() as f64
        } else {
            0.0
        };
        self.add(
            bias_flop,
            s.flops(),
            (s.x_len() + s.w_len() + s.y_len()) as f64 + len(bias),
        );
        self.conv_use(s, true, false, false);
        Ok(())
    }
    /// One fused pass (what the GPU's implicit and halo kernels do): the epilogue reads the
    /// bias and the residual and `y` is written once, not written and then re-read by a
    /// separate `bias_act_inplace`.
    fn conv2d_bias_act(
        &self,
        s: &ConvShape,
        _x: Tensor,
        _w: Tensor,
        bias: Tensor,
        residual: Option<Tensor>,
        relu: bool,
        _y: Tensor,
    ) -> Result<()> {
        let y = s.y_len() as f64;
        let per = 1.0 + if residual.is_some() { 1.0 } else { 0.0 } + if relu { 1.0 } else { 0.0 };
        let bytes = (s.x_len() + s.w_len() + s.y_len() + bias.len) as f64 + len(residual);
        self.add(per * y, s.flops(), bytes);
        self.conv_use(s, true, false, false);
        Ok(())
    }
    fn conv2d_backward(
        &self,
        s: &ConvShape,
        _x: Tensor,
        _w: Tensor,
        _dy: Tensor,
        dx: Option<Tensor>,
        dw: Option<Tensor>,
        dbias: Option<Tensor>,
    ) -> Result<()> {
        let mut mm = 0.0;
        let mut elems = s.y_len() as f64; // dy
        if dx.is_some() {
            mm += s.flops();
            elems += s.w_len() as f64 + 2.0 * s.x_len() as f64;
        }
        if dw.is_some() {
            mm += s.flops();
            elems += s.x_len() as f64 + 2.0 * s.w_len() as f64;
        }
        let bias_flop = if dbias.is_some() {
            s.y_len() as f64
        } else {
            0.0
        };
        self.add(bias_flop, mm, elems + 2.0 * len(dbias));
        self.conv_use(s, false, dx.is_some(), dw.is_some());
        Ok(())
    }
    fn linear(
        &self,
        m: usize,
        k: usize,
        n: usize,
        _x: Tensor,
        _w: Tensor,
        bias: Option<Tensor>,
        _y: Tensor,
    ) -> Result<()> {
        let (m, k, n) = (m as f64, k as f64, n as f64);
        let bias_flop = if bias.is_some() { m * n } else { 0.0 };
        self.add(
            bias_flop,
            2.0 * m * k * n,
            m * k + n * k + m * n + len(bias),
        );
        Ok(())
    }
    fn linear_backward(
        &self,
        m: usize,
        k: usize,
        n: usize,
        _x: Tensor,
        _w: Tensor,
        _dy: Tensor,
        dx: Option<Tensor>,
        dw: Option<Tensor>,
        dbias: Option<Tensor>,
    ) -> Result<()> {
        let (m, k, n) = (m as f64, k as f64, n as f64);
        let mut mm = 0.0;
        let mut elems = m * n;
        if dx.is_some() {
            mm += 2.0 * m * k * n;
            elems += n * k + 2.0 * m * k;
        }
        if dw.is_some() {
            mm += 2.0 * m * k * n;
            elems += m * k + 2.0 * n * k;
        }
        let bias_flop = if dbias.is_some() { m * n } else { 0.0 };
        self.add(bias_flop, mm, elems + 2.0 * len(dbias));
        Ok(())
    }

    fn batchnorm(&self, s: &NormShape, t: &BatchNormTensors) -> Result<()> {
        let n = (s.rows * s.c) as f64;
        // Statistics (train: sum and sum of squares), normalise + affine, residual, ReLU.
        let per = if s.train { 5.0 } else { 2.0 }
            + if t.residual.is_some() { 1.0 } else { 0.0 }
            + if t.relu { 1.0 } else { 0.0 };
        let small = 6.0 * s.c as f64; // γ, β, running stats, saved mean/rstd
        self.add(per * n, 0.0, n + len(t.residual) + n + small);
        Ok(())
    }
    fn batchnorm_backward(
        &self,
        s: &NormShape,
        t: &BatchNormTensors,
        g: &BatchNormGrads,
    ) -> Result<()> {
        let n = (s.rows * s.c) as f64;
        // Read x and dy (and y to mask by the ReLU); reductions for dγ, dβ; dx += ...
        let mut elems = 2.0 * n + if t.relu { n } else { 0.0 } + 4.0 * s.c as f64;
        elems += 2.0 * len(g.dx) + 2.0 * len(g.dresidual);
        elems += 2.0 * (len(g.dgamma) + len(g.dbeta));
        self.add(8.0 * n, 0.0, elems);
        Ok(())
    }

    fn resize_nearest(
        &self,
        s: &ResizeShape,
        _x: Tensor,
        _y: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        let y = s.y_len() as f64;
        let reads = s.x_len().min(s.y_len()) as f64 + if accumulate { y } else { 0.0 };
        self.add(if accumulate { y } else { 0.0 }, 0.0, reads + y);
        Ok(())
    }
    fn resize_nearest_backward(&self, s: &ResizeShape, _dy: Tensor, _dx: Tensor) -> Result<()> {
        let x = s.x_len() as f64;
        self.add(s.y_len() as f64, 0.0, s.y_len() as f64 + 2.0 * x);
        Ok(())
    }
    fn fuse_sum_relu(&self, s: &SumShape, terms: &[SumTerm], _y: Tensor) -> Result<()> {
        let y = s.y_len() as f64;
        let reads: usize = terms.iter().map(|t| t.x.len.min(s.y_len())).sum();
        self.add(y * terms.len() as f64, 0.0, reads as f64 + y);
        Ok(())
    }
    fn resize_bilinear_into(
        &self,
        s: &ResizeShape,
        _x: Tensor,
        _y: Tensor,
        _y_c: usize,
        _offset: usize,
    ) -> Result<()> {
        let y = s.y_len() as f64;
        self.add(7.0 * y, 0.0, s.x_len().min(4 * s.y_len()) as f64 + y);
        Ok(())
    }
    fn resize_bilinear_into_backward(
        &self,
        s: &ResizeShape,
        _dy: Tensor,
        _dy_c: usize,
        _offset: usize,
        _dx: Tensor,
    ) -> Result<()> {
        let y = s.y_len() as f64;
        self.add(8.0 * y, 0.0, y + 2.0 * s.x_len() as f64);
        Ok(())
    }
    fn adaptive_avg_pool(&self, s: &ResizeShape, _x: Tensor, _y: Tensor) -> Result<()> {
        let x = s.x_len() as f64;
        self.add(x, 0.0, x + s.y_len() as f64);
        Ok(())
    }
    fn adaptive_avg_pool_backward(&self, s: &ResizeShape, _dy: Tensor, _dx: Tensor) -> Result<()> {
        let x = s.x_len() as f64;
        self.add(x, 0.0, s.y_len() as f64 + 2.0 * x);
        Ok(())
    }

    fn concat_channels(
        &self,
        rows: usize,
        _src: Tensor,
        src_c: usize,
        _dst: Tensor,
        _dst_c: usize,
        _offset: usize,
    ) -> Result<()> {
        self.add(0.0, 0.0, 2.0 * (rows * src_c) as f64);
        Ok(())
    }
    fn concat_channels_backward(
        &self,
        rows: usize,
        _d_dst: Tensor,
        _dst_c: usize,
        _offset: usize,
        _d_src: Tensor,
        src_c: usize,
    ) -> Result<()> {
        let n = (rows * src_c) as f64;
        self.add(n, 0.0, 3.0 * n);
        Ok(())
    }

    fn relation(
        &self,
        s: &RelationShape,
        _f: Tensor,
        _norms: Tensor,
        _lsum: Tensor,
        _p: Tensor,
    ) -> Result<()> {
        let (b, np, c, nb) = (s.b as f64, s.pixels() as f64, s.c as f64, s.bins() as f64);
        // Normalisation: ~3 FLOPs per feature value; Q·Qᵀ: 2·N²·C per image.
        self.add(
            3.0 * b * np * c,
            2.0 * b * np * np * c,
            b * np * c + 2.0 * b * np + b * np * nb,
        );
        Ok(())
    }
    fn relation_backward(
        &self,
        s: &RelationShape,
        _f: Tensor,
        _norms: Tensor,
        _lsum: Tensor,
        _p: Tensor,
        _dp: Tensor,
        _df: Tensor,
    ) -> Result<()> {
        let (b, np, c, nb) = (s.b as f64, s.pixels() as f64, s.c as f64, s.bins() as f64);
        // Q·Qᵀ again, then G·Q and Gᵀ·Q: 6·N²·C per image; the normalisation's backward.
        self.add(
            6.0 * b * np * c,
            6.0 * b * np * np * c,
            b * np * c + 2.0 * b * np + 2.0 * b * np * nb + 2.0 * b * np * c,
        );
        Ok(())
    }
    fn attention_pool(
        &self,
        b: usize,
        n: usize,
        c: usize,
        _f: Tensor,
        _m: Tensor,
        _out: Tensor,
    ) -> Result<()> {
        let (b, n, c) = (b as f64, n as f64, c as f64);
        self.add(4.0 * b * n * c, 0.0, b * n * c + b * n + 2.0 * b * c);
        Ok(())
    }
    fn attention_pool_backward(
        &self,
        b: usize,
        n: usize,
        c: usize,
        _f: Tensor,
        _m: Tensor,
        _out: Tensor,
        _dout: Tensor,
        _df: Tensor,
        _dm: Tensor,
    ) -> Result<()> {
        let (b, n, c) = (b as f64, n as f64, c as f64);
        // Read f, m, out, dout; df += (r/w), dm += (r/w).
        self.add(
            6.0 * b * n * c,
            0.0,
            b * n * c + b * n + 4.0 * b * c + 2.0 * b * n * c + 2.0 * b * n,
        );
        Ok(())
    }
    fn region_metrics(
        &self,
        b: usize,
        d: usize,
        groups: usize,
        _ab: Tensor,
        _z: Tensor,
    ) -> Result<()> {
        let (b, d) = (b as f64, d as f64);
        self.add(8.0 * b * d, 0.0, 2.0 * b * d + 3.0 * b * groups as f64);
        Ok(())
    }
    fn region_metrics_backward(
        &self,
        b: usize,
        d: usize,
        groups: usize,
        _ab: Tensor,
        _dz: Tensor,
        _dab: Tensor,
    ) -> Result<()> {
        let (b, d) = (b as f64, d as f64);
        self.add(
            12.0 * b * d,
            0.0,
            2.0 * b * d + 3.0 * b * groups as f64 + 4.0 * b * d,
        );
        Ok(())
    }

    fn bce_with_logits(
        &self,
        rows: usize,
        cols: usize,
        _x: Tensor,
        _target: Tensor,
        _weight: Tensor,
        _scale: f32,
        _loss: Tensor,
    ) -> Result<()> {
        let n = (rows * cols) as f64;
        self.add(6.0 * n, 0.0, 2.0 * n + rows as f64 + 1.0);
        Ok(())
    }
    fn bce_with_logits_backward(
        &self,
        rows: usize,
        cols: usize,
        _x: Tensor,
        _target: Tensor,
        _weight: Tensor,
        _scale: f32,
        _dx: Tensor,
    ) -> Result<()> {
        let n = (rows * cols) as f64;
        self.add(6.0 * n, 0.0, 4.0 * n + rows as f64);
        Ok(())
    }
    fn adam(&self, param: Tensor, _g: Tensor, _m: Tensor, _v: Tensor, _a: &AdamArgs) -> Result<()> {
        let n = param.len as f64;
        // Read param, grad, m, v; write param, m, v.
        self.add(12.0 * n, 0.0, 7.0 * n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_flops_match_conv_shape() {
        let mut be = CountBackend::new();
        let costs = be.costs();
        let s = ConvShape::new(2, 17, 13, 30, 60, 3, 2, 1);
        let x = Tensor::new(be.alloc(s.x_len()).unwrap(), 0, s.x_len());
        let w = Tensor::new(be.alloc(s.w_len()).unwrap(), 0, s.w_len());
        let y = Tensor::new(be.alloc(s.y_len()).unwrap(), 0, s.y_len());
        be.stage_hint(Some("conv"));
        be.conv2d(&s, x, w, None, y).unwrap();
        be.stage_hint(None);
        be.conv2d_backward(&s, x, w, y, Some(x), Some(w), None)
            .unwrap();
        let st = costs.stages();
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].stage, "conv");
        assert_eq!(st[0].flop, s.flops());
        assert_eq!(st[0].matmul_flop, s.flops());
        assert_eq!(
            st[0].bytes,
            4.0 * (s.x_len() + s.w_len() + s.y_len()) as f64
        );
        assert_eq!(st[1].stage, OTHER);
        assert_eq!(st[1].flop, 2.0 * s.flops());
        costs.reset();
        // The fused epilogue: y written once; the bias and the residual read once.
        let bias = Tensor::new(be.alloc(s.cout).unwrap(), 0, s.cout);
        let r = Tensor::new(be.alloc(s.y_len()).unwrap(), 0, s.y_len());
        be.conv2d_bias_act(&s, x, w, bias, Some(r), true, y)
            .unwrap();
        let st = costs.stages();
        assert_eq!(st[0].matmul_flop, s.flops());
        assert_eq!(st[0].flop, s.flops() + 3.0 * s.y_len() as f64);
        assert_eq!(
            st[0].bytes,
            4.0 * (s.x_len() + s.w_len() + 2 * s.y_len() + s.cout) as f64
        );
        costs.reset();
        assert!(costs.stages().is_empty());
    }

    #[test]
    fn relation_forward_is_two_n_squared_c_per_image() {
        let be = CountBackend::new();
        let costs = be.costs();
        let s = RelationShape {
            b: 1,
            h: 75,
            w: 75,
            c: 450,
            n: 5,
        };
        let t = Tensor::new(BufId(0), 0, 0);
        be.relation(&s, t, t, t, t).unwrap();
        let st = costs.stages();
        let n = 75.0f64 * 75.0;
        assert_eq!(st[0].matmul_flop, 2.0 * n * n * 450.0);
        assert!((st[0].matmul_flop / 1e9 - 28.48).abs() < 0.01);
    }
}
