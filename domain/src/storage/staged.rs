//! What staged uploads need of storage: a URL the client PUTs to directly
//! (a presigned one for a bucket), a streamed write with a size cap for
//! Mage's own upload route, and HEAD / delete of one object.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::signer::Signer;
use object_store::{ObjectStore, PutMultipartOptions, WriteMultipart};

use super::{CHUNK, PARTS_IN_FLIGHT, Storage, object_key, store_error};
use crate::Result;

/// How a streamed upload ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Streamed {
    /// All of it is stored: this many bytes.
    Stored(u64),
    /// It went past the cap: nothing is stored.
    TooLarge,
    /// The client's body failed (it went away): nothing is stored.
    Interrupted(String),
}

impl Storage {
    /// A presigned `PUT` URL for `key`, valid for `ttl`, when storage is a
    /// bucket; `None` for local storage (Mage's own upload route takes the
    /// bytes then).
    pub async fn signed_put_url(&self, key: &str, ttl: Duration) -> Result<Option<String>> {
        let Some((bucket, prefix)) = &self.bucket else { return Ok(None) };
        // Joined part by part, as `PrefixStore` does: a path rebuilt from a
        // string escapes `~`, `#`, `[` and the like, and the client would
        // upload to another key than the one Mage then reads.
        let full: object_store::path::Path = prefix.parts().chain(object_key(key)?.parts()).collect();
        let url = bucket.signed_url(http::Method::PUT, &full, ttl).await.map_err(store_error)?;
        Ok(Some(url.to_string()))
    }

    /// A bucket acknowledges a PUT once the object is durable; on local
    /// storage the client's 200 waits for the same (object_store's local
    /// store never fsyncs): the file, then its folder's entry.
    async fn sync_local(&self, key: &str) -> Result<()> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let path = root.join(key);
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&path)?.sync_all()?;
            match path.parent() {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| crate::Error::Storage(format!("fsync task: {e}")))?
        .map_err(|e| crate::Error::Storage(format!("fsync of an upload: {e}")))
    }

    /// The size of the object at `key`, or `None` when there is none.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        match self.store.head(&object_key(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Deletes the object at `key`; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&object_key(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Writes `body` to `key` as it arrives, never holding more than a few
    /// parts in memory, and gives up (storing nothing) at the first byte
    /// past `max`. Readers never see a partial object.
    pub async fn put_stream<E: std::fmt::Display>(
        &self,
        key: &str,
        body: impl Stream<Item = std::result::Result<Bytes, E>> + Send,
        max: u64,
    ) -> Result<Streamed> {
        let location = object_key(key)?;
        let opts = PutMultipartOptions::from(self.attributes(key));
        let upload = self.store.put_multipart_opts(&location, opts).await.map_err(store_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut body = std::pin::pin!(body);
        let mut written: u64 = 0;
        let ended = loop {
            let chunk = match body.next().await {
                None => break None,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => break Some(Ok(Streamed::Interrupted(e.to_string()))),
            };
            written += chunk.len() as u64;
            if written > max {
                break Some(Ok(Streamed::TooLarge));
            }
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                break Some(Err(store_error(e)));
            }
            writer.put(chunk);
        };
        match ended {
            // `finish` aborts the upload itself when completing it fails.
            None => {
                writer.finish().await.map_err(store_error)?;
                self.sync_local(key).await?;
                Ok(Streamed::Stored(written))
            }
            Some(outcome) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key, error = %abort, "could not abort an unfinished upload");
                }
                outcome
            }
        }
    }
}
