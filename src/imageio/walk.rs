//! The image files under a folder, for `prrnet detect` and the dataset loader.
//!
//! Links to folders are followed (a dataset is often assembled from links to other disks), but
//! every folder is entered once: a folder whose real path was already entered (a second link
//! to it), or one that contains the folder being searched (a link back up the tree), is
//! skipped, so a cycle ends and no image is listed twice. Hidden entries (names starting with
//! `.`, such as macOS's `._name.jpg` resource forks, which are not images) are skipped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// File name extensions (lower case) that a folder search takes as images.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "png", "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm", "pbm", "pnm",
    "pam", "tga", "ico", "hdr", "exr", "avif", "qoi", "ff", "dds",
];

/// Whether `path`'s extension is one of [`IMAGE_EXTENSIONS`], in any case.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// What a search found.
#[derive(Debug, Default)]
pub struct ImageTree {
    /// Image files, depth first with the entries of every folder sorted by name; a file is
    /// named by the path it was reached through.
    pub files: Vec<PathBuf>,
    /// Folders that could not be read, with the reason.
    pub unreadable: Vec<(PathBuf, std::io::Error)>,
}

/// The image files under `root`. A folder whose real path lies inside one of `fences`, or
/// contains one, is not entered: the dataset loader fences off the other class folders, so a
/// link from `real/` into `fake/` cannot list a fake image as real.
pub fn image_files(root: &Path, fences: &[PathBuf]) -> ImageTree {
    let mut search = Search {
        root: real_path(root),
        fences: fences.iter().map(|f| real_path(f)).collect(),
        entered: HashSet::new(),
        found: ImageTree::default(),
    };
    search.entered.insert(search.root.clone());
    search.folder(root);
    search.found
}

fn real_path(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

struct Search {
    /// The real path of the folder searched.
    root: PathBuf,
    fences: Vec<PathBuf>,
    /// Real paths of the folders entered so far.
    entered: HashSet<PathBuf>,
    found: ImageTree,
}

impl Search {
    fn folder(&mut self, dir: &Path) {
        let entries = std::fs::read_dir(dir).and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>());
        let mut entries = match entries {
            Ok(v) => v,
            Err(e) => return self.found.unreadable.push((dir.to_path_buf(), e)),
        };
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            // A link is followed to what it names (a broken link is taken as a file and fails
            // when read, like any unreadable image).
            if ft.is_dir() || (ft.is_symlink() && path.is_dir()) {
                if self.may_enter(&path) {
                    self.folder(&path);
                }
            } else if is_image_path(&path) {
                self.found.files.push(path);
            }
        }
    }

    /// Whether `dir` is a folder not yet entered, outside the fences, and not above the root;
    /// if so it counts as entered from now on.
    fn may_enter(&mut self, dir: &Path) -> bool {
        let real = real_path(dir);
        let fenced = self
            .fences
            .iter()
            .any(|f| real.starts_with(f) || f.starts_with(&real));
        !fenced && !self.root.starts_with(&real) && self.entered.insert(real)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn names(t: &ImageTree, root: &Path) -> Vec<String> {
        let rel = |p: &PathBuf| p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        t.files.iter().map(rel).collect()
    }

    #[test]
    fn cycles_end_second_links_skip_and_fences_hold() {
        let d = std::env::temp_dir().join(format!("prrnet-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        touch(&d.join("a/x/1.png"));
        touch(&d.join("a/x/.hidden.png"));
        touch(&d.join("a/x/notes.txt"));
        touch(&d.join("a/Y.JPG"));
        touch(&d.join("b/2.png"));
        touch(&d.join("other/3.png"));
        symlink("..", d.join("a/x/up")).unwrap(); // → a: the root, a cycle
        symlink(&d, d.join("a/top")).unwrap(); // contains the root
        symlink(d.join("other"), d.join("a/l1")).unwrap();
        symlink(d.join("other"), d.join("a/l2")).unwrap(); // the same folder again
        symlink(d.join("b"), d.join("a/into_b")).unwrap();

        let all = image_files(&d.join("a"), &[]);
        assert_eq!(
            names(&all, &d.join("a")),
            ["Y.JPG", "into_b/2.png", "l1/3.png", "x/1.png"]
        );
        assert!(all.unreadable.is_empty());

        let fenced = image_files(&d.join("a"), &[d.join("b")]);
        assert_eq!(
            names(&fenced, &d.join("a")),
            ["Y.JPG", "l1/3.png", "x/1.png"]
        );

        let missing = image_files(&d.join("nowhere"), &[]);
        assert!(missing.files.is_empty());
        assert_eq!(missing.unreadable.len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
