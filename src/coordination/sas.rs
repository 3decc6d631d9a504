//! Account SAS signing (shared key), for reaching the Azure Storage emulator over plain HTTP.
//!
//! `azure_storage_blob` 1.1 has no shared-key policy and `azure_storage_sas` only builds
//! user-delegation SAS, which Azurite grants only with OAuth. The tests, the benchmark and
//! `serve --simulate`-style setups therefore sign an *account* SAS for Azurite's public dev
//! account themselves. Production uses the managed identity or a SAS URL an operator made;
//! nothing here is needed there. Pure: the expiry comes in as an argument.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The account name of the Azure Storage emulator.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";

/// The emulator's account key. Public and documented by Microsoft; it opens nothing but a
/// local emulator, so it is not a secret.
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The parameters of an account SAS (service version 2020-12-06 or later layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountSas {
    pub account: String,
    /// `sp`, e.g. `rwdlacup`.
    pub permissions: String,
    /// `ss`, e.g. `b` for the blob service.
    pub services: String,
    /// `srt`, e.g. `sco` (service, container, object).
    pub resource_types: String,
    /// `se`.
    pub expiry: DateTime<Utc>,
    /// `spr`; `https,http` is needed for plain-HTTP Azurite.
    pub protocol: String,
    /// `sv`.
    pub version: String,
}

/// A problem with the account key.
#[derive(Debug, thiserror::Error)]
pub enum SasError {
    #[error(
        "the storage account key is not valid base64 (check the key, not the connection string)"
    )]
    KeyNotBase64,
}

impl AccountSas {
    /// Full blob permissions on every container of the emulator's dev account until `expiry`.
    pub fn for_emulator(expiry: DateTime<Utc>) -> Self {
        Self {
            account: DEV_ACCOUNT.to_string(),
            permissions: "rwdlacup".to_string(),
            services: "b".to_string(),
            resource_types: "sco".to_string(),
            expiry,
            protocol: "https,http".to_string(),
            version: "2025-11-05".to_string(),
        }
    }

    fn expiry_text(&self) -> String {
        self.expiry.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// The string the signature covers: each field followed by a newline, in the order the
    /// service rebuilds it (start, IP and encryption scope are empty because they are unused).
    pub fn string_to_sign(&self) -> String {
        let fields = [
            self.account.as_str(),
            self.permissions.as_str(),
            self.services.as_str(),
            self.resource_types.as_str(),
            "", // signed start
            &self.expiry_text(),
            "", // signed IP
            self.protocol.as_str(),
            self.version.as_str(),
            "", // signed encryption scope
        ];
        fields.iter().map(|field| format!("{field}\n")).collect()
    }

    /// The SAS query string (without `?`), signed with the base64 account `key`.
    pub fn query(&self, key: &str) -> Result<String, SasError> {
        let key = STANDARD.decode(key).map_err(|_| SasError::KeyNotBase64)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SasError::KeyNotBase64)?;
        mac.update(self.string_to_sign().as_bytes());
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("sv", &self.version)
            .append_pair("ss", &self.services)
            .append_pair("srt", &self.resource_types)
            .append_pair("sp", &self.permissions)
            .append_pair("se", &self.expiry_text())
            .append_pair("spr", &self.protocol)
            .append_pair("sig", &signature);
        Ok(query.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> AccountSas {
        AccountSas::for_emulator(Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap())
    }

    #[test]
    fn the_string_to_sign_has_ten_newline_terminated_fields_in_service_order() {
        // Written out by hand from the account SAS layout for versions since 2020-12-06.
        let expected = "devstoreaccount1\nrwdlacup\nb\nsco\n\n2030-01-01T00:00:00Z\n\nhttps,http\n2025-11-05\n\n";
        assert_eq!(sample().string_to_sign(), expected);
    }

    #[test]
    fn the_signature_matches_one_computed_independently_with_openssl() {
        // printf '<string to sign>' | openssl dgst -sha256 -mac HMAC \
        //   -macopt hexkey:<hex of the base64-decoded dev key> -binary | base64
        let query = sample().query(DEV_ACCOUNT_KEY).unwrap();
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("sig"),
            Some("sr08n6QmkcZNGCDRB7MHVrnFF3XaNIc7bQBOlAOQdjA=")
        );
        assert_eq!(get("se"), Some("2030-01-01T00:00:00Z"));
        assert_eq!(get("spr"), Some("https,http"));
        assert_eq!(get("sv"), Some("2025-11-05"));
        assert_eq!(get("ss"), Some("b"));
        assert_eq!(get("srt"), Some("sco"));
        assert_eq!(get("sp"), Some("rwdlacup"));
    }

    #[test]
    fn a_key_that_is_not_base64_is_refused() {
        assert!(matches!(
            sample().query("not base64!"),
            Err(SasError::KeyNotBase64)
        ));
    }
}
