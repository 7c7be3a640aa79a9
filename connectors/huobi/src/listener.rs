//! The feeds' listeners: resolve symbols, split them across connections, run one session
//! per connection, each in its own task.
//!
//! - `huobi_mbp` ([`MbpListener`]): an [`MbpSession`] on `/feed` per group of symbols, plus,
//!   with `periodic_snapshots`, a [`ChannelSession`] on `/ws` per group for the snapshot
//!   channel (Huobi serves MBP incrementals on `/feed` only, the other channels on `/ws`);
//! - `huobi_trades` ([`TradeListener`]): a [`ChannelSession`] on `/ws` per group.

use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{error, info};

use ds_api::backoff::Backoff;
use ds_api::traits::SymbolHandler;
use ds_api::ws::{self, SessionConfig, SessionHandler, WsSession};
use ds_api::{async_trait, FeedContext, FeedSpec, Listener, ListenerError, Shutdown, Symbols};

use crate::channel_session::ChannelSession;
use crate::options::{self, MbpOptions, PeriodicSnapshots, TradeOptions};
use crate::parser::Channel;
use crate::rest::CommonSymbols;
use crate::session::{MbpSession, MbpSessionConfig, TICK};

pub struct MbpListener {
    pub symbols: Symbols,
    pub options: MbpOptions,
}

impl MbpListener {
    pub fn build(spec: &FeedSpec) -> Result<Box<dyn Listener>, Vec<ds_api::ConfigError>> {
        let options = options::parse_mbp(spec)?;
        Ok(Box::new(MbpListener {
            symbols: spec.symbols.clone(),
            options,
        }))
    }
}

pub struct TradeListener {
    pub symbols: Symbols,
    pub options: TradeOptions,
}

impl TradeListener {
    pub fn build(spec: &FeedSpec) -> Result<Box<dyn Listener>, Vec<ds_api::ConfigError>> {
        let options = options::parse_trades(spec)?;
        Ok(Box::new(TradeListener {
            symbols: spec.symbols.clone(),
            options,
        }))
    }
}

/// The configured symbols in topic spelling (lower case, duplicates removed); `"all"` asks
/// `/v1/common/symbols`, retrying until it answers or the service stops (the exchange may be
/// unreachable at start).
pub async fn resolve_symbols(
    feed: &str,
    symbols: &Symbols,
    rest_url: &str,
    shutdown: &Shutdown,
) -> Option<Vec<String>> {
    let list = match symbols {
        Symbols::List(list) => list.clone(),
        Symbols::All => {
            let handler = CommonSymbols::new(rest_url, shutdown.clone());
            let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
            let mut stop = shutdown.clone();
            loop {
                match handler.get_symbols().await {
                    Ok(list) => {
                        info!(
                            feed,
                            symbols = list.len(),
                            "resolved symbols = \"all\" through /v1/common/symbols"
                        );
                        break list;
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
    };
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for s in list {
        let s = options::topic_symbol(&s);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Some(out)
}

/// The connection number (`feed#n` in logs, `conn` in captures) of group `n`'s `/feed`
/// connection; with periodic snapshots its `/ws` connection is the next number. Numbers, not
/// names, because a capture record carries the number and [`crate::replay`] must find the
/// session a record came from.
pub fn mbp_conn(n: usize, periodic: bool) -> usize {
    if periodic {
        2 * n
    } else {
        n
    }
}

fn session_config(ping_timeout_ms: u64) -> SessionConfig {
    // The tick drives req pacing and the ack/req timeouts; liveness is "no frame for
    // ping_timeout", and Huobi's 5-second pings are frames.
    SessionConfig {
        stale_after: Duration::from_millis(ping_timeout_ms),
        heartbeat_every: Some(TICK),
        ..SessionConfig::default()
    }
}

fn spawn<H: SessionHandler + 'static>(
    tasks: &mut JoinSet<()>,
    name: String,
    handler: H,
    cfg: SessionConfig,
    ctx: &FeedContext,
) {
    let (_events_tx, events_rx) = ws::event_channel::<H::Event>();
    let session = WsSession::new(name, handler, cfg, events_rx, ctx.stats.clone());
    let shutdown = ctx.shutdown.clone();
    tasks.spawn(async move {
        // The sender is kept alive with the session so its event channel never reports closed.
        let _events_tx = _events_tx;
        session.run(shutdown).await;
    });
}

async fn join_all(feed: &str, mut tasks: JoinSet<()>) {
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            error!(feed, error = %e, "connection task failed");
        }
    }
}

#[async_trait]
impl Listener for MbpListener {
    async fn listen(self: Box<Self>, ctx: FeedContext) -> Result<(), ListenerError> {
        let o = &self.options;
        let Some(symbols) =
            resolve_symbols(&ctx.feed, &self.symbols, &o.rest_url, &ctx.shutdown).await
        else {
            return Ok(());
        };
        let cfg = MbpSessionConfig::from_options(o);
        let periodic = match o.periodic_snapshots {
            PeriodicSnapshots::None => None,
            PeriodicSnapshots::DepthStep0 => Some(Channel::DepthStep0),
            PeriodicSnapshots::MbpRefresh => Some(Channel::MbpRefresh(o.refresh_levels())),
        };
        let mut tasks = JoinSet::new();
        for (n, group) in symbols.chunks(o.symbols_per_connection).enumerate() {
            let session = MbpSession::new(
                ctx.feed.clone(),
                &o.ws_url,
                group,
                &cfg,
                ctx.out.clone(),
                ctx.stats.clone(),
            );
            spawn(
                &mut tasks,
                format!("{}#{}", ctx.feed, mbp_conn(n, periodic.is_some())),
                session,
                session_config(o.ping_timeout_ms),
                &ctx,
            );
            if let Some(channel) = periodic {
                let session = ChannelSession::new(
                    ctx.feed.clone(),
                    &o.ws_url,
                    channel,
                    group,
                    cfg.ack_timeout,
                    o.max_frame_bytes,
                    ctx.out.clone(),
                    ctx.stats.clone(),
                );
                spawn(
                    &mut tasks,
                    format!("{}#{}", ctx.feed, mbp_conn(n, true) + 1),
                    session,
                    session_config(o.ping_timeout_ms),
                    &ctx,
                );
            }
        }
        info!(feed = %ctx.feed, symbols = symbols.len(), connections = tasks.len(), levels = o.levels, periodic_snapshots = ?o.periodic_snapshots, "huobi mbp feed started");
        join_all(&ctx.feed, tasks).await;
        Ok(())
    }
}

#[async_trait]
impl Listener for TradeListener {
    async fn listen(self: Box<Self>, ctx: FeedContext) -> Result<(), ListenerError> {
        let o = &self.options;
        let Some(symbols) =
            resolve_symbols(&ctx.feed, &self.symbols, &o.rest_url, &ctx.shutdown).await
        else {
            return Ok(());
        };
        let mut tasks = JoinSet::new();
        for (n, group) in symbols.chunks(o.symbols_per_connection).enumerate() {
            let session = ChannelSession::new(
                ctx.feed.clone(),
                &o.ws_url,
                Channel::TradeDetail,
                group,
                Duration::from_secs(o.ack_timeout_secs),
                o.max_frame_bytes,
                ctx.out.clone(),
                ctx.stats.clone(),
            );
            spawn(
                &mut tasks,
                format!("{}#{n}", ctx.feed),
                session,
                session_config(o.ping_timeout_ms),
                &ctx,
            );
        }
        info!(feed = %ctx.feed, symbols = symbols.len(), connections = tasks.len(), "huobi trades feed started");
        join_all(&ctx.feed, tasks).await;
        Ok(())
    }
}
