//! Reading and writing safetensors files of f32 arrays, with clear errors for broken files and
//! atomic writes (temporary file, then rename).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};

/// One array: shape and row-major f32 data.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Array {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Array {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "array shape/data mismatch"
        );
        Array { shape, data }
    }
}

/// The contents of a safetensors file, converted to f32.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, Array>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<TensorFile> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes).map_err(|msg| Error::file(path, msg))
    }

    /// Parse safetensors bytes; any failure is a message, never a panic.
    pub fn parse(bytes: &[u8]) -> std::result::Result<TensorFile, String> {
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a valid safetensors file ({e})"))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("not a valid safetensors file ({e})"))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = to_f32(&view).map_err(|e| format!("tensor `{name}`: {e}"))?;
            tensors.insert(
                name,
                Array {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(TensorFile {
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Array> {
        self.tensors.get(name)
    }

    /// A required tensor with a required shape.
    pub fn expect(&self, name: &str, shape: &[usize]) -> Result<&Array> {
        let a = self.tensors.get(name).ok_or_else(|| Error::Key {
            key: name.into(),
            msg: format!("missing (expected shape {shape:?})"),
        })?;
        if a.shape != shape {
            return Err(Error::Shape {
                key: name.into(),
                expected: shape.to_vec(),
                found: a.shape.clone(),
            });
        }
        Ok(a)
    }

    /// An optional tensor that, when present, must have `shape`.
    pub fn expect_opt(&self, name: &str, shape: &[usize]) -> Result<Option<&Array>> {
        match self.tensors.get(name) {
            None => Ok(None),
            Some(_) => self.expect(name, shape).map(Some),
        }
    }

    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.insert(name.into(), Array::new(shape, data));
    }

    /// Serialise as f32 safetensors and write atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        self.stage(path)?.commit()
    }

    /// Serialise as f32 safetensors under a temporary name beside `path` ([`Staged`]).
    pub fn stage(&self, path: &Path) -> Result<Staged> {
        let bytes: Vec<Vec<u8>> = self
            .tensors
            .values()
            .map(|a| bytemuck::cast_slice(&a.data).to_vec())
            .collect();
        let views: Vec<(String, TensorView)> = self
            .tensors
            .iter()
            .zip(&bytes)
            .map(|((name, a), b)| {
                TensorView::new(Dtype::F32, a.shape.clone(), b)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::file(path, format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<_>>()?;
        let meta = (!self.metadata.is_empty()).then(|| self.metadata.clone());
        let out = safetensors::serialize(views, meta).map_err(|e| Error::file(path, e))?;
        Staged::write(path, &out)
    }
}

fn to_f32(view: &TensorView) -> std::result::Result<Vec<f32>, String> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::I64 => d
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        other => return Err(format!("unsupported dtype {other:?}")),
    })
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Staged::write(path, bytes)?.commit()
}

/// A file written in full (and flushed to the disk) under a temporary name beside `path`,
/// waiting for [`Staged::commit`] to rename it into place. Dropped uncommitted (a later write
/// failed), it is removed: a full disk leaves no stray temporary files and the old file
/// untouched. Several staged files committed one after the other replace a set of files with
/// no I/O between the renames (`train::state::save`).
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    pub fn write(path: &Path, bytes: &[u8]) -> Result<Staged> {
        use std::io::Write;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(d) = dir {
            crate::io::create_folder(d)?;
        }
        let name = path
            .file_name()
            .ok_or_else(|| Error::file(path, "not a file path"))?;
        let staged = Staged {
            tmp: path.with_file_name(format!(
                ".{}.tmp-{}",
                name.to_string_lossy(),
                std::process::id()
            )),
            path: path.to_path_buf(),
            committed: false,
        };
        let tmp = &staged.tmp;
        let mut f = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(tmp, e))?;
        f.sync_all().map_err(|e| Error::io(tmp, e))?;
        Ok(staged)
    }

    /// Rename the file into place, then flush the folder so the rename survives a power cut.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.committed = true;
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Ok(d) = std::fs::File::open(dir.unwrap_or(Path::new("."))) {
            // Best effort: not every file system can flush a folder.
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
