//! Huobi (HTX) spot for data-storage. Two connector plugins:
//!
//! - `huobi_mbp`: Market-By-Price incrementals (`market.$symbol.mbp.$levels` on `/feed`),
//!   stored as MI, kept in sequence per symbol by `prevSeqNum` == previous `seqNum`
//!   ([`book_sync`]), with a `req` snapshot of the same topic stored as ST at start and at
//!   every resync; optionally `depth.step0` or `mbp.refresh` pushes (on `/ws`) stored as
//!   periodic snapshots in their own series ([`channel_session`]);
//! - `huobi_trades`: `market.$symbol.trade.detail`, one `trade` point per trade.
//!
//! Every server frame is gzip; [`gzip`] inflates it under a size cap. Files: [`wire`] (JSON
//! shapes with real samples), [`parser`], [`book_sync`] (the sync rule), [`link`] (heartbeat,
//! subscriptions, invalid frames), [`session`] (one `/feed` connection), [`channel_session`]
//! (one `/ws` connection), [`listener`] (symbols, connection split), [`rest`], [`options`].
//! README.md in this folder has the options table and what is stored.
#![forbid(unsafe_code)]

pub mod book_sync;
pub mod channel_session;
pub mod gzip;
pub mod link;
pub mod listener;
pub mod options;
pub mod parser;
pub mod replay;
pub mod rest;
pub mod session;
pub mod wire;

ds_api::inventory::submit! {
    ds_api::ConnectorPlugin {
        name: "huobi_mbp",
        description: "Huobi spot MBP incrementals (MI) on /feed, sequence-checked by prevSeqNum, with req snapshots (ST); optional depth.step0 / mbp.refresh periodic snapshots",
        crate_name: env!("CARGO_PKG_NAME"),
        build: listener::MbpListener::build,
    }
}

ds_api::inventory::submit! {
    ds_api::ConnectorPlugin {
        name: "huobi_trades",
        description: "Huobi spot public trades (trade.detail), trade id = tradeId",
        crate_name: env!("CARGO_PKG_NAME"),
        build: listener::TradeListener::build,
    }
}

ds_api::inventory::submit! {
    ds_api::ReplayPlugin { connector: "huobi_mbp", build: replay::build_mbp }
}

ds_api::inventory::submit! {
    ds_api::ReplayPlugin { connector: "huobi_trades", build: replay::build_trades }
}
