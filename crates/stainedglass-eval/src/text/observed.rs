//! What an attacker observes of a prompt (its transformed embeddings) next to the truth, and
//! how recovery is scored.

use super::mechanism::{Applied, Mechanism};
use crate::{Error, Result};
use candle_core::Tensor;
use serde::Serialize;
use stainedglass_core::NoiseRng;
use stainedglass_text::EncodedPrompt;

/// One transformed prompt and, for scoring, its transformed positions and their true tokens.
pub struct Observed {
    /// `x̃ (1, t, d)`: the whole prompt as the server receives it.
    pub transformed: Tensor,
    pub attention: Vec<u8>,
    /// Positions whose token was transformed (what an attack must recover).
    pub positions: Vec<u32>,
    /// The true token at each of `positions`.
    pub tokens: Vec<u32>,
    /// The whole prompt's true ids (for attacks that rebuild the sequence).
    pub ids: Vec<u32>,
}

impl Observed {
    pub fn new(row: &EncodedPrompt, transformed: Tensor) -> Self {
        let positions: Vec<u32> = (0..row.len())
            .filter(|&i| row.noise_mask[i] == 1 && row.attention_mask[i] == 1)
            .map(|i| i as u32)
            .collect();
        let tokens = positions
            .iter()
            .map(|&i| row.input_ids[i as usize])
            .collect();
        Self {
            transformed,
            attention: row.attention_mask.clone(),
            positions,
            tokens,
            ids: row.input_ids.clone(),
        }
    }

    /// `(n, d)`: the transformed rows at `positions`.
    pub fn selected(&self) -> Result<Tensor> {
        let idx = Tensor::new(self.positions.as_slice(), self.transformed.device())?;
        Ok(self.transformed.squeeze(0)?.index_select(&idx, 0)?)
    }
}

/// Clean embeddings of every row, `(1, t, d)` each: rows of the vocabulary `table`.
pub fn embed_rows(table: &Tensor, rows: &[EncodedPrompt]) -> Result<Vec<Tensor>> {
    let v = table.dim(0)?;
    rows.iter()
        .map(|r| {
            if let Some(bad) = r.input_ids.iter().find(|&&i| i as usize >= v) {
                return Err(Error::Input(format!(
                    "token id {bad} is outside the vocabulary of {v} rows"
                )));
            }
            let ids = Tensor::new(r.input_ids.as_slice(), table.device())?;
            Ok(table.index_select(&ids, 0)?.unsqueeze(0)?)
        })
        .collect()
}

/// Applies `mechanism` once to every row (fresh noise per row).
pub fn apply_rows(
    mechanism: &dyn Mechanism,
    rows: &[EncodedPrompt],
    clean: &[Tensor],
    rng: &mut NoiseRng,
) -> Result<Vec<Applied>> {
    rows.iter()
        .zip(clean)
        .map(|(r, x)| mechanism.apply(x, &r.attention_mask, &r.noise_mask, rng))
        .collect()
}

/// Token recovery of one attack.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    pub top1: f64,
    /// Recovery within the attack's top 5 (`None` when the attack returns one guess).
    pub top5: Option<f64>,
    pub tokens: usize,
    /// `(position, recovered at top-1)` per scored token.
    #[serde(skip)]
    pub hits: Vec<(usize, bool)>,
}

impl Recovery {
    /// Scores ranked guesses (best first) against `obs`, token by token.
    pub fn score(obs: &[Observed], guesses: &[Vec<Vec<u32>>]) -> Self {
        let (mut h1, mut h5, mut n, mut ranked) = (0usize, 0usize, 0usize, true);
        let mut hits = Vec::new();
        for (o, g) in obs.iter().zip(guesses) {
            for ((&p, &truth), cand) in o.positions.iter().zip(&o.tokens).zip(g) {
                let top = cand.first() == Some(&truth);
                h1 += usize::from(top);
                h5 += usize::from(cand.iter().take(5).any(|&c| c == truth));
                ranked &= cand.len() >= 5;
                hits.push((p as usize, top));
                n += 1;
            }
        }
        let f = |h: usize| if n == 0 { 0.0 } else { h as f64 / n as f64 };
        Self {
            top1: f(h1),
            top5: ranked.then(|| f(h5)),
            tokens: n,
            hits,
        }
    }
}
