//! A mirror upstream for `sgt pii e2e`: it speaks the `sgt serve` protocol, reads the prompt
//! back from the embeddings it receives (nearest neighbour against the artefact's table) and
//! answers with the user's message word for word. Through the real proxy, its reply is the
//! pseudonymised prompt mapped back: whether every original value returns measures the
//! mapping back itself — plain and streamed — apart from whether a model chooses to repeat a
//! name. It keeps a copy of every body it receives, like the tapped server.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::body::Bytes;
use axum::routing::post;
use serde_json::{json, Value};
use stainedglass_metrics::EmbeddingIndex;
use stainedglass_serve::embeddings::{self, EmbeddingLimits};
use stainedglass_serve::proxy::{self, PiiGuard, ProxyConfig, ProxyState, Upstream, UpstreamKind};
use stainedglass_serve::server;
use stainedglass_text::{StainedGlassTransformForText, TextTokenizer};

/// The mirror and a proxy in front of it.
pub struct Mirror {
    pub proxy_addr: std::net::SocketAddr,
    pub limits: EmbeddingLimits,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl super::tapped::Tapped for Mirror {
    fn proxy(&self) -> std::net::SocketAddr {
        self.proxy_addr
    }
    fn received(&self) -> Vec<Vec<u8>> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
    fn limits(&self) -> EmbeddingLimits {
        self.limits
    }
}

/// The user's message of a templated prompt read back as ids: the text between the last
/// `<|im_start|>user` and the next `<|im_end|>`, re-encoded.
fn user_message(tok: &TextTokenizer, ids: &[u32]) -> Result<Vec<u32>> {
    let start = tok.token_to_id("<|im_start|>");
    let mut user = None;
    for (i, &id) in ids.iter().enumerate() {
        if Some(id) == start {
            let rest = tok.decode(&ids[i + 1..(i + 3).min(ids.len())], false)?;
            if rest.starts_with("user") {
                user = Some(i + 1);
            }
        }
    }
    let Some(from) = user else {
        return Ok(Vec::new());
    };
    let until = ids[from..]
        .iter()
        .position(|&id| tok.is_special(id))
        .map_or(ids.len(), |k| from + k);
    let text = tok.decode(&ids[from..until], false)?;
    let text = text
        .strip_prefix("user")
        .unwrap_or(&text)
        .trim_start_matches('\n');
    Ok(tok.encode(text)?)
}

fn reply(
    index: &EmbeddingIndex,
    tok: &TextTokenizer,
    limits: EmbeddingLimits,
    body: &[u8],
) -> String {
    let ids = (|| -> Result<Vec<u32>> {
        let v: Value = serde_json::from_slice(body)?;
        let emb = embeddings::decode(v["embeddings"].as_str().unwrap_or_default(), limits)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (_, read, _) = index.nearest(&emb)?;
        user_message(tok, &read)
    })()
    .unwrap_or_default();
    let mut sse = String::new();
    for t in &ids {
        sse.push_str(&format!(
            "data: {}\n\n",
            json!({"type": "token", "token": t})
        ));
    }
    let done = json!({"type": "done", "finish_reason": "stop",
                      "usage": {"prompt_tokens": 0, "completion_tokens": ids.len()}});
    sse.push_str(&format!("data: {done}\n\n"));
    sse
}

/// Starts the mirror and a proxy (with `guard`) in front of it on loopback ports.
pub async fn start(
    sgt: Arc<StainedGlassTransformForText>,
    guard: Option<PiiGuard>,
) -> Result<Mirror> {
    let limits = EmbeddingLimits {
        hidden_size: sgt.hidden_size(),
        max_sequence_length: sgt.max_positions(),
    };
    let index = Arc::new(EmbeddingIndex::new(sgt.embeddings()?)?);
    let art = sgt.clone();
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let tap = seen.clone();
    let app = axum::Router::new()
        .route(
            "/v1/generate",
            post(move |body: Bytes| {
                let (index, art, tap) = (index.clone(), art.clone(), tap.clone());
                async move {
                    tap.lock().map(|mut v| v.push(body.to_vec())).ok();
                    let sse = tokio::task::spawn_blocking(move || {
                        reply(&index, art.tokenizer(), limits, &body)
                    })
                    .await
                    .unwrap_or_default();
                    ([("content-type", "text/event-stream")], sse)
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
    let (l, up) = server::bind("127.0.0.1:0").await?;
    tokio::spawn(server::run(l, app, std::future::pending()));
    let mut state = ProxyState::new(
        sgt,
        Upstream {
            kind: UpstreamKind::Sgt,
            url: format!("http://{up}"),
            api_key: None,
            model: String::new(),
            protect_output: false,
            vllm_dtype: candle_core::DType::F32,
            server_key: None,
        },
        ProxyConfig {
            default_max_tokens: 4096,
            ..ProxyConfig::default()
        },
    );
    if let Some(g) = guard {
        state = state.with_pii(g);
    }
    let (l, proxy_addr) = server::bind("127.0.0.1:0").await?;
    tokio::spawn(server::run(
        l,
        proxy::router(Arc::new(state)),
        std::future::pending(),
    ));
    Ok(Mirror {
        proxy_addr,
        limits,
        seen,
    })
}
