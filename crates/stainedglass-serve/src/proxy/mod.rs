//! The client's OpenAI-compatible proxy: `POST /v1/chat/completions` (plain or streamed),
//! `GET /v1/models`, `/health`. It tokenizes, applies the chat template and the SGT on this
//! machine — with fresh noise from the OS random source for every request — and forwards only
//! the transformed embeddings upstream. Prompt text and token ids never leave the process.

pub mod detok;
pub mod openai;
pub mod upstream;

use crate::error::{ApiError, Result};
use crate::protocol::{Finish, ModelInfo};
use crate::server::read_body;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use detok::Collector;
use openai::ChatRequest;
use serde_json::{json, Value};
use stainedglass_core::NoiseRng;
use stainedglass_text::{PromptInput, StainedGlassTransformForText};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
pub use upstream::{Piece, Sampling, Upstream, UpstreamKind};

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The id `/v1/models` lists and responses carry.
    pub model_id: String,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Longest templated prompt, in tokens.
    pub max_prompt_tokens: usize,
    pub max_body_bytes: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            model_id: "stainedglass".into(),
            default_max_tokens: 256,
            max_prompt_tokens: 2048,
            max_body_bytes: 4 << 20,
        }
    }
}

pub struct ProxyState {
    sgt: Arc<StainedGlassTransformForText>,
    upstream: Upstream,
    config: ProxyConfig,
    client: reqwest::Client,
}

impl ProxyState {
    pub fn new(
        sgt: Arc<StainedGlassTransformForText>,
        upstream: Upstream,
        config: ProxyConfig,
    ) -> Self {
        Self {
            sgt,
            upstream,
            config,
            client: reqwest::Client::new(),
        }
    }

    /// What the artefact expects of the server.
    pub fn expected_model(&self) -> ModelInfo {
        let b = &self.sgt.config().base_model;
        ModelInfo {
            name: b.name.clone(),
            hidden_size: b.hidden_size,
            vocab_size: b.vocab_size,
            embedding_sha256: b.embedding_sha256.clone(),
            max_sequence_length: 0,
            max_new_tokens: 0,
        }
    }

    /// Fails unless the upstream serves the artefact's base model (our server only).
    pub async fn check_upstream(&self) -> Result<()> {
        self.upstream
            .check(&self.client, &self.expected_model())
            .await
    }
}

pub fn router(state: Arc<ProxyState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .fallback(|| async {
            ApiError::NotFound("no such route; see /v1/chat/completions and /v1/models".into())
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn models(State(st): State<Arc<ProxyState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": st.config.model_id, "object": "model", "created": 0, "owned_by": "stainedglass"
    }]}))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn completion_id() -> String {
    format!("chatcmpl-{:016x}", rand::random::<u64>())
}

async fn chat(
    State(st): State<Arc<ProxyState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Response, ApiError> {
    let bytes = read_body(body, st.config.max_body_bytes)?;
    let req = ChatRequest::parse(&bytes)?;
    let started = Instant::now();
    let sgt = st.sgt.clone();
    let messages = req.messages.clone();
    let max_prompt = st.config.max_prompt_tokens;
    let transformed = tokio::task::spawn_blocking(move || {
        sgt.apply(&PromptInput::Chat(messages), &mut NoiseRng::from_entropy())
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| match e {
        stainedglass_text::Error::Prompt(_) | stainedglass_text::Error::Template(_) => {
            ApiError::BadRequest(e.to_string())
        }
        other => ApiError::Internal(other.to_string()),
    })?;
    let prompt_tokens = transformed.input_ids.len();
    if prompt_tokens > max_prompt {
        return Err(ApiError::BadRequest(format!(
            "the prompt is {prompt_tokens} tokens after the chat template; the limit is {max_prompt}"
        )));
    }
    let sgt_ms = started.elapsed().as_secs_f64() * 1e3;
    let sampling = Sampling {
        max_tokens: req.max_tokens.unwrap_or(st.config.default_max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
    };
    let mut rx = st
        .upstream
        .start(&st.client, &transformed.embeddings, &sampling)
        .await?;
    tracing::info!(
        prompt_tokens,
        sgt_ms,
        stream = req.stream,
        "chat completion forwarded"
    );
    let id = completion_id();
    let created = now();
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| st.config.model_id.clone());
    if !req.stream {
        let mut c = Collector::new(st.sgt.tokenizer(), req.stop.clone());
        let mut text = String::new();
        let (mut finish, mut usage) = (Finish::Length, None);
        while let Some(piece) = rx.recv().await {
            match piece? {
                Piece::Token(t) => text.push_str(&c.push_token(t)),
                Piece::Text(t) => text.push_str(&c.push_text(&t)),
                Piece::Done {
                    finish: f,
                    usage: u,
                } => {
                    finish = f;
                    usage = u;
                    break;
                }
            }
            if c.stopped() {
                finish = Finish::Stop;
                break;
            }
        }
        text.push_str(&c.finish());
        let completion = usage
            .map(|u| u.completion_tokens)
            .unwrap_or(c.completion_tokens());
        let body = openai::completion(
            &id,
            &model,
            created,
            &text,
            finish.as_str(),
            openai::usage(prompt_tokens, completion),
        );
        return Ok(Json(body).into_response());
    }
    let (tx, out) = mpsc::channel::<String>(64);
    let sgt = st.sgt.clone();
    let include_usage = req.include_usage;
    let stops = req.stop.clone();
    tokio::spawn(async move {
        let send = |v: Value| {
            let tx = tx.clone();
            async move { tx.send(v.to_string()).await.is_ok() }
        };
        let first = openai::chunk(
            &id,
            &model,
            created,
            json!({"role": "assistant", "content": ""}),
            None,
        );
        if !send(first).await {
            return;
        }
        let mut c = Collector::new(sgt.tokenizer(), stops);
        let (mut finish, mut usage) = (Finish::Length, None);
        while let Some(piece) = rx.recv().await {
            let delta = match piece {
                Ok(Piece::Token(t)) => c.push_token(t),
                Ok(Piece::Text(t)) => c.push_text(&t),
                Ok(Piece::Done {
                    finish: f,
                    usage: u,
                }) => {
                    finish = f;
                    usage = u;
                    break;
                }
                Err(e) => {
                    let _ = send(e.body()).await;
                    return;
                }
            };
            if !delta.is_empty()
                && !send(openai::chunk(
                    &id,
                    &model,
                    created,
                    json!({"content": delta}),
                    None,
                ))
                .await
            {
                return;
            }
            if c.stopped() {
                finish = Finish::Stop;
                break;
            }
        }
        let rest = c.finish();
        if !rest.is_empty() {
            let _ = send(openai::chunk(
                &id,
                &model,
                created,
                json!({"content": rest}),
                None,
            ))
            .await;
        }
        let _ = send(openai::chunk(
            &id,
            &model,
            created,
            json!({}),
            Some(finish.as_str()),
        ))
        .await;
        if include_usage {
            let completion = usage
                .map(|u| u.completion_tokens)
                .unwrap_or(c.completion_tokens());
            let _ = send(openai::usage_chunk(
                &id,
                &model,
                created,
                openai::usage(prompt_tokens, completion),
            ))
            .await;
        }
        let _ = tx.send("[DONE]".to_string()).await;
    });
    let stream = futures_util::stream::unfold(out, |mut out| async move {
        let data = out.recv().await?;
        Some((Ok::<_, Infallible>(Event::default().data(data)), out))
    });
    Ok(Sse::new(stream).into_response())
}
