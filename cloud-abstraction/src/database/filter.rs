//! The reference semantics of filters and ordering, evaluated in memory.
//!
//! Backends that cannot push a query down to their server (and the conformance kit's model)
//! use these functions, so that "what a query means" is written once.

#[cfg(test)]
use super::Direction;
use super::{Document, Filter, FilterOp, OrderBy};
use crate::{Error, Result};
use serde_json::Value;
use std::cmp::Ordering;

/// Longest field path, in bytes.
pub const MAX_FIELD_PATH_LEN: usize = 255;

/// Checks a [`FieldPath`](super::FieldPath): 1 to [`MAX_FIELD_PATH_LEN`] bytes of
/// `.`-separated segments, none empty, none starting with `-`, without control characters,
/// `"` or `\`.
///
/// The excluded characters are the ones that would need escaping in the JSON-path syntax of
/// SQL backends; a leading `-` is excluded because MariaDB's JSON-path parser misreads a
/// quoted key such as `"-1"` or `"->"` and silently matches nothing. Rejecting them
/// everywhere keeps a query valid, and meaning the same, on every backend (documents may
/// still hold such keys; only querying them is refused).
pub fn validate_field_path(backend: &'static str, path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(Error::invalid(backend, "field path is empty"));
    }
    if path.len() > MAX_FIELD_PATH_LEN {
        return Err(Error::invalid(
            backend,
            format!(
                "field path is {} bytes long; the limit is {MAX_FIELD_PATH_LEN}",
                path.len()
            ),
        ));
    }
    if let Some(c) = path
        .chars()
        .find(|c| c.is_control() || *c == '"' || *c == '\\')
    {
        return Err(Error::invalid(
            backend,
            format!("field path contains the forbidden character {c:?}"),
        ));
    }
    if path.split('.').any(str::is_empty) {
        return Err(Error::invalid(
            backend,
            format!("field path `{path}` has an empty segment"),
        ));
    }
    if path.split('.').any(|s| s.starts_with('-')) {
        return Err(Error::invalid(
            backend,
            format!("field path `{path}` has a segment starting with `-`"),
        ));
    }
    Ok(())
}

pub(crate) use super::paging::lookup;

/// Compares two JSON scalars of the same type: numbers numerically, strings by UTF-8 bytes,
/// booleans false < true. `None` for values of different types, null, arrays and objects.
pub fn compare_json(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                Some(x.cmp(&y))
            } else {
                x.as_f64()?.partial_cmp(&y.as_f64()?)
            }
        }
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => compare_json(a, b) == Some(Ordering::Equal),
        _ => a == b,
    }
}

fn matches_one(value: &Value, filter: &Filter) -> bool {
    let Some(field) = lookup(value, &filter.field) else {
        return false;
    };
    match &filter.op {
        FilterOp::Eq(v) => json_eq(field, v),
        FilterOp::Ne(v) => !json_eq(field, v),
        FilterOp::Lt(v) => compare_json(field, v) == Some(Ordering::Less),
        FilterOp::Le(v) => matches!(
            compare_json(field, v),
            Some(Ordering::Less | Ordering::Equal)
        ),
        FilterOp::Gt(v) => compare_json(field, v) == Some(Ordering::Greater),
        FilterOp::Ge(v) => matches!(
            compare_json(field, v),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        FilterOp::In(vs) => vs.iter().any(|v| json_eq(field, v)),
        FilterOp::Prefix(p) => field.as_str().is_some_and(|s| s.starts_with(p.as_str())),
    }
}

/// Whether a document's content matches every filter.
pub fn matches_filters(value: &Value, filters: &[Filter]) -> bool {
    filters.iter().all(|f| matches_one(value, f))
}

/// Sorts documents by `order_by`, then by id ascending (the order of
/// [`compare_documents`](super::paging::compare_documents)).
pub fn sort_documents(documents: &mut [Document], order_by: &[OrderBy]) {
    documents.sort_by(|a, b| super::paging::compare_documents(a, b, order_by));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::Revision;
    use serde_json::json;

    #[test]
    fn operators() {
        let doc = json!({"n": 5, "s": "abc", "o": {"x": 1.5}});
        let m = |f: Filter| matches_filters(&doc, &[f]);
        assert!(m(Filter::eq("n", 5)));
        assert!(m(Filter::eq("n", 5.0)));
        assert!(!m(Filter::eq("n", "5")));
        assert!(m(Filter::ne("n", 4)));
        assert!(!m(Filter::ne("missing", 4)));
        assert!(m(Filter::lt("n", 6)) && !m(Filter::lt("n", 5)));
        assert!(m(Filter::le("n", 5)) && m(Filter::ge("n", 5)));
        assert!(m(Filter::gt("o.x", 1)));
        assert!(!m(Filter::gt("s", 1)), "no cross-type comparison");
        assert!(m(Filter::is_in("s", vec![json!("x"), json!("abc")])));
        assert!(m(Filter::prefix("s", "ab")) && !m(Filter::prefix("s", "b")));
        assert!(!m(Filter::prefix("n", "5")));
    }

    #[test]
    fn field_paths() {
        assert!(validate_field_path("t", "a").is_ok());
        assert!(validate_field_path("t", "owner.country").is_ok());
        assert!(validate_field_path("t", "a-b.x y.$.1").is_ok());
        for bad in [
            "", ".", "a.", ".a", "a..b", "a\"b", "a\\b", "a\nb", "-1", "a.->", "-",
        ] {
            assert!(validate_field_path("t", bad).is_err(), "{bad:?}");
        }
        assert!(validate_field_path("t", &"a".repeat(MAX_FIELD_PATH_LEN + 1)).is_err());
    }

    #[test]
    fn sorting_breaks_ties_by_id() {
        let d = |id: &str, v: Value| Document {
            id: id.into(),
            value: v,
            revision: Revision(1),
            expires_at: None,
        };
        let mut docs = vec![
            d("b", json!({"k": 1})),
            d("a", json!({"k": 2})),
            d("c", json!({"k": 1})),
        ];
        sort_documents(
            &mut docs,
            &[OrderBy {
                field: "k".into(),
                direction: Direction::Desc,
            }],
        );
        let ids: Vec<_> = docs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }
}
