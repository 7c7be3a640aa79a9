//! Binance spot for data-storage. Two connector plugins, one per endpoint:
//!
//! - `binance_spot_depth`: the diff-depth websocket stream (`<symbol>@depth@100ms`), stored as
//!   MI, kept in sequence per symbol with Binance's documented rule ([`book_sync`]), with the
//!   REST depth snapshot stored as ST at start and at every resync;
//! - `binance_spot_snapshot`: REST depth snapshots on a fixed interval, stored as ST.
//!
//! Files: [`wire`] (JSON shapes with samples), [`parser`], [`book_sync`] (the sync rule),
//! [`session`] (one websocket connection), [`overlap`] (its books while a rollover has two
//! connections open), [`listener`] (symbol resolution and connection
//! split), [`rest`] (snapshots, symbol list, weight budget), [`options`], [`snapshot_feed`],
//! [`online_check`] (`data-storage check --online`), [`replay`] (`data-storage replay`).
#![forbid(unsafe_code)]

pub mod book_sync;
pub mod listener;
pub mod online_check;
pub mod options;
pub mod overlap;
pub mod parser;
pub mod replay;
pub mod rest;
pub mod session;
pub mod snapshot_feed;
pub mod wire;

ds_api::inventory::submit! {
    ds_api::ConnectorPlugin {
        name: "binance_spot_depth",
        description: "Binance spot diff-depth stream (MI) synced with REST depth snapshots (ST), gaps marked and resynced per symbol",
        crate_name: env!("CARGO_PKG_NAME"),
        build: listener::DepthListener::build,
    }
}

ds_api::inventory::submit! {
    ds_api::ReplayPlugin { connector: "binance_spot_depth", build: replay::DepthReplayer::build }
}

ds_api::inventory::submit! {
    ds_api::ConnectorPlugin {
        name: "binance_spot_snapshot",
        description: "Binance spot REST depth snapshots (ST) of every symbol on a fixed interval",
        crate_name: env!("CARGO_PKG_NAME"),
        build: snapshot_feed::SnapshotListener::build,
    }
}
