//! `Overlap`: the books of one [`crate::session::DepthSession`] while a rollover has two
//! connections open (the old one and its replacement, see [`ds_api::rollover`]).
//!
//! Both connections carry the same diff-depth events with the same `U`/`u`, each a contiguous
//! run from its own start, and both arrive here in arrival order. Per book:
//!
//! - an event that ends at or before the last one the book took in (applied or held for its
//!   snapshot) is the other connection's copy: counted `superseded`, not stored again;
//! - an event of the replacement that starts *after* the next one the book needs (the
//!   replacement runs ahead of the old connection) is held here, and applied once the old
//!   connection has delivered what comes before it; it would otherwise look like a
//!   sequence break and cost a gap and a resync for nothing;
//! - anything else goes to the book as usual, except that an event overlapping the last
//!   applied one continues the chain ([`BookSync::on_overlapping_update`]): the two
//!   connections may batch the same updates differently.
//!
//! A book is *carried* once one of the replacement's events chained or proved a copy: from
//! then on the replacement alone continues its chain, because its run is contiguous. When
//! every book is carried, the old connection can be closed ([`ds_api::ws::Flow::Handover`]).
//! At the handover the events still held are applied in order; one that does not chain is a
//! real hole (the old connection ended before delivering what precedes it) and gets a
//! `sequence_break` gap and a resync, like any other.
//!
//! The replacement may still be behind the old connection at the handover: its next events
//! are copies of what the old one delivered. They stay `superseded` (not `out_of_sequence`,
//! which means a repeat on one connection) until each book has applied an event of its own
//! from the replacement; then the overlap is over ([`Overlap::done`]).

use std::collections::VecDeque;

use ds_api::{DataPacket, FeedStats};

use crate::book_sync::{BookSync, HeldUpdate, SyncOutcome};

/// Which connection an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Old,
    Replacement,
}

#[derive(Debug)]
pub struct Overlap {
    /// Per book: the replacement's events that run ahead of the old connection, in order.
    ahead: Vec<VecDeque<HeldUpdate>>,
    /// Per book: the replacement continues its chain.
    carried: Vec<bool>,
    /// The old connection is closed; every event now comes from the replacement.
    old_closed: bool,
    /// Per book, after the handover: the replacement delivered an event past the old one's.
    caught_up: Vec<bool>,
}

impl Overlap {
    pub fn new(books: usize) -> Self {
        Overlap { ahead: vec![VecDeque::new(); books], carried: vec![false; books], old_closed: false, caught_up: vec![false; books] }
    }

    /// The old connection is still open (a handover has not happened).
    pub fn old_open(&self) -> bool {
        !self.old_closed
    }

    /// After the handover, every book has left the old connection's copies behind.
    pub fn done(&self) -> bool {
        self.old_closed && self.caught_up.iter().all(|&c| c)
    }

    /// Every book is carried by the replacement: the old connection is no longer needed.
    pub fn all_carried(&self) -> bool {
        self.carried.iter().all(|&c| c)
    }

    /// One event of book `i` from either connection; packets to store go to `out`.
    pub fn on_update(&mut self, book: &mut BookSync, i: usize, upd: HeldUpdate, origin: Origin, out: &mut Vec<DataPacket>, stats: &FeedStats) -> SyncOutcome {
        // After the handover the only connection is the replacement, whatever the session
        // calls it.
        let origin = if self.old_closed { Origin::Replacement } else { origin };
        let seen = book.last_seen_u();
        if seen.is_some_and(|s| upd.final_update_id <= s) {
            stats.superseded.inc();
            if origin == Origin::Replacement {
                self.carried[i] = true;
            }
            return SyncOutcome::Ok;
        }
        if origin == Origin::Replacement {
            // Held only while the old connection may still deliver what comes before it.
            if !self.old_closed && !self.carried[i] && seen.is_some_and(|s| upd.first_update_id > s + 1) {
                self.ahead[i].push_back(upd);
                return SyncOutcome::Ok;
            }
            self.carried[i] = true;
            self.caught_up[i] |= self.old_closed;
        }
        let outcome = book.on_overlapping_update(upd, out, stats);
        let drained = self.drain(book, i, false, out, stats);
        worst(outcome, drained)
    }

    /// The old connection is closed: the events still held are applied in order. The books
    /// that now need a snapshot (a hole the old connection never filled).
    pub fn close_old(&mut self, books: &mut [BookSync], out: &mut Vec<DataPacket>, stats: &FeedStats) -> Vec<usize> {
        self.old_closed = true;
        (0..books.len()).filter(|&i| self.drain(&mut books[i], i, true, out, stats) == SyncOutcome::NeedSnapshot).collect()
    }

    /// The replacement is gone (or every connection is): the events held from it are
    /// discarded, counted as out of sequence like events held for a snapshot at a disconnect.
    pub fn discard(self, stats: &FeedStats) {
        stats.out_of_sequence.add(self.ahead.iter().map(|a| a.len() as u64).sum());
    }

    /// Applies the held events of book `i` that are copies or chain now; with `all`, every
    /// one of them, chaining or not.
    fn drain(&mut self, book: &mut BookSync, i: usize, all: bool, out: &mut Vec<DataPacket>, stats: &FeedStats) -> SyncOutcome {
        let mut outcome = SyncOutcome::Ok;
        while let Some(front) = self.ahead[i].front() {
            let seen = book.last_seen_u();
            if seen.is_some_and(|s| front.final_update_id <= s) {
                self.ahead[i].pop_front();
                stats.superseded.inc();
                self.carried[i] = true;
                continue;
            }
            if !all && seen.is_some_and(|s| front.first_update_id > s + 1) {
                break;
            }
            let upd = self.ahead[i].pop_front().expect("front exists");
            self.carried[i] = true;
            outcome = worst(outcome, book.on_overlapping_update(upd, out, stats));
        }
        outcome
    }
}

fn worst(a: SyncOutcome, b: SyncOutcome) -> SyncOutcome {
    if a == SyncOutcome::NeedSnapshot || b == SyncOutcome::NeedSnapshot {
        SyncOutcome::NeedSnapshot
    } else {
        SyncOutcome::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::DepthSnapshot;
    use ds_api::Instrument;
    use std::sync::Arc;

    fn upd(first: u64, last: u64) -> HeldUpdate {
        HeldUpdate { first_update_id: first, final_update_id: last, event_time_ms: None, recv_ns: 0, bids: vec![], asks: vec![] }
    }

    fn synced_book(stats: &FeedStats, out: &mut Vec<DataPacket>) -> BookSync {
        let mut b = BookSync::new(Instrument { exchange: "binance", market: "spot", symbol: Arc::from("BTCUSDT") }, 100);
        b.on_snapshot(DepthSnapshot { last_update_id: 10, bids: vec![], asks: vec![] }, out, stats);
        b.on_update(upd(11, 12), out, stats);
        b
    }

    fn applied(out: &[DataPacket]) -> Vec<(u64, u64)> {
        out.iter()
            .filter_map(|p| match p {
                DataPacket::MI(m) => Some((m.first_update_id, m.last_update_id)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn copies_from_both_connections_are_superseded_and_the_chain_goes_on() {
        let (stats, mut out) = (FeedStats::default(), Vec::new());
        let mut b = synced_book(&stats, &mut out);
        let mut o = Overlap::new(1);
        // The replacement starts behind the old connection: its first events are copies.
        assert_eq!(o.on_update(&mut b, 0, upd(13, 14), Origin::Old, &mut out, &stats), SyncOutcome::Ok);
        assert_eq!(o.on_update(&mut b, 0, upd(11, 12), Origin::Replacement, &mut out, &stats), SyncOutcome::Ok);
        assert!(o.all_carried());
        o.on_update(&mut b, 0, upd(13, 14), Origin::Replacement, &mut out, &stats);
        o.on_update(&mut b, 0, upd(15, 16), Origin::Replacement, &mut out, &stats);
        o.on_update(&mut b, 0, upd(15, 16), Origin::Old, &mut out, &stats);
        assert!(o.close_old(std::slice::from_mut(&mut b), &mut out, &stats).is_empty());
        assert_eq!(applied(&out), [(11, 12), (13, 14), (15, 16)]);
        assert_eq!((stats.superseded.get(), stats.out_of_sequence.get(), stats.gaps.get()), (3, 0, 0));
    }

    #[test]
    fn a_replacement_ahead_of_the_old_connection_waits_for_it() {
        let (stats, mut out) = (FeedStats::default(), Vec::new());
        let mut b = synced_book(&stats, &mut out);
        let mut o = Overlap::new(1);
        o.on_update(&mut b, 0, upd(15, 16), Origin::Replacement, &mut out, &stats);
        o.on_update(&mut b, 0, upd(17, 18), Origin::Replacement, &mut out, &stats);
        assert!(!o.all_carried(), "nothing proves yet that the replacement continues the chain");
        o.on_update(&mut b, 0, upd(13, 14), Origin::Old, &mut out, &stats);
        assert!(o.all_carried());
        o.on_update(&mut b, 0, upd(15, 16), Origin::Old, &mut out, &stats);
        assert_eq!(applied(&out), [(11, 12), (13, 14), (15, 16), (17, 18)]);
        assert_eq!((stats.superseded.get(), stats.gaps.get()), (1, 0));
    }

    #[test]
    fn copies_after_the_handover_stay_superseded_until_the_replacement_catches_up() {
        let (stats, mut out) = (FeedStats::default(), Vec::new());
        let mut b = synced_book(&stats, &mut out);
        let mut o = Overlap::new(1);
        o.on_update(&mut b, 0, upd(13, 14), Origin::Old, &mut out, &stats);
        o.on_update(&mut b, 0, upd(15, 16), Origin::Old, &mut out, &stats);
        o.on_update(&mut b, 0, upd(11, 12), Origin::Replacement, &mut out, &stats);
        assert!(o.close_old(std::slice::from_mut(&mut b), &mut out, &stats).is_empty());
        // The session now hands the replacement's frames in as the connection's own.
        o.on_update(&mut b, 0, upd(13, 14), Origin::Old, &mut out, &stats);
        assert!(!o.done());
        o.on_update(&mut b, 0, upd(15, 16), Origin::Old, &mut out, &stats);
        o.on_update(&mut b, 0, upd(17, 18), Origin::Old, &mut out, &stats);
        assert!(o.done());
        assert_eq!(applied(&out), [(11, 12), (13, 14), (15, 16), (17, 18)]);
        assert_eq!((stats.superseded.get(), stats.out_of_sequence.get()), (3, 0));
    }

    #[test]
    fn events_batched_differently_on_the_replacement_continue_the_chain() {
        let (stats, mut out) = (FeedStats::default(), Vec::new());
        let mut b = synced_book(&stats, &mut out);
        let mut o = Overlap::new(1);
        o.on_update(&mut b, 0, upd(13, 16), Origin::Old, &mut out, &stats);
        // The replacement's event spans 15..18: it overlaps what is applied and goes beyond.
        o.on_update(&mut b, 0, upd(15, 18), Origin::Replacement, &mut out, &stats);
        o.on_update(&mut b, 0, upd(17, 20), Origin::Old, &mut out, &stats);
        o.on_update(&mut b, 0, upd(19, 22), Origin::Replacement, &mut out, &stats);
        assert_eq!(applied(&out), [(11, 12), (13, 16), (15, 18), (17, 20), (19, 22)]);
        assert_eq!((stats.gaps.get(), stats.superseded.get(), stats.out_of_sequence.get()), (0, 0, 0));
        assert!(o.all_carried());
    }

    #[test]
    fn a_hole_left_by_the_old_connection_is_a_gap_at_the_handover() {
        let (stats, mut out) = (FeedStats::default(), Vec::new());
        let mut b = synced_book(&stats, &mut out);
        let mut o = Overlap::new(1);
        o.on_update(&mut b, 0, upd(15, 16), Origin::Replacement, &mut out, &stats);
        assert_eq!(o.close_old(std::slice::from_mut(&mut b), &mut out, &stats), [0]);
        assert_eq!(stats.gaps.get(), 1);
        assert!(!b.is_synced());
    }

    #[test]
    fn events_held_from_a_lost_replacement_are_counted() {
        let (stats, mut out) = (FeedStats::default(), Vec::new());
        let mut b = synced_book(&stats, &mut out);
        let mut o = Overlap::new(1);
        o.on_update(&mut b, 0, upd(15, 16), Origin::Replacement, &mut out, &stats);
        o.discard(&stats);
        assert_eq!(stats.out_of_sequence.get(), 1);
    }
}
