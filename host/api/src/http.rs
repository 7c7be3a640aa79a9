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

/// What a connector's REST budget does around each attempt of [`get_text_paced`].
#[async_trait::async_trait]
pub trait Pacer: Send + Sync {
    /// Before every attempt, retries included (each one costs the exchange's rate limit):
    /// wait for room in the budget.
    async fn before_attempt(&self);
    /// The server answered 429/418 with `Retry-After`: no request to that server should go
    /// out before it passes, whichever task sends it.
    fn throttled(&self, retry_after: Duration);
}

/// No budget: attempts go out as the retry loop decides.
struct Unpaced;

#[async_trait::async_trait]
impl Pacer for Unpaced {
    async fn before_attempt(&self) {}
    fn throttled(&self, _retry_after: Duration) {}
}

/// GETs `url` and returns the body, retrying temporary failures.
pub async fn get_text(client: &reqwest::Client, url: &str, shutdown: &Shutdown) -> Result<String, HttpError> {
    get_text_paced(client, url, shutdown, &Unpaced).await
}

/// [`get_text`] within a request budget: `pacer` is awaited before every attempt and told of
/// every `Retry-After`, so a budget shared by several feeds holds all of them back after a
/// 429/418, not only the request that got it.
pub async fn get_text_paced(client: &reqwest::Client, url: &str, shutdown: &Shutdown, pacer: &dyn Pacer) -> Result<String, HttpError> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut shutdown = shutdown.clone();
    // Counted here, not by the backoff: a delay taken from `Retry-After` does not advance the
    // backoff, and a server answering 429 forever must still end in an error.
    let mut attempts = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Err(HttpError::Stopped { url: url.into() }),
            _ = pacer.before_attempt() => {}
        }
        attempts += 1;
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
                    let throttled = status == StatusCode::TOO_MANY_REQUESTS || status.as_u16() == 418;
                    if !(throttled || status.is_server_error()) {
                        return Err(err);
                    }
                    if let (true, Some(wait)) = (throttled, retry_after) {
                        pacer.throttled(wait);
                    }
                    (retry_after.unwrap_or_else(|| backoff.next_delay()), err)
                }
            }
            Err(e) => (backoff.next_delay(), HttpError::Network { url: url.into(), reason: e.to_string() }),
        };
        if attempts >= MAX_ATTEMPTS {
            return Err(err);
        }
        warn!(%err, retry_in_ms = delay.as_millis() as u64, "REST request failed; retrying");
        tokio::select! {
            _ = shutdown.wait() => return Err(HttpError::Stopped { url: url.into() }),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request with `status` and `Retry-After: 0`; counts requests.
    async fn always(status: u16) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // One request per connection is enough for this client use.
                    if sock.read(&mut buf).await.unwrap_or(0) > 0 {
                        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let answer = format!("HTTP/1.1 {status} X\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        let _ = sock.write_all(answer.as_bytes()).await;
                    }
                });
            }
        });
        (url, count)
    }

    #[tokio::test]
    async fn a_server_answering_429_forever_ends_in_an_error_after_max_attempts() {
        let (url, count) = always(429).await;
        let (_trigger, shutdown) = crate::shutdown_pair();
        let err = get_text(&client(), &url, &shutdown).await.unwrap_err();
        assert!(matches!(err, HttpError::Status { status: 429, .. }), "{err}");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), MAX_ATTEMPTS);
    }

    #[tokio::test]
    async fn a_404_is_not_retried() {
        let (url, count) = always(404).await;
        let (_trigger, shutdown) = crate::shutdown_pair();
        assert!(get_text(&client(), &url, &shutdown).await.is_err());
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
