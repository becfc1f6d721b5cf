//! Training: the schedule, the loop, validation metrics, and checkpoints that resume exactly.

pub mod eval;
mod progress;
pub mod source;
pub mod state;
pub mod trainer;

pub use source::LoaderSource;
pub use state::TrainState;
pub use trainer::{
    evaluate, request_stop, train, validate, DataSource, Evaluation, Outcome, TrainBatch,
    TrainOptions, ValidationMetrics,
};

/// Learning rate and backbone freezing per epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub epochs: usize,
    /// Epochs `0..freeze_epochs` train the heads only (backbone fixed, its BatchNorm in eval).
    pub freeze_epochs: usize,
    /// Learning rate while the backbone is frozen.
    pub lr_frozen: f32,
    /// Learning rate once everything trains.
    pub lr: f32,
}

impl Schedule {
    /// The paper's schedule (SPEC §8), for an ImageNet-initialised backbone: 7 epochs, backbone
    /// frozen for 4 at 2e-4, then everything at 2e-5.
    pub fn paper() -> Schedule {
        Schedule {
            epochs: 7,
            freeze_epochs: 4,
            lr_frozen: 2e-4,
            lr: 2e-5,
        }
    }

    /// From scratch (no pretrained backbone): nothing is frozen, since freezing a random
    /// backbone would train the heads on noise features; one constant learning rate.
    pub fn from_scratch(epochs: usize, lr: f32) -> Schedule {
        Schedule {
            epochs,
            freeze_epochs: 0,
            lr_frozen: lr,
            lr,
        }
    }

    /// `(learning rate, backbone frozen)` for 0-based `epoch`.
    pub fn phase(&self, epoch: usize) -> (f32, bool) {
        if epoch < self.freeze_epochs {
            (self.lr_frozen, true)
        } else {
            (self.lr, false)
        }
    }
}

/// "24 epochs at lr 0.001", or "7 epochs: 4 with the backbone frozen at lr 0.0002, then lr
/// 0.00002".
impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let frozen = self.freeze_epochs.min(self.epochs);
        if frozen == 0 {
            write!(f, "{} epochs at lr {}", self.epochs, self.lr)
        } else {
            write!(
                f,
                "{} epochs: {} with the backbone frozen at lr {}, then lr {}",
                self.epochs, frozen, self.lr_frozen, self.lr
            )
        }
    }
}
