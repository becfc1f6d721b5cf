//! Progress of a long `prrnet detect` or `prrnet eval` run on stderr, so that scoring a large
//! folder is not silence until the summary: on a terminal one line redrawn at most four times a
//! second, in a log a line every 30 seconds. Nothing for a run that ends within its first
//! second.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct RunProgress {
    /// What the line starts with (the command).
    label: &'static str,
    total: usize,
    start: Instant,
    last: Option<Instant>,
    /// Redraw one line in place (a terminal) or append lines (a log).
    tty: bool,
    every: Duration,
}

impl RunProgress {
    /// Progress over `total` inputs, on stderr, in lines that start with `label`.
    pub fn new(label: &'static str, total: usize) -> RunProgress {
        let tty = std::io::stderr().is_terminal();
        RunProgress::with(label, total, Instant::now(), tty)
    }

    fn with(label: &'static str, total: usize, start: Instant, tty: bool) -> RunProgress {
        RunProgress {
            label,
            total,
            start,
            last: None,
            tty,
            every: Duration::from_millis(if tty { 250 } else { 30_000 }),
        }
    }

    /// The line to show at `now` after `done` inputs (`failed` of them errors), if one is due:
    /// from one second in, then every `every`.
    fn line_at(&mut self, now: Instant, done: usize, failed: usize) -> Option<String> {
        let since = now.duration_since(self.last.unwrap_or(self.start));
        let due = match self.last {
            None => since >= Duration::from_secs(1),
            Some(_) => since >= self.every,
        };
        if !due || done >= self.total {
            return None;
        }
        self.last = Some(now);
        let secs = now.duration_since(self.start).as_secs_f64();
        let rate = done as f64 / secs.max(1e-9);
        let eta = if done > 0 {
            format!("{:.0} s", (self.total - done) as f64 / rate)
        } else {
            "?".into()
        };
        let failed = if failed > 0 {
            format!(" ({failed} failed)")
        } else {
            String::new()
        };
        Some(format!(
            "{}: {done}/{} inputs{failed}, {rate:.1} inputs/s, {eta} left",
            self.label, self.total
        ))
    }

    /// Show the progress after `done` inputs (`failed` of them errors), when a line is due.
    pub fn update(&mut self, done: usize, failed: usize) {
        if let Some(line) = self.line_at(Instant::now(), done, failed) {
            let mut err = std::io::stderr().lock();
            // Progress is a courtesy: a closed stderr must not stop the run.
            let _ = if self.tty {
                write!(err, "\r\x1b[2K{line}").and_then(|_| err.flush())
            } else {
                writeln!(err, "{line}")
            };
        }
    }

    /// Clear the terminal line before the summary is printed.
    pub fn finish(&mut self) {
        if self.tty && self.last.is_some() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

/// Print `msg` as a line of its own on stderr, over a progress line a terminal may show (which
/// the next update draws again below it).
pub fn eprint_line(msg: &str) {
    let mut err = std::io::stderr().lock();
    let clear = if err.is_terminal() { "\r\x1b[2K" } else { "" };
    let _ = writeln!(err, "{clear}{msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_start_after_a_second_then_come_at_the_interval() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut p = RunProgress::with("prrnet detect", 100, t0, false);
        assert_eq!(
            p.line_at(at(500), 10, 0),
            None,
            "nothing in the first second"
        );
        assert_eq!(
            p.line_at(at(2000), 40, 1).as_deref(),
            Some("prrnet detect: 40/100 inputs (1 failed), 20.0 inputs/s, 3 s left")
        );
        assert_eq!(
            p.line_at(at(20_000), 50, 1),
            None,
            "a log gets a line every 30 s"
        );
        assert!(p.line_at(at(32_000), 60, 1).is_some());
        assert_eq!(
            p.line_at(at(90_000), 100, 1),
            None,
            "none once every input is done"
        );

        let mut tty = RunProgress::with("prrnet eval", 10, t0, true);
        assert_eq!(
            tty.line_at(at(1000), 0, 0).as_deref(),
            Some("prrnet eval: 0/10 inputs, 0.0 inputs/s, ? left")
        );
        assert_eq!(tty.line_at(at(1100), 1, 0), None);
        assert!(
            tty.line_at(at(1250), 1, 0).is_some(),
            "a terminal: four times a second"
        );
    }
}
