//! `sgt convert-hf`: write a model (e.g. the bundled GGUF, dequantized) as a Hugging Face folder
//! with f32, bf16 or f16 safetensors, its config and tokenizer files, loadable by
//! `transformers` and by us.

use super::model_args::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ConvertHfArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of safetensors shards.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Storage type of the tensors: `f32` (the model's numbers as loaded), or `bf16` / `f16`
    /// (half the size, rounded to nearest; `sgt serve` keeps them as stored).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16"])]
    pub dtype: String,
}

pub fn run_convert_hf(a: ConvertHfArgs) -> Result<()> {
    let model = a.model.load_model()?;
    let tok = a.model.load_tokenizer()?;
    let dtype = match a.dtype.as_str() {
        "bf16" => candle_core::DType::BF16,
        "f16" => candle_core::DType::F16,
        _ => candle_core::DType::F32,
    };
    stainedglass_models::llm::hf::save_hf_folder(&model, &a.out, a.shards, dtype)
        .with_context(|| format!("writing {}", a.out.display()))?;
    write_tokenizer_files(&tok, &a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

/// Writes `tok` into the Hugging Face folder `out` (tokenizer.json, tokenizer_config.json with
/// the special tokens and chat template, generation_config.json), so the folder loads alone.
pub fn write_tokenizer_files(
    tok: &stainedglass_text::TextTokenizer,
    out: &std::path::Path,
) -> Result<()> {
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let mut cfg = serde_json::json!({
        "bos_token": name(tok.bos_id()),
        "eos_token": name(tok.eos_id()),
        "pad_token": name(tok.pad_id()),
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Ok(t) = tok.chat_template() {
        cfg["chat_template"] = serde_json::json!(t.source());
    }
    stainedglass_core::io::atomic_write(&out.join("tokenizer.json"), tok.to_json().as_bytes())?;
    stainedglass_core::io::atomic_write(
        &out.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    let gen = serde_json::json!({
        "bos_token_id": tok.bos_id(),
        "eos_token_id": tok.eos_id(),
        "pad_token_id": tok.pad_id(),
    });
    stainedglass_core::io::atomic_write(
        &out.join("generation_config.json"),
        gen.to_string().as_bytes(),
    )?;
    Ok(())
}
