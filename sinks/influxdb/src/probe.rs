//! `data-storage check --online` for the `influxdb` sink, without storing anything:
//!
//! 1. `GET /ping` (1.x and 2.x answer 204): the server is there, and which version it is;
//! 2. a write of zero lines to the configured write URL, with the configured credentials: the
//!    server runs every check of a real write (database or org/bucket exists, retention policy
//!    exists, credentials valid and allowed to write) and stores nothing. InfluxDB 1.x answers
//!    204, or 404 `database not found`, 500 `retention policy not found`, 401/403.
//!
//! One request each, no retries (the plain client, not the sink's retrying one): a check
//! answers at once and names what is wrong.

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;

use ds_api::OnlineCheck;

use crate::config::Auth;
use crate::sink::error_chain;
use crate::write::Writer;

/// Longest server body quoted in a problem.
const MAX_BODY: usize = 200;

/// Runs both probes.
pub async fn probe(w: &Writer) -> OnlineCheck {
    let ping = ping_url(&w.url);
    let checked = format!("ping and an empty write to {}", w.url);
    let version = match w.plain.get(ping.clone()).send().await {
        Ok(r) if r.status().is_success() => {
            r.headers().get("X-Influxdb-Version").and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_else(|| "unknown".into())
        }
        Ok(r) => return OnlineCheck::failed(checked, format!("GET {ping}: HTTP {} (not an InfluxDB /ping?)", r.status().as_u16())),
        Err(e) => return OnlineCheck::failed(checked, format!("cannot reach {ping}: {}", error_chain(&e))),
    };
    let mut req = w.plain.post(w.url.clone()).header(CONTENT_TYPE, "text/plain; charset=utf-8");
    if let Auth::Basic { username, password } = &w.auth {
        req = req.basic_auth(username, Some(password.expose()));
    }
    if let Some(token) = &w.token_header {
        req = req.header(AUTHORIZATION, token.clone());
    }
    match req.body(Vec::new()).send().await {
        Ok(r) if r.status().is_success() => OnlineCheck::Done { checked: format!("InfluxDB {version} accepts writes at {}", w.url), problems: vec![] },
        Ok(r) => {
            let status = r.status().as_u16();
            let body: String = r.text().await.unwrap_or_default().trim().chars().take(MAX_BODY).collect();
            let why = match status {
                401 | 403 => "credentials refused (username/password or token)",
                404 => "database or bucket not found",
                _ => "write refused",
            };
            OnlineCheck::failed(checked, format!("POST {}: {why}: HTTP {status}: {body}", w.url))
        }
        Err(e) => OnlineCheck::failed(checked, format!("POST {}: {}", w.url, error_chain(&e))),
    }
}

/// `/ping` next to the write endpoint (`.../write` or `.../api/v2/write`), keeping any path
/// prefix of the base URL (InfluxDB behind a reverse proxy).
pub fn ping_url(write_url: &Url) -> Url {
    let mut u = write_url.clone();
    u.set_query(None);
    let path = u.path().to_string();
    let base = path.strip_suffix("api/v2/write").or_else(|| path.strip_suffix("write")).unwrap_or("/");
    u.set_path(&format!("{base}ping"));
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InfluxConfig;
    use crate::test_server::{Reply, ScriptedServer};
    use ds_api::SinkSpec;

    fn writer(options: String) -> Writer {
        let spec = SinkSpec { name: "influx".into(), options: options.parse().unwrap() };
        Writer::new(&InfluxConfig::from_spec(&spec).unwrap()).unwrap()
    }

    fn problems(c: OnlineCheck) -> Vec<String> {
        match c {
            OnlineCheck::Done { problems, .. } => problems,
            OnlineCheck::NotSupported => panic!("influxdb has a check"),
        }
    }

    #[tokio::test]
    async fn v2_sends_the_token_with_an_empty_body_and_names_a_refused_one_without_retrying() {
        let server = ScriptedServer::start([Reply::status(204).header("X-Influxdb-Version", "v2.7.1"), Reply::body(401, r#"{"code":"unauthorized"}"#)]).await;
        let w = writer(format!("url = '{}'\napi = 'v2'\norg = 'o'\nbucket = 'b'\ntoken = 'secret'\nmax_retries = 5", server.url()));
        let p = problems(probe(&w).await);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("credentials refused") && p[0].contains("HTTP 401"), "{p:?}");
        assert!(!p[0].contains("secret"), "the token is never printed: {p:?}");
        let r = server.requests();
        assert_eq!(r.len(), 2, "ping and one write, no retry");
        assert_eq!((r[0].method.as_str(), r[0].target.as_str()), ("GET", "/ping"));
        assert_eq!(r[1].method, "POST");
        assert!(r[1].target.starts_with("/api/v2/write?"), "{}", r[1].target);
        assert_eq!(r[1].header("authorization"), Some("Token secret"));
        assert!(r[1].body.is_empty(), "nothing is written");
    }

    #[tokio::test]
    async fn a_server_that_is_not_influxdb_fails_at_the_ping() {
        let server = ScriptedServer::start([Reply::status(404)]).await;
        let w = writer(format!("url = '{}'\ndatabase = 'm'", server.url()));
        let p = problems(probe(&w).await);
        assert!(p[0].contains("/ping: HTTP 404"), "{p:?}");
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn ping_sits_next_to_the_write_endpoint() {
        let p = |s: &str| ping_url(&Url::parse(s).unwrap()).to_string();
        assert_eq!(p("http://h:8086/write?db=m&precision=ns"), "http://h:8086/ping");
        assert_eq!(p("https://h/influx/api/v2/write?org=o&bucket=b"), "https://h/influx/ping");
    }
}
