//! Property tests of the detector and the pseudonymiser on untrusted text: any string is
//! scanned without a panic into sorted, disjoint spans on character boundaries; pseudonymising
//! and mapping back returns the text exactly, however the reply is cut into pieces.

use proptest::prelude::*;
use stainedglass_pii::{Detector, DetectorConfig, Lexicon, Pseudonymizer};
use std::sync::OnceLock;

fn detector() -> &'static Detector {
    static D: OnceLock<Detector> = OnceLock::new();
    D.get_or_init(|| {
        let lex = Lexicon::load(&stainedglass_test_support::asset("pii")).expect("word lists");
        Detector::new(
            lex,
            DetectorConfig {
                custom_terms: vec!["Project Falcon".into()],
                ..DetectorConfig::default()
            },
        )
    })
}

/// Text made of pieces that look like personal data, ordinary words and arbitrary characters.
fn texty() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("Michael Roy".to_string()),
        Just("Dr. Okonkwo".to_string()),
        Just("Carter".to_string()),
        Just("James".to_string()),
        Just("jane.doe@example.com".to_string()),
        Just("+44 20 7946 0958".to_string()),
        Just("4111 1111 1111 1111".to_string()),
        Just("123-45-6789".to_string()),
        Just("2026-04-15".to_string()),
        Just("Springfield".to_string()),
        Just("asthma".to_string()),
        Just("Project Falcon".to_string()),
        Just("221 Baker Street, Springfield, IL 62704".to_string()),
        Just("the".to_string()),
        Just("to".to_string()),
        Just("Dear".to_string()),
        Just(", ".to_string()),
        Just(". ".to_string()),
        "[A-Z][a-z]{1,8}",
        "\\PC{0,6}",
        "[0-9 .:@/+-]{0,12}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn spans_are_sorted_disjoint_and_on_boundaries(text in texty()) {
        let spans = detector().detect(&text);
        let mut end = 0;
        for s in &spans {
            prop_assert!(s.start >= end && s.end > s.start && s.end <= text.len());
            prop_assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end));
            end = s.end;
        }
    }

    #[test]
    fn any_bytes_as_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = detector().detect(&text);
    }

    #[test]
    fn pseudonymised_text_maps_back_exactly(text in texty(), seed in any::<u64>(), cut in 1usize..17) {
        let mut p = Pseudonymizer::seeded(detector(), seed);
        let (pseudo, _) = p.pseudonymize(&text);
        let m = p.into_mapping();
        prop_assert_eq!(m.restore(&pseudo), text.clone());
        let mut r = m.restorer();
        let mut out = String::new();
        let mut at = 0;
        while at < pseudo.len() {
            let mut e = (at + cut).min(pseudo.len());
            while !pseudo.is_char_boundary(e) {
                e += 1;
            }
            out.push_str(&r.push(&pseudo[at..e]));
            at = e;
        }
        out.push_str(&r.finish());
        prop_assert_eq!(out, text);
    }
}
