//! Model configuration: the two named presets of SPEC §2, `n`, `G`, the input side, and the
//! sizes every layer has for a given input side.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The width/depth numbers of an HRNet backbone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arch {
    pub stem: usize,
    pub layer1_blocks: usize,
    pub layer1_width: usize,
    /// Modules in stage2, stage3, stage4.
    pub modules: [usize; 3],
    pub blocks: usize,
    pub widths: [usize; 4],
}

impl Arch {
    pub fn w30() -> Arch {
        Arch {
            stem: 64,
            layer1_blocks: 4,
            layer1_width: 64,
            modules: [1, 4, 3],
            blocks: 4,
            widths: [30, 60, 120, 240],
        }
    }
    pub fn tiny() -> Arch {
        Arch {
            stem: 16,
            layer1_blocks: 1,
            layer1_width: 8,
            modules: [1, 1, 1],
            blocks: 1,
            widths: [4, 8, 12, 16],
        }
    }
    /// Channels of the aggregated feature map F_in.
    pub fn c_in(&self) -> usize {
        self.widths.iter().sum()
    }
}

/// Everything that determines the network's shapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub preset: String,
    pub n: usize,
    pub groups: usize,
    /// Input side S (images are S×S).
    pub size: usize,
}

/// Fixed head widths (SPEC §4–5).
pub const REL_C1: usize = 32;
pub const REL_C2: usize = 64;
pub const VIS_C: usize = 256;
pub const UPD_C: usize = VIS_C + REL_C2;
pub const FM_C: usize = 128;
pub const CLS_HIDDEN: usize = 16;
pub const LAMBDA: f32 = 0.1;
pub const BN_EPS: f32 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;

impl Config {
    pub fn preset(name: &str) -> Result<Config> {
        let size = match name {
            "w30" => 299,
            "tiny" => 64,
            _ => {
                return Err(Error::Config(format!(
                    "unknown preset `{name}` (expected w30 or tiny)"
                )))
            }
        };
        Ok(Config {
            preset: name.to_string(),
            n: 5,
            groups: 1,
            size,
        })
    }

    pub fn arch(&self) -> Arch {
        match self.preset.as_str() {
            "w30" => Arch::w30(),
            _ => Arch::tiny(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.preset != "w30" && self.preset != "tiny" {
            return Err(Error::Config(format!(
                "unknown preset `{}` (expected w30 or tiny)",
                self.preset
            )));
        }
        if self.groups == 0 || !FM_C.is_multiple_of(self.groups) {
            return Err(Error::Config(format!(
                "groups G = {} must divide {FM_C}",
                self.groups
            )));
        }
        if self.n < 3 || self.n > crate::backend::MAX_BINS_SIDE {
            return Err(Error::Config(format!(
                "n = {} must lie in 3..={}",
                self.n,
                crate::backend::MAX_BINS_SIDE
            )));
        }
        if self.size < 16 {
            return Err(Error::Config(format!(
                "input size {} is too small (at least 16)",
                self.size
            )));
        }
        let h = self.feature_side();
        if h < self.n {
            return Err(Error::Config(format!(
                "feature map {h}×{h} is smaller than the n×n = {}×{} relation bins",
                self.n, self.n
            )));
        }
        Ok(())
    }

    /// Side of the stride-4 feature map: two stride-2 convolutions, `out = ⌈in/2⌉` each.
    pub fn feature_side(&self) -> usize {
        half(half(self.size))
    }

    /// Sides of the four branches (75, 38, 19, 10 at S = 299).
    pub fn branch_sides(&self) -> [usize; 4] {
        let h0 = self.feature_side();
        let h1 = half(h0);
        let h2 = half(h1);
        [h0, h1, h2, half(h2)]
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    pub fn from_json(s: &str) -> Result<Config> {
        let c: Config = serde_json::from_str(s)
            .map_err(|e| Error::Config(format!("bad configuration JSON `{s}`: {e}")))?;
        c.validate()?;
        Ok(c)
    }
}

/// Output side of a 3×3 stride-2 pad-1 convolution.
pub fn half(x: usize) -> usize {
    x.div_ceil(2)
}
