//! The two listeners, `bybit_orderbook` and `bybit_trades`. Each resolves its symbols, splits
//! the topics across connections within Bybit's limits ([`crate::subscription`]) and runs one
//! [`BybitSession`] per connection, each in its own task, so one dead connection never stalls
//! another.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{error, info, warn};

use ds_api::backoff::Backoff;
use ds_api::traits::SymbolHandler;
use ds_api::ws::{self, SessionConfig, WsSession};
use ds_api::{async_trait, ConfigError, FeedContext, FeedSpec, Listener, ListenerError, Shutdown, Symbols};

use crate::options::{SessionOptions, ValidOrderbook};
use crate::rest::InstrumentsInfo;
use crate::session::{BybitSession, OrderbookTopics, TopicFeed, TradeTopics};
use crate::subscription::{args_chars, orderbook_topic, plan_bybit_connections, trade_topic};

/// `connector = "bybit_orderbook"`.
pub struct OrderbookListener {
    pub symbols: Symbols,
    pub options: ValidOrderbook,
}

impl OrderbookListener {
    pub fn build(spec: &FeedSpec) -> Result<Box<dyn Listener>, Vec<ConfigError>> {
        let options = crate::options::parse_orderbook(spec)?;
        Ok(Box::new(OrderbookListener { symbols: spec.symbols.clone(), options }))
    }
}

#[async_trait]
impl Listener for OrderbookListener {
    async fn listen(self: Box<Self>, ctx: FeedContext) -> Result<(), ListenerError> {
        let (o, depth) = (&self.options.session, self.options.depth);
        let category = o.category;
        run_connections(ctx, o, &self.symbols, |s| orderbook_topic(depth, s), |group| OrderbookTopics::new(category, depth, group)).await
    }
}

/// `connector = "bybit_trades"`.
pub struct TradeListener {
    pub symbols: Symbols,
    pub options: SessionOptions,
}

impl TradeListener {
    pub fn build(spec: &FeedSpec) -> Result<Box<dyn Listener>, Vec<ConfigError>> {
        let options = crate::options::parse_trades(spec)?;
        Ok(Box::new(TradeListener { symbols: spec.symbols.clone(), options }))
    }
}

#[async_trait]
impl Listener for TradeListener {
    async fn listen(self: Box<Self>, ctx: FeedContext) -> Result<(), ListenerError> {
        let category = self.options.category;
        run_connections(ctx, &self.options, &self.symbols, trade_topic, |group| TradeTopics::new(category, group)).await
    }
}

/// Resolves the configured symbols; `"all"` asks instruments-info, retrying until it answers
/// or the service stops (the exchange may be unreachable at start). Upper-cased, each once.
pub async fn resolve_symbols(feed: &str, symbols: &Symbols, o: &SessionOptions, shutdown: &Shutdown) -> Option<Vec<String>> {
    match symbols {
        Symbols::List(list) => {
            let mut out: Vec<String> = Vec::with_capacity(list.len());
            for s in list.iter().map(|s| s.to_uppercase()) {
                if out.contains(&s) {
                    warn!(feed, symbol = %s, "symbol listed twice; subscribing once");
                } else {
                    out.push(s);
                }
            }
            Some(out)
        }
        Symbols::All => {
            let handler = InstrumentsInfo::new(&o.rest_url, o.category, shutdown.clone());
            let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
            let mut stop = shutdown.clone();
            loop {
                match handler.get_symbols().await {
                    Ok(list) => {
                        info!(feed, category = o.category.as_str(), symbols = list.len(), "resolved symbols = \"all\" through instruments-info");
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

/// Resolves symbols, plans connections and runs them until shutdown.
async fn run_connections<F: TopicFeed>(
    ctx: FeedContext,
    o: &SessionOptions,
    symbols: &Symbols,
    topic_of: impl Fn(&str) -> String,
    make_feed: impl Fn(&[String]) -> F,
) -> Result<(), ListenerError> {
    let Some(symbols) = resolve_symbols(&ctx.feed, symbols, o, &ctx.shutdown).await else {
        return Ok(());
    };
    let topics: Vec<String> = symbols.iter().map(|s| topic_of(s)).collect();
    let groups = plan_bybit_connections(&topics, o.topics_per_connection);
    let mut tasks = JoinSet::new();
    for (n, range) in groups.iter().enumerate() {
        let (events_tx, events_rx) = ws::event_channel();
        let conn = format!("{}#{n}", ctx.feed);
        let session = BybitSession::new(ctx.feed.clone(), conn.clone(), o, make_feed(&symbols[range.clone()]), ctx.out.clone(), Arc::clone(&ctx.stats), events_tx);
        let cfg = SessionConfig { stale_after: o.stale_after, heartbeat_every: Some(session.tick_every()), ..SessionConfig::default() };
        info!(
            feed = %ctx.feed,
            conn = %conn,
            topics = range.len(),
            args_chars = topics[range.clone()].iter().map(|t| args_chars(t)).sum::<usize>(),
            "bybit connection planned"
        );
        let ws = WsSession::new(conn, session, cfg, events_rx, Arc::clone(&ctx.stats));
        let shutdown = ctx.shutdown.clone();
        tasks.spawn(async move {
            ws.run(shutdown).await;
        });
    }
    info!(feed = %ctx.feed, category = o.category.as_str(), symbols = symbols.len(), connections = tasks.len(), "bybit feed started");
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            error!(feed = %ctx.feed, error = %e, "connection task failed");
        }
    }
    Ok(())
}
