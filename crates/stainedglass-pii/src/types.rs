//! What the detector reports: a kind of personal data and where it is in the text.

use serde::{Deserialize, Serialize};

/// A kind of personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    Ssn,
    CardNumber,
    Iban,
    IpAddress,
    Date,
    Address,
    UrlCredentials,
    /// An account, record or policy number introduced by a cue ("MRN", "account", …).
    AccountNumber,
    Person,
    Organization,
    Location,
    /// A diagnosis or condition.
    Health,
    /// A term the user's configuration names (e.g. a project's code name).
    Custom,
}

impl PiiKind {
    /// Every kind, in report order.
    pub const ALL: [PiiKind; 15] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::Ssn,
        PiiKind::CardNumber,
        PiiKind::Iban,
        PiiKind::IpAddress,
        PiiKind::Date,
        PiiKind::Address,
        PiiKind::UrlCredentials,
        PiiKind::AccountNumber,
        PiiKind::Person,
        PiiKind::Organization,
        PiiKind::Location,
        PiiKind::Health,
        PiiKind::Custom,
    ];

    /// The name used in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Ssn => "ssn",
            PiiKind::CardNumber => "card_number",
            PiiKind::Iban => "iban",
            PiiKind::IpAddress => "ip_address",
            PiiKind::Date => "date",
            PiiKind::Address => "address",
            PiiKind::UrlCredentials => "url_credentials",
            PiiKind::AccountNumber => "account_number",
            PiiKind::Person => "person",
            PiiKind::Organization => "organization",
            PiiKind::Location => "location",
            PiiKind::Health => "health",
            PiiKind::Custom => "custom",
        }
    }

    /// Found by a validated pattern (rather than by lexicons and context).
    pub fn is_structured(self) -> bool {
        !matches!(
            self,
            PiiKind::Person
                | PiiKind::Organization
                | PiiKind::Location
                | PiiKind::Health
                | PiiKind::Custom
        )
    }

    /// Which kind wins when two spans overlap (higher first): the more specific pattern.
    pub(crate) fn priority(self) -> u8 {
        match self {
            PiiKind::UrlCredentials => 15,
            PiiKind::Email => 14,
            PiiKind::Iban => 13,
            PiiKind::CardNumber => 12,
            PiiKind::Ssn => 11,
            PiiKind::IpAddress => 10,
            PiiKind::AccountNumber => 9,
            PiiKind::Address => 8,
            PiiKind::Date => 7,
            PiiKind::Phone => 6,
            PiiKind::Custom => 5,
            PiiKind::Health => 4,
            PiiKind::Organization => 3,
            PiiKind::Person => 2,
            PiiKind::Location => 1,
        }
    }
}

impl std::str::FromStr for PiiKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PiiKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = PiiKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown kind `{s}`; use one of {}", names.join(", "))
            })
    }
}

/// One detected span: bytes `start..end` of the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: PiiKind,
}

impl Span {
    pub fn new(start: usize, end: usize, kind: PiiKind) -> Self {
        Self { start, end, kind }
    }

    pub fn text<'a>(&self, s: &'a str) -> &'a str {
        &s[self.start..self.end]
    }

    fn overlaps(&self, o: &Span) -> bool {
        self.start < o.end && o.start < self.end
    }
}

/// Keeps, of overlapping spans, the one of the higher-priority kind (then the longer one);
/// returns the rest sorted by position.
pub(crate) fn resolve_overlaps(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by(|a, b| {
        b.kind
            .priority()
            .cmp(&a.kind.priority())
            .then((b.end - b.start).cmp(&(a.end - a.start)))
            .then(a.start.cmp(&b.start))
    });
    let mut kept: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        if s.end > s.start && !kept.iter().any(|k| k.overlaps(&s)) {
            kept.push(s);
        }
    }
    kept.sort_by_key(|s| s.start);
    kept
}
