//! A [`TokenSource`] for tests, benchmarks and `serve --simulate`: mints JWT-shaped
//! tokens the simulated tenant accepts and counts how often it was asked.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::identity::claims::{APP_ONLY_MARKER_WID, EXCHANGE_MANAGE_AS_APP};
use crate::identity::{AccessToken, IdentityError, TokenSource};
use crate::simulator::jwt;

/// The Exchange Administrator directory role.
pub const EXCHANGE_ADMINISTRATOR: &str = "29232cdf-9323-42fd-ade2-1d097af3e4de";

/// Mints tokens with the claims it was given; `token` serves the cached one, `refresh`
/// always mints a new one (a different token with the same claims).
#[derive(Debug)]
pub struct SimulatedTokens {
    claims: Mutex<Value>,
    cached: Mutex<Option<AccessToken>>,
    token_calls: AtomicUsize,
    refresh_calls: AtomicUsize,
    challenges: Mutex<Vec<Option<String>>>,
}

impl SimulatedTokens {
    /// Tokens for `tenant_id` and `resource` with `Exchange.ManageAsApp` and the Exchange
    /// Administrator role, valid for an hour from `now`.
    pub fn for_tenant(tenant_id: &str, resource: &str, now: DateTime<Utc>) -> Self {
        Self::with_claims(json!({
            "tid": tenant_id,
            "aud": resource,
            "appid": "11111111-2222-3333-4444-555555555555",
            "oid": "66666666-7777-8888-9999-000000000000",
            "roles": [EXCHANGE_MANAGE_AS_APP],
            "wids": [APP_ONLY_MARKER_WID, EXCHANGE_ADMINISTRATOR],
            "exp": now.timestamp() + 3600,
            "ver": "1.0",
        }))
    }

    pub fn with_claims(claims: Value) -> Self {
        Self {
            claims: Mutex::new(claims),
            cached: Mutex::new(None),
            token_calls: AtomicUsize::new(0),
            refresh_calls: AtomicUsize::new(0),
            challenges: Mutex::new(Vec::new()),
        }
    }

    /// Changes a claim of future tokens (and drops the cached one).
    pub fn set_claim(&self, name: &str, value: Value) {
        if let Value::Object(map) = &mut *lock(&self.claims) {
            map.insert(name.to_string(), value);
        }
        *lock(&self.cached) = None;
    }

    pub fn token_calls(&self) -> usize {
        self.token_calls.load(Ordering::SeqCst)
    }

    pub fn refresh_calls(&self) -> usize {
        self.refresh_calls.load(Ordering::SeqCst)
    }

    /// The claims challenges passed to `refresh`, in order.
    pub fn challenges(&self) -> Vec<Option<String>> {
        lock(&self.challenges).clone()
    }

    fn mint(&self) -> AccessToken {
        let claims = lock(&self.claims).clone();
        let expires = claims
            .get("exp")
            .and_then(Value::as_i64)
            .and_then(|e| DateTime::from_timestamp(e, 0))
            .unwrap_or_default();
        AccessToken::new(jwt::mint(&claims), expires)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl TokenSource for SimulatedTokens {
    async fn token(&self, _resource: &str) -> Result<AccessToken, IdentityError> {
        self.token_calls.fetch_add(1, Ordering::SeqCst);
        let mut cached = lock(&self.cached);
        Ok(cached.get_or_insert_with(|| self.mint()).clone())
    }

    async fn refresh(
        &self,
        _resource: &str,
        claims: Option<&str>,
    ) -> Result<AccessToken, IdentityError> {
        self.refresh_calls.fetch_add(1, Ordering::SeqCst);
        lock(&self.challenges).push(claims.map(str::to_string));
        let token = self.mint();
        *lock(&self.cached) = Some(token.clone());
        Ok(token)
    }
}
