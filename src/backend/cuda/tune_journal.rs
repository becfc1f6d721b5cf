//! The tuning journal (`PRRNET_TUNE_JOURNAL=FILE`, or [`CudaBackend::set_tune_journal`]): a
//! record, kept across processes, of which candidate was running when a process stopped.
//!
//! Why: a candidate that faults on a device (an illegal address, a hang) takes the CUDA context
//! with it, and the check between candidates (`tune_check.rs`) never gets to see its output;
//! the process fails. Most candidates have never run on a GPU, and device time is short: a
//! benchmark that is run again should leave out that one candidate and still measure all the
//! others, instead of falling back to the kernels last checked on a GPU everywhere.
//!
//! So each candidate's turn at a measurement is written down before it starts and after it
//! ends. A turn that began and never ended stopped its process. A backend that opens the
//! journal puts that candidate in quarantine for every key of the same scope (operation, pass
//! and precision: one kernel family, which likely fails at other shapes too), leaves it out of
//! every measurement there and reports it in the choice's `rejected`. Several processes may
//! share one file (gpu-run.sh gives every whole-network benchmark of a run the same one), so a
//! candidate that stopped one benchmark is left out of the next from its start.
//!
//! A turn ends in the journal only while the device still works after it (`tune::choose`
//! checks the stream when a candidate fails), so a fault that surfaces as a failed call counts
//! as one that stopped the process. Faults outside measuring (a fixed rule's run below the FLOP
//! floor, or the chosen candidate failing later) are not recorded here.
//!
//! The file is text, one event per line, tab-separated (an `awk` one-liner in gpu-run.sh counts
//! the open turns):
//!
//! ```text
//! begin <run> <turn> <candidate> <scope> <key>
//! end   <run> <turn>
//! ```
//!
//! `run` names the process (its id and start time, so a reused process id is another run),
//! `turn` counts that run's turns. Lines starting with `#` are comments; an unterminated last
//! line (a process stopped while writing it) is ignored.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::tune::Candidate;
use crate::error::{Error, Result};

/// Where a quarantined candidate stopped a process: the key it was measuring, and the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stopped {
    pub key: String,
    pub run: String,
}

/// The candidates of a call that may run, after the quarantine.
pub(crate) struct Screened<P> {
    pub candidates: Vec<P>,
    /// The fixed rule's candidate, or the most trusted one left if that is in quarantine.
    pub fallback: P,
    /// The candidates in quarantine, with why.
    pub left_out: Vec<(&'static str, String)>,
}

/// An open journal: the quarantine read from it, and the file this process appends to.
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    run: String,
    turns: u64,
    /// (candidate, scope) → where it stopped a process.
    quarantine: HashMap<(String, String), Stopped>,
}

impl Journal {
    /// Open (or create) the journal at `path` and read its quarantine.
    pub fn open(path: &Path) -> Result<Journal> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let quarantine = open_turns(&text).map_err(|msg| Error::file(path, msg))?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        if text.is_empty() {
            file.write_all(b"# prrnet kernel-tuning journal (src/backend/cuda/tune_journal.rs)\n")
                .map_err(|e| Error::io(path, e))?;
        }
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Journal {
            path: path.to_owned(),
            file,
            run: format!("{}-{}", std::process::id(), since_epoch.as_nanos()),
            turns: 0,
            quarantine,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where `candidate` stopped a process in `scope`, if it did.
    pub fn quarantined(&self, candidate: &str, scope: &str) -> Option<&Stopped> {
        self.quarantine
            .get(&(candidate.to_owned(), scope.to_owned()))
    }

    /// `candidates` of a call in `scope` without those in quarantine there, and a `fallback`
    /// (the fixed rule's candidate) that is not in quarantine: the most trusted one left
    /// gives way for one that is.
    pub fn screen<P: Candidate>(&self, scope: &str, candidates: &[P], fallback: P) -> Screened<P> {
        let mut kept = Vec::with_capacity(candidates.len());
        let mut left_out = Vec::new();
        for &c in candidates {
            match self.quarantined(c.name(), scope) {
                Some(s) => left_out.push((
                    c.name(),
                    format!(
                        "quarantined: an earlier process stopped in its turn at {} (run {}, \
                         journal {})",
                        s.key,
                        s.run,
                        self.path.display()
                    ),
                )),
                None => kept.push(c),
            }
        }
        let fallback = if left_out.iter().any(|(n, _)| *n == fallback.name()) {
            kept.iter()
                .copied()
                .min_by_key(|c| c.trust())
                .unwrap_or(fallback)
        } else {
            fallback
        };
        Screened {
            candidates: kept,
            fallback,
            left_out,
        }
    }

    /// Write down that `candidate` starts its turn at `key`; the number to end it with.
    pub fn begin(&mut self, candidate: &str, scope: &str, key: &str) -> Result<u64> {
        self.turns += 1;
        let line = format!(
            "begin\t{}\t{}\t{candidate}\t{scope}\t{key}\n",
            self.run, self.turns
        );
        self.append(&line)?;
        Ok(self.turns)
    }

    /// Write down that turn `turn` ended with the device still working.
    pub fn end(&mut self, turn: u64) -> Result<()> {
        let line = format!("end\t{}\t{turn}\n", self.run);
        self.append(&line)
    }

    /// One line in one write: the file is opened for appending, so lines of processes that
    /// share it do not interleave; a process that stops right after has still written it.
    fn append(&mut self, line: &str) -> Result<()> {
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// A `begin` line's fields.
struct Begun<'a> {
    run: &'a str,
    turn: &'a str,
    candidate: &'a str,
    scope: &'a str,
    key: &'a str,
}

/// The turns of `text` that began and never ended: (candidate, scope) → where (the first such
/// turn of each). Err: a line that is no journal line (with its number).
fn open_turns(text: &str) -> std::result::Result<HashMap<(String, String), Stopped>, String> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    // In the order they began.
    let mut open: Vec<Begun> = Vec::new();
    for (i, line) in complete.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        match *f.as_slice() {
            ["begin", run, turn, candidate, scope, key] => open.push(Begun {
                run,
                turn,
                candidate,
                scope,
                key,
            }),
            ["end", run, turn] => open.retain(|b| b.run != run || b.turn != turn),
            _ => {
                return Err(format!(
                    "line {}: not a kernel-tuning journal line: `{line}`",
                    i + 1
                ))
            }
        }
    }
    let mut quarantine = HashMap::new();
    for b in open {
        quarantine
            .entry((b.candidate.to_owned(), b.scope.to_owned()))
            .or_insert(Stopped {
                key: b.key.to_owned(),
                run: b.run.to_owned(),
            });
    }
    Ok(quarantine)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped(q: &HashMap<(String, String), Stopped>, c: &str, s: &str) -> Option<Stopped> {
        q.get(&(c.to_owned(), s.to_owned())).cloned()
    }

    #[test]
    fn a_turn_that_never_ended_is_quarantined_in_its_scope_only() {
        let text = "# header\n\
            begin\t7-1\t1\tim2col\tconv forward bf16\tconv forward b2 a bf16\n\
            end\t7-1\t1\n\
            begin\t7-1\t2\thalo\tconv forward bf16\tconv forward b2 a bf16\n";
        let q = open_turns(text).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(
            stopped(&q, "halo", "conv forward bf16"),
            Some(Stopped {
                key: "conv forward b2 a bf16".into(),
                run: "7-1".into()
            })
        );
        assert_eq!(stopped(&q, "halo", "conv forward fp32"), None);
        assert_eq!(stopped(&q, "im2col", "conv forward bf16"), None);
    }

    #[test]
    fn ends_match_their_own_run_and_turn() {
        // Run 7-2 reuses 7-1's turn numbers: its end closes its own turn, not 7-1's.
        let text = "begin\t7-1\t1\tsym\trelation forward bf16\tk1\n\
            begin\t7-2\t1\tv3\trelation forward bf16\tk1\n\
            end\t7-2\t1\n";
        let q = open_turns(text).unwrap();
        assert_eq!(q.len(), 1);
        assert!(stopped(&q, "sym", "relation forward bf16").is_some());
    }

    #[test]
    fn the_first_stop_of_a_candidate_is_the_one_reported() {
        let text = "begin\t1-1\t1\thalo\ts\tfirst\nbegin\t2-1\t1\thalo\ts\tsecond\n";
        let q = open_turns(text).unwrap();
        assert_eq!(stopped(&q, "halo", "s").unwrap().key, "first");
    }

    #[test]
    fn an_unterminated_last_line_is_ignored_and_garbage_is_an_error() {
        let q = open_turns("begin\t1-1\t1\thalo\ts\tk\nend\t1-1").unwrap();
        assert_eq!(q.len(), 1, "the partial end line does not close the turn");
        assert!(open_turns("begin\t1-1\t1\thalo\ts\tk").unwrap().is_empty());
        let err = open_turns("# ok\nbegin\t1-1\thalo\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(open_turns("hello\n").is_err());
    }

    #[test]
    fn a_journal_file_round_trips_across_opens() {
        let dir = std::env::temp_dir().join(format!("prrnet-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal.tsv");
        let _ = std::fs::remove_file(&path);
        {
            let mut j = Journal::open(&path).unwrap();
            assert!(j.quarantined("halo", "s").is_none());
            let t = j.begin("implicit", "s", "k a").unwrap();
            j.end(t).unwrap();
            j.begin("halo", "s", "k b").unwrap();
            // Dropped here without an end: as a process that stopped in halo's turn.
        }
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.quarantined("halo", "s").unwrap().key, "k b");
        assert!(j.quarantined("implicit", "s").is_none());
        // A second process's turns append to the same file and keep the first's quarantine.
        let t = j.begin("implicit", "s", "k c").unwrap();
        j.end(t).unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert!(j.quarantined("halo", "s").is_some());
        assert!(j.quarantined("implicit", "s").is_none());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# prrnet kernel-tuning journal"), "{text}");
        assert_eq!(text.matches("# prrnet").count(), 1, "one header: {text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
