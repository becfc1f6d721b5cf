//! NVTX ranges for Nsight timelines (cargo feature `nvtx`): every stage of the network and every
//! HRNet module is a named range. Without the feature, or without a profiler attached, a range
//! costs nothing.

use std::ffi::CStr;

/// A range that ends when dropped.
#[must_use = "the range ends when this value is dropped"]
pub struct Range {
    #[cfg(feature = "nvtx")]
    _inner: nvtx::LocalRange,
}

/// Start a range named `name` on this thread.
#[inline]
pub fn range(name: &CStr) -> Range {
    #[cfg(feature = "nvtx")]
    {
        Range {
            _inner: nvtx::LocalRange::new(name),
        }
    }
    #[cfg(not(feature = "nvtx"))]
    {
        let _ = name;
        Range {}
    }
}
