//! The durable SQLite queue.
//!
//! - **Layout.** Tables prefixed `mq_` (topics, groups, messages, de-duplication ids,
//!   deliveries), so the queue can share a file with other stores; one delivery row per
//!   message and group that still has it pending.
//! - **Durability.** A file queue runs in WAL mode with `synchronous = FULL` on every
//!   connection of its pool: each commit is fsynced before the call returns. So once
//!   `publish` / `publish_batch`, `ack`, `nack`, `extend_deadline`, a receive's lease and the
//!   topic / group calls return `Ok`, their effect survives a power cut or an OS crash, not
//!   only a crash of the process. (With `NORMAL`, WAL commits since the last checkpoint may
//!   be lost on power loss: an acknowledged publish could vanish and an acknowledged ack be
//!   undone, so the message would come back. The queue promises durability, so it pays one
//!   fsync per commit, like the SQLite document store.) Each operation is one transaction:
//!   a publish stores its message, its delivery rows and its de-duplication id together or
//!   not at all. A call that fails, or whose result never arrives, may or may not have
//!   committed. `sqlite::memory:` is not durable at all: it lives as long as the handle.
//! - **Concurrency.** Writers take SQLite's write lock at once (`BEGIN IMMEDIATE`) and wait
//!   for it up to 10 s (the busy timeout), then fail with `Unavailable`.
//! - **Escape hatch.** [`SqliteQueue::pool`] gives the sqlx pool; anything done through it is
//!   **non-portable** and may break the queue's invariants.

use super::checks;
use async_trait::async_trait;
use bytes::Bytes;
use cloud_abstraction::queue::{
    GroupOptions, Message, MessageQueue, QueueCapabilities, ReceiveOptions, ReceivedMessage,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result};
use sqlx::sqlite::{SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, Transaction};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, instrument, warn};

const BACKEND: &str = "sqlite";
/// How often a long poll looks at the tables for messages from other processes.
const POLL_INTERVAL: Duration = Duration::from_millis(75);

/// Tables prefixed `mq_` so that the queue can share a file with other stores.
///
/// A delivery row is a message pending for one group: leased while `lease` is set and
/// `visible_at_ms` is in the future, available otherwise. Acknowledging deletes the row; a
/// message row goes when its last delivery row goes.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mq_topics (name TEXT PRIMARY KEY NOT NULL);
CREATE TABLE IF NOT EXISTS mq_groups (
    topic TEXT NOT NULL,
    name TEXT NOT NULL,
    ack_deadline_ms INTEGER NOT NULL,
    max_attempts INTEGER,
    dead_letter_topic TEXT,
    PRIMARY KEY (topic, name)
);
CREATE TABLE IF NOT EXISTS mq_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    attributes TEXT NOT NULL,
    ordering_key TEXT,
    published_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mq_messages_topic ON mq_messages (topic);
CREATE TABLE IF NOT EXISTS mq_dedup (
    topic TEXT NOT NULL,
    id TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, id)
);
CREATE TABLE IF NOT EXISTS mq_deliveries (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ordering_key TEXT,
    visible_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease TEXT,
    PRIMARY KEY (topic, grp, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mq_deliveries_visible ON mq_deliveries (topic, grp, visible_at_ms);
CREATE INDEX IF NOT EXISTS mq_deliveries_key ON mq_deliveries (topic, grp, ordering_key, seq);
CREATE INDEX IF NOT EXISTS mq_deliveries_seq ON mq_deliveries (seq);
";

/// Candidates for a claim: visible deliveries of a group in publish order, where a message
/// with an ordering key only counts if no earlier message of its key is pending.
const CANDIDATES: &str = "
SELECT d.seq, d.attempts, m.id, m.body, m.attributes, m.ordering_key, m.published_at_ms
FROM mq_deliveries d JOIN mq_messages m ON m.seq = d.seq
WHERE d.topic = ? AND d.grp = ? AND d.visible_at_ms <= ?
  AND (d.ordering_key IS NULL OR NOT EXISTS (
      SELECT 1 FROM mq_deliveries e
      WHERE e.topic = d.topic AND e.grp = d.grp AND e.ordering_key = d.ordering_key
        AND e.seq < d.seq))
ORDER BY d.seq
LIMIT ?";

/// A durable [`MessageQueue`] in an SQLite file, through sqlx: every capability.
///
/// Several handles, also in several processes, may share one file: a receive claims its
/// messages in one `BEGIN IMMEDIATE` transaction, so no two consumers hold a lease on the same
/// message. The file is in WAL mode. Long polling looks at the tables every 75 ms and wakes at
/// once for publishes through the same handle (or its clones).
///
/// Times are wall-clock milliseconds, so that processes agree on lease deadlines; a clock jump
/// shortens or lengthens the leases that are running.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use cloud_abstraction::MessageQueue;
/// use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
/// use paas_components::queue::SqliteQueue;
///
/// let q = SqliteQueue::connect("sqlite::memory:").await?;
/// q.create_topic("commands").await?;
/// q.create_group("commands", "workers", GroupOptions::default()).await?;
/// q.publish("commands", Message::new("unlock")).await?;
/// let got = q.receive("commands", "workers", ReceiveOptions::default()).await?;
/// assert_eq!(&got[0].body[..], b"unlock");
/// q.ack("commands", "workers", &got[0].receipt).await?;
/// # Ok::<(), cloud_abstraction::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
    changed: Arc<Notify>,
    location: Location,
    dedup_window: Duration,
}

impl fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("location", &self.location)
            .field("dedup_window", &self.dedup_window)
            .finish_non_exhaustive()
    }
}

/// Maps an sqlx error: busy / locked and connection trouble are retryable.
fn db_error(operation: &str, e: sqlx::Error) -> Error {
    let kind = match &e {
        // The same reading of SQLite's result codes as the document store.
        sqlx::Error::Database(db) => crate::sqlite_open::error_kind(db.as_ref()),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Internal,
    };
    Error::new(kind, BACKEND, format!("{operation} failed")).with_source(e)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn topic_not_found(topic: &str) -> Error {
    Error::not_found(BACKEND, format!("topic `{topic}` not found"))
}

struct GroupRow {
    ack_deadline: i64,
    max_attempts: Option<i64>,
    dead_letter_topic: Option<String>,
}

type Tx = Transaction<'static, Sqlite>;

impl SqliteQueue {
    /// Opens (creating if needed) the queue at `url`: `sqlite:///abs/path.db`,
    /// `sqlite://relative.db` (or `sqlite:relative.db`) or `sqlite::memory:` (private to this
    /// handle and its clones); `?mode=rw` requires the file to exist. `sqlite://` without a
    /// path is [`InvalidArgument`](ErrorKind::InvalidArgument), as for the document store.
    #[instrument(level = "debug", skip_all, fields(backend = BACKEND), err(level = "debug"))]
    pub async fn connect(url: &str) -> Result<Self> {
        // The same reading as the SQLite document store (`sqlite://` alone is refused).
        let (options, in_memory) = crate::sqlite_open::parse(BACKEND, url)?;
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool_options = if in_memory {
            // One connection that never closes: the database lives as long as it does.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(4)
        };
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|e| db_error("opening the database", e))?;
        let queue = Self {
            pool,
            changed: Arc::new(Notify::new()),
            location: Location::local(),
            dedup_window: Duration::from_secs(300),
        };
        let mut tx = queue.begin().await?;
        // Through `Executor` (a boxed, `Send` future) rather than `raw_sql(..).execute`, whose
        // generic future trips rustc's higher-ranked `Send` check inside boxed openers.
        // SQLite runs every statement of a multi-statement string.
        sqlx::Executor::execute(&mut *tx, SCHEMA)
            .await
            .map_err(|e| db_error("creating the tables", e))?;
        tx.commit()
            .await
            .map_err(|e| db_error("creating the tables", e))?;
        Ok(queue)
    }

    /// The same queue, reporting `location` in its [`BackendInfo`].
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// The same queue with this de-duplication window (default 5 minutes).
    pub fn with_dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }

    /// The underlying sqlx pool: a **non-portable** escape hatch (see the module docs).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes the connections; the handle and its clones fail afterwards.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction that takes the write lock at once, so two writers never deadlock
    /// upgrading a read lock.
    async fn begin(&self) -> Result<Tx> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| db_error("beginning a transaction", e))
    }

    async fn group_row(tx: &mut Tx, topic: &str, group: &str) -> Result<GroupRow> {
        let row = sqlx::query(
            "SELECT ack_deadline_ms, max_attempts, dead_letter_topic FROM mq_groups
             WHERE topic = ? AND name = ?",
        )
        .bind(topic)
        .bind(group)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db_error("reading the group", e))?;
        match row {
            Some(row) => Ok(GroupRow {
                ack_deadline: row
                    .try_get(0)
                    .map_err(|e| db_error("reading the group", e))?,
                max_attempts: row
                    .try_get(1)
                    .map_err(|e| db_error("reading the group", e))?,
                dead_letter_topic: row
                    .try_get(2)
                    .map_err(|e| db_error("reading the group", e))?,
            }),
            None => {
                if Self::topic_exists(tx, topic).await? {
                    Err(Error::not_found(
                        BACKEND,
                        format!("group `{group}` of topic `{topic}` not found"),
                    ))
                } else {
                    Err(topic_not_found(topic))
                }
            }
        }
    }

    async fn topic_exists(tx: &mut Tx, topic: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM mq_topics WHERE name = ?")
            .bind(topic)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| db_error("reading the topic", e))?
            .is_some())
    }

    /// Deletes a message row once no group has it pending.
    async fn collect_garbage(tx: &mut Tx, seq: i64) -> Result<()> {
        sqlx::query(
            "DELETE FROM mq_messages WHERE seq = ?
             AND NOT EXISTS (SELECT 1 FROM mq_deliveries WHERE seq = ?)",
        )
        .bind(seq)
        .bind(seq)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error("deleting a message", e))?;
        Ok(())
    }

    /// Inserts a delivery row for every group of `topic`.
    async fn fan_out(
        tx: &mut Tx,
        topic: &str,
        seq: i64,
        ordering_key: Option<&str>,
        visible_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO mq_deliveries (topic, grp, seq, ordering_key, visible_at_ms, attempts, lease)
             SELECT topic, name, ?, ?, ?, 0, NULL FROM mq_groups WHERE topic = ?",
        )
        .bind(seq)
        .bind(ordering_key)
        .bind(visible_at)
        .bind(topic)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error("publishing", e))?;
        Ok(())
    }

    async fn has_groups(tx: &mut Tx, topic: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM mq_groups WHERE topic = ? LIMIT 1")
                .bind(topic)
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| db_error("reading the groups", e))?
                .is_some(),
        )
    }

    /// Moves a delivery of `group` to the dead-letter topic (or drops it).
    async fn dead_letter(
        tx: &mut Tx,
        topic: &str,
        group: &str,
        seq: i64,
        dlq: Option<&str>,
        now: i64,
    ) -> Result<()> {
        match dlq {
            Some(dlq) if Self::topic_exists(tx, dlq).await? => {
                if Self::has_groups(tx, dlq).await? {
                    let new_seq = sqlx::query(
                        "INSERT INTO mq_messages (topic, id, body, attributes, ordering_key, published_at_ms)
                         SELECT ?, id, body, attributes, ordering_key, published_at_ms
                         FROM mq_messages WHERE seq = ?",
                    )
                    .bind(dlq)
                    .bind(seq)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error("dead-lettering", e))?
                    .last_insert_rowid();
                    let key: Option<String> =
                        sqlx::query_scalar("SELECT ordering_key FROM mq_messages WHERE seq = ?")
                            .bind(new_seq)
                            .fetch_one(&mut **tx)
                            .await
                            .map_err(|e| db_error("dead-lettering", e))?;
                    Self::fan_out(tx, dlq, new_seq, key.as_deref(), now).await?;
                }
                debug!(
                    topic,
                    group,
                    dead_letter_topic = dlq,
                    "message dead-lettered"
                );
            }
            Some(dlq) => {
                warn!(
                    topic,
                    group,
                    dead_letter_topic = dlq,
                    "dead-letter topic is gone; message dropped"
                );
            }
            None => debug!(topic, group, "message dropped after max_attempts"),
        }
        sqlx::query("DELETE FROM mq_deliveries WHERE topic = ? AND grp = ? AND seq = ?")
            .bind(topic)
            .bind(group)
            .bind(seq)
            .execute(&mut **tx)
            .await
            .map_err(|e| db_error("dead-lettering", e))?;
        Self::collect_garbage(tx, seq).await
    }

    /// Whether anything of the group is visible (a cheap read before taking the write lock).
    async fn anything_visible(&self, topic: &str, group: &str) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT 1 FROM mq_deliveries WHERE topic = ? AND grp = ? AND visible_at_ms <= ? LIMIT 1",
        )
        .bind(topic)
        .bind(group)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("receiving", e))?
        .is_some())
    }

    /// Leases up to `max` messages in one transaction.
    async fn claim(&self, topic: &str, group: &str, max: usize) -> Result<Vec<ReceivedMessage>> {
        let mut tx = self.begin().await?;
        let options = Self::group_row(&mut tx, topic, group).await?;
        let now = now_ms();
        let mut out = Vec::new();
        loop {
            let limit = i64::try_from(max - out.len()).unwrap_or(i64::MAX);
            let rows = sqlx::query(CANDIDATES)
                .bind(topic)
                .bind(group)
                .bind(now)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| db_error("receiving", e))?;
            let mut dead_lettered = false;
            for row in &rows {
                let read = |e| db_error("receiving", e);
                let seq: i64 = row.try_get(0).map_err(read)?;
                let attempts: i64 = row.try_get(1).map_err(read)?;
                if options.max_attempts.is_some_and(|m| attempts >= m) {
                    Self::dead_letter(
                        &mut tx,
                        topic,
                        group,
                        seq,
                        options.dead_letter_topic.as_deref(),
                        now,
                    )
                    .await?;
                    dead_lettered = true;
                    continue;
                }
                let token = uuid::Uuid::new_v4().simple().to_string();
                sqlx::query(
                    "UPDATE mq_deliveries SET attempts = attempts + 1, lease = ?, visible_at_ms = ?
                     WHERE topic = ? AND grp = ? AND seq = ?",
                )
                .bind(&token)
                .bind(now.saturating_add(options.ack_deadline))
                .bind(topic)
                .bind(group)
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(read)?;
                let attributes: String = row.try_get(4).map_err(read)?;
                let attributes: BTreeMap<String, String> = serde_json::from_str(&attributes)
                    .map_err(|e| {
                        Error::internal(BACKEND, "stored attributes are not valid JSON")
                            .with_source(e)
                    })?;
                let body: Vec<u8> = row.try_get(3).map_err(read)?;
                let published_ms: i64 = row.try_get(6).map_err(read)?;
                out.push(ReceivedMessage {
                    id: row.try_get(2).map_err(read)?,
                    body: Bytes::from(body),
                    attributes,
                    ordering_key: row.try_get(5).map_err(read)?,
                    attempt: u32::try_from(attempts.saturating_add(1)).unwrap_or(u32::MAX),
                    published_at: UNIX_EPOCH
                        + Duration::from_millis(u64::try_from(published_ms).unwrap_or(0)),
                    receipt: format!("{seq}.{token}"),
                });
            }
            // Dead-lettering may have unblocked an ordering key; otherwise we are done.
            if rows.is_empty() || !dead_lettered || out.len() >= max {
                break;
            }
        }
        tx.commit().await.map_err(|e| db_error("receiving", e))?;
        Ok(out)
    }

    /// The delivery that `receipt` leases: `None` if the message is no longer pending.
    async fn leased(
        tx: &mut Tx,
        topic: &str,
        group: &str,
        receipt: &str,
    ) -> Result<Option<(i64, i64, Option<String>)>> {
        let (seq, token) = checks::receipt(BACKEND, receipt)?;
        let row = sqlx::query(
            "SELECT lease, attempts, ordering_key FROM mq_deliveries
             WHERE topic = ? AND grp = ? AND seq = ?",
        )
        .bind(topic)
        .bind(group)
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db_error("reading a delivery", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let read = |e| db_error("reading a delivery", e);
        let lease: Option<String> = row.try_get(0).map_err(read)?;
        if lease.as_deref() != Some(token) {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                BACKEND,
                "receipt is stale: the message was delivered again since",
            ));
        }
        Ok(Some((
            seq,
            row.try_get(1).map_err(read)?,
            row.try_get(2).map_err(read)?,
        )))
    }
}

fn not_pending() -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        BACKEND,
        "the message of this receipt is no longer pending",
    )
}

#[async_trait]
impl MessageQueue for SqliteQueue {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities::full()
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic), err(level = "debug"))]
    async fn create_topic(&self, topic: &str) -> Result<()> {
        checks::topic(BACKEND, topic)?;
        sqlx::query("INSERT OR IGNORE INTO mq_topics (name) VALUES (?)")
            .bind(topic)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("creating the topic", e))?;
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic), err(level = "debug"))]
    async fn delete_topic(&self, topic: &str) -> Result<()> {
        checks::topic(BACKEND, topic)?;
        let mut tx = self.begin().await?;
        for sql in [
            "DELETE FROM mq_deliveries WHERE topic = ?",
            "DELETE FROM mq_messages WHERE topic = ?",
            "DELETE FROM mq_groups WHERE topic = ?",
            "DELETE FROM mq_dedup WHERE topic = ?",
            "DELETE FROM mq_topics WHERE name = ?",
        ] {
            sqlx::query(sql)
                .bind(topic)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("deleting the topic", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error("deleting the topic", e))?;
        self.changed.notify_waiters();
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn create_group(&self, topic: &str, group: &str, options: GroupOptions) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::group_options(BACKEND, &self.capabilities(), topic, &options)?;
        let mut tx = self.begin().await?;
        if !Self::topic_exists(&mut tx, topic).await? {
            return Err(topic_not_found(topic));
        }
        if let Some(dlq) = &options.dead_letter_topic {
            if !Self::topic_exists(&mut tx, dlq).await? {
                return Err(Error::not_found(
                    BACKEND,
                    format!("dead-letter topic `{dlq}` not found"),
                ));
            }
        }
        sqlx::query(
            "INSERT INTO mq_groups (topic, name, ack_deadline_ms, max_attempts, dead_letter_topic)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (topic, name) DO UPDATE SET ack_deadline_ms = excluded.ack_deadline_ms,
               max_attempts = excluded.max_attempts, dead_letter_topic = excluded.dead_letter_topic",
        )
        .bind(topic)
        .bind(group)
        .bind(ms(options.ack_deadline))
        .bind(options.max_attempts.map(i64::from))
        .bind(options.dead_letter_topic.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("creating the group", e))?;
        tx.commit()
            .await
            .map_err(|e| db_error("creating the group", e))?;
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        let mut tx = self.begin().await?;
        for sql in [
            "DELETE FROM mq_deliveries WHERE topic = ? AND grp = ?",
            "DELETE FROM mq_groups WHERE topic = ? AND name = ?",
        ] {
            sqlx::query(sql)
                .bind(topic)
                .bind(group)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("deleting the group", e))?;
        }
        sqlx::query(
            "DELETE FROM mq_messages WHERE topic = ?
             AND seq NOT IN (SELECT seq FROM mq_deliveries WHERE topic = ?)",
        )
        .bind(topic)
        .bind(topic)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("deleting the group", e))?;
        tx.commit()
            .await
            .map_err(|e| db_error("deleting the group", e))?;
        self.changed.notify_waiters();
        Ok(())
    }

    // No `err` here: publish_batch, inside this span, reports the failure.
    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic))]
    async fn publish(&self, topic: &str, message: Message) -> Result<String> {
        let mut ids = self.publish_batch(topic, vec![message]).await?;
        ids.pop()
            .ok_or_else(|| Error::internal(BACKEND, "publish returned no id"))
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, count = messages.len()), err(level = "debug"))]
    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<String>> {
        checks::topic(BACKEND, topic)?;
        let caps = self.capabilities();
        checks::batch(BACKEND, &caps, &messages)?;
        let err = |e| db_error("publishing", e);
        let mut tx = self.begin().await?;
        if !Self::topic_exists(&mut tx, topic).await? {
            return Err(topic_not_found(topic));
        }
        let now = now_ms();
        sqlx::query("DELETE FROM mq_dedup WHERE topic = ? AND expires_at_ms <= ?")
            .bind(topic)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        // A topic without groups keeps nothing: no group will ever see these messages.
        let has_groups = Self::has_groups(&mut tx, topic).await?;
        let mut ids = Vec::with_capacity(messages.len());
        for m in messages {
            let id = match m.id {
                Some(id) => {
                    let seen = sqlx::query("SELECT 1 FROM mq_dedup WHERE topic = ? AND id = ?")
                        .bind(topic)
                        .bind(&id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(err)?
                        .is_some();
                    if seen {
                        debug!(topic, "duplicate message id; not delivered again");
                        ids.push(id);
                        continue;
                    }
                    sqlx::query("INSERT INTO mq_dedup (topic, id, expires_at_ms) VALUES (?, ?, ?)")
                        .bind(topic)
                        .bind(&id)
                        .bind(now.saturating_add(ms(self.dedup_window)))
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                    id
                }
                None => uuid::Uuid::new_v4().simple().to_string(),
            };
            if has_groups {
                let attributes = serde_json::to_string(&m.attributes).map_err(|e| {
                    Error::internal(BACKEND, "attributes not serializable").with_source(e)
                })?;
                let seq = sqlx::query(
                    "INSERT INTO mq_messages (topic, id, body, attributes, ordering_key, published_at_ms)
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(topic)
                .bind(&id)
                .bind(m.body.as_ref())
                .bind(attributes)
                .bind(m.ordering_key.as_deref())
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(err)?
                .last_insert_rowid();
                let visible_at = now.saturating_add(ms(m.delay.unwrap_or_default()));
                Self::fan_out(&mut tx, topic, seq, m.ordering_key.as_deref(), visible_at).await?;
            }
            ids.push(id);
        }
        tx.commit().await.map_err(err)?;
        self.changed.notify_waiters();
        Ok(ids)
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group, max = options.max_messages), err(level = "debug"))]
    async fn receive(
        &self,
        topic: &str,
        group: &str,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::receive(BACKEND, &options)?;
        let give_up = checks::give_up_at(BACKEND, &options)?;
        let mut first = true;
        loop {
            // Registered before looking, so a local publish in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // The first look always claims, so that a missing topic or group is reported.
            if first || self.anything_visible(topic, group).await? {
                first = false;
                let got = self.claim(topic, group, options.max_messages).await?;
                if !got.is_empty() {
                    debug!(topic, group, count = got.len(), "received");
                    return Ok(got);
                }
            }
            let now = Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            let wake = give_up.min(now + POLL_INTERVAL);
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn ack(&self, topic: &str, group: &str, receipt: &str) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::receipt(BACKEND, receipt)?;
        let mut tx = self.begin().await?;
        Self::group_row(&mut tx, topic, group).await?;
        let Some((seq, _, key)) = Self::leased(&mut tx, topic, group, receipt).await? else {
            return Ok(());
        };
        sqlx::query("DELETE FROM mq_deliveries WHERE topic = ? AND grp = ? AND seq = ?")
            .bind(topic)
            .bind(group)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("acknowledging", e))?;
        Self::collect_garbage(&mut tx, seq).await?;
        tx.commit()
            .await
            .map_err(|e| db_error("acknowledging", e))?;
        if key.is_some() {
            // The next message of the key is deliverable now.
            self.changed.notify_waiters();
        }
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn nack(&self, topic: &str, group: &str, receipt: &str, delay: Duration) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::nack_delay(BACKEND, &self.capabilities(), delay)?;
        checks::receipt(BACKEND, receipt)?;
        let mut tx = self.begin().await?;
        let options = Self::group_row(&mut tx, topic, group).await?;
        let (seq, attempts, _) = Self::leased(&mut tx, topic, group, receipt)
            .await?
            .ok_or_else(not_pending)?;
        let now = now_ms();
        if delay.is_zero() && options.max_attempts.is_some_and(|m| attempts >= m) {
            // Out of attempts: dead-letter now rather than at the next receive.
            Self::dead_letter(
                &mut tx,
                topic,
                group,
                seq,
                options.dead_letter_topic.as_deref(),
                now,
            )
            .await?;
        } else {
            sqlx::query(
                "UPDATE mq_deliveries SET visible_at_ms = ? WHERE topic = ? AND grp = ? AND seq = ?",
            )
            .bind(now.saturating_add(ms(delay)))
            .bind(topic)
            .bind(group)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("nacking", e))?;
        }
        tx.commit().await.map_err(|e| db_error("nacking", e))?;
        self.changed.notify_waiters();
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn extend_deadline(
        &self,
        topic: &str,
        group: &str,
        receipt: &str,
        extension: Duration,
    ) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::lease(BACKEND, "lease extension", extension)?;
        checks::receipt(BACKEND, receipt)?;
        let mut tx = self.begin().await?;
        Self::group_row(&mut tx, topic, group).await?;
        let (seq, _, _) = Self::leased(&mut tx, topic, group, receipt)
            .await?
            .ok_or_else(not_pending)?;
        sqlx::query(
            "UPDATE mq_deliveries SET visible_at_ms = ? WHERE topic = ? AND grp = ? AND seq = ?",
        )
        .bind(now_ms().saturating_add(ms(extension)))
        .bind(topic)
        .bind(group)
        .bind(seq)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("extending the lease", e))?;
        tx.commit()
            .await
            .map_err(|e| db_error("extending the lease", e))?;
        Ok(())
    }
}
