//! The wire format between the client proxy and the inference server. Requests are parsed,
//! not validated after the fact: unknown fields are refused, and [`GenerateRequest::params`]
//! turns a request into checked sampling parameters.

use serde::{Deserialize, Serialize};

/// Header carrying the client's X25519 public key (base64) to request sealed output.
pub const CLIENT_KEY_HEADER: &str = "x-sgt-client-key";

/// `POST /v1/generate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// Base64 of a safetensors file holding one tensor `(seq, hidden)` or `(1, seq, hidden)`,
    /// f32, f16 or bf16.
    pub embeddings: String,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default)]
    pub temperature: f64,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default = "one")]
    pub repetition_penalty: f32,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
}

fn default_max_tokens() -> usize {
    128
}

fn one() -> f32 {
    1.0
}

/// Why generation ended, as OpenAI spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Non-streaming reply: either `tokens` (plain) or `sealed` (one ciphertext per token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Vec<String>>,
    /// The server's ephemeral X25519 public key (base64) when the output is sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_key: Option<String>,
    /// Sealed end record (finish reason and token count) so truncation is detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_end: Option<String>,
    pub finish_reason: Finish,
    pub usage: Usage,
}

/// One server-sent event of a streaming reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// First event of a sealed stream.
    Key {
        server_key: String,
    },
    Token {
        token: u32,
    },
    Sealed {
        sealed: String,
    },
    Done {
        finish_reason: Finish,
        usage: Usage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealed_end: Option<String>,
    },
    Error {
        message: String,
        /// The HTTP status the error stands for (422: the request's input; absent: the
        /// server's fault).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
    },
}

/// `GET /v1/model`: what a proxy checks before sending anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub hidden_size: usize,
    pub vocab_size: usize,
    /// sha256 of the f32 input-embedding table (see `stainedglass_text::artefact`).
    pub embedding_sha256: String,
    pub max_sequence_length: usize,
    pub max_new_tokens: usize,
    /// The server's X25519 identity key (base64): sealed output can only be opened for it.
    #[serde(default)]
    pub server_key: String,
}
