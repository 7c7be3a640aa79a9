//! The plugin API of data-storage.
//!
//! Connectors and sinks depend on this crate and nothing else of the project; the host links
//! them. Arrows go one way: a connector never knows a sink, a sink never knows an exchange.
//!
//! - [`packet`]: `DataPacket` and its payloads (the seed's MI / ST / Ping / Invalid, plus Gap and Trade)
//! - [`plugin`]: `Listener`, `Sink`, the `inventory` registries
//! - [`traits`]: the seed's `Parser` and `SymbolHandler`
//! - [`buffer`]: the seed's `Buffer` (batching, back-pressure policy)
//! - [`line_protocol`]: the storage format and schema
//! - [`ws`], [`http`], [`backoff`]: what every connector needs to talk to an exchange
//! - [`rollover`]: when a session replaces a live connection make-before-break
//! - [`clock`]: unique timestamps per series ([`clock::SeriesClock`]), so replays reproduce them
//! - [`scan`]: the strict fast path in front of serde for depth frames
//! - [`bench`]: floor and path timed in alternation, for the connectors' benches
//! - [`fast_map`]: the map of the per-frame lookups (symbol or topic to book)
//! - [`capture`], [`replay`]: raw frame capture files and the connectors' replay hook
#![forbid(unsafe_code)]

pub mod backoff;
pub mod base64;
pub mod bench;
pub mod buffer;
pub mod capture;
pub mod clock;
pub mod config;
pub mod decimal;
pub mod error;
pub mod fast_map;
pub mod http;
pub mod line_protocol;
pub mod packet;
pub mod plugin;
pub mod replay;
pub mod scan;
pub mod rollover;
pub mod shutdown;
pub mod spool;
pub mod stats;
pub mod traits;
pub mod ws;

pub use async_trait::async_trait;
pub use inventory;

pub use config::{parse_options, FeedSpec, Secret, SinkSpec, Symbols};
pub use decimal::Decimal;
pub use fast_map::FastMap;
pub use error::{ConfigError, DBError, ListenerError, ParseError, SymbolError};
pub use packet::{Ack, DataPacket, GapMarker, GapReason, Instrument, InvalidFrame, Level, Lines, MarketIncremental, Side, Snapshot, Trade};
pub use replay::Replayer;
pub use plugin::{ConnectorPlugin, FeedContext, ReplayPlugin, Listener, OnlineCheck, Sink, SinkPlugin};
pub use shutdown::{shutdown_pair, Shutdown, ShutdownTrigger};
pub use stats::{FeedStats, SinkStats};
