//! The one reading of `sqlite:` URLs, shared by the SQLite document store and the SQLite
//! queue so that a URL one accepts the other accepts too, with the same meaning.
//!
//! Forms: `sqlite:///abs/path.db`, `sqlite://relative.db` (also `sqlite:relative.db`),
//! `sqlite::memory:` (also `sqlite://:memory:`); parameters `mode=rwc` (create if missing,
//! the default) and `mode=rw` (the file must exist). `sqlite://` with no path is refused:
//! sqlx would open a private temporary database, which looks durable and is not.

use cloud_abstraction::{Error, Result};
use sqlx::sqlite::SqliteConnectOptions;

/// The forms that work, for error messages.
const FORMS: &str = "use `sqlite:///abs/path.db`, `sqlite://relative.db` or `sqlite::memory:`";

/// Connect options for `url` (file name and create mode only; the caller sets journal,
/// synchronous and busy timeout) and whether the database is in memory. Errors never quote
/// the URL.
pub(crate) fn parse(backend: &'static str, url: &str) -> Result<(SqliteConnectOptions, bool)> {
    let rest = url.strip_prefix("sqlite:").ok_or_else(|| {
        Error::invalid(
            backend,
            format!("a SQLite URL starts with `sqlite:`; {FORMS}"),
        )
    })?;
    let (rest, params) = match rest.split_once('?') {
        Some((rest, params)) => (rest, Some(params)),
        None => (rest, None),
    };
    let path = rest.strip_prefix("//").unwrap_or(rest);
    let mut create = true;
    for param in params.into_iter().flat_map(|p| p.split('&')) {
        match param {
            "" | "mode=rwc" => create = true,
            "mode=rw" => create = false,
            _ => {
                return Err(Error::invalid(
                    backend,
                    "unsupported SQLite URL parameter; supported are `mode=rwc` and `mode=rw`",
                ));
            }
        }
    }
    if path == ":memory:" {
        return Ok((SqliteConnectOptions::new().in_memory(true), true));
    }
    if path.is_empty() {
        return Err(Error::invalid(
            backend,
            format!("the SQLite URL names no database file; {FORMS}"),
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(Error::invalid(
            backend,
            "the SQLite database path contains a control character",
        ));
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create);
    Ok((options, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloud_abstraction::ErrorKind;

    #[test]
    fn urls() {
        assert!(parse("sqlite", "sqlite::memory:").unwrap().1);
        assert!(parse("sqlite", "sqlite://:memory:").unwrap().1);
        let (o, mem) = parse("sqlite", "sqlite:///tmp/x.db?mode=rwc").unwrap();
        assert!(!mem);
        assert_eq!(o.get_filename(), std::path::Path::new("/tmp/x.db"));
        let (o, _) = parse("sqlite", "sqlite://rel.db").unwrap();
        assert_eq!(o.get_filename(), std::path::Path::new("rel.db"));
        let (o, _) = parse("sqlite", "sqlite:rel.db").unwrap();
        assert_eq!(o.get_filename(), std::path::Path::new("rel.db"));
        for bad in [
            "postgres://x",
            "sqlite://",
            "sqlite:",
            "sqlite://?mode=rw",
            "sqlite:///a.db?cache=shared",
            "sqlite://a\nb",
        ] {
            let e = parse("sqlite", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
            // (`sqlite://` and `sqlite:` are part of the help text itself.)
            if bad.len() > "sqlite://".len() {
                assert!(
                    !e.to_string().contains(bad),
                    "the message must not quote the URL"
                );
            }
        }
        let e = parse("sqlite", "sqlite://").unwrap_err().to_string();
        for form in [
            "sqlite:///abs/path.db",
            "sqlite://relative.db",
            "sqlite::memory:",
        ] {
            assert!(e.contains(form), "{e}");
        }
    }
}
