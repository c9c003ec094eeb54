//! The optional clamp of `x̃` (e.g. pixels in `[0, 1]`).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Optional clamp of `x̃` after the transform; each side optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueRange {
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

impl ValueRange {
    pub(crate) fn validate(&self) -> Result<()> {
        if let (Some(lo), Some(hi)) = (self.lo, self.hi) {
            if lo >= hi || lo.is_nan() || hi.is_nan() {
                return Err(Error::hyper(
                    "value_range",
                    format!("({lo}, {hi})"),
                    "lo must be below hi",
                ));
            }
        }
        for v in [self.lo, self.hi].into_iter().flatten() {
            if !v.is_finite() {
                return Err(Error::hyper("value_range", v, "bounds must be finite"));
            }
        }
        Ok(())
    }

    /// `(lo, hi)` as f32, an absent side as ∓∞.
    pub(crate) fn bounds(&self) -> (f32, f32) {
        (
            self.lo.map_or(f32::NEG_INFINITY, |v| v as f32),
            self.hi.map_or(f32::INFINITY, |v| v as f32),
        )
    }

    pub(crate) fn apply(&self, x: Tensor) -> candle_core::Result<Tensor> {
        let x = match self.lo {
            Some(lo) => x.maximum(lo)?,
            None => x,
        };
        match self.hi {
            Some(hi) => x.minimum(hi),
            None => Ok(x),
        }
    }
}
