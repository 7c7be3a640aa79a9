//! The `[[sink]] plugin = "influxdb"` options, and their validation.
//!
//! `build` must be able to run offline (`data-storage check`), so everything that can be known
//! without a server is checked here, and every problem is reported at once (contract 7): an
//! operator fixing exchanges.toml should not have to run the check once per mistake.

use std::path::PathBuf;
use std::time::Duration;

use ds_api::{ConfigError, Secret, SinkSpec};
use reqwest::Url;
use serde::Deserialize;

use crate::retry::RetrySettings;

/// The options as written in exchanges.toml. Every field has a default, so a missing key is
/// never a parse error; what is required depends on `api` and is checked in [`InfluxConfig::from_spec`].
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Options {
    /// Base URL of the server; a path prefix (reverse proxy) is kept.
    pub url: String,
    /// `"v1"` (InfluxDB 1.x `/write`) or `"v2"` (InfluxDB 2.x/3.x/Cloud `/api/v2/write`).
    pub api: String,
    /// v1: the database (required).
    pub database: Option<String>,
    /// v1: the retention policy; the database's default when absent.
    pub retention_policy: Option<String>,
    /// v1: user name, sent with `password` as HTTP basic auth (never as `u=`/`p=` query
    /// parameters, which end up in access logs and error messages).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// v2: organisation, bucket and API token (all required).
    pub org: Option<String>,
    pub bucket: Option<String>,
    pub token: Option<Secret>,
    /// Compress request bodies: line protocol shrinks ~10x, and over a network the CPU is
    /// cheaper than the link. Unset: on, except for an InfluxDB on a loopback address, where
    /// no link is saved and compressing cost a fifth of data-storage's CPU and InfluxDB's
    /// gunzip besides (issue 8).
    pub gzip: Option<bool>,
    /// Per-request timeout, connect included.
    pub timeout_secs: u64,
    /// Retries of one write call (429/5xx/network) before the batch goes back to the buffer.
    pub max_retries: u32,
    /// Where refused lines are written.
    pub quarantine_dir: PathBuf,
}

pub const DEFAULT_URL: &str = "http://127.0.0.1:8086";
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_MAX_RETRIES: u32 = 5;
pub const DEFAULT_QUARANTINE_DIR: &str = "data/quarantine";

impl Default for Options {
    fn default() -> Self {
        Options {
            url: DEFAULT_URL.into(),
            api: "v1".into(),
            database: None,
            retention_policy: None,
            username: None,
            password: None,
            org: None,
            bucket: None,
            token: None,
            gzip: None,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            max_retries: DEFAULT_MAX_RETRIES,
            quarantine_dir: PathBuf::from(DEFAULT_QUARANTINE_DIR),
        }
    }
}

/// How requests authenticate.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// v1 user/password, as `Authorization: Basic`.
    Basic { username: String, password: Secret },
    /// v2 API token, as `Authorization: Token <token>`.
    Token(Secret),
}

/// The validated configuration the sink runs with.
#[derive(Debug, Clone)]
pub struct InfluxConfig {
    /// The sink's name in exchanges.toml (log field, quarantine file prefix).
    pub name: String,
    /// The full write URL, query included (`db`, `rp`, `org`, `bucket`, `precision=ns`). It
    /// never holds a secret, so it may be logged.
    pub write_url: Url,
    pub auth: Auth,
    pub gzip: bool,
    pub timeout: Duration,
    pub quarantine_dir: PathBuf,
    pub retry: RetrySettings,
}

impl InfluxConfig {
    /// Parses and validates a `[[sink]]` table, reporting every problem at once.
    pub fn from_spec(spec: &SinkSpec) -> Result<Self, Vec<ConfigError>> {
        let scope = spec.scope();
        let (opts, mut errors) = ds_api::config::parse_options_lenient::<Options>(&scope, &spec.options);
        let Some(o) = opts else { return Err(errors) };
        let already: Vec<String> = errors.iter().map(|e| e.key.clone()).collect();
        let mut err = |key: &str, msg: String| {
            // A key that failed to parse was dropped and now reads as missing: already reported.
            if !already.iter().any(|k| k == key) {
                errors.push(ConfigError::new(scope.clone(), key, msg));
            }
        };

        let base = match Url::parse(&o.url) {
            Ok(u) => {
                if u.scheme() != "http" && u.scheme() != "https" {
                    err("url", format!("scheme must be http or https, found \"{}\"", u.scheme()));
                } else if u.host_str().is_none_or(str::is_empty) {
                    err("url", "has no host".into());
                } else if !u.username().is_empty() || u.password().is_some() {
                    // Credentials in the URL would be printed wherever the URL is.
                    err("url", "must not contain credentials; use `username`/`password` (v1) or `token` (v2)".into());
                } else if u.query().is_some() || u.fragment().is_some() {
                    err("url", "must not have a query or fragment; the sink adds its own".into());
                }
                Some(u)
            }
            Err(e) => {
                // The text is not echoed: a malformed URL may still carry credentials.
                err("url", format!("not a valid URL: {e}"));
                None
            }
        };

        let blank = |v: &Option<String>| v.as_deref().map(str::trim).is_none_or(str::is_empty);
        let mut auth = Auth::None;
        let mut query: Vec<(&str, String)> = Vec::new();
        let mut path = "";
        match o.api.as_str() {
            "v1" => {
                path = "write";
                for (key, set) in [("org", o.org.is_some()), ("bucket", o.bucket.is_some()), ("token", o.token.is_some())] {
                    if set {
                        err(key, "only used with api = \"v2\"".into());
                    }
                }
                match &o.database {
                    _ if blank(&o.database) => err("database", "required with api = \"v1\"".into()),
                    Some(db) => query.push(("db", db.clone())),
                    None => {}
                }
                if let Some(rp) = &o.retention_policy {
                    if rp.trim().is_empty() {
                        err("retention_policy", "must not be empty (leave it out for the database's default)".into());
                    } else {
                        query.push(("rp", rp.clone()));
                    }
                }
                match (&o.username, &o.password) {
                    (Some(u), Some(p)) if !u.is_empty() => auth = Auth::Basic { username: u.clone(), password: p.clone() },
                    (Some(_), Some(_)) => err("username", "must not be empty".into()),
                    (Some(_), None) => err("password", "required when `username` is set".into()),
                    (None, Some(_)) => err("username", "required when `password` is set".into()),
                    (None, None) => {}
                }
            }
            "v2" => {
                path = "api/v2/write";
                for (key, set) in [
                    ("database", o.database.is_some()),
                    ("retention_policy", o.retention_policy.is_some()),
                    ("username", o.username.is_some()),
                    ("password", o.password.is_some()),
                ] {
                    if set {
                        err(key, "only used with api = \"v1\"".into());
                    }
                }
                for (key, v) in [("org", &o.org), ("bucket", &o.bucket)] {
                    match v {
                        _ if blank(v) => err(key, "required with api = \"v2\"".into()),
                        Some(v) => query.push((key, v.clone())),
                        None => {}
                    }
                }
                match &o.token {
                    Some(t) if t.expose().trim().is_empty() => err("token", "required with api = \"v2\"".into()),
                    // Checked here so a bad token fails `check`, not every write; not echoed.
                    Some(t) if reqwest::header::HeaderValue::from_str(t.expose()).is_err() => {
                        err("token", "contains characters not allowed in an HTTP header".into())
                    }
                    Some(t) => auth = Auth::Token(t.clone()),
                    None => err("token", "required with api = \"v2\"".into()),
                }
            }
            other => err("api", format!("must be \"v1\" or \"v2\", found \"{other}\"")),
        }
        query.push(("precision", "ns".into()));

        if o.timeout_secs == 0 {
            err("timeout_secs", "must be at least 1".into());
        }
        if o.quarantine_dir.as_os_str().is_empty() {
            err("quarantine_dir", "must not be empty".into());
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        let mut write_url = base.expect("a URL error was reported above");
        let prefix = write_url.path().trim_end_matches('/').to_string();
        write_url.set_path(&format!("{prefix}/{path}"));
        write_url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        let gzip = o.gzip.unwrap_or_else(|| !is_loopback(&write_url));
        Ok(InfluxConfig {
            name: spec.name.clone(),
            write_url,
            auth,
            gzip,
            timeout: Duration::from_secs(o.timeout_secs),
            quarantine_dir: o.quarantine_dir,
            retry: RetrySettings { max_retries: o.max_retries, ..RetrySettings::default() },
        })
    }
}

/// `127.0.0.0/8`, `::1` or `localhost`: a URL whose requests never leave the machine.
fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    // An IPv6 host comes bracketed (`[::1]`).
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml: &str) -> SinkSpec {
        SinkSpec { name: "influx".into(), options: toml.parse().unwrap() }
    }

    fn errors(toml: &str) -> Vec<(String, String)> {
        let errs = InfluxConfig::from_spec(&spec(toml)).unwrap_err();
        assert!(errs.iter().all(|e| e.scope == "sink \"influx\""), "{errs:?}");
        let mut v: Vec<_> = errs.into_iter().map(|e| (e.key, e.message)).collect();
        v.sort();
        v
    }

    #[test]
    fn v1_defaults() {
        let c = InfluxConfig::from_spec(&spec("database = 'market'")).unwrap();
        assert_eq!(c.write_url.as_str(), "http://127.0.0.1:8086/write?db=market&precision=ns");
        assert!(matches!(c.auth, Auth::None));
        assert!(!c.gzip, "no gzip by default on loopback");
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.retry.max_retries, 5);
        assert_eq!(c.quarantine_dir, PathBuf::from("data/quarantine"));
    }

    #[test]
    fn v1_with_rp_credentials_and_path_prefix() {
        let c = InfluxConfig::from_spec(&spec(
            "url = 'https://db.example:8443/influx/'\ndatabase = 'a b'\nretention_policy = 'week'\nusername = 'u'\npassword = 'hunter2'\ngzip = false",
        ))
        .unwrap();
        assert_eq!(c.write_url.as_str(), "https://db.example:8443/influx/write?db=a+b&rp=week&precision=ns");
        assert!(matches!(&c.auth, Auth::Basic { username, password } if username == "u" && password.expose() == "hunter2"));
        assert!(!c.gzip);
        assert!(!format!("{c:?}").contains("hunter2"), "the password must not print");
    }

    #[test]
    fn gzip_defaults_to_on_except_on_loopback() {
        let gzip = |toml: &str| InfluxConfig::from_spec(&spec(&format!("database = 'm'\n{toml}"))).unwrap().gzip;
        assert!(gzip("url = 'https://db.example:8086'"));
        assert!(gzip("url = 'http://10.0.0.5:8086'"));
        assert!(!gzip("url = 'http://127.0.0.2:8086'"));
        assert!(!gzip("url = 'http://[::1]:8086'"));
        assert!(!gzip("url = 'http://LOCALHOST:8086'"));
        assert!(gzip("url = 'http://127.0.0.1:8086'\ngzip = true"), "an explicit setting wins");
        assert!(!gzip("url = 'https://db.example'\ngzip = false"));
    }

    #[test]
    fn v2_url_and_token() {
        let c = InfluxConfig::from_spec(&spec("api = 'v2'\nurl = 'http://h:8086'\norg = 'o'\nbucket = 'b'\ntoken = 's3cret'")).unwrap();
        assert_eq!(c.write_url.as_str(), "http://h:8086/api/v2/write?org=o&bucket=b&precision=ns");
        assert!(matches!(&c.auth, Auth::Token(t) if t.expose() == "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        // Unknown key, bad api value and (because api is bad) nothing else about the api.
        let e = errors("api = 'v3'\ncolour = 'red'\ntimeout_secs = 0");
        let keys: Vec<_> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["api", "colour", "timeout_secs"], "{e:?}");
        assert!(e[0].1.contains("\"v1\" or \"v2\""), "{e:?}");
        assert_eq!(e[1].1, "unknown key");

        // Unknown key, badly typed key and a missing database for v1, in one run.
        let e = errors("databse = 'typo'\ngzip = 'yes'\nurl = 'ftp://x'");
        let keys: Vec<_> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["database", "databse", "gzip", "url"], "{e:?}");
        assert!(e[0].1.contains("required"), "{e:?}");
        assert!(e[3].1.contains("http or https"), "{e:?}");
    }

    #[test]
    fn v2_requires_org_bucket_token_and_refuses_v1_keys() {
        let e = errors("api = 'v2'\ndatabase = 'x'\nbucket = ''");
        let keys: Vec<_> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["bucket", "database", "org", "token"], "{e:?}");
        let e = errors("api = 'v2'\norg = 'o'\nbucket = 'b'\ntoken = \"line\\nbreak\"");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "token");
        assert!(!e[0].1.contains("break"), "the token is not echoed: {e:?}");
    }

    #[test]
    fn credentials_come_in_pairs_and_never_in_the_url() {
        let e = errors("database = 'd'\nusername = 'u'\nurl = 'http://u:p@h:8086'");
        let keys: Vec<_> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["password", "url"], "{e:?}");
        assert!(!format!("{e:?}").contains("u:p@"), "the URL with credentials must not be echoed: {e:?}");
        let e = errors("database = 'd'\nurl = 'not a url'");
        assert_eq!(e[0].0, "url");
    }
}
