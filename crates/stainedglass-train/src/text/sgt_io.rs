//! The trained layer on disk: `config.json` (format tag and the layer config) and
//! `model.safetensors`, written atomically.

use crate::{Error, Result};
use stainedglass_models::text_sgt::{TransformerCloak, TransformerCloakConfig};
use std::path::Path;

/// Saves the layer as `dir/config.json` + `dir/model.safetensors` (atomically).
pub fn save_sgt(cloak: &TransformerCloak, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg = serde_json::json!({
        "format": "stainedglass-transformer-cloak",
        "version": 1,
        "config": cloak.config(),
    });
    stainedglass_core::io::atomic_write(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&cfg)
            .map_err(|e| Error::Config(e.to_string()))?
            .as_bytes(),
    )?;
    stainedglass_core::io::save_tensors(&dir.join("model.safetensors"), &cloak.named_tensors())?;
    Ok(())
}

/// Loads a layer written by [`save_sgt`].
pub fn load_sgt(dir: &Path, device: &candle_core::Device) -> Result<TransformerCloak> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::ckpt(&p, format!("not valid JSON: {e}")))?;
    if v.get("format").and_then(|f| f.as_str()) != Some("stainedglass-transformer-cloak") {
        return Err(Error::ckpt(&p, "not a TransformerCloak config"));
    }
    let cfg: TransformerCloakConfig = serde_json::from_value(v["config"].clone())
        .map_err(|e| Error::ckpt(&p, format!("bad config: {e}")))?;
    let t = stainedglass_core::io::load_tensors(&dir.join("model.safetensors"), device)?;
    Ok(TransformerCloak::from_named(cfg, &t, device)?)
}
