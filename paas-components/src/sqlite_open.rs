//! What the SQLite document store and the SQLite queue share about opening a database, so
//! that a URL one accepts the other accepts too, with the same meaning and the same errors.
//!
//! Forms: `sqlite:///abs/path.db`, `sqlite://relative.db` (also `sqlite:relative.db`),
//! `sqlite::memory:` (also `sqlite://:memory:`); parameters `mode=rwc` (create if missing,
//! the default) and `mode=rw` (the file must exist). `sqlite://` with no path is refused:
//! sqlx would open a private temporary database, which looks durable and is not.
//!
//! The file is checked before SQLite sees it, because SQLite reports every failure to open
//! as the one code `SQLITE_CANTOPEN`, which does not say what the caller has to fix:
//!
//! | case | kind |
//! |---|---|
//! | the path is a directory | `InvalidArgument` |
//! | a parent on the path is a regular file | `InvalidArgument` |
//! | the parent directory does not exist (SQLite creates no directories) | `NotFound` |
//! | `mode=rw` and the file does not exist | `NotFound` |
//! | the file or its directory cannot be read (permissions) | `PermissionDenied` |
//! | `SQLITE_CANTOPEN` all the same (what is left: permissions, a race) | `PermissionDenied` |
//!
//! Running as root, permission bits do not stop reads, so only the first four are testable
//! there.

use cloud_abstraction::{Error, ErrorKind, Result};
use sqlx::sqlite::SqliteConnectOptions;
use std::io;
use std::path::Path;

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
    check_file(backend, Path::new(path), create)?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create);
    Ok((options, false))
}

/// The checks in the module docs' table, before SQLite's catch-all `CANTOPEN`. The messages
/// do not repeat the path (it is part of the caller's URL).
fn check_file(backend: &'static str, path: &Path, create: bool) -> Result<()> {
    let denied = || {
        Error::new(
            ErrorKind::PermissionDenied,
            backend,
            "the SQLite database file or its directory cannot be accessed (permissions)",
        )
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(Error::invalid(
            backend,
            "the SQLite database path names a directory, not a database file",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(denied()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Err(Error::invalid(
            backend,
            "a parent of the SQLite database path is a file, not a directory",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            match parent.map(std::fs::metadata) {
                None => {}
                Some(Ok(meta)) if meta.is_dir() => {}
                Some(Ok(_)) => {
                    return Err(Error::invalid(
                        backend,
                        "a parent of the SQLite database path is a file, not a directory",
                    ));
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(denied());
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::NotADirectory => {
                    return Err(Error::invalid(
                        backend,
                        "a parent of the SQLite database path is a file, not a directory",
                    ));
                }
                Some(Err(_)) => {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        backend,
                        "the directory of the SQLite database file does not exist \
                         (SQLite creates no directories)",
                    ));
                }
            }
            if create {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::NotFound,
                    backend,
                    "the SQLite database file does not exist (`mode=rw` does not create it)",
                ))
            }
        }
        // Anything else: let SQLite try and report.
        Err(_) => Ok(()),
    }
}

/// The kind of an error SQLite returned (its result code), the same for the document store
/// and the queue.
pub(crate) fn error_kind(db: &dyn sqlx::error::DatabaseError) -> ErrorKind {
    let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
    match code {
        // SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE
        1555 | 2067 => ErrorKind::AlreadyExists,
        _ => match code & 0xff {
            // BUSY, LOCKED, IOERR, PROTOCOL
            5 | 6 | 10 | 15 => ErrorKind::Unavailable,
            // CANTOPEN, after `check_file`: what is left is mostly permissions.
            14 => ErrorKind::PermissionDenied,
            // NOMEM, FULL
            7 | 13 => ErrorKind::ResourceExhausted,
            // PERM, READONLY, AUTH
            3 | 8 | 23 => ErrorKind::PermissionDenied,
            // TOOBIG, RANGE
            18 | 25 => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        },
    }
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
