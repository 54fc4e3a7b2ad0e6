//! Local passwords, hashed with argon2id.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Hashes a password into a PHC string (argon2id, random salt).
pub fn hash(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

pub fn is_valid_hash(phc: &str) -> bool {
    phc.starts_with("$argon2") && argon2::password_hash::phc::PasswordHash::new(phc).is_ok()
}

/// Verifies a password; CPU-heavy, so call it from a blocking task.
pub fn verify(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// A hash of a random password, verified against when the user does not exist, so that the
/// response time does not tell which user names exist.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash(crate::secret::Secret::generate().expose()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("correct horse").unwrap();
        assert!(is_valid_hash(&h));
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("battery staple", &h));
        assert!(!is_valid_hash("plain"));
    }
}
