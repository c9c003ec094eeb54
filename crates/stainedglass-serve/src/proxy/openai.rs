//! The OpenAI chat-completions request and response shapes the proxy speaks. Parsing turns a
//! request into a [`ChatRequest`] the proxy can act on, refusing what it cannot honour (tools,
//! several choices, log-probabilities) instead of silently ignoring it.

use crate::error::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};
use stainedglass_text::{Message, Role};

#[derive(Debug, Deserialize)]
struct RawRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<RawMessage>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    role: String,
    content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// A parsed chat-completion request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Fields the proxy cannot honour; a request that sets them is refused.
const UNSUPPORTED: &[&str] = &[
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logit_bias",
];

impl ChatRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let raw: RawRequest = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid chat completion request: {e}")))?;
        for key in UNSUPPORTED {
            if raw.other.get(*key).is_some_and(|v| !v.is_null()) {
                return Err(ApiError::BadRequest(format!(
                    "`{key}` is not supported by the Stained Glass proxy"
                )));
            }
        }
        if raw.other.get("logprobs").and_then(Value::as_bool) == Some(true) {
            return Err(ApiError::BadRequest("`logprobs` is not supported".into()));
        }
        if raw.n.is_some_and(|n| n != 1) {
            return Err(ApiError::BadRequest("only n = 1 is supported".into()));
        }
        if raw.messages.is_empty() {
            return Err(ApiError::BadRequest("`messages` is empty".into()));
        }
        let mut messages = Vec::with_capacity(raw.messages.len());
        for (i, m) in raw.messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                "developer" => Role::System,
                r => Role::parse(r)
                    .map_err(|e| ApiError::BadRequest(format!("messages[{i}].role: {e}")))?,
            };
            let content = match m.content {
                Content::Text(t) => t,
                Content::Parts(parts) => {
                    let mut s = String::new();
                    for p in parts {
                        if p.kind != "text" {
                            return Err(ApiError::BadRequest(format!(
                                "messages[{i}]: content parts of type `{}` are not supported; \
                                 send text",
                                p.kind
                            )));
                        }
                        s.push_str(p.text.as_deref().unwrap_or_default());
                    }
                    s
                }
            };
            messages.push(Message::new(role, content));
        }
        let stop = match raw.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > 4 {
            return Err(ApiError::BadRequest("at most 4 stop sequences".into()));
        }
        let temperature = raw.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::BadRequest("temperature must be in [0, 2]".into()));
        }
        if raw.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return Err(ApiError::BadRequest("top_p must be in (0, 1]".into()));
        }
        Ok(Self {
            model: raw.model,
            messages,
            temperature,
            top_p: raw.top_p,
            max_tokens: raw.max_completion_tokens.or(raw.max_tokens),
            stop,
            seed: raw.seed,
            stream: raw.stream.unwrap_or(false),
            include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

/// `usage` of a response.
pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

/// A non-streaming `chat.completion`.
pub fn completion(
    id: &str,
    model: &str,
    created: u64,
    text: &str,
    finish: &str,
    usage: Value,
) -> Value {
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": null, "finish_reason": finish}],
        "usage": usage,
    })
}

/// One `chat.completion.chunk`.
pub fn chunk(id: &str, model: &str, created: u64, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}

/// The final usage-only chunk (`stream_options.include_usage`).
pub fn usage_chunk(id: &str, model: &str, created: u64, usage: Value) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [], "usage": usage,
    })
}
