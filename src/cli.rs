//! Command-line flags the gateway and compactor binaries share (feature `cli`): each one
//! overrides one setting of the config file, and can also be given as a `TESSERA_*`
//! environment variable.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ClusterConfig, ObjectStoreConfig};
use crate::process::LogConfig;

/// Where the data lives, how to join the cluster, and logging.
#[derive(clap::Args, Debug)]
pub struct CommonArgs {
    /// Object store URL (object_store.url): ./dir, file:///dir, s3://bucket/prefix, memory://.
    #[arg(long, env = "TESSERA_STORE")]
    pub store: Option<String>,
    /// S3 endpoint for S3-compatible servers (object_store.endpoint).
    #[arg(long, env = "TESSERA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// etcd endpoints, comma-separated (cluster.etcd_endpoints): cluster mode for a gateway;
    /// required by the compactor.
    #[arg(long, env = "TESSERA_ETCD", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// Cluster name (cluster.name): the etcd prefix /tessera/{name}/.
    #[arg(long, env = "TESSERA_CLUSTER")]
    pub cluster: Option<String>,
    /// Member id (cluster.node_id); default: a gateway's advertise URL, a compactor's
    /// {hostname}-{pid}.
    #[arg(long, env = "TESSERA_NODE_ID")]
    pub node_id: Option<String>,
    /// etcd lease TTL (cluster.lease_ttl), whole seconds, e.g. 3s.
    #[arg(long, env = "TESSERA_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// PEM CA of etcd's server certificate (cluster.etcd_ca); use https:// endpoints.
    #[arg(long, env = "TESSERA_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (cluster.etcd_cert).
    #[arg(long, env = "TESSERA_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert (cluster.etcd_key).
    #[arg(long, env = "TESSERA_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (cluster.etcd_user); the password comes from TESSERA_ETCD_PASSWORD or
    /// --etcd-password-file.
    #[arg(long, env = "TESSERA_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd password (cluster.etcd_password_file).
    #[arg(long, env = "TESSERA_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// Log filter (log.level), e.g. info or tessera=debug.
    #[arg(long, env = "TESSERA_LOG")]
    pub log: Option<String>,
    /// Log format (log.format): text or json.
    #[arg(long, env = "TESSERA_LOG_FORMAT")]
    pub log_format: Option<String>,
}

impl CommonArgs {
    /// Overrides the settings of the config sections that were given as flags.
    pub fn apply(
        self,
        object_store: &mut ObjectStoreConfig,
        cluster: &mut ClusterConfig,
        log: &mut LogConfig,
    ) -> Result<(), String> {
        if let Some(v) = self.store {
            object_store.url = v;
        }
        if let Some(v) = self.s3_endpoint {
            object_store.endpoint = Some(v);
        }
        if let Some(v) = self.etcd {
            cluster.etcd_endpoints = v;
        }
        if let Some(v) = self.cluster {
            cluster.name = v;
        }
        if let Some(v) = self.node_id {
            cluster.node_id = Some(v);
        }
        if let Some(v) = self.lease_ttl {
            cluster.lease_ttl = v;
        }
        let paths = [
            (self.etcd_ca, &mut cluster.etcd_ca),
            (self.etcd_cert, &mut cluster.etcd_cert),
            (self.etcd_key, &mut cluster.etcd_key),
            (self.etcd_password_file, &mut cluster.etcd_password_file),
        ];
        for (flag, key) in paths {
            if flag.is_some() {
                *key = flag;
            }
        }
        if let Some(v) = self.etcd_user {
            cluster.etcd_user = Some(v);
        }
        if let Some(v) = self.log {
            log.level = v;
        }
        if let Some(v) = self.log_format {
            log.format = v.parse()?;
        }
        Ok(())
    }
}
