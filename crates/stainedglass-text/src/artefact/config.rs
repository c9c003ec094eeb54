//! `config.json` of the client artefact (`docs/spec.md` §7): everything a client needs to apply the
//! transform with no hyper-parameters to know, and the hashes that tie it to its files and to
//! the base model.

use serde::{Deserialize, Serialize};
use stainedglass_models::text_sgt::TransformerCloakConfig;

/// The `format` string of a text client artefact.
pub const FORMAT: &str = "stainedglass-transform-for-text";
/// The artefact format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// File names inside an artefact directory.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const TEMPLATE_FILE: &str = "chat_template.jinja";
/// Name of the input-embedding table inside the weights file.
pub const EMBEDDING_TENSOR: &str = "embed_tokens.weight";

/// Storage precision of the input-embedding table (the SGT parameters are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingDtype {
    F32,
    F16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtefactConfig {
    pub format: String,
    pub format_version: u32,
    pub noise_layer: NoiseLayerSection,
    pub base_model: BaseModelSection,
    pub noise_mask: NoiseMaskPolicy,
    /// File name → sha256 (hex) of every other file in the directory.
    pub files: std::collections::BTreeMap<String, String>,
    pub embedding_dtype: EmbeddingDtype,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseLayerSection {
    /// Always `"transformer_cloak"` in this version.
    pub kind: String,
    pub config: TransformerCloakConfig,
}

/// Identity of the base model the transform was trained for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModelSection {
    /// Free-form name (the model file's name by default).
    pub name: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// sha256 (hex) of the base model's f32 input-embedding table, little-endian, row-major.
    /// A server computes the same hash of its own table to prove it serves the same model.
    pub embedding_sha256: String,
    /// With f16 storage: the same hash of the table as stored (rounded to f16, read back as
    /// f32), checked on load as `embedding_sha256` is for f32. Absent in older artefacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_embedding_sha256: Option<String>,
}

/// Which tokens the client transforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseMaskPolicy {
    /// Transform every token (template scaffolding and special tokens included), not only the
    /// message contents.
    pub transform_all_tokens: bool,
}
