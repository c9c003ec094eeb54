//! Writing a model as a Hugging Face folder (`config.json` + safetensors, optionally sharded,
//! in f32 or as bf16/f16 halves), e.g. to compare against `transformers` on the same weights.
//! Files are written atomically.

use super::model::Llama;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

fn atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    stainedglass_core::io::atomic_write(path, bytes)?;
    Ok(())
}

/// Saves `model` under `dir` in `shards` safetensors files (1 = `model.safetensors`), its
/// tensors as `dtype` (f32, or bf16/f16, rounded to nearest).
pub fn save_hf_folder(model: &Llama, dir: &Path, shards: usize, dtype: DType) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::Unsupported(format!(
            "a Hugging Face folder is written in f32, bf16 or f16, not {dtype:?}"
        )));
    }
    if model.config().rope_freq_factors.is_some() {
        // transformers' config has no field for per-frequency factors; written without them
        // the folder would hold a different model.
        return Err(Error::Unsupported(
            "this model's RoPE scaling came as a GGUF's rope_freqs factors, which a Hugging \
             Face config.json cannot hold; use the model's original Hugging Face folder"
                .into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg = serde_json::to_string_pretty(&model.config().to_hf_json())
        .map_err(|e| Error::model(dir, e.to_string()))?;
    atomic(&dir.join("config.json"), cfg.as_bytes())?;
    let tensors: Vec<(String, Tensor)> = model
        .hf_tensors()?
        .into_iter()
        .map(|(n, t)| t.to_dtype(dtype)?.contiguous().map(|t| (n, t)))
        .collect::<candle_core::Result<_>>()?;
    let shards = shards.clamp(1, tensors.len().max(1));
    if shards == 1 {
        stainedglass_core::io::save_tensors(&dir.join("model.safetensors"), &tensors)?;
        return Ok(());
    }
    let per = tensors.len().div_ceil(shards);
    let mut weight_map = BTreeMap::new();
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        stainedglass_core::io::save_tensors(&dir.join(&name), chunk)?;
        for (n, _) in chunk {
            weight_map.insert(n.clone(), name.clone());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    atomic(
        &dir.join("model.safetensors.index.json"),
        index.to_string().as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::save_hf_folder;
    use crate::test_util::tiny_model_with;

    /// A model whose RoPE scaling came as GGUF factors is not written as a Hugging Face folder
    /// that would describe a different model.
    #[test]
    fn rope_factors_are_not_saved_as_a_folder_without_them() {
        let m = tiny_model_with(|c| c.rope_freq_factors = Some(vec![2.0; c.head_dim / 2]));
        let dir = tempfile::tempdir().expect("dir");
        let e = save_hf_folder(&m, dir.path(), 1, candle_core::DType::F32).expect_err("refused");
        assert!(e.to_string().contains("rope_freqs"), "{e}");
        assert!(!dir.path().join("config.json").exists());
    }
}
