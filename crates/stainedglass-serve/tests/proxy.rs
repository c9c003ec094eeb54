//! The OpenAI-compatible proxy on the bundled model: against our server (stop strings, streams,
//! refusals, model check), against a mock vLLM (the documented `/v1/completions` +
//! `prompt_embeds` request shape, read back without torch), and against a lying server
//! (downgraded or tampered sealed output is refused).

mod common;

use axum::routing::post;
use axum::{Json, Router};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use stainedglass_models::text_sgt::{TransformerCloak, TransformerCloakConfig};
use stainedglass_serve::crypto::ServerIdentity;
use stainedglass_serve::proxy::upstream::SseParser;
use stainedglass_serve::proxy::{self, ProxyConfig, ProxyState, Upstream, UpstreamKind};
use stainedglass_serve::server::{self, ServerConfig};
use stainedglass_text::artefact::{ArtefactOptions, EmbeddingDtype};
use stainedglass_text::StainedGlassTransformForText;
use std::io::Read;
use std::sync::{Arc, Mutex};

fn artefact(table: &Tensor) -> Arc<StainedGlassTransformForText> {
    let m = common::model();
    let cloak = TransformerCloak::from_base(TransformerCloakConfig::new(m.config().clone()), &m)
        .expect("cloak");
    Arc::new(
        StainedGlassTransformForText::new(
            cloak,
            table,
            common::tokenizer(),
            ArtefactOptions {
                base_model_name: "smollm2".into(),
                embedding_dtype: EmbeddingDtype::F32,
                transform_all_tokens: false,
            },
        )
        .expect("artefact"),
    )
}

fn upstream(kind: UpstreamKind, url: &str, protect: bool) -> Upstream {
    Upstream {
        kind,
        url: url.into(),
        api_key: None,
        model: "served-model".into(),
        protect_output: protect,
        vllm_dtype: DType::F32,
        server_key: None,
    }
}

async fn start_proxy(state: ProxyState) -> String {
    let (l, addr) = server::bind("127.0.0.1:0").await.expect("bind");
    tokio::spawn(server::run(
        l,
        proxy::router(Arc::new(state)),
        std::future::pending(),
    ));
    format!("http://{addr}")
}

async fn chat(url: &str, body: Value) -> (u16, Value, String) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("send");
    let s = r.status().as_u16();
    let text = r.text().await.expect("text");
    (s, serde_json::from_str(&text).unwrap_or(Value::Null), text)
}

fn question(extra: Value) -> Value {
    let mut v = json!({"model": "stainedglass", "messages": [{"role": "user", "content": "What is the capital of France?"}],
                       "temperature": 0, "max_tokens": 24});
    for (k, x) in extra.as_object().expect("obj") {
        v[k] = x.clone();
    }
    v
}

fn stream_text(raw: &str) -> (String, Vec<Value>) {
    let mut p = SseParser::default();
    let events = p.feed(raw.as_bytes());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk"))
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (text, chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_over_our_server_streams_stops_and_refuses() {
    let server = common::start_server(ServerConfig::default()).await;
    let m = common::model();
    let p = ProxyState::new(
        artefact(m.embedding_table()),
        upstream(UpstreamKind::Sgt, &server, true),
        ProxyConfig::default(),
    );
    p.check_upstream().await.expect("same model");
    let url = start_proxy(p).await;

    let (s, v, _) = chat(&url, question(json!({}))).await;
    assert_eq!(s, 200, "{v}");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(answer.contains("Paris"), "{answer}");
    assert_eq!(v["object"], "chat.completion");

    // The same question streamed, with usage.
    let (s, _, raw) = chat(
        &url,
        question(json!({"stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    assert_eq!(s, 200);
    let (text, chunks) = stream_text(&raw);
    assert_eq!(text, answer);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = &chunks.last().expect("usage")["usage"];
    assert!(
        usage["completion_tokens"].as_u64().expect("n") > 0,
        "{usage}"
    );

    // A stop string ends the reply just before it, plain and streamed.
    let cut = answer.find("Paris").expect("Paris");
    let (_, v, _) = chat(&url, question(json!({"stop": ["Paris"]}))).await;
    assert_eq!(v["choices"][0]["message"]["content"], answer[..cut]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let (_, _, raw) = chat(&url, question(json!({"stop": "Paris", "stream": true}))).await;
    assert_eq!(stream_text(&raw).0, answer[..cut]);

    // Text-content parts are accepted; what the proxy cannot honour is refused.
    let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]});
    let (s, v, _) = chat(&url, question(parts)).await;
    assert_eq!(s, 200, "{v}");
    for (bad, needle) in [
        (json!({"tools": [{"type": "function"}]}), "tools"),
        (json!({"n": 2}), "n = 1"),
        (json!({"messages": []}), "empty"),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "role",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "image_url",
        ),
        (json!({"temperature": 5}), "temperature"),
    ] {
        let (s, v, _) = chat(&url, question(bad)).await;
        assert_eq!(s, 400, "{v}");
        let msg = v["error"]["message"].as_str().expect("message");
        assert!(msg.contains(needle), "`{msg}` should mention `{needle}`");
    }
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let models: Value = reqwest::get(format!("{url}/v1/models"))
        .await
        .expect("m")
        .json()
        .await
        .expect("j");
    assert_eq!(models["data"][0]["id"], "stainedglass");

    // An artefact for another base model is refused at start-up.
    let other = (m.embedding_table() * 1.001).expect("scaled");
    let p = ProxyState::new(
        artefact(&other),
        upstream(UpstreamKind::Sgt, &server, false),
        ProxyConfig::default(),
    );
    let e = p.check_upstream().await.expect_err("mismatch").to_string();
    assert!(e.contains("trained for"), "{e}");
}

/// What a careless or hostile client sends: each answered with the right 4xx, fast, and the
/// proxy (and the server behind it) still answer a good request correctly afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_the_right_status_quickly() {
    let server = common::start_server(ServerConfig::default()).await;
    let m = common::model();
    let p = ProxyState::new(
        artefact(m.embedding_table()),
        upstream(UpstreamKind::Sgt, &server, true),
        ProxyConfig::default(),
    );
    p.check_upstream().await.expect("same model");
    let url = start_proxy(p).await;
    let words = "word ".repeat(9_000);
    let huge = "word ".repeat(600_000);
    let many: Vec<Value> = (0..100_000)
        .map(|_| json!({"role": "user", "content": "a"}))
        .collect();
    let cases = [
        (
            "9,000-word message",
            json!({"messages": [{"role": "user", "content": words}]}),
            400,
            "limit is",
        ),
        (
            "600,000-word message",
            json!({"messages": [{"role": "user", "content": huge}]}),
            400,
            "limit is",
        ),
        (
            "100,000 messages",
            json!({"messages": many}),
            400,
            "--max-messages",
        ),
        ("max_tokens 0", json!({"max_tokens": 0}), 400, "max_tokens"),
        (
            "max_tokens over the server's",
            json!({"max_tokens": 100_000}),
            400,
            "server's limit",
        ),
        ("top_p 5", json!({"top_p": 5}), 400, "top_p"),
        ("unknown model", json!({"model": "gpt-4"}), 404, "gpt-4"),
    ];
    for (name, extra, status, needle) in cases {
        let t0 = std::time::Instant::now();
        let (s, v, _) = chat(&url, question(extra)).await;
        let took = t0.elapsed();
        assert_eq!(s, status, "{name}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{name}: `{msg}` should mention `{needle}`"
        );
        assert!(v["error"]["code"].is_string(), "{name}: {v}");
        assert!(took.as_secs_f64() < 2.0, "{name} took {took:?}");
    }
    let (_, v, _) = chat(&url, question(json!({"model": "gpt-4"}))).await;
    assert_eq!(
        (&v["error"]["param"], &v["error"]["code"]),
        (&json!("model"), &json!("model_not_found"))
    );
    // A browser page cannot drive the proxy: text/plain needs no preflight, so it is refused.
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "text/plain")
        .body(question(json!({})).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 415);
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header("origin", "http://evil.example")
        .json(&question(json!({})))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    // A vanishing temperature is greedy, not garbage.
    let (s, greedy, _) = chat(&url, question(json!({}))).await;
    assert_eq!(s, 200, "{greedy}");
    let (s, tiny, _) = chat(&url, question(json!({"temperature": 1e-40}))).await;
    assert_eq!(s, 200, "{tiny}");
    assert_eq!(
        tiny["choices"][0]["message"]["content"],
        greedy["choices"][0]["message"]["content"]
    );
    let answer = greedy["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(answer.contains("Paris"), "{answer}");
}

/// Slow senders are cut off (headers, body) and a silent upstream is a 504, all within seconds;
/// the server and the proxy answer a good request afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_and_a_silent_upstream_time_out() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = common::model();
    let state = Arc::new(
        server::ServerState::new(
            m.clone(),
            common::tokenizer().stop_tokens(),
            ServerConfig::default(),
        )
        .expect("state"),
    );
    let (l, addr) = server::bind("127.0.0.1:0").await.expect("bind");
    let quick = server::Timeouts {
        headers: Duration::from_millis(500),
        body: Duration::from_millis(500),
        response: Duration::from_secs(60),
    };
    tokio::spawn(server::run_with(
        l,
        server::router(state),
        std::future::pending(),
        quick,
    ));
    // Headers that never end: the connection is closed.
    let t0 = Instant::now();
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "slow headers held {:?}",
        t0.elapsed()
    );
    // A body that never arrives: the request fails.
    let t0 = Instant::now();
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"emb")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 4"), "{head}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "slow body held {:?}",
        t0.elapsed()
    );

    // An upstream that accepts and never answers: 504 after the proxy's timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let p = ProxyState::new(
        artefact(m.embedding_table()),
        upstream(UpstreamKind::Sgt, &format!("http://{silent_addr}"), false),
        ProxyConfig {
            upstream_timeout: Duration::from_secs(1),
            ..ProxyConfig::default()
        },
    );
    let hung = start_proxy(p).await;
    let t0 = Instant::now();
    let (s, v, _) = chat(&hung, question(json!({}))).await;
    assert_eq!(s, 504, "{v}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );

    // Both still serve.
    let p = ProxyState::new(
        artefact(m.embedding_table()),
        upstream(UpstreamKind::Sgt, &format!("http://{addr}"), true),
        ProxyConfig::default(),
    );
    p.check_upstream().await.expect("same model");
    let url = start_proxy(p).await;
    let (s, v, _) = chat(&url, question(json!({}))).await;
    assert_eq!(s, 200, "{v}");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(answer.contains("Paris"), "{answer}");
}

/// Reads a `torch.save` payload with candle's pickle parser.
fn read_torch(bytes: &[u8]) -> Tensor {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("zip");
    let info = common::pickled_tensor_info(&mut zip);
    let mut data = Vec::new();
    zip.by_name(&info.path)
        .expect("data")
        .read_to_end(&mut data)
        .expect("read");
    Tensor::from_raw_buffer(&data, info.dtype, info.layout.dims(), &Device::Cpu).expect("tensor")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_speaks_vllm_prompt_embeds() {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let s2 = seen.clone();
    let mock = Router::new().route(
        "/v1/completions",
        post(move |Json(body): Json<Value>| {
            let seen = s2.clone();
            async move {
                seen.lock().expect("lock").push(body);
                let mut sse = String::new();
                for (text, finish) in [("The capital of France", None), (" is Paris.", None), (" More", Some("length"))] {
                    let c = json!({"id": "cmpl-1", "object": "text_completion", "model": "served-model",
                                   "choices": [{"index": 0, "text": text, "finish_reason": finish}]});
                    sse.push_str(&format!("data: {c}\n\n"));
                }
                let u = json!({"choices": [], "usage": {"prompt_tokens": 37, "completion_tokens": 9, "total_tokens": 46}});
                sse.push_str(&format!("data: {u}\n\ndata: [DONE]\n\n"));
                ([("content-type", "text/event-stream")], sse)
            }
        }),
    );
    let (l, addr) = server::bind("127.0.0.1:0").await.expect("bind");
    tokio::spawn(server::run(l, mock, std::future::pending()));
    let m = common::model();
    let sgt = artefact(m.embedding_table());
    let p = ProxyState::new(
        sgt.clone(),
        upstream(UpstreamKind::Vllm, &format!("http://{addr}"), false),
        ProxyConfig::default(),
    );
    p.check_upstream().await.expect("no check for vLLM");
    let url = start_proxy(p).await;

    let (s, v, _) = chat(&url, question(json!({"seed": 5}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The capital of France is Paris. More"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 9);
    let (_, _, raw) = chat(&url, question(json!({"stream": true, "stop": ["Paris"]}))).await;
    assert_eq!(stream_text(&raw).0, "The capital of France is ");

    // The request vLLM received: its documented shape, nothing else.
    let body = seen.lock().expect("lock")[0].clone();
    let mut keys: Vec<&str> = body
        .as_object()
        .expect("obj")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "max_tokens",
            "model",
            "prompt_embeds",
            "seed",
            "stream",
            "stream_options",
            "temperature",
            "top_p"
        ]
    );
    assert_eq!(body["model"], "served-model");
    assert_eq!(body["seed"], 5);
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["prompt_embeds"].as_str().expect("b64"))
        .expect("base64");
    let e = read_torch(&bytes);
    assert_eq!(e.dtype(), DType::F32);
    let enc = stainedglass_text::TokenizerWrapper::new(
        common::tokenizer(),
        stainedglass_text::WrapperOptions {
            add_generation_prompt: true,
            padding: stainedglass_text::Padding::None,
            ..Default::default()
        },
    )
    .encode(&stainedglass_text::PromptInput::Chat(vec![
        stainedglass_text::Message::new(
            stainedglass_text::Role::User,
            "What is the capital of France?",
        ),
    ]))
    .expect("encode");
    assert_eq!(e.dims(), [enc.input_ids.len(), 576]);
    // Scaffolding tokens are sent clean; content tokens are transformed.
    let rows = e.to_vec2::<f32>().expect("rows");
    let table = m.embedding_table();
    for (i, (&id, &nm)) in enc.input_ids.iter().zip(&enc.noise_mask).enumerate() {
        let clean = table
            .get(id as usize)
            .and_then(|r| r.to_vec1::<f32>())
            .expect("row");
        assert_eq!(rows[i] == clean, nm == 0, "position {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgraded_or_tampered_sealed_output_is_refused() {
    // A valid point (the X25519 base point) announced twice: the second announcement re-keys.
    let base_point = "CQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let rekey = format!(
        "{}\n\ndata: {}",
        json!({"type": "key", "server_key": base_point}),
        json!({"type": "key", "server_key": base_point})
    );
    for ev in [
        json!({"type": "token", "token": 5}).to_string(),
        json!({"type": "key", "server_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="})
            .to_string(),
        rekey,
    ] {
        let event = ev.clone();
        let mock = Router::new().route(
            "/v1/generate",
            post(move || {
                let ev = ev.clone();
                async move {
                    let done = json!({"type": "done", "finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 1}});
                    let sealed = json!({"type": "sealed", "sealed": "AAAA"});
                    ([("content-type", "text/event-stream")], format!("data: {ev}\n\ndata: {sealed}\n\ndata: {done}\n\n"))
                }
            }),
        );
        let (l, addr) = server::bind("127.0.0.1:0").await.expect("bind");
        tokio::spawn(server::run(l, mock, std::future::pending()));
        let m = common::model();
        let pinned = ServerIdentity::generate().expect("identity").public_b64();
        let p = ProxyState::new(
            artefact(m.embedding_table()),
            Upstream {
                server_key: Some(pinned),
                ..upstream(UpstreamKind::Sgt, &format!("http://{addr}"), true)
            },
            ProxyConfig::default(),
        );
        let url = start_proxy(p).await;
        let (s, v, _) = chat(&url, question(json!({}))).await;
        assert_eq!(s, 502, "{event}: {v}");
        let msg = v["error"]["message"].as_str().expect("msg");
        assert!(
            msg.contains("plain tokens") || msg.contains("degenerate") || msg.contains("tampered"),
            "{msg}"
        );
    }
}

/// A server with another identity than the pinned one is refused at start-up, and its sealed
/// replies cannot be opened: it cannot answer in the pinned server's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_identity_cannot_answer_for_the_pinned_one() {
    let impostor = common::start_server(ServerConfig::default()).await;
    let m = common::model();
    let pinned = ServerIdentity::generate().expect("identity").public_b64();
    let pinning = || {
        ProxyState::new(
            artefact(m.embedding_table()),
            Upstream {
                server_key: Some(pinned.clone()),
                ..upstream(UpstreamKind::Sgt, &impostor, true)
            },
            ProxyConfig::default(),
        )
    };
    let e = pinning().check_upstream().await.expect_err("another key");
    assert!(e.to_string().contains("--server-key pins"), "{e}");
    // Without the start-up check, the impostor's sealed reply fails to open.
    let url = start_proxy(pinning()).await;
    let (s, v, _) = chat(&url, question(json!({}))).await;
    assert_eq!(s, 502, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("tampered") || msg.contains("failed to open"),
        "{msg}"
    );
}
