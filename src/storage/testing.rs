//! Test support for the storage modules: an in-memory cluster store, a shard opened with
//! defaults, and a wrapper that runs a hook before the requests whose timing races matter to a
//! test.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

use super::objstore::ClusterStore;
use super::store::{BlockCache, ShardStore};
use crate::config::{ObjectStoreConfig, StorageConfig};
use crate::shard::ShardId;

/// A cluster store in process memory, empty.
pub(crate) fn memory() -> ClusterStore {
    super::objstore::open(&ObjectStoreConfig {
        url: "memory://".into(),
        ..ObjectStoreConfig::default()
    })
    .unwrap()
}

/// Opens `shard`'s database in `store` as its writer, with default settings.
pub(crate) async fn open_shard(store: &ClusterStore, shard: ShardId) -> ShardStore {
    ShardStore::open(
        shard,
        store,
        &StorageConfig::default(),
        &ObjectStoreConfig::default(),
        &BlockCache::new(1 << 20),
        false,
    )
    .await
    .unwrap()
}

/// The kind of request a [`Hook`] runs before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Get,
    List,
    Delete,
}

/// Runs before a request, with the request's kind and path (a LIST's prefix, or the root).
pub(crate) type Hook = Arc<dyn Fn(Request, &Path) -> BoxFuture<'static, ()> + Send + Sync>;

/// `store` with `hook` run before each of its GETs, LISTs (not the offset or delimiter forms)
/// and deletes. Counted into the same request counts.
pub(crate) fn hooked(store: &ClusterStore, hook: Hook) -> ClusterStore {
    ClusterStore {
        store: Arc::new(Hooked {
            inner: Arc::clone(&store.store),
            hook,
        }),
        prefix: store.prefix.clone(),
        requests: Arc::clone(&store.requests),
    }
}

struct Hooked {
    inner: Arc<dyn ObjectStore>,
    hook: Hook,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hooked({})", self.inner)
    }
}

impl std::fmt::Display for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hooked({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Hooked {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        (self.hook)(Request::Get, location).await;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let hook = Arc::clone(&self.hook);
        let hooked = locations
            .then(move |p| {
                let hook = Arc::clone(&hook);
                async move {
                    if let Ok(path) = &p {
                        hook(Request::Delete, path).await;
                    }
                    p
                }
            })
            .boxed();
        self.inner.delete_stream(hooked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (inner, hook, prefix) = (
            Arc::clone(&self.inner),
            Arc::clone(&self.hook),
            prefix.cloned(),
        );
        futures::stream::once(async move {
            hook(Request::List, prefix.as_ref().unwrap_or(&Path::default())).await;
            inner.list(prefix.as_ref())
        })
        .flatten()
        .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
