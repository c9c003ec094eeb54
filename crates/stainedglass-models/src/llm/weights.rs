//! Loading Llama-family weights under Hugging Face names: from a GGUF file (llama.cpp's Q/K row
//! permutation undone), dequantized to f32 or kept as stored ([`load_gguf_stored`]), or from a
//! Hugging Face folder (`config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`). Every expected tensor is checked for presence, shape and
//! finite values before a model is built.

use super::backend::quant::{GgufPiece, QMatrix};
use super::config::LlamaConfig;
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Tensors by Hugging Face name, all f32.
pub type TensorMap = HashMap<String, Tensor>;

/// A GGUF file opened for reading: its metadata, tensor index and the path.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: gguf_file::Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = gguf_file::Content::read(&mut f).map_err(|e| {
            Error::model(
                path,
                format!("not a readable GGUF file ({e}); re-run ./scripts/setup-assets.sh"),
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    /// A string metadata value.
    pub fn string(&self, key: &str) -> Option<&str> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str())
    }
}

fn gguf_to_hf(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's rotary permutation of Q/K rows: view `(heads, d/2, 2, in)`, swap axes 1
/// and 2, reshape back.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let d = rows / heads;
    Ok(w.reshape((heads, d / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Reads and dequantizes every tensor of a GGUF Llama-family model.
pub fn load_gguf(file: &GgufFile, cfg: &LlamaConfig, device: &Device) -> Result<TensorMap> {
    let path = &file.path;
    let mut reader = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut names: Vec<&String> = file.content.tensor_infos.keys().collect();
    names.sort();
    let mut out = TensorMap::new();
    for name in names {
        let Some(hf) = gguf_to_hf(name) else {
            continue; // e.g. rope_freqs, read into the configuration (LlamaConfig::read_gguf)
        };
        let q = file
            .content
            .tensor(&mut reader, name, device)
            .map_err(|e| Error::model(path, format!("tensor {name}: {e} (file truncated?)")))?;
        let mut t = q
            .dequantize(device)
            .map_err(|e| Error::model(path, format!("tensor {name}: {e}")))?
            .to_dtype(DType::F32)?;
        if cfg.architecture == "llama" {
            if hf.ends_with("q_proj.weight") {
                t = unpermute(&t, cfg.num_heads)?;
            } else if hf.ends_with("k_proj.weight") {
                t = unpermute(&t, cfg.num_kv_heads)?;
            }
        }
        out.insert(hf, t);
    }
    check_tensors(&out, cfg, path)?;
    Ok(out)
}

/// Removes tensor `name` from `map`, or says it is missing.
pub(crate) fn take(map: &mut TensorMap, name: &str) -> Result<Tensor> {
    map.remove(name)
        .ok_or_else(|| Error::model(Path::new(name), "missing tensor"))
}

/// Matrices by Hugging Face name, as the file stores them.
pub type StoredMap = HashMap<String, QMatrix>;

/// The rotary permutation `unpermute` undoes, as a row order: new row `i` is old row `perm[i]`.
fn unpermute_order(rows: usize, heads: usize) -> Vec<usize> {
    let d = rows / heads.max(1);
    let mut perm = Vec::with_capacity(rows);
    for h in 0..heads {
        for a in 0..2 {
            for i in 0..d / 2 {
                perm.push(h * d + i * 2 + a);
            }
        }
    }
    perm
}

/// Reads a GGUF Llama-family model keeping its matrices as stored (quantized), fused as the
/// model runs them: per layer `self_attn.qkv_proj.weight` (`[q | k | v]`),
/// `self_attn.o_proj.weight`, `mlp.gate_up_proj.weight` (`[gate | up]`), `mlp.down_proj.weight`;
/// and the embedding table (and LM head). Vectors (norms, biases) are dequantized to f32.
/// Names, shapes and finite values are checked as in [`load_gguf`]. The matrices are parsed
/// from a read-only memory map of the file, each buffer allocated once at its final size, so a
/// load's peak memory is the model's own.
pub fn load_gguf_stored(
    file: &GgufFile,
    cfg: &LlamaConfig,
    device: &Device,
) -> Result<(TensorMap, StoredMap)> {
    let path = &file.path;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and dropped before this function returns, and every slice
    // taken from it is bounds-checked against its length. As with any memory-mapped loader
    // (candle's and safetensors' included), another process truncating or rewriting the file
    // during these milliseconds is outside what this can guard against (the OS raises SIGBUS
    // on a truncated mapping); model files are not expected to change while being loaded.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    let mut reader = f;
    let by_hf: HashMap<String, &String> = file
        .content
        .tensor_infos
        .keys()
        .filter_map(|n| gguf_to_hf(n).map(|h| (h, n)))
        .collect();
    let vectors = load_vectors(file, cfg, &by_hf, &mut reader, device)?;
    let shapes: HashMap<String, Vec<usize>> = expected_shapes(cfg).into_iter().collect();
    let piece = |name: &str| -> Result<GgufPiece<'_>> {
        let missing = || {
            Error::model(
                path,
                format!("missing tensor `{name}` for a {} model", cfg.architecture),
            )
        };
        let g = by_hf.get(name).ok_or_else(missing)?;
        let info = &file.content.tensor_infos[*g];
        let want = shapes.get(name).ok_or_else(missing)?;
        if info.shape.dims() != want.as_slice() {
            return Err(Error::model(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, the config implies {want:?}",
                    info.shape.dims()
                ),
            ));
        }
        let (rows, cols) = (want[0], want[1]);
        let dtype = info.ggml_dtype;
        let bytes = rows * cols / dtype.block_size().max(1) * dtype.type_size();
        let start =
            usize::try_from(file.content.tensor_data_offset + info.offset).unwrap_or(usize::MAX);
        let data = map.get(start..start.saturating_add(bytes)).ok_or_else(|| {
            Error::model(
                path,
                format!(
                    "tensor {g}: {bytes} bytes at {start}, past the end of the file (truncated?)"
                ),
            )
        })?;
        let heads = if name.ends_with("q_proj.weight") {
            Some(cfg.num_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(cfg.num_kv_heads)
        } else {
            None
        };
        let order = match (heads, cfg.architecture.as_str()) {
            (Some(h), "llama") => Some(unpermute_order(rows, h)),
            _ => None,
        };
        Ok(GgufPiece {
            dtype,
            data,
            rows,
            order,
        })
    };
    let build = |names: &[String]| -> Result<QMatrix> {
        let pieces = names.iter().map(|n| piece(n)).collect::<Result<Vec<_>>>()?;
        let cols = shapes.get(&names[0]).map_or(0, |s| s[1]);
        QMatrix::from_gguf_pieces(&pieces, cols)
            .map_err(|e| Error::model(path, format!("tensor `{}`: {e}", names[0])))
    };
    Ok((vectors, fused_stored(cfg, build)?))
}

/// The matrices of a stored model, fused as the model runs them (see [`load_gguf_stored`]):
/// `build` makes one matrix from the Hugging Face names of its parts, stacked by rows.
pub(crate) fn fused_stored(
    cfg: &LlamaConfig,
    build: impl Fn(&[String]) -> Result<QMatrix>,
) -> Result<StoredMap> {
    let mut mats = StoredMap::new();
    for i in 0..cfg.num_layers {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        let fused: [(&str, &[&str]); 4] = [
            (
                "self_attn.qkv_proj.weight",
                &[
                    "self_attn.q_proj.weight",
                    "self_attn.k_proj.weight",
                    "self_attn.v_proj.weight",
                ],
            ),
            ("self_attn.o_proj.weight", &["self_attn.o_proj.weight"]),
            (
                "mlp.gate_up_proj.weight",
                &["mlp.gate_proj.weight", "mlp.up_proj.weight"],
            ),
            ("mlp.down_proj.weight", &["mlp.down_proj.weight"]),
        ];
        for (name, parts) in fused {
            let names: Vec<String> = parts.iter().map(|n| p(n)).collect();
            mats.insert(p(name), build(&names)?);
        }
    }
    let mut heads = vec!["model.embed_tokens.weight"];
    if !cfg.tie_word_embeddings {
        heads.push("lm_head.weight");
    }
    for n in heads {
        mats.insert(n.to_string(), build(&[n.to_string()])?);
    }
    Ok(mats)
}

/// The one-dimensional tensors (norms, biases) of a GGUF model, dequantized to f32 and checked.
fn load_vectors(
    file: &GgufFile,
    cfg: &LlamaConfig,
    by_hf: &HashMap<String, &String>,
    reader: &mut std::fs::File,
    device: &Device,
) -> Result<TensorMap> {
    let path = &file.path;
    let mut vectors = TensorMap::new();
    for (name, _) in expected_shapes(cfg)
        .into_iter()
        .filter(|(_, s)| s.len() == 1)
    {
        let Some(g) = by_hf.get(&name) else { continue };
        let t = file
            .content
            .tensor(reader, g, device)
            .and_then(|q| q.dequantize(device))
            .map_err(|e| Error::model(path, format!("tensor {g}: {e} (file truncated?)")))?
            .to_dtype(DType::F32)?;
        vectors.insert(name, t);
    }
    check_vectors(&vectors, cfg, path)?;
    Ok(vectors)
}

/// The one-dimensional tensors of [`expected_shapes`] (norms, biases) are present, shaped and
/// finite.
pub(crate) fn check_vectors(map: &TensorMap, cfg: &LlamaConfig, path: &Path) -> Result<()> {
    for (name, shape) in expected_shapes(cfg)
        .into_iter()
        .filter(|(_, s)| s.len() == 1)
    {
        check_one(map, &name, &shape, cfg, path)?;
    }
    Ok(())
}

/// Reads a Hugging Face folder: `config.json` and single-file or sharded safetensors.
pub fn load_hf_folder(dir: &Path, device: &Device) -> Result<(LlamaConfig, TensorMap)> {
    let (cfg, files) = hf_folder_files(dir)?;
    let mut out = TensorMap::new();
    for f in files {
        let ts = candle_core::safetensors::load(&f, device)
            .map_err(|e| Error::model(&f, format!("cannot read safetensors: {e}")))?;
        for (name, t) in ts {
            let t = t.to_dtype(DType::F32)?;
            out.insert(name, t);
        }
    }
    check_tensors(&out, &cfg, dir)?;
    Ok((cfg, out))
}

/// A Hugging Face folder's configuration and safetensors files (one, or the shards its index
/// names).
pub(crate) fn hf_folder_files(dir: &Path) -> Result<(LlamaConfig, Vec<PathBuf>)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg = LlamaConfig::from_hf_json(&text, &cfg_path)?;
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::model(&index, "lacks a `weight_map` object"))?;
        let mut shards: Vec<String> = map
            .values()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        return Err(Error::model(
            dir,
            "no model.safetensors or model.safetensors.index.json in this folder",
        ));
    };
    Ok((cfg, files))
}

/// The tensors a model of `cfg` needs, with their shapes.
pub fn expected_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, f, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.num_heads * d, cfg.num_kv_heads * d);
    let mut v = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![cfg.vocab_size, h],
        ),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    if !cfg.tie_word_embeddings {
        v.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let mut add = |n: &str, s: Vec<usize>| v.push((format!("{p}.{n}"), s));
        add("input_layernorm.weight", vec![h]);
        add("post_attention_layernorm.weight", vec![h]);
        add("self_attn.q_proj.weight", vec![q, h]);
        add("self_attn.k_proj.weight", vec![kv, h]);
        add("self_attn.v_proj.weight", vec![kv, h]);
        add("self_attn.o_proj.weight", vec![h, q]);
        add("mlp.gate_proj.weight", vec![f, h]);
        add("mlp.up_proj.weight", vec![f, h]);
        add("mlp.down_proj.weight", vec![h, f]);
        if cfg.attention_bias {
            add("self_attn.q_proj.bias", vec![q]);
            add("self_attn.k_proj.bias", vec![kv]);
            add("self_attn.v_proj.bias", vec![kv]);
        }
    }
    v
}

/// Every expected tensor is present, has its shape, and holds only finite values.
pub fn check_tensors(map: &TensorMap, cfg: &LlamaConfig, path: &Path) -> Result<()> {
    for (name, shape) in expected_shapes(cfg) {
        check_one(map, &name, &shape, cfg, path)?;
    }
    Ok(())
}

fn check_one(
    map: &TensorMap,
    name: &str,
    shape: &[usize],
    cfg: &LlamaConfig,
    path: &Path,
) -> Result<()> {
    let t = map.get(name).ok_or_else(|| {
        Error::model(
            path,
            format!("missing tensor `{name}` for a {} model", cfg.architecture),
        )
    })?;
    if t.dims() != shape {
        return Err(Error::model(
            path,
            format!(
                "tensor `{name}` has shape {:?}, the config implies {shape:?}",
                t.dims()
            ),
        ));
    }
    let bad = t
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .any(|x| !x.is_finite());
    if bad {
        return Err(Error::model(
            path,
            format!("tensor `{name}` holds NaN or Inf"),
        ));
    }
    Ok(())
}
