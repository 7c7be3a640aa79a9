//! The plugin API: what a connector or sink crate implements and registers.
//!
//! Registration is static (`inventory`): a plugin crate submits a const descriptor, the host
//! links every plugin crate once (host/src/plugins.rs), and looks plugins up by the name used
//! in exchanges.toml. `build` only validates and constructs; it never connects, so
//! `data-storage check` runs the exact code that `run` does, offline.

use std::sync::Arc;

use async_trait::async_trait;

use crate::buffer::PacketSender;
use crate::config::{FeedSpec, SinkSpec};
use crate::error::{ConfigError, DBError, ListenerError};
use crate::shutdown::Shutdown;
use crate::stats::FeedStats;

/// What a running listener gets from the host.
pub struct FeedContext {
    /// The feed's name in exchanges.toml (for logs and `invalid_frame` points).
    pub feed: Arc<str>,
    /// Where packets go. `send` never waits (contract 5).
    pub out: PacketSender,
    pub stats: Arc<FeedStats>,
    pub shutdown: Shutdown,
}

/// The seed's Listener: one exchange endpoint for a set of symbols. `listen` resolves symbols,
/// splits them across connections (the seed's `split`), connects (the seed's `connect`),
/// reconnects on its own, and returns only when `ctx.shutdown` fires, after handing every
/// packet it has to `ctx.out`.
#[async_trait]
pub trait Listener: Send {
    async fn listen(self: Box<Self>, ctx: FeedContext) -> Result<(), ListenerError>;

    /// `data-storage check --online`: asks the exchange whether this feed's configuration
    /// holds (every symbol listed and trading, endpoints answering). One request or a few,
    /// no retries, no subscription; the host bounds it with a timeout. A connector without
    /// such a check keeps this default.
    async fn check_online(&mut self) -> OnlineCheck {
        OnlineCheck::NotSupported
    }
}

/// What `data-storage check --online` found for one feed or sink.
///
/// A default trait method rather than a field of the plugin descriptors: existing plugins
/// (and their `inventory::submit!` literals) compile unchanged, and the check runs on the
/// object `build` made, with the options exactly as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnlineCheck {
    /// Checked: what was verified (one line for the report) and every problem found, each a
    /// sentence that names the symbol, endpoint or database concerned. No problems = good.
    Done { checked: String, problems: Vec<String> },
    /// The plugin has no online check.
    NotSupported,
}

impl OnlineCheck {
    /// A check that could not be made (endpoint unreachable, unexpected answer) is a problem.
    pub fn failed(checked: impl Into<String>, problem: impl Into<String>) -> OnlineCheck {
        OnlineCheck::Done { checked: checked.into(), problems: vec![problem.into()] }
    }
}

/// A destination for line protocol. The host's [`crate::buffer::Buffer`] batches packets and
/// calls `write`; a sink retries what is worth retrying and quarantines what the server refuses.
#[async_trait]
pub trait Sink: Send {
    /// Writes one batch of line protocol (`points` lines). Returns only after the batch is
    /// stored, quarantined (`DBError::Rejected`), or the sink gives up for now (`Retryable`,
    /// `Auth`): then the buffer keeps the batch and calls again later.
    async fn write(&mut self, lines: &[u8], points: usize) -> Result<(), DBError>;

    /// [`Self::write`] of a batch held in a reference-counted buffer, which the sink may keep
    /// without a copy (an HTTP sink sends it as the request body). The buffer calls this one;
    /// a sink that has no use for the buffer itself leaves it to `write`.
    async fn write_shared(&mut self, lines: &bytes::Bytes, points: usize) -> Result<(), DBError> {
        self.write(lines, points).await
    }

    /// Makes written data durable (fsync, close files). Called once at stop.
    async fn close(&mut self) -> Result<(), DBError> {
        Ok(())
    }

    /// `data-storage check --online`: reaches the destination and checks that a write would
    /// be accepted (server up, database or bucket present, credentials good) without storing
    /// anything. No retries; the host bounds it with a timeout.
    async fn check_online(&mut self) -> OnlineCheck {
        OnlineCheck::NotSupported
    }
}

/// A connector plugin: one exchange endpoint.
pub struct ConnectorPlugin {
    /// The `connector = "..."` value in exchanges.toml.
    pub name: &'static str,
    /// One line for `data-storage plugins`.
    pub description: &'static str,
    /// `env!("CARGO_PKG_NAME")` of the registering crate, so a test can prove every crate
    /// under connectors/ registers something.
    pub crate_name: &'static str,
    /// Validates the feed's options and builds the listener, without connecting.
    #[allow(clippy::type_complexity)] // the signature reads best spelled out where plugins fill it in
    pub build: fn(&FeedSpec) -> Result<Box<dyn Listener>, Vec<ConfigError>>,
}

/// A connector's replay hook for `data-storage replay`, registered next to its
/// [`ConnectorPlugin`]. A registry of its own rather than a field of `ConnectorPlugin`, so the
/// hook stays optional and additive: connectors without one compile unchanged.
pub struct ReplayPlugin {
    /// The `ConnectorPlugin::name` it replays.
    pub connector: &'static str,
    /// Builds a replayer running the connector's parser and sequence checks over recorded frames.
    pub build: crate::replay::ReplayBuild,
}

/// A sink plugin.
pub struct SinkPlugin {
    /// The `plugin = "..."` value of a `[[sink]]`.
    pub name: &'static str,
    pub description: &'static str,
    pub crate_name: &'static str,
    /// Validates the sink's options and builds it, without connecting.
    #[allow(clippy::type_complexity)] // the signature reads best spelled out where plugins fill it in
    pub build: fn(&SinkSpec) -> Result<Box<dyn Sink>, Vec<ConfigError>>,
}

inventory::collect!(ConnectorPlugin);
inventory::collect!(SinkPlugin);
inventory::collect!(ReplayPlugin);

/// The replay hook of a connector, if it has one.
pub fn find_replay(connector: &str) -> Option<&'static ReplayPlugin> {
    inventory::iter::<ReplayPlugin>.into_iter().find(|p| p.connector == connector)
}

/// Every registered connector, sorted by name.
pub fn connectors() -> Vec<&'static ConnectorPlugin> {
    let mut v: Vec<_> = inventory::iter::<ConnectorPlugin>.into_iter().collect();
    v.sort_by_key(|p| p.name);
    v
}

/// Every registered sink, sorted by name.
pub fn sinks() -> Vec<&'static SinkPlugin> {
    let mut v: Vec<_> = inventory::iter::<SinkPlugin>.into_iter().collect();
    v.sort_by_key(|p| p.name);
    v
}

pub fn find_connector(name: &str) -> Option<&'static ConnectorPlugin> {
    inventory::iter::<ConnectorPlugin>.into_iter().find(|p| p.name == name)
}

pub fn find_sink(name: &str) -> Option<&'static SinkPlugin> {
    inventory::iter::<SinkPlugin>.into_iter().find(|p| p.name == name)
}
