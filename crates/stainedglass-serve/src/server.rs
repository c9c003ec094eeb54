//! The provider's inference server: prompt embeddings in, tokens out.
//!
//! `POST /v1/generate` takes a [`GenerateRequest`] (base64 safetensors embeddings and sampling
//! parameters) and answers with token ids, as one JSON object or as server-sent events; with
//! the `x-sgt-client-key` header every token is sealed for that key. `GET /v1/model` describes
//! the model (hidden size, embedding hash) so a proxy can check it serves the right one;
//! `GET /health` needs no key. One worker thread owns the model and decodes waiting requests
//! together — up to `max_concurrency` rows in one batch with one KV cache, each row with its own
//! sampling — while further requests wait in a bounded queue. Nothing a client sends or
//! receives is logged, only sizes and timings.

use crate::crypto::{Sealer, ServerIdentity};
use crate::embeddings::{self, EmbeddingLimits};
use crate::error::{ApiError, Error, Result};
pub use crate::http::{bind, run, run_with, shutdown_signal, Timeouts};
use crate::protocol::*;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use candle_core::Tensor;
use stainedglass_models::llm::{FinishReason, Llama, RowRequest, SamplingParams};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Limits and credentials of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Accepted bearer keys; empty disables authentication.
    pub api_keys: Vec<String>,
    pub max_body_bytes: usize,
    pub max_sequence_length: usize,
    pub max_new_tokens: usize,
    /// Requests decoded together in one batch.
    pub max_concurrency: usize,
    /// Requests allowed to wait while a batch runs; more get 429 with `Retry-After`.
    pub max_queue: usize,
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
            max_concurrency: 8,
            max_queue: 64,
            model_name: "model".into(),
            identity: None,
        }
    }
}

/// A request handed to the batch worker; its events go back through `events`.
struct Job {
    embeds: Tensor,
    params: SamplingParams,
    sealer: Option<Sealer>,
    events: mpsc::Sender<StreamEvent>,
}

/// Everything a request handler needs.
pub struct ServerState {
    stop_tokens: Vec<u32>,
    identity: Arc<ServerIdentity>,
    config: ServerConfig,
    info: ModelInfo,
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    /// Requests submitted and not yet taken into a batch.
    waiting: Arc<AtomicUsize>,
    /// Whether the worker is running a batch.
    busy: Arc<AtomicBool>,
    /// Batches that panicked (their requests got an error; the worker went on).
    panics: Arc<AtomicUsize>,
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
        let waiting = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicBool::new(false));
        let panics = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let w = Worker {
            model,
            waiting: waiting.clone(),
            busy: busy.clone(),
            panics: panics.clone(),
            max_batch: config.max_concurrency,
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
            waiting,
            busy,
            panics,
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

    /// Queues a job for the worker, or refuses when a batch is running and the queue is full.
    fn submit(&self, job: Job) -> std::result::Result<(), ApiError> {
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        if self.busy.load(Ordering::SeqCst) && queued >= self.config.max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Overloaded(queued));
        }
        let sent = self
            .jobs
            .lock()
            .map_err(|_| ApiError::Internal("the batch worker is gone".into()))?
            .send(job);
        if sent.is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Internal("the batch worker is gone".into()));
        }
        Ok(())
    }
}

/// The batch worker: owns the model, takes every waiting job (up to `max_batch`), decodes them
/// together, repeats. A batch that panics answers its requests with an error and the worker
/// goes on with the next one.
struct Worker {
    model: Arc<Llama>,
    waiting: Arc<AtomicUsize>,
    busy: Arc<AtomicBool>,
    panics: Arc<AtomicUsize>,
    max_batch: usize,
}

impl Worker {
    fn run(&self, rx: std::sync::mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            self.busy.store(true, Ordering::SeqCst);
            let mut jobs = vec![first];
            while jobs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.waiting.fetch_sub(jobs.len(), Ordering::SeqCst);
            let senders: Vec<_> = jobs.iter().map(|j| j.events.clone()).collect();
            let model = &self.model;
            let finals =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_batch(model, jobs)))
                    .unwrap_or_else(|_| {
                        self.panics.fetch_add(1, Ordering::SeqCst);
                        tracing::error!(
                            rows = senders.len(),
                            "a batch panicked; its requests failed"
                        );
                        let ev = StreamEvent::Error {
                            message:
                                "internal error while generating; the request was not completed"
                                    .into(),
                            status: None,
                        };
                        senders.into_iter().map(|tx| (tx, ev.clone())).collect()
                    });
            // Free before the clients hear they are done: a client that sends its next request
            // right after finds the worker idle, not a full queue.
            self.busy.store(false, Ordering::SeqCst);
            for (tx, ev) in finals {
                let _ = tx.blocking_send(ev);
            }
        }
    }
}

/// The final event of a row that ended on non-finite logits: its input is at fault.
fn non_finite() -> StreamEvent {
    StreamEvent::Error {
        message: "the model's output for these embeddings is not finite (NaN or Inf): they \
                  cannot be meaningful input embeddings"
            .into(),
        status: Some(422),
    }
}

/// Decodes one batch, streaming tokens; returns each row's final event for the caller to send.
fn run_batch(model: &Llama, mut jobs: Vec<Job>) -> Vec<(mpsc::Sender<StreamEvent>, StreamEvent)> {
    let started = Instant::now();
    for j in &jobs {
        if let Some(s) = &j.sealer {
            let _ = j.events.blocking_send(StreamEvent::Key {
                server_key: s.server_key().to_string(),
            });
        }
    }
    let mut sealers: Vec<Option<Sealer>> = jobs.iter_mut().map(|j| j.sealer.take()).collect();
    let rows: Vec<RowRequest<'_>> = jobs
        .iter()
        .map(|j| RowRequest {
            embeds: &j.embeds,
            params: &j.params,
        })
        .collect();
    let senders: Vec<mpsc::Sender<StreamEvent>> = jobs.iter().map(|j| j.events.clone()).collect();
    let result = model.generate_rows(&rows, |i, t| {
        let ev = match sealers[i].as_mut() {
            Some(s) => StreamEvent::Sealed {
                sealed: s.seal_token(t),
            },
            None => StreamEvent::Token { token: t },
        };
        senders[i].blocking_send(ev).is_ok()
    });
    match result {
        Ok(gens) => {
            let total: usize = gens.iter().map(|g| g.tokens.len()).sum();
            tracing::info!(
                rows = gens.len(),
                tokens = total,
                ms = started.elapsed().as_millis() as u64,
                "batch"
            );
            gens.iter()
                .zip(senders)
                .zip(sealers.iter_mut())
                .map(|((g, tx), sealer)| {
                    if g.finish == FinishReason::NonFinite {
                        return (tx, non_finite());
                    }
                    let f = finish(g.finish);
                    let ev = StreamEvent::Done {
                        finish_reason: f,
                        usage: Usage {
                            prompt_tokens: g.prompt_tokens,
                            completion_tokens: g.tokens.len(),
                        },
                        sealed_end: sealer.as_mut().map(|s| s.seal_end(f, g.prompt_tokens)),
                    };
                    (tx, ev)
                })
                .collect()
        }
        Err(e) => senders
            .into_iter()
            .map(|tx| {
                let ev = StreamEvent::Error {
                    message: e.to_string(),
                    status: None,
                };
                (tx, ev)
            })
            .collect(),
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
        .with_state(state)
}

/// Liveness: 200 while the batch worker runs (with the number of batches that panicked and
/// were answered with errors), 503 once it has stopped.
async fn health(State(st): State<Arc<ServerState>>) -> Response {
    let panics = st.panics.load(Ordering::SeqCst);
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

fn finish(f: FinishReason) -> Finish {
    match f {
        FinishReason::Stop => Finish::Stop,
        FinishReason::Length | FinishReason::Cancelled | FinishReason::NonFinite => Finish::Length,
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
