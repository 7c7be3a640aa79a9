//! Bybit v5 public market data for data-storage, spot and linear. Two connector plugins:
//!
//! - `bybit_orderbook`: the `orderbook.{depth}.{symbol}` topic. The in-band snapshot is stored
//!   as ST, each delta as MI, kept in sequence per symbol on `u` ([`book_sync`]); a break
//!   stores a gap marker and resubscribes that one topic for a fresh snapshot;
//! - `bybit_trades`: the `publicTrade.{symbol}` topic, one `trade` point per trade.
//!
//! Files: [`wire`] (JSON shapes with real samples), [`parser`], [`book_sync`] (the sync
//! rule), [`subscription`] (topic names, connection and request limits, ack matching, the
//! client heartbeat), [`session`] (one websocket connection), [`listener`] (symbol
//! resolution and the connection split), [`rest`] (instruments-info), [`options`].
//! README.md in this folder has the options table and what is stored.
#![forbid(unsafe_code)]

pub mod book_sync;
pub mod listener;
pub mod options;
pub mod parser;
pub mod replay;
pub mod rest;
pub mod session;
pub mod subscription;
pub mod wire;

ds_api::inventory::submit! {
    ds_api::ConnectorPlugin {
        name: "bybit_orderbook",
        description: "Bybit v5 order books (spot or linear): in-band snapshot (ST) + deltas (MI) checked on u, gaps marked and the topic resubscribed",
        crate_name: env!("CARGO_PKG_NAME"),
        build: listener::OrderbookListener::build,
    }
}

ds_api::inventory::submit! {
    ds_api::ConnectorPlugin {
        name: "bybit_trades",
        description: "Bybit v5 public trades (spot or linear), one point per trade",
        crate_name: env!("CARGO_PKG_NAME"),
        build: listener::TradeListener::build,
    }
}

ds_api::inventory::submit! {
    ds_api::ReplayPlugin { connector: "bybit_orderbook", build: replay::build_orderbook }
}

ds_api::inventory::submit! {
    ds_api::ReplayPlugin { connector: "bybit_trades", build: replay::build_trades }
}
