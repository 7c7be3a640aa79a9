//! Huobi REST: the symbol list behind `symbols = "all"`.

use ds_api::http;
use ds_api::traits::SymbolHandler;
use ds_api::{async_trait, Shutdown, SymbolError};

use crate::wire::CommonSymbolsWire;

/// Resolves `symbols = "all"`: every symbol with `"state":"online"` in `GET /v1/common/symbols`
/// (`offline` pairs are delisted, `suspend` ones are refused on subscribe).
pub struct CommonSymbols {
    pub rest_url: String,
    pub client: reqwest::Client,
    pub shutdown: Shutdown,
}

impl CommonSymbols {
    pub fn new(rest_url: &str, shutdown: Shutdown) -> Self {
        CommonSymbols {
            rest_url: rest_url.trim_end_matches('/').to_string(),
            client: http::client(),
            shutdown,
        }
    }
}

#[async_trait]
impl SymbolHandler for CommonSymbols {
    async fn get_symbols(&self) -> Result<Vec<String>, SymbolError> {
        let url = format!("{}/v1/common/symbols", self.rest_url);
        let body = http::get_text(&self.client, &url, &self.shutdown)
            .await
            .map_err(|e| SymbolError::Request {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let symbols = online_symbols(&body).map_err(|reason| SymbolError::Format {
            url: url.clone(),
            reason,
        })?;
        if symbols.is_empty() {
            return Err(SymbolError::Empty(url));
        }
        Ok(symbols)
    }
}

/// Symbols with `"state":"online"` from a `/v1/common/symbols` body, as Huobi spells them.
pub fn online_symbols(body: &str) -> Result<Vec<String>, String> {
    let w: CommonSymbolsWire = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if w.status != "ok" {
        return Err(format!("status {:?}", w.status));
    }
    Ok(w.data
        .into_iter()
        .filter(|s| s.state == "online")
        .map(|s| s.symbol)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_only() {
        let body = r#"{"status":"ok","data":[{"symbol":"yeebtc","state":"online","api-trading":"enabled","x":1},{"symbol":"old","state":"offline"},{"symbol":"s","state":"suspend"}]}"#;
        assert_eq!(online_symbols(body).unwrap(), ["yeebtc"]);
        assert!(online_symbols(r#"{"status":"error","err-msg":"x"}"#).is_err());
    }

    #[test]
    fn the_recorded_list_has_883_online_of_938() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/huobi/rest_v1_common_symbols_2021-04-17.json");
        let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("needs ../shared/fixtures ({}): {e}", path.display()));
        // PROVENANCE.md: 938 symbols, state online 883 / offline 55.
        assert_eq!(online_symbols(&body).unwrap().len(), 883);
    }
}
