//! Loading an artefact: the files mapped, their hashes checked against `config.json`, the
//! cloak's tensors, the embedding table (left in the map) and the tokenizer (parsed from the
//! verified bytes), the three read side by side.

use super::config::*;
use super::table::EmbeddingTable;
use super::{artefact_err, files, wrapper_options, StainedGlassTransformForText};
use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;
use crate::wrapper::TokenizerWrapper;
use candle_core::{DType, Device, Tensor};
use stainedglass_models::text_sgt::{TransformerCloak, TransformerCloakConfig};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

impl StainedGlassTransformForText {
    /// Loads and validates an artefact written by [`Self::save_pretrained`].
    pub fn from_pretrained(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::Io {
            path: cfg_path.clone(),
            source: e,
        })?;
        let probe: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| artefact_err(&cfg_path, format!("not valid JSON: {e}")))?;
        match probe.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            other => {
                return Err(artefact_err(
                    &cfg_path,
                    format!(
                        "format is {other:?}, expected \"{FORMAT}\" (is this a text SGT \
                         artefact written by `sgt text export`?)"
                    ),
                ))
            }
        }
        match probe.get("format_version").and_then(|f| f.as_u64()) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            other => {
                return Err(artefact_err(
                    &cfg_path,
                    format!(
                        "format_version {other:?} is not supported; this build reads version \
                         {FORMAT_VERSION} (upgrade sgt or re-export the artefact)"
                    ),
                ))
            }
        }
        let config: ArtefactConfig = serde_json::from_value(probe)
            .map_err(|e| artefact_err(&cfg_path, format!("invalid config: {e}")))?;
        if config.noise_layer.kind != "transformer_cloak" {
            return Err(artefact_err(
                &cfg_path,
                format!(
                    "noise layer kind `{}` is not supported (expected transformer_cloak)",
                    config.noise_layer.kind
                ),
            ));
        }
        for required in [
            WEIGHTS_FILE,
            TOKENIZER_FILE,
            TOKENIZER_CONFIG_FILE,
            TEMPLATE_FILE,
        ] {
            if !config.files.contains_key(required) {
                return Err(artefact_err(
                    &cfg_path,
                    format!("`files` does not list {required}"),
                ));
            }
        }
        let blobs = Self::map_files(dir, &config, &cfg_path)?;
        // Three independent passes over the mapped files, side by side: the files' hashes, the
        // weights (the cloak and the table's own check) and the tokenizer. A hash mismatch is
        // reported first: whatever else failed was then reading a damaged file.
        let (hashes, weights, tokenizer) = std::thread::scope(|s| {
            let hashes = s.spawn(|| Self::verify_files(dir, &config, &blobs));
            let tokenizer = s.spawn(|| Self::load_tokenizer(dir, &config, &blobs));
            let weights = Self::load_weights(dir, &config, &blobs, device);
            (
                hashes.join().unwrap_or_else(|_| Err(panicked(dir))),
                weights,
                tokenizer.join().unwrap_or_else(|_| Err(panicked(dir))),
            )
        });
        hashes?;
        let (cloak, embeddings) = weights?;
        let tokenizer = tokenizer?;
        let policy = config.noise_mask;
        Ok(Self {
            config,
            cloak,
            embeddings,
            device: device.clone(),
            wrapper: TokenizerWrapper::new(tokenizer, wrapper_options(policy)),
        })
    }

    /// Every file `config.json` lists, memory-mapped (not yet verified).
    fn map_files(
        dir: &Path,
        config: &ArtefactConfig,
        cfg_path: &Path,
    ) -> Result<HashMap<String, Arc<memmap2::Mmap>>> {
        let mut blobs = HashMap::new();
        for name in config.files.keys() {
            if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                return Err(artefact_err(cfg_path, format!("bad file name `{name}`")));
            }
            blobs.insert(name.clone(), Arc::new(files::map(&dir.join(name))?));
        }
        Ok(blobs)
    }

    /// Each mapped file's sha256 against `config.json`.
    fn verify_files(
        dir: &Path,
        config: &ArtefactConfig,
        blobs: &HashMap<String, Arc<memmap2::Mmap>>,
    ) -> Result<()> {
        for (name, want) in &config.files {
            let got = files::sha256_hex(&blobs[name]);
            if &got != want {
                return Err(artefact_err(
                    &dir.join(name),
                    format!(
                        "sha256 is {got}, config.json says {want}: the file is corrupt, \
                         truncated or from another artefact; re-export or re-download it"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The tokenizer from the mapped (verified) files, not from a second read of the folder.
    fn load_tokenizer(
        dir: &Path,
        config: &ArtefactConfig,
        blobs: &HashMap<String, Arc<memmap2::Mmap>>,
    ) -> Result<Arc<TextTokenizer>> {
        let text = |name: &str| -> Result<String> {
            String::from_utf8(blobs[name].to_vec())
                .map_err(|_| artefact_err(&dir.join(name), "not UTF-8 text"))
        };
        let tok_cfg = text(TOKENIZER_CONFIG_FILE)?;
        let tokenizer = TextTokenizer::from_texts(
            dir,
            text(TOKENIZER_FILE)?,
            Some(&tok_cfg),
            Some(text(TEMPLATE_FILE)?),
        )?;
        if tokenizer.vocab_size() > config.base_model.vocab_size {
            return Err(artefact_err(
                &dir.join(TOKENIZER_FILE),
                "the tokenizer has more tokens than the embedding table has rows",
            ));
        }
        tokenizer.chat_template()?;
        Ok(Arc::new(tokenizer))
    }

    /// The cloak (its tensors copied: they are small) and the embedding table (left in the
    /// map, checked in one pass).
    fn load_weights(
        dir: &Path,
        config: &ArtefactConfig,
        blobs: &HashMap<String, Arc<memmap2::Mmap>>,
        device: &Device,
    ) -> Result<(TransformerCloak, EmbeddingTable)> {
        let wpath = dir.join(WEIGHTS_FILE);
        let weights = &blobs[WEIGHTS_FILE];
        let unreadable = |e: &dyn std::fmt::Display| {
            artefact_err(&wpath, format!("not a readable safetensors file: {e}"))
        };
        let st = safetensors::SafeTensors::deserialize(weights).map_err(|e| unreadable(&e))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if name != EMBEDDING_TENSOR {
                use candle_core::safetensors::Load;
                tensors.insert(name, view.load(device).map_err(|e| unreadable(&e))?);
            }
        }
        let cloak = Self::check_cloak(config, &tensors, &wpath, device)?;
        let view = st
            .tensor(EMBEDDING_TENSOR)
            .map_err(|_| artefact_err(&wpath, format!("missing tensor `{EMBEDDING_TENSOR}`")))?;
        let table = Self::check_embeddings(config, weights, &view, &wpath)?;
        Ok((cloak, table))
    }

    fn check_cloak(
        config: &ArtefactConfig,
        tensors: &HashMap<String, Tensor>,
        path: &Path,
        device: &Device,
    ) -> Result<TransformerCloak> {
        let cc: &TransformerCloakConfig = &config.noise_layer.config;
        let base = &config.base_model;
        if (cc.base.vocab_size, cc.base.hidden_size) != (base.vocab_size, base.hidden_size) {
            return Err(artefact_err(
                path,
                "the noise layer's base architecture disagrees with base_model",
            ));
        }
        let expected = TransformerCloak::expected_shapes(cc);
        let mut named = HashMap::new();
        for (name, shape) in &expected {
            let t = tensors
                .get(name)
                .ok_or_else(|| artefact_err(path, format!("missing tensor `{name}`")))?;
            if t.dims() != shape.as_slice() || t.dtype() != DType::F32 {
                return Err(artefact_err(
                    path,
                    format!(
                        "tensor `{name}` is {:?} {:?}, expected F32 {shape:?}",
                        t.dtype(),
                        t.dims()
                    ),
                ));
            }
            stainedglass_core::error::ensure_finite(t, name)
                .map_err(|e| artefact_err(path, e.to_string()))?;
            named.insert(name.clone(), t.clone());
        }
        for name in tensors.keys() {
            if name != EMBEDDING_TENSOR && !named.contains_key(name) {
                return Err(artefact_err(path, format!("unexpected tensor `{name}`")));
            }
        }
        TransformerCloak::from_named(cc.clone(), &named, device)
            .map_err(|e| artefact_err(path, e.to_string()))
    }

    /// The table as stored (dtype, shape, finite values, hash), kept in the file's map.
    fn check_embeddings(
        config: &ArtefactConfig,
        map: &Arc<memmap2::Mmap>,
        view: &safetensors::tensor::TensorView<'_>,
        path: &Path,
    ) -> Result<EmbeddingTable> {
        let base = &config.base_model;
        let (want_dtype, want_st) = match config.embedding_dtype {
            EmbeddingDtype::F32 => (DType::F32, safetensors::Dtype::F32),
            EmbeddingDtype::F16 => (DType::F16, safetensors::Dtype::F16),
        };
        if view.shape() != [base.vocab_size, base.hidden_size] || view.dtype() != want_st {
            return Err(artefact_err(
                path,
                format!(
                    "`{EMBEDDING_TENSOR}` is {:?} {:?}, expected {want_dtype:?} [{}, {}]",
                    view.dtype(),
                    view.shape(),
                    base.vocab_size,
                    base.hidden_size
                ),
            ));
        }
        // The view borrows from `map`: its offset there is where the table starts.
        let offset = (view.data().as_ptr() as usize).wrapping_sub(map.as_ptr() as usize);
        let table = EmbeddingTable::mapped(
            map.clone(),
            offset,
            config.embedding_dtype,
            base.vocab_size,
            base.hidden_size,
        )
        .map_err(|e| artefact_err(path, e.to_string()))?;
        let (bad, got) = table.check()?;
        if bad > 0 {
            return Err(artefact_err(
                path,
                format!("{EMBEDDING_TENSOR}: {bad} non-finite values (NaN or inf)"),
            ));
        }
        let want = match config.embedding_dtype {
            EmbeddingDtype::F32 => Some((&base.embedding_sha256, "base_model.embedding_sha256")),
            EmbeddingDtype::F16 => base
                .stored_embedding_sha256
                .as_ref()
                .map(|h| (h, "base_model.stored_embedding_sha256")),
        };
        if let Some((want, field)) = want {
            if &got != want {
                return Err(artefact_err(
                    path,
                    format!("the embedding table hashes to {got}, {field} is {want}"),
                ));
            }
        }
        Ok(table)
    }
}

fn panicked(dir: &Path) -> Error {
    artefact_err(dir, "a loading thread panicked (a bug: please report it)")
}
