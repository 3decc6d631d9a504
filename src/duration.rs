//! Human-readable durations (`"45m"`, `"25s"`, `"1h 30m"`) for settings and runbook files.
//!
//! Pure: parsing and formatting only. Integers are accepted as seconds so that environment
//! overrides such as `RUNBOOK_WORKER__HTTP__SHUTDOWN_GRACE=25` work.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A [`Duration`] written the way people write them: `"90s"`, `"45m"`, `"1h 30m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if let Ok(secs) = trimmed.parse::<u64>() {
            return Ok(Self::from_secs(secs));
        }
        humantime::parse_duration(trimmed).map(Self).map_err(|e| {
            format!("{e}: expected a duration such as \"30s\", \"45m\" or \"1h 30m\", got {s:?}")
        })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Secs(secs) => Ok(Self::from_secs(secs)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        let cases = [
            ("45m", 45 * 60),
            ("25s", 25),
            ("1h 30m", 90 * 60),
            ("90", 90),
            (" 2h ", 7200),
        ];
        for (text, secs) in cases {
            assert_eq!(
                text.parse::<HumanDuration>().unwrap().get().as_secs(),
                secs,
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        let err = "soon".parse::<HumanDuration>().unwrap_err();
        assert!(err.contains("expected a duration"), "{err}");
    }

    #[test]
    fn round_trips_through_display() {
        let d = HumanDuration::from_secs(3725);
        assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
    }
}
