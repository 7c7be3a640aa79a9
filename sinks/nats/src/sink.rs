//! `NatsSink`: one batch = one message per series (see [`crate::subject`]), published to
//! JetStream; `write` returns `Ok` only when JetStream acknowledged every one of them, i.e.
//! the stream stored them (on a quorum of its replicas for a replicated stream), and each
//! acknowledgement names the configured stream and a sequence ([`crate::ack`]). Before the
//! first publish the stream is created if asked and verified ([`crate::stream`]), so that
//! several edges starting at once can all use `create_stream`.
//!
//! Everything else (no server, no stream capturing the subject, a missing acknowledgement
//! within `timeout_secs`) is `DBError::Retryable`: the host's buffer keeps the batch in its
//! spool and sends it again later. A batch sent again must not double anything on the bus, so
//! every message carries a `Nats-Msg-Id` derived from its content: JetStream drops a message
//! whose id it saw within the stream's duplicate window (2 minutes by default), which covers a
//! resend after a lost acknowledgement, and a message the client still had buffered when the
//! write timed out. Beyond the window a duplicate is still harmless downstream: every point
//! keeps its timestamp, and InfluxDB stores a point written twice once.

use std::future::IntoFuture;

use async_nats::jetstream;
use async_trait::async_trait;
use ds_api::{DBError, OnlineCheck, Sink};

use crate::config::NatsConfig;
use crate::{ack, stream, subject};

pub struct NatsSink {
    cfg: NatsConfig,
    /// Connected lazily at the first write (`build` must not connect); the client then
    /// reconnects on its own, to any server of `url` and those the cluster announced. Kept
    /// even when verifying the stream failed, so the next attempt still knows those servers
    /// (a fresh client would know only `url`, which may be the node that just died).
    js: Option<jetstream::Context>,
    /// Set once the stream was created if asked and verified ([`crate::stream`]); cleared when
    /// a publish finds no stream, so the next batch checks (and creates) it again.
    verified: Option<stream::Verified>,
}

impl NatsSink {
    pub fn new(cfg: NatsConfig) -> Self {
        NatsSink { cfg, js: None, verified: None }
    }

    async fn context(&mut self) -> Result<jetstream::Context, String> {
        let js = match &self.js {
            Some(js) => js.clone(),
            None => {
                let js = connect(&self.cfg).await?;
                self.js = Some(js.clone());
                js
            }
        };
        if self.verified.is_none() {
            let v = stream::ensure(&js, &self.cfg).await?;
            tracing::info!(
                sink = %self.cfg.name, url = %self.cfg.url, stream = %self.cfg.stream,
                replicas = v.replicas, created = %v.created, "connected to NATS, stream verified"
            );
            self.verified = Some(v);
        }
        Ok(js)
    }

    async fn publish_all(&mut self, lines: &[u8]) -> Result<usize, String> {
        let js = self.context().await?;
        let msgs = subject::split(&self.cfg.subject_prefix, lines, self.cfg.max_message_bytes);
        let mut acks = Vec::with_capacity(msgs.len());
        // Publish everything first, then wait for the acknowledgements: one round trip per
        // batch instead of one per message.
        for m in msgs {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id(&m.subject, &m.lines).as_str());
            let subject = m.subject.clone();
            let ack = js
                .publish_with_headers(m.subject, headers, m.lines.into())
                .await
                .map_err(|e| format!("publishing to {subject}: {e}"))?;
            let stream = self.cfg.stream.as_str();
            acks.push(async move {
                let a = ack.into_future().await.map_err(|e| {
                    let stream_missing = e.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound;
                    (format!("no acknowledgement for {subject}: {e}"), stream_missing)
                })?;
                ack::check(stream, &subject, &a).map_err(|e| (e, false))
            });
        }
        let n = acks.len();
        if let Err((reason, stream_missing)) = futures::future::try_join_all(acks).await {
            if stream_missing {
                // deleted, or not made yet: verify (and create, if allowed) again next time
                self.verified = None;
            }
            return Err(reason);
        }
        Ok(n)
    }
}

async fn connect(cfg: &NatsConfig) -> Result<jetstream::Context, String> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("data-storage sink {}", cfg.name))
        .connection_timeout(cfg.timeout)
        // The client takes a list; the option is one comma-separated string.
        .connect(cfg.servers())
        .await
        .map_err(|e| format!("connecting to {}: {e}", cfg.url))?;
    let mut js = jetstream::new(client);
    js.set_timeout(cfg.timeout);
    Ok(js)
}

/// A deterministic id per message: the same lines to the same subject give the same id, so
/// JetStream drops a resend (FNV-1a 64 over subject and payload, plus the length; stable
/// across builds and machines, unlike std's `DefaultHasher`).
pub fn message_id(subject: &str, lines: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in subject.as_bytes().iter().chain([0u8].iter()).chain(lines) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:016x}-{}", h, lines.len())
}

#[async_trait]
impl Sink for NatsSink {
    async fn write(&mut self, lines: &[u8], points: usize) -> Result<(), DBError> {
        if points == 0 || lines.is_empty() {
            return Ok(());
        }
        let timeout = self.cfg.timeout;
        match tokio::time::timeout(timeout, self.publish_all(lines)).await {
            Ok(Ok(messages)) => {
                tracing::debug!(sink = %self.cfg.name, points, messages, "batch acknowledged by JetStream");
                Ok(())
            }
            Ok(Err(reason)) => Err(DBError::Retryable { reason, retry_after: None }),
            Err(_) => Err(DBError::Retryable {
                reason: format!("JetStream did not acknowledge the batch within {}s", timeout.as_secs()),
                retry_after: None,
            }),
        }
    }

    async fn check_online(&mut self) -> OnlineCheck {
        let checked = format!("JetStream stream {:?} at {}", self.cfg.stream, self.cfg.url);
        let js = match connect(&self.cfg).await {
            Ok(js) => js,
            Err(e) => return OnlineCheck::failed(checked, e),
        };
        match js.get_stream(&self.cfg.stream).await {
            Ok(mut s) => match s.info().await {
                Ok(info) => {
                    let problems = stream::problems(&self.cfg, &info.config)
                        .into_iter()
                        .map(|p| format!("stream {:?}: {p}", self.cfg.stream))
                        .collect();
                    OnlineCheck::Done {
                        checked: format!(
                            "{checked}: {} replica(s), {} message(s) stored",
                            info.config.num_replicas, info.state.messages
                        ),
                        problems,
                    }
                }
                Err(e) => OnlineCheck::failed(checked, format!("stream info: {e}")),
            },
            Err(_) if self.cfg.create_stream.is_some() => OnlineCheck::Done {
                checked: format!("{checked}: server reached, stream missing, created at the first write"),
                problems: Vec::new(),
            },
            Err(e) => OnlineCheck::failed(checked, format!("stream {:?}: {e} (create it, or set create_stream)", self.cfg.stream)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_deterministic_and_distinguish_content() {
        let a = message_id("ds.binance.spot.book_delta.BTCUSDT", b"x 1\n");
        assert_eq!(a, message_id("ds.binance.spot.book_delta.BTCUSDT", b"x 1\n"));
        assert_ne!(a, message_id("ds.binance.spot.book_delta.ETHUSDT", b"x 1\n"));
        assert_ne!(a, message_id("ds.binance.spot.book_delta.BTCUSDT", b"x 2\n"));
    }
}
