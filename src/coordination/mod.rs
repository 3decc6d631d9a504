//! Coordination between replicas: each scheduled occurrence runs exactly once.
//!
//! `local` uses in-process locks; `azure-blob` uses occurrence records created with
//! `If-None-Match: *` and blob leases in a container, through `azure_storage_blob`.
//! Knows nothing of Exchange.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use crate::duration::HumanDuration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoordinationKind {
    #[default]
    Local,
    AzureBlob,
}

/// `[coordination]` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinationSettings {
    pub kind: CoordinationKind,
    /// `https://<account>.blob.core.windows.net/<container>`, used with the managed identity.
    pub container_url: Option<String>,
    /// A container or account SAS URL instead of the managed identity (a bearer secret).
    pub sas_url: Option<SecretString>,
    pub sas_url_file: Option<PathBuf>,
    /// 15 s to 60 s, as Blob Storage allows.
    pub lease_duration: HumanDuration,
}

impl Default for CoordinationSettings {
    fn default() -> Self {
        Self {
            kind: CoordinationKind::Local,
            container_url: None,
            sas_url: None,
            sas_url_file: None,
            lease_duration: HumanDuration::from_secs(15),
        }
    }
}
