//! The privacy measurement every text command ends with: the learned MLP inverter and the
//! provider's layer probe, trained fresh on the frozen SGT with the training conversations as
//! the attacker's own text, scored on the held-out conversations
//! (`stainedglass_eval::text::fresh`). `sgt quickstart`, `sgt text train` and `sgt text eval`
//! report its strongest attack; nearest neighbour is one column of it, never the headline.

use std::sync::Arc;

use anyhow::Result;
use stainedglass_eval::text::fresh::{FreshAttackConfig, FreshAttackReport, FreshAttacks};
use stainedglass_eval::text::inverter::InverterConfig;
use stainedglass_eval::text::probe_cache::ProbeCache;
use stainedglass_metrics::EmbeddingIndex;
use stainedglass_models::llm::Llama;
use stainedglass_models::text_sgt::TransformerCloak;
use stainedglass_text::EncodedPrompt;
use stainedglass_text::TextTokenizer;
use stainedglass_train::text::{PrivacyCheck, PrivacyReading, TextTrainConfig};

/// Trains the attackers on the config's training conversations (probes at the config's
/// distillation layer and two other depths, and one on the SGT's own states at that layer),
/// `epochs` passes with fresh noise each, from `seed` (default: the suite's fixed one).
pub fn train<'a>(
    cfg: &TextTrainConfig,
    model: &'a Llama,
    tok: &Arc<TextTokenizer>,
    cloak: &TransformerCloak,
    index: &'a EmbeddingIndex,
    (epochs, seed): (usize, Option<u64>),
    cache: Option<&ProbeCache>,
) -> Result<FreshAttacks<'a>> {
    let rows = stainedglass_train::text::training_rows(cfg, tok)?;
    let defaults = FreshAttackConfig::default();
    let fresh_cfg = FreshAttackConfig {
        seed: seed.unwrap_or(defaults.seed),
        inverter: InverterConfig {
            epochs: epochs.max(1),
            seed: seed.unwrap_or(defaults.inverter.seed),
            ..defaults.inverter
        },
        probe_layers: probe_depths(cfg.loss.distillation_layer_index, model.config().num_layers),
        probe_on_sgt: true,
    };
    let mut log = |line: String| eprintln!("  {line}");
    Ok(FreshAttacks::train(
        index, model, cloak, &rows, &fresh_cfg, cache, &mut log,
    )?)
}

/// Where clean-state probes are kept between runs: `<assets>/cache/probes` (they depend on the
/// base model, layer and attacker text only, never on the SGT).
pub fn probe_cache(assets: &std::path::Path) -> ProbeCache {
    ProbeCache::new(assets.join("cache").join("probes"))
}

/// The provider's probe depths: the distillation layer `k` (the last layer when the SGT
/// distils logits), halfway to the input, halfway to the output, and a fifth of the depth
/// (where a token is still easy to read; the first three already hold it for k = L/5).
pub fn probe_depths(k: Option<usize>, layers: usize) -> Vec<usize> {
    let k = k.unwrap_or(layers).clamp(1, layers.max(1));
    let shallow = (layers / 5).max(1);
    let mut depths = vec![k, (k / 2).max(1), k + (layers - k) / 2, shallow];
    let mut seen = std::collections::HashSet::new();
    depths.retain(|d| seen.insert(*d));
    depths
}

/// Trains the attackers and scores them on the config's held-out conversations (the first
/// `limit`); prints one line per attack, strongest first.
pub fn measure(
    cfg: &TextTrainConfig,
    model: &Llama,
    tok: &Arc<TextTokenizer>,
    cloak: &TransformerCloak,
    attack: (usize, Option<u64>),
    limit: Option<usize>,
    cache: Option<&ProbeCache>,
) -> Result<FreshAttackReport> {
    let index = EmbeddingIndex::new(model.embedding_table())?;
    let attackers = train(cfg, model, tok, cloak, &index, attack, cache)?;
    let mut held = stainedglass_train::text::held_out_rows(cfg, tok)?;
    held.truncate(limit.unwrap_or(usize::MAX));
    let report = attackers.score(model, cloak, &held)?;
    print(&report);
    Ok(report)
}

/// The privacy check of each periodic evaluation during training: the learned MLP inverter
/// (one epoch) trained afresh on the layer as it is at that step, beside nearest neighbour, on
/// the config's split. The probes and the full epochs wait for the frozen layer at the end.
pub struct Periodic<'a> {
    model: &'a Llama,
    index: EmbeddingIndex,
    attacker: Vec<EncodedPrompt>,
    held: Vec<EncodedPrompt>,
}

impl<'a> Periodic<'a> {
    pub fn new(cfg: &TextTrainConfig, model: &'a Llama, tok: &Arc<TextTokenizer>) -> Result<Self> {
        Ok(Self {
            model,
            index: EmbeddingIndex::new(model.embedding_table())?,
            attacker: stainedglass_train::text::training_rows(cfg, tok)?,
            held: stainedglass_train::text::held_out_rows(cfg, tok)?,
        })
    }
}

impl PrivacyCheck for Periodic<'_> {
    fn check(
        &mut self,
        cloak: &TransformerCloak,
    ) -> std::result::Result<PrivacyReading, Box<dyn std::error::Error + Send + Sync>> {
        let cfg = FreshAttackConfig {
            inverter: InverterConfig {
                epochs: 1,
                ..InverterConfig::default()
            },
            probe_layers: Vec::new(),
            probe_on_sgt: false,
            ..FreshAttackConfig::default()
        };
        let attackers = FreshAttacks::train(
            &self.index,
            self.model,
            cloak,
            &self.attacker,
            &cfg,
            None,
            &mut |_| {},
        )?;
        let report = attackers.score(self.model, cloak, &self.held)?;
        let attacks = report
            .attacks
            .iter()
            .map(|(k, r)| (k.clone(), r.top1))
            .collect();
        Ok(PrivacyReading::of(attacks).ok_or("no attack ran")?)
    }
}

/// One line per attack, strongest first (standard error).
pub fn print(f: &FreshAttackReport) {
    let mut rows: Vec<_> = f.attacks.iter().collect();
    rows.sort_by(|a, b| b.1.top1.total_cmp(&a.1.top1));
    eprintln!(
        "  attacks trained on the frozen SGT ({} attacker conversations, {:.0} s), on {} held-out \
         conversations:",
        f.attacker_prompts, f.train_seconds, f.held_out_prompts
    );
    for (name, r) in rows {
        eprintln!(
            "    {:<22} recovers {:5.1}% of the transformed tokens",
            name.replace('_', " "),
            100.0 * r.top1
        );
    }
}

#[cfg(test)]
mod tests {
    use super::probe_depths;

    #[test]
    fn probes_read_the_distillation_layer_first_then_two_other_depths() {
        assert_eq!(probe_depths(Some(6), 30), vec![6, 3, 18]);
        assert_eq!(probe_depths(None, 30), vec![30, 15, 6]);
        assert_eq!(probe_depths(Some(15), 30), vec![15, 7, 22, 6]);
        assert_eq!(probe_depths(Some(1), 2), vec![1]);
        assert_eq!(probe_depths(Some(40), 4), vec![4, 2, 1]);
    }
}
