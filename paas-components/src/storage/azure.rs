//! Azure Blob Storage (and the Azurite emulator) as a
//! [`BlobStore`](cloud_abstraction::BlobStore), through [`object_store`]'s `MicrosoftAzure`.
//!
//! URL: `azure://CONTAINER?account=ACCOUNT&access_key=KEY`, or for Azurite
//! `azure://CONTAINER?emulator=true&endpoint=http://127.0.0.1:10000/devstoreaccount1`.
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `account` | the storage account | `AZURE_STORAGE_ACCOUNT_NAME`; `devstoreaccount1` with `emulator` |
//! | `access_key` | the account's shared key | `AZURE_STORAGE_ACCOUNT_KEY`; Azurite's well-known key with `emulator` |
//! | `endpoint` | the account URL, an absolute `http(s)://host[:port]/…` URL (with the account as first path segment for Azurite); anything else is `InvalidArgument` at open | `https://ACCOUNT.blob.core.windows.net`; `http://127.0.0.1:10000/ACCOUNT` with `emulator` |
//! | `emulator` | talk to Azurite | `false` |
//! | `allow_http` | allow plain HTTP to a non-loopback endpoint | `false` |
//! | `provider`, `region`, `zone` | where the store is reported to run (see [`Location::from_url`]) | [`Location::unknown`]: the account name does not say |
//!
//! Capabilities: conditional put (`If-None-Match: *` / `If-Match`), conditional get, ranges,
//! multipart (blocks of any size; content type and metadata of a multipart upload are not
//! supported by object_store's block API, so asking for them is `Unsupported`), content type
//! and user metadata. No presigning (Azure SAS needs a user delegation key, which shared-key
//! credentials cannot get). Metadata names are sent as written: the portable rule
//! ([`validate::metadata_name`](cloud_abstraction::validate::metadata_name)) only admits
//! lower-case C# identifiers, which is what Azure requires. Names written by other tools are
//! returned as Azure stores them.

use super::object_store_adapter::{
    Flavor, ObjectStoreBlobStore, check_endpoint, client_options, delegate_blob_store, parse_bool,
    retry_config,
};
use cloud_abstraction::storage::{MetadataNames, StorageCapabilities};
use cloud_abstraction::{Error, Location, ResourceUrl, Result};
use object_store::azure::MicrosoftAzureBuilder;
use std::sync::Arc;

const BACKEND: &str = "azure";
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's documented development key; public, not a secret.
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An Azure Blob container as a blob store. Open it with [`AzureBlobStore::from_url`].
#[derive(Debug, Clone)]
pub struct AzureBlobStore {
    inner: ObjectStoreBlobStore,
}

impl AzureBlobStore {
    /// Opens the container named by an `azure://` URL (see the module docs for the
    /// parameters).
    ///
    /// No request is made: a wrong endpoint or key shows at the first operation. A malformed
    /// URL or unknown parameter is
    /// [`InvalidArgument`](cloud_abstraction::ErrorKind::InvalidArgument).
    pub fn from_url(url: &str) -> Result<Self> {
        let url = ResourceUrl::parse(url).map_err(|e| Error::invalid(BACKEND, e.message()))?;
        if url.scheme() != "azure" {
            return Err(Error::invalid(
                BACKEND,
                format!("expected an azure:// URL, got scheme `{}`", url.scheme()),
            ));
        }
        let container = url
            .host()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Error::invalid(BACKEND, "the azure:// URL names no container"))?
            .to_string();
        let path = url.path();
        if !(path.is_empty() || path == "/") {
            return Err(Error::invalid(
                BACKEND,
                "key prefixes in the azure:// URL are not supported; use azure://CONTAINER",
            ));
        }
        let location = Location::from_url(&url)
            .map_err(|e| Error::invalid(BACKEND, e.message()))?
            .unwrap_or_else(Location::unknown);
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut account = None;
        let mut key = None;
        let mut endpoint = None;
        let mut emulator = false;
        let mut allow_http = false;
        for (name, value) in url.query_params() {
            match name.as_str() {
                "account" => account = Some(value),
                "access_key" => key = Some(value),
                "endpoint" => endpoint = Some(value),
                "emulator" => emulator = parse_bool(BACKEND, &name, &value)?,
                "allow_http" => allow_http = parse_bool(BACKEND, &name, &value)?,
                // Checked by `Location::from_url` above.
                "provider" | "region" | "zone" => {}
                other => {
                    return Err(Error::invalid(
                        BACKEND,
                        format!("unknown URL parameter `{other}`"),
                    ));
                }
            }
        }
        let (account, key) = if emulator {
            (
                account.unwrap_or_else(|| EMULATOR_ACCOUNT.to_string()),
                key.unwrap_or_else(|| EMULATOR_KEY.to_string()),
            )
        } else {
            let account = account
                .or_else(|| env("AZURE_STORAGE_ACCOUNT_NAME"))
                .ok_or_else(|| Error::invalid(BACKEND, "no account: give `account=` in the URL"))?;
            let key = key
                .or_else(|| env("AZURE_STORAGE_ACCOUNT_KEY"))
                .ok_or_else(|| {
                    Error::invalid(
                        BACKEND,
                        "no access key: give `access_key=` or set AZURE_STORAGE_ACCOUNT_KEY",
                    )
                })?;
            (account, key)
        };
        let endpoint =
            endpoint.or_else(|| emulator.then(|| format!("http://127.0.0.1:10000/{account}")));
        // Not object_store's emulator mode: it ignores the endpoint, and a fault test needs
        // Azurite behind a proxy. Path-style account URLs give the same requests.
        let mut builder = MicrosoftAzureBuilder::new()
            .with_account(&account)
            .with_access_key(key)
            .with_container_name(&container)
            .with_client_options(client_options())
            .with_retry(retry_config());
        let mut description = format!("azure://{container} (account {account})");
        if let Some(endpoint) = &endpoint {
            let http = check_endpoint(BACKEND, endpoint, allow_http)?;
            builder = builder
                .with_endpoint(endpoint.clone())
                .with_allow_http(http);
            description = format!("azure://{container} at {endpoint}");
        }
        let store = builder
            .build()
            .map_err(|e| Error::invalid(BACKEND, "invalid Azure configuration").with_source(e))?;
        let mut capabilities = StorageCapabilities::full();
        capabilities.presign = false;
        // A single Put Blob takes at most 5000 MiB.
        capabilities.max_put_size = Some(5000 * 1024 * 1024);
        // Names come back lower-cased through HTTP: only portable names round-trip.
        capabilities.metadata_names = MetadataNames::Portable;
        let flavor = Flavor {
            backend: BACKEND,
            capabilities,
            // Azurite ignores `startFrom`, and Azure's is inclusive: filter client-side.
            server_list_offset: false,
            list_from_parent: true,
            send_default_content_type: false,
            suffix_ranges: false,
            attributes_need_upload_handle: true,
        };
        Ok(Self {
            inner: ObjectStoreBlobStore::new(Arc::new(store), None, flavor, location, description),
        })
    }

    /// The same store, reported at `location` (the default comes from the URL's `provider`,
    /// `region` and `zone`, else [`Location::unknown`]).
    pub fn with_location(mut self, location: Location) -> Self {
        self.inner.set_location(location);
        self
    }
}

delegate_blob_store!(AzureBlobStore);

#[cfg(test)]
mod tests {
    use super::*;
    use cloud_abstraction::{BlobStore, ErrorKind};

    #[test]
    fn urls() {
        let store = AzureBlobStore::from_url("azure://c?emulator=true").unwrap();
        assert_eq!(store.info().backend, "azure");
        assert!(!store.capabilities().presign);
        assert_eq!(store.info().location, Location::unknown());
        let store =
            AzureBlobStore::from_url("azure://c?emulator=true&provider=azure&region=westeurope")
                .unwrap();
        assert_eq!(store.info().location, Location::new("azure", "westeurope"));
        let store =
            AzureBlobStore::from_url("azure://c?account=acct&access_key=c2VjcmV0c2VjcmV0").unwrap();
        assert!(!format!("{store:?}").contains("c2VjcmV0c2VjcmV0"));
        for bad in [
            "azure://",
            "azure://c?emulator=maybe",
            "azure://c?emulator=true&nope=1",
            "azure://c/prefix?emulator=true",
            "azure://c?emulator=true&endpoint=http://10.0.0.1:10000/x",
            "s3://c",
            "azure://c?emulator=true&zone=1",
        ] {
            let err = AzureBlobStore::from_url(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
    }
}
