//! Which secrets to read again: a bounded map from reference to the last value read and
//! when. Pure: `now` comes in. A stale value is still handed out (as [`Lookup::Stale`]) so
//! a caller can keep working with it when the vault is briefly unreachable.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Secret, SecretRef};

/// What the cache holds for a reference.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// Read less than `refresh_interval` ago: use it.
    Fresh(&'a Secret),
    /// Older: read it again; use this if that fails.
    Stale(&'a Secret),
    Missing,
}

#[derive(Debug)]
pub struct SecretCache {
    refresh_interval: Duration,
    max_entries: usize,
    entries: HashMap<SecretRef, (Secret, DateTime<Utc>)>,
}

impl SecretCache {
    /// Holds at most `max_entries` secrets (at least 1); the oldest read goes first.
    pub fn new(refresh_interval: Duration, max_entries: usize) -> Self {
        Self {
            refresh_interval,
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
        }
    }

    pub fn lookup(&self, secret: &SecretRef, now: DateTime<Utc>) -> Lookup<'_> {
        match self.entries.get(secret) {
            None => Lookup::Missing,
            Some((value, read_at)) => {
                let age = (now - *read_at).to_std().unwrap_or(Duration::ZERO);
                if age < self.refresh_interval {
                    Lookup::Fresh(value)
                } else {
                    Lookup::Stale(value)
                }
            }
        }
    }

    /// Remembers `value` as read at `now`, evicting the oldest entry when full.
    pub fn insert(&mut self, secret: SecretRef, value: Secret, now: DateTime<Utc>) {
        if !self.entries.contains_key(&secret) && self.entries.len() >= self.max_entries {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, read_at))| *read_at)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(secret, (value, now));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use secrecy::SecretString;

    fn reference(name: &str) -> SecretRef {
        SecretRef::parse(&format!("https://v.vault.azure.net/secrets/{name}")).unwrap()
    }

    fn secret(version: &str) -> Secret {
        Secret::new(
            SecretString::from("x"),
            format!("https://v.vault.azure.net/secrets/a/{version}"),
            None,
        )
    }

    #[test]
    fn a_secret_is_fresh_until_the_refresh_interval_then_stale() {
        let t0 = Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap();
        let mut cache = SecretCache::new(Duration::from_secs(300), 8);
        assert!(matches!(cache.lookup(&reference("a"), t0), Lookup::Missing));
        cache.insert(reference("a"), secret("v1"), t0);
        let at = |secs| t0 + chrono::Duration::seconds(secs);
        assert!(
            matches!(cache.lookup(&reference("a"), at(299)), Lookup::Fresh(s) if s.version == "v1")
        );
        assert!(
            matches!(cache.lookup(&reference("a"), at(300)), Lookup::Stale(s) if s.version == "v1")
        );
        // A clock that stepped back keeps the entry fresh rather than failing.
        assert!(matches!(
            cache.lookup(&reference("a"), at(-60)),
            Lookup::Fresh(_)
        ));
        cache.insert(reference("a"), secret("v2"), at(301));
        assert!(
            matches!(cache.lookup(&reference("a"), at(302)), Lookup::Fresh(s) if s.version == "v2")
        );
    }

    #[test]
    fn a_full_cache_evicts_the_oldest_read() {
        let t0 = Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap();
        let mut cache = SecretCache::new(Duration::from_secs(300), 2);
        cache.insert(reference("a"), secret("1"), t0);
        cache.insert(
            reference("b"),
            secret("1"),
            t0 + chrono::Duration::seconds(1),
        );
        cache.insert(
            reference("c"),
            secret("1"),
            t0 + chrono::Duration::seconds(2),
        );
        assert_eq!(cache.len(), 2);
        assert!(matches!(cache.lookup(&reference("a"), t0), Lookup::Missing));
        assert!(matches!(
            cache.lookup(&reference("c"), t0),
            Lookup::Fresh(_)
        ));
    }
}
