//! Shared input validation, so that every backend rejects the same bad input the same way.
//!
//! Every function returns an [`InvalidArgument`](crate::ErrorKind::InvalidArgument) error whose
//! message names the rule that was broken; none of them panics. Every backend of a trait calls
//! these functions (the conformance kit checks that they give the same verdict), so an input
//! that one backend accepts is accepted by all of them, and a migration from one to another
//! never fails half way on a rule the first one did not have.
//!
//! # Blob metadata and content types
//!
//! User metadata and content types travel as HTTP headers on the cloud stores, so the portable
//! rule is the intersection of what S3, Azure Blob and the embedded stores keep **unchanged**:
//!
//! - **Names** ([`metadata_name`]): 1 to [`MAX_METADATA_NAME_LEN`] bytes of lower-case ASCII
//!   letters, digits and `_`, not starting with a digit. Azure requires C# identifiers (no
//!   `-`, no leading digit) and compares them case-insensitively; S3 sends them as
//!   `x-amz-meta-<name>` headers and lower-cases them. Lower case only means a name reads back
//!   as written everywhere, and two names that differ only in case cannot exist.
//! - **Values** ([`metadata_value`]): printable ASCII (`0x20..=0x7e`) without leading or
//!   trailing spaces. HTTP header values are ASCII (S3 answers anything else RFC 2047-encoded,
//!   Azure refuses it) and HTTP trims surrounding whitespace.
//! - **Size** ([`metadata`]): names and values together at most [`MAX_METADATA_SIZE`] bytes,
//!   S3's limit (Azure allows 8 KiB).
//! - **Content types** ([`content_type`]): `type/subtype` followed by `; name=value`
//!   parameters (HTTP tokens, values a token or a quoted string), at most
//!   [`MAX_CONTENT_TYPE_LEN`] bytes of printable ASCII.
//!
//! The rules apply to what a caller writes (`put`, `create_multipart`). A copy inside a store
//! copies what the store holds, whichever tool wrote it. A put whose attributes are
//! [as stored](crate::storage::PutOptions::as_stored) elsewhere (a migration between stores)
//! is checked against what the destination can hold instead ([`stored_metadata_name`],
//! [`stored_content_type`]), so objects other tools wrote stay copyable wherever they fit.
//!
//! # Queues
//!
//! The [`queue`] module holds the limits of [`MessageQueue`](crate::MessageQueue) input:
//! message size, attributes, ids, delays, leases, batch and receive sizes.

use crate::storage::{MetadataNames, PutOptions};
use crate::{Error, Result};
use std::collections::BTreeMap;

pub mod queue;

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
/// what a plain one does: see [`WRAPPER_MARKER`].
pub const MAX_DOCUMENT_DEPTH: usize = 30;

/// The top-level key that marks a document as a wrapper around a caller's document (the
/// replication envelope). Such a document may nest one level more than
/// [`MAX_DOCUMENT_DEPTH`]: the document inside was checked against the limit itself by the
/// store that wrapped it, and the extra level is the one MariaDB still holds.
pub const WRAPPER_MARKER: &str = "_wrapped";

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

/// Longest user metadata name, in bytes.
pub const MAX_METADATA_NAME_LEN: usize = 128;
/// Most bytes of user metadata on one object: names and values together (S3's limit).
pub const MAX_METADATA_SIZE: usize = 2048;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 255;

/// Checks a user metadata name: 1 to [`MAX_METADATA_NAME_LEN`] bytes of `[a-z0-9_]`, not
/// starting with a digit (see the [module docs](self) for why).
pub fn metadata_name(backend: &'static str, name: &str) -> Result<()> {
    let shown = || name.escape_debug().to_string();
    if name.is_empty() {
        return Err(Error::invalid(backend, "metadata name is empty"));
    }
    if name.len() > MAX_METADATA_NAME_LEN {
        return Err(Error::invalid(
            backend,
            format!(
                "metadata name is {} bytes long; the limit is {MAX_METADATA_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(Error::invalid(
            backend,
            format!(
                "metadata name `{}` contains {c:?}; allowed are lower-case letters, digits and \
                 `_` (names must be C# identifiers on Azure and are lower-cased by S3)",
                shown()
            ),
        ));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Error::invalid(
            backend,
            format!(
                "metadata name `{}` starts with a digit (names must be C# identifiers on Azure)",
                shown()
            ),
        ));
    }
    Ok(())
}

/// Checks the value of metadata entry `name`: printable ASCII without leading or trailing
/// spaces (see the [module docs](self) for why).
pub fn metadata_value(backend: &'static str, name: &str, value: &str) -> Result<()> {
    if let Some(c) = value.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(Error::invalid(
            backend,
            format!(
                "metadata value of `{}` contains {c:?}; values must be printable ASCII \
                 (they travel as HTTP headers)",
                name.escape_debug()
            ),
        ));
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        return Err(Error::invalid(
            backend,
            format!(
                "metadata value of `{}` starts or ends with a space, which HTTP drops",
                name.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// Checks a metadata name that another store or tool wrote, against what a store whose rule
/// is `names` can hold unchanged: 1 to [`MAX_METADATA_NAME_LEN`] bytes, and the rule's
/// characters. Every portable name passes under every rule.
pub fn stored_metadata_name(backend: &'static str, name: &str, names: MetadataNames) -> Result<()> {
    if names == MetadataNames::Portable || name.is_empty() || name.len() > MAX_METADATA_NAME_LEN {
        return metadata_name(backend, name);
    }
    let fits = match names {
        MetadataNames::LowercaseToken => is_token(name) && !name.contains(char::is_uppercase),
        _ => is_token(name),
    };
    if fits {
        return Ok(());
    }
    Err(Error::invalid(
        backend,
        format!(
            "metadata name `{}` cannot be stored here: names must be {}",
            name.escape_debug(),
            names.describe()
        ),
    ))
}

/// Checks a content type that another store or tool wrote: at most [`MAX_CONTENT_TYPE_LEN`]
/// bytes of printable ASCII without surrounding spaces (what an HTTP header carries
/// unchanged), not necessarily `type/subtype`.
pub fn stored_content_type(backend: &'static str, content_type: &str) -> Result<()> {
    if content_type.len() > MAX_CONTENT_TYPE_LEN {
        return Err(Error::invalid(
            backend,
            format!(
                "content type is {} bytes long; the limit is {MAX_CONTENT_TYPE_LEN}",
                content_type.len()
            ),
        ));
    }
    let printable = content_type.chars().all(|c| (' '..='~').contains(&c));
    if content_type.is_empty()
        || !printable
        || content_type.starts_with(' ')
        || content_type.ends_with(' ')
    {
        return Err(Error::invalid(
            backend,
            format!(
                "content type `{}` cannot be stored: it must be printable ASCII without \
                 surrounding spaces",
                content_type.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// The prefix of metadata names reserved for wrappers that store an object inside another
/// store with bookkeeping of their own (the replication version of
/// `paas_components::multicloud::replicate`). Entries with such names have a budget of their
/// own, [`MAX_RESERVED_METADATA_SIZE`], beside the caller's [`MAX_METADATA_SIZE`], so that a
/// store built over other stores accepts exactly the metadata a plain one does (as
/// [`WRAPPER_MARKER`] does for documents). Such a store refuses the names from its callers.
pub const RESERVED_METADATA_PREFIX: &str = "_repl_";
/// Most bytes of reserved metadata ([`RESERVED_METADATA_PREFIX`]) on one object.
pub const MAX_RESERVED_METADATA_SIZE: usize = 320;

/// Checks a whole metadata map: every name and value, and the total size against
/// [`MAX_METADATA_SIZE`] (reserved names, see [`RESERVED_METADATA_PREFIX`], against
/// [`MAX_RESERVED_METADATA_SIZE`]).
pub fn metadata(backend: &'static str, metadata: &BTreeMap<String, String>) -> Result<()> {
    metadata_checked(backend, metadata, |name| metadata_name(backend, name))
}

fn metadata_checked(
    backend: &'static str,
    metadata: &BTreeMap<String, String>,
    check_name: impl Fn(&str) -> Result<()>,
) -> Result<()> {
    let mut total = 0usize;
    let mut reserved = 0usize;
    for (name, value) in metadata {
        check_name(name)?;
        metadata_value(backend, name, value)?;
        if name.starts_with(RESERVED_METADATA_PREFIX) {
            reserved += name.len() + value.len();
        } else {
            total += name.len() + value.len();
        }
    }
    if reserved > MAX_RESERVED_METADATA_SIZE {
        return Err(Error::invalid(
            backend,
            format!(
                "reserved metadata is {reserved} bytes; the limit is {MAX_RESERVED_METADATA_SIZE}"
            ),
        ));
    }
    if total > MAX_METADATA_SIZE {
        return Err(Error::invalid(
            backend,
            format!(
                "user metadata is {total} bytes (names and values); the limit is \
                 {MAX_METADATA_SIZE}"
            ),
        ));
    }
    Ok(())
}

/// Whether `c` may appear in an HTTP token (RFC 9110 `tchar`).
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_tchar)
}

/// Checks a content type: `type/subtype` (HTTP tokens) followed by any number of
/// `; name=value` parameters (name a token, value a token or a quoted string), at most
/// [`MAX_CONTENT_TYPE_LEN`] bytes of printable ASCII, e.g. `text/plain; charset=utf-8`.
pub fn content_type(backend: &'static str, content_type: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::invalid(
            backend,
            format!(
                "content type `{}` is not valid: {why}",
                content_type.escape_debug()
            ),
        )
    };
    if content_type.len() > MAX_CONTENT_TYPE_LEN {
        return Err(Error::invalid(
            backend,
            format!(
                "content type is {} bytes long; the limit is {MAX_CONTENT_TYPE_LEN}",
                content_type.len()
            ),
        ));
    }
    if content_type.chars().any(|c| !(' '..='~').contains(&c)) {
        return Err(bad("only printable ASCII is allowed"));
    }
    let (essence, mut params) = match content_type.find(';') {
        Some(i) => (&content_type[..i], &content_type[i..]),
        None => (content_type, ""),
    };
    let Some((ty, subtype)) = essence.split_once('/') else {
        return Err(bad("expected `type/subtype`"));
    };
    // Spaces may precede the `;` of a parameter (HTTP's optional whitespace).
    let subtype = match params.is_empty() {
        true => subtype,
        false => subtype.trim_end_matches(' '),
    };
    if !is_token(ty) || !is_token(subtype) {
        return Err(bad("type and subtype must be non-empty HTTP tokens"));
    }
    while !params.is_empty() {
        // `params` starts with `;` here.
        let rest = params[1..].trim_start_matches(' ');
        let Some((name, after)) = rest.split_once('=') else {
            return Err(bad("a parameter must be `name=value`"));
        };
        if !is_token(name) {
            return Err(bad("a parameter name must be an HTTP token"));
        }
        let (value_ok, tail) = if let Some(quoted) = after.strip_prefix('"') {
            // A quoted string: `\` escapes the next character.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            match end {
                Some(i) => (true, &quoted[i + 1..]),
                None => (false, ""),
            }
        } else {
            let end = after.find([';', ' ']).unwrap_or(after.len());
            (is_token(&after[..end]), &after[end..])
        };
        if !value_ok {
            return Err(bad("a parameter value must be a token or a quoted string"));
        }
        let tail = tail.trim_start_matches(' ');
        if !tail.is_empty() && !tail.starts_with(';') {
            return Err(bad("parameters must be separated by `;`"));
        }
        params = tail;
    }
    Ok(())
}

/// Checks what a put or multipart upload writes besides the bytes: the content type and the
/// user metadata, by the portable rule; or, for attributes
/// [as stored](PutOptions::as_stored) by another store, by what a store whose metadata
/// rule is `names` can hold.
pub fn put_options(
    backend: &'static str,
    options: &PutOptions,
    names: MetadataNames,
) -> Result<()> {
    if !options.as_stored {
        if let Some(ct) = &options.content_type {
            content_type(backend, ct)?;
        }
        return metadata(backend, &options.metadata);
    }
    if let Some(ct) = &options.content_type {
        stored_content_type(backend, ct)?;
    }
    metadata_checked(backend, &options.metadata, |name| {
        stored_metadata_name(backend, name, names)
    })
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
    fn as_stored_names_follow_the_store_rule() {
        use MetadataNames::*;
        let rules = [Portable, LowercaseToken, Token];
        // (name, admitted by Portable, LowercaseToken, Token)
        let table: [(&str, [bool; 3]); 9] = [
            ("vehicle_id", [true; 3]),
            ("my-key", [false, true, true]),
            ("my.key", [false, true, true]),
            ("MyKey", [false, false, true]),
            ("1st", [false, true, true]),
            ("a b", [false; 3]),
            ("a:b", [false; 3]),
            ("", [false; 3]),
            ("é", [false; 3]),
        ];
        for (name, admitted) in table {
            for (rule, want) in rules.iter().zip(admitted) {
                let got = stored_metadata_name("t", name, *rule);
                assert_eq!(got.is_ok(), want, "{name:?} under {rule:?}: {got:?}");
            }
        }
        let too_long = "n".repeat(MAX_METADATA_NAME_LEN + 1);
        assert!(stored_metadata_name("t", &too_long, Token).is_err());
        // The common rule of two stores admits exactly what both admit.
        for a in rules {
            for b in rules {
                for (name, _) in table {
                    let both = stored_metadata_name("t", name, a).is_ok()
                        && stored_metadata_name("t", name, b).is_ok();
                    let common = stored_metadata_name("t", name, a.common(b)).is_ok();
                    assert_eq!(common, both, "{name:?}: {a:?} & {b:?}");
                }
            }
        }
        assert!(stored_content_type("t", "weird").is_ok());
        for bad in ["", " weird", "weird ", "tab\there", "é"] {
            assert!(stored_content_type("t", bad).is_err(), "{bad:?}");
        }
        // Without `as_stored`, the portable rule applies whatever the store holds.
        let options = PutOptions::default().with_metadata("my-key", "v");
        assert!(put_options("t", &options, Token).is_err());
        let options = PutOptions {
            as_stored: true,
            ..options
        };
        assert!(put_options("t", &options, Token).is_ok());
        assert!(put_options("t", &options, Portable).is_err());
    }

    #[test]
    fn metadata_rules() {
        for good in ["a", "vehicle_id", "_x", "schema2", &"n".repeat(128)] {
            assert!(metadata_name("t", good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "Upper",
            "a-b",
            "a b",
            "ä",
            "9lives",
            "a.b",
            &"n".repeat(129),
        ] {
            assert!(invalid(metadata_name("t", bad)), "{bad:?}");
        }
        for good in ["", "VIN 1", "a=b; c", "~!@#"] {
            assert!(metadata_value("t", "n", good).is_ok(), "{good:?}");
        }
        for bad in ["café", "line\nbreak", "tab\t", " lead", "trail ", "\u{7f}"] {
            assert!(invalid(metadata_value("t", "n", bad)), "{bad:?}");
        }
        let mut map = BTreeMap::new();
        map.insert("a".to_string(), "x".repeat(MAX_METADATA_SIZE - 1));
        assert!(metadata("t", &map).is_ok());
        map.insert("b".to_string(), String::new());
        assert!(invalid(metadata("t", &map)));
    }

    #[test]
    fn content_types() {
        for good in [
            "text/plain",
            "application/json",
            "application/vnd.api+json",
            "text/plain; charset=utf-8",
            "text/plain;charset=utf-8",
            "multipart/form-data; boundary=\"a b;c\"",
            "a/b; x=1; y=\"q\\\"q\"",
        ] {
            assert!(content_type("t", good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "text",
            "/plain",
            "text/",
            "text /plain",
            "text/plain;",
            "text/plain; charset",
            "text/plain; charset=",
            "text/plain; charset=\"open",
            "text/plain; a=b c",
            "text/pläin",
            "text/plain\n",
            "a/b/c",
        ] {
            assert!(invalid(content_type("t", bad)), "{bad:?}");
        }
        let long = format!("a/{}", "b".repeat(MAX_CONTENT_TYPE_LEN - 1));
        assert!(invalid(content_type("t", &long)));
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
    let limit = if value.get(WRAPPER_MARKER).is_some() {
        MAX_DOCUMENT_DEPTH + 1
    } else {
        MAX_DOCUMENT_DEPTH
    };
    // Iterative, so that a value built in code, however deep, cannot overflow the stack.
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth > limit {
            return Err(crate::Error::invalid(
                backend,
                format!("the document nests more than {limit} arrays and objects"),
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
