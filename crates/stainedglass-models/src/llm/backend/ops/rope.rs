//! The rotary position embedding as an op (its inverse rotation is the backward).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use stainedglass_core::host::is_cpu_f32;

use super::{reference, slice};
use crate::llm::backend::rope_table::{rope_in_place, RopeTable};

/// Half-split ("rotate_half") rotary embedding of `x: (b, t, h, d)` at per-token positions
/// `positions[b·t]`; backward is the inverse rotation.
#[derive(Debug, Clone)]
pub struct Rope {
    pub table: Arc<RopeTable>,
    pub positions: Arc<Vec<u32>>,
    inverse: bool,
}

impl Rope {
    pub fn new(table: Arc<RopeTable>, positions: Arc<Vec<u32>>) -> Self {
        Self {
            table,
            positions,
            inverse: false,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _, d) = x.dims4()?;
        if self.positions.len() != b * t || d != 2 * self.table.half {
            candle_core::bail!(
                "rope: {} positions / head_dim {} for input {:?}",
                self.positions.len(),
                2 * self.table.half,
                x.dims()
            );
        }
        if let Some(&p) = self.positions.iter().max() {
            if p as usize >= self.table.max_positions {
                candle_core::bail!(
                    "position {p} is beyond the model's context of {} tokens",
                    self.table.max_positions
                );
            }
        }
        if is_cpu_f32(x) {
            x.contiguous()?.apply_op1(self.clone())
        } else {
            reference::rope(x, &self.table, &self.positions)
        }
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "sg-rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "rope")?;
        let (_, _, h, d) = l.shape().dims4()?;
        let mut y = x.to_vec();
        rope_in_place(
            &mut y,
            h * d,
            h,
            d,
            &self.table,
            &self.positions,
            self.inverse,
        );
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let mut inv = self.clone();
        inv.inverse = !self.inverse;
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&inv)?))
    }
}
