//! BeamClean-style inversion: model the noise as one diagonal Gaussian `x̃ = x + n`,
//! `n ~ N(m, diag s²)`, estimated from the attacker's own text (it holds the public SGT), then
//! beam-search the token sequence maximising `Σ_t log N(x̃_t; E[v_t] + m, s²) + λ·log p_LM(v_t |
//! v_<t)` with the bundled LM as the prior. Tokens sent in the clear (exact vocabulary rows)
//! are fixed. Without the prior (`λ = 0`, beam 1) it is the noise-aware nearest neighbour.

use super::mechanism::Mechanism;
use super::observed::{apply_rows, embed_rows, Observed};
use crate::{Error, Result};
use candle_core::{DType, Tensor, D};
use serde::Serialize;
use stainedglass_core::NoiseRng;
use stainedglass_metrics::index::{top_k_of_row, EmbeddingIndex, Ranked};
use stainedglass_models::llm::Linear;
use stainedglass_models::llm::{KvCache, Llama};
use stainedglass_text::EncodedPrompt;

/// Beam-search settings.
#[derive(Debug, Clone, Serialize)]
pub struct BeamCleanConfig {
    pub beam: usize,
    /// Candidate tokens per position (the most likely under the noise model).
    pub candidates: usize,
    /// Weight λ of the LM prior.
    pub lm_weight: f64,
}

impl Default for BeamCleanConfig {
    fn default() -> Self {
        Self {
            beam: 4,
            candidates: 16,
            lm_weight: 1.0,
        }
    }
}

/// The estimated noise distribution and the per-token log-likelihood it induces.
pub struct NoiseModel {
    /// Mean `m (d)` of `x̃ − x` on transformed tokens.
    pub mean: Vec<f32>,
    /// Variance `s² (d)`.
    pub var: Vec<f32>,
    /// `E ⊙ s⁻²` as a linear map, and `½ Σ_j E_vj² / s_j²` per token.
    weighted: Linear,
    offset: Tensor,
}

impl NoiseModel {
    /// Fits `m` and `s²` to the residuals `x̃ − x` of the attacker's `rows` under `mechanism`.
    pub fn estimate(
        model: &Llama,
        mechanism: &dyn Mechanism,
        rows: &[EncodedPrompt],
        rng: &mut NoiseRng,
    ) -> Result<Self> {
        let clean = embed_rows(model.embedding_table(), rows)?;
        let applied = apply_rows(mechanism, rows, &clean, rng)?;
        let mut res = Vec::new();
        for ((r, x), a) in rows.iter().zip(&clean).zip(applied) {
            let o = Observed::new(r, a.transformed);
            if o.positions.is_empty() {
                continue;
            }
            let xs = Observed::new(r, x.clone()).selected()?;
            res.push((o.selected()? - xs)?);
        }
        if res.is_empty() {
            return Err(Error::Input(
                "no transformed tokens in the attacker's rows to estimate the noise from".into(),
            ));
        }
        let r = Tensor::cat(&res, 0)?;
        let mean = r.mean(0)?;
        let var = r
            .broadcast_sub(&mean)?
            .sqr()?
            .mean(0)?
            .clamp(1e-10f32, f32::MAX)?;
        Self::from_moments(model.embedding_table(), mean.to_vec1()?, var.to_vec1()?)
    }

    /// The noise model with the given moments (`var > 0`).
    pub fn from_moments(table: &Tensor, mean: Vec<f32>, var: Vec<f32>) -> Result<Self> {
        let d = table.dim(1)?;
        if mean.len() != d || var.len() != d || var.iter().any(|v| !(*v > 0.0 && v.is_finite())) {
            return Err(Error::Input(format!(
                "noise model: need {d} means and {d} positive finite variances"
            )));
        }
        let w = Tensor::from_vec(
            var.iter().map(|v| 1.0 / v).collect::<Vec<f32>>(),
            d,
            table.device(),
        )?;
        let weighted = table.broadcast_mul(&w)?;
        let offset = ((table.sqr()?.broadcast_mul(&w)?).sum(D::Minus1)? * 0.5)?;
        Ok(Self {
            mean,
            var,
            weighted: Linear::new(weighted, None),
            offset,
        })
    }

    /// Log-likelihood (up to a constant) of every token for every row of `x̃ (n, d)`: `(n, V)`.
    pub fn log_likelihood(&self, xt: &Tensor) -> Result<Tensor> {
        let m = Tensor::new(self.mean.as_slice(), xt.device())?;
        let c = xt.broadcast_sub(&m)?;
        Ok(self
            .weighted
            .forward(&c)?
            .broadcast_sub(&self.offset.unsqueeze(0)?)?)
    }
}

/// Top-`k` `(token, log-likelihood)` of a score row, best first.
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f64)> {
    top_k_of_row(row, k)
        .into_iter()
        .map(|i| (i, f64::from(row[i as usize])))
        .collect()
}

/// Noise-aware nearest neighbour: the `k` most likely tokens per transformed position.
pub fn likelihood_guesses(noise: &NoiseModel, obs: &[Observed], k: usize) -> Result<Vec<Ranked>> {
    obs.iter()
        .map(|o| {
            if o.positions.is_empty() {
                return Ok(Vec::new());
            }
            let ll = noise.log_likelihood(&o.selected()?)?;
            Ok(ll
                .to_vec2::<f32>()?
                .iter()
                .map(|r| top_k_of_row(r, k))
                .collect())
        })
        .collect()
}

/// Beam search over one observed prompt; returns the decoded id of every position.
fn beam_search(
    model: &Llama,
    index: &EmbeddingIndex,
    noise: &NoiseModel,
    o: &Observed,
    cfg: &BeamCleanConfig,
) -> Result<Vec<u32>> {
    let dev = model.device();
    let xt = o.transformed.squeeze(0)?;
    let t = xt.dim(0)?;
    let b = cfg.beam.max(1);
    // Positions sent in the clear are exact vocabulary rows.
    let (_, nearest_l2, _) = index.nearest(&xt)?;
    let ids = Tensor::new(nearest_l2.as_slice(), dev)?;
    let gap = (model.embedding_table().index_select(&ids, 0)? - &xt)?
        .sqr()?
        .sum(D::Minus1)?
        .to_vec1::<f32>()?;
    let ll = noise.log_likelihood(&xt)?.to_vec2::<f32>()?;
    let mut cache = KvCache::new(model.config().num_layers, b);
    let mut scores = vec![f64::NEG_INFINITY; b];
    scores[0] = 0.0;
    let mut seqs: Vec<Vec<u32>> = vec![Vec::with_capacity(t); b];
    let mut lm: Option<Vec<Vec<f32>>> = None;
    for pos in 0..t {
        let cands: Vec<(u32, f64)> = if o.attention[pos] == 0 || gap[pos] <= 1e-10 {
            vec![(nearest_l2[pos], 0.0)]
        } else {
            top_k(&ll[pos], cfg.candidates)
        };
        let mut next: Vec<(f64, usize, u32)> = Vec::with_capacity(b * cands.len());
        for (bi, &s) in scores.iter().enumerate() {
            for &(v, l) in &cands {
                let prior = lm.as_ref().map_or(0.0, |p| f64::from(p[bi][v as usize]));
                next.push((s + l + cfg.lm_weight * prior, bi, v));
            }
        }
        next.sort_by(|a, c| c.0.total_cmp(&a.0));
        next.truncate(b);
        while next.len() < b {
            next.push((f64::NEG_INFINITY, 0, next[0].2));
        }
        let parents: Vec<usize> = next.iter().map(|n| n.1).collect();
        seqs = next
            .iter()
            .map(|n| {
                let mut s = seqs[n.1].clone();
                s.push(n.2);
                s
            })
            .collect();
        scores = next.iter().map(|n| n.0).collect();
        if pos + 1 == t {
            break;
        }
        if cfg.lm_weight != 0.0 {
            if pos > 0 {
                cache.reorder(&parents)?;
            }
            let chosen: Vec<u32> = next.iter().map(|n| n.2).collect();
            let e = model.embed(&Tensor::new(chosen.as_slice(), dev)?.unsqueeze(1)?)?;
            let logits = model.forward_cached(&e, None, &mut cache)?;
            let lp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
            lm = Some(lp.to_vec2::<f32>()?);
        }
    }
    let best = (0..b)
        .max_by(|&i, &j| scores[i].total_cmp(&scores[j]))
        .unwrap_or(0);
    Ok(seqs.swap_remove(best))
}

/// Runs the beam search on every observation; one guess per transformed position.
pub fn beamclean_guesses(
    model: &Llama,
    index: &EmbeddingIndex,
    noise: &NoiseModel,
    obs: &[Observed],
    cfg: &BeamCleanConfig,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Ranked>> {
    let mut out = Vec::with_capacity(obs.len());
    for (i, o) in obs.iter().enumerate() {
        let seq = beam_search(model, index, noise, o, cfg)?;
        out.push(o.positions.iter().map(|&p| vec![seq[p as usize]]).collect());
        progress(i + 1);
    }
    Ok(out)
}
