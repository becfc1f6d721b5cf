//! Files: safetensors reading/writing (f32 in memory, PyTorch layouts on disk), checkpoints,
//! the timm backbone import, and the debug dump.

pub mod checkpoint;
pub mod dump;
pub mod tensors;
