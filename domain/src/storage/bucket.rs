//! Storage on an S3-compatible bucket: `s3://bucket[/prefix]` plus the
//! `AWS_*` settings (credentials, region, endpoint).

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;

use super::Storage;
use crate::{Error, Result};

impl Storage {
    pub(super) fn bucket<K: AsRef<str>, V: Into<String>>(
        url: &str,
        base_url: Option<String>,
        aws: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self> {
        // What `AmazonS3Builder::from_env` does, from `aws`.
        let mut builder = AmazonS3Builder::new();
        for (name, value) in aws {
            let name = name.as_ref();
            if name.starts_with("AWS_")
                && let Ok(key) = name.to_ascii_lowercase().parse()
            {
                builder = builder.with_config(key, value);
            }
        }
        let bucket = Arc::new(
            builder
                .with_url(url)
                .build()
                .map_err(|e| Error::Storage(format!("MAGE_STORAGE_URL {url}: {e}")))?,
        );
        // The builder takes the bucket from the URL and ignores its path,
        // which is the prefix every key lives under.
        let prefix = url.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        let prefix = prefix.split_once('/').map(|(_, p)| p.trim_matches('/')).unwrap_or("");
        let prefix = ObjectPath::from(prefix);
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            bucket.clone()
        } else {
            Arc::new(PrefixStore::new(bucket.as_ref().clone(), prefix.clone()))
        };
        Ok(Self { store, local_root: None, base_url, bucket: Some((bucket, prefix)) })
    }
}
