//! The model's tokenizer: a `tokenizers::Tokenizer` built from GGUF metadata or loaded from
//! `tokenizer.json`, its special tokens, and its chat template (GGUF `tokenizer.chat_template`,
//! `tokenizer_config.json` or `chat_template.jinja`).

pub mod gguf;

use crate::error::{Error, Result};
use crate::template::ChatTemplate;
use stainedglass_models::llm::GgufFile;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Byte spans `(start, end)` of tokens in the encoded text.
pub type Offsets = Vec<(usize, usize)>;

/// End-of-turn markers of common chat formats; those in the vocabulary stop generation.
const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"];

/// A tokenizer with its special tokens and chat template.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    json: String,
    template: Option<ChatTemplate>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    specials: HashSet<u32>,
    source: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .finish_non_exhaustive()
    }
}

fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// From a `.gguf` file, or from a folder holding `tokenizer.json` (and optionally
    /// `tokenizer_config.json` / `chat_template.jinja`).
    pub fn from_model_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::from_folder(path)
        } else {
            Self::from_gguf(&GgufFile::open(path)?)
        }
    }

    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let json = gguf::tokenizer_json(file)?;
        let id = |k: &str| file.content.metadata.get(k).and_then(|v| v.to_u32().ok());
        let template = file.string("tokenizer.chat_template").map(str::to_string);
        Self::build(
            json,
            template,
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
            id("tokenizer.ggml.padding_token_id"),
            &file.path,
        )
    }

    pub fn from_folder(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let json = std::fs::read_to_string(&tj).map_err(|e| Error::Io {
            path: tj.clone(),
            source: e,
        })?;
        let config = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok();
        let template = std::fs::read_to_string(dir.join("chat_template.jinja")).ok();
        Self::from_texts(dir, json, config.as_deref(), template)
    }

    /// The tokenizer of a folder from its files' contents, already read (and, for an
    /// artefact, verified): `tokenizer.json`, `tokenizer_config.json` if there is one and
    /// `chat_template.jinja` if there is one (else the config's `chat_template`). `dir` names
    /// them in errors.
    pub fn from_texts(
        dir: &Path,
        json: String,
        config: Option<&str>,
        template: Option<String>,
    ) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match config {
            Some(s) => serde_json::from_str(s)
                .map_err(|e| Error::tokenizer(&cfg_path, format!("not valid JSON: {e}")))?,
            None => serde_json::Value::Null,
        };
        let template = template.or_else(|| {
            cfg.get("chat_template")
                .and_then(|t| t.as_str())
                .map(str::to_string)
        });
        let inner = tokenizers::Tokenizer::from_str(&json)
            .map_err(|e| Error::tokenizer(&tj, format!("not a valid tokenizer.json: {e}")))?;
        let probe = &inner;
        let lookup = |key: &str| {
            cfg.get(key)
                .and_then(token_text)
                .and_then(|t| probe.token_to_id(&t))
        };
        let (bos, eos, pad) = (
            lookup("bos_token"),
            lookup("eos_token"),
            lookup("pad_token"),
        );
        Self::assemble(inner, json, template, bos, eos, pad, &tj)
    }

    fn build(
        json: String,
        template: Option<String>,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        pad_id: Option<u32>,
        source: &Path,
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_str(&json)
            .map_err(|e| Error::tokenizer(source, format!("cannot build tokenizer: {e}")))?;
        Self::assemble(inner, json, template, bos_id, eos_id, pad_id, source)
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        json: String,
        template: Option<String>,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        pad_id: Option<u32>,
        source: &Path,
    ) -> Result<Self> {
        let specials: HashSet<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let name = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i)).unwrap_or_default();
        let template = template
            .map(|t| ChatTemplate::new(&t, &name(bos_id), &name(eos_id)))
            .transpose()?;
        Ok(Self {
            inner,
            json,
            template,
            bos_id,
            eos_id,
            pad_id,
            specials,
            source: source.to_path_buf(),
        })
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// `tokenizer.json` text that reloads this tokenizer.
    pub fn to_json(&self) -> &str {
        &self.json
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The padding id: the declared one, else the end-of-sequence id.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id.or(self.eos_id)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.specials.contains(&id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Ids that end an assistant turn: eos plus known end-of-turn markers in the vocabulary.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.eos_id.into_iter().collect();
        for t in END_OF_TURN {
            if let Some(id) = self.inner.token_to_id(t) {
                if self.is_special(id) && !v.contains(&id) {
                    v.push(id);
                }
            }
        }
        v
    }

    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        self.template.as_ref().ok_or_else(|| {
            Error::Template(format!(
                "{} has no chat template; use a raw prompt or add chat_template.jinja",
                self.source.display()
            ))
        })
    }

    /// Ids of `text`, special-token strings in it included, no BOS/EOS added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text)?.0)
    }

    /// Ids and byte offsets `(start, end)` into `text` of each token.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::tokenizer(&self.source, format!("encode failed: {e}")))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::tokenizer(&self.source, format!("decode failed: {e}")))
    }
}
