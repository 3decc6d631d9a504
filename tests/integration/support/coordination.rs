//! Helpers for the coordination tests: the Azurite started by `scripts/test.sh`, a unique
//! container per test reached with an account SAS, a raw client to break leases with, the
//! two backends behind one type so the same test bodies run against both, and a TCP proxy
//! that can be switched off to simulate a storage outage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use azure_storage_blob::BlobContainerClient;
use azure_storage_blob::models::{
    BlobClientBreakLeaseOptions, BlobClientGetPropertiesResultHeaders, LeaseState,
};
use chrono::{TimeZone, Utc};
use runbook_worker::clock::{SharedClock, SystemClock};
use runbook_worker::coordination::sas::{AccountSas, DEV_ACCOUNT_KEY};
use runbook_worker::coordination::{
    AzureBlobCoordinator, AzureBlobOptions, Coordinator, LocalCoordinator, OccurrenceGuard,
    StorageTarget,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The Azurite blob endpoint `scripts/test.sh` exported. Fails the test, never skips it.
pub fn azurite_endpoint() -> String {
    match std::env::var("AZURITE_BLOB_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => endpoint.trim_end_matches('/').to_string(),
        _ => panic!(
            "AZURITE_BLOB_ENDPOINT is not set: run the tests with ./scripts/test.sh (it starts Azurite on 127.0.0.1 and sets it), e.g. ./scripts/test.sh coordination"
        ),
    }
}

/// A fresh container name (3–63 lowercase letters, digits and dashes).
pub fn unique_container() -> String {
    format!("t-{}", uuid::Uuid::new_v4().simple())
}

/// The account SAS query for the emulator, valid for an hour.
pub fn emulator_sas_query() -> String {
    AccountSas::for_emulator(Utc::now() + chrono::Duration::hours(1))
        .query(DEV_ACCOUNT_KEY)
        .expect("the dev account key is valid base64")
}

/// Short renewals and grace so that fault tests take seconds; the lease itself cannot be
/// shorter than the service's 15 s minimum.
pub fn fast_options() -> AzureBlobOptions {
    AzureBlobOptions {
        lease_duration: Duration::from_secs(15),
        renew_interval: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        max_retries: 1,
        orphan_grace: Duration::from_millis(300),
    }
}

pub fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// A schedule instant: `minute` minutes past a fixed hour.
pub fn instant(minute: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 29, 10, 0, 0).unwrap() + chrono::Duration::minutes(minute.into())
}

/// One test's container in Azurite (created by the coordinator's first call).
#[derive(Clone, Debug)]
pub struct AzuriteContainer {
    pub endpoint: String,
    pub name: String,
    sas_query: String,
}

impl AzuriteContainer {
    pub fn new() -> Self {
        Self {
            endpoint: azurite_endpoint(),
            name: unique_container(),
            sas_query: emulator_sas_query(),
        }
    }

    /// The same container reached through another endpoint (a proxy, a closed port).
    pub fn with_endpoint(&self, endpoint: String) -> Self {
        Self {
            endpoint,
            ..self.clone()
        }
    }

    /// The container URL with its SAS, as `sas_url` would hold it.
    pub fn sas_url(&self) -> SecretString {
        SecretString::from(format!(
            "{}/{}?{}",
            self.endpoint, self.name, self.sas_query
        ))
    }

    /// The signature alone, to check it never leaks.
    pub fn signature(&self) -> String {
        url::form_urlencoded::parse(self.sas_query.as_bytes())
            .find(|(k, _)| k == "sig")
            .map(|(_, v)| v.into_owned())
            .expect("the query has a signature")
    }

    /// A coordinator with its own client, as one replica would have.
    pub fn coordinator(&self, options: AzureBlobOptions) -> Coordinator {
        Coordinator::AzureBlob(
            AzureBlobCoordinator::new(StorageTarget::SasUrl(self.sas_url()), options, clock())
                .expect("valid SAS URL"),
        )
    }

    /// A plain SDK client on the container, playing an operator or another tool.
    pub fn raw(&self) -> BlobContainerClient {
        let url = url::Url::parse(self.sas_url().expose_secret()).unwrap();
        BlobContainerClient::new(url, None, None).unwrap()
    }

    /// Breaks the lease on a runbook's lock at once, as `az storage blob lease break` would.
    pub async fn break_lock(&self, runbook: &str) {
        self.raw()
            .blob_client(&runbook_worker::coordination::record::lock_blob(runbook))
            .break_lease(Some(BlobClientBreakLeaseOptions {
                break_period: Some(0),
                ..Default::default()
            }))
            .await
            .expect("break the lease");
    }

    /// The lease state of a runbook's lock as the service reports it.
    pub async fn lock_state(&self, runbook: &str) -> Option<LeaseState> {
        let properties = self
            .raw()
            .blob_client(&runbook_worker::coordination::record::lock_blob(runbook))
            .get_properties(None)
            .await
            .ok()?;
        properties.lease_state().ok().flatten()
    }
}

/// Either implementation, so that one test body checks both have the same semantics.
#[derive(Clone, Debug)]
pub enum Backend {
    Local(LocalCoordinator),
    Azure(AzuriteContainer),
}

impl Backend {
    pub fn local() -> Self {
        Self::Local(LocalCoordinator::new(clock()))
    }

    pub fn azure() -> Self {
        Self::Azure(AzuriteContainer::new())
    }

    /// `n` replicas: clones of one in-process coordinator, or separate Azure clients on the
    /// same container.
    pub fn replicas(&self, n: usize) -> Vec<Coordinator> {
        (0..n)
            .map(|_| match self {
                Self::Local(local) => Coordinator::Local(local.clone()),
                Self::Azure(container) => container.coordinator(fast_options()),
            })
            .collect()
    }

    /// Makes the holder of `guard` disappear as a crashed replica would: renewals stop and
    /// nothing is released. In Azure the lease is then broken so the test need not wait for
    /// it to expire.
    pub async fn crash(&self, guard: OccurrenceGuard) {
        let runbook = guard.runbook().to_string();
        drop(guard);
        if let Self::Azure(container) = self {
            container.break_lock(&runbook).await;
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of Azurite that can be switched off: while off it
/// refuses new connections and cuts open ones, as an unreachable storage account would.
pub struct SwitchableProxy {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    accept_loop: JoinHandle<()>,
}

impl SwitchableProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, up_rx) = watch::channel(true);
        let accept_loop = tokio::spawn(async move {
            // Connection tasks live in this set, so aborting the loop ends them too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { continue };
                        if !*up_rx.borrow() {
                            drop(inbound);
                            continue;
                        }
                        let mut down = up_rx.clone();
                        connections.spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                            let mut inbound = inbound;
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = down.wait_for(|up| !*up) => {}
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Self {
            addr,
            up,
            accept_loop,
        }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// The Azurite account endpoint seen through the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}/devstoreaccount1", self.addr)
    }
}

impl Drop for SwitchableProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// The socket address of the Azurite endpoint.
pub fn azurite_addr() -> SocketAddr {
    let endpoint = url::Url::parse(&azurite_endpoint()).expect("AZURITE_BLOB_ENDPOINT is a URL");
    let port = endpoint.port().expect("AZURITE_BLOB_ENDPOINT has a port");
    SocketAddr::from(([127, 0, 0, 1], port))
}
