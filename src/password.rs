//! Broker account passwords, stored as Argon2id PHC strings so that the config file
//! never holds a password an attacker could reuse.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("not a password hash in PHC format ($argon2id$...): {0}")]
    Format(argon2::password_hash::Error),
    #[error("cannot hash password: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("password must not be empty")]
    Empty,
}

/// Hashes `password` with Argon2id and a random salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(PasswordError::Hash)
}

/// Whether `hash` is a PHC string this module can verify against.
pub fn check_hash_format(hash: &str) -> Result<(), PasswordError> {
    let parsed = PasswordHash::new(hash).map_err(PasswordError::Format)?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(PasswordError::Format(argon2::password_hash::Error::Algorithm));
    }
    Ok(())
}

/// Constant-time check of `password` against a stored hash. CPU-heavy by design:
/// call it off the async executor.
pub fn verify(password: &[u8], hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// As [`verify`], in `memory` (grown to what the hash's parameters need and kept by
/// the caller), so that a verification allocates nothing: what the broker's verifier
/// threads use, keeping its memory flat whatever the number of logins.
pub fn verify_in(password: &[u8], hash: &str, memory: &mut Vec<argon2::Block>) -> bool {
    use subtle::ConstantTimeEq;
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else { return false };
    let version = match parsed.version {
        Some(version) => match argon2::Version::try_from(version) {
            Ok(version) => version,
            Err(_) => return false,
        },
        None => argon2::Version::default(),
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut output = vec![0u8; expected.len()];
    let hasher = Argon2::new(algorithm, version, params);
    if hasher.hash_password_into_with_memory(password, salt, &mut output, &mut memory[..blocks]).is_err() {
        return false;
    }
    bool::from(output.as_slice().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let stored = hash("correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$"));
        check_hash_format(&stored).unwrap();
        assert!(verify(b"correct horse", &stored));
        assert!(!verify(b"correct horsf", &stored));
        assert!(!verify(b"", &stored));
    }

    #[test]
    fn verifying_in_kept_memory_agrees_with_verify() {
        let stored = hash("correct horse").unwrap();
        let mut memory = Vec::new();
        assert!(verify_in(b"correct horse", &stored, &mut memory));
        let kept = memory.len();
        assert!(!verify_in(b"correct horsf", &stored, &mut memory));
        assert_eq!(memory.len(), kept, "the memory is reused, not grown");
        assert!(!verify_in(b"x", "hunter2", &mut memory));
        assert!(!verify_in(b"x", "$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA", &mut memory));
    }

    #[test]
    fn the_same_password_hashes_differently_each_time() {
        assert_ne!(hash("x").unwrap(), hash("x").unwrap());
    }

    #[test]
    fn plain_text_and_foreign_hashes_are_rejected() {
        assert!(check_hash_format("hunter2").is_err());
        assert!(check_hash_format("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
        assert!(!verify(b"hunter2", "hunter2"));
    }

    #[test]
    fn empty_password_cannot_be_hashed() {
        assert!(matches!(hash(""), Err(PasswordError::Empty)));
    }
}
