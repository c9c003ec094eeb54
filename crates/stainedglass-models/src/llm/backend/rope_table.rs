//! The rotary embedding's cos/sin table and its in-place kernel (shared by the RoPE op, the
//! fused decoder stack and the reference composition).

use rayon::prelude::*;

/// Cos/sin tables of the rotary embedding, `(max_positions, head_dim / 2)`.
#[derive(Debug)]
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
    pub max_positions: usize,
}

impl RopeTable {
    /// Plain RoPE: inverse frequencies `θ^(−2i/d)` (the models build theirs from
    /// `LlamaConfig::rope_inv_freq`).
    #[cfg(test)]
    pub fn new(head_dim: usize, theta: f64, max_positions: usize) -> Self {
        let inv: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        Self::from_inv_freq(&inv, max_positions)
    }

    /// The table of the given inverse frequencies (`head_dim / 2` of them, e.g. scaled by
    /// `LlamaConfig::rope_inv_freq`).
    pub fn from_inv_freq(inv_freq: &[f64], max_positions: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for inv in inv_freq {
                let a = p as f64 * inv;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Self {
            cos,
            sin,
            half,
            max_positions,
        }
    }
}

/// Rotates, in place, the first `heads` head vectors (`d` values each, "rotate_half" layout) of
/// every row of `x` (row length `row`) by the angle of the row's position; `inverse` rotates
/// back (the backward pass). `positions` has one entry per row.
pub fn rope_in_place(
    x: &mut [f32],
    row: usize,
    heads: usize,
    d: usize,
    table: &RopeTable,
    positions: &[u32],
    inverse: bool,
) {
    let half = table.half;
    let sign = if inverse { -1.0f32 } else { 1.0 };
    let one = |(xr, &p): (&mut [f32], &u32)| {
        let c = &table.cos[p as usize * half..(p as usize + 1) * half];
        let sn = &table.sin[p as usize * half..(p as usize + 1) * half];
        for hv in xr[..heads * d].chunks_exact_mut(d) {
            let (lo, hi) = hv.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                let s = sign * sn[i];
                lo[i] = a * c[i] - b * s;
                hi[i] = b * c[i] + a * s;
            }
        }
    };
    if x.len() <= super::pool::SERIAL_MAX {
        x.chunks_mut(row).zip(positions.iter()).for_each(one);
    } else {
        x.par_chunks_mut(row)
            .zip(positions.par_iter())
            .for_each(one);
    }
}
