//! Training data: datasets (folders, manifests, DeepfakeBench JSON, the built-in procedural
//! set), self-blended forgeries, procedural scenes, and the threaded batch loader.

pub mod dataset;
pub mod loader;
pub mod procedural;
pub mod sbi;

pub use dataset::{builtin, load, split_by_video, Sample, Source, Split};
pub use loader::{BatchData, Loader, LoaderOptions};
pub use sbi::{self_blend, SbiParams};
