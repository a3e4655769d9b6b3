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
//!
//! Every store is wrapped in [`Counted`], which counts the requests made through it by kind
//! ([`RequestCounts`], exported as metrics), so object-store cost can be measured per operation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    RetryConfig,
};

use crate::config::ObjectStoreConfig;
use crate::error::{Error, Result};

/// An object store and the prefix inside it under which the cluster's objects live.
#[derive(Debug, Clone)]
pub struct ClusterStore {
    /// The store (a [`Counted`] wrapper around the real one).
    pub store: Arc<dyn ObjectStore>,
    /// The cluster's prefix inside the store (empty for the store's root).
    pub prefix: Path,
    /// Requests made through `store` so far.
    pub requests: Arc<RequestCounts>,
}

impl ClusterStore {
    /// Returns the root of `shard`'s SlateDB database: `{prefix}/shards/{shard:05}`.
    pub fn shard_path(&self, shard: crate::shard::ShardId) -> Path {
        self.path(&format!("shards/{shard}"))
    }

    /// Read-only administrative access to `shard`'s database (its manifests).
    pub fn admin(&self, shard: crate::shard::ShardId) -> slatedb::admin::Admin {
        slatedb::admin::AdminBuilder::new(self.shard_path(shard), Arc::clone(&self.store)).build()
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
    let (store, prefix) = open_uncounted(cfg)?;
    let requests = Arc::new(RequestCounts::default());
    Ok(ClusterStore {
        store: Arc::new(Counted {
            inner: store,
            counts: requests.clone(),
        }),
        prefix,
        requests,
    })
}

fn open_uncounted(cfg: &ObjectStoreConfig) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let url = cfg.url.trim();
    if url == "memory://" || url == "memory:" {
        return Ok((Arc::new(InMemory::new()), Path::default()));
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
    Ok((Arc::new(local), Path::default()))
}

fn open_s3(cfg: &ObjectStoreConfig, rest: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
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
    Ok((Arc::new(store), prefix))
}

/// Requests made to the object store, by kind. A list counts once per call (not per page) and a
/// delete once per object; a multipart upload counts once when it starts.
#[derive(Debug, Default)]
pub struct RequestCounts {
    /// GETs, including ranged GETs.
    pub get: AtomicU64,
    /// HEADs.
    pub head: AtomicU64,
    /// PUTs, conditional or not.
    pub put: AtomicU64,
    /// Objects deleted.
    pub delete: AtomicU64,
    /// Listings.
    pub list: AtomicU64,
    /// Copies and renames.
    pub copy: AtomicU64,
}

impl RequestCounts {
    /// `(kind, count)` for every kind.
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("get", r(&self.get)),
            ("head", r(&self.head)),
            ("put", r(&self.put)),
            ("delete", r(&self.delete)),
            ("list", r(&self.list)),
            ("copy", r(&self.copy)),
        ]
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// An object store that counts the requests made through it into [`RequestCounts`].
/// `get_ranges` is left to the trait's default, which issues (and so counts) one ranged GET
/// per coalesced range through `get_opts`.
#[derive(Debug)]
pub struct Counted {
    inner: Arc<dyn ObjectStore>,
    counts: Arc<RequestCounts>,
}

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counted({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counted {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        bump(&self.counts.put);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        bump(&self.counts.put);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        bump(if options.head {
            &self.counts.head
        } else {
            &self.counts.get
        });
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let counts = self.counts.clone();
        let counted = locations.inspect(move |_| bump(&counts.delete)).boxed();
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        bump(&self.counts.list);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        bump(&self.counts.list);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        bump(&self.counts.list);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        bump(&self.counts.copy);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        bump(&self.counts.copy);
        self.inner.rename_opts(from, to, options).await
    }
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

    #[tokio::test]
    async fn requests_are_counted_by_kind() {
        use object_store::ObjectStoreExt;
        let s = open(&cfg("memory://")).unwrap();
        let p = Path::from("a");
        s.store.put(&p, "x".into()).await.unwrap();
        s.store.get(&p).await.unwrap();
        s.store.head(&p).await.unwrap();
        s.store.delete(&p).await.unwrap();
        let counts = s.requests.snapshot();
        assert_eq!(
            counts,
            [
                ("get", 1),
                ("head", 1),
                ("put", 1),
                ("delete", 1),
                ("list", 0),
                ("copy", 0)
            ]
        );
    }
}
