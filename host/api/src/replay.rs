//! The replay hook of a connector: `data-storage replay` feeds it the records of a capture (or
//! of a plain one-frame-per-line file) and stores what it emits, through the same parser and
//! sequence checks the live connector runs.
//!
//! Optional and additive: a connector registers it in [`crate::ConnectorPlugin::replay`]; one
//! without it answers "replay not supported".

use crate::capture::CaptureRecord;
use crate::error::ConfigError;
use crate::{DataPacket, FeedSpec, Symbols};

/// Builds a feed's replayer from its configuration (the same options `build` validates).
pub type ReplayBuild = fn(&FeedSpec) -> Result<Box<dyn Replayer>, Vec<ConfigError>>;

/// Consumes records in file order.
pub trait Replayer: Send {
    /// Gives a REST body the live run would have fetched (Binance depth snapshot for a plain
    /// JSONL file, from `--snapshot SYMBOL=FILE`), applied before the first frame of that
    /// symbol. The default refuses: the connector syncs in-band.
    fn preload_snapshot(&mut self, symbol: &str, _body: &str) -> Result<(), String> {
        Err(format!("this connector takes no REST snapshot (given one for {symbol})"))
    }

    /// One record; `at_ns` is its receive time (the record's, or the replay's synthetic clock
    /// for plain files). Packets to store go to `out`.
    fn feed(&mut self, record: &CaptureRecord, at_ns: i64, out: &mut Vec<DataPacket>);

    /// End of input. The live run's stop is in the capture (`close` records), so the default
    /// emits nothing.
    fn finish(&mut self, _out: &mut Vec<DataPacket>) {}

    /// After [`Self::finish`]: the books that never synced, whose updates were held and not
    /// stored, so that the command can say why (a plain file has no REST snapshot). Empty
    /// for connectors that sync in-band.
    fn never_synced(&self) -> Vec<String> {
        Vec::new()
    }

    /// Counters of what was seen (frames, invalid, gaps ...).
    fn stats(&self) -> &crate::FeedStats;
}

/// The symbols the live run listed, each as `normalize` spells it, duplicates removed, in
/// order: a replayer splits them over connections exactly as the live listener did.
/// `symbols = "all"` was resolved at run time and cannot be reproduced, so it is refused.
pub fn listed_symbols(spec: &FeedSpec, normalize: impl Fn(&str) -> String) -> Result<Vec<String>, Vec<ConfigError>> {
    match &spec.symbols {
        Symbols::List(l) => {
            let mut out: Vec<String> = Vec::with_capacity(l.len());
            for s in l.iter().map(|s| normalize(s)) {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
            Ok(out)
        }
        Symbols::All => Err(vec![ConfigError::new(spec.scope(), "symbols", "replay needs the symbol list the live run used, not \"all\"")]),
    }
}
