//! A model whose matrices stay as the file stores them (`Llama::load_stored`): GGUF quantized
//! rows multiplied in quantized form, or a Hugging Face folder's bf16/f16 rows widened to f32
//! on use (`backend::quant`); the embedding rows dequantized on lookup, the LM head a product
//! on the stored rows. Inference only — prefill, decoding, activations at a
//! layer; gradients and per-layer states need the f32 model an SGT trains against.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};

use super::backend::ops::RmsNorm;
use super::backend::quant::{Activations, QMatrix};
use super::block::{Block, Mats};
use super::config::LlamaConfig;
use super::embed_head::EmbedHead;
use super::model::Llama;
use super::stack::StoredMats;
use super::weights::{self, take, GgufFile, StoredMap, TensorMap};
use super::weights_hf_stored;
use crate::error::{Error, Result};

impl Llama {
    /// Loads a model keeping its matrices as stored, for inference, computing the f32 model's
    /// numbers bit for bit ([`Activations::F32`]; [`Llama::load_stored_with`] and
    /// [`Activations::Int8`] for llama.cpp's faster 8-bit numerics): a GGUF file's quantized
    /// matrices (a quarter to an eighth of the f32 model's memory), or a Hugging Face folder's
    /// bf16/f16 safetensors (half of it). A folder of f32 safetensors loads in f32, as
    /// [`Llama::load`] does.
    pub fn load_stored(path: &Path, device: &Device) -> Result<Self> {
        Self::load_stored_with(path, device, Activations::F32)
    }

    /// [`Llama::load_stored`] with the activations of every product kept as `activations`
    /// says: [`Activations::F32`] gives the f32 model's numbers bit for bit.
    pub fn load_stored_with(
        path: &Path,
        device: &Device,
        activations: Activations,
    ) -> Result<Self> {
        if !path.exists() || (path.is_dir() && weights_hf_stored::hf_folder_is_f32(path)?) {
            return Self::load(path, device);
        }
        if !device.is_cpu() {
            return Err(Error::Unsupported(
                "stored (quantized) weights run on the CPU only; load the model in f32 for \
                 another device"
                    .into(),
            ));
        }
        let (cfg, vectors, mut mats) = if path.is_dir() {
            weights_hf_stored::load_hf_stored(path, device)?
        } else {
            let file = GgufFile::open(path)?;
            let cfg = LlamaConfig::read_gguf(&file.content, &file.path)?;
            let (vectors, mats) = weights::load_gguf_stored(&file, &cfg, device)?;
            (cfg, vectors, mats)
        };
        mats.values_mut()
            .for_each(|m| m.set_activations(activations));
        Self::assemble_stored(cfg, vectors, mats, device)
    }

    /// Whether the matrices are kept as stored (see [`Llama::load_stored`]).
    pub fn is_stored(&self) -> bool {
        self.io.is_stored()
    }

    /// Row `id` of the input-embedding table in f32, without making the whole table.
    pub fn embedding_row(&self, id: usize, out: &mut [f32]) -> Result<()> {
        if id >= self.cfg.vocab_size || out.len() != self.cfg.hidden_size {
            return Err(Error::Shape {
                what: format!("embedding row {id}"),
                expected: format!(
                    "a row below {} into {} values",
                    self.cfg.vocab_size, self.cfg.hidden_size
                ),
                got: vec![id, out.len()],
            });
        }
        self.io.row(id, out)
    }

    /// The matrices' storage types with their counts, e.g. `Q4_1 ×210, Q8_0 ×1` (`f32` for a
    /// model held in f32).
    pub fn storage_summary(&self) -> String {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        let mut add = |m: &QMatrix| *counts.entry(m.storage()).or_default() += 1;
        match &self.io {
            EmbedHead::F32 { .. } => return "f32".into(),
            EmbedHead::Stored { embed, lm_head, .. } => {
                add(embed);
                if let Some(h) = lm_head {
                    add(h);
                }
            }
        }
        for blk in self.layers.iter() {
            if let Mats::Stored(s) = &blk.mats {
                [&s.qkv, &s.o, &s.gate_up, &s.down]
                    .into_iter()
                    .for_each(&mut add);
            }
        }
        let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        parts.join(", ")
    }

    /// Bytes held by the weight matrices and the embedding table, as loaded.
    pub fn weight_bytes(&self) -> usize {
        let f32_bytes = |t: &Tensor| t.elem_count() * 4;
        let mut n = match &self.io {
            EmbedHead::F32 { embed, lm_head } => {
                f32_bytes(embed) + lm_head.as_ref().map_or(0, |l| f32_bytes(l.weight()))
            }
            EmbedHead::Stored { embed, lm_head, .. } => {
                embed.bytes() + lm_head.as_ref().map_or(0, QMatrix::bytes)
            }
        };
        for blk in self.layers.iter() {
            n += match &blk.mats {
                Mats::F32 {
                    qkv,
                    o,
                    gate_up,
                    down,
                } => [qkv, o, gate_up, down]
                    .iter()
                    .map(|l| f32_bytes(l.weight()))
                    .sum::<usize>(),
                Mats::Stored(s) => [&s.qkv, &s.o, &s.gate_up, &s.down]
                    .iter()
                    .map(|m| m.bytes())
                    .sum(),
            };
        }
        n
    }

    fn assemble_stored(
        cfg: LlamaConfig,
        mut vectors: TensorMap,
        mut mats: StoredMap,
        device: &Device,
    ) -> Result<Self> {
        let eps = cfg.rms_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let mut q = |n: &str| {
                mats.remove(&format!("{p}.{n}"))
                    .ok_or_else(|| Error::model(Path::new(n), "missing tensor"))
            };
            let (qkv, o, gate_up, down) = (
                q("self_attn.qkv_proj.weight")?,
                q("self_attn.o_proj.weight")?,
                q("mlp.gate_up_proj.weight")?,
                q("mlp.down_proj.weight")?,
            );
            let mut t = |n: &str| take(&mut vectors, &format!("{p}.{n}"));
            let qkv_bias = if cfg.attention_bias {
                let parts = ["q", "k", "v"].map(|x| t(&format!("self_attn.{x}_proj.bias")));
                let mut b = Vec::new();
                for part in parts {
                    b.extend(part?.to_vec1::<f32>()?);
                }
                Some(b)
            } else {
                None
            };
            layers.push(Block {
                attn_norm: RmsNorm::new(t("input_layernorm.weight")?, eps)?,
                mlp_norm: RmsNorm::new(t("post_attention_layernorm.weight")?, eps)?,
                mats: Mats::Stored(StoredMats {
                    qkv,
                    qkv_bias,
                    o,
                    gate_up,
                    down,
                }),
                packed: OnceLock::new(),
            });
        }
        let missing = |n: &str| Error::model(Path::new(n), "missing tensor");
        let embed = mats
            .remove("model.embed_tokens.weight")
            .ok_or_else(|| missing("model.embed_tokens.weight"))?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(
                mats.remove("lm_head.weight")
                    .ok_or_else(|| missing("lm_head.weight"))?,
            )
        };
        let norm = RmsNorm::new(take(&mut vectors, "model.norm.weight")?, eps)?;
        Ok(Self {
            rope: Self::rope_table(&cfg),
            cfg,
            io: EmbedHead::Stored {
                embed,
                lm_head,
                table: OnceLock::new(),
            },
            layers: Arc::from(layers),
            norm,
            device: device.clone(),
        })
    }
}
