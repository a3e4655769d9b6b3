//! Security (docs/security.md), with real processes: bearer tokens and roles, reserved
//! internal headers, TLS on the listener and to etcd (refusing an etcd certificate the
//! configured CA did not sign), etcd auth, the cluster secret between HTTPS gateways, slow and
//! flooding clients, and refusing to run open by mistake.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{gateway_bin, EtcdServer, GatewayOpts, Store};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READ: &str = "read-secret-0123456789";
const WRITE: &str = "write-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";
const CLUSTER_SECRET: &str = "cluster-secret-0123456789abcdef";

/// SHA-256 through `sha256sum`, exactly as docs/security.md tells operators to do it.
fn sha256_hex(secret: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(secret.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Writes a token file with one token per role (names `r`, `w`, `a`) plus `extra` entries.
fn write_tokens(path: &Path, extra: &[(&str, &str, &str)]) {
    let mut text = String::new();
    let base = [
        ("r", READ, "read"),
        ("w", WRITE, "write"),
        ("a", ADMIN, "admin"),
    ];
    for (name, secret, role) in base.iter().chain(extra) {
        text.push_str(&format!(
            "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n",
            sha256_hex(secret)
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// A CA and certificates it signs, as PEM files in a directory.
struct Pki {
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tessera test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Pki {
            dir,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca()).unwrap()
    }

    /// A certificate for 127.0.0.1 and localhost (server and client use), written as
    /// `{name}.pem` and `{name}-key.pem`; returns both paths.
    fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// etcd serving clients over TLS only, its certificate signed by `pki`, and requiring client
/// certificates signed by `pki`.
fn tls_etcd(pki: &Pki) -> EtcdServer {
    let (cert, key) = pki.issue("etcd");
    EtcdServer::start_with(
        "https",
        vec![
            "--cert-file".into(),
            path_str(&cert),
            "--key-file".into(),
            path_str(&key),
            "--trusted-ca-file".into(),
            path_str(&pki.ca()),
            "--client-cert-auth".into(),
        ],
    )
}

/// A client of `tls_etcd(pki)` presenting the certificate and key `identity`.
async fn tls_etcd_client(
    etcd: &EtcdServer,
    pki: &Pki,
    identity: (&Path, &Path),
) -> etcd_client::Client {
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(pki.ca_pem()))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(identity.0).unwrap(),
            std::fs::read(identity.1).unwrap(),
        ));
    etcd_client::Client::connect(
        [etcd.endpoint()],
        Some(etcd_client::ConnectOptions::new().with_tls(tls)),
    )
    .await
    .unwrap()
}

fn https_client(ca_pem: &[u8]) -> Client {
    Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn status(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = req.send().await.expect("request");
    let s = r.status();
    let body = r.bytes().await.unwrap();
    (s, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Each route, for each role and without a token: 401 / 403 / success as docs/security.md
/// says; a role that cannot write leaves no trace; forged internal headers get 400 whatever
/// the token and change nothing; the token file reloads on SIGHUP; no secret reaches the
/// metrics, the log or /v1/cluster.
#[tokio::test]
async fn roles_statuses_reserved_headers_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, &[]);
    let log = dir.path().join("gw.log");
    let gw = GatewayOpts::new(Store::Dir(dir.path().join("data")))
        .arg("--auth-tokens")
        .arg(path_str(&tokens))
        .start(&log);
    let http = common::client();
    let u = |p: &str| format!("{}{p}", gw.url);
    let bearer = |t: &str| format!("Bearer {t}");

    // Seed a value with the write token.
    let (s, _) = status(
        http.put(u("/v1/kv/k"))
            .header("authorization", bearer(WRITE))
            .body("v1"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    let batch = r#"{"ops":[{"op":"put","key":"Yg==","value":"eA=="}]}"#;
    // (method, path, body, least role that may)
    let routes: &[(&str, &str, &str, Option<&str>)] = &[
        ("GET", "/healthz", "", None),
        ("GET", "/readyz", "", None),
        ("GET", "/v1/kv/k", "", Some("read")),
        ("GET", "/v1/kv?prefix=k", "", Some("read")),
        ("PUT", "/v1/kv/k", "v2", Some("write")),
        ("DELETE", "/v1/kv/gone", "", Some("write")),
        ("POST", "/v1/batch", batch, Some("write")),
        ("GET", "/v1/cluster", "", Some("admin")),
        ("GET", "/metrics", "", Some("admin")),
        ("GET", "/ui", "", Some("admin")),
        ("GET", "/v1/openapi.json", "", Some("read")),
    ];
    let rank = |r: &str| ["read", "write", "admin"].iter().position(|x| *x == r);
    let callers = [
        (None, None),
        (Some("not-a-token"), None),
        (Some(READ), Some("read")),
        (Some(WRITE), Some("write")),
        (Some(ADMIN), Some("admin")),
    ];
    for (method, path, body, needed) in routes {
        for (token, role) in &callers {
            let mut req = http
                .request(method.parse().unwrap(), u(path))
                .body(body.to_string());
            if let Some(t) = token {
                req = req.header("authorization", bearer(t));
            }
            let r = req.send().await.unwrap();
            let s = r.status();
            let www = r.headers().get("www-authenticate").cloned();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let what = format!("{method} {path} as {role:?}");
            match (needed, role) {
                (None, _) => assert_eq!(s, StatusCode::OK, "{what}"),
                (Some(_), None) => {
                    assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}");
                    assert_eq!(code(&body), "unauthorized", "{what}");
                    assert_eq!(www.unwrap(), "Bearer, Basic realm=\"tessera\"", "{what}");
                }
                (Some(n), Some(r)) if rank(r) < rank(n) => {
                    assert_eq!(s, StatusCode::FORBIDDEN, "{what}");
                    assert_eq!(code(&body), "forbidden", "{what}");
                }
                (Some(_), Some(_)) => assert!(s.is_success(), "{what}: {s} {body}"),
            }
        }
    }

    // Browsers use Basic (any user name, the token as password): the status page and its own
    // requests; roles apply as for Bearer.
    let basic = |t: &str| {
        use base64::Engine;
        let pair = format!("browser:{t}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    for (path, token, expected) in [
        ("/ui", ADMIN, StatusCode::OK),
        ("/v1/cluster", ADMIN, StatusCode::OK),
        ("/v1/cluster", READ, StatusCode::FORBIDDEN),
        ("/ui", "not-a-token", StatusCode::UNAUTHORIZED),
    ] {
        let r = http
            .get(u(path))
            .header("authorization", basic(token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected, "GET {path} with Basic");
    }

    // A role that cannot write leaves no trace: the key `ro` and the batch key never appear.
    for (method, path, body) in [
        ("PUT", "/v1/kv/ro", "x"),
        ("DELETE", "/v1/kv/k", ""),
        (
            "POST",
            "/v1/batch",
            r#"{"ops":[{"op":"put","key":"cm8y","value":"eA=="}]}"#,
        ),
    ] {
        let (s, _) = status(
            http.request(method.parse().unwrap(), u(path))
                .header("authorization", bearer(READ))
                .body(body),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    let (s, page) = status(http.get(u("/v1/kv")).header("authorization", bearer(ADMIN))).await;
    assert_eq!(s, StatusCode::OK);
    let keys: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    // "k" and "b" (the allowed batch) exist; "ro" and "ro2" do not; "k" was not deleted.
    assert_eq!(keys, ["Yg==", "aw=="], "{page}");

    // Forged internal headers and parameters: 400 reserved_header whatever the token, and the
    // write does not happen.
    let version = |http: Client| async move {
        let r = http
            .get(u("/v1/kv/k"))
            .header("authorization", bearer(ADMIN))
            .send()
            .await
            .unwrap();
        r.headers()["etag"].to_str().unwrap().to_string()
    };
    let before = version(http.clone()).await;
    for (name, value) in [
        ("x-tessera-forwarded", "1"),
        ("x-tessera-deadline-ms", "100000"),
        ("x-tessera-min-version", "1"),
        ("x-tessera-peer", "guessed-secret"),
        ("x-tessera-anything-new", "1"),
    ] {
        for token in [None, Some(ADMIN)] {
            let mut req = http.put(u("/v1/kv/k")).header(name, value).body("forged");
            if let Some(t) = token {
                req = req.header("authorization", bearer(t));
            }
            let (s, body) = status(req).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{name}");
            assert_eq!(code(&body), "reserved_header", "{name}");
        }
    }
    for query in ["shards=0", "sh%61rds=0"] {
        let (s, body) = status(
            http.get(u(&format!("/v1/kv?{query}")))
                .header("authorization", bearer(ADMIN)),
        )
        .await;
        assert_eq!(
            (s, code(&body)),
            (StatusCode::BAD_REQUEST, "reserved_header")
        );
    }
    assert_eq!(
        version(http.clone()).await,
        before,
        "a forged write changed the key"
    );
    // Client-facing x-tessera headers are not internal.
    let (s, _) = status(
        http.get(u("/v1/kv/k"))
            .header("x-tessera-read", "strong")
            .header("authorization", bearer(READ)),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    // Header limits: more than max_headers (100) headers is refused before any handler.
    let mut req = http
        .get(u("/v1/kv/k"))
        .header("authorization", bearer(READ));
    for i in 0..120 {
        req = req.header(format!("x-h{i}"), "1");
    }
    assert_eq!(
        req.send().await.unwrap().status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );

    // SIGHUP reloads the token file: a new token works, a removed one no longer does.
    let new = "new-secret-0123456789";
    std::fs::write(
        &tokens,
        format!(
            "[[tokens]]\nname = \"n\"\nsha256 = \"{}\"\nrole = \"read\"\n",
            sha256_hex(new)
        ),
    )
    .unwrap();
    gw.process.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = status(http.get(u("/v1/kv/k")).header("authorization", bearer(new))).await;
        if s == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new token not accepted after SIGHUP: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, _) = status(
        http.get(u("/v1/kv/k"))
            .header("authorization", bearer(READ)),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a removed token still works");
    // A broken file keeps the previous tokens.
    std::fs::write(&tokens, "not toml [[").unwrap();
    gw.process.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, _) = status(http.get(u("/v1/kv/k")).header("authorization", bearer(new))).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a broken token file replaced the good one"
    );
    write_tokens(&tokens, &[]);
    gw.process.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Rejections are counted by reason, never by token; no secret shows anywhere.
    let admin_text = |path: &'static str| {
        let req = http.get(u(path)).header("authorization", bearer(ADMIN));
        async move { req.send().await.unwrap().text().await.unwrap() }
    };
    let metrics = admin_text("/metrics").await;
    for reason in ["unauthorized", "forbidden", "reserved_header"] {
        let n = common::metric(
            &metrics,
            &format!("tessera_http_rejected_total{{reason=\"{reason}\"}}"),
        );
        assert!(n >= 1.0, "{reason}: {n}");
    }
    let cluster = admin_text("/v1/cluster").await;
    let logged = std::fs::read_to_string(&log).unwrap();
    for secret in [READ, WRITE, ADMIN, new, "not-a-token", "guessed-secret"] {
        for (what, text) in [
            ("metrics", &metrics),
            ("cluster", &cluster),
            ("log", &logged),
        ] {
            assert!(!text.contains(secret), "{what} shows a secret");
        }
    }
}

/// HTTPS end to end with certificates made here: the API over TLS, the CLI with --cacert and
/// TESSERA_TOKEN, a plain-HTTP client refused, and a certificate rotated on SIGHUP.
#[tokio::test]
async fn tls_listener_end_to_end_and_rotation() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("gateway");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, &[]);
    let gw = GatewayOpts::new(Store::Dir(dir.path().join("data")))
        .arg("--auth-tokens")
        .arg(path_str(&tokens))
        .arg("--tls-cert")
        .arg(path_str(&cert))
        .arg("--tls-key")
        .arg(path_str(&key))
        .start(&dir.path().join("gw.log"));
    assert!(gw.url.starts_with("https://127.0.0.1:"), "{}", gw.url);
    let https = https_client(&pki.ca_pem());
    let (s, _) = status(
        https
            .put(gw.kv("t"))
            .header("authorization", format!("Bearer {WRITE}"))
            .body("over tls"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    // A plain-HTTP client gets no HTTP answer.
    let plain = gw.url.replace("https://", "http://");
    let r = common::client()
        .get(format!("{plain}/healthz"))
        .send()
        .await;
    assert!(
        r.is_err(),
        "plain HTTP was answered: {:?}",
        r.map(|r| r.status())
    );
    // A client that does not trust the CA is refused too.
    assert!(common::client()
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .is_err());

    // The CLI: https endpoint, --cacert, TESSERA_TOKEN.
    let cli = |args: &[&str], token: Option<&str>| {
        let mut cmd = Command::new(common::cli_bin());
        cmd.args([
            "--endpoints",
            &gw.url,
            "--cacert",
            pki.ca().to_str().unwrap(),
        ])
        .args(args)
        .env_remove("TESSERA_TOKEN");
        if let Some(t) = token {
            cmd.env("TESSERA_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = cli(&["get", "t"], Some(READ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"over tls");
    let out = cli(&["put", "t", "x"], Some(READ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
    let out = cli(&["get", "t"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    let out = cli(
        &[
            "bench",
            "--workload",
            "put",
            "--warmup",
            "0s",
            "--concurrency",
            "2",
            "--duration",
            "1s",
            "--keys",
            "10",
        ],
        Some(WRITE),
    );
    assert!(
        out.status.success(),
        "bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Rotation: a certificate from another CA replaces the files; after SIGHUP new
    // connections get it.
    let pki2 = Pki::new();
    let (cert2, key2) = pki2.issue("gateway2");
    std::fs::copy(&key2, &key).unwrap();
    std::fs::copy(&cert2, &cert).unwrap();
    gw.process.signal("HUP");
    let https2 = https_client(&pki2.ca_pem());
    let deadline = Instant::now() + Duration::from_secs(10);
    while https2
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three HTTPS gateways with tokens and the cluster secret: requests to any gateway are
/// forwarded to the shard's owner (the peer proof works over TLS, the client's token is not
/// needed by the owner), a client forging the internal headers on any of them gets 400, and
/// after the owner of a key is killed its writes succeed again through the others.
#[tokio::test]
async fn https_cluster_with_cluster_secret_forwards_and_fails_over() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("gateway");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, &[]);
    let secret = dir.path().join("cluster-secret");
    std::fs::write(&secret, format!("{CLUSTER_SECRET}\n")).unwrap();
    let args = [
        ("--auth-tokens", &tokens),
        ("--cluster-secret", &secret),
        ("--tls-cert", &cert),
        ("--tls-key", &key),
        ("--tls-ca", &pki.ca()),
    ];
    let extra = args
        .iter()
        .flat_map(|(f, p)| [f.to_string(), path_str(p)])
        .collect();
    let mut cluster = Cluster::start_with(3, extra).await;
    let https = https_client(&pki.ca_pem());
    let auth = format!("Bearer {WRITE}");
    // Wait until every gateway has joined and serves writes for every shard.
    let keys: Vec<String> = (0..16).map(|i| format!("key-{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..3 {
        for k in &keys {
            loop {
                let r = https
                    .put(cluster.gw(i).kv(k))
                    .header("authorization", &auth)
                    .body(format!("{i}"))
                    .send()
                    .await;
                if r.as_ref().is_ok_and(|r| r.status() == StatusCode::OK) {
                    break;
                }
                assert!(Instant::now() < deadline, "put {k} via gw{i}: {r:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Forwarding happened (16 keys over 3 owners) and every gateway reads every key.
    for i in 0..3 {
        for k in &keys {
            let r = https
                .get(cluster.gw(i).kv(k))
                .header("authorization", format!("Bearer {READ}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.text().await.unwrap(), "2");
        }
    }
    let forwarded: f64 = {
        let mut n = 0.0;
        for i in 0..3 {
            let m = https
                .get(format!("{}/metrics", cluster.gw(i).url))
                .header("authorization", format!("Bearer {ADMIN}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            n += common::metric(&m, "tessera_forwarded_requests_total");
        }
        n
    };
    assert!(forwarded > 0.0);
    // A client forging the hop on a gateway that does not own the key gets 400, and nothing
    // changes.
    for i in 0..3 {
        let (s, body) = status(
            https
                .put(cluster.gw(i).kv("key-0"))
                .header("authorization", format!("Bearer {ADMIN}"))
                .header("x-tessera-forwarded", "1")
                .header("x-tessera-peer", "not-the-secret-0123456789")
                .body("forged"),
        )
        .await;
        assert_eq!(
            (s, code(&body)),
            (StatusCode::BAD_REQUEST, "reserved_header")
        );
    }
    let r = https
        .get(cluster.gw(0).kv("key-0"))
        .header("authorization", format!("Bearer {READ}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "2");

    // Failover: kill gateway 2; writes to every key succeed again through gateway 0.
    cluster.kill(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in &keys {
        loop {
            let r = https
                .put(cluster.gw(0).kv(k))
                .header("authorization", &auth)
                .body("after")
                .send()
                .await;
            if r.as_ref().is_ok_and(|r| r.status() == StatusCode::OK) {
                break;
            }
            assert!(Instant::now() < deadline, "put {k} after failover: {r:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// etcd serving TLS only, checking client certificates, with auth enabled and a user limited
/// to Tessera's prefix: a gateway and a compactor connect with --etcd-ca/--etcd-cert/
/// --etcd-key/--etcd-user and the password (from the environment and from a file); with a
/// wrong password the gateway does not start.
#[tokio::test]
async fn etcd_with_tls_and_auth() {
    let pki = Pki::new();
    let etcd = tls_etcd(&pki);
    let (client_cert, client_key) = pki.issue("tessera");
    // Enable auth: root, and a user `tessera` with read-write on /tessera/ only.
    let mut admin = tls_etcd_client(&etcd, &pki, (&client_cert, &client_key)).await;
    admin.user_add("root", "root-password", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("tessera").await.unwrap();
    admin
        .role_grant_permission(
            "tessera",
            etcd_client::Permission::read_write("/tessera/").with_prefix(),
        )
        .await
        .unwrap();
    admin
        .user_add("tessera", "tessera-password", None)
        .await
        .unwrap();
    admin.user_grant_role("tessera", "tessera").await.unwrap();
    admin.auth_enable().await.unwrap();

    let s3 = common::S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("etcd-password");
    std::fs::write(&password_file, "tessera-password\n").unwrap();
    let etcd_args = |o: GatewayOpts| {
        o.arg("--etcd")
            .arg(etcd.endpoint())
            .arg("--etcd-ca")
            .arg(path_str(&pki.ca()))
            .arg("--etcd-cert")
            .arg(path_str(&client_cert))
            .arg("--etcd-key")
            .arg(path_str(&client_key))
            .arg("--etcd-user")
            .arg("tessera")
    };
    let gw = etcd_args(GatewayOpts::new(Store::s3(&s3, "etcd-tls")))
        .env("TESSERA_ETCD_PASSWORD", "tessera-password")
        .start(&dir.path().join("gw.log"));
    let http = common::client();
    common::put_until_ok(
        &http,
        &gw.kv("a"),
        "b",
        Instant::now() + Duration::from_secs(30),
        "put through a gateway on TLS + auth etcd",
    )
    .await;

    // The compactor takes the same options (password from a file here).
    let out = Command::new(common::compactor_bin())
        .args(["--once", "--store", "s3://tessera/etcd-tls"])
        .args(["--s3-endpoint", &s3.endpoint(), "--etcd", &etcd.endpoint()])
        .args(["--etcd-ca", pki.ca().to_str().unwrap()])
        .args(["--etcd-cert", client_cert.to_str().unwrap()])
        .args(["--etcd-key", client_key.to_str().unwrap()])
        .args(["--etcd-user", "tessera", "--etcd-password-file"])
        .arg(&password_file)
        .args(["--timeout", "60s"])
        .env_remove("TESSERA_ETCD_PASSWORD")
        .env("AWS_ACCESS_KEY_ID", common::S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::S3_SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compactor: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A wrong password: the gateway exits instead of serving, and does not print it.
    let out = Command::new(gateway_bin())
        .args(["--listen", "127.0.0.1:0", "--store"])
        .arg(dir.path().join("data2"))
        .args([
            "--etcd",
            &etcd.endpoint(),
            "--etcd-ca",
            pki.ca().to_str().unwrap(),
        ])
        .args(["--etcd-cert", client_cert.to_str().unwrap()])
        .args(["--etcd-key", client_key.to_str().unwrap()])
        .args(["--etcd-user", "tessera"])
        .env("TESSERA_ETCD_PASSWORD", "wrong-password-123")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("wrong-password-123"), "{stderr}");
}

/// etcd's server certificate signed by a CA other than the one given with --etcd-ca (client
/// certificate and everything else right): the gateway refuses the connection. It never
/// becomes ready, claims no shard, and exits non-zero once `cluster.join_timeout` has passed,
/// saying that etcd's certificate failed verification.
#[tokio::test]
async fn etcd_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let etcd = tls_etcd(&pki);
    let (client_cert, client_key) = pki.issue("tessera");
    // Same subject name as etcd's CA, another key: only the signature check can tell them apart.
    let other = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[cluster]\njoin_timeout = \"1s\"\n").unwrap();
    let mut gw = GatewayOpts::new(Store::Dir(dir.path().join("data")))
        .arg("--config")
        .arg(path_str(&config))
        .arg("--cluster")
        .arg("wrong-ca")
        .arg("--etcd")
        .arg(etcd.endpoint())
        .arg("--etcd-ca")
        .arg(path_str(&other.ca()))
        .arg("--etcd-cert")
        .arg(path_str(&client_cert))
        .arg("--etcd-key")
        .arg(path_str(&client_key))
        .spawn(&dir.path().join("gw.log"), "127.0.0.1:0");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(line) = gw.printed_line(Duration::from_millis(100)) {
            panic!(
                "the gateway became ready on an etcd it should not trust: {line}\n{}",
                gw.log_tail()
            );
        }
        if let Some(status) = gw.exit_status() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 60s after start:\n{}",
            gw.log_tail()
        );
    };
    assert_eq!(status.code(), Some(1), "{}", gw.log_tail());
    let log = gw.log_text();
    let fatal = log
        .lines()
        .rfind(|l| l.starts_with("tessera-gateway: "))
        .unwrap_or_else(|| panic!("no error line on stderr:\n{log}"));
    assert!(fatal.contains("certificate"), "{fatal}");

    // Nothing under the cluster's prefix: no member, no claimed shard.
    let mut client = tls_etcd_client(&etcd, &pki, (&client_cert, &client_key)).await;
    let keys = client
        .get(
            "/tessera/wrong-ca/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<_> = keys.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert!(keys.is_empty(), "{keys:?}");
}

/// A PUT whose body trickles in gets 408 within body_timeout while other clients are served
/// normally; slow bodies that hold every in-flight slot make the next request get 503
/// overloaded with Retry-After at once.
#[tokio::test]
async fn slow_bodies_get_408_and_a_full_gateway_answers_overloaded_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayOpts::new(Store::Dir(dir.path().join("data")))
        .arg("--body-timeout")
        .arg("2s")
        .arg("--max-in-flight")
        .arg("4")
        .start(&dir.path().join("gw.log"));
    let addr = gw.url.trim_start_matches("http://").to_string();
    let http = common::client();

    // Trickling clients: a head promising 100 bytes, then a byte every 300 ms.
    let trickle = |addr: String| async move {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"PUT /v1/kv/slow HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let (mut answer, mut took) = (Vec::new(), None);
        let mut buf = [0u8; 1024];
        // Until the gateway closes the connection (408 closes it), or 8 s.
        while started.elapsed() < Duration::from_secs(8) {
            tokio::select! {
                n = s.read(&mut buf) => {
                    let n = n.unwrap_or(0);
                    if n == 0 { break; }
                    took.get_or_insert(started.elapsed());
                    answer.extend_from_slice(&buf[..n]);
                }
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    let _ = s.write_all(b"x").await;
                }
            }
        }
        let took = took.unwrap_or(started.elapsed());
        (took, String::from_utf8_lossy(&answer).to_string())
    };
    let slow: Vec<_> = (0..4)
        .map(|_| tokio::spawn(trickle(addr.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Every slot is held: the next request is refused at once.
    let started = Instant::now();
    let r = http.get(gw.kv("a")).send().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "overloaded");
    // Probes are not counted.
    assert_eq!(
        http.get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    for h in slow {
        let (took, answer) = h.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(4),
            "408 after {took:?}"
        );
    }

    // One slow client again, while a well-behaved client keeps being served.
    let slow = tokio::spawn(trickle(addr.clone()));
    let mut served = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let started = Instant::now();
        let r = http.put(gw.kv("fast")).body("v").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(1));
        served += 1;
    }
    assert!(served > 5, "{served}");
    let (_, answer) = slow.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The slow key was never written.
    assert_eq!(http.get(gw.kv("slow")).send().await.unwrap().status(), 404);
    let metrics = common::get_text(&http, format!("{}/metrics", gw.url)).await;
    assert!(
        common::metric(
            &metrics,
            "tessera_http_rejected_total{reason=\"request_timeout\"}"
        ) >= 5.0
    );
    assert!(
        common::metric(
            &metrics,
            "tessera_http_rejected_total{reason=\"overloaded\"}"
        ) >= 1.0
    );
}

/// A gateway on a non-loopback address without tokens exits 2 naming --insecure-no-auth;
/// tokens in cluster mode without a cluster secret exit 2 naming --cluster-secret.
#[test]
fn refuses_to_run_open_by_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(gateway_bin())
        .args(["--listen", "0.0.0.0:0", "--store"])
        .arg(dir.path().join("data"))
        .env_remove("TESSERA_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-no-auth"));

    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, &[]);
    let out = Command::new(gateway_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            "http://127.0.0.1:1",
            "--auth-tokens",
        ])
        .arg(&tokens)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster-secret"));
}
