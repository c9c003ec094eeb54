//! The Llama-family configuration (Llama, Mistral, Qwen2-style), read from GGUF metadata or a
//! Hugging Face `config.json`.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Architecture hyper-parameters of a decoder-only Llama-family model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// The LM head is the input-embedding table.
    pub tie_word_embeddings: bool,
    /// Q, K and V projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// Llama 3's RoPE frequency scaling (`rope_scaling` of type `llama3`); `None` = plain RoPE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// RoPE frequency factors, as a GGUF stores Llama 3 scaling (`rope_freqs.weight`,
    /// llama.cpp's form): inverse frequency `i` is divided by factor `i`. `None` = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_freq_factors: Option<Vec<f64>>,
}

/// The attention window of a Hugging Face config, when one is in force (Mistral's
/// `sliding_window`; Qwen2's only with `use_sliding_window`). Our attention is full, which equals
/// windowed attention on sequences no longer than the window, so the model's positions are
/// capped at it: a longer prompt is refused rather than attended differently.
fn sliding_window_cap(v: &serde_json::Value, arch: &str) -> Option<usize> {
    let w = v.get("sliding_window").and_then(|x| x.as_u64())? as usize;
    let used = match arch {
        "qwen2" => v
            .get("use_sliding_window")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
        _ => true,
    };
    (used && w > 0).then_some(w)
}

/// Llama 3.x RoPE scaling (Hugging Face `rope_scaling` with `rope_type = "llama3"`): wavelengths
/// longer than `original_max_position_embeddings / low_freq_factor` are stretched by `factor`,
/// those shorter than `… / high_freq_factor` kept, and the band between interpolated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

impl RopeScaling {
    /// Reads a `rope_scaling` object; `Ok(None)` for the plain (`default`) type, an error naming
    /// the type for every other kind.
    fn from_hf(v: &serde_json::Value, path: &Path) -> Result<Option<Self>> {
        let kind = v
            .get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(|x| x.as_str())
            .unwrap_or("");
        match kind {
            "default" => return Ok(None),
            "" if v.get("factor").is_none() => return Ok(None),
            "llama3" => {}
            other => {
                return Err(Error::model(
                    path,
                    format!(
                        "rope_scaling of type `{other}` is not supported (supported: llama3, \
                         default)"
                    ),
                ))
            }
        }
        let num = |k: &str| {
            v.get(k).and_then(|x| x.as_f64()).ok_or_else(|| {
                Error::model(
                    path,
                    format!("rope_scaling (llama3) lacks the number `{k}`"),
                )
            })
        };
        let s = Self {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        };
        let ok = s.factor >= 1.0
            && s.low_freq_factor > 0.0
            && s.high_freq_factor > s.low_freq_factor
            && s.original_max_position_embeddings > 0;
        if !ok {
            return Err(Error::model(
                path,
                format!(
                    "rope_scaling (llama3) needs factor ≥ 1, 0 < low_freq_factor < \
                     high_freq_factor and original_max_position_embeddings > 0: {v}"
                ),
            ));
        }
        Ok(Some(s))
    }

    /// Scales the inverse frequencies as Hugging Face's `_compute_llama3_parameters` does.
    fn apply(&self, inv_freq: &mut [f64]) {
        let old = self.original_max_position_embeddings as f64;
        let (low_wavelen, high_wavelen) = (old / self.low_freq_factor, old / self.high_freq_factor);
        for f in inv_freq {
            let wavelen = 2.0 * std::f64::consts::PI / *f;
            if wavelen > low_wavelen {
                *f /= self.factor;
            } else if wavelen >= high_wavelen {
                let smooth = (old / wavelen - self.low_freq_factor)
                    / (self.high_freq_factor - self.low_freq_factor);
                *f = (1.0 - smooth) * *f / self.factor + smooth * *f;
            }
        }
    }
}

/// The GGUF tensor holding RoPE frequency factors.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// Architectures this module implements.
pub const SUPPORTED_ARCHITECTURES: [&str; 3] = ["llama", "mistral", "qwen2"];

impl LlamaConfig {
    /// A 3-layer Qwen2-style config with GQA and a qkv bias (hidden 32, 4 heads of 8, 2 KV
    /// heads, MLP 40, vocabulary 50) for unit tests.
    #[cfg(test)]
    pub(crate) fn tiny_for_tests() -> Self {
        Self {
            architecture: "qwen2".into(),
            vocab_size: 50,
            hidden_size: 32,
            intermediate_size: 40,
            num_layers: 3,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: true,
            rope_scaling: None,
            rope_freq_factors: None,
        }
    }

    /// The rotary embedding's `head_dim / 2` inverse frequencies, scaled as configured.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let mut inv: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d))
            .collect();
        if let Some(s) = &self.rope_scaling {
            s.apply(&mut inv);
        }
        if let Some(f) = &self.rope_freq_factors {
            inv.iter_mut().zip(f).for_each(|(x, f)| *x /= f);
        }
        inv
    }

    /// Checks the internal consistency of the numbers.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |r: String| Err(Error::model(path, r));
        if !SUPPORTED_ARCHITECTURES.contains(&self.architecture.as_str()) {
            return bad(format!(
                "architecture `{}` is not supported (supported: {})",
                self.architecture,
                SUPPORTED_ARCHITECTURES.join(", ")
            ));
        }
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in sizes {
            if v == 0 {
                return bad(format!("{name} is 0"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} is odd; RoPE needs it even",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return bad("rms_norm_eps and rope_theta must be positive".into());
        }
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.head_dim / 2 || !f.iter().all(|x| x.is_finite() && *x > 0.0) {
                return bad(format!(
                    "rope_freqs has {} factors; head_dim {} needs {} finite positive ones",
                    f.len(),
                    self.head_dim,
                    self.head_dim / 2
                ));
            }
            if self.rope_scaling.is_some() {
                return bad("both rope_scaling and rope_freqs are set; a model has one".into());
            }
        }
        Ok(())
    }

    /// Reads the configuration of a GGUF file: its metadata ([`Self::from_gguf`]) and, when the
    /// file carries them (Llama 3.1-style files), the RoPE frequency factors
    /// `rope_freqs.weight`; read without them, positions would be rotated wrongly.
    pub fn read_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let mut cfg = Self::from_gguf(content, path)?;
        if content.tensor_infos.contains_key(ROPE_FREQS) {
            let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let factors = content
                .tensor(&mut f, ROPE_FREQS, &candle_core::Device::Cpu)
                .and_then(|t| t.dequantize(&candle_core::Device::Cpu))
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| Error::model(path, format!("{ROPE_FREQS}: {e}")))?;
            cfg.rope_freq_factors = Some(factors.into_iter().map(f64::from).collect());
            cfg.validate(path)?;
        }
        Ok(cfg)
    }

    /// Reads the configuration from GGUF metadata (`general.architecture` and `<arch>.*` keys);
    /// [`Self::read_gguf`] also reads the RoPE factors a file may carry.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let md = &content.metadata;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| Error::model(path, "GGUF metadata lacks general.architecture"))?
            .clone();
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(Error::model(
                path,
                format!(
                    "GGUF architecture `{arch}` is not supported (supported: {})",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            ));
        }
        let get = |key: &str| -> Result<&gguf_file::Value> {
            md.get(&format!("{arch}.{key}"))
                .ok_or_else(|| Error::model(path, format!("GGUF metadata lacks {arch}.{key}")))
        };
        let int = |key: &str| -> Result<usize> {
            let v = get(key)?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|e| Error::model(path, format!("{arch}.{key}: {e}")))
        };
        let float = |key: &str| -> Result<f64> {
            let v = get(key)?;
            v.to_f32()
                .map(f64::from)
                .or_else(|_| v.to_f64())
                .map_err(|e| Error::model(path, format!("{arch}.{key}: {e}")))
        };
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let kv_heads = int("attention.head_count_kv").unwrap_or(heads);
        let head_dim = int("rope.dimension_count")
            .or_else(|_| int("attention.key_length"))
            .unwrap_or(hidden / heads.max(1));
        let vocab = match int("vocab_size") {
            Ok(v) => v,
            Err(_) => match md.get("tokenizer.ggml.tokens") {
                Some(t) => t.to_vec().map(|v| v.len()).unwrap_or(0),
                None => content
                    .tensor_infos
                    .get("token_embd.weight")
                    .map(|t| t.shape.dims()[0])
                    .unwrap_or(0),
            },
        };
        let cfg = Self {
            architecture: arch.clone(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: int("feed_forward_length")?,
            num_layers: int("block_count")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon")?,
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            max_position_embeddings: int("context_length").unwrap_or(4096),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            rope_scaling: None,
            rope_freq_factors: None,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str, path: &Path) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::model(path, format!("config.json is not valid JSON: {e}")))?;
        let arch = v
            .get("model_type")
            .and_then(|x| x.as_str())
            .ok_or_else(|| Error::model(path, "config.json lacks model_type"))?
            .to_string();
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(Error::model(
                path,
                format!(
                    "model_type `{arch}` is not supported (supported: {})",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            ));
        }
        // transformers ≥ 5 writes `rope_parameters` (θ inside, type `default` when plain);
        // earlier versions `rope_theta` beside an optional `rope_scaling`.
        let rope_params = v.get("rope_parameters").filter(|x| x.is_object());
        let rope_scaling = match v
            .get("rope_scaling")
            .filter(|x| !x.is_null())
            .or(rope_params)
        {
            Some(rs) => RopeScaling::from_hf(rs, path)?,
            None => None,
        };
        let rope_theta = v
            .get("rope_theta")
            .or_else(|| rope_params.and_then(|p| p.get("rope_theta")))
            .and_then(|x| x.as_f64())
            .unwrap_or(10_000.0);
        let int = |key: &str| -> Result<usize> {
            v.get(key)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| Error::model(path, format!("config.json lacks integer `{key}`")))
        };
        let hidden = int("hidden_size")?;
        let heads = int("num_attention_heads")?;
        let max_positions = int("max_position_embeddings").unwrap_or(4096);
        let cfg = Self {
            vocab_size: int("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: int("intermediate_size")?,
            num_layers: int("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: int("num_key_value_heads").unwrap_or(heads),
            head_dim: int("head_dim").unwrap_or(hidden / heads.max(1)),
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings: sliding_window_cap(&v, &arch)
                .map_or(max_positions, |w| max_positions.min(w)),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            attention_bias: v
                .get("attention_bias")
                .and_then(|x| x.as_bool())
                .unwrap_or(arch == "qwen2"),
            architecture: arch,
            rope_scaling,
            rope_freq_factors: None,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// A Hugging Face `config.json` describing this model (f32 weights).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let class = match self.architecture.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        serde_json::json!({
            "architectures": [class],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "rope_scaling": self.rope_scaling.as_ref().map(|s| serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            })),
            "hidden_act": "silu",
            "torch_dtype": "float32",
        })
    }

    /// Number of query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}
