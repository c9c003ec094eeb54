//! The inference server on the bundled model: answers equal direct generation (plain, streamed
//! and sealed), and every bad request gets the right 4xx while the server keeps serving.

mod common;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use stainedglass_models::llm::{Llama, Prompt, SamplingParams};
use stainedglass_serve::crypto::{ClientKey, ServerKey};
use stainedglass_serve::embeddings;
use stainedglass_serve::proxy::upstream::SseParser;
use stainedglass_serve::server::{ServerConfig, ServerState};

const KEY: &str = "secret-key";

fn prompt_embeddings() -> Tensor {
    embeddings_of("What is the capital of France?")
}

fn embeddings_of(question: &str) -> Tensor {
    let tok = common::tokenizer();
    let text = format!("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n");
    let ids = tok.encode(&text).expect("ids");
    let ids = Tensor::new(ids.as_slice(), &Device::Cpu).expect("t");
    common::model()
        .embed(&ids.unsqueeze(0).expect("u"))
        .expect("embed")
        .squeeze(0)
        .expect("s")
}

fn direct(e: &Tensor, max: usize) -> Vec<u32> {
    let params = SamplingParams {
        max_new_tokens: max,
        stop_tokens: common::tokenizer().stop_tokens(),
        ..SamplingParams::default()
    };
    common::model()
        .generate(Prompt::Embeds(e), &params, |_| true)
        .expect("generate")
        .tokens
}

fn config() -> ServerConfig {
    ServerConfig {
        api_keys: vec![KEY.into()],
        max_body_bytes: 1 << 20,
        max_sequence_length: 64,
        max_new_tokens: 16,
        max_concurrency: 1,
        max_queue: 0,
        prefix_cache: true,
        model_name: "smollm2".into(),
        identity: None,
    }
}

async fn post(url: &str, body: impl Into<reqwest::Body>, key: Option<&str>) -> (u16, Value) {
    try_post(url, body, key).await.expect("send")
}

async fn try_post(
    url: &str,
    body: impl Into<reqwest::Body>,
    key: Option<&str>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut r = reqwest::Client::new()
        .post(format!("{url}/v1/generate"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let resp = r.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn req(e: &Tensor, extra: Value) -> String {
    let mut v = json!({"embeddings": embeddings::encode(e).expect("enc"), "max_tokens": 12});
    for (k, x) in extra.as_object().expect("obj") {
        v[k] = x.clone();
    }
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_direct_generation_plain_streamed_and_sealed() {
    let url = common::start_server(config()).await;
    let e = prompt_embeddings();
    let want = direct(&e, 12);
    let text = common::tokenizer().decode(&want, true).expect("decode");
    assert!(text.contains("Paris"), "{text}");

    let (s, v) = post(&url, req(&e, json!({})), Some(KEY)).await;
    assert_eq!(s, 200, "{v}");
    let got: Vec<u32> = serde_json::from_value(v["tokens"].clone()).expect("tokens");
    assert_eq!(got, want);
    assert_eq!(v["usage"]["prompt_tokens"], e.dim(0).expect("dim"));

    // Streamed.
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/generate"))
        .bearer_auth(KEY)
        .body(req(&e, json!({"stream": true})))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let mut parser = SseParser::default();
    let events = parser.feed(&resp.bytes().await.expect("bytes"));
    let ids: Vec<u32> = events
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["type"] == "token")
        .map(|v| v["token"].as_u64().expect("id") as u32)
        .collect();
    assert_eq!(ids, want);
    assert!(events.last().expect("done").contains("\"done\""));

    // Sealed: the body carries no plain ids, and the client's key opens them in order.
    let key = ClientKey::generate().expect("key");
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/generate"))
        .bearer_auth(KEY)
        .header("x-sgt-client-key", key.public_b64())
        .body(req(&e, json!({})))
        .send()
        .await
        .expect("send");
    let v: Value = resp.json().await.expect("json");
    assert!(v.get("tokens").is_none(), "{v}");
    // The server's identity, as a proxy reads (or pins) it.
    let info: Value = reqwest::Client::new()
        .get(format!("{url}/v1/model"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("model")
        .json()
        .await
        .expect("json");
    let identity = ServerKey::parse(info["server_key"].as_str().expect("server key")).expect("key");
    let mut opener = key
        .opener(v["server_key"].as_str().expect("key"), &identity)
        .expect("opener");
    let opened: Vec<u32> = v["sealed"]
        .as_array()
        .expect("sealed")
        .iter()
        .map(|s| opener.open_token(s.as_str().expect("s")).expect("open"))
        .collect();
    assert_eq!(opened, want);
    opener
        .open_end(v["sealed_end"].as_str().expect("end"))
        .expect("end record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_4xx_and_the_server_keeps_serving() {
    let url = common::start_server(config()).await;
    let e = prompt_embeddings();
    let ok = req(&e, json!({"max_tokens": 2}));
    let cases: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        ("no key", ok.clone(), None, 401, "API key"),
        ("wrong key", ok.clone(), Some("nope"), 401, "API key"),
        (
            "malformed JSON",
            "{\"embeddings\": ".into(),
            Some(KEY),
            400,
            "invalid request JSON",
        ),
        (
            "unknown field",
            req(&e, json!({"prompt": "hi"})),
            Some(KEY),
            400,
            "unknown field `prompt`",
        ),
        (
            "bad base64",
            json!({"embeddings": "***", "max_tokens": 2}).to_string(),
            Some(KEY),
            400,
            "base64",
        ),
        (
            "not safetensors",
            json!({"embeddings": "aGVsbG8gd29ybGQ=", "max_tokens": 2}).to_string(),
            Some(KEY),
            400,
            "safetensors",
        ),
        (
            "wrong hidden size",
            req(
                &Tensor::zeros((4, 512), DType::F32, &Device::Cpu).expect("z"),
                json!({}),
            ),
            Some(KEY),
            422,
            "hidden size 512",
        ),
        (
            "NaN",
            req(
                &(e.clone() / 0.0)
                    .expect("nan")
                    .affine(0.0, f64::NAN)
                    .expect("nan"),
                json!({}),
            ),
            Some(KEY),
            422,
            "non-finite",
        ),
        (
            "huge finite values",
            req(&e.affine(0.0, 3e38).expect("huge"), json!({})),
            Some(KEY),
            422,
            "input embeddings stay within",
        ),
        (
            "too long",
            req(
                &Tensor::zeros((65, 576), DType::F32, &Device::Cpu).expect("z"),
                json!({}),
            ),
            Some(KEY),
            422,
            "accepts 1 to 64",
        ),
        (
            "too many tokens",
            req(&e, json!({"max_tokens": 17})),
            Some(KEY),
            422,
            "1 to 16",
        ),
        (
            "bad temperature",
            req(&e, json!({"temperature": -1.0})),
            Some(KEY),
            422,
            "temperature",
        ),
        (
            "too large",
            format!("{{\"embeddings\": \"{}\"}}", "A".repeat(2 << 20)),
            Some(KEY),
            413,
            "limit",
        ),
    ];
    for (name, body, key, status, needle) in cases {
        // The 2 MB body is refused by its Content-Length; the server reads and drops it before
        // answering, so the client, still writing, gets the 413 rather than a broken pipe.
        let (s, v) = try_post(&url, body, key)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(s, status, "{name}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{name}: `{msg}` should mention `{needle}`"
        );
        // Still serving.
        let (s, v) = post(&url, ok.clone(), Some(KEY)).await;
        assert_eq!(s, 200, "after {name}: {v}");
    }
    // Health needs no key; the model route does.
    let h = reqwest::get(format!("{url}/health")).await.expect("health");
    assert_eq!(h.status(), 200);
    let m = reqwest::get(format!("{url}/v1/model"))
        .await
        .expect("model");
    assert_eq!(m.status(), 401);
    let m: Value = reqwest::Client::new()
        .get(format!("{url}/v1/model"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("model")
        .json()
        .await
        .expect("json");
    assert_eq!(m["hidden_size"], 576);
    assert_eq!(
        m["embedding_sha256"],
        stainedglass_text::artefact::embedding_sha256(common::model().embedding_table())
            .expect("hash")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_refuses_with_429_instead_of_queueing_forever() {
    // One slot, no queue: while a streamed generation holds the slot, a second request is refused.
    let url = common::start_server(ServerConfig {
        max_new_tokens: 16,
        ..config()
    })
    .await;
    let e = prompt_embeddings();
    let mut first = reqwest::Client::new()
        .post(format!("{url}/v1/generate"))
        .bearer_auth(KEY)
        .body(req(
            &e,
            json!({"stream": true, "max_tokens": 16, "temperature": 1.0, "seed": 3}),
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(first.status(), 200);
    // The first event means the generation is running and holds the slot.
    let chunk = first.chunk().await.expect("chunk");
    assert!(chunk.is_some());
    let refused = reqwest::Client::new()
        .post(format!("{url}/v1/generate"))
        .bearer_auth(KEY)
        .body(req(&e, json!({"max_tokens": 2})))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    drop(first);
    // The slot comes back once the first request is gone.
    let mut status = 0;
    for _ in 0..100 {
        status = post(&url, req(&e, json!({"max_tokens": 2})), Some(KEY))
            .await
            .0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_decoded_together_and_all_answered() {
    let url = common::start_server(ServerConfig {
        max_concurrency: 4,
        max_queue: 16,
        ..config()
    })
    .await;
    let e = prompt_embeddings();
    let body = req(&e, json!({"max_tokens": 12}));
    let calls = (0..6).map(|_| post(&url, body.clone(), Some(KEY)));
    let tok = common::tokenizer();
    for (s, v) in futures_util::future::join_all(calls).await {
        assert_eq!(s, 200, "{v}");
        let ids: Vec<u32> = serde_json::from_value(v["tokens"].clone()).expect("tokens");
        let text = tok.decode(&ids, true).expect("decode");
        assert!(text.contains("Paris"), "{text}");
    }
}

/// Continuous batching: a request that arrives while another is being decoded joins the running
/// batch at the next step and is answered long before the first one ends (with a batch that
/// only takes requests between whole batches it would wait for all of the first reply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_joins_the_running_batch_instead_of_waiting_for_it() {
    let url = common::start_server(ServerConfig {
        max_concurrency: 2,
        max_new_tokens: 48,
        ..config()
    })
    .await;
    let long = embeddings_of("Write a long story about a dragon who learns to bake bread.");
    let mut first = reqwest::Client::new()
        .post(format!("{url}/v1/generate"))
        .bearer_auth(KEY)
        .body(req(&long, json!({"stream": true, "max_tokens": 48})))
        .send()
        .await
        .expect("send");
    assert_eq!(first.status(), 200);
    let mut parser = SseParser::default();
    let mut events = parser.feed(&first.chunk().await.expect("chunk").expect("a first event"));
    // Read the first reply to its end in the background, noting when it ends.
    let reader = tokio::spawn(async move {
        while !events.iter().any(|e| e.contains("\"done\"")) {
            match first.chunk().await.expect("chunk") {
                Some(c) => events.extend(parser.feed(&c)),
                None => break,
            }
        }
        (std::time::Instant::now(), events)
    });
    let (s, v) = post(
        &url,
        req(&prompt_embeddings(), json!({"max_tokens": 2})),
        Some(KEY),
    )
    .await;
    let second_done = std::time::Instant::now();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    let (first_done, events) = reader.await.expect("reader");
    let tokens = events.iter().filter(|e| e.contains("\"token\"")).count();
    assert_eq!(tokens, 48, "the story runs to its budget");
    assert!(
        second_done < first_done,
        "the second request waited for the first one's whole reply"
    );
}

/// A server over the model's weights as stored (what `sgt serve` runs by default) publishes the
/// same embedding-table hash as the f32 model, so artefacts made against either are accepted,
/// computed row by row without making the f32 table.
#[test]
fn a_server_over_stored_weights_publishes_the_f32_tables_hash() {
    let stored = Llama::load_stored(&common::gguf(), &candle_core::Device::Cpu).expect("stored");
    let state = ServerState::new(
        std::sync::Arc::new(stored),
        common::tokenizer().stop_tokens(),
        config(),
    )
    .expect("state");
    assert_eq!(
        state.info().embedding_sha256,
        stainedglass_text::artefact::embedding_sha256(common::model().embedding_table())
            .expect("hash")
    );
}

/// A client that writes its whole oversize body before reading (slowly, so that a server that
/// answered at the headers and closed would have reset the connection by then) reads the 413:
/// the server drains a body up to four times its limit. One far over that is cut off at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_body_written_in_full_reads_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = common::start_server(config()).await;
    let addr = url.trim_start_matches("http://").to_string();
    let len = 3 << 19; // 1.5 MiB against the 1 MiB limit
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/generate HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {len}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("headers");
    let chunk = vec![b'A'; 64 << 10];
    for _ in 0..len / chunk.len() {
        s.write_all(&chunk)
            .await
            .expect("the server reads the refused body");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.expect("the answer");
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("limit"), "{reply}");

    // Far over the limit: answered (or cut off) without reading it.
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/generate HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n\r\n",
        1u64 << 40
    );
    s.write_all(head.as_bytes()).await.expect("headers");
    let mut reply = String::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        s.read_to_string(&mut reply),
    )
    .await
    .expect("the server does not wait for a terabyte");
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
}
