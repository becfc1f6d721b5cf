//! `impl Backend for CudaBackend`: every operation enqueued on the backend's stream, each
//! dispatching to its family file (named like the kernel file and the CPU twin).

use super::context::CudaBackend;
use super::{conv, conv_implicit, elementwise as ew, head, loss, norm, relation, resample};
use crate::backend::*;
use crate::error::Result;
use crate::tensor::{BufId, Tensor};

impl Backend for CudaBackend {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn alloc(&mut self, len: usize) -> Result<BufId> {
        self.alloc_buf(len)
    }
    fn allocated_bytes(&self) -> usize {
        self.total_bytes()
    }
    fn upload(&self, dst: Tensor, src: &[f32]) -> Result<()> {
        self.upload_to(dst, src)
    }
    fn upload_with(&self, dst: Tensor, fill: &mut dyn FnMut(&mut [f32])) -> Result<()> {
        self.upload_pinned(dst, fill)
    }
    fn download(&self, src: Tensor, dst: &mut [f32]) -> Result<()> {
        self.download_from(src, dst)
    }
    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.synchronize_stream()
    }

    fn profiler_start(&self) -> Result<()> {
        self.bind()?;
        cudarc::driver::profiler_start()
            .map_err(|e| crate::error::Error::Device(format!("cuProfilerStart: {e:?}")))
    }

    fn profiler_stop(&self) -> Result<()> {
        self.bind()?;
        cudarc::driver::profiler_stop()
            .map_err(|e| crate::error::Error::Device(format!("cuProfilerStop: {e:?}")))
    }

    fn supports_graphs(&self) -> bool {
        true
    }

    fn kernel_choices(&self) -> Vec<crate::backend::KernelChoice> {
        CudaBackend::kernel_choices(self)
    }

    fn saved_kernel_choices(&self) -> Option<String> {
        CudaBackend::saved_kernel_choices(self)
    }

    fn restore_kernel_choices(&self, json: &str) -> Result<()> {
        CudaBackend::restore_kernel_choices(self, json)
    }

    fn graph_begin(&self) -> Result<()> {
        self.graph_begin_impl()
    }

    fn graph_end(&self) -> Result<usize> {
        self.graph_end_impl()
    }

    fn graph_launch(&self, id: usize) -> Result<()> {
        self.graph_launch_impl(id)
    }

    fn precision(&self) -> crate::backend::Precision {
        self.precision_impl()
    }

    fn timer_mark(&self) -> Result<crate::backend::Marker> {
        super::timing::mark(self)
    }

    fn timer_elapsed_ms(
        &self,
        a: &crate::backend::Marker,
        b: &crate::backend::Marker,
    ) -> Result<f64> {
        super::timing::elapsed_ms(self, a, b)
    }

    fn set_precision(&self, p: crate::backend::Precision) -> Result<()> {
        self.set_precision_impl(p)
    }

    fn fill(&self, t: Tensor, value: f32) -> Result<()> {
        ew::fill(self, t, value)
    }
    fn copy(&self, src: Tensor, dst: Tensor) -> Result<()> {
        ew::copy(self, src, dst)
    }
    fn add_inplace(&self, dst: Tensor, src: Tensor) -> Result<()> {
        ew::add_inplace(self, dst, src)
    }
    fn relu_inplace(&self, x: Tensor) -> Result<()> {
        ew::relu_inplace(self, x)
    }
    fn relu_backward_inplace(&self, y: Tensor, dy: Tensor) -> Result<()> {
        ew::relu_backward_inplace(self, y, dy)
    }
    fn bias_act_inplace(
        &self,
        rows: usize,
        c: usize,
        y: Tensor,
        bias: Tensor,
        residual: Option<Tensor>,
        relu: bool,
    ) -> Result<()> {
        ew::bias_act_inplace(self, rows, c, y, bias, residual, relu)
    }
    fn sigmoid(&self, x: Tensor, y: Tensor) -> Result<()> {
        ew::sigmoid(self, x, y)
    }
    fn sigmoid_backward(&self, y: Tensor, dy: Tensor, dx: Tensor) -> Result<()> {
        ew::sigmoid_backward(self, y, dy, dx)
    }

    fn conv2d(
        &self,
        s: &ConvShape,
        x: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        y: Tensor,
    ) -> Result<()> {
        conv_implicit::conv2d(self, s, x, w, bias, y)
    }
    fn conv2d_bias_act(
        &self,
        s: &ConvShape,
        x: Tensor,
        w: Tensor,
        bias: Tensor,
        residual: Option<Tensor>,
        relu: bool,
        y: Tensor,
    ) -> Result<()> {
        conv_implicit::conv2d_bias_act(self, s, x, w, bias, residual, relu, y)
    }
    fn conv2d_backward(
        &self,
        s: &ConvShape,
        x: Tensor,
        w: Tensor,
        dy: Tensor,
        dx: Option<Tensor>,
        dw: Option<Tensor>,
        dbias: Option<Tensor>,
    ) -> Result<()> {
        conv_implicit::conv2d_backward(self, s, x, w, dy, dx, dw, dbias)
    }
    fn linear(
        &self,
        m: usize,
        k: usize,
        n: usize,
        x: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        y: Tensor,
    ) -> Result<()> {
        conv::linear(self, m, k, n, x, w, bias, y)
    }
    fn linear_backward(
        &self,
        m: usize,
        k: usize,
        n: usize,
        x: Tensor,
        w: Tensor,
        dy: Tensor,
        dx: Option<Tensor>,
        dw: Option<Tensor>,
        dbias: Option<Tensor>,
    ) -> Result<()> {
        conv::linear_backward(self, m, k, n, x, w, dy, dx, dw, dbias)
    }

    fn batchnorm(&self, s: &NormShape, t: &BatchNormTensors) -> Result<()> {
        norm::forward(self, s, t)
    }
    fn batchnorm_backward(
        &self,
        s: &NormShape,
        t: &BatchNormTensors,
        g: &BatchNormGrads,
    ) -> Result<()> {
        norm::backward(self, s, t, g)
    }

    fn resize_nearest(
        &self,
        s: &ResizeShape,
        x: Tensor,
        y: Tensor,
        accumulate: bool,
    ) -> Result<()> {
        resample::nearest(self, s, x, y, accumulate)
    }
    fn resize_nearest_backward(&self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()> {
        resample::nearest_backward(self, s, dy, dx)
    }
    fn fuse_sum_relu(&self, s: &SumShape, terms: &[SumTerm], y: Tensor) -> Result<()> {
        resample::fuse_sum_relu(self, s, terms, y)
    }
    fn resize_bilinear_into(
        &self,
        s: &ResizeShape,
        x: Tensor,
        y: Tensor,
        y_c: usize,
        offset: usize,
    ) -> Result<()> {
        resample::bilinear_slice(self, s, x, y, y_c, offset, false)
    }
    fn resize_bilinear_into_backward(
        &self,
        s: &ResizeShape,
        dy: Tensor,
        dy_c: usize,
        offset: usize,
        dx: Tensor,
    ) -> Result<()> {
        resample::bilinear_slice(self, s, dx, dy, dy_c, offset, true)
    }
    fn adaptive_avg_pool(&self, s: &ResizeShape, x: Tensor, y: Tensor) -> Result<()> {
        resample::adaptive_avg_pool(self, s, x, y)
    }
    fn adaptive_avg_pool_backward(&self, s: &ResizeShape, dy: Tensor, dx: Tensor) -> Result<()> {
        resample::adaptive_avg_pool_backward(self, s, dy, dx)
    }

    fn concat_channels(
        &self,
        rows: usize,
        src: Tensor,
        src_c: usize,
        dst: Tensor,
        dst_c: usize,
        offset: usize,
    ) -> Result<()> {
        head::concat_forward(self, rows, src, src_c, dst, dst_c, offset)
    }
    fn concat_channels_backward(
        &self,
        rows: usize,
        d_dst: Tensor,
        dst_c: usize,
        offset: usize,
        d_src: Tensor,
        src_c: usize,
    ) -> Result<()> {
        head::concat_backward(self, rows, d_dst, dst_c, offset, d_src, src_c)
    }

    fn relation(
        &self,
        s: &RelationShape,
        f: Tensor,
        norms: Tensor,
        lsum: Tensor,
        p: Tensor,
    ) -> Result<()> {
        relation::forward(self, s, f, norms, lsum, p)
    }
    fn relation_backward(
        &self,
        s: &RelationShape,
        f: Tensor,
        norms: Tensor,
        lsum: Tensor,
        p: Tensor,
        dp: Tensor,
        df: Tensor,
    ) -> Result<()> {
        relation::backward(self, s, f, norms, lsum, p, dp, df)
    }
    fn attention_pool(
        &self,
        b: usize,
        n: usize,
        c: usize,
        f: Tensor,
        m: Tensor,
        out: Tensor,
    ) -> Result<()> {
        head::attention_forward(self, b, n, c, f, m, out)
    }
    fn attention_pool_backward(
        &self,
        b: usize,
        n: usize,
        c: usize,
        f: Tensor,
        m: Tensor,
        out: Tensor,
        dout: Tensor,
        df: Tensor,
        dm: Tensor,
    ) -> Result<()> {
        head::attention_backward(self, b, n, c, f, m, out, dout, df, dm)
    }
    fn region_metrics(
        &self,
        b: usize,
        d: usize,
        groups: usize,
        ab: Tensor,
        z: Tensor,
    ) -> Result<()> {
        head::region_forward(self, b, d, groups, ab, z)
    }
    fn region_metrics_backward(
        &self,
        b: usize,
        d: usize,
        groups: usize,
        ab: Tensor,
        dz: Tensor,
        dab: Tensor,
    ) -> Result<()> {
        head::region_backward(self, b, d, groups, ab, dz, dab)
    }

    fn bce_with_logits(
        &self,
        rows: usize,
        cols: usize,
        x: Tensor,
        target: Tensor,
        weight: Tensor,
        scale: f32,
        loss: Tensor,
    ) -> Result<()> {
        loss::bce_forward(self, rows, cols, x, target, weight, scale, loss)
    }
    fn bce_with_logits_backward(
        &self,
        rows: usize,
        cols: usize,
        x: Tensor,
        target: Tensor,
        weight: Tensor,
        scale: f32,
        dx: Tensor,
    ) -> Result<()> {
        loss::bce_backward(self, rows, cols, x, target, weight, scale, dx)
    }
    fn adam(&self, param: Tensor, grad: Tensor, m: Tensor, v: Tensor, a: &AdamArgs) -> Result<()> {
        loss::adam(self, param, grad, m, v, a)
    }
}
