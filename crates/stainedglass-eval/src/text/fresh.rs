//! The strongest attacks that are cheap enough to run after every training: trained **fresh on
//! the frozen SGT** (never during training), then scored on held-out prompts.
//!
//! - nearest neighbour (L2) of what the server receives — a column, never the headline;
//! - a learned per-token MLP inverter trained on the attacker's own text transformed by the
//!   public SGT (fresh noise each epoch): on the bundled SmolLM2 it recovers 99.5% of the
//!   tokens that nearest neighbour misses (docs/eval/);
//! - the provider's probes on its layer-k states, trained on the **clean** states of the
//!   attacker's text (they need neither the SGT nor a noise model), at the SGT's distillation
//!   layer and other depths;
//! - the provider holding the artefact: a probe trained on the layer-k states of the attacker's
//!   text *transformed by the SGT*, fresh noise each epoch.
//!
//! The headline is the strongest of them. `sgt quickstart` reports it, and reads the prompt it
//! sent through the proxy with it; the full suite (`sgt eval text`) adds the transformer
//! inverter, BeamClean and the baselines.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::Serialize;
use stainedglass_core::NoiseRng;
use stainedglass_metrics::index::{EmbeddingIndex, Ranked};
use stainedglass_models::llm::Llama;
use stainedglass_models::text_sgt::TransformerCloak;
use stainedglass_text::EncodedPrompt;

use super::inverter::{InverterConfig, MlpInverter};
use super::mechanism::Sgt;
use super::observed::{apply_rows, embed_rows, Observed, Recovery};
use super::probe::ActivationProbe;
use super::probe_cache::ProbeCache;
use crate::Result;

/// Attack names as they appear in reports.
pub const NEAREST_NEIGHBOUR: &str = "nearest_neighbour_l2";
pub const LEARNED_MLP: &str = "learned_mlp";

/// The report key of the layer-`k` probe trained on clean states.
pub fn probe_name(layer: usize) -> String {
    format!("layer{layer}_probe")
}

/// The report key of the layer-`k` probe trained on the SGT's own states.
pub fn sgt_probe_name(layer: usize) -> String {
    format!("layer{layer}_probe_on_sgt")
}

/// What to train.
#[derive(Debug, Clone, Serialize)]
pub struct FreshAttackConfig {
    pub inverter: InverterConfig,
    /// The provider's clean-state probes read these decoder layers (the SGT's distillation
    /// layer first); empty skips them.
    pub probe_layers: Vec<usize>,
    /// Also train a probe on the SGT's own states at the first probe layer (the provider with
    /// the artefact).
    pub probe_on_sgt: bool,
    /// Seed of the held-out application of the SGT.
    pub seed: u64,
}

impl Default for FreshAttackConfig {
    fn default() -> Self {
        Self {
            inverter: InverterConfig::default(),
            probe_layers: vec![6],
            probe_on_sgt: true,
            seed: 20_261_203,
        }
    }
}

/// The held-out recovery of every attack, and the strongest.
#[derive(Debug, Clone, Serialize)]
pub struct FreshAttackReport {
    pub attacks: BTreeMap<String, Recovery>,
    /// The attack with the highest top-1 recovery, and that recovery.
    pub strongest: String,
    pub strongest_top1: f64,
    pub attacker_prompts: usize,
    pub held_out_prompts: usize,
    pub train_seconds: f64,
    pub config: FreshAttackConfig,
}

/// The trained attackers.
pub struct FreshAttacks<'a> {
    index: &'a EmbeddingIndex,
    mlp: MlpInverter<'a>,
    /// Every probe with its report key.
    probes: Vec<(String, ActivationProbe<'a>)>,
    attacker_prompts: usize,
    train_seconds: f64,
    cfg: FreshAttackConfig,
}

impl<'a> FreshAttacks<'a> {
    /// Trains the MLP inverter against the frozen `sgt` and the probes, all on the attacker's
    /// `rows`; clean-state probes come from `cache` when it holds them (they do not depend on
    /// the SGT). `log` gets one line per epoch.
    pub fn train(
        index: &'a EmbeddingIndex,
        model: &'a Llama,
        sgt: &TransformerCloak,
        rows: &[EncodedPrompt],
        cfg: &FreshAttackConfig,
        cache: Option<&ProbeCache>,
        log: &mut dyn FnMut(String),
    ) -> Result<Self> {
        let t0 = std::time::Instant::now();
        let mlp = mlp_cached(index, model, sgt, rows, &cfg.inverter, cache, log)?;
        let mut probes = Vec::new();
        for &layer in &cfg.probe_layers {
            let (p, kept) = ActivationProbe::train_cached(
                index,
                model,
                layer,
                rows,
                &cfg.inverter,
                cache,
                |e, l| log(format!("layer-{layer} probe epoch {e}: loss {l:.3}")),
            )?;
            if kept {
                log(format!(
                    "layer-{layer} probe: trained before for this model, layer and text (cache)"
                ));
            }
            probes.push((probe_name(layer), p));
        }
        if let (true, Some(&layer)) = (cfg.probe_on_sgt, cfg.probe_layers.first()) {
            let (p, kept) = ActivationProbe::train_on_cached(
                index,
                model,
                layer,
                sgt,
                rows,
                &cfg.inverter,
                cache,
                |e, l| {
                    log(format!(
                        "layer-{layer} probe on the SGT's states epoch {e}: loss {l:.3}"
                    ))
                },
            )?;
            if kept {
                log(format!(
                    "layer-{layer} probe on the SGT's states: trained before on this SGT (cache)"
                ));
            }
            probes.push((sgt_probe_name(layer), p));
        }
        Ok(Self {
            index,
            mlp,
            probes,
            attacker_prompts: rows.len(),
            train_seconds: t0.elapsed().as_secs_f64(),
            cfg: cfg.clone(),
        })
    }

    /// Applies `sgt` once (seeded) to the `held_out` prompts and scores every attack on their
    /// transformed tokens.
    pub fn score(
        &self,
        model: &Llama,
        sgt: &TransformerCloak,
        held_out: &[EncodedPrompt],
    ) -> Result<FreshAttackReport> {
        let clean = embed_rows(model.embedding_table(), held_out)?;
        let mut rng = NoiseRng::seeded(self.cfg.seed);
        let obs: Vec<Observed> = apply_rows(&Sgt(sgt), held_out, &clean, &mut rng)?
            .into_iter()
            .zip(held_out)
            .map(|(a, r)| Observed::new(r, a.transformed))
            .collect();
        let mut attacks = BTreeMap::new();
        for (name, guesses) in self.all_guesses(&obs)? {
            attacks.insert(name, Recovery::score(&obs, &guesses));
        }
        let (strongest, strongest_top1) = attacks
            .iter()
            .map(|(k, r)| (k.clone(), r.top1))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or_default();
        Ok(FreshAttackReport {
            attacks,
            strongest,
            strongest_top1,
            attacker_prompts: self.attacker_prompts,
            held_out_prompts: held_out.len(),
            train_seconds: self.train_seconds,
            config: self.cfg.clone(),
        })
    }

    /// Top-1 reading of the transformed positions of one received prompt by the attack named
    /// `attack` (one of the report's keys). `obs.tokens` is not read.
    pub fn read(&self, attack: &str, obs: &Observed) -> Result<Vec<u32>> {
        let one = std::slice::from_ref(obs);
        let probe = self.probes.iter().find(|(name, _)| name == attack);
        let g = match (attack, probe) {
            (LEARNED_MLP, _) => self.mlp.guess(one, 1)?,
            (_, Some((_, p))) => p.guess(one, 1)?,
            _ => nearest(self.index, one)?,
        };
        Ok(g.into_iter()
            .flatten()
            .map(|c| c.first().copied().unwrap_or(0))
            .collect())
    }

    fn all_guesses(&self, obs: &[Observed]) -> Result<Vec<(String, Vec<Ranked>)>> {
        let mut out = vec![
            (NEAREST_NEIGHBOUR.to_string(), nearest(self.index, obs)?),
            (LEARNED_MLP.to_string(), self.mlp.guess(obs, 5)?),
        ];
        for (name, p) in &self.probes {
            out.push((name.clone(), p.guess(obs, 5)?));
        }
        Ok(out)
    }
}

/// The learned MLP inverter trained on `rows` transformed by the frozen `sgt`, or the one
/// `cache` keeps for the same table, SGT, text and settings (a new one is kept there).
fn mlp_cached<'a>(
    index: &'a EmbeddingIndex,
    model: &Llama,
    sgt: &TransformerCloak,
    rows: &[EncodedPrompt],
    cfg: &InverterConfig,
    cache: Option<&ProbeCache>,
    log: &mut dyn FnMut(String),
) -> Result<MlpInverter<'a>> {
    let table = model.embedding_table();
    let key = match cache {
        Some(_) => Some(ProbeCache::inverter_key(table, sgt, rows, cfg)?),
        None => None,
    };
    if let (Some(c), Some(k)) = (cache, &key) {
        if let Some(named) = c.load(k, table.device()) {
            if let Some(mlp) = MlpInverter::from_named(index, table, cfg, &named)? {
                log("MLP inverter: trained before on this SGT and text (cache)".into());
                return Ok(mlp);
            }
        }
    }
    let mlp = MlpInverter::train(index, table, &Sgt(sgt), rows, cfg, |e, l| {
        log(format!("MLP inverter epoch {e}: loss {l:.3}"))
    })?;
    if let (Some(c), Some(k)) = (cache, &key) {
        c.store(k, &mlp.named())?;
    }
    Ok(mlp)
}

/// L2 nearest-neighbour guesses (top 5) per observation.
fn nearest(index: &EmbeddingIndex, obs: &[Observed]) -> Result<Vec<Ranked>> {
    obs.iter()
        .map(|o| {
            if o.positions.is_empty() {
                return Ok(Vec::new());
            }
            Ok(index.top_k(&o.selected()?, 5)?.1)
        })
        .collect()
}

/// An observation of a received prompt `x̃ (1, t, d)` whose transformed positions are those
/// where `noise_mask` is set.
pub fn observe(transformed: Tensor, ids: &[u32], noise_mask: &[u8]) -> Observed {
    let positions: Vec<u32> = (0..ids.len())
        .filter(|&i| noise_mask.get(i) == Some(&1))
        .map(|i| i as u32)
        .collect();
    let tokens = positions.iter().map(|&i| ids[i as usize]).collect();
    Observed {
        transformed,
        attention: vec![1; ids.len()],
        positions,
        tokens,
        ids: ids.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn an_observation_scores_only_the_transformed_positions() {
        let x = Tensor::zeros((1, 5, 3), candle_core::DType::F32, &Device::Cpu).expect("x");
        let o = observe(x, &[10, 11, 12, 13, 14], &[0, 1, 1, 0, 1]);
        assert_eq!(o.positions, vec![1, 2, 4]);
        assert_eq!(o.tokens, vec![11, 12, 14]);
        // A mask shorter than the prompt leaves the rest untransformed.
        let x = Tensor::zeros((1, 3, 3), candle_core::DType::F32, &Device::Cpu).expect("x");
        assert_eq!(observe(x, &[1, 2, 3], &[1]).positions, vec![0]);
    }

    #[test]
    fn probe_names_match_the_report_keys() {
        assert_eq!(probe_name(6), "layer6_probe");
        assert_eq!(sgt_probe_name(6), "layer6_probe_on_sgt");
    }
}
