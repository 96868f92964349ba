//! S3 (and S3-compatible servers) as a [`BlobStore`](cloud_abstraction::BlobStore), through
//! [`object_store`]'s `AmazonS3`.
//!
//! URL: `s3://BUCKET?region=eu-central-1&endpoint=http://127.0.0.1:9000&access_key_id=K&secret_access_key=S`
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `region` | the bucket's region: both where the store is reported to run (its [`Location`] region) and the SigV4 signing region | none |
//! | `signing_region` | the signing region, when it must differ from `region` (S3-compatible servers often want `us-east-1` wherever they run) | `region`, else `AWS_REGION`, else `us-east-1` |
//! | `provider`, `zone` | the rest of the reported [`Location`] (see [`Location::from_url`]) | provider `unknown` |
//! | `endpoint` | a non-AWS endpoint (path-style requests): an absolute `http(s)://host[:port]` URL, else `InvalidArgument` at open; plain `http` only on loopback | AWS |
//! | `access_key_id`, `secret_access_key`, `session_token` | credentials | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` |
//! | `conditional_put` | `etag`: the server honours `If-None-Match: *` / `If-Match` on PUT atomically; `disabled`: it does not, so create-only and if-match puts are `Unsupported` | `etag` |
//! | `allow_http` | allow plain HTTP to a non-loopback endpoint | `false` |
//!
//! Location: a store opened without `provider`/`region`/`zone` reports [`Location::unknown`]
//! (an S3 endpoint need not be AWS, and `AWS_REGION` says where the client is, not the
//! bucket); `provider=aws` must be said. A region taken from `AWS_REGION` signs requests but is
//! not reported.
//!
//! Capabilities: conditional put (per `conditional_put`), conditional get, ranges, multipart
//! (every part but the last at least 5 MiB), content type and user metadata, presigned GET and
//! PUT URLs (SigV4, up to 7 days). Listed objects carry no content type or metadata (S3's list
//! does not return them). See the shared adapter for how the semantics are mapped.
//!
//! Tested (`paas-components/tests/storage_s3.rs`) against moto with `conditional_put=etag`,
//! where every case of the storage kit passes, races on create-only and if-match puts
//! included, and against s3s-fs with `conditional_put=disabled` (s3s-fs checks the condition
//! before writing, not atomically; two list / head cases fail there on its file layout).

use super::object_store_adapter::{
    Flavor, ObjectStoreBlobStore, check_endpoint, client_options, delegate_blob_store, parse_bool,
    retry_config,
};
use cloud_abstraction::storage::{MetadataNames, StorageCapabilities};
use cloud_abstraction::{Error, Location, ResourceUrl, Result};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::signer::Signer;
use std::sync::Arc;

const BACKEND: &str = "s3";

/// An S3 bucket as a blob store. Open it with [`S3BlobStore::from_url`].
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    inner: ObjectStoreBlobStore,
}

impl S3BlobStore {
    /// Opens the bucket named by an `s3://` URL (see the module docs for the parameters).
    ///
    /// No request is made: a wrong endpoint or credential shows at the first operation. A
    /// malformed URL, an unknown parameter or plain HTTP to a non-loopback endpoint (without
    /// `allow_http=true`) is [`InvalidArgument`](cloud_abstraction::ErrorKind::InvalidArgument).
    pub fn from_url(url: &str) -> Result<Self> {
        let url = ResourceUrl::parse(url).map_err(|e| Error::invalid(BACKEND, e.message()))?;
        if url.scheme() != "s3" {
            return Err(Error::invalid(
                BACKEND,
                format!("expected an s3:// URL, got scheme `{}`", url.scheme()),
            ));
        }
        let bucket = url
            .host()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| Error::invalid(BACKEND, "the s3:// URL names no bucket"))?
            .to_string();
        let path = url.path();
        if !(path.is_empty() || path == "/") {
            return Err(Error::invalid(
                BACKEND,
                "key prefixes in the s3:// URL are not supported; use s3://BUCKET",
            ));
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let location = Location::from_url(&url)
            .map_err(|e| Error::invalid(BACKEND, e.message()))?
            .unwrap_or_else(Location::unknown);
        let mut region = None;
        let mut signing_region = None;
        let mut endpoint = None;
        let mut access_key = env("AWS_ACCESS_KEY_ID");
        let mut secret_key = env("AWS_SECRET_ACCESS_KEY");
        let mut token = env("AWS_SESSION_TOKEN");
        let mut conditional_put = true;
        let mut allow_http = false;
        for (name, value) in url.query_params() {
            match name.as_str() {
                "region" => region = Some(value),
                "signing_region" => signing_region = Some(value),
                // Checked by `Location::from_url` above.
                "provider" | "zone" => {}
                "endpoint" => endpoint = Some(value),
                "access_key_id" => access_key = Some(value),
                "secret_access_key" => secret_key = Some(value),
                "session_token" => token = Some(value),
                "conditional_put" => {
                    conditional_put = match value.as_str() {
                        "etag" => true,
                        "disabled" => false,
                        _ => {
                            return Err(Error::invalid(
                                BACKEND,
                                "URL parameter `conditional_put` must be `etag` or `disabled`",
                            ));
                        }
                    }
                }
                "allow_http" => allow_http = parse_bool(BACKEND, &name, &value)?,
                // The name only: the value may be a secret.
                other => {
                    return Err(Error::invalid(
                        BACKEND,
                        format!("unknown URL parameter `{other}`"),
                    ));
                }
            }
        }
        let region = signing_region
            .or(region)
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(&region)
            .with_client_options(client_options())
            .with_retry(retry_config())
            .with_conditional_put(if conditional_put {
                S3ConditionalPut::ETagMatch
            } else {
                S3ConditionalPut::Disabled
            });
        let mut description = format!("s3://{bucket} ({region})");
        if let Some(endpoint) = &endpoint {
            let http = check_endpoint(BACKEND, endpoint, allow_http)?;
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(http)
                .with_virtual_hosted_style_request(false);
            description = format!("s3://{bucket} at {endpoint}");
        }
        match (access_key, secret_key) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(token) = token {
                    builder = builder.with_token(token);
                }
            }
            (None, None) => {}
            _ => {
                return Err(Error::invalid(
                    BACKEND,
                    "give both access_key_id and secret_access_key, or neither",
                ));
            }
        }
        let store = builder.build().map_err(|e| {
            // object_store's builder errors name keys, never values.
            Error::invalid(BACKEND, "invalid S3 configuration").with_source(e)
        })?;
        let store = Arc::new(store);
        let signer: Arc<dyn Signer> = store.clone();
        let flavor = Flavor {
            backend: BACKEND,
            capabilities: Self::capabilities_for(conditional_put),
            server_list_offset: true,
            list_from_parent: false,
            // Suffix reads go through head + bounded read: s3s-fs fails `bytes=-N` with N
            // larger than the object (500), and the extra round trip is cheap for a rare read.
            send_default_content_type: true,
            suffix_ranges: false,
            attributes_need_upload_handle: false,
        };
        Ok(Self {
            inner: ObjectStoreBlobStore::new(store, Some(signer), flavor, location, description),
        })
    }

    fn capabilities_for(conditional_put: bool) -> StorageCapabilities {
        let mut caps = StorageCapabilities::full();
        caps.conditional_put = conditional_put;
        caps.multipart_min_part_size = 5 * 1024 * 1024;
        caps.presign = true;
        caps.max_put_size = Some(5 * 1024 * 1024 * 1024);
        caps.metadata_names = MetadataNames::LowercaseToken;
        caps
    }

    /// The same store, reported at `location` (the default comes from the URL's `provider`,
    /// `region` and `zone`, else [`Location::unknown`]). Does not change the signing region.
    pub fn with_location(mut self, location: Location) -> Self {
        self.inner.set_location(location);
        self
    }
}

delegate_blob_store!(S3BlobStore);

#[cfg(test)]
mod tests {
    use super::*;
    use cloud_abstraction::{BlobStore, ErrorKind};

    #[test]
    fn urls() {
        let store = S3BlobStore::from_url(
            "s3://b?endpoint=http://127.0.0.1:9000&region=eu-west-1&access_key_id=k&secret_access_key=verysecret",
        )
        .unwrap();
        assert_eq!(store.info().backend, "s3");
        assert_eq!(
            store.info().location,
            Location::new(Location::UNKNOWN, "eu-west-1")
        );
        let store = S3BlobStore::from_url(
            "s3://b?provider=aws&region=eu-central-1&zone=eu-central-1a&signing_region=us-east-1",
        )
        .unwrap();
        assert_eq!(
            store.info().location,
            Location::new("aws", "eu-central-1").with_zone("eu-central-1a")
        );
        assert!(format!("{store:?}").contains("us-east-1"), "{store:?}");
        assert_eq!(
            S3BlobStore::from_url("s3://b").unwrap().info().location,
            Location::unknown()
        );
        assert!(!format!("{store:?}").contains("verysecret"));
        assert!(store.capabilities().presign);

        for bad in [
            "s3://",
            "mem://x",
            "s3://b?bogus=1",
            "s3://b/prefix",
            "s3://b?endpoint=http://10.1.2.3:9000",
            "s3://b?access_key_id=k",
            "s3://b?conditional_put=maybe",
            "s3://b?zone=eu-central-1a",
            "s3://b?region=a&region=b",
        ] {
            let err = S3BlobStore::from_url(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
        let err = S3BlobStore::from_url("s3://b?secret_access_key=hunter2&x=1").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let store = S3BlobStore::from_url("s3://b?conditional_put=disabled").unwrap();
        assert!(!store.capabilities().conditional_put);
    }
}
