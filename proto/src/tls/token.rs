//! Join tokens, in the spirit of Swarm's `SWMTKN-1-<CA digest>-<secret>`:
//! `SHLTKN-1-<SHA-256 of the root CA certificate, hex>-<secret>`.
//!
//! The digest lets a joining node pin the CA before it trusts anything the
//! manager says; the secret proves to the CA that the joiner was given the
//! token. Secrets are compared in constant time.

use std::fmt;

use rand::Rng;
use subtle::ConstantTimeEq;

use super::TlsError;

const PREFIX: &str = "SHLTKN";
const VERSION: &str = "1";
const DIGEST_LEN: usize = 64;
/// 32 characters of base 36: about 165 bits.
const SECRET_LEN: usize = 32;
const SECRET_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A parsed join token. Its `Debug` and `Display` are the only ways to print
/// it, and `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_digest: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({PREFIX}-{VERSION}-{}-…)", self.ca_digest)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.ca_digest, self.secret)
    }
}

impl JoinToken {
    /// A new token for the CA with `ca_digest`, with a fresh random secret.
    pub fn generate(ca_digest: &str) -> Self {
        let mut rng = rand::rng();
        let secret = (0..SECRET_LEN)
            .map(|_| SECRET_ALPHABET[rng.random_range(0..SECRET_ALPHABET.len())] as char)
            .collect();
        JoinToken {
            ca_digest: ca_digest.to_string(),
            secret,
        }
    }

    /// Parse a token as a user pasted it; errors say what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, TlsError> {
        let bad = |why: &str| TlsError::Token(format!("join token is invalid: {why}"));
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let parts: Vec<&str> = text.split('-').collect();
        if parts[0] != PREFIX {
            return Err(bad(&format!("it does not start with {PREFIX}-")));
        }
        if parts.len() != 4 {
            return Err(bad(&format!(
                "expected {PREFIX}-{VERSION}-<CA digest>-<secret>, found {} parts (truncated?)",
                parts.len()
            )));
        }
        if parts[1] != VERSION {
            return Err(bad(&format!("unsupported version {:?}", parts[1])));
        }
        let digest = parts[2];
        if digest.len() != DIGEST_LEN || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(&format!(
                "the CA digest must be {DIGEST_LEN} hex digits, found {} characters (truncated?)",
                digest.len()
            )));
        }
        let secret = parts[3];
        if secret.len() != SECRET_LEN || !secret.bytes().all(|b| SECRET_ALPHABET.contains(&b)) {
            return Err(bad(&format!(
                "the secret must be {SECRET_LEN} characters of [0-9a-z], found {} (truncated?)",
                secret.len()
            )));
        }
        Ok(JoinToken {
            ca_digest: digest.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }

    /// The digest of the root CA certificate this token pins.
    pub fn ca_digest(&self) -> &str {
        &self.ca_digest
    }

    /// True when `other` carries the same secret, compared in constant time.
    pub fn secret_matches(&self, other: &JoinToken) -> bool {
        bool::from(self.secret.as_bytes().ct_eq(other.secret.as_bytes()))
    }

    /// This token for a CA whose digest is `ca_digest` (after a CA rotation the
    /// secret stays, the pin changes).
    pub fn with_digest(&self, ca_digest: &str) -> Self {
        JoinToken {
            ca_digest: ca_digest.to_string(),
            secret: self.secret.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tokens_round_trip_and_secrets_compare() {
        let token = JoinToken::generate(DIGEST);
        let text = token.to_string();
        assert!(text.starts_with("SHLTKN-1-0123"), "{text}");
        let parsed = JoinToken::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.secret_matches(&token));
        assert!(!parsed.secret_matches(&JoinToken::generate(DIGEST)));
        assert_eq!(parsed.ca_digest(), DIGEST);
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let text = JoinToken::generate(DIGEST).to_string();
        let cases = [
            ("", "empty"),
            ("SWMTKN-1-abc-def", "does not start with SHLTKN"),
            (&text[..text.len() - 3], "secret must be 32"),
            (&text[..40], "found 3 parts"),
            (&text.replacen("-0123", "-", 1), "CA digest must be 64"),
            ("SHLTKN-1-abc", "found 3 parts"),
            (&text.replacen("-1-", "-2-", 1), "unsupported version"),
        ];
        for (input, want) in cases {
            let err = JoinToken::parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }
}
