//! Binance REST: depth snapshots and the symbol list, paced by a request-weight budget so a
//! mass resync queues instead of earning a 429/418 ban.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use ds_api::http::{self, HttpError};
use ds_api::traits::SymbolHandler;
use ds_api::{async_trait, ParseError, Shutdown, SymbolError};

use crate::options::depth_weight;
use crate::parser::{parse_snapshot, DepthSnapshot};
use crate::wire::ExchangeInfoWire;

/// A per-minute request-weight allowance shared by the tasks of one feed.
#[derive(Debug)]
pub struct WeightBudget {
    per_minute: u32,
    window: Mutex<(Instant, u32)>,
}

impl WeightBudget {
    pub fn new(per_minute: u32) -> Self {
        WeightBudget { per_minute, window: Mutex::new((Instant::now(), 0)) }
    }

    /// Waits until `weight` fits in the current minute, then spends it.
    pub async fn acquire(&self, weight: u32) {
        loop {
            let wait = {
                let mut w = self.window.lock().await;
                let now = Instant::now();
                if now.duration_since(w.0) >= Duration::from_secs(60) {
                    *w = (now, 0);
                }
                if w.1 + weight <= self.per_minute {
                    w.1 += weight;
                    return;
                }
                (w.0 + Duration::from_secs(60)).saturating_duration_since(now)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Http(HttpError),
    #[error("snapshot body: {0}")]
    Parse(ParseError),
}

/// The REST side of a feed.
#[derive(Debug, Clone)]
pub struct BinanceRest {
    base: String,
    client: reqwest::Client,
    budget: Arc<WeightBudget>,
    limit: u32,
}

impl BinanceRest {
    pub fn new(base: &str, limit: u32, weight_per_minute: u32) -> Self {
        BinanceRest {
            base: base.trim_end_matches('/').to_string(),
            client: http::client(),
            budget: Arc::new(WeightBudget::new(weight_per_minute)),
            limit,
        }
    }

    /// `GET /api/v3/depth?symbol=..&limit=..`, within the weight budget.
    pub async fn depth_snapshot(&self, symbol: &str, shutdown: &Shutdown) -> Result<DepthSnapshot, SnapshotError> {
        self.budget.acquire(depth_weight(self.limit)).await;
        let url = format!("{}/api/v3/depth?symbol={}&limit={}", self.base, symbol, self.limit);
        let body = http::get_text(&self.client, &url, shutdown).await.map_err(SnapshotError::Http)?;
        parse_snapshot(&body).map_err(SnapshotError::Parse)
    }
}

/// Resolves `symbols = "all"`: every symbol with status TRADING in `/api/v3/exchangeInfo`.
pub struct ExchangeInfoSymbols {
    pub rest: BinanceRest,
    pub shutdown: Shutdown,
}

#[async_trait]
impl SymbolHandler for ExchangeInfoSymbols {
    async fn get_symbols(&self) -> Result<Vec<String>, SymbolError> {
        // exchangeInfo costs weight 20.
        self.rest.budget.acquire(20).await;
        let url = format!("{}/api/v3/exchangeInfo", self.rest.base);
        let body = http::get_text(&self.rest.client, &url, &self.shutdown)
            .await
            .map_err(|e| SymbolError::Request { url: url.clone(), reason: e.to_string() })?;
        trading_symbols(&body).map_err(|reason| SymbolError::Format { url: url.clone(), reason }).and_then(|v| {
            if v.is_empty() {
                Err(SymbolError::Empty(url))
            } else {
                Ok(v)
            }
        })
    }
}

/// Symbols with `"status":"TRADING"` from an exchangeInfo body.
pub fn trading_symbols(body: &str) -> Result<Vec<String>, String> {
    let info: ExchangeInfoWire = serde_json::from_str(body).map_err(|e| e.to_string())?;
    Ok(info.symbols.into_iter().filter(|s| s.status == "TRADING").map(|s| s.symbol).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_waits_for_the_next_minute() {
        let b = WeightBudget::new(100);
        let t0 = Instant::now();
        b.acquire(50).await;
        b.acquire(50).await;
        assert!(t0.elapsed() < Duration::from_secs(1));
        b.acquire(50).await;
        assert!(t0.elapsed() >= Duration::from_secs(60));
    }

    #[test]
    fn trading_symbols_filters_status() {
        let body = r#"{"timezone":"UTC","symbols":[{"symbol":"ETHBTC","status":"TRADING","x":1},{"symbol":"OLD","status":"BREAK"}]}"#;
        assert_eq!(trading_symbols(body).unwrap(), ["ETHBTC"]);
    }
}
