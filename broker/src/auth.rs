//! Credentials: bearer extraction, token minting and hashing.
//!
//! Nothing secret is stored in clear: client, runner and callback tokens are kept as
//! blake3 hashes, and the two fixed secrets are held only as hashes too, so
//! every comparison is between 32-byte digests, done in constant time.

use std::fmt;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

/// Random bytes in every minted token.
const TOKEN_BYTES: usize = 32;

/// The blake3 digest of a secret or token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(secret: &str) -> Self {
        Self(*blake3::hash(secret.as_bytes()).as_bytes())
    }

    /// A digest read back from storage; `None` when it has the wrong length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality, so response timing says nothing about how much matched.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell hashes apart in logs.
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// What a minted token is for; the prefix makes a leaked token recognisable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Runner,
    Callback,
    /// A named client token (`embark-broker tokens add`).
    Client,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Runner => "embark_rt_",
            TokenKind::Callback => "embark_cb_",
            TokenKind::Client => "embark_ct_",
        }
    }
}

/// A fresh random token (32 bytes from the OS-seeded CSPRNG, hex) and its hash.
pub fn mint(kind: TokenKind) -> (String, TokenHash) {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    let mut token = String::with_capacity(kind.prefix().len() + TOKEN_BYTES * 2);
    token.push_str(kind.prefix());
    for byte in bytes {
        token.push(hex_digit(byte >> 4));
        token.push(hex_digit(byte & 0x0f));
    }
    let hash = TokenHash::of(&token);
    (token, hash)
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

/// One of the broker's fixed secrets (client, enrollment), kept only as its hash.
#[derive(Clone, Debug)]
pub struct FixedSecret {
    hash: TokenHash,
}

impl FixedSecret {
    pub fn new(secret: &str) -> Self {
        Self {
            hash: TokenHash::of(secret),
        }
    }

    pub fn verify(&self, presented: &str) -> bool {
        self.hash.matches(&TokenHash::of(presented))
    }
}

/// Why a request carries no usable bearer credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("no Authorization header")]
    Missing,
    #[error("the Authorization header is not `Bearer <credential>`")]
    Malformed,
}

/// The credential of `Authorization: Bearer <credential>`.
pub fn bearer(headers: &HeaderMap) -> Result<&str, BearerError> {
    let value = headers.get(AUTHORIZATION).ok_or(BearerError::Missing)?;
    let value = value.to_str().map_err(|_| BearerError::Malformed)?;
    let (scheme, credential) = value.split_once(' ').ok_or(BearerError::Malformed)?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(BearerError::Malformed);
    }
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn minted_tokens_are_unique_prefixed_and_hash_to_what_is_returned() {
        let (a, hash_a) = mint(TokenKind::Runner);
        let (b, _) = mint(TokenKind::Runner);
        assert_ne!(a, b);
        assert!(a.starts_with("embark_rt_"));
        assert_eq!(a.len(), "embark_rt_".len() + 64);
        assert!(hash_a.matches(&TokenHash::of(&a)));
        assert!(!hash_a.matches(&TokenHash::of(&b)));
        let (c, _) = mint(TokenKind::Callback);
        assert!(c.starts_with("embark_cb_"));
    }

    #[test]
    fn fixed_secrets_verify_only_themselves() {
        let secret = FixedSecret::new("0123456789abcdef");
        assert!(secret.verify("0123456789abcdef"));
        assert!(!secret.verify("0123456789abcdeF"));
        assert!(!secret.verify(""));
    }

    #[test]
    fn bearer_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), Err(BearerError::Missing));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), Err(BearerError::Malformed));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), Err(BearerError::Malformed));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer tok"));
        assert_eq!(bearer(&headers), Ok("tok"));
    }

    #[test]
    fn hashes_round_trip_through_storage_bytes() {
        let hash = TokenHash::of("x");
        assert_eq!(TokenHash::from_slice(hash.as_bytes()), Some(hash));
        assert_eq!(TokenHash::from_slice(&[1, 2, 3]), None);
    }
}
