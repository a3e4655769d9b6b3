//! What a benchmark runs against: a Tessera cluster over HTTP, or an etcd cluster through
//! etcd-client. Both offer the same four operations so a workload runs unchanged on either.
//!
//! | operation | Tessera | etcd |
//! |---|---|---|
//! | put | `PUT /v1/kv/{key}` (durable) | `Put` |
//! | strong get | `GET /v1/kv/{key}` | linearizable `Range` (the default) |
//! | eventual get | `GET ...?consistency=eventual` | serializable `Range` |
//! | CAS | strong get, then `PUT` with `If-Match` (`If-None-Match: *` if absent) | `Range`, then `Txn` comparing `mod_revision` |
//!
//! Errors are reduced to a short kind (the server's error code, `connect`, `timeout`, a gRPC
//! status) for counting.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use etcd_client::{Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp};

use crate::client::{Api, ClientError, Precondition};

/// A benchmark target.
pub enum Target {
    /// Tessera gateways; worker `w` uses endpoint `w % endpoints`, or with a shard map, the
    /// owner of the key's shard for strong reads and writes.
    Tessera(Api, Option<ShardMap>),
    /// etcd; worker `w` uses connection `w % connections`.
    Etcd(Vec<KvClient>),
}

/// Which endpoint owns each shard, from `GET /v1/cluster`: what a smart client uses to send
/// each request straight to its owner (no forwarding hop).
pub struct ShardMap {
    shard_count: u32,
    /// Per shard: the index in the endpoint list of its owner, if it is listed.
    owner: Vec<Option<usize>>,
}

impl ShardMap {
    /// Reads the cluster's shard map from the first endpoint.
    pub async fn fetch(api: &Api) -> Result<ShardMap, String> {
        let view = api.cluster_at(0).await.map_err(|e| e.to_string())?;
        let bad = || "malformed /v1/cluster answer".to_string();
        let shard_count = view["shard_count"].as_u64().ok_or_else(bad)? as u32;
        let mut owner = vec![None; shard_count as usize];
        for s in view["shards"].as_array().ok_or_else(bad)? {
            let (Some(n), Some(url)) = (s["shard"].as_u64(), s["url"].as_str()) else {
                continue;
            };
            let url = url.trim_end_matches('/');
            if let Some(slot) = owner.get_mut(n as usize) {
                *slot = api.endpoints().iter().position(|e| e == url);
            }
        }
        Ok(ShardMap { shard_count, owner })
    }

    fn endpoint_of(&self, key: &[u8]) -> Option<usize> {
        self.owner[self.shard_of(key) as usize]
    }

    /// The shard of `key`.
    pub fn shard_of(&self, key: &[u8]) -> u32 {
        tessera::shard_for_key(key, self.shard_count).0
    }
}

/// How a CAS ended when no error occurred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The conditional write applied.
    Applied,
    /// Another writer changed the key between the read and the write.
    Conflict,
}

/// An operation's failure, reduced to a kind for counting.
pub type ErrorKind = String;

impl Target {
    /// Connects to etcd with `connections` gRPC channels, each balanced over `endpoints`.
    pub async fn etcd(
        endpoints: &[String],
        connections: usize,
        timeout: Duration,
    ) -> Result<Target, String> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let opts = ConnectOptions::new()
                .with_timeout(timeout)
                .with_connect_timeout(timeout.min(Duration::from_secs(2)));
            let client = etcd_client::Client::connect(endpoints, Some(opts))
                .await
                .map_err(|e| format!("cannot connect to etcd at {}: {e}", endpoints.join(",")))?;
            clients.push(client.kv_client());
        }
        Ok(Target::Etcd(clients))
    }

    /// Checks that every Tessera endpoint answers `/healthz`, or that etcd serves a read, so
    /// an unreachable target fails the run at once instead of filling it with errors.
    pub async fn check(&self) -> Result<(), String> {
        match self {
            Target::Tessera(api, _) => {
                for at in 0..api.endpoints().len() {
                    api.health_at(at).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Target::Etcd(kv) => {
                let mut kv = kv[0].clone();
                kv.get("tessera-bench-check", None)
                    .await
                    .map(drop)
                    .map_err(|e| format!("etcd does not answer: {e}"))
            }
        }
    }

    /// A human name: `tessera` or `etcd`.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Tessera(..) => "tessera",
            Target::Etcd(_) => "etcd",
        }
    }

    /// Writes `key`.
    pub async fn put(&self, worker: usize, key: &[u8], value: Bytes) -> Result<(), ErrorKind> {
        match self {
            Target::Tessera(api, _) => api
                .put_at(
                    self.endpoint(worker, key),
                    key,
                    value,
                    None,
                    Precondition::None,
                )
                .await
                .map(drop)
                .map_err(|e| e.kind()),
            Target::Etcd(kv) => {
                let mut kv = kv[worker % kv.len()].clone();
                kv.put(key, value.to_vec(), None)
                    .await
                    .map(drop)
                    .map_err(|e| etcd_kind(&e))
            }
        }
    }

    /// Writes `keys` (all of one shard) with `value` in one atomic batch (Tessera only).
    pub async fn put_batch(
        &self,
        worker: usize,
        keys: &[Vec<u8>],
        value: &Bytes,
    ) -> Result<(), ErrorKind> {
        let Target::Tessera(api, _) = self else {
            return Err("batch is Tessera-only".into());
        };
        let Some(first) = keys.first() else {
            return Ok(());
        };
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let ops: Vec<_> = keys
            .iter()
            .map(|k| serde_json::json!({"op": "put", "key": b64(k), "value": b64(value)}))
            .collect();
        let body =
            serde_json::to_vec(&serde_json::json!({ "ops": ops })).map_err(|e| e.to_string())?;
        api.batch_at(self.endpoint(worker, first), Bytes::from(body))
            .await
            .map(drop)
            .map_err(|e| e.kind())
    }

    /// Reads `key`; returns its version (Tessera) or mod revision (etcd), `None` if absent.
    pub async fn get(
        &self,
        worker: usize,
        key: &[u8],
        eventual: bool,
    ) -> Result<Option<u64>, ErrorKind> {
        match self {
            Target::Tessera(api, _) => {
                // Eventual reads are served by whichever gateway receives them.
                let at = if eventual {
                    worker % api.endpoints().len()
                } else {
                    self.endpoint(worker, key)
                };
                match api.get_at(at, key, eventual).await {
                    Ok(v) => Ok(Some(v.version)),
                    Err(ClientError::NotFound(_)) => Ok(None),
                    Err(e) => Err(e.kind()),
                }
            }
            Target::Etcd(kv) => {
                let mut kv = kv[worker % kv.len()].clone();
                let opts = eventual.then(|| GetOptions::new().with_serializable());
                let resp = kv.get(key, opts).await.map_err(|e| etcd_kind(&e))?;
                Ok(resp.kvs().first().map(|kv| kv.mod_revision() as u64))
            }
        }
    }

    /// Reads `key`'s version, then writes `value` only if it is unchanged (or still absent).
    pub async fn cas(
        &self,
        worker: usize,
        key: &[u8],
        value: Bytes,
    ) -> Result<CasOutcome, ErrorKind> {
        let seen = self.get(worker, key, false).await?;
        match self {
            Target::Tessera(api, _) => {
                let pre = seen.map_or(Precondition::IfAbsent, Precondition::IfMatch);
                match api
                    .put_at(self.endpoint(worker, key), key, value, None, pre)
                    .await
                {
                    Ok(_) => Ok(CasOutcome::Applied),
                    Err(ClientError::PreconditionFailed { .. }) => Ok(CasOutcome::Conflict),
                    Err(e) => Err(e.kind()),
                }
            }
            Target::Etcd(kv) => {
                let mut kv = kv[worker % kv.len()].clone();
                // An absent key has mod_revision 0, so one compare covers both cases.
                let rev = seen.unwrap_or(0) as i64;
                let txn = Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
                    .and_then([TxnOp::put(key, value.to_vec(), None)]);
                let resp = kv.txn(txn).await.map_err(|e| etcd_kind(&e))?;
                Ok(if resp.succeeded() {
                    CasOutcome::Applied
                } else {
                    CasOutcome::Conflict
                })
            }
        }
    }

    /// The endpoint for `key`: its shard's owner when routing by shard map, else the
    /// worker's own.
    fn endpoint(&self, worker: usize, key: &[u8]) -> usize {
        match self {
            Target::Tessera(api, map) => map
                .as_ref()
                .and_then(|m| m.endpoint_of(key))
                .unwrap_or(worker % api.endpoints().len()),
            Target::Etcd(_) => 0,
        }
    }
}

/// A short kind for an etcd error: the gRPC status code, or the error's class.
fn etcd_kind(e: &etcd_client::Error) -> ErrorKind {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("grpc_{:?}", s.code()).to_lowercase(),
        etcd_client::Error::TransportError(_) => "transport".into(),
        _ => "etcd".into(),
    }
}
