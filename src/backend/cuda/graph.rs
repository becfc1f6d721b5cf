//! CUDA graphs: record a fixed-shape sequence of launches and cuBLAS calls once, replay it
//! with one launch (no per-kernel CPU launch cost). Capture happens on the backend's own
//! non-default stream; nothing may allocate or synchronise while it records (the workspace
//! and cuBLAS's workspace are sized before capture).

use std::sync::atomic::Ordering;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::context::{dev_err, CudaBackend};
use crate::error::{Error, Result};

/// An instantiated graph.
pub(crate) struct Graph(CudaGraph);

// SAFETY: a graph exec handle may be launched from any thread that has the context bound;
// the backend binds before every call and serialises access through a mutex.
unsafe impl Send for Graph {}
unsafe impl Sync for Graph {}

impl CudaBackend {
    pub(crate) fn graph_begin_impl(&self) -> Result<()> {
        self.bind()?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| dev_err("cuStreamBeginCapture", e))?;
        // Convolution tuning times its paths, which needs the host to wait: not while recording.
        self.capturing.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn graph_end_impl(&self) -> Result<usize> {
        self.capturing.store(false, Ordering::Relaxed);
        self.bind()?;
        let graph = self
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(|e| {
                dev_err(
                    "ending the CUDA graph capture (an operation in it may have allocated or \
                     synchronised)",
                    e,
                )
            })?
            .ok_or_else(|| Error::Device("the CUDA graph capture recorded nothing".into()))?;
        let mut graphs = self
            .graphs
            .lock()
            .map_err(|_| Error::Device("graph list lock poisoned".into()))?;
        graphs.push(Graph(graph));
        Ok(graphs.len() - 1)
    }

    pub(crate) fn graph_launch_impl(&self, id: usize) -> Result<()> {
        self.bind()?;
        let graphs = self
            .graphs
            .lock()
            .map_err(|_| Error::Device("graph list lock poisoned".into()))?;
        let g = graphs
            .get(id)
            .ok_or_else(|| Error::Device(format!("no CUDA graph {id}")))?;
        g.0.launch().map_err(|e| dev_err("cuGraphLaunch", e))
    }
}
