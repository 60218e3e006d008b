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
pub fn verify(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let stored = hash("correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$"));
        check_hash_format(&stored).unwrap();
        assert!(verify("correct horse", &stored));
        assert!(!verify("correct horsf", &stored));
        assert!(!verify("", &stored));
    }

    #[test]
    fn the_same_password_hashes_differently_each_time() {
        assert_ne!(hash("x").unwrap(), hash("x").unwrap());
    }

    #[test]
    fn plain_text_and_foreign_hashes_are_rejected() {
        assert!(check_hash_format("hunter2").is_err());
        assert!(check_hash_format("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
        assert!(!verify("hunter2", "hunter2"));
    }

    #[test]
    fn empty_password_cannot_be_hashed() {
        assert!(matches!(hash(""), Err(PasswordError::Empty)));
    }
}
