//! `sgt generate` and `sgt tokenize` on the bundled SmolLM2.

mod common;

use common::{fails, ok};

#[test]
fn greedy_chat_answer_names_paris() {
    let out = ok(&[
        "generate",
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        "24",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let text = v["text"].as_str().expect("text");
    assert!(text.contains("Paris"), "answer: {text}");
    assert_eq!(v["finish_reason"], "stop");
}

#[test]
fn raw_mode_continues_text_and_seeded_sampling_repeats() {
    let args = [
        "generate",
        "--raw",
        "--prompt",
        "Once upon a time",
        "--max-tokens",
        "12",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "5",
        "--json",
    ];
    let a: serde_json::Value = serde_json::from_str(ok(&args).trim()).expect("json");
    let b: serde_json::Value = serde_json::from_str(ok(&args).trim()).expect("json");
    assert_eq!(a["tokens"], b["tokens"]);
    assert_eq!(a["tokens"].as_array().expect("tokens").len(), 12);
}

#[test]
fn tokenize_shows_ids_and_masks() {
    let dir = tempfile::tempdir().expect("tmp");
    let conv = dir.path().join("chat.json");
    std::fs::write(
        &conv,
        r#"[{"role":"user","content":"Hi there"},{"role":"assistant","content":"Hello!"}]"#,
    )
    .expect("write");
    let out = ok(&[
        "tokenize",
        "--messages",
        conv.to_str().expect("path"),
        "--include-labels",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let ids = v["input_ids"].as_array().expect("ids");
    let noise = v["noise_mask"].as_array().expect("noise");
    let loss = v["loss_mask"].as_array().expect("loss");
    let tokens = v["tokens"].as_array().expect("tokens");
    assert_eq!(ids.len(), noise.len());
    let pick = |mask: &Vec<serde_json::Value>| -> String {
        tokens
            .iter()
            .zip(mask)
            .filter(|(_, m)| m.as_u64() == Some(1))
            .map(|(t, _)| t.as_str().expect("token"))
            .collect()
    };
    assert_eq!(pick(noise), "Hi thereHello!");
    assert_eq!(pick(loss), "Hello!<|im_end|>");
    let raw = ok(&[
        "tokenize",
        "--raw",
        "--prompt",
        "Hello world! The year 2024 has 366 days.",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(raw.trim()).expect("json");
    assert_eq!(v["input_ids"][0], 19556);
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    let err = |o: std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    let e = err(fails(&[
        "generate",
        "--model",
        "/nonexistent.gguf",
        "--prompt",
        "x",
    ]));
    assert!(e.contains("not found"), "{e}");
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"[{"role":"narrator","content":"x"}]"#).expect("write");
    let e = err(fails(&[
        "tokenize",
        "--messages",
        bad.to_str().expect("p"),
        "--json",
    ]));
    assert!(e.contains("unknown role `narrator`"), "{e}");
    std::fs::write(&bad, "[]").expect("write");
    let e = err(fails(&["tokenize", "--messages", bad.to_str().expect("p")]));
    assert!(e.contains("no messages"), "{e}");
    let e = err(fails(&[
        "tokenize",
        "--prompt",
        "a b c d e f g h",
        "--max-length",
        "4",
    ]));
    assert!(e.contains("max_length 4"), "{e}");
    let e = err(fails(&["generate", "--prompt", "x", "--temperature=-1"]));
    assert!(e.contains("temperature"), "{e}");
}
