use super::{Document, DocumentStore, PutDocumentOptions, Query, Revision, WriteCondition};
use crate::{Error, Result};
use async_trait::async_trait;
use serde::{Serialize, de::DeserializeOwned};

/// Typed (serde) conveniences for every [`DocumentStore`].
#[async_trait]
pub trait DocumentStoreExt: DocumentStore {
    /// Reads a document and deserializes it; `None` if absent.
    async fn get_as<T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<(T, Revision)>> {
        let Some(doc) = self.get(collection, id).await? else {
            return Ok(None);
        };
        let value = serde_json::from_value(doc.value).map_err(|e| {
            Error::invalid(
                self.info().backend,
                format!("document `{id}` in `{collection}` does not match the requested type: {e}"),
            )
        })?;
        Ok(Some((value, doc.revision)))
    }

    /// Serializes `value` and writes it with `options`.
    async fn put_as<T: Serialize + Sync>(
        &self,
        collection: &str,
        id: &str,
        value: &T,
        options: PutDocumentOptions,
    ) -> Result<Revision> {
        let json = serde_json::to_value(value).map_err(|e| {
            Error::invalid(
                self.info().backend,
                format!("value does not serialize to JSON: {e}"),
            )
        })?;
        self.put(collection, id, json, options).await
    }

    /// Deletes a document unconditionally; returns whether it existed.
    async fn remove(&self, collection: &str, id: &str) -> Result<bool> {
        self.delete(collection, id, WriteCondition::Any).await
    }

    /// Runs a query to the end, following cursors, and returns every document.
    async fn query_all(&self, collection: &str, mut query: Query) -> Result<Vec<Document>> {
        let mut out = Vec::new();
        loop {
            let page = self.query(collection, query.clone()).await?;
            out.extend(page.documents);
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => return Ok(out),
            }
        }
    }
}

impl<T: DocumentStore + ?Sized> DocumentStoreExt for T {}
