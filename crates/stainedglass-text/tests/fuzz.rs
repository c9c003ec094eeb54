//! Property tests of what the client side reads from its user and from disk: any conversation
//! (any roles, any text, empty or huge numbers of messages) gives an encoding or an error from
//! the tokenizer wrapper, and any `config.json` an error or a config — never a panic. The
//! wrapper's masks also keep their invariants. 100,000 cases each.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use stainedglass_text::artefact::ArtefactConfig;
use stainedglass_text::{
    Message, PromptInput, Role, TextTokenizer, TokenizerWrapper, WrapperOptions,
};
use std::sync::Arc;

const CASES: u32 = 100_000;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(&[Role::System, Role::User, Role::Assistant][..])
}

/// Text with template look-alikes, multi-byte characters and control characters mixed in.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        ".{0,8}",
        Just("<|im_start|>".to_string()),
        Just("<|im_end|>".to_string()),
        Just("{{ messages }}".to_string()),
        Just("\n\n".to_string()),
        Just("é中🙂\u{200b}".to_string()),
        "[ \t\r\n]{0,4}",
    ];
    prop::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

#[test]
fn the_wrapper_encodes_any_conversation_or_refuses_it() {
    let tok = Arc::new(
        TextTokenizer::from_model_path(&stainedglass_test_support::smollm2_gguf())
            .expect("tokenizer"),
    );
    let chat = TokenizerWrapper::new(
        tok.clone(),
        WrapperOptions {
            include_labels: true,
            ..WrapperOptions::default()
        },
    );
    let conv = prop::collection::vec((role(), text()), 0..5);
    runner(CASES)
        .run(&conv, |msgs| {
            let messages: Vec<Message> =
                msgs.into_iter().map(|(r, t)| Message::new(r, t)).collect();
            if let Ok(e) = chat.encode(&PromptInput::Chat(messages)) {
                let n = e.input_ids.len();
                prop_assert_eq!(e.noise_mask.len(), n);
                prop_assert_eq!(e.attention_mask.len(), n);
                prop_assert!(e.noise_mask.iter().all(|&m| m <= 1));
                let loss = e.loss_mask.as_ref().map(Vec::len);
                prop_assert_eq!(loss, Some(n));
            }
            Ok(())
        })
        .expect("conversations");
}

#[test]
fn artefact_configs_parse_or_fail_cleanly() {
    let field = prop::sample::select(
        &[
            "format",
            "format_version",
            "noise_layer",
            "base_model",
            "noise_mask",
            "files",
            "embedding_dtype",
            "kind",
            "config",
            "base",
            "std",
            "scale",
            "estimator_layers",
            "percent_to_mask",
            "embedding_sha256",
            "vocab_size",
            "hidden_size",
        ][..],
    );
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,8}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(4, 32, 5, move |inner| {
        prop::collection::vec((field.clone(), inner), 0..6).prop_map(|kv| {
            serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        })
    });
    let mut r = runner(CASES / 2);
    r.run(&value, |v| {
        let _ = serde_json::from_value::<ArtefactConfig>(v);
        Ok(())
    })
    .expect("near-valid configs");
    r.run(&prop::collection::vec(any::<u8>(), 0..512), |b| {
        let _ = serde_json::from_slice::<ArtefactConfig>(&b);
        Ok(())
    })
    .expect("raw bytes");
}
