//! Where a backend runs: provider, region and zone.

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
