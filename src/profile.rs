//! `--profile-window START:COUNT`: bracket exactly iterations `START .. START+COUNT` (0-based,
//! warm-up included) with the profiler start/stop calls, so that
//! `nsys profile --capture-range=cudaProfilerApi` and `ncu --profile-from-start off` capture
//! only them (see docs/PROFILING.md).

use crate::backend::Backend;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileWindow {
    pub start: u64,
    pub count: u64,
}

impl std::str::FromStr for ProfileWindow {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "bad profile window `{s}`: expected START:COUNT, e.g. 5:3"
            ))
        };
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let start = a.trim().parse().map_err(|_| bad())?;
        let count: u64 = b.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(bad());
        }
        Ok(ProfileWindow { start, count })
    }
}

/// Tracks one window over a run's iterations.
#[derive(Debug, Default)]
pub struct Profiling {
    window: Option<ProfileWindow>,
    open: bool,
}

impl Profiling {
    pub fn new(window: Option<ProfileWindow>) -> Profiling {
        Profiling {
            window,
            open: false,
        }
    }

    /// Call before iteration `i`: opens the window at its start, closes it after its end.
    /// The device is synchronised first so that earlier work stays outside the window.
    pub fn before(&mut self, be: &dyn Backend, i: u64) -> Result<()> {
        let Some(w) = self.window else { return Ok(()) };
        if !self.open && i == w.start {
            be.synchronize()?;
            be.profiler_start()?;
            self.open = true;
        } else if self.open && i == w.start + w.count {
            self.finish(be)?;
        }
        Ok(())
    }

    /// Close the window if it is still open (the run ended inside it).
    pub fn finish(&mut self, be: &dyn Backend) -> Result<()> {
        if self.open {
            be.synchronize()?;
            be.profiler_stop()?;
            self.open = false;
        }
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    #[test]
    fn parses_and_brackets_exactly_the_window() {
        let w: ProfileWindow = "5:3".parse().unwrap();
        assert_eq!(w, ProfileWindow { start: 5, count: 3 });
        for bad in ["5", "a:3", "5:0", "5:-1", ""] {
            assert!(bad.parse::<ProfileWindow>().is_err(), "{bad}");
        }
        let be = CpuBackend::new();
        let mut p = Profiling::new(Some(w));
        let open: Vec<bool> = (0..10)
            .map(|i| {
                p.before(&be, i).unwrap();
                p.is_open()
            })
            .collect();
        assert_eq!(
            open,
            [false, false, false, false, false, true, true, true, false, false]
        );
    }
}
