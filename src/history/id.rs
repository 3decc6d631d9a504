//! Job ids: 26-character ULIDs (48-bit millisecond time, 80 random bits, Crockford
//! base32), so ids sort by creation and can be typed or pasted without quoting.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const LEN: usize = 26;

/// The id of one job.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

/// A string that is not a job id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a job id (expected 26 letters and digits such as 01JQ3Z8W6V3N9R2K5T7X4B1M0C, as listed by `runbook-worker jobs`)"
)]
pub struct InvalidJobId(pub String);

impl JobId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The millisecond the id was made at (its first 48 bits): a job's `created_at`.
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        let millis = self.0.bytes().take(10).try_fold(0i64, |acc, b| {
            let digit = ALPHABET.iter().position(|a| *a == b)?;
            Some(acc * 32 + digit as i64)
        })?;
        DateTime::from_timestamp_millis(millis)
    }

    fn from_u128(value: u128) -> JobId {
        let mut out = [0u8; LEN];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 5 * (LEN - 1 - i);
            *slot = ALPHABET[((value >> shift) & 0x1f) as usize];
        }
        // Every byte comes from ALPHABET, which is ASCII.
        JobId(out.iter().map(|b| char::from(*b)).collect())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for JobId {
    type Err = InvalidJobId;

    /// Accepts lower case too, and Crockford's look-alikes are not remapped: an id is
    /// copied, not dictated.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        let valid = upper.len() == LEN
            && upper.bytes().all(|b| ALPHABET.contains(&b))
            // 26 base32 digits hold 130 bits; a ULID's first digit carries only 3.
            && upper.as_bytes()[0] <= b'7';
        if valid {
            Ok(JobId(upper))
        } else {
            Err(InvalidJobId(s.to_string()))
        }
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

/// A `before` bound of a job listing in the history's id order: what the API's
/// `?before=` and `runbook-worker jobs --before` mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Before {
    /// Before 1970: no job was created then.
    Nothing,
    /// Beyond what a job id can hold (year 10889): every job.
    Everything,
    /// Jobs with an id below this one.
    Id(JobId),
}

impl Before {
    /// Jobs created before `at`: ids are ULIDs, so that is "id below the smallest id of
    /// `at`'s millisecond". Instants a ULID's 48-bit millisecond time cannot hold are not
    /// wrapped or dropped but mean [`Before::Nothing`] or [`Before::Everything`].
    pub fn instant(at: DateTime<Utc>) -> Before {
        let Ok(millis) = u128::try_from(at.timestamp_millis()) else {
            return Before::Nothing;
        };
        if millis >= 1u128 << 48 {
            return Before::Everything;
        }
        Before::Id(JobId::from_u128(millis << 80))
    }

    /// The id bound of a listing (`None`: no bound), or [`NothingBefore`] when no job can
    /// match.
    pub fn bound(self) -> Result<Option<JobId>, NothingBefore> {
        match self {
            Before::Nothing => Err(NothingBefore),
            Before::Everything => Ok(None),
            Before::Id(id) => Ok(Some(id)),
        }
    }
}

/// A `before` bound no job can meet (an instant before 1970).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NothingBefore;

impl FromStr for Before {
    type Err = InvalidBefore;

    /// A job id (the last id of the previous page) or an RFC 3339 instant.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(id) = s.parse::<JobId>() {
            return Ok(Before::Id(id));
        }
        DateTime::parse_from_rfc3339(s.trim())
            .map(|at| Before::instant(at.with_timezone(&Utc)))
            .map_err(|_| InvalidBefore(s.to_string()))
    }
}

/// Text that is neither a job id nor an RFC 3339 instant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is neither an RFC 3339 instant such as 2026-03-29T10:00:00Z nor a job id such as 01JQ3Z8W6V3N9R2K5T7X4B1M0C"
)]
pub struct InvalidBefore(pub String);

/// Makes ids that increase strictly within one process, even when the clock stands still
/// (a [`crate::clock::ManualClock`]) or steps back: the last id is remembered and
/// incremented.
#[derive(Debug, Default)]
pub struct IdGenerator {
    last: Mutex<u128>,
}

impl IdGenerator {
    pub fn next(&self, now: DateTime<Utc>) -> JobId {
        let millis = u128::try_from(now.timestamp_millis()).unwrap_or(0) & ((1u128 << 48) - 1);
        let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
        let candidate = (millis << 80) | random;
        // A poisoned lock only means another thread panicked mid-increment; the value
        // inside is still a valid id.
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let value = if candidate > *last {
            candidate
        } else {
            last.wrapping_add(1)
        };
        *last = value;
        JobId::from_u128(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn an_id_tells_the_millisecond_it_was_made_at() {
        let t = Utc.with_ymd_and_hms(2026, 3, 5, 6, 0, 0).unwrap()
            + chrono::Duration::milliseconds(123);
        assert_eq!(IdGenerator::default().next(t).created_at(), Some(t));
    }

    #[test]
    fn ids_sort_by_creation_even_within_one_millisecond() {
        let ids = IdGenerator::default();
        let t = Utc.with_ymd_and_hms(2026, 3, 5, 6, 0, 0).unwrap();
        let made: Vec<JobId> = (0..1000).map(|_| ids.next(t)).collect();
        let mut sorted = made.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, made);
        let later = ids.next(t + chrono::Duration::milliseconds(1));
        assert!(later > made[999]);
    }

    #[test]
    fn ids_round_trip_through_text_and_reject_garbage() {
        let id = IdGenerator::default().next(Utc::now());
        assert_eq!(id.as_str().len(), 26);
        assert_eq!(id.as_str().to_lowercase().parse::<JobId>().unwrap(), id);
        for bad in [
            "",
            "abc",
            "01JQ3Z8W6V3N9R2K5T7X4B1M0I",
            "81JQ3Z8W6V3N9R2K5T7X4B1M0C",
        ] {
            let err = bad.parse::<JobId>().unwrap_err().to_string();
            assert!(err.contains("not a job id"), "{bad}: {err}");
        }
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<JobId>("\"nope\"").is_err());
    }

    #[test]
    fn a_before_instant_becomes_the_first_id_of_that_millisecond() {
        let id = |at| match Before::instant(at) {
            Before::Id(id) => id,
            other => panic!("{at}: {other:?}"),
        };
        let at = Utc.with_ymd_and_hms(2026, 3, 29, 10, 0, 0).unwrap();
        let bound = id(at);
        let earlier = id(at - chrono::Duration::milliseconds(1));
        let later = id(at + chrono::Duration::milliseconds(1));
        assert!(earlier < bound && bound < later);
        assert!(bound.as_str().ends_with("0000000000000000"), "{bound}");
        assert!(id(DateTime::UNIX_EPOCH).as_str().starts_with("0000000000"));
        // Every id made during that millisecond or later is not below it.
        let made = IdGenerator::default().next(at);
        assert!(made >= bound && made < later, "{made} {bound}");
    }

    #[test]
    fn instants_a_job_id_cannot_hold_mean_nothing_or_everything() {
        for at in [
            Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(1900, 1, 1, 0, 0, 0).unwrap(),
            DateTime::<Utc>::MIN_UTC,
        ] {
            assert_eq!(Before::instant(at), Before::Nothing, "{at}");
        }
        for at in [
            Utc.with_ymd_and_hms(10890, 1, 1, 0, 0, 0).unwrap(),
            DateTime::<Utc>::MAX_UTC,
        ] {
            assert_eq!(Before::instant(at), Before::Everything, "{at}");
        }
    }

    #[test]
    fn a_before_is_a_job_id_or_an_rfc3339_instant() {
        let id = IdGenerator::default().next(Utc::now());
        assert_eq!(
            id.as_str().to_lowercase().parse::<Before>(),
            Ok(Before::Id(id))
        );
        let at = Utc.with_ymd_and_hms(2026, 3, 29, 8, 0, 0).unwrap();
        assert_eq!(
            "2026-03-29T10:00:00+02:00".parse::<Before>(),
            Ok(Before::instant(at))
        );
        assert_eq!(
            "1960-01-01T00:00:00Z".parse::<Before>(),
            Ok(Before::Nothing)
        );
        for bad in ["yesterday", "2026-03-29", ""] {
            let err = bad.parse::<Before>().unwrap_err().to_string();
            assert!(err.contains("RFC 3339") && err.contains("job id"), "{err}");
        }
    }
}
