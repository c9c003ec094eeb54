//! The tokenizer, chat template and wrapper on the bundled SmolLM2 GGUF.

use stainedglass_text::{
    Error, Instruction, Message, Padding, PromptInput, Role, Side, TextTokenizer, TokenizerWrapper,
    WrapperOptions,
};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

fn gguf() -> PathBuf {
    // The products on oneMKL from the assets folder, as the `sgt` binary runs them.
    let _ = stainedglass_models::llm::configure_blas(stainedglass_models::llm::BlasOptions {
        assets: Some(stainedglass_test_support::assets()),
        ..Default::default()
    });
    stainedglass_test_support::smollm2_gguf()
}

fn tok() -> Arc<TextTokenizer> {
    static T: OnceLock<Arc<TextTokenizer>> = OnceLock::new();
    T.get_or_init(|| Arc::new(TextTokenizer::from_model_path(&gguf()).expect("tokenizer")))
        .clone()
}

#[test]
fn reproduces_the_reference_ids() {
    let ids = tok()
        .encode("Hello world! The year 2024 has 366 days.")
        .expect("encode");
    assert_eq!(
        ids,
        [19556, 905, 17, 378, 713, 216, 34, 32, 34, 36, 553, 216, 35, 38, 38, 2009, 30]
    );
    let t = tok();
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_id(), Some(2));
    assert_eq!(t.encode("<|im_start|>user").expect("encode")[0], 1);
    assert!(t.is_special(2) && !t.is_special(19556));
    assert!(t.stop_tokens().contains(&2));
}

#[test]
fn decode_inverts_encode_on_varied_text() {
    let texts = [
        "Plain English, with punctuation; and   multiple spaces.",
        "Ünïcödé: naïve café, 日本語のテキスト, emoji 🎉🚀, Ελληνικά",
        "Digits 0123456789 and 3.14159e-10, -42, 1,000,000",
        "fn main() {\n    println!(\"{}\", x + 1); // code\n}\n\ttabs\r\n",
        "  leading and trailing spaces  ",
        "<|im_start|>user\nhi<|im_end|>\n",
    ];
    for s in texts {
        let ids = tok().encode(s).expect("encode");
        assert_eq!(tok().decode(&ids, false).expect("decode"), s);
    }
}

#[test]
fn chat_template_renders_like_transformers() {
    let t = tok();
    let s = t
        .chat_template()
        .expect("template")
        .render(
            &[Message::new(Role::User, "What is the capital of France?")],
            true,
        )
        .expect("render");
    assert_eq!(
        s,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

fn chat() -> Vec<Message> {
    vec![
        Message::new(Role::System, "You answer briefly."),
        Message::new(Role::User, "What is 2+2? user"),
        Message::new(Role::Assistant, "It is 4."),
        Message::new(Role::User, "And 3+3?"),
        Message::new(Role::Assistant, "6"),
    ]
}

#[test]
fn wrapper_ids_equal_the_plain_template_tokenization_and_masks_are_right() {
    let t = tok();
    let w = TokenizerWrapper::new(
        t.clone(),
        WrapperOptions {
            include_labels: true,
            ..Default::default()
        },
    );
    let msgs = chat();
    let enc = w.encode(&PromptInput::Chat(msgs.clone())).expect("encode");
    let text = t
        .chat_template()
        .expect("t")
        .render(&msgs, false)
        .expect("r");
    assert_eq!(enc.input_ids, t.encode(&text).expect("encode"));

    // Transformed tokens decode to exactly the message contents, in order.
    let transformed: Vec<u32> = enc
        .input_ids
        .iter()
        .zip(&enc.noise_mask)
        .filter(|(_, &m)| m == 1)
        .map(|(&i, _)| i)
        .collect();
    let joined: String = msgs.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(t.decode(&transformed, false).expect("decode"), joined);
    // No special token and no role name of the scaffolding is transformed.
    for (&id, &m) in enc.input_ids.iter().zip(&enc.noise_mask) {
        if t.is_special(id) {
            assert_eq!(m, 0, "special token {id} transformed");
        }
    }
    // Loss only on the assistant replies and the <|im_end|> closing each.
    let lm = enc.loss_mask.as_ref().expect("loss mask");
    let learned: Vec<u32> = enc
        .input_ids
        .iter()
        .zip(lm)
        .filter(|(_, &m)| m == 1)
        .map(|(&i, _)| i)
        .collect();
    assert_eq!(
        t.decode(&learned, false).expect("decode"),
        "It is 4.<|im_end|>6<|im_end|>"
    );
    let labels = enc.labels.as_ref().expect("labels");
    for k in 0..enc.len() {
        let want = if lm[k] == 1 {
            enc.input_ids[k] as i64
        } else {
            -100
        };
        assert_eq!(labels[k], want);
    }
    // transform_all_tokens transforms everything; ignore_prompt_loss = false learns everything.
    let all = TokenizerWrapper::new(
        t.clone(),
        WrapperOptions {
            include_labels: true,
            transform_all_tokens: true,
            ignore_prompt_loss: false,
            ..Default::default()
        },
    )
    .encode(&PromptInput::Chat(msgs))
    .expect("encode");
    assert!(all.noise_mask.iter().all(|&m| m == 1));
    assert!(all.loss_mask.expect("lm").iter().all(|&m| m == 1));
}

#[test]
fn instruction_prompts_and_generation_prompt() {
    let t = tok();
    let w = TokenizerWrapper::new(
        t.clone(),
        WrapperOptions {
            add_generation_prompt: true,
            ..Default::default()
        },
    );
    let ins = Instruction {
        instruction: "Summarise the text.".into(),
        context: Some("Cats sleep a lot.".into()),
        system_prompt: Some("Be terse.".into()),
        response: None,
    };
    let enc = w.encode(&PromptInput::Instruction(ins)).expect("encode");
    let text = t.decode(&enc.input_ids, false).expect("decode");
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    assert!(
        text.contains("Summarise the text.\n\nCats sleep a lot."),
        "{text}"
    );
    let transformed: Vec<u32> = enc
        .input_ids
        .iter()
        .zip(&enc.noise_mask)
        .filter(|(_, &m)| m == 1)
        .map(|(&i, _)| i)
        .collect();
    assert_eq!(
        t.decode(&transformed, false).expect("decode"),
        "Be terse.Summarise the text.\n\nCats sleep a lot."
    );
}

#[test]
fn batches_pad_left_or_right_and_truncate() {
    let t = tok();
    let short = PromptInput::Chat(vec![Message::new(Role::User, "Hi")]);
    let long = PromptInput::Chat(vec![Message::new(Role::User, "Tell me about the sea.")]);
    for side in [Side::Left, Side::Right] {
        let w = TokenizerWrapper::new(
            t.clone(),
            WrapperOptions {
                padding_side: side,
                ..Default::default()
            },
        );
        let b = w
            .encode_batch(&[short.clone(), long.clone()])
            .expect("batch");
        let alone = w.encode(&short).expect("encode");
        let row = &b.rows[0];
        assert_eq!(row.len(), b.rows[1].len());
        let pad = row.len() - alone.len();
        let real = match side {
            Side::Left => pad..row.len(),
            Side::Right => 0..alone.len(),
        };
        assert_eq!(row.input_ids[real.clone()], alone.input_ids[..]);
        assert_eq!(row.noise_mask[real.clone()], alone.noise_mask[..]);
        assert_eq!(row.attention_mask.iter().filter(|&&m| m == 0).count(), pad);
        let tensors = b.to_tensors(&candle_core::Device::Cpu).expect("tensors");
        assert_eq!(tensors.input_ids.dims(), [2, row.len()]);
    }
    let fixed = TokenizerWrapper::new(
        t.clone(),
        WrapperOptions {
            padding: Padding::MaxLength,
            max_length: Some(64),
            ..Default::default()
        },
    );
    let b = fixed
        .encode_batch(std::slice::from_ref(&short))
        .expect("batch");
    assert_eq!(b.rows[0].len(), 64);
    // Over-long prompts: an error by default, cut with truncation.
    let mut opts = WrapperOptions {
        max_length: Some(5),
        ..Default::default()
    };
    let err = TokenizerWrapper::new(t.clone(), opts.clone())
        .encode(&long)
        .unwrap_err();
    assert!(err.to_string().contains("max_length 5"), "{err}");
    opts.truncation = true;
    let full = TokenizerWrapper::new(t.clone(), WrapperOptions::default())
        .encode(&long)
        .expect("encode");
    let cut = TokenizerWrapper::new(t.clone(), opts)
        .encode(&long)
        .expect("e");
    assert_eq!(cut.input_ids, full.input_ids[full.len() - 5..]);
}

#[test]
fn bad_prompts_get_clear_errors() {
    let w = TokenizerWrapper::new(tok(), WrapperOptions::default());
    let e = w.encode(&PromptInput::Chat(vec![])).unwrap_err();
    assert!(matches!(e, Error::Prompt(_)) && e.to_string().contains("no messages"));
    let e = Message::parse_conversation(&serde_json::json!([{"role": "wizard", "content": "x"}]))
        .unwrap_err();
    assert!(e.to_string().contains("unknown role `wizard`"), "{e}");
    let e = Message::parse_conversation(&serde_json::json!([{"role": "user"}])).unwrap_err();
    assert!(e.to_string().contains("content"), "{e}");
    let e = w
        .encode(&PromptInput::Instruction(Instruction::default()))
        .unwrap_err();
    assert!(e.to_string().contains("instruction is empty"), "{e}");
    let e = w
        .encode(&PromptInput::Chat(vec![
            Message::new(Role::User, "a"),
            Message::new(Role::System, "b"),
        ]))
        .unwrap_err();
    assert!(e.to_string().contains("only the first"), "{e}");
}

#[test]
fn tokenizer_json_round_trips_through_a_folder() {
    let t = tok();
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("tokenizer.json"), t.to_json()).expect("write");
    let cfg = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>"},
        "chat_template": t.chat_template().expect("t").source(),
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).expect("write");
    let u = TextTokenizer::from_folder(dir.path()).expect("folder tokenizer");
    let s = "Round trip: 12345 ünïcödé <|im_end|>";
    assert_eq!(u.encode(s).expect("e"), t.encode(s).expect("e"));
    assert_eq!((u.bos_id(), u.eos_id()), (Some(1), Some(2)));
    let m = [Message::new(Role::User, "x")];
    assert_eq!(
        u.chat_template().expect("t").render(&m, true).expect("r"),
        t.chat_template().expect("t").render(&m, true).expect("r")
    );
    std::fs::write(dir.path().join("tokenizer.json"), "{not json").expect("write");
    let e = TextTokenizer::from_folder(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not a valid tokenizer.json"), "{e}");
}
