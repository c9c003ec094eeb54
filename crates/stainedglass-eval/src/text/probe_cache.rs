//! A probe trained on **clean** layer-`k` states depends on the base model, the layer, the
//! attacker's text and the training settings — never on the SGT — so it is trained once and
//! kept: `<dir>/<key>.safetensors`. The key hashes the model (its embedding table, and its
//! layer-`k` states on a fixed input, which every weight up to layer `k` shapes), the layer, the
//! attacker's token ids and masks, and the settings. The attackers trained on a frozen SGT (the
//! learned MLP inverter, the probe on the SGT's own states) are kept the same way, their keys
//! also hashing the SGT's config and every one of its parameters: training is seeded, so a kept
//! attacker is the one a new training would give. A file that does not load or does not fit
//! is ignored (the attacker is retrained and the file replaced); writes are atomic
//! (`stainedglass_core::io::save_tensors`).

use super::inverter::InverterConfig;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use sha2::{Digest, Sha256};
use stainedglass_models::llm::{Llama, Stop};
use stainedglass_models::text_sgt::{Precision, TransformerCloak};
use stainedglass_text::EncodedPrompt;
use std::collections::HashMap;
use std::path::PathBuf;

/// Where trained clean-state probes are kept.
#[derive(Debug, Clone)]
pub struct ProbeCache {
    dir: PathBuf,
}

impl ProbeCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The key of the probe of `model`'s layer `layer` trained on `rows` with `cfg`.
    pub fn key(
        model: &Llama,
        layer: usize,
        rows: &[EncodedPrompt],
        cfg: &InverterConfig,
    ) -> Result<String> {
        let mut h = Sha256::new();
        h.update(b"stainedglass clean-state probe v1\n");
        h.update(stainedglass_text::artefact::embedding_sha256(
            model.embedding_table(),
        )?);
        h.update(layer.to_le_bytes());
        // The layer's states on a fixed input: a change to any weight below it changes them.
        let vocab = model.embedding_table().dim(0)? as u32;
        let ids: Vec<u32> = (0..16u32).map(|i| (i * 7919 + 13) % vocab).collect();
        let x = model.embed(&Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?)?;
        let s = model.forward_embeds(&x, None, Stop::AtLayer(layer))?;
        for v in s.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? {
            h.update(v.to_le_bytes());
        }
        hash_text(&mut h, rows, cfg)?;
        Ok(format!("{:x}", h.finalize()))
    }

    /// The key of the probe of `model`'s layer `layer` trained on the states of `rows`
    /// transformed by the frozen `sgt` (the provider holding the artefact).
    pub fn key_on_sgt(
        model: &Llama,
        layer: usize,
        sgt: &TransformerCloak,
        rows: &[EncodedPrompt],
        cfg: &InverterConfig,
    ) -> Result<String> {
        let mut h = Sha256::new();
        h.update(b"stainedglass probe on the SGT's states v1\n");
        h.update(Self::key(model, layer, rows, cfg)?);
        hash_sgt(&mut h, sgt)?;
        Ok(format!("{:x}", h.finalize()))
    }

    /// The key of the learned MLP inverter over the vocabulary `table` trained on `rows`
    /// transformed by the frozen `sgt`.
    pub fn inverter_key(
        table: &Tensor,
        sgt: &TransformerCloak,
        rows: &[EncodedPrompt],
        cfg: &InverterConfig,
    ) -> Result<String> {
        let mut h = Sha256::new();
        h.update(b"stainedglass learned MLP inverter v1\n");
        h.update(stainedglass_text::artefact::embedding_sha256(table)?);
        hash_sgt(&mut h, sgt)?;
        hash_text(&mut h, rows, cfg)?;
        Ok(format!("{:x}", h.finalize()))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    /// The kept tensors of `key`, if a readable file holds them.
    pub fn load(&self, key: &str, device: &candle_core::Device) -> Option<HashMap<String, Tensor>> {
        stainedglass_core::io::load_tensors(&self.path(key), device).ok()
    }

    /// Keeps `tensors` under `key` (atomically: temporary file, fsync, rename).
    pub fn store(&self, key: &str, tensors: &[(String, Tensor)]) -> Result<()> {
        Ok(stainedglass_core::io::save_tensors(
            &self.path(key),
            tensors,
        )?)
    }
}

/// The attacker's token ids and masks, and the training settings.
fn hash_text(h: &mut Sha256, rows: &[EncodedPrompt], cfg: &InverterConfig) -> Result<()> {
    for r in rows {
        h.update((r.input_ids.len() as u64).to_le_bytes());
        for (&t, (&a, &n)) in r
            .input_ids
            .iter()
            .zip(r.attention_mask.iter().zip(&r.noise_mask))
        {
            h.update(t.to_le_bytes());
            h.update([a, n]);
        }
    }
    h.update(serde_json::to_vec(cfg).map_err(|e| Error::Input(format!("probe settings: {e}")))?);
    Ok(())
}

/// A frozen SGT: its config, the precision it is applied in (bf16 outputs differ slightly,
/// so their attackers are trained apart) and every parameter, by name, in name order.
fn hash_sgt(h: &mut Sha256, sgt: &TransformerCloak) -> Result<()> {
    h.update(
        serde_json::to_vec(sgt.config()).map_err(|e| Error::Input(format!("SGT config: {e}")))?,
    );
    if sgt.precision() != Precision::F32 {
        // f32 adds nothing, so the keys of earlier caches still hold.
        h.update(format!("precision {}", sgt.precision()).as_bytes());
    }
    let mut named = sgt.named_tensors();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in named {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(format!("{:?}", t.dims()).as_bytes());
        for v in t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? {
            h.update(v.to_le_bytes());
        }
    }
    Ok(())
}
