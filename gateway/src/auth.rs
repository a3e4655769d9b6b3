//! Who may send what: bearer tokens with roles, and the proof that a request comes from another
//! gateway (the cluster secret). One middleware, [`authorize`], in front of every handler.
//!
//! Rules, in the order [`authorize`] applies them:
//! 1. `GET /healthz` and `GET /readyz` are public (probes carry no token).
//! 2. With neither tokens nor a cluster secret configured, everything is allowed, as before
//!    this module existed (the embedded default on 127.0.0.1).
//! 3. A request with valid peer proof ([`PEER_HEADER`] holding a cluster secret) comes from a
//!    gateway that already authorized its client: it is allowed, internal headers included.
//! 4. Otherwise a request that carries an internal header or parameter (`internal_part`) is
//!    refused with `400 reserved_header`, whatever its token: only gateways may speak the
//!    internal protocol (hop limit, deadline, version floor, shard subsets).
//! 5. With tokens configured, a missing or unknown token gets `401`; a token whose role does
//!    not cover the route ([`required_role`]) gets `403`.
//!
//! Safety argument for the internal hop: every internal header and parameter is honoured only
//! after this middleware ran (it wraps the whole router), and step 4 refuses all of them
//! unless step 3 proved the sender knows a cluster secret. Clients never learn the secret: it
//! is sent only to peers (on gateway-to-gateway requests), never echoed, logged, or shown in
//! `/v1/cluster`. Secrets and tokens are compared as SHA-256 digests in constant time, so
//! timing reveals neither.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::codec::percent_decode;
use crate::error::ApiError;
use crate::reload::Reloadable;

/// Request header carrying the cluster secret on gateway-to-gateway requests.
pub const PEER_HEADER: &str = "x-tessera-peer";
/// `x-tessera-*` request headers a client may send: the response headers it may echo back.
/// Every other `x-tessera-*` request header is internal.
const CLIENT_HEADERS: &[&str] = &["x-tessera-read", "x-tessera-staleness-bound-ms"];
/// Query parameters only gateways send (a scan's subset of shards).
const INTERNAL_PARAMS: &[&str] = &["shards"];
/// Routes that need the admin role (beyond `/v1/cluster` and `/metrics`: the status page).
const ADMIN_PATHS: &[&str] = &["/v1/cluster", "/metrics", "/ui"];
/// Routes open to anyone (`GET` only).
const PUBLIC_PATHS: &[&str] = &["/healthz", "/readyz"];

/// `[auth]`: tokens and the cluster secret.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// TOML file of tokens (`[[tokens]]` with `name`, `sha256`, `role`); reloaded on SIGHUP.
    /// Default: unset, which leaves the API open (allowed only on a loopback address, or with
    /// `insecure_no_auth`).
    pub tokens_file: Option<PathBuf>,
    /// File whose first line is the cluster secret this gateway sends to its peers; every
    /// non-empty line is a secret it accepts from them (several during a rotation). Required in
    /// cluster mode when tokens are configured. Default: unset.
    pub cluster_secret_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without tokens. Default: false.
    pub insecure_no_auth: bool,
}

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Point reads and scans (every `GET` but the admin routes).
    Read,
    /// Also `PUT`, `DELETE` and batches.
    Write,
    /// Also `/v1/cluster`, `/metrics` and `/ui`.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// The role `method` on `path` needs; `None` for the public probes. Unknown routes need `read`
/// (so only a token holder learns that they are unknown); methods that may change something
/// need `write`.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    if *method == Method::GET && PUBLIC_PATHS.contains(&path) {
        None
    } else if ADMIN_PATHS.contains(&path) {
        Some(Role::Admin)
    } else if method.is_safe() {
        Some(Role::Read)
    } else {
        Some(Role::Write)
    }
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// One entry of the token file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

/// A known token: its name (for logs and metrics), the SHA-256 of its secret, its role.
struct Token {
    name: String,
    hash: [u8; 32],
    role: Role,
}

/// The tokens of one version of the token file.
pub struct Tokens(Vec<Token>);

impl Tokens {
    /// Reads the token file at `path`.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file `{}`: {e}", path.display()))?;
        let file: TokenFile = toml::from_str(&text)
            .map_err(|e| format!("invalid token file `{}`: {e}", path.display()))?;
        let mut tokens = Vec::with_capacity(file.tokens.len());
        for t in file.tokens {
            let hash = parse_hex32(&t.sha256).ok_or_else(|| {
                format!(
                    "token file `{}`: token `{}`: sha256 must be 64 hex digits (echo -n SECRET | sha256sum)",
                    path.display(),
                    t.name
                )
            })?;
            if tokens.iter().any(|o: &Token| o.name == t.name) {
                return Err(format!(
                    "token file `{}`: token name `{}` is repeated",
                    path.display(),
                    t.name
                ));
            }
            tokens.push(Token {
                name: t.name,
                hash,
                role: t.role,
            });
        }
        Ok(Tokens(tokens))
    }

    /// The token whose secret is `secret`. Every entry is compared, in constant time, so the
    /// time taken does not depend on which one matches or how much of it.
    fn find(&self, secret: &[u8]) -> Option<&Token> {
        let presented = digest(secret);
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.hash.ct_eq(&presented)) {
                found = Some(t);
            }
        }
        found
    }
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// The cluster secrets: the one sent to peers, and the digests of those accepted from them.
pub struct ClusterSecret {
    send: String,
    accepted: Vec<[u8; 32]>,
}

impl ClusterSecret {
    /// Reads the secret file: its first non-empty line is sent, every non-empty line accepted.
    pub fn load(path: &Path) -> Result<ClusterSecret, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read cluster secret file `{}`: {e}", path.display()))?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let Some(first) = lines.first() else {
            return Err(format!("cluster secret file `{}` is empty", path.display()));
        };
        if lines.iter().any(|l| l.len() < 16) {
            return Err(format!(
                "cluster secret file `{}`: each secret must be at least 16 characters",
                path.display()
            ));
        }
        Ok(ClusterSecret {
            send: first.to_string(),
            accepted: lines.iter().map(|l| digest(l.as_bytes())).collect(),
        })
    }

    /// The secret to send to peers.
    pub fn outgoing(&self) -> &str {
        &self.send
    }

    fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        self.accepted
            .iter()
            .fold(false, |ok, a| ok | bool::from(a.ct_eq(&presented)))
    }
}

/// The gateway's authentication state: tokens (reloadable) and the cluster secret.
pub struct Auth {
    tokens: Option<Arc<Reloadable<Tokens>>>,
    secret: Option<Arc<ClusterSecret>>,
}

impl Auth {
    /// Loads the files `config` names.
    pub fn load(config: &AuthConfig) -> Result<Auth, String> {
        let tokens = match &config.tokens_file {
            Some(path) => {
                let p = path.clone();
                let load = move || Tokens::load(&p);
                Some(Arc::new(Reloadable::new(
                    "token file",
                    vec![path.clone()],
                    load,
                )?))
            }
            None => None,
        };
        let secret = match &config.cluster_secret_file {
            Some(path) => Some(Arc::new(ClusterSecret::load(path)?)),
            None => None,
        };
        Ok(Auth { tokens, secret })
    }

    /// The token file, to reload on SIGHUP.
    pub fn tokens(&self) -> Option<Arc<Reloadable<Tokens>>> {
        self.tokens.clone()
    }

    /// The cluster secret, sent on requests to peers.
    pub fn secret(&self) -> Option<&ClusterSecret> {
        self.secret.as_deref()
    }

    /// Whether anything is checked at all (rule 2 of the module documentation).
    fn enforced(&self) -> bool {
        self.tokens.is_some() || self.secret.is_some()
    }

    /// Whether `headers` prove the request comes from a gateway of this cluster.
    fn is_peer(&self, headers: &HeaderMap) -> bool {
        match (&self.secret, headers.get(PEER_HEADER)) {
            (Some(secret), Some(v)) => secret.accepts(v.as_bytes()),
            _ => false,
        }
    }

    /// Checks the token in `headers` against `needed`.
    fn check_token(&self, headers: &HeaderMap, needed: Role) -> Result<(), ApiError> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(presented_secret)
            .ok_or_else(ApiError::unauthorized)?;
        let tokens = tokens.get();
        let token = tokens.find(&presented).ok_or_else(ApiError::unauthorized)?;
        if token.role < needed {
            tracing::debug!(token = %token.name, role = token.role.as_str(), needed = needed.as_str(), "forbidden");
            return Err(ApiError::forbidden(token.role.as_str(), needed.as_str()));
        }
        Ok(())
    }
}

/// The token secret an `Authorization` value presents: `Bearer <secret>`, or, for browsers
/// (the status page), `Basic base64(<any user>:<secret>)`: a browser asks for Basic
/// credentials on a `401` and then sends them on the page's own requests too.
fn presented_secret(value: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let pair = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let colon = pair.iter().position(|&b| b == b':')?;
        return Some(pair[colon + 1..].to_vec());
    }
    None
}

/// The first internal header or parameter `req` carries, if any.
fn internal_part(req: &Request) -> Option<String> {
    let header = req.headers().keys().find(|name| {
        let name = name.as_str();
        name.starts_with("x-tessera-") && !CLIENT_HEADERS.contains(&name)
    });
    if let Some(name) = header {
        return Some(name.as_str().to_string());
    }
    // Names are decoded as the handlers decode them, so `sh%61rds` is `shards` here too.
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|part| {
            let name = part.split_once('=').map_or(part, |(name, _)| name);
            percent_decode(name, true).and_then(|n| String::from_utf8(n).ok())
        })
        .find(|name| INTERNAL_PARAMS.contains(&name.as_str()))
        .map(|name| format!("?{name}="))
}

/// The middleware: applies the rules of the module documentation, then runs the handler.
pub async fn authorize(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let Some(needed) = required_role(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    if !auth.enforced() || auth.is_peer(req.headers()) {
        return next.run(req).await;
    }
    if let Some(part) = internal_part(&req) {
        return ApiError::reserved_header(&part).into_response();
    }
    match auth.check_token(req.headers(), needed) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_documented_roles() {
        let cases = [
            (Method::GET, "/healthz", None),
            (Method::GET, "/readyz", None),
            (Method::GET, "/v1/kv/a", Some(Role::Read)),
            (Method::GET, "/v1/kv", Some(Role::Read)),
            (Method::GET, "/v1/openapi.json", Some(Role::Read)),
            (Method::GET, "/nowhere", Some(Role::Read)),
            (Method::PUT, "/v1/kv/a", Some(Role::Write)),
            (Method::DELETE, "/v1/kv/a", Some(Role::Write)),
            (Method::POST, "/v1/batch", Some(Role::Write)),
            (Method::POST, "/healthz", Some(Role::Write)),
            (Method::GET, "/v1/cluster", Some(Role::Admin)),
            (Method::GET, "/metrics", Some(Role::Admin)),
            (Method::GET, "/ui", Some(Role::Admin)),
        ];
        for (method, path, role) in cases {
            assert_eq!(required_role(&method, path), role, "{method} {path}");
        }
    }

    #[test]
    fn token_file_is_parsed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let hash = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"; // "secret"
        std::fs::write(
            &path,
            format!("[[tokens]]\nname = \"app\"\nsha256 = \"{hash}\"\nrole = \"write\"\n"),
        )
        .unwrap();
        let tokens = Tokens::load(&path).unwrap();
        let t = tokens.find(b"secret").unwrap();
        assert_eq!((t.name.as_str(), t.role), ("app", Role::Write));
        assert!(tokens.find(b"secreT").is_none());

        std::fs::write(
            &path,
            "[[tokens]]\nname = \"a\"\nsha256 = \"zz\"\nrole = \"read\"\n",
        )
        .unwrap();
        let err = Tokens::load(&path).err().unwrap();
        assert!(err.contains("64 hex digits"), "{err}");
        std::fs::write(
            &path,
            "[[tokens]]\nname = \"a\"\nsha256 = \"00\"\nrole = \"root\"\n",
        )
        .unwrap();
        assert!(Tokens::load(&path).is_err());
    }
}
