//! The records of `prrnet detect`: one per input, as JSON lines or CSV.
//!
//! JSONL: `{"path":…,"score":…,"verdict":"fake"|"real","mask_fraction":…}` or
//! `{"path":…,"error":…}`. CSV: the header `path,score,verdict,mask_fraction,error` and one row
//! per input with the fields that do not apply left empty. Scores are written with the
//! shortest decimal that reads back as the same `f32`.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Scored {
        score: f32,
        fake: bool,
        mask_fraction: f32,
    },
    Failed(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub path: String,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    /// CSV when the file name ends in `.csv`, else JSON lines.
    pub fn for_path(path: Option<&Path>) -> Format {
        match path.and_then(|p| p.extension()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Jsonl,
        }
    }
}

pub const CSV_HEADER: &str = "path,score,verdict,mask_fraction,error";

#[derive(Serialize)]
struct ScoredJson<'a> {
    path: &'a str,
    score: f32,
    verdict: &'static str,
    mask_fraction: f32,
}

#[derive(Serialize)]
struct FailedJson<'a> {
    path: &'a str,
    error: &'a str,
}

fn verdict(fake: bool) -> &'static str {
    if fake {
        "fake"
    } else {
        "real"
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Record {
    /// The record as one line (without the line end).
    pub fn line(&self, format: Format) -> String {
        match (format, &self.outcome) {
            (
                Format::Jsonl,
                Outcome::Scored {
                    score,
                    fake,
                    mask_fraction,
                },
            ) => serde_json::to_string(&ScoredJson {
                path: &self.path,
                score: *score,
                verdict: verdict(*fake),
                mask_fraction: *mask_fraction,
            })
            .expect("record serialises"),
            (Format::Jsonl, Outcome::Failed(e)) => serde_json::to_string(&FailedJson {
                path: &self.path,
                error: e,
            })
            .expect("record serialises"),
            (
                Format::Csv,
                Outcome::Scored {
                    score,
                    fake,
                    mask_fraction,
                },
            ) => format!(
                "{},{score},{},{mask_fraction},",
                csv_field(&self.path),
                verdict(*fake)
            ),
            (Format::Csv, Outcome::Failed(e)) => {
                format!("{},,,,{}", csv_field(&self.path), csv_field(e))
            }
        }
    }
}

/// Writes records to a file or stdout.
pub struct RecordWriter {
    w: Box<dyn Write + Send>,
    format: Format,
    what: String,
}

impl RecordWriter {
    /// `path`: a file (created or truncated) or `None` for stdout; the format follows the
    /// extension. A CSV output starts with its header.
    pub fn create(path: Option<&Path>) -> Result<RecordWriter> {
        let format = Format::for_path(path);
        let (w, what): (Box<dyn Write + Send>, String) = match path {
            Some(p) => {
                if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    crate::io::create_folder(d)?;
                }
                let f = std::fs::File::create(p).map_err(|e| Error::io(p, e))?;
                (
                    Box::new(std::io::BufWriter::new(f)),
                    p.display().to_string(),
                )
            }
            None => (
                Box::new(std::io::BufWriter::new(std::io::stdout())),
                "<stdout>".into(),
            ),
        };
        let mut rw = RecordWriter { w, format, what };
        if format == Format::Csv {
            rw.write_line(CSV_HEADER)?;
        }
        Ok(rw)
    }

    /// Records to any writer (tests, services).
    pub fn new(w: Box<dyn Write + Send>, format: Format) -> Result<RecordWriter> {
        let mut rw = RecordWriter {
            w,
            format,
            what: "<writer>".into(),
        };
        if format == Format::Csv {
            rw.write_line(CSV_HEADER)?;
        }
        Ok(rw)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    fn write_line(&mut self, line: &str) -> Result<()> {
        writeln!(self.w, "{line}").map_err(|e| Error::io(&self.what, e))
    }

    pub fn write(&mut self, r: &Record) -> Result<()> {
        let line = r.line(self.format);
        self.write_line(&line)
    }

    pub fn flush(&mut self) -> Result<()> {
        self.w.flush().map_err(|e| Error::io(&self.what, e))
    }
}
