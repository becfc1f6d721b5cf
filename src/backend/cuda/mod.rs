//! The CUDA backend. Device discovery is guarded: cudarc panics when libcuda is absent, so we
//! ask whether the driver library exists before touching it and turn every failure into an
//! ordinary error.

use crate::backend::Backend;
use crate::error::{Error, Result};

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only probes for the shared library; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Open CUDA device `ordinal`.
pub fn open(ordinal: usize) -> Result<Box<dyn Backend>> {
    if !driver_present() {
        return Err(Error::Device(
            "no CUDA driver (libcuda) on this machine; use --device cpu".into(),
        ));
    }
    Err(Error::Device(format!(
        "CUDA device {ordinal}: this build has no CUDA kernels yet; use --device cpu"
    )))
}
