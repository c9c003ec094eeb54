//! Where the proxy sends transformed embeddings: our inference server (`/v1/generate`, token
//! ids back, optionally sealed) or vLLM started with `--enable-prompt-embeds`
//! (`/v1/completions` with `prompt_embeds` = base64 of a `torch.save` file, text back). Both are
//! asked to stream; the proxy aggregates when its own client did not ask for a stream.

use crate::crypto::{ClientKey, Opener, ServerKey};
use crate::error::{ApiError, Error};
use crate::protocol::*;
use base64::Engine;
use candle_core::{DType, Tensor};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Which server is upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// `sgt serve`.
    Sgt,
    /// vLLM with `--enable-prompt-embeds`.
    Vllm,
}

/// How to reach the upstream server.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub kind: UpstreamKind,
    /// Base URL, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    pub api_key: Option<String>,
    /// Model name sent to vLLM.
    pub model: String,
    /// Seal the output (our server only).
    pub protect_output: bool,
    /// Precision of vLLM's `prompt_embeds` tensor.
    pub vllm_dtype: DType,
    /// The server identity key (base64) to pin; `None` takes the one `/v1/model` gives at
    /// start-up.
    pub server_key: Option<String>,
}

/// Per-call settings of [`Upstream::start`].
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// The client's timeout, for the 504 message.
    pub timeout_s: u64,
    /// The identity sealed output must come from.
    pub server_key: Option<ServerKey>,
}

/// Sampling parameters forwarded upstream.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
}

/// One piece of a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Token(u32),
    Text(String),
    Done {
        finish: Finish,
        usage: Option<Usage>,
    },
}

fn upstream_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::Upstream(e.to_string())
}

/// The upstream's refusal: its 400, 413 and 422 are the client's request at fault and stay
/// 4xx with the upstream's message; anything else (a wrong key, a missing route, 5xx) is the
/// gateway's problem, 502.
fn upstream_refusal(status: u16, message: String) -> ApiError {
    match status {
        400 | 413 | 422 => ApiError::UpstreamRejected { status, message },
        _ => ApiError::Upstream(format!("{status}: {message}")),
    }
}

/// Splits a server-sent-event byte stream into `data:` payloads.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes, returns the complete events' data fields.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        // Carriage returns only ever end lines in SSE; dropping them normalises CRLF.
        self.buf
            .extend(bytes.iter().copied().filter(|&b| b != b'\r'));
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event = String::from_utf8_lossy(&self.buf[..end]).to_string();
            self.buf.drain(..end + 2);
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

impl Upstream {
    /// A failed send: 504 when it timed out (after `timeout_s`), 502 otherwise.
    fn unreachable(&self, e: reqwest::Error, timeout_s: u64) -> ApiError {
        if e.is_timeout() {
            ApiError::UpstreamTimeout(timeout_s)
        } else {
            ApiError::Upstream(format!("cannot reach {}: {e}", self.url))
        }
    }

    fn request(&self, client: &reqwest::Client, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let r = client.post(url);
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Checks that our server serves the model the artefact was trained for; returns what it
    /// said of itself (`None` for vLLM, which is not checked).
    pub async fn check(
        &self,
        client: &reqwest::Client,
        want: &ModelInfo,
    ) -> Result<Option<ModelInfo>, Error> {
        if self.kind != UpstreamKind::Sgt {
            return Ok(None);
        }
        let url = format!("{}/v1/model", self.url.trim_end_matches('/'));
        let mut r = client.get(&url);
        if let Some(k) = &self.api_key {
            r = r.bearer_auth(k);
        }
        let err = |reason: String| Error::Upstream {
            url: url.clone(),
            reason,
        };
        let resp = r
            .send()
            .await
            .map_err(|e| err(format!("unreachable ({e}); is `sgt serve` running there?")))?;
        if !resp.status().is_success() {
            return Err(err(format!(
                "answered {} to /v1/model (API key?)",
                resp.status()
            )));
        }
        let info: ModelInfo = resp
            .json()
            .await
            .map_err(|e| err(format!("not an sgt server: {e}")))?;
        if let Some(pinned) = &self.server_key {
            if ServerKey::parse(pinned).map_err(|e| err(format!("--server-key: {e}")))?
                != ServerKey::parse(&info.server_key)
                    .map_err(|e| err(format!("the server's key: {e}")))?
            {
                return Err(err(format!(
                    "its identity key is {}, but --server-key pins {pinned}: another server \
                     (or someone in between) answers at this address",
                    info.server_key
                )));
            }
        }
        if info.hidden_size != want.hidden_size || info.embedding_sha256 != want.embedding_sha256 {
            return Err(err(format!(
                "serves `{}` (hidden {}, embeddings {}), but the SGT was trained for `{}` \
                 (hidden {}, embeddings {}); point the proxy at a server of the same base model",
                info.name,
                info.hidden_size,
                &info.embedding_sha256[..12.min(info.embedding_sha256.len())],
                want.name,
                want.hidden_size,
                &want.embedding_sha256[..12.min(want.embedding_sha256.len())],
            )));
        }
        Ok(Some(info))
    }

    /// Sends `embeddings (seq, hidden)` and streams the reply's pieces into a channel. Dropping
    /// the receiver closes the upstream connection, which cancels the generation there.
    pub async fn start(
        &self,
        client: &reqwest::Client,
        embeddings: &Tensor,
        s: &Sampling,
        call: Call,
    ) -> Result<mpsc::Receiver<Result<Piece, ApiError>>, ApiError> {
        let timeout_s = call.timeout_s;
        let mut key = None;
        let req = match self.kind {
            UpstreamKind::Sgt => {
                let body = json!({
                    "embeddings": crate::embeddings::encode(embeddings).map_err(upstream_err)?,
                    "max_tokens": s.max_tokens,
                    "temperature": s.temperature,
                    "top_p": s.top_p,
                    "seed": s.seed,
                    "stream": true,
                });
                let mut r = self.request(client, "/v1/generate").json(&body);
                if self.protect_output {
                    let server = call.server_key.ok_or_else(|| {
                        upstream_err(
                            "sealed output needs the server's identity key: pass --server-key, \
                             or let the proxy read it at start-up (no --skip-model-check)",
                        )
                    })?;
                    let k = ClientKey::generate().map_err(upstream_err)?;
                    r = r.header(CLIENT_KEY_HEADER, k.public_b64());
                    key = Some((k, server));
                }
                r
            }
            UpstreamKind::Vllm => {
                let t = embeddings.to_dtype(self.vllm_dtype).map_err(upstream_err)?;
                let bytes = crate::torch_save::save_bytes(&t).map_err(upstream_err)?;
                let body = json!({
                    "model": self.model,
                    "prompt_embeds": base64::engine::general_purpose::STANDARD.encode(bytes),
                    "max_tokens": s.max_tokens,
                    "temperature": s.temperature,
                    "top_p": s.top_p.unwrap_or(1.0),
                    "seed": s.seed,
                    "stream": true,
                    "stream_options": {"include_usage": true},
                });
                self.request(client, "/v1/completions").json(&body)
            }
        };
        let resp = req
            .send()
            .await
            .map_err(|e| self.unreachable(e, timeout_s))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(upstream_refusal(status.as_u16(), msg));
        }
        let (tx, rx) = mpsc::channel(64);
        let kind = self.kind;
        tokio::spawn(async move {
            let mut bytes = resp.bytes_stream();
            let mut parser = SseParser::default();
            let mut decoder = Decoder::new(kind, key);
            while let Some(chunk) = bytes.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) if e.is_timeout() => {
                        let _ = tx.send(Err(ApiError::UpstreamTimeout(timeout_s))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(upstream_err(format!("stream broke: {e}"))))
                            .await;
                        return;
                    }
                };
                for data in parser.feed(&chunk) {
                    for piece in decoder.decode(&data) {
                        let end = !matches!(piece, Ok(Piece::Token(_)) | Ok(Piece::Text(_)));
                        if tx.send(piece).await.is_err() || end {
                            return;
                        }
                    }
                }
            }
            let _ = tx
                .send(Err(upstream_err("the stream ended without a final event")))
                .await;
        });
        Ok(rx)
    }
}

/// Interprets one upstream's events, opening sealed tokens.
struct Decoder {
    kind: UpstreamKind,
    /// This request's key and the server identity it pinned (sealed output).
    key: Option<(ClientKey, ServerKey)>,
    opener: Option<Opener>,
    finish: Option<Finish>,
    usage: Option<Usage>,
}

impl Decoder {
    fn new(kind: UpstreamKind, key: Option<(ClientKey, ServerKey)>) -> Self {
        Self {
            kind,
            key,
            opener: None,
            finish: None,
            usage: None,
        }
    }

    fn decode(&mut self, data: &str) -> Vec<Result<Piece, ApiError>> {
        match self.kind {
            UpstreamKind::Sgt => self.sgt(data).into_iter().collect(),
            UpstreamKind::Vllm => self.vllm(data),
        }
    }

    fn sgt(&mut self, data: &str) -> Option<Result<Piece, ApiError>> {
        let ev: StreamEvent = match serde_json::from_str(data) {
            Ok(e) => e,
            Err(e) => return Some(Err(upstream_err(format!("unreadable event: {e}")))),
        };
        let tampered = |e: crate::crypto::CryptoError| upstream_err(e);
        match (ev, &self.key) {
            (StreamEvent::Key { .. }, Some(_)) if self.opener.is_some() => Some(Err(upstream_err(
                "a second key event: the stream was tampered with",
            ))),
            (StreamEvent::Key { server_key }, Some((k, server))) => {
                match k.opener(&server_key, server) {
                    Ok(o) => {
                        self.opener = Some(o);
                        None
                    }
                    Err(e) => Some(Err(tampered(e))),
                }
            }
            (StreamEvent::Sealed { sealed }, Some(_)) => Some(match self.opener.as_mut() {
                Some(o) => o.open_token(&sealed).map(Piece::Token).map_err(tampered),
                None => Err(upstream_err("sealed token before the server key")),
            }),
            (StreamEvent::Token { token }, None) => Some(Ok(Piece::Token(token))),
            (StreamEvent::Token { .. }, Some(_)) => Some(Err(upstream_err(
                "the server sent plain tokens although sealed output was requested",
            ))),
            (
                StreamEvent::Done {
                    finish_reason,
                    usage,
                    sealed_end,
                },
                key,
            ) => {
                if key.is_none() {
                    return Some(Ok(Piece::Done {
                        finish: finish_reason,
                        usage: Some(usage),
                    }));
                }
                // Sealed: the end record's reason and counts are the ones reported; the plain
                // copies must agree with them.
                let verified = match (self.opener.as_mut(), sealed_end) {
                    (Some(o), Some(end)) => o.open_end(&end).map_err(tampered),
                    _ => Err(upstream_err("sealed stream without a valid end record")),
                };
                Some(match verified {
                    Ok((f, u)) if f == finish_reason && u == usage => Ok(Piece::Done {
                        finish: f,
                        usage: Some(u),
                    }),
                    Ok(_) => Err(upstream_err(
                        "the finish reason or usage differs from the sealed end record",
                    )),
                    Err(e) => Err(e),
                })
            }
            (StreamEvent::Error { message, .. }, _) => Some(Err(ApiError::Upstream(message))),
            (_, _) => Some(Err(upstream_err("unexpected event for this stream"))),
        }
    }

    fn vllm(&mut self, data: &str) -> Vec<Result<Piece, ApiError>> {
        if data.trim() == "[DONE]" {
            return vec![Ok(Piece::Done {
                finish: self.finish.unwrap_or(Finish::Length),
                usage: self.usage,
            })];
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => return vec![Err(upstream_err(format!("unreadable event: {e}")))],
        };
        if let Some(m) = v["error"]["message"].as_str() {
            return vec![Err(ApiError::Upstream(m.to_string()))];
        }
        if let (Some(p), Some(c)) = (
            v["usage"]["prompt_tokens"].as_u64(),
            v["usage"]["completion_tokens"].as_u64(),
        ) {
            self.usage = Some(Usage {
                prompt_tokens: p as usize,
                completion_tokens: c as usize,
            });
        }
        let mut out = Vec::new();
        if let Some(choice) = v["choices"].get(0) {
            if let Some(t) = choice["text"].as_str() {
                if !t.is_empty() {
                    out.push(Ok(Piece::Text(t.to_string())));
                }
            }
            match choice["finish_reason"].as_str() {
                Some("length") => self.finish = Some(Finish::Length),
                Some(_) => self.finish = Some(Finish::Stop),
                None => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_and_crlf_events() {
        let mut p = SseParser::default();
        assert!(p.feed(b"data: {\"a\"").is_empty());
        assert_eq!(
            p.feed(b":1}\n\ndata: x\r\n\r\n: comment\n\n"),
            ["{\"a\":1}", "x"]
        );
    }
}
