//! Builds a Hugging Face `tokenizer.json` from GGUF tokenizer metadata (`tokenizer.ggml.*`).
//! Supported: byte-level BPE (`model = gpt2`) with the pre-tokenizers we can reproduce exactly
//! (`smollm`/`starcoder`: single digits then byte-level; `gpt2`/`default`: byte-level). Other
//! models need their `tokenizer.json`.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Map};
use stainedglass_models::llm::GgufFile;

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    let v = file
        .content
        .metadata
        .get(key)
        .ok_or_else(|| Error::tokenizer(&file.path, format!("GGUF metadata lacks {key}")))?;
    let arr = v
        .to_vec()
        .map_err(|e| Error::tokenizer(&file.path, format!("{key}: {e}")))?;
    arr.iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|e| Error::tokenizer(&file.path, format!("{key}: {e}")))
        })
        .collect()
}

fn ints(file: &GgufFile, key: &str) -> Option<Vec<i64>> {
    let arr = file.content.metadata.get(key)?.to_vec().ok()?;
    arr.iter()
        .map(|x| match x {
            Value::I32(v) => Some(*v as i64),
            Value::U32(v) => Some(*v as i64),
            Value::I64(v) => Some(*v),
            Value::U64(v) => Some(*v as i64),
            Value::I8(v) => Some(*v as i64),
            Value::U8(v) => Some(*v as i64),
            _ => None,
        })
        .collect()
}

/// The `tokenizer.json` text for the tokenizer stored in `file`.
pub fn tokenizer_json(file: &GgufFile) -> Result<String> {
    let model = file.string("tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" {
        return Err(Error::tokenizer(
            &file.path,
            format!(
                "GGUF tokenizer model `{model}` cannot be rebuilt (only byte-level BPE, `gpt2`); \
                 pass the model's tokenizer.json instead"
            ),
        ));
    }
    let pre = file.string("tokenizer.ggml.pre").unwrap_or("default");
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre {
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "gpt2" | "gpt-2" | "default" => byte_level,
        other => {
            return Err(Error::tokenizer(
                &file.path,
                format!(
                    "GGUF pre-tokenizer `{other}` is not reproduced here; pass the model's \
                     tokenizer.json instead"
                ),
            ))
        }
    };
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types = ints(file, "tokenizer.ggml.token_type").unwrap_or_default();
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.clone(), json!(id));
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3,
            }));
        }
    }
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        }
    });
    Ok(doc.to_string())
}
