//! Media storage through `object_store`: a local folder by default (served by
//! `mage serve` at `/media/...`), or an S3-compatible bucket in production
//! (served by the bucket or a CDN in front of it, at MAGE_MEDIA_BASE_URL).
//!
//! Keys look like `generations/<uuid>/hls/720p/index.m3u8`: `/`-separated,
//! relative, with no empty, `.` or `..` segment. Objects are written once
//! under a key of their own and never rewritten, which is what lets them be
//! cached as immutable (see [`cache_control`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::StorageSettings;
use crate::{Error, Result};

mod bucket;
mod staged;
pub use staged::Streamed;

/// Files above this go up in parts, so a big video is never read whole into
/// memory.
const MULTIPART_ABOVE: u64 = 16 * 1024 * 1024;
/// Size of one part (S3 wants 5 MiB or more, bar the last).
const CHUNK: usize = 8 * 1024 * 1024;
/// Parts of one file in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Files of one `put_dir` in flight at once.
const FILES_IN_FLIGHT: usize = 8;

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    base_url: Option<String>,
    /// The bucket itself and the prefix keys live under, for presigned
    /// URLs (a `PrefixStore` cannot sign).
    bucket: Option<(Arc<object_store::aws::AmazonS3>, ObjectPath)>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("store", &self.store.to_string())
            .field("local_root", &self.local_root)
            .field("base_url", &self.base_url)
            .finish()
    }
}

fn storage_error(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

fn store_error(e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound("stored object"),
        e => Error::Storage(e.to_string()),
    }
}

impl Storage {
    /// The local folder (created when missing) unless `settings.url` names a
    /// bucket; a bucket's credentials, region and endpoint come from the
    /// usual `AWS_*` variables.
    pub fn new(settings: &StorageSettings) -> Result<Self> {
        // `vars_os`: `vars` panics on a variable that is not UTF-8.
        let env =
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::with_aws_config(settings, env)
    }

    /// As [`Storage::new`], with the `AWS_*` settings of a bucket taken from
    /// `aws` (name, value) instead of the process environment: tests run in
    /// parallel in one process, each with a server of its own. Names that
    /// are not `AWS_*` settings are ignored, as `new` ignores the rest of
    /// the environment.
    pub fn with_aws_config<K: AsRef<str>, V: Into<String>>(
        settings: &StorageSettings,
        aws: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self> {
        match &settings.url {
            None => {
                let dir = &settings.media_dir;
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::Storage(format!("cannot create MAGE_MEDIA_DIR {}: {e}", dir.display()))
                })?;
                let root = std::fs::canonicalize(dir)
                    .map_err(|e| Error::Storage(format!("MAGE_MEDIA_DIR {}: {e}", dir.display())))?;
                // Cleanup: deleting a folder's last object removes the
                // emptied folders too.
                let store = LocalFileSystem::new_with_prefix(&root)
                    .map_err(storage_error)?
                    .with_automatic_cleanup(true);
                Ok(Self {
                    store: Arc::new(store),
                    local_root: Some(root),
                    base_url: settings.base_url.clone(),
                    bucket: None,
                })
            }
            Some(url) => Self::bucket(url, settings.base_url.clone(), aws),
        }
    }

    /// The folder media is served from, when storage is local.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    /// The URL a client fetches `key` from: `{base_url}/{key}` when
    /// MAGE_MEDIA_BASE_URL is set (always so for a bucket), otherwise
    /// `{public_api_base}/media/{key}`, served by `mage serve` itself.
    pub fn public_url(&self, public_api_base: &str, key: &str) -> String {
        let key = encode_key(key);
        match &self.base_url {
            Some(base) => format!("{}/{key}", base.trim_end_matches('/')),
            None => format!("{}/media/{key}", public_api_base.trim_end_matches('/')),
        }
    }

    /// Uploads the local file at `path` as `key`, replacing any object
    /// there. Streams: a big file goes up in parts (and a failed multipart
    /// upload is aborted, not left in the bucket). Readers never see a
    /// half-written object.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        let location = object_key(key)?;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::Storage(format!("cannot read {}: {e}", path.display())))?;
        let len = file.metadata().await.map_err(storage_error)?.len();
        if len <= MULTIPART_ABOVE {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).await.map_err(storage_error)?;
            let opts = PutOptions::from(self.attributes(key));
            self.store.put_opts(&location, PutPayload::from(buf), opts).await.map_err(store_error)?;
            return Ok(());
        }
        let opts = PutMultipartOptions::from(self.attributes(key));
        let upload = self.store.put_multipart_opts(&location, opts).await.map_err(store_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut buf = vec![0u8; CHUNK];
        let sent: Result<()> = async {
            loop {
                let n = file.read(&mut buf).await.map_err(storage_error)?;
                if n == 0 {
                    return Ok(());
                }
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(store_error)?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        match sent {
            // `finish` aborts the upload itself when completing it fails.
            Ok(()) => writer.finish().await.map(drop).map_err(store_error),
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key, error = %abort, "could not abort a failed multipart upload");
                }
                Err(e)
            }
        }
    }

    /// Uploads every file below `dir` as `{prefix}/{relative path}` (`prefix`
    /// may end in `/` or not); returns the keys, sorted. Playlists go up
    /// last, so a player that can read a playlist can read its segments.
    pub async fn put_dir(&self, prefix: &str, dir: &Path) -> Result<Vec<String>> {
        let prefix = prefix.trim_end_matches('/');
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            let mut entries = tokio::fs::read_dir(&d)
                .await
                .map_err(|e| Error::Storage(format!("cannot list {}: {e}", d.display())))?;
            while let Some(entry) = entries.next_entry().await.map_err(storage_error)? {
                let path = entry.path();
                if tokio::fs::metadata(&path).await.map_err(storage_error)?.is_dir() {
                    pending.push(path);
                    continue;
                }
                let rel = path.strip_prefix(dir).map_err(storage_error)?;
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_str())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| Error::Storage(format!("file name is not UTF-8: {}", rel.display())))?
                    .join("/");
                let key = if prefix.is_empty() { rel } else { format!("{prefix}/{rel}") };
                object_key(&key)?;
                files.push((key, path));
            }
        }
        let mut keys: Vec<String> = files.iter().map(|(key, _)| key.clone()).collect();
        keys.sort();
        let (playlists, media): (Vec<_>, Vec<_>) = files.into_iter().partition(|(key, _)| is_playlist(key));
        for batch in [media, playlists] {
            // Owned futures: borrowing ones would make this future !Send
            // for the compiler (rust-lang/rust#102211).
            let uploads = batch.into_iter().map(|(key, path)| {
                let storage = self.clone();
                async move { storage.put_file(&key, &path).await }
            });
            futures_util::stream::iter(uploads).buffer_unordered(FILES_IN_FLIGHT).try_collect::<()>().await?;
        }
        Ok(keys)
    }

    /// Downloads `key` to the local file `path` (its folder is created when
    /// missing). The file appears complete or not at all. A missing key is
    /// `Error::NotFound`.
    pub async fn get_to_file(&self, key: &str, path: &Path) -> Result<()> {
        let location = object_key(key)?;
        let mut stream = self.store.get(&location).await.map_err(store_error)?.into_stream();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(storage_error)?;
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(format!(".part-{}", uuid::Uuid::new_v4().simple()));
        let partial = PathBuf::from(partial);
        let written: Result<()> = async {
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(|e| Error::Storage(format!("cannot write {}: {e}", partial.display())))?;
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk.map_err(store_error)?).await.map_err(storage_error)?;
            }
            file.flush().await.map_err(storage_error)?;
            tokio::fs::rename(&partial, path).await.map_err(storage_error)
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        written
    }

    /// Deletes every object below `prefix` as a folder (`generations/<id>/`
    /// and `generations/<id>` both mean that folder, never
    /// `generations/<id>x/...`) or, when there is none, the object `prefix`
    /// itself; returns how many went. Deleting nothing is not an error.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let location = object_key(prefix.trim_end_matches('/'))?;
        let mut paths: Vec<ObjectPath> = self
            .store
            .list(Some(&location))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(store_error)?;
        if !prefix.ends_with('/') && paths.is_empty() {
            paths.push(location);
        }
        let mut n = 0;
        for p in paths {
            match self.store.delete(&p).await {
                Ok(()) => n += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        if let Some(root) = &self.local_root {
            // Staging files of interrupted uploads are not listed; they go
            // with the folder.
            let dir = root.join(prefix.trim_end_matches('/'));
            if tokio::fs::symlink_metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
        }
        Ok(n)
    }

    /// A bucket is told each object's type and caching, which the bucket or
    /// CDN then serves; the local store cannot keep them (and needs not:
    /// `/media` derives both from the key).
    fn attributes(&self, key: &str) -> Attributes {
        let mut attributes = Attributes::new();
        if self.local_root.is_none() {
            attributes.insert(Attribute::ContentType, content_type(key).into());
            attributes.insert(Attribute::CacheControl, cache_control(key).into());
        }
        attributes
    }
}

/// The `Content-Type` a stored object is served with, from its key's
/// extension (mime_guess, and so tower-http's `ServeDir`, gets the HLS ones
/// wrong). Anything not media is `application/octet-stream`.
pub fn content_type(key: &str) -> &'static str {
    match extension(key).as_str() {
        "m3u8" => "application/vnd.apple.mpegurl",
        "m4s" => "video/iso.segment",
        "mp4" | "m4v" => "video/mp4",
        "m4a" => "audio/mp4",
        "ts" => "video/mp2t",
        "aac" => "audio/aac",
        "webm" => "video/webm",
        "mpd" => "application/dash+xml",
        "vtt" => "text/vtt; charset=utf-8",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    }
}

/// The `Cache-Control` a stored object is served with: media never changes
/// under its key, so it is immutable; playlists and manifests get minutes.
pub fn cache_control(key: &str) -> &'static str {
    if is_playlist(key) {
        "public, max-age=300"
    } else if content_type(key) == "application/octet-stream" {
        "public, max-age=3600"
    } else {
        "public, max-age=31536000, immutable"
    }
}

fn is_playlist(key: &str) -> bool {
    matches!(extension(key).as_str(), "m3u8" | "mpd")
}

fn extension(key: &str) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).unwrap_or_default()
}

/// Percent-encodes what a URL path cannot carry as is; `/` stays.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A checked key: relative, no empty, `.` or `..` segment, no backslash.
fn object_key(key: &str) -> Result<ObjectPath> {
    let invalid = || Error::Storage(format!("invalid storage key {key:?}"));
    if key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key.chars().any(char::is_control)
        || key.split('/').any(|part| part.is_empty() || part == ".." || part == ".")
    {
        return Err(invalid());
    }
    ObjectPath::parse(key).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn local(dir: &Path) -> Storage {
        Storage::new(&StorageSettings { media_dir: dir.to_path_buf(), url: None, base_url: None }).unwrap()
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[tokio::test]
    async fn local_round_trip_and_prefix_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(&tmp.path().join("media"));
        let src = tmp.path().join("src");
        write(&src.join("video.mp4"), b"mp4");
        write(&src.join("hls/720p/index.m3u8"), b"#EXTM3U");
        write(&src.join("hls/720p/seg-0.m4s"), b"segment");
        let keys = storage.put_dir("generations/x/", &src).await.unwrap();
        assert_eq!(
            keys,
            [
                "generations/x/hls/720p/index.m3u8",
                "generations/x/hls/720p/seg-0.m4s",
                "generations/x/video.mp4"
            ]
        );
        let root = storage.local_root().unwrap().to_path_buf();
        assert_eq!(std::fs::read(root.join("generations/x/hls/720p/seg-0.m4s")).unwrap(), b"segment");

        let back = tmp.path().join("back/video.mp4");
        storage.get_to_file("generations/x/video.mp4", &back).await.unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), b"mp4");
        assert_eq!(std::fs::read_dir(back.parent().unwrap()).unwrap().count(), 1, "no partial file left");

        // A sibling whose name extends the prefix is not below it.
        write(&src.join("other.png"), b"png");
        storage.put_file("generations/xy/poster.png", &src.join("other.png")).await.unwrap();
        assert_eq!(storage.delete_prefix("generations/x/").await.unwrap(), 3);
        assert!(!root.join("generations/x").exists());
        assert!(root.join("generations/xy/poster.png").exists());
        assert_eq!(storage.delete_prefix("generations/x").await.unwrap(), 0);
        // One exact key.
        assert_eq!(storage.delete_prefix("generations/xy/poster.png").await.unwrap(), 1);
        assert!(!root.join("generations").exists(), "emptied folders go too");
    }

    #[tokio::test]
    async fn put_dir_takes_a_prefix_with_or_without_its_slash() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(&tmp.path().join("media"));
        let src = tmp.path().join("src");
        write(&src.join("a/b.ts"), b"ts");
        assert_eq!(storage.put_dir("p", &src).await.unwrap(), ["p/a/b.ts"]);
        assert_eq!(storage.put_dir("p/", &src).await.unwrap(), ["p/a/b.ts"]);
        assert_eq!(storage.put_dir("p/q", &src).await.unwrap(), ["p/q/a/b.ts"]);
    }

    #[tokio::test]
    async fn a_big_file_goes_up_in_parts_and_comes_back_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(&tmp.path().join("media"));
        let big: Vec<u8> = (0..MULTIPART_ABOVE + 3 * CHUNK as u64 + 17).map(|i| (i % 251) as u8).collect();
        write(&tmp.path().join("big.mp4"), &big);
        storage.put_file("generations/g/video.mp4", &tmp.path().join("big.mp4")).await.unwrap();
        let back = tmp.path().join("back.mp4");
        storage.get_to_file("generations/g/video.mp4", &back).await.unwrap();
        assert!(std::fs::read(&back).unwrap() == big);
    }

    #[tokio::test]
    async fn a_missing_key_is_not_found_and_a_missing_file_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(&tmp.path().join("media"));
        let err =
            storage.get_to_file("generations/none/video.mp4", &tmp.path().join("out")).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert!(!tmp.path().join("out").exists());
        let err = storage.put_file("generations/g/video.mp4", &tmp.path().join("nope")).await.unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err:?}");
    }

    #[tokio::test]
    async fn rejects_keys_that_escape() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(&tmp.path().join("media"));
        write(&tmp.path().join("f"), b"x");
        for key in ["../x", "/etc/passwd", "a/../../b", "a/./b", "a//b", "a\\..\\b", ""] {
            assert!(storage.put_file(key, &tmp.path().join("f")).await.is_err(), "{key}");
            assert!(storage.delete_prefix(key).await.is_err(), "{key}");
            assert!(storage.get_to_file(key, &tmp.path().join("g")).await.is_err(), "{key}");
        }
        assert!(!tmp.path().join("x").exists());
    }

    #[test]
    fn public_urls() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = local(tmp.path());
        assert_eq!(storage.public_url("http://h/", "a/b.png"), "http://h/media/a/b.png");
        assert_eq!(storage.public_url("http://h", "a/b c.png"), "http://h/media/a/b%20c.png");
        let cdn = Storage::new(&StorageSettings {
            media_dir: tmp.path().to_path_buf(),
            url: None,
            base_url: Some("https://cdn.example.com/m/".into()),
        })
        .unwrap();
        assert_eq!(cdn.public_url("http://h", "a/b.png"), "https://cdn.example.com/m/a/b.png");
    }

    #[test]
    fn types_and_caching_by_extension() {
        assert_eq!(content_type("g/hls/720p/index.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(content_type("g/hls/720p/seg-1.M4S"), "video/iso.segment");
        assert_eq!(content_type("g/video.mp4"), "video/mp4");
        assert_eq!(content_type("g/hls/seg.ts"), "video/mp2t");
        assert_eq!(content_type("g/poster.jpg"), "image/jpeg");
        assert_eq!(content_type("g/poster.png"), "image/png");
        assert_eq!(content_type("g/page.html"), "application/octet-stream");
        assert_eq!(content_type("g.mp4/noext"), "application/octet-stream");
        assert_eq!(cache_control("g/video.mp4"), "public, max-age=31536000, immutable");
        assert_eq!(cache_control("g/index.m3u8"), "public, max-age=300");
    }
}
