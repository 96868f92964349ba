//! Backend URLs with secrets redacted in every printed form.

use crate::{Error, Result};
use std::fmt;

/// A parsed backend URL such as `postgres://user:secret@db:5432/app` or `mem://`.
///
/// [`Display`](fmt::Display) and [`Debug`](fmt::Debug) never show the password, nor the values
/// of query parameters whose names look like secrets (`secret`, `password`, `token`, `key`,
/// `signature`, `sas`, `credential`). Use [`ResourceUrl::expose`] to get the full URL when
/// connecting.
#[derive(Clone, PartialEq, Eq)]
pub struct ResourceUrl {
    inner: url::Url,
    /// What the input had right after `scheme:`; the parsed URL normalises this away for
    /// special schemes (`file:rel` becomes `file:///rel`).
    written: PathForm,
}

/// How the input continued after `scheme:`: see [`ResourceUrl::path_form`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathForm {
    /// `scheme://…`: an authority (host, possibly empty) follows.
    Authority,
    /// `scheme:/…`: an absolute path, no authority.
    Absolute,
    /// `scheme:…` without a leading `/`: a rootless (relative or opaque) path.
    Rootless,
}

const SECRET_PARAM_HINTS: &[&str] = &[
    "secret",
    "password",
    "passwd",
    "token",
    "key",
    "signature",
    "sig",
    "sas",
    "credential",
];

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAM_HINTS.iter().any(|hint| name.contains(hint))
}

/// The longest scheme an error message repeats; real ones are far shorter, and a long run of
/// scheme characters is more likely a token than a scheme.
const MAX_SHOWN_SCHEME: usize = 32;

/// The part of `input` before its first `:`, if that is a valid scheme (RFC 3986: a letter,
/// then letters, digits, `+`, `-`, `.`) of at most [`MAX_SHOWN_SCHEME`] characters.
fn shown_scheme(input: &str) -> Option<&str> {
    let (scheme, _) = input.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && scheme.len() <= MAX_SHOWN_SCHEME;
    valid.then_some(scheme)
}

impl ResourceUrl {
    /// Parses `input`; a malformed URL is an [`InvalidArgument`](crate::ErrorKind::InvalidArgument)
    /// error whose message does not repeat the input (it may hold a password).
    pub fn parse(input: &str) -> Result<Self> {
        if input.trim().is_empty() {
            return Err(Error::invalid("url", "empty backend URL"));
        }
        let inner = url::Url::parse(input).map_err(|e| {
            // `url`'s errors never quote the input; the scheme is shown only when it is one
            // syntactically, since a string that is no URL (a `key=value` DSN, a bare
            // `user:password`) may have its secret before any `:`.
            let message = match shown_scheme(input) {
                Some(scheme) => format!("malformed backend URL (scheme `{scheme}`): {e}"),
                None => format!("malformed backend URL (no valid `scheme:` prefix): {e}"),
            };
            Error::invalid("url", message)
        })?;
        // `url` trims surrounding blanks and, for special schemes, reads `\` as `/`.
        let rest = input.trim().split_once(':').map_or("", |(_, rest)| rest);
        let slash = |c: char| c == '/' || c == '\\';
        let written = if rest.chars().take(2).filter(|&c| slash(c)).count() == 2 {
            PathForm::Authority
        } else if rest.starts_with(slash) {
            PathForm::Absolute
        } else {
            PathForm::Rootless
        };
        Ok(Self { inner, written })
    }

    /// How the URL was written after `scheme:` (an authority, an absolute path or a rootless
    /// path). The parsed form does not keep this for special schemes such as `file`, where
    /// `file:rel/dir` reads as `file:///rel/dir`; an opener that must refuse relative paths
    /// asks here.
    pub fn path_form(&self) -> PathForm {
        self.written
    }

    /// The scheme, lower case (`"postgres"`, `"mem"`, `"s3"`).
    pub fn scheme(&self) -> &str {
        self.inner.scheme()
    }

    /// The host, if any.
    pub fn host(&self) -> Option<&str> {
        self.inner.host_str()
    }

    /// The port, if given.
    pub fn port(&self) -> Option<u16> {
        self.inner.port()
    }

    /// The path (percent-decoded as far as it is valid UTF-8).
    pub fn path(&self) -> String {
        let raw = self.inner.path();
        percent_decode(raw)
    }

    /// The user name, if any (user names are not treated as secrets).
    pub fn username(&self) -> Option<&str> {
        let user = self.inner.username();
        (!user.is_empty()).then_some(user)
    }

    /// Whether the URL carries a password.
    pub fn has_password(&self) -> bool {
        self.inner.password().is_some()
    }

    /// The value of query parameter `name` (the first one, if repeated).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.inner
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// All query parameters, in order.
    pub fn query_params(&self) -> Vec<(String, String)> {
        self.inner
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// The same URL without the query parameters named in `names`; the other parameters keep
    /// their order and exact spelling, and an empty query is dropped.
    pub fn without_query_params(&self, names: &[&str]) -> Self {
        let Some(query) = self.inner.query() else {
            return self.clone();
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let name = url::form_urlencoded::parse(pair.as_bytes()).next();
                !pair.is_empty() && !name.is_some_and(|(k, _)| names.contains(&k.as_ref()))
            })
            .collect();
        let mut inner = self.inner.clone();
        inner.set_query((!kept.is_empty()).then(|| kept.join("&")).as_deref());
        Self {
            inner,
            written: self.written,
        }
    }

    /// The full URL, secrets included. Only for handing to a client library; never log it.
    pub fn expose(&self) -> &str {
        self.inner.as_str()
    }

    /// The underlying parsed URL (secrets included).
    pub fn as_url(&self) -> &url::Url {
        &self.inner
    }

    /// The URL with the password and secret-looking query values replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut shown = self.inner.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        if !pairs.is_empty() {
            shown.query_pairs_mut().clear().extend_pairs(pairs);
        }
        shown.to_string()
    }
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| raw.to_string())
}

impl fmt::Display for ResourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ResourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ResourceUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl std::str::FromStr for ResourceUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_form_is_what_was_written() {
        for (input, form) in [
            ("file:///tmp/x", PathForm::Authority),
            ("file://data/tmp/x", PathForm::Authority),
            (" FILE://localhost/x", PathForm::Authority),
            ("file:\\\\\\tmp", PathForm::Authority),
            ("file:/tmp/x", PathForm::Absolute),
            ("file:rel/dir", PathForm::Rootless),
            ("sqlite::memory:", PathForm::Rootless),
        ] {
            let url = ResourceUrl::parse(input).unwrap();
            assert_eq!(url.path_form(), form, "{input}");
            assert_eq!(url.without_query_params(&["x"]).path_form(), form);
        }
        // What `url` makes of them: the form is lost without `path_form`.
        assert_eq!(
            ResourceUrl::parse("file:rel/dir").unwrap().path(),
            "/rel/dir"
        );
    }

    #[test]
    fn parse_errors_never_repeat_unparsed_input() {
        // Scheme characters only, but far too long to be a scheme: nothing of it is shown.
        let long = format!("{} x:SuperSecret123", "a".repeat(10_000));
        let long_secret = format!("SuperSecret123{}", "x".repeat(10_000));
        // A valid but overlong scheme (more likely a token): not shown either.
        let long_scheme = format!("SuperSecret123{}://[", "x".repeat(30));
        for (input, secret) in [
            (
                "host=127.0.0.1 user=app password=SuperSecret123 dbname=cars",
                "SuperSecret123",
            ),
            ("password=SuperSecret123", "SuperSecret123"),
            ("SuperSecret123", "SuperSecret123"),
            ("user=app password=Super:Secret123", "Super"),
            ("app pass SuperSecret123:@host", "SuperSecret123"),
            ("app@SuperSecret123:x y", "SuperSecret123"),
            ("1SuperSecret123:x", "SuperSecret123"),
            (long.as_str(), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            (long_secret.as_str(), "SuperSecret123"),
            (long_scheme.as_str(), "SuperSecret123"),
        ] {
            let err = ResourceUrl::parse(input)
                .err()
                .unwrap_or_else(|| panic!("{input:.40} parsed"));
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(secret), "{input:.40}: {shown}");
        }
        // A valid scheme is still named, to help with a typo after it.
        let err = ResourceUrl::parse("postgres://[bad").unwrap_err();
        assert!(err.to_string().contains("`postgres`"), "{err}");
    }

    #[test]
    fn password_and_secret_params_are_redacted() {
        let url = ResourceUrl::parse(
            "postgres://app:hunter2@db.local:5432/cars?sslmode=require&access_key_secret=abc",
        )
        .unwrap();
        let shown = url.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("abc"), "{shown}");
        assert!(shown.contains("sslmode=require"));
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(url.expose().contains("hunter2"));
        assert_eq!(url.username(), Some("app"));
        assert_eq!(url.port(), Some(5432));
    }

    #[test]
    fn malformed_urls_are_invalid_argument_without_echo() {
        for bad in ["", "   ", "no scheme here", "postgres://user:pw@[::1"] {
            let err = ResourceUrl::parse(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{bad}");
            assert!(!err.to_string().contains("pw@"), "{err}");
        }
    }

    #[test]
    fn sqlite_memory_spelling() {
        let url = ResourceUrl::parse("sqlite::memory:").unwrap();
        assert_eq!(url.scheme(), "sqlite");
        assert_eq!(url.path(), ":memory:");
    }

    #[test]
    fn path_is_percent_decoded() {
        let url = ResourceUrl::parse("file:///tmp/a%20b").unwrap();
        assert_eq!(url.path(), "/tmp/a b");
    }
}
