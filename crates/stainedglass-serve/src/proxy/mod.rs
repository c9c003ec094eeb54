//! The client's OpenAI-compatible proxy: `POST /v1/chat/completions` (plain or streamed),
//! `GET /v1/models`, `/health`. It tokenizes, applies the chat template and the SGT on this
//! machine — with fresh noise from the OS random source for every request — and forwards only
//! the transformed embeddings upstream. Prompt text and token ids never leave the process; with
//! a [`PiiGuard`] the personal data in the prompt never even reaches the SGT (`pii.rs`).

pub mod access;
mod completion;
pub mod detok;
pub mod openai;
mod pii;
pub mod upstream;

use crate::error::{ApiError, Result};

/// What a request handler returns.
type ApiResult<T> = std::result::Result<T, ApiError>;
use crate::protocol::ModelInfo;
use crate::server::read_body;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use completion::Completion;
use openai::ChatRequest;
pub use pii::PiiGuard;
use pii::ReplyRestorer;
use serde_json::{json, Value};
use stainedglass_core::NoiseRng;
use stainedglass_pii::Mapping;
use stainedglass_text::{PromptInput, StainedGlassTransformForText};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
pub use upstream::{Call, Piece, Sampling, Upstream, UpstreamKind};

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The id `/v1/models` lists and responses carry.
    pub model_id: String,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Longest templated prompt, in tokens.
    pub max_prompt_tokens: usize,
    /// Most messages in one request.
    pub max_messages: usize,
    pub max_body_bytes: usize,
    /// Chat requests in flight at once; more get 429 with `Retry-After`.
    pub max_concurrent: usize,
    /// Longest wait for the upstream: to connect, and between two pieces of a reply (504).
    pub upstream_timeout: std::time::Duration,
    /// Who may call the proxy.
    pub access: access::AccessConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            model_id: "stainedglass".into(),
            default_max_tokens: 256,
            max_prompt_tokens: 2048,
            max_messages: 1024,
            max_body_bytes: 4 << 20,
            max_concurrent: 64,
            upstream_timeout: std::time::Duration::from_secs(120),
            access: access::AccessConfig::default(),
        }
    }
}

pub struct ProxyState {
    sgt: Arc<StainedGlassTransformForText>,
    upstream: Upstream,
    config: ProxyConfig,
    client: reqwest::Client,
    /// What the upstream said of itself at start-up (`sgt serve` only): its limits.
    upstream_info: std::sync::OnceLock<ModelInfo>,
    /// Admission: one permit per chat request in flight.
    admission: Arc<tokio::sync::Semaphore>,
    /// Personal data handling; none: prompts go to the SGT as written.
    pii: Option<Arc<PiiGuard>>,
}

impl ProxyState {
    pub fn new(
        sgt: Arc<StainedGlassTransformForText>,
        upstream: Upstream,
        config: ProxyConfig,
    ) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(config.upstream_timeout)
            .read_timeout(config.upstream_timeout)
            .build()
            .unwrap_or_default();
        Self {
            sgt,
            upstream,
            admission: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent.max(1))),
            config,
            client,
            upstream_info: std::sync::OnceLock::new(),
            pii: None,
        }
    }

    /// Finds personal data in every prompt and replaces it before the SGT (see `pii.rs`).
    pub fn with_pii(mut self, guard: PiiGuard) -> Self {
        self.pii = Some(Arc::new(guard));
        self
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
            server_key: String::new(),
        }
    }

    /// Fails unless the upstream serves the artefact's base model (our server only).
    pub async fn check_upstream(&self) -> Result<()> {
        if let Some(info) = self
            .upstream
            .check(&self.client, &self.expected_model())
            .await?
        {
            let _ = self.upstream_info.set(info);
        }
        Ok(())
    }

    /// The server identity sealed output is opened for: the pinned one, else the one the server
    /// gave at start-up.
    fn server_key(&self) -> Option<crate::crypto::ServerKey> {
        let b64 = self
            .upstream
            .server_key
            .clone()
            .or_else(|| self.upstream_info.get().map(|i| i.server_key.clone()))?;
        crate::crypto::ServerKey::parse(&b64).ok()
    }

    /// The longest prompt a request may have, in tokens, and the limit that sets it.
    fn prompt_limit(&self) -> (usize, &'static str) {
        let mut limit = (
            self.config.max_prompt_tokens,
            "the proxy's --max-prompt-tokens",
        );
        let positions = self.sgt.max_positions();
        if positions < limit.0 {
            limit = (positions, "the base model's positions");
        }
        if let Some(i) = self.upstream_info.get() {
            if i.max_sequence_length > 0 && i.max_sequence_length < limit.0 {
                limit = (i.max_sequence_length, "the server's --max-sequence-length");
            }
        }
        limit
    }

    /// Refuses, before any work, what this proxy or its upstream cannot serve: another model,
    /// too many messages, sampling settings out of range.
    fn admit(&self, req: &ChatRequest) -> ApiResult<()> {
        if let Some(m) = req.model.as_deref() {
            if m != self.config.model_id {
                return Err(ApiError::ModelNotFound {
                    asked: m.chars().take(64).collect(),
                    serves: self.config.model_id.clone(),
                });
            }
        }
        let bad = |m: String| Err(ApiError::BadRequest(m));
        let max = self.config.max_messages;
        if req.messages.len() > max {
            return bad(format!(
                "{} messages; the limit is {max} (the proxy's --max-messages)",
                req.messages.len()
            ));
        }
        if let Some(t) = req.max_tokens {
            if t == 0 {
                return bad("max_tokens must be at least 1".into());
            }
            if let Some(i) = self.upstream_info.get().filter(|i| i.max_new_tokens > 0) {
                if t > i.max_new_tokens {
                    return bad(format!(
                        "max_tokens {t} is over the server's limit of {}",
                        i.max_new_tokens
                    ));
                }
            }
        }
        Ok(())
    }
}

pub fn router(state: Arc<ProxyState>) -> Router {
    let limit = state.config.max_body_bytes;
    let rules = Arc::new(state.config.access.clone());
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .fallback(|| async {
            ApiError::NotFound("no such route; see /v1/chat/completions and /v1/models".into())
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::http::refuse_oversize(limit, req, next)
        }))
        .layer(axum::middleware::from_fn_with_state(
            rules,
            access::middleware,
        ))
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

/// Characters per token allowed before tokenizing: a prompt longer than this many characters per
/// token of the limit is refused at once.
const MAX_CHARS_PER_TOKEN: usize = 32;

/// A request whose prompt has been transformed and sent upstream: what both replies need.
struct Forwarded {
    req: ChatRequest,
    pieces: mpsc::Receiver<ApiResult<Piece>>,
    prompt_tokens: usize,
    id: String,
    model: String,
    created: u64,
    /// Stand-ins back to the values; dropped (and zeroed) when the reply ends.
    mapping: Option<Mapping>,
}

async fn chat(
    State(st): State<Arc<ProxyState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let bytes = read_body(body, st.config.max_body_bytes)?;
    let req = ChatRequest::parse(&bytes)?;
    st.admit(&req)?;
    let permit = st
        .admission
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded(st.config.max_concurrent))?;
    let fwd = forward(&st, req).await?;
    if fwd.req.stream {
        Ok(streamed_reply(st, fwd, permit))
    } else {
        plain_reply(&st, fwd).await
    }
}

/// Applies the SGT to the request's messages (fresh OS noise) and starts the upstream.
async fn forward(st: &ProxyState, req: ChatRequest) -> ApiResult<Forwarded> {
    let started = Instant::now();
    let sgt = st.sgt.clone();
    let messages = req.messages.clone();
    let (max_prompt, which) = st.prompt_limit();
    let client_err = |e: stainedglass_text::Error| match e {
        stainedglass_text::Error::Prompt(_) | stainedglass_text::Error::Template(_) => {
            ApiError::BadRequest(e.to_string())
        }
        other => ApiError::Internal(other.to_string()),
    };
    // Tokens are counted before the transform, whose cost grows with the prompt.
    // A cheap bound before any per-character work (detection, tokenization): no token of the
    // vocabulary is near this long, so a longer prompt is over the token limit anyway.
    let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    let max_chars = max_prompt.saturating_mul(MAX_CHARS_PER_TOKEN);
    if chars > max_chars {
        return Err(ApiError::BadRequest(format!(
            "the prompt is {chars} characters; the limit is {max_chars} ({MAX_CHARS_PER_TOKEN} \
             per token of {which}, {max_prompt} tokens)"
        )));
    }
    let guard = st.pii.clone();
    let (transformed, mapping, pii_found) = tokio::task::spawn_blocking(move || {
        let scrubbed = match guard {
            Some(g) => g.scrub(messages),
            None => pii::Scrubbed {
                messages,
                mapping: None,
                found: 0,
            },
        };
        let enc = sgt
            .encode(&PromptInput::Chat(scrubbed.messages))
            .map_err(client_err)?;
        let n = enc.input_ids.len();
        if n > max_prompt {
            return Err(ApiError::BadRequest(format!(
                "the prompt is {n} tokens after the chat template; the limit is {max_prompt} \
                 ({which})"
            )));
        }
        let t = sgt
            .apply_ids(
                &enc.input_ids,
                &enc.noise_mask,
                &mut NoiseRng::from_entropy(),
            )
            .map_err(client_err)?;
        Ok((t, scrubbed.mapping, scrubbed.found))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let prompt_tokens = transformed.input_ids.len();
    let sgt_ms = started.elapsed().as_secs_f64() * 1e3;
    let sampling = Sampling {
        max_tokens: req.max_tokens.unwrap_or(st.config.default_max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
    };
    let pieces = st
        .upstream
        .start(
            &st.client,
            &transformed.embeddings,
            &sampling,
            Call {
                timeout_s: st.config.upstream_timeout.as_secs(),
                server_key: st.server_key(),
            },
        )
        .await?;
    tracing::info!(
        prompt_tokens,
        sgt_ms,
        pii_found,
        stream = req.stream,
        "chat completion forwarded"
    );
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| st.config.model_id.clone());
    Ok(Forwarded {
        req,
        pieces,
        prompt_tokens,
        id: completion_id(),
        model,
        created: now(),
        mapping,
    })
}

/// The whole completion as one JSON body.
async fn plain_reply(st: &ProxyState, mut fwd: Forwarded) -> ApiResult<Response> {
    let mut c = Completion::new(st.sgt.tokenizer(), fwd.req.stop.clone());
    let mut text = String::new();
    while let Some(piece) = fwd.pieces.recv().await {
        text.push_str(&c.push(piece?));
        if c.is_done() {
            break;
        }
    }
    let end = c.end();
    text.push_str(&end.rest);
    let mut restore = ReplyRestorer::new(fwd.mapping.as_ref());
    let mut text = restore.push(&text);
    text.push_str(&restore.finish());
    let body = openai::completion(
        &fwd.id,
        &fwd.model,
        fwd.created,
        &text,
        end.finish.as_str(),
        openai::usage(fwd.prompt_tokens, end.completion_tokens),
    );
    Ok(Json(body).into_response())
}

/// The completion as server-sent events: a role chunk, a chunk per delta, the finish chunk,
/// the usage chunk when asked for, `[DONE]`. An upstream error mid-stream is sent as an error
/// event and ends the stream.
fn streamed_reply(
    st: Arc<ProxyState>,
    mut fwd: Forwarded,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    let (tx, out) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        // Held until the reply ends: a stream in flight counts against admission.
        let _permit = permit;
        let (id, model, created) = (fwd.id.clone(), fwd.model.clone(), fwd.created);
        let chunk = |delta: Value, finish: Option<&str>| {
            openai::chunk(&id, &model, created, delta, finish).to_string()
        };
        let role = chunk(json!({"role": "assistant", "content": ""}), None);
        if tx.send(role).await.is_err() {
            return;
        }
        let mut c = Completion::new(st.sgt.tokenizer(), fwd.req.stop.clone());
        let mut restore = ReplyRestorer::new(fwd.mapping.as_ref());
        while let Some(piece) = fwd.pieces.recv().await {
            let delta = match piece {
                Ok(p) => restore.push(&c.push(p)),
                Err(e) => {
                    let _ = tx.send(e.body().to_string()).await;
                    return;
                }
            };
            if !delta.is_empty()
                && tx
                    .send(chunk(json!({"content": delta}), None))
                    .await
                    .is_err()
            {
                return;
            }
            if c.is_done() {
                break;
            }
        }
        let end = c.end();
        let mut rest = restore.push(&end.rest);
        rest.push_str(&restore.finish());
        drop(restore);
        drop(fwd.mapping.take());
        let mut tail = Vec::new();
        if !rest.is_empty() {
            tail.push(chunk(json!({"content": rest}), None));
        }
        tail.push(chunk(json!({}), Some(end.finish.as_str())));
        if fwd.req.include_usage {
            let usage = openai::usage(fwd.prompt_tokens, end.completion_tokens);
            tail.push(openai::usage_chunk(&id, &model, created, usage).to_string());
        }
        tail.push("[DONE]".to_string());
        for event in tail {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(out, |mut out| async move {
        let data = out.recv().await?;
        Some((Ok::<_, Infallible>(Event::default().data(data)), out))
    });
    Sse::new(stream).into_response()
}
