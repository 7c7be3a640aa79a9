//! `data-storage replay` for `huobi_mbp` and `huobi_trades`: the live sessions
//! ([`MbpSession`], [`ChannelSession`]) fed from a capture instead of websockets, so the
//! gunzip cap, the parser, the `prevSeqNum` chain and the `req` alignment are the live code.
//!
//! What differs from the live run, and why it does not change the stored points:
//! - nothing is sent: pongs and `req`s are dropped, and a `req` reply is matched to its book by
//!   topic, since the live run's request ids are not in the capture (the reply is);
//! - the symbols are split over connections as the live listener splits them, and a record's
//!   `conn` ([`mbp_conn`]) says which session it belongs to; a `close` record ends that
//!   session's books with the live run's gap markers, at the recorded time.
//!
//! Not replayed: the periodic snapshot connections of `periodic_snapshots` (their records are
//! skipped and counted as control frames). They are stamped by the process-wide clock (they
//! share the MBP feed's `book_snapshot` series, see `ds_api::line_protocol`), so a replay could
//! not reproduce their timestamps and would add copies instead of overwriting.
//! `symbols = "all"` cannot be replayed (see `ds_api::replay::listed_symbols`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use ds_api::buffer::packet_channel;
use ds_api::capture::{CaptureRecord, Payload, RecordKind};
use ds_api::ws::Disconnect;
use ds_api::ws::SessionHandler;
use ds_api::{ConfigError, DataPacket, FeedSpec, FeedStats, InvalidFrame, Replayer, SinkStats};

use crate::channel_session::ChannelSession;
use crate::listener::mbp_conn;
use crate::options::{self, PeriodicSnapshots};
use crate::parser::Channel;
use crate::session::{MbpSession, MbpSessionConfig};

/// A recorded frame as the sessions take it.
pub enum ReplayFrame<'a> {
    /// As received live: gzip.
    Gzip(&'a [u8]),
    /// A plain JSONL file holds the inflated text.
    Text(&'a str),
}

/// A session's handling of one frame already inflated: what a plain JSONL file holds.
pub trait InflatedText {
    fn on_inflated(&mut self, text: &[u8], recv_ns: i64);
}

/// One recorded frame into a live session: gzip goes through its inflater as received live,
/// text straight to its parser. Replies it would send (pongs, `req`s) are dropped.
fn replay_frame<S: SessionHandler + InflatedText>(session: &mut S, frame: ReplayFrame<'_>, recv_ns: i64) {
    match frame {
        ReplayFrame::Gzip(wire) => {
            session.on_frame(ds_api::ws::WsMessage::binary(wire.to_vec()), recv_ns, &mut Vec::new());
        }
        ReplayFrame::Text(text) => session.on_inflated(text.as_bytes(), recv_ns),
    }
}

/// Packets a session emits while one record is handled; drained after each record. Room for a
/// whole held run released by one snapshot.
const PACKETS_PER_RECORD: usize = 16_384;

/// The sessions of one feed, by connection number.
enum Sessions {
    Mbp { sessions: Vec<MbpSession>, periodic: bool },
    Trades(Vec<ChannelSession>),
}

pub struct HuobiReplayer {
    feed: Arc<str>,
    sessions: Sessions,
    packets: mpsc::Receiver<DataPacket>,
    sink_stats: Arc<SinkStats>,
    stats: Arc<FeedStats>,
}

fn symbol_list(spec: &FeedSpec) -> Result<Vec<String>, Vec<ConfigError>> {
    ds_api::replay::listed_symbols(spec, options::topic_symbol)
}

/// `huobi_mbp`.
pub fn build_mbp(spec: &FeedSpec) -> Result<Box<dyn Replayer>, Vec<ConfigError>> {
    let o = options::parse_mbp(spec)?;
    let symbols = symbol_list(spec)?;
    let cfg = MbpSessionConfig::from_options(&o);
    let feed: Arc<str> = Arc::from(spec.name.as_str());
    let stats = Arc::new(FeedStats::default());
    let sink_stats = Arc::new(SinkStats::default());
    let (tx, packets) = packet_channel("replay", PACKETS_PER_RECORD.max(o.max_held_updates + 1024), sink_stats.clone());
    let sessions = symbols
        .chunks(o.symbols_per_connection)
        .map(|group| MbpSession::new(feed.clone(), &o.ws_url, group, &cfg, tx.clone(), stats.clone()).for_replay())
        .collect();
    let periodic = o.periodic_snapshots != PeriodicSnapshots::None;
    Ok(Box::new(HuobiReplayer { feed, sessions: Sessions::Mbp { sessions, periodic }, packets, sink_stats, stats }))
}

/// `huobi_trades`.
pub fn build_trades(spec: &FeedSpec) -> Result<Box<dyn Replayer>, Vec<ConfigError>> {
    let o = options::parse_trades(spec)?;
    let symbols = symbol_list(spec)?;
    let feed: Arc<str> = Arc::from(spec.name.as_str());
    let stats = Arc::new(FeedStats::default());
    let sink_stats = Arc::new(SinkStats::default());
    let (tx, packets) = packet_channel("replay", PACKETS_PER_RECORD, sink_stats.clone());
    let sessions = symbols
        .chunks(o.symbols_per_connection)
        .map(|group| {
            ChannelSession::new(
                feed.clone(),
                &o.ws_url,
                Channel::TradeDetail,
                group,
                Duration::from_secs(o.ack_timeout_secs),
                o.max_frame_bytes,
                tx.clone(),
                stats.clone(),
            )
            .for_replay()
        })
        .collect();
    Ok(Box::new(HuobiReplayer { feed, sessions: Sessions::Trades(sessions), packets, sink_stats, stats }))
}

impl HuobiReplayer {
    fn invalid(&self, reason: String, raw: &str, at_ns: i64, out: &mut Vec<DataPacket>) {
        self.stats.invalid.inc();
        self.stats.points.inc();
        out.push(DataPacket::Invalid(InvalidFrame::new("huobi", self.feed.clone(), reason, raw, self.stats.reserve_invalid(at_ns, 1))));
    }

    fn drain(&mut self, out: &mut Vec<DataPacket>) {
        while let Ok(p) = self.packets.try_recv() {
            out.push(p);
        }
        assert_eq!(self.sink_stats.points_dropped.get(), 0, "replay packet channel overflowed (PACKETS_PER_RECORD too small)");
    }
}

impl Replayer for HuobiReplayer {
    fn feed(&mut self, record: &CaptureRecord, at_ns: i64, out: &mut Vec<DataPacket>) {
        let n = record.conn as usize;
        match record.kind {
            RecordKind::Ws => {
                let frame = match &record.data {
                    Payload::Binary(b) => ReplayFrame::Gzip(b),
                    Payload::Text(t) => ReplayFrame::Text(t),
                    Payload::None => return,
                };
                self.stats.frames.inc();
                match &mut self.sessions {
                    Sessions::Mbp { sessions, periodic } => {
                        let (group, snapshot_conn) = if *periodic { (n / 2, n % 2 == 1) } else { (n, false) };
                        debug_assert!(!*periodic || mbp_conn(group, true) == n - n % 2);
                        if snapshot_conn {
                            self.stats.control.inc();
                        } else if let Some(s) = sessions.get_mut(group) {
                            replay_frame(s, frame, at_ns);
                        } else {
                            let planned = sessions.len();
                            let raw = describe(&record.data);
                            return self.invalid(format!("record of connection {n}, the feed plans {planned} /feed connections"), &raw, at_ns, out);
                        }
                    }
                    Sessions::Trades(sessions) => match sessions.get_mut(n) {
                        Some(s) => replay_frame(s, frame, at_ns),
                        None => {
                            let planned = sessions.len();
                            let raw = describe(&record.data);
                            return self.invalid(format!("record of connection {n}, the feed plans {planned}"), &raw, at_ns, out);
                        }
                    },
                }
            }
            RecordKind::Rest => {}
            RecordKind::Close => {
                let why = if record.reason.as_deref() == Some("shutdown") { Disconnect::Shutdown } else { Disconnect::Lost("recorded".into()) };
                match &mut self.sessions {
                    Sessions::Mbp { sessions, periodic } => {
                        let (group, snapshot_conn) = if *periodic { (n / 2, n % 2 == 1) } else { (n, false) };
                        if let (false, Some(s)) = (snapshot_conn, sessions.get_mut(group)) {
                            s.on_disconnect_at(&why, at_ns);
                        }
                    }
                    Sessions::Trades(sessions) => {
                        if let Some(s) = sessions.get_mut(n) {
                            s.on_disconnect_at(&why, at_ns);
                        }
                    }
                }
            }
        }
        self.drain(out);
    }

    fn stats(&self) -> &FeedStats {
        &self.stats
    }
}

/// A record's payload as text, for an `invalid_frame`'s `raw` field.
fn describe(data: &Payload) -> String {
    match data {
        Payload::Text(t) => t.clone(),
        Payload::Binary(b) => format!("b64:{}", crate::gzip::base64(b)),
        Payload::None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_api::Symbols;

    fn spec(symbols: &[&str], extra: &str) -> FeedSpec {
        let options: toml::Table = extra.parse().unwrap();
        FeedSpec { name: "htx".into(), symbols: Symbols::List(symbols.iter().map(|s| s.to_string()).collect()), options }
    }

    fn record(conn: u32, kind: RecordKind, data: Payload, reason: Option<&str>) -> CaptureRecord {
        CaptureRecord { t: Some(1), conn, kind, url: None, reason: reason.map(String::from), data }
    }

    /// The real aidogeusdt frames of ccxt issue 18749 (plain text, as in the fixtures file),
    /// with the `req` reply the live run got: the reply is matched by topic, the held update
    /// aligned, and the connection's `close` stores a gap marker at the recorded time.
    #[test]
    fn replies_are_matched_by_topic_and_close_records_mark_gaps() {
        let mut r = build_mbp(&spec(&["aidogeusdt"], "")).unwrap_or_else(|e| panic!("{e:?}"));
        let mut out = Vec::new();
        let text = |s: &str| Payload::Text(s.to_string());
        for (t, frame) in [
            (10, r#"{"ch":"market.aidogeusdt.mbp.150","ts":1690948841557,"tick":{"seqNum":155247358,"prevSeqNum":155247355,"bids":[],"asks":[[9.486E-11,5.4329174972728E12],[9.488E-11,0.0]]}}"#),
            (20, r#"{"id":7,"rep":"market.aidogeusdt.mbp.150","status":"ok","data":{"seqNum":155247355,"bids":[[9.484E-11,1.0E10]],"asks":[[9.486E-11,1.0]]}}"#),
            (30, r#"{"ping":1690948843215}"#),
        ] {
            r.feed(&record(0, RecordKind::Ws, text(frame), None), t, &mut out);
        }
        r.feed(&record(0, RecordKind::Close, Payload::None, Some("disconnect")), 40, &mut out);
        let kinds: Vec<String> = out
            .iter()
            .map(|p| match p {
                DataPacket::ST(s) => format!("ST{}@{}", s.cur_seq, s.recv_time_ns),
                DataPacket::MI(m) => format!("MI{}@{}", m.last_update_id, m.recv_time_ns),
                DataPacket::Gap(g) => format!("gap {}@{}", g.reason.as_str(), g.recv_time_ns),
                other => other.kind().to_string(),
            })
            .collect();
        assert_eq!(kinds, ["ST155247355@20", "MI155247358@22", "gap disconnect@40"]);
        let s = r.stats();
        assert_eq!((s.frames.get(), s.st.get(), s.mi.get(), s.control.get(), s.invalid.get()), (3, 1, 1, 1, 0));
    }

    /// A refused `sub` in a capture is stored as the live run stored it: an `invalid_frame`
    /// naming the topic (the live run matched it by request id, replay by the topic named).
    #[test]
    fn a_refused_subscription_replays_as_invalid() {
        let mut r = build_trades(&spec(&["btcusdt", "nope"], "")).unwrap_or_else(|e| panic!("{e:?}"));
        let mut out = Vec::new();
        let refusal = r#"{"status":"error","ts":1,"id":2,"err-code":"bad-request","err-msg":"invalid topic market.nope.trade.detail"}"#;
        r.feed(&record(0, RecordKind::Ws, Payload::Text(refusal.into()), None), 5, &mut out);
        assert!(matches!(&out[..], [DataPacket::Invalid(f)] if f.reason.contains("market.nope.trade.detail")), "{out:?}");
        let other = r#"{"status":"error","ts":1,"id":9,"err-code":"too-many-request","err-msg":"429 too many request"}"#;
        r.feed(&record(0, RecordKind::Ws, Payload::Text(other.into()), None), 6, &mut out);
        assert_eq!((r.stats().invalid.get(), r.stats().control.get()), (1, 1), "an error naming no topic stays a control frame");
    }

    #[test]
    fn a_record_of_an_unplanned_connection_is_invalid_and_periodic_snapshot_records_are_skipped() {
        let mut r = build_mbp(&spec(&["btcusdt"], "periodic_snapshots = \"depth.step0\"")).unwrap_or_else(|e| panic!("{e:?}"));
        let mut out = Vec::new();
        r.feed(&record(1, RecordKind::Ws, Payload::Text(r#"{"ping":1}"#.into()), None), 1, &mut out);
        assert!(out.is_empty());
        assert_eq!(r.stats().control.get(), 1, "the /ws snapshot connection's record is skipped");
        r.feed(&record(2, RecordKind::Ws, Payload::Text(r#"{"ping":1}"#.into()), None), 2, &mut out);
        assert!(matches!(&out[..], [DataPacket::Invalid(f)] if f.reason.contains("connection 2")), "{out:?}");
        assert!(build_mbp(&FeedSpec { symbols: Symbols::All, ..spec(&[], "") }).is_err(), "\"all\" cannot be replayed");
    }
}
