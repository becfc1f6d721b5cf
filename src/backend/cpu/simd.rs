//! Runtime choice of vector instructions for the CPU backend's plain loops.
//!
//! The crate is built for the baseline x86-64 (SSE2), so that one binary runs on any x86-64
//! host (the GPU bundle is built on one machine and run on another). Loops the compiler
//! vectorises on their own would then use 4-wide SSE. [`simd_fn!`] compiles a function's body
//! once more for AVX-512F and once for AVX2 and calls the widest the CPU has. The bodies use no
//! fused multiply-add (Rust never contracts `a * b + c`), so every instruction set gives the
//! same bits.

/// `simd_fn! { fn name(arg: Type, ...) -> Ret { body } }` defines `name`, which runs `body`
/// compiled for AVX-512F where the CPU has it, else for AVX2, else for the build's baseline.
/// The body is an `#[inline(always)]` function inlined into a wrapper carrying the target
/// feature, so every loop in it is vectorised for that feature (a closure handed to such a
/// wrapper is not reliably inlined, and then runs as baseline code). Put whole loops in the
/// body, not one element's work: the feature check costs an atomic load per call.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use simd_fn;

/// The vector instructions the hand-written kernels (`conv_direct`, `conv_small`) run on,
/// with intrinsics: unlike [`simd_fn!`]'s bodies they use fused multiply-adds, the same ones
/// on both, so both give the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 32 registers of 16 lanes.
    Avx512,
    /// AVX2 with FMA: 16 registers of 8 lanes.
    Avx2,
}

impl Isa {
    /// The widest this CPU has, if any.
    pub fn detect() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Some(Isa::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Some(Isa::Avx2);
            }
        }
        None
    }

    /// Whether this CPU can run kernels of `self` (an AVX-512 CPU runs the AVX2 ones too).
    pub fn available(self) -> bool {
        match (self, Isa::detect()) {
            (_, None) => false,
            (Isa::Avx512, Some(have)) => have == Isa::Avx512,
            (Isa::Avx2, Some(_)) => true,
        }
    }
}
