//! Surrogates: for each detected value a realistic stand-in of the same kind — a fake name, an
//! e-mail at an `example` domain, numbers of the same shape with valid checksums (Luhn, IBAN
//! mod-97, SSN rules), documentation IP ranges, a date in the same format, another town, another
//! condition. The same value gets the same stand-in everywhere in a conversation, and no
//! stand-in equals a value of the text.

use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha20Rng;

use crate::health::SURROGATE_CONDITIONS;
use crate::lexicon::Lexicon;
use crate::structured::luhn_ok;
use crate::types::PiiKind;

const FIRST: &[&str] = &[
    "James", "Olivia", "Liam", "Emma", "Noah", "Ava", "Lucas", "Mia", "Ethan", "Chloe", "Aiden",
    "Grace", "Caleb", "Nora", "Owen", "Ella", "Isaac", "Leah", "Julian", "Ruby", "Adrian", "Hazel",
    "Miles", "Clara", "Felix", "Iris", "Simon", "Naomi", "Oscar", "Violet",
];
const LAST: &[&str] = &[
    "Carter", "Bennett", "Hayes", "Foster", "Reyes", "Morgan", "Sullivan", "Porter", "Hughes",
    "Griffin", "Warren", "Fleming", "Dalton", "Keller", "Lambert", "Marsh", "Norris", "Pearce",
    "Quinn", "Rowe", "Sawyer", "Thornton", "Vance", "Whitaker", "Yates", "Ashford", "Beckett",
];
const ORGS: &[&str] = &[
    "Northwind",
    "Contoso",
    "Fabrikam",
    "Tailspin",
    "Wingtip",
    "Litware",
    "Adatum",
    "Proseware",
    "Lucerne",
    "Woodgrove",
    "Fourth Coffee",
    "Alpine Ski",
];
const STREETS: &[&str] = &[
    "Maple", "Oak", "Cedar", "Elm", "Willow", "Birch", "Chestnut", "Juniper", "Hawthorn", "Linden",
];
const CODENAMES: &[&str] = &[
    "Aurora", "Cobalt", "Juniper", "Lantern", "Meridian", "Nimbus", "Quartz", "Sable", "Tundra",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn pick(rng: &mut ChaCha20Rng, from: &[&str]) -> String {
    from.choose(rng).copied().unwrap_or("X").to_string()
}

/// `s` with every digit replaced by a random one (the first kept when `keep_first`), letters
/// by random capitals, everything else as is.
fn reshape(rng: &mut ChaCha20Rng, s: &str, keep_first: bool) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| match c {
            '0'..='9' if !(keep_first && i == 0) => char::from(b'0' + rng.random_range(0..10u8)),
            'A'..='Z' => char::from(b'A' + rng.random_range(0..26u8)),
            'a'..='z' => char::from(b'a' + rng.random_range(0..26u8)),
            c => c,
        })
        .collect()
}

fn card(rng: &mut ChaCha20Rng, s: &str) -> String {
    loop {
        let mut out = reshape(rng, s, true);
        // Fix the last digit so the Luhn check holds.
        let Some(last) = out.rfind(|c: char| c.is_ascii_digit()) else {
            return out;
        };
        for d in 0..10u8 {
            out.replace_range(last..last + 1, &char::from(b'0' + d).to_string());
            let digits: Vec<u32> = out.chars().filter_map(|c| c.to_digit(10)).collect();
            if luhn_ok(&digits) {
                return out;
            }
        }
    }
}

fn iban(rng: &mut ChaCha20Rng, s: &str) -> String {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let (cc, bban) = (&compact[..2], &compact[4..]);
    let bban: String = bban
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                char::from(b'0' + rng.random_range(0..10u8))
            } else {
                c
            }
        })
        .collect();
    // Check digits: 98 − (BBAN ‖ country ‖ "00" as a number, mod 97).
    let mut m: u32 = 0;
    for c in bban.chars().chain(cc.chars()).chain("00".chars()) {
        let v = c.to_digit(36).unwrap_or(0);
        m = if v >= 10 {
            (m * 100 + v) % 97
        } else {
            (m * 10 + v) % 97
        };
    }
    let plain = format!("{cc}{:02}{bban}", 98 - m);
    if s.contains(' ') {
        plain
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        plain
    }
}

fn date(rng: &mut ChaCha20Rng, s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_digit() {
            let n = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let v: u32 = rest[..n].parse().unwrap_or(1);
            let new = if n == 4 {
                v.saturating_sub(rng.random_range(1..6))
            } else if v <= 12 {
                rng.random_range(1..=12)
            } else {
                rng.random_range(13..=28)
            };
            out.push_str(&format!("{new:0width$}", width = n));
            rest = &rest[n..];
        } else if c.is_ascii_alphabetic() {
            let n = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let word = &rest[..n];
            let is_month = MONTHS
                .iter()
                .any(|m| m.starts_with(&word[..word.len().min(3)]));
            if is_month && n >= 3 {
                let m = pick(rng, &MONTHS);
                out.push_str(if n == 3 { &m[..3] } else { &m });
            } else {
                out.push_str(word);
            }
            rest = &rest[n..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn address(rng: &mut ChaCha20Rng, s: &str) -> String {
    let suffix = s
        .split_whitespace()
        .find(|w| {
            let w = w.trim_end_matches([',', '.']);
            [
                "Street", "St", "Avenue", "Ave", "Road", "Rd", "Lane", "Ln", "Drive", "Dr", "Way",
            ]
            .contains(&w)
        })
        .unwrap_or("Street")
        .trim_end_matches(',');
    let mut out = format!(
        "{} {} {}",
        rng.random_range(10..9999),
        pick(rng, STREETS),
        suffix
    );
    if s.contains("Apt") || s.contains("Suite") || s.contains("Unit") || s.contains('#') {
        out.push_str(&format!(", Apt {}", rng.random_range(1..40)));
    }
    if s.matches(',').count() >= 1 && s.chars().filter(|c| c.is_ascii_digit()).count() > 4 {
        out.push_str(&format!(
            ", {} {:05}",
            pick(
                rng,
                &[
                    "Fairview, OR",
                    "Riverton, WY",
                    "Greenville, SC",
                    "Madison, WI"
                ]
            ),
            rng.random_range(10000..99999)
        ));
    }
    out
}

/// A stand-in of `kind` for `value`.
pub(crate) fn surrogate(
    rng: &mut ChaCha20Rng,
    lex: &Lexicon,
    kind: PiiKind,
    value: &str,
) -> String {
    match kind {
        PiiKind::Person => {
            let n = value.split_whitespace().count();
            let mut parts = vec![pick(rng, FIRST)];
            for _ in 1..n {
                parts.push(pick(rng, LAST));
            }
            parts.join(" ")
        }
        PiiKind::Email => format!(
            "{}.{}@{}",
            pick(rng, FIRST).to_lowercase(),
            pick(rng, LAST).to_lowercase(),
            pick(rng, &["example.com", "example.org", "example.net"])
        ),
        PiiKind::Phone => {
            // An international number keeps its country code.
            let keep = if value.starts_with('+') {
                value
                    .find(|c: char| !(c == '+' || c.is_ascii_digit()))
                    .unwrap_or(value.len())
            } else {
                0
            };
            format!("{}{}", &value[..keep], reshape(rng, &value[keep..], false))
        }
        PiiKind::Ssn => format!(
            "{:03}-{:02}-{:04}",
            rng.random_range(100..666),
            rng.random_range(1..100),
            rng.random_range(1..10000)
        ),
        PiiKind::CardNumber => card(rng, value),
        PiiKind::Iban => iban(rng, value),
        PiiKind::IpAddress if value.contains(':') => {
            format!(
                "2001:db8::{:x}:{:x}",
                rng.random::<u16>(),
                rng.random::<u16>()
            )
        }
        PiiKind::IpAddress => format!(
            "{}.{}",
            pick(rng, &["192.0.2", "198.51.100", "203.0.113"]),
            rng.random_range(1..255)
        ),
        PiiKind::Date => date(rng, value),
        PiiKind::Address => address(rng, value),
        PiiKind::UrlCredentials => {
            let (scheme, rest) = value.split_once("://").unwrap_or(("https", value));
            let host = rest.split_once('@').map_or(rest, |(_, h)| h);
            let user = pick(rng, FIRST).to_lowercase();
            format!(
                "{scheme}://{user}:{}@{host}",
                reshape(rng, "xxxxxxxx00", false)
            )
        }
        PiiKind::AccountNumber => reshape(rng, value, false),
        PiiKind::Organization => {
            let suffix = value.split_whitespace().last().unwrap_or("Inc");
            format!("{} {suffix}", pick(rng, ORGS))
        }
        PiiKind::Location => {
            let towns: Vec<&str> = lex.towns.iter().map(String::as_str).collect();
            if towns.is_empty() {
                pick(rng, &["Fairview", "Riverton", "Greenville", "Madison"])
            } else {
                pick(rng, &towns)
            }
        }
        PiiKind::Health => pick(rng, SURROGATE_CONDITIONS),
        PiiKind::Custom => format!("Project {}", pick(rng, CODENAMES)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn numbers_keep_their_shape_and_checksums() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let lex = Lexicon::default();
        for _ in 0..50 {
            let c = surrogate(&mut rng, &lex, PiiKind::CardNumber, "4111 1111 1111 1111");
            let d: Vec<u32> = c.chars().filter_map(|c| c.to_digit(10)).collect();
            assert!(luhn_ok(&d) && c.len() == 19 && c.starts_with('4'), "{c}");
            let i = surrogate(&mut rng, &lex, PiiKind::Iban, "GB82 WEST 1234 5698 7654 32");
            assert!(crate::structured::iban_ok(&i), "{i}");
            let s = surrogate(&mut rng, &lex, PiiKind::Date, "2026-04-15");
            assert_eq!(s.len(), 10);
            let p = surrogate(&mut rng, &lex, PiiKind::Phone, "+44 20 7946 0958");
            assert!(p.starts_with("+44 ") && p.len() == 16, "{p}");
        }
    }
}
