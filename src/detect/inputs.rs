//! What `prrnet detect` reads: image files, folders (searched recursively for image
//! extensions) and manifests (`.txt` one path per line, `.csv` / `.jsonl` with a `path`
//! column), expanded into one [`Source`] per input. Also the collision-free names of the
//! per-input output files.

use std::path::{Path, PathBuf};

use crate::imageio::image_files;

/// One input of a run: a file to decode, or a problem found while listing (a missing path, an
/// unreadable folder, a bad manifest line) that becomes an error record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// How the input is named in records and output file names.
    pub label: String,
    pub kind: SourceKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    File(PathBuf),
    Failed(String),
}

/// Extensions that make a file argument a manifest.
pub const MANIFEST_EXTENSIONS: &[&str] = &["txt", "csv", "jsonl"];

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

pub fn is_manifest_path(path: &Path) -> bool {
    extension(path).is_some_and(|e| MANIFEST_EXTENSIONS.contains(&e.as_str()))
}

fn label_of(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn file(path: PathBuf) -> Source {
    Source {
        label: label_of(&path),
        kind: SourceKind::File(path),
    }
}

fn failed(label: impl Into<String>, msg: impl Into<String>) -> Source {
    Source {
        label: label.into(),
        kind: SourceKind::Failed(msg.into()),
    }
}

/// Expand command-line arguments into inputs, in argument order; a folder's files are sorted
/// by path.
pub fn collect(args: &[PathBuf]) -> Vec<Source> {
    let mut out = Vec::new();
    for a in args {
        if a.as_os_str() == "-" {
            read_stdin_list(&mut out);
            continue;
        }
        match std::fs::metadata(a) {
            Err(e) => out.push(failed(label_of(a), format!("cannot open: {e}"))),
            Ok(m) if m.is_dir() => walk(a, &mut out),
            Ok(_) if is_manifest_path(a) => read_manifest(a, &mut out),
            Ok(_) => out.push(file(a.clone())),
        }
    }
    out
}

/// Every image file under `dir`, recursively (`imageio::image_files`: links followed, each
/// folder once, hidden entries skipped); an unreadable folder becomes an error record.
fn walk(dir: &Path, out: &mut Vec<Source>) {
    let tree = image_files(dir, &[]);
    out.extend(tree.files.into_iter().map(file));
    for (folder, e) in tree.unreadable {
        out.push(failed(
            label_of(&folder),
            format!("cannot read folder: {e}"),
        ));
    }
}

/// A manifest entry → a path; relative entries are relative to the manifest's folder.
fn resolve(manifest: &Path, entry: &str) -> PathBuf {
    let p = Path::new(entry);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        manifest
            .parent()
            .map(|d| d.join(p))
            .unwrap_or_else(|| p.to_path_buf())
    }
}

/// `-`: paths on standard input, one per line, as in a `.txt` manifest (relative ones are
/// relative to the working folder), so that `find … | prrnet detect -` works.
fn read_stdin_list(out: &mut Vec<Source>) {
    let mut bytes = Vec::new();
    match std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes) {
        Ok(_) => {
            let text = String::from_utf8_lossy(&bytes);
            path_lines(
                Path::new(""),
                text.strip_prefix('\u{feff}').unwrap_or(&text),
                out,
            )
        }
        Err(e) => out.push(failed("-", format!("cannot read standard input: {e}"))),
    }
}

/// A `.txt` manifest's body: one path per line; blank lines and `#` comments skipped.
fn path_lines(manifest: &Path, text: &str, out: &mut Vec<Source>) {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(file(resolve(manifest, line)));
    }
}

fn read_manifest(path: &Path, out: &mut Vec<Source>) {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            out.push(failed(label_of(path), format!("cannot read manifest: {e}")));
            return;
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let where_ = |line: usize| format!("{}:{line}", path.display());
    match extension(path).as_deref() {
        Some("csv") => {
            let rows = parse_csv(text);
            let Some((header, body)) = rows.split_first() else {
                out.push(failed(label_of(path), "empty CSV manifest (no header)"));
                return;
            };
            let Some(col) = header.iter().position(|h| h.trim() == "path") else {
                out.push(failed(
                    label_of(path),
                    "CSV manifest has no `path` column in its header",
                ));
                return;
            };
            for (i, row) in body.iter().enumerate() {
                if row.iter().all(|f| f.trim().is_empty()) {
                    continue;
                }
                match row.get(col).map(|s| s.trim()).filter(|s| !s.is_empty()) {
                    Some(p) => out.push(file(resolve(path, p))),
                    None => out.push(failed(where_(i + 2), "row has no `path` value")),
                }
            }
        }
        Some("jsonl") => {
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let v: serde_json::Value = match serde_json::from_str(line) {
                    Ok(v) => v,
                    Err(e) => {
                        out.push(failed(where_(i + 1), format!("bad JSON: {e}")));
                        continue;
                    }
                };
                match v.get("path").and_then(|p| p.as_str()) {
                    Some(p) if !p.is_empty() => out.push(file(resolve(path, p))),
                    _ => out.push(failed(where_(i + 1), "no string `path` field")),
                }
            }
        }
        _ => path_lines(path, text, out),
    }
}

/// RFC 4180 CSV: comma-separated, fields optionally in double quotes (`""` inside is a quote,
/// and quoted fields may span lines); CRLF or LF line ends.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            _ => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// The names of the inputs' pictures under `--masks` / `--overlay`: each label with the folder
/// that all labels share removed (so a folder argument's files are named by their path inside
/// it), then made a file name by [`output_name`]. Distinct labels get distinct names.
pub fn picture_names(labels: &[&str]) -> Vec<String> {
    use std::path::Component;
    let dirs: Vec<Vec<Component>> = labels
        .iter()
        .map(|l| {
            let p = Path::new(l);
            p.parent()
                .map(|d| d.components().collect())
                .unwrap_or_default()
        })
        .collect();
    let mut common = dirs.first().map_or(0, |d| d.len());
    for d in &dirs[1.min(dirs.len())..] {
        common = common.min(d.iter().zip(&dirs[0]).take_while(|(a, b)| a == b).count());
    }
    labels
        .iter()
        .map(|l| {
            let rest: PathBuf = Path::new(l).components().skip(common).collect();
            output_name(&rest.to_string_lossy())
        })
        .collect()
}

/// The file name (`<name>.png`) under `--masks` / `--overlay` for an input: its label with
/// `%`, path separators and other unusual characters percent-encoded, so inputs with the same
/// base name in different folders get different names and the label can be read back from
/// the name. Very long labels are cut and completed with a hash of the whole label.
pub fn output_name(label: &str) -> String {
    let mut s = label;
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    let mut enc = String::with_capacity(s.len() + 8);
    for (i, ch) in s.char_indices() {
        let keep = ch.is_ascii_alphanumeric()
            || matches!(ch, '-' | '_' | '+' | '=' | ',' | '@')
            || (ch == '.' && i > 0)
            || !ch.is_ascii();
        if keep && !ch.is_control() {
            enc.push(ch);
        } else {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
    }
    const MAX: usize = 200;
    if enc.len() > MAX {
        let mut cut = MAX - 24;
        while !enc.is_char_boundary(cut) {
            cut -= 1;
        }
        enc.truncate(cut);
        enc.push_str(&format!("~{:016x}", fnv1a64(label.as_bytes())));
    }
    enc.push_str(".png");
    enc
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_for_same_base_names() {
        let a = output_name("data/a/face.jpg");
        let b = output_name("data/b/face.jpg");
        let c = output_name("data%2Fa%2Fface.jpg");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, "data%2Fa%2Fface.jpg.png");
        assert!(!output_name("../x.png").starts_with('.'));
        let long = "d/".repeat(300) + "x.jpg";
        let n = output_name(&long);
        assert!(n.len() <= 210);
        assert_ne!(n, output_name(&("d/".repeat(300) + "y.jpg")));
    }

    #[test]
    fn picture_names_drop_the_shared_folder() {
        let n = picture_names(&["/d/imgs/a/face.jpg", "/d/imgs/b/face.jpg", "/d/imgs/c.png"]);
        assert_eq!(n, ["a%2Fface.jpg.png", "b%2Fface.jpg.png", "c.png.png"]);
        assert_eq!(picture_names(&["x/y/z.jpg"]), ["z.jpg.png"]);
        let n = picture_names(&["one/a.jpg", "two/a.jpg"]);
        assert_eq!(n, ["one%2Fa.jpg.png", "two%2Fa.jpg.png"]);
        assert!(picture_names(&[]).is_empty());
    }

    #[test]
    fn csv_quotes_and_line_ends() {
        let rows = parse_csv("path,label\r\n\"a,b.jpg\",1\n\"say \"\"hi\"\".png\",0\nlast.png,1");
        assert_eq!(rows[1][0], "a,b.jpg");
        assert_eq!(rows[2][0], "say \"hi\".png");
        assert_eq!(rows[3], vec!["last.png".to_string(), "1".to_string()]);
        assert_eq!(rows.len(), 4);
    }
}
