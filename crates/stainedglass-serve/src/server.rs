//! The provider's inference server: prompt embeddings in, tokens out.
//!
//! `POST /v1/generate` takes a [`GenerateRequest`] (base64 safetensors embeddings and sampling
//! parameters) and answers with token ids, as one JSON object or as server-sent events; with
//! the `x-sgt-client-key` header every token is sealed for that key. `GET /v1/model` describes
//! the model (hidden size, embedding hash) so a proxy can check it serves the right one;
//! `GET /health` needs no key. One worker thread owns the model and decodes up to
//! `max_concurrency` requests together with continuous batching (`worker.rs`: requests join
//! and leave the running batch between decoding steps, each with its own sampling), while
//! further requests wait in a bounded queue. Nothing a client sends or receives is logged,
//! only sizes and timings.

use crate::crypto::{Sealer, ServerIdentity};
use crate::embeddings::{self, EmbeddingLimits};
use crate::error::{ApiError, Error, Result};
pub use crate::http::{bind, run, run_with, shutdown_signal, Timeouts};
use crate::protocol::*;
use crate::worker::{Job, Worker, WorkerStats};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use stainedglass_models::llm::{Llama, SamplingParams};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Limits and credentials of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Accepted bearer keys; empty disables authentication.
    pub api_keys: Vec<String>,
    pub max_body_bytes: usize,
    pub max_sequence_length: usize,
    pub max_new_tokens: usize,
    /// Requests decoded together (rows of the running batch).
    pub max_concurrency: usize,
    /// Requests allowed to wait for a row; more get 429 with `Retry-After`.
    pub max_queue: usize,
    /// Reuse the keys and values of a prompt prefix requests share (the chat template and
    /// system prompt behind the proxy); see `stainedglass_models::llm::prefix` for what it
    /// holds and what a caller can time.
    pub prefix_cache: bool,
    pub model_name: String,
    /// The identity sealed output is bound to; `None` generates one at start.
    pub identity: Option<Arc<ServerIdentity>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            max_body_bytes: 32 << 20,
            max_sequence_length: 2048,
            max_new_tokens: 512,
            max_concurrency: 16,
            max_queue: 64,
            prefix_cache: true,
            model_name: "model".into(),
            identity: None,
        }
    }
}

/// Everything a request handler needs.
pub struct ServerState {
    stop_tokens: Vec<u32>,
    identity: Arc<ServerIdentity>,
    config: ServerConfig,
    info: ModelInfo,
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    stats: WorkerStats,
    /// Cleared if the worker thread ever ends.
    alive: Arc<AtomicBool>,
}

impl ServerState {
    /// Wraps a loaded model and starts its batch worker; `stop_tokens` end a reply (the
    /// tokenizer's end-of-turn ids).
    pub fn new(model: Arc<Llama>, stop_tokens: Vec<u32>, mut config: ServerConfig) -> Result<Self> {
        if config.max_concurrency == 0 {
            return Err(Error::Config("max_concurrency must be at least 1".into()));
        }
        config.max_sequence_length = config.max_sequence_length.min(model.max_positions());
        let identity = match config.identity.clone() {
            Some(i) => i,
            None => Arc::new(ServerIdentity::generate().map_err(|e| Error::Config(e.to_string()))?),
        };
        let c = model.config();
        let info = ModelInfo {
            name: config.model_name.clone(),
            hidden_size: c.hidden_size,
            vocab_size: c.vocab_size,
            embedding_sha256: stainedglass_text::artefact::model_embedding_sha256(&model)?,
            max_sequence_length: config.max_sequence_length,
            max_new_tokens: config.max_new_tokens,
            server_key: identity.public_b64(),
        };
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let stats = WorkerStats::default();
        let alive = Arc::new(AtomicBool::new(true));
        let w = Worker {
            model,
            stats: stats.clone(),
            max_batch: config.max_concurrency,
            prefix_cache: config.prefix_cache,
        };
        let a = alive.clone();
        std::thread::Builder::new()
            .name("sgt-batcher".into())
            .spawn(move || {
                w.run(rx);
                a.store(false, Ordering::SeqCst);
            })?;
        Ok(Self {
            stop_tokens,
            identity,
            config,
            info,
            jobs: std::sync::Mutex::new(tx),
            stats,
            alive,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn authorize(&self, headers: &HeaderMap) -> std::result::Result<(), ApiError> {
        if self.config.api_keys.is_empty() {
            return Ok(());
        }
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        if self
            .config
            .api_keys
            .iter()
            .any(|k| constant_time_eq(k.as_bytes(), given.trim().as_bytes()))
        {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// Queues a job for the worker, or refuses when every row is taken and the queue is full.
    fn submit(&self, job: Job) -> std::result::Result<(), ApiError> {
        let waiting = &self.stats.waiting;
        let queued = waiting.fetch_add(1, Ordering::SeqCst);
        let running = self.stats.running.load(Ordering::SeqCst);
        if running + queued >= self.config.max_concurrency + self.config.max_queue {
            waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Overloaded(queued));
        }
        let sent = self
            .jobs
            .lock()
            .map_err(|_| ApiError::Internal("the batch worker is gone".into()))?
            .send(job);
        if sent.is_err() {
            waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Internal("the batch worker is gone".into()));
        }
        Ok(())
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The server's routes.
pub fn router(state: Arc<ServerState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/v1/model", get(model_info))
        .route("/v1/generate", post(generate))
        .fallback(|| async {
            ApiError::NotFound("no such route; see /health, /v1/model, /v1/generate".into())
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::http::refuse_oversize(limit, req, next)
        }))
        .with_state(state)
}

/// Liveness: 200 while the batch worker runs (with the number of joins and decoding steps
/// that panicked and were answered with errors), 503 once it has stopped.
async fn health(State(st): State<Arc<ServerState>>) -> Response {
    let panics = st.stats.panics.load(Ordering::SeqCst);
    if st.alive.load(Ordering::SeqCst) {
        Json(serde_json::json!({"status": "ok", "failed_batches": panics})).into_response()
    } else {
        let body = serde_json::json!({"status": "down", "reason": "the batch worker stopped"});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn model_info(
    State(st): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> std::result::Result<Json<ModelInfo>, ApiError> {
    st.authorize(&headers)?;
    Ok(Json(st.info.clone()))
}

/// The raw body, or 413 when it is over `limit`.
pub(crate) fn read_body(
    body: std::result::Result<Bytes, BytesRejection>,
    limit: usize,
) -> std::result::Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })
}

/// Turns the raw body into a request, or the error that names what is wrong.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: std::result::Result<Bytes, BytesRejection>,
    limit: usize,
) -> std::result::Result<T, ApiError> {
    let bytes = read_body(body, limit)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid request JSON: {e}")))
}

fn sampling(
    st: &ServerState,
    r: &GenerateRequest,
) -> std::result::Result<SamplingParams, ApiError> {
    if r.max_tokens == 0 || r.max_tokens > st.config.max_new_tokens {
        return Err(ApiError::Unprocessable(format!(
            "max_tokens is {}; this server allows 1 to {}",
            r.max_tokens, st.config.max_new_tokens
        )));
    }
    let p = SamplingParams {
        max_new_tokens: r.max_tokens,
        temperature: r.temperature,
        top_k: r.top_k,
        top_p: r.top_p,
        repetition_penalty: r.repetition_penalty,
        stop_tokens: st.stop_tokens.clone(),
        seed: r.seed,
    };
    p.validate()
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    Ok(p)
}

async fn generate(
    State(st): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Response, ApiError> {
    st.authorize(&headers)?;
    let req: GenerateRequest = parse_body(body, st.config.max_body_bytes)?;
    let params = sampling(&st, &req)?;
    let mut sealer = match headers.get(CLIENT_KEY_HEADER) {
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| ApiError::BadRequest(format!("{CLIENT_KEY_HEADER} is not ASCII")))?;
            Some(
                Sealer::for_client(key, &st.identity)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?,
            )
        }
        None => None,
    };
    let limits = EmbeddingLimits {
        hidden_size: st.info.hidden_size,
        max_sequence_length: st.config.max_sequence_length,
    };
    let payload = req.embeddings;
    let embeds = tokio::task::spawn_blocking(move || embeddings::decode(&payload, limits))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    // Room for every event of the reply: the worker never waits on a slow client.
    let (tx, mut rx) = mpsc::channel::<StreamEvent>(params.max_new_tokens + 4);
    let sealed = sealer.is_some();
    st.submit(Job {
        embeds,
        params,
        sealer: sealer.take(),
        events: tx,
    })?;
    if req.stream {
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let ev = rx.recv().await?;
            let data = serde_json::to_string(&ev).unwrap_or_default();
            Some((Ok::<_, Infallible>(Event::default().data(data)), rx))
        });
        return Ok(Sse::new(stream).into_response());
    }
    let (mut tokens, mut sealed_tokens, mut server_key) = (Vec::new(), Vec::new(), None);
    while let Some(ev) = rx.recv().await {
        match ev {
            StreamEvent::Key { server_key: k } => server_key = Some(k),
            StreamEvent::Token { token } => tokens.push(token),
            StreamEvent::Sealed { sealed } => sealed_tokens.push(sealed),
            StreamEvent::Error {
                message,
                status: Some(422),
            } => return Err(ApiError::Unprocessable(message)),
            StreamEvent::Error { message, .. } => return Err(ApiError::Internal(message)),
            StreamEvent::Done {
                finish_reason,
                usage,
                sealed_end,
            } => {
                let resp = GenerateResponse {
                    tokens: (!sealed).then_some(tokens),
                    sealed: sealed.then_some(sealed_tokens),
                    server_key,
                    sealed_end,
                    finish_reason,
                    usage,
                };
                return Ok(Json(resp).into_response());
            }
        }
    }
    Err(ApiError::Internal("the batch worker stopped".into()))
}
