//! `BookSync`: Binance's rule for keeping a local book in step with the diff-depth stream,
//! one instance per symbol. Pure state machine (no I/O), so every branch is unit-tested.
//!
//! The documented procedure (protocols.md §1, verified on the fixtures):
//!
//! 1. buffer events from the stream;
//! 2. fetch a REST snapshot;
//! 3. drop buffered events with `u <= lastUpdateId`;
//! 4. the first applied event must straddle: `U <= lastUpdateId+1 <= u`;
//! 5. every later event must have `U == previous u + 1`, otherwise resync from 2.
//!
//! What this stores: the snapshot (ST) at each (re)sync, every applied event (MI), and a gap
//! marker whenever the chain breaks or the connection drops while in sync. Events that the
//! snapshot already contains are counted (`superseded`), never silently lost.

use std::collections::VecDeque;

use ds_api::clock::{self, SeriesClock};
use ds_api::{DataPacket, FeedStats, GapMarker, GapReason, Instrument, Level, MarketIncremental, Snapshot};

use crate::parser::{DepthSnapshot, DepthUpdate};

/// An event held while a snapshot is on its way.
#[derive(Debug, Clone)]
pub struct HeldUpdate {
    pub first_update_id: u64,
    pub final_update_id: u64,
    pub event_time_ms: Option<i64>,
    pub recv_ns: i64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

impl HeldUpdate {
    pub fn from_update(u: DepthUpdate<'_>, recv_ns: i64) -> Self {
        HeldUpdate {
            first_update_id: u.first_update_id,
            final_update_id: u.final_update_id,
            event_time_ms: u.event_time_ms,
            recv_ns,
            bids: u.bids,
            asks: u.asks,
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    /// Waiting for a snapshot; events are held in order.
    AwaitingSnapshot { held: VecDeque<HeldUpdate> },
    /// In step. `straddle` until the first event after the snapshot has been applied.
    Synced { last_u: u64, straddle: bool },
}

/// What the caller must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    Ok,
    /// Fetch a (new) snapshot for this symbol.
    NeedSnapshot,
}

#[derive(Debug, Clone)]
pub struct BookSync {
    instrument: Instrument,
    state: State,
    max_held: usize,
    /// Timestamps of this book's series (book_delta, book_snapshot, book_gap of this symbol):
    /// they depend only on this book's own receive times, so a replay reproduces them.
    clock: SeriesClock,
}

impl BookSync {
    /// A book that starts out waiting for its first snapshot. `max_held` bounds the events
    /// kept while waiting (memory stays bounded if the REST endpoint is slow).
    pub fn new(instrument: Instrument, max_held: usize) -> Self {
        BookSync { instrument, state: State::AwaitingSnapshot { held: VecDeque::new() }, max_held: max_held.max(1), clock: SeriesClock::new() }
    }

    pub fn instrument(&self) -> &Instrument {
        &self.instrument
    }

    pub fn is_synced(&self) -> bool {
        matches!(self.state, State::Synced { .. })
    }

    /// Updates held for a snapshot that has not come yet.
    pub fn held(&self) -> usize {
        match &self.state {
            State::AwaitingSnapshot { held } => held.len(),
            State::Synced { .. } => 0,
        }
    }

    /// The last update id this book has taken in, applied or held for its snapshot: an event
    /// that ends at or before it brings nothing new. `None` while nothing is held and no
    /// snapshot is applied. A rollover's overlap tells the copies of one event apart with it.
    pub fn last_seen_u(&self) -> Option<u64> {
        match &self.state {
            State::Synced { last_u, .. } => Some(*last_u),
            State::AwaitingSnapshot { held } => held.back().map(|u| u.final_update_id),
        }
    }

    /// Feeds one stream event; packets to store go to `out`.
    pub fn on_update(&mut self, upd: HeldUpdate, out: &mut Vec<DataPacket>, stats: &FeedStats) -> SyncOutcome {
        match &mut self.state {
            State::AwaitingSnapshot { held } => {
                if held.len() >= self.max_held {
                    // The oldest held event is useless once the snapshot is newer anyway;
                    // counting it keeps the books balanced.
                    held.pop_front();
                    stats.out_of_sequence.inc();
                }
                held.push_back(upd);
                SyncOutcome::Ok
            }
            State::Synced { last_u, straddle } => {
                let (last, straddling) = (*last_u, *straddle);
                if upd.final_update_id <= last {
                    // Already in the snapshot (straddle phase) or a duplicate: nothing new.
                    if straddling {
                        stats.superseded.inc();
                    } else {
                        stats.out_of_sequence.inc();
                    }
                    return SyncOutcome::Ok;
                }
                let chains = if straddling {
                    upd.first_update_id <= last + 1
                } else {
                    upd.first_update_id == last + 1
                };
                if chains {
                    self.state = State::Synced { last_u: upd.final_update_id, straddle: false };
                    self.emit_update(upd, out, stats);
                    SyncOutcome::Ok
                } else {
                    let reason = if straddling { GapReason::SnapshotMismatch } else { GapReason::SequenceBreak };
                    self.emit_gap(reason, Some(last), Some(upd.first_update_id), upd.recv_ns, out, stats);
                    let mut held = VecDeque::new();
                    held.push_back(upd);
                    self.state = State::AwaitingSnapshot { held };
                    SyncOutcome::NeedSnapshot
                }
            }
        }
    }

    /// [`Self::on_update`] for an event of a rollover's overlap ([`crate::overlap`]): one that
    /// overlaps the last applied event (`U <= last u + 1 <= u`) continues the chain. Another
    /// connection may batch the same updates into different events, and a depth event carries
    /// absolute quantities (each level as it is at `u`), so applying the part already applied
    /// again changes nothing; the same rule lets the first event after a snapshot straddle it.
    pub fn on_overlapping_update(&mut self, upd: HeldUpdate, out: &mut Vec<DataPacket>, stats: &FeedStats) -> SyncOutcome {
        if let State::Synced { last_u, straddle: false } = self.state {
            if upd.first_update_id <= last_u && upd.final_update_id > last_u {
                self.state = State::Synced { last_u: upd.final_update_id, straddle: false };
                self.emit_update(upd, out, stats);
                return SyncOutcome::Ok;
            }
        }
        self.on_update(upd, out, stats)
    }

    /// Applies a REST snapshot taken after the held events started arriving, received now.
    pub fn on_snapshot(&mut self, snap: DepthSnapshot, out: &mut Vec<DataPacket>, stats: &FeedStats) -> SyncOutcome {
        self.on_snapshot_at(snap, clock::now_ns(), out, stats)
    }

    /// Applies a REST snapshot the session received (applied) at `recv_ns`.
    pub fn on_snapshot_at(&mut self, snap: DepthSnapshot, recv_ns: i64, out: &mut Vec<DataPacket>, stats: &FeedStats) -> SyncOutcome {
        let State::AwaitingSnapshot { held } = &mut self.state else {
            // A late answer to a request that is no longer needed.
            return SyncOutcome::Ok;
        };
        let lid = snap.last_update_id;
        while held.front().is_some_and(|u| u.final_update_id <= lid) {
            held.pop_front();
            stats.superseded.inc();
        }
        if let Some(first) = held.front() {
            if first.first_update_id > lid + 1 {
                // The snapshot is older than the stream we hold: a newer one is needed. The
                // held events stay; keep waiting.
                return SyncOutcome::NeedSnapshot;
            }
        }
        let held = std::mem::take(held);
        self.emit_snapshot(snap, recv_ns, out, stats);
        self.state = State::Synced { last_u: lid, straddle: true };
        let mut outcome = SyncOutcome::Ok;
        for upd in held {
            // After a break the book waits for a new snapshot again, and `on_update` holds
            // the rest behind the event that broke the chain: none of them is lost uncounted.
            if self.on_update(upd, out, stats) == SyncOutcome::NeedSnapshot {
                outcome = SyncOutcome::NeedSnapshot;
            }
        }
        outcome
    }

    /// The connection dropped (or the service stops, `reason` Shutdown): whatever happens
    /// until the next snapshot is unknown, and the store says so.
    /// Events held for a snapshot that will now never come are discarded and counted as
    /// out of sequence (their gap is already stored, or the book was never synced).
    pub fn on_disconnect(&mut self, reason: GapReason, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        self.on_disconnect_at(reason, clock::now_ns(), out, stats);
    }

    /// [`Self::on_disconnect`] for a connection that ended at `at_ns`.
    pub fn on_disconnect_at(&mut self, reason: GapReason, at_ns: i64, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        match &self.state {
            State::Synced { last_u, .. } => {
                let last_u = *last_u;
                self.emit_gap(reason, Some(last_u), None, at_ns, out, stats);
            }
            State::AwaitingSnapshot { held } => stats.out_of_sequence.add(held.len() as u64),
        }
        self.state = State::AwaitingSnapshot { held: VecDeque::new() };
    }

    fn emit_update(&mut self, u: HeldUpdate, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        let points = u.bids.len() + u.asks.len();
        stats.mi.inc();
        stats.points.add(points as u64);
        out.push(DataPacket::MI(MarketIncremental {
            instrument: self.instrument.clone(),
            first_update_id: u.first_update_id,
            last_update_id: u.final_update_id,
            prev_update_id: None,
            event_time_ms: u.event_time_ms,
            recv_time_ns: self.clock.reserve(u.recv_ns, points),
            bids: u.bids,
            asks: u.asks,
        }));
    }

    fn emit_snapshot(&mut self, s: DepthSnapshot, recv_ns: i64, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        let points = (s.bids.len() + s.asks.len()).max(1);
        stats.st.inc();
        stats.points.add(points as u64);
        out.push(DataPacket::ST(Snapshot {
            instrument: self.instrument.clone(),
            cur_seq: s.last_update_id,
            prev_seq: None,
            timestamp: None,
            recv_time_ns: self.clock.reserve(recv_ns, points),
            bids: s.bids,
            asks: s.asks,
        }));
    }

    fn emit_gap(&mut self, reason: GapReason, last_id: Option<u64>, next_id: Option<u64>, at_ns: i64, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        stats.gaps.inc();
        stats.points.inc();
        if reason == GapReason::Shutdown {
            tracing::debug!(symbol = %self.instrument.symbol, "book closed at stop");
        } else {
            tracing::warn!(exchange = self.instrument.exchange, symbol = %self.instrument.symbol, reason = reason.as_str(), ?last_id, ?next_id, "gap in order book updates; resyncing this symbol");
        }
        out.push(DataPacket::Gap(GapMarker { instrument: self.instrument.clone(), reason, last_id, next_id, recv_time_ns: self.clock.reserve(at_ns, 1) }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn inst() -> Instrument {
        Instrument { exchange: "binance", market: "spot", symbol: Arc::from("BTCUSDT") }
    }

    fn upd(first: u64, last: u64) -> HeldUpdate {
        HeldUpdate { first_update_id: first, final_update_id: last, event_time_ms: None, recv_ns: 0, bids: vec![], asks: vec![] }
    }

    fn snap(lid: u64) -> DepthSnapshot {
        DepthSnapshot { last_update_id: lid, bids: vec![], asks: vec![] }
    }

    fn kinds(out: &[DataPacket]) -> Vec<String> {
        out.iter()
            .map(|p| match p {
                DataPacket::MI(m) => format!("MI{}-{}", m.first_update_id, m.last_update_id),
                DataPacket::ST(s) => format!("ST{}", s.cur_seq),
                DataPacket::Gap(g) => format!("gap:{}", g.reason.as_str()),
                other => other.kind().to_string(),
            })
            .collect()
    }

    #[test]
    fn drops_superseded_and_applies_the_straddling_event() {
        // BTCUSDT 2021-04-04: lastUpdateId 9893033066, applied event U 9893033062 u 9893033067.
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst(), 100);
        let mut out = vec![];
        b.on_update(upd(9893033050, 9893033061), &mut out, &stats);
        b.on_update(upd(9893033062, 9893033067), &mut out, &stats);
        assert_eq!(b.on_snapshot(snap(9893033066), &mut out, &stats), SyncOutcome::Ok);
        b.on_update(upd(9893033068, 9893033070), &mut out, &stats);
        assert_eq!(kinds(&out), ["ST9893033066", "MI9893033062-9893033067", "MI9893033068-9893033070"]);
        assert_eq!(stats.superseded.get(), 1);
    }

    #[test]
    fn event_ending_at_last_update_id_is_dropped() {
        // NKNUSDT 2021-10-11: lastUpdateId 499869752 equals the first event's u.
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst(), 100);
        let mut out = vec![];
        assert_eq!(b.on_snapshot(snap(499869752), &mut out, &stats), SyncOutcome::Ok);
        b.on_update(upd(499869750, 499869752), &mut out, &stats);
        b.on_update(upd(499869753, 499869760), &mut out, &stats);
        assert_eq!(kinds(&out), ["ST499869752", "MI499869753-499869760"]);
        assert_eq!(stats.superseded.get(), 1);
    }

    #[test]
    fn a_break_stores_a_gap_and_asks_for_a_snapshot() {
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst(), 100);
        let mut out = vec![];
        b.on_snapshot(snap(10), &mut out, &stats);
        b.on_update(upd(11, 12), &mut out, &stats);
        assert_eq!(b.on_update(upd(15, 16), &mut out, &stats), SyncOutcome::NeedSnapshot);
        assert!(!b.is_synced());
        b.on_update(upd(17, 18), &mut out, &stats);
        assert_eq!(b.on_snapshot(snap(16), &mut out, &stats), SyncOutcome::Ok);
        assert_eq!(kinds(&out), ["ST10", "MI11-12", "gap:sequence_break", "ST16", "MI17-18"]);
        let DataPacket::Gap(g) = &out[2] else { panic!() };
        assert_eq!((g.last_id, g.next_id), (Some(12), Some(15)));
        assert_eq!(stats.gaps.get(), 1);
    }

    #[test]
    fn events_held_behind_a_break_found_at_the_snapshot_are_kept_and_counted() {
        // A late snapshot: the held run already contains a hole (15 after 12). The events after
        // the break stay held for the next snapshot, which supersedes them: every event ends in
        // exactly one counter.
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst(), 100);
        let mut out = vec![];
        for (first, last) in [(11, 12), (15, 16), (17, 18), (19, 20)] {
            b.on_update(upd(first, last), &mut out, &stats);
        }
        assert_eq!(b.on_snapshot(snap(10), &mut out, &stats), SyncOutcome::NeedSnapshot);
        assert_eq!(b.on_snapshot(snap(20), &mut out, &stats), SyncOutcome::Ok);
        b.on_update(upd(21, 22), &mut out, &stats);
        assert_eq!(kinds(&out), ["ST10", "MI11-12", "gap:sequence_break", "ST20", "MI21-22"]);
        assert_eq!((stats.mi.get(), stats.superseded.get(), stats.out_of_sequence.get()), (2, 3, 0));
    }

    #[test]
    fn a_snapshot_older_than_the_held_events_is_refused() {
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst(), 100);
        let mut out = vec![];
        b.on_update(upd(20, 21), &mut out, &stats);
        assert_eq!(b.on_snapshot(snap(10), &mut out, &stats), SyncOutcome::NeedSnapshot);
        assert!(out.is_empty());
        assert_eq!(b.on_snapshot(snap(20), &mut out, &stats), SyncOutcome::Ok);
        assert_eq!(kinds(&out), ["ST20", "MI20-21"]);
    }

    #[test]
    fn duplicates_are_counted_not_stored_and_disconnect_marks_a_gap() {
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst(), 100);
        let mut out = vec![];
        b.on_snapshot(snap(10), &mut out, &stats);
        b.on_update(upd(11, 12), &mut out, &stats);
        b.on_update(upd(11, 12), &mut out, &stats);
        b.on_disconnect(GapReason::Disconnect, &mut out, &stats);
        assert_eq!(kinds(&out), ["ST10", "MI11-12", "gap:disconnect"]);
        assert_eq!(stats.out_of_sequence.get(), 1);
        assert!(!b.is_synced());
    }

    #[test]
    fn held_events_discarded_at_disconnect_are_counted() {
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst(), 100);
        let mut out = vec![];
        b.on_update(upd(1, 2), &mut out, &stats);
        b.on_update(upd(3, 4), &mut out, &stats);
        b.on_disconnect(GapReason::Disconnect, &mut out, &stats);
        assert!(out.is_empty(), "never synced: no gap to mark");
        assert_eq!(stats.out_of_sequence.get(), 2);
    }

    #[test]
    fn held_events_are_bounded() {
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst(), 2);
        let mut out = vec![];
        for i in 0..5 {
            b.on_update(upd(i * 2 + 1, i * 2 + 2), &mut out, &stats);
        }
        assert_eq!(stats.out_of_sequence.get(), 3);
        assert_eq!(b.on_snapshot(snap(6), &mut out, &stats), SyncOutcome::Ok);
        assert_eq!(kinds(&out), ["ST6", "MI7-8", "MI9-10"]);
    }

    #[test]
    fn timestamps_order_snapshot_before_its_updates() {
        let stats = FeedStats::default();
        let mut b = BookSync::new(inst(), 100);
        let mut out = vec![];
        let mut u = upd(5, 6);
        u.recv_ns = 1; // received long before the snapshot
        b.on_update(u, &mut out, &stats);
        b.on_snapshot(snap(5), &mut out, &stats);
        let (DataPacket::ST(s), DataPacket::MI(m)) = (&out[0], &out[1]) else { panic!() };
        assert!(m.recv_time_ns > s.recv_time_ns);
    }
}
