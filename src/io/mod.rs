//! Files: safetensors reading/writing (f32 in memory, PyTorch layouts on disk), checkpoints,
//! the timm backbone import, and the debug dump.

pub mod checkpoint;
pub mod dump;
pub mod tensors;

use std::path::Path;

use crate::error::{Error, Result};

/// Create the folder `dir` and its parents (nothing to do if it exists). A file in the way is
/// named as such, not as the operating system's "File exists".
pub fn create_folder(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        if dir.exists() && !dir.is_dir() {
            Error::file(dir, "is a file, but a folder is needed here")
        } else {
            Error::io(dir, e)
        }
    })
}
