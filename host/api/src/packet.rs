//! `DataPacket` and its payloads: what a connector hands to a sink.
//!
//! The seed's packet kinds are kept (MI, ST, Ping, Invalid) and two are added: `Gap`, so a hole
//! in the data is a stored fact rather than an absence (contract 2), and `Trade`. Levels are
//! typed (`Level` of two [`Decimal`]s) instead of the seed's `Vec<Value>`.

use std::sync::Arc;

use compact_str::CompactString;

use crate::decimal::Decimal;

/// Which book a packet belongs to. Becomes the tag set of every point (with `side`), so it
/// holds only low-cardinality names: never prices or ids (contract 4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Instrument {
    /// `binance`, `bybit`, `huobi`.
    pub exchange: &'static str,
    /// `spot`, `linear`, ...
    pub market: &'static str,
    /// The exchange's symbol, upper case as the exchange writes it in payloads (`BTCUSDT`).
    pub symbol: Arc<str>,
}

/// One price level: absolute size at a price; a zero size removes the level.
///
/// Deserializes straight from the `["price", "size"]` string pair Binance and Bybit send, so a
/// frame's levels are validated and stored in one pass with no intermediate vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    pub price: Decimal,
    pub size: Decimal,
}

impl<'de> serde::Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (price, size) = <(Decimal, Decimal)>::deserialize(d)?;
        Ok(Level { price, size })
    }
}

/// `[["price","size"], ...]` into levels in an allocation of exactly the frame's size, for
/// `#[serde(deserialize_with = "ds_api::packet::levels_exact")]`.
///
/// JSON gives no length up front, so a plain `Vec<Level>` grows 4 -> 8 -> 16 (a malloc and two
/// reallocs with copies for Binance's mean of 10.6 levels: 9% of data-storage's CPU in a
/// `ds-load` profile). The levels are collected in a per-thread scratch vector that keeps its
/// capacity, then moved into one exact allocation, which also keeps the packets that wait in
/// the buffer channel no larger than their levels.
pub fn levels_exact<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Level>, D::Error> {
    use std::cell::RefCell;
    thread_local! {
        static SCRATCH: RefCell<Vec<Level>> = const { RefCell::new(Vec::new()) };
    }
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<Level>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of [price, size] pairs")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Level>, A::Error> {
            // Taken out, not borrowed, so that nothing can observe it half-filled; an error
            // below just leaves a fresh one for the next frame.
            let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
            scratch.clear();
            while let Some(level) = seq.next_element::<Level>()? {
                scratch.push(level);
            }
            // Moved (not cloned) into an allocation of exactly their number; the scratch keeps
            // its capacity for the next frame.
            let mut out = Vec::with_capacity(scratch.len());
            out.append(&mut scratch);
            // A 5,000-level snapshot should not pin its scratch for the thread's life.
            if scratch.capacity() <= 1024 {
                SCRATCH.with(|s| *s.borrow_mut() = scratch);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V)
}

/// Book side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Bid,
    Ask,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Bid => "bid",
            Side::Ask => "ask",
        }
    }
}

/// The seed's MarketIncremental: one sequence-checked book update, applied in order after the
/// latest snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketIncremental {
    pub instrument: Instrument,
    /// First update id covered (Binance `U`; equals `last_update_id` where the exchange has one id).
    pub first_update_id: u64,
    /// Last update id covered (Binance `u`, Bybit `u`, Huobi `seqNum`).
    pub last_update_id: u64,
    /// Id the exchange says precedes this one, where it says so (Huobi `prevSeqNum`).
    pub prev_update_id: Option<u64>,
    /// Exchange event time, ms since the epoch (Binance `E`), when the exchange sends one.
    pub event_time_ms: Option<i64>,
    /// Local receive time in ns, made unique per process (see [`crate::clock`]); becomes the
    /// timestamp of the first level's point, the next levels take the following nanoseconds.
    pub recv_time_ns: i64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// The seed's Snapshot: a full book at `cur_seq`. Rebuilding the book at time t starts from the
/// latest stored snapshot at or before t (contract 3).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The seed's `symbol_pair`.
    pub instrument: Instrument,
    /// Book version (Binance `lastUpdateId`, Bybit `u`, Huobi `seqNum`).
    pub cur_seq: u64,
    /// Previous version where the exchange gives one.
    pub prev_seq: Option<u64>,
    /// The seed's `timestamp`: exchange time in ms, when the exchange sends one.
    pub timestamp: Option<i64>,
    /// Local receive time in ns, unique per process (see [`crate::clock`]).
    pub recv_time_ns: i64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// Why a stretch of a book's history is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// An update did not chain onto the previous one.
    SequenceBreak,
    /// The connection dropped; updates in between were not received.
    Disconnect,
    /// The snapshot fetched to resync did not line up with the buffered updates.
    SnapshotMismatch,
    /// Too many updates buffered while waiting for a snapshot.
    BufferOverflow,
    /// The service stopped: nothing is known about this book from here on.
    Shutdown,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::SequenceBreak => "sequence_break",
            GapReason::Disconnect => "disconnect",
            GapReason::SnapshotMismatch => "snapshot_mismatch",
            GapReason::BufferOverflow => "buffer_overflow",
            GapReason::Shutdown => "shutdown",
        }
    }
}

/// A stored statement that updates are missing between `last_id` and `next_id` for one
/// symbol; the book is invalid from this point until the next snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct GapMarker {
    pub instrument: Instrument,
    pub reason: GapReason,
    /// Last update id applied before the gap, if any.
    pub last_id: Option<u64>,
    /// First update id seen after the gap, if known.
    pub next_id: Option<u64>,
    pub recv_time_ns: i64,
}

/// One public trade.
#[derive(Debug, Clone, PartialEq)]
pub struct Trade {
    pub instrument: Instrument,
    /// Exchange trade id as text (Bybit linear uses UUIDs, Huobi ids exceed u64).
    pub trade_id: CompactString,
    pub price: Decimal,
    pub size: Decimal,
    /// Taker side: `Bid` for a buy, `Ask` for a sell.
    pub taker_side: Side,
    pub event_time_ms: Option<i64>,
    pub recv_time_ns: i64,
}

/// A frame that could not be parsed, kept (truncated) so it can be inspected and re-derived.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidFrame {
    pub exchange: &'static str,
    pub feed: Arc<str>,
    pub reason: String,
    /// The frame text, cut at [`InvalidFrame::MAX_RAW`] bytes.
    pub raw: String,
    pub recv_time_ns: i64,
}

impl InvalidFrame {
    /// InfluxDB 1.x limits a string field to 64 KiB; keep well below it.
    pub const MAX_RAW: usize = 16 * 1024;

    pub fn new(exchange: &'static str, feed: Arc<str>, reason: String, raw: &str, recv_time_ns: i64) -> Self {
        let mut end = raw.len().min(Self::MAX_RAW);
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        InvalidFrame { exchange, feed, reason, raw: raw[..end].to_owned(), recv_time_ns }
    }
}

/// Line protocol that is already encoded (a bus source such as `nats_source` holds stored
/// lines, not exchange frames), passed to the sink verbatim.
///
/// `ack` fires once the sink stored (or quarantined) the batch holding these lines; it is
/// dropped unfired when the batch goes to the spool or is lost, so a source that acknowledges
/// its upstream only on the signal never acknowledges what is not stored, and the upstream
/// redelivers it (harmless: the lines keep their timestamps, contract 4).
#[derive(Debug, Clone)]
pub struct Lines {
    /// Whole lines, each ending in `\n`.
    pub lines: Arc<[u8]>,
    pub points: usize,
    pub ack: Option<Ack>,
}

impl PartialEq for Lines {
    /// The ack is a side channel, not part of the data.
    fn eq(&self, other: &Self) -> bool {
        self.lines == other.lines && self.points == other.points
    }
}

/// The "stored" signal of [`Lines`]: a oneshot sender, shared so that `DataPacket` stays
/// `Clone` (only the first `fire` of the clones signals).
#[derive(Debug, Clone)]
pub struct Ack(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);

impl Ack {
    /// An ack and the receiver that resolves when it fires (and errors when it is dropped).
    pub fn pair() -> (Ack, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Ack(Arc::new(std::sync::Mutex::new(Some(tx)))), rx)
    }

    pub fn fire(&self) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

/// Everything a connector sends to a sink.
#[derive(Debug, Clone, PartialEq)]
pub enum DataPacket {
    /// Market incremental: a sequence-checked book update.
    MI(MarketIncremental),
    /// Full book snapshot.
    ST(Snapshot),
    /// Updates are missing for one symbol from here until the next snapshot.
    Gap(GapMarker),
    Trade(Trade),
    /// An exchange heartbeat (Huobi's `{"ping": n}`), for liveness accounting; not stored.
    Ping(i64),
    /// A frame that failed to parse, stored for inspection.
    Invalid(InvalidFrame),
    /// Encoded line protocol from a bus source, written as it is.
    Lines(Lines),
}

impl DataPacket {
    /// How many points this packet becomes in the store.
    pub fn point_count(&self) -> usize {
        match self {
            DataPacket::MI(m) => m.bids.len() + m.asks.len(),
            DataPacket::ST(s) => (s.bids.len() + s.asks.len()).max(1),
            DataPacket::Gap(_) | DataPacket::Trade(_) | DataPacket::Invalid(_) => 1,
            DataPacket::Ping(_) => 0,
            DataPacket::Lines(l) => l.points,
        }
    }

    /// Short kind name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            DataPacket::MI(_) => "MI",
            DataPacket::ST(_) => "ST",
            DataPacket::Gap(_) => "gap",
            DataPacket::Trade(_) => "trade",
            DataPacket::Ping(_) => "ping",
            DataPacket::Invalid(_) => "invalid",
            DataPacket::Lines(_) => "lines",
        }
    }
}
