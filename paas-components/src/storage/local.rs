//! The local filesystem blob store.
//!
//! # Layout
//!
//! Key `a/b/c.json` is the file `<root>/a.d/b.d/c.json.blob`: every directory segment gets
//! the suffix `.d` and the last segment `.blob`. Because no name ends in both, a key may be
//! an object and a "directory" of other keys at once (`a` and `a/b`), as on S3. Anything else
//! under the root (the reserved `.staging/` directory, stray files) is never listed.
//!
//! Each `.blob` file holds the bytes, then a JSON header (content type, user metadata, ETag,
//! time), then the header's length and a magic number. One file per object means one
//! `rename` publishes content and metadata together.
//!
//! # Atomicity
//!
//! A write goes to a temporary file in `<root>/.staging/tmp/`, is fsynced, and is renamed over
//! the target, so a reader sees the old or the new object, never a part, and an interrupted
//! write leaves the previous version (and a temporary file that is never listed; those older
//! than a day are removed when a store is opened). Multipart uploads live in
//! `<root>/.staging/uploads/<id>/` until completed or aborted; an upload that no part was
//! written to for [`STALE_UPLOAD`] (7 days) is removed when a store is opened, so abandoned
//! uploads do not fill the disk. Conditional writes (create-only,
//! if-match, copy if-not-exists, multipart completion) check and rename under a per-key lock:
//! they are atomic **within one process**; two processes writing the same root conditionally
//! can both win.
//!
//! # Limits
//!
//! A key segment may be at most 250 bytes (the file name limit less the suffix). On a
//! case-insensitive filesystem, keys that differ only in case collide. Symbolic links under
//! the root are not followed by listings, and reads and writes whose path resolves outside
//! the root (through a symbolic link) fail with `PermissionDenied`. A write creates an
//! object's directories one level at a time and resolves each before creating the next, so
//! a refused write has created nothing outside the root.

use super::embedded::{self, check_put_options, same_etag, select_page};
use async_trait::async_trait;
use bytes::Bytes;
use cloud_abstraction::storage::{
    BlobStore, CopyOptions, GetOptions, GetResult, ListOptions, ListPage, MultipartId, ObjectMeta,
    PartId, PutMode, PutOptions, PutResult, StorageCapabilities,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result, validate};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BACKEND: &str = "file";
const MAGIC: &[u8; 8] = b"CABLOB1\n";
const TRAILER: u64 = 16;
const STAGING: &str = ".staging";
const DIR_SUFFIX: &str = ".d";
const FILE_SUFFIX: &str = ".blob";
const MAX_SEGMENT: usize = 250;
const LOCK_STRIPES: usize = 64;
const CHUNK: usize = 1024 * 1024;

/// A [`BlobStore`] in a directory of the local filesystem (backend name `file`).
///
/// Every capability but presigning, no size limit. See the [module docs](self) for the
/// layout, the atomicity guarantees and the limits. Clones share the same locks.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use cloud_abstraction::storage::BlobStoreExt;
/// use paas_components::storage::LocalBlobStore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = LocalBlobStore::open(dir.path()).unwrap();
/// store.put_bytes("a/b", "hello".into()).await.unwrap();
/// assert_eq!(store.get_bytes("a/b").await.unwrap(), "hello");
/// # });
/// ```
#[derive(Clone)]
pub struct LocalBlobStore {
    inner: Arc<Inner>,
    location: Location,
}

struct Inner {
    root: PathBuf,
    /// `root` with symbolic links resolved, to check that objects stay inside it.
    real_root: PathBuf,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for LocalBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBlobStore")
            .field("root", &self.inner.root)
            .field("location", &self.location)
            .finish()
    }
}

/// The JSON header stored after an object's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    size: u64,
    etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    modified_secs: u64,
    modified_nanos: u32,
}

impl Header {
    fn new(size: u64, etag: String, options: &PutOptions) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            size,
            etag,
            content_type: options.content_type.clone(),
            metadata: options.metadata.clone(),
            modified_secs: now.as_secs(),
            modified_nanos: now.subsec_nanos(),
        }
    }

    fn touch(mut self) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.modified_secs = now.as_secs();
        self.modified_nanos = now.subsec_nanos();
        self
    }

    /// The stored modification time. The header is read from disk, so out-of-range values
    /// (a damaged or hand-edited file) must not panic: they read as the epoch.
    fn modified(&self) -> SystemTime {
        Duration::from_secs(self.modified_secs)
            .checked_add(Duration::from_nanos(u64::from(self.modified_nanos)))
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .unwrap_or(UNIX_EPOCH)
    }

    fn meta(&self, key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: self.size,
            etag: self.etag.clone(),
            last_modified: self.modified(),
            content_type: self.content_type.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// What a multipart upload remembers (`upload.json` in its staging directory).
#[derive(Debug, Serialize, Deserialize)]
struct UploadRecord {
    key: String,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// `None`: overwrite; `Some(None)`: create-only; `Some(Some(etag))`: if-match.
    #[serde(default)]
    condition: Option<Option<String>>,
}

impl UploadRecord {
    fn options(&self) -> PutOptions {
        PutOptions {
            mode: match &self.condition {
                None => PutMode::Overwrite,
                Some(None) => PutMode::Create,
                Some(Some(etag)) => PutMode::UpdateIfMatch(etag.clone()),
            },
            content_type: self.content_type.clone(),
            metadata: self.metadata.clone(),
            // Checked when the upload was created (by the rule that applied then), and every
            // name that passed a rule passes the as-stored one.
            as_stored: true,
        }
    }
}

fn io_error(what: &str, e: io::Error) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::ResourceExhausted,
        io::ErrorKind::InvalidFilename => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    };
    Error::new(kind, BACKEND, format!("{what}: {e}")).with_source(e)
}

fn not_found(key: &str) -> Error {
    Error::not_found(BACKEND, format!("object `{key}` not found"))
}

fn corrupt(key: &str, why: &str) -> Error {
    Error::internal(BACKEND, format!("object file of `{key}` is corrupt: {why}"))
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(BACKEND, format!("filesystem task failed: {e}")))?
}

impl LocalBlobStore {
    /// Opens (creating it if needed) the store rooted at `root`.
    ///
    /// Fails with [`InvalidArgument`](ErrorKind::InvalidArgument) if `root` exists and is not
    /// a directory, or with the I/O error's kind if it cannot be created.
    ///
    /// Blocking: it creates directories and sweeps stale temporary files on the calling
    /// thread. That is a one-off at start-up; every operation afterwards runs its filesystem
    /// work on tokio's blocking pool.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        if root.exists() && !root.is_dir() {
            return Err(Error::invalid(
                BACKEND,
                format!("store root {} is not a directory", root.display()),
            ));
        }
        for dir in [
            root.join(STAGING).join("tmp"),
            root.join(STAGING).join("uploads"),
        ] {
            fs::create_dir_all(&dir).map_err(|e| io_error("creating the store root", e))?;
        }
        remove_stale_temp_files(&root.join(STAGING).join("tmp"));
        remove_stale_uploads(&root.join(STAGING).join("uploads"));
        let real_root =
            fs::canonicalize(&root).map_err(|e| io_error("resolving the store root", e))?;
        tracing::debug!(backend = BACKEND, root = %root.display(), "opened file blob store");
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                real_root,
                locks: (0..LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
            location: Location::local(),
        })
    }

    /// The same store reporting `location`.
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn lock_for(&self, key: &str) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.inner.locks[(h.finish() % LOCK_STRIPES as u64) as usize]
    }

    /// Writes the prepared temporary file `tmp` to `key` under `mode`, atomically with respect
    /// to this process's other writes of `key`.
    async fn commit(
        &self,
        key: &str,
        tmp: TempFile,
        mode: PutMode,
        etag: String,
    ) -> Result<PutResult> {
        let _guard = self.lock_for(key).lock().await;
        let inner = Arc::clone(&self.inner);
        let key = key.to_string();
        blocking(move || {
            let target = inner.object_path(&key)?;
            match &mode {
                PutMode::Overwrite => {}
                PutMode::Create => {
                    if inner.read_header(&key, &target).is_ok() {
                        return Err(Error::new(
                            ErrorKind::AlreadyExists,
                            BACKEND,
                            format!("object `{key}` already exists"),
                        ));
                    }
                }
                PutMode::UpdateIfMatch(expected) => {
                    let current = inner.read_header(&key, &target).ok();
                    if !current.is_some_and(|h| same_etag(&h.etag, expected)) {
                        return Err(Error::new(
                            ErrorKind::PreconditionFailed,
                            BACKEND,
                            format!("object `{key}` does not have the expected etag"),
                        ));
                    }
                }
            }
            inner.publish(&key, tmp, &target)?;
            Ok(PutResult { etag })
        })
        .await
    }
}

/// A temporary file in the staging directory, removed on drop unless it was renamed.
struct TempFile {
    path: PathBuf,
    published: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Age after which a temporary file is an interrupted write's leftover.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);
/// Age after which an unfinished multipart upload is abandoned (S3 lifecycle rules commonly
/// abort incomplete uploads after 7 days).
pub const STALE_UPLOAD: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whether `path` was last modified longer than `age` ago.
fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}

fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if older_than(&entry.path(), STALE_TEMP) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Removes the upload directories that no part was written to for [`STALE_UPLOAD`] (a part
/// lands in its upload's directory, which refreshes the directory's modification time).
fn remove_stale_uploads(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && older_than(&path, STALE_UPLOAD) {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

impl Inner {
    /// The file of `key` (validated; segments encoded as described in the module docs).
    fn object_path(&self, key: &str) -> Result<PathBuf> {
        validate::object_key(BACKEND, key)?;
        let mut path = self.root.clone();
        let segments: Vec<&str> = key.split('/').collect();
        for (i, segment) in segments.iter().enumerate() {
            if segment.len() > MAX_SEGMENT {
                return Err(Error::invalid(
                    BACKEND,
                    format!("a segment of key `{key}` is longer than {MAX_SEGMENT} bytes"),
                ));
            }
            let suffix = if i + 1 == segments.len() {
                FILE_SUFFIX
            } else {
                DIR_SUFFIX
            };
            path.push(format!("{segment}{suffix}"));
        }
        Ok(path)
    }

    fn new_temp(&self) -> Result<(TempFile, File)> {
        let path = self
            .root
            .join(STAGING)
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error("creating a temporary file", e))?;
        Ok((
            TempFile {
                path,
                published: false,
            },
            file,
        ))
    }

    /// Appends the header and trailer, and makes the file durable.
    fn finish_file(mut file: File, header: &Header) -> Result<()> {
        let json = serde_json::to_vec(header)
            .map_err(|e| Error::internal(BACKEND, format!("encoding a header: {e}")))?;
        let write = |file: &mut File| -> io::Result<()> {
            file.write_all(&json)?;
            file.write_all(&(json.len() as u64).to_le_bytes())?;
            file.write_all(MAGIC)?;
            file.sync_all()
        };
        write(&mut file).map_err(|e| io_error("writing an object", e))
    }

    /// Renames `tmp` over `target`, creating the parent directories (again, if a concurrent
    /// delete pruned them in between), and syncs the directory.
    fn publish(&self, key: &str, mut tmp: TempFile, target: &Path) -> Result<()> {
        let parent = target
            .parent()
            .ok_or_else(|| Error::internal(BACKEND, "object path has no parent"))?;
        // A concurrent delete of a sibling may prune the directory between these steps, which
        // shows up as NotFound: create it again and retry.
        let mut attempt = 0;
        loop {
            // Never create or rename into a directory that a symbolic link leads out of the
            // root: each level is checked before the next one is created.
            let step = self.create_parent_inside(key, parent)?;
            let step = step.and_then(|_| fs::rename(&tmp.path, target));
            match step {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => attempt += 1,
                Err(e) => return Err(io_error("publishing an object", e)),
            }
        }
        tmp.published = true;
        // Durability of the rename itself; failure here does not undo the write.
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn open_object(&self, key: &str, path: &Path) -> Result<File> {
        // Resolving the path catches symbolic links (of the file or of a directory on the
        // way) that lead out of the root.
        let real = match fs::canonicalize(path) {
            Ok(real) => real,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(not_found(key));
            }
            Err(e) => return Err(io_error(&format!("reading `{key}`"), e)),
        };
        self.check_inside(key, &real)?;
        if !real.is_file() {
            return Err(not_found(key));
        }
        File::open(&real).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => not_found(key),
            _ => io_error(&format!("reading `{key}`"), e),
        })
    }

    /// Creates `parent` (a directory under the root) level by level, resolving each level and
    /// refusing with `PermissionDenied` as soon as one resolves outside the root, before
    /// anything below it is created. `create_dir_all` would follow a symbolic link out of the
    /// root and create the rest there. The inner I/O error is for the caller's retry.
    fn create_parent_inside(&self, key: &str, parent: &Path) -> Result<io::Result<PathBuf>> {
        let relative = parent
            .strip_prefix(&self.root)
            .map_err(|_| Error::internal(BACKEND, "object path outside the store root"))?;
        let mut current = self.real_root.clone();
        for component in relative.components() {
            current.push(component);
            match fs::create_dir(&current) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Ok(Err(e)),
            }
            current = match fs::canonicalize(&current) {
                Ok(real) => real,
                Err(e) => return Ok(Err(e)),
            };
            self.check_inside(key, &current)?;
        }
        Ok(Ok(current))
    }

    fn check_inside(&self, key: &str, real: &Path) -> Result<()> {
        if real.starts_with(&self.real_root) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::PermissionDenied,
                BACKEND,
                format!("object `{key}` resolves outside the store root (symbolic link)"),
            ))
        }
    }

    /// Reads the header of an open object file.
    fn header_of(key: &str, file: &mut File) -> Result<Header> {
        let read = |file: &mut File| -> io::Result<(u64, [u8; 16])> {
            let len = file.metadata()?.len();
            let mut trailer = [0u8; 16];
            if len >= TRAILER {
                file.seek(SeekFrom::Start(len - TRAILER))?;
                file.read_exact(&mut trailer)?;
            }
            Ok((len, trailer))
        };
        let (len, trailer) = read(file).map_err(|e| io_error(&format!("reading `{key}`"), e))?;
        if len < TRAILER || &trailer[8..] != MAGIC {
            return Err(corrupt(key, "no trailer"));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&trailer[..8]);
        let header_len = u64::from_le_bytes(n);
        if header_len > len - TRAILER || header_len > 16 * 1024 * 1024 {
            return Err(corrupt(key, "header length out of range"));
        }
        let data_len = len - TRAILER - header_len;
        let mut json = vec![0u8; header_len as usize];
        file.seek(SeekFrom::Start(data_len))
            .and_then(|_| file.read_exact(&mut json))
            .map_err(|e| io_error(&format!("reading `{key}`"), e))?;
        let header: Header =
            serde_json::from_slice(&json).map_err(|_| corrupt(key, "bad header"))?;
        if header.size != data_len {
            return Err(corrupt(key, "size mismatch"));
        }
        Ok(header)
    }

    fn read_header(&self, key: &str, path: &Path) -> Result<Header> {
        let mut file = self.open_object(key, path)?;
        Self::header_of(key, &mut file)
    }

    /// Every key in the store under the directory that `prefix` names, sorted.
    fn keys_under(&self, prefix: &str) -> Result<Vec<String>> {
        // Only the complete segments of the prefix narrow the walk; the rest is filtered.
        let mut dir = self.root.clone();
        let mut key_prefix = String::new();
        if let Some(i) = prefix.rfind('/') {
            for segment in prefix[..i].split('/') {
                dir.push(format!("{segment}{DIR_SUFFIX}"));
            }
            key_prefix = prefix[..=i].to_string();
        }
        let mut keys = Vec::new();
        walk(&dir, &key_prefix, &mut keys)?;
        keys.sort();
        Ok(keys)
    }
}

fn walk(dir: &Path, key_prefix: &str, out: &mut Vec<String>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(io_error("listing", e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error("listing", e))?;
        // Not following symbolic links keeps a listing inside the root.
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if file_type.is_dir() {
            if let Some(segment) = name.strip_suffix(DIR_SUFFIX) {
                walk(&entry.path(), &format!("{key_prefix}{segment}/"), out)?;
            }
        } else if file_type.is_file() {
            if let Some(segment) = name.strip_suffix(FILE_SUFFIX) {
                out.push(format!("{key_prefix}{segment}"));
            }
        }
    }
    Ok(())
}

/// Removes the empty directories between `path`'s parent and `root` (best effort: a
/// concurrent write may refill one, which then simply stays).
fn prune_empty_dirs(root: &Path, path: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// Copies `reader` into `file` while hashing it into both hashers; returns the byte count.
fn copy_hashing(
    reader: &mut impl Read,
    file: &mut File,
    hasher: &mut Sha256,
    whole: &mut Sha256,
) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        whole.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn upload_dir(root: &Path, upload: &MultipartId) -> Result<PathBuf> {
    // Ids are ours (32 hex digits); anything else could name a path outside the staging dir.
    if upload.0.len() != 32 || !upload.0.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::not_found(BACKEND, "no such multipart upload"));
    }
    Ok(root.join(STAGING).join("uploads").join(&upload.0))
}

fn read_upload(root: &Path, key: &str, upload: &MultipartId) -> Result<(PathBuf, UploadRecord)> {
    let dir = upload_dir(root, upload)?;
    let record: UploadRecord = fs::read(dir.join("upload.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|r: &UploadRecord| r.key == key)
        .ok_or_else(|| Error::not_found(BACKEND, "no such multipart upload for this key"))?;
    Ok((dir, record))
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> StorageCapabilities {
        StorageCapabilities::full()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key, size = payload.len()), err(level = "debug"))]
    async fn put(&self, key: &str, payload: Bytes, mut options: PutOptions) -> Result<PutResult> {
        self.inner.object_path(key)?;
        check_put_options(BACKEND, &mut options)?;
        let inner = Arc::clone(&self.inner);
        let PutOptions {
            mode,
            content_type,
            metadata,
            ..
        } = options;
        let header_options = PutOptions {
            mode: PutMode::Overwrite,
            content_type,
            metadata,
            as_stored: false,
        };
        let (tmp, etag) = blocking(move || {
            let etag = embedded::etag(
                &embedded::digest(&payload),
                header_options.content_type.as_deref(),
                &header_options.metadata,
            );
            let (tmp, mut file) = inner.new_temp()?;
            file.write_all(&payload)
                .map_err(|e| io_error("writing an object", e))?;
            let header = Header::new(payload.len() as u64, etag.clone(), &header_options);
            Inner::finish_file(file, &header)?;
            Ok((tmp, etag))
        })
        .await?;
        self.commit(key, tmp, mode, etag).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key), err(level = "debug"))]
    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult> {
        let path = self.inner.object_path(key)?;
        let inner = Arc::clone(&self.inner);
        let key = key.to_string();
        blocking(move || {
            // One open file for header and bytes: a concurrent rename cannot mix versions.
            let mut file = inner.open_object(&key, &path)?;
            let header = Inner::header_of(&key, &mut file)?;
            if let Some(expected) = &options.if_match {
                if !same_etag(&header.etag, expected) {
                    return Err(Error::new(
                        ErrorKind::PreconditionFailed,
                        BACKEND,
                        format!("object `{key}` does not match if_match"),
                    ));
                }
            }
            if let Some(unwanted) = &options.if_none_match {
                if same_etag(&header.etag, unwanted) {
                    return Err(Error::new(
                        ErrorKind::PreconditionFailed,
                        BACKEND,
                        format!("object `{key}` is not modified (if_none_match)"),
                    ));
                }
            }
            let range = match &options.range {
                Some(r) => r.resolve(BACKEND, header.size)?,
                None => 0..header.size,
            };
            let len = usize::try_from(range.end - range.start)
                .map_err(|_| Error::invalid(BACKEND, "range too large for this platform"))?;
            let mut data = vec![0u8; len];
            file.seek(SeekFrom::Start(range.start))
                .and_then(|_| file.read_exact(&mut data))
                .map_err(|e| io_error(&format!("reading `{key}`"), e))?;
            Ok(GetResult {
                meta: header.meta(&key),
                range,
                data: Bytes::from(data),
            })
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key), err(level = "debug"))]
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.inner.object_path(key)?;
        let inner = Arc::clone(&self.inner);
        let key = key.to_string();
        blocking(move || Ok(inner.read_header(&key, &path)?.meta(&key))).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key), err(level = "debug"))]
    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.inner.object_path(key)?;
        let _guard = self.lock_for(key).lock().await;
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) => {}
                Err(e) => return Err(io_error("deleting an object", e)),
            }
            prune_empty_dirs(&inner.root, &path);
            Ok(())
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, prefix = %options.prefix), err(level = "debug"))]
    async fn list_page(&self, options: ListOptions) -> Result<ListPage> {
        validate::key_prefix(BACKEND, &options.prefix)?;
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let keys = inner.keys_under(&options.prefix)?;
            let selected = select_page(BACKEND, &options, keys.iter().map(String::as_str))?;
            let mut objects = Vec::with_capacity(selected.objects.len());
            for key in selected.objects {
                let path = inner.object_path(&key)?;
                match inner.read_header(&key, &path) {
                    Ok(header) => objects.push(header.meta(&key)),
                    // Deleted since the walk.
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(ListPage {
                objects,
                common_prefixes: selected.common_prefixes,
                next_page_token: selected.next_page_token,
            })
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, from = %from, to = %to), err(level = "debug"))]
    async fn copy(&self, from: &str, to: &str, options: CopyOptions) -> Result<PutResult> {
        let source = self.inner.object_path(from)?;
        self.inner.object_path(to)?;
        let inner = Arc::clone(&self.inner);
        let from = from.to_string();
        let (tmp, etag) = blocking(move || {
            let mut file = inner.open_object(&from, &source)?;
            let header = Inner::header_of(&from, &mut file)?;
            let (tmp, mut out) = inner.new_temp()?;
            file.seek(SeekFrom::Start(0))
                .and_then(|_| io::copy(&mut (&mut file).take(header.size), &mut out))
                .map_err(|e| io_error("copying an object", e))?;
            let etag = header.etag.clone();
            Inner::finish_file(out, &header.touch())?;
            Ok((tmp, etag))
        })
        .await?;
        let mode = if options.if_not_exists {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        self.commit(to, tmp, mode, etag).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key), err(level = "debug"))]
    async fn create_multipart(&self, key: &str, mut options: PutOptions) -> Result<MultipartId> {
        self.inner.object_path(key)?;
        check_put_options(BACKEND, &mut options)?;
        let record = UploadRecord {
            key: key.to_string(),
            content_type: options.content_type,
            metadata: options.metadata,
            condition: match options.mode {
                PutMode::Overwrite => None,
                PutMode::Create => Some(None),
                PutMode::UpdateIfMatch(etag) => Some(Some(etag)),
            },
        };
        let id = MultipartId(uuid::Uuid::new_v4().simple().to_string());
        let dir = upload_dir(&self.inner.root, &id)?;
        blocking(move || {
            let json = serde_json::to_vec(&record)
                .map_err(|e| Error::internal(BACKEND, format!("encoding an upload: {e}")))?;
            fs::create_dir_all(&dir)
                .and_then(|_| fs::write(dir.join("upload.json"), json))
                .map_err(|e| io_error("creating a multipart upload", e))?;
            Ok(id)
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key, part = part_number), err(level = "debug"))]
    async fn put_part(
        &self,
        key: &str,
        upload: &MultipartId,
        part_number: u32,
        data: Bytes,
    ) -> Result<PartId> {
        self.inner.object_path(key)?;
        let inner = Arc::clone(&self.inner);
        let key = key.to_string();
        let upload = upload.clone();
        blocking(move || {
            let (dir, _) = read_upload(&inner.root, &key, &upload)?;
            let token = hex::encode(&embedded::digest(&data)[..16]);
            let (mut tmp, mut file) = inner.new_temp()?;
            file.write_all(&data)
                .and_then(|_| file.sync_all())
                .map_err(|e| io_error("writing a part", e))?;
            fs::rename(&tmp.path, dir.join(format!("part-{part_number:010}")))
                .map_err(|e| io_error("storing a part (upload aborted?)", e))?;
            tmp.published = true;
            Ok(PartId { part_number, token })
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key, parts = parts.len()), err(level = "debug"))]
    async fn complete_multipart(
        &self,
        key: &str,
        upload: &MultipartId,
        parts: Vec<PartId>,
    ) -> Result<PutResult> {
        self.inner.object_path(key)?;
        if parts.is_empty() {
            return Err(Error::invalid(BACKEND, "a multipart upload needs a part"));
        }
        let inner = Arc::clone(&self.inner);
        let owned_key = key.to_string();
        let owned_upload = upload.clone();
        let (tmp, etag, mode, dir) = blocking(move || {
            let (dir, record) = read_upload(&inner.root, &owned_key, &owned_upload)?;
            let options = record.options();
            let (tmp, mut out) = inner.new_temp()?;
            let mut whole = Sha256::new();
            let mut size = 0u64;
            let count = parts.len();
            for (i, part) in parts.iter().enumerate() {
                let bad = || {
                    Error::invalid(
                        BACKEND,
                        format!(
                            "part {} (position {i}) was not uploaded to this upload, is out of \
                             order, or its token does not match",
                            part.part_number
                        ),
                    )
                };
                if part.part_number as usize != i {
                    return Err(bad());
                }
                let mut file = File::open(dir.join(format!("part-{:010}", part.part_number)))
                    .map_err(|_| bad())?;
                let mut hasher = Sha256::new();
                let n = copy_hashing(&mut file, &mut out, &mut hasher, &mut whole)
                    .map_err(|e| io_error("assembling a multipart upload", e))?;
                let digest = hasher.finalize();
                if hex::encode(&digest[..16]) != part.token {
                    return Err(bad());
                }
                if n == 0 && i + 1 < count {
                    return Err(Error::invalid(
                        BACKEND,
                        format!("part {i} is empty but is not the last part"),
                    ));
                }
                size += n;
            }
            let digest: [u8; 32] = whole.finalize().into();
            let etag = embedded::etag(&digest, options.content_type.as_deref(), &options.metadata);
            Inner::finish_file(out, &Header::new(size, etag.clone(), &options))?;
            Ok((tmp, etag, options.mode, dir))
        })
        .await?;
        let result = self.commit(key, tmp, mode, etag).await?;
        // The object is published; leftover parts are only wasted space.
        let _ = blocking(move || {
            let _ = fs::remove_dir_all(dir);
            Ok(())
        })
        .await;
        Ok(result)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key), err(level = "debug"))]
    async fn abort_multipart(&self, key: &str, upload: &MultipartId) -> Result<()> {
        self.inner.object_path(key)?;
        let inner = Arc::clone(&self.inner);
        let key = key.to_string();
        let upload = upload.clone();
        blocking(move || {
            // Aborting an unknown or finished upload succeeds, like deleting an absent key.
            if let Ok((dir, _)) = read_upload(&inner.root, &key, &upload) {
                fs::remove_dir_all(&dir).map_err(|e| io_error("aborting an upload", e))?;
            }
            Ok(())
        })
        .await
    }
}
