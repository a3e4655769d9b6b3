//! Builds the object store a cluster lives in from its URL.
//!
//! | URL | Store |
//! |---|---|
//! | `file:///abs/path`, `./rel/path`, `/abs/path` | local filesystem (directory created if missing) |
//! | `memory://` | in-process memory (tests only) |
//! | `s3://bucket[/prefix]` | S3 or an S3-compatible server |
//!
//! S3 settings come from the usual `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`, ...) overridden by
//! [`ObjectStoreConfig`]. Conditional PUTs use ETag matching (`If-None-Match: *`), which
//! SlateDB's writer fencing depends on; the server must honour it (MinIO and s3s-fs do).
//!
//! Every HTTP request is bounded by `request_timeout` and retried at most `max_retries` times,
//! so an unreachable store surfaces as an error instead of a hung request.

use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::config::ObjectStoreConfig;
use crate::error::{Error, Result};

/// An object store and the prefix inside it under which the cluster's objects live.
#[derive(Debug, Clone)]
pub struct ClusterStore {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The cluster's prefix inside the store (empty for the store's root).
    pub prefix: Path,
}

impl ClusterStore {
    /// Returns the root of `shard`'s SlateDB database: `{prefix}/shards/{shard:05}`.
    pub fn shard_path(&self, shard: crate::shard::ShardId) -> Path {
        self.path(&format!("shards/{shard}"))
    }

    /// Returns `{prefix}/{suffix}`.
    pub fn path(&self, suffix: &str) -> Path {
        let mut out = self.prefix.clone();
        for part in suffix.split('/').filter(|p| !p.is_empty()) {
            out = out.join(part);
        }
        out
    }
}

/// Builds the store named by `cfg.url`.
pub fn open(cfg: &ObjectStoreConfig) -> Result<ClusterStore> {
    let url = cfg.url.trim();
    if url == "memory://" || url == "memory:" {
        return Ok(ClusterStore {
            store: Arc::new(InMemory::new()),
            prefix: Path::default(),
        });
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        return open_s3(cfg, rest);
    }
    let dir = match url.strip_prefix("file://") {
        Some(path) if path.starts_with('/') => path,
        Some(path) => {
            return Err(Error::Config(format!(
                "object_store.url `file://{path}` must be absolute (file:///abs/path); \
                 give a plain path for a relative directory"
            )))
        }
        None if url.contains("://") => {
            return Err(Error::Config(format!(
            "object_store.url `{url}` has an unsupported scheme; use file://, s3:// or memory://"
        )))
        }
        None => url,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Config(format!("cannot create data directory `{dir}`: {e}")))?;
    let local = LocalFileSystem::new_with_prefix(dir)?.with_fsync(cfg.fsync);
    Ok(ClusterStore {
        store: Arc::new(local),
        prefix: Path::default(),
    })
}

fn open_s3(cfg: &ObjectStoreConfig, rest: &str) -> Result<ClusterStore> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::Config(
            "object_store.url `s3://` needs a bucket: s3://bucket[/prefix]".into(),
        ));
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(cfg.virtual_hosted_style)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(cfg.allow_http)
                .with_timeout(cfg.request_timeout)
                .with_connect_timeout(cfg.request_timeout.min(std::time::Duration::from_secs(2))),
        )
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: cfg.max_retries as usize,
            retry_timeout: cfg.request_timeout * (cfg.max_retries + 1),
        });
    if let Some(endpoint) = &cfg.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &cfg.region {
        builder = builder.with_region(region);
    }
    let store = builder
        .build()
        .map_err(|e| Error::Config(format!("cannot configure S3 store for `{}`: {e}", cfg.url)))?;
    let prefix = Path::parse(prefix.trim_matches('/'))
        .map_err(|e| Error::Config(format!("invalid prefix in `{}`: {e}", cfg.url)))?;
    Ok(ClusterStore {
        store: Arc::new(store),
        prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> ObjectStoreConfig {
        ObjectStoreConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(open(&cfg("file://relative")).is_err());
        assert!(open(&cfg("gs://bucket")).is_err());
        assert!(open(&cfg("s3://")).is_err());
    }

    #[test]
    fn parses_s3_prefix_and_local_paths() {
        let s = open(&cfg("s3://bucket/a/b/")).unwrap();
        assert_eq!(s.prefix.as_ref(), "a/b");
        assert_eq!(s.path("shards/00001").as_ref(), "a/b/shards/00001");
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        assert_eq!(open(&cfg(&url)).unwrap().path("x").as_ref(), "x");
        assert!(open(&cfg("memory://")).is_ok());
    }
}
