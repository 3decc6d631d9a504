//! [`TokenProvider`]: one identity's tokens, cached per resource and shared by every job.
//!
//! What it adds to the SDK credentials:
//! - **Single flight.** At most one fetch per resource is in flight; every caller that finds
//!   no usable token awaits that one fetch (500 concurrent first callers → 1 request). The
//!   fetch runs as a task the provider owns, so a caller that gives up does not cancel it.
//! - **Refresh ahead.** After the first fetch, a background task per resource refreshes at
//!   the time [`policy::refresh_at`] gives (half-life for long tokens). Callers keep getting
//!   the cached token meanwhile and never wait for a refresh while it is usable.
//! - **Riding out failures.** A failed refresh leaves the cached token in place; the task
//!   logs the failure once (then at debug until it recovers) and tries again with backoff.
//! - **Fast cached gets.** A read lock on a map and an `Arc` clone; no await, no allocation
//!   beyond the boxed future of the async trait.
//!
//! Background work lives on a [`TaskTracker`] the provider owns and stops on its
//! [`CancellationToken`]: [`TokenProvider::shutdown`] cancels and waits for it; dropping
//! the provider cancels it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::fetch::Fetcher;
use super::policy::{self, RetryPolicy};
use super::source::{IdentitySelector, ProviderDescription, resolve};
use super::{AccessToken, IdentityEnvironment, IdentityError, IdentitySettings, TokenSource};
use crate::clock::{SharedClock, SystemClock};

/// How a provider behaves; [`ProviderOptions::default`] is production.
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    /// Retry timings of token requests (tests scale them down).
    pub retry: RetryPolicy,
    /// Wall-clock time for expiry and refresh decisions (tests use a `ManualClock`).
    pub clock: SharedClock,
    /// A token fetched less than this long ago is returned by [`TokenSource::refresh`]
    /// instead of fetching again (fifty jobs hitting the same 401 cause one fetch), and
    /// background refreshes are never scheduled closer together than this.
    pub min_refresh_interval: Duration,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            clock: Arc::new(SystemClock),
            min_refresh_interval: Duration::from_secs(10),
        }
    }
}

/// What is cached for a resource; for diagnostics and tests (no token text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStatus {
    pub fetched_at: DateTime<Utc>,
    pub expires_on: DateTime<Utc>,
    /// When the background refresh is due.
    pub refresh_at: DateTime<Utc>,
    /// Until when callers are handed this token.
    pub usable_until: DateTime<Utc>,
}

/// One identity's tokens, per resource. See the module documentation.
pub struct TokenProvider {
    inner: Arc<Inner>,
}

struct Inner {
    fetcher: Fetcher,
    options: ProviderOptions,
    entries: RwLock<HashMap<String, Arc<Entry>>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

type SharedFetch = Shared<BoxFuture<'static, Result<AccessToken, IdentityError>>>;

/// The state of one resource.
struct Entry {
    resource: String,
    cached: RwLock<Option<Cached>>,
    /// The fetch in flight, which every caller without a usable token awaits.
    inflight: Mutex<Option<SharedFetch>>,
    refresher_started: AtomicBool,
    /// Woken when a new token is stored, so the refresher reschedules.
    stored: Notify,
}

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    status: CacheStatus,
}

impl TokenProvider {
    /// The provider for the identity `[identity]` and the environment select, with
    /// production timings. Does no I/O: the first token is fetched on first use.
    pub fn from_settings(
        settings: &IdentitySettings,
        env: &IdentityEnvironment,
    ) -> Result<Arc<Self>, IdentityError> {
        Self::with_options(settings, env, None, ProviderOptions::default())
    }

    /// As [`TokenProvider::from_settings`], with `selector` overriding the configured
    /// identity (a runbook's own) and explicit options.
    pub fn with_options(
        settings: &IdentitySettings,
        env: &IdentityEnvironment,
        selector: Option<&IdentitySelector>,
        options: ProviderOptions,
    ) -> Result<Arc<Self>, IdentityError> {
        let resolved = resolve(settings, env, selector)?;
        let fetcher = Fetcher::new(resolved, options.retry.clone())?;
        Ok(Arc::new(Self {
            inner: Arc::new(Inner {
                fetcher,
                options,
                entries: RwLock::new(HashMap::new()),
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }))
    }

    /// Source, identity and endpoint, for `token` and `doctor`.
    pub fn describe(&self) -> &ProviderDescription {
        self.inner.fetcher.resolved().description()
    }

    /// The identity this provider uses.
    pub fn selector(&self) -> &IdentitySelector {
        &self.inner.fetcher.resolved().selector
    }

    /// What is cached for `resource`, if anything.
    pub fn cache_status(&self, resource: &str) -> Option<CacheStatus> {
        let entry = self.inner.existing_entry(resource)?;
        let cached = entry.cached.read().unwrap_or_else(|p| p.into_inner());
        cached.as_ref().map(|c| c.status)
    }

    /// Stops background refreshes and in-flight fetches and waits until they have ended.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl Drop for TokenProvider {
    fn drop(&mut self) {
        // The tasks hold the inner state, not the provider; stop them with it.
        self.inner.cancel.cancel();
        self.inner.tracker.close();
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("description", self.describe())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenSource for TokenProvider {
    async fn token(&self, resource: &str) -> Result<AccessToken, IdentityError> {
        let entry = self.inner.entry(resource);
        if let Some(token) = entry.usable(self.inner.options.clock.now()) {
            return Ok(token);
        }
        self.inner.clone().fetch_shared(&entry).await
    }

    async fn refresh(
        &self,
        resource: &str,
        claims: Option<&str>,
    ) -> Result<AccessToken, IdentityError> {
        if claims.is_some() {
            // Managed-identity endpoints take no claims challenge; a fresh token is all
            // that can be done.
            debug!(
                resource,
                "claims challenge ignored by managed identity sources"
            );
        }
        let entry = self.inner.entry(resource);
        let now = self.inner.options.clock.now();
        {
            let mut cached = entry.cached.write().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cached.as_ref() {
                let recent = now - c.status.fetched_at
                    < chrono_duration(self.inner.options.min_refresh_interval);
                if recent && now < c.status.usable_until {
                    return Ok(c.token.clone());
                }
            }
            *cached = None;
        }
        self.inner.clone().fetch_shared(&entry).await
    }
}

impl Inner {
    fn existing_entry(&self, resource: &str) -> Option<Arc<Entry>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(resource).cloned()
    }

    fn entry(&self, resource: &str) -> Arc<Entry> {
        if let Some(entry) = self.existing_entry(resource) {
            return entry;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries
            .entry(resource.to_string())
            .or_insert_with(|| {
                Arc::new(Entry {
                    resource: resource.to_string(),
                    cached: RwLock::new(None),
                    inflight: Mutex::new(None),
                    refresher_started: AtomicBool::new(false),
                    stored: Notify::new(),
                })
            })
            .clone()
    }

    /// Joins the fetch in flight for `entry`, or starts one on the tracker.
    async fn fetch_shared(
        self: Arc<Self>,
        entry: &Arc<Entry>,
    ) -> Result<AccessToken, IdentityError> {
        let fetch = {
            let mut inflight = entry.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.as_ref() {
                Some(fetch) => fetch.clone(),
                None => {
                    if self.cancel.is_cancelled() {
                        return Err(IdentityError::ShutDown);
                    }
                    // Spawned while holding the lock, so the task's own clearing of
                    // `inflight` cannot run before the future is stored.
                    let task = self
                        .tracker
                        .spawn(self.clone().fetch_and_store(entry.clone()));
                    // Weak: the future lives in the entry's own `inflight`.
                    let owner = Arc::downgrade(entry);
                    let fetch = task
                        .map(move |joined| {
                            joined.unwrap_or_else(|e| {
                                // The task died before clearing `inflight`; clear it here so
                                // the next caller starts a new fetch instead of this error.
                                if let Some(owner) = owner.upgrade() {
                                    *owner.inflight.lock().unwrap_or_else(|p| p.into_inner()) =
                                        None;
                                }
                                Err(IdentityError::Unavailable {
                                    message: format!("the token fetch task failed: {e}"),
                                })
                            })
                        })
                        .boxed()
                        .shared();
                    *inflight = Some(fetch.clone());
                    fetch
                }
            }
        };
        fetch.await
    }

    async fn fetch_and_store(
        self: Arc<Self>,
        entry: Arc<Entry>,
    ) -> Result<AccessToken, IdentityError> {
        let result = self.fetcher.fetch(&entry.resource, &self.cancel).await;
        if let Ok(token) = &result {
            let now = self.options.clock.now();
            let min_gap = chrono_duration(self.options.min_refresh_interval);
            let status = CacheStatus {
                fetched_at: now,
                expires_on: token.expires_on,
                refresh_at: policy::refresh_at(now, token.expires_on, now).max(now + min_gap),
                usable_until: policy::usable_until(now, token.expires_on),
            };
            debug!(
                resource = %entry.resource,
                source = %self.fetcher.resolved().kind,
                expires_on = %status.expires_on,
                refresh_at = %status.refresh_at,
                "token fetched"
            );
            *entry.cached.write().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
                token: token.clone(),
                status,
            });
            entry.stored.notify_one();
            if !entry.refresher_started.swap(true, Ordering::AcqRel) {
                self.tracker
                    .spawn(self.clone().refresh_ahead(entry.clone()));
            }
        }
        // After storing: a caller arriving now finds the new token, not a finished fetch.
        *entry.inflight.lock().unwrap_or_else(|p| p.into_inner()) = None;
        result
    }

    /// Refreshes `entry` whenever its token is due, until the provider is cancelled. Boxed
    /// because it and the fetch spawn each other, which an `async fn` cannot express.
    fn refresh_ahead(self: Arc<Self>, entry: Arc<Entry>) -> BoxFuture<'static, ()> {
        async move { self.refresh_loop(entry).await }.boxed()
    }

    async fn refresh_loop(self: Arc<Self>, entry: Arc<Entry>) {
        let mut failed_rounds = 0u32;
        let mut reported = false;
        loop {
            let due = entry
                .cached
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|c| c.status.refresh_at);
            let Some(due) = due else {
                // Dropped by a forced refresh whose fetch failed: wait for the next token.
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = entry.stored.notified() => continue,
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                // A token stored meanwhile (a forced refresh) has its own due time.
                _ = entry.stored.notified() => continue,
                _ = self.options.clock.sleep_until(due) => {}
            }
            match self.clone().fetch_shared(&entry).await {
                Ok(_) => {
                    if reported {
                        info!(resource = %entry.resource, "token refresh recovered");
                    }
                    failed_rounds = 0;
                    reported = false;
                }
                Err(IdentityError::ShutDown) => return,
                Err(error) => {
                    let valid_until = entry
                        .cached
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .map(|c| c.status.usable_until.to_rfc3339());
                    if reported {
                        debug!(resource = %entry.resource, %error, "token refresh failed again");
                    } else {
                        warn!(
                            resource = %entry.resource,
                            %error,
                            serving_until = valid_until.as_deref().unwrap_or("(no token cached)"),
                            "token refresh failed; serving the cached token while it is valid and retrying with backoff"
                        );
                        reported = true;
                    }
                    let delay = self
                        .options
                        .retry
                        .refresh_round_delay(failed_rounds, rand::random::<f64>());
                    failed_rounds = failed_rounds.saturating_add(1);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

impl Entry {
    /// The cached token if callers may still use it at `now`.
    fn usable(&self, now: DateTime<Utc>) -> Option<AccessToken> {
        let cached = self.cached.read().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|c| now < c.status.usable_until)
            .map(|c| c.token.clone())
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// One provider per distinct identity, created on first use and shared: the worker's
/// default identity and every per-runbook `identity = { … }` override.
pub struct TokenProviders {
    settings: IdentitySettings,
    env: IdentityEnvironment,
    options: ProviderOptions,
    default_provider: Arc<TokenProvider>,
    providers: Mutex<HashMap<IdentitySelector, Arc<TokenProvider>>>,
}

impl TokenProviders {
    /// Resolves the default identity at once, so a configuration error stops start-up.
    pub fn new(
        settings: &IdentitySettings,
        env: &IdentityEnvironment,
        options: ProviderOptions,
    ) -> Result<Self, IdentityError> {
        let default_provider = TokenProvider::with_options(settings, env, None, options.clone())?;
        let mut providers = HashMap::new();
        providers.insert(
            default_provider.selector().clone(),
            default_provider.clone(),
        );
        Ok(Self {
            settings: settings.clone(),
            env: env.clone(),
            options,
            default_provider,
            providers: Mutex::new(providers),
        })
    }

    /// The provider of the worker's own identity.
    pub fn default_provider(&self) -> Arc<TokenProvider> {
        self.default_provider.clone()
    }

    /// The provider for `selector`, created on first use; `None` means the default.
    pub fn get(
        &self,
        selector: Option<&IdentitySelector>,
    ) -> Result<Arc<TokenProvider>, IdentityError> {
        let Some(selector) = selector else {
            return Ok(self.default_provider());
        };
        let mut providers = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(provider) = providers.get(selector) {
            return Ok(provider.clone());
        }
        let provider = TokenProvider::with_options(
            &self.settings,
            &self.env,
            Some(selector),
            self.options.clone(),
        )?;
        providers.insert(selector.clone(), provider.clone());
        Ok(provider)
    }

    /// Shuts every provider down and waits for their background work.
    pub async fn shutdown(&self) {
        let providers: Vec<_> = self
            .providers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for provider in providers {
            provider.shutdown().await;
        }
    }
}
