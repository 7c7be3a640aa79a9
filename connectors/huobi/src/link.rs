//! `Link`: what every Huobi connection does whatever it carries: inflate each frame under the
//! size cap, answer the server's heartbeat, subscribe and check acknowledgements, and account
//! for frames that cannot be used. The MBP and channel sessions each own one.
//!
//! Heartbeat: the server sends `{"ping": n}` (gzip, like everything it sends) every 5 s and
//! closes the connection after two unanswered ones; we answer `{"pong": n}` as plain text at
//! once. Liveness the other way round is the shared session's `stale_after`: no frame at all
//! (and a ping is a frame) for `ping_timeout_ms` means a dead connection, which is dropped and
//! replaced. The pings are counted as `control` frames and not handed to the sink as
//! `DataPacket::Ping`: they are never stored, and a heartbeat must not take a place in the
//! bounded sink channel that data needs.

use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use tokio::time::Instant;
use tracing::{error, warn};

use ds_api::buffer::PacketSender;
use ds_api::stats::RateLimit;
use ds_api::ws::{WsMessage, WsStream};
use ds_api::{DataPacket, FeedStats, InvalidFrame};

use crate::gzip::{base64, GunzipError};

/// Wire bytes kept (before base64) of a frame that could not be inflated: enough to see what
/// it was, well under the 16 KiB an `invalid_frame` point keeps.
const RAW_PREFIX_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum SubState {
    /// `sub` sent with this id, no answer yet.
    Sent {
        id: u64,
        at: Instant,
    },
    Active,
    /// Huobi answered with an error (e.g. `invalid symbol`); not retried on this connection.
    Refused,
}

/// Subscription and heartbeat state of one connection, plus its frame accounting.
pub struct Link {
    feed: Arc<str>,
    pub stats: Arc<FeedStats>,
    pub out: PacketSender,
    topics: Vec<String>,
    subs: Vec<SubState>,
    next_id: u64,
    ack_timeout: Duration,
    invalid_log: RateLimit,
    /// `data-storage replay`: no `sub` was sent, so a refusal is recognised by the topic its
    /// message names (Huobi: `invalid topic market.x.trade.detail`).
    replay: bool,
}

impl Link {
    pub fn new(
        feed: Arc<str>,
        topics: Vec<String>,
        ack_timeout: Duration,
        out: PacketSender,
        stats: Arc<FeedStats>,
    ) -> Self {
        let subs = vec![SubState::Active; topics.len()];
        Link {
            feed,
            stats,
            out,
            topics,
            subs,
            next_id: 1,
            ack_timeout,
            invalid_log: RateLimit::default(),
            replay: false,
        }
    }

    pub fn feed(&self) -> &Arc<str> {
        &self.feed
    }

    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// A fresh request id (subs and reqs share the counter, so an answer names one request).
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends one `sub` per topic on a fresh connection. Acks are checked as frames arrive (see
    /// [`Link::on_ack`], [`Link::overdue`]), so data pushed right after an ack is never
    /// held up or lost waiting for the other acks.
    pub async fn subscribe_all(&mut self, ws: &mut WsStream) -> Result<(), String> {
        let now = Instant::now();
        for i in 0..self.topics.len() {
            let id = self.next_id();
            let msg = format!(r#"{{"sub":"{}","id":{id}}}"#, self.topics[i]);
            ws.feed(WsMessage::text(msg))
                .await
                .map_err(|e| format!("sending sub: {e}"))?;
            self.subs[i] = SubState::Sent { id, at: now };
        }
        ws.flush().await.map_err(|e| format!("sending sub: {e}"))
    }

    /// An ack: the index of the topic it confirms, if it is one of ours.
    pub fn on_ack(&mut self, id: Option<u64>, topic: &str) -> Option<usize> {
        self.stats.control.inc();
        let i = self.topics.iter().position(|t| t == topic)?;
        match self.subs[i] {
            SubState::Sent { id: sent, .. } if id.is_none_or(|id| id == sent) => {
                self.subs[i] = SubState::Active;
                Some(i)
            }
            _ => None,
        }
    }

    /// An error answer. If it refuses one of our subscriptions, that topic is given up on
    /// this connection and true is returned. The refusal is logged as an error (a config or
    /// listing problem) and also counted as `invalid` and stored as an `invalid_frame` whose
    /// reason names the topic and whose raw text is the exchange's answer: a book that never
    /// gets data must be visible in the counters and the store, not only in a log (Bybit's
    /// connector does the same). An error that is not a refusal of ours returns false and
    /// the caller accounts for the frame (a `control` frame).
    /// See [`Link::replay`]'s field: replay recognises refusals by topic.
    pub fn set_replay(&mut self) {
        self.replay = true;
    }

    pub fn on_sub_error(&mut self, id: Option<u64>, code: &str, message: &str, raw: &[u8], recv_ns: i64) -> bool {
        let sent = self.subs.iter().position(|s| matches!(s, SubState::Sent { id: sent, .. } if Some(*sent) == id));
        let named = || self.replay.then(|| self.topics.iter().position(|t| message.split_whitespace().any(|w| w == t))).flatten();
        let Some(i) = sent.or_else(named) else {
            return false;
        };
        self.subs[i] = SubState::Refused;
        let topic = &self.topics[i];
        error!(feed = %self.feed, %topic, code, message, "Huobi refused the subscription; this topic gets no data");
        self.invalid(format!("subscription refused for {topic}: {code}: {message}"), raw, recv_ns);
        true
    }

    /// A subscription still unanswered after the ack timeout, if any: the connection is
    /// not working as it should and is replaced.
    pub fn overdue(&self) -> Option<String> {
        self.subs
            .iter()
            .zip(&self.topics)
            .find_map(|(s, t)| match s {
                SubState::Sent { at, .. } if at.elapsed() >= self.ack_timeout => Some(format!(
                    "no answer to sub {t} within {}s",
                    self.ack_timeout.as_secs()
                )),
                _ => None,
            })
    }

    /// Answers a server ping with the same number.
    pub fn pong(&self, n: i64, outbox: &mut Vec<WsMessage>) {
        self.stats.control.inc();
        outbox.push(WsMessage::text(format!(r#"{{"pong":{n}}}"#)));
    }

    /// A frame that inflated but could not be used: counted, logged (rate-limited), stored
    /// as `invalid_frame` with its text.
    pub fn invalid(&self, reason: String, raw: &[u8], recv_ns: i64) {
        self.store_invalid(reason, &String::from_utf8_lossy(raw), recv_ns);
    }

    /// A frame that could not be inflated (corrupt, or past the cap): stored as `b64:` and the
    /// base64 of its first wire bytes, the only faithful form of bytes that are not text.
    pub fn invalid_gzip(&self, err: &GunzipError, wire: &[u8], recv_ns: i64) {
        let raw = format!("b64:{}", base64(&wire[..wire.len().min(RAW_PREFIX_BYTES)]));
        self.store_invalid(err.to_string(), &raw, recv_ns);
    }

    fn store_invalid(&self, reason: String, raw: &str, recv_ns: i64) {
        self.stats.invalid.inc();
        self.stats.points.inc();
        if let Some(suppressed) = self.invalid_log.check() {
            warn!(feed = %self.feed, suppressed, "invalid frame: {reason}");
        }
        self.out.send(DataPacket::Invalid(InvalidFrame::new(
            "huobi",
            self.feed.clone(),
            reason,
            raw,
            self.stats.reserve_invalid(recv_ns, 1),
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_api::buffer::packet_channel;
    use ds_api::SinkStats;

    #[test]
    fn a_refused_sub_is_counted_invalid_and_stored_with_the_exchange_answer() {
        let (tx, mut rx) = packet_channel("t", 16, Arc::new(SinkStats::default()));
        let stats = Arc::new(FeedStats::default());
        let topics = vec!["market.btcusdt.trade.detail".to_string(), "market.nope.trade.detail".to_string()];
        let mut link = Link::new(Arc::from("f"), topics, Duration::from_secs(10), tx, stats.clone());
        link.subs[1] = SubState::Sent { id: 7, at: Instant::now() };
        let answer = br#"{"status":"error","ts":1,"id":7,"err-code":"bad-request","err-msg":"invalid topic market.nope.trade.detail"}"#;
        assert!(!link.on_sub_error(Some(8), "bad-request", "x", answer, 1), "not an answer to one of our subs");
        assert_eq!(stats.invalid.get(), 0);
        assert!(link.on_sub_error(Some(7), "bad-request", "invalid topic market.nope.trade.detail", answer, 1));
        assert_eq!((stats.invalid.get(), stats.control.get()), (1, 0));
        assert_eq!(link.subs[1], SubState::Refused);
        assert_eq!(link.overdue(), None, "a refused sub is not waited for");
        let Ok(DataPacket::Invalid(f)) = rx.try_recv() else { panic!("an invalid_frame packet") };
        assert!(f.reason.contains("market.nope.trade.detail") && f.reason.contains("bad-request"), "{}", f.reason);
        assert_eq!(f.raw.as_bytes(), answer);
    }
}
