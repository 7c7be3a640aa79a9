//! `MbpSync`: Huobi's rule for keeping a Market-By-Price book in step with its incrementals,
//! one instance per symbol. Pure state machine (no I/O), so every branch is unit-tested.
//!
//! The documented procedure (protocols.md §3):
//! 1. subscribe `market.$symbol.mbp.$levels` and hold every incremental from that moment;
//! 2. `req` the same topic; the reply's `seqNum` S is the book's version;
//! 3. drop held incrementals with `seqNum <= S`; the first applied must have
//!    `prevSeqNum <= S < seqNum` (normally `prevSeqNum == S`);
//! 4. every later one must have `prevSeqNum ==` the previous `seqNum`. `seqNum` is not
//!    contiguous: steps above one are normal, only the `prevSeqNum` link counts.
//!
//! Holding from the moment of `sub` matters: replies to `req` have been seen to lag 10-14
//! incrementals behind the stream, so S usually lies inside the held run.
//!
//! What this stores: the `req` snapshot (ST) at each (re)sync, every applied incremental (MI,
//! `prev_id` = `prevSeqNum`), and a gap marker whenever the chain breaks or the connection drops
//! while in sync. Every incremental ends in exactly one counter: `mi` (applied), `superseded`
//! (already in the snapshot), or `out_of_sequence` (a duplicate, or discarded while no book
//! could take it: buffer overflow, disconnect).

use std::collections::VecDeque;

use ds_api::clock::SeriesClock;
use ds_api::{
    DataPacket, FeedStats, GapMarker, GapReason, Instrument, Level, MarketIncremental, Snapshot,
};

/// One incremental, as held while the snapshot is on its way.
#[derive(Debug, Clone, PartialEq)]
pub struct MbpUpdate {
    pub seq_num: u64,
    pub prev_seq_num: u64,
    /// Exchange time of the push (`ts`), ms.
    pub ts: Option<i64>,
    pub recv_ns: i64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// A `req` reply: the book at version `seq_num`.
#[derive(Debug, Clone, PartialEq)]
pub struct MbpSnapshot {
    pub seq_num: u64,
    pub ts: Option<i64>,
    pub recv_ns: i64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

#[derive(Debug)]
enum State {
    /// Waiting for a snapshot; incrementals are held in order of receipt.
    AwaitingSnapshot { held: VecDeque<MbpUpdate> },
    /// In step at `last_seq`. `straddle` until the first incremental after the snapshot has
    /// been applied (it may start before the snapshot's version: the tolerant rule).
    Synced { last_seq: u64, straddle: bool },
}

/// What the caller must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    Ok,
    /// `req` a (new) snapshot of this symbol.
    NeedSnapshot,
}

/// What became of a snapshot reply.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// Stored, and the held incrementals after it applied.
    Applied,
    /// Not needed any more (the book is in sync): counted as superseded, not stored.
    NotNeeded,
    /// Older than the held incrementals (a gap would sit between them): counted as
    /// superseded, not stored; ask again.
    TooOld,
}

#[derive(Debug)]
pub struct MbpSync {
    instrument: Instrument,
    state: State,
    max_held: usize,
    /// Timestamps of this book's MBP series: they depend only on this book's receive times, so
    /// a replay of a capture reproduces them (see `ds_api::clock::SeriesClock`).
    clock: SeriesClock,
}

impl MbpSync {
    /// A book that starts out waiting for its first snapshot. `max_held` bounds the
    /// incrementals kept while waiting, so memory stays bounded if replies never come.
    pub fn new(instrument: Instrument, max_held: usize) -> Self {
        MbpSync {
            instrument,
            state: State::AwaitingSnapshot {
                held: VecDeque::new(),
            },
            max_held: max_held.max(1),
            clock: SeriesClock::new(),
        }
    }

    pub fn instrument(&self) -> &Instrument {
        &self.instrument
    }

    pub fn is_synced(&self) -> bool {
        matches!(self.state, State::Synced { .. })
    }

    /// The last applied `seqNum`, when in sync.
    pub fn last_seq(&self) -> Option<u64> {
        match self.state {
            State::Synced { last_seq, .. } => Some(last_seq),
            State::AwaitingSnapshot { .. } => None,
        }
    }

    /// Feeds one incremental; packets to store go to `out`.
    pub fn on_update(
        &mut self,
        upd: MbpUpdate,
        out: &mut Vec<DataPacket>,
        stats: &FeedStats,
    ) -> SyncOutcome {
        match &mut self.state {
            State::AwaitingSnapshot { held } => {
                if held.len() >= self.max_held {
                    // The oldest is the least useful: any snapshot that can still be aligned
                    // is newer than it.
                    held.pop_front();
                    stats.out_of_sequence.inc();
                }
                held.push_back(upd);
                SyncOutcome::Ok
            }
            State::Synced { last_seq, straddle } => {
                let (last, straddling) = (*last_seq, *straddle);
                if upd.seq_num <= last {
                    if straddling {
                        stats.superseded.inc();
                    } else {
                        // A repeat of something applied (or a late, reordered one: the chain
                        // has moved on and the gap, if any, was marked).
                        stats.out_of_sequence.inc();
                    }
                    return SyncOutcome::Ok;
                }
                let chains = if straddling {
                    upd.prev_seq_num <= last
                } else {
                    upd.prev_seq_num == last
                };
                if chains {
                    self.state = State::Synced {
                        last_seq: upd.seq_num,
                        straddle: false,
                    };
                    self.emit_update(upd, out, stats);
                    SyncOutcome::Ok
                } else {
                    let reason = if straddling {
                        GapReason::SnapshotMismatch
                    } else {
                        GapReason::SequenceBreak
                    };
                    self.emit_gap(
                        reason,
                        Some(last),
                        Some(upd.seq_num),
                        upd.recv_ns,
                        out,
                        stats,
                    );
                    self.state = State::AwaitingSnapshot {
                        held: VecDeque::from([upd]),
                    };
                    SyncOutcome::NeedSnapshot
                }
            }
        }
    }

    /// Applies a `req` reply taken after the held incrementals started arriving.
    pub fn on_snapshot(
        &mut self,
        snap: MbpSnapshot,
        out: &mut Vec<DataPacket>,
        stats: &FeedStats,
    ) -> (SnapshotOutcome, SyncOutcome) {
        let State::AwaitingSnapshot { held } = &mut self.state else {
            stats.superseded.inc();
            return (SnapshotOutcome::NotNeeded, SyncOutcome::Ok);
        };
        let s = snap.seq_num;
        if held.front().is_some_and(|u| u.prev_seq_num > s) {
            // Even the oldest held incremental starts after the snapshot: what happened in
            // between was never received. A newer snapshot is needed; keep holding.
            stats.superseded.inc();
            return (SnapshotOutcome::TooOld, SyncOutcome::NeedSnapshot);
        }
        let mut held = std::mem::take(held);
        while held.front().is_some_and(|u| u.seq_num <= s) {
            held.pop_front();
            stats.superseded.inc();
        }
        self.emit_snapshot(snap, out, stats);
        self.state = State::Synced {
            last_seq: s,
            straddle: true,
        };
        while let Some(upd) = held.pop_front() {
            if self.on_update(upd, out, stats) == SyncOutcome::NeedSnapshot {
                // The rest stays held behind the one that broke the chain.
                if let State::AwaitingSnapshot { held: now } = &mut self.state {
                    now.extend(held);
                }
                return (SnapshotOutcome::Applied, SyncOutcome::NeedSnapshot);
            }
        }
        (SnapshotOutcome::Applied, SyncOutcome::Ok)
    }

    /// The connection dropped (or the service stops, `reason` Shutdown): what happens until
    /// the next snapshot is unknown, and the store says so. Held incrementals die with the
    /// connection and are counted.
    /// The connection ended at `at_ns` (the time a capture records for it, so a replay stamps
    /// the gap marker as the live run did).
    pub fn on_disconnect(
        &mut self,
        reason: GapReason,
        at_ns: i64,
        out: &mut Vec<DataPacket>,
        stats: &FeedStats,
    ) {
        match &self.state {
            State::Synced { last_seq, .. } => {
                self.emit_gap(reason, Some(*last_seq), None, at_ns, out, stats)
            }
            State::AwaitingSnapshot { held } => stats.out_of_sequence.add(held.len() as u64),
        }
        self.state = State::AwaitingSnapshot {
            held: VecDeque::new(),
        };
    }

    fn emit_update(&mut self, u: MbpUpdate, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        let points = u.bids.len() + u.asks.len();
        stats.mi.inc();
        stats.points.add(points as u64);
        out.push(DataPacket::MI(MarketIncremental {
            instrument: self.instrument.clone(),
            first_update_id: u.seq_num,
            last_update_id: u.seq_num,
            prev_update_id: Some(u.prev_seq_num),
            event_time_ms: u.ts,
            recv_time_ns: self.clock.reserve(u.recv_ns, points),
            bids: u.bids,
            asks: u.asks,
        }));
    }

    fn emit_snapshot(&mut self, s: MbpSnapshot, out: &mut Vec<DataPacket>, stats: &FeedStats) {
        let points = (s.bids.len() + s.asks.len()).max(1);
        stats.st.inc();
        stats.points.add(points as u64);
        // Reserved now, after every incremental already emitted and before the held ones that
        // follow it: time order in the store is the order to rebuild in.
        out.push(DataPacket::ST(Snapshot {
            instrument: self.instrument.clone(),
            cur_seq: s.seq_num,
            prev_seq: None,
            timestamp: s.ts,
            recv_time_ns: self.clock.reserve(s.recv_ns, points),
            bids: s.bids,
            asks: s.asks,
        }));
    }

    fn emit_gap(
        &mut self,
        reason: GapReason,
        last_id: Option<u64>,
        next_id: Option<u64>,
        at_ns: i64,
        out: &mut Vec<DataPacket>,
        stats: &FeedStats,
    ) {
        stats.gaps.inc();
        stats.points.inc();
        if reason == GapReason::Shutdown {
            tracing::debug!(symbol = %self.instrument.symbol, "book closed at stop");
        } else {
            tracing::warn!(exchange = self.instrument.exchange, symbol = %self.instrument.symbol, reason = reason.as_str(), ?last_id, ?next_id, "gap in order book updates; resyncing this symbol");
        }
        out.push(DataPacket::Gap(GapMarker {
            instrument: self.instrument.clone(),
            reason,
            last_id,
            next_id,
            recv_time_ns: self.clock.reserve(at_ns, 1),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_api::Decimal;
    use std::sync::Arc;

    fn inst() -> Instrument {
        Instrument {
            exchange: "huobi",
            market: "spot",
            symbol: Arc::from("AIDOGEUSDT"),
        }
    }

    fn upd(prev: u64, seq: u64) -> MbpUpdate {
        MbpUpdate {
            seq_num: seq,
            prev_seq_num: prev,
            ts: None,
            recv_ns: 0,
            bids: vec![],
            asks: vec![],
        }
    }

    fn snap(seq: u64) -> MbpSnapshot {
        MbpSnapshot {
            seq_num: seq,
            ts: None,
            recv_ns: 0,
            bids: vec![],
            asks: vec![],
        }
    }

    fn kinds(out: &[DataPacket]) -> Vec<String> {
        out.iter()
            .map(|p| match p {
                DataPacket::MI(m) => {
                    format!("MI{}<-{}", m.last_update_id, m.prev_update_id.unwrap())
                }
                DataPacket::ST(s) => format!("ST{}", s.cur_seq),
                DataPacket::Gap(g) => {
                    format!("gap:{}:{:?}-{:?}", g.reason.as_str(), g.last_id, g.next_id)
                }
                other => other.kind().to_string(),
            })
            .collect()
    }

    struct Case {
        name: &'static str,
        /// `u(prev,seq)`, `s(seq)`, `d` (disconnect), in order.
        steps: &'static [Step],
        expect: &'static [&'static str],
        /// (superseded, out_of_sequence)
        counts: (u64, u64),
    }

    enum Step {
        U(u64, u64),
        S(u64),
        D,
    }
    use Step::*;

    #[test]
    fn sync_rule_table() {
        let cases = [
            Case {
                // The real chain of ccxt issue 18749: 155247355 -> 155247358 -> 155247362.
                name: "snapshot equals a held prevSeqNum; steps above one",
                steps: &[
                    U(155247350, 155247355),
                    U(155247355, 155247358),
                    U(155247358, 155247362),
                    S(155247355),
                ],
                expect: &[
                    "ST155247355",
                    "MI155247358<-155247355",
                    "MI155247362<-155247358",
                ],
                counts: (1, 0),
            },
            Case {
                name: "tolerant rule: the snapshot falls inside the first applied update",
                steps: &[U(10, 14), U(14, 20), S(17), U(20, 23)],
                expect: &["ST17", "MI20<-14", "MI23<-20"],
                counts: (1, 0),
            },
            Case {
                name: "snapshot newer than everything held, the next update chains",
                steps: &[U(1, 3), S(5), U(5, 8)],
                expect: &["ST5", "MI8<-5"],
                counts: (1, 0),
            },
            Case {
                name: "snapshot older than the oldest held update is refused",
                steps: &[U(20, 25), S(10), U(25, 27), S(25)],
                expect: &["ST25", "MI27<-25"],
                counts: (2, 0),
            },
            Case {
                name: "a missing update stores a gap; the resync realigns",
                steps: &[S(100), U(100, 103), U(106, 110), U(110, 111), S(108)],
                expect: &[
                    "ST100",
                    "MI103<-100",
                    "gap:sequence_break:Some(103)-Some(110)",
                    "ST108",
                    "MI110<-106",
                    "MI111<-110",
                ],
                counts: (0, 0),
            },
            Case {
                name: "a reordered pair: gap at the early one, the late one is stale afterwards",
                steps: &[S(100), U(100, 102), U(104, 107), U(102, 104), S(104)],
                expect: &[
                    "ST100",
                    "MI102<-100",
                    "gap:sequence_break:Some(102)-Some(107)",
                    "ST104",
                    "MI107<-104",
                ],
                counts: (0, 1),
            },
            Case {
                name: "a duplicate is counted, not stored",
                steps: &[S(1), U(1, 2), U(1, 2), U(2, 3)],
                expect: &["ST1", "MI2<-1", "MI3<-2"],
                counts: (0, 1),
            },
            Case {
                name: "straddle phase: first update must not start after the snapshot",
                steps: &[S(10), U(12, 15)],
                expect: &["ST10", "gap:snapshot_mismatch:Some(10)-Some(15)"],
                counts: (0, 0),
            },
            Case {
                name: "disconnect in sync marks a gap; held updates at a disconnect are counted",
                steps: &[S(1), U(1, 2), D, U(5, 6), U(6, 7), D],
                expect: &["ST1", "MI2<-1", "gap:disconnect:Some(2)-None"],
                counts: (0, 2),
            },
            Case {
                name: "a reply that is no longer needed is counted, not stored",
                steps: &[S(1), S(2), U(1, 2)],
                expect: &["ST1", "MI2<-1"],
                counts: (1, 0),
            },
            Case {
                name: "a reply lagging into the middle of the held run (the BitTrade probe)",
                steps: &[
                    U(0, 2),
                    U(2, 4),
                    U(4, 6),
                    U(6, 9),
                    U(9, 11),
                    S(6),
                    U(11, 12),
                ],
                expect: &["ST6", "MI9<-6", "MI11<-9", "MI12<-11"],
                counts: (3, 0),
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let stats = FeedStats::default();
            let mut b = MbpSync::new(inst(), 100);
            let mut out = vec![];
            for step in c.steps {
                match *step {
                    U(p, s) => {
                        b.on_update(upd(p, s), &mut out, &stats);
                    }
                    S(s) => {
                        b.on_snapshot(snap(s), &mut out, &stats);
                    }
                    D => b.on_disconnect(GapReason::Disconnect, ds_api::clock::now_ns(), &mut out, &stats),
                }
            }
            assert_eq!(kinds(&out), c.expect, "case {i}: {}", c.name);
            assert_eq!(
                (stats.superseded.get(), stats.out_of_sequence.get()),
                c.counts,
                "case {i}: {}",
                c.name
            );
        }
    }

    #[test]
    fn outcomes_tell_the_session_what_to_do() {
        let stats = FeedStats::default();
        let mut b = MbpSync::new(inst(), 100);
        let mut out = vec![];
        b.on_update(upd(20, 25), &mut out, &stats);
        assert_eq!(
            b.on_snapshot(snap(10), &mut out, &stats),
            (SnapshotOutcome::TooOld, SyncOutcome::NeedSnapshot)
        );
        assert_eq!(
            b.on_snapshot(snap(25), &mut out, &stats),
            (SnapshotOutcome::Applied, SyncOutcome::Ok)
        );
        assert_eq!(
            b.on_snapshot(snap(26), &mut out, &stats),
            (SnapshotOutcome::NotNeeded, SyncOutcome::Ok)
        );
        assert_eq!(
            b.on_update(upd(26, 27), &mut out, &stats),
            SyncOutcome::NeedSnapshot
        );
        assert!(!b.is_synced());
        // A break inside the held run after a snapshot: the rest stays held.
        let mut b = MbpSync::new(inst(), 100);
        for (p, s) in [(1, 2), (2, 3), (5, 6), (6, 7)] {
            b.on_update(upd(p, s), &mut out, &stats);
        }
        out.clear();
        assert_eq!(
            b.on_snapshot(snap(1), &mut out, &stats),
            (SnapshotOutcome::Applied, SyncOutcome::NeedSnapshot)
        );
        assert_eq!(
            kinds(&out),
            [
                "ST1",
                "MI2<-1",
                "MI3<-2",
                "gap:sequence_break:Some(3)-Some(6)"
            ]
        );
        out.clear();
        b.on_snapshot(snap(5), &mut out, &stats);
        assert_eq!(kinds(&out), ["ST5", "MI6<-5", "MI7<-6"]);
    }

    #[test]
    fn held_updates_are_bounded_and_counted() {
        let stats = FeedStats::default();
        let mut b = MbpSync::new(inst(), 2);
        let mut out = vec![];
        for i in 0..5 {
            b.on_update(upd(i * 2, i * 2 + 2), &mut out, &stats);
        }
        assert_eq!(stats.out_of_sequence.get(), 3);
        b.on_snapshot(snap(6), &mut out, &stats);
        assert_eq!(kinds(&out), ["ST6", "MI8<-6", "MI10<-8"]);
    }

    #[test]
    fn levels_and_times_reach_the_packets() {
        let stats = FeedStats::default();
        let mut b = MbpSync::new(inst(), 10);
        let mut out = vec![];
        let lvl = |p: &str, q: &str| Level {
            price: Decimal::parse(p).unwrap(),
            size: Decimal::parse(q).unwrap(),
        };
        let mut u = upd(155247355, 155247358);
        u.recv_ns = 1; // received long before the snapshot
        u.ts = Some(1690948841557);
        u.asks = vec![
            lvl("9.486E-11", "5.4329174972728E12"),
            lvl("9.488E-11", "0.0"),
        ];
        b.on_update(u, &mut out, &stats);
        let mut s = snap(155247355);
        s.bids = vec![lvl("9.485E-11", "1")];
        b.on_snapshot(s, &mut out, &stats);
        let (DataPacket::ST(s), DataPacket::MI(m)) = (&out[0], &out[1]) else {
            panic!("{out:?}")
        };
        assert!(
            m.recv_time_ns > s.recv_time_ns,
            "the snapshot precedes its updates in time"
        );
        assert_eq!(m.asks[0].price.as_str(), "9.486E-11");
        assert_eq!(
            (m.event_time_ms, m.prev_update_id),
            (Some(1690948841557), Some(155247355))
        );
        assert_eq!(
            (stats.mi.get(), stats.st.get(), stats.points.get()),
            (1, 1, 3)
        );
    }
}
