//! Progress output: a one-line bar with loss, images/s and ETA on a terminal; plain log lines
//! (every `every` steps and at the end of an epoch) otherwise.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    tty: bool,
    start: Instant,
    total: usize,
    every: usize,
    epoch: usize,
    images: usize,
}

impl Progress {
    pub fn new(epoch: usize, total_steps: usize) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            start: Instant::now(),
            total: total_steps.max(1),
            every: (total_steps / 10).max(1),
            epoch,
            images: 0,
        }
    }

    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn step(&mut self, step: usize, images: usize, loss: f32, loc: f32, cls: f32) {
        self.images += images;
        let done = step + 1;
        let rate = self.images_per_s();
        let eta = self.start.elapsed().as_secs_f64() / done as f64
            * (self.total - done.min(self.total)) as f64;
        let msg = format!(
            "epoch {} step {done}/{} loss {loss:.4} (loc {loc:.4} cls {cls:.4}) {rate:.1} img/s eta {eta:.0}s",
            self.epoch + 1,
            self.total
        );
        if self.tty {
            let width = 30;
            let filled = width * done.min(self.total) / self.total;
            eprint!(
                "\r[{}{}] {msg}   ",
                "#".repeat(filled),
                ".".repeat(width - filled)
            );
            if done >= self.total {
                eprintln!();
            }
            std::io::stderr().flush().ok();
        } else if done.is_multiple_of(self.every) || done >= self.total {
            eprintln!("{msg}");
        }
    }
}
