//! TLS to PostgreSQL: a server that accepts only TLS (`hostssl` in
//! `pg_hba.conf`), with a CA, server and client certificates the test makes,
//! reached with libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`.

use crate::support::*;
use bid_logger_tools::pgtemp::TempPostgres;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::PathBuf;
use std::time::Duration;

/// The role that logs in with a client certificate (`cert` authentication).
const CERT_USER: &str = "certuser";

/// A TLS-only server and the files a client needs.
struct TlsServer {
    pg: TempPostgres,
    dir: PathBuf,
}

impl TlsServer {
    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A URL of database `db` as `user` on `host` with `params`.
    fn url(&self, user: &str, host: &str, db: &str, params: &str) -> String {
        format!("postgresql://{user}@{host}:{}/{db}?{params}", self.pg.port())
    }
}

fn ca(name: &str) -> (KeyPair, rcgen::Certificate, CertificateParams) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    (key, cert, params)
}

/// A certificate for `names` (CN the first) signed by the CA.
fn leaf(names: &[&str], usage: ExtendedKeyUsagePurpose, issuer: &Issuer<'_, KeyPair>) -> (KeyPair, rcgen::Certificate) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).unwrap();
    (key, cert)
}

/// Starts a cluster, gives it a certificate for `localhost` only (so that
/// connecting to `127.0.0.1` with `verify-full` is a host-name mismatch),
/// and lets in only TLS connections: trust for every role but
/// [`CERT_USER`], who must present a client certificate.
async fn tls_only_server() -> TlsServer {
    let pg = tokio::task::spawn_blocking(TempPostgres::start).await.unwrap().expect("throwaway PostgreSQL");
    let dir = std::env::temp_dir().join(format!("bid-logger-tls-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_key, ca_cert, ca_params) = ca("bid-logger test CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let (server_key, server_cert) = leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth, &issuer);
    let (client_key, client_cert) = leaf(&[CERT_USER], ExtendedKeyUsagePurpose::ClientAuth, &issuer);
    let (_, other_ca, _) = ca("another CA");
    let admin = connect(&pg.url()).await;
    let data: String = admin.query_one("SHOW data_directory", &[]).await.unwrap().get(0);
    let data = PathBuf::from(data);
    write_server_file(&data, "server.crt", server_cert.pem().as_bytes(), 0o644);
    write_server_file(&data, "server.key", server_key.serialize_pem().as_bytes(), 0o600);
    write_server_file(&data, "root.crt", ca_cert.pem().as_bytes(), 0o644);
    for (name, pem) in [
        ("ca.pem", ca_cert.pem()),
        ("other-ca.pem", other_ca.pem()),
        ("client.crt", client_cert.pem()),
        ("client.key", client_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    admin.batch_execute(&format!("CREATE ROLE {CERT_USER} LOGIN SUPERUSER")).await.unwrap();
    write_server_file(
        &data,
        "pg_hba.conf",
        format!(
            "local all all trust\n\
             hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\n"
        )
        .as_bytes(),
        0o600,
    );
    // One statement each: ALTER SYSTEM refuses a multi-statement string
    // (an implicit transaction block).
    for sql in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl_ca_file = 'root.crt'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let server = TlsServer { pg, dir };
    // The reload is asynchronous: wait until a TLS connection gets in.
    let probe = server.url("postgres", "127.0.0.1", "postgres", "sslmode=require");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while bid_logger::db::connect(&probe).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the server never accepted TLS after the reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
}

/// Writes `name` into the server's data directory, owned by the server's
/// user (the owner of the directory) with permission bits `mode`.
fn write_server_file(data: &std::path::Path, name: &str, contents: &[u8], mode: u32) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let path = data.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let owner = std::fs::metadata(data).unwrap();
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Replaces the server's certificate with a self-signed X.509 version 1
/// certificate, as Citus makes for each node, reloads, and waits until the
/// server presents it.
async fn give_a_version_1_certificate(server: &TlsServer) {
    let dir = &server.dir;
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl, to make a version 1 certificate: scripts/setup installs it");
        assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    };
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "v1.key",
        "-subj",
        "/CN=localhost",
        "-out",
        "v1.csr",
    ]);
    // OpenSSL 3.2 and later make version 3 unless told `-x509v1`, which
    // earlier ones do not know; those make version 1 without extensions.
    let v1 = std::process::Command::new("openssl")
        .args(["req", "-x509", "-x509v1", "-in", "v1.csr", "-key", "v1.key", "-days", "2", "-out", "v1.crt"])
        .current_dir(dir)
        .output()
        .expect("openssl");
    if !v1.status.success() {
        run(&["x509", "-req", "-in", "v1.csr", "-signkey", "v1.key", "-days", "2", "-out", "v1.crt"]);
    }
    assert!(
        certificate_text(dir, &["x509", "-in", "v1.crt"]).contains("Version: 1 (0x0)"),
        "not a version 1 certificate"
    );
    let admin = connect(&server.pg.url()).await;
    let data: String = admin.query_one("SHOW data_directory", &[]).await.unwrap().get(0);
    let data = PathBuf::from(data);
    write_server_file(&data, "server.crt", &std::fs::read(dir.join("v1.crt")).unwrap(), 0o644);
    write_server_file(&data, "server.key", &std::fs::read(dir.join("v1.key")).unwrap(), 0o600);
    admin.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    // The reload is asynchronous: wait until the server presents it.
    let connect = format!("127.0.0.1:{}", server.pg.port());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !certificate_text(dir, &["s_client", "-starttls", "postgres", "-connect", &connect])
        .contains("Version: 1 (0x0)")
    {
        assert!(std::time::Instant::now() < deadline, "the server never presented the version 1 certificate");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The text of the certificate `openssl <args>` prints (a file's, or the
/// one a server presents), as `openssl x509 -noout -text` shows it.
fn certificate_text(dir: &std::path::Path, args: &[&str]) -> String {
    use std::io::Write;
    let pem = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let mut text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl");
    text.stdin.take().unwrap().write_all(&pem.stdout).unwrap();
    String::from_utf8_lossy(&text.wait_with_output().unwrap().stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_certificate_is_accepted_by_require_and_prefer_as_libpq_does() {
    let server = tls_only_server().await;
    give_a_version_1_certificate(&server).await;
    // Served (checked above): each mode gets in at its first attempt.
    for params in ["sslmode=require", "sslmode=prefer", ""] {
        let url = server.url("postgres", "127.0.0.1", "postgres", params);
        let out = bid_logger(&["migrate", "--database-url", &url]);
        assert!(out.status.success(), "{params:?}: {}", stderr(&out));
    }
    // verify-ca checks the chain, with webpki, which takes version 3
    // certificates only: it refuses this one before its issuer is looked at.
    let url = server.url(
        "postgres",
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-ca&sslrootcert={}", server.file("ca.pem")),
    );
    let out = bid_logger(&["migrate", "--database-url", &url]);
    assert!(!out.status.success(), "verify-ca took a certificate of no trusted CA");
    assert!(stderr(&out).contains("not accepted"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_server_is_reached_with_require_and_refuses_plain_connections() {
    let server = tls_only_server().await;
    let plain =
        bid_logger(&["migrate", "--database-url", &server.url("postgres", "127.0.0.1", "postgres", "sslmode=disable")]);
    assert!(!plain.status.success());
    assert!(stderr(&plain).contains("no encryption"), "{}", stderr(&plain));
    let tls =
        bid_logger(&["migrate", "--database-url", &server.url("postgres", "127.0.0.1", "postgres", "sslmode=require")]);
    assert!(tls.status.success(), "{}", stderr(&tls));
    // The key=value form, as psql users write it, reaches it too.
    let dsn = format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require", server.pg.port());
    let tls = bid_logger(&["migrate", "--database-url", &dsn]);
    assert!(tls.status.success(), "{}", stderr(&tls));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_servers_ca_writes_exact_totals() {
    let server = tls_only_server().await;
    let params = format!("sslmode=verify-full&sslrootcert={}", server.file("ca.pem"));
    let created = create_database_on(&server.url("postgres", "127.0.0.1", "postgres", "sslmode=require"), "tls").await;
    let name = created.parse::<tokio_postgres::Config>().unwrap().get_dbname().unwrap().to_string();
    let url = server.url("postgres", "localhost", &name, &params);
    let mut publisher = Publisher::bind();
    let logger = Logger::start(&url, &["--connect", &publisher.endpoint]);
    publisher.wait_for_subscriptions(all_topics(P));
    let now = now_ms();
    let events: Vec<TestEvent> = (0..2000)
        .map(|i| {
            let mut e = TestEvent::new(
                ["bid", "win", "impression", "click"][i % 4],
                format!("t{}", i / 4),
                now - i as i64 * 50,
            );
            e.country = Some(["BR", "US", "DE"][i % 3].to_string());
            e
        })
        .collect();
    for e in &events {
        publisher.publish(e, P);
    }
    logger.wait_metric("bid_logger_messages_received_total", events.len() as f64, Duration::from_secs(30));
    let stderr = logger.stop_ok();
    let client = connect(&url).await;
    assert_warehouse_matches(&client, &events, 1_000_000).await;
    let ssl: bool =
        client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(ssl, "the test's own connection is not TLS\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_wrong_ca_a_wrong_host_name_and_a_server_without_tls_naming_the_cause() {
    let server = tls_only_server().await;
    let cases = [
        (
            server.url(
                "postgres",
                "localhost",
                "postgres",
                &format!("sslmode=verify-full&sslrootcert={}", server.file("other-ca.pem")),
            ),
            "unknown CA",
        ),
        (
            server.url(
                "postgres",
                "127.0.0.1",
                "postgres",
                &format!("sslmode=verify-full&sslrootcert={}", server.file("ca.pem")),
            ),
            "does not name the host",
        ),
        (fresh_database("tls_none").await + "?sslmode=require", "server does not support TLS"),
    ];
    for (url, cause) in cases {
        let out = bid_logger(&["migrate", "--database-url", &url]);
        assert!(!out.status.success(), "{url} was accepted");
        let text = stderr(&out);
        assert!(text.contains(cause), "{url}: expected `{cause}` in:\n{text}");
        assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    }
    // verify-ca checks the chain, not the name: 127.0.0.1 is fine there.
    let ca = server.url(
        "postgres",
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-ca&sslrootcert={}", server.file("ca.pem")),
    );
    let out = bid_logger(&["migrate", "--database-url", &ca]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A missing CA file fails at start, naming the key.
    let missing =
        server.url("postgres", "localhost", "postgres", "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
    let out = bid_logger(&["check-config", "--connect", "tcp://127.0.0.1:5556", "--database-url", &missing]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("sslrootcert"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_accepted_by_cert_authentication() {
    let server = tls_only_server().await;
    let root = format!("sslmode=verify-full&sslrootcert={}", server.file("ca.pem"));
    let without = bid_logger(&["migrate", "--database-url", &server.url(CERT_USER, "localhost", "postgres", &root)]);
    assert!(!without.status.success(), "accepted without a client certificate");
    assert!(stderr(&without).contains("certificate"), "{}", stderr(&without));
    let with = format!("{root}&sslcert={}&sslkey={}", server.file("client.crt"), server.file("client.key"));
    let out = bid_logger(&["migrate", "--database-url", &server.url(CERT_USER, "localhost", "postgres", &with)]);
    assert!(out.status.success(), "{}", stderr(&out));
}
