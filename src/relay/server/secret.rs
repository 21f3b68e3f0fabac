//! server::secret: device tokens, registration codes and their hashes (ring).
//!
//! Owns how secrets are made (the system CSPRNG through ring's `SystemRandom`) and
//! hashed (SHA-256) and compared (constant time). Must not store or log a secret in
//! clear: callers keep only hashes.
//!
//! A token is 32 random bytes written as 64 hex digits, so an unsalted SHA-256 is
//! enough. A code has only six digits: its hash (salted with the number) keeps it out
//! of the database in clear, but the real protection is its short life and the
//! attempt limit.

use ring::rand::{SecureRandom, SystemRandom};

use crate::relay::protocol::CODE_DIGITS;

/// The system random source failed (no entropy): nothing secret can be made.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub(super) struct RandomError;

/// A new device token.
pub(super) fn new_token() -> Result<String, RandomError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomError)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A new registration code: `CODE_DIGITS` uniformly random decimal digits.
pub(super) fn new_code() -> Result<String, RandomError> {
    const SPACE: u32 = 10u32.pow(CODE_DIGITS as u32);
    // Largest multiple of SPACE that fits: reject above it so every code is equally likely.
    const LIMIT: u32 = u32::MAX - u32::MAX % SPACE;
    let rng = SystemRandom::new();
    loop {
        let mut bytes = [0u8; 4];
        rng.fill(&mut bytes).map_err(|_| RandomError)?;
        let value = u32::from_le_bytes(bytes);
        if value < LIMIT {
            return Ok(format!("{:0width$}", value % SPACE, width = CODE_DIGITS));
        }
    }
}

/// The stored form of a token.
pub(super) fn token_hash(token: &str) -> Vec<u8> {
    sha256(&[token.as_bytes()])
}

/// The stored form of a code for `number`.
pub(super) fn code_hash(number: &str, code: &str) -> Vec<u8> {
    sha256(&[number.as_bytes(), b"\0", code.as_bytes()])
}

/// Compares two hashes in constant time.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    ctx.finish().as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_codes_look_right_and_differ() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        let codes: Vec<String> = (0..50).map(|_| new_code().unwrap()).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.len() == CODE_DIGITS && c.bytes().all(|d| d.is_ascii_digit()))
        );
        assert!(codes.iter().any(|c| c != &codes[0]));
    }

    #[test]
    fn hashes() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let hex: String = token_hash("abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected);
        assert_ne!(code_hash("+1555", "123456"), code_hash("+1556", "123456"));
        assert!(same(&token_hash("x"), &token_hash("x")));
        assert!(!same(&token_hash("x"), &token_hash("y")));
        assert!(!same(b"ab", b"abc"));
    }
}
