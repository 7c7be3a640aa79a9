//! REST requests that connectors share (snapshots, symbol lists): one client, retries with
//! backoff for network errors and 5xx, and honour `Retry-After` on 429/418 so a resync storm
//! backs off as the exchange asks instead of earning an IP ban.

use std::time::Duration;

use reqwest::StatusCode;
use tracing::warn;

use crate::backoff::Backoff;
use crate::shutdown::Shutdown;

/// A REST call that takes longer than this is abandoned and retried.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts before a REST call is reported as failed to the connector.
pub const MAX_ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("GET {url}: HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("GET {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("GET {url}: stopped")]
    Stopped { url: String },
}

/// The shared client: rustls, gzip, timeouts, a user agent that names us.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("data-storage/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("HTTP client with rustls always builds")
}

/// GETs `url` and returns the body, retrying temporary failures.
pub async fn get_text(client: &reqwest::Client, url: &str, shutdown: &Shutdown) -> Result<String, HttpError> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut shutdown = shutdown.clone();
    loop {
        let (delay, err) = match client.get(url).send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    match resp.text().await {
                        Ok(body) => return Ok(body),
                        Err(e) => (backoff.next_delay(), HttpError::Network { url: url.into(), reason: e.to_string() }),
                    }
                } else {
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
                    let err = HttpError::Status { url: url.into(), status: status.as_u16(), body };
                    let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.as_u16() == 418 || status.is_server_error();
                    if !retryable {
                        return Err(err);
                    }
                    (retry_after.unwrap_or_else(|| backoff.next_delay()), err)
                }
            }
            Err(e) => (backoff.next_delay(), HttpError::Network { url: url.into(), reason: e.to_string() }),
        };
        if backoff.attempts() >= MAX_ATTEMPTS {
            return Err(err);
        }
        warn!(%err, retry_in_ms = delay.as_millis() as u64, "REST request failed; retrying");
        tokio::select! {
            _ = shutdown.wait() => return Err(HttpError::Stopped { url: url.into() }),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
