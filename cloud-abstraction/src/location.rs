//! Where a backend runs: provider, region and zone.
//!
//! Every backend URL may say where the backend runs with the query parameters `provider`,
//! `region` and `zone` (see [`Location::from_url`]), e.g.
//! `postgres://db/app?provider=aws&region=eu-central-1&zone=eu-central-1a`. A backend opened
//! without them reports an honest default: [`Location::local`] for embedded backends,
//! [`Location::unknown`] for server backends.

use crate::{Error, ResourceUrl, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The failure domain a backend lives in, so that routing and placement can reason about it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Location {
    /// The cloud provider, e.g. `"aws"`, `"azure"`, or `"local"` for embedded backends.
    pub provider: String,
    /// The provider's region, e.g. `"eu-central-1"`.
    pub region: String,
    /// The availability zone, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl Location {
    /// A location without a zone.
    pub fn new(provider: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            provider: provider.into(),
            region: region.into(),
            zone: None,
        }
    }

    /// The same location in the given zone.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// The location of an embedded, in-process backend: provider `local`, region `local`.
    pub fn local() -> Self {
        Self::new("local", "local")
    }

    /// The honest default of a server backend whose location was not configured: provider
    /// `unknown`, region `unknown`. A server's address does not say which cloud it runs in (an
    /// S3 endpoint need not be AWS), so nothing is guessed.
    pub fn unknown() -> Self {
        Self::new(Self::UNKNOWN, Self::UNKNOWN)
    }

    /// The provider and region name of [`Location::unknown`].
    pub const UNKNOWN: &'static str = "unknown";

    /// Whether the provider is [`Location::UNKNOWN`].
    pub fn is_unknown(&self) -> bool {
        self.provider == Self::UNKNOWN
    }

    /// The URL query parameters that configure a location, in the order they nest.
    pub const URL_PARAMS: [&'static str; 3] = ["provider", "region", "zone"];

    /// Longest provider, region or zone name, in bytes.
    pub const MAX_NAME_LEN: usize = 64;

    /// The location a backend URL configures through its `provider`, `region` and `zone` query
    /// parameters, or `None` when it names none of them (the backend then reports its default).
    ///
    /// A `provider` without a `region` is in region [`UNKNOWN`](Self::UNKNOWN), and a `region`
    /// without a `provider` is at provider [`UNKNOWN`](Self::UNKNOWN): nothing is guessed from
    /// the host name. Other query parameters are ignored here (they belong to the backend).
    ///
    /// [`InvalidArgument`](crate::ErrorKind::InvalidArgument) when a parameter is repeated,
    /// empty, longer than [`MAX_NAME_LEN`](Self::MAX_NAME_LEN) or not made of ASCII letters,
    /// digits, `-`, `_` and `.` (starting with a letter or digit), or when a `zone` comes
    /// without a `region`. The messages name the parameter, never its value.
    pub fn from_url(url: &ResourceUrl) -> Result<Option<Self>> {
        let mut values: [Option<String>; 3] = [None, None, None];
        for (name, value) in url.query_params() {
            let Some(slot) = Self::URL_PARAMS.iter().position(|p| *p == name) else {
                continue;
            };
            if values[slot].is_some() {
                return Err(Error::invalid(
                    SOURCE,
                    format!("URL parameter `{name}` is given more than once"),
                ));
            }
            check_name(&name, &value)?;
            values[slot] = Some(value);
        }
        let [provider, region, zone] = values;
        if zone.is_some() && region.is_none() {
            return Err(Error::invalid(
                SOURCE,
                "URL parameter `zone` needs a `region` (a zone lies in a region)",
            ));
        }
        if provider.is_none() && region.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            provider: provider.unwrap_or_else(|| Self::UNKNOWN.to_string()),
            region: region.unwrap_or_else(|| Self::UNKNOWN.to_string()),
            zone,
        }))
    }

    /// [`from_url`](Self::from_url), and `url` without the location parameters, for handing
    /// to a client library that would reject or misread them.
    pub fn split_url(url: &ResourceUrl) -> Result<(Option<Self>, ResourceUrl)> {
        let location = Self::from_url(url)?;
        Ok((location, url.without_query_params(&Self::URL_PARAMS)))
    }
}

const SOURCE: &str = "location";

/// Checks one provider, region or zone name; the error names the parameter, not the value
/// (a value pasted into the wrong parameter may be a secret).
fn check_name(param: &str, value: &str) -> Result<()> {
    let rule =
        "must be 1 to 64 ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit";
    let ok = !value.is_empty()
        && value.len() <= Location::MAX_NAME_LEN
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            SOURCE,
            format!("URL parameter `{param}` {rule}"),
        ))
    }
}

impl Default for Location {
    fn default() -> Self {
        Self::local()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.region)?;
        if let Some(zone) = &self.zone {
            write!(f, "/{zone}")?;
        }
        Ok(())
    }
}

/// What a backend says about itself: its name and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// Short backend name, e.g. `"memory"`, `"sqlite"`, `"postgres"`.
    pub backend: String,
    /// Where the backend runs.
    pub location: Location,
}

impl BackendInfo {
    /// An embedded backend named `backend` at [`Location::local`].
    pub fn local(backend: impl Into<String>) -> Self {
        Self {
            backend: backend.into(),
            location: Location::local(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn parse(url: &str) -> Result<Option<Location>> {
        Location::from_url(&ResourceUrl::parse(url).unwrap())
    }

    #[test]
    fn location_parameters() {
        assert_eq!(parse("postgres://db/app?sslmode=require").unwrap(), None);
        assert_eq!(
            parse("postgres://db/app?provider=aws&region=eu-central-1&zone=eu-central-1a").unwrap(),
            Some(Location::new("aws", "eu-central-1").with_zone("eu-central-1a"))
        );
        assert_eq!(
            parse("mem://?provider=azure&region=westeurope").unwrap(),
            Some(Location::new("azure", "westeurope"))
        );
        assert_eq!(
            parse("file:///d?region=eu-west-1").unwrap(),
            Some(Location::new(Location::UNKNOWN, "eu-west-1"))
        );
        assert_eq!(
            parse("sim://?provider=gcp").unwrap(),
            Some(Location::new("gcp", Location::UNKNOWN))
        );
    }

    #[test]
    fn bad_location_parameters_are_invalid_without_echo() {
        for url in [
            "mem://?zone=a",
            "mem://?provider=aws&zone=a",
            "mem://?region=",
            "mem://?region=a&region=b",
            "mem://?provider=hunter2%2Fsecret",
            "mem://?region=-x",
            "mem://?region=sp%20ace",
            &format!("mem://?region={}", "a".repeat(65)),
        ] {
            let err = parse(url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        assert!(parse(&format!("mem://?region={}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn split_url_keeps_other_parameters_verbatim() {
        let url =
            ResourceUrl::parse("postgres://u:pw@db/app?region=x&sslmode=require&opt=a%20b&zone=z")
                .unwrap();
        let (location, rest) = Location::split_url(&url).unwrap();
        assert_eq!(location, Some(Location::new("unknown", "x").with_zone("z")));
        assert_eq!(
            rest.expose(),
            "postgres://u:pw@db/app?sslmode=require&opt=a%20b"
        );
        let url = ResourceUrl::parse("sqlite::memory:?provider=local&region=local").unwrap();
        let (_, rest) = Location::split_url(&url).unwrap();
        assert_eq!(rest.expose(), "sqlite::memory:");
    }
}
