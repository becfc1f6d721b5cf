//! Handles to backend-owned buffers.
//!
//! A [`Tensor`] names a contiguous range of `f32` elements inside one backend buffer. It holds no
//! data and no shape: operations receive their dimensions explicitly (llm.c style), and the
//! backend resolves the handle to host memory (CPU) or a device pointer (CUDA). Handles are `Copy`,
//! so the model can keep every activation, gradient and parameter as a plain field.

/// Index of a buffer owned by a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufId(pub u32);

/// `len` consecutive `f32` elements starting at element `off` of buffer `buf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub buf: BufId,
    pub off: usize,
    pub len: usize,
}

impl Tensor {
    pub fn new(buf: BufId, off: usize, len: usize) -> Self {
        Tensor { buf, off, len }
    }
    /// The sub-range `[start, start + len)` of this tensor.
    pub fn slice(self, start: usize, len: usize) -> Tensor {
        assert!(
            start + len <= self.len,
            "slice {start}+{len} out of {}",
            self.len
        );
        Tensor {
            buf: self.buf,
            off: self.off + start,
            len,
        }
    }
    /// The same range in another buffer with the same layout (gradient arenas mirror the
    /// activation and parameter arenas, so `x.in_buf(grads)` is the gradient of `x`).
    pub fn in_buf(self, buf: BufId) -> Tensor {
        Tensor { buf, ..self }
    }
    pub fn overlaps(&self, other: &Tensor) -> bool {
        self.buf == other.buf && self.off < other.off + other.len && other.off < self.off + self.len
    }
}

/// A bump allocator over one (not yet allocated) buffer: the model asks for every tensor it
/// needs while it is being built, then the backend allocates the total once.
#[derive(Debug)]
pub struct Arena {
    pub buf: BufId,
    pub used: usize,
}

impl Arena {
    pub fn new(buf: BufId) -> Self {
        Arena { buf, used: 0 }
    }
    pub fn take(&mut self, len: usize) -> Tensor {
        // Keep every tensor 16-float (64-byte) aligned: vector loads on the CPU, coalesced
        // and vectorised accesses on the GPU.
        let off = self.used.next_multiple_of(16);
        self.used = off + len;
        Tensor {
            buf: self.buf,
            off,
            len,
        }
    }
}
