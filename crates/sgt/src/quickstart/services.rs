//! The quickstart's live part: `sgt serve` and `sgt proxy` on free loopback ports (the server
//! tapped to keep a copy of what it receives), one question through the proxy, and what the
//! strongest fresh attack and nearest neighbour read of exactly what the server received.

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::Request;
use stainedglass_core::NoiseRng;
use stainedglass_metrics::EmbeddingIndex;
use stainedglass_serve::embeddings::{self, EmbeddingLimits};
use stainedglass_serve::proxy::{self, ProxyConfig, ProxyState, Upstream, UpstreamKind};
use stainedglass_serve::server::{self, ServerConfig, ServerState};
use stainedglass_text::{StainedGlassTransformForText, TextTokenizer};
use std::sync::{Arc, Mutex};

/// The question the quickstart asks through the proxy.
pub const QUESTION: &str = "What is the capital of France?";

/// What the chat stage saw.
pub struct ChatResult {
    pub answer: String,
    pub clean: String,
    pub server_reads: String,
    pub recovered: f64,
    /// The strongest fresh attack's name, its reading of the message, and its share of the
    /// message tokens.
    pub strongest_attack: String,
    pub strongest_reads: String,
    pub strongest_recovered: f64,
    pub requests_seen: usize,
}

/// The strongest attack trained on the frozen SGT: its name, and its top-1 reading of a
/// received prompt `x̃ (1, t, d)` at the positions where the noise mask is set.
pub struct Reader<'r> {
    pub name: String,
    #[allow(clippy::type_complexity)]
    pub read: &'r dyn Fn(candle_core::Tensor, &[u32], &[u8]) -> Result<Vec<u32>>,
}

/// The server and the proxy, running on the quickstart's runtime.
pub struct Services {
    pub server_addr: std::net::SocketAddr,
    pub proxy_addr: std::net::SocketAddr,
    limits: EmbeddingLimits,
    /// Copies of every `/v1/generate` body the server received.
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    pub stop_server: Arc<tokio::sync::Notify>,
    pub stop_proxy: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<stainedglass_serve::Result<()>>>,
}

impl Services {
    /// Copies of the `/v1/generate` bodies the server received so far.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// What the server accepts (to decode a received body).
    pub fn limits(&self) -> EmbeddingLimits {
        self.limits
    }

    pub async fn shutdown(self) {
        self.stop_proxy.notify_one();
        self.stop_server.notify_one();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts both services; `guard` is the proxy's personal-data handling (none: off).
pub async fn start_services(
    model: Arc<stainedglass_models::llm::Llama>,
    tok: &TextTokenizer,
    sgt: Arc<StainedGlassTransformForText>,
    guard: Option<proxy::PiiGuard>,
) -> Result<Services> {
    let state = Arc::new(ServerState::new(
        model,
        tok.stop_tokens(),
        ServerConfig::default(),
    )?);
    let limits = EmbeddingLimits {
        hidden_size: state.info().hidden_size,
        max_sequence_length: state.info().max_sequence_length,
    };
    // The server's own router, wrapped by a tap that keeps a copy of every generate body: the
    // demo shows what the provider received, byte for byte.
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let tap = seen.clone();
    let app = server::router(state).layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| {
            let tap = tap.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                if parts.uri.path() == "/v1/generate" {
                    tap.lock().map(|mut v| v.push(bytes.to_vec())).ok();
                }
                next.run(Request::from_parts(parts, Body::from(bytes)))
                    .await
            }
        },
    ));
    let stop_server = Arc::new(tokio::sync::Notify::new());
    let stop_proxy = Arc::new(tokio::sync::Notify::new());
    let (l, server_addr) = server::bind("127.0.0.1:0").await?;
    let s = stop_server.clone();
    let server_task = tokio::spawn(server::run(l, app, async move { s.notified().await }));
    let proxy_state = ProxyState::new(
        sgt,
        Upstream {
            kind: UpstreamKind::Sgt,
            url: format!("http://{server_addr}"),
            api_key: None,
            model: String::new(),
            protect_output: true,
            vllm_dtype: candle_core::DType::F32,
            server_key: None,
        },
        ProxyConfig::default(),
    );
    let proxy_state = match guard {
        Some(g) => proxy_state.with_pii(g),
        None => proxy_state,
    };
    proxy_state.check_upstream().await?;
    let (l, proxy_addr) = server::bind("127.0.0.1:0").await?;
    let p = stop_proxy.clone();
    let proxy_task = tokio::spawn(server::run(
        l,
        proxy::router(Arc::new(proxy_state)),
        async move { p.notified().await },
    ));
    eprintln!("  sgt serve listening on http://{server_addr} (sealed output)");
    eprintln!("  sgt proxy listening on http://{proxy_addr} (OpenAI-compatible)");
    Ok(Services {
        server_addr,
        proxy_addr,
        limits,
        seen,
        stop_server,
        stop_proxy,
        tasks: vec![server_task, proxy_task],
    })
}

/// Asks the question through the proxy and decodes what the server received.
pub async fn chat_once(
    live: &Services,
    tok: &TextTokenizer,
    sgt: &StainedGlassTransformForText,
    strongest: &Reader<'_>,
) -> Result<ChatResult> {
    let body = serde_json::json!({
        "model": "stainedglass",
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0, "max_tokens": 48,
    });
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", live.proxy_addr))
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: serde_json::Value = r.json().await?;
    if !status.is_success() {
        bail!("the proxy answered {status}: {v}");
    }
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let received = live.seen.lock().map(|v| v.clone()).unwrap_or_default();
    let last = received
        .last()
        .context("the server received no generate request")?;
    let req: serde_json::Value = serde_json::from_slice(last)?;
    let emb = embeddings::decode(req["embeddings"].as_str().unwrap_or_default(), live.limits)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Nearest-neighbour decoding of exactly what the server received, beside the prompt.
    let index = EmbeddingIndex::new(sgt.embeddings()?)?;
    let (_, read, _) = index.nearest(&emb)?;
    let mine = sgt.apply(
        &stainedglass_text::PromptInput::Chat(vec![stainedglass_text::Message::new(
            stainedglass_text::Role::User,
            QUESTION,
        )]),
        &mut NoiseRng::seeded(0),
    )?;
    let content: Vec<usize> = (0..mine.input_ids.len())
        .filter(|&i| mine.noise_mask[i] != 0)
        .collect();
    let pick = |ids: &[u32]| -> Vec<u32> {
        content
            .iter()
            .filter_map(|&i| ids.get(i).copied())
            .collect()
    };
    let clean = tok.decode(&pick(&mine.input_ids), false)?;
    let server_reads = tok.decode(&pick(&read), false)?;
    let hits = content
        .iter()
        .filter(|&&i| read.get(i) == mine.input_ids.get(i))
        .count();
    // The strongest attack's reading of the same bytes (its guesses, in content order).
    let guessed = (strongest.read)(emb.unsqueeze(0)?, &mine.input_ids, &mine.noise_mask)?;
    let strong_hits = guessed
        .iter()
        .zip(&content)
        .filter(|(g, &i)| mine.input_ids.get(i) == Some(g))
        .count();
    let strongest_reads = tok.decode(&guessed, false)?;
    println!();
    println!("  You asked:        {QUESTION}");
    println!("  The model said:   {}", answer.trim());
    println!(
        "  The server received {} request(s) with only embeddings, no text or token ids. \
         What it could read of them:",
        received.len()
    );
    println!("    clean prompt:        {}", clean.trim());
    println!(
        "    {:<20} {}   ({} of {} message tokens)",
        format!("{}:", strongest.name),
        strongest_reads.trim(),
        strong_hits,
        content.len()
    );
    println!(
        "    {:<20} {}   ({} of {})",
        "nearest neighbour:",
        server_reads.trim(),
        hits,
        content.len()
    );
    Ok(ChatResult {
        answer,
        clean,
        server_reads,
        recovered: hits as f64 / content.len().max(1) as f64,
        strongest_attack: strongest.name.clone(),
        strongest_reads,
        strongest_recovered: strong_hits as f64 / content.len().max(1) as f64,
        requests_seen: received.len(),
    })
}
