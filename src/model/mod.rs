//! PRRNet written once against the backend's operation set.

pub mod hrnet;
pub mod layers;
pub mod memplan;
pub mod pr;
pub mod prrnet;
pub mod rr;

pub use prrnet::{nchw_to_nhwc, nhwc_to_nchw, Batch, Losses, Mode, PrrNet};
