//! Media storage through `object_store`: a local folder by default (served by
//! `mage serve` at `/media/...`), or an S3-compatible bucket in production.
//! Keys look like `generations/<uuid>/hls/720p/index.m3u8`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::StorageSettings;
use crate::{Error, Result};

/// Files above this go up in parts, so a big video is never read whole into
/// memory.
const MULTIPART_ABOVE: u64 = 16 * 1024 * 1024;
const CHUNK: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    base_url: Option<String>,
}

fn storage_error(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

impl Storage {
    pub fn new(settings: &StorageSettings) -> Result<Self> {
        match &settings.url {
            None => {
                std::fs::create_dir_all(&settings.media_dir).map_err(|e| {
                    Error::Storage(format!("cannot create MAGE_MEDIA_DIR {}: {e}", settings.media_dir.display()))
                })?;
                let root = std::fs::canonicalize(&settings.media_dir).map_err(storage_error)?;
                let store = LocalFileSystem::new_with_prefix(&root).map_err(storage_error)?;
                Ok(Self { store: Arc::new(store), local_root: Some(root), base_url: None })
            }
            Some(url) => {
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(storage_error)?;
                // The builder takes the bucket from the URL and ignores its
                // path, which is the prefix every key lives under.
                let prefix = url.split_once("://").map(|(_, rest)| rest).unwrap_or("");
                let prefix = prefix.split_once('/').map(|(_, p)| p.trim_matches('/')).unwrap_or("");
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(store)
                } else {
                    Arc::new(PrefixStore::new(store, prefix))
                };
                Ok(Self { store, local_root: None, base_url: settings.base_url.clone() })
            }
        }
    }

    /// The folder media is served from, when storage is local.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    /// The URL a client fetches `key` from.
    pub fn public_url(&self, public_api_base: &str, key: &str) -> String {
        match &self.base_url {
            Some(base) => format!("{}/{key}", base.trim_end_matches('/')),
            None => format!("{}/media/{key}", public_api_base.trim_end_matches('/')),
        }
    }

    pub async fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        let location = object_key(key)?;
        let mut file = tokio::fs::File::open(path).await.map_err(storage_error)?;
        let len = file.metadata().await.map_err(storage_error)?.len();
        if len <= MULTIPART_ABOVE {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).await.map_err(storage_error)?;
            self.store.put(&location, PutPayload::from(buf)).await.map_err(storage_error)?;
            return Ok(());
        }
        let upload = self.store.put_multipart(&location).await.map_err(storage_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await.map_err(storage_error)?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await.map_err(storage_error)?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(storage_error)?;
        Ok(())
    }

    /// Uploads every file below `dir` as `prefix + relative path`; returns
    /// the keys.
    pub async fn put_dir(&self, prefix: &str, dir: &Path) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            let mut entries = tokio::fs::read_dir(&d).await.map_err(storage_error)?;
            while let Some(entry) = entries.next_entry().await.map_err(storage_error)? {
                let path = entry.path();
                if entry.file_type().await.map_err(storage_error)?.is_dir() {
                    pending.push(path);
                    continue;
                }
                let rel = path.strip_prefix(dir).map_err(storage_error)?;
                let rel = rel.to_str().ok_or_else(|| Error::Storage(format!("non UTF-8 file name {rel:?}")))?;
                let key = format!("{prefix}{}", rel.replace(std::path::MAIN_SEPARATOR, "/"));
                keys.push(key);
            }
        }
        // Playlists last: a player that finds a playlist finds its segments.
        keys.sort_by_key(|k| (k.ends_with(".m3u8"), k.clone()));
        for key in &keys {
            let rel = &key[prefix.len()..];
            self.put_file(key, &dir.join(rel)).await?;
        }
        Ok(keys)
    }

    pub async fn get_to_file(&self, key: &str, path: &Path) -> Result<()> {
        let location = object_key(key)?;
        let mut stream = self.store.get(&location).await.map_err(storage_error)?.into_stream();
        let mut file = tokio::fs::File::create(path).await.map_err(storage_error)?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk.map_err(storage_error)?).await.map_err(storage_error)?;
        }
        file.flush().await.map_err(storage_error)?;
        Ok(())
    }

    /// Deletes every object whose key starts with `prefix` (a folder-like
    /// prefix ending in `/`, or one exact key); returns how many went.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let location = object_key(prefix.trim_end_matches('/'))?;
        let mut paths: Vec<ObjectPath> =
            self.store.list(Some(&location)).map_ok(|m| m.location).try_collect().await.map_err(storage_error)?;
        if !prefix.ends_with('/') && paths.is_empty() {
            paths.push(location);
        }
        let mut n = 0;
        for p in paths {
            match self.store.delete(&p).await {
                Ok(()) => n += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_error(e)),
            }
        }
        if let Some(root) = &self.local_root {
            // The local store leaves empty folders behind.
            let dir = root.join(prefix.trim_end_matches('/'));
            if dir.is_dir() {
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
        }
        Ok(n)
    }
}

fn object_key(key: &str) -> Result<ObjectPath> {
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|part| part == ".." || part == ".") {
        return Err(Error::Storage(format!("invalid storage key {key:?}")));
    }
    ObjectPath::parse(key).map_err(storage_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &Path) -> Storage {
        Storage::new(&StorageSettings { media_dir: dir.to_path_buf(), url: None, base_url: None }).unwrap()
    }

    #[tokio::test]
    async fn local_round_trip_and_prefix_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(&tmp.path().join("media"));
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("hls/720p")).unwrap();
        std::fs::write(src.join("video.mp4"), b"mp4").unwrap();
        std::fs::write(src.join("hls/720p/index.m3u8"), b"#EXTM3U").unwrap();
        let keys = storage.put_dir("generations/x/", &src).await.unwrap();
        assert_eq!(keys, vec!["generations/x/video.mp4", "generations/x/hls/720p/index.m3u8"]);
        let back = tmp.path().join("back");
        storage.get_to_file("generations/x/video.mp4", &back).await.unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), b"mp4");
        assert_eq!(storage.delete_prefix("generations/x/").await.unwrap(), 2);
        assert!(!tmp.path().join("media/generations/x").exists());
        assert_eq!(storage.public_url("http://h", "a/b.png"), "http://h/media/a/b.png");
    }

    #[tokio::test]
    async fn rejects_keys_that_escape() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(tmp.path());
        for key in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(storage.put_file(key, tmp.path()).await.is_err(), "{key}");
        }
    }
}
