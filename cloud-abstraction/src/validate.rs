//! Shared input validation, so that every backend rejects the same bad input the same way.
//!
//! Every function returns an [`InvalidArgument`](crate::ErrorKind::InvalidArgument) error whose
//! message names the rule that was broken; none of them panics.

use crate::{Error, Result};

/// Longest object key, in bytes (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;
/// Longest document id, in bytes.
pub const MAX_DOCUMENT_ID_LEN: usize = 255;
/// Longest resource name (collection, topic, group, workload), in bytes.
pub const MAX_NAME_LEN: usize = 63;
/// The most arrays and objects nested in one another in a document (the document's own
/// top-level array or object counts).
///
/// MariaDB's `JSON` holds at most 31 such levels, the fewest of the SQL databases; deeper
/// documents would be accepted elsewhere and then break reads (serde_json parses at most
/// 128 levels), so every backend refuses them alike at write time. One level of those 31 is
/// kept for wrappers that store a document inside another (the replication envelope of
/// `paas_components::multicloud`), so that a store built over other stores accepts exactly
/// what a plain one does.
pub const MAX_DOCUMENT_DEPTH: usize = 30;

/// Checks an object key: 1 to [`MAX_KEY_LEN`] bytes, `/`-separated segments, none empty,
/// `.` or `..`, no leading `/`, no control characters and no backslash.
///
/// These rules make a key mean the same on every store, and keep a filesystem store from
/// being escaped.
pub fn object_key(backend: &'static str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid(backend, "object key is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(
            backend,
            format!(
                "object key is {} bytes long; the limit is {MAX_KEY_LEN}",
                key.len()
            ),
        ));
    }
    if let Some(c) = key.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(Error::invalid(
            backend,
            format!("object key contains the forbidden character {c:?}"),
        ));
    }
    if key.starts_with('/') {
        return Err(Error::invalid(backend, "object key starts with `/`"));
    }
    for segment in key.split('/') {
        match segment {
            "" => {
                return Err(Error::invalid(
                    backend,
                    format!("object key `{key}` has an empty path segment"),
                ));
            }
            "." | ".." => {
                return Err(Error::invalid(
                    backend,
                    format!("object key `{key}` has a `{segment}` path segment"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a key prefix used for listing: empty is allowed (everything); otherwise the same
/// characters as a key, and a trailing `/` is allowed.
pub fn key_prefix(backend: &'static str, prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return Err(Error::invalid(backend, "key prefix `/` is not valid"));
    }
    // Unlike a key, a prefix may end in a partial segment such as `a/b` for `a/bc`.
    object_key(backend, trimmed)
}

/// Checks a document id: 1 to [`MAX_DOCUMENT_ID_LEN`] bytes, no control characters.
pub fn document_id(backend: &'static str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(backend, "document id is empty"));
    }
    if id.len() > MAX_DOCUMENT_ID_LEN {
        return Err(Error::invalid(
            backend,
            format!(
                "document id is {} bytes long; the limit is {MAX_DOCUMENT_ID_LEN}",
                id.len()
            ),
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(
            backend,
            format!("document id contains the control character {c:?}"),
        ));
    }
    Ok(())
}

/// Checks a resource name (collection, topic, consumer group, workload): 1 to
/// [`MAX_NAME_LEN`] characters from `[a-zA-Z0-9_-]`, starting with a letter.
///
/// The rule is the intersection of what SQL identifiers, NATS streams, RabbitMQ queues, Docker
/// containers and DNS labels accept, so a name valid here is valid everywhere.
pub fn resource_name(backend: &'static str, what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(backend, format!("{what} name is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            backend,
            format!(
                "{what} name is {} bytes long; the limit is {MAX_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(Error::invalid(
            backend,
            format!(
                "{what} name `{}` must start with a letter",
                name.escape_debug()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(Error::invalid(
            backend,
            format!(
                "{what} name `{}` contains {c:?}; allowed are letters, digits, `_` and `-`",
                name.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// Checks a payload size against a backend limit.
pub fn payload_size(backend: &'static str, what: &str, len: usize, max: Option<u64>) -> Result<()> {
    if let Some(max) = max {
        if len as u64 > max {
            return Err(Error::invalid(
                backend,
                format!("{what} is {len} bytes; the limit is {max}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn invalid(r: Result<()>) -> bool {
        r.is_err_and(|e| e.kind() == ErrorKind::InvalidArgument)
    }

    #[test]
    fn keys() {
        assert!(object_key("t", "a").is_ok());
        assert!(object_key("t", "vehicles/VIN123/telemetry-0001.json").is_ok());
        assert!(object_key("t", "ünïcödé/ok").is_ok());
        for bad in [
            "", "/abs", "a//b", "a/../b", "..", "./a", "a/", "a\0b", "a\nb", "a\\b",
        ] {
            assert!(invalid(object_key("t", bad)), "{bad:?}");
        }
        assert!(invalid(object_key("t", &"k".repeat(MAX_KEY_LEN + 1))));
        assert!(object_key("t", &"k".repeat(MAX_KEY_LEN)).is_ok());
    }

    #[test]
    fn prefixes() {
        assert!(key_prefix("t", "").is_ok());
        assert!(key_prefix("t", "a/").is_ok());
        assert!(key_prefix("t", "a/b").is_ok());
        assert!(invalid(key_prefix("t", "/")));
        assert!(invalid(key_prefix("t", "../")));
    }

    #[test]
    fn names() {
        assert!(resource_name("t", "topic", "commands").is_ok());
        assert!(resource_name("t", "topic", "cell-eu_1").is_ok());
        for bad in ["", "1abc", "a.b", "a b", "a/b", "-a", "ä"] {
            assert!(invalid(resource_name("t", "topic", bad)), "{bad:?}");
        }
        assert!(invalid(resource_name("t", "topic", &"a".repeat(64))));
    }

    #[test]
    fn ids_and_sizes() {
        assert!(document_id("t", "VIN-1/command 7").is_ok());
        assert!(invalid(document_id("t", "")));
        assert!(invalid(document_id("t", "a\u{7}")));
        assert!(invalid(document_id("t", &"x".repeat(256))));
        assert!(payload_size("t", "message", 10, Some(10)).is_ok());
        assert!(invalid(payload_size("t", "message", 11, Some(10))));
        assert!(payload_size("t", "message", usize::MAX, None).is_ok());
    }
}

/// Checks that `value` nests at most [`MAX_DOCUMENT_DEPTH`] arrays and objects:
/// [`InvalidArgument`](crate::ErrorKind::InvalidArgument) otherwise.
pub fn document_depth(backend: &'static str, value: &serde_json::Value) -> Result<()> {
    use serde_json::Value;
    // Iterative, so that a value built in code, however deep, cannot overflow the stack.
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth > MAX_DOCUMENT_DEPTH {
            return Err(crate::Error::invalid(
                backend,
                format!("the document nests more than {MAX_DOCUMENT_DEPTH} arrays and objects"),
            ));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}

#[cfg(test)]
mod depth_tests {
    use super::*;
    use serde_json::{Value, json};

    fn nested(levels: usize) -> Value {
        let mut v = json!(1);
        for i in 0..levels {
            v = if i % 2 == 0 {
                json!([v])
            } else {
                json!({"k": v})
            };
        }
        v
    }

    #[test]
    fn depth_limit() {
        assert!(document_depth("t", &json!(1)).is_ok());
        assert!(document_depth("t", &nested(MAX_DOCUMENT_DEPTH)).is_ok());
        assert!(document_depth("t", &nested(MAX_DOCUMENT_DEPTH + 1)).is_err());
        assert!(document_depth("t", &nested(300)).is_err());
    }
}
