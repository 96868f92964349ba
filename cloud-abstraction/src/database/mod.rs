//! Document database: the [`DocumentStore`] trait and its types.
//!
//! A document store holds JSON documents in named collections, keyed by a string id. Every
//! document has a [`Revision`] that grows with each write, so writes can be conditional
//! (optimistic concurrency). Collections come into being with their first write.
//!
//! Query semantics are defined here once, so that every backend answers alike:
//! - a [`FieldPath`] is a dot-separated path into the document (`"owner.country"`); paths
//!   that [`validate_field_path`] rejects are [`InvalidArgument`](crate::ErrorKind::InvalidArgument);
//! - comparison filters (`<`, `<=`, `>`, `>=`) match only when the field exists and has the
//!   same JSON type (number or string) as the operand; numbers compare numerically, strings
//!   by their UTF-8 bytes;
//! - [`FilterOp::Eq`] and [`FilterOp::In`] match JSON equality of the field (numbers
//!   numerically); [`FilterOp::Ne`] matches documents where the field exists and differs;
//! - [`FilterOp::Prefix`] matches string fields starting with the operand;
//! - results are ordered by the [`Query::order_by`] keys, then by id ascending; documents
//!   whose order field is missing or of another type than the others come in the total
//!   order missing < null < bool < number < string < array < object (arrays and objects
//!   tie, and the id decides);
//! - a page holds at most [`Query::limit`] documents ([`paging::DEFAULT_PAGE_SIZE`] without
//!   one, never more than [`paging::MAX_PAGE_SIZE`]; a limit of 0 is `InvalidArgument`), and
//!   pages are cut by keyset cursors with the stability contract stated on [`DocumentStore`].

mod ext;
mod filter;
pub mod paging;
pub mod service;

pub use ext::DocumentStoreExt;
pub use filter::{
    MAX_FIELD_PATH_LEN, compare_json, matches_filters, sort_documents, validate_field_path,
};
pub use paging::{DEFAULT_PAGE_SIZE, KeysetCursor, MAX_PAGE_SIZE, page_limit};

use crate::{BackendInfo, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::Debug;
use std::time::{Duration, SystemTime};

/// What a document store can do beyond get/put/delete.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatabaseCapabilities {
    /// Atomic multi-document writes ([`DocumentStore::write_batch`]).
    pub transactions: bool,
    /// Per-document time to live ([`PutDocumentOptions::ttl`]).
    pub ttl: bool,
    /// Field queries ([`DocumentStore::query`]) with the operators below.
    pub query: bool,
    /// Range operators `<`, `<=`, `>`, `>=` in queries.
    pub query_range: bool,
    /// `in` and `prefix` operators in queries.
    pub query_in_prefix: bool,
    /// Ordering by fields in queries.
    pub query_order: bool,
    /// Largest serialized document, in bytes.
    pub max_document_size: Option<u64>,
}

impl DatabaseCapabilities {
    /// Everything.
    pub fn full() -> Self {
        Self {
            transactions: true,
            ttl: true,
            query: true,
            query_range: true,
            query_in_prefix: true,
            query_order: true,
            max_document_size: Some(1024 * 1024),
        }
    }

    /// Only get/put/delete.
    pub fn minimal() -> Self {
        Self {
            transactions: false,
            ttl: false,
            query: false,
            query_range: false,
            query_in_prefix: false,
            query_order: false,
            max_document_size: Some(1024 * 1024),
        }
    }
}

/// A document's revision: strictly increasing with every write of that document in one store.
///
/// A new document starts at revision 1. Revisions are comparable within one store only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Revision(pub u64);

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// The id, unique in its collection.
    pub id: String,
    /// The JSON content.
    pub value: Value,
    /// The current revision.
    pub revision: Revision,
    /// When the document expires, if it has a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<SystemTime>,
}

/// The condition a write depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteCondition {
    /// No condition.
    #[default]
    Any,
    /// The document must not exist (create); otherwise
    /// [`AlreadyExists`](crate::ErrorKind::AlreadyExists).
    Absent,
    /// The document must exist at this revision; otherwise
    /// [`PreconditionFailed`](crate::ErrorKind::PreconditionFailed).
    Revision(Revision),
}

impl WriteCondition {
    /// Checks the condition against a document's current revision (`None`: absent), with the
    /// portable kinds: `AlreadyExists` for a create of a present document,
    /// `PreconditionFailed` for a revision that does not match (or a missing document).
    /// For stores that decide conditions themselves rather than in their database.
    pub fn check(self, backend: &'static str, current: Option<Revision>) -> crate::Result<()> {
        use crate::{Error, ErrorKind};
        match (self, current) {
            (WriteCondition::Any, _) | (WriteCondition::Absent, None) => Ok(()),
            (WriteCondition::Absent, Some(_)) => Err(Error::new(
                ErrorKind::AlreadyExists,
                backend,
                "the document already exists",
            )),
            (WriteCondition::Revision(want), Some(have)) if want == have => Ok(()),
            (WriteCondition::Revision(want), Some(have)) => Err(Error::new(
                ErrorKind::PreconditionFailed,
                backend,
                format!("the document is at revision {have}, not {want}"),
            )),
            (WriteCondition::Revision(want), None) => Err(Error::new(
                ErrorKind::PreconditionFailed,
                backend,
                format!("the document does not exist (expected revision {want})"),
            )),
        }
    }
}

/// Options of a document put.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutDocumentOptions {
    /// The condition the write depends on.
    pub condition: WriteCondition,
    /// Expire the document this long after the write (needs the `ttl` capability).
    pub ttl: Option<Duration>,
}

impl PutDocumentOptions {
    /// Create-only.
    pub fn create() -> Self {
        Self {
            condition: WriteCondition::Absent,
            ttl: None,
        }
    }

    /// Only if the document is at `revision`.
    pub fn if_revision(revision: Revision) -> Self {
        Self {
            condition: WriteCondition::Revision(revision),
            ttl: None,
        }
    }
}

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Put a document.
    Put {
        /// Collection name.
        collection: String,
        /// Document id.
        id: String,
        /// New content.
        value: Value,
        /// Condition and TTL.
        options: PutDocumentOptions,
    },
    /// Delete a document.
    Delete {
        /// Collection name.
        collection: String,
        /// Document id.
        id: String,
        /// Condition (with [`WriteCondition::Revision`] the document must exist).
        condition: WriteCondition,
    },
}

/// The outcome of one [`WriteOp`] of a committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The document was written at this revision.
    Put(Revision),
    /// The document was deleted (`true`) or was already absent (`false`).
    Deleted(bool),
}

/// A dot-separated path to a field of a document, e.g. `"location.country"`.
pub type FieldPath = String;

/// A query filter operator and its operand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op", content = "value")]
pub enum FilterOp {
    /// `=`
    Eq(Value),
    /// `!=` (the field must exist)
    Ne(Value),
    /// `<`
    Lt(Value),
    /// `<=`
    Le(Value),
    /// `>`
    Gt(Value),
    /// `>=`
    Ge(Value),
    /// equal to one of these
    In(Vec<Value>),
    /// a string field starting with this
    Prefix(String),
}

/// One filter: `field op operand`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// The field.
    pub field: FieldPath,
    /// The operator and operand.
    #[serde(flatten)]
    pub op: FilterOp,
}

impl Filter {
    /// `field == value`
    pub fn eq(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            field: field.into(),
            op: FilterOp::Eq(value.into()),
        }
    }
    /// `field != value`
    pub fn ne(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            field: field.into(),
            op: FilterOp::Ne(value.into()),
        }
    }
    /// `field < value`
    pub fn lt(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            field: field.into(),
            op: FilterOp::Lt(value.into()),
        }
    }
    /// `field <= value`
    pub fn le(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            field: field.into(),
            op: FilterOp::Le(value.into()),
        }
    }
    /// `field > value`
    pub fn gt(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            field: field.into(),
            op: FilterOp::Gt(value.into()),
        }
    }
    /// `field >= value`
    pub fn ge(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            field: field.into(),
            op: FilterOp::Ge(value.into()),
        }
    }
    /// `field in values`
    pub fn is_in(field: impl Into<String>, values: Vec<Value>) -> Self {
        Self {
            field: field.into(),
            op: FilterOp::In(values),
        }
    }
    /// `field starts with prefix`
    pub fn prefix(field: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            op: FilterOp::Prefix(prefix.into()),
        }
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Smallest first.
    #[default]
    Asc,
    /// Largest first.
    Desc,
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderBy {
    /// The field.
    pub field: FieldPath,
    /// The direction.
    pub direction: Direction,
}

/// A query over one collection: all filters must match (AND).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Query {
    /// Filters, combined with AND.
    pub filters: Vec<Filter>,
    /// Sort keys; the id (ascending) always breaks ties.
    pub order_by: Vec<OrderBy>,
    /// Largest page size; `None`: [`DEFAULT_PAGE_SIZE`] (100); capped at [`MAX_PAGE_SIZE`]
    /// (1000); 0 is `InvalidArgument`.
    pub limit: Option<usize>,
    /// The [`QueryPage::next_cursor`] of the previous page.
    pub cursor: Option<String>,
}

impl Query {
    /// All documents, in id order.
    pub fn all() -> Self {
        Self::default()
    }

    /// Adds a filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filters.push(filter);
        self
    }

    /// Adds a sort key.
    pub fn order_by(mut self, field: impl Into<String>, direction: Direction) -> Self {
        self.order_by.push(OrderBy {
            field: field.into(),
            direction,
        });
        self
    }

    /// Sets the page size.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// One page of query results.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryPage {
    /// The documents, in query order.
    pub documents: Vec<Document>,
    /// Pass as [`Query::cursor`] (same query otherwise) for the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// A document database: the small core every backend implements.
///
/// Every backend must give strong read-after-write consistency for single documents, treat
/// expired documents as absent, and return
/// [`Unsupported`](crate::ErrorKind::Unsupported) for operations its
/// [capabilities](DocumentStore::capabilities) do not claim.
///
/// # Paging under concurrent writes
///
/// A query is paged by passing each [`QueryPage::next_cursor`] back with the same query
/// (filters, order and limit; a cursor of a query with another `order_by` is
/// `InvalidArgument`). Pages are not a snapshot: each page is read at its own time. What a
/// paging client may rely on, on every backend, while other clients write:
///
/// - **Stable documents exactly once.** A document that exists and matches the filters for
///   the whole paging (from the request of the first page to the answer of the last) and is
///   not written during it is returned exactly once, with or without `order_by`.
/// - **In query order.** The stable documents come in the query order across all pages:
///   a page never returns a stable document that sorts before one of an earlier page.
/// - **Others: at most what the order allows.** A document inserted, updated, deleted or
///   expiring during the paging may or may not be returned, and if returned, with a value
///   it had at some time during the paging. Without `order_by` (id order) no document is
///   returned twice. With `order_by`, a document updated so that its order key moves from
///   behind the cursor to ahead of it may be returned again, with its new value, and one that
///   moves the other way may be missed.
///
/// Backends meet this with keyset cursors (the position of the last document of a page in
/// the query order, see [`paging::KeysetCursor`]), never with offsets, which would skip or
/// repeat stable documents when documents before the cursor are inserted or deleted.
#[async_trait]
pub trait DocumentStore: Debug + Send + Sync + 'static {
    /// The backend's name and location.
    fn info(&self) -> BackendInfo;

    /// What this store supports.
    fn capabilities(&self) -> DatabaseCapabilities;

    /// Reads a document; `None` if absent (or expired).
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>>;

    /// Writes a document if `options.condition` holds; returns the new revision.
    async fn put(
        &self,
        collection: &str,
        id: &str,
        value: Value,
        options: PutDocumentOptions,
    ) -> Result<Revision>;

    /// Deletes a document if `condition` holds; returns whether it existed.
    async fn delete(&self, collection: &str, id: &str, condition: WriteCondition) -> Result<bool>;

    /// Applies all writes or none: if any condition fails, nothing is written and the error
    /// of the first failing write is returned.
    async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>>;

    /// Runs one page of a query.
    async fn query(&self, collection: &str, query: Query) -> Result<QueryPage>;

    /// Reads several documents; the result is in the order of `ids`.
    ///
    /// The default calls [`get`](Self::get) for each id; backends override it with one round trip.
    async fn get_many(&self, collection: &str, ids: &[String]) -> Result<Vec<Option<Document>>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.get(collection, id).await?);
        }
        Ok(out)
    }
}
