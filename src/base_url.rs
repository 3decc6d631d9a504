//! The base URL of a service (`http(s)://host[:port][/prefix]`), checked once when settings
//! are loaded so that the clients holding one never parse it again.
//!
//! Pure: parsing and formatting only. In a settings file or variable it stays a string.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

/// An `http` or `https` URL with a host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BaseUrl(Url);

impl BaseUrl {
    pub fn as_url(&self) -> &Url {
        &self.0
    }

    pub fn into_url(self) -> Url {
        self.0
    }

    /// `http://ADDRESS:PORT`, the base URL of a local listener (a simulator's).
    pub fn of_socket(addr: SocketAddr) -> Self {
        Self(
            Url::parse(&format!("http://{addr}"))
                .expect("http:// and a socket address make a URL with a host"),
        )
    }
}

impl std::str::FromStr for BaseUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // The query may hold a key (a SAS signature): what is shown stops before it.
        let shown = text.split('?').next().unwrap_or_default().trim();
        let url = Url::parse(text.trim()).map_err(|e| {
            format!("{e}: expected a base URL such as https://host.example, got {shown:?}")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "expected an http(s) base URL with a host such as https://host.example, got {shown:?}"
            ));
        }
        Ok(Self(url))
    }
}

impl TryFrom<Url> for BaseUrl {
    type Error = String;

    fn try_from(url: Url) -> Result<Self, Self::Error> {
        url.as_str().parse()
    }
}

impl Deref for BaseUrl {
    type Target = Url;

    fn deref(&self) -> &Url {
        &self.0
    }
}

impl From<BaseUrl> for Url {
    fn from(url: BaseUrl) -> Self {
        url.0
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for BaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for BaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_https_urls_with_a_host_are_base_urls() {
        for text in [
            "http://169.254.169.254",
            " https://outlook.office365.com ",
            "http://127.0.0.1:8080/prefix/",
        ] {
            let url: BaseUrl = text.parse().unwrap();
            assert_eq!(url.as_str(), Url::parse(text.trim()).unwrap().as_str());
        }
    }

    #[test]
    fn anything_else_is_refused_without_its_query() {
        for text in [
            "not a url",
            "169.254.169.254",
            "ftp://host.example",
            "file:///etc/passwd",
            "unix:/run/x?sig=SECRET",
        ] {
            let err = text.parse::<BaseUrl>().unwrap_err();
            assert!(err.contains("expected"), "{text}: {err}");
            assert!(!err.contains("SECRET"), "{text}: {err}");
        }
    }

    #[test]
    fn a_settings_string_deserializes_and_serializes_back() {
        #[derive(Deserialize, Serialize)]
        struct Section {
            endpoint: BaseUrl,
        }
        let section: Section = toml::from_str("endpoint = \"http://127.0.0.1:1\"").unwrap();
        assert_eq!(section.endpoint.port(), Some(1));
        assert_eq!(
            toml::to_string(&section).unwrap().trim(),
            "endpoint = \"http://127.0.0.1:1/\""
        );
        let err = toml::from_str::<Section>("endpoint = \"nope\"")
            .err()
            .unwrap();
        assert!(err.to_string().contains("expected a base URL"), "{err}");
    }
}
