//! `BookSync`: Bybit's rule for keeping one symbol's order book in step with its
//! `orderbook.{depth}.{symbol}` topic. Pure state machine (no I/O), so every branch is
//! unit-tested.
//!
//! The rule (protocols.md §2, verified on the 2026-08-09 captures: 548/548 spot and 1594/1594
//! linear deltas chain):
//! - after subscribing, Bybit pushes a snapshot, then deltas;
//! - each delta's `u` is the previous `u` + 1;
//! - any later snapshot, and any push with `u == 1` (Bybit restarted its service; the push
//!   holds the whole book), replaces the book;
//! - a delta that does not chain means data was lost: resubscribe the topic for a new snapshot.
//!
//! What this stores: every snapshot (and `u == 1` push) as ST, every chained delta as MI, a
//! gap marker when the chain breaks or the connection drops while in sync. Deltas that cannot
//! be applied (before the first snapshot, after a break until the new snapshot, a repeated
//! `u`) are counted as `out_of_sequence`, never silently lost.
//!
//! `orderbook.1` is snapshot-only: Bybit re-sends the snapshot with the same `u` every 3 s
//! when nothing changes. Each re-send is stored as an ST like any snapshot: it is what Bybit
//! said at that instant, it costs two points, and a rebuild at any time finds a snapshot at
//! most 3 s old.

use ds_api::clock::{self, SeriesClock};
use ds_api::{DataPacket, FeedStats, GapMarker, GapReason, Instrument, Level, MarketIncremental, Snapshot};

use crate::parser::{BookUpdate, UpdateKind};

/// One push, detached from the frame's buffer.
#[derive(Debug, Clone)]
pub struct BookMessage {
    pub kind: UpdateKind,
    pub update_id: u64,
    pub event_time_ms: Option<i64>,
    pub recv_ns: i64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

impl BookMessage {
    pub fn from_update(u: BookUpdate<'_>, recv_ns: i64) -> Self {
        BookMessage { kind: u.kind, update_id: u.update_id, event_time_ms: u.event_time_ms, recv_ns, bids: u.bids, asks: u.asks }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No valid book: before the first snapshot, or after a break until the next one.
    AwaitingSnapshot,
    Synced { last_u: u64 },
}

/// What the caller must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    Ok,
    /// The chain broke: unsubscribe and subscribe this topic again for a fresh snapshot.
    Resubscribe,
}

#[derive(Debug)]
pub struct BookSync {
    instrument: Instrument,
    state: State,
    /// Timestamps of this book's series: they depend only on this book's receive times, so a
    /// replay of a capture reproduces them (see `ds_api::clock::SeriesClock`).
    clock: SeriesClock,
}

impl BookSync {
    pub fn new(instrument: Instrument) -> Self {
        BookSync { instrument, state: State::AwaitingSnapshot, clock: SeriesClock::new() }
    }

    pub fn instrument(&self) -> &Instrument {
        &self.instrument
    }

    pub fn is_synced(&self) -> bool {
        matches!(self.state, State::Synced { .. })
    }

    /// `u` of the last push applied, while in sync.
    pub fn last_update_id(&self) -> Option<u64> {
        match self.state {
            State::Synced { last_u } => Some(last_u),
            State::AwaitingSnapshot => None,
        }
    }

    /// Feeds one push; packets to store go to `out`.
    pub fn on_message(&mut self, msg: BookMessage, out: &mut Vec<DataPacket>, stats: &FeedStats) -> SyncOutcome {
        let u = msg.update_id;
        if msg.kind == UpdateKind::Snapshot || u == 1 {
            if msg.kind == UpdateKind::Delta {
                tracing::info!(symbol = %self.instrument.symbol, market = self.instrument.market, "delta with u == 1: Bybit restarted the book; it replaces the local one");
            }
            self.state = State::Synced { last_u: u };
            self.emit_snapshot(msg, out, stats);
            return SyncOutcome::Ok;
        }
        match self.state {
            State::AwaitingSnapshot => {
                stats.out_of_sequence.inc();
                SyncOutcome::Ok
            }
            State::Synced { last_u } if u == last_u + 1 => {
                self.state = State::Synced { last_u: u };
                self.emit_delta(msg, out, stats);
                SyncOutcome::Ok
            }
            State::Synced { last_u } if u == last_u => {
                // The same update again: the book already holds it, nothing is missing.
                stats.out_of_sequence.inc();
                SyncOutcome::Ok
            }
            State::Synced { last_u } => {
                // Skipped ahead (lost pushes) or went back (Bybit state we cannot follow):
                // either way only a fresh snapshot tells the truth again.
                stats.out_of_sequence.inc();
                self.emit_gap(GapReason::SequenceBreak, Some(last_u), Some(u), msg.recv_ns, out, stats);
                self.state = State::AwaitingSnapshot;
                SyncOutcome::Resubscribe
            }
        }
    }

    /// The connection dropped (or the service stops, `reason` Shutdown): what happens until
    /// the next snapshot is unknown, and the store says so.
    pub fn on_disconnect(&mut self, reason: GapReason, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        self.on_disconnect_at(reason, clock::now_ns(), out, stats);
    }

    /// [`Self::on_disconnect`] for a connection that ended at `at_ns`.
    pub fn on_disconnect_at(&mut self, reason: GapReason, at_ns: i64, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        if let State::Synced { last_u } = self.state {
            self.emit_gap(reason, Some(last_u), None, at_ns, out, stats);
        }
        self.state = State::AwaitingSnapshot;
    }

    fn emit_delta(&mut self, m: BookMessage, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        let points = m.bids.len() + m.asks.len();
        stats.mi.inc();
        stats.points.add(points as u64);
        out.push(DataPacket::MI(MarketIncremental {
            instrument: self.instrument.clone(),
            // Bybit has one id per push.
            first_update_id: m.update_id,
            last_update_id: m.update_id,
            prev_update_id: None,
            event_time_ms: m.event_time_ms,
            recv_time_ns: self.clock.reserve(m.recv_ns, points),
            bids: m.bids,
            asks: m.asks,
        }));
    }

    fn emit_snapshot(&mut self, m: BookMessage, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        let points = (m.bids.len() + m.asks.len()).max(1);
        stats.st.inc();
        stats.points.add(points as u64);
        out.push(DataPacket::ST(Snapshot {
            instrument: self.instrument.clone(),
            cur_seq: m.update_id,
            prev_seq: None,
            timestamp: m.event_time_ms,
            recv_time_ns: self.clock.reserve(m.recv_ns, points),
            bids: m.bids,
            asks: m.asks,
        }));
    }

    fn emit_gap(&mut self, reason: GapReason, last_id: Option<u64>, next_id: Option<u64>, at_ns: i64, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        stats.gaps.inc();
        stats.points.inc();
        if reason == GapReason::Shutdown {
            tracing::debug!(symbol = %self.instrument.symbol, "book closed at stop");
        } else {
            tracing::warn!(exchange = "bybit", market = self.instrument.market, symbol = %self.instrument.symbol, reason = reason.as_str(), ?last_id, ?next_id, "gap in order book updates; this book restarts from its next snapshot");
        }
        out.push(DataPacket::Gap(GapMarker { instrument: self.instrument.clone(), reason, last_id, next_id, recv_time_ns: self.clock.reserve(at_ns, 1) }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_api::Decimal;
    use std::sync::Arc;

    fn inst() -> Instrument {
        Instrument { exchange: "bybit", market: "linear", symbol: Arc::from("BTCUSDT") }
    }

    fn msg(kind: UpdateKind, u: u64) -> BookMessage {
        let lvl = Level { price: Decimal::parse("65114.2").unwrap(), size: Decimal::parse("6.054").unwrap() };
        BookMessage { kind, update_id: u, event_time_ms: Some(1786310818127), recv_ns: 0, bids: vec![lvl], asks: vec![] }
    }

    fn snap(u: u64) -> BookMessage {
        msg(UpdateKind::Snapshot, u)
    }

    fn delta(u: u64) -> BookMessage {
        msg(UpdateKind::Delta, u)
    }

    fn kinds(out: &[DataPacket]) -> Vec<String> {
        out.iter()
            .map(|p| match p {
                DataPacket::MI(m) => format!("MI{}", m.last_update_id),
                DataPacket::ST(s) => format!("ST{}", s.cur_seq),
                DataPacket::Gap(g) => format!("gap:{}:{:?}-{:?}", g.reason.as_str(), g.last_id, g.next_id),
                other => other.kind().to_string(),
            })
            .collect()
    }

    /// Feeds the pushes, returns (stored packets, outcomes that asked to resubscribe, stats).
    fn run(pushes: Vec<BookMessage>) -> (Vec<String>, Vec<u64>, FeedStats) {
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst());
        let mut out = vec![];
        let mut resubscribe_at = vec![];
        for p in pushes {
            let u = p.update_id;
            if b.on_message(p, &mut out, &stats) == SyncOutcome::Resubscribe {
                resubscribe_at.push(u);
            }
        }
        (kinds(&out), resubscribe_at, stats)
    }

    struct Case {
        pushes: Vec<BookMessage>,
        stored: &'static [&'static str],
        resubscribe_at: &'static [u64],
        out_of_sequence: u64,
    }

    #[test]
    fn sync_rule_table() {
        let cases = [
            // 0: snapshot then a chain of deltas
            Case { pushes: vec![snap(10), delta(11), delta(12)], stored: &["ST10", "MI11", "MI12"], resubscribe_at: &[], out_of_sequence: 0 },
            // 1: deltas before the first snapshot cannot be applied
            Case { pushes: vec![delta(9), snap(10), delta(11)], stored: &["ST10", "MI11"], resubscribe_at: &[], out_of_sequence: 1 },
            // 2: a lost delta: gap, resubscribe, in-flight deltas discarded, fresh snapshot resumes
            Case {
                pushes: vec![snap(10), delta(11), delta(13), delta(14), snap(14), delta(15)],
                stored: &["ST10", "MI11", "gap:sequence_break:Some(11)-Some(13)", "ST14", "MI15"],
                resubscribe_at: &[13],
                out_of_sequence: 2,
            },
            // 3: a repeated u is counted, not stored twice, and needs no resync
            Case { pushes: vec![snap(10), delta(11), delta(11), delta(12)], stored: &["ST10", "MI11", "MI12"], resubscribe_at: &[], out_of_sequence: 1 },
            // 4: u going backwards (not 1) is a break
            Case { pushes: vec![snap(10), delta(7)], stored: &["ST10", "gap:sequence_break:Some(10)-Some(7)"], resubscribe_at: &[7], out_of_sequence: 1 },
            // 5: a later snapshot replaces the book without a gap
            Case { pushes: vec![snap(10), delta(11), snap(500), delta(501)], stored: &["ST10", "MI11", "ST500", "MI501"], resubscribe_at: &[], out_of_sequence: 0 },
            // 6: u == 1 after a Bybit restart, as a snapshot or as a delta: both reset (ST)
            Case { pushes: vec![snap(10), delta(11), snap(1), delta(2), delta(1), delta(2)], stored: &["ST10", "MI11", "ST1", "MI2", "ST1", "MI2"], resubscribe_at: &[], out_of_sequence: 0 },
            // 7: u == 1 also ends a wait for a snapshot
            Case { pushes: vec![snap(10), delta(12), delta(1), delta(2)], stored: &["ST10", "gap:sequence_break:Some(10)-Some(12)", "ST1", "MI2"], resubscribe_at: &[12], out_of_sequence: 1 },
            // 8: orderbook.1 re-sends the snapshot with the same u: each is stored
            Case { pushes: vec![snap(31002), snap(31002), snap(31003)], stored: &["ST31002", "ST31002", "ST31003"], resubscribe_at: &[], out_of_sequence: 0 },
        ];
        for (i, c) in cases.into_iter().enumerate() {
            let (stored, resub, stats) = run(c.pushes);
            assert_eq!(stored, c.stored, "case {i}");
            assert_eq!(resub, c.resubscribe_at, "case {i}");
            assert_eq!(stats.out_of_sequence.get(), c.out_of_sequence, "case {i}");
            let gaps = c.stored.iter().filter(|s| s.starts_with("gap")).count() as u64;
            assert_eq!(stats.gaps.get(), gaps, "case {i}");
            assert_eq!(stats.st.get() + stats.mi.get() + stats.gaps.get(), c.stored.len() as u64, "case {i}");
        }
    }

    #[test]
    fn disconnect_marks_a_gap_only_when_in_sync() {
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst());
        let mut out = vec![];
        b.on_disconnect(GapReason::Disconnect, &mut out, &stats);
        assert!(out.is_empty(), "nothing was known, nothing is lost");
        b.on_message(snap(10), &mut out, &stats);
        b.on_message(delta(11), &mut out, &stats);
        assert_eq!(b.last_update_id(), Some(11));
        b.on_disconnect(GapReason::Disconnect, &mut out, &stats);
        assert!(!b.is_synced());
        b.on_message(delta(12), &mut out, &stats);
        assert_eq!(kinds(&out), ["ST10", "MI11", "gap:disconnect:Some(11)-None"]);
        assert_eq!(stats.out_of_sequence.get(), 1);
    }

    #[test]
    fn packets_carry_u_times_and_unique_ordered_timestamps() {
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst());
        let mut out = vec![];
        b.on_message(snap(10), &mut out, &stats);
        b.on_message(delta(11), &mut out, &stats);
        let (DataPacket::ST(s), DataPacket::MI(m)) = (&out[0], &out[1]) else { panic!() };
        assert_eq!((s.cur_seq, s.timestamp, s.prev_seq), (10, Some(1786310818127), None));
        assert_eq!((m.first_update_id, m.last_update_id, m.event_time_ms), (11, 11, Some(1786310818127)));
        assert!(m.recv_time_ns > s.recv_time_ns, "same receive instant, distinct ordered points");
        assert_eq!(stats.points.get(), 2);
    }
}
