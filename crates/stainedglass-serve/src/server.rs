//! The provider's inference server: prompt embeddings in, tokens out.
//!
//! `POST /v1/generate` takes a [`GenerateRequest`] (base64 safetensors embeddings and sampling
//! parameters) and answers with token ids, as one JSON object or as server-sent events; with
//! the `x-sgt-client-key` header every token is sealed for that key. `GET /v1/model` describes
//! the model (hidden size, embedding hash) so a proxy can check it serves the right one;
//! `GET /health` needs no key. Requests are admitted up to `max_concurrency` at a time with a
//! bounded queue. Nothing a client sends or receives is logged, only sizes and timings.

use crate::crypto::Sealer;
use crate::embeddings::{self, EmbeddingLimits};
use crate::error::{ApiError, Error, Result};
use crate::protocol::*;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use stainedglass_models::llm::{FinishReason, Llama, Prompt, SamplingParams};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Limits and credentials of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Accepted bearer keys; empty disables authentication.
    pub api_keys: Vec<String>,
    pub max_body_bytes: usize,
    pub max_sequence_length: usize,
    pub max_new_tokens: usize,
    /// Generations running at once.
    pub max_concurrency: usize,
    /// Requests allowed to wait for a slot; more get 503.
    pub max_queue: usize,
    pub model_name: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            max_body_bytes: 32 << 20,
            max_sequence_length: 2048,
            max_new_tokens: 512,
            max_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            max_queue: 64,
            model_name: "model".into(),
        }
    }
}

/// Everything a request handler needs.
pub struct ServerState {
    model: Arc<Llama>,
    stop_tokens: Vec<u32>,
    config: ServerConfig,
    info: ModelInfo,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl ServerState {
    /// Wraps a loaded model; `stop_tokens` end a reply (the tokenizer's end-of-turn ids).
    pub fn new(model: Arc<Llama>, stop_tokens: Vec<u32>, mut config: ServerConfig) -> Result<Self> {
        if config.max_concurrency == 0 {
            return Err(Error::Config("max_concurrency must be at least 1".into()));
        }
        config.max_sequence_length = config.max_sequence_length.min(model.max_positions());
        let c = model.config();
        let info = ModelInfo {
            name: config.model_name.clone(),
            hidden_size: c.hidden_size,
            vocab_size: c.vocab_size,
            embedding_sha256: stainedglass_text::artefact::embedding_sha256(
                model.embedding_table(),
            )?,
            max_sequence_length: config.max_sequence_length,
            max_new_tokens: config.max_new_tokens,
        };
        Ok(Self {
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            model,
            stop_tokens,
            config,
            info,
            waiting: AtomicUsize::new(0),
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

    /// Waits for a generation slot, or refuses when the queue is full.
    async fn admit(&self) -> std::result::Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        if queued >= self.config.max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Overloaded(queued));
        }
        let permit = self.slots.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        permit.map_err(|_| ApiError::Internal("the server is shutting down".into()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The server's routes.
pub fn router(state: Arc<ServerState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/v1/model", get(model_info))
        .route("/v1/generate", post(generate))
        .fallback(|| async {
            ApiError::NotFound("no such route; see /health, /v1/model, /v1/generate".into())
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
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

fn finish(f: FinishReason) -> Finish {
    match f {
        FinishReason::Stop => Finish::Stop,
        FinishReason::Length | FinishReason::Cancelled => Finish::Length,
    }
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
            Some(Sealer::for_client(key).map_err(|e| ApiError::BadRequest(e.to_string()))?)
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
    let permit = st.admit().await?;
    let positions = embeds.dim(0).unwrap_or(0);
    if req.stream {
        let (tx, rx) = mpsc::channel::<StreamEvent>(64);
        let model = st.model.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            if let Some(s) = &sealer {
                let key = s.server_key().to_string();
                if tx
                    .blocking_send(StreamEvent::Key { server_key: key })
                    .is_err()
                {
                    return;
                }
            }
            let result = model.generate(Prompt::Embeds(&embeds), &params, |t| {
                let ev = match sealer.as_mut() {
                    Some(s) => StreamEvent::Sealed {
                        sealed: s.seal_token(t),
                    },
                    None => StreamEvent::Token { token: t },
                };
                tx.blocking_send(ev).is_ok()
            });
            let ev = match result {
                Ok(g) => {
                    let f = finish(g.finish);
                    log_done(positions, g.tokens.len(), started, sealer.is_some(), true);
                    StreamEvent::Done {
                        finish_reason: f,
                        usage: Usage {
                            prompt_tokens: g.prompt_tokens,
                            completion_tokens: g.tokens.len(),
                        },
                        sealed_end: sealer.as_mut().map(|s| s.seal_end(f)),
                    }
                }
                Err(e) => StreamEvent::Error {
                    message: e.to_string(),
                },
            };
            let _ = tx.blocking_send(ev);
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let ev = rx.recv().await?;
            let data = serde_json::to_string(&ev).unwrap_or_default();
            Some((Ok::<_, Infallible>(Event::default().data(data)), rx))
        });
        return Ok(Sse::new(stream).into_response());
    }
    let model = st.model.clone();
    let started = Instant::now();
    let g = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        model.generate(Prompt::Embeds(&embeds), &params, |_| true)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    log_done(positions, g.tokens.len(), started, sealer.is_some(), false);
    let f = finish(g.finish);
    let usage = Usage {
        prompt_tokens: g.prompt_tokens,
        completion_tokens: g.tokens.len(),
    };
    let resp = match sealer.as_mut() {
        Some(s) => GenerateResponse {
            tokens: None,
            sealed: Some(g.tokens.iter().map(|&t| s.seal_token(t)).collect()),
            server_key: Some(s.server_key().to_string()),
            sealed_end: Some(s.seal_end(f)),
            finish_reason: f,
            usage,
        },
        None => GenerateResponse {
            tokens: Some(g.tokens),
            sealed: None,
            server_key: None,
            sealed_end: None,
            finish_reason: f,
            usage,
        },
    };
    Ok(Json(resp).into_response())
}

fn log_done(positions: usize, tokens: usize, started: Instant, sealed: bool, stream: bool) {
    tracing::info!(
        positions,
        tokens,
        ms = started.elapsed().as_millis() as u64,
        sealed,
        stream,
        "generate"
    );
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Binds `addr` (use port 0 for a free one) and returns the listener and its address.
pub async fn bind(addr: &str) -> Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Bind {
            addr: addr.to_string(),
            source: e,
        })?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Serves `app` on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
