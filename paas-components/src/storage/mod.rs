//! [`BlobStore`](cloud_abstraction::BlobStore) backends, one module per backend, each behind
//! its cargo feature:
//!
//! | feature | type | backend name | notes |
//! |---|---|---|---|
//! | `memory` | [`MemoryBlobStore`] | `memory` | in-process, for tests and single-process tools |
//! | `local` | [`LocalBlobStore`] | `file` | a directory tree; atomic writes by rename |
//! | `s3` | `S3BlobStore` | `s3` | S3 and compatible servers (`s3://bucket?…`), through object_store; presigned URLs |
//! | `azure` | `AzureBlobStore` | `azure` | Azure Blob and Azurite (`azure://container?…`), through object_store |
//!
//! The S3 and Azure stores share one mapping from object_store (`object_store_adapter`).
//! Every backend passes the conformance kit in `cloud_abstraction::testkit::storage`.

#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "memory")]
pub use memory::MemoryBlobStore;

#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "local")]
pub use local::LocalBlobStore;

#[cfg(feature = "azure")]
pub mod azure;
#[cfg(any(feature = "s3", feature = "azure"))]
mod object_store_adapter;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "azure")]
pub use azure::AzureBlobStore;
#[cfg(feature = "s3")]
pub use s3::S3BlobStore;

/// Helpers shared by the embedded stores (ETags, metadata checks, listing pages).
#[cfg(any(feature = "memory", feature = "local"))]
mod embedded {
    use cloud_abstraction::storage::{
        DEFAULT_CONTENT_TYPE, ListOptions, PutOptions, StorageCapabilities,
    };
    use cloud_abstraction::{Result, validate};
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;

    /// Default and largest page size of a listing.
    pub(crate) const MAX_PAGE: usize = 1000;

    /// The ETag of an object: a hash of its content digest, content type and user metadata,
    /// so it is the same for the same object in any process and changes with either.
    pub(crate) fn etag(
        content_digest: &[u8],
        content_type: Option<&str>,
        metadata: &BTreeMap<String, String>,
    ) -> String {
        let mut h = Sha256::new();
        h.update(b"cloud-abstraction-etag-v1\0");
        h.update(content_digest);
        // Length-prefixed fields, so that no two different objects hash the same input.
        let mut field = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        match content_type {
            Some(ct) => {
                field("ct");
                field(ct);
            }
            None => field("no-ct"),
        }
        for (k, v) in metadata {
            field(k);
            field(v);
        }
        hex::encode(&h.finalize()[..16])
    }

    /// SHA-256 of `data`.
    pub(crate) fn digest(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    /// Whether two ETags are the same, ignoring the quotes HTTP puts around them.
    pub(crate) fn same_etag(a: &str, b: &str) -> bool {
        a.trim_matches('"') == b.trim_matches('"')
    }

    /// Checks the content type and user metadata of a put: the portable rule of
    /// [`validate::put_options`], the same as on S3 and Azure; a missing content type becomes
    /// [`DEFAULT_CONTENT_TYPE`], as on the cloud stores.
    pub(crate) fn check_put_options(backend: &'static str, options: &mut PutOptions) -> Result<()> {
        // The embedded stores claim `StorageCapabilities::full()`, names included.
        validate::put_options(backend, options, StorageCapabilities::full().metadata_names)?;
        options
            .content_type
            .get_or_insert_with(|| DEFAULT_CONTENT_TYPE.to_string());
        Ok(())
    }

    /// The keys and "directories" of one listing page, chosen from every key in the store.
    #[derive(Debug, Default)]
    pub(crate) struct Selected {
        pub(crate) objects: Vec<String>,
        pub(crate) common_prefixes: Vec<String>,
        pub(crate) next_page_token: Option<String>,
    }

    /// Picks one page out of `sorted_keys` (ascending). The page token is the last entry
    /// (key or common prefix) returned, so the next page starts strictly after it.
    pub(crate) fn select_page<'a>(
        backend: &'static str,
        options: &ListOptions,
        sorted_keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<Selected> {
        validate::key_prefix(backend, &options.prefix)?;
        let max = options.max_results.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
        let prefix = options.prefix.as_str();
        let mut out = Selected::default();
        let mut count = 0;
        let mut last: Option<String> = None;
        for key in sorted_keys {
            if !key.starts_with(prefix) {
                continue;
            }
            if options.start_after.as_deref().is_some_and(|s| key <= s) {
                continue;
            }
            let (entry, is_prefix) = match options.delimiter {
                true => match key[prefix.len()..].find('/') {
                    Some(i) => (&key[..prefix.len() + i + 1], true),
                    None => (key, false),
                },
                false => (key, false),
            };
            if options.page_token.as_deref().is_some_and(|t| entry <= t) {
                continue;
            }
            // Keys under one common prefix are contiguous in sorted order.
            if last.as_deref() == Some(entry) {
                continue;
            }
            if count == max {
                out.next_page_token = last;
                return Ok(out);
            }
            if is_prefix {
                out.common_prefixes.push(entry.to_string());
            } else {
                out.objects.push(entry.to_string());
            }
            last = Some(entry.to_string());
            count += 1;
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn pages_with_delimiter() {
            let keys = ["a", "b/1", "b/2", "b0", "c/x/y"];
            let options = ListOptions {
                delimiter: true,
                max_results: Some(2),
                ..ListOptions::default()
            };
            let p1 = select_page("t", &options, keys).unwrap();
            assert_eq!(p1.objects, vec!["a"]);
            assert_eq!(p1.common_prefixes, vec!["b/"]);
            assert_eq!(p1.next_page_token.as_deref(), Some("b/"));
            let options = ListOptions {
                page_token: p1.next_page_token,
                ..options
            };
            let p2 = select_page("t", &options, keys).unwrap();
            assert_eq!(p2.objects, vec!["b0"]);
            assert_eq!(p2.common_prefixes, vec!["c/"]);
            assert_eq!(p2.next_page_token, None);
        }

        #[test]
        fn etag_depends_on_content_and_metadata() {
            let d = digest(b"x");
            let m = BTreeMap::new();
            let e = etag(&d, None, &m);
            assert_eq!(e, etag(&d, None, &m));
            assert_ne!(e, etag(&digest(b"y"), None, &m));
            assert_ne!(e, etag(&d, Some("text/plain"), &m));
            let mut m2 = BTreeMap::new();
            m2.insert("a".to_string(), "b".to_string());
            assert_ne!(e, etag(&d, None, &m2));
            assert!(same_etag(&e, &format!("\"{e}\"")));
        }
    }
}
