//! `DepthListener`: the `binance_spot_depth` feed. Resolves its symbols, splits them across
//! connections within Binance's per-connection stream limit, and runs one [`DepthSession`]
//! per connection, each in its own task.

use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{error, info};

use ds_api::backoff::Backoff;
use ds_api::traits::SymbolHandler;
use ds_api::ws::{self, SessionConfig, WsSession};
use ds_api::{async_trait, FeedContext, FeedSpec, Listener, ListenerError, OnlineCheck, Shutdown, Symbols};

use crate::options::DepthOptions;
use crate::rest::{BinanceRest, ExchangeInfoSymbols};
use crate::session::DepthSession;

pub struct DepthListener {
    pub symbols: Symbols,
    pub options: DepthOptions,
}

impl DepthListener {
    pub fn build(spec: &FeedSpec) -> Result<Box<dyn Listener>, Vec<ds_api::ConfigError>> {
        let options = crate::options::parse_depth(spec)?;
        Ok(Box::new(DepthListener { symbols: spec.symbols.clone(), options }))
    }
}

/// Resolves the configured symbols; `"all"` asks exchangeInfo, retrying until it answers or
/// the service stops (the exchange may be unreachable at start).
pub async fn resolve_symbols(feed: &str, symbols: &Symbols, rest: &BinanceRest, shutdown: &Shutdown) -> Option<Vec<String>> {
    match symbols {
        Symbols::List(list) => Some(list.iter().map(|s| s.to_uppercase()).collect()),
        Symbols::All => {
            let handler = ExchangeInfoSymbols { rest: rest.clone(), shutdown: shutdown.clone() };
            let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
            let mut stop = shutdown.clone();
            loop {
                match handler.get_symbols().await {
                    Ok(list) => {
                        info!(feed, symbols = list.len(), "resolved symbols = \"all\" through exchangeInfo");
                        return Some(list);
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        error!(feed, error = %e, retry_in_s = delay.as_secs(), "cannot resolve symbols = \"all\"");
                        tokio::select! {
                            _ = stop.wait() => return None,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Listener for DepthListener {
    async fn listen(self: Box<Self>, ctx: FeedContext) -> Result<(), ListenerError> {
        let o = &self.options;
        let rest = BinanceRest::new(&o.rest_url, o.snapshot_limit, o.rest_weight_per_minute);
        let Some(symbols) = resolve_symbols(&ctx.feed, &self.symbols, &rest, &ctx.shutdown).await else {
            return Ok(());
        };
        let mut tasks = JoinSet::new();
        for (n, group) in symbols.chunks(o.streams_per_connection).enumerate() {
            let (events_tx, events_rx) = ws::event_channel();
            let mut session = DepthSession::new(
                ctx.feed.clone(),
                &o.ws_url,
                group,
                o.update_speed_ms,
                o.max_held_updates,
                ctx.out.clone(),
                ctx.stats.clone(),
                rest.clone(),
                ctx.shutdown.clone(),
                events_tx,
            );
            session.conn = n as u32;
            let cfg = SessionConfig {
                stale_after: Duration::from_secs(o.stale_after_secs),
                max_connection_age: (o.max_connection_age_secs > 0).then(|| Duration::from_secs(o.max_connection_age_secs)),
                ..SessionConfig::default()
            };
            let name = format!("{}#{n}", ctx.feed);
            let ws = WsSession::new(name, session, cfg, events_rx, ctx.stats.clone());
            let shutdown = ctx.shutdown.clone();
            tasks.spawn(async move {
                ws.run(shutdown).await;
            });
        }
        info!(feed = %ctx.feed, symbols = symbols.len(), connections = tasks.len(), "binance depth feed started");
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                error!(feed = %ctx.feed, error = %e, "connection task failed");
            }
        }
        Ok(())
    }

    async fn check_online(&mut self) -> OnlineCheck {
        crate::online_check::check_symbols(&self.options.rest_url, &self.symbols).await
    }
}
