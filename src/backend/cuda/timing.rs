//! Device timing markers: CUDA events recorded on the backend's stream (timing enabled), so a
//! stage's time is what the GPU spent between two points of the queue, measured without
//! synchronising the host. The context disables cudarc's automatic event tracking; these
//! events are explicit and independent of it.

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;

use super::context::{dev_err, CudaBackend};
use crate::backend::Marker;
use crate::error::{Error, Result};

/// Record a timing event at the current end of the stream.
pub(crate) fn mark(be: &CudaBackend) -> Result<Marker> {
    be.bind()?;
    let ev = be
        .stream
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| dev_err("recording a timing event", e))?;
    Ok(Marker::Device(Box::new(ev)))
}

fn event(m: &Marker) -> Result<&CudaEvent> {
    match m {
        Marker::Device(b) => b.downcast_ref::<CudaEvent>(),
        Marker::Host(_) => None,
    }
    .ok_or_else(|| Error::Other(format!("timer marker {m:?} was not made by a CUDA backend")))
}

/// Milliseconds between two recorded events (waits until `b` has been reached).
pub(crate) fn elapsed_ms(be: &CudaBackend, a: &Marker, b: &Marker) -> Result<f64> {
    be.bind()?;
    let (a, b) = (event(a)?, event(b)?);
    a.elapsed_ms(b).map(f64::from).map_err(|e| {
        dev_err(
            "reading a timing event (an earlier kernel may have failed)",
            e,
        )
    })
}
