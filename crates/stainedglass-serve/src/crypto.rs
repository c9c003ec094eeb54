//! Output protection (`docs/spec.md` §8): the client sends an X25519 public key; the server answers with
//! an ephemeral key of its own and seals every generated token with ChaCha20-Poly1305 under a
//! key derived by HKDF-SHA256 from the shared secret. Nonces are a per-response counter, so a
//! dropped, repeated, reordered or altered token fails to open, and a sealed end record (finish
//! reason and token count) detects truncation.

use crate::protocol::Finish;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::TryRngCore;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

const SALT: &[u8] = b"stainedglass/output-protection/v1";
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

fn cipher(
    secret: &StaticSecret,
    theirs: &PublicKey,
    client: &PublicKey,
    server: &PublicKey,
) -> Result<ChaCha20Poly1305, CryptoError> {
    let shared = secret.diffie_hellman(theirs);
    if !shared.was_contributory() {
        return Err(CryptoError::Degenerate);
    }
    let mut info = Vec::with_capacity(64);
    info.extend_from_slice(client.as_bytes());
    info.extend_from_slice(server.as_bytes());
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(SALT), shared.as_bytes())
        .expand(&info, &mut key)
        .map_err(|_| CryptoError::Degenerate)?;
    Ok(ChaCha20Poly1305::new(Key::from_slice(&key)))
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

    /// Opens a response sealed by the server whose ephemeral key is `server_key_b64`.
    pub fn opener(&self, server_key_b64: &str) -> Result<Opener, CryptoError> {
        let server = parse_key(server_key_b64)?;
        Ok(Opener {
            cipher: cipher(&self.secret, &server, &self.public, &server)?,
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
    pub fn for_client(client_key_b64: &str) -> Result<Self, CryptoError> {
        let client = parse_key(client_key_b64)?;
        let secret = fresh_secret()?;
        let server = PublicKey::from(&secret);
        Ok(Self {
            cipher: cipher(&secret, &client, &client, &server)?,
            counter: 0,
            server_key: b64().encode(server.as_bytes()),
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

    /// The end record: finish reason and the number of tokens sealed before it.
    pub fn seal_end(&mut self, finish: Finish) -> String {
        let count = self.counter;
        let mut p = vec![END, u8::from(finish == Finish::Stop)];
        p.extend_from_slice(&count.to_le_bytes());
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

    /// Opens the end record and checks it counts exactly the tokens opened so far.
    pub fn open_end(&mut self, sealed_b64: &str) -> Result<Finish, CryptoError> {
        let seen = self.counter;
        let p = self.open(sealed_b64)?;
        if p.len() != 10 || p[0] != END {
            return Err(CryptoError::Tampered);
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&p[2..]);
        if u64::from_le_bytes(c) != seen {
            return Err(CryptoError::Tampered);
        }
        Ok(if p[1] == 1 {
            Finish::Stop
        } else {
            Finish::Length
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (ClientKey, Sealer) {
        let c = ClientKey::generate().expect("key");
        let s = Sealer::for_client(&c.public_b64()).expect("sealer");
        (c, s)
    }

    #[test]
    fn tokens_round_trip_and_the_end_record_counts_them() {
        let (c, mut s) = pair();
        let sealed: Vec<String> = [5u32, 17, 2].iter().map(|&t| s.seal_token(t)).collect();
        let end = s.seal_end(Finish::Stop);
        let mut o = c.opener(s.server_key()).expect("opener");
        let ids: Vec<u32> = sealed
            .iter()
            .map(|x| o.open_token(x).expect("open"))
            .collect();
        assert_eq!(ids, [5, 17, 2]);
        assert_eq!(o.open_end(&end), Ok(Finish::Stop));
        // Same token twice seals differently (counter nonce).
        assert_ne!(sealed[0], s.seal_token(5));
    }

    #[test]
    fn tampering_reordering_truncation_and_wrong_keys_are_detected() {
        let (c, mut s) = pair();
        let a = s.seal_token(1);
        let b = s.seal_token(2);
        let end = s.seal_end(Finish::Length);
        // Flipped bit.
        let mut raw = b64().decode(&a).expect("b64");
        raw[0] ^= 1;
        let mut o = c.opener(s.server_key()).expect("o");
        assert_eq!(
            o.open_token(&b64().encode(&raw)),
            Err(CryptoError::Tampered)
        );
        // Reordered.
        let mut o = c.opener(s.server_key()).expect("o");
        assert_eq!(o.open_token(&b), Err(CryptoError::Tampered));
        // Truncated: the end record arrives after one token instead of two.
        let mut o = c.opener(s.server_key()).expect("o");
        o.open_token(&a).expect("a");
        assert_eq!(o.open_end(&end), Err(CryptoError::Tampered));
        // Another client's key.
        let other = ClientKey::generate().expect("k");
        let mut o = other.opener(s.server_key()).expect("o");
        assert_eq!(o.open_token(&a), Err(CryptoError::Tampered));
        // Bad keys.
        assert!(matches!(
            Sealer::for_client("short"),
            Err(CryptoError::BadKey)
        ));
        let zero = b64().encode([0u8; 32]);
        assert!(matches!(
            Sealer::for_client(&zero),
            Err(CryptoError::Degenerate)
        ));
    }
}
