//! The detector with the real word lists (`assets/pii`, from `scripts/setup-assets.sh`) on
//! prompts like users write.

use stainedglass_pii::{Detector, DetectorConfig, Lexicon, PiiKind};

fn detector() -> Detector {
    let lex = Lexicon::load(&stainedglass_test_support::asset("pii")).expect("word lists");
    Detector::new(lex, DetectorConfig::default())
}

fn found(d: &Detector, text: &str) -> Vec<(PiiKind, String)> {
    d.detect(text)
        .iter()
        .map(|s| (s.kind, s.text(text).to_string()))
        .collect()
}

#[test]
fn finds_what_matters_and_leaves_ordinary_text_alone() {
    let d = detector();
    let p = |s: &str| (PiiKind::Person, s.to_string());
    let cases: Vec<(&str, Vec<(PiiKind, String)>)> = vec![
        (
            "Draft an email to Michael Roy about the contract due 2026-04-15",
            vec![p("Michael Roy"), (PiiKind::Date, "2026-04-15".into())],
        ),
        (
            "Write a birthday note for my colleague Ingrid Halvorsen.",
            vec![p("Ingrid Halvorsen")],
        ),
        (
            "My name is Thandiwe Nkosi and I live in Bloemfontein.",
            vec![
                p("Thandiwe Nkosi"),
                (PiiKind::Location, "Bloemfontein".into()),
            ],
        ),
        ("What is the capital of France?", vec![]),
        ("Explain how photosynthesis works in plants.", vec![]),
        ("How many times has the Earth orbited the Sun?", vec![]),
        (
            "What are the main differences between Python and JavaScript?",
            vec![],
        ),
        (
            "Call +33 1 46 63 81 93 or write to 221 Baker Street, Apt 2B, Springfield, IL 62704.",
            vec![
                (PiiKind::Phone, "+33 1 46 63 81 93".into()),
                (
                    PiiKind::Address,
                    "221 Baker Street, Apt 2B, Springfield, IL 62704".into(),
                ),
            ],
        ),
        (
            "Remind Gustavo da Luz that the Rhine River cruise leaves Hauptstraße 5, 10115 Berlin.",
            vec![
                p("Gustavo da Luz"),
                (PiiKind::Address, "Hauptstraße 5, 10115 Berlin".into()),
            ],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(found(&d, text), want, "{text}");
    }
}
