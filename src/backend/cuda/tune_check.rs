//! The tuner's check that a candidate computes what the trusted one computes, before its time
//! counts (`tune::choose`). Why: most candidates were written without a GPU to run them, and
//! a kernel can be wrong on a device while right everywhere it was tested (a race the
//! emulator's thread orders never hit, a limit of that device). Measured alone, such a kernel
//! would be chosen whenever it is fastest; checked, it is left out and reported
//! (`KernelChoice::rejected`, and a warning on stderr).
//!
//! The reference is the first candidate to run, in order of trust ([`Candidate::trust`]: the
//! paths checked against the CPU backend on a GPU first). Its output is kept; every later
//! candidate's output is compared with it by kernels/compare.cu, over the reference's own
//! contribution (its output minus what the output held before, for a call that accumulates).
//! Correct candidates differ by rounding only, within [`tolerance`]; a wrong index, a race or a
//! missing barrier differs by the size of the values themselves.

use cudarc::driver::{CudaSlice, DevicePtr};

use super::context::{dev_err, Arg, CudaBackend};
use super::kernels::names::compare as k;
use super::tune::Candidate;
use crate::backend::Precision;
use crate::error::Result;
use crate::tensor::Tensor;

/// Values per block of `compare_partial` (kernels/compare.cu).
const VALUES: usize = 7;
/// Threads per block of `compare_partial`, and the most blocks one comparison uses.
const THREADS: usize = 256;
const MAX_BLOCKS: usize = 1024;
/// Rounding of the f32 output itself, allowed on top of the tolerance: two correct candidates
/// that accumulate into the same values may each round the sum by half an ulp.
const ULPS: f64 = 1.0 / (1u64 << 21) as f64;

/// The largest difference two correct candidates may show at `precision`, relative to the
/// reference's contribution: (in the L2 norm, in the largest element). fp32 candidates round
/// like f32 sums in another order (about 1e-6 apart); TF32 and BF16 round their operands, some
/// candidates one way and some another (cuBLAS may run TF32 kernels where ours round to BF16):
/// up to about 3e-3 (TF32) and 2e-2 (BF16) apart in the L2 norm, several times that in the
/// largest element. A wrong result is off by the size of the values.
pub(crate) fn tolerance(precision: Precision) -> (f64, f64) {
    match precision {
        Precision::Fp32 => (1e-4, 1e-3),
        Precision::Tf32 => (1e-2, 5e-2),
        Precision::Bf16 => (5e-2, 2e-1),
    }
}

/// One tuning call's comparisons: the output, what it held before (for a call that accumulates),
/// the reference's copy of it and the scratch of the comparison kernel.
pub(crate) struct Check {
    out: u64,
    len: usize,
    base: Option<u64>,
    precision: Precision,
    reference: Option<&'static str>,
    copy: (CudaSlice<f32>, u64),
    partials: CudaSlice<f64>,
    blocks: usize,
}

impl Check {
    /// A check of `out` (`base`: the saved contents of an output the call accumulates into), or
    /// None when its buffers cannot be allocated (then candidates are timed unchecked).
    pub(crate) fn new(
        be: &CudaBackend,
        out: Tensor,
        base: Option<u64>,
        precision: Precision,
    ) -> Result<Option<Check>> {
        be.bind()?;
        let len = out.len;
        let blocks = len.div_ceil(THREADS).clamp(1, MAX_BLOCKS);
        // SAFETY: the copy is written (by the reference's run) before it is read; the partials
        // are written by every block of each comparison before they are read back.
        let (Ok(copy), Ok(partials)) = (unsafe { be.stream.alloc::<f32>(len.max(1)) }, unsafe {
            be.stream.alloc::<f64>(blocks * VALUES)
        }) else {
            return Ok(None);
        };
        be.note_tune_transient(
            4 * len.max(1) * (1 + base.is_some() as usize) + 8 * blocks * VALUES,
        );
        let (copy_ptr, sync) = copy.device_ptr(&be.stream);
        drop(sync);
        Ok(Some(Check {
            out: be.ptr(out)?,
            len,
            base,
            precision,
            reference: None,
            copy: (copy, copy_ptr),
            partials,
            blocks,
        }))
    }

    /// The candidate the others were compared with, once one has run.
    pub(crate) fn reference(&self) -> Option<&'static str> {
        self.reference
    }

    /// After candidate `c` has run once: the first to get here becomes the reference (its
    /// output is kept); any later one is compared with it. Some(reason) when `c`'s output does
    /// not agree.
    pub(crate) fn disagreement<P: Candidate>(
        &mut self,
        be: &CudaBackend,
        c: P,
    ) -> Result<Option<String>> {
        if self.reference.is_none() {
            super::elementwise::copy_ptr(be, self.out, self.copy.1, self.len)?;
            self.reference = Some(c.name());
            return Ok(None);
        }
        let d = self.measure(be)?;
        let (tol_l2, tol_max) = tolerance(self.precision);
        let reference = self.reference.unwrap_or("?");
        Ok(if d.mismatched > 0.0 {
            Some(format!(
                "{} values are finite in its output and not in {reference}'s, or the reverse",
                d.mismatched
            ))
        } else if d.diff_l2 > tol_l2 * d.contribution_l2 + ULPS * d.reference_l2 {
            Some(format!(
                "differs from {reference} by {:.2e} in the L2 norm, relative to {reference}'s \
                 result (at most {tol_l2:.0e} at {})",
                d.diff_l2 / d.contribution_l2,
                self.precision
            ))
        } else if d.diff_max > tol_max * d.contribution_max + ULPS * d.reference_max {
            Some(format!(
                "differs from {reference} by {:.2e} of the largest value in some element \
                 (at most {tol_max:.0e} at {})",
                d.diff_max / d.contribution_max,
                self.precision
            ))
        } else {
            None
        })
    }

    /// Run `compare_partial` on the output against the reference's copy and add up its blocks.
    fn measure(&mut self, be: &CudaBackend) -> Result<Difference> {
        let (partials_ptr, sync) = self.partials.device_ptr(&be.stream);
        drop(sync);
        be.launch(
            k::COMPARE_PARTIAL,
            (self.blocks as u32, 1, 1),
            (THREADS as u32, 1, 1),
            0,
            &[
                Arg::Ptr(self.out),
                Arg::Ptr(self.copy.1),
                Arg::Ptr(self.base.unwrap_or(0)),
                Arg::I64(self.len as i64),
                Arg::Ptr(partials_ptr),
            ],
        )?;
        let mut host = vec![0.0f64; self.blocks * VALUES];
        // SAFETY: `host` has room for every partial; the stream is synchronised before it is read.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(
                &mut host,
                partials_ptr,
                be.stream.cu_stream(),
            )
        }
        .map_err(|e| dev_err("device-to-host copy of a comparison", e))?;
        be.synchronize_stream()?;
        let mut v = [0.0f64; VALUES];
        for block in host.chunks_exact(VALUES) {
            for (i, x) in block.iter().enumerate() {
                v[i] = if (3..=5).contains(&i) {
                    v[i].max(*x)
                } else {
                    v[i] + x
                };
            }
        }
        Ok(Difference {
            diff_l2: v[0].sqrt(),
            contribution_l2: v[1].sqrt(),
            reference_l2: v[2].sqrt(),
            diff_max: v[3],
            contribution_max: v[4],
            reference_max: v[5],
            mismatched: v[6],
        })
    }
}

/// What `compare_partial` found, summed over its blocks.
struct Difference {
    diff_l2: f64,
    contribution_l2: f64,
    reference_l2: f64,
    diff_max: f64,
    contribution_max: f64,
    reference_max: f64,
    mismatched: f64,
}
