//! `SnapshotListener`: the `binance_spot_snapshot` feed. Stores a REST depth snapshot of every
//! symbol every `interval_secs`, as ST. Useful next to the depth feed to shorten rebuilds (the
//! latest snapshot at or before t is closer), or alone where periodic books are enough.

use std::time::Duration;

use tracing::{info, warn};

use ds_api::{async_trait, clock, DataPacket, FeedContext, FeedSpec, Instrument, Listener, ListenerError, OnlineCheck, Snapshot, Symbols};

use crate::listener::resolve_symbols;
use crate::options::SnapshotOptions;
use crate::rest::BinanceRest;

pub struct SnapshotListener {
    pub symbols: Symbols,
    pub options: SnapshotOptions,
}

impl SnapshotListener {
    pub fn build(spec: &FeedSpec) -> Result<Box<dyn Listener>, Vec<ds_api::ConfigError>> {
        let options = crate::options::parse_snapshot(spec)?;
        Ok(Box::new(SnapshotListener { symbols: spec.symbols.clone(), options }))
    }
}

#[async_trait]
impl Listener for SnapshotListener {
    async fn listen(self: Box<Self>, ctx: FeedContext) -> Result<(), ListenerError> {
        let o = &self.options;
        let rest = BinanceRest::new(&o.rest_url, o.snapshot_limit, o.rest_weight_per_minute);
        let mut stop = ctx.shutdown.clone();
        let Some(symbols) = resolve_symbols(&ctx.feed, &self.symbols, &rest, &ctx.shutdown).await else {
            return Ok(());
        };
        info!(feed = %ctx.feed, symbols = symbols.len(), interval_secs = o.interval_secs, "binance snapshot feed started");
        let mut tick = tokio::time::interval(Duration::from_secs(o.interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait() => return Ok(()),
                _ = tick.tick() => {}
            }
            for symbol in &symbols {
                let result = tokio::select! {
                    _ = stop.wait() => return Ok(()),
                    r = rest.depth_snapshot(symbol, &ctx.shutdown) => r,
                };
                match result {
                    Ok(s) => {
                        // A REST-only feed is fresh when its polls succeed (`/health`).
                        ctx.stats.last_message.set(clock::now_ns());
                        let points = (s.bids.len() + s.asks.len()).max(1);
                        ctx.stats.st.inc();
                        ctx.stats.points.add(points as u64);
                        ctx.out.send(DataPacket::ST(Snapshot {
                            instrument: Instrument { exchange: "binance", market: "spot", symbol: symbol.as_str().into() },
                            cur_seq: s.last_update_id,
                            prev_seq: None,
                            timestamp: None,
                            recv_time_ns: clock::reserve_now(points),
                            bids: s.bids,
                            asks: s.asks,
                        }));
                    }
                    Err(e) => warn!(feed = %ctx.feed, symbol, error = %e, "snapshot failed; next try at the next interval"),
                }
            }
        }
    }

    async fn check_online(&mut self) -> OnlineCheck {
        crate::online_check::check_symbols(&self.options.rest_url, &self.symbols).await
    }
}
