//! Property tests of every parser that reads bytes from a network peer: arbitrary input gives
//! a value or an error, never a panic. Each property runs 100,000 cases, half of them raw
//! bytes and half near-valid inputs (the parser's own format with random fields), so that
//! the checks past the syntax are reached too.

use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use stainedglass_serve::embeddings::{self, EmbeddingLimits};
use stainedglass_serve::protocol::{GenerateRequest, StreamEvent};
use stainedglass_serve::proxy::openai::ChatRequest;
use stainedglass_serve::proxy::upstream::SseParser;

const CASES: u32 = 100_000;

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES / 2,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Any JSON value, a few levels deep, with keys drawn from `keys`.
fn json_value(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((prop::sample::select(keys), inner), 0..5).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

const CHAT_KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "include_usage",
    "n",
    "tools",
    "logprobs",
    "user",
    "system",
];

#[test]
fn chat_requests_never_panic() {
    let mut r = runner();
    let seen = std::cell::Cell::new(0u32);
    r.run(&prop::collection::vec(any::<u8>(), 0..512), |b| {
        let _ = ChatRequest::parse(&b);
        seen.set(seen.get() + 1);
        Ok(())
    })
    .expect("raw bytes");
    assert_eq!(seen.get(), CASES / 2, "every case ran");
    let near = (
        json_value(CHAT_KEYS),
        prop::collection::vec(json_value(CHAT_KEYS), 0..4),
    )
        .prop_map(|(mut v, msgs)| {
            if let Value::Object(m) = &mut v {
                m.insert("messages".into(), Value::from(msgs));
            }
            v
        });
    r.run(&near, |v| {
        let _ = ChatRequest::parse(v.to_string().as_bytes());
        Ok(())
    })
    .expect("near-valid requests");
}

const LIMITS: EmbeddingLimits = EmbeddingLimits {
    hidden_size: 4,
    max_sequence_length: 8,
};

#[test]
fn embedding_payloads_never_panic() {
    let mut r = runner();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    r.run(&prop::collection::vec(any::<u8>(), 0..256), |b| {
        let _ = embeddings::decode(&b64(&b), LIMITS);
        let _ = embeddings::decode(&String::from_utf8_lossy(&b), LIMITS);
        Ok(())
    })
    .expect("raw bytes");
    // A valid safetensors header with a random shape, dtype and data length.
    let near = (
        prop::sample::select(&["F32", "F16", "BF16", "I64", "U8", "F64"][..]),
        prop::collection::vec(0usize..12, 0..4),
        prop::collection::vec(any::<u8>(), 0..200),
    );
    r.run(&near, |(dtype, shape, data)| {
        let n = data.len();
        let header = json!({"x": {"dtype": dtype, "shape": shape, "data_offsets": [0, n]}});
        let h = header.to_string();
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(&data);
        let _ = embeddings::decode(&b64(&bytes), LIMITS);
        Ok(())
    })
    .expect("near-valid safetensors");
}

const GENERATE_KEYS: &[&str] = &[
    "embeddings",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stream",
    "repetition_penalty",
    "finish_reason",
    "usage",
    "token",
    "sealed",
    "server_key",
    "event",
    "message",
    "status",
    "prompt_tokens",
    "completion_tokens",
];

#[test]
fn server_messages_and_event_streams_never_panic() {
    let mut r = runner();
    r.run(&prop::collection::vec(any::<u8>(), 0..512), |b| {
        let _ = serde_json::from_slice::<GenerateRequest>(&b);
        let _ = serde_json::from_slice::<StreamEvent>(&b);
        let mut p = SseParser::default();
        for chunk in b.chunks(7) {
            let _ = p.feed(chunk);
        }
        Ok(())
    })
    .expect("raw bytes");
    r.run(&json_value(GENERATE_KEYS), |v| {
        let _ = serde_json::from_value::<GenerateRequest>(v.clone());
        let _ = serde_json::from_value::<StreamEvent>(v);
        Ok(())
    })
    .expect("near-valid messages");
}
