//! Output protection (`docs/spec.md` §8): the client sends a fresh X25519 public key `c`; the
//! server answers with a fresh key `e` of its own and seals every generated token with
//! ChaCha20-Poly1305 under a key derived by HKDF-SHA256 from two exchanges: `DH(e, c)` and
//! `DH(s, c)`, where `s` is the server's static identity key, whose public half the client knows
//! beforehand (pinned with `--server-key`, or read from `/v1/model` at start-up). Only the holder
//! of `s` can derive the key, so a party in the middle cannot answer in the server's place (the
//! pattern of Noise's NK handshake). Nonces are a per-response counter, so a dropped, repeated,
//! reordered or altered token fails to open; a sealed end record (finish reason, token count and
//! prompt tokens) detects truncation and carries the usage the client reports.

use crate::protocol::{Finish, Usage};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::TryRngCore;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

const SALT: &[u8] = b"stainedglass/output-protection/v2";
const TOKEN: u8 = b'T';
const END: u8 = b'E';

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the X25519 public key is not 32 bytes of base64")]
    BadKey,
    #[error("the key exchange produced a degenerate secret (low-order public key)")]
    Degenerate,
    #[error("sealed output failed to open: tampered, reordered, truncated or not for this key")]
    Tampered,
    #[error("the operating system's random source failed: {0}")]
    Entropy(String),
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn parse_key(s: &str) -> Result<PublicKey, CryptoError> {
    let bytes: [u8; 32] = b64()
        .decode(s.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(CryptoError::BadKey)?;
    Ok(PublicKey::from(bytes))
}

fn fresh_secret() -> Result<StaticSecret, CryptoError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| CryptoError::Entropy(e.to_string()))?;
    Ok(StaticSecret::from(bytes))
}

/// The key of one response: HKDF over `DH(ephemeral, client) ‖ DH(static, client)`, bound to
/// the three public keys.
fn cipher(
    exchanges: [x25519_dalek::SharedSecret; 2],
    client: &PublicKey,
    ephemeral: &PublicKey,
    identity: &PublicKey,
) -> Result<ChaCha20Poly1305, CryptoError> {
    let mut ikm = Vec::with_capacity(64);
    for shared in &exchanges {
        if !shared.was_contributory() {
            return Err(CryptoError::Degenerate);
        }
        ikm.extend_from_slice(shared.as_bytes());
    }
    let mut info = Vec::with_capacity(96);
    for k in [client, ephemeral, identity] {
        info.extend_from_slice(k.as_bytes());
    }
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(SALT), &ikm)
        .expand(&info, &mut key)
        .map_err(|_| CryptoError::Degenerate)?;
    Ok(ChaCha20Poly1305::new(Key::from_slice(&key)))
}

/// The server's long-lived X25519 identity: clients pin its public half.
pub struct ServerIdentity {
    secret: StaticSecret,
    public: PublicKey,
}

impl ServerIdentity {
    /// A fresh identity from the OS random source.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self::from_secret(fresh_secret()?))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The identity whose secret is `b64` (32 bytes of base64, as [`Self::secret_b64`] writes).
    pub fn from_secret_b64(b64_secret: &str) -> Result<Self, CryptoError> {
        let bytes: [u8; 32] = b64()
            .decode(b64_secret.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(CryptoError::BadKey)?;
        Ok(Self::from_secret(StaticSecret::from(bytes)))
    }

    /// The secret, base64 (for a key file; keep it private).
    pub fn secret_b64(&self) -> String {
        b64().encode(self.secret.to_bytes())
    }

    /// The public key clients pin (base64).
    pub fn public_b64(&self) -> String {
        b64().encode(self.public.as_bytes())
    }
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("public", &self.public_b64())
            .finish_non_exhaustive()
    }
}

/// A server's public identity key, as a client pins it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerKey(PublicKey);

impl ServerKey {
    pub fn parse(b64_key: &str) -> Result<Self, CryptoError> {
        parse_key(b64_key).map(Self)
    }

    pub fn to_b64(&self) -> String {
        b64().encode(self.0.as_bytes())
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    *Nonce::from_slice(&n)
}

/// The client's key pair for one request.
pub struct ClientKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl ClientKey {
    /// A fresh key pair from the OS random source.
    pub fn generate() -> Result<Self, CryptoError> {
        let secret = fresh_secret()?;
        let public = PublicKey::from(&secret);
        Ok(Self { secret, public })
    }

    /// The value of the `x-sgt-client-key` header.
    pub fn public_b64(&self) -> String {
        b64().encode(self.public.as_bytes())
    }

    /// Opens a response sealed with the ephemeral key `ephemeral_b64` by the server whose
    /// identity is `server`; a response sealed by anyone else fails to open.
    pub fn opener(&self, ephemeral_b64: &str, server: &ServerKey) -> Result<Opener, CryptoError> {
        let ephemeral = parse_key(ephemeral_b64)?;
        let exchanges = [
            self.secret.diffie_hellman(&ephemeral),
            self.secret.diffie_hellman(&server.0),
        ];
        Ok(Opener {
            cipher: cipher(exchanges, &self.public, &ephemeral, &server.0)?,
            counter: 0,
        })
    }
}

/// Server side: seals one response for one client key.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    counter: u64,
    server_key: String,
}

impl Sealer {
    /// Seals one response for the client key `client_key_b64`, as `identity`.
    pub fn for_client(
        client_key_b64: &str,
        identity: &ServerIdentity,
    ) -> Result<Self, CryptoError> {
        let client = parse_key(client_key_b64)?;
        let secret = fresh_secret()?;
        let ephemeral = PublicKey::from(&secret);
        let exchanges = [
            secret.diffie_hellman(&client),
            identity.secret.diffie_hellman(&client),
        ];
        Ok(Self {
            cipher: cipher(exchanges, &client, &ephemeral, &identity.public)?,
            counter: 0,
            server_key: b64().encode(ephemeral.as_bytes()),
        })
    }

    /// The server's ephemeral public key (base64), sent with the response.
    pub fn server_key(&self) -> &str {
        &self.server_key
    }

    fn seal(&mut self, plain: &[u8]) -> String {
        let n = nonce(self.counter);
        self.counter += 1;
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ct = self.cipher.encrypt(&n, plain).unwrap_or_default();
        b64().encode(ct)
    }

    pub fn seal_token(&mut self, id: u32) -> String {
        let mut p = vec![TOKEN];
        p.extend_from_slice(&id.to_le_bytes());
        self.seal(&p)
    }

    /// The end record: finish reason, the number of tokens sealed before it and the prompt's
    /// length (the usage the client reports).
    pub fn seal_end(&mut self, finish: Finish, prompt_tokens: usize) -> String {
        let count = self.counter;
        let mut p = vec![END, u8::from(finish == Finish::Stop)];
        p.extend_from_slice(&count.to_le_bytes());
        p.extend_from_slice(&(prompt_tokens as u64).to_le_bytes());
        self.seal(&p)
    }
}

/// Client side: opens one sealed response, in order.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl Opener {
    fn open(&mut self, sealed_b64: &str) -> Result<Vec<u8>, CryptoError> {
        let ct = b64()
            .decode(sealed_b64)
            .map_err(|_| CryptoError::Tampered)?;
        let p = self
            .cipher
            .decrypt(&nonce(self.counter), ct.as_slice())
            .map_err(|_| CryptoError::Tampered)?;
        self.counter += 1;
        Ok(p)
    }

    pub fn open_token(&mut self, sealed_b64: &str) -> Result<u32, CryptoError> {
        let p = self.open(sealed_b64)?;
        match p.as_slice() {
            [TOKEN, a, b, c, d] => Ok(u32::from_le_bytes([*a, *b, *c, *d])),
            _ => Err(CryptoError::Tampered),
        }
    }

    /// Opens the end record and checks it counts exactly the tokens opened so far; returns the
    /// finish reason and the usage it carries.
    pub fn open_end(&mut self, sealed_b64: &str) -> Result<(Finish, Usage), CryptoError> {
        let seen = self.counter;
        let p = self.open(sealed_b64)?;
        if p.len() != 18 || p[0] != END {
            return Err(CryptoError::Tampered);
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&p[at..at + 8]);
            u64::from_le_bytes(w)
        };
        if word(2) != seen {
            return Err(CryptoError::Tampered);
        }
        let finish = if p[1] == 1 {
            Finish::Stop
        } else {
            Finish::Length
        };
        let usage = Usage {
            prompt_tokens: word(10) as usize,
            completion_tokens: seen as usize,
        };
        Ok((finish, usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (ServerIdentity, ServerKey) {
        let id = ServerIdentity::generate().expect("identity");
        let key = ServerKey::parse(&id.public_b64()).expect("key");
        (id, key)
    }

    fn pair() -> (ClientKey, Sealer, ServerKey) {
        let (id, key) = server();
        let c = ClientKey::generate().expect("key");
        let s = Sealer::for_client(&c.public_b64(), &id).expect("sealer");
        (c, s, key)
    }

    #[test]
    fn tokens_round_trip_and_the_end_record_counts_them() {
        let (c, mut s, key) = pair();
        let sealed: Vec<String> = [5u32, 17, 2].iter().map(|&t| s.seal_token(t)).collect();
        let end = s.seal_end(Finish::Stop, 40);
        let mut o = c.opener(s.server_key(), &key).expect("opener");
        let ids: Vec<u32> = sealed
            .iter()
            .map(|x| o.open_token(x).expect("open"))
            .collect();
        assert_eq!(ids, [5, 17, 2]);
        let usage = Usage {
            prompt_tokens: 40,
            completion_tokens: 3,
        };
        assert_eq!(o.open_end(&end), Ok((Finish::Stop, usage)));
        // Same token twice seals differently (counter nonce).
        assert_ne!(sealed[0], s.seal_token(5));
    }

    #[test]
    fn tampering_reordering_truncation_and_wrong_keys_are_detected() {
        let (c, mut s, key) = pair();
        let a = s.seal_token(1);
        let b = s.seal_token(2);
        let end = s.seal_end(Finish::Length, 7);
        // Flipped bit.
        let mut raw = b64().decode(&a).expect("b64");
        raw[0] ^= 1;
        let mut o = c.opener(s.server_key(), &key).expect("o");
        assert_eq!(
            o.open_token(&b64().encode(&raw)),
            Err(CryptoError::Tampered)
        );
        // Reordered.
        let mut o = c.opener(s.server_key(), &key).expect("o");
        assert_eq!(o.open_token(&b), Err(CryptoError::Tampered));
        // Truncated: the end record arrives after one token instead of two.
        let mut o = c.opener(s.server_key(), &key).expect("o");
        o.open_token(&a).expect("a");
        assert_eq!(o.open_end(&end), Err(CryptoError::Tampered));
        // Another client's key.
        let other = ClientKey::generate().expect("k");
        let mut o = other.opener(s.server_key(), &key).expect("o");
        assert_eq!(o.open_token(&a), Err(CryptoError::Tampered));
        // A party in the middle with its own identity cannot seal for a client that pinned the
        // server's: it can run the exchange with the client's key, not derive the server's part.
        let (mallory, _) = server();
        let mut forged = Sealer::for_client(&c.public_b64(), &mallory).expect("forged");
        let t = forged.seal_token(1);
        let mut o = c.opener(forged.server_key(), &key).expect("o");
        assert_eq!(o.open_token(&t), Err(CryptoError::Tampered));
        // Bad keys.
        let (id, _) = server();
        assert!(matches!(
            Sealer::for_client("short", &id),
            Err(CryptoError::BadKey)
        ));
        let zero = b64().encode([0u8; 32]);
        assert!(matches!(
            Sealer::for_client(&zero, &id),
            Err(CryptoError::Degenerate)
        ));
        // An identity survives its key file.
        let again = ServerIdentity::from_secret_b64(&id.secret_b64()).expect("reload");
        assert_eq!(again.public_b64(), id.public_b64());
    }
}
