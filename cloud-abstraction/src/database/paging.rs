//! Paging rules every backend shares: page sizes and keyset cursors.
//!
//! A query page is cut at a position in the query order (the last document's order values
//! and id), not at an offset, so a document that stays unchanged is returned exactly once
//! however the rest of the collection changes between pages (see [`DocumentStore`]'s
//! paging contract). Backends that evaluate queries in memory page with [`paginate`]; SQL
//! backends translate [`KeysetCursor::keys`] into a `WHERE` condition of the same order.
//!
//! [`DocumentStore`]: super::DocumentStore

use super::{Direction, Document, OrderBy, Query, QueryPage, compare_json};
use crate::{Error, Result, validate};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::cmp::Ordering;

/// The page size of a query without a limit.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page a query returns, whatever its limit.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The page size of `query`: its limit capped at [`MAX_PAGE_SIZE`], [`DEFAULT_PAGE_SIZE`]
/// without one; a limit of 0 is [`InvalidArgument`](crate::ErrorKind::InvalidArgument).
pub fn page_limit(backend: &'static str, query: &Query) -> Result<usize> {
    match query.limit {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(0) => Err(Error::invalid(backend, "query limit must be at least 1")),
        Some(n) => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

/// Looks up a dot-separated field path in a JSON value: each segment descends into an
/// object (never into an array), as the query semantics define.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, segment| v.get(segment))
}

/// The rank of a value's type in the sort order: missing 0 < null 1 < bool 2 < number 3 <
/// string 4 < array 5 < object 6.
pub fn type_rank(value: Option<&Value>) -> u8 {
    match value {
        None => 0,
        Some(Value::Null) => 1,
        Some(Value::Bool(_)) => 2,
        Some(Value::Number(_)) => 3,
        Some(Value::String(_)) => 4,
        Some(Value::Array(_)) => 5,
        Some(Value::Object(_)) => 6,
    }
}

/// The total order of one sort key: by [`type_rank`], then within the type by
/// [`compare_json`] (arrays and objects tie, and the id decides).
pub fn compare_sort_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    type_rank(a).cmp(&type_rank(b)).then_with(|| match (a, b) {
        (Some(x), Some(y)) => compare_json(x, y).unwrap_or(Ordering::Equal),
        _ => Ordering::Equal,
    })
}

/// The query order of two documents: the `order_by` keys, then the id ascending (bytes).
pub fn compare_documents(a: &Document, b: &Document, order_by: &[OrderBy]) -> Ordering {
    for key in order_by {
        let ord = compare_sort_values(lookup(&a.value, &key.field), lookup(&b.value, &key.field));
        let ord = match key.direction {
            Direction::Asc => ord,
            Direction::Desc => ord.reverse(),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.id.as_bytes().cmp(b.id.as_bytes())
}

const CURSOR_PREFIX: &str = "k1.";

/// An opaque keyset cursor: the position of the last document of a page in the query order.
///
/// It holds, per order key, the value's [`type_rank`] and (for booleans, numbers and
/// strings) the value itself, then the id, and the order it belongs to: a cursor passed with
/// another `order_by` is rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeysetCursor {
    /// `field:a` / `field:d` per order key.
    o: Vec<String>,
    /// Per order key: (type rank, the value for ranks 2–4, else null).
    k: Vec<(u8, Value)>,
    /// The id.
    i: String,
}

fn order_fingerprint(order_by: &[OrderBy]) -> Vec<String> {
    order_by
        .iter()
        .map(|o| {
            let dir = match o.direction {
                Direction::Asc => "a",
                Direction::Desc => "d",
            };
            format!("{}:{dir}", o.field)
        })
        .collect()
}

impl KeysetCursor {
    /// The cursor just after `doc` in the order `order_by`.
    pub fn after(doc: &Document, order_by: &[OrderBy]) -> Self {
        let k = order_by
            .iter()
            .map(|o| {
                let v = lookup(&doc.value, &o.field);
                let rank = type_rank(v);
                match v {
                    Some(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => {
                        (rank, v.clone())
                    }
                    _ => (rank, Value::Null),
                }
            })
            .collect();
        Self {
            o: order_fingerprint(order_by),
            k,
            i: doc.id.clone(),
        }
    }

    /// The cursor as an opaque string for [`QueryPage::next_cursor`].
    pub fn encode(&self) -> String {
        // Serializing strings, integers and JSON values cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut out = String::with_capacity(CURSOR_PREFIX.len() + 2 * json.len());
        out.push_str(CURSOR_PREFIX);
        for b in json {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Decodes a cursor issued by [`encode`](Self::encode) for a query ordered by
    /// `order_by`; anything else is [`InvalidArgument`](crate::ErrorKind::InvalidArgument).
    pub fn decode(backend: &'static str, text: &str, order_by: &[OrderBy]) -> Result<Self> {
        let bad = || Error::invalid(backend, "the query cursor was not issued by this store");
        let hex = text.strip_prefix(CURSOR_PREFIX).ok_or_else(bad)?;
        if hex.len() % 2 != 0 || !hex.is_ascii() {
            return Err(bad());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<std::result::Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        let cursor: Self = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        let consistent = cursor.k.iter().all(|(rank, v)| match rank {
            0 | 1 | 5 | 6 => v.is_null(),
            2 => v.is_boolean(),
            3 => v.is_number(),
            4 => v.is_string(),
            _ => false,
        });
        if !consistent || validate::document_id(backend, &cursor.i).is_err() {
            return Err(bad());
        }
        if cursor.o != order_fingerprint(order_by) || cursor.k.len() != order_by.len() {
            return Err(Error::invalid(
                backend,
                "the query cursor belongs to a query with another order",
            ));
        }
        Ok(cursor)
    }

    /// Per order key: the type rank and the value (booleans, numbers, strings; else null).
    pub fn keys(&self) -> &[(u8, Value)] {
        &self.k
    }

    /// The id of the document the cursor is after.
    pub fn id(&self) -> &str {
        &self.i
    }

    /// Whether `doc` comes strictly after the cursor in the order `order_by`.
    pub fn precedes(&self, doc: &Document, order_by: &[OrderBy]) -> bool {
        for (key, (rank, v)) in order_by.iter().zip(&self.k) {
            let field = lookup(&doc.value, &key.field);
            let ord = type_rank(field).cmp(rank).then_with(|| match field {
                Some(f) if !v.is_null() => compare_json(f, v).unwrap_or(Ordering::Equal),
                _ => Ordering::Equal,
            });
            let ord = match key.direction {
                Direction::Asc => ord,
                Direction::Desc => ord.reverse(),
            };
            if ord != Ordering::Equal {
                return ord == Ordering::Greater;
            }
        }
        doc.id.as_bytes() > self.i.as_bytes()
    }
}

/// One page of `matching` (documents that match the query's filters, in any order): sorted
/// by `order_by`, starting after `cursor`, at most `limit` long, with the next cursor when
/// more follow.
pub fn paginate(
    mut matching: Vec<Document>,
    order_by: &[OrderBy],
    cursor: Option<&KeysetCursor>,
    limit: usize,
) -> QueryPage {
    if let Some(c) = cursor {
        matching.retain(|d| c.precedes(d, order_by));
    }
    matching.sort_by(|a, b| compare_documents(a, b, order_by));
    let more = matching.len() > limit;
    matching.truncate(limit);
    let next_cursor = if more {
        matching
            .last()
            .map(|d| KeysetCursor::after(d, order_by).encode())
    } else {
        None
    };
    QueryPage {
        documents: matching,
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::Revision;
    use serde_json::json;

    fn doc(id: &str, value: Value) -> Document {
        Document {
            id: id.into(),
            value,
            revision: Revision(1),
            expires_at: None,
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let order = vec![OrderBy {
            field: "n".into(),
            direction: Direction::Desc,
        }];
        let c = KeysetCursor::after(&doc("a", json!({"n": 3})), &order);
        let back = KeysetCursor::decode("t", &c.encode(), &order).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.keys(), &[(3, json!(3))]);
        assert!(KeysetCursor::decode("t", &c.encode(), &[]).is_err());
        for bad in ["k1.zz", "k1.7", "garbage", "k1.7b7d", ""] {
            assert!(KeysetCursor::decode("t", bad, &order).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursor_order_matches_sorting() {
        for direction in [Direction::Asc, Direction::Desc] {
            let order = vec![OrderBy {
                field: "k".into(),
                direction,
            }];
            let mut docs = vec![
                doc("a", json!({"k": 1})),
                doc("b", json!({})),
                doc("c", json!({"k": "x"})),
                doc("d", json!({"k": 1.0})),
                doc("e", json!({"k": null})),
                doc("f", json!({"k": [1]})),
                doc("g", json!({"k": {"x": 1}})),
                doc("h", json!({"k": true})),
                doc("i", json!({"k": [0]})),
            ];
            docs.sort_by(|a, b| compare_documents(a, b, &order));
            for (i, d) in docs.iter().enumerate() {
                let c = KeysetCursor::after(d, &order);
                let after: Vec<_> = docs.iter().filter(|x| c.precedes(x, &order)).collect();
                assert_eq!(after.len(), docs.len() - i - 1, "cursor after {}", d.id);
            }
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let page = paginate(docs.clone(), &order, cursor.as_ref(), 2);
                seen.extend(page.documents.iter().map(|d| d.id.clone()));
                match page.next_cursor {
                    Some(c) => cursor = Some(KeysetCursor::decode("t", &c, &order).unwrap()),
                    None => break,
                }
            }
            let all: Vec<_> = docs.iter().map(|d| d.id.clone()).collect();
            assert_eq!(seen, all);
        }
    }

    #[test]
    fn limits() {
        assert_eq!(page_limit("t", &Query::all()).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(
            page_limit("t", &Query::all().limit(5000)).unwrap(),
            MAX_PAGE_SIZE
        );
        assert!(page_limit("t", &Query::all().limit(0)).is_err());
    }
}
