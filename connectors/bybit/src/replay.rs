//! `data-storage replay` for `bybit_orderbook` and `bybit_trades`: the live [`TopicFeed`]s
//! (parser, `u` chain, `u == 1` resets) fed from a capture instead of websockets.
//!
//! The symbols are split over connections exactly as the live listener splits them
//! ([`plan_bybit_connections`]), so a record of connection `n` reaches the books that
//! connection carried, and its `close` record ends only those. `symbols = "all"` is resolved
//! at run time by the live feed and cannot be reproduced here: replay needs a symbol list.
//! Bybit syncs in-band (the snapshot is a websocket push), so a capture holds everything.

use ds_api::capture::{CaptureRecord, Payload, RecordKind};
use ds_api::{ConfigError, DataPacket, FeedSpec, FeedStats, GapReason, InvalidFrame, Replayer};
use std::sync::Arc;

use crate::session::{Handled, OrderbookTopics, TopicFeed, TradeTopics};
use crate::subscription::{orderbook_topic, plan_bybit_connections, trade_topic};

pub struct TopicReplayer<F: TopicFeed> {
    feed_name: Arc<str>,
    /// One per live connection, in connection order.
    conns: Vec<F>,
    stats: FeedStats,
}

fn symbol_list(spec: &FeedSpec) -> Result<Vec<String>, Vec<ConfigError>> {
    ds_api::replay::listed_symbols(spec, |s| s.to_uppercase())
}

fn split<F: TopicFeed>(symbols: &[String], topic_of: impl Fn(&str) -> String, per_conn: usize, make: impl Fn(&[String]) -> F) -> Vec<F> {
    let topics: Vec<String> = symbols.iter().map(|s| topic_of(s)).collect();
    plan_bybit_connections(&topics, per_conn).into_iter().map(|r| make(&symbols[r])).collect()
}

/// `bybit_orderbook`.
pub fn build_orderbook(spec: &FeedSpec) -> Result<Box<dyn Replayer>, Vec<ConfigError>> {
    let o = crate::options::parse_orderbook(spec)?;
    let symbols = symbol_list(spec)?;
    let (category, depth) = (o.session.category, o.depth);
    let conns = split(&symbols, |s| orderbook_topic(depth, s), o.session.topics_per_connection, |g| OrderbookTopics::new(category, depth, g));
    Ok(Box::new(TopicReplayer { feed_name: Arc::from(spec.name.as_str()), conns, stats: FeedStats::default() }))
}

/// `bybit_trades`.
pub fn build_trades(spec: &FeedSpec) -> Result<Box<dyn Replayer>, Vec<ConfigError>> {
    let o = crate::options::parse_trades(spec)?;
    let symbols = symbol_list(spec)?;
    let category = o.category;
    let conns = split(&symbols, trade_topic, o.topics_per_connection, |g| TradeTopics::new(category, g));
    Ok(Box::new(TopicReplayer { feed_name: Arc::from(spec.name.as_str()), conns, stats: FeedStats::default() }))
}

impl<F: TopicFeed> TopicReplayer<F> {
    fn invalid(&mut self, reason: String, raw: &str, at_ns: i64, out: &mut Vec<DataPacket>) {
        self.stats.invalid.inc();
        self.stats.points.inc();
        out.push(DataPacket::Invalid(InvalidFrame::new("bybit", self.feed_name.clone(), reason, raw, self.stats.reserve_invalid(at_ns, 1))));
    }
}

impl<F: TopicFeed> Replayer for TopicReplayer<F> {
    fn feed(&mut self, record: &CaptureRecord, at_ns: i64, out: &mut Vec<DataPacket>) {
        let n = record.conn as usize;
        match record.kind {
            RecordKind::Ws => {
                self.stats.frames.inc();
                let text = match &record.data {
                    Payload::Text(t) => t.as_str(),
                    Payload::Binary(b) => return self.invalid("unexpected binary frame".into(), &String::from_utf8_lossy(b), at_ns, out),
                    Payload::None => return,
                };
                // Plain files have no connection numbers: everything is connection 0, which
                // holds every symbol when they fit one connection.
                let Some(feed) = self.conns.get_mut(n) else {
                    return self.invalid(format!("record of connection {n}, the feed plans {}", self.conns.len()), text, at_ns, out);
                };
                match feed.on_frame(text.as_bytes(), at_ns, out, &self.stats) {
                    Ok(Handled::Data) => {}
                    Ok(Handled::Reply(_)) => self.stats.control.inc(),
                    // The live session resubscribes; the new snapshot is in the capture.
                    Ok(Handled::Resubscribe(_)) => self.stats.resyncs.inc(),
                    Err(reason) => self.invalid(reason, text, at_ns, out),
                }
            }
            RecordKind::Rest => {}
            RecordKind::Close => {
                let reason = if record.reason.as_deref() == Some("shutdown") { GapReason::Shutdown } else { GapReason::Disconnect };
                if let Some(feed) = self.conns.get_mut(n) {
                    feed.on_disconnect(reason, at_ns, out, &self.stats);
                }
            }
        }
    }

    fn stats(&self) -> &FeedStats {
        &self.stats
    }
}
