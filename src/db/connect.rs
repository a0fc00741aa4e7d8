//! Connection strings as a `psql` user writes them, and the pool.
//!
//! A URL (`postgresql://user@host:port,host2:port2/db?sslmode=verify-full&sslrootcert=/ca.pem`)
//! or a key=value string (`host=… dbname=… sslmode=require`). The TLS keys
//! (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) are taken out here, with
//! `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY` as their
//! defaults, as libpq reads them; everything else is tokio-postgres's
//! (multiple hosts, `target_session_attrs`, `connect_timeout`, …).

use std::path::PathBuf;
use std::time::Duration;

use super::tls::{SslMode, TlsSettings};
use super::DbError;

/// The TLS keys, in the order libpq documents them.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// A parsed connection string.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// Everything but TLS, with `sslmode` set to what tokio-postgres
    /// should negotiate.
    pub pg: tokio_postgres::Config,
    /// The TLS settings.
    pub tls: TlsSettings,
}

impl ConnectConfig {
    /// Parses `url`: a PostgreSQL URL or key=value string.
    pub fn parse(url: &str) -> Result<ConnectConfig, DbError> {
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let (rest, taken) = if is_url { split_url(url) } else { split_key_values(url)? };
        let mut tls = TlsSettings::default();
        for key in TLS_KEYS {
            let value = taken
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(format!("PG{}", key.to_uppercase())).ok().filter(|v| !v.is_empty()));
            let Some(value) = value else { continue };
            match key {
                "sslmode" => {
                    tls.mode = SslMode::parse(&value).ok_or_else(|| {
                        DbError::Url(format!(
                            "invalid sslmode `{value}`: one of disable, allow, prefer, require, verify-ca, verify-full"
                        ))
                    })?;
                    tls.mode_given = true;
                }
                "sslrootcert" => tls.root_cert = Some(value),
                "sslcert" => tls.cert = Some(PathBuf::from(value)),
                _ => tls.key = Some(PathBuf::from(value)),
            }
        }
        let mut pg: tokio_postgres::Config = rest.parse().map_err(|e| DbError::Url(super::cause_of(&e)))?;
        pg.ssl_mode(tls.effective_mode().negotiation());
        Ok(ConnectConfig { pg, tls })
    }

    /// The TLS connector these settings ask for (every file read now).
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DbError> {
        let config = self.tls.client_config().map_err(|e| DbError::Tls(e.to_string()))?;
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }

    /// The settings every connection of the logger gets unless the string
    /// says otherwise: `application_name = bid-logger` (so operators can
    /// find them), a 5 s connect timeout, keepalives, and only warnings
    /// and worse as notices.
    fn with_defaults(mut self) -> ConnectConfig {
        let pg = &mut self.pg;
        if pg.get_application_name().is_none() {
            pg.application_name("bid-logger");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(5));
        }
        // Notices such as "relation already exists, skipping" are noise here.
        if pg.get_options().is_none() {
            pg.options("-c client_min_messages=warning");
        }
        pg.keepalives(true).keepalives_idle(Duration::from_secs(30));
        self
    }
}

/// What `url` connects to, for logs and `check-config`: re-rendered from
/// the parsed string (user, hosts, ports, database, TLS keys), so that no
/// part of a password is ever printed, whatever its characters or quoting.
/// A string that does not parse is not shown at all.
pub fn describe(url: &str) -> String {
    let Ok(c) = ConnectConfig::parse(url) else {
        return "(a connection string that does not parse)".into();
    };
    let pg = &c.pg;
    let user = pg.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let mut out = format!("postgres://{user}{}/{}", hosts.join(","), pg.get_dbname().unwrap_or(""));
    let mut keys = Vec::new();
    if c.tls.mode_given {
        keys.push(format!("sslmode={}", c.tls.mode.as_str()));
    }
    if let Some(root) = &c.tls.root_cert {
        keys.push(format!("sslrootcert={root}"));
    }
    if let Some(cert) = &c.tls.cert {
        keys.push(format!("sslcert={}", cert.display()));
    }
    if let Some(key) = &c.tls.key {
        keys.push(format!("sslkey={}", key.display()));
    }
    if !keys.is_empty() {
        out.push('?');
        out.push_str(&keys.join("&"));
    }
    out
}

/// Checks a connection string and its TLS files, as at start.
pub fn validate(url: &str) -> Result<(), DbError> {
    ConnectConfig::parse(url)?.connector().map(drop)
}

/// Builds a connection pool for `url`.
pub fn pool(url: &str, size: usize) -> Result<deadpool_postgres::Pool, DbError> {
    let config = ConnectConfig::parse(url)?.with_defaults();
    let tls = config.connector()?;
    let manager = deadpool_postgres::Manager::from_config(
        config.pg,
        tls,
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    Ok(deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()?)
}

/// One connection outside a pool (the tools, tests), its connection task
/// spawned on the current runtime.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, DbError> {
    let config = ConnectConfig::parse(url)?.with_defaults();
    let tls = config.connector()?;
    let (client, connection) = config.pg.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %super::cause_of(&e), "connection ended");
        }
    });
    Ok(client)
}

/// A URL without its TLS query parameters, and those parameters
/// (percent-decoded).
fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    // The query starts at the first `?` after the user info (a password
    // may hold a raw `?`, as libpq accepts): after the last `@`, if any.
    let after = url.rfind('@').map_or(0, |at| at + 1);
    let Some(q) = url[after..].find('?').map(|i| after + i) else { return (url.to_string(), Vec::new()) };
    let (base, query) = (&url[..q], &url[q + 1..]);
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        let key = percent_decode(k);
        if TLS_KEYS.contains(&key.as_str()) {
            taken.push((key, percent_decode(v)));
        } else {
            kept.push(param);
        }
    }
    let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (rest, taken)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A key=value string without its TLS keys, and those keys' values.
/// Values follow libpq's rules: single quotes, and backslash escaping
/// `\'` and `\\`; the rest is rebuilt quoted.
fn split_key_values(s: &str) -> Result<(String, Vec<(String, String)>), DbError> {
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(DbError::Url(format!("missing `=` after `{key}` in the connection string")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(DbError::Url(format!("unterminated quoted value of `{key}`"))),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if TLS_KEYS.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")));
        }
    }
    Ok((kept.join(" "), taken))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::Host;

    #[test]
    fn a_url_keeps_its_other_parameters_and_gives_up_the_tls_ones() {
        let c = ConnectConfig::parse(
            "postgresql://u:p%3Fw@h1:5433,h2:5434/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(c.tls.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(c.pg.get_ports(), [5433, 5434]);
        assert_eq!(c.pg.get_hosts(), [Host::Tcp("h1".into()), Host::Tcp("h2".into())]);
        assert_eq!(c.pg.get_password(), Some(&b"p?w"[..]));
        assert_eq!(c.pg.get_target_session_attrs(), tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        assert_eq!(c.pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    }

    #[test]
    fn require_is_never_downgraded_by_a_question_mark_or_a_scheme_in_a_value() {
        let c = ConnectConfig::parse("postgresql://u:pa?ss@h/db?sslmode=require").unwrap();
        assert_eq!(c.tls.mode, SslMode::Require);
        assert_eq!(c.pg.get_password(), Some(&b"pa?ss"[..]));
        assert_eq!(c.pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let c = ConnectConfig::parse("host=h password='a://b' sslmode=require").unwrap();
        assert_eq!(c.pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(c.pg.get_password(), Some(&b"a://b"[..]));
    }

    #[test]
    fn a_key_value_string_keeps_quoted_values_whole() {
        let c = ConnectConfig::parse(
            r"host=localhost password='hunter 2\'s' dbname = warehouse sslmode=verify-ca sslcert='/a b/c.pem' sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!(c.pg.get_password(), Some(&b"hunter 2's"[..]));
        assert_eq!(c.pg.get_dbname(), Some("warehouse"));
        assert_eq!(c.tls.mode, SslMode::VerifyCa);
        assert_eq!(c.tls.cert, Some(PathBuf::from("/a b/c.pem")));
        assert_eq!(c.tls.key, Some(PathBuf::from("/k.pem")));
    }

    #[test]
    fn every_libpq_sslmode_is_accepted_and_others_are_named() {
        for mode in ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] {
            let c = ConnectConfig::parse(&format!("postgres://h/db?sslmode={mode}")).unwrap();
            assert_eq!(c.tls.mode.as_str(), mode);
        }
        let e = ConnectConfig::parse("postgres://h/db?sslmode=verify").unwrap_err().to_string();
        assert!(e.contains("invalid sslmode `verify`"), "{e}");
    }

    #[test]
    fn verification_without_a_root_or_a_weak_mode_with_the_system_store_fails_naming_the_key() {
        // HOME pointing nowhere: libpq's default root file does not exist.
        let c = ConnectConfig::parse("postgres://h/db?sslmode=verify-full").unwrap();
        if c.tls.roots() == super::super::tls::Roots::None {
            let e = c.connector().err().expect("refused").to_string();
            assert!(e.contains("`sslrootcert`"), "{e}");
        }
        let c = ConnectConfig::parse("postgres://h/db?sslmode=require&sslrootcert=system").unwrap();
        let e = c.connector().err().expect("refused").to_string();
        assert!(e.contains("`sslmode`") && e.contains("verify-full"), "{e}");
        let c = ConnectConfig::parse("postgres://h/db?sslrootcert=/nonexistent/ca.pem").unwrap();
        let e = c.connector().err().expect("refused").to_string();
        assert!(e.contains("`sslrootcert`") && e.contains("/nonexistent/ca.pem"), "{e}");
        let c = ConnectConfig::parse("postgres://h/db?sslcert=/c.pem").unwrap();
        let e = c.connector().err().expect("refused").to_string();
        assert!(e.contains("`sslkey`"), "{e}");
    }
}
