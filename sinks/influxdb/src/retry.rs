//! Which answers are worth another try, and the middleware that tries again.
//!
//! Two levels of retry exist on purpose. This middleware rides out short trouble inside one
//! `write` call (a restarting server, a 503 from a proxy, a 429 with `Retry-After: 1`) with a
//! bounded number of attempts and a bounded total wait. When that is not enough the sink
//! returns `DBError::Retryable` and the buffer keeps the batch and calls again later with its
//! own, longer backoff, so a long outage never blocks inside one HTTP call.
//!
//! reqwest-retry's `RetryTransientMiddleware` would do the first level, but it ignores
//! `Retry-After`, and a server that asks for a pause (contract 7) must get it: hammering an
//! overloaded InfluxDB or a rate-limited Cloud account only prolongs the overload. So this
//! module keeps reqwest-retry's `ExponentialBackoff` policy and its classification of network
//! errors, and adds the server's requested delay on top.

use std::time::{Duration, SystemTime};

use http::Extensions;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Request, Response, StatusCode};
use reqwest_middleware::{Middleware, Next};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::{default_on_request_failure, Jitter, RetryDecision, RetryPolicy, Retryable};
use tracing::warn;

/// Retry limits of one write call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// Retries after the first attempt (`max_retries` option).
    pub max_retries: u32,
    /// First backoff delay; doubles per retry (with jitter) up to `max_delay`.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Most time one write call spends waiting between attempts. A `Retry-After` that does
    /// not fit is not waited here: the response goes back to the sink, which hands the delay
    /// to the buffer (`DBError::Retryable { retry_after }`).
    pub max_total_wait: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_retries: crate::config::DEFAULT_MAX_RETRIES,
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_total_wait: Duration::from_secs(30),
        }
    }
}

/// What a final HTTP status means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: stored.
    Stored,
    /// 408, 429, 5xx: the server could not take it now; the batch is kept and tried later.
    Retry,
    /// 401/403: credentials refused; the batch is kept, the operator must act.
    Auth,
    /// 413: the body is too large for the server; split it.
    TooLarge,
    /// Any other status (4xx, an unfollowed 3xx): the server refuses the data itself, and will
    /// refuse it again; quarantine what was refused.
    Refused,
}

pub fn classify(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Stored,
        401 | 403 => Verdict::Auth,
        413 => Verdict::TooLarge,
        408 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Refused,
    }
}

/// Statuses retried inside one write call. Other 5xx (501 Not Implemented, 505, 507 Insufficient
/// Storage) are unlikely to change within seconds, so they go straight back to the buffer,
/// which still keeps the batch ([`Verdict::Retry`]).
pub fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` in its delta-seconds form, the one InfluxDB, Cloud and common proxies send.
/// The HTTP-date form is ignored (the backoff applies instead).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Retries transient failures with exponential backoff, waiting `Retry-After` instead when the
/// server sends it. Returns the last response (or error) when retries or the wait budget run
/// out, so the caller classifies it.
pub struct RetryAfterMiddleware {
    policy: ExponentialBackoff,
    max_total_wait: Duration,
}

impl RetryAfterMiddleware {
    pub fn new(settings: RetrySettings) -> Self {
        let policy = ExponentialBackoff::builder()
            .retry_bounds(settings.min_delay, settings.max_delay.max(settings.min_delay))
            .jitter(Jitter::Bounded)
            .build_with_max_retries(settings.max_retries);
        RetryAfterMiddleware { policy, max_total_wait: settings.max_total_wait }
    }
}

#[async_trait::async_trait]
impl Middleware for RetryAfterMiddleware {
    async fn handle(&self, req: Request, ext: &mut Extensions, next: Next<'_>) -> reqwest_middleware::Result<Response> {
        let start = SystemTime::now();
        let mut waited = Duration::ZERO;
        let mut retries = 0u32;
        loop {
            // Bodies built from bytes always clone; a streaming body could not be replayed.
            let Some(attempt) = req.try_clone() else {
                return next.run(req, ext).await;
            };
            let result = next.clone().run(attempt, ext).await;
            let (why, asked) = match &result {
                Ok(resp) if is_transient(resp.status()) => (format!("HTTP {}", resp.status().as_u16()), retry_after(resp.headers())),
                Ok(_) => return result,
                Err(e) if default_on_request_failure(e) == Some(Retryable::Transient) => (e.to_string(), None),
                Err(_) => return result,
            };
            let delay = match self.policy.should_retry(start, retries) {
                RetryDecision::DoNotRetry => return result,
                RetryDecision::Retry { execute_after } => {
                    asked.unwrap_or_else(|| execute_after.duration_since(SystemTime::now()).unwrap_or_default())
                }
            };
            if waited + delay > self.max_total_wait {
                return result;
            }
            warn!(
                url = %req.url(),
                attempt = retries + 1,
                retry_in_ms = delay.as_millis() as u64,
                retry_after = asked.is_some(),
                "InfluxDB write failed ({why}); retrying"
            );
            tokio::time::sleep(delay).await;
            waited += delay;
            retries += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        for (code, verdict) in [
            (200, Verdict::Stored),
            (204, Verdict::Stored),
            (301, Verdict::Refused),
            (400, Verdict::Refused),
            (401, Verdict::Auth),
            (403, Verdict::Auth),
            (404, Verdict::Refused),
            (408, Verdict::Retry),
            (413, Verdict::TooLarge),
            (422, Verdict::Refused),
            (429, Verdict::Retry),
            (500, Verdict::Retry),
            (503, Verdict::Retry),
            (507, Verdict::Retry),
        ] {
            assert_eq!(classify(StatusCode::from_u16(code).unwrap()), verdict, "HTTP {code}");
        }
        assert!(is_transient(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!is_transient(StatusCode::INSUFFICIENT_STORAGE));
    }

    #[test]
    fn retry_after_seconds_only() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, " 7 ".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
