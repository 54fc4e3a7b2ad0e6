//! Secrets: random tokens from the OS RNG, their hashes, and constant-time comparison.
//!
//! A token is shown once to whoever it belongs to; everything latchkey keeps is its SHA-256 hash.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRng;
use rand::rngs::SysRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Number of random bytes in every token latchkey issues (256 bits).
pub const TOKEN_BYTES: usize = 32;

/// A freshly generated secret. Its `Debug` never prints the value, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// 256 bits from the operating system's RNG, base64url without padding (43 characters).
    pub fn generate() -> Self {
        Secret(URL_SAFE_NO_PAD.encode(random_bytes::<TOKEN_BYTES>()))
    }

    /// Wraps a value received from a client or an operator.
    pub fn from_string(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Bytes from the OS RNG. Panics only if the OS cannot provide randomness, in which case no
/// token could be issued safely anyway.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SysRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
    bytes
}

/// A short random identifier that is not a secret (link ids, server sessions, request ids).
/// From the thread's ChaCha generator, which the OS seeds (and rand reseeds): every request
/// takes one, and asking the OS each time cost a system call per request.
pub fn random_id() -> String {
    use rand::Rng;
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// SHA-256 of a token, the only form in which tokens are stored or used as keys.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses the 64-character lowercase hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(TokenHash(out))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Whether `sent` equals any of `candidates` (several cookies of one name may be sent), each
/// compared in constant time and all of them compared. An empty `sent` matches nothing.
pub fn matches_any<'a>(sent: &str, candidates: impl Iterator<Item = &'a str>) -> bool {
    let mut matched = false;
    for c in candidates {
        matched |= !sent.is_empty() && constant_time_eq(c.as_bytes(), sent.as_bytes());
    }
    matched
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// True when `s` has the shape of a token latchkey issued: 43 base64url characters.
pub fn looks_like_token(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_43_url_safe_characters_and_differ() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert!(looks_like_token(a.expose()));
        assert_ne!(a, b);
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let s = Secret::generate();
        assert!(!format!("{s:?}").contains(s.expose()));
    }

    #[test]
    fn hashes_are_stable_and_distinct() {
        assert_eq!(TokenHash::of("a"), TokenHash::of("a"));
        assert_ne!(TokenHash::of("a"), TokenHash::of("b"));
        assert_eq!(TokenHash::of("a").to_hex().len(), 64);
        let h = TokenHash::of("a");
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(TokenHash::from_hex("zz"), None);
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
