//! Structured personal data found by patterns and kept only when it validates: e-mail
//! addresses, phone numbers (international and national), US social security numbers (area,
//! group and serial rules), payment card numbers (Luhn), IBANs (mod-97), IPv4/IPv6 addresses,
//! dates, street addresses, URLs with credentials, and account or record numbers introduced by a
//! cue ("MRN", "account", "policy", …).

use std::sync::LazyLock;

use regex::Regex;

use crate::types::{PiiKind, Span};

fn re(p: &str) -> Regex {
    // The patterns are constants of this file; a typo shows in every test.
    Regex::new(p).unwrap_or_else(|e| panic!("PII pattern {p}: {e}"))
}

const MONTHS: &str = "(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|\
                      Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)";
/// Street suffixes: the primary names of USPS Publication 28, appendix C1, and their common
/// abbreviations.
const STREET: &str = "(?:Alley|Aly|Annex|Arcade|Avenue|Ave|Bayou|Beach|Bend|Bluffs?|Bottom|\
                      Boulevard|Blvd|Branch|Bridge|Brooks?|Burgs?|Bypass|Camp|Canyon|Cape|\
                      Causeway|Centers?|Centre|Circles?|Cir|Cliffs?|Club|Commons?|Corners?|Course|\
                      Courts?|Ct|Coves?|Creek|Crescent|Crest|Crossing|Crossroads?|Curve|Dale|Dam|\
                      Divide|Drives?|Dr|Estates?|Expressway|Extensions?|Falls?|Ferry|Fields?|\
                      Flats?|Fords?|Forest|Forges?|Forks?|Fort|Freeway|Gardens?|Gateway|Glens?|\
                      Greens?|Groves?|Harbors?|Haven|Heights|Highway|Hwy|Hills?|Hollow|Inlet|\
                      Islands?|Isle|Junctions?|Keys?|Knolls?|Lakes?|Landing|Lane|Ln|Lights?|Loaf|\
                      Locks?|Lodge|Loop|Mall|Manors?|Meadows?|Mews|Mills?|Mission|Motorway|Mount|\
                      Mountains?|Neck|Orchard|Oval|Overpass|Parks?|Parkways?|Pkwy|Pass|Passage|\
                      Path|Pike|Pines?|Place|Pl|Plains?|Plaza|Points?|Ports?|Prairie|Radial|Ramp|\
                      Ranch|Rapids?|Rest|Ridges?|River|Roads?|Rd|Route|Row|Rue|Run|Shoals?|Shores?|\
                      Skyway|Springs?|Spurs?|Squares?|Sq|Station|Stravenue|Stream|Streets?|St|\
                      Summit|Terrace|Ter|Throughway|Trace|Track|Trafficway|Trail|Trl|Trailer|\
                      Tunnel|Turnpike|Underpass|Unions?|Valleys?|Viaduct|Views?|Villages?|Ville|\
                      Vista|Walks?|Wall|Ways?|Wells?)";
/// The two-letter codes of US states, territories and military mail.
const STATES: &str = "(?:A[AEKLPRSZ]|C[AOT]|D[CE]|F[LM]|G[AU]|HI|I[ADLN]|K[SY]|LA|M[ADEHINOPST]|\
                      N[CDEHJMVY]|O[HKR]|P[ARW]|RI|S[CD]|T[NX]|UT|V[AIT]|W[AIVY])";
/// German, Dutch and Scandinavian street names end in the street word ("Hauptstraße 5").
const STREET_WORD: &str = "(?:stra(?:ß|ss)e|str\\.|weg|platz|allee|gasse|ring|damm|ufer|straat|\
                           laan|plein|gracht|gatan|vägen|gade|vej)";

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b[\p{L}\p{N}][\p{L}\p{N}._%+-]*@[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?(?:\.[\p{L}\p{N}-]+)*\.\p{L}{2,}\b",
    )
});
static URL_CREDENTIALS: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s/:@]+:[^\s/@]+@[^\s/?#]+[^\s]*"));
static SSN: LazyLock<Regex> = LazyLock::new(|| re(r"\b(\d{3})-(\d{2})-(\d{4})\b"));
static CARD: LazyLock<Regex> = LazyLock::new(|| re(r"\b\d(?:[ -]?\d){12,18}\b"));
static IBAN: LazyLock<Regex> = LazyLock::new(|| re(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"));
static IPV4: LazyLock<Regex> = LazyLock::new(|| re(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"));
static IPV6: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?:%\w+)?"));
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"\+\d{1,3}(?:[\s.-]?\(\d{1,4}\))?(?:[\s.-]?\d{1,8}){1,6}\b|(?:\(\d{1,4}\)[\s.-]?)?\d{2,5}(?:[\s.-]\d{2,5}){1,4}\b|\(\d{3}\)\s?\d{3}-\d{4}\b",
    )
});
static DATE: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"\b\d{{4}}-\d{{2}}-\d{{2}}\b|\b\d{{1,2}}[/.]\d{{1,2}}[/.](?:\d{{4}}|\d{{2}})\b|\b{MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b|\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{MONTHS}\.?(?:,?\s+\d{{4}})?\b"
    ))
});
static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"\b\d{{1,6}}\s+(?:[A-Z][\p{{L}}'-]*\.?\s+){{1,4}}{STREET}\b\.?(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Fl|Floor|#)\.?\s*#?[A-Za-z0-9-]+)?(?:,\s*[A-Z][\p{{L}}'-]+(?:\s+[A-Z][\p{{L}}'-]+){{0,3}},?\s+{STATES}(?:\s+\d{{5}}(?:-\d{{4}})?)?\b|(?:,\s*[A-Z][\p{{L}}'-]+(?:\s+[A-Z][\p{{L}}'-]+){{0,2}})?)"
    ))
});
/// "Hauptstraße 5, 10115 Berlin", "Keizersgracht 123, 1015 CJ Amsterdam".
static STREET_FIRST_ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"\b\p{{Lu}}[\p{{L}}-]*{STREET_WORD}\s+\d{{1,5}}[a-zA-Z]?\b(?:,\s*(?:\d{{4}}\s?[A-Z]{{2}}|\d{{4,5}}|\d{{3}}\s\d{{2}})\s+\p{{Lu}}[\p{{L}}-]+)?"
    ))
});
static ACCOUNT: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(?:MRN|medical\s+record|account|acct|policy|member|patient|customer|client|case|claim|record|reference|ref|invoice|order|passport|licen[cs]e|employee|badge|ticket)\b(?:\s+(?:no\.?|number|num\.?|id|#))?\s*[:#]?\s*(?-i:([A-Z]{0,4}[-]?\d[A-Z0-9-]{3,}))",
    )
});

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// The Luhn checksum of a card number.
pub(crate) fn luhn_ok(d: &[u32]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The IBAN check: the country code and check digits moved to the end, letters as numbers,
/// the whole modulo 97 is 1.
pub(crate) fn iban_ok(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, rest) = compact.split_at(4);
    let mut m: u32 = 0;
    for c in rest.chars().chain(head.chars()) {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        m = if v >= 10 {
            (m * 100 + v) % 97
        } else {
            (m * 10 + v) % 97
        };
    }
    m == 1
}

fn ssn_ok(area: &str, group: &str, serial: &str) -> bool {
    let a: u32 = area.parse().unwrap_or(0);
    a != 0 && a != 666 && a < 900 && group != "00" && serial != "0000"
}

fn date_ok(s: &str) -> bool {
    // Numeric forms must be a real day and month; named months are taken as written.
    let nums: Vec<u32> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect();
    if s.chars().any(|c| c.is_ascii_alphabetic()) {
        return nums
            .first()
            .is_some_and(|&d| (1..=31).contains(&d) || d >= 1000);
    }
    match nums.as_slice() {
        [y, m, d] if *y >= 1000 => (1..=12).contains(m) && (1..=31).contains(d),
        [a, b, _] => {
            (1..=12).contains(a) && (1..=31).contains(b)
                || (1..=31).contains(a) && (1..=12).contains(b)
        }
        _ => false,
    }
}

/// Pushes every validated structured span of `text` into `out`.
pub(crate) fn detect(text: &str, out: &mut Vec<Span>) {
    let mut push = |m: regex::Match<'_>, kind| out.push(Span::new(m.start(), m.end(), kind));
    for m in URL_CREDENTIALS.find_iter(text) {
        push(m, PiiKind::UrlCredentials);
    }
    for m in EMAIL.find_iter(text) {
        push(m, PiiKind::Email);
    }
    for c in SSN.captures_iter(text) {
        if ssn_ok(&c[1], &c[2], &c[3]) {
            if let Some(m) = c.get(0) {
                push(m, PiiKind::Ssn);
            }
        }
    }
    for m in CARD.find_iter(text) {
        let d = digits(m.as_str());
        if (13..=19).contains(&d.len()) && luhn_ok(&d) {
            push(m, PiiKind::CardNumber);
        }
    }
    for m in IBAN.find_iter(text) {
        if iban_ok(m.as_str()) {
            push(m, PiiKind::Iban);
        }
    }
    for m in IPV4.find_iter(text) {
        if m.as_str().parse::<std::net::Ipv4Addr>().is_ok() {
            push(m, PiiKind::IpAddress);
        }
    }
    for m in IPV6.find_iter(text) {
        let s = m.as_str().split('%').next().unwrap_or_default();
        // Three groups at least, not inside a word or a path ("std::io", "a::b::c").
        let groups = s.split(':').filter(|g| !g.is_empty()).count();
        let joined =
            |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        let inside =
            joined(text[..m.start()].chars().last()) || joined(text[m.end()..].chars().next());
        if groups >= 3 && !inside && s.parse::<std::net::Ipv6Addr>().is_ok() {
            push(m, PiiKind::IpAddress);
        }
    }
    for m in DATE.find_iter(text) {
        // Not the tail of a version number or of a longer number ("1.2.3.40").
        let before = text[..m.start()].chars().last();
        let dotted = before.is_some_and(|c| c == '.' || c.is_ascii_digit());
        if !dotted && date_ok(m.as_str()) {
            push(m, PiiKind::Date);
        }
    }
    for m in ADDRESS
        .find_iter(text)
        .chain(STREET_FIRST_ADDRESS.find_iter(text))
    {
        push(m, PiiKind::Address);
    }
    for c in ACCOUNT.captures_iter(text) {
        if let Some(m) = c.get(1) {
            push(m, PiiKind::AccountNumber);
        }
    }
    for m in PHONE.find_iter(text) {
        let n = digits(m.as_str()).len();
        let plus = m.as_str().starts_with('+');
        if (plus && (8..=15).contains(&n)) || (!plus && (10..=12).contains(&n)) {
            push(m, PiiKind::Phone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::resolve_overlaps;

    fn kinds(text: &str) -> Vec<(PiiKind, String)> {
        let mut v = Vec::new();
        detect(text, &mut v);
        resolve_overlaps(v)
            .into_iter()
            .map(|s| (s.kind, s.text(text).to_string()))
            .collect()
    }

    #[test]
    fn validated_patterns_are_found_and_lookalikes_are_not() {
        let cases: &[(&str, PiiKind, &str)] = &[
            (
                "mail jane.doe+x@mail.example.co.uk now",
                PiiKind::Email,
                "jane.doe+x@mail.example.co.uk",
            ),
            ("SSN 123-45-6789.", PiiKind::Ssn, "123-45-6789"),
            (
                "card 4111 1111 1111 1111 exp",
                PiiKind::CardNumber,
                "4111 1111 1111 1111",
            ),
            (
                "IBAN GB82 WEST 1234 5698 7654 32 ok",
                PiiKind::Iban,
                "GB82 WEST 1234 5698 7654 32",
            ),
            (
                "from 192.168.1.20 today",
                PiiKind::IpAddress,
                "192.168.1.20",
            ),
            (
                "host 2001:db8::ff00:42:8329 up",
                PiiKind::IpAddress,
                "2001:db8::ff00:42:8329",
            ),
            ("due 2026-04-15 sharp", PiiKind::Date, "2026-04-15"),
            ("born on March 3, 1987 in", PiiKind::Date, "March 3, 1987"),
            (
                "call +44 20 7946 0958 now",
                PiiKind::Phone,
                "+44 20 7946 0958",
            ),
            ("call (415) 555-0132 now", PiiKind::Phone, "(415) 555-0132"),
            (
                "at 221 Baker Street, Apt 2B, Springfield, IL 62704 please",
                PiiKind::Address,
                "221 Baker Street, Apt 2B, Springfield, IL 62704",
            ),
            (
                "use https://admin:hunter2@db.example.com/x now",
                PiiKind::UrlCredentials,
                "https://admin:hunter2@db.example.com/x",
            ),
            (
                "patient MRN: 00482913 seen",
                PiiKind::AccountNumber,
                "00482913",
            ),
            (
                "policy number PX-88213 lapsed",
                PiiKind::AccountNumber,
                "PX-88213",
            ),
        ];
        for (text, kind, want) in cases {
            let got = kinds(text);
            assert!(got.contains(&(*kind, want.to_string())), "{text}: {got:?}");
        }
        for text in [
            "card 4111 1111 1111 1112 fails Luhn",
            "SSN 000-12-3456 is invalid",
            "IBAN GB82 WEST 1234 5698 7654 33 fails mod 97",
            "version 1.2.3.400 is not an address",
            "the year 2024 had 366 days",
            "13/45/2020 is no date",
        ] {
            let got = kinds(text);
            assert!(
                got.iter().all(|(k, _)| !matches!(
                    k,
                    PiiKind::CardNumber
                        | PiiKind::Ssn
                        | PiiKind::Iban
                        | PiiKind::IpAddress
                        | PiiKind::Date
                )),
                "{text}: {got:?}"
            );
        }
    }

    #[test]
    fn checksums() {
        assert!(luhn_ok(&digits("79927398713")));
        assert!(!luhn_ok(&digits("79927398710")));
        assert!(iban_ok("DE89370400440532013000"));
        assert!(!iban_ok("DE89370400440532013001"));
    }
}
