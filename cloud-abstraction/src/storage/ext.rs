use super::{BlobStore, GetOptions, ListOptions, ObjectMeta, PartId, PutOptions, PutResult};
use crate::{ErrorKind, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use std::sync::Arc;

/// Conveniences for every [`BlobStore`], built on its required methods.
#[async_trait]
pub trait BlobStoreExt: BlobStore {
    /// Overwrites `key` with `payload`.
    async fn put_bytes(&self, key: &str, payload: Bytes) -> Result<PutResult> {
        self.put(key, payload, PutOptions::default()).await
    }

    /// Reads the whole object.
    async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        Ok(self.get(key, GetOptions::default()).await?.data)
    }

    /// Whether `key` exists.
    async fn exists(&self, key: &str) -> Result<bool> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every object under `prefix`, recursively, in key order.
    async fn list_all(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut options = ListOptions::prefix(prefix);
        loop {
            let page = self.list_page(options.clone()).await?;
            out.extend(page.objects);
            match page.next_page_token {
                Some(token) => options.page_token = Some(token),
                None => return Ok(out),
            }
        }
    }

    /// Uploads `payload` in parts of `part_size` bytes through the multipart API (or with one
    /// put if it fits in one part). The upload is aborted if any part fails.
    async fn put_multipart_bytes(
        &self,
        key: &str,
        payload: Bytes,
        part_size: usize,
        options: PutOptions,
    ) -> Result<PutResult> {
        let part_size = part_size.max(1);
        let upload = self.create_multipart(key, options).await?;
        let mut parts: Vec<PartId> = Vec::new();
        let mut offset = 0;
        let result: Result<()> = async {
            loop {
                let end = (offset + part_size).min(payload.len());
                let part = self
                    .put_part(key, &upload, parts.len() as u32, payload.slice(offset..end))
                    .await?;
                parts.push(part);
                offset = end;
                if offset >= payload.len() {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = result {
            // Best effort: the part error is what the caller needs to see.
            let _ = self.abort_multipart(key, &upload).await;
            return Err(e);
        }
        self.complete_multipart(key, &upload, parts).await
    }
}

impl<T: BlobStore + ?Sized> BlobStoreExt for T {}

/// Lists every object under `options.prefix` as a stream, fetching pages as it is polled.
///
/// A free function rather than a method so that the stream can own the store (`Arc`) and be
/// `'static`.
pub fn list_stream(
    store: Arc<dyn BlobStore>,
    options: ListOptions,
) -> BoxStream<'static, Result<ObjectMeta>> {
    stream::try_unfold(Some(options), move |state| {
        let store = Arc::clone(&store);
        async move {
            let Some(options) = state else {
                return Ok(None);
            };
            let page = store.list_page(options.clone()).await?;
            let next = page.next_page_token.map(|token| ListOptions {
                page_token: Some(token),
                ..options
            });
            Ok(Some((stream::iter(page.objects.into_iter().map(Ok)), next)))
        }
    })
    .try_flatten()
    .boxed()
}
