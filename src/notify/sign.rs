//! Standard Webhooks v1 signatures (HMAC-SHA256 over `{id}.{timestamp}.{body}`).
//!
//! Written on `hmac` + `sha2` + `base64`, already dependencies, rather than the
//! `standardwebhooks` crate 1.0.1: that crate would add a third `base64` (0.21), a second
//! HMAC implementation (`hmac-sha256`) and `http`/`time` for what is ten lines here. The
//! spec's test vector is checked below.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The decoded HMAC key of a `whsec_` secret. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// `whsec_<base64 of 24–64 bytes>` (the prefix may be left out, as the reference
    /// libraries allow). The error never repeats the secret.
    pub fn parse(text: &str) -> Result<SigningKey, String> {
        let text = text.trim();
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = STANDARD.decode(encoded).map_err(|_| {
            "expected a Standard Webhooks secret: whsec_ followed by base64".to_string()
        })?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "the secret decodes to {} bytes; Standard Webhooks secrets hold 24 to 64 random bytes",
                key.len()
            ));
        }
        Ok(SigningKey(key))
    }

    /// The `webhook-signature` header value: `v1,<base64 HMAC-SHA256>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_test_vector_signs_to_the_published_signature() {
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let signature = key.sign(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(signature, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn bad_secrets_are_refused_without_being_repeated() {
        for bad in ["whsec_not base64!", "whsec_c2hvcnQ=", ""] {
            let err = SigningKey::parse(bad).unwrap_err();
            assert!(
                !err.contains("c2hvcnQ") && !err.contains("not base64!"),
                "{err}"
            );
        }
        let key = SigningKey::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey([redacted])");
    }
}
