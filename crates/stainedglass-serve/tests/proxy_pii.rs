//! Personal data through the proxy: a mirror upstream reads the prompt back from the
//! embeddings it receives (nearest neighbour against the bundled model's table, which reads an
//! untrained SGT exactly) and answers with the last user message word for word. So the test
//! sees what the server could read and the reply mapped back, plain and streamed, for each
//! `--pii` mode.

mod common;

use axum::body::Bytes;
use axum::routing::post;
use candle_core::{DType, Tensor, D};
use serde_json::{json, Value};
use stainedglass_models::text_sgt::{TransformerCloak, TransformerCloakConfig};
use stainedglass_pii::{Detector, DetectorConfig, Lexicon, PiiMode};
use stainedglass_serve::embeddings::{self, EmbeddingLimits};
use stainedglass_serve::proxy::upstream::SseParser;
use stainedglass_serve::proxy::{self, PiiGuard, ProxyConfig, ProxyState, Upstream, UpstreamKind};
use stainedglass_serve::server;
use stainedglass_text::artefact::{ArtefactOptions, EmbeddingDtype};
use stainedglass_text::StainedGlassTransformForText;
use std::sync::{Arc, Mutex};

fn artefact() -> Arc<StainedGlassTransformForText> {
    let m = common::model();
    let cloak = TransformerCloak::from_base(TransformerCloakConfig::new(m.config().clone()), &m)
        .expect("cloak");
    Arc::new(
        StainedGlassTransformForText::new(
            cloak,
            m.embedding_table(),
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

/// Nearest row (L2) of the embedding table for every position.
fn read_back(emb: &Tensor) -> Vec<u32> {
    let table = common::model()
        .embedding_table()
        .to_dtype(DType::F32)
        .expect("f32");
    let norms = table.sqr().expect("sqr").sum(1).expect("sum");
    let dots = emb.matmul(&table.t().expect("t")).expect("matmul");
    let score = (dots * 2.0)
        .expect("x2")
        .broadcast_sub(&norms.unsqueeze(0).expect("row"))
        .expect("sub");
    score
        .argmax(D::Minus1)
        .expect("argmax")
        .to_vec1::<u32>()
        .expect("ids")
}

/// The text of the last user message in a templated prompt read back.
fn last_user_message(view: &str) -> String {
    let at = view.rfind("<|im_start|>user\n").expect("a user turn") + "<|im_start|>user\n".len();
    let rest = &view[at..];
    rest[..rest.find("<|im_end|>").unwrap_or(rest.len())].to_string()
}

/// A mirror of `sgt serve`: records what it reads, answers with the last user message.
async fn start_mirror(views: Arc<Mutex<Vec<String>>>) -> String {
    let app = axum::Router::new()
        .route(
            "/v1/generate",
            post(move |body: Bytes| {
                let views = views.clone();
                async move {
                    let v: Value = serde_json::from_slice(&body).expect("JSON");
                    let limits = EmbeddingLimits {
                        hidden_size: 576,
                        max_sequence_length: 8192,
                    };
                    let emb = embeddings::decode(v["embeddings"].as_str().expect("b64"), limits)
                        .expect("embeddings");
                    let tok = common::tokenizer();
                    let view = tok.decode(&read_back(&emb), false).expect("decode");
                    let reply = tok.encode(&last_user_message(&view)).expect("encode");
                    views.lock().expect("lock").push(view);
                    let mut sse = String::new();
                    for t in reply {
                        sse.push_str(&format!(
                            "data: {}\n\n",
                            json!({"type": "token", "token": t})
                        ));
                    }
                    let done = json!({"type": "done", "finish_reason": "stop",
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1}});
                    sse.push_str(&format!("data: {done}\n\n"));
                    ([("content-type", "text/event-stream")], sse)
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
    let (l, addr) = server::bind("127.0.0.1:0").await.expect("bind");
    tokio::spawn(server::run(l, app, std::future::pending()));
    format!("http://{addr}")
}

async fn start_proxy(upstream: &str, mode: PiiMode) -> String {
    let mut state = ProxyState::new(
        artefact(),
        Upstream {
            kind: UpstreamKind::Sgt,
            url: upstream.into(),
            api_key: None,
            model: String::new(),
            protect_output: false,
            vllm_dtype: DType::F32,
            server_key: None,
        },
        ProxyConfig {
            default_max_tokens: 512,
            ..ProxyConfig::default()
        },
    );
    if mode != PiiMode::Off {
        let lex = Lexicon::load(&stainedglass_test_support::asset("pii")).expect("word lists");
        let d = Detector::new(lex, DetectorConfig::default());
        state = state.with_pii(PiiGuard::new(mode, d));
    }
    let (l, addr) = server::bind("127.0.0.1:0").await.expect("bind");
    tokio::spawn(server::run(
        l,
        proxy::router(Arc::new(state)),
        std::future::pending(),
    ));
    format!("http://{addr}")
}

const FIRST: &str = "Write to Michael Roy about the contract.";
const LAST: &str =
    "Michael Roy's e-mail is michael.roy@example.com and the contract is due 2026-04-15.";

/// A conversation naming the same person twice; the reply (plain, then streamed).
async fn converse(proxy: &str) -> (String, String) {
    let messages = json!([
        {"role": "user", "content": FIRST},
        {"role": "assistant", "content": "Sure, what should it say?"},
        {"role": "user", "content": LAST},
    ]);
    let client = reqwest::Client::new();
    let url = format!("{proxy}/v1/chat/completions");
    let plain: Value = client
        .post(&url)
        .json(&json!({"messages": messages, "temperature": 0}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("JSON");
    let raw = client
        .post(&url)
        .json(&json!({"messages": messages, "temperature": 0, "stream": true}))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    let mut p = SseParser::default();
    let streamed: String = p
        .feed(raw.as_bytes())
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .filter_map(|e| {
            let v: Value = serde_json::from_str(e).ok()?;
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    let content = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("{plain}"))
        .to_string();
    (content, streamed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_never_reaches_the_server_and_comes_back_in_the_reply() {
    let views = Arc::new(Mutex::new(Vec::new()));
    let mirror = start_mirror(views.clone()).await;

    // Off: the server reads the values back, word for word.
    let off = start_proxy(&mirror, PiiMode::Off).await;
    let (plain, streamed) = converse(&off).await;
    assert_eq!((plain.as_str(), streamed.as_str()), (LAST, LAST));
    let seen = std::mem::take(&mut *views.lock().expect("lock"));
    assert!(seen
        .iter()
        .all(|v| v.contains("Michael Roy") && v.contains("2026-04-15")));

    // Pseudonymise: the server reads stand-ins only, the same one for the same name in both
    // messages; the caller gets the original values back, plain and streamed.
    let on = start_proxy(&mirror, PiiMode::Pseudonymize).await;
    let (plain, streamed) = converse(&on).await;
    assert_eq!(plain, LAST);
    assert_eq!(streamed, LAST);
    let seen = std::mem::take(&mut *views.lock().expect("lock"));
    assert_eq!(seen.len(), 2);
    let mut stand_ins = Vec::new();
    for v in &seen {
        for value in ["Michael", "Roy", "michael.roy@example.com", "2026-04-15"] {
            assert!(!v.contains(value), "the server read {value:?} in {v:?}");
        }
        let first = &v[v.find("Write to ").expect("first message") + "Write to ".len()..];
        let name = &first[..first.find(" about").expect("about")];
        assert!(
            last_user_message(v).starts_with(&format!("{name}'s e-mail is ")),
            "one stand-in for one name across messages: {v:?}"
        );
        stand_ins.push(name.to_string());
    }
    assert_ne!(
        stand_ins[0], stand_ins[1],
        "fresh stand-ins for every request"
    );

    // Redact: kinds in brackets reach the server and the caller; nothing is mapped back.
    let redact = start_proxy(&mirror, PiiMode::Redact).await;
    let (plain, _) = converse(&redact).await;
    assert_eq!(
        plain,
        "[PERSON]'s e-mail is [EMAIL] and the contract is due [DATE]."
    );
    let seen = std::mem::take(&mut *views.lock().expect("lock"));
    assert!(seen.iter().all(|v| !v.contains("Michael")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_prompts_are_refused_before_any_scan() {
    let views = Arc::new(Mutex::new(Vec::new()));
    let mirror = start_mirror(views.clone()).await;
    let on = start_proxy(&mirror, PiiMode::Pseudonymize).await;
    let client = reqwest::Client::new();
    // 3.5 MB of e-mail addresses (spans everywhere), then the densest prompt under the limit.
    let huge = "a.b@example.com ".repeat(220_000);
    let dense = "Michael Roy a.b@example.com 2026-04-15 ".repeat(1_500);
    for (content, want) in [(huge, 400), (dense, 400)] {
        let t0 = std::time::Instant::now();
        let r = client
            .post(format!("{on}/v1/chat/completions"))
            .json(&json!({"messages": [{"role": "user", "content": content}]}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), want);
        let msg = r.text().await.expect("text");
        assert!(msg.contains("limit is"), "{msg}");
        assert!(
            !msg.contains("Michael") && !msg.contains("example.com"),
            "{msg}"
        );
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(3),
            "took {:?}",
            t0.elapsed()
        );
    }
    assert!(
        views.lock().expect("lock").is_empty(),
        "nothing reached the server"
    );
}
