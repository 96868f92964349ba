//! What one SQL database contributes to the generic store: its SQL fragments and the few
//! calls that need sqlx's concrete types.
//!
//! The generic store writes every statement itself from these fragments, binding every
//! value as a parameter in textual order (so `?` and `$n` placeholders both work and a
//! parameter is never reused), and reaches the server only through the execution methods,
//! which [`sqlx_execution!`](crate::sqlx_execution) writes once for every dialect.

use cloud_abstraction::{ErrorKind, Result};
use futures::future::BoxFuture;
use serde_json::Number;
use sqlx::{Database, Pool};

/// A bound parameter.
#[derive(Debug, Clone)]
pub enum Param {
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// An integer.
    I64(i64),
    /// An integer or NULL.
    OptI64(Option<i64>),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
}

/// SQL text with its parameters, in placeholder order.
#[derive(Debug)]
pub struct Sql {
    /// The statement.
    pub text: String,
    /// Its parameters.
    pub params: Vec<Param>,
    placeholder: fn(usize) -> String,
}

impl Sql {
    /// An empty statement with the placeholders of `D`.
    pub fn new<D: Dialect>() -> Self {
        Self {
            text: String::new(),
            params: Vec::new(),
            placeholder: D::placeholder,
        }
    }

    /// Appends SQL text.
    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Appends a placeholder for `p`.
    pub fn bind(&mut self, p: Param) -> &mut Self {
        self.params.push(p);
        let mark = (self.placeholder)(self.params.len());
        self.text.push_str(&mark);
        self
    }
}

/// A row of `id, doc, revision, expires_us` as the database returned it.
#[derive(Debug)]
pub struct RawDocument {
    /// The id.
    pub id: String,
    /// The document as JSON text.
    pub doc: String,
    /// The revision column.
    pub revision: i64,
    /// Expiry in microseconds since the Unix epoch.
    pub expires_us: Option<i64>,
}

/// What a statement run with `execute` changed.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// Rows changed (matched, for MySQL's found-rows mode).
    pub rows: u64,
    /// `LAST_INSERT_ID()` where the database has one, else 0.
    pub last_id: u64,
}

/// The rows of a statement.
pub type Rows<D> = Vec<<<D as Dialect>::Db as Database>::Row>;
/// A connection of the dialect's database.
pub type Conn<D> = <<D as Dialect>::Db as Database>::Connection;

/// One SQL database: statements fragments, JSON paths, typed comparisons and sort keys,
/// placeholders, error-code mapping, and execution.
///
/// Field expressions work on the columns that [`field_columns`](Dialect::field_columns)
/// adds to the query's inner select, named after `alias`.
pub trait Dialect: Send + Sync + 'static {
    /// The sqlx database.
    type Db: Database;
    /// The backend name in errors, spans and [`BackendInfo`](cloud_abstraction::BackendInfo).
    const BACKEND: &'static str;
    /// The table of `connect`.
    const DEFAULT_TABLE: &'static str;
    /// The name of the document column.
    const DOC_COLUMN: &'static str;
    /// An embedded database (default location `local`), not a server (`unknown`).
    const EMBEDDED: bool;
    /// `INSERT … ON CONFLICT … DO UPDATE … RETURNING` exists; otherwise the MySQL forms.
    const ON_CONFLICT_RETURNING: bool;
    /// The statement that opens a batch transaction.
    const BEGIN: &'static str = "BEGIN";

    /// The placeholder of the `n`-th parameter (from 1).
    fn placeholder(n: usize) -> String;
    /// A quoted identifier (names are validated resource names).
    fn quote(name: &str) -> String;
    /// Parses `url` with sqlx's connect options and opens the pool.
    fn open(url: &str) -> BoxFuture<'_, Result<Pool<Self::Db>>>;
    /// The statements that create the table `t` (quoted) if missing.
    fn schema(t: &str) -> Vec<String>;
    /// The portable kind of a database error.
    fn error_kind(db: &dyn sqlx::error::DatabaseError) -> ErrorKind;

    /// The server's clock, in the unit of `expires_at`.
    fn now() -> &'static str;
    /// Appends the `expires_at` of a write with a TTL of `ttl_us` microseconds (or none).
    fn push_expires(sql: &mut Sql, ttl_us: Option<i64>);
    /// `expires_at` as microseconds since the Unix epoch.
    fn expires_us(column: &str) -> String;
    /// Appends the document (JSON text) as a value of the document column.
    fn push_doc(sql: &mut Sql, json: String) {
        sql.bind(Param::Text(json));
    }
    /// The document column as JSON text.
    fn doc_out() -> String {
        Self::DOC_COLUMN.to_string()
    }
    /// An id as a parameter.
    fn id_param(id: &str) -> Param {
        Param::Text(id.to_string())
    }
    /// The `INSERT … ON DUPLICATE KEY UPDATE` of an unconditional put, for databases
    /// without [`ON_CONFLICT_RETURNING`](Self::ON_CONFLICT_RETURNING): the new revision
    /// comes back as [`Done::last_id`] when the row existed.
    fn push_upsert_duplicate_key(_sql: &mut Sql, _t: &str) {}
    /// Appends a statement deleting at most 1000 expired rows of `collection` in `t`.
    fn push_purge(sql: &mut Sql, t: &str, collection: &str);

    /// Appends, for the field path `path`, the inner-select columns named after `alias`.
    fn field_columns(sql: &mut Sql, path: &str, alias: &str);
    /// The type rank of the field (0 missing, 1 null, 2 bool, 3 number, 4 string,
    /// 5 array, 6 object).
    fn rank(alias: &str) -> String;
    /// The field as a comparable number, NULL for other types.
    fn number(alias: &str) -> String;
    /// The field as a byte-ordered string, NULL for other types.
    fn string(alias: &str) -> String;
    /// The field as a comparable boolean, NULL for other types.
    fn boolean(alias: &str) -> String;
    /// Appends a number operand comparable with [`number`](Self::number).
    fn number_param(sql: &mut Sql, n: &Number);
    /// Appends a string operand comparable with [`string`](Self::string).
    fn string_param(sql: &mut Sql, s: &str);
    /// Appends a boolean operand comparable with [`boolean`](Self::boolean).
    fn bool_param(sql: &mut Sql, b: bool);
    /// Appends "the field equals this array or object" (JSON equality).
    fn composite_eq(sql: &mut Sql, alias: &str, json: String, is_array: bool);
    /// Appends "the field is a string starting with `prefix`" (bytes).
    fn prefix(sql: &mut Sql, alias: &str, prefix: &str);

    /// The rows of `sql`.
    fn fetch_all(conn: &mut Conn<Self>, sql: Sql) -> BoxFuture<'_, sqlx::Result<Rows<Self>>>;
    /// The first row of `sql`, if any.
    fn fetch_optional(
        conn: &mut Conn<Self>,
        sql: Sql,
    ) -> BoxFuture<'_, sqlx::Result<Option<<Self::Db as Database>::Row>>>;
    /// Runs `sql`.
    fn execute(conn: &mut Conn<Self>, sql: Sql) -> BoxFuture<'_, sqlx::Result<Done>>;
    /// The first column of `row` as an integer.
    fn first_i64(row: &<Self::Db as Database>::Row) -> sqlx::Result<i64>;
    /// A row of `id, doc, revision, expires_us`.
    fn decode(row: &<Self::Db as Database>::Row) -> sqlx::Result<RawDocument>;
    /// `LAST_INSERT_ID()` of a result, where the database has one.
    fn last_insert_id(_result: &<Self::Db as Database>::QueryResult) -> u64 {
        0
    }
}

/// Writes the execution methods of a [`Dialect`] (the same code for every database, with
/// its concrete sqlx types, which generic code could only name through higher-ranked
/// bounds).
#[macro_export]
#[doc(hidden)]
macro_rules! sqlx_execution {
    () => {
        fn fetch_all(
            conn: &mut $crate::database::sql::dialect::Conn<Self>,
            sql: $crate::database::sql::dialect::Sql,
        ) -> futures::future::BoxFuture<
            '_,
            sqlx::Result<$crate::database::sql::dialect::Rows<Self>>,
        > {
            Box::pin(async move { $crate::sqlx_bound!(sql).fetch_all(conn).await })
        }

        fn fetch_optional(
            conn: &mut $crate::database::sql::dialect::Conn<Self>,
            sql: $crate::database::sql::dialect::Sql,
        ) -> futures::future::BoxFuture<
            '_,
            sqlx::Result<Option<<Self::Db as sqlx::Database>::Row>>,
        > {
            Box::pin(async move { $crate::sqlx_bound!(sql).fetch_optional(conn).await })
        }

        fn execute(
            conn: &mut $crate::database::sql::dialect::Conn<Self>,
            sql: $crate::database::sql::dialect::Sql,
        ) -> futures::future::BoxFuture<'_, sqlx::Result<$crate::database::sql::dialect::Done>>
        {
            Box::pin(async move {
                let r = $crate::sqlx_bound!(sql).execute(conn).await?;
                Ok($crate::database::sql::dialect::Done {
                    rows: r.rows_affected(),
                    last_id: Self::last_insert_id(&r),
                })
            })
        }

        fn first_i64(row: &<Self::Db as sqlx::Database>::Row) -> sqlx::Result<i64> {
            sqlx::Row::try_get::<i64, _>(row, 0)
        }
    };
}

/// The sqlx query of an [`Sql`], with its parameters bound (inside an `impl Dialect`).
#[macro_export]
#[doc(hidden)]
macro_rules! sqlx_bound {
    ($sql:expr) => {{
        use $crate::database::sql::dialect::Param;
        let mut q = sqlx::query::<Self::Db>(&$sql.text);
        for p in $sql.params {
            q = match p {
                Param::Text(v) => q.bind(v),
                Param::Bytes(v) => q.bind(v),
                Param::I64(v) => q.bind(v),
                Param::OptI64(v) => q.bind(v),
                Param::F64(v) => q.bind(v),
                Param::Bool(v) => q.bind(v),
            };
        }
        q
    }};
}
