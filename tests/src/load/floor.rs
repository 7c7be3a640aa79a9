//! The floor of a load run: a bare websocket reader (`ds-floor`) that opens the connections a
//! Binance depth feed of the run's exchanges.toml opens, reads every frame and drops it.
//!
//! What it costs per frame is what receiving costs on this machine at this load, before any
//! work of data-storage's own: the kernel's TCP receive (on loopback, each read's
//! acknowledgement runs through the mock's socket on the reader's time), the wakeups of an
//! idle process, tokio and tungstenite. `ds-load --floor` measures it in the same run, as the
//! benches measure serde's `IgnoredAny` skip beside each parser, so that data-storage's own
//! cost per frame is read above it: at 10 symbols a burst of ten frames every 100 ms pays
//! every wakeup cost for ten frames, at 1,000 symbols for two hundred.
//!
//! The reader is built as data-storage is: the same multi-thread runtime, one task per
//! connection, the same socket settings ([`ds_api::ws::open`]) and the same stream URL
//! ([`connector_binance::session::stream_url`]), so that the two differ only by what
//! data-storage does with a frame.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use connector_binance::options::DepthOptions;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;

/// The part of exchanges.toml the reader needs: its first feed, whose connection options are
/// read as the connector reads them (its own defaults included).
#[derive(Debug, Deserialize)]
struct FloorConfig {
    feed: Vec<FeedConfig>,
}

#[derive(Debug, Deserialize)]
struct FeedConfig {
    symbols: Vec<String>,
    #[serde(flatten)]
    options: DepthOptions,
}

/// The URLs of the connections the config's first feed opens, one per
/// `streams_per_connection` symbols.
pub fn connection_urls(config: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let parsed: FloorConfig =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let feed = parsed
        .feed
        .first()
        .ok_or_else(|| format!("{}: no [[feed]]", config.display()))?;
    let o = &feed.options;
    if feed.symbols.is_empty() || o.streams_per_connection == 0 {
        return Err(format!(
            "{}: the feed needs symbols and streams_per_connection >= 1",
            config.display()
        ));
    }
    Ok(feed
        .symbols
        .chunks(o.streams_per_connection)
        .map(|group| connector_binance::session::stream_url(&o.ws_url, group, o.update_speed_ms))
        .collect())
}

/// What the reader received.
#[derive(Debug, Default)]
pub struct FloorCounts {
    pub connections: usize,
    pub frames: u64,
    pub bytes: u64,
}

/// Opens every connection, then reads and drops frames until `stop` turns true. `Err` when a
/// connection cannot be opened; a connection the server closes ends its task only.
pub async fn read_until(
    urls: Vec<String>,
    mut stop: watch::Receiver<bool>,
) -> Result<FloorCounts, String> {
    let frames = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let connections = urls.len();
    for url in urls {
        let ws = ds_api::ws::open(&url)
            .await
            .map_err(|e| format!("cannot open {}: {e}", ds_api::ws::redact(&url)))?;
        let (frames, bytes, mut stop) = (Arc::clone(&frames), Arc::clone(&bytes), stop.clone());
        tasks.spawn(async move {
            let mut ws = ws;
            loop {
                tokio::select! {
                    message = ws.next() => match message {
                        Some(Ok(m)) => {
                            frames.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
                        }
                        _ => break,
                    },
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        });
    }
    let _ = stop.wait_for(|s| *s).await;
    while tasks.join_next().await.is_some() {}
    Ok(FloorCounts {
        connections,
        frames: frames.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_the_connections_a_feed_opens() {
        let dir = std::env::temp_dir().join(format!("ds-floor-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("exchanges.toml");
        std::fs::write(
            &path,
            r#"
[[feed]]
name = "x"
connector = "binance_spot_depth"
symbols = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
ws_url = "ws://127.0.0.1:9/"
streams_per_connection = 2
"#,
        )
        .expect("write config");
        let urls = connection_urls(&path).expect("parses");
        assert_eq!(
            urls,
            [
                "ws://127.0.0.1:9/stream?streams=aaausdt@depth@100ms/bbbusdt@depth@100ms",
                "ws://127.0.0.1:9/stream?streams=cccusdt@depth@100ms",
            ]
        );
        std::fs::write(&path, "[service]\n").expect("write config");
        assert!(connection_urls(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
