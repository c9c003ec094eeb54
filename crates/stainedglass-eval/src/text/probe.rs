//! The provider's own attack: it runs the base model on whatever it receives, so it can read
//! the model's hidden state at layer `k` and decode the token from it. The probe is trained on
//! **clean** text only (the attacker needs neither the SGT nor any noise model): an SGT that
//! keeps layer-`k` activations close to the clean ones — which is what distillation at layer
//! `k` optimises — hands the probe the same features it was trained on. A provider that also
//! holds the client artefact can do better still: [`ActivationProbe::train_on`] trains on the
//! states the model computes on the attacker's text *transformed by the SGT*.

use super::inverter::{InverterConfig, MlpInverter};
use super::mechanism::{table_rms, Mechanism, Sgt};
use super::observed::{apply_rows, embed_rows, Observed};
use super::probe_cache::ProbeCache;
use crate::{Error, Result};
use candle_core::{Tensor, D};
use stainedglass_core::NoiseRng;
use stainedglass_metrics::index::{EmbeddingIndex, Ranked};
use stainedglass_models::llm::{Llama, Stop};
use stainedglass_models::text_sgt::TransformerCloak;
use stainedglass_text::EncodedPrompt;

/// A per-token MLP from the layer-`k` hidden state to the token at the same position.
pub struct ActivationProbe<'a> {
    model: &'a Llama,
    layer: usize,
    /// RMS of the embedding table: hidden states are rescaled to it, row by row.
    table_rms: f64,
    mlp: MlpInverter<'a>,
}

impl<'a> ActivationProbe<'a> {
    /// Trains on the clean layer-`layer` states of the attacker's `rows` (their content tokens).
    pub fn train(
        index: &'a EmbeddingIndex,
        model: &'a Llama,
        layer: usize,
        rows: &[EncodedPrompt],
        cfg: &InverterConfig,
        progress: impl FnMut(usize, f32),
    ) -> Result<Self> {
        let table = model.embedding_table();
        let table_rms = check_layer(model, layer)?;
        let clean = embed_rows(table, rows)?;
        let (x, ys) = states(model, layer, table_rms, rows, clean)?;
        let data = |_: &mut NoiseRng| Ok((x.clone(), ys.clone()));
        Self::fit(index, model, layer, table_rms, cfg, data, progress)
    }

    /// Fits the probe's MLP on the `(states, tokens)` that `epoch_data` gives each epoch.
    fn fit(
        index: &'a EmbeddingIndex,
        model: &'a Llama,
        layer: usize,
        table_rms: f64,
        cfg: &InverterConfig,
        epoch_data: impl FnMut(&mut NoiseRng) -> Result<(Tensor, Vec<u32>)>,
        progress: impl FnMut(usize, f32),
    ) -> Result<Self> {
        let mlp = MlpInverter::fit(index, model.embedding_table(), cfg, epoch_data, progress)?;
        Ok(Self {
            model,
            layer,
            table_rms,
            mlp,
        })
    }

    /// [`ActivationProbe::train`], or the probe kept in `cache` for the same model, layer, text
    /// and settings (then `progress` is not called); a newly trained probe is kept there.
    /// The second value says whether it came from the cache.
    pub fn train_cached(
        index: &'a EmbeddingIndex,
        model: &'a Llama,
        layer: usize,
        rows: &[EncodedPrompt],
        cfg: &InverterConfig,
        cache: Option<&ProbeCache>,
        progress: impl FnMut(usize, f32),
    ) -> Result<(Self, bool)> {
        let key = || ProbeCache::key(model, layer, rows, cfg);
        let train = || Self::train(index, model, layer, rows, cfg, progress);
        Self::cached(index, model, layer, cfg, cache, key, train)
    }

    /// The provider holding the artefact: trains on the layer-`layer` states the model computes
    /// on the attacker's `rows` transformed by `mechanism`, with fresh noise each epoch.
    pub fn train_on(
        index: &'a EmbeddingIndex,
        model: &'a Llama,
        layer: usize,
        mechanism: &dyn Mechanism,
        rows: &[EncodedPrompt],
        cfg: &InverterConfig,
        progress: impl FnMut(usize, f32),
    ) -> Result<Self> {
        let table = model.embedding_table();
        let table_rms = check_layer(model, layer)?;
        let clean = embed_rows(table, rows)?;
        let epoch_data = |rng: &mut NoiseRng| -> Result<(Tensor, Vec<u32>)> {
            let applied = apply_rows(mechanism, rows, &clean, rng)?;
            let received = applied.into_iter().map(|a| a.transformed).collect();
            states(model, layer, table_rms, rows, received)
        };
        Self::fit(index, model, layer, table_rms, cfg, epoch_data, progress)
    }

    /// [`ActivationProbe::train_on`] the frozen `sgt`, or the probe `cache` keeps for the same
    /// model, layer, SGT, text and settings; a newly trained probe is kept there. The second
    /// value says whether it came from the cache.
    #[allow(clippy::too_many_arguments)]
    pub fn train_on_cached(
        index: &'a EmbeddingIndex,
        model: &'a Llama,
        layer: usize,
        sgt: &TransformerCloak,
        rows: &[EncodedPrompt],
        cfg: &InverterConfig,
        cache: Option<&ProbeCache>,
        progress: impl FnMut(usize, f32),
    ) -> Result<(Self, bool)> {
        let key = || ProbeCache::key_on_sgt(model, layer, sgt, rows, cfg);
        let train = || Self::train_on(index, model, layer, &Sgt(sgt), rows, cfg, progress);
        Self::cached(index, model, layer, cfg, cache, key, train)
    }

    /// The probe `cache` keeps under `key()`, else `train()`'s, then kept there; the second
    /// value says whether it came from the cache.
    fn cached(
        index: &'a EmbeddingIndex,
        model: &'a Llama,
        layer: usize,
        cfg: &InverterConfig,
        cache: Option<&ProbeCache>,
        key: impl FnOnce() -> Result<String>,
        train: impl FnOnce() -> Result<Self>,
    ) -> Result<(Self, bool)> {
        let Some(cache) = cache else {
            return Ok((train()?, false));
        };
        let table_rms = check_layer(model, layer)?;
        let key = key()?;
        let table = model.embedding_table();
        if let Some(named) = cache.load(&key, table.device()) {
            if let Some(mlp) = MlpInverter::from_named(index, table, cfg, &named)? {
                let probe = Self {
                    model,
                    layer,
                    table_rms,
                    mlp,
                };
                return Ok((probe, true));
            }
        }
        let probe = train()?;
        cache.store(&key, &probe.mlp.named())?;
        Ok((probe, false))
    }

    /// The layer the probe reads.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Ranked guesses (top `k`) for the transformed tokens of each observation.
    pub fn guess(&self, obs: &[Observed], k: usize) -> Result<Vec<Ranked>> {
        self.mlp.guess_from(obs, k, |o| {
            layer_features(self.model, self.layer, self.table_rms, o)
        })
    }
}

/// The embedding table's RMS, once `layer` is known to be one of the model's decoder layers.
fn check_layer(model: &Llama, layer: usize) -> Result<f64> {
    let layers = model.config().num_layers;
    if layer == 0 || layer > layers {
        return Err(Error::Input(format!(
            "probe layer {layer} is outside 1..={layers} (the model's decoder layers)"
        )));
    }
    table_rms(model.embedding_table())
}

/// The layer-`layer` states of `inputs` (one `(1, t, d)` per row) at the rows' content tokens,
/// stacked, with those tokens.
fn states(
    model: &Llama,
    layer: usize,
    table_rms: f64,
    rows: &[EncodedPrompt],
    inputs: Vec<Tensor>,
) -> Result<(Tensor, Vec<u32>)> {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (r, x) in rows.iter().zip(inputs) {
        let o = Observed::new(r, x);
        if o.positions.is_empty() {
            continue;
        }
        xs.push(layer_features(model, layer, table_rms, &o)?);
        ys.extend(o.tokens);
    }
    if ys.is_empty() {
        return Err(Error::Input(
            "the attacker's rows have no content tokens to train the probe on".into(),
        ));
    }
    Ok((Tensor::cat(&xs, 0)?, ys))
}

/// `(positions, d)`: the layer-`layer` states at the observation's transformed positions, each
/// row rescaled to `table_rms`.
fn layer_features(model: &Llama, layer: usize, table_rms: f64, o: &Observed) -> Result<Tensor> {
    let x = o.transformed.detach();
    let t = x.dim(1)?;
    let am = Tensor::from_vec(o.attention.clone(), (1, t), x.device())?;
    let h = model
        .forward_embeds(&x, Some(&am), Stop::AtLayer(layer))?
        .squeeze(0)?;
    let idx = Tensor::new(o.positions.as_slice(), x.device())?;
    let h = h.index_select(&idx, 0)?;
    let rms = (h.sqr()?.mean_keepdim(D::Minus1)?.sqrt()? + 1e-6)?;
    Ok((h.broadcast_div(&rms)? * table_rms)?)
}
