//! The Llama-family decoder: embeddings in, activations at any layer or logits out, with an
//! optional KV cache. Weights are frozen plain tensors; every op on the path from the input
//! embeddings is differentiable (fused ops in `backend::ops`, the layers as one op in `stack`), so an SGT can train through the model.

use super::backend::ops::{Attention, Linear, RmsNorm, Rope, SwiGlu};
use super::backend::rope_table::RopeTable;
use super::block::{Block, Mats};
use super::config::LlamaConfig;
use super::embed_head::EmbedHead;
use super::kv_cache::KvCache;
use super::stack::{DecoderStack, LayerPass, StackDims};
use super::weights::{self, take, GgufFile, TensorMap};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use stainedglass_core::host::is_cpu_f32;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Where a forward pass stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The residual stream after `k` decoder layers (`0` = the input embeddings), no final norm.
    AtLayer(usize),
    /// Logits over the vocabulary at every position.
    Logits,
}

/// RoPE positions that count real tokens only (`mask` 1 = token), so a left-padded row sees the
/// positions of its unpadded sequence.
pub fn positions_from_mask(mask: &[u8], b: usize, t: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(b * t);
    for bi in 0..b {
        let mut p = 0u32;
        for i in 0..t {
            out.push(p);
            if mask[bi * t + i] != 0 {
                p += 1;
            }
        }
    }
    out
}

/// The longest context a model instance supports (bounds the RoPE table).
const MAX_ROPE_POSITIONS: usize = 32_768;

/// A Llama, Mistral or Qwen2-style causal LM, held in f32 or with its matrices as the file
/// stores them (`Llama::load_stored`: inference only).
pub struct Llama {
    pub(super) cfg: LlamaConfig,
    pub(super) io: EmbedHead,
    pub(super) layers: Arc<[Block]>,
    pub(super) norm: RmsNorm,
    pub(super) rope: Arc<RopeTable>,
    pub(super) device: Device,
}

impl Llama {
    /// Loads a GGUF file or a Hugging Face folder, whichever `path` is.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if path.is_dir() {
            let (cfg, map) = weights::load_hf_folder(path, device)?;
            Self::assemble(cfg, map, device)
        } else if path.exists() {
            let file = GgufFile::open(path)?;
            Self::from_gguf(&file, device)
        } else {
            Err(Error::model(
                path,
                "no such file or folder; pass a .gguf file or a Hugging Face model folder \
                 (run ./scripts/setup-assets.sh for the bundled SmolLM2)",
            ))
        }
    }

    pub fn from_gguf(file: &GgufFile, device: &Device) -> Result<Self> {
        let cfg = LlamaConfig::read_gguf(&file.content, &file.path)?;
        let map = weights::load_gguf(file, &cfg, device)?;
        Self::assemble(cfg, map, device)
    }

    /// Builds the model from HF-named f32 tensors (checked with `weights::check_tensors`).
    pub fn from_tensors(cfg: LlamaConfig, map: TensorMap, device: &Device) -> Result<Self> {
        weights::check_tensors(&map, &cfg, Path::new("<tensors>"))?;
        Self::assemble(cfg, map, device)
    }

    /// Builds the model from tensors the loaders have already checked (presence, shapes,
    /// finite values), so a load scans the weights once.
    fn assemble(cfg: LlamaConfig, mut map: TensorMap, device: &Device) -> Result<Self> {
        let eps = cfg.rms_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let mut t = |n: &str| take(&mut map, &format!("{p}.{n}"));
            let qkv_w = Tensor::cat(
                &[
                    t("self_attn.q_proj.weight")?,
                    t("self_attn.k_proj.weight")?,
                    t("self_attn.v_proj.weight")?,
                ],
                0,
            )?;
            let qkv_b = if cfg.attention_bias {
                Some(Tensor::cat(
                    &[
                        t("self_attn.q_proj.bias")?,
                        t("self_attn.k_proj.bias")?,
                        t("self_attn.v_proj.bias")?,
                    ],
                    0,
                )?)
            } else {
                None
            };
            let gate_up = Tensor::cat(&[t("mlp.gate_proj.weight")?, t("mlp.up_proj.weight")?], 0)?;
            layers.push(Block {
                attn_norm: RmsNorm::new(t("input_layernorm.weight")?, eps)?,
                mlp_norm: RmsNorm::new(t("post_attention_layernorm.weight")?, eps)?,
                mats: Mats::F32 {
                    qkv: Linear::new(qkv_w, qkv_b),
                    o: Linear::new(t("self_attn.o_proj.weight")?, None),
                    gate_up: Linear::new(gate_up, None),
                    down: Linear::new(t("mlp.down_proj.weight")?, None),
                },
                packed: OnceLock::new(),
            });
        }
        let embed = take(&mut map, "model.embed_tokens.weight")?;
        let norm = RmsNorm::new(take(&mut map, "model.norm.weight")?, eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(Linear::new(take(&mut map, "lm_head.weight")?, None))
        };
        Ok(Self {
            rope: Self::rope_table(&cfg),
            cfg,
            io: EmbedHead::F32 { embed, lm_head },
            layers: layers.into(),
            norm,
            device: device.clone(),
        })
    }

    pub(super) fn rope_table(cfg: &LlamaConfig) -> Arc<RopeTable> {
        Arc::new(RopeTable::from_inv_freq(
            &cfg.rope_inv_freq(),
            cfg.max_position_embeddings.min(MAX_ROPE_POSITIONS),
        ))
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The input-embedding table `(vocab, hidden)` in f32 (a model with stored weights
    /// dequantizes it on the first call and keeps it).
    pub fn embedding_table(&self) -> &Tensor {
        self.io.table(&self.device)
    }

    /// The longest sequence (prompt + generated) this instance accepts.
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions
    }

    /// Token embeddings of `ids: (b, t)` (u32) → `(b, t, hidden)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let dims = ids.dims().to_vec();
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        let v = flat.to_vec1::<u32>()?;
        if let Some(&bad) = v.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::Shape {
                what: format!("token id {bad}"),
                expected: format!("ids below the vocabulary size {}", self.cfg.vocab_size),
                got: dims,
            });
        }
        let e = self.io.rows(&v, &self.device)?;
        let mut out = dims;
        out.push(self.cfg.hidden_size);
        Ok(e.reshape(out)?)
    }

    /// Runs `embeds: (b, t, hidden)` with `attention_mask: (b, t)` (1 = token, 0 = padding, left
    /// or right) and stops at `stop`. Without a mask every position is a token.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        stop: Stop,
    ) -> Result<Tensor> {
        let (b, t, _) = self.check_embeds(embeds)?;
        let mask = self.mask_vec(attention_mask, b, t)?;
        let mut cache = KvCache::new(self.cfg.num_layers, b);
        self.run(embeds, &mask, &mut cache, (0, stop), false, None)
    }

    /// Layers `first..` up to `stop` on `hidden (b, t, hidden)`, the residual stream entering
    /// layer `first` — e.g. the output of a served adapter that stands in for layers
    /// `0..first`. `first = 0` is [`Self::forward_embeds`].
    pub fn forward_from_layer(
        &self,
        first: usize,
        hidden: &Tensor,
        attention_mask: Option<&Tensor>,
        stop: Stop,
    ) -> Result<Tensor> {
        let last = match stop {
            Stop::AtLayer(k) => k,
            Stop::Logits => self.cfg.num_layers,
        };
        if first > last {
            return Err(Error::Shape {
                what: format!("a pass from layer {first}"),
                expected: format!("a first layer in 0..={last} (the pass stops at layer {last})"),
                got: vec![first],
            });
        }
        let (b, t, _) = self.check_embeds(hidden)?;
        let mask = self.mask_vec(attention_mask, b, t)?;
        let mut cache = KvCache::new(self.cfg.num_layers, b);
        self.run(hidden, &mask, &mut cache, (first, stop), false, None)
    }

    /// The full pass, also returning every residual-stream state: `states[k]` is the input of
    /// layer `k` (`states[0]` = embeddings, `states[L]` = the last layer's output, before the
    /// final norm). Returns `(logits, states)`. Runs layer by layer (each state is a
    /// differentiable tensor), so it agrees with the fused pass of `forward_embeds` to float
    /// rounding, not bit for bit.
    pub fn forward_with_states(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (b, t, _) = self.check_embeds(embeds)?;
        let mask = self.mask_vec(attention_mask, b, t)?;
        let mut cache = KvCache::new(self.cfg.num_layers, b);
        let mut states = Vec::with_capacity(self.cfg.num_layers + 1);
        let logits = self.run(
            embeds,
            &mask,
            &mut cache,
            (0, Stop::Logits),
            false,
            Some(&mut states),
        )?;
        Ok((logits, states))
    }

    /// Logits `(b, t, vocab)` from token ids.
    pub fn forward_ids(&self, ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.forward_embeds(&self.embed(ids)?, attention_mask, Stop::Logits)
    }

    /// Appends `embeds` to `cache` and returns the logits of the last position, `(b, vocab)`.
    pub fn forward_cached(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, t, _) = self.check_embeds(embeds)?;
        if cache.next_pos.len() != b {
            return Err(Error::Shape {
                what: "cached batch".into(),
                expected: format!("batch {}", cache.next_pos.len()),
                got: embeds.dims().to_vec(),
            });
        }
        let mask = self.mask_vec(attention_mask, b, t)?;
        self.run(embeds, &mask, cache, (0, Stop::Logits), true, None)
    }

    fn check_embeds(&self, embeds: &Tensor) -> Result<(usize, usize, usize)> {
        let dims = embeds.dims();
        match *dims {
            [b, t, h] if h == self.cfg.hidden_size && b > 0 && t > 0 => {
                if embeds.dtype() != DType::F32 {
                    return Err(Error::Shape {
                        what: format!("embeddings of dtype {:?}", embeds.dtype()),
                        expected: "f32".into(),
                        got: dims.to_vec(),
                    });
                }
                Ok((b, t, h))
            }
            _ => Err(Error::Shape {
                what: "input embeddings".into(),
                expected: format!("(batch, seq_len, {})", self.cfg.hidden_size),
                got: dims.to_vec(),
            }),
        }
    }

    fn mask_vec(&self, mask: Option<&Tensor>, b: usize, t: usize) -> Result<Vec<u8>> {
        match mask {
            None => Ok(vec![1; b * t]),
            Some(m) => {
                if m.dims() != [b, t] {
                    return Err(Error::Shape {
                        what: "attention mask".into(),
                        expected: format!("({b}, {t})"),
                        got: m.dims().to_vec(),
                    });
                }
                let v = m.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                Ok(v.iter().map(|&x| u8::from(x != 0.0)).collect())
            }
        }
    }

    fn run(
        &self,
        embeds: &Tensor,
        mask: &[u8],
        cache: &mut KvCache,
        (first, stop): (usize, Stop),
        last_only: bool,
        mut states: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        if embeds.track_op() && self.io.is_stored() {
            return Err(self.io.needs_f32("gradients to the input embeddings"));
        }
        let n_layers = match stop {
            Stop::AtLayer(k) if k > self.cfg.num_layers => {
                return Err(Error::Shape {
                    what: format!("stop at layer {k}"),
                    expected: format!("a layer in 0..={}", self.cfg.num_layers),
                    got: vec![k],
                })
            }
            Stop::AtLayer(k) => k,
            Stop::Logits => self.cfg.num_layers,
        };
        let positions = self.positions(mask, (b, t), cache)?;
        let past = cache.len();
        for (bi, kv) in cache.key_valid.iter_mut().enumerate() {
            kv.extend_from_slice(&mask[bi * t..(bi + 1) * t]);
        }
        let key_valid = Arc::new(cache.key_valid.concat());
        let positions = Arc::new(positions);
        let (hq, hkv, d) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let mut x = embeds.clone();
        // On the CPU the layers run as one op (`llm::stack`): a differentiable one for
        // uncached passes, a host pass for cached inference (prefill and decoding).
        let cached_with_grad = last_only && embeds.track_op();
        if !cached_with_grad && states.is_none() && n_layers > first && is_cpu_f32(embeds) {
            let dims = StackDims {
                hidden: self.cfg.hidden_size,
                hq,
                hkv,
                d,
                ffn: self.cfg.intermediate_size,
            };
            let pass = LayerPass::new(
                dims,
                self.rope.clone(),
                positions.clone(),
                key_valid.clone(),
                embeds.track_op(),
            );
            let op = DecoderStack::new(self.layers.clone(), n_layers, pass).starting_at(first);
            let x = embeds.contiguous()?;
            if last_only {
                let x = op.forward_cached(&x, cache, past)?;
                return self.finish(x, stop, t, last_only);
            }
            let x = if op.pass.keep {
                x.apply_op1(op)?
            } else {
                x.apply_op1_no_bwd(&op)?
            };
            return self.finish(x, stop, t, last_only);
        }
        let rope = Rope::new(self.rope.clone(), positions);
        let attn = Attention { key_valid };
        for (li, blk) in self.layers.iter().enumerate().take(n_layers).skip(first) {
            let [wqkv, wo, wgu, wdown] = blk.f32_mats().ok_or_else(|| {
                self.io
                    .needs_f32("per-layer states and gradients through a cached pass")
            })?;
            if let Some(s) = states.as_deref_mut() {
                s.push(x.clone());
            }
            let h = blk.attn_norm.forward(&x)?;
            let qkv = wqkv.forward(&h)?;
            let q = qkv.narrow(2, 0, hq * d)?.reshape((b, t, hq, d))?;
            let k = qkv.narrow(2, hq * d, hkv * d)?.reshape((b, t, hkv, d))?;
            let v = qkv
                .narrow(2, (hq + hkv) * d, hkv * d)?
                .reshape((b, t, hkv, d))?;
            let q = rope.forward(&q)?;
            let (k, v) = (rope.forward(&k)?, v.contiguous()?);
            let (k, v) = if last_only {
                cache.append(li, &k, &v, past)?
            } else {
                (k, v)
            };
            let a = attn.forward(&q, &k, &v)?;
            x = (x + wo.forward(&a.reshape((b, t, hq * d))?)?)?;
            let h = blk.mlp_norm.forward(&x)?;
            let m = SwiGlu::forward(&wgu.forward(&h)?)?;
            x = (x + wdown.forward(&m)?)?;
        }
        if let Some(s) = states {
            s.push(x.clone());
        }
        self.finish(x, stop, t, last_only)
    }

    /// The RoPE position of every new row of a cached pass (advancing the cache's). Positions
    /// count real tokens only, so a left-padded row sees the same positions as the unpadded
    /// sequence. Positions, not columns, are bounded: rows of a continuous batch share columns
    /// with padding between their tokens (a pad's position is clamped into the table; its key
    /// is masked).
    fn positions(
        &self,
        mask: &[u8],
        (b, t): (usize, usize),
        cache: &mut KvCache,
    ) -> Result<Vec<u32>> {
        let max_pos = self.rope.max_positions;
        let mut positions = Vec::with_capacity(b * t);
        let mut next = cache.next_pos.clone();
        for (bi, p) in next.iter_mut().enumerate() {
            for i in 0..t {
                if mask[bi * t + i] != 0 {
                    positions.push(*p);
                    *p += 1;
                } else {
                    positions.push((*p).min(max_pos.saturating_sub(1) as u32));
                }
            }
        }
        if let Some(&last) = next.iter().find(|&&p| p as usize > max_pos) {
            return Err(Error::Shape {
                what: "sequence length".into(),
                expected: format!("at most {max_pos} positions in all"),
                got: vec![last as usize],
            });
        }
        cache.next_pos = next;
        Ok(positions)
    }

    /// The residual stream after the last layer run → the pass's result for `stop`.
    fn finish(&self, x: Tensor, stop: Stop, t: usize, last_only: bool) -> Result<Tensor> {
        if let Stop::AtLayer(_) = stop {
            return Ok(x);
        }
        let x = if last_only { x.narrow(1, t - 1, 1)? } else { x };
        let logits = self.head(&self.norm.forward(&x)?)?;
        if last_only {
            Ok(logits.squeeze(1)?)
        } else {
            Ok(logits)
        }
    }

    /// The LM head on normed hidden states `(…, hidden)` → `(…, vocab)`.
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        self.io.head(x)
    }

    /// Hugging Face-named tensors (unfused), e.g. to save the model as a HF folder.
    pub fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let (q, kv) = (
            self.cfg.num_heads * self.cfg.head_dim,
            self.cfg.num_kv_heads * self.cfg.head_dim,
        );
        let f = self.cfg.intermediate_size;
        let EmbedHead::F32 { embed, lm_head } = &self.io else {
            return Err(self
                .io
                .needs_f32("saving the model as a Hugging Face folder"));
        };
        let mut v = vec![
            ("model.embed_tokens.weight".to_string(), embed.clone()),
            ("model.norm.weight".to_string(), self.norm.weight().clone()),
        ];
        if let Some(l) = lm_head {
            v.push(("lm_head.weight".into(), l.weight().clone()));
        }
        for (i, blk) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let Mats::F32 {
                qkv,
                o,
                gate_up,
                down,
            } = &blk.mats
            else {
                return Err(self
                    .io
                    .needs_f32("saving the model as a Hugging Face folder"));
            };
            let w = qkv.weight();
            v.push((
                format!("{p}.input_layernorm.weight"),
                blk.attn_norm.weight().clone(),
            ));
            v.push((
                format!("{p}.post_attention_layernorm.weight"),
                blk.mlp_norm.weight().clone(),
            ));
            v.push((format!("{p}.self_attn.q_proj.weight"), w.narrow(0, 0, q)?));
            v.push((format!("{p}.self_attn.k_proj.weight"), w.narrow(0, q, kv)?));
            v.push((
                format!("{p}.self_attn.v_proj.weight"),
                w.narrow(0, q + kv, kv)?,
            ));
            if let Some(bias) = qkv.bias() {
                v.push((format!("{p}.self_attn.q_proj.bias"), bias.narrow(0, 0, q)?));
                v.push((format!("{p}.self_attn.k_proj.bias"), bias.narrow(0, q, kv)?));
                v.push((
                    format!("{p}.self_attn.v_proj.bias"),
                    bias.narrow(0, q + kv, kv)?,
                ));
            }
            v.push((format!("{p}.self_attn.o_proj.weight"), o.weight().clone()));
            let gu = gate_up.weight();
            v.push((format!("{p}.mlp.gate_proj.weight"), gu.narrow(0, 0, f)?));
            v.push((format!("{p}.mlp.up_proj.weight"), gu.narrow(0, f, f)?));
            v.push((format!("{p}.mlp.down_proj.weight"), down.weight().clone()));
        }
        Ok(v)
    }

    /// Log-softmax over the vocabulary of `logits` (`…, vocab`).
    pub fn log_probs(logits: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::log_softmax(logits, D::Minus1)?)
    }
}
