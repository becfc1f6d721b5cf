//! PRRNet (Pixel-Region Relation Network, Shang et al., Pattern Recognition 2021): face-forgery
//! detection that localises the manipulated region and classifies an image by the inconsistency
//! between the manipulated and the original region.
//!
//! The network ([`model::PrrNet`]) is written once against the operation set
//! [`backend::Backend`], which the CPU reference backend and the CUDA backend implement.
//! `docs/SPEC.md` defines what every operation computes.

pub mod backend;
pub mod bench;
pub mod config;
pub mod conv_bench;
pub mod data;
pub mod detect;
pub mod error;
pub mod imageio;
pub mod io;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod profile;
pub mod progress;
pub mod relation_bench;
pub mod rng;
pub mod tensor;
pub mod trace;
pub mod train;

pub use backend::{Backend, DeviceRequest};
pub use config::Config;
pub use error::{Error, Result};
pub use model::{Batch, Losses, Mode, PrrNet};
