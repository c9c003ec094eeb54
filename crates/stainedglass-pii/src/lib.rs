//! Personal data in prompts, found and replaced on the client's machine before anything is sent.
//!
//! - [`Detector`]: structured data by validated patterns (`structured.rs`: e-mail, phone, SSN,
//!   payment card with Luhn, IBAN with mod-97, IP, dates, street addresses, URLs with
//!   credentials, cued account numbers), person / organisation / location names from lexicons
//!   and context cues (`names.rs`; word lists in `cues.rs`, lexicons in `lexicon.rs`), health
//!   conditions from a built-in vocabulary (`health.rs`), and the user's own terms. Offline; no model.
//! - [`Pseudonymizer`]: a consistent, realistic stand-in for each value (`surrogate.rs`), and the
//!   [`Mapping`] back; [`Restorer`] restores a streamed reply without ever showing half a
//!   stand-in. [`redact`] replaces values by their kind instead.
#![forbid(unsafe_code)]

mod cues;
mod detector;
pub mod eval;
mod health;
mod lexicon;
mod names;
mod pseudonymize;
pub mod restore;
mod structured;
mod surrogate;
mod types;

pub use detector::{Detector, DetectorConfig};
pub use lexicon::{Lexicon, PiiError};
pub use pseudonymize::{redact, Mapping, PiiMode, Pseudonymizer};
pub use restore::Restorer;
pub use types::{PiiKind, Span};
